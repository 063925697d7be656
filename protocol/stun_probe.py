"""A STUN reachability probe, sans-I/O: one Binding Request (RFC 8489) and its retransmissions.

Any STUN response with the request's transaction id, success or error, proves the path: the
broker's presence and STUN ports answer Binding requests. The request is 20 bytes and the
answer about 32, so a probe costs next to nothing on a metered SIM. Used by the modem's data-path
probe (``modem/netprobe.py``), the presence transport's UDP check and the NAT lifetime probes'
priming, none of which needs a full STUN codec; that one (aioice's) loads only with a session.
"""

from __future__ import annotations

import enum
import struct

STUN_MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111
_HEADER = struct.Struct("!HHI12s")


def binding_request(transaction_id: bytes) -> bytes:
    """A STUN Binding Request without attributes (20 bytes).

    Raises:
        ValueError: the transaction id is not 12 bytes.
    """
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    return _HEADER.pack(BINDING_REQUEST, 0, STUN_MAGIC_COOKIE, transaction_id)


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

    def __init__(self, transaction_id: bytes, *, timeout_s: float, initial_rto_s: float) -> None:
        self._request = binding_request(transaction_id)
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
        self._retransmit_at = now + self._rto
