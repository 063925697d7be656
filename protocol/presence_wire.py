"""Presence protocol wire formats (device ⇄ broker), declared with ``construct``.

Every datagram starts with a message-type byte in 0x04–0x0F, a range that RFC 9443 leaves unused,
so it can never be taken for STUN (0–3), TURN ChannelData (64–79) or QUIC (64–255). The second
byte is the protocol version. See docs/protocol.md for the full specification.

Sealed messages share a 10-byte header (type, version, session id, counter) that is also the
AEAD associated data. The hot path (keepalive and its acknowledgement) is parsed with a
precompiled ``struct`` that a test checks against the ``construct`` declaration.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

import construct as c

from dvrlink.protocol.presence_events import Address

VERSION = 1
FIRST_TYPE = 0x04
LAST_TYPE = 0x0F

NONCE_SIZE = 16
COOKIE_SIZE = 20
KEY_SIZE = 32
SIGNATURE_SIZE = 64
HELLO_SIZE = 48  # a HELLO is padded to this size so the COOKIE reply (38 bytes) is always smaller
MAX_DATAGRAM = 1200
MAX_INVITE_BODY = 1024

INVITE_KIND_PAIR = 1
INVITE_KIND_PING = 4
"""An empty invite the device answers at once: proof that it is reachable now."""
INVITE_OK = 0
INVITE_UNSUPPORTED = 1
INVITE_MALFORMED = 2


class MessageType(enum.IntEnum):
    """First byte of every presence datagram."""

    HELLO = 0x04
    COOKIE = 0x05
    REGISTER = 0x06
    REGISTERED = 0x07
    REFUSED = 0x08
    KEEPALIVE = 0x09
    KEEPALIVE_ACK = 0x0A
    UNKNOWN_SESSION = 0x0B
    INVITE = 0x0C
    INVITE_REPLY = 0x0D
    GOODBYE = 0x0E
    EVENT = 0x0F
    """Alarms, device → broker, and their acknowledgement, broker → device (``alarm_wire``)."""


class RefuseReason(enum.IntEnum):
    """Why a registration was refused (in an authenticated REFUSED)."""

    KEY_MISMATCH = 1
    NOT_IN_MANIFEST = 2
    BLOCKED = 3
    BUSY = 4
    """The broker cannot decide now (its registry is unavailable): retry after ``retry_after_s``."""
    TICKET_EXPIRED = 5
    """A resumed registration's ticket is too old: the device registers in full at once."""


def is_presence(first_byte: int) -> bool:
    """True if a datagram's first byte is in the presence range (RFC 7983/9443 demultiplexing)."""
    return FIRST_TYPE <= first_byte <= LAST_TYPE


# -- unsealed messages ---------------------------------------------------------------------------

HELLO = c.Struct(
    "type" / c.Const(MessageType.HELLO, c.Int8ub),
    "version" / c.Int8ub,
    "nonce" / c.Bytes(NONCE_SIZE),
    "padding" / c.GreedyBytes,
)

COOKIE = c.Struct(
    "type" / c.Const(MessageType.COOKIE, c.Int8ub),
    "version" / c.Int8ub,
    "nonce" / c.Bytes(NONCE_SIZE),
    "cookie" / c.Bytes(COOKIE_SIZE),
    c.Terminated,
)

# The signature covers every byte before it, prefixed by REGISTER_SIGNING_LABEL.
REGISTER_BODY = c.Struct(
    "type" / c.Const(MessageType.REGISTER, c.Int8ub),
    "version" / c.Int8ub,
    "cookie" / c.Bytes(COOKIE_SIZE),
    "nonce" / c.Bytes(NONCE_SIZE),
    "device_key" / c.Bytes(KEY_SIZE),
    "ephemeral_key" / c.Bytes(KEY_SIZE),
    "keepalive_ms" / c.Int32ub,
    "serial" / c.PascalString(c.Int8ub, "ascii"),
)
REGISTER = c.Struct(
    "body" / c.RawCopy(REGISTER_BODY),
    "signature" / c.Bytes(SIGNATURE_SIZE),
    c.Terminated,
)
REGISTER_SIGNING_LABEL = b"dvrlink register v1\x00"

# A resumed REGISTER (``presence_ticket``): the same body, then the ticket and an HMAC-SHA256 under
# the ticket's secret over every byte before it. It is told from a signed one by what follows the
# body: exactly a signature's 64 bytes, or a ticket (more than 64 bytes with its length) and a MAC.
REGISTER_RESUME = c.Struct(
    "body" / c.RawCopy(REGISTER_BODY),
    "ticket" / c.RawCopy(c.Prefixed(c.Int16ub, c.GreedyBytes)),
    "mac" / c.Bytes(32),
    c.Terminated,
)


_REGISTER_HEAD = struct.Struct(f">BB{COOKIE_SIZE}s{NONCE_SIZE}s{KEY_SIZE}s{KEY_SIZE}sIB")
"""REGISTER_BODY up to the serial's length byte, for the registration path (a registration storm
after a restart is where the broker's time goes); ``parse_register`` is checked against the
``construct`` declarations by the tests."""


