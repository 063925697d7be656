"""The viewer API (HTTPS/JSON, v1): tokens, devices, identities, pairing, session signalling.
See ``openapi.py``.

Errors are ``{"error": code, "message": what happened and what to do}`` with an HTTP status.
Request bodies are limited to ``MAX_BODY`` bytes and checked field by field; nothing a client
sends makes a handler raise past the error middleware. Pairing proofs are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aioice.candidate import Candidate

from dvrlink.broker.config import BrokerConfig, ExternalTurnServer
from dvrlink.broker.openapi import openapi_document
from dvrlink.broker.registry import (
    USERNAME_MAX,
    DeviceRecord,
    PairingRecord,
    Registry,
    TokenProblem,
    format_address,
    verify_password,
)
from dvrlink.broker.sessions import (
    MAX_UPDATES,
    SessionRecord,
    SessionState,
    SessionTable,
    TooManySessionsError,
)
from dvrlink.broker.turn_credentials import make_credentials
from dvrlink.protocol.identity import ed25519_verify, fingerprint
from dvrlink.protocol.pairing import MAC_SIZE, NONCE_SIZE, PairRequest, PairResult, PairStatus, result_message
from dvrlink.protocol.presence_events import InviteAnswered, InviteExpired
from dvrlink.protocol.presence_server import NotOnlineError, PresenceInfo
from dvrlink.protocol.presence_wire import INVITE_KIND_PAIR, INVITE_KIND_PING, INVITE_OK
from dvrlink.protocol.signalling import (
    INVITE_GONE,
    INVITE_KIND_CANDIDATES,
    INVITE_KIND_SESSION,
    SESSION_ID_SIZE,
    AnswerStatus,
    CandidateUpdate,
    PathPolicy,
    SessionAnswer,
    SessionOffer,
)
from dvrlink.protocol.signalling import TurnServer as TurnGrant

MAX_BODY = 64 * 1024
PASSWORD_MAX = 1024
HASHING_CONCURRENCY = 2  # password checks at once, each in the hashing pool (~16 MiB, tens of ms)
HASHING_QUEUE_MAX = 32  # logins that may wait for the pool; more are answered 429 at once
INVITE_GRACE_S = 5.0  # extra wait beyond the invite ttl before answering 504 anyway
LIMITER_MAX_KEYS = 100_000
ICE_UFRAG_LEN = (4, 256)  # RFC 8445 section 5.3, in ice-chars
ICE_PWD_LEN = (22, 256)
MAX_CANDIDATES = 32
MAX_CANDIDATE_BYTES = 255
POLICIES = {"all": PathPolicy.ALL, "relay_only": PathPolicy.RELAY_ONLY, "direct_only": PathPolicy.DIRECT_ONLY}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PresenceView(Protocol):
    """What the API needs from the presence side (``PresenceGateway`` implements it)."""

    def presence(self, serial: str) -> PresenceInfo | None: ...

    @property
    def online_count(self) -> int: ...

    def wall_time(self, core_time: float) -> float: ...

    async def invite(
        self, serial: str, kind: int, body: bytes, ttl: float
    ) -> InviteAnswered | InviteExpired: ...


@dataclass(frozen=True, slots=True)
class RelayDirectory:
    """The STUN and TURN servers the API hands to both ends of a session, and the REST secret
    their credentials are made with."""

    secret: str
    """TURN REST secret (shared with the built-in relay or a coturn fleet)."""
    credential_ttl_s: float
    """Seconds handed-out credentials stay valid."""
    turn: tuple[ExternalTurnServer, ...] = ()
    """TURN servers, built-in first."""
    stun: tuple[str, int] | None = None
    """(host, port) of the broker's STUN responder."""

    def grants(self, name: str, now: float) -> tuple[TurnGrant, ...]:
        """Every TURN server with credentials for ``name`` (an account or a serial) from ``now``.

        Raises:
            ValueError: ``name`` makes a username too long for TURN.
        """
        username, password = make_credentials(self.secret, name, now, self.credential_ttl_s)
        return tuple(TurnGrant(t.host, t.port, t.transport, username, password) for t in self.turn)


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


