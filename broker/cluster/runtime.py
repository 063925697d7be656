"""A clustered node's Redis side, wired: one client, one tick loop (presence writes, heartbeat),
one subscriber loop (this node's channel).

Every ``TICK_S`` the loop sends the due presence writes in one pipeline; every
``HEARTBEAT_S`` it renews ``n:<node id>`` with ``SET ... GET``. A missing previous value means
Redis lost its data (a restart without persistence), and an error means writes were lost: either
way the node re-writes the location of every device it holds, so presence is rebuilt without
waiting for the devices. While Redis is down, devices held here keep working: their invites and
sessions never leave the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from dvrlink.broker.cluster.channels import follow_channel, stop_tasks
from dvrlink.broker.cluster.counters import RedisLoginLimiter, RedisPairFailures
from dvrlink.broker.cluster.directory import PresenceDirectory
from dvrlink.broker.cluster.fleet import FleetBoard
from dvrlink.broker.cluster.node import NODE_TTL_MS, node_channel, node_key
from dvrlink.broker.cluster.routing import ClusterPresence, InviteRouter
from dvrlink.broker.cluster.sessions import SharedSessions
from dvrlink.broker.config import BrokerConfig
from dvrlink.broker.presence_gateway import PresenceGateway
from dvrlink.broker.rate_limit import FailureLimiter, PairFailureStore
from dvrlink.protocol.presence_events import ServerEvent

TICK_S = 0.1
HEARTBEAT_S = 1.0
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


def connect(url: str) -> Redis:
    """A Redis client that fails fast (no retries: the loops retry, requests fall back)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=COMMAND_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        client_name="dvrlink-broker",
    )


@dataclass(eq=False)
class Cluster:
    """A node's cluster parts; ``close`` stops the loops and the client."""

    node_id: str
    redis: Redis
    directory: PresenceDirectory
    router: InviteRouter
    presence: ClusterPresence
    sessions: SharedSessions
    logins: RedisLoginLimiter
    pair_failures: RedisPairFailures
    fleet: FleetBoard
    """The dashboard's fleet-wide presence, live changes and counters."""
    connected: bool = False
    """Whether the last heartbeat reached Redis."""
    rebuilds: int = 0
    """Times this node re-wrote its devices' locations (Redis came back, or lost its data)."""
    _tasks: tuple[asyncio.Task[None], ...] = ()

    def on_event(self, event: ServerEvent) -> None:
        """Observe a presence core event (``DeviceOnline``/``DeviceOffline``)."""
        self.directory.on_event(event)
        self.fleet.on_event(event, time.time())

    def start(self) -> None:
        """Start the tick loop and the subscriber loop in the running event loop."""
        loop = asyncio.get_running_loop()
        self._tasks = (
            loop.create_task(self._tick_loop(), name=f"cluster-tick {self.node_id}"),
            loop.create_task(self._listen_loop(), name=f"cluster-listen {self.node_id}"),
        )
        self.fleet.start()

    async def close(self) -> None:
        """Stop the loops, cancel routed invites, take this node's heartbeat key away."""
        await stop_tasks(self._tasks, f"node {self.node_id}")
        await self.fleet.close()
        await self.router.close()
        with contextlib.suppress(RedisError):
            await self.redis.delete(node_key(self.node_id))
        await self.redis.aclose()

    async def _tick_loop(self) -> None:
        next_beat = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_S
                    await self._heartbeat()
                if self.connected:
                    await self.directory.flush()
            except RedisError as exc:
                if self.connected:
                    log.warning(
                        "node %s lost Redis (%s): devices held here still work; other nodes cannot "
                        "reach them until it is back",
                        self.node_id,
                        exc,
                    )
                self.connected = False
            except Exception:  # a bug must not end presence location for good: log, go on
                log.exception("node %s: presence location tick failed", self.node_id)
            await asyncio.sleep(TICK_S)

    async def _heartbeat(self) -> None:
        stamp = round(time.time() * 1000)
        previous = await self.redis.set(node_key(self.node_id), stamp, px=NODE_TTL_MS, get=True)
        was_connected = self.connected
        self.connected = True
        if previous is None or not was_connected:  # Redis lost our keys, or we lost writes
            self.rebuilds += 1
            self.directory.rebuild()

    async def _listen_loop(self) -> None:
        await follow_channel(
            self.redis,
            node_channel(self.node_id),
            lambda: None,
            lambda data: self.router.on_message(data if isinstance(data, bytes) else data.encode()),
            HEARTBEAT_S,
            f"node {self.node_id}",
        )


def start_cluster(
    config: BrokerConfig,
    node_id: str,
    gateway: PresenceGateway,
    interval_of: Callable[[str], float | None],
    registry: PairFailureStore,
    core_clock: Callable[[], float],
    wall_clock: Callable[[], float],
) -> Cluster:
    """Connect this node to the fleet's Redis (``config.redis_url``) and start its loops. Redis
    need not be up yet: the node serves its own devices and joins when Redis answers."""
    redis = connect(config.redis_url)
    directory = PresenceDirectory(redis, node_id, interval_of, core_clock)
    router = InviteRouter(redis, node_id, gateway, directory)
    cluster = Cluster(
        node_id,
        redis,
        directory,
        router,
        ClusterPresence(gateway, router, directory),
        SharedSessions(redis, wall_clock),
        RedisLoginLimiter(
            redis,
            config.login_max_failures,
            config.login_window_s,
            FailureLimiter(config.login_max_failures, config.login_window_s),
        ),
        RedisPairFailures(redis, registry, max(config.pairing_window_s, config.pairing_device_window_s)),
        FleetBoard(redis, node_id, wall_clock),
    )
    cluster.start()
    log.info("node %s joins the fleet on Redis %s", node_id, _redacted(config.redis_url))
    return cluster


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest
