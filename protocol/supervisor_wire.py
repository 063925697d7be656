"""The board supervisor's link, as the SoC speaks it: frames, requests and replies. No I/O.

The supervisor is a small MCU on the recorder's board (its MicroPython firmware is in
``supervisor/``; docs/supervisor.md has the wiring and the policy). It resets a hung SoC when the
daemon's heartbeats stop and power-cycles the modem on request. This module is the daemon's half
of the UART protocol; the firmware's half is ``supervisor/sv_wire.py``, and the tests run both
against each other in MicroPython.

One frame (integers big-endian)::

    0xA5 | version u8 | type u8 | seq u8 | length u8 | payload | CRC-16 u16

CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, unreflected, no final XOR) over version..payload.
A reply has the request's type with bit 7 set and the request's seq; ``0xFF`` is the error reply.

Requests (type: payload -> reply payload):

- 0x01 heartbeat: health u8, unix_time u32 -> timeout_s u16
- 0x02 power-cycle modem: profile u8 -> status u8, duration_ms u32
- 0x03 reset SoC: - -> status u8, delay_ms u16
- 0x04 read reset log: - -> boots u16, count u8, then count entries of
  (cause u8, unix u32, uptime_s u32, detail u16), newest first
- 0x05 read supply: - -> mv u16, min_mv u16, raw u16
- 0x06 set heartbeat timeout: seconds u16 -> status u8, timeout_s u16
- 0x07 status: - -> version 3 x u8, armed u8, health u8, timeout_s u16, since_heartbeat_s u16
  (0xFFFF: none yet), resets_24h u8, daily_cap u8, garbage_bytes u32, bad_crc u16,
  bad_version u16, bad_requests u16, uptime_s u32
- 0x08 disarm (firmware 1.1): unix_time u32 -> was_armed u8. The daemon stops on purpose; the
  watchdog stands down until the next heartbeat. An older firmware answers the error reply
  (UNKNOWN_TYPE) and stays armed.
- 0xFF (error reply): code u8, request type u8
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

SYNC = 0xA5
VERSION = 1
HEADER_LEN = 5
MAX_PAYLOAD = 240
FRAME_GAP_MS = 100
"""A partial frame whose bytes stop for longer than this is given up."""
MAX_BUFFER = 2 * (HEADER_LEN + MAX_PAYLOAD + 2)
REPLY_BIT = 0x80


class MsgType(enum.IntEnum):
    HEARTBEAT = 0x01
    POWER_CYCLE_MODEM = 0x02
    RESET_SOC = 0x03
    READ_RESET_LOG = 0x04
    READ_SUPPLY = 0x05
    SET_HEARTBEAT_TIMEOUT = 0x06
    GET_STATUS = 0x07
    DISARM = 0x08
    ERROR = 0xFF


class Health(enum.IntEnum):
    """What the daemon says of itself in a heartbeat."""

    OK = 0
    DEGRADED = 1
    FAILING = 2


class Status(enum.IntEnum):
    OK = 0
    BUSY = 1
    NOT_FITTED = 2
    OUT_OF_RANGE = 3


class ModemProfile(enum.IntEnum):
    """The firmware's power-cycle sequences (``MODEM_PROFILES`` in supervisor/sv_core.py)."""

    SIM800 = 0
    QUECTEL_EC2X_UC20 = 1
    SIM800_POWER_CUT = 2
    QUECTEL_POWER_CUT = 3


class ResetCause(enum.IntEnum):
    HEARTBEAT_TIMEOUT = 1
    COMMAND = 2
    MODEM_POWER_CYCLE = 3
    MCU_START = 4
    CAPPED = 5
    DISARMED = 6
    """The daemon stopped on purpose and disarmed the watchdog: not a reset."""


class ErrorCode(enum.IntEnum):
    UNKNOWN_TYPE = 1
    BAD_PAYLOAD = 2


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``b"123456789"`` gives 0x29B1)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


@dataclass(frozen=True, slots=True)
class Frame:
    """One valid frame: its type, seq and payload."""

    msg_type: int
    seq: int
    payload: bytes

    @property
    def is_reply(self) -> bool:
        return self.msg_type == MsgType.ERROR or bool(self.msg_type & REPLY_BIT)


