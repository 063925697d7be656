"""The RTSP a recorder's live view needs (RFC 2326), without I/O: requests in, responses out.

dvrlinkd serves each capture channel's live stream as RTSP with RTP interleaved in the RTSP TCP
connection (RFC 2326 §10.12): one TCP stream per viewer, which a session carries like any
forward. The parser takes bytes as they come, yields whole requests, and skips the interleaved
frames a client sends (its RTCP receiver reports). It never raises on bad bytes: a malformed
request becomes a ``BadRequest`` the server answers with 400 and a close.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_HEADER_BYTES = 8192
"""A request's line and headers; more is a bad request (a player's are a few hundred bytes)."""
MAX_BODY_BYTES = 8192
INTERLEAVED = 0x24
"""``$``: an interleaved binary frame, ``$ channel(1) length(2) data``."""
METHODS = frozenset(
    {"OPTIONS", "DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER"}
)


@dataclass(frozen=True, slots=True)
class Request:
    """One request: method, URL, CSeq and headers (names lower-cased)."""

    method: str
    url: str
    cseq: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class BadRequest:
    """Bytes that are not an RTSP request; ``reason`` says what was wrong."""

    reason: str
    cseq: str = "0"


class RequestParser:
    """Feed bytes with ``feed``; take requests with ``next``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.frames_skipped = 0
        """Interleaved frames from the client (RTCP reports), dropped."""

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> Request | BadRequest | None:
        """The next whole request, a ``BadRequest`` (the connection should then close), or None
        until more bytes come."""
        buffer = self._buffer
        while buffer and buffer[0] == INTERLEAVED:
            if len(buffer) < 4:
                return None
            size = 4 + int.from_bytes(buffer[2:4], "big")
            if len(buffer) < size:
                return None
            del buffer[:size]
            self.frames_skipped += 1
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                return BadRequest(f"no end of headers in {len(buffer)} bytes")
            return None
        if end > MAX_HEADER_BYTES:
            return BadRequest(f"headers of {end} bytes")
        head = bytes(buffer[:end]).decode("utf-8", "replace")
        lines = head.split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                return BadRequest(f"a header line without a colon: {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        cseq = headers.get("cseq", "0")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("RTSP/1."):
            return BadRequest(f"not an RTSP request line: {lines[0][:80]!r}", cseq)
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return BadRequest("a Content-Length that is not a number", cseq)
        if not 0 <= length <= MAX_BODY_BYTES:
            return BadRequest(f"a body of {length} bytes", cseq)
        if len(buffer) < end + 4 + length:
            return None
        body = bytes(buffer[end + 4 : end + 4 + length])
        del buffer[: end + 4 + length]
        return Request(parts[0].upper(), parts[1], cseq, headers, body)


def response(
    status: int, reason: str, cseq: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """An RTSP response's bytes."""
    lines = [f"RTSP/1.0 {status} {reason}", f"CSeq: {cseq}", "Server: dvrlinkd"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def interleaved(channel: int, packet: bytes) -> bytes:
    """An RTP or RTCP packet framed for the RTSP connection (at most 65,535 bytes)."""
    return bytes((INTERLEAVED, channel)) + len(packet).to_bytes(2, "big") + packet


def session_sdp(sdp: str) -> str:
    """The SDP an RTP sender wrote (ffmpeg's ``-sdp_file``), made an RTSP DESCRIBE answer: no
    address or port of the sender's (the media comes interleaved), and a control URL per
    medium (``trackID=N``) for SETUP."""
    out: list[str] = []
    track = 0
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if not line or line.startswith("a=control:"):
            continue
        if line.startswith("c="):
            out.append("c=IN IP4 0.0.0.0")
        elif line.startswith("m="):
            fields = line.split(" ")
            if len(fields) >= 2:
                fields[1] = "0"
            if track == 0:
                out.append("a=control:*")
            out.append(" ".join(fields))
            out.append(f"a=control:trackID={track}")
            track += 1
        else:
            out.append(line)
    return "\r\n".join(out) + "\r\n"


TRANSPORT_INTERLEAVED = re.compile(r"RTP/AVP/TCP[^,]*?interleaved=(\d+)(?:-(\d+))?", re.IGNORECASE)


def interleaved_channels(transport: str) -> tuple[int, int] | None:
    """The interleaved channel pair a SETUP's Transport header asks for (RTP over the RTSP
    connection), or None if it asks only for UDP (which the device does not serve: the answer
    is 461, and players then ask for TCP)."""
    found = TRANSPORT_INTERLEAVED.search(transport)
    if found is None:
        return None if "RTP/AVP/TCP" not in transport.upper() else (0, 1)
    rtp = int(found.group(1))
    rtcp = int(found.group(2)) if found.group(2) is not None else rtp + 1
    if not (0 <= rtp <= 255 and 0 <= rtcp <= 255):
        return None
    return rtp, rtcp


def rtp_timestamp(packet: bytes) -> int | None:
    """An RTP packet's timestamp, or None for a packet too short to be RTP."""
    return int.from_bytes(packet[4:8], "big") if len(packet) >= 12 else None


def h264_keyframe_packet(packet: bytes) -> bool:
    """Whether an RTP packet (RFC 6184 payload) carries part of an H.264 key frame's access unit:
    its SPS or PPS, or a slice of the IDR picture, alone, in a STAP-A, or in a FU-A fragment."""
    if len(packet) < 13 or packet[0] >> 6 != 2:
        return False
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # a header extension: 4 bytes, then its length in 32-bit words
        if len(packet) < offset + 4:
            return False
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    if len(packet) <= offset:
        return False
    nal = packet[offset] & 0x1F
    if nal in (5, 7, 8):
        return True
    if nal == 24:  # STAP-A: 16-bit size, then the NAL unit, repeated
        at = offset + 1
        while at + 2 < len(packet):
            size = int.from_bytes(packet[at : at + 2], "big")
            if size == 0 or at + 2 + size > len(packet):
                return False
            if packet[at + 2] & 0x1F in (5, 7, 8):
                return True
            at += 2 + size
        return False
    if nal == 28 and len(packet) > offset + 1:  # FU-A: the fragmented NAL's type is in the FU header
        return packet[offset + 1] & 0x1F == 5
    return False
