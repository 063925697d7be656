"""Wire format of the data plane: the 11-byte packet header, QUIC varints, and the frames.

The data plane moves the bulk bytes of a session (port forwards, later media) as lean AEAD
datagrams beside the QUIC session that set it up (issue 14). This module is on the per-packet hot
path, so it is written with ``struct`` and plain integer arithmetic rather than ``construct``:
a construct parse or build costs tens of microseconds, which is the whole budget of a packet.
``construct`` stays the tool for the control messages that travel on the QUIC stream, where a few
messages per session make clarity worth more than speed.

Packet layout::

    byte 0      0b001P0000   0x20 | phase << 4; the low 4 bits are reserved and 0 in v1
    bytes 1-4   receive tag: the 4 bytes the RECEIVER chose in the key exchange
    bytes 5-10  packet number, 48 bits big-endian
    bytes 11..  ChaCha20-Poly1305 ciphertext of the frames, 16-byte tag at the end

Frames are parsed by ``parse_frames``, which never raises: malformed input gives ``None``.
Integers are QUIC varints (RFC 9000 §16).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

HEADER = struct.Struct(">B4sHI")
"""First byte, receive tag, packet number (high 16 bits, low 32 bits)."""
HEADER_SIZE = HEADER.size
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + TAG_SIZE
"""Header plus AEAD tag: 27 bytes per datagram."""
FIRST_BYTE = 0x20
PHASE_BIT = 0x10
RESERVED_BITS = 0x0F
MAX_PACKET_NUMBER = (1 << 48) - 1
RECEIVE_TAG_SIZE = 4
MAX_VARINT = (1 << 62) - 1

PADDING = 0x00
PING = 0x01
ACK = 0x02
STREAM = 0x08
STREAM_FIN = 0x01
STREAM_LEN = 0x02
MAX_DATA = 0x10
MAX_STREAM_DATA = 0x11
RESET_STREAM = 0x12
STOP_SENDING = 0x13
DATAGRAM = 0x14
ACK_FREQUENCY = 0x15
CLOSE = 0x1C

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def is_dataplane(first_byte: int) -> bool:
    """Whether a datagram with this first byte belongs to the data plane (0x20-0x3F).

    QUIC v1 sets 0x40 in every packet, STUN starts 0x00-0x03, TURN ChannelData 0x40-0x7F.
    """
    return 0x20 <= first_byte <= 0x3F


def pack_header(phase: int, receive_tag: bytes, packet_number: int) -> bytes:
    """The 11-byte header. Raises ``struct.error`` for a tag that is not 4 bytes."""
    return HEADER.pack(
        FIRST_BYTE | (phase << 4), receive_tag, packet_number >> 32, packet_number & 0xFFFFFFFF
    )


def encode_varint(value: int) -> bytes:
    """``value`` as a QUIC varint. Raises ``ValueError`` outside 0 .. 2**62 - 1."""
    if value < 0x40:
        if value < 0:
            raise ValueError(f"varint {value} is negative: a QUIC varint holds 0 .. 2**62-1")
        return bytes((value,))
    if value < 0x4000:
        return _U16.pack(value | 0x4000)
    if value < 0x40000000:
        return _U32.pack(value | 0x80000000)
    if value <= MAX_VARINT:
        return _U64.pack(value | 0xC000000000000000)
    raise ValueError(f"varint {value} is above 2**62-1, the largest QUIC varint")


def varint_size(value: int) -> int:
    """How many bytes ``encode_varint(value)`` takes."""
    if value < 0x40:
        return 1
    if value < 0x4000:
        return 2
    if value < 0x40000000:
        return 4
    return 8


def decode_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it. Raises ``IndexError`` or
    ``struct.error`` on truncated input (``parse_frames`` turns those into ``None``)."""
    first = data[pos]
    kind = first >> 6
    if kind == 0:
        return first, pos + 1
    if kind == 1:
        return _U16.unpack_from(data, pos)[0] & 0x3FFF, pos + 2
    if kind == 2:
        return _U32.unpack_from(data, pos)[0] & 0x3FFFFFFF, pos + 4
    return _U64.unpack_from(data, pos)[0] & 0x3FFFFFFFFFFFFFFF, pos + 8


