"""Alarm records and the plaintexts of the presence EVENT message that carries them. No I/O.

An alarm is something a viewer should hear of at once: a camera's signal lost, motion, an alarm
input, a disk or modem problem. The device numbers its alarms (``seq``, monotonic within a
``stream``: a random 32-bit id chosen when the device's queue is created, so a device whose
queue was wiped starts a new stream instead of repeating numbers the broker has seen).

EVENT (message type 0x0F, sealed like every presence message) travels both ways; the AEAD
direction tells them apart. Its plaintext starts with an op byte:

| op | direction | layout after the op byte |
|---|---|---|
| 1 RECORDS | device → broker | stream u32 ‖ first_seq u32 ‖ (varint length ‖ record)* |
| 2 FRAGMENT | device → broker | stream u32 ‖ seq u32 ‖ total u16 ‖ offset u16 ‖ bytes of one record |
| 3 ACK | broker → device | stream u32 ‖ through_seq u32 ‖ next_offset u16 |

Records in RECORDS have consecutive seqs from ``first_seq``. A record is::

    kind u8 ‖ flags u8 ‖ time varint ‖ [channel u8] ‖ [detail: len u8 ‖ UTF-8] ‖ [snapshot: varint len ‖ JPEG]

``flags`` bit 0: channel present, bit 1: detail present, bit 2: snapshot present. ``time`` is
unix milliseconds for the first record of a message and, for the next ones, the zigzag varint
of the difference to the previous record's time (alarms come in bursts: 1-2 bytes). Bytes after
the known fields of a record are ignored (room for later fields). A record larger than fits a
datagram (one with a snapshot) goes as FRAGMENTs, ``total`` being its encoded size.

ACK is cumulative: every record of ``stream`` up to ``through_seq`` is stored at the broker, and
it holds ``next_offset`` bytes of record ``through_seq + 1`` (a fragmented one).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

OP_RECORDS = 1
OP_FRAGMENT = 2
OP_ACK = 3

MAX_DETAIL = 120
"""Bytes of UTF-8 a record's detail text keeps (longer text is cut on a character boundary)."""
MAX_SNAPSHOT = 16 * 1024
"""Largest JPEG snapshot an alarm may carry: about 3 s of a GPRS uplink at 40 kbit/s."""
MAX_RECORD = MAX_SNAPSHOT + MAX_DETAIL + 32
"""Largest encoded record (the receiver refuses a FRAGMENT announcing more)."""
MAX_PLAINTEXT = 1100
"""Largest EVENT plaintext a device sends (under the presence datagram limit with header, tag,
and the TCP transport's frame prefix)."""

_RECORDS_HEAD = struct.Struct(">BII")
_FRAGMENT_HEAD = struct.Struct(">BIIHH")
_ACK = struct.Struct(">BIIH")
RECORDS_OVERHEAD = _RECORDS_HEAD.size
"""Bytes of a RECORDS plaintext before its first record."""

FRAGMENT_CHUNK = MAX_PLAINTEXT - _FRAGMENT_HEAD.size

_HAS_CHANNEL = 1
_HAS_DETAIL = 2
_HAS_SNAPSHOT = 4
_JPEG_SOI = b"\xff\xd8\xff"


class AlarmKind(enum.IntEnum):
    """What happened. Receivers keep unknown values (a newer device) as plain integers."""

    SIGNAL_LOST = 1
    SIGNAL_RESTORED = 2
    FORMAT_CHANGED = 3
    MOTION_START = 4
    MOTION_STOP = 5
    STREAM_STALLED = 6
    DEVICE_ERROR = 7
    ALARM_INPUT = 8
    DISK_ERROR = 9
    ENCODER_ERROR = 10
    SIM_REMOVED = 11
    DATA_CAP_REACHED = 12
    SUPERVISOR_RESET = 13
    """The board's supervisor reset it (heartbeats stopped), or held a reset back at its cap."""
    BROWN_OUT = 14
    """The board's supply failed (the supervisor powered up) or fell below ``[board] low_supply_v``."""
    OTHER = 255
    """Anything else; the detail text names it."""

    @property
    def display(self) -> str:
        """The name viewers print: ``SignalLost``, ``MotionStart``, ..."""
        return "".join(part.capitalize() for part in self.name.split("_"))


def kind_name(kind: int) -> str:
    """The display name of a kind number (``Kind42`` for one this version does not know)."""
    try:
        return AlarmKind(kind).display
    except ValueError:
        return f"Kind{kind}"


