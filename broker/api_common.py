"""What the viewer API's route groups share: error answers, request bodies and their fields,
the error middleware, and ``ApiContext`` (the registry, the presence view, the configuration and
the clock, with the checks every group makes: the caller's token, a known, paired, online device,
an answered invite).

Errors are ``{"error": code, "message": what happened and what to do}`` with an HTTP status.
Request bodies are limited to ``MAX_BODY`` bytes and checked field by field; nothing a client
sends makes a handler raise past the error middleware.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from dvrlink.broker.config import BrokerConfig
from dvrlink.broker.registry import DeviceRecord, RegistryStore, RegistryUnavailableError, TokenProblem
from dvrlink.broker.sms.wake import Waker, WakeState, WakeUnavailable
from dvrlink.protocol.presence_events import InviteAnswered, InviteExpired
from dvrlink.protocol.presence_server import NotOnlineError, PresenceInfo

MAX_BODY = 64 * 1024
INVITE_GRACE_S = 5.0  # extra wait beyond the invite ttl before answering 504 anyway

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PresenceView(Protocol):
    """What the API needs from the presence side (``PresenceGateway`` implements it)."""

    def presence(self, serial: str) -> PresenceInfo | None: ...

    @property
    def online_count(self) -> int: ...

    def wall_time(self, core_time: float) -> float: ...

    async def lookup(self, serial: str) -> PresenceInfo | None:
        """``serial``'s presence wherever it is held (on a cluster, another node may hold it)."""
        ...

    async def invite(
        self, serial: str, kind: int, body: bytes, ttl: float
    ) -> InviteAnswered | InviteExpired: ...


