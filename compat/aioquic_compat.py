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
  (smoothed RTT, variance, PTO, consecutive PTO count), as quic-go's ``ConnectionState`` and
  quiche's ``Connection::stats()``/``path_stats()`` do.
"""

from __future__ import annotations

from aioquic.quic.connection import QuicConnection

from dvrlink.compat import moved

_MISSING = object()


def _loss(quic: QuicConnection, used_for: str) -> object:
    loss = getattr(quic, "_loss", _MISSING)
    if loss is _MISSING:
        raise moved("aioquic", "QuicConnection._loss", used_for)
    return loss


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
    loss = _loss(quic, used_for)
    if not _attribute(loss, "_rtt_initialized", "QuicPacketRecovery", used_for):
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
    loss = _loss(quic, used_for)
    if not _attribute(loss, "_rtt_initialized", "QuicPacketRecovery", used_for):
        return None
    rtt = _attribute(loss, "_rtt_smoothed", "QuicPacketRecovery", used_for)
    if not isinstance(rtt, int | float):
        raise moved("aioquic", "QuicPacketRecovery._rtt_smoothed as a number", used_for)
    return float(rtt)