class PingFrame(NamedTuple):
    """PING: ack-eliciting, no fields."""


class AckFrame(NamedTuple):
    """ACK: acknowledged packet-number ranges as inclusive (low, high), highest range first."""

    ranges: tuple[tuple[int, int], ...]
    ack_delay_us: int


class StreamFrame(NamedTuple):
    """STREAM: ``data`` at ``offset`` of ``stream_id``; ``fin`` ends the stream after it."""

    stream_id: int
    offset: int
    data: bytes | memoryview
    fin: bool


class MaxDataFrame(NamedTuple):
    maximum: int


class MaxStreamDataFrame(NamedTuple):
    stream_id: int
    maximum: int


class ResetStreamFrame(NamedTuple):
    stream_id: int
    error_code: int
    final_size: int


class StopSendingFrame(NamedTuple):
    stream_id: int
    error_code: int


class DatagramFrame(NamedTuple):
    flow_id: int
    data: bytes | memoryview


class AckFrequencyFrame(NamedTuple):
    """ACK_FREQUENCY (after QUIC's extension of that name): the sender asks the receiver to ACK
    after ``threshold`` ack-eliciting packets (its max ACK delay still applies); a frame with a
    ``sequence`` not above the last one applied is stale and ignored."""

    sequence: int
    threshold: int


class CloseFrame(NamedTuple):
    error_code: int
    reason: str


Frame = (
    PingFrame
    | AckFrame
    | StreamFrame
    | MaxDataFrame
    | MaxStreamDataFrame
    | ResetStreamFrame
    | StopSendingFrame
    | DatagramFrame
    | AckFrequencyFrame
    | CloseFrame
)

PING_FRAME = PingFrame()


def encode_ack(
    out: bytearray, ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...], delay_us: int
) -> None:
    """Append an ACK frame for ``ranges`` (inclusive (low, high), highest first, disjoint)."""
    largest = ranges[0][1]
    out.append(ACK)
    out += encode_varint(largest)
    out += encode_varint(delay_us)
    out += encode_varint(len(ranges) - 1)
    out += encode_varint(largest - ranges[0][0])
    previous_low = ranges[0][0]
    for low, high in ranges[1:]:
        out += encode_varint(previous_low - high - 2)
        out += encode_varint(high - low)
        previous_low = low


def encode_stream(
    out: bytearray, stream_id: int, offset: int, data: bytes | memoryview, fin: bool, last: bool
) -> None:
    """Append a STREAM frame; ``last``: the frame ends the packet, so it carries no length."""
    out.append(STREAM | (STREAM_FIN if fin else 0) | (0 if last else STREAM_LEN))
    out += encode_varint(stream_id)
    out += encode_varint(offset)
    if not last:
        out += encode_varint(len(data))
    out += data


def encode_frame(out: bytearray, frame: Frame, last: bool = True) -> None:
    """Append any frame (the slow, general path; the connection writes STREAM and ACK directly).

    Raises ``ValueError`` for a field out of range.
    """
    if isinstance(frame, PingFrame):
        out.append(PING)
    elif isinstance(frame, AckFrame):
        encode_ack(out, frame.ranges, frame.ack_delay_us)
    elif isinstance(frame, StreamFrame):
        encode_stream(out, frame.stream_id, frame.offset, frame.data, frame.fin, last)
    elif isinstance(frame, MaxDataFrame):
        out.append(MAX_DATA)
        out += encode_varint(frame.maximum)
    elif isinstance(frame, MaxStreamDataFrame):
        out.append(MAX_STREAM_DATA)
        out += encode_varint(frame.stream_id)
        out += encode_varint(frame.maximum)
    elif isinstance(frame, ResetStreamFrame):
        out.append(RESET_STREAM)
        out += encode_varint(frame.stream_id)
        out += encode_varint(frame.error_code)
        out += encode_varint(frame.final_size)
    elif isinstance(frame, StopSendingFrame):
        out.append(STOP_SENDING)
        out += encode_varint(frame.stream_id)
        out += encode_varint(frame.error_code)
    elif isinstance(frame, AckFrequencyFrame):
        out.append(ACK_FREQUENCY)
        out += encode_varint(frame.sequence)
        out += encode_varint(frame.threshold)
    elif isinstance(frame, DatagramFrame):
        if not last:
            raise ValueError("a DATAGRAM frame runs to the end of the packet: it must be the last frame")
        out.append(DATAGRAM)
        out += encode_varint(frame.flow_id)
        out += frame.data
    else:
        reason = frame.reason.encode()
        out.append(CLOSE)
        out += encode_varint(frame.error_code)
        out += encode_varint(len(reason))
        out += reason


