"""STUN Binding responder (RFC 8489) for the broker's UDP port, on aioice's STUN codec.

A valid Binding request gets a success response with XOR-MAPPED-ADDRESS (and FINGERPRINT if the
request had one). This is the one unauthenticated reply that is larger than its request, by
at most 12 bytes for IPv4 (24 for IPv6) plus the FINGERPRINT the client asked for, as with
every STUN server; everything else is dropped.
"""

from __future__ import annotations

from aioice import stun

from dvrlink.protocol.presence_events import Address

HEADER_LENGTH = 20
MAGIC_COOKIE = b"\x21\x12\xa4\x42"


def binding_response(data: bytes, address: Address) -> bytes | None:
    """The response to a STUN Binding request from ``address``, or None if ``data`` is not one."""
    if len(data) < HEADER_LENGTH or data[4:8] != MAGIC_COOKIE or len(data) % 4:
        return None
    try:
        request = stun.parse_message(data)
    except (ValueError, KeyError, IndexError, UnicodeDecodeError):
        return None
    if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
        return None
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = (address[0].split("%", 1)[0], address[1])
    if "FINGERPRINT" in request.attributes:
        response.add_fingerprint()
    return bytes(response)
