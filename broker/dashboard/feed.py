"""The dashboard's in-process feed: presence changes in, per-device history, fleet counters and
live subscribers out.

``app.py`` hands every presence event to :meth:`DashboardFeed.on_event` with the wall-clock
time. Subscribers (the pages' SSE streams) each get a bounded queue; one that does not keep up
is dropped (its queue ends with None and its stream closes, the browser reconnects and starts
from a fresh snapshot), so a slow browser never blocks the broker or the other subscribers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from dvrlink.broker.registry import format_address
from dvrlink.protocol.presence_events import Address, DeviceOffline, DeviceOnline, ServerEvent

QUEUE_SIZE = 256
"""Changes a subscriber may have waiting before it is dropped."""
HISTORY_PER_DEVICE = 50
"""Online/offline transitions kept per device (the connectivity history)."""
MAX_DEVICES = 100_000
"""Devices with a history kept at most; past that the oldest history is forgotten."""
RATE_WINDOW_S = 60.0
"""Registrations are counted over this many seconds for the per-minute rate."""

_Stored = tuple[float, "Address | str | None"] | tuple[float, bool, str | None, str | None]
"""A transition as the history keeps it, about 80 bytes (a broker keeps one per device at least):
this node's own as (at, the address the device came from, as the presence event gave it: the
session's own tuple, shared) when it came online, (at, the reason) when it went offline; another
node's as (at, online, its address or reason as text, that node)."""


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """A device came online (registered, from ``address``) or went offline (for ``reason``)."""

    serial: str
    online: bool
    at: float
    """Unix seconds."""
    address: str | None = None
    reason: str | None = None
    node: str | None = None
    """The broker node that saw it, for a change another node of a cluster published; None for
    this node's own."""
    node_online: int | None = None
    """Devices online at ``node`` right after the change (a cluster's live fleet count), if the
    node said."""


class Subscription:
    """One live follower: changes of the devices in ``serials`` (None: every device) arrive in
    ``queue``; None in the queue means the feed ended or dropped this follower."""

    def __init__(self, serials: frozenset[str] | None, size: int) -> None:
        self.serials = serials
        self.queue: asyncio.Queue[PresenceChanged | None] = asyncio.Queue(size)
        self.dropped = False
        """True once the feed dropped this follower for falling behind."""

    def wants(self, serial: str) -> bool:
        """Whether this follower sees ``serial``."""
        return self.serials is None or serial in self.serials


class DashboardFeed:
    """Presence history and live followers for the dashboard. Not thread-safe: use it from the
    event loop that runs the presence link."""

    def __init__(
        self,
        queue_size: int = QUEUE_SIZE,
        history_per_device: int = HISTORY_PER_DEVICE,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self._queue_size = queue_size
        self._history_size = history_per_device
        self._max_devices = max_devices
        self._history: dict[str, _Stored | list[_Stored]] = {}
        """Per device, its one transition, or a list of its last ``history_per_device``, oldest
        first (most devices have one: a container per device would cost more than the session)."""
        self._registrations: deque[list[int]] = deque()
        """[second, registrations in it], oldest first, over the last ``RATE_WINDOW_S``."""
        self._subscribers: set[Subscription] = set()
        self.dropped = 0
        """Followers dropped so far for falling behind."""

    def on_event(self, event: ServerEvent, now: float) -> None:
        """Take a presence event (others are ignored); ``now`` is Unix seconds."""
        if isinstance(event, DeviceOnline):
            self._count_registration(now)
            self._keep(event.serial, (now, event.address))
            if self._subscribers:
                self._send(PresenceChanged(event.serial, True, now, address=format_address(event.address)))
        elif isinstance(event, DeviceOffline):
            self._keep(event.serial, (now, event.reason))
            if self._subscribers:
                self._send(PresenceChanged(event.serial, False, now, reason=event.reason))

    def on_remote(self, change: PresenceChanged) -> None:
        """Take a change another node of the cluster saw (``broker/cluster/fleet.py``): into the
        history and to the followers, not into this node's registration rate."""
        detail = change.address if change.online else change.reason
        self._keep(change.serial, (change.at, change.online, detail, change.node))
        self._send(change)

    def resync(self) -> None:
        """Changes may have been missed (the cluster's channel was lost for a while): end every
        follower's stream, so each browser reconnects and starts from a fresh snapshot."""
        self.close()

    def history(self, serial: str) -> list[PresenceChanged]:
        """The last transitions of ``serial`` seen since the broker started, newest first."""
        kept = self._history.get(serial)
        if kept is None:
            return []
        entries = kept if isinstance(kept, list) else [kept]
        return [_change(serial, entry) for entry in reversed(entries)]

    def registrations_per_minute(self, now: float) -> float:
        """Registrations (first and repeated) per minute over the last ``RATE_WINDOW_S`` seconds
        (counted per whole second)."""
        buckets = self._registrations
        while buckets and buckets[0][0] <= now - RATE_WINDOW_S:
            buckets.popleft()
        return sum(count for _second, count in buckets) * 60.0 / RATE_WINDOW_S

    def _count_registration(self, now: float) -> None:
        second = int(now)
        buckets = self._registrations
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += 1
            return
        buckets.append([second, 1])
        while buckets and buckets[0][0] <= now - RATE_WINDOW_S:
            buckets.popleft()

    def _keep(self, serial: str, entry: _Stored) -> None:
        history = self._history
        kept = history.get(serial)
        if kept is None:
            if len(history) >= self._max_devices:
                del history[next(iter(history))]
            history[serial] = entry
        elif isinstance(kept, list):
            kept.append(entry)
            if len(kept) > self._history_size:
                del kept[0]
        elif self._history_size > 1:
            history[serial] = [kept, entry]
        else:
            history[serial] = entry

    @property
    def subscribers(self) -> int:
        """Live followers now."""
        return len(self._subscribers)

    def subscribe(self, serials: frozenset[str] | None) -> Subscription:
        """A new follower of ``serials`` (None: all devices); call :meth:`unsubscribe` when done."""
        subscription = Subscription(serials, self._queue_size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a follower (idempotent)."""
        self._subscribers.discard(subscription)

    def close(self) -> None:
        """End every follower's stream."""
        for subscription in list(self._subscribers):
            self._end(subscription)
        self._subscribers.clear()

    def _send(self, change: PresenceChanged) -> None:
        for subscription in list(self._subscribers):
            if not subscription.wants(change.serial):
                continue
            try:
                subscription.queue.put_nowait(change)
            except asyncio.QueueFull:
                subscription.dropped = True
                self.dropped += 1
                self._subscribers.discard(subscription)
                self._end(subscription)

    @staticmethod
    def _end(subscription: Subscription) -> None:
        """Put the end marker in, making room for it if the queue is full."""
        queue = subscription.queue
        while queue.full():
            queue.get_nowait()
        queue.put_nowait(None)


def _change(serial: str, entry: _Stored) -> PresenceChanged:
    if len(entry) == 2:
        at, detail = entry
        if isinstance(detail, tuple):
            return PresenceChanged(serial, True, at, address=format_address(detail))
        return PresenceChanged(serial, False, at, reason=detail)
    at, online, text, node = entry
    if online:
        return PresenceChanged(serial, True, at, address=text, node=node)
    return PresenceChanged(serial, False, at, reason=text, node=node)