def parse_frames(payload: bytes | memoryview) -> list[Frame] | None:
    """The frames of a decrypted payload, in order, or ``None`` if it does not parse (unknown type,
    truncated field, bad ACK ranges, invalid UTF-8). Never raises. Data fields are memoryview
    slices of ``payload`` (no copy)."""
    try:
        return _parse(memoryview(payload))
    except (IndexError, struct.error, UnicodeDecodeError, ValueError):
        return None


def _parse(view: memoryview) -> list[Frame] | None:
    frames: list[Frame] = []
    end = len(view)
    pos = 0
    while pos < end:
        kind = view[pos]
        pos += 1
        if STREAM <= kind <= 0x0B:
            stream_id, pos = decode_varint(view, pos)
            offset, pos = decode_varint(view, pos)
            if kind & STREAM_LEN:
                length, pos = decode_varint(view, pos)
                if pos + length > end:
                    return None
                data = view[pos : pos + length]
                pos += length
            else:
                data = view[pos:]
                pos = end
            frames.append(StreamFrame(stream_id, offset, data, bool(kind & STREAM_FIN)))
        elif kind == ACK:
            largest, pos = decode_varint(view, pos)
            delay, pos = decode_varint(view, pos)
            count, pos = decode_varint(view, pos)
            first, pos = decode_varint(view, pos)
            low = largest - first
            if low < 0 or count > end:
                return None
            ranges = [(low, largest)]
            for _ in range(count):
                gap, pos = decode_varint(view, pos)
                length, pos = decode_varint(view, pos)
                high = low - gap - 2
                low = high - length
                if low < 0:
                    return None
                ranges.append((low, high))
            frames.append(AckFrame(tuple(ranges), delay))
        elif kind == PADDING:
            continue
        elif kind == PING:
            frames.append(PING_FRAME)
        elif kind == MAX_DATA:
            maximum, pos = decode_varint(view, pos)
            frames.append(MaxDataFrame(maximum))
        elif kind == MAX_STREAM_DATA:
            stream_id, pos = decode_varint(view, pos)
            maximum, pos = decode_varint(view, pos)
            frames.append(MaxStreamDataFrame(stream_id, maximum))
        elif kind == RESET_STREAM:
            stream_id, pos = decode_varint(view, pos)
            code, pos = decode_varint(view, pos)
            final, pos = decode_varint(view, pos)
            frames.append(ResetStreamFrame(stream_id, code, final))
        elif kind == STOP_SENDING:
            stream_id, pos = decode_varint(view, pos)
            code, pos = decode_varint(view, pos)
            frames.append(StopSendingFrame(stream_id, code))
        elif kind == DATAGRAM:
            flow_id, pos = decode_varint(view, pos)
            frames.append(DatagramFrame(flow_id, view[pos:]))
            pos = end
        elif kind == ACK_FREQUENCY:
            sequence, pos = decode_varint(view, pos)
            threshold, pos = decode_varint(view, pos)
            frames.append(AckFrequencyFrame(sequence, threshold))
        elif kind == CLOSE:
            code, pos = decode_varint(view, pos)
            length, pos = decode_varint(view, pos)
            if pos + length > end:
                return None
            reason = bytes(view[pos : pos + length]).decode()
            pos += length
            frames.append(CloseFrame(code, reason))
        else:
            return None
    return frames
