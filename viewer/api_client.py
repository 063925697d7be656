"""A small async client for the broker's HTTPS/JSON API (contract v1).

Every failure becomes one ``ViewerError`` whose message says what to do: the broker cannot be
reached, its certificate is not trusted, the login expired, the device is offline, and so on.
Each request is bounded by a total timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import time
import types
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import yarl

from dvrlink.protocol.identity import b64encode_key, validate_serial
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.viewer.api_types import (
    CandidateBatch,
    Device,
    DeviceIdentity,
    OfferAnswer,
    PairAnswer,
    RelayList,
    SessionGrant,
    SessionInfo,
    Token,
    WakeStatus,
    parse_candidate_batch,
    parse_device,
    parse_devices,
    parse_identity,
    parse_offer_answer,
    parse_pair_answer,
    parse_relay_list,
    parse_session_grant,
    parse_sessions,
    parse_token,
    parse_wake_status,
)
from dvrlink.viewer.errors import EXIT_USAGE, ViewerError, toml_value
from dvrlink.viewer.events import AlarmEvent, SseParser, alarm_from_sse, parse_alarm_list
from dvrlink.viewer.render import format_ago

_T = TypeVar("_T")

REQUEST_TIMEOUT = 20.0  # s, total per request
# The broker holds a pairing request until the device answers its invite or the invite's time to
# live (30 s by default) runs out, so a pairing request gets more time than the others.
PAIR_TIMEOUT = 45.0  # s
# Likewise the broker holds a session offer until the device answers (10 s by default, plus 5 s).
OFFER_TIMEOUT = 30.0  # s
# A session request for a device that sleeps by SMS is held until the woken device registers
# (the broker's wake_hold_s, 90 s by default); meanwhile the wake's progress is polled.
WAKE_TIMEOUT = 150.0  # s
WAKE_POLL_S = 1.0  # s between looks at the wake's progress, after the first second
POLICY_NAMES = {
    PathPolicy.ALL: "all",
    PathPolicy.RELAY_ONLY: "relay_only",
    PathPolicy.DIRECT_ONLY: "direct_only",
}
MAX_BODY = 1 << 20  # bytes; a longer answer is refused
NOT_LOGGED_IN = "you are not logged in: run `dvrlink login --broker URL --user NAME` first"
LOGIN_EXPIRED = "your login has expired: run `dvrlink login`"


INSECURE_HTTP_FLAG = "--insecure-http"


def check_broker_url(text: str, *, allow_http: bool = False) -> str:
    """Return the broker base URL without a trailing slash.

    ``https://`` is required: every request but the health check carries a password or a token.
    ``allow_http`` (the ``--insecure-http`` flag, for a lab broker) lets ``http://`` through;
    the caller warns about it.

    Raises:
        ViewerError: (exit code 2) the URL is not an https URL with a host, or it is http and
            ``allow_http`` is false.
    """
    try:
        url = yarl.URL(text.strip())
    except (ValueError, TypeError) as exc:
        raise ViewerError(f"broker URL {toml_value(text)} is not valid ({exc})", EXIT_USAGE) from exc
    if url.scheme not in ("https", "http") or not url.host:
        raise ViewerError(
            f"broker URL {toml_value(text)} is not valid: give it as https://HOST[:PORT], "
            "for example https://broker.example.net:8443",
            EXIT_USAGE,
        )
    if url.scheme == "http" and not allow_http:
        raise ViewerError(
            f"broker URL {toml_value(text)} uses plain http, which would send your password and token in "
            f"clear: use https:// (for a lab broker only, {INSECURE_HTTP_FLAG} allows it)",
            EXIT_USAGE,
        )
    if url.query_string or url.fragment:
        raise ViewerError(f"broker URL {toml_value(text)} must not have a query or fragment", EXIT_USAGE)
    return str(url).rstrip("/")


def is_plain_http(url: str) -> bool:
    """True if ``url`` (as ``check_broker_url`` returned it) is plain http."""
    return url.startswith("http://")


def cleartext_warning(url: str) -> str:
    """The warning printed each time a command talks to a plain-http broker."""
    return (
        f"warning: {INSECURE_HTTP_FLAG}: talking to the broker at {url} without TLS; passwords and "
        "tokens cross the network in clear (use https:// outside a lab)"
    )


def make_ssl_context(cacert: str | None) -> ssl.SSLContext:
    """A verifying TLS context: trusts ``cacert`` if given, else the system store.

    Raises:
        ViewerError: ``cacert`` cannot be read or holds no PEM certificate.
    """
    try:
        return ssl.create_default_context(cafile=cacert)
    except FileNotFoundError as exc:
        raise ViewerError(
            f"CA file {cacert} does not exist: pass --cacert with the broker's certificate "
            "(the broker writes it to its state directory)"
        ) from exc
    except ssl.SSLError as exc:  # before OSError, of which it is a subclass
        raise ViewerError(
            f"CA file {cacert} holds no usable PEM certificate ({str(exc.reason or exc).lower()}): "
            "pass the broker's certificate file to --cacert"
        ) from exc
    except OSError as exc:
        raise ViewerError(f"cannot read CA file {cacert}: {exc.strerror or exc}") from exc


log = logging.getLogger(__name__)


class _ConnectFailed(Exception):
    """No connection to the broker could be made (``reason`` says why): nothing was sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: Any  # decoded JSON, or None when the answer was not JSON
    raw: bytes
    retry_after: str | None
    location: str | None


