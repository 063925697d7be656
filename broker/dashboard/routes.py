"""The dashboard's aiohttp side: a sub-application mounted at ``/dashboard``.

    GET  /dashboard/                      → the device list (or the login form)
    GET  /dashboard/login                 the login form (sets the login-CSRF cookie)
    POST /dashboard/login                 log in with a viewer account (the API's login limit)
    POST /dashboard/logout                log out
    GET  /dashboard/devices               the device list
    GET  /dashboard/devices/{serial}      a device's page
    POST /dashboard/devices/{serial}/name name a paired device
    GET  /dashboard/fleet                 fleet counters (operators only)
    GET  /dashboard/events                Server-Sent Events: ``presence`` changes of visible devices
    GET  /dashboard/static/{name}         the stylesheet and the script

Security: the login is a server-side session (``logins``: in this process, or in the cluster's
Redis so that every node knows it) named by a random cookie that is
HttpOnly, Secure, SameSite=Strict and ``__Host-`` prefixed; every POST must come from this
origin (``Origin``) and carry the login's CSRF token (the login form itself a double-submit
token from its own cookie). Every page is escaped HTML under a Content-Security-Policy that
allows only this origin's script and style (none inline) and no framing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from aiohttp import web

from dvrlink.broker.api_common import ApiError, Handler
from dvrlink.broker.api_devices import NAME_MAX
from dvrlink.broker.dashboard import render
from dvrlink.broker.dashboard.feed import DashboardFeed, PresenceChanged
from dvrlink.broker.dashboard.logins import (
    Login,
    LoginStore,
    LoginsUnavailable,
    LoginTable,
    MemoryLogins,
    csrf_matches,
)
from dvrlink.broker.dashboard.view import DashboardView
from dvrlink.broker.registry import USERNAME_MAX

COOKIE = "__Host-dvrlink-dashboard"
LOGIN_COOKIE = "__Host-dvrlink-login"
LOGIN_COOKIE_MAX_AGE = 3600
PASSWORD_MAX = 1024
HEARTBEAT_S = 15.0
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send "Origin: null"
    "Cross-Origin-Opener-Policy": "same-origin",
}
STATIC: Mapping[str, str] = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}

log = logging.getLogger(__name__)


class LoginCheck(Protocol):
    """Checks a password under the broker's login limit (``BrokerApi.check_login``)."""

    def __call__(self, username: str, password: str, remote: str) -> Awaitable[None]: ...


