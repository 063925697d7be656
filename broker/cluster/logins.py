"""Dashboard logins shared by the fleet, in Redis (``broker/dashboard/logins.py`` has the
interface and the single-broker store).

One key per login: ``w:<SHA-256 of the session id, hex>`` → JSON ``{"u": username, "c": CSRF
token, "x": expiry, Unix s}``, with the login's expiry as the key's (``SET ... PX``). The cookie's
id itself is never stored, so reading Redis hands out no live cookie. Every node reads the same
key: a login made through node A works on node B, and a logout (``DEL``) through any node ends it
on all, streams included (a live stream checks its login at every heartbeat).

While Redis cannot be reached:

- a login a node made or checked before keeps working on that node (each node keeps a bounded
  copy of the logins it has seen), so the pages still show that node's knowledge;
- a logout ends the login on that node at once, and in Redis, for every node, as soon as Redis
  answers again (the node retries the ``DEL`` with its next Redis call);
- nobody can log in (``LoginsUnavailable``: the login page says so and to retry).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dvrlink.broker.cluster.node import DASHBOARD_LOGIN_PREFIX
from dvrlink.broker.dashboard.logins import (
    Login,
    LoginsUnavailable,
    LoginTable,
    hashed_id,
    login_from_json,
    login_json,
    new_login,
)

UNAVAILABLE = (
    "the cluster's Redis, which keeps the dashboard's logins, cannot be reached ({}); retry in a moment"
)
MAX_PENDING_LOGOUTS = 10_000
"""Logouts waiting for Redis at most (the oldest are dropped: those logins still expire)."""

log = logging.getLogger(__name__)


def dashboard_login_key(session_id: str) -> str:
    """The Redis key of the login named by ``session_id`` (its hash, never the id)."""
    return DASHBOARD_LOGIN_PREFIX + hashed_id(session_id)


class RedisLogins:
    """``LoginStore`` of a cluster (see the module docstring). ``now`` is Unix seconds."""

    def __init__(self, redis: Redis, ttl_s: float, rng: Callable[[int], bytes] = os.urandom) -> None:
        self._redis = redis
        self._ttl = ttl_s
        self._rng = rng
        self._seen = LoginTable(ttl_s)
        """This node's copies of the logins it made or checked, for a Redis outage."""
        self._pending_logouts: dict[str, None] = {}
        """Redis keys of logouts made while Redis was down, deleted when it answers again."""
        self._down = False

    async def create(self, username: str, now: float) -> tuple[str, Login]:
        """Log ``username`` in.

        Raises:
            LoginsUnavailable: Redis cannot be reached.
        """
        session_id, login = new_login(username, now, self._ttl, self._rng)
        try:
            await self._flush_logouts()
            await self._redis.set(
                dashboard_login_key(session_id), login_json(login), px=max(1, round(self._ttl * 1000))
            )
        except (RedisError, OSError) as exc:
            self._lost(exc)
            raise LoginsUnavailable(UNAVAILABLE.format(exc)) from exc
        self._back()
        self._seen.keep(session_id, login, now)
        return session_id, login

    async def get(self, session_id: str, now: float) -> Login | None:
        """The live login of ``session_id``, or None; while Redis cannot be reached, this node's
        copy (if it made or checked the login before)."""
        try:
            await self._flush_logouts()
            stored = await self._redis.get(dashboard_login_key(session_id))
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return self._seen.get(session_id, now)
        self._back()
        login = login_from_json(stored) if isinstance(stored, bytes | str) else None
        if login is None or now >= login.expires_at:
            self._seen.end(session_id)
            return None
        self._seen.keep(session_id, login, now)
        return login

    async def end(self, session_id: str) -> bool:
        """Log out on every node (once Redis answers, if it does not now); False if there was
        no such login."""
        known = self._seen.end(session_id)
        key = dashboard_login_key(session_id)
        try:
            await self._flush_logouts()
            removed = await self._redis.delete(key)
        except (RedisError, OSError) as exc:
            self._lost(exc)
            if len(self._pending_logouts) >= MAX_PENDING_LOGOUTS:
                del self._pending_logouts[next(iter(self._pending_logouts))]
            self._pending_logouts[key] = None
            return known
        self._back()
        return bool(removed) or known

    async def _flush_logouts(self) -> None:
        """Delete the logouts made while Redis was down.

        Raises:
            RedisError, OSError: Redis cannot be reached (they stay pending).
        """
        if not self._pending_logouts:
            return
        keys = list(self._pending_logouts)
        await self._redis.delete(*keys)
        for key in keys:
            self._pending_logouts.pop(key, None)

    def _lost(self, exc: Exception) -> None:
        if not self._down:
            log.warning(
                "dashboard logins: Redis cannot be reached (%s); logins this node has seen keep working "
                "here, new logins wait for Redis",
                exc,
            )
            self._down = True

    def _back(self) -> None:
        if self._down:
            log.info("dashboard logins: Redis answers again")
            self._down = False