class BrokerClient:
    """Talks to one broker; use as ``async with BrokerClient(url, ...) as client:``.

    ``clock`` gives unix seconds (for "last seen" in error messages). All request methods raise
    ``ViewerError``; none raises anything else for network or broker failures.

    ``other_urls``: more nodes of the same fleet. When a connection to the broker in use cannot
    be made (refused, no route, no such name), the request goes to the next URL, and the client
    stays with the one that answered (``broker_url``). Only a failed connection moves on: the
    request never reached the broker, so sending it elsewhere cannot do it twice. A timeout or a
    broken answer is reported as it is.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        other_urls: Sequence[str] = (),
        cacert: str | None = None,
        token: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        pair_timeout: float = PAIR_TIMEOUT,
        offer_timeout: float = OFFER_TIMEOUT,
        clock: Callable[[], float] = time.time,
        allow_http: bool = False,
    ) -> None:
        """``allow_http``: accept an ``http://`` URL (see ``check_broker_url``).

        Raises ViewerError for a bad URL (plain http unless allowed) or an unusable CA file.
        """
        self.broker_url = check_broker_url(broker_url, allow_http=allow_http)
        self.broker_urls = (
            self.broker_url,
            *(check_broker_url(u, allow_http=allow_http) for u in other_urls),
        )
        """Every URL this client may use, in the order given."""
        self._ssl = make_ssl_context(cacert)
        self._token = token
        self._timeout = timeout
        self._pair_timeout = pair_timeout
        self._offer_timeout = offer_timeout
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BrokerClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl),
            headers={"Accept": "application/json", "User-Agent": "dvrlink-viewer/1"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections. Never raises."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # -- the contract -------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> Token:
        """``POST /v1/tokens``. Raises ViewerError (bad credentials, rate limited, ...)."""
        path = "/v1/tokens"
        resp = await self._request("POST", path, {"username": username, "password": password}, auth=False)
        if resp.status != 200:
            raise self._error(resp, "POST", path, serial=None, username=username)
        return self._parse(parse_token, resp, "POST", path)

    async def health(self) -> None:
        """``GET /v1/health`` (no login needed): the node answers. Raises ViewerError."""
        path = "/v1/health"
        resp = await self._request("GET", path, auth=False)
        if resp.status != 200:
            raise self._error(resp, "GET", path, serial=None)

    async def relays(self) -> RelayList:
        """``GET /v1/relays``: the TURN relays and STUN service sessions use (no credentials).
        Raises ViewerError (an older broker without it: 404)."""
        path = "/v1/relays"
        resp = await self._request("GET", path)
        if resp.status != 200:
            raise self._error(resp, "GET", path, serial=None)
        return self._parse(parse_relay_list, resp, "GET", path)

    async def devices(self) -> list[Device]:
        """``GET /v1/devices``: the devices paired to this account. Raises ViewerError."""
        path = "/v1/devices"
        resp = await self._request("GET", path)
        if resp.status != 200:
            raise self._error(resp, "GET", path, serial=None)
        return self._parse(parse_devices, resp, "GET", path)

    async def device(self, serial: str) -> Device:
        """``GET /v1/devices/{serial}``. Raises ViewerError (not paired, unknown device, ...)."""
        path = f"/v1/devices/{_serial(serial)}"
        resp = await self._request("GET", path)
        if resp.status != 200:
            raise self._error(resp, "GET", path, serial=serial)
        return self._parse(lambda body: parse_device(body, serial), resp, "GET", path)

    async def identity(self, serial: str) -> DeviceIdentity:
        """``GET /v1/devices/{serial}/identity``: the key bound to the serial. Raises ViewerError."""
        path = f"/v1/devices/{_serial(serial)}/identity"
        resp = await self._request("GET", path)
        if resp.status != 200:
            raise self._error(resp, "GET", path, serial=serial)
        return self._parse(lambda body: parse_identity(body, serial), resp, "GET", path)

    async def pair(self, serial: str, viewer_key: bytes, nonce: bytes, proof: bytes) -> PairAnswer:
        """``POST /v1/devices/{serial}/pairings``.

        Returns the answer for 200 ``paired`` and for 403 ``wrong_code`` with a ``result`` (the
        caller verifies the device's signed result in both cases).

        Raises:
            ViewerError: offline, unknown device, rate limited, device timeout, malformed answer, ...
        """
        path = f"/v1/devices/{_serial(serial)}/pairings"
        body = {
            "viewer_public_key": b64encode_key(viewer_key),
            "nonce": b64encode_key(nonce),
            "proof": b64encode_key(proof),
        }
        resp = await self._request("POST", path, body, timeout=self._pair_timeout)
        if resp.status == 200:
            return self._parse(lambda b: parse_pair_answer(b, paired=True), resp, "POST", path)
        if resp.status == 403 and _error_code(resp.body) == "wrong_code" and "result" in resp.body:
            return self._parse(lambda b: parse_pair_answer(b, paired=False), resp, "POST", path)
        raise self._error(resp, "POST", path, serial=serial)

    async def unpair(self, serial: str) -> bool:
        """``DELETE /v1/devices/{serial}/pairings``: forget this account's pairing of the device;
        False if the broker had none.

        Raises:
            ViewerError: unknown device, bad login, the broker cannot be reached, ...
        """
        path = f"/v1/devices/{_serial(serial)}/pairings"
        resp = await self._request("DELETE", path)
        if resp.status == 200:
            return True
        if resp.status == 403 and _error_code(resp.body) == "not_paired":
            return False
        raise self._error(resp, "DELETE", path, serial=serial)

    async def end_session(self, session_id: str) -> bool:
        """``DELETE /v1/sessions/{id}``: the session is closed, so it no longer counts against
        the account's limit; False if the broker had already forgotten it.

        Raises:
            ViewerError: bad login, the broker cannot be reached, ...
        """
        path = f"/v1/sessions/{session_id}"
        resp = await self._request("DELETE", path)
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise self._error(resp, "DELETE", path, serial=None)

    async def report_path(self, session_id: str, path: str) -> bool:
        """``PATCH /v1/sessions/{id}``: the session runs on ``path`` (lan, direct or relay) now,
        which the broker's dashboard shows; False if the broker had already forgotten it.

        Raises:
            ViewerError: bad login, the broker cannot be reached, refused (not answered yet, a path
                its policy does not allow), ...
        """
        url_path = f"/v1/sessions/{session_id}"
        resp = await self._request("PATCH", url_path, {"path": path})
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        raise self._error(resp, "PATCH", url_path, serial=None)

    async def create_session(
        self, serial: str, policy: PathPolicy, *, on_wake: Callable[[WakeStatus], None] | None = None
    ) -> SessionGrant:
        """``POST /v1/sessions``: a session id plus TURN credentials and the STUN server to gather with.

        The broker holds the request while it wakes a device that sleeps by SMS; if it has not
        answered after a second, ``on_wake`` is called with the wake's progress each second.

        Raises:
            ViewerError: not paired, device offline (and not woken), too many sessions,
                malformed answer, ...
        """
        path = "/v1/sessions"
        body = {"serial": _serial(serial), "policy": POLICY_NAMES[policy]}
        request = asyncio.ensure_future(
            self._request("POST", path, body, timeout=max(self._timeout, WAKE_TIMEOUT))
        )
        try:
            while on_wake is not None:
                done, _ = await asyncio.wait({request}, timeout=WAKE_POLL_S)
                if done:
                    break
                wake = await self._wake_status(serial)
                if wake is not None and wake.under_way:
                    on_wake(wake)
            resp = await request
        finally:
            request.cancel()
        if resp.status not in (200, 201):
            raise self._error(resp, "POST", path, serial=serial)
        grant = self._parse(parse_session_grant, resp, "POST", path)
        if grant.serial != serial:
            raise self._malformed("POST", path, f"it is about serial {grant.serial}, not {serial}")
        return grant

    async def _wake_status(self, serial: str) -> WakeStatus | None:
        """The device's wake progress, or None (no wake, an older broker, or any failure: the
        progress is only shown, the session request decides)."""
        path = f"/v1/devices/{_serial(serial)}/wake"
        try:
            resp = await self._request("GET", path, timeout=self._timeout)
        except ViewerError:
            return None
        if resp.status != 200 or resp.body is None:
            return None
        try:
            return parse_wake_status(resp.body)
        except ValueError:
            return None

    async def send_offer(
        self,
        session_id: str,
        ice_ufrag: str,
        ice_pwd: str,
        candidates: Sequence[str],
        viewer_public_key: bytes,
        *,
        serial: str | None = None,
        end_of_candidates: bool = True,
    ) -> OfferAnswer:
        """``POST /v1/sessions/{id}/offer``: hand the viewer's ICE offer to the device; returns its answer.

        ``serial`` only names the device in error messages. ``end_of_candidates=False``: more
        candidates follow with :meth:`send_candidates`.

        Raises:
            ViewerError: device offline, no answer in time, refused (with the device's words),
                no relay on the device's side, unknown or used session, malformed answer, ...
        """
        if len(session_id) != 32 or any(ch not in "0123456789abcdef" for ch in session_id):
            raise ValueError(f"session id {toml_value(session_id)} is not 32 lower-case hex digits")
        path = f"/v1/sessions/{session_id}/offer"
        body = {
            "ice_ufrag": ice_ufrag,
            "ice_pwd": ice_pwd,
            "candidates": list(candidates),
            "viewer_public_key": b64encode_key(viewer_public_key),
            "end_of_candidates": end_of_candidates,
        }
        resp = await self._request("POST", path, body, timeout=self._offer_timeout)
        if resp.status != 200:
            raise self._error(resp, "POST", path, serial=serial)
        return self._parse(parse_offer_answer, resp, "POST", path)

    async def send_candidates(
        self,
        session_id: str,
        candidates: Sequence[str],
        end_of_candidates: bool,
        *,
        serial: str | None = None,
    ) -> CandidateBatch:
        """``POST /v1/sessions/{id}/candidates``: trickle new candidates to the device; returns the
        device's new ones (the broker holds the request a few seconds while the device has none).

        Raises:
            ViewerError: the session is gone or unknown, the device is offline or did not answer, ...
        """
        if len(session_id) != 32 or any(ch not in "0123456789abcdef" for ch in session_id):
            raise ValueError(f"session id {toml_value(session_id)} is not 32 lower-case hex digits")
        path = f"/v1/sessions/{session_id}/candidates"
        body = {"candidates": list(candidates), "end_of_candidates": end_of_candidates}
        resp = await self._request("POST", path, body, timeout=self._offer_timeout)
        if resp.status != 200:
            raise self._error(resp, "POST", path, serial=serial)
        return self._parse(parse_candidate_batch, resp, "POST", path)

    async def list_sessions(self) -> list[SessionInfo]:
        """``GET /v1/sessions``: this account's sessions the broker still remembers. Raises ViewerError."""
        path = "/v1/sessions"
        resp = await self._request("GET", path)
        if resp.status != 200:
            raise self._error(resp, "GET", path, serial=None)
        return self._parse(parse_sessions, resp, "GET", path)

    async def events(self, serial: str, *, after: int | None = None, limit: int = 100) -> list[AlarmEvent]:
        """``GET /v1/devices/{serial}/events``: stored alarms, oldest first (the last ``limit``
        without ``after``). Raises ViewerError (not paired, unknown device, ...)."""
        path = f"/v1/devices/{_serial(serial)}/events?limit={limit}"
        if after is not None:
            path += f"&after={after}"
        resp = await self._request("GET", path)
        if resp.status != 200:
            raise self._error(resp, "GET", path, serial=serial)
        return self._parse(parse_alarm_list, resp, "GET", path)

    async def event_snapshot(self, serial: str, event_id: int) -> bytes:
        """``GET /v1/devices/{serial}/events/{id}/snapshot``: the JPEG an alarm carried. Raises
        ViewerError (no such alarm, it has no snapshot, not paired, ...)."""
        path = f"/v1/devices/{_serial(serial)}/events/{event_id}/snapshot"
        resp = await self._request("GET", path)
        if resp.status != 200:
            raise self._error(resp, "GET", path, serial=serial)
        if not resp.raw.startswith(b"\xff\xd8"):
            raise self._malformed("GET", path, "the answer is not a JPEG")
        return resp.raw

    async def follow_events(
        self,
        serial: str,
        *,
        after: int | None = None,
        on_reconnect: Callable[[str], None] = lambda reason: None,
        idle_timeout: float = 60.0,
        max_backoff: float = 30.0,
    ) -> AsyncIterator[AlarmEvent]:
        """Follow ``GET /v1/devices/{serial}/events/stream`` (Server-Sent Events): each new alarm
        (after ``after``, when given), for as long as the caller iterates. A dropped stream or
        one silent for ``idle_timeout`` s (the broker sends a keepalive every 15 s) is opened
        again after a backoff (1 s doubling to ``max_backoff``), from the last alarm seen, so
        none is missed; ``on_reconnect`` is told why.

        Raises:
            ViewerError: the broker refuses (not paired, login expired, ...) or sends a malformed
                alarm; not for a lost connection.
        """
        if self._session is None:
            raise RuntimeError("use BrokerClient in `async with`")
        if not self._token:
            raise ViewerError(NOT_LOGGED_IN)
        path = f"/v1/devices/{_serial(serial)}/events/stream"
        last = after
        backoff = 1.0
        while True:
            url = self.broker_url + path + ("" if last is None else f"?after={last}")
            headers = {"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"}
            reason = ""
            try:
                async with self._session.get(
                    url,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_read=idle_timeout),
                ) as resp:
                    if resp.status != 200:
                        raw = await resp.content.read(MAX_BODY)
                        try:
                            body = json.loads(raw) if raw else None
                        except (ValueError, UnicodeDecodeError):
                            body = None
                        answer = _Response(resp.status, body, raw, resp.headers.get("Retry-After"), None)
                        raise self._error(answer, "GET", path, serial=serial)
                    parser = SseParser()
                    while True:
                        line = await resp.content.readline()
                        if not line:
                            reason = "the broker ended the stream"
                            break
                        backoff = 1.0
                        message = parser.feed(line.decode("utf-8", "replace").rstrip("\r\n"))
                        if message is None:
                            continue
                        try:
                            alarm = alarm_from_sse(message)
                        except ValueError as exc:
                            raise self._malformed("GET", path, str(exc)) from exc
                        if alarm is not None:
                            last = alarm.id
                            yield alarm
            except ViewerError:
                raise
            except TimeoutError:
                reason = f"no data from the broker for {idle_timeout:g} s"
            except aiohttp.ClientError as exc:
                reason = (
                    _os_reason(exc)
                    if isinstance(exc, aiohttp.ClientConnectorError)
                    else str(exc) or type(exc).__name__
                )
            on_reconnect(f"{reason}; following again in {backoff:g} s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    # -- transport ----------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        auth: bool = True,
        timeout: float | None = None,
    ) -> _Response:
        if self._session is None:
            raise RuntimeError("use BrokerClient in `async with`")
        headers = {}
        if auth:
            if not self._token:
                raise ViewerError(NOT_LOGGED_IN)
            headers["Authorization"] = f"Bearer {self._token}"
        failed: list[str] = []
        first = self.broker_urls.index(self.broker_url)
        order = self.broker_urls[first:] + self.broker_urls[:first]
        for base in order:
            self.broker_url = base
            try:
                return await self._request_once(method, path, body, headers, timeout)
            except _ConnectFailed as exc:
                failed.append(f"{base}: {exc.reason}")
                if base != order[-1]:
                    log.warning(
                        "cannot reach the broker at %s (%s); trying %s", base, exc.reason, order[len(failed)]
                    )
        self.broker_url = order[0]
        if len(order) == 1:
            raise self._unreachable(failed[0].split(": ", 1)[1])
        raise ViewerError(
            f"cannot reach any of the {len(order)} brokers ({'; '.join(failed)}): check the addresses "
            "and your network, or whether the brokers are running"
        )

    async def _request_once(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        headers: dict[str, str],
        timeout: float | None,
    ) -> _Response:
        """One request to ``broker_url``.

        Raises:
            _ConnectFailed: no connection could be made (the caller may try another URL).
            ViewerError: anything else.
        """
        assert self._session is not None
        limit = timeout if timeout is not None else self._timeout
        url = self.broker_url + path
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=limit),
            ) as resp:
                raw = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    raw += chunk
                    if len(raw) > MAX_BODY:
                        raise ViewerError(
                            f"the broker at {self.broker_url} sent more than {MAX_BODY} bytes for "
                            f"{method} {path}: check that this URL is a dvrlink broker, or report it"
                        )
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                location = resp.headers.get("Location")
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ViewerError(
                f"cannot reach the broker at {self.broker_url} securely: the broker's certificate "
                f"is not trusted ({_cert_reason(exc)}): pass --cacert FILE to dvrlink login"
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise ViewerError(
                f"TLS with the broker at {self.broker_url} failed ({_os_reason(exc)}): check that "
                "the URL points at the broker's HTTPS port"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise _ConnectFailed(_os_reason(exc)) from exc
        except TimeoutError as exc:
            raise self._unreachable(f"no answer within {limit:g} s") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise self._unreachable("it closed the connection without an answer") from exc
        except aiohttp.ClientError as exc:
            raise self._unreachable(str(exc) or type(exc).__name__) from exc
        data = bytes(raw)
        try:
            decoded: Any = json.loads(data) if data else None
        except (ValueError, UnicodeDecodeError):
            decoded = None
        return _Response(status, decoded, data, retry_after, location)

    def _unreachable(self, reason: str) -> ViewerError:
        return ViewerError(
            f"cannot reach the broker at {self.broker_url} ({reason}): check the address and your "
            "network, or whether the broker is running"
        )

    def _parse(self, parser: Callable[[Any], _T], resp: _Response, method: str, path: str) -> _T:
        if resp.body is None:
            raise self._malformed(method, path, "not JSON")
        try:
            return parser(resp.body)
        except ValueError as exc:
            raise self._malformed(method, path, str(exc)) from exc

    def _malformed(self, method: str, path: str, what: str) -> ViewerError:
        return ViewerError(
            f"the broker at {self.broker_url} sent a malformed answer to {method} {path} ({what}): "
            "check that this URL is a dvrlink broker of a matching version, or report it"
        )

    def _error(
        self, resp: _Response, method: str, path: str, *, serial: str | None, username: str | None = None
    ) -> ViewerError:
        return error_for_status(
            broker=self.broker_url,
            method=method,
            path=path,
            status=resp.status,
            body=resp.body,
            serial=serial,
            username=username,
            retry_after=resp.retry_after,
            location=resp.location,
            now=self._clock(),
        )


def _serial(serial: str) -> str:
    try:
        return validate_serial(serial)
    except ValueError as exc:
        raise ViewerError(str(exc), EXIT_USAGE) from exc


def _error_code(body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return None


def _os_reason(exc: aiohttp.ClientConnectorError | aiohttp.ClientSSLError) -> str:
    os_error = exc.os_error
    if isinstance(os_error, ssl.SSLError):
        return str(os_error.reason or os_error).lower().replace("_", " ")
    if isinstance(os_error, socket.gaierror):  # name lookup: errno is a resolver code
        return f"cannot resolve {exc.host}: {str(os_error.strerror or os_error).lower()}"
    if os_error.errno:
        return os.strerror(os_error.errno).lower()
    return str(os_error.strerror or os_error) or type(os_error).__name__


def _cert_reason(exc: aiohttp.ClientConnectorCertificateError) -> str:
    cert_error = exc.certificate_error
    reason = getattr(cert_error, "verify_message", None) or str(cert_error)
    return str(reason)


def _wait_hint(retry_after: str | None, default: str) -> str:
    if retry_after and retry_after.isdigit():
        seconds = int(retry_after)
        return f"wait {seconds // 60 + 1} min" if seconds >= 60 else f"wait {seconds} s"
    return default


def error_for_status(
    *,
    broker: str,
    method: str,
    path: str,
    status: int,
    body: Any,
    serial: str | None,
    username: str | None,
    retry_after: str | None,
    location: str | None,
    now: float,
) -> ViewerError:
    """Map a non-success answer of the broker to a ViewerError that says what to do.

    ``body`` is the decoded JSON (``{"error": code, "message": text}`` per the contract) or None.
    Pure: never raises, returns the error.
    """
    code = _error_code(body)
    broker_message = ""
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        broker_message = str(body["message"])
    device = f"device {serial}" if serial else "the device"
    if 300 <= status < 400:
        return ViewerError(
            f"the broker at {broker} redirects {method} {path} to {location or 'another address'}: "
            "run `dvrlink login` with the broker's real address"
        )
    if code == "token_expired":
        return ViewerError(LOGIN_EXPIRED)
    if code == "unauthorized" or (status == 401 and code != "bad_credentials"):
        return ViewerError(f"the broker at {broker} did not accept your login token: run `dvrlink login`")
    if code == "bad_credentials":
        who = f"user {username}" if username else "this user"
        return ViewerError(
            f"the broker at {broker} refused the password of {who}: check the user name and password, "
            "then run `dvrlink login` again"
        )
    if code == "not_paired":
        return ViewerError(
            f"you have not paired {serial}: run `dvrlink pair {serial} CODE` "
            "with the code on the device label"
        )
    if code == "unknown_device":
        return ViewerError(
            f"the broker at {broker} does not know {device}: check the serial on the device label "
            "(a device is known once it has registered with this broker)"
        )
    if code == "device_offline":
        last_seen = body.get("last_seen") if isinstance(body, dict) else None
        seen = (
            f" (last seen {format_ago(float(last_seen), now)})"
            if isinstance(last_seen, int | float) and not isinstance(last_seen, bool)
            else ""
        )
        return ViewerError(f"{device} is offline{seen}: check its power and network, then retry")
    device_said = ""
    if isinstance(body, dict) and isinstance(body.get("device_message"), str) and body["device_message"]:
        device_said = f" (it says: {body['device_message']})"
    if code == "refused":
        if isinstance(body, dict) and body.get("status") == "busy":
            return ViewerError(
                f"{device} is busy{device_said}: close another session to it "
                f"(see `dvrlink sessions`), {_wait_hint(retry_after, 'wait a few seconds')} and retry"
            )
        if device_said:  # the device's reason says what to do (its data cap, its path policy)
            return ViewerError(f"{device} refused the session: {body['device_message']}")
        return ViewerError(
            f"{device} refused the session: it accepts only viewers it paired with; "
            f"if this computer was paired with it, pair again: `dvrlink pair {serial or 'SERIAL'} CODE`"
        )
    if code == "no_relay":
        return ViewerError(
            f"{device} could not reach the broker's TURN relay{device_said}: check the broker's TURN "
            "ports and the device's network, or retry with --direct-only"
        )
    if code == "too_many_sessions":
        return ViewerError(
            f"the broker at {broker} refuses more sessions for your account (the limit is reached): "
            "stop another `dvrlink forward` or `dvrlink ping`, or "
            f"{_wait_hint(retry_after, 'wait a minute')} until the oldest expires (see `dvrlink sessions`)"
        )
    if code == "unknown_session":
        return ViewerError(
            f"the broker at {broker} no longer knows this session (it expired or the broker restarted): "
            "run the command again"
        )
    if code == "session_used":
        return ViewerError(
            f"the broker at {broker} already has an offer for this session: run the command again"
        )
    if code == "offer_too_large":
        return ViewerError(
            f"the offer to {device} holds too many ICE candidates to fit the device's invite: "
            "limit them with --host-address IP, or use --relay-only"
        )
    if code == "wrong_code":
        return ViewerError(
            f"{device} refused the pairing code: check the code on the device label and retry "
            "(after 5 wrong codes within an hour, the device refuses pairing for up to an hour)"
        )
    if code == "rate_limited" or status == 429:
        if path.endswith("/pairings"):
            if isinstance(body, dict) and "result" in body:  # the device's own verdict
                return ViewerError(
                    f"{device} refuses pairing for now after too many wrong codes: "
                    f"{_wait_hint(retry_after, 'wait up to an hour')}, "
                    "then retry with the code on the device label"
                )
            why = f" ({broker_message})" if broker_message else " (too many wrong codes)"
            return ViewerError(
                f"the broker refuses pairing with {device} for now{why}: "
                f"{_wait_hint(retry_after, 'wait up to an hour')}, "
                "then retry with the code on the device label"
            )
        return ViewerError(
            f"the broker at {broker} is refusing requests for now (too many tries): "
            f"{_wait_hint(retry_after, 'wait a few minutes')} and retry"
        )
    if code == "wake_failed":
        return ViewerError(
            f"{device} is asleep and the broker could not send its wake SMS"
            f"{f' ({broker_message})' if broker_message else ''}: ask the broker's operator to check its "
            "SMS gateway, then retry"
        )
    if code == "device_not_woken":
        return ViewerError(
            f"{device} was sent a wake SMS but did not come online in time: check its signal and SIM "
            "(it needs SMS and data), then retry (a retry sends another wake)"
        )
    if code == "device_timeout":
        return ViewerError(
            f"{device} did not answer the broker in time (its link may be slow or just lost): "
            "retry in a minute"
        )
    if code == "device_error":
        return ViewerError(
            f"{device} gave the broker an answer it could not use"
            f"{f' ({broker_message})' if broker_message else ''}: check that the device runs a "
            "current dvrlinkd, then retry"
        )
    if code == "bad_request":
        return ViewerError(
            f"the broker at {broker} rejected {method} {path} as malformed"
            f"{f' ({broker_message})' if broker_message else ''}: this dvrlink may not match the "
            "broker's version; update it, or report the problem"
        )
    detail = f"{code}: {broker_message}" if code else "no dvrlink error in the body"
    advice = (
        "retry later, or tell the broker's operator"
        if status >= 500
        else "check that this URL is a dvrlink broker, or report the problem"
    )
    return ViewerError(
        f"the broker at {broker} answered HTTP {status} to {method} {path} ({detail}): {advice}"
    )