class FailureLimiter:
    """Sliding-window failure counter per key (e.g. (username, client address)); in memory."""

    def __init__(self, max_failures: int, window_s: float, max_keys: int = LIMITER_MAX_KEYS) -> None:
        self._max = max_failures
        self._window = window_s
        self._max_keys = max_keys
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def retry_after(self, key: tuple[str, str], now: float) -> float:
        """Seconds until ``key`` may try again; 0 if it may try now."""
        times = self._failures.get(key)
        if times is None:
            return 0.0
        while times and now - times[0] >= self._window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < self._max:
            return 0.0
        return times[0] + self._window - now

    def begin(self, key: tuple[str, str], now: float) -> float:
        """Start an attempt of ``key``: 0 if it may go on, counted as a failure until
        :meth:`succeeded` forgets it; else the seconds until it may try (nothing is counted).

        Counting before the work (a password hash) means concurrent attempts cannot get past
        the limit: in one event loop, this check and the count are one step.
        """
        wait = self.retry_after(key, now)
        if wait <= 0:
            self.failed(key, now)
        return wait

    def failed(self, key: tuple[str, str], now: float) -> None:
        """Count a failure of ``key`` at ``now``."""
        if key not in self._failures and len(self._failures) >= self._max_keys:
            self._prune(now)
        self._failures.setdefault(key, deque(maxlen=self._max)).append(now)

    def undo(self, key: tuple[str, str]) -> None:
        """Take back the newest count of ``key`` (an attempt :meth:`begin` counted that was not made)."""
        times = self._failures.get(key)
        if times:
            times.pop()
            if not times:
                del self._failures[key]

    def succeeded(self, key: tuple[str, str]) -> None:
        """Forget the failures of ``key``."""
        self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        stale = [k for k, t in self._failures.items() if not t or now - t[-1] >= self._window]
        for k in stale:
            del self._failures[k]
        while len(self._failures) >= self._max_keys:  # still full: forget the oldest keys
            del self._failures[next(iter(self._failures))]


def _b64_field(body: Mapping[str, Any], name: str, size: int) -> bytes:
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


def _str_field(body: Mapping[str, Any], name: str, max_len: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, "bad_request", f"field {name!r} is missing or not a non-empty string")
    if len(value) > max_len:
        raise ApiError(400, "bad_request", f"field {name!r} is longer than {max_len} characters")
    return value


class ClientGoneError(Exception):
    """The client closed the connection before its request was read: nothing to answer."""


async def _json_body(request: web.Request, timeout_s: float) -> dict[str, Any]:
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


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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
    except Exception:
        log.exception("request %s %s failed", request.method, request.path)
        return ApiError(
            500, "internal_error", "the broker failed on this request; it is logged, retry later"
        ).response()


