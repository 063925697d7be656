"""Presence over a stream: the 2-byte length framing (sans-I/O), with split reads and bad input."""

from __future__ import annotations

import random

import pytest

from dvrlink.protocol.presence_stream import MAX_FRAME, StreamDeframer, encode_frame
from dvrlink.protocol.presence_wire import HELLO_SIZE, MessageType


def message(kind: int = MessageType.HELLO, size: int = HELLO_SIZE) -> bytes:
    return bytes([kind, 1]) + bytes(i & 0xFF for i in range(size - 2))


def drain(deframer: StreamDeframer) -> list[bytes]:
    out = []
    while (item := deframer.next_message()) is not None:
        out.append(item)
    return out


def test_a_frame_is_the_length_then_the_message() -> None:
    msg = message()
    assert encode_frame(msg) == len(msg).to_bytes(2, "big") + msg


@pytest.mark.parametrize("size", [0, MAX_FRAME + 1])
def test_encoding_an_empty_or_oversize_message_is_a_local_error(size: int) -> None:
    with pytest.raises(ValueError, match="1-1200"):
        encode_frame(bytes([MessageType.HELLO]) * size)


def test_one_byte_reads_give_the_same_messages() -> None:
    messages = [message(size=n) for n in (26, 48, 300, MAX_FRAME)]
    stream = b"".join(encode_frame(m) for m in messages)
    deframer = StreamDeframer()
    got: list[bytes] = []
    for i in range(len(stream)):
        deframer.receive_data(stream[i : i + 1])
        got += drain(deframer)
        assert deframer.buffered <= MAX_FRAME + 2
    assert got == messages and deframer.error is None and deframer.buffered == 0


def test_random_splits_and_several_frames_per_read() -> None:
    rng = random.Random(7)
    messages = [message(MessageType.KEEPALIVE, rng.randrange(2, MAX_FRAME + 1)) for _ in range(50)]
    stream = b"".join(encode_frame(m) for m in messages)
    deframer = StreamDeframer()
    got: list[bytes] = []
    at = 0
    while at < len(stream):
        step = rng.randrange(1, 3000)
        deframer.receive_data(stream[at : at + step])
        at += step
        got += drain(deframer)
    assert got == messages


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"\x00\x00", "length 0"),
        ((MAX_FRAME + 1).to_bytes(2, "big"), "length 1201"),
        (b"\xff\xff" + b"x" * 10, "length 65535"),
        (b"GET / HTTP/1.1\r\n\r\n", "length 18245"),
        (b"\x00\x05\x16\x03\x01\x00\x00", "first byte 0x16"),  # a TLS record where a message should be
        (b"\x00\x14\x00\x01\x00\x00", "first byte 0x00"),  # a STUN request is not a presence message
    ],
)
def test_garbage_stops_the_deframer_without_raising(garbage: bytes, why: str) -> None:
    deframer = StreamDeframer()
    deframer.receive_data(encode_frame(message()))
    deframer.receive_data(garbage)
    assert deframer.error is not None and why in deframer.error
    assert deframer.next_message() is None  # nothing more is handed out, not even earlier frames
    deframer.receive_data(encode_frame(message()))  # ignored from now on
    assert deframer.next_message() is None and deframer.buffered == 0


def test_an_oversize_length_is_refused_before_its_bytes_arrive() -> None:
    deframer = StreamDeframer()
    deframer.receive_data(b"\x04")
    assert deframer.error is None
    deframer.receive_data(b"\xb1")  # 0x04b1 = 1201
    assert deframer.error is not None and deframer.buffered == 0


def test_fuzz_never_raises() -> None:
    rng = random.Random(11)
    for _ in range(300):
        deframer = StreamDeframer()
        for _ in range(5):
            deframer.receive_data(rng.randbytes(rng.randrange(0, 64)))
            drain(deframer)
        assert deframer.buffered <= MAX_FRAME + 2
