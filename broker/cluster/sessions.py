"""Session records any node can continue: ``s:<session id>`` holds the record as JSON, expiring
with the session. The node that answers ``POST /v1/sessions`` writes it; a follow-up request
(offer, candidate update, DELETE) on any node reads it, acts (routing the invite to the device's
node like any other), and writes the new state back; DELETE leaves a tombstone (``-``) until the
session would have expired. The stored record wins over a node's own copy; a node whose record
never reached Redis (made while Redis was down) writes its copy back. Each node keeps its own
copy, so its sessions go on while Redis is unreachable.

The per-account session limit is checked against the node's own table (a viewer's sessions
usually start on one node); the record's state moves make a second offer fail on every node.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dvrlink.broker.cluster.node import session_key
from dvrlink.broker.sessions import ENDED, SESSION_PATHS, SessionRecord, SessionState, SharedStoreUnavailable
from dvrlink.protocol.signalling import PathPolicy

TOMBSTONE = "-"
"""The value of an ended session's key."""

log = logging.getLogger(__name__)


def record_json(record: SessionRecord) -> str:
    """The stored form of ``record`` (``w``, the reported path, only once there is one)."""
    doc: dict[str, object] = {
        "a": record.account,
        "d": record.serial,
        "p": int(record.policy),
        "c": record.created_at,
        "e": record.expires_at,
        "s": record.state.value,
        "u": record.updates,
    }
    if record.path is not None:
        doc["w"] = record.path
    return json.dumps(doc, separators=(",", ":"))


def record_from_json(session_id: bytes, text: bytes | str) -> SessionRecord:
    """Read a stored record.

    Raises:
        ValueError: the stored value is not a session record.
    """
    try:
        doc = json.loads(text)
        path = doc.get("w")
        if path is not None and path not in SESSION_PATHS:
            raise ValueError(f"unknown path {path!r}")
        return SessionRecord(
            session_id,
            str(doc["a"]),
            str(doc["d"]),
            PathPolicy(int(doc["p"])),
            float(doc["c"]),
            float(doc["e"]),
            SessionState(doc["s"]),
            int(doc["u"]),
            path,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"session {session_id.hex()}: bad stored record ({exc})") from None


class SharedSessions:
    """The session records in Redis; errors are logged and leave the node on its own copy."""

    def __init__(self, redis: Redis, clock: Callable[[], float]) -> None:
        self._redis = redis
        self._clock = clock

    async def save(self, record: SessionRecord) -> None:
        """Write ``record`` with its remaining lifetime."""
        ttl_ms = round((record.expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return
        try:
            await self._redis.set(session_key(record.session_id.hex()), record_json(record), px=ttl_ms)
        except RedisError as exc:
            log.warning("session %s: not shared with other nodes (%s)", record.session_id.hex(), exc)

    async def load(self, session_id: bytes) -> SessionRecord | Literal["ended"] | None:
        """The stored record, ``ENDED``, or None (never stored, expired, or unreadable).

        Raises:
            SharedStoreUnavailable: Redis cannot be reached.
        """
        try:
            text = await self._redis.get(session_key(session_id.hex()))
        except RedisError as exc:
            raise SharedStoreUnavailable(str(exc)) from exc
        if text is None:
            return None
        if text in (TOMBSTONE, TOMBSTONE.encode()):
            return ENDED
        try:
            return record_from_json(session_id, text)
        except ValueError as exc:
            log.warning("%s", exc)
            return None

    async def end(self, record: SessionRecord) -> None:
        """Replace the record with a tombstone for its remaining lifetime: every node then
        forgets its own copy."""
        ttl_ms = round((record.expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return
        try:
            await self._redis.set(session_key(record.session_id.hex()), TOMBSTONE, px=ttl_ms)
        except RedisError as exc:
            log.warning("session %s: cannot mark the shared record ended (%s)", record.session_id.hex(), exc)
