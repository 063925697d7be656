"""The viewer API's alarm routes: a device's alarm history, a Server-Sent Events stream of its
new alarms, and an alarm's snapshot. Only accounts paired with the device may read them.
Routes are registered by ``BrokerApi.build_app``; see ``openapi.py``.

The stream (``GET /v1/devices/{serial}/events/stream``) sends a comment line ``: following``
once the subscription is live, then one SSE message per alarm::

    id: 42
    event: alarm
    data: {"id": 42, "serial": "DL-...", "seq": 7, "time": 1780000000.123, "kind": "SignalLost", ...}

and a ``: keepalive`` comment every ``HEARTBEAT_S`` seconds. With ``?after=ID`` (or the
``Last-Event-ID`` header a reconnecting EventSource sends) it first sends the stored alarms
after that id, so a follower that reconnects misses nothing the history still holds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets

from aiohttp import web

from dvrlink.broker.alarm_store import AlarmStore, StoredAlarm
from dvrlink.broker.alarms import AlarmService
from dvrlink.broker.api_common import ApiContext, ApiError, json_body, str_field
from dvrlink.broker.webhooks import MAX_URL, WebhookDispatcher, WebhookRefusedError

HEARTBEAT_S = 15.0
PAGE = 500
MAX_LIMIT = 1000

log = logging.getLogger(__name__)


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter in [low, high].

    Raises:
        ApiError: 400 ``bad_request`` naming the parameter and its range.
    """
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, "bad_request", f"query parameter {name!r} must be an integer in {low}..{high}")
    return value


def sse_message(alarm: StoredAlarm) -> bytes:
    """One alarm as an SSE message."""
    data = json.dumps(alarm.to_json(), separators=(",", ":"))
    return f"id: {alarm.id}\nevent: alarm\ndata: {data}\n\n".encode()


class EventRoutes:
    """GET /v1/devices/{serial}/events, .../events/stream and .../events/{id}/snapshot."""

    def __init__(self, ctx: ApiContext, service: AlarmService, heartbeat_s: float = HEARTBEAT_S) -> None:
        self._ctx = ctx
        self._service = service
        self._store = service.store
        self._heartbeat = heartbeat_s

    def _paired(self, request: web.Request) -> str:
        """The serial of the route, which the caller paired.

        Raises:
            ApiError: 401 (token), 404 ``unknown_device``, 403 ``not_paired``.
        """
        user = self._ctx.user(request)
        serial = request.match_info["serial"]
        self._ctx.known_device(serial)
        if self._ctx.registry.pairing(user, serial) is None:
            raise ApiError(403, "not_paired", f"device {serial} is not paired to {user!r}; pair it first")
        return serial

    async def list_events(self, request: web.Request) -> web.Response:
        """GET /v1/devices/{serial}/events[?after=ID][&limit=N]: stored alarms, oldest first;
        without ``after``, the last ``limit`` (default 100)."""
        serial = self._paired(request)
        after = _int_param(request, "after", None, 0, 2**62)
        limit = _int_param(request, "limit", 100, 1, MAX_LIMIT)
        assert limit is not None
        if after is None:
            alarms = self._store.latest(serial, limit)
        else:
            alarms = self._store.history(serial, after, limit)
        last = alarms[-1].id if alarms else after
        return web.json_response(
            {"serial": serial, "events": [a.to_json() for a in alarms], "last_id": last},
            headers={"Cache-Control": "no-store"},
        )

    async def event_snapshot(self, request: web.Request) -> web.Response:
        """GET /v1/devices/{serial}/events/{event_id}/snapshot: the alarm's JPEG."""
        serial = self._paired(request)
        try:
            alarm_id = int(request.match_info["event_id"])
        except ValueError:
            raise ApiError(400, "bad_request", "the event id must be an integer") from None
        jpeg = self._store.snapshot(serial, alarm_id)
        if jpeg is None:
            raise ApiError(
                404, "no_snapshot", f"alarm {alarm_id} of {serial} has no snapshot, or is no longer kept"
            )
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/devices/{serial}/events/stream[?after=ID]: Server-Sent Events (see the module
        docstring)."""
        serial = self._paired(request)
        after = _int_param(request, "after", None, 0, 2**62)
        header = request.headers.get("Last-Event-ID", "").strip()
        if after is None and header:
            after = int(header) if header.isdigit() else None
        subscription = self._service.subscribe(serial)  # before the history: nothing falls between
        try:
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-store",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            await response.write(b"retry: 2000\n: following\n\n")
            last = after
            while after is not None:
                page = self._store.history(serial, after, PAGE)
                for alarm in page:
                    await response.write(sse_message(alarm))
                    last = alarm.id
                if len(page) < PAGE:
                    break
                after = page[-1].id
            while True:
                try:
                    item = await asyncio.wait_for(subscription.queue.get(), self._heartbeat)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if item is None:
                    break
                if last is not None and item.id <= last:
                    continue
                await response.write(sse_message(item))
                last = item.id
        except (ConnectionResetError, ConnectionError):
            log.debug("alarm follower of %s went away", serial)
        finally:
            self._service.unsubscribe(subscription)
        return response


class WebhookRoutes:
    """PUT, GET and DELETE /v1/webhook: the caller's alarm webhook (see ``webhooks.py``)."""

    def __init__(self, ctx: ApiContext, store: AlarmStore, dispatcher: WebhookDispatcher) -> None:
        self._ctx = ctx
        self._store = store
        self._dispatcher = dispatcher

    async def put_webhook(self, request: web.Request) -> web.Response:
        """PUT /v1/webhook ``{"url": ...}``: set the webhook; answers its new signing secret once."""
        user = self._ctx.user(request)
        body = await json_body(request, self._ctx.config.http_body_timeout_s)
        url = str_field(body, "url", MAX_URL)
        policy = self._dispatcher.policy
        try:
            await policy.check_resolved(policy.check_url(url))
        except WebhookRefusedError as exc:
            raise ApiError(400, "webhook_refused", str(exc)) from None
        secret = secrets.token_bytes(32)
        now = self._ctx.clock()
        self._store.set_webhook(user, url, secret, now)
        self._dispatcher.webhook_changed(user)
        log.info("%s set its alarm webhook to %s", user, url)
        return web.json_response(
            {"url": url, "secret": base64.b64encode(secret).decode("ascii"), "created_at": round(now, 3)},
            headers={"Cache-Control": "no-store"},
        )

    async def get_webhook(self, request: web.Request) -> web.Response:
        """GET /v1/webhook: the caller's webhook (not its secret)."""
        user = self._ctx.user(request)
        webhook = self._store.webhook(user)
        if webhook is None:
            raise ApiError(404, "no_webhook", f"{user!r} has no webhook; set one with PUT /v1/webhook")
        return web.json_response({"url": webhook.url, "created_at": round(webhook.created_at, 3)})

    async def delete_webhook(self, request: web.Request) -> web.Response:
        """DELETE /v1/webhook: remove it, and the deliveries still waiting for it."""
        user = self._ctx.user(request)
        if not self._store.delete_webhook(user):
            raise ApiError(404, "no_webhook", f"{user!r} has no webhook")
        self._dispatcher.webhook_changed(user)
        return web.json_response({"deleted": True})
