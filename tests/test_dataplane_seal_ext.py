"""The compiled bulk sealer and opener (``dvrlink.protocol._dataplane_seal``, built from
``protocol/_dataplane_seal.c`` against OpenSSL's libcrypto) against the Python they replace: the
same packets to the byte, the same plaintexts, the same refusals of forged packets, the same
limits, clear errors for bad arguments. (``test_dataplane_security.py`` runs every security test
with each opener.) Skipped where the
extension was not built (no compiler or libcrypto headers); the data plane then seals in Python."""

from __future__ import annotations

import os
import random

import pytest
from support.dataplane_link import Link, Simulation, key_material, pair, run_until_ended, take_stream_data

from dvrlink.protocol.dataplane_keys import IV_SIZE, PacketKey, initial_secret
from dvrlink.protocol.dataplane_keys import VIEWER_TO_DEVICE as DIRECTION
from dvrlink.protocol.dataplane_wire import HEADER, MAX_PACKET_NUMBER, OVERHEAD, STREAM, encode_varint

sealer = pytest.importorskip("dvrlink.protocol._dataplane_seal", reason="the C sealer is not built here")
seal_stream_run = sealer.seal_stream_run

MAX_PAYLOAD = 1452 - OVERHEAD
TAG = b"\x01\x02\x03\x04"


def python_run(
    key: PacketKey,
    number: int,
    stream_id: int,
    offset: int,
    data: bytes,
    packets: int,
    short_last: bool = False,
) -> list[bytes]:
    """The packets the Python bulk path builds, written out plainly."""
    out = []
    position = 0
    while len(out) < packets and number < MAX_PACKET_NUMBER:
        payload = bytearray((STREAM,)) + encode_varint(stream_id) + encode_varint(offset)
        count = MAX_PAYLOAD - len(payload)
        if count > len(data) - position:
            if not short_last or position == len(data):
                break
            count = len(data) - position
        payload += data[position : position + count]
        header = HEADER.pack(0x20, TAG, number >> 32, number & 0xFFFFFFFF)
        out.append(header + key.aead.encrypt((key.iv ^ number).to_bytes(IV_SIZE, "big"), payload, header))
        position += count
        offset += count
        number += 1
    return out


def compiled_run(
    key: PacketKey,
    number: int,
    stream_id: int,
    offset: int,
    data: bytes,
    packets: int,
    short_last: bool = False,
) -> list[bytes]:
    prefix = bytes((STREAM,)) + encode_varint(stream_id)
    made: list[bytes] = seal_stream_run(
        key.key,
        key.iv_bytes,
        0x20,
        TAG,
        number,
        prefix,
        offset,
        memoryview(data),
        MAX_PAYLOAD,
        packets,
        short_last,
    )
    return made


@pytest.mark.parametrize(
    ("stream_id", "offset"),
    [(0, 0), (4, 60), (8, 16_000), (64, (1 << 30) - 3_000), (1 << 14, (1 << 40) + 7)],
)
def test_the_compiled_packets_are_the_python_packets_across_varint_sizes(stream_id: int, offset: int) -> None:
    key = PacketKey(initial_secret(KEYS.viewer_random, KEYS.device_random), DIRECTION, 0)
    data = os.urandom(20 * MAX_PAYLOAD)
    expected = python_run(key, 1_000, stream_id, offset, data, 100)
    assert len(expected) >= 18
    assert compiled_run(key, 1_000, stream_id, offset, data, 100) == expected


def test_with_short_last_the_tail_goes_in_one_shorter_packet_as_python_builds_it() -> None:
    """A queue's tail that cannot fill a packet: one shorter last packet, the same bytes as the
    Python path's; within the packet count; none for an empty tail."""
    key = PacketKey(initial_secret(KEYS.viewer_random, KEYS.device_random), DIRECTION, 0)
    data = os.urandom(5 * MAX_PAYLOAD + 333)
    made = compiled_run(key, 7, 4, 90_000, data, 100, short_last=True)
    assert made == python_run(key, 7, 4, 90_000, data, 100, short_last=True)
    sizes = [len(datagram) for datagram in made]
    assert len(made) == 6 and sizes[-1] < sizes[0], sizes
    assert len(compiled_run(key, 7, 4, 90_000, data, 100)) == 5, "a short packet without short_last"
    assert len(compiled_run(key, 7, 4, 90_000, data, 5, short_last=True)) == 5, "past the packet count"
    per_packet = MAX_PAYLOAD - 6  # the frame type, stream 4's varint, a 4-byte offset varint
    exact = compiled_run(key, 7, 4, 90_000, data[: 5 * per_packet], 100, short_last=True)
    assert len(exact) == 5, f"an empty tail made a packet: {[len(datagram) for datagram in exact]}"


def test_it_stops_at_the_count_before_a_short_packet_and_below_the_last_packet_number() -> None:
    key = PacketKey(initial_secret(KEYS.viewer_random, KEYS.device_random), DIRECTION, 0)
    data = os.urandom(10 * MAX_PAYLOAD)
    assert len(compiled_run(key, 0, 0, 0, data, 3)) == 3
    assert len(compiled_run(key, 0, 0, 0, data[: MAX_PAYLOAD - 10], 5)) == 0
    near_end = compiled_run(key, MAX_PACKET_NUMBER - 2, 0, 0, data, 5)
    assert len(near_end) == 2, "it sealed the last packet number, which the Python path closes on"
    assert near_end == python_run(key, MAX_PACKET_NUMBER - 2, 0, 0, data, 5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": b"short"}, "key, iv and receive tag"),
        ({"max_payload": 10}, "max_payload"),
        ({"max_payload": 70_000}, "max_payload"),
        ({"packets": -1}, "negative packet count"),
        ({"offset": 1 << 62}, "offset beyond"),
    ],
)
def test_bad_arguments_are_refused_with_what_is_wrong(change: dict[str, object], message: str) -> None:
    key = PacketKey(initial_secret(KEYS.viewer_random, KEYS.device_random), DIRECTION, 0)
    args: dict[str, object] = {
        "key": key.key,
        "offset": 0,
        "max_payload": MAX_PAYLOAD,
        "packets": 2,
    }
    args.update(change)
    with pytest.raises(ValueError, match=message):
        seal_stream_run(
            args["key"],
            key.iv_bytes,
            0x20,
            TAG,
            0,
            b"\x08\x00",
            args["offset"],
            bytes(5_000),
            args["max_payload"],
            args["packets"],
        )


