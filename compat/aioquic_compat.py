"""aioquic's private names that dvrlink uses, each behind one function (guards:
``tests/test_compat_aioquic.py``; written against aioquic 1.7).

Sans-I/O like aioquic's ``QuicConnection`` itself: ``dvrlink.protocol`` may import this module.
Every function raises ``dvrlink.compat.InternalsMoved`` when a name is gone; none falls back to a
default (a fallback of 0 probe timeouts once switched dead-path detection off without a word).

Names, what they are for, and the public API that could replace them upstream:

- ``QuicConnection._loss`` (``QuicPacketRecovery``): its ``_rtt_initialized``,
  ``_rtt_smoothed``, ``_pto_count`` and ``get_probe_timeout()``: the session's liveness probe
  (``probe_timeout``), the viewer's dead-path check (``probe_timeout_count``) and status output
  (``smoothed_rtt``). Upstream could offer a read-only ``QuicConnection.get_rtt_stats()``
  (smoothed RTT, variance, PTO, consecutive PTO count), as quiche's path statistics give RTT.
- ``QuicConnection._spaces`` and each space's ``largest_received_packet``: liveness counts a
  peer as heard only when one of its packets decrypted (``received_marker``). Upstream could
  count received (authenticated) packets in those stats.
- ``QuicConnection._streams`` and a stream sender's ``_buffer_start``/``_buffer_stop``:
  unacknowledged bytes per stream, for ``SessionStream.drain`` (``unacknowledged_bytes``).
  Upstream could offer ``get_stream_send_buffer_size(stream_id)`` (bytes written and not yet
  acknowledged).
- ``tls.Context._request_client_certificate``, set from an override of
  ``QuicConnection._initialize`` (where aioquic creates the TLS context): the device asks the
  viewer for a client certificate (``request_client_certificate``, ``HookedQuicConnection``).
  aioquic's own comment calls the flag "for test purposes only"; upstream could add
  ``QuicConfiguration.request_client_certificate`` (or ``verify_mode`` on the server side).
- ``tls.Context._peer_certificate``: the key the peer presented, checked against the pin or the
  authorised viewers (``peer_certificate``). Upstream could offer
  ``QuicConnection.get_peer_certificate()`` or a certificate-verification callback in
  ``QuicConfiguration``.
- An override of ``QuicConnection._write_stream_limits`` (with ``_on_max_stream_data_delivery``
  as the frame's delivery handler): the receive window follows what the application read rather
  than what arrived (``HookedQuicConnection.stream_receive_limit``). Upstream could let the
  application credit a stream's window itself (window growth tied to what it read), as quiche
  credits what ``stream_recv`` hands out.
- ``aioquic._buffer.Buffer``: ``aioquic.buffer`` re-exports it without ``__all__``, so a strict
  type checker refuses the import from there; upstream could add ``__all__`` to
  ``aioquic/buffer.py``.

Public APIs used instead of internals: ``QuicConnection.get_peer_address()`` (the active path's
address; ``_network_paths`` before).
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType
from cryptography import x509

from dvrlink.compat import moved

try:
    from aioquic._buffer import Buffer
except ImportError as exc:  # an aioquic that moved it (guarded)
    raise moved("aioquic", "aioquic._buffer.Buffer", "parsing QUIC headers") from exc

__all__ = [
    "Buffer",
    "HookedQuicConnection",
    "peer_certificate",
    "probe_timeout",
    "probe_timeout_count",
    "received_marker",
    "request_client_certificate",
    "smoothed_rtt",
    "unacknowledged_bytes",
]

HOOKED_METHODS = ("_initialize", "_write_stream_limits", "_on_max_stream_data_delivery")
"""The ``QuicConnection`` methods ``HookedQuicConnection`` overrides or calls."""


def check_hooked_methods() -> None:
    """Raise ``InternalsMoved`` if ``QuicConnection`` lacks a method ``HookedQuicConnection``
    overrides or calls (run when this module loads)."""
    # An override of a method aioquic no longer calls would be dead code without a word: refuse
    # to load instead, so the first session that needs this module says what moved.
    for name in HOOKED_METHODS:
        if not callable(getattr(QuicConnection, name, None)):
            raise moved("aioquic", f"QuicConnection.{name}()", "the session's TLS and flow-control hooks")


check_hooked_methods()

_MISSING = object()


def _loss(quic: QuicConnection, used_for: str) -> object:
    loss = getattr(quic, "_loss", _MISSING)
    if loss is _MISSING:
        raise moved("aioquic", "QuicConnection._loss", used_for)
    return loss


def _sampled_loss(quic: QuicConnection, used_for: str) -> object | None:
    """The connection's ``QuicPacketRecovery`` once it has an RTT sample, else None."""
    loss = _loss(quic, used_for)
    return loss if _attribute(loss, "_rtt_initialized", "QuicPacketRecovery", used_for) else None


