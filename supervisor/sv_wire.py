"""The supervisor link's frames, as the MCU reads and writes them (MicroPython and CPython).

One frame on the UART (115200 8N1)::

    0xA5 | version u8 | type u8 | seq u8 | length u8 | payload (length bytes) | CRC-16 u16

Integers are big-endian. The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF,
no reflection, no final XOR; "123456789" gives 0x29B1) over version, type, seq, length and payload.
The SoC numbers its requests (``seq``); every reply carries the request's type with bit 7 set and
the request's seq. Message layouts are in docs/supervisor.md; the daemon's twin of this file is
``dvrlink.protocol.supervisor_wire``, and the tests hold the two to the same bytes.

What is not a frame is skipped and counted, never acted on: bytes before a sync byte, a frame whose
CRC does not match (the decoder then looks for the next sync byte one byte further, so a frame hidden
behind garbage is still found), a frame of another version, and a partial frame that stops for
longer than ``FRAME_GAP_MS`` (``poll`` gives it up when no byte follows; the search then goes on
byte by byte through what was held, so a frame behind a stray sync byte is found then).

This file runs on the MCU: no dataclasses, no typing at run time (mypy reads the annotations).
"""

SYNC = 0xA5
VERSION = 1
HEADER_LEN = 5
"""Sync, version, type, seq, length."""
MAX_PAYLOAD = 240
FRAME_GAP_MS = 100
"""A partial frame older than this is given up (a 247-byte frame takes 22 ms at 115200 baud)."""
MAX_BUFFER = 2 * (HEADER_LEN + MAX_PAYLOAD + 2)

# Requests (SoC -> MCU); a reply's type is the request's with REPLY set.
HEARTBEAT = 0x01
"""health u8 (HEALTH_*), unix_time u32 (0: not known)."""
POWER_CYCLE_MODEM = 0x02
"""profile u8 (a key of sv_core.MODEM_PROFILES)."""
RESET_SOC = 0x03
"""(no payload)"""
READ_RESET_LOG = 0x04
"""(no payload)"""
READ_SUPPLY = 0x05
"""(no payload)"""
SET_HEARTBEAT_TIMEOUT = 0x06
"""seconds u16"""
GET_STATUS = 0x07
"""(no payload)"""
DISARM = 0x08
"""unix_time u32 (0: not known). The daemon stops on purpose: the heartbeat watchdog stands down
until the next heartbeat arms it again. Reply: was_armed u8. A firmware older than this answers
ERROR (ERR_UNKNOWN_TYPE) and stays armed."""
REPLY = 0x80
ERROR = 0xFF
"""The reply to a request the MCU cannot take: code u8 (ERR_*), request type u8."""

ERR_UNKNOWN_TYPE = 1
ERR_BAD_PAYLOAD = 2

HEALTH_OK = 0
HEALTH_DEGRADED = 1
HEALTH_FAILING = 2

STATUS_OK = 0
STATUS_BUSY = 1
"""A modem power cycle is already running."""
STATUS_NOT_FITTED = 2
"""No such modem profile, or this board lacks the part the profile needs (the power MOSFET)."""
STATUS_OUT_OF_RANGE = 3

LOG_ENTRY_LEN = 11
"""cause u8, unix_time u32, uptime_s u32, detail u16."""


def crc16(data: bytes, start: int = 0, end: int = -1) -> int:
    """CRC-16/CCITT-FALSE of ``data[start:end]`` (``end`` -1: to the end)."""
    if end < 0:
        end = len(data)
    crc = 0xFFFF
    for i in range(start, end):
        crc ^= data[i] << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def encode_frame(msg_type: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame. Raises ValueError for a payload over MAX_PAYLOAD or a field out of range."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes: at most {MAX_PAYLOAD} fit a frame")
    if not (0 <= msg_type <= 0xFF and 0 <= seq <= 0xFF):
        raise ValueError("type and seq are bytes (0-255)")
    body = bytes((VERSION, msg_type, seq, len(payload))) + bytes(payload)
    crc = crc16(body)
    return bytes((SYNC,)) + body + bytes((crc >> 8, crc & 0xFF))


def u16(data: bytes, at: int) -> int:
    return (data[at] << 8) | data[at + 1]


def u32(data: bytes, at: int) -> int:
    return (data[at] << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3]


def pack_u16(value: int) -> bytes:
    value = min(max(value, 0), 0xFFFF)
    return bytes((value >> 8, value & 0xFF))


def pack_u32(value: int) -> bytes:
    value = min(max(value, 0), 0xFFFFFFFF)
    return bytes((value >> 24, (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF))


class FrameDecoder:
    """Bytes in (``feed``), whole valid frames out as ``(type, seq, payload)``; the rest counted."""

    def __init__(self) -> None:
        self._buf = b""
        self._partial_since = -1
        self.garbage_bytes = 0
        """Bytes skipped while looking for a frame."""
        self.bad_crc = 0
        self.bad_version = 0
        self.stalled = 0
        """Partial frames given up after FRAME_GAP_MS."""
        self.frames = 0

    def deadline(self) -> int:
        """When a partial frame, if one waits, is given up (-1: none waits)."""
        return self._partial_since + FRAME_GAP_MS + 1 if self._buf else -1

    def poll(self, now_ms: int) -> list[tuple[int, int, bytes]]:
        """Give up a stalled partial frame; return frames found behind it."""
        if self._buf and now_ms - self._partial_since > FRAME_GAP_MS:
            return self.feed(b"", now_ms)
        return []

    def feed(self, data: bytes, now_ms: int) -> list[tuple[int, int, bytes]]:
        """Add received bytes; return the frames now complete, oldest first."""
        frames: list[tuple[int, int, bytes]] = []
        if self._buf and now_ms - self._partial_since > FRAME_GAP_MS:
            # Every byte held arrived before the gap, so whatever partial frame they hold has
            # stalled: drop a byte at a time and look again, keeping the frames found on the way.
            self.stalled += 1
            while self._buf:
                self.garbage_bytes += 1
                self._buf = self._buf[1:]
                frames += self._scan()
        self._buf = self._buf + bytes(data)
        if len(self._buf) > MAX_BUFFER:
            self.garbage_bytes += len(self._buf) - MAX_BUFFER
            self._buf = self._buf[len(self._buf) - MAX_BUFFER :]
        frames += self._scan()
        self._partial_since = now_ms if self._buf else -1
        return frames

    def _scan(self) -> list[tuple[int, int, bytes]]:
        """Take the whole frames off the buffer's front; leave a partial one."""
        frames: list[tuple[int, int, bytes]] = []
        buf = self._buf
        while True:
            at = buf.find(bytes((SYNC,)))
            if at < 0:
                self.garbage_bytes += len(buf)
                buf = b""
                break
            if at > 0:
                self.garbage_bytes += at
                buf = buf[at:]
            if len(buf) < HEADER_LEN:
                break
            length = buf[4]
            if length > MAX_PAYLOAD:
                self.garbage_bytes += 1
                buf = buf[1:]
                continue
            total = HEADER_LEN + length + 2
            if len(buf) < total:
                break
            if crc16(buf, 1, HEADER_LEN + length) != u16(buf, HEADER_LEN + length):
                self.bad_crc += 1
                self.garbage_bytes += 1
                buf = buf[1:]
                continue
            if buf[1] != VERSION:
                self.bad_version += 1
                buf = buf[total:]
                continue
            self.frames += 1
            frames.append((buf[2], buf[3], bytes(buf[HEADER_LEN : HEADER_LEN + length])))
            buf = buf[total:]
        self._buf = buf
        return frames
