"""Invites across nodes: a request on node B for a device whose presence session is on node C.

B reads ``p:<serial>`` (``PresenceDirectory.locate``), publishes the invite on C's channel
``r:<C>``; C pushes it to the device with its own :class:`PresenceGateway` and publishes the
outcome on ``r:<B>``; B resolves the waiting request. Each message is one JSON object:

- request: ``{"t": "invite", "id": n, "from": B, "serial": s, "kind": k, "body": b64, "ttl": s}``
- outcome: ``{"t": "outcome", "id": n, "result": "answered"|"expired"|"offline", "status": n,
  "body": b64}``

Failures read like local ones: no node holds the device, or its node is not subscribed (PUBLISH
reaches nobody: the node is gone), or Redis is down: ``NotOnlineError`` (409 device_offline);
no outcome within the ttl (the node died meanwhile): ``InviteExpired`` (504 device_timeout).

:class:`ClusterPresence` is the API's presence view on a clustered node: local first, then the
directory.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from dvrlink.broker.cluster.directory import PresenceDirectory
from dvrlink.broker.cluster.node import node_channel
from dvrlink.broker.presence_gateway import InviteOutcome, PresenceGateway
from dvrlink.protocol.presence_events import InviteAnswered, InviteExpired
from dvrlink.protocol.presence_server import NotOnlineError, PresenceInfo

ROUTE_GRACE_S = 1.0
"""Extra seconds a routed invite waits past its ttl for the owning node's outcome."""
MAX_MESSAGE = 96 * 1024

log = logging.getLogger(__name__)


class InviteRouter:
    """Sends invites to other nodes and serves the ones other nodes send here."""

    def __init__(
        self, redis: Redis, node_id: str, gateway: PresenceGateway, directory: PresenceDirectory
    ) -> None:
        self._redis = redis
        self._node = node_id
        self._gateway = gateway
        self._directory = directory
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.Future[InviteOutcome], str]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self.routed_out = 0
        """Invites this node sent to other nodes."""
        self.routed_in = 0
        """Invites other nodes sent here."""

    @property
    def node_id(self) -> str:
        return self._node

    async def invite(self, serial: str, kind: int, body: bytes, ttl: float) -> InviteOutcome:
        """Push an invite to ``serial`` on whichever node holds it, and wait for the outcome.

        Raises:
            NotOnlineError: no node holds the device, its node is gone, or Redis is unreachable.
        """
        try:
            node = await self._directory.locate(serial)
        except RedisError as exc:
            log.warning("cannot look up device %s in Redis (%s); answering as offline", serial, exc)
            raise NotOnlineError(serial) from None
        if node is None:
            raise NotOnlineError(serial)
        if node == self._node:  # the key names us but the core lost it: a stale key
            raise NotOnlineError(serial)
        request_id = next(self._ids)
        message = {
            "t": "invite",
            "id": request_id,
            "from": self._node,
            "serial": serial,
            "kind": kind,
            "body": base64.b64encode(body).decode("ascii"),
            "ttl": ttl,
        }
        future: asyncio.Future[InviteOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (future, serial)
        try:
            try:
                receivers = await self._redis.publish(node_channel(node), json.dumps(message))
            except RedisError as exc:
                log.warning("cannot route an invite for %s to node %s (%s)", serial, node, exc)
                raise NotOnlineError(serial) from None
            if not receivers:
                log.info("device %s is located at node %s, which is not listening (gone)", serial, node)
                raise NotOnlineError(serial)
            self.routed_out += 1
            log.debug("invite %d (kind %d) for %s routed to node %s", request_id, kind, serial, node)
            try:
                return await asyncio.wait_for(future, ttl + ROUTE_GRACE_S)
            except TimeoutError:
                log.info("node %s sent no outcome for an invite to %s within %.0f s", node, serial, ttl)
                return InviteExpired(request_id, serial)
        finally:
            self._waiting.pop(request_id, None)

    def on_message(self, data: bytes) -> None:
        """A message on this node's channel: serve an invite, or resolve a waiting one. Bad
        messages are logged and dropped."""
        try:
            if len(data) > MAX_MESSAGE:
                raise ValueError(f"{len(data)} bytes")
            message = json.loads(data)
            if not isinstance(message, dict):
                raise ValueError("not an object")
            if message.get("t") == "invite":
                task = asyncio.get_running_loop().create_task(self._serve(message))
                self._serving.add(task)
                task.add_done_callback(self._serving.discard)
            elif message.get("t") == "outcome":
                self._resolve(message)
            else:
                raise ValueError(f"unknown type {message.get('t')!r}")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning("dropped a malformed cluster message on %s (%s)", node_channel(self._node), exc)

    def _resolve(self, message: dict[str, Any]) -> None:
        waiting = self._waiting.get(int(message["id"]))
        if waiting is None or waiting[0].done():
            return
        future, serial = waiting
        result = message["result"]
        if result == "answered":
            body = base64.b64decode(message["body"], validate=True)
            future.set_result(InviteAnswered(int(message["id"]), serial, int(message["status"]), body))
        elif result == "expired":
            future.set_result(InviteExpired(int(message["id"]), serial))
        else:
            future.set_exception(NotOnlineError(serial))

    async def _serve(self, message: dict[str, Any]) -> None:
        try:
            sender = str(message["from"])
            request_id = int(message["id"])
            serial = str(message["serial"])
            body = base64.b64decode(message["body"], validate=True)
            kind = int(message["kind"])
            ttl = min(max(float(message["ttl"]), 0.1), 300.0)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("dropped a malformed routed invite (%s)", exc)
            return
        self.routed_in += 1
        log.debug("invite %d (kind %d) for %s from node %s", request_id, kind, serial, sender)
        reply: dict[str, Any] = {"t": "outcome", "id": request_id}
        try:
            outcome = await asyncio.wait_for(
                self._gateway.invite(serial, kind, body, ttl), ttl + ROUTE_GRACE_S
            )
        except NotOnlineError:
            reply["result"] = "offline"
        except (TimeoutError, ValueError):
            reply["result"] = "expired"
        else:
            if isinstance(outcome, InviteAnswered):
                reply |= {
                    "result": "answered",
                    "status": outcome.status,
                    "body": base64.b64encode(outcome.body).decode("ascii"),
                }
            else:
                reply["result"] = "expired"
        try:
            await self._redis.publish(node_channel(sender), json.dumps(reply))
        except RedisError as exc:
            log.warning(
                "cannot send the outcome of an invite for %s back to node %s (%s)", serial, sender, exc
            )

    async def close(self) -> None:
        """Cancel the invites being served and the ones waiting (at shutdown)."""
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)
        for future, _ in self._waiting.values():
            future.cancel()
        self._waiting.clear()