def kind_from_name(name: str) -> AlarmKind:
    """The kind named ``name``: ``SignalLost``, ``signal_lost`` or ``signal-lost``.

    Raises:
        ValueError: no such kind (the message lists them).
    """
    key = name.replace("-", "_").lower()
    for kind in AlarmKind:
        if key in (kind.name.lower(), kind.display.lower()):
            return kind
    names = ", ".join(k.display for k in AlarmKind)
    raise ValueError(f"unknown alarm kind {name!r}: use one of {names}")


class SnapshotTooLargeError(ValueError):
    """An alarm's snapshot is over the size cap."""


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """One alarm, as the device numbered it. ``time_ms`` is unix milliseconds."""

    seq: int
    time_ms: int
    kind: int
    channel: int | None = None
    detail: str = ""
    snapshot: bytes | None = None

    def encode(self, prev_ms: int | None = None) -> bytes:
        """The record's bytes; its time relative to ``prev_ms`` (None: absolute)."""
        flags = (
            (_HAS_CHANNEL if self.channel is not None else 0)
            | (_HAS_DETAIL if self.detail else 0)
            | (_HAS_SNAPSHOT if self.snapshot is not None else 0)
        )
        out = bytearray((self.kind, flags))
        out += _varint(self.time_ms if prev_ms is None else _zigzag(self.time_ms - prev_ms))
        if self.channel is not None:
            out.append(self.channel)
        if self.detail:
            raw = self.detail.encode("utf-8")
            out.append(len(raw))
            out += raw
        if self.snapshot is not None:
            out += _varint(len(self.snapshot)) + self.snapshot
        return bytes(out)

    @classmethod
    def decode(cls, seq: int, data: bytes, prev_ms: int | None = None) -> AlarmRecord:
        """Parse ``encode``'s bytes.

        Raises:
            ValueError: truncated, a field out of range, detail not UTF-8, or a snapshot over
                ``MAX_SNAPSHOT`` bytes.
        """
        if len(data) < 3:
            raise ValueError(f"alarm record of {len(data)} bytes is truncated")
        kind, flags = data[0], data[1]
        raw_time, offset = _read_varint(data, 2)
        time_ms = raw_time if prev_ms is None else prev_ms + _unzigzag(raw_time)
        if not 0 <= time_ms < 2**63:
            raise ValueError(f"alarm record time {time_ms} ms is out of range")
        channel = None
        if flags & _HAS_CHANNEL:
            if offset >= len(data):
                raise ValueError("alarm record truncated in its channel")
            channel = data[offset]
            offset += 1
        detail = ""
        if flags & _HAS_DETAIL:
            if offset >= len(data):
                raise ValueError("alarm record truncated in its detail")
            size = data[offset]
            raw = data[offset + 1 : offset + 1 + size]
            if len(raw) != size or size > MAX_DETAIL:
                raise ValueError(f"alarm record detail of {size} bytes is truncated or too long")
            detail = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
            offset += 1 + size
        snapshot = None
        if flags & _HAS_SNAPSHOT:
            size, offset = _read_varint(data, offset)
            if size > MAX_SNAPSHOT:
                raise ValueError(f"alarm snapshot of {size} bytes is over the {MAX_SNAPSHOT}-byte cap")
            snapshot = data[offset : offset + size]
            if len(snapshot) != size:
                raise ValueError("alarm record truncated in its snapshot")
        return cls(seq, time_ms, kind, channel, detail, snapshot)


def check_alarm(kind: int, channel: int | None, detail: str, snapshot: bytes | None) -> str:
    """Check what a local caller wants to raise; returns the detail cut to ``MAX_DETAIL`` bytes.

    Raises:
        SnapshotTooLargeError: ``snapshot`` is over ``MAX_SNAPSHOT`` bytes.
        ValueError: ``kind`` or ``channel`` is not 0-255, or ``snapshot`` is not a JPEG.
    """
    if not 0 <= kind <= 0xFF:
        raise ValueError(f"alarm kind {kind} is out of range: use an AlarmKind")
    if channel is not None and not 0 <= channel <= 0xFF:
        raise ValueError(f"alarm channel {channel} is out of range: use 0-255 or None")
    if snapshot is not None:
        if len(snapshot) > MAX_SNAPSHOT:
            raise SnapshotTooLargeError(
                f"alarm snapshot of {len(snapshot)} bytes is over the {MAX_SNAPSHOT}-byte cap: "
                "take it at a lower resolution or JPEG quality, or raise the alarm without it"
            )
        if not snapshot.startswith(_JPEG_SOI):
            raise ValueError(
                f"alarm snapshot does not start with a JPEG marker (first bytes {snapshot[:4].hex()}): "
                "pass the JPEG file's bytes"
            )
    return detail.encode("utf-8")[:MAX_DETAIL].decode("utf-8", "ignore")


