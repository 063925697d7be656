"""The supervisor link's codec (dvrlink.protocol.supervisor_wire) against its spec and against the
firmware's own (supervisor/sv_wire.py, loaded here in CPython: it is plain Python that MicroPython
also runs). test_supervisor_firmware.py runs the two against each other in MicroPython."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvrlink.protocol import supervisor_wire as wire

FIRMWARE = Path(__file__).resolve().parent.parent / "supervisor"


def firmware_wire() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sv_wire_under_cpython", FIRMWARE / "sv_wire.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FW = firmware_wire()


def test_the_crc_is_crc16_ccitt_false() -> None:
    assert wire.crc16(b"123456789") == 0x29B1
    assert FW.crc16(b"123456789") == 0x29B1


def test_a_heartbeat_frame_byte_for_byte() -> None:
    frame = wire.heartbeat(7, wire.Health.DEGRADED, 0x01020304)
    body = bytes([1, 0x01, 7, 5, 1, 1, 2, 3, 4])
    assert frame == b"\xa5" + body + struct.pack(">H", wire.crc16(body))
    assert frame == FW.encode_frame(FW.HEARTBEAT, 7, bytes([1, 1, 2, 3, 4]))


def test_a_disarm_frame_byte_for_byte() -> None:
    frame = wire.disarm(9, 0x01020304)
    body = bytes([1, 0x08, 9, 4, 1, 2, 3, 4])
    assert frame == b"\xa5" + body + struct.pack(">H", wire.crc16(body))
    assert frame == FW.encode_frame(FW.DISARM, 9, bytes([1, 2, 3, 4]))
    assert wire.parse_reply(wire.Frame(0x88, 9, b"\x01")) == wire.Disarmed(9, was_armed=True)
    with pytest.raises(ValueError, match="does not fit"):
        wire.disarm(1, -1)


def test_the_message_numbers_agree_with_the_firmware() -> None:
    for name in ("HEARTBEAT", "POWER_CYCLE_MODEM", "RESET_SOC", "READ_RESET_LOG", "READ_SUPPLY"):
        assert getattr(FW, name) == wire.MsgType[name]
    assert FW.SET_HEARTBEAT_TIMEOUT == wire.MsgType.SET_HEARTBEAT_TIMEOUT
    assert FW.GET_STATUS == wire.MsgType.GET_STATUS
    assert FW.DISARM == wire.MsgType.DISARM
    assert (FW.SYNC, FW.VERSION, FW.MAX_PAYLOAD, FW.FRAME_GAP_MS) == (
        wire.SYNC,
        wire.VERSION,
        wire.MAX_PAYLOAD,
        wire.FRAME_GAP_MS,
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=wire.MAX_PAYLOAD))
def test_both_sides_encode_the_same_bytes(msg_type: int, seq: int, payload: bytes) -> None:
    frame = wire.encode_frame(msg_type, seq, payload)
    assert frame == FW.encode_frame(msg_type, seq, payload)
    assert wire.FrameDecoder().feed(frame, 0) == [wire.Frame(msg_type, seq, payload)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=30),
            st.builds(wire.encode_frame, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=20)),
        ),
        max_size=12,
    ),
    st.integers(1, 16),
)
def test_both_decoders_find_the_same_frames_in_any_stream(chunks: list[bytes], step: int) -> None:
    stream = b"".join(chunks)
    ours, theirs = wire.FrameDecoder(), FW.FrameDecoder()
    got_ours: list[tuple[int, int, bytes]] = []
    got_theirs: list[tuple[int, int, bytes]] = []
    for i in range(0, len(stream), step):
        got_ours += [(f.msg_type, f.seq, f.payload) for f in ours.feed(stream[i : i + step], i)]
        got_theirs += theirs.feed(stream[i : i + step], i)
    end = len(stream) + 1000
    got_ours += [(f.msg_type, f.seq, f.payload) for f in ours.poll(end)]
    got_theirs += theirs.poll(end)
    assert got_ours == got_theirs
    counts = ours.counts
    assert (counts.garbage_bytes, counts.bad_crc, counts.bad_version) == (
        theirs.garbage_bytes,
        theirs.bad_crc,
        theirs.bad_version,
    )
    for chunk in chunks:  # every frame whose bytes arrived unbroken by garbage is found
        if chunk[:1] == b"\xa5" and len(chunk) >= 7 and wire.FrameDecoder().feed(chunk, 0):
            assert (chunk[2], chunk[3], chunk[5:-2]) in got_ours


def test_bad_crc_other_version_and_stalls_are_counted_and_skipped() -> None:
    good = wire.reset_soc(9)
    decoder = wire.FrameDecoder()
    flipped = bytes([*good[:-1], good[-1] ^ 1])
    body = bytes([2, 3, 9, 0])
    v2 = b"\xa5" + body + wire.crc16(body).to_bytes(2, "big")
    assert decoder.feed(b"noise" + flipped + v2 + good, 0) == [wire.Frame(3, 9, b"")]
    assert decoder.counts.bad_crc == 1 and decoder.counts.bad_version == 1
    assert decoder.counts.garbage_bytes == len(b"noise") + len(flipped)
    # A stray sync byte with a large length holds a frame back until the gap has passed.
    assert decoder.feed(b"\xa5\x01\x02\x03\x50" + good, 1000) == []
    assert decoder.deadline() == 1000 + wire.FRAME_GAP_MS + 1
    assert decoder.poll(1050) == []
    assert decoder.poll(1101) == [wire.Frame(3, 9, b"")]
    assert decoder.counts.stalled == 1


def test_a_flood_of_garbage_keeps_the_buffer_bounded() -> None:
    decoder = wire.FrameDecoder()
    for i in range(100):
        decoder.feed(b"\xa5\x01\x01\x01\xf0" + bytes(200), i)
    assert decoder.buffered <= wire.MAX_BUFFER


def test_encode_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="at most 240"):
        wire.encode_frame(1, 1, bytes(241))
    with pytest.raises(ValueError, match="fit a byte"):
        wire.encode_frame(1, 256)
    with pytest.raises(ValueError, match="0-65535"):
        wire.set_heartbeat_timeout(1, 70000)


def test_replies_parse_and_malformed_ones_say_what_they_were() -> None:
    entry = struct.pack(">BIIH", 1, 1_800_000_000, 3600, 120)
    log = wire.parse_reply(wire.Frame(0x84, 3, struct.pack(">HB", 7, 1) + entry))
    assert log == wire.ResetLog(
        3, 7, (wire.ResetLogEntry(wire.ResetCause.HEARTBEAT_TIMEOUT, 1_800_000_000, 3600, 120),)
    )
    unknown_cause = wire.parse_reply(wire.Frame(0x84, 3, struct.pack(">HBBIIH", 1, 1, 99, 0, 0, 0)))
    assert isinstance(unknown_cause, wire.ResetLog) and unknown_cause.entries[0].cause == 99
    with pytest.raises(wire.ReplyError, match="0x84 seq 3"):
        wire.parse_reply(wire.Frame(0x84, 3, struct.pack(">HB", 7, 2) + entry))
    with pytest.raises(wire.ReplyError, match="not a supervisor reply"):
        wire.parse_reply(wire.Frame(0x01, 3, b""))
    assert wire.parse_reply(wire.Frame(0xFF, 4, b"\x01\x42")) == wire.ErrorReply(
        4, wire.ErrorCode.UNKNOWN_TYPE, 0x42
    )
