"""HDLC-like framing of PPP over a serial line (RFC 1662): flags, escapes, ACCM and FCS-16.

scapy's ``HDLC`` layer is only the address and control octets; it does no byte stuffing and no
FCS, so this module does that part. Sans-I/O: bytes in, frames out.

A frame on the wire is ``7E | stuffed(address control protocol information FCS) | 7E``. The FCS is
CRC-16/X-25 (RFC 1662 appendix C: initial 0xFFFF, reflected polynomial 0x8408, complemented,
sent least significant octet first); over the frame and its FCS the check gives 0xF0B8.
"""

from __future__ import annotations

from dataclasses import dataclass

FLAG = 0x7E
ESCAPE = 0x7D
ESCAPE_XOR = 0x20
FCS_INIT = 0xFFFF
FCS_GOOD = 0xF0B8
"""The FCS over a frame plus its transmitted FCS (RFC 1662 section C.2)."""
DEFAULT_ACCM = 0xFFFFFFFF
"""Every control character escaped: the ACCM before LCP has negotiated one (RFC 1662 7.1)."""


def _fcs_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0x8408 if value & 1 else value >> 1
        table.append(value)
    return tuple(table)


_FCS_TABLE = _fcs_table()


def fcs16(data: bytes, fcs: int = FCS_INIT) -> int:
    """The running FCS-16 of ``data`` (not complemented)."""
    for byte in data:
        fcs = (fcs >> 8) ^ _FCS_TABLE[(fcs ^ byte) & 0xFF]
    return fcs


def encode_frame(frame: bytes, accm: int = DEFAULT_ACCM) -> bytes:
    """``frame`` (address, control, protocol, information) with its FCS, stuffed and flagged.

    Octets below 0x20 whose bit is set in ``accm`` (the peer's receive ACCM) are escaped, as are
    0x7E and 0x7D always.
    """
    fcs = fcs16(frame) ^ 0xFFFF
    body = frame + bytes((fcs & 0xFF, fcs >> 8))
    out = bytearray((FLAG,))
    for byte in body:
        if byte in (FLAG, ESCAPE) or (byte < 0x20 and accm >> byte & 1):
            out += bytes((ESCAPE, byte ^ ESCAPE_XOR))
        else:
            out.append(byte)
    out.append(FLAG)
    return bytes(out)


@dataclass(slots=True)
class DeframerCounters:
    """What the deframer dropped, by reason."""

    frames: int = 0
    """Good frames returned."""
    bad_fcs: int = 0
    too_short: int = 0
    """Fewer than 4 octets (address or protocol and the FCS) between flags."""
    too_long: int = 0
    aborted: int = 0
    """Frames ended by ``7D 7E`` (RFC 1662 4.4.1: the sender aborted it)."""


class Deframer:
    """Splits the byte stream from the peer into frames whose FCS checks out.

    ``receive_accm`` is the ACCM this side asked the peer to use: unescaped octets below 0x20
    flagged in it are removed, since equipment on the line may have inserted them (RFC 1662 7.1).
    Frames longer than ``max_frame`` octets (unstuffed) are dropped.
    """

    def __init__(self, max_frame: int = 4096, receive_accm: int = DEFAULT_ACCM) -> None:
        self.max_frame = max_frame
        self.receive_accm = receive_accm
        self.counters = DeframerCounters()
        self._buf = bytearray()
        self._escaped = False
        self._overflow = False

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by ``data``, each without its FCS (address and control kept if sent)."""
        frames: list[bytes] = []
        for octet in data:
            byte = octet
            if byte == FLAG:
                if self._escaped:
                    self.counters.aborted += 1
                elif self._overflow:
                    self.counters.too_long += 1
                elif self._buf:
                    frame = self._check(bytes(self._buf))
                    if frame is not None:
                        frames.append(frame)
                self._buf.clear()
                self._escaped = self._overflow = False
                continue
            if self._overflow:
                continue
            if byte == ESCAPE:
                self._escaped = True
                continue
            if self._escaped:
                byte ^= ESCAPE_XOR
                self._escaped = False
            elif byte < 0x20 and self.receive_accm >> byte & 1:
                continue
            self._buf.append(byte)
            if len(self._buf) > self.max_frame + 2:
                self._overflow = True
                self._buf.clear()
        return frames

    def _check(self, body: bytes) -> bytes | None:
        if len(body) < 4:
            self.counters.too_short += 1
            return None
        if fcs16(body) != FCS_GOOD:
            self.counters.bad_fcs += 1
            return None
        self.counters.frames += 1
        return body[:-2]