@pytest.mark.parametrize("pieces", [2, 17])
def test_a_transfer_puts_the_same_bytes_on_the_wire_with_the_compiled_sealer_and_without(
    monkeypatch: pytest.MonkeyPatch, pieces: int
) -> None:
    """The whole data plane, 1 % loss: the compiled sealer is a shortcut, not another protocol.
    In 2 pieces, queued at once (a packet crosses from one to the next), and in 17, each queued
    once the last has arrived (each piece's tail goes in a shorter packet)."""

    def transfer(compiled: bool) -> list[bytes]:
        rng = random.Random(11)
        viewer, device = pair(key_material(rng))
        if not compiled:
            monkeypatch.setattr(viewer, "_sealer", None)
        assert (viewer._sealer is not None) == compiled
        sim = Simulation(viewer, device, Link(rng, delay=0.010, loss=0.01), Link(rng, delay=0.010, loss=0.01))
        sim.record = True
        stream = viewer.open_stream()
        data = rng.randbytes(600_000)
        if pieces == 2:
            viewer.send(stream, data[:200_000])
            viewer.send(stream, data[200_000:], end_stream=True)
            assert run_until_ended(sim, device, stream, 500_000) == data
            return sim.sent_a
        received: dict[int, bytearray] = {}
        ended: set[int] = set()
        size = -(-len(data) // pieces)
        for start in range(0, len(data), size):
            viewer.send(stream, data[start : start + size], end_stream=start + size >= len(data))
            want = min(len(data), start + size)

            def arrived(want: int = want) -> bool:
                take_stream_data(device, received, ended, sim.now)
                return len(received.get(stream, b"")) >= want

            sim.run_until(arrived, max_steps=500_000)

        def finished() -> bool:
            take_stream_data(device, received, ended, sim.now)
            return stream in ended

        sim.run_until(finished, max_steps=500_000)
        assert bytes(received[stream]) == data
        return sim.sent_a

    compiled, python = transfer(True), transfer(False)
    assert len(compiled) == len(python), (len(compiled), len(python))
    differing = [i for i, (a, b) in enumerate(zip(compiled, python, strict=True)) if a != b]
    assert not differing, f"{len(differing)} of {len(compiled)} datagrams differ, first at {differing[:1]}"
    if pieces > 2:
        full = max(len(datagram) for datagram in compiled)
        short = [len(datagram) for datagram in compiled if len(datagram) < full and len(datagram) > 200]
        assert len(short) >= pieces - 1, f"the pieces' tails did not go in shorter packets: {short}"


KEYS = key_material(random.Random(3))


def test_the_opener_opens_what_cryptography_opens_and_refuses_what_it_refuses() -> None:
    secret = initial_secret(KEYS.viewer_random, KEYS.device_random)
    compiled = PacketKey(secret, DIRECTION, 3)
    python = PacketKey(secret, DIRECTION, 3, compiled=False)
    assert compiled._open_compiled is not None and python._open_compiled is None
    rng = random.Random(5)
    for size in (0, 1, 63, 64, 65, 1_173, 1_425, 9_000):
        number = rng.randrange(MAX_PACKET_NUMBER)
        header = HEADER.pack(0x30, TAG, number >> 32, number & 0xFFFFFFFF)
        sealed = python.seal(number, header, rng.randbytes(size))
        view = memoryview(header + sealed)
        opened = compiled.open(number, view[: len(header)], view[len(header) :])
        assert opened is not None and opened == python.open(number, header, sealed), size
        forgeries = {
            "a bit of the ciphertext": (number, header, flip(sealed, 0)) if size else None,
            "a bit of the tag": (number, header, flip(sealed, len(sealed) - 1)),
            "a bit of the header": (number, flip(header, 3), sealed),
            "another packet number": (number ^ 1, header, sealed),
            "no tag": (number, header, sealed[: size // 2] if size < 16 else sealed[:15]),
            "nothing": (number, header, b""),
        }
        for what, forged in forgeries.items():
            if forged is None:
                continue
            assert compiled.open(*forged) is None, f"the compiled opener opened {what} ({size} B)"
            assert python.open(*forged) is None, f"cryptography opened {what} ({size} B)"
    other = PacketKey(initial_secret(KEYS.device_random, KEYS.viewer_random), DIRECTION, 3)
    number = 7
    header = HEADER.pack(0x30, TAG, 0, number)
    assert other.open(number, header, python.seal(number, header, b"frames")) is None, "another key opened it"


def flip(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x10
    return bytes(changed)


def test_an_opener_refuses_a_bad_key_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="key and iv must be 32 and 12 bytes"):
        sealer.Opener(b"short", bytes(IV_SIZE))
    with pytest.raises(ValueError, match="key and iv must be 32 and 12 bytes"):
        sealer.Opener(bytes(32), b"")
