"""RFC 5780 NAT behaviour discovery, server side: what to answer and from which address. Sans-I/O.

A server that helps clients discover their NAT's behaviour listens on four transport addresses,
the combinations of two IP addresses and two ports::

    PRIMARY         primary IP,   primary port    (the broker's presence/STUN socket)
    ALTERNATE_PORT  primary IP,   alternate port
    ALTERNATE_IP    alternate IP, primary port
    ALTERNATE_BOTH  alternate IP, alternate port

A Binding success response carries XOR-MAPPED-ADDRESS (the request's source). When the client
signals that it does RFC 5780 (its request has CHANGE-REQUEST, even with no flag set, or
RESPONSE-PORT), the response also carries RESPONSE-ORIGIN (the address the response is sent from)
and OTHER-ADDRESS (the address that differs from the receiving one in both IP and port: where a
"change IP and port" reply would come from); a plain Binding does not, to keep the reply small.
A CHANGE-REQUEST with the change-IP (0x04) and/or change-port (0x02) flag asks for the response
to be sent from the address that differs from the receiving one in IP and/or port; the client
uses that to learn its NAT's filtering behaviour. RESPONSE-PORT sends the response to that port
of the source IP. PADDING is understood and not echoed; any other unknown comprehension-required
attribute gets 420. Classic RFC 3489 requests get the RFC 3489 attribute names (MAPPED-ADDRESS,
SOURCE-ADDRESS, CHANGED-ADDRESS; see ``dvrlink.protocol.stun``). FINGERPRINT is added when the
request had one. Everything that is not a well-formed Binding request is dropped (None).

Sizes (IPv4; IPv6 adds 12 bytes per address): a 20-byte Binding gets 32 bytes; an RFC 5780
request (28 bytes with CHANGE-REQUEST) gets 56, plus the FINGERPRINT the client asked for. A
CHANGE-REQUEST or RESPONSE-PORT reply goes to the request's source IP only, from another of the
server's own addresses, so it cannot be pointed at a third party; the broker limits how often one
source is answered (``StunRateLimiter``).

:func:`answer_binding` is the whole core; ``broker/stun_alternate.py`` is its I/O.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from aioice import stun

from dvrlink.protocol.presence_events import Address
from dvrlink.protocol.stun import (
    ATTR_CHANGE_REQUEST,
    ATTR_RESPONSE_PORT,
    CHANGE_IP,
    CHANGE_PORT,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    encode_success,
    encode_unknown_attributes,
    mapped_address,
    parse_binding,
)

__all__ = [
    "CHANGE_IP",
    "CHANGE_PORT",
    "HEADER_LENGTH",
    "MAGIC_COOKIE",
    "Origin",
    "Rfc5780Addresses",
    "StunReply",
    "answer_binding",
    "parse_binding_request",
]


class Origin(enum.Enum):
    """One of the server's four transport addresses (see the module docstring)."""

    PRIMARY = "primary"
    ALTERNATE_PORT = "alternate-port"
    ALTERNATE_IP = "alternate-ip"
    ALTERNATE_BOTH = "alternate-both"

    @property
    def alternate_ip(self) -> bool:
        """True if this address uses the alternate IP."""
        return self in (Origin.ALTERNATE_IP, Origin.ALTERNATE_BOTH)

    @property
    def alternate_port(self) -> bool:
        """True if this address uses the alternate port."""
        return self in (Origin.ALTERNATE_PORT, Origin.ALTERNATE_BOTH)

    @classmethod
    def of(cls, alternate_ip: bool, alternate_port: bool) -> Origin:
        """The origin with the given IP and port choice."""
        if alternate_ip:
            return cls.ALTERNATE_BOTH if alternate_port else cls.ALTERNATE_IP
        return cls.ALTERNATE_PORT if alternate_port else cls.PRIMARY

    def changed(self, change_ip: bool, change_port: bool) -> Origin:
        """The origin that differs from this one in IP if ``change_ip`` and in port if
        ``change_port`` (what a CHANGE-REQUEST received here asks for)."""
        return Origin.of(self.alternate_ip != change_ip, self.alternate_port != change_port)


