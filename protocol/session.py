"""End-to-end encrypted viewer ⇄ device sessions: sans-I/O wrappers around aioquic's QuicConnection.

The device is the QUIC server (``DeviceSession``), the viewer the client (``ViewerSession``).
Both are plain objects: datagrams and ``now`` (seconds, any monotonic clock) in; events,
datagrams and a timer deadline out. The caller (the daemon's or the viewer's session link, fed
by ICE) runs the usual loop::

    session.receive_datagram(data, addr, now)       # or session.handle_timer(now)
    while (event := session.next_event()) is not None: ...
    for data, addr in session.datagrams_to_send(now): send(data, addr)
    rearm(session.get_timer())

Identity (see ``session_tls``): the device presents a certificate for its Ed25519 device key and
the viewer accepts it only if the key's fingerprint equals the one pinned at pairing
(``PinMismatch`` otherwise, before anything else is sent); the viewer presents a TLS client
certificate for its Ed25519 key and the device accepts it only if its own ``authorised``
callable says so (``ViewerRefused`` otherwise). ALPN is ``dvrlink/1``.

Streams: every bidirectional stream starts with a stream-open header naming a service and a
target (``encode_stream_header``); the side that did not open it gets ``StreamOpened`` once the
header is complete, then ``StreamData``, then ``StreamEnded``. Services (forward, RPC) are layered
on top by the caller. Unidirectional streams are not used and are stopped.

Paths: every datagram is QUIC with the fixed bit set, so its first byte is 64–127 (short
header) or 192–255 (long header) and one socket can demultiplex it from STUN/TURN and presence
(RFC 9443). The viewer may move its datagrams to a new path at any time (``switch_path``: relay to
direct); the device's QUIC validates the new path and follows it (``PeerMoved``), and streams
carry on, since QUIC retransmits whatever was lost on the old path.

Session states (one table, ``TRANSITIONS``)::

    handshake --> established   pin verified (viewer) / viewer authorised (device)
    handshake --> closed        pin mismatch, viewer refused, TLS failure, timeout, close()
    established --> closed      peer closed, peer silent (liveness), idle timeout, close()
"""

from __future__ import annotations

import contextlib
import enum
import os
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.compat import aioquic_compat
from dvrlink.compat.aioquic_compat import (
    Buffer,
    HookedQuicConnection,
    peer_certificate,
    probe_timeout,
    received_marker,
    request_client_certificate,
)
from dvrlink.protocol import dataplane as dp
from dvrlink.protocol.dataplane_keys import RANDOM_SIZE
from dvrlink.protocol.dataplane_wire import RECEIVE_TAG_SIZE, is_dataplane
from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint, normalize_fingerprint
from dvrlink.protocol.session_streams import (
    AnyTarget,
    DataplaneTarget,
    Service,
    StreamErrorCode,
    StreamTarget,
    decode_stream_header,
    encode_stream_header,
)
from dvrlink.protocol.session_tls import ALPN, certificate_ed25519_key

QUIC_FIXED_BIT = 0x40
MIN_INITIAL_SIZE = 1200
MAX_REMEMBERED_PATHS = 4
DATAPLANE_VERSION = 1
DATAPLANE_STREAM_BASE = 1 << 62
"""Session-level id of a data plane stream: this plus the data plane's own id (QUIC's stream ids
are below 2**62, so the two never meet)."""
DATAPLANE_HELLO_SIZE = RANDOM_SIZE + RECEIVE_TAG_SIZE
"""A data plane hello: 32 random bytes, then the 4-byte receive tag its sender chose."""
DATAPLANE_IDLE_S = float(1 << 30)
"""The data plane's own idle timeout, in effect never: the session's liveness and QUIC's idle
timeout end a session whose peer went silent, and the data plane with it."""


class CloseCode(enum.IntEnum):
    """Application error codes of a session's CONNECTION_CLOSE."""

    NORMAL = 0x0
    VIEWER_NOT_AUTHORISED = 0x100
    PIN_MISMATCH = 0x101
    WRONG_PROTOCOL = 0x102
    PEER_SILENT = 0x103
    """The peer stopped answering (see ``SessionConfig.liveness_min_s``)."""


class SessionState(enum.Enum):
    """Where a session is; transitions in ``TRANSITIONS``."""

    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSED = "closed"


TRANSITIONS: frozenset[tuple[SessionState, SessionState]] = frozenset(
    {
        (SessionState.HANDSHAKE, SessionState.ESTABLISHED),
        (SessionState.HANDSHAKE, SessionState.CLOSED),
        (SessionState.ESTABLISHED, SessionState.CLOSED),
    }
)


# --- events ---


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """Base of the events both session sides emit."""


@dataclass(frozen=True, slots=True)
class SessionEstablished(SessionEvent):
    """The peer is who it must be; streams may be opened. ``peer_fingerprint`` names its key."""

    peer_fingerprint: str


@dataclass(frozen=True, slots=True)
class PinMismatch(SessionEvent):
    """Viewer: the device's key is not the one pinned at pairing; the session is being closed."""

    expected: str
    seen: str | None
    """Fingerprint of the key presented, or None if it was not an Ed25519 key."""


@dataclass(frozen=True, slots=True)
class ViewerRefused(SessionEvent):
    """Device: the viewer's key is not authorised here (or it sent none); the session is closing."""

    fingerprint: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class StreamOpened(SessionEvent):
    """The peer opened a stream for ``service`` and ``target``."""

    stream_id: int
    service: Service
    target: StreamTarget


@dataclass(frozen=True, slots=True)
class StreamData(SessionEvent):
    """Bytes arrived on a stream (in order)."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded(SessionEvent):
    """The peer finished sending on a stream (``error_code`` None) or reset it (its code)."""

    stream_id: int
    error_code: int | None


@dataclass(frozen=True, slots=True)
class DataplaneStarted(SessionEvent):
    """Both data plane hellos are in: streams the viewer opens from now on ride the data plane."""


@dataclass(frozen=True, slots=True)
class PeerMoved(SessionEvent):
    """Device: the viewer's datagrams now come from (and replies go to) ``address``."""

    address: NetworkAddress