@dataclass(frozen=True, slots=True)
class RegisterMessage:
    """A parsed REGISTER, signed or resumed."""

    version: int
    cookie: bytes
    nonce: bytes
    device_key: bytes
    ephemeral_key: bytes
    keepalive_ms: int
    serial: str
    body: bytes
    """The body's bytes (what the signature covers, after ``REGISTER_SIGNING_LABEL``)."""
    signature: bytes = b""
    """Signed: the Ed25519 signature; resumed: empty."""
    ticket: bytes = b""
    """Resumed: the ticket; signed: empty."""
    mac: bytes = b""
    """Resumed: the MAC over the body and the length-prefixed ticket."""

    @property
    def resumed(self) -> bool:
        """The resumed kind (``REGISTER_RESUME``)."""
        return bool(self.mac)

    @property
    def signed_part(self) -> bytes:
        """Resumed: what the MAC covers (the body, then the ticket with its length)."""
        return self.body + len(self.ticket).to_bytes(2, "big") + self.ticket


def parse_register(data: bytes) -> RegisterMessage:
    """Parse a REGISTER datagram of either kind (``REGISTER``, ``REGISTER_RESUME``): signed if
    exactly a signature's 64 bytes follow the body, else a ticket and a MAC.

    Raises:
        ValueError: malformed (wrong type, truncated, trailing bytes, a serial not ASCII).
    """
    head = _REGISTER_HEAD
    if len(data) < head.size or data[0] != MessageType.REGISTER:
        raise ValueError("not a REGISTER, or truncated")
    _type, version, cookie, nonce, device_key, ephemeral, keepalive_ms, length = head.unpack_from(data)
    end = head.size + length
    body = data[:end]
    if len(body) != end:
        raise ValueError("REGISTER serial truncated")
    serial = body[head.size :].decode("ascii")
    rest = len(data) - end
    if rest == SIGNATURE_SIZE:
        return RegisterMessage(
            version, cookie, nonce, device_key, ephemeral, keepalive_ms, serial, body, signature=data[end:]
        )
    if rest < 2 + 32:
        raise ValueError("REGISTER has neither a signature nor a ticket and MAC")
    size = int.from_bytes(data[end : end + 2], "big")
    if rest != 2 + size + 32:
        raise ValueError("REGISTER ticket length does not match the datagram")
    ticket = data[end + 2 : end + 2 + size]
    fields = (version, cookie, nonce, device_key, ephemeral, keepalive_ms, serial, body)
    return RegisterMessage(*fields, ticket=ticket, mac=data[-32:])


def is_resumed_register(data: bytes) -> bool:
    """True if a REGISTER datagram is the resumed kind (``REGISTER_RESUME``).

    Raises:
        ValueError: malformed.
    """
    return parse_register(data).resumed


def hello_nonce(data: bytes) -> bytes | None:
    """The nonce of a HELLO of this version (padded to ``HELLO_SIZE`` or more), or None."""
    if len(data) < HELLO_SIZE or data[0] != MessageType.HELLO or data[1] != VERSION:
        return None
    return data[2 : 2 + NONCE_SIZE]


def cookie_datagram(nonce: bytes, cookie: bytes) -> bytes:
    """The COOKIE reply (``COOKIE``) to a HELLO's ``nonce``."""
    return bytes((MessageType.COOKIE, VERSION)) + nonce + cookie


UNKNOWN_SESSION = c.Struct(
    "type" / c.Const(MessageType.UNKNOWN_SESSION, c.Int8ub),
    "version" / c.Int8ub,
    "session_id" / c.Int32ub,
    c.Terminated,
)

# -- sealed messages -----------------------------------------------------------------------------

SEALED_HEADER = c.Struct(
    "type" / c.Int8ub,
    "version" / c.Int8ub,
    "session_id" / c.Int32ub,
    "counter" / c.Int32ub,
)
SEALED_HEADER_SIZE = SEALED_HEADER.sizeof()
HEADER_STRUCT = struct.Struct(">BBII")  # the hot-path twin of SEALED_HEADER
assert HEADER_STRUCT.size == SEALED_HEADER_SIZE

# REGISTERED and REFUSED carry the broker's ephemeral key in clear after the header; both the
# header and that key are associated data.
EPHEMERAL_HEADER = c.Struct(
    "header" / SEALED_HEADER,
    "ephemeral_key" / c.Bytes(KEY_SIZE),
)
EPHEMERAL_HEADER_SIZE = EPHEMERAL_HEADER.sizeof()

