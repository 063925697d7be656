"""PCP (RFC 6887) MAP requests and responses, and PCP's retransmission schedule. Sans-I/O.

Only what a client behind a home router needs: the MAP opcode for one internal port, over IPv4
(addresses travel as IPv4-mapped IPv6, RFC 6887 5), no options. ``PcpWire`` plugs into
``protocol.port_mapping.MappingCore``.

Layouts (RFC 6887 7.1, 7.2, 11.1; all integers big-endian)::

    request  (60 bytes): version=2 | R=0,opcode=1 | reserved(2) | lifetime(4) | client IP(16)
                         nonce(12) | protocol | reserved(3) | internal port(2) | suggested external port(2)
                         | suggested external IP(16)
    response (60 bytes): version=2 | R=1,opcode=1 | reserved | result | lifetime(4) | epoch(4) | reserved(12)
                         nonce(12) | protocol | reserved(3) | internal port(2) | external port(2)
                         | external IP(16)
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass

from dvrlink.protocol.port_mapping import Granted, MappingProtocol, Refused, Reply

PORT = 5351
"""The PCP server's port on the router (shared with NAT-PMP)."""
VERSION = 2
OPCODE_MAP = 1
RESPONSE_BIT = 0x80
NONCE_SIZE = 12
MAP_SIZE = 60
MAX_MESSAGE = 1100
"""RFC 6887 7: a PCP message is at most 1100 bytes."""
PROTOCOL_UDP = 17
PROTOCOL_TCP = 6

IRT_S = 3.0
"""RFC 6887 8.1.1: initial retransmission time."""
MRT_S = 1024.0
"""RFC 6887 8.1.1: maximum retransmission time."""

_HEADER = struct.Struct("!BBHI16s")
_RESPONSE_HEADER = struct.Struct("!BBBBII12s")
_MAP = struct.Struct("!12sB3xHH16s")

RESULTS: dict[int, str] = {
    0: "SUCCESS",
    1: "UNSUPP_VERSION",
    2: "NOT_AUTHORIZED",
    3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION",
    6: "MALFORMED_OPTION",
    7: "NETWORK_FAILURE",
    8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL",
    10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL",
    12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}
TRANSIENT = frozenset({7, 8, 10})
"""Short-lifetime errors (RFC 6887 7.4): they may pass, so a renewal retries them."""


def mapped_ipv6(address: str) -> bytes:
    """``address`` (IPv4 or IPv6 literal) as PCP's 16-byte field (IPv4 as ``::ffff:a.b.c.d``).

    Raises:
        ValueError: not an IP literal.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def unmapped(field: bytes) -> str:
    """PCP's 16-byte address field as a literal (IPv4-mapped ones as dotted IPv4)."""
    ip = ipaddress.IPv6Address(field)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


@dataclass(frozen=True, slots=True)
class MapRequest:
    """A MAP request's fields."""

    client_ip: str
    """The client's own address as the router sees the request's source."""
    nonce: bytes
    internal_port: int
    lifetime_s: int
    protocol: int = PROTOCOL_UDP
    suggested_port: int = 0
    suggested_ip: str = "0.0.0.0"

    def encode(self) -> bytes:
        """The 60-byte request.

        Raises:
            ValueError: a field is out of range (nonce not 12 bytes, port or lifetime too large).
        """
        if len(self.nonce) != NONCE_SIZE:
            raise ValueError(f"a PCP nonce is {NONCE_SIZE} bytes, got {len(self.nonce)}")
        if not 0 < self.internal_port <= 0xFFFF or not 0 <= self.suggested_port <= 0xFFFF:
            raise ValueError(f"ports must be 1..65535 (internal) and 0..65535, got {self}")
        head = _HEADER.pack(VERSION, OPCODE_MAP, 0, self.lifetime_s, mapped_ipv6(self.client_ip))
        body = _MAP.pack(
            self.nonce, self.protocol, self.internal_port, self.suggested_port, mapped_ipv6(self.suggested_ip)
        )
        return head + body


@dataclass(frozen=True, slots=True)
class MapResponse:
    """A MAP response's fields."""

    result: int
    lifetime_s: int
    epoch_s: int
    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_ip: str

    @property
    def result_name(self) -> str:
        """The result code's name (RFC 6887 7.4), or ``result N``."""
        return RESULTS.get(self.result, f"result {self.result}")