class ApiError(Exception):
    """An error answer: HTTP ``status`` with ``{"error": code, "message": message, **extra}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        extra: Mapping[str, Any] | None = None,
        retry_after: int = 0,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = dict(extra or {})
        self.retry_after = retry_after
        self.close = close
        """Close the connection after the answer (the request was not read to its end)."""

    def response(self) -> web.Response:
        """The JSON response for this error."""
        body = {"error": self.code, "message": self.message, **self.extra}
        headers = {"Cache-Control": "no-store"}
        if self.retry_after:
            headers["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="dvrlink"'
        response = web.json_response(body, status=self.status, headers=headers)
        if self.close:
            response.force_close()
        return response


class ClientGoneError(Exception):
    """The client closed the connection before its request was read: nothing to answer."""


async def json_body(request: web.Request, timeout_s: float) -> dict[str, Any]:
    """The request body as a JSON object, read within ``timeout_s``.

    Raises:
        ApiError: 408 (the body did not arrive in time; the connection is closed), 413, 400.
        ClientGoneError: the client closed the connection before sending its body.
    """
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            413,
            "body_too_large",
            f"the request body is larger than {MAX_BODY} bytes; send only the documented fields",
        ) from None
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"the request body did not arrive within {timeout_s:g} s; send it with the headers",
            close=True,
        ) from None
    except ConnectionError:
        raise ClientGoneError from None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_request", "the request body is not valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the request body must be a JSON object")
    return body


def b64_field(body: Mapping[str, Any], name: str, size: int) -> bytes:
    value = body.get(name)
    if not isinstance(value, str):
        raise ApiError(
            400, "bad_request", f"field {name!r} is missing or not a string; send base64 of {size} bytes"
        )
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", f"field {name!r} is not valid base64") from None
    if len(raw) != size:
        raise ApiError(400, "bad_request", f"field {name!r} must decode to {size} bytes, got {len(raw)}")
    return raw


def str_field(body: Mapping[str, Any], name: str, max_len: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, "bad_request", f"field {name!r} is missing or not a non-empty string")
    if len(value) > max_len:
        raise ApiError(400, "bad_request", f"field {name!r} is longer than {max_len} characters")
    return value


def bool_field(body: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, "bad_request", f"field {name!r} must be true or false")
    return value


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except ClientGoneError:
        # One quiet line: a client that goes away is not the broker's failure. The status (as
        # nginx logs it) is for the access log; nobody is left to read the answer.
        log.info(
            "client %s closed the connection before its request body arrived (%s %s)",
            request.remote,
            request.method,
            request.path,
        )
        return web.Response(status=499, reason="Client Closed Request")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = f"{exc.reason}: {request.method} {request.path}; see /openapi.json for the routes"
        return ApiError(exc.status, code, message).response()
    except RegistryUnavailableError as exc:  # PostgreSQL stopped: the request did nothing
        log.warning("request %s %s: %s", request.method, request.path, exc)
        return ApiError(
            503,
            "registry_unavailable",
            "the broker cannot reach its registry right now; retry in a few seconds",
        ).response()
    except Exception:
        log.exception("request %s %s failed", request.method, request.path)
        return ApiError(
            500, "internal_error", "the broker failed on this request; it is logged, retry later"
        ).response()


class ApiContext:
    """What every route group works with, and the checks they share."""

    def __init__(
        self,
        registry: RegistryStore,
        presence: PresenceView,
        config: BrokerConfig,
        clock: Callable[[], float],
        waker: Waker | None = None,
    ) -> None:
        self.registry = registry
        self.presence = presence
        self.config = config
        self.clock = clock
        """Wall-clock time (unix seconds)."""
        self.waker = waker
        """Wakes devices that sleep by SMS (``[sms_gateway]``), or None."""

    def user(self, request: web.Request) -> str:
        """The account of the request's bearer token.

        Raises:
            ApiError: 401 ``unauthorized`` or ``token_expired``.
        """
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "unauthorized", "send 'Authorization: Bearer <token>'; get a token from POST /v1/tokens"
            )
        found = self.registry.token_user(token.strip(), self.clock())
        if found is TokenProblem.EXPIRED:
            raise ApiError(401, "token_expired", "the token has expired; log in again (POST /v1/tokens)")
        if isinstance(found, TokenProblem):
            raise ApiError(401, "unauthorized", "the token is not valid; log in again (POST /v1/tokens)")
        return found

    def known_device(self, serial: str) -> DeviceRecord:
        """The registry's record of ``serial``.

        Raises:
            ApiError: 404 ``unknown_device``.
        """
        device = self.registry.device(serial)
        if device is None:
            raise ApiError(
                404,
                "unknown_device",
                f"no device {serial!r} has registered with this broker; check the serial and that the "
                "device is configured for this broker",
            )
        return device

    def paired_device(self, user: str, serial: str) -> DeviceRecord:
        """The record of ``serial``, which ``user`` paired (online or not).

        Raises:
            ApiError: 404 ``unknown_device``, 403 ``not_paired``.
        """
        device = self.known_device(serial)
        if self.registry.pairing(user, serial) is None:
            raise ApiError(
                403,
                "not_paired",
                f"device {serial} is not paired to {user!r}; pair it first with the code on its label "
                "(dvrlink pair)",
            )
        return device

    def paired_and_online(self, user: str, serial: str) -> DeviceRecord:
        """The record of ``serial``, which ``user`` paired and which is online now.

        Raises:
            ApiError: 404 ``unknown_device``, 403 ``not_paired``, 409 ``device_offline``.
        """
        device = self.paired_device(user, serial)
        self.require_online(serial)
        return device

    def require_online(self, serial: str) -> None:
        """Check that ``serial`` is online now.

        Raises:
            ApiError: 409 ``device_offline``.
        """
        info = self.presence.presence(serial)
        if info is None or not info.online:
            raise ApiError(
                409,
                "device_offline",
                f"device {serial} is offline; power it and check its network, then retry",
            )

    async def paired_and_reachable(self, user: str, serial: str) -> DeviceRecord:
        """Like :meth:`paired_and_online`, but the device may be online at any node of a cluster.

        Raises:
            ApiError: 404 ``unknown_device``, 403 ``not_paired``, 409 ``device_offline``.
        """
        device = self.paired_device(user, serial)
        await self.require_reachable(serial)
        return device

    async def require_reachable(self, serial: str) -> None:
        """Check that ``serial`` is online now, at this node or (on a cluster) another.

        Raises:
            ApiError: 409 ``device_offline``.
        """
        info = await self.presence.lookup(serial)
        if info is None or not info.online:
            raise ApiError(
                409,
                "device_offline",
                f"device {serial} is offline; power it and check its network, then retry",
            )

    async def reachable_or_woken(self, device: DeviceRecord) -> None:
        """Like :meth:`require_reachable`, but a device that sleeps by SMS is woken first: the
        broker sends the wake SMS (or joins the wake under way) and holds the request until the
        device registers, at most ``wake_hold_s`` (``GET /v1/devices/{serial}/wake`` shows how
        far it got meanwhile).

        Raises:
            ApiError: 409 ``device_offline`` (offline, and it cannot be woken: the message says
                why), 502 ``wake_failed`` (the SMS could not be sent), 504 ``device_not_woken``
                (sent, but the device did not register in time).
        """
        serial = device.serial
        info = await self.presence.lookup(serial)
        if info is not None and info.online:
            return
        if self.waker is None:
            await self.require_reachable(serial)
            return
        try:
            self.waker.wake(device)
        except WakeUnavailable as exc:
            raise ApiError(409, "device_offline", str(exc)) from None
        progress = await self.waker.wait_online(serial)
        if progress.state is WakeState.ONLINE:
            return
        if progress.state is WakeState.FAILED:
            raise ApiError(
                502,
                "wake_failed",
                f"the broker could not send the wake SMS to {serial}: {progress.error}",
                {"wake": progress.as_json(self.clock())},
            )
        raise ApiError(
            504,
            "device_not_woken",
            f"{serial} did not register within {progress.hold_s:.0f} s of its wake SMS: check its signal, "
            "SIM and [presence] mode, then retry (a retry sends another wake)",
            {"wake": progress.as_json(self.clock())},
        )

    async def answered_invite(
        self, serial: str, kind: int, body: bytes, ttl: float, timeout_message: str
    ) -> InviteAnswered:
        """Push an invite and wait for the device's reply.

        Raises:
            ApiError: 409 ``device_offline`` (it went offline meanwhile), 504 ``device_timeout``
                with ``timeout_message`` (no reply within ``ttl``).
        """
        try:
            outcome = await asyncio.wait_for(
                self.presence.invite(serial, kind, body, ttl), ttl + INVITE_GRACE_S
            )
        except NotOnlineError:
            raise ApiError(
                409, "device_offline", f"device {serial} went offline; retry when it is back"
            ) from None
        except TimeoutError:
            outcome = InviteExpired(0, serial)
        if isinstance(outcome, InviteExpired):
            raise ApiError(504, "device_timeout", timeout_message)
        return outcome