@dataclass(frozen=True, slots=True)
class SessionClosed(SessionEvent):
    """The session is over; ``reason`` says why and what to do. No more events follow.

    Keep calling ``datagrams_to_send`` once more so a CONNECTION_CLOSE reaches the peer.
    """

    reason: str
    error_code: int


# --- configuration ---


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Transport settings shared by both sides."""

    idle_timeout_s: float = 60.0
    """Close the session after this long without a datagram from the peer."""
    keepalive_s: float | None = 15.0
    """Send a PING after this long without sending, to keep NAT and TURN mappings open; None: never."""
    liveness_min_s: float | None = 4.0
    """Once established, declare the peer dead (close with ``CloseCode.PEER_SILENT``) after this
    long without a packet from it, or ``liveness_ptos`` probe timeouts of the measured RTT if that
    is longer; while silent, PING it every quarter of that. The device waits twice as long, so
    that a viewer moving back to the relay from a dead direct path is not dropped. None: only
    the idle timeout."""
    liveness_ptos: int = 8
    """Probe timeouts (QUIC's PTO: smoothed RTT + 4 x its variance + ack delay) of silence after
    which the peer is dead, when that is longer than ``liveness_min_s`` (a slow cellular link)."""
    max_datagram_size: int = 1200
    """Largest QUIC datagram sent, in bytes (UDP payload); 1200 is safe on every path."""
    max_data: int = 4 * 1024 * 1024
    """Connection flow-control window, in bytes."""
    max_stream_data: int = 1024 * 1024
    """Per-stream flow-control window, in bytes."""
    dataplane: bool = True
    """Carry the viewer's streams on the data plane (``protocol.dataplane``: lean AEAD datagrams
    keyed from this session) once both ends have exchanged its hello; streams opened before, or
    with a peer without it, stay on QUIC. The device answers the hello only when this is on."""

    def quic_configuration(self, is_client: bool) -> QuicConfiguration:
        """Return the aioquic configuration for one side."""
        return QuicConfiguration(
            alpn_protocols=[ALPN],
            is_client=is_client,
            idle_timeout=self.idle_timeout_s,
            max_datagram_size=self.max_datagram_size,
            max_data=self.max_data,
            max_stream_data=self.max_stream_data,
            verify_mode=ssl.CERT_NONE,
        )


class SessionStateError(RuntimeError):
    """A local misuse: an operation that the session's current state does not allow."""


@dataclass(slots=True)
class _Stream:
    header: bytearray | None  # peer-opened, header not complete yet
    refused: bool = False
    hello: bytearray | None = None  # the data plane exchange's stream: its bytes so far

    def take_header(
        self, data: bytes, ended: bool
    ) -> tuple[AnyTarget, int, bytes] | Literal["refused"] | None:
        """Add ``data`` to the stream-open header being read (QUIC or data plane stream alike).

        Returns ``(target, header length, the bytes after the header)`` once it is complete, None
        while it is not, and ``"refused"`` (and sets ``refused``) when the header is malformed or
        the stream ended before it was whole.
        """
        assert self.header is not None
        self.header += data
        try:
            parsed = decode_stream_header(bytes(self.header))
        except ValueError:
            parsed = None
            ended = True
        if parsed is None:
            if ended:
                self.refused = True
                return "refused"
            return None
        target, length = parsed
        rest = bytes(self.header[length:])
        self.header = None
        return target, length, rest


def _check_key_matches(key: Ed25519PrivateKey, certificate: x509.Certificate, who: str) -> None:
    if certificate_ed25519_key(certificate) != ed25519_public_bytes(key):
        raise ValueError(f"the {who} certificate is not for the {who} key: build it with the same key")


def _close_reason(event: quic_events.ConnectionTerminated) -> str:
    if event.frame_type is None:
        if event.error_code == CloseCode.VIEWER_NOT_AUTHORISED:
            return (
                "the device refused this viewer: its key is not authorised there; "
                "pair again with the code from the device"
            )
        if event.error_code == CloseCode.PIN_MISMATCH:
            return "the viewer closed the session: this device's key is not the one it paired with"
        what = event.reason_phrase or "no reason given"
        return f"closed by the peer: {what} (application code 0x{event.error_code:x})"
    what = event.reason_phrase or "no reason given"
    return f"QUIC connection ended: {what} (transport code 0x{event.error_code:x})"


