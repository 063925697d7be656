"""The fleet dashboard's Redis side: presence of many devices in one round trip, presence changes
of every node on one channel, and per-node counters summed into fleet counters.

- ``MGET p:<serial> ...``: which node holds each listed device (one round trip per page).
- Channel ``e:presence``: every node publishes its devices' online/offline changes as JSON
  ``{"n": node, "s": serial, "o": 1|0, "t": unix s, "a": address, "r": reason, "c": count}``
  (``c``: the devices online at that node right after the change); every node subscribes and
  hands the other nodes' changes to its dashboard feed. After losing the channel
  (Redis restarted) the subscriber subscribes again and ``on_resync`` lets the feed's followers
  start over from a fresh snapshot (changes published meanwhile were lost).
- Hash ``m``: one field per node, its counters as JSON (:class:`NodeStats`), rewritten every
  ``STATS_S``; a field older than ``STATS_STALE_MS`` (a node that stopped) is ignored and removed
  by the next reader.
- The fleet's online count, live: each node's newest count, from the hash (read by
  :meth:`FleetBoard.fleet_stats`) or from the ``c`` of its latest change, whichever is newer
  (:meth:`FleetBoard.fleet_online`), plus this node's own count now. So the fleet page's "online
  now" follows every change without a Redis read per change.

:class:`FleetBoard` owns one publisher loop and one subscriber loop; it is started and closed
with the node's :class:`~dvrlink.broker.cluster.runtime.Cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dvrlink.broker.cluster.channels import follow_channel, stop_tasks
from dvrlink.broker.cluster.node import presence_key
from dvrlink.broker.dashboard.feed import PresenceChanged
from dvrlink.broker.registry import format_address
from dvrlink.protocol.presence_events import DeviceOffline, DeviceOnline, ServerEvent

FLEET_CHANNEL = "e:presence"
"""The fleet-wide channel of presence changes."""
STATS_KEY = "m"
"""The hash of per-node dashboard counters (field: node id)."""
TICK_S = 0.1
STATS_S = 2.0
"""How often a node rewrites its counters."""
STATS_STALE_MS = 10_000
"""A node's counters older than this are not counted (the node stopped or lost Redis)."""
MAX_PENDING = 10_000
"""Changes waiting to be published at most; past that the oldest are dropped (a storm)."""
MAX_PER_TICK = 2_000
"""Changes published in one pipeline."""
MAX_MESSAGE = 4096
MGET_CHUNK = 1000
"""Keys per MGET (a fleet page of 100,000 devices is still one pipelined round trip)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeStats:
    """One node's dashboard counters."""

    online: int
    registrations_per_minute: float
    keepalive_buckets: tuple[int, ...]
    """Online devices per keepalive-interval bucket (``dashboard.view.KEEPALIVE_BUCKETS``)."""
    sessions: int
    """Open signalled sessions."""
    paths: tuple[tuple[str, int], ...]
    """Open sessions per path the viewer reported (``lan``, ``direct``, ``relay``) and
    ``relay-only`` for those signalled relay-only whose viewer reported nothing."""

    def to_json(self, node: str, at_ms: int) -> str:
        """The stored form, stamped with ``at_ms``."""
        return json.dumps(
            {
                "node": node,
                "at": at_ms,
                "online": self.online,
                "rpm": self.registrations_per_minute,
                "buckets": list(self.keepalive_buckets),
                "sessions": self.sessions,
                "paths": dict(self.paths),
            },
            separators=(",", ":"),
        )

    @staticmethod
    def from_json(text: bytes | str) -> tuple[str, int, NodeStats]:
        """(node, stamp ms, counters) from the stored form.

        Raises:
            ValueError: not a stored ``NodeStats``.
        """
        try:
            doc = json.loads(text)
            paths = doc["paths"]
            if not isinstance(paths, dict):
                raise TypeError("paths is not an object")
            return (
                str(doc["node"]),
                int(doc["at"]),
                NodeStats(
                    int(doc["online"]),
                    float(doc["rpm"]),
                    tuple(int(c) for c in doc["buckets"]),
                    int(doc["sessions"]),
                    tuple(sorted((str(k), int(v)) for k, v in paths.items())),
                ),
            )
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"bad node counters ({exc})") from None


@dataclass(frozen=True, slots=True)
class FleetStats:
    """The counters of every node that wrote recently, summed."""

    nodes: tuple[str, ...]
    total: NodeStats


