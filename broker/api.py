"""The viewer API (HTTPS/JSON, v1): the route table, accounts and tokens. See ``openapi.py``.

The routes live in three groups: tokens here (with the login limit, ``rate_limit``, and the
password-hashing pool), devices and pairing in ``api_devices``, session signalling in
``api_sessions``; what they share (errors, request bodies, the caller's token, a paired and
online device, invites) is in ``api_common``.

Errors are ``{"error": code, "message": what happened and what to do}`` with an HTTP status.
Request bodies are limited to ``MAX_BODY`` bytes and checked field by field; nothing a client
sends makes a handler raise past the error middleware. Pairing proofs are never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from dvrlink.broker.alarms import AlarmService
from dvrlink.broker.api_common import (
    MAX_BODY,
    ApiContext,
    ApiError,
    PresenceView,
    error_middleware,
    json_body,
    str_field,
)
from dvrlink.broker.api_devices import DeviceRoutes
from dvrlink.broker.api_events import EventRoutes, WebhookRoutes
from dvrlink.broker.api_sessions import RelayDirectory, SessionRoutes
from dvrlink.broker.config import BrokerConfig
from dvrlink.broker.openapi import openapi_document
from dvrlink.broker.rate_limit import (
    FailureLimiter,
    LocalLoginLimiter,
    LoginLimiter,
    PairFailures,
)
from dvrlink.broker.registry import USERNAME_MAX, RegistryStore, verify_password
from dvrlink.broker.sessions import SessionTable, SharedSessionStore
from dvrlink.broker.sms.wake import Waker
from dvrlink.broker.webhooks import WebhookDispatcher

PASSWORD_MAX = 1024
HASHING_CONCURRENCY = 2  # password checks at once, each in the hashing pool (~16 MiB, tens of ms)
HASHING_QUEUE_MAX = 32  # logins that may wait for the pool; more are answered 429 at once

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SharedCounters:
    """What the nodes of a cluster share through Redis instead of counting alone."""

    logins: LoginLimiter
    pair_failures: PairFailures
    sessions: SharedSessionStore


class BrokerApi:
    """The viewer API: request handlers bound to the registry, the presence view and the
    configuration."""

    def __init__(
        self,
        registry: RegistryStore,
        presence: PresenceView,
        config: BrokerConfig,
        clock: Callable[[], float] = time.time,
        relays: RelayDirectory | None = None,
        alarms: AlarmService | None = None,
        webhooks: WebhookDispatcher | None = None,
        shared: SharedCounters | None = None,
        waker: Waker | None = None,
    ) -> None:
        ctx = ApiContext(registry, presence, config, clock, waker)
        self._events = EventRoutes(ctx, alarms) if alarms is not None else None
        self._webhooks = (
            WebhookRoutes(ctx, alarms.store, webhooks)
            if alarms is not None and webhooks is not None
            else None
        )
        self._registry = registry
        self._presence = presence
        self._config = config
        self._clock = clock
        self._devices = DeviceRoutes(ctx, None if shared is None else shared.pair_failures)
        self._sessions = SessionRoutes(ctx, relays, None if shared is None else shared.sessions)
        self._logins: LoginLimiter = (
            LocalLoginLimiter(FailureLimiter(config.login_max_failures, config.login_window_s))
            if shared is None
            else shared.logins
        )
        # Password hashes run in their own small pool: a burst of logins waits for it (or is
        # refused when too many wait) instead of filling the default executor's threads, each
        # of which would keep its own ~16 MiB of scrypt memory.
        self._hashing = concurrent.futures.ThreadPoolExecutor(
            HASHING_CONCURRENCY, thread_name_prefix="password-hash"
        )
        self._hash_waiting = 0

    def close(self) -> None:
        """Stop the hashing pool (after the server stopped taking requests)."""
        self._hashing.shutdown(wait=True, cancel_futures=True)

    def build_app(self) -> web.Application:
        """The aiohttp application with every route of the API."""
        devices, sessions = self._devices, self._sessions
        app = web.Application(client_max_size=MAX_BODY, middlewares=[error_middleware])
        app.router.add_get("/openapi.json", self.openapi, allow_head=False)
        app.router.add_get("/v1/health", self.health, allow_head=False)
        app.router.add_post("/v1/tokens", self.create_token)
        app.router.add_get("/v1/devices", devices.list_devices, allow_head=False)
        app.router.add_get("/v1/devices/{serial}", devices.get_device, allow_head=False)
        app.router.add_get("/v1/devices/{serial}/identity", devices.device_identity, allow_head=False)
        app.router.add_post("/v1/devices/{serial}/pairings", devices.pair_device)
        app.router.add_delete("/v1/devices/{serial}/pairings", devices.unpair_device)
        app.router.add_post("/v1/devices/{serial}/ping", devices.ping_device)
        app.router.add_get("/v1/devices/{serial}/wake", devices.wake_status, allow_head=False)
        app.router.add_put("/v1/devices/{serial}/name", devices.name_device)
        if self._events is not None:
            events = self._events
            app.router.add_get("/v1/devices/{serial}/events", events.list_events, allow_head=False)
            app.router.add_get("/v1/devices/{serial}/events/stream", events.stream_events, allow_head=False)
            app.router.add_get(
                "/v1/devices/{serial}/events/{event_id}/snapshot", events.event_snapshot, allow_head=False
            )
        if self._webhooks is not None:
            app.router.add_put("/v1/webhook", self._webhooks.put_webhook)
            app.router.add_get("/v1/webhook", self._webhooks.get_webhook, allow_head=False)
            app.router.add_delete("/v1/webhook", self._webhooks.delete_webhook)
        app.router.add_get("/v1/relays", sessions.list_relays, allow_head=False)
        app.router.add_post("/v1/sessions", sessions.create_session)
        app.router.add_get("/v1/sessions", sessions.list_sessions, allow_head=False)
        app.router.add_delete("/v1/sessions/{session_id}", sessions.end_session)
        app.router.add_patch("/v1/sessions/{session_id}", sessions.report_path)
        app.router.add_post("/v1/sessions/{session_id}/offer", sessions.offer_session)
        app.router.add_post("/v1/sessions/{session_id}/candidates", sessions.trickle_candidates)
        return app

    async def openapi(self, request: web.Request) -> web.Response:
        """GET /openapi.json."""
        return web.json_response(openapi_document())

    async def health(self, request: web.Request) -> web.Response:
        """GET /v1/health."""
        return web.json_response({"status": "ok", "online": self._presence.online_count})

    async def check_login(self, username: str, password: str, remote: str) -> None:
        """Check a password under the login limit (per username and client address), in the
        hashing pool. The API's tokens and the dashboard's logins share the limit.

        Raises:
            ApiError: 429 ``rate_limited`` or ``busy`` (with Retry-After), 401 ``bad_credentials``.
        """
        key = (username, remote)
        wait = await self._logins.begin(key, self._clock())  # counted as a failure until it succeeds
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"too many failed logins for {username!r} from this address; wait {wait:.0f} s",
                retry_after=int(wait) + 1,
            )
        if self._hash_waiting >= HASHING_QUEUE_MAX:
            await self._logins.undo(key)
            raise ApiError(
                429,
                "busy",
                "the broker is checking too many logins at once; retry in a second",
                retry_after=1,
            )
        record = self._registry.password_record(username)
        self._hash_waiting += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._hashing, verify_password, record, password
            )
        finally:
            self._hash_waiting -= 1
        if not ok:
            log.info("login failed for %r from %s", username, remote)
            raise ApiError(401, "bad_credentials", "wrong username or password")
        await self._logins.succeeded(key)

    @property
    def sessions(self) -> SessionTable:
        """The signalled sessions (read by the dashboard)."""
        return self._sessions.table

    async def create_token(self, request: web.Request) -> web.Response:
        """POST /v1/tokens: log in."""
        body = await json_body(request, self._config.http_body_timeout_s)
        username = str_field(body, "username", USERNAME_MAX * 4)
        password = str_field(body, "password", PASSWORD_MAX)
        await self.check_login(username, password, request.remote or "")
        now = self._clock()
        lifetime = self._config.token_lifetime_s
        token = self._registry.issue_token(username, now, lifetime)
        return web.json_response(
            {"token": token, "expires_at": round(now + lifetime, 3), "username": username},
            headers={"Cache-Control": "no-store"},
        )