def encode_frame(msg_type: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame on the wire.

    Raises:
        ValueError: a payload over MAX_PAYLOAD bytes, or a type or seq outside 0-255.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a supervisor frame carries at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    if not (0 <= msg_type <= 0xFF and 0 <= seq <= 0xFF):
        raise ValueError(f"type {msg_type} and seq {seq} must each fit a byte (0-255)")
    body = bytes((VERSION, msg_type, seq, len(payload))) + payload
    return bytes((SYNC,)) + body + crc16(body).to_bytes(2, "big")


@dataclass(slots=True)
class DecoderCounts:
    """What a decoder skipped (the firmware's status reports its own)."""

    frames: int = 0
    garbage_bytes: int = 0
    bad_crc: int = 0
    bad_version: int = 0
    stalled: int = 0


class FrameDecoder:
    """Bytes in, valid frames out; garbage, bad CRCs and other versions skipped and counted.

    The same rules as the firmware's: after a bad CRC the search goes on one byte past the sync
    byte, so a frame behind garbage is still found; a partial frame stalled for longer than
    FRAME_GAP_MS is given up when the next bytes come or at ``poll`` after ``deadline``: the
    search then goes on byte by byte through what was held.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._partial_since: float | None = None
        self.counts = DecoderCounts()

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def deadline(self) -> float | None:
        """When a waiting partial frame is given up (None: none waits); call ``poll`` then."""
        if self._buf and self._partial_since is not None:
            return self._partial_since + FRAME_GAP_MS + 1
        return None

    def poll(self, now_ms: float) -> list[Frame]:
        """Give up a partial frame stalled past FRAME_GAP_MS; return the frames found behind it."""
        if self._buf and self._partial_since is not None and now_ms - self._partial_since > FRAME_GAP_MS:
            return self.feed(b"", now_ms)
        return []

    def feed(self, data: bytes, now_ms: float) -> list[Frame]:
        """Add received bytes (``now_ms``: any monotonic clock in milliseconds); return the
        frames now complete, oldest first. Never raises on bad bytes."""
        frames: list[Frame] = []
        if self._buf and self._partial_since is not None and now_ms - self._partial_since > FRAME_GAP_MS:
            # Every byte held came before the gap: whatever partial frame they hold has stalled.
            # Drop a byte at a time and look again, keeping the frames found on the way.
            self.counts.stalled += 1
            while self._buf:
                self.counts.garbage_bytes += 1
                self._buf = self._buf[1:]
                frames += self._scan()
        buf = self._buf + bytes(data)
        if len(buf) > MAX_BUFFER:
            self.counts.garbage_bytes += len(buf) - MAX_BUFFER
            buf = buf[-MAX_BUFFER:]
        self._buf = buf
        frames += self._scan()
        self._partial_since = now_ms if self._buf else None
        return frames

    def _scan(self) -> list[Frame]:
        """Take the whole frames off the buffer's front; leave a partial one."""
        counts, buf = self.counts, self._buf
        frames: list[Frame] = []
        while True:
            at = buf.find(SYNC)
            if at < 0:
                counts.garbage_bytes += len(buf)
                buf = b""
                break
            counts.garbage_bytes += at
            buf = buf[at:]
            if len(buf) < HEADER_LEN:
                break
            length = buf[4]
            if length > MAX_PAYLOAD:
                counts.garbage_bytes += 1
                buf = buf[1:]
                continue
            total = HEADER_LEN + length + 2
            if len(buf) < total:
                break
            if crc16(buf[1 : HEADER_LEN + length]) != int.from_bytes(buf[HEADER_LEN + length : total], "big"):
                counts.bad_crc += 1
                counts.garbage_bytes += 1
                buf = buf[1:]
                continue
            if buf[1] != VERSION:
                counts.bad_version += 1
                buf = buf[total:]
                continue
            counts.frames += 1
            frames.append(Frame(buf[2], buf[3], buf[HEADER_LEN : HEADER_LEN + length]))
            buf = buf[total:]
        self._buf = buf
        return frames


# -- requests ----------------------------------------------------------------------------------


def heartbeat(seq: int, health: Health, unix_time: int) -> bytes:
    """A heartbeat frame; ``unix_time`` 0 when the SoC does not know the time."""
    return encode_frame(MsgType.HEARTBEAT, seq, struct.pack(">BI", health, unix_time))


def power_cycle_modem(seq: int, profile: ModemProfile | int) -> bytes:
    return encode_frame(MsgType.POWER_CYCLE_MODEM, seq, bytes((int(profile),)))


def reset_soc(seq: int) -> bytes:
    return encode_frame(MsgType.RESET_SOC, seq)


def read_reset_log(seq: int) -> bytes:
    return encode_frame(MsgType.READ_RESET_LOG, seq)


def read_supply(seq: int) -> bytes:
    return encode_frame(MsgType.READ_SUPPLY, seq)


def set_heartbeat_timeout(seq: int, seconds: int) -> bytes:
    """Raises ValueError for seconds outside 0-65535 (the firmware takes 10-3600)."""
    if not 0 <= seconds <= 0xFFFF:
        raise ValueError(f"a heartbeat timeout of {seconds} s does not fit the field (0-65535 s)")
    return encode_frame(MsgType.SET_HEARTBEAT_TIMEOUT, seq, seconds.to_bytes(2, "big"))


def get_status(seq: int) -> bytes:
    return encode_frame(MsgType.GET_STATUS, seq)


def disarm(seq: int, unix_time: int) -> bytes:
    """Stand the heartbeat watchdog down (a deliberate stop); ``unix_time`` 0 when not known.

    Raises:
        ValueError: ``unix_time`` outside 0-0xFFFFFFFF.
    """
    if not 0 <= unix_time <= 0xFFFFFFFF:
        raise ValueError(f"unix time {unix_time} does not fit the field (0 to 2**32-1)")
    return encode_frame(MsgType.DISARM, seq, unix_time.to_bytes(4, "big"))


# -- replies -----------------------------------------------------------------------------------


class ReplyError(ValueError):
    """A reply frame whose payload does not have its type's layout (a firmware of another
    version, or a bug): the frame says what it was."""


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    seq: int
    timeout_s: int


@dataclass(frozen=True, slots=True)
class PowerCycleStarted:
    seq: int
    status: Status
    duration_ms: int
    """How long the sequence runs (BUSY: how long the running one still takes)."""


@dataclass(frozen=True, slots=True)
class ResetAccepted:
    seq: int
    status: Status
    delay_ms: int


@dataclass(frozen=True, slots=True)
class ResetLogEntry:
    cause: ResetCause | int
    unix_time: int
    """0: the supervisor had not been told the time."""
    uptime_s: int
    """The supervisor's uptime at the event."""
    detail: int


@dataclass(frozen=True, slots=True)
class ResetLog:
    seq: int
    boots: int
    entries: tuple[ResetLogEntry, ...]
    """Newest first."""


@dataclass(frozen=True, slots=True)
class SupplyReading:
    seq: int
    millivolts: int
    min_millivolts: int
    raw: int


@dataclass(frozen=True, slots=True)
class TimeoutSet:
    seq: int
    status: Status
    timeout_s: int


@dataclass(frozen=True, slots=True)
class SupervisorStatus:
    seq: int
    firmware: tuple[int, int, int]
    armed: bool
    health: int
    timeout_s: int
    since_heartbeat_s: int | None
    resets_24h: int
    daily_cap: int
    garbage_bytes: int
    bad_crc: int
    bad_version: int
    bad_requests: int
    uptime_s: int


@dataclass(frozen=True, slots=True)
class Disarmed:
    seq: int
    was_armed: bool
    """False: the watchdog was not armed (no heartbeat since the MCU started, or disarmed already)."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    seq: int
    code: ErrorCode | int
    request_type: int


Reply = (
    HeartbeatAck
    | PowerCycleStarted
    | ResetAccepted
    | ResetLog
    | SupplyReading
    | TimeoutSet
    | SupervisorStatus
    | Disarmed
    | ErrorReply
)

_STATUS = struct.Struct(">3BBBHHBBIHHHI")
_ENTRY = struct.Struct(">BIIH")


def _enum(kind: type[enum.IntEnum], value: int) -> int:
    try:
        return kind(value)
    except ValueError:
        return value


def parse_reply(frame: Frame) -> Reply:
    """The reply a frame carries.

    Raises:
        ReplyError: not a reply, or its payload does not fit its type's layout.
    """
    p, seq = frame.payload, frame.seq
    try:
        match frame.msg_type:
            case 0x81:
                (timeout_s,) = struct.unpack(">H", p)
                return HeartbeatAck(seq, timeout_s)
            case 0x82:
                status, duration = struct.unpack(">BI", p)
                return PowerCycleStarted(seq, Status(status), duration)
            case 0x83:
                status, delay = struct.unpack(">BH", p)
                return ResetAccepted(seq, Status(status), delay)
            case 0x84:
                boots, count = struct.unpack_from(">HB", p)
                if len(p) != 3 + count * _ENTRY.size:
                    raise ReplyError(f"reset log reply of {len(p)} bytes for {count} entries")
                entries = tuple(
                    ResetLogEntry(_enum(ResetCause, c), unix, up, detail)
                    for c, unix, up, detail in _ENTRY.iter_unpack(p[3:])
                )
                return ResetLog(seq, boots, entries)
            case 0x85:
                mv, min_mv, raw = struct.unpack(">HHH", p)
                return SupplyReading(seq, mv, min_mv, raw)
            case 0x86:
                status, timeout_s = struct.unpack(">BH", p)
                return TimeoutSet(seq, Status(status), timeout_s)
            case 0x87:
                f = _STATUS.unpack(p)
                return SupervisorStatus(
                    seq,
                    (f[0], f[1], f[2]),
                    bool(f[3]),
                    f[4],
                    f[5],
                    None if f[6] == 0xFFFF else f[6],
                    f[7],
                    f[8],
                    f[9],
                    f[10],
                    f[11],
                    f[12],
                    f[13],
                )
            case 0x88:
                (was_armed,) = struct.unpack(">B", p)
                return Disarmed(seq, bool(was_armed))
            case MsgType.ERROR:
                code, request_type = struct.unpack(">BB", p)
                return ErrorReply(seq, _enum(ErrorCode, code), request_type)
    except (struct.error, ValueError) as exc:
        raise ReplyError(
            f"supervisor reply type 0x{frame.msg_type:02x} seq {seq} with payload {p.hex()}: {exc}; "
            "is the firmware of this version (GET_STATUS tells)?"
        ) from exc
    raise ReplyError(f"frame type 0x{frame.msg_type:02x} seq {seq} is not a supervisor reply")