REGISTERED_PLAIN = c.Struct(
    "keepalive_ms" / c.Int32ub,
    "address" / c.GreedyBytes,
)
"""``address``: the reflexive address (``encode_address``), then, from a broker that issues them,
a resumption ticket (``split_registered``)."""
REFUSED_PLAIN = c.Struct(
    "reason" / c.Int8ub,
    "retry_after_s" / c.Int32ub,
    "message" / c.PascalString(c.Int16ub, "utf8"),
    c.Terminated,
)
ECHO_STRUCT = struct.Struct(">H")
"""A KEEPALIVE_ACK's plaintext: the low 16 bits of the acknowledged keepalive's counter, then the
reflexive address (``encode_address``)."""
INVITE_PLAIN = c.Struct(
    "invite_id" / c.Int32ub,
    "kind" / c.Int8ub,
    "body" / c.GreedyBytes,
)
INVITE_REPLY_PLAIN = c.Struct(
    "invite_id" / c.Int32ub,
    "status" / c.Int8ub,
    "body" / c.GreedyBytes,
)


# -- addresses -----------------------------------------------------------------------------------


def encode_address(address: Address, pack: Callable[[str], bytes] | None = None) -> bytes:
    """Pack (ip, port) as family nibble (4 or 6) + port + raw IP; ``pack`` packs the IP
    (``packed_ip`` by default; a broker passes its :class:`PackedIps`).

    Raises:
        ValueError: the IP is not an IPv4 or IPv6 literal, or the port is out of range.
    """
    packed = (pack or packed_ip)(address[0])
    port = address[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")
    return bytes([4 if len(packed) == 4 else 6]) + port.to_bytes(2, "big") + packed


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def packed_ip(host: str) -> bytes:
    """The 4 or 16 bytes of an IP literal (a ``%scope`` suffix ignored). Dotted-quad IPv4 is
    packed here, a fifth of ``ipaddress``'s cost on the registration path; the rest by it.

    Raises:
        ValueError: not an IP literal.
    """
    host = host.split("%", 1)[0]
    if _DOTTED_QUAD.fullmatch(host):
        return bytes(map(int, host.split(".")))
    return ipaddress.ip_address(host).packed


class PackedIps:
    """``packed_ip`` with a bounded memory of the hosts it packed.

    A registration packs its source address three times (the cookie of its HELLO, the cookie
    check of its REGISTER, the address its REGISTERED reflects) within a round trip, and
    packing a dotted quad is the largest cost on that path after the syscalls; a device
    refreshing its session packs it again. The memory holds at most ``limit`` hosts and is
    emptied when full: its worst case is ``packed_ip``'s cost, never unbounded growth.
    """

    __slots__ = ("_known", "_limit")

    def __init__(self, limit: int = 4096) -> None:
        self._known: dict[str, bytes] = {}
        self._limit = limit

    def __call__(self, host: str) -> bytes:
        """``packed_ip(host)``.

        Raises:
            ValueError: not an IP literal (such a host is not remembered).
        """
        packed = self._known.get(host)
        if packed is None:
            packed = packed_ip(host)
            if len(self._known) >= self._limit:
                self._known.clear()
            self._known[host] = packed
        return packed


def address_size(data: bytes) -> int:
    """The length of the ``encode_address`` bytes at the start of ``data`` (by their family).

    Raises:
        ValueError: ``data`` is empty or its family is unknown.
    """
    if not data:
        raise ValueError("address missing")
    family = data[0] & 0x0F
    if family == 4:
        return 7
    if family == 6:
        return 19
    raise ValueError(f"bad address family {family}")


def split_registered(rest: bytes) -> tuple[bytes, bytes]:
    """A REGISTERED's bytes after its interval: (the reflexive address, the resumption ticket,
    empty when the broker gave none).

    Raises:
        ValueError: the address is malformed.
    """
    size = address_size(rest)
    if len(rest) < size:
        raise ValueError("address truncated")
    return rest[:size], rest[size:]


def decode_address(data: bytes) -> Address:
    """Unpack ``encode_address``.

    Raises:
        ValueError: unknown family or wrong length.
    """
    if len(data) < 3:
        raise ValueError("address too short")
    family = data[0] & 0x0F
    port = int.from_bytes(data[1:3], "big")
    raw = data[3:]
    if family == 4 and len(raw) == 4:
        return (str(ipaddress.IPv4Address(raw)), port)
    if family == 6 and len(raw) == 16:
        ip6 = ipaddress.IPv6Address(raw)
        mapped = ip6.ipv4_mapped
        return (str(mapped) if mapped else str(ip6), port)
    raise ValueError(f"bad address family {family} with {len(raw)} address bytes")


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The clear part of a sealed message."""

    type: int
    version: int
    session_id: int
    counter: int

    def pack(self) -> bytes:
        """Serialize the 10 header bytes."""
        return HEADER_STRUCT.pack(self.type, self.version, self.session_id, self.counter)

    @classmethod
    def unpack(cls, data: bytes) -> SealedHeader:
        """Parse the first 10 bytes. Raises ValueError if ``data`` is shorter."""
        if len(data) < SEALED_HEADER_SIZE:
            raise ValueError("sealed header truncated")
        return cls(*HEADER_STRUCT.unpack_from(data))
