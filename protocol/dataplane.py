"""The data plane's sans-I/O core: ``DataplaneConnection``, its config, events and stats.

The QUIC session does what it does once (the handshake with the pinned device key, the device's
authorisation of the viewer, the control stream); the bulk bytes of port forwards travel as lean
AEAD datagrams on the same path (relay or direct), in the manner of WireGuard's data path: one
AEAD call per packet, an 11-byte clear header, packet-level acknowledgements, and per-packet work
kept small enough that the driver can batch it. Wire format: ``dataplane_wire``; keys and replay:
``dataplane_keys``; loss recovery: ``dataplane_recovery``; congestion and pacing:
``dataplane_congestion``.

Bytes in, calls in; datagrams, a timer and events out. Time is the ``now`` argument (seconds);
randomness comes in through ``KeyMaterial``. Nothing a peer sends raises out of
``receive_datagram``: a datagram that fails a check is dropped and counted in
``stats.dropped[reason]``; frames that do not parse after a successful open close the connection
with ``PROTOCOL_ERROR`` (only the peer can have written them).

Hot-path habits: no dataclass per packet (events for stream data are built when ``events()``
drains, one per stream, from the chunks that arrived), sent-packet records are slotted objects,
stream data goes from the send buffer into the packet through a memoryview (one copy, then the
cipher's).
"""

from __future__ import annotations

import heapq
import struct
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from dvrlink.protocol.dataplane_congestion import LedbatController, Pacer
from dvrlink.protocol.dataplane_keys import (
    DEVICE_TO_VIEWER,
    DUPLICATE,
    IV_SIZE,
    OK,
    RANDOM_SIZE,
    VIEWER_TO_DEVICE,
    KeyChain,
    PacketKey,
    ReplayWindow,
    initial_secret,
    load_compiled,
)
from dvrlink.protocol.dataplane_recovery import (
    ACK_EVERY,
    AckTracker,
    Recovery,
    Retransmittable,
    SentPacket,
)
from dvrlink.protocol.dataplane_wire import (
    HEADER,
    HEADER_SIZE,
    MAX_PACKET_NUMBER,
    OVERHEAD,
    PING,
    RECEIVE_TAG_SIZE,
    STREAM,
    STREAM_FIN,
    STREAM_LEN,
    AckFrame,
    AckFrequencyFrame,
    CloseFrame,
    DatagramFrame,
    Frame,
    MaxDataFrame,
    MaxStreamDataFrame,
    PingFrame,
    ResetStreamFrame,
    StopSendingFrame,
    StreamFrame,
    decode_varint,
    encode_ack,
    encode_frame,
    encode_varint,
    parse_frames,
    varint_size,
)

SealRun = Callable[[bytes, bytes, int, bytes, int, bytes, int, memoryview, int, int, bool], list[bytes]]
"""``_dataplane_seal.seal_stream_run``'s shape."""


def _load_compiled_sealer() -> SealRun | None:
    """The compiled bulk sealer, or None where it was not built (the Python bulk path then does
    the same, slower)."""
    module = load_compiled()
    sealer: SealRun | None = getattr(module, "seal_stream_run", None)
    return sealer


_compiled_sealer = _load_compiled_sealer()

MAX_ACK_THRESHOLD = 64
"""The most ack-eliciting packets a receiver lets pass without an ACK, whatever the peer asks
(its max ACK delay still sends one)."""


ACKS_PER_FLIGHT = 2
"""ACKs a sender with a large flight asks for per round trip (``ack_threshold``)."""
MAX_ASKED_THRESHOLD = 32
"""The largest threshold a sender asks for."""


