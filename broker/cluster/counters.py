"""Failure counters every node of a fleet shares, in Redis: wrong passwords per (username,
client address) and wrong pairing codes per device and per (account, device). Spreading guesses
over nodes gains nothing: every node counts into the same sorted sets (member: one failure,
score: its time in ms) and checks the same window.

While Redis is unreachable each node falls back to its own count (the in-memory login limiter,
the registry's pair failures), so limits still hold per node; a warning says so.
"""

from __future__ import annotations

import logging
import os

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dvrlink.broker.cluster.node import LOGIN_PREFIX
from dvrlink.broker.rate_limit import FailureLimiter, PairFailureStore

PAIR_PREFIX = "f:"

# KEYS[1]: the set; ARGV: now ms, window ms, max failures, member. Returns 0 (counted) or the
# ms until a try is allowed (nothing counted); check and count are one step for all nodes.
BEGIN_SCRIPT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""

log = logging.getLogger(__name__)


def login_key(key: tuple[str, str]) -> str:
    """The Redis key of one (username, address) pair; the length prefix keeps it unambiguous."""
    username, address = key
    return f"{LOGIN_PREFIX}{len(username)}:{username}|{address}"


def _member(now: float) -> str:
    return f"{round(now * 1000)}-{os.urandom(4).hex()}"


class RedisLoginLimiter:
    """``LoginLimiter`` shared by the fleet; ``fallback`` counts while Redis is unreachable."""

    def __init__(self, redis: Redis, max_failures: int, window_s: float, fallback: FailureLimiter) -> None:
        self._redis = redis
        self._max = max_failures
        self._window_ms = round(window_s * 1000)
        self._fallback = fallback
        self._begin = redis.register_script(BEGIN_SCRIPT)
        self._degraded = False

    async def begin(self, key: tuple[str, str], now: float) -> float:
        """0 and the attempt counted, or the seconds until ``key`` may try (nothing counted)."""
        try:
            wait_ms = await self._begin(
                keys=[login_key(key)], args=[round(now * 1000), self._window_ms, self._max, _member(now)]
            )
        except RedisError as exc:
            self._warn(exc)
            return self._fallback.begin(key, now)
        self._degraded = False
        return int(wait_ms) / 1000

    async def undo(self, key: tuple[str, str]) -> None:
        """Take back the newest count of ``key``."""
        try:
            await self._redis.zpopmax(login_key(key))
        except RedisError as exc:
            self._warn(exc)
        self._fallback.undo(key)

    async def succeeded(self, key: tuple[str, str]) -> None:
        """Forget the failures of ``key``."""
        try:
            await self._redis.delete(login_key(key))
        except RedisError as exc:
            self._warn(exc)
        self._fallback.succeeded(key)

    def _warn(self, exc: Exception) -> None:
        if not self._degraded:
            log.warning("login failures are counted per node until Redis is back (%s)", exc)
            self._degraded = True


class RedisPairFailures:
    """``PairFailures`` shared by the fleet; every failure is also recorded in the registry
    (its audit trail, and the count used while Redis is unreachable)."""

    def __init__(self, redis: Redis, registry: PairFailureStore, keep_s: float) -> None:
        self._redis = redis
        self._registry = registry
        self._keep_ms = round(keep_s * 1000)
        self._degraded = False

    @staticmethod
    def _keys(serial: str, username: str | None) -> str:
        return f"{PAIR_PREFIX}{serial}" if username is None else f"{PAIR_PREFIX}{serial}|{username}"

    async def record(self, serial: str, now: float, username: str) -> None:
        """Count a wrong code ``username`` sent ``serial`` at ``now``."""
        self._registry.record_pair_failure(serial, now, username)
        now_ms = round(now * 1000)
        member = _member(now)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key in (self._keys(serial, None), self._keys(serial, username)):
                pipe.zadd(key, {member: now_ms})
                pipe.zremrangebyscore(key, "-inf", now_ms - self._keep_ms)
                pipe.pexpire(key, self._keep_ms)
            await pipe.execute()
        except RedisError as exc:
            self._warn(exc)

    async def count_since(self, serial: str, since: float, username: str | None = None) -> int:
        """Wrong codes for ``serial`` since ``since`` (from ``username`` only, if given)."""
        try:
            count = await self._redis.zcount(self._keys(serial, username), round(since * 1000), "+inf")
        except RedisError as exc:
            self._warn(exc)
            return self._registry.pair_failures_since(serial, since, username)
        self._degraded = False
        return int(count)

    def _warn(self, exc: Exception) -> None:
        if not self._degraded:
            log.warning("wrong pairing codes are counted per node until Redis is back (%s)", exc)
            self._degraded = True
