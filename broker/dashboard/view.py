"""What the dashboard's pages show, gathered from the registry, the presence core, the session
table, the alarm store and the feed, as plain text values (``render`` escapes them).

Roles: an account named in ``dashboard_operators`` is an operator and sees every bound device
and the fleet counters; any other account sees the devices it paired, and nothing else (a
device it did not pair reads as unknown, so its existence is not disclosed either).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dvrlink.broker.alarm_store import StoredAlarm
from dvrlink.broker.dashboard.feed import DashboardFeed, PresenceChanged
from dvrlink.broker.registry import DeviceRecord, PairingRecord, RegistryStore
from dvrlink.broker.sessions import SessionRecord, SessionState
from dvrlink.protocol.alarm_wire import kind_name
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
NOT_REPORTED = "not reported"


class PresenceLookup(Protocol):
    """What the dashboard reads from the presence side (``PresenceGateway`` implements it)."""

    def presence(self, serial: str) -> PresenceInfo | None: ...

    @property
    def online_count(self) -> int: ...

    def wall_time(self, core_time: float) -> float: ...


class SessionLookup(Protocol):
    """The signalled sessions (``SessionTable``)."""

    def live(self, now: float) -> list[SessionRecord]: ...


class AlarmLookup(Protocol):
    """Stored alarms (``AlarmStore``)."""

    def latest(self, serial: str, count: int) -> list[StoredAlarm]: ...


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


def _nat_text(report: dict[str, Any]) -> str:
    parts = []
    lifetime = report.get("nat_lifetime_s")
    if isinstance(lifetime, int) and lifetime > 0:
        parts.append(f"mapping {lifetime} s")
    transport = report.get("presence_transport")
    if isinstance(transport, str):
        parts.append(f"over {transport}")
    detail = f" ({', '.join(parts)})" if parts else ""
    return f"type not reported{detail}"


def _sessions_text(sessions: Sequence[SessionRecord]) -> str:
    live = [s for s in sessions if s.state is not SessionState.FAILED]
    if not live:
        return "none"
    relay = sum(1 for s in live if s.policy is PathPolicy.RELAY_ONLY)
    direct = sum(1 for s in live if s.policy is PathPolicy.DIRECT_ONLY)
    other = len(live) - relay - direct
    parts = []
    if relay:
        parts.append(f"{relay} relayed")
    if direct:
        parts.append(f"{direct} direct")
    if other:
        parts.append(f"{other} path not known to the broker")
    return f"{len(live)} open: {', '.join(parts)}"


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
    ) -> None:
        self._registry = registry
        self._presence = presence
        self._sessions = sessions
        self._alarms = alarms
        self._feed = feed
        self._operators = operators
        self._clock = clock
        """Wall-clock time (Unix seconds)."""

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
        if self._alarms is not None:
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
        )

    def rename(self, username: str, serial: str, name: str | None) -> bool:
        """Name ``serial`` for ``username`` (None: no name); False if they did not pair it."""
        return self._registry.set_device_name(username, serial, name)

    def fleet_page(self) -> FleetPage:
        """The operators' counters."""
        now = self._clock()
        devices = self._registry.devices()
        counts = [0] * len(KEEPALIVE_BUCKETS)
        for device in devices:
            info = self._presence.presence(device.serial)
            if info is None or not info.online or info.keepalive_interval is None:
                continue
            for index, (upper, _label) in enumerate(KEEPALIVE_BUCKETS):
                if info.keepalive_interval < upper:
                    counts[index] += 1
                    break
        live = [s for s in self._sessions.live(now) if s.state is not SessionState.FAILED]
        relay = sum(1 for s in live if s.policy is PathPolicy.RELAY_ONLY)
        share = f"{100 * relay / len(live):.0f} %" if live else "no sessions"
        return FleetPage(
            len(devices),
            self._presence.online_count,
            f"{self._feed.registrations_per_minute(now):.1f}",
            len(live),
            relay,
            share,
            tuple((label, count) for (_upper, label), count in zip(KEEPALIVE_BUCKETS, counts, strict=True)),
            self._feed.subscribers,
        )

    def row_update(self, change: PresenceChanged) -> dict[str, object]:
        """The live update of one row (JSON for the SSE stream)."""
        return {
            "serial": change.serial,
            "state": "online" if change.online else "offline",
            "last_seen": format_time(change.at),
            "online_count": self._presence.online_count,
        }

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
        if change.online:
            return EventLine(format_time(change.at), f"online from {change.address}")
        return EventLine(format_time(change.at), f"offline: {change.reason}")