def _attribute(owner: object, name: str, where: str, used_for: str) -> object:
    value = getattr(owner, name, _MISSING)
    if value is _MISSING:
        raise moved("aioquic", f"{where}.{name}", used_for)
    return value


def probe_timeout(quic: QuicConnection) -> float | None:
    """aioquic's probe timeout (PTO: smoothed RTT + 4 x variance + the peer's ack delay), in
    seconds; None before the first RTT sample.

    Raises:
        InternalsMoved: aioquic no longer has the names this reads.
    """
    used_for = "the session liveness probe (the probe timeout)"
    loss = _sampled_loss(quic, used_for)
    if loss is None:
        return None
    get = _attribute(loss, "get_probe_timeout", "QuicPacketRecovery", used_for)
    if not callable(get):
        raise moved("aioquic", "QuicPacketRecovery.get_probe_timeout()", used_for)
    return float(get())


def probe_timeout_count(quic: QuicConnection) -> int:
    """How many times in a row aioquic's probe timeout fired without an acknowledgement (any
    acknowledgement resets it).

    Raises:
        InternalsMoved: aioquic no longer has ``QuicPacketRecovery._pto_count``.
    """
    used_for = "dead-path detection (the count of probe timeouts in a row)"
    count = _attribute(_loss(quic, used_for), "_pto_count", "QuicPacketRecovery", used_for)
    if not isinstance(count, int):
        raise moved("aioquic", "QuicPacketRecovery._pto_count as an int", used_for)
    return count


def smoothed_rtt(quic: QuicConnection) -> float | None:
    """aioquic's smoothed RTT of the connection, in seconds; None before the first sample.

    Raises:
        InternalsMoved: aioquic no longer has the names this reads.
    """
    used_for = "the session's round-trip time in status output"
    loss = _sampled_loss(quic, used_for)
    if loss is None:
        return None
    rtt = _attribute(loss, "_rtt_smoothed", "QuicPacketRecovery", used_for)
    if not isinstance(rtt, int | float):
        raise moved("aioquic", "QuicPacketRecovery._rtt_smoothed as a number", used_for)
    return float(rtt)


def received_marker(quic: QuicConnection) -> tuple[int, ...]:
    """The largest packet number received in each packet number space: it changes exactly when a
    packet from the peer decrypted (a forged or replayed datagram leaves it alone).

    Raises:
        InternalsMoved: aioquic no longer has the names this reads.
    """
    used_for = "session liveness (whether a packet of the peer decrypted)"
    spaces = _attribute(quic, "_spaces", "QuicConnection", used_for)
    if not isinstance(spaces, dict):
        raise moved("aioquic", "QuicConnection._spaces as a dict", used_for)
    marks = []
    for space in spaces.values():
        mark = _attribute(space, "largest_received_packet", "QuicPacketSpace", used_for)
        if not isinstance(mark, int):
            raise moved("aioquic", "QuicPacketSpace.largest_received_packet as an int", used_for)
        marks.append(mark)
    return tuple(marks)