@dataclass(frozen=True, slots=True)
class Rfc5780Addresses:
    """The server's two IP addresses and two ports. Both IPs are of one family and differ, and
    so do both ports (checked at construction).

    Raises:
        ValueError: the addresses do not meet those rules; the message says which.
    """

    primary_host: str
    """IP literal of the primary address (the broker's ``udp_host``)."""
    primary_port: int
    """Primary port (the broker's presence/STUN port)."""
    alternate_host: str
    """IP literal of the alternate address, another address of the same host."""
    alternate_port: int
    """Alternate port."""

    def __post_init__(self) -> None:
        primary = ipaddress.ip_address(self.primary_host)
        alternate = ipaddress.ip_address(self.alternate_host)
        if primary.version != alternate.version or primary == alternate:
            raise ValueError(
                f"RFC 5780 needs two different IP addresses of one family, got {self.primary_host} and "
                f"{self.alternate_host}; give the host a second address and use it as the alternate"
            )
        if primary.is_unspecified or alternate.is_unspecified:
            raise ValueError(
                f"RFC 5780 needs specific addresses, not a wildcard ({self.primary_host}, "
                f"{self.alternate_host}): responses must come from a known source address"
            )
        if not (0 < self.primary_port < 65536 and 0 < self.alternate_port < 65536):
            raise ValueError(f"ports must be 1..65535, got {self.primary_port} and {self.alternate_port}")
        if self.primary_port == self.alternate_port:
            raise ValueError(f"the primary and alternate ports are both {self.primary_port}; use two ports")

    def address(self, origin: Origin) -> Address:
        """The (host, port) of ``origin``."""
        host = self.alternate_host if origin.alternate_ip else self.primary_host
        port = self.alternate_port if origin.alternate_port else self.primary_port
        return (host, port)

    def all(self) -> dict[Origin, Address]:
        """Every origin and its (host, port)."""
        return {origin: self.address(origin) for origin in Origin}


@dataclass(frozen=True, slots=True)
class StunReply:
    """A response to send: ``data`` to ``destination``, from the socket bound to ``origin``."""

    data: bytes
    destination: Address
    origin: Origin


def parse_binding_request(data: bytes) -> stun.Message | None:
    """The Binding request in ``data`` (RFC 5389 form), or None if ``data`` is not a well-formed one."""
    if len(data) < HEADER_LENGTH or data[4:8] != MAGIC_COOKIE or len(data) % 4:
        return None
    try:
        request = stun.parse_message(data)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError):
        return None
    if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
        return None
    return request


def answer_binding(
    data: bytes, source: Address, received_on: Origin, addresses: Rfc5780Addresses
) -> StunReply | None:
    """The reply to ``data`` received from ``source`` on the socket of ``received_on``, or None if
    ``data`` is not a well-formed Binding request (see ``dvrlink.protocol.stun.parse_binding``).

    A request with an attribute this server does not understand gets 420 from the receiving
    address. Otherwise the success response comes from the address CHANGE-REQUEST asks for and
    goes to the source IP at RESPONSE-PORT (or the source port). RESPONSE-ORIGIN and
    OTHER-ADDRESS (SOURCE-ADDRESS and CHANGED-ADDRESS for an RFC 3489 client) are included only
    when the client signalled RFC 5780 with CHANGE-REQUEST or RESPONSE-PORT.

    Never raises on bad input.
    """
    request = parse_binding(data)
    if request is None:
        return None
    host, port = mapped_address(source)
    try:
        family = ipaddress.ip_address(host).version
    except ValueError:
        return None
    if family != ipaddress.ip_address(addresses.primary_host).version:
        return None  # an IPv4-mapped or foreign-family source cannot get a coherent answer
    refused = tuple(kind for kind in request.unknown if kind not in (ATTR_CHANGE_REQUEST, ATTR_RESPONSE_PORT))
    if refused:
        return StunReply(encode_unknown_attributes(request, refused), (host, port), received_on)
    flags = request.change or 0
    origin = received_on.changed(bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT))
    destination = (host, port if request.response_port is None else request.response_port)
    if request.rfc5780:
        data = encode_success(
            request,
            (host, port),
            addresses.address(origin),
            addresses.address(received_on.changed(True, True)),
        )
    else:
        data = encode_success(request, (host, port))
    return StunReply(data, destination, origin)
