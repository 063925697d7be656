"""A small PPP client over the emulator's port, for tests on machines where pppd cannot run.

pppd needs the kernel's PPP driver (``/dev/ppp``, module ``ppp_generic``); without it pppd exits
with status 4 before touching the port. This client plays pppd's part far enough to check the
emulator's PPP server from the host side: it dials, negotiates LCP, answers PAP or CHAP-MD5,
gets an address and DNS servers from IPCP, and sends and receives IPv4 packets.

It is written apart from :mod:`hil.modememu.ppp_server` on purpose, so that the two do not share
mistakes: its own FCS (bit by bit, not the server's table) and byte stuffing, and a scripted
sequence rather than the RFC 1661 automaton. scapy builds and parses the packets.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from scapy.layers.ppp import (
    PPP_CHAP,
    PPP_IPCP,
    PPP_LCP,
    PPP_CHAP_ChallengeResponse,
    PPP_IPCP_Option_DNS1,
    PPP_IPCP_Option_DNS2,
    PPP_IPCP_Option_IPAddress,
    PPP_LCP_ACCM_Option,
    PPP_LCP_Configure,
    PPP_LCP_Echo,
    PPP_LCP_Magic_Number_Option,
    PPP_PAP_Request,
)

from hil.modememu.wire import RawPort

LCP, PAP, CHAP, IPCP, IP = 0xC021, 0xC023, 0xC223, 0x8021, 0x0021


class PppClientError(Exception):
    """The negotiation failed; the message says at which step and what came from the modem."""


def fcs16_bitwise(data: bytes) -> int:
    """RFC 1662's FCS-16, one bit at a time (the complemented value to send)."""
    fcs = 0xFFFF
    for byte in data:
        fcs ^= byte
        for _ in range(8):
            fcs = (fcs >> 1) ^ 0x8408 if fcs & 1 else fcs >> 1
    return fcs ^ 0xFFFF