def sum_stats(stats: Iterable[NodeStats]) -> NodeStats:
    """The sum of several nodes' counters (histograms bucket by bucket, paths by name)."""
    online, sessions, rpm = 0, 0, 0.0
    buckets: list[int] = []
    paths: dict[str, int] = {}
    for one in stats:
        online += one.online
        sessions += one.sessions
        rpm += one.registrations_per_minute
        if len(buckets) < len(one.keepalive_buckets):
            buckets += [0] * (len(one.keepalive_buckets) - len(buckets))
        for index, count in enumerate(one.keepalive_buckets):
            buckets[index] += count
        for name, count in one.paths:
            paths[name] = paths.get(name, 0) + count
    return NodeStats(online, rpm, tuple(buckets), sessions, tuple(sorted(paths.items())))


def change_json(node: str, change: PresenceChanged) -> str:
    """The channel message of one change."""
    doc: dict[str, object] = {"n": node, "s": change.serial, "o": 1 if change.online else 0, "t": change.at}
    if change.address is not None:
        doc["a"] = change.address
    if change.reason is not None:
        doc["r"] = change.reason
    if change.node_online is not None:
        doc["c"] = change.node_online
    return json.dumps(doc, separators=(",", ":"))


def change_from_json(data: bytes | str) -> PresenceChanged:
    """A change from a channel message (``node`` set to its publisher).

    Raises:
        ValueError: malformed (too long, not JSON, missing or mistyped fields).
    """
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"{len(data)} bytes")
    try:
        doc = json.loads(data)
        serial, online, at, node = doc["s"], doc["o"], doc["t"], doc["n"]
        address, reason, count = doc.get("a"), doc.get("r"), doc.get("c")
        if not isinstance(serial, str) or not isinstance(node, str) or online not in (0, 1):
            raise TypeError("s, n must be strings and o 0 or 1")
        if not isinstance(at, int | float) or isinstance(at, bool):
            raise TypeError("t must be a number")
        if not isinstance(address, str | None) or not isinstance(reason, str | None):
            raise TypeError("a, r must be strings")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            raise TypeError("c must be a count")
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ValueError(f"bad presence change ({exc})") from None
    return PresenceChanged(serial, bool(online), float(at), address, reason, node, count)


