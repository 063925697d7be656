"""A STUN reachability probe, sans-I/O: one Binding Request (RFC 8489) and its retransmissions.

Any STUN response with the request's transaction id, success or error, proves the path: the
broker's presence and STUN ports answer Binding requests. The request is 20 bytes and the
answer about 32, so a probe costs next to nothing on a metered SIM. Used by the modem's data-path
probe (``modem/netprobe.py``), the presence transport's UDP check and the NAT lifetime probes'
priming, none of which needs a full STUN codec; that one (aioice's) loads only with a session.

With ``rfc5780=True`` the request carries an empty CHANGE-REQUEST (28 bytes): a server with an
RFC 5780 alternate address then answers with OTHER-ADDRESS (:func:`other_address`; the broker
with ``stun_alternate_host``, 56 bytes), one without it with a plain 32-byte answer. That is how
the device learns, for one round trip, whether its broker node can classify its NAT
(``daemon/nat_type.py``) before it loads the classifier.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

STUN_MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111
ATTR_CHANGE_REQUEST = 0x0003
ATTR_OTHER_ADDRESS = 0x802C
_HEADER = struct.Struct("!HHI12s")
_ATTR = struct.Struct("!HH")


def binding_request(transaction_id: bytes, *, rfc5780: bool = False) -> bytes:
    """A STUN Binding Request: without attributes (20 bytes), or with ``rfc5780`` an empty
    CHANGE-REQUEST that asks an RFC 5780 server for its OTHER-ADDRESS (28 bytes).

    Raises:
        ValueError: the transaction id is not 12 bytes.
    """
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    if not rfc5780:
        return _HEADER.pack(BINDING_REQUEST, 0, STUN_MAGIC_COOKIE, transaction_id)
    change = _ATTR.pack(ATTR_CHANGE_REQUEST, 4) + bytes(4)
    return _HEADER.pack(BINDING_REQUEST, len(change), STUN_MAGIC_COOKIE, transaction_id) + change


def other_address(data: bytes, transaction_id: bytes) -> tuple[str, int] | None:
    """The OTHER-ADDRESS (RFC 5780) of a Binding success response to ``transaction_id``, or None:
    not such a response, no such attribute, or a malformed one. Never raises."""
    if not is_binding_response(data, transaction_id) or data[:2] != BINDING_SUCCESS.to_bytes(2, "big"):
        return None
    end = _HEADER.size + _HEADER.unpack_from(data)[1]
    data = data[:end]
    offset = _HEADER.size
    while offset + _ATTR.size <= end:
        kind, length = _ATTR.unpack_from(data, offset)
        value = data[offset + _ATTR.size : offset + _ATTR.size + length]
        if len(value) != length:
            return None
        if kind == ATTR_OTHER_ADDRESS:
            family = value[1] if len(value) >= 2 else 0
            size = {1: 4, 2: 16}.get(family)
            if size is None or length != 4 + size:
                return None
            (port,) = struct.unpack_from("!H", value, 2)
            return str(ipaddress.ip_address(value[4 : 4 + size])), int(port)
        offset += _ATTR.size + length + (-length % 4)
    return None


def is_binding_response(data: bytes, transaction_id: bytes) -> bool:
    """True when ``data`` is a STUN Binding success or error response to ``transaction_id``.

    Anything else (short, another transaction, not STUN) is False; it never raises.
    """
    if len(data) < _HEADER.size:
        return False
    kind, length, cookie, tid = _HEADER.unpack_from(data)
    return (
        kind in (BINDING_SUCCESS, BINDING_ERROR)
        and cookie == STUN_MAGIC_COOKIE
        and tid == transaction_id
        and length % 4 == 0
        and len(data) >= _HEADER.size + length
    )


class ProbeVerdict(enum.Enum):
    """The state of one probe."""

    PENDING = "pending"
    REACHED = "reached"
    FAILED = "failed"


class StunProbe:
    """One UDP probe, sans-I/O: ``start(now)`` → datagram; then ``datagram_received`` and
    ``handle_timer`` until ``verdict`` is no longer pending. ``datagrams_to_send()`` drains what to
    send (the request, then its retransmissions)."""

    def __init__(
        self, transaction_id: bytes, *, timeout_s: float, initial_rto_s: float, rfc5780: bool = False
    ) -> None:
        self._request = binding_request(transaction_id, rfc5780=rfc5780)
        self.other_address: tuple[str, int] | None = None
        """With ``rfc5780``: the server's OTHER-ADDRESS from its answer (None: it has none)."""
        self.sent_bytes = 0
        self.received_bytes = 0
        """STUN bytes of this probe (without IP/UDP headers)."""
        self._tid = transaction_id
        self._timeout_s = timeout_s
        self._rto = initial_rto_s
        self._outbox: list[bytes] = []
        self._deadline: float | None = None
        self._retransmit_at: float | None = None
        self.verdict = ProbeVerdict.PENDING
        self.sent = 0

    def start(self, now: float) -> None:
        """Send the first request.

        Raises:
            RuntimeError: already started.
        """
        if self._deadline is not None:
            raise RuntimeError("STUN probe already started")
        self._deadline = now + self._timeout_s
        self._send(now)

    def datagrams_to_send(self) -> list[bytes]:
        """The datagrams to send now."""
        out, self._outbox = self._outbox, []
        return out

    def datagram_received(self, data: bytes, now: float) -> None:
        """A datagram arrived; a matching response decides the probe."""
        if self.verdict is ProbeVerdict.PENDING and is_binding_response(data, self._tid):
            self.verdict = ProbeVerdict.REACHED
            self.received_bytes += len(data)
            self.other_address = other_address(data, self._tid)

    def unreachable(self) -> None:
        """The network said no (ICMP unreachable): the probe fails now."""
        if self.verdict is ProbeVerdict.PENDING:
            self.verdict = ProbeVerdict.FAILED

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due, or None once decided."""
        if self.verdict is not ProbeVerdict.PENDING or self._deadline is None:
            return None
        assert self._retransmit_at is not None
        return min(self._deadline, self._retransmit_at)

    def handle_timer(self, now: float) -> None:
        """Retransmit, or fail after the timeout."""
        if self.verdict is not ProbeVerdict.PENDING or self._deadline is None:
            return
        if now >= self._deadline:
            self.verdict = ProbeVerdict.FAILED
        elif self._retransmit_at is not None and now >= self._retransmit_at:
            self._rto *= 2
            self._send(now)

    def _send(self, now: float) -> None:
        self._outbox.append(self._request)
        self.sent += 1
        self.sent_bytes += len(self._request)
        self._retransmit_at = now + self._rto