def ack_threshold(in_flight: int, max_datagram: int, asked: int = ACK_EVERY) -> int:
    """The ACK threshold a sender asks for when at most ``in_flight`` bytes were outstanding in
    the last round trip, having asked ``asked`` before: two ACKs per flight (the flight the
    path holds, without the ``asked`` packets the receiver held back), in powers of two
    from 2 to ``MAX_ASKED_THRESHOLD``, and down only once the flight fell below half of what
    ``asked`` needs, so that a flight that wanders does not change it every round trip.

    Two per flight are enough: the window grows by the bytes an ACK acknowledges, whatever
    their number; pacing, not ACKs, spaces the packets; and a gap still brings an ACK at once
    (the receiver acknowledges a packet out of order immediately), so loss shows as soon as
    before. Each ACK costs the sender a wake-up and a pass through its receive path, most of
    a CPU-bound recorder's work per ACK (docs/protocol.md). A small flight (a cellular uplink,
    the start of a transfer, a stream slower than its window) keeps QUIC's every second packet."""
    # Less the packets the receiver holds back for the threshold itself, or the two would feed
    # each other up to one ACK per flight on a stream slower than its window.
    packets = max(0, in_flight // max_datagram - asked) // ACKS_PER_FLIGHT
    if asked <= packets or packets * 2 < asked:
        wanted = ACK_EVERY
        while wanted * 2 <= min(packets, MAX_ASKED_THRESHOLD):
            wanted *= 2
        return wanted
    return asked


NO_ERROR = 0
PROTOCOL_ERROR = 1
FLOW_CONTROL_ERROR = 2
STREAM_STATE_ERROR = 3
INTERNAL_ERROR = 4
"""Error codes of CLOSE frames."""

DROP_REASONS = (
    "short",
    "not_dataplane",
    "reserved_bits",
    "tag",
    "too_old",
    "duplicate",
    "auth",
    "key_phase",
    "malformed",
    "closed",
)
PROBE_PACKETS = 2
KEY_GRACE_PTOS = 3
PING_RECORD = b""
MTU_STEPS = (1400, 1280)
"""Sizes tried below a path's ceiling when the ceiling itself does not pass (largest first)."""
MTU_PROBE_LOSSES = 2
"""Probes of one size lost before the next smaller size is tried (RFC 8899's MAX_PROBES is 3;
a lost probe costs a round trip of waiting, not a retransmission)."""
BLACK_HOLE_PTOS = 3
"""Probe timeouts in a row, with datagrams above the base size, after which the path is taken
to have shrunk (a route or tunnel change): back to the base size, no more probing on it."""
"""The retransmit record of a PING: re-sends nothing (an empty control frame)."""
FRAME_ROOM = 16
"""Bytes a frame needs beyond its header for it to be worth starting one."""
MAX_STREAMS_AHEAD = 1024
"""How far past the highest stream id seen a new one may jump (each skipped id is remembered)."""


@dataclass(frozen=True, slots=True)
class DataplaneConfig:
    """Settings of one data plane connection; times in seconds, sizes in bytes.

    Raises ``ValueError`` naming the field for a value that cannot work.
    """

    role: Literal["viewer", "device"]
    max_datagram: int = 1200
    """The datagram size the connection starts with and falls back to (header and tag
    included); 1200 fits every path incl. TURN. ``set_path`` may allow larger ones, which the
    connection then probes for (path MTU discovery, RFC 8899)."""
    stream_window: int = 1 << 20
    """Receive window per stream: bytes the peer may send beyond what the application consumed.
    It is also the initial send limit assumed for the peer, so both ends must use the same value
    (the session layer configures both)."""
    connection_window: int = 8 << 20
    """Receive window over all streams (like ``stream_window``, both ends must agree)."""
    max_stream_window: int | None = None
    """What this end's receive window per stream may grow to (auto-tuning, ``consumed``): when
    the application consumes half a window in less than two round trips, the next update
    doubles the window, up to this. Each end chooses its own; the peer learns it from the
    updates. None (or ``stream_window``): no growth."""
    max_connection_window: int | None = None
    """The same over all streams (None: ``connection_window``); the connection's window also
    grows to 1.5 times a stream's, within this."""
    idle_timeout_s: float = 30.0
    keepalive_s: float = 10.0
    """A PING after this long without sending, while streams are open."""
    max_ack_delay_s: float = 0.025
    key_update_packets: int = 1 << 24
    key_update_s: float = 600.0
    target_delay_s: float = 0.050
    """LEDBAT's queuing delay target."""
    ack_frequency: bool = True
    """Ask the peer for fewer ACKs while much is in flight (``ACK_FREQUENCY``): one per
    ``ack_threshold(bytes in flight)`` packets instead of every second one. Each ACK costs the
    sender a wake-up and the path (often a metered cellular downlink) a datagram."""

    def __post_init__(self) -> None:
        if self.role not in ("viewer", "device"):
            raise ValueError(f"data plane role {self.role!r}: expected 'viewer' or 'device'")
        if not 100 <= self.max_datagram <= 65507:
            raise ValueError(f"data plane max_datagram {self.max_datagram} B: expected 100 .. 65507")
        for name in ("stream_window", "connection_window", "key_update_packets"):
            if getattr(self, name) < 1:
                raise ValueError(f"data plane {name} {getattr(self, name)}: expected at least 1")
        for name, start in (
            ("max_stream_window", "stream_window"),
            ("max_connection_window", "connection_window"),
        ):
            limit = getattr(self, name)
            if limit is not None and limit < getattr(self, start):
                raise ValueError(
                    f"data plane {name} {limit} is below {start} {getattr(self, start)}: "
                    f"set it to at least {start}"
                )
        for name in ("idle_timeout_s", "keepalive_s", "max_ack_delay_s", "key_update_s", "target_delay_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data plane {name} {getattr(self, name)} s: expected more than 0")


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """What the two ends exchanged on the QUIC control stream."""

    viewer_random: bytes
    """32 random bytes from the viewer."""
    device_random: bytes
    """32 random bytes from the device."""
    viewer_tag: bytes
    """4 bytes the viewer wants in bytes 1-4 of the packets it receives."""
    device_tag: bytes
    """4 bytes the device wants in bytes 1-4 of the packets it receives."""

    def __post_init__(self) -> None:
        for name in ("viewer_random", "device_random"):
            if len(getattr(self, name)) != RANDOM_SIZE:
                raise ValueError(
                    f"data plane {name}: {len(getattr(self, name))} bytes, expected {RANDOM_SIZE}"
                )
        for name in ("viewer_tag", "device_tag"):
            if len(getattr(self, name)) != RECEIVE_TAG_SIZE:
                raise ValueError(
                    f"data plane {name}: {len(getattr(self, name))} bytes, expected {RECEIVE_TAG_SIZE}"
                )


@dataclass(frozen=True, slots=True)
class DataplaneEvent:
    """Base of the data plane's events."""


@dataclass(frozen=True, slots=True)
class StreamOpened(DataplaneEvent):
    """(device) The viewer opened a stream: its first frame arrived."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamData(DataplaneEvent):
    """Bytes of a stream, in order; ``ended``: the peer's FIN came after them."""

    stream_id: int
    data: bytes
    ended: bool


@dataclass(frozen=True, slots=True)
class StreamReset(DataplaneEvent):
    """The peer reset its sending half of a stream."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class StopSendingReceived(DataplaneEvent):
    """The peer asked us to stop sending on a stream."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class DatagramReceived(DataplaneEvent):
    """An unreliable datagram of ``flow_id``."""

    flow_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class KeysUpdated(DataplaneEvent):
    """A direction moved to key generation ``generation`` (``send``: ours, ``receive``: the peer's)."""

    generation: int
    direction: Literal["send", "receive"]


@dataclass(frozen=True, slots=True)
class DataplaneClosed(DataplaneEvent):
    """The connection is closed; nothing more is sent or accepted."""

    code: int
    reason: str
    by_peer: bool


@dataclass(slots=True)
class DataplaneStats:
    """Counters and gauges, updated in place (read them, do not write them)."""

    cwnd: int = 0
    bytes_in_flight: int = 0
    srtt: float = 0.0
    min_rtt: float = 0.0
    latest_rtt: float = 0.0
    queuing_delay: float = 0.0
    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    packets_lost: int = 0
    acks_sent: int = 0
    datagrams_dropped: int = 0
    """Unreliable datagrams dropped at ``send_datagram`` because the window was full."""
    send_generation: int = 0
    receive_generation: int = 0
    max_datagram: int = 0
    """The datagram size in use now (the base, or what a probe found the path carries)."""
    mtu_probes_lost: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


class _Stream:
    """Both halves of one stream."""

    __slots__ = (
        "acked",
        "acked_prefix",
        "chunks",
        "consumed",
        "delivered",
        "end",
        "fin_acked",
        "fin_offset",
        "fin_sent",
        "highest",
        "max_data",
        "next_offset",
        "ooo",
        "peer_max_data",
        "recv_ended",
        "recv_fin",
        "recv_reset",
        "retransmit",
        "send_reset",
        "serial",
        "starts",
        "stream_id",
        "update_time",
        "window",
    )

    def __init__(self, stream_id: int, peer_window: int, window: int) -> None:
        self.stream_id = stream_id
        # sending half
        self.chunks: list[memoryview] = []
        """Queued data not yet acknowledged, as the caller's own bytes (no copy)."""
        self.starts: list[int] = []
        """The stream offset of each chunk's first byte."""
        self.end = 0
        """The offset after the last queued byte."""
        self.next_offset = 0
        self.acked_prefix = 0
        self.acked: list[list[int]] = []
        self.retransmit: list[list[int]] = []
        """[start, end, fin] ranges to send again, oldest first."""
        self.fin_offset: int | None = None
        self.fin_sent = False
        self.fin_acked = False
        self.peer_max_data = peer_window
        self.send_reset = False
        # receiving half
        self.delivered = 0
        self.highest = 0
        self.consumed = 0
        self.max_data = window
        self.window = window
        """The receive window now (it grows, ``DataplaneConnection.consumed``)."""
        self.update_time: float | None = None
        """When ``max_data`` last moved."""
        self.recv_fin: int | None = None
        self.recv_ended = False
        self.recv_reset = False
        self.ooo: list[tuple[int, int, bytes | memoryview]] = []
        self.serial = 0

    def send_done(self) -> bool:
        return self.send_reset or self.fin_acked

    def recv_done(self) -> bool:
        return self.recv_reset or self.recv_ended

    def has_data(self) -> bool:
        """Whether there is anything to send (ignoring flow control)."""
        if self.send_reset:
            return False
        return bool(
            self.retransmit
            or self.next_offset < self.end
            or (self.fin_offset is not None and not self.fin_sent)
        )

    def on_acked(self, start: int, end: int, fin: bool) -> None:
        if fin:
            self.fin_acked = True
        if end <= self.acked_prefix:
            return
        if start <= self.acked_prefix:
            self.acked_prefix = end
            acked = self.acked
            while acked and acked[0][0] <= end:
                self.acked_prefix = max(self.acked_prefix, acked[0][1])
                del acked[0]
            chunks = self.chunks
            if len(chunks) > 1 and self.starts[1] <= self.acked_prefix:
                drop = 1
                while drop + 1 < len(chunks) and self.starts[drop + 1] <= self.acked_prefix:
                    drop += 1
                del chunks[:drop], self.starts[:drop]
            if chunks and self.end <= self.acked_prefix:
                chunks.clear()
                self.starts.clear()
            return
        acked = self.acked
        for index, item in enumerate(acked):
            if end < item[0]:
                acked.insert(index, [start, end])
                return
            if start <= item[1]:
                item[0] = min(item[0], start)
                item[1] = max(item[1], end)
                while index + 1 < len(acked) and acked[index + 1][0] <= item[1]:
                    item[1] = max(item[1], acked[index + 1][1])
                    del acked[index + 1]
                return
        acked.append([start, end])

    def is_acked(self, start: int, end: int) -> bool:
        if end <= self.acked_prefix:
            return True
        return any(low <= start and end <= high for low, high in self.acked)


class DataplaneConnection:
    """One end of a data plane session. Not thread-safe; one driver owns it.

    Local misuse (a stream id that was never opened, ``open_stream`` on the device, sending after a
    FIN) raises ``ValueError``; anything from the peer becomes a drop, an event or a close.
    """

    def __init__(self, config: DataplaneConfig, keys: KeyMaterial, now: float) -> None:
        self.config = config
        self._stats = DataplaneStats()
        viewer = config.role == "viewer"
        self._viewer = viewer
        self._my_tag = keys.viewer_tag if viewer else keys.device_tag
        self._peer_tag = keys.device_tag if viewer else keys.viewer_tag
        secret = initial_secret(keys.viewer_random, keys.device_random)
        self._send_direction = VIEWER_TO_DEVICE if viewer else DEVICE_TO_VIEWER
        self._recv_direction = DEVICE_TO_VIEWER if viewer else VIEWER_TO_DEVICE
        self._send_chain = KeyChain(secret)
        self._recv_chain = KeyChain(secret)
        self._send_key = PacketKey(secret, self._send_direction, 0)
        self._send_header_first = 0x20
        self._send_gen_first = 0
        self._send_gen_start = now
        self._recv_key = PacketKey(secret, self._recv_direction, 0)
        self._recv_next: PacketKey | None = None
        self._recv_prev: PacketKey | None = None
        self._recv_prev_until = 0.0
        self._recv_gen_first = 0
        self._window = ReplayWindow()
        self._next_pn = 0
        self._max_datagram = config.max_datagram
        self._max_payload = config.max_datagram - OVERHEAD
        self._mtu_candidates: list[int] = []
        """Sizes still to probe on this path, largest first."""
        self._mtu_probe: tuple[int, int] | None = None
        """(packet number, size) of the probe in flight."""
        self._mtu_losses = 0
        self._ack = AckTracker(config.max_ack_delay_s)
        self._asked_threshold = ACK_EVERY
        """The ACK threshold last asked of the peer (``ACK_FREQUENCY``); it starts at the default."""
        self._asked_sequence = 0
        self._flight_peak = 0
        """The most bytes in flight after a pump since the threshold was last looked at."""
        self._ack_frequency_due = now
        self._peer_ack_sequence = -1
        """The sequence of the last ``ACK_FREQUENCY`` applied (older ones are stale)."""
        self._recovery = Recovery(config.max_ack_delay_s)
        self._cc = LedbatController(config.max_datagram, config.target_delay_s)
        self._pacer = Pacer(config.max_datagram, now)
        self._pacer_blocked = False
        self._sealer: SealRun | None = _compiled_sealer
        """The compiled bulk sealer, or None (the Python bulk path alone)."""
        self._streams: dict[int, _Stream] = {}
        self._sendable: dict[int, None] = {}
        self._flow_blocked: dict[int, None] = {}
        self._control: list[bytes] = []
        self._datagrams: list[tuple[int, bytes]] = []
        self._events: list[DataplaneEvent | int] = []
        self._pending_data: dict[int, list[bytes | memoryview]] = {}
        self._pending_end: set[int] = set()
        self._probes = 0
        self._ping = False
        self._closing: bytes | None = None
        self._closed = False
        self._last_receive = now
        self._last_send = now
        self._next_stream_id = 0
        self._highest_peer_stream = -4
        self._unopened: set[int] = set()
        self._peer_max_data = config.connection_window
        self._conn_sent = 0
        self._max_data = config.connection_window
        self._conn_window = config.connection_window
        """The connection's receive window now (it grows, ``consumed``)."""
        self._max_stream_window = config.max_stream_window or config.stream_window
        self._max_conn_window = config.max_connection_window or config.connection_window
        self._conn_window_time: float | None = None
        """When ``_max_data`` last moved."""
        self._conn_highest = 0
        self._conn_consumed = 0
        self._serial = 0

    # ---- public API -------------------------------------------------------------------------

    @property
    def stats(self) -> DataplaneStats:
        """Counters and gauges (the gauges are brought up to date when this is read)."""
        self._sync_stats()
        return self._stats

    @property
    def packets_received(self) -> int:
        """Packets of the peer that opened so far (``stats.packets_received`` without bringing
        the gauges up to date: cheap enough to read per datagram)."""
        return self._stats.packets_received

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def max_datagram(self) -> int:
        """The datagram size in use now (header and tag included)."""
        return self._max_datagram

    def set_path(self, ceiling: int, now: float) -> None:
        """The datagrams now go on another path (or the path became known): send at the base
        size (``config.max_datagram``) again, and probe for larger sizes up to ``ceiling`` (what
        the path could carry at best; the base or less: no probing). A probe is a PING padded
        to the size; the first acknowledged one sets the size. A lost probe retransmits nothing
        and does not count as congestion."""
        base = self.config.max_datagram
        self._set_datagram_size(base)
        sizes = sorted({size for size in (ceiling, *MTU_STEPS) if base < size <= ceiling}, reverse=True)
        self._mtu_candidates = sizes
        self._mtu_probe = None
        self._mtu_losses = 0

    def open_stream(self) -> int:
        """(viewer) A new stream id (0, 4, 8, ...). Raises ``ValueError`` on the device."""
        if not self._viewer:
            raise ValueError("the device cannot open data plane streams in v1: the viewer opens them")
        stream_id = self._next_stream_id
        self._next_stream_id += 4
        self._streams[stream_id] = self._new_stream(stream_id)
        return stream_id

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue ``data`` on a stream (buffered without bound; see ``send_buffered``).

        Raises ``ValueError`` for an unknown stream or one whose sending half has ended.
        """
        stream = self._stream_for_api(stream_id)
        if stream.fin_offset is not None or stream.send_reset:
            raise ValueError(f"data plane stream {stream_id}: sending half already ended or reset")
        if data:
            stream.chunks.append(memoryview(data if type(data) is bytes else bytes(data)))
            stream.starts.append(stream.end)
            stream.end += len(data)
        if end_stream:
            stream.fin_offset = stream.end
        if stream_id not in self._flow_blocked:
            self._sendable[stream_id] = None

    def send_buffered(self, stream_id: int) -> int:
        """Bytes queued on a stream and not yet sent once (0 for an unknown stream)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.send_reset:
            return 0
        return stream.end - stream.next_offset

    def consumed(self, stream_id: int, n: int, now: float) -> None:
        """The application has taken ``n`` bytes of a stream's data at ``now``: the window moves
        on once half of it was used, and grows (up to ``max_stream_window`` and
        ``max_connection_window``) when that took less than two round trips, so that a fast
        application is not held to the initial window's rate (as QUIC stacks auto-tune)."""
        if n <= 0:
            return
        self._conn_consumed += n
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.recv_done():
            stream.consumed += n
            swindow = stream.window
            if stream.max_data - stream.consumed <= swindow // 2:
                swindow = stream.window = self._grown(
                    swindow, stream.update_time, now, self._max_stream_window
                )
                stream.update_time = now
                stream.max_data = stream.consumed + swindow
                self._control.append(_control_frame(MaxStreamDataFrame(stream_id, stream.max_data)))
                wanted = min(self._max_conn_window, swindow * 3 // 2)
                if self._conn_window < wanted:
                    self._conn_window = wanted
                    self._conn_window_time = None  # (a new window, not a sign of speed)
        window = self._conn_window
        if self._max_data - self._conn_consumed <= window // 2:
            window = self._conn_window = self._grown(
                window, self._conn_window_time, now, self._max_conn_window
            )
            self._conn_window_time = now
            self._max_data = self._conn_consumed + window
            self._control.append(_control_frame(MaxDataFrame(self._max_data)))

    def _grown(self, window: int, last_update: float | None, now: float, limit: int) -> int:
        """``window`` doubled (at most ``limit``) if the previous update was less than two
        smoothed round trips before ``now``; else ``window``."""
        rtt = self._recovery.rtt
        if window >= limit or last_update is None or not rtt.has_sample:
            return window
        return min(limit, window * 2) if now - last_update < 2 * rtt.smoothed else window

    def reset_stream(self, stream_id: int, code: int) -> None:
        """Abandon the sending half: RESET_STREAM goes out, queued data is dropped."""
        stream = self._stream_for_api(stream_id)
        if stream.send_reset:
            return
        stream.send_reset = True
        final = stream.next_offset
        stream.chunks.clear()
        stream.starts.clear()
        stream.retransmit.clear()
        self._sendable.pop(stream_id, None)
        self._flow_blocked.pop(stream_id, None)
        self._control.append(_control_frame(ResetStreamFrame(stream_id, code, final)))
        self._maybe_forget(stream)

    def stop_sending(self, stream_id: int, code: int) -> None:
        """Ask the peer to stop sending on a stream (it answers with a reset)."""
        self._stream_for_api(stream_id)
        self._control.append(_control_frame(StopSendingFrame(stream_id, code)))

    def send_datagram(self, flow_id: int, data: bytes) -> None:
        """Queue an unreliable datagram; dropped (and counted) if the window is full or it is too
        large for one packet."""
        room = self._max_payload - 1 - varint_size(flow_id)
        if self._recovery.bytes_in_flight >= self._cc.cwnd or len(data) > room or self._closed:
            self._stats.datagrams_dropped += 1
            return
        self._datagrams.append((flow_id, data))

    def set_rate_cap(self, bytes_per_s: float | None) -> None:
        """Cap the pacing rate (a cellular data budget), or lift the cap with ``None``."""
        self._pacer.rate_cap = bytes_per_s
        if self._recovery.rtt.has_sample:
            self._pacer.update_rate(self._cc.cwnd, self._recovery.rtt.smoothed)
        elif bytes_per_s is not None:
            self._pacer.rate = bytes_per_s

    def close(self, code: int, reason: str, now: float) -> None:
        """Close: one CLOSE frame goes out with the next ``datagrams_to_send``."""
        if self._closed or self._closing is not None:
            return
        out = bytearray()
        encode_frame(out, CloseFrame(code, reason[:200]))
        self._closing = bytes(out)
        self._events.append(DataplaneClosed(code, reason, by_peer=False))

    def events(self) -> list[DataplaneEvent]:
        """The events since the last call, in order (drains)."""
        raw = self._events
        if not raw:
            return []
        self._events = []
        out: list[DataplaneEvent] = []
        pending = self._pending_data
        ends = self._pending_end
        for item in raw:
            if isinstance(item, int):
                chunks = pending.pop(item, None)
                if chunks is None:
                    continue
                ended = item in ends
                if ended:
                    ends.discard(item)
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                out.append(StreamData(item, bytes(data), ended))
            else:
                out.append(item)
        return out

    def next_timer(self) -> float | None:
        """When ``handle_timer`` should run next (None: no timer)."""
        if self._closed:
            return None
        config = self.config
        deadline = self._last_receive + config.idle_timeout_s
        if self._closing is not None:
            return deadline
        ack = self._ack.timer()
        if ack is not None and ack < deadline:
            deadline = ack
        loss = self._recovery.timer()
        if loss is not None and loss < deadline:
            deadline = loss
        if self._pacer_blocked:
            release = self._pacer.next_release(self._max_datagram)
            deadline = min(deadline, release)
        if self._streams:
            keepalive = self._last_send + config.keepalive_s
            deadline = min(deadline, keepalive)
        if self._recv_prev is not None and self._recv_prev_until < deadline:
            deadline = self._recv_prev_until
        return deadline

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: idle close, loss detection and probes, keepalive."""
        if self._closed:
            return
        if now >= self._last_receive + self.config.idle_timeout_s:
            self._closed = True
            if self._closing is None:
                self._events.append(DataplaneClosed(NO_ERROR, "idle timeout", by_peer=False))
            self._closing = None
            return
        if self._recv_prev is not None and now >= self._recv_prev_until:
            self._recv_prev = None
        lost, probe = self._recovery.on_timeout(now)
        if lost:
            self._on_lost(lost, now)
        if probe:
            self._probes = PROBE_PACKETS
            if self._max_datagram > self.config.max_datagram and self._recovery.pto_count >= BLACK_HOLE_PTOS:
                # silence while sending above the base: the path shrank under us
                self._mtu_candidates = []
                self._mtu_probe = None
                self._set_datagram_size(self.config.max_datagram)
        if self._streams and now >= self._last_send + self.config.keepalive_s:
            self._ping = True

    # ---- receiving --------------------------------------------------------------------------

    def receive_datagram(self, data: bytes | memoryview, now: float, arrived: float | None = None) -> None:
        """Take one datagram from the path. ``arrived``: when it reached this host, where the
        reader knows (the kernel's receive stamp), earlier than ``now`` by the time it waited
        while this process was busy; an ACK in it then gives an RTT sample without that wait,
        which is not on the path and which LEDBAT must not back off for. Never raises for
        anything in ``data``."""
        stats = self._stats
        dropped = stats.dropped
        size = len(data)
        if self._closed or self._closing is not None:
            dropped["closed"] += 1
            return
        if size < OVERHEAD:
            dropped["short"] += 1
            return
        first, tag, high, low = HEADER.unpack_from(data)
        if not 0x20 <= first <= 0x3F:
            dropped["not_dataplane"] += 1
            return
        if first & 0x0F:
            dropped["reserved_bits"] += 1
            return
        if tag != self._my_tag:
            dropped["tag"] += 1
            return
        number = (high << 32) | low
        window = self._window
        seen = window.check(number)
        if seen != OK:
            dropped["duplicate" if seen == DUPLICATE else "too_old"] += 1
            return
        phase = (first >> 4) & 1
        key = self._recv_key
        promote = False
        if phase != key.phase:
            if number < self._recv_gen_first:
                prev = self._recv_prev
                if prev is None or now >= self._recv_prev_until:
                    self._recv_prev = None
                    dropped["key_phase"] += 1
                    return
                key = prev
            else:
                nxt = self._recv_next
                if nxt is None:
                    generation = key.generation + 1
                    nxt = PacketKey(self._recv_chain.secret(generation), self._recv_direction, generation)
                    self._recv_next = nxt
                key = nxt
                promote = True
        view = memoryview(data)
        plaintext = key.open(number, view[:HEADER_SIZE], view[HEADER_SIZE:])
        if plaintext is None:
            dropped["key_phase" if promote else "auth"] += 1
            return
        window.mark(number)
        if promote:
            self._recv_prev = self._recv_key
            self._recv_prev_until = now + KEY_GRACE_PTOS * self._recovery.pto_interval()
            self._recv_key = key
            self._recv_next = None
            self._recv_gen_first = number
            stats.receive_generation = key.generation
            self._events.append(KeysUpdated(key.generation, "receive"))
        self._last_receive = now
        stats.packets_received += 1
        stats.bytes_received += size
        head = plaintext[0] if plaintext else -1
        if head == STREAM or head == STREAM | STREAM_FIN:
            # the common data packet, one STREAM frame to the end: parsed here, without a frame list
            try:
                stream_id, pos = decode_varint(plaintext, 1)
                offset, pos = decode_varint(plaintext, pos)
            except (IndexError, struct.error):
                pass
            else:
                self._on_stream_frame(
                    stream_id, offset, memoryview(plaintext)[pos:], head == STREAM | STREAM_FIN
                )
                if not self._finished():
                    self._ack.on_packet(number, True, now)
                return
        frames = parse_frames(plaintext)
        if frames is None:
            dropped["malformed"] += 1
            self._fail(PROTOCOL_ERROR, f"a frame in packet {number} does not parse")
            return
        eliciting = False
        for frame in frames:
            kind = type(frame)
            if kind is StreamFrame:
                eliciting = True
                self._on_stream_frame(*frame)
            elif kind is AckFrame:
                self._on_ack(frame, now, arrived)  # type: ignore[arg-type]
            elif kind is DatagramFrame:
                self._events.append(DatagramReceived(frame.flow_id, bytes(frame.data)))  # type: ignore[union-attr]
            elif kind is PingFrame:
                eliciting = True
            else:
                eliciting = True
                self._on_control_frame(frame, now)  # type: ignore[arg-type]
            if self._finished():
                return
        self._ack.on_packet(number, eliciting, now)

    def _on_control_frame(
        self,
        frame: MaxDataFrame
        | MaxStreamDataFrame
        | ResetStreamFrame
        | StopSendingFrame
        | AckFrequencyFrame
        | CloseFrame,
        now: float,
    ) -> None:
        if isinstance(frame, AckFrequencyFrame):
            if frame.sequence > self._peer_ack_sequence:
                self._peer_ack_sequence = frame.sequence
                ack = self._ack
                ack.requested = ack.threshold = min(MAX_ACK_THRESHOLD, max(1, frame.threshold))
        elif isinstance(frame, MaxDataFrame):
            if frame.maximum > self._peer_max_data:
                self._peer_max_data = frame.maximum
                for stream_id in self._flow_blocked:
                    self._sendable[stream_id] = None
                self._flow_blocked.clear()
        elif isinstance(frame, MaxStreamDataFrame):
            stream = self._stream_for_peer(frame.stream_id)
            if stream is not None and frame.maximum > stream.peer_max_data:
                stream.peer_max_data = frame.maximum
                if frame.stream_id in self._flow_blocked:
                    del self._flow_blocked[frame.stream_id]
                    self._sendable[frame.stream_id] = None
        elif isinstance(frame, ResetStreamFrame):
            stream = self._stream_for_peer(frame.stream_id)
            if stream is not None and not stream.recv_done():
                stream.recv_reset = True
                stream.ooo.clear()
                self._events.append(StreamReset(frame.stream_id, frame.error_code))
                self._maybe_forget(stream)
        elif isinstance(frame, StopSendingFrame):
            stream = self._stream_for_peer(frame.stream_id)
            if stream is not None:
                self._events.append(StopSendingReceived(frame.stream_id, frame.error_code))
        else:
            self._closed = True
            self._closing = None
            self._events.append(DataplaneClosed(frame.error_code, frame.reason, by_peer=True))

    def _stream_for_peer(self, stream_id: int) -> _Stream | None:
        """The stream a peer's frame names: None if closed already; opened on the device for a new
        viewer id; a protocol error (and None) for an id the peer may not use."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if stream_id % 4:
            self._fail(PROTOCOL_ERROR, f"stream id {stream_id} is not a viewer-opened id")
            return None
        if self._viewer:
            if stream_id >= self._next_stream_id:
                self._fail(
                    PROTOCOL_ERROR, f"the device named stream {stream_id}, which the viewer never opened"
                )
            return None
        if stream_id > self._highest_peer_stream:
            if stream_id - self._highest_peer_stream > 4 * MAX_STREAMS_AHEAD:
                self._fail(
                    PROTOCOL_ERROR, f"stream {stream_id} skips more than {MAX_STREAMS_AHEAD} stream ids"
                )
                return None
            self._unopened.update(range(self._highest_peer_stream + 4, stream_id, 4))
            self._highest_peer_stream = stream_id
        elif stream_id in self._unopened:
            self._unopened.discard(stream_id)
        else:
            return None
        stream = self._new_stream(stream_id)
        self._streams[stream_id] = stream
        self._events.append(StreamOpened(stream_id))
        return stream

    def _on_stream_frame(self, stream_id: int, offset: int, data: bytes | memoryview, fin: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._stream_for_peer(stream_id)
            if stream is None:
                return
        end = offset + len(data)
        if end > stream.max_data:
            self._fail(
                FLOW_CONTROL_ERROR, f"stream {stream_id}: data up to {end} beyond the limit {stream.max_data}"
            )
            return
        if end > stream.highest:
            self._conn_highest += end - stream.highest
            stream.highest = end
            if self._conn_highest > self._max_data:
                self._fail(
                    FLOW_CONTROL_ERROR,
                    f"connection data {self._conn_highest} beyond the limit {self._max_data}",
                )
                return
        if fin:
            if stream.recv_fin is not None and stream.recv_fin != end:
                self._fail(
                    STREAM_STATE_ERROR, f"stream {stream_id}: a second FIN at {end} (was {stream.recv_fin})"
                )
                return
            stream.recv_fin = end
        if stream.recv_ended or stream.recv_reset:
            return
        delivered = stream.delivered
        if offset <= delivered:
            if end > delivered:
                self._deliver(stream, data[delivered - offset :] if offset < delivered else data)
                if stream.ooo:
                    self._drain(stream)
        else:
            stream.serial += 1
            heapq.heappush(stream.ooo, (offset, stream.serial, data))
        if stream.recv_fin is not None and stream.delivered == stream.recv_fin:
            stream.recv_ended = True
            stream.ooo.clear()
            if stream_id not in self._pending_data:
                self._pending_data[stream_id] = []
                self._events.append(stream_id)
            self._pending_end.add(stream_id)
            self._maybe_forget(stream)

    def _deliver(self, stream: _Stream, data: bytes | memoryview) -> None:
        chunks = self._pending_data.get(stream.stream_id)
        if chunks is None:
            self._pending_data[stream.stream_id] = [data]
            self._events.append(stream.stream_id)
        else:
            chunks.append(data)
        stream.delivered += len(data)

    def _drain(self, stream: _Stream) -> None:
        ooo = stream.ooo
        while ooo and ooo[0][0] <= stream.delivered:
            offset, _, data = heapq.heappop(ooo)
            end = offset + len(data)
            if end > stream.delivered:
                self._deliver(stream, data[stream.delivered - offset :])

    def _on_ack(self, frame: AckFrame, now: float, arrived: float | None = None) -> None:
        recovery = self._recovery
        flight = recovery.bytes_in_flight
        ranges = frame.ranges
        if ranges[0][1] >= self._next_pn:
            self._fail(PROTOCOL_ERROR, f"an ACK for packet {ranges[0][1]}, which was never sent")
            return
        acked, lost = recovery.on_ack(ranges, frame.ack_delay_us, now, arrived)
        if not acked:
            return
        cc = self._cc
        newest = acked[-1]
        if newest.packet_number == ranges[0][1]:
            # the receiver's deliberate ACK delay is not queuing (LEDBAT would back off for it)
            cc.on_rtt_sample(recovery.rtt.latest_adjusted, now)
        acked_bytes = 0
        # Contiguous ranges of one stream (a bulk transfer's packets) are handed over as one.
        run_id = -1
        run_start = run_end = 0
        for packet in acked:
            acked_bytes += packet.size
            if packet.ack_largest >= 0:
                self._ack.forget_below(packet.ack_largest)
            for item in packet.frames:
                if isinstance(item, tuple):
                    stream_id, start, end, fin = item
                    if stream_id == run_id and start == run_end and not fin:
                        run_end = end
                        continue
                    if run_id >= 0:
                        self._stream_acked(run_id, run_start, run_end, False)
                    if fin:
                        self._stream_acked(stream_id, start, end, True)
                        run_id = -1
                    else:
                        run_id, run_start, run_end = stream_id, start, end
        if run_id >= 0:
            self._stream_acked(run_id, run_start, run_end, False)
        cc.on_acked(acked_bytes, flight, newest.time_sent)
        if self._mtu_probe is not None:
            self._mtu_probe_acked(acked)
        if lost:
            self._on_lost(lost, now)
        self._pacer.update_rate(cc.cwnd, recovery.rtt.smoothed)

    def _stream_acked(self, stream_id: int, start: int, end: int, fin: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.send_reset:
            stream.on_acked(start, end, fin)
            if fin:
                self._maybe_forget(stream)

    def _on_lost(self, lost: list[SentPacket], now: float) -> None:
        lost = self._mtu_probe_lost(lost)
        if not lost:
            return
        streams = self._streams
        newest = 0.0
        for packet in lost:
            newest = max(newest, packet.time_sent)
            for item in packet.frames:
                if isinstance(item, tuple):
                    stream_id, start, end, fin = item
                    stream = streams.get(stream_id)
                    if stream is None or stream.send_reset or stream.is_acked(start, end):
                        if stream is not None and fin and not stream.fin_acked and not stream.send_reset:
                            stream.retransmit.append([end, end, 1])
                            self._sendable[stream_id] = None
                        continue
                    stream.retransmit.append([max(start, stream.acked_prefix), end, 1 if fin else 0])
                    self._sendable[stream_id] = None
                elif item:
                    self._control.append(item)
        self._cc.on_lost(newest, now)
        self._stats.packets_lost = self._recovery.lost_packets

    # ---- sending ----------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The datagrams to send at ``now``: what the congestion window and the pacer allow, plus
        ACKs (which neither limits)."""
        out: list[bytes] = []
        if self._closed:
            return out
        if self._closing is not None:
            out.append(self._seal(bytearray(self._closing), now))
            self._closing = None
            self._closed = True
            return out
        config = self.config
        if self._next_pn >= self._send_gen_first + config.key_update_packets or (
            now - self._send_gen_start >= config.key_update_s
        ):
            self._maybe_update_send_key(now)
        recovery = self._recovery
        cc = self._cc
        pacer = self._pacer
        ack = self._ack
        if self._mtu_candidates and self._mtu_probe is None:
            self._maybe_probe_mtu(out, now)
        max_payload = self._max_payload
        max_datagram = self._max_datagram
        self._pacer_blocked = False
        while True:
            if (
                len(self._sendable) == 1
                and not ack.pending
                and not (self._probes or self._control or self._datagrams or self._ping)
            ):
                self._send_bulk(out, now)
                if self._finished() or self._pacer_blocked:
                    break
            probe = self._probes > 0
            work = bool(self._control or self._sendable or self._datagrams or self._ping)
            eliciting = (probe or work) and (probe or recovery.bytes_in_flight + max_datagram <= cc.cwnd)
            if eliciting and not probe and not pacer.can_send(max_datagram, now):
                self._pacer_blocked = True
                eliciting = False
            if not eliciting and not ack.due(now):
                break
            payload = bytearray()
            ack_largest = -1
            if ack.pending and ack.ranges:
                ranges, delay = ack.build(now, recovery.rtt.smoothed if recovery.rtt.has_sample else None)
                encode_ack(payload, ranges, delay)
                ack_largest = ranges[0][1]
                self._stats.acks_sent += 1
            frames: list[Retransmittable] = []
            if eliciting:
                self._fill(payload, frames, max_payload)
                if not frames and (probe or self._ping):
                    payload.append(PING)
                    frames.append(PING_RECORD)
                self._ping = False
                eliciting = bool(frames)
            if not payload:
                break
            datagram = self._seal(payload, now)
            out.append(datagram)
            if eliciting:
                recovery.on_sent(SentPacket(self._next_pn - 1, now, len(datagram), frames, ack_largest))
                pacer.on_sent(len(datagram))
                if probe:
                    self._probes -= 1
            if self._finished():
                break
        if config.ack_frequency and out:
            self._ask_ack_frequency(recovery.bytes_in_flight, now)
        return out

    def _ask_ack_frequency(self, in_flight: int, now: float) -> None:
        """Once per smoothed round trip, queue an ``ACK_FREQUENCY`` for the next packet if the
        threshold for the largest flight of that round trip (a window's worth for a bulk sender,
        a few packets for a stream that sends less than its window allows) is not what the peer
        was last asked."""
        self._flight_peak = max(self._flight_peak, in_flight)
        if now < self._ack_frequency_due:
            return
        self._ack_frequency_due = now + self._recovery.rtt.smoothed
        wanted = ack_threshold(self._flight_peak, self._max_datagram, self._asked_threshold)
        self._flight_peak = 0
        if wanted != self._asked_threshold:
            self._asked_threshold = wanted
            self._asked_sequence += 1
            self._control.append(_control_frame(AckFrequencyFrame(self._asked_sequence, wanted)))

    def _send_bulk(self, out: list[bytes], now: float) -> None:
        """The bulk of a transfer, one stream's fresh bytes in full packets and nothing else to
        send (no ACK, control frame, retransmission or probe due): the same packets as the
        general loop of ``datagrams_to_send`` would build, with a fraction of its per-packet
        work. The queue's tail, short of a packet, goes in a shorter last packet (a live
        stream's every write ends in one). Stops where that loop has to take over: the FIN,
        the windows, the pacer, another frame."""
        stream_id = next(iter(self._sendable))
        stream = self._streams.get(stream_id)
        if stream is None or stream.send_reset or stream.retransmit:
            return
        recovery = self._recovery
        in_flight = recovery.sent
        cc = self._cc
        pacer = self._pacer
        max_datagram = self._max_datagram
        max_payload = self._max_payload
        head = bytes((STREAM,)) + encode_varint(stream_id)
        fin_offset = stream.fin_offset
        # _seal and Recovery.on_sent, inlined: this loop is most of a transfer's Python
        key = self._send_key
        seal = key.aead.encrypt
        iv = key.iv
        first = self._send_header_first
        tag = self._peer_tag
        pack = HEADER.pack
        number = self._next_pn
        sent_bytes = 0
        sealer = self._sealer
        try:
            while number < MAX_PACKET_NUMBER:
                if sealer is not None:
                    made = self._seal_run_compiled(sealer, stream, head, number, now)
                    if made:
                        for datagram in made:
                            sent_bytes += len(datagram)
                        number += len(made)
                        out.extend(made)
                        continue
                offset = stream.next_offset
                payload = bytearray(head)
                payload += encode_varint(offset)
                count = max_payload - len(payload)  # the frame runs to the end of the packet: no length
                end = offset + count
                if end > stream.end and fin_offset is None and offset < stream.end:
                    end = stream.end  # the queue's tail, in a shorter packet, as the compiled sealer
                    count = end - offset
                if (
                    end > stream.end
                    or end > stream.peer_max_data
                    or self._conn_sent + count > self._peer_max_data
                    or (fin_offset is not None and end >= fin_offset)
                    or recovery.bytes_in_flight + max_datagram > cc.cwnd
                ):
                    return
                if not pacer.can_send(max_datagram, now):
                    self._pacer_blocked = True
                    return
                _copy_range(payload, stream, offset, end)
                header = pack(first, tag, number >> 32, number & 0xFFFFFFFF)
                datagram = header + seal((iv ^ number).to_bytes(IV_SIZE, "big"), payload, header)
                out.append(datagram)
                size = len(datagram)
                in_flight[number] = SentPacket(number, now, size, [(stream_id, offset, end, False)], -1)
                recovery.bytes_in_flight += size
                number += 1
                sent_bytes += size
                pacer.on_sent(size)
                stream.next_offset = end
                self._conn_sent += count
        finally:
            if number != self._next_pn:
                self._stats.packets_sent += number - self._next_pn
                self._stats.bytes_sent += sent_bytes
                self._next_pn = number
                self._last_send = now
                recovery.last_ack_eliciting_time = now

    def _seal_run_compiled(
        self, sealer: SealRun, stream: _Stream, head: bytes, number: int, now: float
    ) -> list[bytes]:
        """As many of ``_send_bulk``'s packets as the compiled sealer can make in one call: the
        same checks, answered for the whole run (all its packets are full, so each takes
        ``max_datagram`` of the window and the pacer), over the bytes of the chunk that holds
        the stream's next offset. Records them as sent; [] when none could go this way (the
        Python loop then looks at the next packet)."""
        recovery = self._recovery
        max_datagram = self._max_datagram
        room = int(self._cc.cwnd) - recovery.bytes_in_flight
        packets = room // max_datagram if room >= max_datagram else 0
        pacer = self._pacer
        if packets and pacer.rate > 0.0:  # (no rate yet: the pacer lets everything go)
            packets = min(packets, pacer.packets_allowed(max_datagram, now))
        if packets < 2:
            return []
        offset = stream.next_offset
        limit = min(stream.end, stream.peer_max_data, offset + self._peer_max_data - self._conn_sent)
        if stream.fin_offset is not None:
            limit = min(limit, stream.fin_offset - 1)
        if limit <= offset or not stream.chunks:
            return []
        index = bisect_right(stream.starts, offset) - 1
        chunk = stream.chunks[index]
        start = offset - stream.starts[index]
        stop = min(len(chunk), start + limit - offset)
        if stop <= start:
            return []
        key = self._send_key
        # The queue's tail, short of a packet, goes in a shorter last packet (as the Python loop
        # sends it), not through the general loop; a tail cut by a window or the FIN does not.
        tail = stop == len(chunk) and index == len(stream.chunks) - 1 and stream.fin_offset is None
        made = sealer(
            key.key,
            key.iv_bytes,
            self._send_header_first,
            self._peer_tag,
            number,
            head,
            offset,
            chunk[start:stop],
            self._max_payload,
            packets,
            tail,
        )
        if not made:
            return []
        in_flight = recovery.sent
        stream_id = stream.stream_id
        overhead = OVERHEAD + len(head)
        total = 0
        for datagram in made:
            size = len(datagram)
            end = offset + size - overhead - varint_size(offset)
            in_flight[number] = SentPacket(number, now, size, [(stream_id, offset, end, False)], -1)
            number += 1
            offset = end
            total += size
        recovery.bytes_in_flight += total
        pacer.on_sent(total)
        self._conn_sent += offset - stream.next_offset
        stream.next_offset = offset
        return made

    def _fill(self, payload: bytearray, frames: list[Retransmittable], max_payload: int) -> None:
        control = self._control
        while control and len(payload) + len(control[0]) <= max_payload:
            item = control.pop(0)
            payload += item
            frames.append(item)
        if self._datagrams:
            flow_id, data = self._datagrams[0]
            if len(payload) + 1 + varint_size(flow_id) + len(data) <= max_payload:
                del self._datagrams[0]
                encode_frame(payload, DatagramFrame(flow_id, data))
                return
        sendable = self._sendable
        streams = self._streams
        while sendable:
            room = max_payload - len(payload)
            if room < FRAME_ROOM:
                return
            stream_id = next(iter(sendable))
            del sendable[stream_id]
            stream = streams.get(stream_id)
            if stream is None or stream.send_reset:
                continue
            before = len(payload)
            if self._write_stream(payload, frames, stream, room):
                sendable[stream_id] = None
                if len(payload) == before:
                    return  # the packet is full for this stream's next frame

    def _write_stream(
        self,
        payload: bytearray,
        frames: list[Retransmittable],
        stream: _Stream,
        room: int,
    ) -> bool:
        """Write one STREAM frame of ``stream`` into ``payload``; whether the stream has more to send
        (False also when flow control holds it: it then waits in ``_flow_blocked``)."""
        stream_id = stream.stream_id
        retransmit = stream.retransmit
        while retransmit:
            start, end, fin = retransmit[0]
            if stream.fin_acked:
                fin = 0
            start = max(start, stream.acked_prefix)
            if (end <= start and not fin) or (start < end and stream.is_acked(start, end)):
                del retransmit[0]
                continue
            head = 1 + varint_size(stream_id) + varint_size(start) + varint_size(room)
            count = min(end - start, room - head)
            if count < 0 or (count == 0 and start < end):
                return True  # no room in this packet
            last_frame = count == room - head
            self._write_frame(
                payload, stream, start, count, bool(fin) and start + count == end, not last_frame
            )
            frames.append((stream_id, start, start + count, bool(fin) and start + count == end))
            if start + count >= end:
                del retransmit[0]
            else:
                retransmit[0][0] = start + count
            return True
        offset = stream.next_offset
        available = stream.end - offset
        stream_room = stream.peer_max_data - offset
        conn_room = self._peer_max_data - self._conn_sent
        limit = min(available, stream_room, conn_room)
        fin_due = stream.fin_offset is not None and not stream.fin_sent
        if limit <= 0 and not (fin_due and available == 0):
            if available > 0:
                self._flow_blocked[stream_id] = None
            return False
        head = 1 + varint_size(stream_id) + varint_size(offset)
        count = min(limit, room - head)
        last_frame = count == room - head
        if not last_frame:
            head += varint_size(room)
            count = min(limit, room - head)
        if count < 0 or (count == 0 and limit > 0):
            return True  # no room in this packet
        fin = fin_due and offset + count == stream.fin_offset
        end = offset + count
        frames.append((stream_id, offset, end, fin))
        # the frame, written here rather than by _write_frame: this is the per-packet path
        payload.append(STREAM | (STREAM_FIN if fin else 0) | (0 if last_frame else STREAM_LEN))
        payload += encode_varint(stream_id)
        payload += encode_varint(offset)
        if not last_frame:
            payload += encode_varint(count)
        if count:  # (a FIN alone carries no data: the stream's chunks may all be gone)
            _copy_range(payload, stream, offset, end)
        stream.next_offset = end
        self._conn_sent += count
        if fin:
            stream.fin_sent = True
            return bool(stream.retransmit)
        return (
            end < stream.end
            or bool(stream.retransmit)
            or (stream.fin_offset is not None and not stream.fin_sent)
        )

    @staticmethod
    def _write_frame(
        payload: bytearray, stream: _Stream, offset: int, count: int, fin: bool, with_length: bool
    ) -> None:
        payload.append(STREAM | (STREAM_FIN if fin else 0) | (STREAM_LEN if with_length else 0))
        payload += encode_varint(stream.stream_id)
        payload += encode_varint(offset)
        if with_length:
            payload += encode_varint(count)
        starts = stream.starts
        chunks = stream.chunks
        index = bisect_right(starts, offset) - 1
        while count > 0:
            chunk = chunks[index]
            start = offset - starts[index]
            take = len(chunk) - start
            take = min(take, count)
            payload += chunk[start : start + take]
            offset += take
            count -= take
            index += 1

    def _seal(self, payload: bytearray, now: float) -> bytes:
        number = self._next_pn
        if number >= MAX_PACKET_NUMBER:
            self._closed = True
            self._events.append(DataplaneClosed(INTERNAL_ERROR, "packet numbers exhausted", by_peer=False))
        self._next_pn = number + 1
        key = self._send_key
        header = HEADER.pack(self._send_header_first, self._peer_tag, number >> 32, number & 0xFFFFFFFF)
        datagram = header + key.seal(number, header, payload)
        self._last_send = now
        stats = self._stats
        stats.packets_sent += 1
        stats.bytes_sent += len(datagram)
        return datagram

    def _maybe_update_send_key(self, now: float) -> None:
        """Move to the next send generation, once a packet of the current one was acknowledged
        (so the peer holds at most one generation ahead, as in QUIC)."""
        if self._recovery.largest_acked < self._send_gen_first:
            return
        generation = self._send_key.generation + 1
        self._send_key = PacketKey(self._send_chain.secret(generation), self._send_direction, generation)
        self._send_header_first = 0x20 | (self._send_key.phase << 4)
        self._send_gen_first = self._next_pn
        self._send_gen_start = now
        self._stats.send_generation = generation
        self._events.append(KeysUpdated(generation, "send"))

    # ---- helpers ----------------------------------------------------------------------------

    def _new_stream(self, stream_id: int) -> _Stream:
        window = self.config.stream_window
        return _Stream(stream_id, window, window)

    def _stream_for_api(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise ValueError(
                f"data plane stream {stream_id} is not open (closed, or never opened: the viewer "
                "calls open_stream, the device waits for StreamOpened)"
            )
        return stream

    def _maybe_forget(self, stream: _Stream) -> None:
        if stream.send_done() and stream.recv_done() and stream.stream_id not in self._sendable:
            self._streams.pop(stream.stream_id, None)
            self._flow_blocked.pop(stream.stream_id, None)

    def _finished(self) -> bool:
        return self._closed or self._closing is not None

    def _fail(self, code: int, reason: str) -> None:
        """A protocol error by the peer: close with ``code``."""
        if self._closing is None and not self._closed:
            self.close(code, reason, self._last_receive)

    def _set_datagram_size(self, size: int) -> None:
        self._max_datagram = size
        self._max_payload = size - OVERHEAD
        self._cc.set_max_datagram(size)
        self._pacer.set_max_datagram(size)

    def _maybe_probe_mtu(self, out: list[bytes], now: float) -> None:
        """Send the next path MTU probe if one is due and the congestion window has room."""
        size = self._mtu_candidates[0]
        recovery = self._recovery
        if not recovery.rtt.has_sample or recovery.bytes_in_flight + size > self._cc.cwnd:
            return
        payload = bytearray((PING,))
        payload += bytes(size - OVERHEAD - 1)  # PADDING frames
        number = self._next_pn
        datagram = self._seal(payload, now)
        out.append(datagram)
        recovery.on_sent(SentPacket(number, now, len(datagram), [PING_RECORD], -1))
        self._mtu_probe = (number, size)

    def _mtu_probe_acked(self, acked: list[SentPacket]) -> None:
        probe = self._mtu_probe
        if probe is None:
            return
        number, size = probe
        for packet in acked:
            if packet.packet_number == number:
                self._mtu_probe = None
                self._mtu_candidates = []  # largest first: nothing bigger is left to try
                self._set_datagram_size(size)
                return

    def _mtu_probe_lost(self, lost: list[SentPacket]) -> list[SentPacket]:
        """``lost`` without the MTU probe, whose loss says the path is smaller, not congested."""
        probe = self._mtu_probe
        if probe is None:
            return lost
        number = probe[0]
        rest = [packet for packet in lost if packet.packet_number != number]
        if len(rest) < len(lost):
            self._mtu_probe = None
            self._stats.mtu_probes_lost += 1
            self._mtu_losses += 1
            if self._mtu_losses >= MTU_PROBE_LOSSES:
                self._mtu_losses = 0
                del self._mtu_candidates[0]
        return rest

    def _sync_stats(self) -> None:
        stats = self._stats
        recovery = self._recovery
        rtt = recovery.rtt
        stats.cwnd = int(self._cc.cwnd)
        stats.bytes_in_flight = recovery.bytes_in_flight
        stats.srtt = rtt.smoothed
        stats.min_rtt = rtt.min_rtt
        stats.latest_rtt = rtt.latest
        stats.queuing_delay = self._cc.queuing_delay
        stats.packets_lost = recovery.lost_packets
        stats.max_datagram = self._max_datagram


def _control_frame(frame: Frame) -> bytes:
    """One control frame's bytes (queued, and re-sent as they are if their packet is lost)."""
    out = bytearray()
    encode_frame(out, frame)
    return bytes(out)


def _copy_range(payload: bytearray, stream: _Stream, offset: int, end: int) -> None:
    """Append the stream's bytes ``offset`` .. ``end`` (still held: not yet acknowledged)."""
    starts = stream.starts
    chunks = stream.chunks
    index = bisect_right(starts, offset) - 1
    chunk = chunks[index]
    start = offset - starts[index]
    count = end - offset
    if start + count <= len(chunk):
        payload += chunk[start : start + count]
        return
    while offset < end:
        chunk = chunks[index]
        start = offset - starts[index]
        take = min(len(chunk) - start, end - offset)
        payload += chunk[start : start + take]
        offset += take
        index += 1
