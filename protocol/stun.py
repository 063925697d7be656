"""STUN Binding responder (RFC 8489, with RFC 3489 and RFC 5780 clients in mind), sans-I/O.

:func:`parse_binding` reads a Binding request; :func:`binding_response` is the plain responder the
broker's presence port uses without an alternate address (``stun_behaviour`` is the RFC 5780 one)
and the TURN port uses always. What a request gets:

- an RFC 5389/8489 request (magic cookie): XOR-MAPPED-ADDRESS, and FINGERPRINT if it had one;
- a classic RFC 3489 request (no magic cookie, a 128-bit transaction ID; RFC 5389 section 12):
  MAPPED-ADDRESS, with the whole 16-byte transaction ID echoed;
- a comprehension-required attribute the responder does not understand: 420 with
  UNKNOWN-ATTRIBUTES (and an empty reason, to keep the error small). A plain responder
  understands a CHANGE-REQUEST that asks for no change (flags 0: what RFC 5780 clients send to
  signal themselves) but not one that asks for a change, nor RESPONSE-PORT: it has only one
  address to answer from, so it says so with 420, as RFC 5780 section 7.2 asks;
- PADDING (RFC 5780) is understood and not echoed: the response stays small.

Sizes for IPv4 (IPv6: 12 bytes more per address attribute): a 20-byte Binding gets 32 bytes; a
28-byte one with CHANGE-REQUEST gets 32 (plain) or 56 (RFC 5780, ``stun_behaviour``). A 420 is
28 bytes plus 4 per unknown attribute (rounded up to 4), smaller than any request that causes it
plus 4. :class:`StunRateLimiter` bounds how often one source address gets answers at all.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from aioice import stun

from dvrlink.protocol.presence_events import Address

HEADER_LENGTH = 20
MAGIC_COOKIE = b"\x21\x12\xa4\x42"
BINDING_REQUEST = 0x0001
ATTR_CHANGE_REQUEST = 0x0003
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_PADDING = 0x0026
ATTR_RESPONSE_PORT = 0x0027
COMPREHENSION_OPTIONAL = 0x8000
CHANGE_IP = 0x04
"""CHANGE-REQUEST flag: answer from the other IP address."""
CHANGE_PORT = 0x02
"""CHANGE-REQUEST flag: answer from the other port."""

# Comprehension-required attributes every Binding responder here understands: those aioice
# decodes (an unauthenticated Binding ignores USERNAME, MESSAGE-INTEGRITY, ICE's PRIORITY...)
# and PADDING. CHANGE-REQUEST and RESPONSE-PORT depend on the responder (see the module docstring).
UNDERSTOOD = frozenset(
    {t for t in stun.ATTRIBUTES_BY_TYPE if t < COMPREHENSION_OPTIONAL and t != ATTR_CHANGE_REQUEST}
    | {ATTR_PADDING}
)

_ATTR = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class BindingRequest:
    """A well-formed Binding request, as :func:`parse_binding` found it."""

    transaction_id: bytes
    """The 16 bytes after the type and length: magic cookie and 96-bit ID, or a classic 128-bit ID."""
    classic: bool
    """True for an RFC 3489 request (no magic cookie)."""
    change: int | None
    """The CHANGE-REQUEST flags, None without that attribute."""
    response_port: int | None
    """The RESPONSE-PORT, None without that attribute."""
    fingerprint: bool
    """True if the request ended with a valid FINGERPRINT."""
    unknown: tuple[int, ...]
    """Comprehension-required attribute types not in :data:`UNDERSTOOD` (in order, once each),
    including CHANGE-REQUEST and RESPONSE-PORT, which each responder judges itself."""

    @property
    def rfc5780(self) -> bool:
        """True if the client signalled RFC 5780 (CHANGE-REQUEST or RESPONSE-PORT, any value):
        only then does a response carry RESPONSE-ORIGIN and OTHER-ADDRESS."""
        return self.change is not None or self.response_port is not None


def parse_binding(data: bytes) -> BindingRequest | None:
    """The Binding request in ``data``, or None if ``data`` is not a well-formed one (wrong type
    or length, an attribute running past the end, a bad FINGERPRINT or CHANGE-REQUEST). Never
    raises."""
    if len(data) < HEADER_LENGTH or len(data) % 4 or data[0:2] != b"\x00\x01":
        return None
    if HEADER_LENGTH + int.from_bytes(data[2:4], "big") != len(data):
        return None
    classic = data[4:8] != MAGIC_COOKIE
    change: int | None = None
    response_port: int | None = None
    fingerprint = False
    unknown: dict[int, None] = {}
    pos = HEADER_LENGTH
    end = len(data)
    while pos < end:
        if end - pos < 4:
            return None
        kind, length = _ATTR.unpack_from(data, pos)
        value = data[pos + 4 : pos + 4 + length]
        if len(value) != length:
            return None
        if kind == stun.ATTRIBUTES_BY_NAME["FINGERPRINT"][0]:
            if classic or length != 4 or pos + 8 != end:
                return None
            if int.from_bytes(value, "big") != stun.message_fingerprint(data[:pos]):
                return None
            fingerprint = True
        elif kind == ATTR_CHANGE_REQUEST:
            if length != 4 or change is not None:
                return None
            change = int.from_bytes(value, "big")
            unknown[kind] = None
        elif kind == ATTR_RESPONSE_PORT:
            if length != 4 or response_port is not None or value[:2] == b"\x00\x00":
                return None
            response_port = int.from_bytes(value[:2], "big")
            unknown[kind] = None
        elif kind < COMPREHENSION_OPTIONAL and kind not in UNDERSTOOD:
            unknown[kind] = None
        pos += 4 + length + (-length % 4)
    return BindingRequest(data[4:20], classic, change, response_port, fingerprint, tuple(unknown))


def encode_success(
    request: BindingRequest,
    mapped: Address,
    origin: Address | None = None,
    other: Address | None = None,
) -> bytes:
    """A Binding success response to ``request``: the client's ``mapped`` address, and with
    ``origin`` and ``other`` (RFC 5780) where it was sent from and the server's other address.

    A classic request gets MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS (RFC 3489's names);
    an RFC 5389 one XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS and the FINGERPRINT it
    asked for.
    """
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id[4:],
    )
    if request.classic:
        response.attributes["MAPPED-ADDRESS"] = mapped
        if origin is not None:
            response.attributes["SOURCE-ADDRESS"] = origin
        if other is not None:
            response.attributes["CHANGED-ADDRESS"] = other
        return _with_transaction_id(bytes(response), request)
    response.attributes["XOR-MAPPED-ADDRESS"] = mapped
    if origin is not None:
        response.attributes["RESPONSE-ORIGIN"] = origin
    if other is not None:
        response.attributes["OTHER-ADDRESS"] = other
    if request.fingerprint:
        response.add_fingerprint()
    return bytes(response)


def encode_unknown_attributes(request: BindingRequest, unknown: tuple[int, ...]) -> bytes:
    """A 420 (Unknown Attribute) error response to ``request`` listing ``unknown``."""
    value = b"".join(struct.pack("!H", kind) for kind in unknown)
    body = b"".join(
        (
            _ATTR.pack(stun.ATTRIBUTES_BY_NAME["ERROR-CODE"][0], 4),
            struct.pack("!HBB", 0, 4, 20),
            _ATTR.pack(ATTR_UNKNOWN_ATTRIBUTES, len(value)),
            value,
            bytes(-len(value) % 4),
        )
    )
    header = struct.pack("!HH", stun.Method.BINDING | stun.Class.ERROR, len(body))
    data = header + request.transaction_id + body
    if request.fingerprint:
        data = stun.set_body_length(data, len(body) + 8)
        data += _ATTR.pack(stun.ATTRIBUTES_BY_NAME["FINGERPRINT"][0], 4)
        data += struct.pack("!I", stun.message_fingerprint(data[:-4]))
    return data


def _with_transaction_id(data: bytes, request: BindingRequest) -> bytes:
    return data[:4] + request.transaction_id + data[20:]


def mapped_address(source: Address) -> Address:
    """The address a response names for ``source`` (without an IPv6 scope)."""
    return (source[0].split("%", 1)[0], source[1])


def binding_response(data: bytes, address: Address) -> bytes | None:
    """The plain response to a STUN Binding request from ``address`` (see the module docstring),
    or None if ``data`` is not one. Never raises."""
    request = parse_binding(data)
    if request is None:
        return None
    refused = tuple(
        kind for kind in request.unknown if not (kind == ATTR_CHANGE_REQUEST and request.change == 0)
    )
    if refused:
        return encode_unknown_attributes(request, refused)
    try:
        return encode_success(request, mapped_address(address))
    except (ValueError, struct.error):
        return None  # not an IP literal: nothing to answer


class StunRateLimiter:
    """How often one source IP gets STUN answers: a token bucket per IP, ``rate_per_s`` tokens a
    second up to ``burst``, in a table of at most ``max_sources`` IPs (the least recently seen
    one is forgotten first, so memory stays bounded whatever the sources). Sans-I/O: ``now`` is
    any monotonic clock in seconds.

    Raises (on construction):
        ValueError: a limit is not positive.
    """

    def __init__(self, rate_per_s: float, burst: int, max_sources: int = 65536) -> None:
        if rate_per_s <= 0 or burst < 1 or max_sources < 1:
            raise ValueError(
                f"STUN rate limit needs rate_per_s > 0, burst >= 1 and max_sources >= 1, got "
                f"{rate_per_s}, {burst}, {max_sources}"
            )
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.refused = 0

    def allow(self, host: str, now: float) -> bool:
        """Take a token for ``host`` at ``now``; False (and counted in ``refused``) if it has
        none left."""
        buckets = self._buckets
        entry = buckets.pop(host, None)
        if entry is None:
            tokens = self._burst
            if len(buckets) >= self._max:
                buckets.popitem(last=False)
        else:
            tokens, then = entry
            tokens = min(self._burst, tokens + max(0.0, now - then) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            self.refused += 1
        buckets[host] = (tokens, now)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
