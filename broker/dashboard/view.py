"""What the dashboard's pages show, gathered from the registry, the presence core, the session
table, the alarm store and the feed, as plain text values (``render`` escapes them).

Roles: an account named in ``dashboard_operators`` is an operator and sees every bound device
and the fleet counters; any other account sees the devices it paired, and nothing else (a
device it did not pair reads as unknown, so its existence is not disclosed either).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from dvrlink.broker.alarm_store import StoredAlarm
from dvrlink.broker.cluster.fleet import FleetStats, NodeStats, sum_stats
from dvrlink.broker.dashboard.feed import DashboardFeed, PresenceChanged
from dvrlink.broker.registry import DeviceRecord, PairingRecord, RegistryStore
from dvrlink.broker.sessions import SESSION_PATHS, SessionRecord, SessionState
from dvrlink.protocol.alarm_wire import AlarmKind, kind_name
from dvrlink.protocol.presence_server import PresenceInfo
from dvrlink.protocol.signalling import PathPolicy

KEEPALIVE_BUCKETS: tuple[tuple[float, str], ...] = (
    (30.0, "under 30 s"),
    (60.0, "30–59 s"),
    (120.0, "60–119 s"),
    (300.0, "120–299 s"),
    (float("inf"), "300 s and more"),
)
RECENT_ALARMS = 20
RESETS_WINDOW_S = 86400
"""The device page counts the supervisor's resets of the board over this window."""
NOT_REPORTED = "not reported"
UNKNOWN_PATH = "unknown"

log = logging.getLogger(__name__)


class PresenceLookup(Protocol):
    """What the dashboard reads from the presence side (``PresenceGateway`` implements it)."""

    def presence(self, serial: str) -> PresenceInfo | None: ...

    @property
    def online_count(self) -> int: ...

    def wall_time(self, core_time: float) -> float: ...


class FleetSource(Protocol):
    """The other nodes of a cluster, through Redis (``broker/cluster/fleet.py`` ``FleetBoard``)."""

    @property
    def node_id(self) -> str: ...

    async def locate(self, serials: Sequence[str]) -> dict[str, str]: ...

    async def fleet_stats(self) -> FleetStats: ...

    def fleet_online(self, own: int) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Holders:
    """Which node holds each listed device, as Redis says; ``problem`` says why Redis could not
    be asked (then ``nodes`` is empty and the page shows this node's knowledge only)."""

    nodes: dict[str, str]
    problem: str | None = None


class SessionLookup(Protocol):
    """The signalled sessions (``SessionTable``)."""

    def live(self, now: float) -> list[SessionRecord]: ...

    def created_here(self, now: float) -> list[SessionRecord]: ...


class AlarmLookup(Protocol):
    """Stored alarms (``AlarmStore``)."""

    def latest(self, serial: str, count: int) -> list[StoredAlarm]: ...

    def count_since(self, serial: str, kind: int, since_ms: int) -> int: ...


def format_time(at: float | None) -> str:
    """Unix seconds as ``2026-12-07 05:12:03 UTC``; "never" for None."""
    if at is None:
        return "never"
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def format_bytes(count: int | None) -> str:
    """A byte count for people (``12.3 MB``); ``not reported`` for None."""
    if count is None:
        return NOT_REPORTED
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device as the list and the device page show it."""

    serial: str
    name: str
    online: bool
    last_seen: str
    nat: str
    sessions: str
    data_used: str
    signal: str
    technology: str
    node: str = ""
    """The broker node holding the device's presence session, on a cluster ("" if offline or
    not clustered)."""

    @property
    def state(self) -> str:
        """``online`` or ``offline``."""
        return "online" if self.online else "offline"


@dataclass(frozen=True, slots=True)
class EventLine:
    """One line of a device's recent events."""

    at: str
    what: str


@dataclass(frozen=True, slots=True)
class DevicePage:
    """The device page."""

    row: DeviceRow
    pairing: str
    can_rename: bool
    current_name: str
    alarms: tuple[EventLine, ...]
    connectivity: tuple[EventLine, ...]
    report: tuple[tuple[str, str], ...]
    supervisor_resets: int = 0
    """``SupervisorReset`` alarms of the last ``RESETS_WINDOW_S``: a board that keeps resetting
    (its supervisor found ``dvrlinkd`` hung) shows it at the top of its page."""


