"""The data plane's wire format: every frame round-trips, varint edges, and the parser never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvrlink.protocol.dataplane_wire import (
    MAX_VARINT,
    AckFrame,
    AckFrequencyFrame,
    CloseFrame,
    DatagramFrame,
    Frame,
    MaxDataFrame,
    MaxStreamDataFrame,
    PingFrame,
    ResetStreamFrame,
    StopSendingFrame,
    StreamFrame,
    decode_varint,
    encode_frame,
    encode_varint,
    is_dataplane,
    pack_header,
    parse_frames,
    varint_size,
)

FRAMES: list[Frame] = [
    PingFrame(),
    AckFrame(((100, 120),), 0),
    AckFrame(((90, 100), (50, 80), (0, 0)), 25_000),
    StreamFrame(0, 0, b"hello", False),
    StreamFrame(4, 1 << 40, b"x" * 1000, True),
    StreamFrame(8, 5, b"", True),
    MaxDataFrame(8 << 20),
    MaxStreamDataFrame(12, (1 << 62) - 1),
    ResetStreamFrame(4, 7, 123_456),
    StopSendingFrame(0, 3),
    DatagramFrame(2, b"media"),
    AckFrequencyFrame(1, 10),
    AckFrequencyFrame(MAX_VARINT, 0),
    CloseFrame(1, "protocol error: ünïcode"),
]


def normalised(frames: list[Frame] | None) -> list[tuple[object, ...]] | None:
    """Frames with memoryview data turned into bytes, for comparison."""
    if frames is None:
        return None
    return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in frame) for frame in frames]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_every_frame_round_trips_alone_and_in_a_packet(frame: Frame) -> None:
    alone = bytearray()
    encode_frame(alone, frame)
    assert normalised(parse_frames(bytes(alone))) == normalised([frame]), f"encoded {alone.hex()}"
    if not isinstance(frame, DatagramFrame):  # a DATAGRAM runs to the end: it can only be last
        packet = bytearray()
        encode_frame(packet, frame, last=False)
        encode_frame(packet, PingFrame())
        encode_frame(packet, StreamFrame(4, 9, b"tail", False), last=True)
        parsed = parse_frames(bytes(packet))
        assert normalised(parsed) == normalised([frame, PingFrame(), StreamFrame(4, 9, b"tail", False)]), (
            f"encoded {packet.hex()}"
        )


def test_padding_is_skipped() -> None:
    assert parse_frames(b"\x00\x00\x01\x00") == [PingFrame()]


@pytest.mark.parametrize(
    ("value", "size"),
    [(0, 1), (63, 1), (64, 2), (16383, 2), (16384, 4), ((1 << 30) - 1, 4), (1 << 30, 8), (MAX_VARINT, 8)],
)
def test_varint_edges(value: int, size: int) -> None:
    encoded = encode_varint(value)
    assert len(encoded) == size == varint_size(value), f"{value} encoded as {encoded.hex()}"
    assert decode_varint(encoded, 0) == (value, size)


def test_varint_rfc9000_examples() -> None:
    # RFC 9000 appendix A.1
    assert decode_varint(bytes.fromhex("c2197c5eff14e88c"), 0)[0] == 151_288_809_941_952_652
    assert decode_varint(bytes.fromhex("9d7f3e7d"), 0)[0] == 494_878_333
    assert decode_varint(bytes.fromhex("7bbd"), 0)[0] == 15_293
    assert decode_varint(bytes.fromhex("25"), 0)[0] == 37
    assert decode_varint(bytes.fromhex("4025"), 0)[0] == 37


@pytest.mark.parametrize("value", [-1, MAX_VARINT + 1])
def test_varint_out_of_range_raises(value: int) -> None:
    with pytest.raises(ValueError, match="varint"):
        encode_varint(value)


def test_header_and_first_byte_ranges() -> None:
    header = pack_header(1, b"\xaa\xbb\xcc\xdd", 0x0102030405)
    assert header == bytes.fromhex("30aabbccdd000102030405"), header.hex()
    assert [b for b in range(256) if is_dataplane(b)] == list(range(0x20, 0x40))
    assert not any(is_dataplane(b) for b in (0x00, 0x03, 0x40, 0x7F, 0xC0))


def test_malformed_inputs_give_none() -> None:
    assert parse_frames(b"\x3f") is None, "unknown frame type"
    assert parse_frames(b"\x0a\x00\x00\x05ab") is None, "STREAM length beyond the packet"
    assert parse_frames(b"\x02\x05\x00\x00\x09") is None, "ACK first range below zero"
    assert parse_frames(b"\x1c\x00\x02\xff\xfe") is None, "CLOSE reason not UTF-8"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises(data: bytes) -> None:
    result = parse_frames(data)
    assert result is None or isinstance(result, list)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(FRAMES), st.data())
def test_truncated_frames_never_raise(frame: Frame, data: st.DataObject) -> None:
    encoded = bytearray()
    encode_frame(encoded, frame, last=isinstance(frame, DatagramFrame))
    cut = data.draw(st.integers(0, len(encoded)))
    result = parse_frames(bytes(encoded[:cut]))
    assert result is None or isinstance(result, list)