class FleetBoard:
    """A node's dashboard link to the fleet; ``on_change`` receives the other nodes' changes,
    ``stats`` gives this node's counters when they are due."""

    def __init__(self, redis: Redis, node_id: str, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self.node_id = node_id
        self._clock = clock
        """Wall-clock time (Unix seconds)."""
        self._pending: deque[str] = deque(maxlen=MAX_PENDING)
        self._wake = asyncio.Event()
        """Set when a change waits to be published."""
        self.on_change: Callable[[PresenceChanged], None] = lambda change: None
        self.on_resync: Callable[[], None] = lambda: None
        self.stats: Callable[[], NodeStats] | None = None
        self.online: Callable[[], int] | None = None
        """Devices online at this node now (sent with each change as ``c``)."""
        self._online: dict[str, tuple[int, int]] = {}
        """Each other node's newest online count and its time stamp (ms, that node's clock)."""
        self._online_read = False
        """Whether the hash was read once (before that, the fleet's count is not known)."""
        self._tasks: tuple[asyncio.Task[None], ...] = ()
        self.subscriptions = 0
        """Times the subscriber (re)subscribed to the fleet channel."""
        self.received = 0
        """Other nodes' changes handed to ``on_change``."""

    # -- presence changes out ---------------------------------------------------------------------

    def on_event(self, event: ServerEvent, now: float) -> None:
        """Queue this node's ``DeviceOnline``/``DeviceOffline`` for the fleet channel (``now``:
        Unix seconds)."""
        count = self.online() if self.online is not None else None
        if isinstance(event, DeviceOnline):
            address = format_address(event.address)
            change = PresenceChanged(event.serial, True, now, address=address, node_online=count)
        elif isinstance(event, DeviceOffline):
            change = PresenceChanged(event.serial, False, now, reason=event.reason, node_online=count)
        else:
            return
        self._pending.append(change_json(self.node_id, change))
        self._wake.set()

    async def _publish_due(self) -> None:
        if not self._pending:
            return
        batch = [self._pending.popleft() for _ in range(min(len(self._pending), MAX_PER_TICK))]
        pipe = self._redis.pipeline(transaction=False)
        for message in batch:
            pipe.publish(FLEET_CHANNEL, message)
        try:
            await pipe.execute()
        except RedisError:
            self._pending.extendleft(reversed(batch))  # sent again when Redis answers
            raise

    # -- reads for the pages ----------------------------------------------------------------------

    async def locate(self, serials: Sequence[str]) -> dict[str, str]:
        """The node holding each of ``serials`` that some node holds (one pipelined round trip).

        Raises:
            RedisError: Redis cannot be reached.
        """
        if not serials:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for start in range(0, len(serials), MGET_CHUNK):
            pipe.mget([presence_key(s) for s in serials[start : start + MGET_CHUNK]])
        found: dict[str, str] = {}
        values = [v for chunk in await pipe.execute() for v in chunk]
        for serial, held in zip(serials, values, strict=True):
            if isinstance(held, bytes):
                found[serial] = held.decode("utf-8", "replace")
            elif isinstance(held, str):
                found[serial] = held
        return found

    async def fleet_stats(self) -> FleetStats:
        """Every live node's counters, summed; stale fields are removed.

        Raises:
            RedisError: Redis cannot be reached.
        """
        fields = await self._redis.hgetall(STATS_KEY)
        now_ms = round(self._clock() * 1000)
        nodes: list[str] = []
        live: list[NodeStats] = []
        stale: list[bytes | str] = []
        for field, value in fields.items():
            try:
                node, at_ms, stats = NodeStats.from_json(value)
            except ValueError as exc:
                log.warning("dropped the dashboard counters of node %r: %s", field, exc)
                stale.append(field)
                continue
            if now_ms - at_ms > STATS_STALE_MS:
                stale.append(field)
                continue
            nodes.append(node)
            live.append(stats)
            self._note_online(node, stats.online, at_ms)
        for node in [n for n in self._online if n not in nodes]:
            if now_ms - self._online[node][1] > STATS_STALE_MS:  # gone: not heard of lately either
                del self._online[node]
        self._online_read = True
        if stale:
            await self._redis.hdel(STATS_KEY, *stale)
        return FleetStats(tuple(sorted(nodes)), sum_stats(live))

    def fleet_online(self, own: int) -> int | None:
        """Devices online in the fleet: ``own`` (this node's count now) plus every other node's
        newest count; None until the counters were read once (:meth:`fleet_stats`)."""
        if not self._online_read:
            return None
        return own + sum(count for node, (count, _at) in self._online.items() if node != self.node_id)

    def _note_online(self, node: str, count: int, at_ms: int) -> None:
        known = self._online.get(node)
        if known is None or at_ms >= known[1]:
            self._online[node] = (count, at_ms)

    async def write_stats(self) -> None:
        """Write this node's counters now (the loop does it every ``STATS_S``).

        Raises:
            RedisError: Redis cannot be reached.
        """
        if self.stats is None:
            return
        stamp = round(self._clock() * 1000)
        await self._redis.hset(STATS_KEY, self.node_id, self.stats().to_json(self.node_id, stamp))

    # -- loops ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the publisher and subscriber loops in the running event loop."""
        loop = asyncio.get_running_loop()
        self._tasks = (
            loop.create_task(self._publish_loop(), name=f"fleet-publish {self.node_id}"),
            loop.create_task(self._listen_loop(), name=f"fleet-listen {self.node_id}"),
        )

    async def close(self) -> None:
        """Stop the loops and take this node's counters away."""
        await stop_tasks(self._tasks, f"node {self.node_id} fleet dashboard")
        with contextlib.suppress(RedisError, OSError):
            await self._redis.hdel(STATS_KEY, self.node_id)

    async def _publish_loop(self) -> None:
        """Publish changes as they come (waking only for them, or for the counters every
        ``STATS_S``); while Redis is unreachable, retry every ``TICK_S``."""
        next_stats = 0.0
        while True:
            pause = 0.0
            try:
                await self._publish_due()
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + STATS_S
                    await self.write_stats()
            except (RedisError, OSError) as exc:
                log.debug("node %s: fleet dashboard writes wait for Redis (%s)", self.node_id, exc)
                pause = TICK_S
            except Exception:  # a bug must not end the fleet's live updates: log, go on
                log.exception("node %s: fleet dashboard tick failed", self.node_id)
                pause = TICK_S
            if pause:
                await asyncio.sleep(pause)
            elif not self._pending:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(next_stats - time.monotonic(), 0.0))

    async def _listen_loop(self) -> None:
        await follow_channel(
            self._redis, FLEET_CHANNEL, self._subscribed, self._on_message, 1.0, f"node {self.node_id}"
        )

    def _subscribed(self) -> None:
        self.subscriptions += 1
        if self.subscriptions > 1:
            self.on_resync()

    def _on_message(self, data: bytes | str) -> None:
        try:
            change = change_from_json(data)
        except ValueError as exc:
            log.warning("dropped a message on %s: %s", FLEET_CHANNEL, exc)
            return
        if change.node == self.node_id:
            return  # this node's own change: its feed already has it
        if change.node is not None and change.node_online is not None:
            self._note_online(change.node, change.node_online, round(change.at * 1000))
        self.received += 1
        self.on_change(change)