@dataclass(frozen=True, slots=True)
class FleetPage:
    """The operators' counters."""

    devices: int
    online: int
    registrations_per_minute: str
    sessions: int
    relay_only_sessions: int
    relay_share: str
    keepalive_buckets: tuple[tuple[str, int], ...]
    followers: int
    scope: str = "this broker"
    """Where the counters come from: this broker, or the nodes of the cluster."""
    problem: str | None = None
    """Why the counters are this node's only, on a cluster whose Redis cannot be reached."""
    paths: tuple[tuple[str, int], ...] = ()
    """Open sessions per path (lan, direct, relay, unknown)."""


def _nat_text(report: dict[str, Any]) -> str:
    """The NAT column: the type the device classified (``EIM/APDF``, ``no NAT``, ``UDP blocked``;
    "type not reported" before it did, or when its broker node has no RFC 5780 alternate
    address), with the mapping lifetime it measured and the presence transport."""
    parts = []
    lifetime = report.get("nat_lifetime_s")
    if isinstance(lifetime, int) and lifetime > 0:
        parts.append(f"mapping {lifetime} s")
    transport = report.get("presence_transport")
    if isinstance(transport, str):
        parts.append(f"over {transport}")
    detail = f" ({', '.join(parts)})" if parts else ""
    nat_type = report.get("nat_type")
    return f"{nat_type if isinstance(nat_type, str) and nat_type else 'type not reported'}{detail}"


def session_path(session: SessionRecord) -> str:
    """The path a session runs on: the one its viewer reported, else ``relay`` for a session
    signalled relay-only, else ``unknown``."""
    if session.path is not None:
        return session.path
    if session.policy is PathPolicy.RELAY_ONLY:
        return "relay"
    return UNKNOWN_PATH


def path_counts(sessions: Iterable[SessionRecord]) -> dict[str, int]:
    """Open (not failed) sessions per path (``session_path``)."""
    counts: dict[str, int] = {}
    for session in sessions:
        if session.state is not SessionState.FAILED:
            path = session_path(session)
            counts[path] = counts.get(path, 0) + 1
    return counts


def _sessions_text(sessions: Sequence[SessionRecord]) -> str:
    counts = path_counts(sessions)
    if not counts:
        return "none"
    parts = [f"{counts[p]} {p}" for p in SESSION_PATHS if p in counts]
    if UNKNOWN_PATH in counts:
        parts.append(f"{counts[UNKNOWN_PATH]} path not reported yet")
    return f"{sum(counts.values())} open: {', '.join(parts)}"


def keepalive_counts(intervals: Iterable[float | None]) -> tuple[int, ...]:
    """Online devices per ``KEEPALIVE_BUCKETS`` bucket, from their keepalive intervals."""
    counts = [0] * len(KEEPALIVE_BUCKETS)
    for interval in intervals:
        if interval is None:
            continue
        for index, (upper, _label) in enumerate(KEEPALIVE_BUCKETS):
            if interval < upper:
                counts[index] += 1
                break
    return tuple(counts)


def _share(relay: int, total: int) -> str:
    return f"{100 * relay / total:.0f} %" if total else "no sessions"