# -- EVENT plaintexts ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordsMessage:
    """op RECORDS: whole records with consecutive seqs."""

    stream: int
    records: tuple[AlarmRecord, ...]


@dataclass(frozen=True, slots=True)
class FragmentMessage:
    """op FRAGMENT: bytes ``offset``.. of record ``seq``, whose encoding is ``total`` bytes."""

    stream: int
    seq: int
    total: int
    offset: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class AckMessage:
    """op ACK: records up to ``through_seq`` stored; ``next_offset`` bytes of the next one held."""

    stream: int
    through_seq: int
    next_offset: int = 0

    def encode(self) -> bytes:
        """The plaintext."""
        return _ACK.pack(OP_ACK, self.stream, self.through_seq, self.next_offset)


def encode_records(stream: int, records: list[AlarmRecord]) -> bytes:
    """A RECORDS plaintext. ``records`` must have consecutive seqs.

    Raises:
        ValueError: empty, or the seqs are not consecutive.
    """
    if not records:
        raise ValueError("no records to encode")
    out = bytearray(_RECORDS_HEAD.pack(OP_RECORDS, stream, records[0].seq))
    prev: int | None = None
    for index, record in enumerate(records):
        if record.seq != records[0].seq + index:
            raise ValueError("records in one message must have consecutive seqs")
        body = record.encode(prev)
        out += _varint(len(body)) + body
        prev = record.time_ms
    return bytes(out)


def encode_fragment(stream: int, seq: int, encoded: bytes, offset: int) -> bytes:
    """A FRAGMENT plaintext: up to ``FRAGMENT_CHUNK`` bytes of ``encoded`` from ``offset``."""
    chunk = encoded[offset : offset + FRAGMENT_CHUNK]
    return _FRAGMENT_HEAD.pack(OP_FRAGMENT, stream, seq, len(encoded), offset) + chunk


def decode_event(data: bytes) -> RecordsMessage | FragmentMessage | AckMessage:
    """Parse an EVENT plaintext (either direction).

    Raises:
        ValueError: unknown op, truncated, trailing bytes where none may be, or a bad record.
    """
    if not data:
        raise ValueError("empty EVENT plaintext")
    op = data[0]
    if op == OP_ACK:
        if len(data) != _ACK.size:
            raise ValueError(f"EVENT ack of {len(data)} bytes, not {_ACK.size}")
        _, stream, through, next_offset = _ACK.unpack(data)
        return AckMessage(stream, through, next_offset)
    if op == OP_FRAGMENT:
        if len(data) < _FRAGMENT_HEAD.size:
            raise ValueError("EVENT fragment header truncated")
        _, stream, seq, total, offset = _FRAGMENT_HEAD.unpack_from(data)
        chunk = data[_FRAGMENT_HEAD.size :]
        if total > MAX_RECORD or offset + len(chunk) > total or not chunk:
            raise ValueError(f"EVENT fragment {offset}+{len(chunk)} of a {total}-byte record is out of range")
        return FragmentMessage(stream, seq, total, offset, bytes(chunk))
    if op == OP_RECORDS:
        if len(data) < _RECORDS_HEAD.size:
            raise ValueError("EVENT records header truncated")
        _, stream, first = _RECORDS_HEAD.unpack_from(data)
        offset = _RECORDS_HEAD.size
        records: list[AlarmRecord] = []
        prev: int | None = None
        while offset < len(data):
            size, offset = _read_varint(data, offset)
            body = data[offset : offset + size]
            if len(body) != size:
                raise ValueError("EVENT record runs past the end")
            seq = first + len(records)
            if seq > 0xFFFFFFFF:
                raise ValueError("EVENT record seq overflows")
            record = AlarmRecord.decode(seq, bytes(body), prev)
            records.append(record)
            prev = record.time_ms
            offset += size
        if not records:
            raise ValueError("EVENT records message holds no record")
        return RecordsMessage(stream, tuple(records))
    raise ValueError(f"unknown EVENT op {op}")


# -- varints ---------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 64, 7):
        if offset >= len(data):
            raise ValueError("varint truncated")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
    raise ValueError("varint longer than 64 bits")


def _zigzag(value: int) -> int:
    return (value << 1) if value >= 0 else ((-value) << 1) - 1


def _unzigzag(value: int) -> int:
    return (value >> 1) if not value & 1 else -((value + 1) >> 1)