class BrokerApi:
    """Request handlers bound to the registry, the presence view and the configuration."""

    def __init__(
        self,
        registry: Registry,
        presence: PresenceView,
        config: BrokerConfig,
        clock: Callable[[], float] = time.time,
        relays: RelayDirectory | None = None,
    ) -> None:
        self._registry = registry
        self._presence = presence
        self._config = config
        self._clock = clock
        self._relays = relays
        self._sessions = SessionTable(config.session_ttl_s, config.session_max_per_account)
        self._logins = FailureLimiter(config.login_max_failures, config.login_window_s)
        # Password hashes run in their own small pool: a burst of logins waits for it (or is
        # refused when too many wait) instead of filling the default executor's threads, each
        # of which would keep its own ~16 MiB of scrypt memory.
        self._hashing = concurrent.futures.ThreadPoolExecutor(
            HASHING_CONCURRENCY, thread_name_prefix="password-hash"
        )
        self._hash_waiting = 0
        self._pairing_in_flight: set[str] = set()

    def close(self) -> None:
        """Stop the hashing pool (after the server stopped taking requests)."""
        self._hashing.shutdown(wait=True, cancel_futures=True)

    def build_app(self) -> web.Application:
        """The aiohttp application with every route of the API."""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_error_middleware])
        app.router.add_get("/openapi.json", self.openapi, allow_head=False)
        app.router.add_get("/v1/health", self.health, allow_head=False)
        app.router.add_post("/v1/tokens", self.create_token)
        app.router.add_get("/v1/devices", self.list_devices, allow_head=False)
        app.router.add_get("/v1/devices/{serial}", self.get_device, allow_head=False)
        app.router.add_get("/v1/devices/{serial}/identity", self.device_identity, allow_head=False)
        app.router.add_post("/v1/devices/{serial}/pairings", self.pair_device)
        app.router.add_delete("/v1/devices/{serial}/pairings", self.unpair_device)
        app.router.add_post("/v1/devices/{serial}/ping", self.ping_device)
        app.router.add_post("/v1/sessions", self.create_session)
        app.router.add_get("/v1/sessions", self.list_sessions, allow_head=False)
        app.router.add_post("/v1/sessions/{session_id}/offer", self.offer_session)
        app.router.add_post("/v1/sessions/{session_id}/candidates", self.trickle_candidates)
        return app

    # -- helpers ---------------------------------------------------------------------------------

    def _user(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "unauthorized", "send 'Authorization: Bearer <token>'; get a token from POST /v1/tokens"
            )
        found = self._registry.token_user(token.strip(), self._clock())
        if found is TokenProblem.EXPIRED:
            raise ApiError(401, "token_expired", "the token has expired; log in again (POST /v1/tokens)")
        if isinstance(found, TokenProblem):
            raise ApiError(401, "unauthorized", "the token is not valid; log in again (POST /v1/tokens)")
        return found

    def _known_device(self, serial: str) -> DeviceRecord:
        device = self._registry.device(serial)
        if device is None:
            raise ApiError(
                404,
                "unknown_device",
                f"no device {serial!r} has registered with this broker; check the serial and that the "
                "device is configured for this broker",
            )
        return device

    def _paired_and_online(self, user: str, serial: str) -> DeviceRecord:
        device = self._known_device(serial)
        if self._registry.pairing(user, serial) is None:
            raise ApiError(
                403,
                "not_paired",
                f"device {serial} is not paired to {user!r}; pair it first with the code on its label "
                "(dvrlink pair)",
            )
        info = self._presence.presence(serial)
        if info is None or not info.online:
            raise ApiError(
                409,
                "device_offline",
                f"device {serial} is offline; power it and check its network, then retry",
            )
        return device

    def _session_json(self, record: SessionRecord) -> dict[str, Any]:
        return {
            "session_id": record.session_id.hex(),
            "serial": record.serial,
            "policy": POLICY_NAMES[record.policy],
            "state": record.state.value,
            "created_at": round(record.created_at, 3),
            "expires_at": round(record.expires_at, 3),
        }

    def _device_json(self, device: DeviceRecord, pairing: PairingRecord) -> dict[str, Any]:
        info = self._presence.presence(device.serial)
        online = info is not None and info.online
        if info is not None:
            last_seen = None if info.last_seen is None else round(self._presence.wall_time(info.last_seen), 3)
            registered_at = (
                None if info.registered_at is None else round(self._presence.wall_time(info.registered_at), 3)
            )
            address = None if info.address is None else format_address(info.address)
        else:  # not seen since the broker started: what the registry remembers
            last_seen = registered_at = device.last_registered_at
            address = device.last_address
        return {
            "serial": device.serial,
            "online": online,
            "last_seen": last_seen,
            "reflexive_address": address,
            "registered_at": registered_at,
            "keepalive_interval": info.keepalive_interval if info is not None and online else None,
            "fingerprint": fingerprint(device.public_key),
            "paired_at": pairing.paired_at,
            "report": device.report,
            "reported_at": device.reported_at,
        }

    # -- handlers --------------------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.Response:
        """GET /openapi.json."""
        return web.json_response(openapi_document())

    async def health(self, request: web.Request) -> web.Response:
        """GET /v1/health."""
        return web.json_response({"status": "ok", "online": self._presence.online_count})

    async def create_token(self, request: web.Request) -> web.Response:
        """POST /v1/tokens: log in."""
        body = await _json_body(request, self._config.http_body_timeout_s)
        username = _str_field(body, "username", USERNAME_MAX * 4)
        password = _str_field(body, "password", PASSWORD_MAX)
        key = (username, request.remote or "")
        wait = self._logins.begin(key, self._clock())  # counted as a failure until it succeeds
        if wait > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"too many failed logins for {username!r} from this address; wait {wait:.0f} s",
                retry_after=int(wait) + 1,
            )
        if self._hash_waiting >= HASHING_QUEUE_MAX:
            self._logins.undo(key)
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
        now = self._clock()
        if not ok:
            log.info("login failed for %r from %s", username, request.remote)
            raise ApiError(401, "bad_credentials", "wrong username or password")
        self._logins.succeeded(key)
        lifetime = self._config.token_lifetime_s
        token = self._registry.issue_token(username, now, lifetime)
        return web.json_response(
            {"token": token, "expires_at": round(now + lifetime, 3), "username": username},
            headers={"Cache-Control": "no-store"},
        )

    async def list_devices(self, request: web.Request) -> web.Response:
        """GET /v1/devices: devices paired to the caller."""
        user = self._user(request)
        devices = []
        for pairing in self._registry.pairings_for(user):
            device = self._registry.device(pairing.serial)
            if device is not None:
                devices.append(self._device_json(device, pairing))
        return web.json_response({"devices": devices})

    async def get_device(self, request: web.Request) -> web.Response:
        """GET /v1/devices/{serial}."""
        user = self._user(request)
        serial = request.match_info["serial"]
        device = self._known_device(serial)
        pairing = self._registry.pairing(user, serial)
        if pairing is None:
            raise ApiError(403, "not_paired", f"device {serial} is not paired to {user!r}; pair it first")
        return web.json_response(self._device_json(device, pairing))

    async def device_identity(self, request: web.Request) -> web.Response:
        """GET /v1/devices/{serial}/identity: the key to check before pairing."""
        self._user(request)
        device = self._known_device(request.match_info["serial"])
        info = self._presence.presence(device.serial)
        return web.json_response(
            {
                "serial": device.serial,
                "public_key": base64.b64encode(device.public_key).decode("ascii"),
                "fingerprint": fingerprint(device.public_key),
                "online": info is not None and info.online,
            }
        )

    async def ping_device(self, request: web.Request) -> web.Response:
        """POST /v1/devices/{serial}/ping: an empty invite the device answers at once, proof that
        it can be reached now (no session, no relay); returns the round trip in ms."""
        user = self._user(request)
        serial = request.match_info["serial"]
        self._known_device(serial)
        if self._registry.pairing(user, serial) is None:
            raise ApiError(403, "not_paired", f"device {serial} is not paired to {user!r}; pair it first")
        info = self._presence.presence(serial)
        if info is None or not info.online:
            raise ApiError(
                409, "device_offline", f"device {serial} is offline; power it and check its network"
            )
        ttl = self._config.invite_ttl_s
        started = time.monotonic()
        outcome = await self._answered_invite(
            serial,
            INVITE_KIND_PING,
            b"",
            ttl,
            f"device {serial} is registered but did not answer within {ttl:.0f} s: its NAT may have "
            "dropped the mapping; it is reachable again after its next keepalive",
        )
        if outcome.status != INVITE_OK:
            raise ApiError(502, "device_error", f"device {serial} cannot answer pings; update its dvrlinkd")
        rtt_ms = round((time.monotonic() - started) * 1000, 1)
        return web.json_response({"serial": serial, "rtt_ms": rtt_ms}, headers={"Cache-Control": "no-store"})

    async def unpair_device(self, request: web.Request) -> web.Response:
        """DELETE /v1/devices/{serial}/pairings: forget the caller's pairing of the device (the
        device's own list of viewers is the viewer's to change, over a session)."""
        user = self._user(request)
        serial = request.match_info["serial"]
        device = self._known_device(serial)
        if not self._registry.remove_pairing(user, device.serial):
            raise ApiError(403, "not_paired", f"device {serial} is not paired to {user!r}")
        log.info("%s unpaired %s", user, device.serial)
        return web.json_response({"serial": device.serial, "unpaired": True})

    async def pair_device(self, request: web.Request) -> web.Response:
        """POST /v1/devices/{serial}/pairings: relay a pairing proof to the device."""
        user = self._user(request)
        serial = request.match_info["serial"]
        body = await _json_body(request, self._config.http_body_timeout_s)
        viewer_key = _b64_field(body, "viewer_public_key", 32)
        nonce = _b64_field(body, "nonce", NONCE_SIZE)
        proof = _b64_field(body, "proof", MAC_SIZE)
        device = self._known_device(serial)
        info = self._presence.presence(serial)
        if info is None or not info.online:
            raise ApiError(
                409,
                "device_offline",
                f"device {serial} is offline; power it and check its network, then retry",
            )
        now = self._clock()
        window = self._config.pairing_window_s
        self._check_pairing_limits(user, serial, now)
        if serial in self._pairing_in_flight:
            raise ApiError(
                429,
                "rate_limited",
                f"another pairing attempt for {serial} is in progress; retry in a few seconds",
                retry_after=int(self._config.invite_ttl_s),
            )
        request_body = PairRequest(viewer_key, nonce, proof, account=user).encode()
        ttl = self._config.invite_ttl_s
        self._pairing_in_flight.add(serial)
        try:
            outcome = await self._answered_invite(
                serial,
                INVITE_KIND_PAIR,
                request_body,
                ttl,
                f"device {serial} did not answer within {ttl:.0f} s; check its network and retry",
            )
        finally:
            self._pairing_in_flight.discard(serial)
        result = self._check_result(device, outcome, viewer_key, nonce)
        result_b64 = base64.b64encode(outcome.body).decode("ascii")
        extra = {"result": result_b64}
        log.info("pairing of %s for %r: %s", serial, user, result.status.name)
        if result.status is PairStatus.PAIRED:
            self._registry.record_pairing(user, serial, viewer_key, self._clock())
            return web.json_response({"status": "paired", "result": result_b64})
        if result.status is PairStatus.WRONG_CODE:
            self._registry.record_pair_failure(serial, self._clock(), user)
            raise ApiError(
                403, "wrong_code", "the device says the pairing code is wrong; check it and retry", extra
            )
        if result.status is PairStatus.RATE_LIMITED:
            raise ApiError(
                429,
                "rate_limited",
                "the device refuses pairing for now after too many wrong codes; wait and retry",
                extra,
                retry_after=int(window),
            )
        raise ApiError(400, "bad_request", "the device found the pairing request malformed", extra)

    def _check_pairing_limits(self, user: str, serial: str, now: float) -> None:
        """Refuse a pairing attempt over the limits on wrong codes: per account and device, so one
        account cannot spend the owner's tries (nor reach the device's own limit); and the slower
        cap per device over all accounts, which bounds guessing with many accounts. They live
        here, in the cloud API: pairing over the device's serial console is not subject to them.

        Raises:
            ApiError: 429 ``rate_limited`` with Retry-After.
        """
        window = self._config.pairing_window_s
        mine = self._registry.pair_failures_since(serial, now - window, user)
        if mine >= self._config.pairing_max_failures:
            raise ApiError(
                429,
                "rate_limited",
                f"too many wrong pairing codes from {user!r} for {serial} in the last {window:.0f} s; wait, "
                "then check the code on the device's label",
                retry_after=int(window),
            )
        device_window = self._config.pairing_device_window_s
        device_max = self._config.pairing_device_max_failures
        if self._registry.pair_failures_since(serial, now - device_window) >= device_max:
            raise ApiError(
                429,
                "rate_limited",
                f"{serial} had {device_max} wrong pairing codes from all accounts in the last "
                f"{device_window:.0f} s, so the broker stops forwarding attempts for a while; wait, or pair "
                "over the device's serial console",
                retry_after=int(device_window),
            )

    def _check_result(
        self, device: DeviceRecord, answer: InviteAnswered, viewer_key: bytes, nonce: bytes
    ) -> PairResult:
        serial = device.serial
        if answer.status != INVITE_OK:
            raise ApiError(
                502,
                "device_error",
                f"device {serial} cannot handle pairing (invite status {answer.status}); update it",
            )
        try:
            result = PairResult.decode(answer.body)
        except ValueError:
            raise ApiError(502, "device_error", f"device {serial} sent a malformed pairing result") from None
        signed = result_message(serial, viewer_key, nonce, result.status)
        if result.device_key != device.public_key or not ed25519_verify(
            result.device_key, result.signature, signed
        ):
            log.warning("device %s sent a pairing result not signed by its bound key", serial)
            raise ApiError(
                502, "device_error", f"device {serial} sent a pairing result not signed by its key"
            )
        return result

    # -- sessions --------------------------------------------------------------------------------

    async def create_session(self, request: web.Request) -> web.Response:
        """POST /v1/sessions: start a session with a paired, online device; hands out TURN
        credentials for the viewer."""
        user = self._user(request)
        body = await _json_body(request, self._config.http_body_timeout_s)
        serial = _str_field(body, "serial", 64)
        policy_name = body.get("policy", "all")
        if policy_name not in POLICIES:
            raise ApiError(
                400, "bad_request", f"field 'policy' is {policy_name!r}; use one of {', '.join(POLICIES)}"
            )
        self._paired_and_online(user, serial)
        now = self._clock()
        self._sessions.prune(now)
        try:
            record = self._sessions.create(user, serial, POLICIES[policy_name], now)
        except TooManySessionsError:
            limit = self._config.session_max_per_account
            raise ApiError(
                429,
                "too_many_sessions",
                f"{user!r} already has {limit} sessions; close one or wait until the oldest expires "
                "(GET /v1/sessions)",
                retry_after=60,
            ) from None
        turn, expires = self._turn_json(user, now)
        stun = self._relays.stun if self._relays is not None else None
        log.info("session %s: %r asked for %s (%s)", record.session_id.hex(), user, serial, policy_name)
        return web.json_response(
            {
                **self._session_json(record),
                "turn": turn,
                "turn_expires_at": expires,
                "stun": None if stun is None else {"host": stun[0], "port": stun[1]},
            },
            status=201,
            headers={"Cache-Control": "no-store"},
        )

    async def list_sessions(self, request: web.Request) -> web.Response:
        """GET /v1/sessions: the caller's live sessions."""
        user = self._user(request)
        records = self._sessions.for_account(user, self._clock())
        return web.json_response({"sessions": [self._session_json(r) for r in records]})

    async def offer_session(self, request: web.Request) -> web.Response:
        """POST /v1/sessions/{session_id}/offer: push the viewer's ICE offer to the device and
        return its answer."""
        user = self._user(request)
        record = self._own_session(user, request.match_info["session_id"])
        body = await _json_body(request, self._config.http_body_timeout_s)
        ufrag = _ice_field(body, "ice_ufrag", *ICE_UFRAG_LEN)
        pwd = _ice_field(body, "ice_pwd", *ICE_PWD_LEN)
        candidates = _candidates_field(body)
        viewer_key = _b64_field(body, "viewer_public_key", 32)
        end = _bool_field(body, "end_of_candidates", default=True)
        if record.state is not SessionState.CREATED:
            raise ApiError(
                409,
                "session_used",
                f"session {record.session_id.hex()} already has an offer ({record.state.value}); "
                "create a new session (POST /v1/sessions)",
            )
        serial = record.serial
        self._paired_and_online(user, serial)
        now = self._clock()
        turn = self._relays.grants(serial, now) if self._relays is not None else ()
        offer = SessionOffer(
            record.session_id, viewer_key, record.policy, ufrag, pwd, candidates, turn, end_of_candidates=end
        )
        try:
            offer_body = offer.encode()
        except ValueError:
            raise ApiError(
                400,
                "offer_too_large",
                f"the offer does not fit a device invite with {len(candidates)} candidates; send fewer "
                "(relay and server-reflexive first)",
            ) from None
        record.move(SessionState.OFFERED)
        ttl = self._config.session_answer_timeout_s
        try:
            outcome = await asyncio.wait_for(
                self._presence.invite(serial, INVITE_KIND_SESSION, offer_body, ttl), ttl + INVITE_GRACE_S
            )
        except NotOnlineError:
            record.move(SessionState.FAILED)
            raise ApiError(
                409, "device_offline", f"device {serial} went offline; retry when it is back"
            ) from None
        except TimeoutError:
            outcome = InviteExpired(0, serial)
        except BaseException:
            record.move(SessionState.FAILED)
            raise
        try:
            answer = self._session_answer(serial, outcome, ttl)
        except ApiError:
            record.move(SessionState.FAILED)
            raise
        record.move(SessionState.ANSWERED)
        log.info(
            "session %s: %s accepted with %d candidates",
            record.session_id.hex(),
            serial,
            len(answer.candidates),
        )
        return web.json_response(
            {
                "status": "accepted",
                "session_id": record.session_id.hex(),
                "ice_ufrag": answer.ice_ufrag,
                "ice_pwd": answer.ice_pwd,
                "candidates": list(answer.candidates),
                "end_of_candidates": answer.end_of_candidates,
            },
            headers={"Cache-Control": "no-store"},
        )

    async def trickle_candidates(self, request: web.Request) -> web.Response:
        """POST /v1/sessions/{session_id}/candidates: pass the viewer's new candidates to the device
        (invite kind ``INVITE_KIND_CANDIDATES``) and return the device's new ones."""
        user = self._user(request)
        record = self._own_session(user, request.match_info["session_id"])
        body = await _json_body(request, self._config.http_body_timeout_s)
        candidates = _candidates_field(body)
        end = _bool_field(body, "end_of_candidates", default=False)
        session_hex = record.session_id.hex()
        if record.state is not SessionState.ANSWERED:
            raise ApiError(
                409,
                "session_not_answered",
                f"session {session_hex} has no accepted answer ({record.state.value}): send the offer "
                "first (POST .../offer), or create a new session if it failed",
            )
        if record.updates >= MAX_UPDATES:
            raise ApiError(
                429,
                "too_many_updates",
                f"session {session_hex} already sent {MAX_UPDATES} candidate updates; open a new session",
            )
        try:
            update_body = CandidateUpdate(record.session_id, candidates, end).encode()
        except ValueError:
            raise ApiError(
                400,
                "bad_request",
                f"{len(candidates)} candidates do not fit one device invite; send them in several updates",
            ) from None
        serial = record.serial
        self._paired_and_online(user, serial)
        record.updates += 1
        ttl = self._config.session_answer_timeout_s
        outcome = await self._answered_invite(
            serial,
            INVITE_KIND_CANDIDATES,
            update_body,
            ttl,
            f"device {serial} did not answer a candidate update within {ttl:.0f} s; the session may "
            "still work over the paths it has",
        )
        if outcome.status == INVITE_GONE:
            raise ApiError(
                410, "session_gone", f"device {serial} has closed session {session_hex}; open a new session"
            )
        try:
            if outcome.status != INVITE_OK:
                raise ValueError(f"invite status {outcome.status}")
            reply = CandidateUpdate.decode(outcome.body)
            if reply.session_id != record.session_id:
                raise ValueError("the reply names another session")
        except ValueError as exc:
            raise ApiError(
                502,
                "device_error",
                f"device {serial} answered a candidate update badly ({exc}); update its dvrlinkd",
            ) from None
        log.info(
            "session %s: %d candidates to %s%s, %d back%s",
            session_hex,
            len(candidates),
            serial,
            " (end)" if end else "",
            len(reply.candidates),
            " (end)" if reply.end_of_candidates else "",
        )
        return web.json_response(
            {"candidates": list(reply.candidates), "end_of_candidates": reply.end_of_candidates},
            headers={"Cache-Control": "no-store"},
        )

    async def _answered_invite(
        self, serial: str, kind: int, body: bytes, ttl: float, timeout_message: str
    ) -> InviteAnswered:
        """Push an invite and wait for the device's reply.

        Raises:
            ApiError: 409 ``device_offline`` (it went offline meanwhile), 504 ``device_timeout``
                with ``timeout_message`` (no reply within ``ttl``).
        """
        try:
            outcome = await asyncio.wait_for(
                self._presence.invite(serial, kind, body, ttl), ttl + INVITE_GRACE_S
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

    def _own_session(self, user: str, session_hex: str) -> SessionRecord:
        try:
            session_id = bytes.fromhex(session_hex)
        except ValueError:
            session_id = b""
        record = None
        if len(session_id) == SESSION_ID_SIZE:
            record = self._sessions.get(user, session_id, self._clock())
        if record is None:
            raise ApiError(
                404,
                "unknown_session",
                f"no session {session_hex[:64]!r} for {user!r} (sessions expire after "
                f"{self._config.session_ttl_s:.0f} s); create one with POST /v1/sessions",
            )
        return record

    def _turn_json(self, user: str, now: float) -> tuple[list[dict[str, Any]], float | None]:
        if self._relays is None or not self._relays.turn:
            return [], None
        try:
            grants = self._relays.grants(user, now)
        except ValueError:
            log.warning("no TURN credentials for %r: the name is too long for a TURN username", user)
            return [], None
        expires = float(grants[0].username.partition(":")[0])
        turn = [
            {
                "host": g.host,
                "port": g.port,
                "transport": g.transport,
                "username": g.username,
                "password": g.password,
            }
            for g in sorted(grants, key=lambda g: g.transport != "udp")  # UDP first; TCP where UDP is blocked
        ]
        return turn, expires

    def _session_answer(
        self, serial: str, outcome: InviteAnswered | InviteExpired, ttl: float
    ) -> SessionAnswer:
        if isinstance(outcome, InviteExpired):
            raise ApiError(
                504,
                "device_timeout",
                f"device {serial} did not answer the session offer within {ttl:.0f} s; check its network "
                "and retry",
            )
        if outcome.status != INVITE_OK:
            raise ApiError(
                502,
                "device_error",
                f"device {serial} cannot handle sessions (invite status {outcome.status}); update its "
                "dvrlinkd",
            )
        try:
            answer = SessionAnswer.decode(outcome.body)
        except ValueError:
            raise ApiError(502, "device_error", f"device {serial} sent a malformed session answer") from None
        said = f" ({answer.message})" if answer.message else ""
        if answer.status is AnswerStatus.ACCEPTED:
            return answer
        if answer.status is AnswerStatus.REFUSED:
            # The device's own reason says what to do (its data cap, its path policy); without one,
            # the likeliest cause is a viewer it does not know.
            advice = (
                f": {answer.message}"
                if answer.message
                else "; it only accepts viewers it paired with, so pair this viewer again"
            )
            raise ApiError(
                403,
                "refused",
                f"device {serial} refused the session{advice}",
                {"status": "refused", "device_message": answer.message},
            )
        if answer.status is AnswerStatus.BUSY:
            raise ApiError(
                403,
                "refused",
                f"device {serial} is busy{said}; close another session to it and retry",
                {"status": "busy", "device_message": answer.message},
                retry_after=5,
            )
        raise ApiError(
            502,
            "no_relay",
            f"device {serial} could not reach a TURN relay{said}; check the broker's TURN ports and "
            "the device's network",
            {"status": "no_relay", "device_message": answer.message},
        )


def _ice_field(body: Mapping[str, Any], name: str, low: int, high: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise ApiError(
            400, "bad_request", f"field {name!r} must be a string of {low} to {high} ICE characters"
        )
    if not all(ch.isascii() and (ch.isalnum() or ch in "+/") for ch in value):
        raise ApiError(400, "bad_request", f"field {name!r} may hold only letters, digits, '+' and '/'")
    return value


def _bool_field(body: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, "bad_request", f"field {name!r} must be true or false")
    return value


def _candidates_field(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("candidates")
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise ApiError(
            400,
            "bad_request",
            f"field 'candidates' must be a list of at most {MAX_CANDIDATES} SDP candidate strings "
            "(aioice Candidate.to_sdp())",
        )
    candidates = []
    for index, item in enumerate(value):
        if (
            not isinstance(item, str)
            or not item.isprintable()
            or len(item.encode("utf-8")) > MAX_CANDIDATE_BYTES
        ):
            raise ApiError(
                400,
                "bad_request",
                f"candidates[{index}] must be an SDP candidate string of at most {MAX_CANDIDATE_BYTES} bytes",
            )
        try:
            Candidate.from_sdp(item)
        except (ValueError, IndexError):
            raise ApiError(
                400,
                "bad_request",
                f"candidates[{index}] is not an SDP candidate such as "
                "'1 1 udp 2130706431 192.0.2.1 50000 typ host'",
            ) from None
        candidates.append(item)
    return tuple(candidates)