class DashboardView:
    """Gathers the pages' contents for an account."""

    def __init__(
        self,
        registry: RegistryStore,
        presence: PresenceLookup,
        sessions: SessionLookup,
        alarms: AlarmLookup | None,
        feed: DashboardFeed,
        operators: frozenset[str],
        clock: Callable[[], float],
        fleet: FleetSource | None = None,
        intervals: Callable[[], Iterable[float | None]] | None = None,
    ) -> None:
        """``fleet``: the other nodes (None: a single broker); ``intervals``: the keepalive
        intervals of the devices online here (None: looked up device by device)."""
        self._registry = registry
        self._presence = presence
        self._sessions = sessions
        self._alarms = alarms
        self._feed = feed
        self._operators = operators
        self._clock = clock
        """Wall-clock time (Unix seconds)."""
        self._fleet = fleet
        self._intervals = intervals
        self._redis_down = False
        """Whether the last look-up in Redis failed (the warning is logged once per outage)."""

    @property
    def clustered(self) -> bool:
        """Whether this broker is a node of a cluster (presence and counters from Redis)."""
        return self._fleet is not None

    @property
    def node_id(self) -> str | None:
        """This node's id on a cluster (None: a single broker)."""
        return None if self._fleet is None else self._fleet.node_id

    async def holders(self, serials: Sequence[str]) -> Holders | None:
        """Which node holds each of ``serials`` (one Redis round trip); None when not clustered."""
        if self._fleet is None:
            return None
        try:
            found = await self._fleet.locate(serials)
        except (RedisError, OSError) as exc:
            if not self._redis_down:  # once per outage, not once per page or follower
                log.warning("dashboard: Redis cannot say where devices are (%s); showing this node's", exc)
                self._redis_down = True
            return Holders({}, f"the cluster's Redis cannot be reached ({exc})")
        if self._redis_down:
            log.info("dashboard: Redis answers again; the pages show the whole fleet")
            self._redis_down = False
        return Holders(found)

    def with_holders(self, row: DeviceRow, holders: Holders | None) -> DeviceRow:
        """``row`` as the cluster sees it: online if any node holds the device, with that node."""
        if holders is None or self._fleet is None:
            return row
        node = holders.nodes.get(row.serial)
        if node is not None:
            last_seen = row.last_seen
            history = self._feed.history(row.serial)
            if history and history[0].node == node:  # the holder's newest news of it
                seen = format_time(history[0].at)
                if last_seen == "never" or seen > last_seen:  # the format sorts as text
                    last_seen = seen
            return dataclasses.replace(row, online=True, node=node, last_seen=last_seen)
        if row.online:  # online here; its key is not written yet, or Redis cannot be asked
            return dataclasses.replace(row, node=self._fleet.node_id)
        return row

    def is_operator(self, username: str) -> bool:
        """Whether ``username`` has the operator role."""
        return username in self._operators

    def visible_serials(self, username: str) -> frozenset[str] | None:
        """The serials ``username`` may see; None for an operator (every device)."""
        if self.is_operator(username):
            return None
        return frozenset(p.serial for p in self._registry.pairings_for(username))

    def device_rows(self, username: str) -> list[DeviceRow]:
        """The device list of ``username``, by serial."""
        now = self._clock()
        by_serial: dict[str, list[SessionRecord]] = {}
        for session in self._sessions.live(now):
            by_serial.setdefault(session.serial, []).append(session)
        pairings = {p.serial: p for p in self._registry.pairings_for(username)}
        if self.is_operator(username):
            devices = self._registry.devices()
        else:
            found = (self._registry.device(serial) for serial in sorted(pairings))
            devices = [d for d in found if d is not None]
        return [self._row(d, pairings.get(d.serial), by_serial.get(d.serial, [])) for d in devices]

    def device_page(self, username: str, serial: str) -> DevicePage | None:
        """The page of ``serial`` for ``username``; None if it is unknown or not visible to them."""
        pairing = self._registry.pairing(username, serial)
        if pairing is None and not self.is_operator(username):
            return None
        device = self._registry.device(serial)
        if device is None:
            return None
        now = self._clock()
        sessions = [s for s in self._sessions.live(now) if s.serial == serial]
        row = self._row(device, pairing, sessions)
        alarms: tuple[EventLine, ...] = ()
        resets = 0
        if self._alarms is not None:
            since_ms = int((now - RESETS_WINDOW_S) * 1000)
            resets = self._alarms.count_since(serial, AlarmKind.SUPERVISOR_RESET, since_ms)
            alarms = tuple(
                EventLine(
                    format_time(a.received_at),
                    f"{kind_name(a.kind)}"
                    + (f" on channel {a.channel}" if a.channel is not None else "")
                    + (f": {a.detail}" if a.detail else ""),
                )
                for a in reversed(self._alarms.latest(serial, RECENT_ALARMS))
            )
        connectivity = tuple(self._connectivity_line(c) for c in self._feed.history(serial))
        if pairing is not None:
            paired = f"paired to you since {format_time(pairing.paired_at)}"
        else:
            paired = "not paired to you"
        others = len(self._registry.paired_users(serial)) - (1 if pairing is not None else 0)
        if self.is_operator(username):
            paired += f"; {others} other account{'s' if others != 1 else ''} paired"
        paired += f"; bound ({device.source}) since {format_time(device.bound_at)}"
        report = tuple((k, str(v)) for k, v in sorted((device.report or {}).items()))
        if device.reported_at is not None:
            report += (("reported at", format_time(device.reported_at)),)
        return DevicePage(
            row,
            paired,
            pairing is not None,
            (pairing.name or "") if pairing is not None else "",
            alarms,
            connectivity,
            report,
            resets,
        )

    def rename(self, username: str, serial: str, name: str | None) -> bool:
        """Name ``serial`` for ``username`` (None: no name); False if they did not pair it."""
        return self._registry.set_device_name(username, serial, name)

    def node_stats(self) -> NodeStats:
        """This node's counters (what it writes to Redis for the fleet page of every node)."""
        now = self._clock()
        if self._intervals is not None:
            intervals: Iterable[float | None] = self._intervals()
        else:
            found = (self._presence.presence(d.serial) for d in self._registry.devices())
            intervals = (i.keepalive_interval for i in found if i is not None and i.online)
        paths = path_counts(self._sessions.created_here(now))  # a session counts at one node only
        return NodeStats(
            self._presence.online_count,
            self._feed.registrations_per_minute(now),
            keepalive_counts(intervals),
            sum(paths.values()),
            tuple(sorted(paths.items())),
        )

    async def fleet_page(self) -> FleetPage:
        """The operators' counters: the sum of every node's on a cluster (this node's alone,
        with a note, while Redis cannot be reached)."""
        devices = len(self._registry.devices())
        mine = self.node_stats()
        stats, scope, problem = mine, "this broker", None
        if self._fleet is not None:
            scope = f"this node ({self._fleet.node_id}) only"
            try:
                fleet = await self._fleet.fleet_stats()
            except (RedisError, OSError) as exc:
                log.warning("dashboard: cannot read the fleet counters from Redis (%s)", exc)
                problem = f"the cluster's Redis cannot be reached ({exc}); these are this node's counters"
            else:
                if self._fleet.node_id not in fleet.nodes:  # not written yet: count this node now
                    fleet = FleetStats((*fleet.nodes, self._fleet.node_id), sum_stats((fleet.total, mine)))
                stats = fleet.total
                plural = "s" if len(fleet.nodes) != 1 else ""
                scope = f"{len(fleet.nodes)} node{plural}: {', '.join(fleet.nodes)}"
        paths = dict(stats.paths)
        buckets = stats.keepalive_buckets + (0,) * (len(KEEPALIVE_BUCKETS) - len(stats.keepalive_buckets))
        return FleetPage(
            devices,
            stats.online,
            f"{stats.registrations_per_minute:.1f}",
            stats.sessions,
            paths.get("relay", 0),
            _share(paths.get("relay", 0), stats.sessions),
            tuple((label, count) for (_upper, label), count in zip(KEEPALIVE_BUCKETS, buckets, strict=False)),
            self._feed.subscribers,
            scope,
            problem,
            tuple((p, paths[p]) for p in (*SESSION_PATHS, UNKNOWN_PATH) if p in paths),
        )

    def row_update(self, change: PresenceChanged, operator: bool = False) -> dict[str, object]:
        """The live update of one row (JSON for the SSE stream), with the online count. On a
        cluster it carries the node that holds the device, and the fleet's online count only
        for an operator (``fleet_online``: the fleet page's figure), once it is known."""
        update: dict[str, object] = {
            "serial": change.serial,
            "state": "online" if change.online else "offline",
            "last_seen": format_time(change.at),
        }
        if self._fleet is None:
            update["online_count"] = self._presence.online_count
        else:
            update["node"] = (change.node or self._fleet.node_id) if change.online else ""
            if operator:
                total = self._fleet.fleet_online(self._presence.online_count)
                if total is not None:
                    update["online_count"] = total
        return update

    async def fleet_online(self) -> int | None:
        """On a cluster, the fleet's online count with every node's counters read afresh from
        Redis (one HGETALL); None when not clustered or Redis cannot be reached."""
        if self._fleet is None:
            return None
        try:
            await self._fleet.fleet_stats()
        except (RedisError, OSError):
            return None  # the page says so; the live figure waits for Redis
        return self._fleet.fleet_online(self._presence.online_count)

    def _row(
        self, device: DeviceRecord, pairing: PairingRecord | None, sessions: Sequence[SessionRecord]
    ) -> DeviceRow:
        info = self._presence.presence(device.serial)
        online = info is not None and info.online
        last_seen: float | None
        if info is not None and info.last_seen is not None:
            last_seen = self._presence.wall_time(info.last_seen)
        else:
            seen = [t for t in (device.last_registered_at, device.reported_at) if t is not None]
            last_seen = max(seen) if seen else None
        report = device.report or {}
        signal = report.get("signal_dbm")
        rat = report.get("rat")
        return DeviceRow(
            device.serial,
            (pairing.name or "") if pairing is not None else "",
            online,
            format_time(last_seen),
            _nat_text(report),
            _sessions_text(sessions),
            format_bytes(report.get("data_used")),
            f"{signal} dBm" if isinstance(signal, int) else NOT_REPORTED,
            rat if isinstance(rat, str) else NOT_REPORTED,
        )

    @staticmethod
    def _connectivity_line(change: PresenceChanged) -> EventLine:
        where = f" (node {change.node})" if change.node is not None else ""
        if change.online:
            return EventLine(format_time(change.at), f"online from {change.address}{where}")
        return EventLine(format_time(change.at), f"offline{where}: {change.reason}")