def frame(protocol: int, packet: bytes) -> bytes:
    """An HDLC-like frame with every control character escaped (the default ACCM)."""
    body = b"\xff\x03" + struct.pack("!H", protocol) + packet
    fcs = fcs16_bitwise(body)
    body += struct.pack("<H", fcs)
    out = bytearray(b"~")
    for byte in body:
        if byte < 0x20 or byte in (0x7D, 0x7E):
            out += bytes((0x7D, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out + b"~")


@dataclass(slots=True)
class FrameReader:
    """Frames out of the byte stream; whatever is not a frame (``NO CARRIER``) is kept as text."""

    text: bytearray = field(default_factory=bytearray)
    bad: int = 0
    _buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        frames: list[tuple[int, bytes]] = []
        for byte in data:
            if byte != 0x7E:
                self._buf.append(byte)
                continue
            raw, self._buf = bytes(self._buf), bytearray()
            if not raw:
                continue
            body = _unescape(raw)
            if len(body) >= 6 and fcs16_bitwise(body[:-2]) == struct.unpack("<H", body[-2:])[0]:
                content = body[:-2]
                if content[:2] == b"\xff\x03":
                    content = content[2:]
                if content[0] & 1:
                    frames.append((content[0], content[1:]))
                else:
                    frames.append((struct.unpack("!H", content[:2])[0], content[2:]))
            elif all(0x20 <= b < 0x7F or b in (0x0D, 0x0A) for b in raw):
                self.text += raw
            else:
                self.bad += 1
        return frames

    def pending_text(self) -> bytes:
        return bytes(self.text + self._buf)


def _unescape(raw: bytes) -> bytes:
    out = bytearray()
    escaped = False
    for byte in raw:
        if byte == 0x7D:
            escaped = True
        elif escaped:
            out.append(byte ^ 0x20)
            escaped = False
        else:
            out.append(byte)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Negotiated:
    address: str
    dns: tuple[str, ...]
    auth: str | None
    """``"pap"``, ``"chap-md5"`` or None."""
    server_magic: int


class PppClient:
    """pppd's part over ``port`` (a :class:`~hil.modememu.wire.RawPort` on the emulator's PTY).

    ``refuse`` names auth methods to refuse (``"pap"``, ``"chap-md5"``): the client Naks the
    server's choice, suggesting the other one, or Rejects authentication when it refuses both.
    """

    def __init__(
        self,
        port: RawPort,
        username: str = "",
        password: str = "",
        *,
        refuse: tuple[str, ...] = (),
        request_dns: bool = True,
        magic: int = 0x0BADCAFE,
    ) -> None:
        self.port = port
        self.username = username
        self.password = password
        self.refuse = refuse
        self.request_dns = request_dns
        self.magic = magic
        self.reader = FrameReader()
        self.received: list[tuple[int, bytes]] = []
        """Every frame from the modem: (protocol, packet)."""
        self._queue: list[tuple[int, bytes]] = []
        self._id = 0x40

    # ------------------------------------------------------------------------------ the port

    def dial(self, number: str = "*99***1#", apn: str | None = None, timeout: float = 5.0) -> None:
        """``AT+CGDCONT`` (with ``apn``) and ``ATD<number>`` up to ``CONNECT``. Raises TimeoutError."""
        if apn is not None:
            self.port.command(f'AT+CGDCONT=1,"IP","{apn}"', timeout)
        self.port.send(f"ATD{number}")
        self.port.read_until(b"CONNECT\r\n", timeout)

    def send(self, protocol: int, packet: bytes) -> None:
        self.port.write(frame(protocol, packet))

    def next_frame(self, deadline: float) -> tuple[int, bytes] | None:
        """The next frame from the modem, or None once ``deadline`` (monotonic) passed. LCP
        Echo-Requests are answered on the way."""
        while not self._queue:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._read(remaining)
        item = self._queue.pop(0)
        self.received.append(item)
        protocol, packet = item
        if protocol == LCP and packet[:1] == b"\x09":
            echo = PPP_LCP_Echo(packet)
            self.send(LCP, bytes(PPP_LCP_Echo(code=10, id=echo.id, magic_number=self.magic, data=echo.data)))
        return item

    def _read(self, timeout: float) -> None:
        if self.port.buffer:  # what came after CONNECT in the same read
            self._queue += self.reader.feed(bytes(self.port.buffer))
            self.port.buffer.clear()
            return
        ready, _, _ = select.select([self.port.fd], [], [], min(timeout, 0.2))
        if ready:
            with contextlib.suppress(BlockingIOError):
                self._queue += self.reader.feed(os.read(self.port.fd, 4096))

    def _take_id(self) -> int:
        self._id = (self._id + 1) & 0xFF
        return self._id

    # ---------------------------------------------------------------------------- negotiate

    def negotiate(self, timeout: float = 15.0) -> Negotiated:
        """LCP, authentication and IPCP. Raises PppClientError (the modem refused or ended the
        link, with what it sent) or TimeoutError."""
        deadline = time.monotonic() + timeout
        lcp_options = [PPP_LCP_ACCM_Option(accm=0), PPP_LCP_Magic_Number_Option(magic_number=self.magic)]
        lcp_id = self._send_lcp_request(lcp_options)
        ours_acked = theirs_acked = False
        auth: str | None = None
        server_magic = 0
        while not (ours_acked and theirs_acked):
            protocol, packet = self._expect(deadline, "LCP")
            if protocol != LCP:
                continue
            code = packet[0]
            if code == 1:
                reply_code, reply, auth, server_magic = self._answer_lcp(packet)
                self.send(LCP, bytes(PPP_LCP(code=reply_code, id=packet[1], data=reply)))
                theirs_acked = reply_code == 2
            elif code == 2 and packet[1] == lcp_id:
                ours_acked = True
            elif code in (3, 4) and packet[1] == lcp_id:
                rejected = {o.type for o in PPP_LCP_Configure(packet).options}
                lcp_options = [o for o in lcp_options if o.type not in rejected or code == 3]
                lcp_id = self._send_lcp_request(lcp_options)
            elif code == 5:
                self.send(LCP, bytes(PPP_LCP(code=6, id=packet[1])))
                raise PppClientError(f"the modem ended the link during LCP: {self.received[-5:]}")
        if auth == "pap":
            self._pap(deadline)
        elif auth == "chap-md5":
            self._chap(deadline)
        address, dns = self._ipcp(deadline)
        return Negotiated(address, dns, auth, server_magic)

    def _send_lcp_request(self, options: list[Any]) -> int:
        ident = self._take_id()
        self.send(LCP, bytes(PPP_LCP_Configure(code=1, id=ident, options=options)))
        return ident

    def _expect(self, deadline: float, step: str) -> tuple[int, bytes]:
        item = self.next_frame(deadline)
        if item is None:
            raise TimeoutError(
                f"no answer from the modem during {step}; frames: {self.received[-6:]}; "
                f"text: {self.reader.pending_text()!r}"
            )
        if item[0] == LCP and item[1][:1] == b"\x05":
            self.send(LCP, bytes(PPP_LCP(code=6, id=item[1][1])))
            raise PppClientError(f"the modem ended the link during {step}: {self.received[-6:]}")
        return item

    def _answer_lcp(self, packet: bytes) -> tuple[int, bytes, str | None, int]:
        """(Ack/Nak/Reject, options, the auth method agreed, the server's magic)."""
        request = PPP_LCP_Configure(packet)
        auth: str | None = None
        magic = 0
        naks: list[bytes] = []
        rejects: list[bytes] = []
        for option in request.options:
            raw = bytes(option)
            if option.type == 3:
                proto = struct.unpack("!H", raw[2:4])[0]
                method = {PAP: "pap", CHAP: "chap-md5"}.get(proto)
                if method is not None and method not in self.refuse:
                    auth = method
                    continue
                other = [m for m in ("chap-md5", "pap") if m not in self.refuse and m != method]
                if not other:
                    rejects.append(raw)
                elif other[0] == "pap":
                    naks.append(struct.pack("!BBH", 3, 4, PAP))
                else:
                    naks.append(struct.pack("!BBHB", 3, 5, CHAP, 5))
            elif option.type == 5:
                magic = int(option.magic_number)
        if rejects:
            return 4, b"".join(rejects), None, magic
        if naks:
            return 3, b"".join(naks), None, magic
        return 2, packet[4 : struct.unpack("!H", packet[2:4])[0]], auth, magic

    def _pap(self, deadline: float) -> None:
        ident = self._take_id()
        self.send(PAP, bytes(PPP_PAP_Request(id=ident, username=self.username, password=self.password)))
        while True:
            protocol, packet = self._expect(deadline, "PAP")
            if protocol == PAP and packet[1] == ident:
                if packet[0] == 2:
                    return
                raise PppClientError(f"PAP refused: {packet!r}")

    def _chap(self, deadline: float) -> None:
        while True:
            protocol, packet = self._expect(deadline, "CHAP")
            if protocol != CHAP:
                continue
            if packet[0] == 1:
                challenge = PPP_CHAP_ChallengeResponse(packet)
                secret = self.password.encode()
                digest = hashlib.md5(bytes((challenge.id,)) + secret + challenge.value).digest()
                response = PPP_CHAP_ChallengeResponse(
                    code=2, id=challenge.id, value=digest, optional_name=self.username.encode()
                )
                self.send(CHAP, bytes(response))
            elif packet[0] == 3:
                return
            elif packet[0] == 4:
                raise PppClientError(f"CHAP refused: {PPP_CHAP(packet).data!r}")

    def _ipcp(self, deadline: float) -> tuple[str, tuple[str, ...]]:
        values = {3: "0.0.0.0"}
        if self.request_dns:
            values |= {129: "0.0.0.0", 131: "0.0.0.0"}
        ident = self._send_ipcp_request(values)
        ours_acked = theirs_acked = False
        while not (ours_acked and theirs_acked):
            protocol, packet = self._expect(deadline, "IPCP")
            if protocol != IPCP:
                continue
            code = packet[0]
            if code == 1:
                self.send(IPCP, bytes(PPP_IPCP(code=2, id=packet[1], options=PPP_IPCP(packet).options)))
                theirs_acked = True
            elif code == 2 and packet[1] == ident:
                ours_acked = True
            elif code in (3, 4) and packet[1] == ident:
                for option in PPP_IPCP(packet).options:
                    if code == 3:
                        values[option.type] = option.data
                    else:
                        values.pop(option.type, None)
                ident = self._send_ipcp_request(values)
        dns = tuple(values[k] for k in (129, 131) if k in values)
        return values[3], dns

    def _send_ipcp_request(self, values: dict[int, str]) -> int:
        classes = {3: PPP_IPCP_Option_IPAddress, 129: PPP_IPCP_Option_DNS1, 131: PPP_IPCP_Option_DNS2}
        ident = self._take_id()
        options = [classes[k](data=v) for k, v in sorted(values.items())]
        self.send(IPCP, bytes(PPP_IPCP(code=1, id=ident, options=options)))
        return ident

    # --------------------------------------------------------------------------- afterwards

    def send_ip(self, packet: bytes) -> None:
        self.send(IP, packet)

    def receive_ip(self, timeout: float = 5.0) -> bytes:
        """The next IPv4 packet from the modem. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while (item := self.next_frame(deadline)) is not None:
            if item[0] == IP:
                return item[1]
        raise TimeoutError(f"no IP packet within {timeout} s; frames: {self.received[-6:]}")

    def echo(self, data: bytes = b"ping", timeout: float = 5.0) -> bytes:
        """Send an LCP Echo-Request; returns the reply's packet. Raises TimeoutError."""
        ident = self._take_id()
        self.send(LCP, bytes(PPP_LCP_Echo(code=9, id=ident, magic_number=self.magic, data=data)))
        deadline = time.monotonic() + timeout
        while (item := self.next_frame(deadline)) is not None:
            if item[0] == LCP and item[1][:2] == bytes((10, ident)):
                return item[1]
        raise TimeoutError(f"no LCP Echo-Reply within {timeout} s; frames: {self.received[-6:]}")

    def terminate(self, timeout: float = 5.0) -> None:
        """LCP Terminate-Request until its Ack. Raises TimeoutError."""
        ident = self._take_id()
        self.send(LCP, bytes(PPP_LCP(code=5, id=ident)))
        deadline = time.monotonic() + timeout
        while (item := self.next_frame(deadline)) is not None:
            if item[0] == LCP and item[1][:1] == b"\x06":
                return
        raise TimeoutError(f"no LCP Terminate-Ack within {timeout} s; frames: {self.received[-6:]}")

    def wait_text(self, token: bytes, timeout: float = 10.0) -> bytes:
        """Until ``token`` arrives outside frames (``NO CARRIER``); returns that text. Raises
        TimeoutError."""
        deadline = time.monotonic() + timeout
        while token not in self.reader.pending_text():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{token!r} not seen within {timeout} s; text: {self.reader.pending_text()!r}, "
                    f"frames: {self.received[-6:]}"
                )
            self._read(remaining)
            self.received += self._queue
            self._queue.clear()
        return self.reader.pending_text()
