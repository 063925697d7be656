"""Presence location in Redis: ``p:<serial>`` names the node that holds the device's presence
session, so any node can route an invite to it.

The key expires after ``TTL_INTERVALS`` keepalive intervals and is refreshed when half of that
is gone, not on every keepalive: one small write per device per interval, batched into one
pipeline per tick. A device that registers here claims the key (plain ``SET``: the newest
registration wins); a refresh only writes if the key is missing (Redis lost it) or still names
this node, so a node that has not yet noticed a device moved away cannot take it back; going
offline deletes the key only if it still names this node.

:class:`LocationBook` decides what to write and when (no I/O, time passed in);
:class:`PresenceDirectory` observes the presence core's events and sends the writes.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dvrlink.broker.cluster.node import presence_key
from dvrlink.protocol.presence_events import DeviceOffline, DeviceOnline, ServerEvent

TTL_INTERVALS = 2.0
"""A presence key lives this many keepalive intervals without a refresh."""
MIN_TTL_S = 2.0
"""Shortest key lifetime, whatever the interval."""
MAX_WRITES_PER_FLUSH = 10_000
"""Presence writes in one pipeline: a rebuild or a registration storm is spread over ticks
(10,000 per 100 ms tick: a node holding 100,000 devices is rewritten within a second)."""

# Refresh: write only if the key is missing or names this node (KEYS[1]; ARGV: node, ttl ms).
REFRESH_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Offline: delete only if the key still names this node (KEYS[1]; ARGV[1]: node).
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

log = logging.getLogger(__name__)


def key_ttl(interval: float) -> float:
    """Seconds a presence key lives for a device with keepalive ``interval``."""
    return max(interval * TTL_INTERVALS, MIN_TTL_S)


@dataclass(slots=True)
class Writes:
    """The Redis writes one tick sends."""

    claims: list[tuple[str, int]] = field(default_factory=list)
    """(serial, ttl ms): unconditional SET (a registration here)."""
    refreshes: list[tuple[str, int]] = field(default_factory=list)
    """(serial, ttl ms): SET if missing or ours."""
    releases: list[str] = field(default_factory=list)
    """Serials gone offline here: DEL if ours."""

    def __len__(self) -> int:
        return len(self.claims) + len(self.refreshes) + len(self.releases)


class LocationBook:
    """Which devices this node holds and when each one's key is due; no I/O.

    ``interval_of`` gives a device's current keepalive interval (None: no longer online here).
    """

    def __init__(self, interval_of: Callable[[str], float | None]) -> None:
        self._interval_of = interval_of
        self._due: dict[str, float] = {}  # serial -> when its key must be refreshed
        self._heap: list[tuple[float, str]] = []
        self._claims: dict[str, None] = {}
        self._releases: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._due)

    def online(self, serial: str) -> None:
        """``serial`` registered here: claim its key at the next tick."""
        self._releases.pop(serial, None)
        self._claims[serial] = None

    def offline(self, serial: str) -> None:
        """``serial`` went offline here: release its key at the next tick."""
        self._claims.pop(serial, None)
        self._due.pop(serial, None)
        self._releases[serial] = None

    def lost(self, serial: str) -> None:
        """Another node holds ``serial`` now: stop refreshing it."""
        self._due.pop(serial, None)

    def rebuild(self) -> int:
        """Redis lost the keys (a restart, or this node could not reach it): refresh every device
        held here at the next tick. Returns how many."""
        for serial in self._due:
            self._due[serial] = 0.0
        self._heap = [(0.0, serial) for serial in self._due]
        return len(self._due)

    def get_timer(self) -> float | None:
        """When the next write is due (None: nothing to do)."""
        if self._claims or self._releases:
            return 0.0
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # a stale entry: rescheduled, lost or offline
        return self._heap[0][0] if self._heap else None

    def take_writes(self, now: float, limit: int = MAX_WRITES_PER_FLUSH) -> Writes:
        """At most ``limit`` writes due at ``now`` (releases, then claims, then refreshes, oldest
        first); each written key is scheduled for its next refresh, the rest stay due."""
        writes = Writes()
        while self._releases and len(writes) < limit:
            serial = next(iter(self._releases))
            del self._releases[serial]
            writes.releases.append(serial)
        while self._claims and len(writes) < limit:
            serial = next(iter(self._claims))
            del self._claims[serial]
            ttl = self._schedule(serial, now)
            if ttl is not None:
                writes.claims.append((serial, ttl))
        while self._heap and self._heap[0][0] <= now and len(writes) < limit:
            due, serial = heapq.heappop(self._heap)
            if self._due.get(serial) != due:
                continue
            ttl = self._schedule(serial, now)
            if ttl is not None:
                writes.refreshes.append((serial, ttl))
        return writes

    def _schedule(self, serial: str, now: float) -> int | None:
        interval = self._interval_of(serial)
        if interval is None:
            self._due.pop(serial, None)
            return None
        ttl = key_ttl(interval)
        due = now + ttl / 2
        self._due[serial] = due
        heapq.heappush(self._heap, (due, serial))
        return round(ttl * 1000)


class PresenceDirectory:
    """Keeps this node's devices in Redis; ``on_event`` observes the presence core's events,
    ``flush`` (called by the cluster's loop) sends what is due in one pipeline."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        interval_of: Callable[[str], float | None],
        clock: Callable[[], float],
    ) -> None:
        self._redis = redis
        self._node = node_id
        self._clock = clock
        self.book = LocationBook(interval_of)
        self._refresh = redis.register_script(REFRESH_SCRIPT)
        self._release = redis.register_script(RELEASE_SCRIPT)
        self.writes_sent = 0
        """Presence writes sent so far (claims, refreshes, releases)."""

    def on_event(self, event: ServerEvent) -> None:
        """Observe a presence event: ``DeviceOnline`` claims, ``DeviceOffline`` releases."""
        if isinstance(event, DeviceOnline):
            self.book.online(event.serial)
        elif isinstance(event, DeviceOffline):
            self.book.offline(event.serial)

    async def locate(self, serial: str) -> str | None:
        """The node that holds ``serial`` (None: no node has it online).

        Raises:
            RedisError: Redis cannot be reached.
        """
        held = await self._redis.get(presence_key(serial))
        if isinstance(held, bytes):
            return held.decode("utf-8", "replace")
        return held

    async def flush(self) -> None:
        """Send the writes due now in one pipeline.

        Raises:
            RedisError: Redis cannot be reached; the caller rebuilds once it is back (the due
                writes of this tick are covered by that rebuild).
        """
        writes = self.book.take_writes(self._clock())
        if not writes:
            return
        pipe = self._redis.pipeline(transaction=False)
        for serial, ttl_ms in writes.claims:
            pipe.set(presence_key(serial), self._node, px=ttl_ms)
        for serial, ttl_ms in writes.refreshes:
            await self._refresh(keys=[presence_key(serial)], args=[self._node, ttl_ms], client=pipe)
        for serial in writes.releases:
            await self._release(keys=[presence_key(serial)], args=[self._node], client=pipe)
        results = await pipe.execute(raise_on_error=True)
        self.writes_sent += len(writes)
        refreshed = results[len(writes.claims) : len(writes.claims) + len(writes.refreshes)]
        for (serial, _), written in zip(writes.refreshes, refreshed, strict=True):
            if not written:
                log.info("device %s is held by another node now; no longer refreshing its location", serial)
                self.book.lost(serial)

    def rebuild(self) -> None:
        """Rewrite every device held here at the next flush (Redis came back empty)."""
        count = self.book.rebuild()
        if count:
            log.info("re-writing the location of %d devices held by node %s", count, self._node)


__all__ = ["LocationBook", "PresenceDirectory", "RedisError", "Writes", "key_ttl"]