class _Refused(Exception):
    """Answer with an error page: ``status`` and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _static_files() -> dict[str, bytes]:
    folder = importlib.resources.files("dvrlink.broker.dashboard") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


class DashboardRoutes:
    """The dashboard's handlers, bound to its view, feed, logins and the login check."""

    def __init__(
        self,
        view: DashboardView,
        feed: DashboardFeed,
        check_login: LoginCheck,
        session_ttl_s: float,
        body_timeout_s: float,
        clock: Callable[[], float],
        heartbeat_s: float = HEARTBEAT_S,
        logins: LoginStore | None = None,
    ) -> None:
        """``logins``: where logins live (default: this process; a cluster passes its Redis
        store, ``broker/cluster/logins.py``)."""
        self._view = view
        self._feed = feed
        self._check_login = check_login
        self._ttl = session_ttl_s
        self._body_timeout = body_timeout_s
        self._clock = clock
        """Wall-clock time (Unix seconds)."""
        self._heartbeat = heartbeat_s
        self.logins: LoginStore = logins if logins is not None else MemoryLogins(LoginTable(session_ttl_s))
        self._static = _static_files()

    def build_app(self) -> web.Application:
        """The sub-application; mount it with ``app.add_subapp("/dashboard", ...)``."""
        app = web.Application(middlewares=[self._error_pages])
        app.on_response_prepare.append(_security_headers)
        app.router.add_get("/", self.home, allow_head=False)
        app.router.add_get("/login", self.login_form, allow_head=False)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/devices", self.devices, allow_head=False)
        app.router.add_get("/devices/{serial}", self.device, allow_head=False)
        app.router.add_post("/devices/{serial}/name", self.rename)
        app.router.add_get("/fleet", self.fleet, allow_head=False)
        app.router.add_get("/events", self.events, allow_head=False)
        app.router.add_get("/static/{name}", self.static, allow_head=False)
        return app

    @web.middleware
    async def _error_pages(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Errors as pages (the API's middleware answers JSON, which a browser should not show)."""
        try:
            return await handler(request)
        except _Refused as exc:
            return _html(render.error_page(exc.status, exc.message), exc.status)
        except LoginsUnavailable as exc:
            log.warning("dashboard: %s %s: %s", request.method, request.path, exc)
            response = _html(render.error_page(503, f"Logins cannot be checked now: {exc}."), 503)
            response.headers["Retry-After"] = "5"
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _html(render.error_page(exc.status, f"{exc.reason}: {request.path}"), exc.status)

    # -- login ------------------------------------------------------------------------------------

    async def _current(self, request: web.Request) -> tuple[str, Login] | None:
        """The request's session id and login, or None.

        Raises:
            LoginsUnavailable: the login store cannot be reached (answered with a 503 page).
        """
        session_id = request.cookies.get(COOKIE)
        if not session_id:
            return None
        login = await self.logins.get(session_id, self._clock())
        return None if login is None else (session_id, login)

    async def _required(self, request: web.Request) -> Login:
        """The request's login.

        Raises:
            web.HTTPSeeOther: to the login form, when there is none.
            LoginsUnavailable: the login store cannot be reached.
        """
        found = await self._current(request)
        if found is None:
            raise web.HTTPSeeOther(f"{render.BASE}/login")
        return found[1]

    @staticmethod
    def _same_origin(request: web.Request) -> None:
        """Refuse a POST whose ``Origin`` is missing or another site's.

        Raises:
            _Refused: 403.
        """
        origin = request.headers.get("Origin")
        if origin != f"{request.scheme}://{request.host}":
            log.info("dashboard: refused %s %s from origin %r", request.method, request.path, origin)
            raise _Refused(403, "This form must be sent from the dashboard's own pages; reload the page.")

    async def _form(self, request: web.Request) -> Mapping[str, str]:
        """The request's form fields (strings only).

        Raises:
            _Refused: 408 (the body did not arrive in time), 413.
        """
        try:
            async with asyncio.timeout(self._body_timeout):
                form = await request.post()
        except TimeoutError:
            raise _Refused(408, "The form did not arrive in time; send it again.") from None
        except web.HTTPRequestEntityTooLarge:
            raise _Refused(413, "The form is too large.") from None
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def _checked_form(self, request: web.Request, login: Login) -> Mapping[str, str]:
        """The form of a state-changing POST, after the origin and CSRF checks.

        Raises:
            _Refused: 403 (another origin, or a missing or wrong CSRF token), 408, 413.
        """
        self._same_origin(request)
        form = await self._form(request)
        if not csrf_matches(login.csrf_token, form.get("csrf", "")):
            log.info("dashboard: refused %s %s: wrong CSRF token", request.method, request.path)
            raise _Refused(403, "The form's security token is missing or stale; reload the page and retry.")
        return form

    def _login_page(self, message: str = "", username: str = "", status: int = 200) -> web.Response:
        token = secrets.token_urlsafe(32)
        response = _html(render.login_page(token, message, username), status)
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=LOGIN_COOKIE_MAX_AGE,
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
        )
        return response

    async def home(self, request: web.Request) -> web.Response:
        """GET /dashboard/."""
        target = "devices" if await self._current(request) is not None else "login"
        return _see_other(f"{render.BASE}/{target}")

    async def login_form(self, request: web.Request) -> web.Response:
        """GET /dashboard/login."""
        return self._login_page()

    async def login(self, request: web.Request) -> web.Response:
        """POST /dashboard/login: username, password, csrf."""
        self._same_origin(request)
        form = await self._form(request)
        if not csrf_matches(request.cookies.get(LOGIN_COOKIE, ""), form.get("csrf", "")):
            return self._login_page("The login form expired; log in again.", status=403)
        username = form.get("username", "").strip()
        password = form.get("password", "")
        if not username or not password or len(username) > USERNAME_MAX * 4 or len(password) > PASSWORD_MAX:
            return self._login_page("Enter your username and password.", username[:USERNAME_MAX], 400)
        try:
            await self._check_login(username, password, request.remote or "")
        except ApiError as exc:
            message = "Wrong username or password." if exc.status == 401 else exc.message
            response = self._login_page(message, username, exc.status)
            if exc.retry_after:
                response.headers["Retry-After"] = str(exc.retry_after)
            return response
        session_id, _login = await self.logins.create(username, self._clock())
        log.info("dashboard: %r logged in from %s", username, request.remote)
        response = _see_other(f"{render.BASE}/devices")
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=int(self._ttl),
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
        )
        response.del_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """POST /dashboard/logout: csrf."""
        found = await self._current(request)
        if found is not None:
            await self._checked_form(request, found[1])
            await self.logins.end(found[0])
        response = _see_other(f"{render.BASE}/login")
        response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    # -- pages ------------------------------------------------------------------------------------

    async def devices(self, request: web.Request) -> web.Response:
        """GET /dashboard/devices."""
        login = await self._required(request)
        user = login.username
        rows = self._view.device_rows(user)
        holders = await self._view.holders([r.serial for r in rows])
        rows = [self._view.with_holders(r, holders) for r in rows]
        notice = None if holders is None else holders.problem
        return _html(render.devices_page(rows, user, login.csrf_token, self._view.is_operator(user), notice))

    async def device(self, request: web.Request) -> web.Response:
        """GET /dashboard/devices/{serial}: 404 for a device the account may not see."""
        login = await self._required(request)
        user = login.username
        page = self._view.device_page(user, request.match_info["serial"])
        if page is None:
            raise _Refused(404, "No such device among yours. Pair it first (dvrlink pair).")
        holders = await self._view.holders([page.row.serial])
        page = dataclasses.replace(page, row=self._view.with_holders(page.row, holders))
        return _html(
            render.device_page(
                page,
                user,
                login.csrf_token,
                self._view.is_operator(user),
                self._view.clustered,
                None if holders is None else holders.problem,
            )
        )

    async def rename(self, request: web.Request) -> web.Response:
        """POST /dashboard/devices/{serial}/name: csrf, name (empty: no name)."""
        login = await self._required(request)
        form = await self._checked_form(request, login)
        serial = request.match_info["serial"]
        name = form.get("name", "").strip()
        if len(name) > NAME_MAX or not name.isprintable():
            raise _Refused(400, f"A name is at most {NAME_MAX} printable characters.")
        if not self._view.rename(login.username, serial, name or None):
            raise _Refused(404, "No such device among yours. Pair it first (dvrlink pair).")
        return _see_other(f"{render.BASE}/devices/{render.url_part(serial)}")

    async def fleet(self, request: web.Request) -> web.Response:
        """GET /dashboard/fleet: 403 for viewers."""
        login = await self._required(request)
        if not self._view.is_operator(login.username):
            raise _Refused(
                403, "The fleet page is for operators (dashboard_operators in the broker's config)."
            )
        return _html(render.fleet_page(await self._view.fleet_page(), login.username, login.csrf_token))

    async def static(self, request: web.Request) -> web.Response:
        """GET /dashboard/static/{name}."""
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            raise _Refused(404, "No such file.")
        return web.Response(
            body=body, content_type=STATIC[name], charset="utf-8", headers={"Cache-Control": "no-cache"}
        )

    # -- live -------------------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """GET /dashboard/events: the current state of every visible device, then each change, as
        ``event: presence`` messages with JSON ``{serial, state, last_seen, online_count}`` (on a
        cluster also ``node``, and ``online_count``, the fleet's, for operators only; they also
        get ``event: counters`` ``{online_count}`` at the start and when a heartbeat's fresh read
        of every node's counters changed it); ends
        when the login expires or ends (checked at each heartbeat), the broker stops, or the
        follower falls behind (the browser's EventSource then reconnects)."""
        found = await self._current(request)
        if found is None:
            raise _Refused(401, "Log in first.")
        session_id, login = found
        operator = self._view.clustered and self._view.is_operator(login.username)
        counted: int | None = None
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        subscription = self._feed.subscribe(self._view.visible_serials(login.username))
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n: following\n\n")
            rows = self._view.device_rows(login.username)
            holders = await self._view.holders([r.serial for r in rows])
            for local in rows:
                row = self._view.with_holders(local, holders)
                update = {"serial": row.serial, "state": row.state, "last_seen": row.last_seen}
                if self._view.clustered:
                    update["node"] = row.node
                await response.write(_sse(update))
            if operator:  # the fleet's online figure, live (see DashboardView.row_update)
                counted = await self._send_fleet_online(response, counted)
            while self._clock() < login.expires_at:
                try:
                    change = await asyncio.wait_for(subscription.queue.get(), self._heartbeat)
                except TimeoutError:
                    if await self._logged_out(session_id):
                        break
                    await response.write(b": keepalive\n\n")
                    if operator:  # a node that stopped drops out of the count
                        counted = await self._send_fleet_online(response, counted)
                    continue
                if change is None:
                    break
                change = await self._fleet_view(change)
                row_update = self._view.row_update(change, operator)
                await response.write(_sse(row_update))
                count = row_update.get("online_count")
                if operator and isinstance(count, int):
                    counted = count
        except ConnectionError:
            log.debug("dashboard follower of %r went away", login.username)
        finally:
            self._feed.unsubscribe(subscription)
        return response

    async def _send_fleet_online(self, response: web.StreamResponse, sent: int | None) -> int | None:
        """Send the fleet's online count (read afresh) as a ``counters`` event if it changed
        from ``sent``; the count now sent (or ``sent``)."""
        count = await self._view.fleet_online()
        if count is None or count == sent:
            return sent
        await response.write(_sse({"online_count": count}, "counters"))
        return count

    async def _logged_out(self, session_id: str) -> bool:
        """Whether a stream's login ended (a logout through any node); a store that cannot be
        reached ends no stream."""
        try:
            return await self.logins.get(session_id, self._clock()) is None
        except LoginsUnavailable:
            return False

    async def _fleet_view(self, change: PresenceChanged) -> PresenceChanged:
        """On a cluster, an offline change whose device another node holds by now (it moved, and
        the old node noticed late) is shown as online at that node."""
        if change.online or not self._view.clustered:
            return change
        holders = await self._view.holders([change.serial])
        if holders is None:
            return change
        node = holders.nodes.get(change.serial)
        reported_by = change.node or self._view.node_id
        if node is None or node == reported_by:  # the old node's key may not be released yet
            return change
        return PresenceChanged(change.serial, True, change.at, node=node)


def _sse(data: Mapping[str, object], event: str = "presence") -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