class _Session:
    """What both sides share: event queue, streams, keepalive, close, the data plane."""

    _ROLE: Literal["viewer", "device"]
    _MAX_STREAM_WINDOW: int
    """What this end's data plane receive windows may grow to when its application keeps up
    (``DataplaneConfig.max_stream_window``); never below ``SessionConfig``'s windows."""
    _MAX_CONNECTION_WINDOW: int

    def __init__(self, config: SessionConfig, random_bytes: Callable[[int], bytes]) -> None:
        self._config = config
        self._random_bytes = random_bytes
        self._dataplane: dp.DataplaneConnection | None = None
        self._dataplane_hello: bytes | None = None  # ours, once sent
        self._dataplane_streams: dict[int, _Stream] = {}  # by the data plane's own id
        self._dataplane_heard = 0
        self._dataplane_offer: int | None = None  # (viewer) the hello's stream, until answered or refused
        self._dataplane_undrained = False
        """Data plane datagrams came in whose events were not taken yet (``next_event``)."""
        self._now = 0.0  # the clock of the latest input: the data plane starts from it
        self._quic_dirty = True
        """QUIC may have something to send: set by every input to it and every call on it. On a
        pass where only the data plane moved, aioquic's ``datagrams_to_send`` (about 120 µs of
        Python even with nothing to send) is not asked."""
        self._quic_times: tuple[float | None, float | None] | None = None
        """aioquic's (timer, probe timeout) as last read, or None once QUIC was used since:
        reading them costs tens of microseconds per pass, and on a data plane pass QUIC is
        left alone, so they cannot have moved."""
        self._quic: _WindowedQuicConnection | None = None
        self._events: deque[SessionEvent] = deque()
        self._state = SessionState.HANDSHAKE
        self._streams: dict[int, _Stream] = {}
        self._last_sent: float | None = None
        self._ping_uid = 0
        self._peer_fingerprint: str | None = None
        self._peer_key: bytes | None = None
        self._last_heard: float | None = None
        self._heard_marker: tuple[int, ...] = ()
        self._last_probe: float | None = None
        self._probes = 0

    # -- public --

    @property
    def state(self) -> SessionState:
        """The session's state."""
        return self._state

    @property
    def peer_fingerprint(self) -> str | None:
        """Fingerprint of the authenticated peer key once established, else None."""
        return self._peer_fingerprint

    @property
    def last_heard(self) -> float | None:
        """When a packet of the peer last decrypted (the clock of ``receive_datagram``), or None."""
        return self._last_heard

    @property
    def peer_public_key(self) -> bytes | None:
        """The authenticated peer's raw Ed25519 key once established, else None."""
        return self._peer_key

    def probe_timeouts(self) -> int:
        """How many times in a row QUIC's probe timeout fired with data unacknowledged (0 before
        the connection exists; any acknowledgement resets it).

        Raises:
            InternalsMoved: the installed aioquic no longer has what this reads.
        """
        return 0 if self._quic is None else aioquic_compat.probe_timeout_count(self._quic)

    def smoothed_rtt(self) -> float | None:
        """QUIC's smoothed round-trip time in seconds, or None before the first sample.

        Raises:
            InternalsMoved: the installed aioquic no longer has what this reads.
        """
        return None if self._quic is None else aioquic_compat.smoothed_rtt(self._quic)

    def unacknowledged(self, stream_id: int) -> int:
        """Bytes written on ``stream_id`` that the peer has not acknowledged yet (0 for a stream
        that is over or unknown); on a data plane stream, the bytes not yet sent once.

        Raises:
            InternalsMoved: the installed aioquic no longer has what this reads.
        """
        if stream_id >= DATAPLANE_STREAM_BASE:
            plane = self._dataplane
            return 0 if plane is None else plane.send_buffered(stream_id - DATAPLANE_STREAM_BASE)
        return 0 if self._quic is None else aioquic_compat.unacknowledged_bytes(self._quic, stream_id)

    @property
    def dataplane(self) -> dp.DataplaneConnection | None:
        """The data plane once both hellos are in (its ``stats`` say how it goes), else None."""
        return self._dataplane

    @property
    def config(self) -> SessionConfig:
        """The session's settings."""
        return self._config

    def set_dataplane_path(self, ceiling: int, now: float) -> None:
        """The session's datagrams now go on another path, which may carry datagrams up to
        ``ceiling`` bytes: the data plane starts over at its base size and probes up to that
        (``DataplaneConnection.set_path``). Nothing before the data plane is up."""
        plane = self._dataplane
        if plane is not None and not plane.closed:
            plane.set_path(ceiling, now)

    @property
    def dataplane_pending(self) -> bool:
        """(viewer) Our data plane hello went out and neither the device's answer nor its
        refusal has come yet: a stream opened now would ride QUIC."""
        return self._dataplane_offer is not None and self._dataplane is None

    def next_event(self) -> SessionEvent | None:
        """Pop the next event, or None when there is none."""
        if self._dataplane_undrained:
            self._take_dataplane_events()
        return self._events.popleft() if self._events else None

    def _take_dataplane_events(self) -> None:
        """The data plane's events since the last call, as session events: once per batch of
        datagrams rather than per datagram, so that a batch's bytes for a stream come as one
        ``StreamData`` (the data plane joins them)."""
        self._dataplane_undrained = False
        plane = self._dataplane
        if plane is not None:
            self._drain_dataplane(plane)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """Return the datagrams to send now, with their destination addresses."""
        if self._quic is None:
            return []
        if self._dataplane_undrained:  # (a refusal or a stop-sending answers with a frame)
            self._take_dataplane_events()
        out: list[tuple[bytes, NetworkAddress]] = []
        if self._quic_dirty:
            out = self._quic.datagrams_to_send(now)
            self._quic_times = None
        self._quic_dirty = False
        if out:
            self._last_sent = now
        sent = [(data, self._destination(addr)) for data, addr in out]
        plane = self._dataplane
        if plane is not None and not plane.closed:
            where = self._dataplane_destination()
            if where is not None:
                sent.extend((data, where) for data in plane.datagrams_to_send(now))
        return sent

    def get_timer(self) -> float | None:
        """The time at which ``handle_timer`` must be called, or None."""
        if self._quic is None:
            return None
        plane = self._dataplane
        deadlines = [
            self._quic_timer_and_pto()[0],
            self._keepalive_at(),
            *self._liveness_deadlines(),
            None if plane is None else plane.next_timer(),
        ]
        due = [t for t in deadlines if t is not None]
        return min(due) if due else None

    @property
    def silent_for_limit(self) -> float | None:
        """Seconds of silence after which the peer is declared dead now (from the RTT measured
        so far), or None when liveness is off."""
        floor = self._liveness_floor()
        if floor is None or self._quic is None:
            return None
        pto = self._quic_timer_and_pto()[1]
        return floor if pto is None else max(floor, self._config.liveness_ptos * pto)

    def _quic_timer_and_pto(self) -> tuple[float | None, float | None]:
        times = self._quic_times
        if times is None or self._quic_dirty:
            quic = self._quic
            times = (None, None) if quic is None else (quic.get_timer(), probe_timeout(quic))
            self._quic_times = times
        return times

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: retransmissions, keepalive, liveness probes and deadline,
        idle timeout. Never raises."""
        if self._quic is None:
            return
        self._now = now
        self._quic_times = None
        if self._check_liveness(now):
            return
        keepalive = self._keepalive_at()
        if keepalive is not None and now >= keepalive:
            self._ping_uid += 1
            self._quic.send_ping(self._ping_uid)
            self._last_sent = now
            self._quic_dirty = True
        timer = self._quic.get_timer()
        if timer is not None and now >= timer:
            self._quic.handle_timer(now)
            self._quic_dirty = True
            self._drain()
        plane = self._dataplane
        if plane is not None and (due := plane.next_timer()) is not None and now >= due:
            plane.handle_timer(now)
            self._take_dataplane_events()

    def open_stream(self, target: StreamTarget) -> int:
        """Open a bidirectional stream for ``target`` and send its header; return the stream id.

        Raises:
            SessionStateError: the session is not established.
            ValueError: ``target`` cannot be encoded (see ``encode_stream_header``).
        """
        quic = self._require_established("open a stream")
        header = encode_stream_header(target)
        plane = self._dataplane
        if plane is not None and not plane.closed and self._ROLE == "viewer":
            plane_id = plane.open_stream()
            self._dataplane_streams[plane_id] = _Stream(header=None)
            plane.send(plane_id, header)
            return DATAPLANE_STREAM_BASE + plane_id
        stream_id = quic.get_next_available_stream_id()
        quic.send_stream_data(stream_id, header)
        self._quic_dirty = True
        return stream_id

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` on a stream; ``end_stream`` finishes our direction (FIN).

        aioquic buffers without limit and sends as flow and congestion control allow.

        Raises:
            SessionStateError: the session is not established.
            ValueError: the stream cannot be sent on (unknown, peer unidirectional, already finished).
        """
        quic = self._require_established("send")
        if stream_id >= DATAPLANE_STREAM_BASE:
            plane = self._dataplane
            if plane is None:
                raise ValueError(f"cannot send on stream {stream_id}: this session has no data plane")
            plane.send(stream_id - DATAPLANE_STREAM_BASE, data, end_stream)  # ValueError as documented
            return
        self._quic_dirty = True
        try:
            quic.send_stream_data(stream_id, data, end_stream)
        except (ValueError, AssertionError) as exc:
            raise ValueError(f"cannot send on stream {stream_id}: {exc}") from exc

    def consumed(self, stream_id: int, size: int) -> None:
        """The application has read (or dropped) ``size`` bytes of ``StreamData`` on ``stream_id``:
        the peer may send that much more. Until it is called, a stream takes at most
        ``SessionConfig.max_stream_data`` bytes beyond what was consumed."""
        if stream_id >= DATAPLANE_STREAM_BASE:
            if self._dataplane is not None and size > 0:
                self._dataplane.consumed(stream_id - DATAPLANE_STREAM_BASE, size, self._now)
        elif self._quic is not None and size > 0:
            self._quic.credit(stream_id, size)
            self._quic_dirty = True

    def reset_stream(self, stream_id: int, error_code: int = StreamErrorCode.CANCELLED) -> None:
        """Abort a stream both ways (RESET_STREAM and STOP_SENDING), e.g. to refuse a target.

        Raises:
            SessionStateError: the session is not established.
        """
        quic = self._require_established("reset a stream")
        if stream_id >= DATAPLANE_STREAM_BASE:
            self._abort_dataplane_stream(stream_id - DATAPLANE_STREAM_BASE, error_code)
        else:
            self._abort_stream(quic, stream_id, error_code)
            self._quic_dirty = True

    def close(self, reason: str = "closed by the user", error_code: int = CloseCode.NORMAL) -> None:
        """Close the session; emits ``SessionClosed`` unless it already closed. Never raises."""
        if self._quic is not None:
            self._quic.close(error_code=error_code, reason_phrase=reason)
            self._quic_dirty = True
        if self._dataplane is not None:
            self._dataplane.close(dp.NO_ERROR, "session closed", self._now)
        self._closed(reason, error_code)

    # -- shared internals --

    def _destination(self, addr: NetworkAddress) -> NetworkAddress:
        return addr

    def _dataplane_destination(self) -> NetworkAddress | None:
        """Where data plane datagrams go: the QUIC session's current path."""
        raise NotImplementedError

    def _liveness_floor(self) -> float | None:
        return self._config.liveness_min_s

    def _peer_noun(self) -> str:
        raise NotImplementedError

    def _heard(self, now: float) -> None:
        """Note ``now`` as the last time the peer was heard if a new packet of its decrypted."""
        if self._quic is None:
            return
        marker = received_marker(self._quic)
        if marker != self._heard_marker:
            self._heard_marker = marker
            self._last_heard = now
            self._probes = 0

    def _heard_dataplane(self, plane: dp.DataplaneConnection, now: float) -> None:
        """A data plane packet of the peer that opened counts as hearing from it."""
        received = plane.packets_received
        if received != self._dataplane_heard:
            self._dataplane_heard = received
            self._last_heard = now
            self._probes = 0

    def _liveness_deadlines(self) -> tuple[float | None, float | None]:
        """(when to probe next, when the peer is dead), or Nones while liveness does not apply."""
        limit = self.silent_for_limit
        if limit is None or self._state is not SessionState.ESTABLISHED or self._last_heard is None:
            return None, None
        interval = limit / 4
        probe = max(self._last_heard, self._last_probe or self._last_heard) + interval
        return probe, self._last_heard + limit

    def _check_liveness(self, now: float) -> bool:
        """Probe a silent peer, or close the session if it is silent past the limit; True if closed."""
        probe_at, dead_at = self._liveness_deadlines()
        if dead_at is not None and now >= dead_at and self._last_heard is not None and self._quic is not None:
            pto = probe_timeout(self._quic)
            rtt = "" if pto is None else f", probe timeout {pto * 1000:.0f} ms"
            self.close(
                f"the {self._peer_noun()} stopped answering: nothing heard for "
                f"{now - self._last_heard:.1f} s ({self._probes} probes unanswered{rtt})",
                CloseCode.PEER_SILENT,
            )
            return True
        if probe_at is not None and now >= probe_at and self._quic is not None:
            self._ping_uid += 1
            self._probes += 1
            self._quic.send_ping(self._ping_uid)
            self._quic_dirty = True
            self._last_probe = now
            self._last_sent = now
        return False

    def _keepalive_at(self) -> float | None:
        if (
            self._config.keepalive_s is None
            or self._state is not SessionState.ESTABLISHED
            or self._last_sent is None
        ):
            return None
        return self._last_sent + self._config.keepalive_s

    def _require_established(self, what: str) -> QuicConnection:
        if self._state is not SessionState.ESTABLISHED or self._quic is None:
            raise SessionStateError(f"cannot {what}: the session is {self._state.value}, not established")
        return self._quic

    def _set_state(self, new: SessionState) -> None:
        if (self._state, new) not in TRANSITIONS:
            raise AssertionError(f"session transition {self._state.value} -> {new.value} is not in the table")
        self._state = new

    def _closed(self, reason: str, error_code: int) -> None:
        if self._state is SessionState.CLOSED:
            return
        self._set_state(SessionState.CLOSED)
        self._streams.clear()
        self._dataplane_streams.clear()
        self._dataplane_offer = None
        self._events.append(SessionClosed(reason, int(error_code)))

    def _is_local_stream(self, stream_id: int) -> bool:
        raise NotImplementedError

    def _on_handshake_completed(self, event: quic_events.HandshakeCompleted) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        quic = self._quic
        if quic is None:
            return
        while (event := quic.next_event()) is not None:
            if isinstance(event, quic_events.ConnectionTerminated):
                self._closed(_close_reason(event), event.error_code)
            elif self._state is SessionState.CLOSED:
                continue
            elif isinstance(event, quic_events.HandshakeCompleted):
                self._on_handshake_completed(event)
            elif self._state is not SessionState.ESTABLISHED:
                continue  # nothing from an unauthenticated peer reaches the application
            elif isinstance(event, quic_events.StreamDataReceived):
                self._on_stream_data(quic, event)
            elif isinstance(event, quic_events.StreamReset):
                self._on_stream_reset(event)

    def _on_stream_data(self, quic: _WindowedQuicConnection, event: quic_events.StreamDataReceived) -> None:
        stream_id = event.stream_id
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_local_stream(stream_id):
                stream = self._streams[stream_id] = _Stream(header=None)
            elif stream_id & 2:  # unidirectional: not part of this protocol
                self._abort_stream(quic, stream_id, StreamErrorCode.BAD_HEADER)
                return
            else:
                stream = self._streams[stream_id] = _Stream(header=bytearray())
        if stream.refused:
            quic.credit(stream_id, len(event.data))
            if event.end_stream:
                del self._streams[stream_id]
                quic.forget(stream_id)
            return
        if stream.hello is not None:
            self._on_hello_data(quic, stream_id, stream, event.data, event.end_stream)
            return
        data = event.data
        if stream.header is not None:
            opened = stream.take_header(data, event.end_stream)
            if opened == "refused":
                self._abort_stream(quic, stream_id, StreamErrorCode.BAD_HEADER)
                if event.end_stream:
                    del self._streams[stream_id]
                return
            if opened is None:
                return
            target, length, data = opened
            quic.credit(stream_id, length)
            if isinstance(target, DataplaneTarget):
                self._on_hello_offered(quic, stream_id, stream, target, data, event.end_stream)
                return
            self._events.append(StreamOpened(stream_id, target.service, target))
        if data:
            self._events.append(StreamData(stream_id, data))
        if event.end_stream:
            del self._streams[stream_id]
            quic.forget(stream_id)
            self._events.append(StreamEnded(stream_id, None))

    def _on_stream_reset(self, event: quic_events.StreamReset) -> None:
        if self._quic is not None:
            self._quic.forget(event.stream_id)
        stream = self._streams.pop(event.stream_id, None)
        if stream is None and not self._is_local_stream(event.stream_id):
            return  # never opened (no complete header): nothing to tell
        if stream is not None and stream.hello is not None and event.stream_id == self._dataplane_offer:
            self._dataplane_offer = None  # the device has no data plane: streams stay on QUIC
        if stream is not None and (stream.refused or stream.header is not None or stream.hello is not None):
            return  # a refused stream, one never opened, or the data plane's exchange (refused: stay on QUIC)
        self._events.append(StreamEnded(event.stream_id, event.error_code))

    # -- the data plane --

    def _hello(self) -> bytes:
        """Our data plane hello (made once): 32 random bytes, then our 4-byte receive tag."""
        if self._dataplane_hello is None:
            self._dataplane_hello = self._random_bytes(DATAPLANE_HELLO_SIZE)
        return self._dataplane_hello

    def _on_hello_offered(
        self,
        quic: _WindowedQuicConnection,
        stream_id: int,
        stream: _Stream,
        target: DataplaneTarget,
        data: bytes,
        end_stream: bool,
    ) -> None:
        """(device) The viewer opened the data plane's exchange: answer it if we may."""
        if (
            self._ROLE != "device"
            or not self._config.dataplane
            or target.version != DATAPLANE_VERSION
            or self._dataplane_hello is not None
        ):
            quic.credit(stream_id, len(data))
            self._abort_stream(quic, stream_id, StreamErrorCode.REFUSED)
            if end_stream:
                del self._streams[stream_id]
                quic.forget(stream_id)
            return
        stream.hello = bytearray()
        self._on_hello_data(quic, stream_id, stream, data, end_stream)

    def _on_hello_data(
        self, quic: _WindowedQuicConnection, stream_id: int, stream: _Stream, data: bytes, end_stream: bool
    ) -> None:
        """Bytes of the data plane's exchange: once the peer's whole hello is in (and on the
        device, ours is sent back), the data plane starts. A short or long hello leaves the
        session on QUIC."""
        assert stream.hello is not None
        quic.credit(stream_id, len(data))
        stream.hello += data
        if len(stream.hello) > DATAPLANE_HELLO_SIZE:
            self._abort_stream(quic, stream_id, StreamErrorCode.BAD_HEADER)
        elif len(stream.hello) == DATAPLANE_HELLO_SIZE and self._dataplane is None:
            peer = bytes(stream.hello)
            if self._ROLE == "device":
                quic.send_stream_data(stream_id, self._hello(), end_stream=True)
                self._start_dataplane(viewer_hello=peer, device_hello=self._hello())
            elif self._dataplane_hello is not None:
                self._start_dataplane(viewer_hello=self._dataplane_hello, device_hello=peer)
        if end_stream:
            self._streams.pop(stream_id, None)
            quic.forget(stream_id)
            if stream_id == self._dataplane_offer:
                self._dataplane_offer = None  # answered, or ended without a usable hello

    def _offer_dataplane(self) -> None:
        """(viewer) Open the data plane's exchange: our hello on a stream of its own."""
        quic = self._quic
        if quic is None or not self._config.dataplane:
            return
        stream_id = quic.get_next_available_stream_id()
        self._streams[stream_id] = _Stream(header=None, hello=bytearray())
        self._dataplane_offer = stream_id
        header = encode_stream_header(DataplaneTarget(DATAPLANE_VERSION))
        quic.send_stream_data(stream_id, header + self._hello(), end_stream=True)

    def _start_dataplane(self, *, viewer_hello: bytes, device_hello: bytes) -> None:
        keys = dp.KeyMaterial(
            viewer_random=viewer_hello[:RANDOM_SIZE],
            device_random=device_hello[:RANDOM_SIZE],
            viewer_tag=viewer_hello[RANDOM_SIZE:],
            device_tag=device_hello[RANDOM_SIZE:],
        )
        config = dp.DataplaneConfig(
            role=self._ROLE,
            max_datagram=self._config.max_datagram_size,
            stream_window=self._config.max_stream_data,
            connection_window=self._config.max_data,
            max_stream_window=max(self._config.max_stream_data, self._MAX_STREAM_WINDOW),
            max_connection_window=max(self._config.max_data, self._MAX_CONNECTION_WINDOW),
            idle_timeout_s=DATAPLANE_IDLE_S,
        )
        self._dataplane = dp.DataplaneConnection(config, keys, self._now)
        self._events.append(DataplaneStarted())

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """Feed one datagram from ``addr`` (each end's own)."""
        raise NotImplementedError

    def receive_datagrams(
        self, datagrams: list[bytes], addr: NetworkAddress, now: float, arrived: float | None = None
    ) -> None:
        """Feed datagrams that arrived together from ``addr`` (one coalesced read), in order: as
        ``receive_datagram`` each, with the data plane's run in one go. ``arrived``: when they
        reached this host's socket, where the reader knows (kernel stamps), for the data plane's
        RTT samples. Never raises on bad bytes."""
        count = len(datagrams)
        index = 0
        while index < count:
            plane = self._dataplane
            if plane is None or self._state is not SessionState.ESTABLISHED or not self._dataplane_from(addr):
                for data in datagrams[index:]:
                    self.receive_datagram(data, addr, now)
                return
            self._now = now
            receive = plane.receive_datagram
            start = index
            while index < count:
                data = datagrams[index]
                if not data or not is_dataplane(data[0]):
                    break
                receive(data, now, arrived)
                index += 1
            if index > start:
                self._heard_dataplane(plane, now)
                self._dataplane_undrained = True  # taken by next_event or datagrams_to_send
            if index < count:
                self.receive_datagram(datagrams[index], addr, now)  # QUIC, or nothing
                index += 1

    def _dataplane_from(self, addr: NetworkAddress) -> bool:
        """Whether ``receive_datagram`` would hand a data plane datagram from ``addr`` on."""
        return True

    def _receive_dataplane(self, data: bytes, now: float) -> None:
        """A data plane datagram (first byte 0x20-0x3F): only an established session has one."""
        plane = self._dataplane
        if plane is None or self._state is not SessionState.ESTABLISHED:
            return
        plane.receive_datagram(data, now)
        self._heard_dataplane(plane, now)
        self._dataplane_undrained = True  # taken by next_event or datagrams_to_send

    def _drain_dataplane(self, plane: dp.DataplaneConnection) -> None:
        for event in plane.events():
            if isinstance(event, dp.StreamData):
                self._on_dataplane_data(plane, event)
            elif isinstance(event, dp.StreamOpened):
                self._dataplane_streams.setdefault(event.stream_id, _Stream(header=bytearray()))
            elif isinstance(event, dp.StreamReset):
                stream = self._dataplane_streams.pop(event.stream_id, None)
                if stream is not None and not stream.refused and stream.header is None:
                    self._events.append(StreamEnded(DATAPLANE_STREAM_BASE + event.stream_id, event.code))
            elif isinstance(event, dp.StopSendingReceived):
                with contextlib.suppress(ValueError):
                    plane.reset_stream(event.stream_id, event.code)
            elif isinstance(event, dp.DataplaneClosed):
                for plane_id, stream in self._dataplane_streams.items():
                    if not stream.refused and stream.header is None:
                        code = StreamErrorCode.CANCELLED
                        self._events.append(StreamEnded(DATAPLANE_STREAM_BASE + plane_id, code))
                self._dataplane_streams.clear()

    def _on_dataplane_data(self, plane: dp.DataplaneConnection, event: dp.StreamData) -> None:
        plane_id = event.stream_id
        stream = self._dataplane_streams.get(plane_id)
        if stream is None:
            if self._ROLE == "viewer":  # one of ours that is over: nothing to deliver
                plane.consumed(plane_id, len(event.data), self._now)
                return
            stream = self._dataplane_streams[plane_id] = _Stream(header=bytearray())
        session_id = DATAPLANE_STREAM_BASE + plane_id
        if stream.refused:
            plane.consumed(plane_id, len(event.data), self._now)
            if event.ended:
                del self._dataplane_streams[plane_id]
            return
        data = event.data
        if stream.header is not None:
            so_far = len(stream.header) + len(data)
            opened = stream.take_header(data, event.ended)
            if opened is not None and opened != "refused" and isinstance(opened[0], DataplaneTarget):
                stream.refused = True  # no hello on the data plane itself
                opened = "refused"
            if opened == "refused":
                plane.consumed(plane_id, so_far, self._now)
                self._abort_dataplane_stream(plane_id, StreamErrorCode.BAD_HEADER)
                if event.ended:
                    del self._dataplane_streams[plane_id]
                return
            if opened is None:
                return
            target, length, data = opened
            assert not isinstance(target, DataplaneTarget)
            plane.consumed(plane_id, length, self._now)
            self._events.append(StreamOpened(session_id, target.service, target))
        if data:
            self._events.append(StreamData(session_id, data))
        if event.ended:
            del self._dataplane_streams[plane_id]
            self._events.append(StreamEnded(session_id, None))

    def _abort_dataplane_stream(self, plane_id: int, error_code: int) -> None:
        stream = self._dataplane_streams.get(plane_id)
        if stream is not None:
            stream.refused = True
        plane = self._dataplane
        if plane is None:
            return
        with contextlib.suppress(ValueError):  # unknown, or already over on our side
            plane.stop_sending(plane_id, error_code)
        with contextlib.suppress(ValueError):
            plane.reset_stream(plane_id, error_code)

    def _abort_stream(self, quic: QuicConnection, stream_id: int, error_code: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.refused = True
        # ValueError: our own unidirectional stream or an unknown one (nothing to stop), or the
        # peer's unidirectional stream (nothing of ours to reset).
        with contextlib.suppress(ValueError):
            quic.stop_stream(stream_id, error_code)
        with contextlib.suppress(ValueError):
            quic.reset_stream(stream_id, error_code)


class _WindowedQuicConnection(HookedQuicConnection):
    """A QuicConnection whose per-stream receive windows move with what the application has
    read (``credit``), not with what has arrived.

    aioquic doubles a stream's window whenever more than half of it has arrived, so a reader
    slower than the network (a recorder's local service, a phone on a slow link) would buffer
    without bound. Here the peer may send at most ``max_stream_data`` bytes beyond what was
    read; MAX_STREAM_DATA goes out once a quarter of the window was read (through the hook
    ``dvrlink.compat.aioquic_compat`` provides, since aioquic has no public one).
    """

    def __init__(self, *, configuration: QuicConfiguration, **kwargs: Any) -> None:
        super().__init__(configuration=configuration, **kwargs)
        self._stream_window = int(configuration.max_stream_data)
        self._credited: dict[int, int] = {}

    def credit(self, stream_id: int, size: int) -> None:
        """``size`` more bytes of ``stream_id`` were read (or discarded) by the application."""
        self._credited[stream_id] = self._credited.get(stream_id, 0) + size

    def forget(self, stream_id: int) -> None:
        """The stream is over: drop its count."""
        self._credited.pop(stream_id, None)

    def stream_receive_limit(self, stream_id: int, limit: int) -> int:
        target = self._credited.get(stream_id, 0) + self._stream_window
        return target if target - limit >= self._stream_window // 4 else limit


class _DeviceQuicConnection(_WindowedQuicConnection):
    """A server connection whose TLS context asks the client for a certificate."""

    def tls_context_created(self) -> None:
        request_client_certificate(self)


class DeviceSession(_Session):
    """The device's side of one session (QUIC server), fed with the datagrams of one ICE pair.

    ``authorised`` gets the raw 32-byte Ed25519 key of the viewer's client certificate and
    returns whether this device authorised it (at pairing). It is the only authority.
    """

    _ROLE = "device"
    _MAX_STREAM_WINDOW = 2 << 20
    """A recorder's memory is small and its uploads (talk-back, files) are slow: it grows a
    stream's window to 2 MiB at most."""
    _MAX_CONNECTION_WINDOW = 4 << 20

    def __init__(
        self,
        device_key: Ed25519PrivateKey,
        certificate: x509.Certificate,
        authorised: Callable[[bytes], bool],
        config: SessionConfig | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """Raises ValueError if ``certificate`` is not for ``device_key``. ``random_bytes`` makes
        the data plane's hello."""
        super().__init__(config or SessionConfig(), random_bytes)
        _check_key_matches(device_key, certificate, "device")
        self._key = device_key
        self._certificate = certificate
        self._authorised = authorised
        self._peer_address: NetworkAddress | None = None
        self._pending: list[tuple[bytes, NetworkAddress]] = []

    @property
    def peer_address(self) -> NetworkAddress | None:
        """The viewer's current address (where replies go), or None before the first Initial."""
        return self._peer_address

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """Feed one datagram from ``addr``. Never raises on bad bytes; they are dropped."""
        self._now = now
        if data and is_dataplane(data[0]):
            self._receive_dataplane(data, now)
            return
        if not data or not data[0] & QUIC_FIXED_BIT:
            return
        if self._quic is None:
            self._accept_initial(data, addr, now)
        else:
            self._quic.receive_datagram(data, addr, now)
        self._quic_dirty = True
        self._heard(now)
        self._drain()
        self._track_peer_address()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """Return the datagrams to send now, with their destination addresses."""
        pending, self._pending = self._pending, []
        return pending + super().datagrams_to_send(now)

    def _accept_initial(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        # Only a well-formed client Initial of QUIC v1/v2, padded to 1200 bytes, creates the
        # connection; and only if aioquic answers it (it decrypted), so garbage leaves no state.
        if len(data) < MIN_INITIAL_SIZE:
            return
        try:
            header = pull_quic_header(Buffer(data=data))
        except ValueError:  # aioquic's BufferReadError is a ValueError
            return
        if header.packet_type != QuicPacketType.INITIAL or header.version not in (
            QuicProtocolVersion.VERSION_1,
            QuicProtocolVersion.VERSION_2,
        ):
            return
        quic = _DeviceQuicConnection(
            configuration=self._server_configuration(),
            original_destination_connection_id=header.destination_cid,
        )
        quic.receive_datagram(data, addr, now)
        answer = quic.datagrams_to_send(now)
        if not answer:
            return
        self._quic = quic
        self._pending = answer
        self._last_sent = now

    def _server_configuration(self) -> QuicConfiguration:
        configuration = self._config.quic_configuration(is_client=False)
        configuration.certificate = self._certificate
        configuration.private_key = self._key
        return configuration

    def _track_peer_address(self) -> None:
        if self._quic is None:
            return
        address = self._quic.get_peer_address()
        if address is None or address == self._peer_address:
            return
        first = self._peer_address is None
        self._peer_address = address
        if not first and self._state is SessionState.ESTABLISHED:
            self._events.append(PeerMoved(address))

    def _is_local_stream(self, stream_id: int) -> bool:
        return stream_id & 1 == 1

    def _dataplane_destination(self) -> NetworkAddress | None:
        return self._peer_address

    def _liveness_floor(self) -> float | None:
        floor = self._config.liveness_min_s
        return None if floor is None else 2 * floor

    def _peer_noun(self) -> str:
        return "viewer"

    def _on_handshake_completed(self, event: quic_events.HandshakeCompleted) -> None:
        assert self._quic is not None
        cert = peer_certificate(self._quic)
        raw = certificate_ed25519_key(cert) if cert is not None else None
        if raw is None:
            what = "no client certificate" if cert is None else "a certificate for a key other than Ed25519"
            self._refuse(None, f"the viewer sent {what}", CloseCode.VIEWER_NOT_AUTHORISED)
            return
        fp = fingerprint(raw)
        if event.alpn_protocol != ALPN:
            self._refuse(fp, f"the viewer does not speak {ALPN}", CloseCode.WRONG_PROTOCOL)
        elif not self._authorised(raw):
            self._refuse(
                fp, "the viewer key is not authorised on this device", CloseCode.VIEWER_NOT_AUTHORISED
            )
        else:
            self._peer_fingerprint = fp
            self._peer_key = raw
            self._set_state(SessionState.ESTABLISHED)
            self._events.append(SessionEstablished(fp))

    def _refuse(self, fp: str | None, reason: str, code: CloseCode) -> None:
        self._events.append(ViewerRefused(fp, reason))
        self.close(reason, code)


class ViewerSession(_Session):
    """The viewer's side of one session (QUIC client).

    QUIC itself always talks to the first address given to ``connect``; the session maps it to
    the current path's address, so ``switch_path`` can move datagrams (relay → direct) while the
    device's QUIC sees a client migration and validates the new path.
    """

    _ROLE = "viewer"
    _MAX_STREAM_WINDOW = 16 << 20
    """A viewer grows a stream's window to 16 MiB: the initial 1 MiB lasts 8 ms at 1 Gbit/s,
    less than a busy viewer's round trip to a recorder on the same LAN."""
    _MAX_CONNECTION_WINDOW = 24 << 20

    def __init__(
        self,
        viewer_key: Ed25519PrivateKey,
        certificate: x509.Certificate,
        pinned_fingerprint: str,
        config: SessionConfig | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """Raises ValueError if ``certificate`` is not for ``viewer_key`` or the pin is malformed.
        ``random_bytes`` makes the data plane's hello."""
        super().__init__(config or SessionConfig(), random_bytes)
        _check_key_matches(viewer_key, certificate, "viewer")
        self._key = viewer_key
        self._certificate = certificate
        self._pin = normalize_fingerprint(pinned_fingerprint)
        self._pin_checked = False
        self._quic_addr: NetworkAddress | None = None
        self._path: NetworkAddress | None = None
        self._known_paths: deque[NetworkAddress] = deque(maxlen=MAX_REMEMBERED_PATHS)

    @property
    def path(self) -> NetworkAddress | None:
        """The address datagrams currently go to."""
        return self._path

    def connect(self, addr: NetworkAddress, now: float) -> None:
        """Start the handshake towards the device at ``addr``.

        Raises:
            SessionStateError: already connected.
        """
        if self._quic is not None:
            raise SessionStateError("connect() was already called on this session")
        configuration = self._config.quic_configuration(is_client=True)
        configuration.certificate = self._certificate
        configuration.private_key = self._key
        self._quic = _WindowedQuicConnection(configuration=configuration)
        self._quic_addr = self._path = addr
        self._known_paths.append(addr)
        self._quic.connect(addr, now)
        self._quic_dirty = True

    def switch_path(self, addr: NetworkAddress, now: float) -> None:
        """Send from now on to ``addr`` (a new ICE pair), keeping every stream.

        Uses a fresh connection ID on the new path (RFC 9000 §9.5) and sends a PING at once so
        the device validates the path without waiting for data. Datagrams from the earlier
        paths are still accepted, so nothing in flight is lost. The liveness limit counts from
        the move.

        Raises:
            SessionStateError: the session is not established.
        """
        quic = self._require_established("switch path")
        if addr == self._path:
            return
        self._path = addr
        if addr not in self._known_paths:
            self._known_paths.append(addr)
        # The liveness clock starts again on the new path: the silence so far was the old
        # path's (that is why it was left), and the peer has had no chance to answer on this one.
        # A peer that is really gone is still declared dead, one liveness limit after the move.
        if self._last_heard is not None:
            self._last_heard = max(self._last_heard, now)
            self._probes = 0
        quic.change_connection_id()
        self._ping_uid += 1
        quic.send_ping(self._ping_uid)
        self._quic_dirty = True

    def _dataplane_from(self, addr: NetworkAddress) -> bool:
        return self._quic is not None and self._quic_addr is not None and addr in self._known_paths

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """Feed one datagram from ``addr``. Never raises on bad bytes; they are dropped.

        Datagrams from an address this session never sent to are dropped (RFC 9000 §9).
        """
        if self._quic is None or self._quic_addr is None or addr not in self._known_paths:
            return
        self._now = now
        if data and is_dataplane(data[0]):
            self._receive_dataplane(data, now)
            return
        if not data or not data[0] & QUIC_FIXED_BIT:
            return
        self._quic.receive_datagram(data, self._quic_addr, now)
        self._quic_dirty = True
        self._heard(now)
        if not self._pin_checked and self._state is SessionState.HANDSHAKE:
            self._check_pin()
        self._drain()

    def _destination(self, addr: NetworkAddress) -> NetworkAddress:
        return self._path if self._path is not None else addr

    def _dataplane_destination(self) -> NetworkAddress | None:
        return self._path

    def _check_pin(self) -> None:
        # Runs before the next datagrams_to_send, so on a mismatch only CONNECTION_CLOSE leaves:
        # not our certificate, not our Finished, no application data.
        assert self._quic is not None
        cert = peer_certificate(self._quic)
        if cert is None:
            return
        self._pin_checked = True
        raw = certificate_ed25519_key(cert)
        seen = fingerprint(raw) if raw is not None else None
        if seen != self._pin:
            self._events.append(PinMismatch(self._pin, seen))
            self.close(
                f"the device presented key {seen or 'of another type'}, not the pinned {self._pin}: "
                "someone may be impersonating it; if it was reset, pair it again",
                CloseCode.PIN_MISMATCH,
            )

    def _is_local_stream(self, stream_id: int) -> bool:
        return stream_id & 1 == 0

    def _peer_noun(self) -> str:
        return "device"

    def _on_handshake_completed(self, event: quic_events.HandshakeCompleted) -> None:
        if not self._pin_checked:
            self._check_pin()
        if self._state is not SessionState.HANDSHAKE:
            return
        if not self._pin_checked:
            self.close("the device sent no certificate", CloseCode.PIN_MISMATCH)
        elif event.alpn_protocol != ALPN:
            self.close(f"the device does not speak {ALPN}", CloseCode.WRONG_PROTOCOL)
        else:
            self._peer_fingerprint = self._pin
            self._set_state(SessionState.ESTABLISHED)
            self._events.append(SessionEstablished(self._pin))
            self._offer_dataplane()