def unacknowledged_bytes(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written on ``stream_id`` that the peer has not acknowledged yet; 0 for a stream aioquic
    no longer keeps (finished or never opened).

    Raises:
        InternalsMoved: aioquic no longer has the names this reads.
    """
    used_for = "stream back-pressure (SessionStream.drain)"
    streams = _attribute(quic, "_streams", "QuicConnection", used_for)
    if not isinstance(streams, dict):
        raise moved("aioquic", "QuicConnection._streams as a dict", used_for)
    stream = streams.get(stream_id)
    if stream is None:
        return 0
    sender = _attribute(stream, "sender", "QuicStream", used_for)
    start = _attribute(sender, "_buffer_start", "QuicStreamSender", used_for)
    stop = _attribute(sender, "_buffer_stop", "QuicStreamSender", used_for)
    if not isinstance(start, int) or not isinstance(stop, int):
        raise moved("aioquic", "QuicStreamSender._buffer_start/_buffer_stop as ints", used_for)
    return stop - start


def request_client_certificate(quic: QuicConnection) -> None:
    """Make a server connection's TLS context send a CertificateRequest. Call it right after
    aioquic created the context (``HookedQuicConnection.tls_context_created``).

    Raises:
        InternalsMoved: the TLS context has no ``_request_client_certificate`` (setting it anyway
            would create a new attribute nobody reads, and every viewer would be refused).
    """
    used_for = "asking the viewer for its client certificate"
    context = _attribute(quic, "tls", "QuicConnection", used_for)
    if not isinstance(_attribute(context, "_request_client_certificate", "tls.Context", used_for), bool):
        raise moved("aioquic", "tls.Context._request_client_certificate as a bool", used_for)
    context._request_client_certificate = True  # type: ignore[attr-defined]


def peer_certificate(quic: QuicConnection) -> x509.Certificate | None:
    """The certificate the peer presented in this handshake, or None (none yet, or none sent).

    Raises:
        InternalsMoved: the TLS context has no ``_peer_certificate``.
    """
    context = getattr(quic, "tls", None)  # aioquic creates it with the first packet
    if context is None:
        return None
    cert = _attribute(context, "_peer_certificate", "tls.Context", "checking the peer's key")
    return cert if isinstance(cert, x509.Certificate) else None


class HookedQuicConnection(QuicConnection):
    """A ``QuicConnection`` with the two hooks dvrlink needs and aioquic has no public API for
    (see the module docstring): override ``tls_context_created`` and ``stream_receive_limit``."""

    def tls_context_created(self) -> None:
        """Called right after aioquic created ``self.tls`` (a server: on the client's first
        Initial, before its ClientHello is handled). Does nothing unless overridden."""

    def stream_receive_limit(self, stream_id: int, limit: int) -> int | None:
        """The MAX_STREAM_DATA to announce for ``stream_id``, whose current limit is ``limit``;
        a value above ``limit`` raises it. None (the default) keeps aioquic's own policy, which
        doubles the window whenever more than half of it has arrived."""
        return None

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls_context_created()

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if not stream.max_stream_data_local:  # our own unidirectional streams receive nothing
            return
        limit = self.stream_receive_limit(stream.stream_id, stream.max_stream_data_local)
        if limit is None:
            super()._write_stream_limits(builder, space, stream)
            return
        stream.max_stream_data_local = max(limit, stream.max_stream_data_local)
        if stream.max_stream_data_local_sent == stream.max_stream_data_local:
            return
        frame = builder.start_frame(
            QuicFrameType.MAX_STREAM_DATA,
            capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
            handler=self._on_max_stream_data_delivery,
            handler_args=(stream,),
        )
        frame.push_uint_var(stream.stream_id)
        frame.push_uint_var(stream.max_stream_data_local)
        stream.max_stream_data_local_sent = stream.max_stream_data_local