class ClusterPresence:
    """The API's presence view on a clustered node (``PresenceView``): devices held here answer
    from the local core; others are looked up in Redis and their invites routed."""

    def __init__(self, gateway: PresenceGateway, router: InviteRouter, directory: PresenceDirectory) -> None:
        self._gateway = gateway
        self._router = router
        self._directory = directory

    def presence(self, serial: str) -> PresenceInfo | None:
        """This node's own record of ``serial``."""
        return self._gateway.presence(serial)

    @property
    def online_count(self) -> int:
        """Devices online at this node."""
        return self._gateway.online_count

    def wall_time(self, core_time: float) -> float:
        """Convert a core time stamp to Unix seconds."""
        return self._gateway.wall_time(core_time)

    async def lookup(self, serial: str) -> PresenceInfo | None:
        """``serial``'s presence here, or a record without details if another node holds it."""
        info = self._gateway.presence(serial)
        if info is not None and info.online:
            return info
        try:
            node = await self._directory.locate(serial)
        except RedisError as exc:
            log.warning("cannot look up device %s in Redis (%s); it counts as offline here", serial, exc)
            return info
        if node is None or node == self._router.node_id:
            return info
        return PresenceInfo(serial, True, None, None, None, None)

    async def invite(self, serial: str, kind: int, body: bytes, ttl: float) -> InviteOutcome:
        """Push an invite to ``serial`` here if it is online here, else through its node.

        Raises:
            NotOnlineError: no node holds the device (or it cannot be reached).
            ValueError: ``body`` is too large for an invite.
        """
        info = self._gateway.presence(serial)
        if info is not None and info.online:
            return await self._gateway.invite(serial, kind, body, ttl)
        return await self._router.invite(serial, kind, body, ttl)