def parse_response(data: bytes) -> MapResponse | None:
    """The MAP response in ``data``; None for a PCP response to another opcode.

    Raises:
        ValueError: not a PCP response (too short or long, wrong version, not a response); the
            message says which.
    """
    if len(data) < _RESPONSE_HEADER.size or len(data) > MAX_MESSAGE or len(data) % 4:
        raise ValueError(f"a PCP response is 24..1100 bytes, a multiple of 4; got {len(data)}")
    version, op, _, result, lifetime, epoch, _ = _RESPONSE_HEADER.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"PCP version {version}, expected {VERSION}")
    if not op & RESPONSE_BIT:
        raise ValueError("a PCP request, not a response")
    if op & 0x7F != OPCODE_MAP:
        return None
    if len(data) < MAP_SIZE:
        if result == 0:
            raise ValueError(f"a successful MAP response is at least {MAP_SIZE} bytes, got {len(data)}")
        # An error response may come without the opcode data (RFC 6887 7.2: it copies what it can).
        return MapResponse(result, lifetime, epoch, b"", 0, 0, 0, "0.0.0.0")
    nonce, protocol, internal, external, ext_ip = _MAP.unpack_from(data, _RESPONSE_HEADER.size)
    return MapResponse(result, lifetime, epoch, nonce, protocol, internal, external, unmapped(ext_ip))


def is_natpmp_unsupported_version(data: bytes) -> bool:
    """``data`` is a NAT-PMP router's answer "unsupported version" (RFC 6887 9, RFC 6886 3.5):
    version 0, a response opcode, result 1."""
    return len(data) >= 4 and data[0] == 0 and bool(data[1] & 0x80) and data[2:4] == b"\x00\x01"


class PcpWire:
    """PCP MAP for one internal UDP port, for ``MappingCore``.

    ``jitter`` returns RFC 6887's RAND, uniform in [-0.1, +0.1] (passed in: the core draws no
    randomness itself); ``nonce`` is 12 random bytes that answers must echo.
    """

    protocol = MappingProtocol.PCP

    def __init__(
        self,
        client_ip: str,
        internal_port: int,
        nonce: bytes,
        jitter: Callable[[], float],
        *,
        max_attempts: int = 4,
        irt_s: float = IRT_S,
        suggested_port: int | None = None,
    ) -> None:
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"a PCP nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
        mapped_ipv6(client_ip)  # raises on a bad literal now, not at the first request
        self.client_ip = client_ip
        self.internal_port = internal_port
        self.nonce = nonce
        self.jitter = jitter
        self.max_attempts = max_attempts
        self.irt_s = irt_s
        self.suggested_port = internal_port if suggested_port is None else suggested_port
        self._assigned: tuple[str, int] | None = None

    def requests(self, lifetime_s: int) -> list[bytes]:
        """One MAP request; renewals and the deletion suggest the address and port granted."""
        suggested_ip, suggested_port = "0.0.0.0", self.suggested_port
        if self._assigned is not None:
            suggested_ip, suggested_port = self._assigned
        request = MapRequest(
            self.client_ip, self.nonce, self.internal_port, lifetime_s,
            suggested_port=suggested_port, suggested_ip=suggested_ip,
        )  # fmt: skip
        return [request.encode()]

    def parse(self, data: bytes) -> Reply | None:
        """The answer to our MAP, or None (another nonce, port or opcode)."""
        if is_natpmp_unsupported_version(data):
            return Refused(
                1, "UNSUPP_VERSION (the router speaks NAT-PMP)", 0, transient=False, other_version=True
            )
        response = parse_response(data)
        if response is None:
            return None
        if response.result != 0:
            if response.nonce and response.nonce != self.nonce:
                return None
            return Refused(
                response.result,
                response.result_name,
                response.lifetime_s,
                transient=response.result in TRANSIENT,
                other_version=response.result == 1,
            )
        if response.nonce != self.nonce or response.internal_port != self.internal_port:
            return None
        if response.protocol != PROTOCOL_UDP:
            return None
        self._assigned = (response.external_ip, response.external_port)
        return Granted((response.external_ip, response.external_port), response.lifetime_s, response.epoch_s)

    def next_delay(self, previous: float | None) -> float:
        """RFC 6887 8.1.1: RT = (1 + RAND) * IRT, then RT = (1 + RAND) * min(2 * RTprev, MRT)."""
        base = self.irt_s if previous is None else min(2 * previous, MRT_S)
        return (1.0 + max(-0.1, min(0.1, self.jitter()))) * base
