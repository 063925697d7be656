"""The dashboard against a real broker in-process (HTTPS on loopback) with simulated devices
(real presence clients on UDP): login, the login limit shared with the API, CSRF and Origin
refusals, the role split, escaping, the security headers, and live presence over SSE.

Pages are read with an aiohttp session standing in for a browser (tests/support/dashboard.py);
the real browser runs in test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from support.aio import run
from support.broker import PASSWORD, lab
from support.dashboard import DashboardClient, next_presence

from dvrlink.broker.dashboard.routes import COOKIE, CSP
from dvrlink.protocol.presence_report import DeviceReport

SERIAL = "DL-0016-0001"
OTHER = "DL-0016-0002"
XSS = "<script>alert(1)</script>"


def _users(registry: object, *names: str) -> None:
    from dvrlink.broker.registry import Registry

    assert isinstance(registry, Registry)
    for name in names:
        registry.create_user(name, PASSWORD, time.time())


def test_login_sets_a_strict_cookie_and_shows_the_devices(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            _users(t.broker.registry, "alice")
            browser = DashboardClient(t.broker)
            try:
                status, _text, resp = await browser.get("/dashboard/devices")
                assert (status, resp.headers["Location"]) == (303, "/dashboard/login")

                status, text, resp = await browser.get("/dashboard/login")
                assert status == 200
                assert '<label for="username">' in text and '<label for="password">' in text
                assert resp.headers["Content-Security-Policy"] == CSP
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert resp.headers["X-Frame-Options"] == "DENY"
                assert resp.headers["Cache-Control"] == "no-store"
                assert "<script>" not in text and "style=" not in text  # nothing inline

                status, _text, resp = await browser.post(
                    "/dashboard/login", {"username": "alice", "password": PASSWORD}
                )
                assert (status, resp.headers["Location"]) == (303, "/dashboard/devices")
                cookie = next(v for k, v in resp.headers.items() if k == "Set-Cookie" and COOKIE in v)
                for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
                    assert flag in cookie, cookie
                session_id = cookie.split(";")[0].split("=", 1)[1]
                assert len(session_id) >= 40  # 32 random bytes, base64url

                status, text, _resp = await browser.get("/dashboard/devices")
                assert status == 200 and "<h1>Devices</h1>" in text and "alice" in text
                assert "No devices yet" in text

                status, _text, resp = await browser.post("/dashboard/logout", {})
                assert (status, resp.headers["Location"]) == (303, "/dashboard/login")
                # the broker forgot the login, not only the browser: the old cookie is worthless
                async with t.http.get(
                    "/dashboard/devices", headers={"Cookie": f"{COOKIE}={session_id}"}, allow_redirects=False
                ) as resp:
                    assert (resp.status, resp.headers["Location"]) == (303, "/dashboard/login")
            finally:
                await browser.close()

    run(main)


def test_wrong_password_and_unknown_account_are_refused_alike(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            _users(t.broker.registry, "alice")
            browser = DashboardClient(t.broker)
            try:
                for username in ("alice", "nobody"):
                    status, text, _resp = await browser.login(username, "wrong password")
                    assert status == 401, text
                    assert "Wrong username or password." in text
                    assert not [c for c in browser.http.cookie_jar if c.key == COOKIE]
            finally:
                await browser.close()

    run(main)


def test_login_limit_is_shared_with_the_api(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, login_max_failures=3, login_window_s=300) as t:
            _users(t.broker.registry, "alice")
            browser = DashboardClient(t.broker)
            try:
                # two wrong guesses through the API and one through the dashboard ...
                for _ in range(2):
                    status, _body = await t.call(
                        "POST", "/v1/tokens", json={"username": "alice", "password": "guess"}
                    )
                    assert status == 401
                status, _text, _resp = await browser.login("alice", "guess")
                assert status == 401
                # ... and the right password is refused on both for a while
                status, text, resp = await browser.login("alice", PASSWORD)
                assert status == 429, text
                assert "too many failed logins" in text
                assert int(resp.headers["Retry-After"]) > 0
                status, body = await t.call(
                    "POST", "/v1/tokens", json={"username": "alice", "password": PASSWORD}
                )
                assert (status, body["error"]) == (429, "rate_limited")
            finally:
                await browser.close()

    run(main)


def test_posts_without_the_csrf_token_or_from_another_origin_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            _users(t.broker.registry, "alice")
            device = await t.device(SERIAL)
            t.broker.registry.record_pairing("alice", SERIAL, bytes(32), time.time())
            browser = DashboardClient(t.broker)
            try:
                # the login form itself: its token must match its cookie, and the origin this one
                await browser.get("/dashboard/login")
                fields = {"username": "alice", "password": PASSWORD}
                status, text, _resp = await browser.post("/dashboard/login", fields, csrf="forged")
                assert status == 403 and "expired" in text
                await browser.get("/dashboard/login")
                status, _text, _resp = await browser.post(
                    "/dashboard/login", fields, origin="https://evil.example"
                )
                assert status == 403
                assert (await browser.login("alice", PASSWORD))[0] == 303

                rename = f"/dashboard/devices/{SERIAL}/name"
                status, text, _resp = await browser.post(rename, {"name": "porch"}, csrf=None)
                assert status == 403 and "security token" in text
                status, _text, _resp = await browser.post(rename, {"name": "porch"}, csrf="0" * 43)
                assert status == 403
                status, _text, _resp = await browser.post(rename, {"name": "porch"}, origin=None)
                assert status == 403
                status, _text, _resp = await browser.post(
                    rename, {"name": "porch"}, origin="https://evil.example"
                )
                assert status == 403
                status, _text, _resp = await browser.post("/dashboard/logout", {}, csrf=None)
                assert status == 403
                assert t.broker.registry.pairing("alice", SERIAL).name is None  # type: ignore[union-attr]

                status, _text, resp = await browser.post(rename, {"name": "porch"})
                assert (status, resp.headers["Location"]) == (303, f"/dashboard/devices/{SERIAL}")
                assert t.broker.registry.pairing("alice", SERIAL).name == "porch"  # type: ignore[union-attr]
                assert (await browser.get("/dashboard/devices"))[0] == 200  # still logged in
            finally:
                await browser.close()
                device.close()

    run(main)


def test_viewers_see_only_their_devices_and_operators_the_fleet(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, dashboard_operators=["olga"]) as t:
            _users(t.broker.registry, "alice", "bob", "olga")
            await t.device(SERIAL)
            await t.device(OTHER)
            t.broker.registry.record_pairing("alice", SERIAL, bytes(32), time.time())
            t.broker.registry.record_pairing("bob", OTHER, bytes(32), time.time())
            bob, olga = DashboardClient(t.broker), DashboardClient(t.broker)
            try:
                assert (await bob.login("bob", PASSWORD))[0] == 303
                status, text, _resp = await bob.get("/dashboard/devices")
                assert status == 200 and OTHER in text and SERIAL not in text
                assert "/dashboard/fleet" not in text
                assert (await bob.get(f"/dashboard/devices/{OTHER}"))[0] == 200
                status, text, _resp = await bob.get(f"/dashboard/devices/{SERIAL}")
                assert status == 404 and SERIAL not in text.replace(f"/dashboard/devices/{SERIAL}", "")
                assert (await bob.get("/dashboard/devices/DL-0016-9999"))[0] == 404
                status, text, _resp = await bob.get("/dashboard/fleet")
                assert status == 403 and "operators" in text
                status, _text, _resp = await bob.post(f"/dashboard/devices/{SERIAL}/name", {"name": "mine"})
                assert status == 404
                assert t.broker.registry.pairing("alice", SERIAL).name is None  # type: ignore[union-attr]

                assert (await olga.login("olga", PASSWORD))[0] == 303
                status, text, _resp = await olga.get("/dashboard/devices")
                assert status == 200 and SERIAL in text and OTHER in text and "(operator)" in text
                status, text, _resp = await olga.get("/dashboard/fleet")
                assert status == 200
                assert '<dt>Online now</dt><dd data-field="online_count">2</dd>' in text
                assert "<dt>Devices bound</dt><dd>2</dd>" in text
                report = DeviceReport(signal_dbm=-71, rat="lte", data_used=12_345_678, nat_lifetime_s=120)
                t.broker.registry.record_report(SERIAL, report.as_dict(), time.time())
                status, text, _resp = await olga.get("/dashboard/devices")
                row = text[text.index(f'<tr data-serial="{SERIAL}">') :].split("</tr>")[0]
                for shown in (
                    ">online<",
                    ">-71 dBm<",
                    ">lte<",
                    ">12.3 MB<",
                    ">type not reported (mapping 120 s)<",
                    ">none<",
                ):
                    assert shown in row, (shown, row)
                classified = DeviceReport(**{**report.as_dict(), "nat_type": "EIM/APDF"})
                t.broker.registry.record_report(SERIAL, classified.as_dict(), time.time())
                status, text, _resp = await olga.get("/dashboard/devices")
                row = text[text.index(f'<tr data-serial="{SERIAL}">') :].split("</tr>")[0]
                assert ">EIM/APDF (mapping 120 s)<" in row, row
                status, text, _resp = await olga.get(f"/dashboard/devices/{SERIAL}")
                assert "<dt>NAT</dt><dd>EIM/APDF (mapping 120 s)</dd>" in text
                assert "<dt>nat_type</dt><dd>EIM/APDF</dd>" in text

                # sessions: before the viewer reports a path, the broker knows only the policy it signalled
                auth = await t.login("bob")
                for policy in ("relay_only", "all"):
                    status, body = await t.call(
                        "POST", "/v1/sessions", auth, json={"serial": OTHER, "policy": policy}
                    )
                    assert status == 201, body
                status, text, _resp = await olga.get("/dashboard/fleet")
                assert "<dt>Sessions signalled and open</dt><dd>2</dd>" in text
                assert "<dt>Relay share of sessions</dt><dd>50 %</dd>" in text
                status, text, _resp = await bob.get("/dashboard/devices")
                assert ">2 open: 1 relay, 1 path not reported yet<" in text
                status, text, _resp = await olga.get(f"/dashboard/devices/{SERIAL}")
                assert status == 200 and "not paired to you; 1 other account paired" in text
                assert 'id="device-name"' not in text  # names belong to pairings
            finally:
                await bob.close()
                await olga.close()

    run(main)


def test_a_device_name_that_is_markup_shows_as_text(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            _users(t.broker.registry, "alice")
            await t.device(SERIAL)
            t.broker.registry.record_pairing("alice", SERIAL, bytes(32), time.time())
            browser = DashboardClient(t.broker)
            try:
                await browser.login("alice", PASSWORD)
                status, _text, _resp = await browser.post(f"/dashboard/devices/{SERIAL}/name", {"name": XSS})
                assert status == 303
                assert t.broker.registry.pairing("alice", SERIAL).name == XSS  # type: ignore[union-attr]
                for path in ("/dashboard/devices", f"/dashboard/devices/{SERIAL}"):
                    status, text, resp = await browser.get(path)
                    assert status == 200
                    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
                    assert "<script>alert" not in text
                    assert resp.headers["Content-Security-Policy"] == CSP
                # the login form echoes a username back: escaped too
                other = DashboardClient(t.broker)
                try:
                    status, text, _resp = await other.login('"><script>alert(2)</script>', "x")
                    assert status == 401 and "<script>alert" not in text and "&quot;&gt;&lt;script" in text
                finally:
                    await other.close()
            finally:
                await browser.close()

    run(main)


def test_presence_changes_arrive_over_sse(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            _users(t.broker.registry, "alice")
            device = await t.device(SERIAL)
            stranger = await t.device(OTHER)  # not paired to alice: never in her stream
            t.broker.registry.record_pairing("alice", SERIAL, bytes(32), time.time())
            browser = DashboardClient(t.broker)
            try:
                async with browser.http.get("/dashboard/events") as refused:
                    assert refused.status == 401
                await browser.login("alice", PASSWORD)
                async with browser.http.get("/dashboard/events") as stream:
                    assert stream.status == 200
                    assert stream.headers["Content-Type"] == "text/event-stream"
                    lines: list[str] = []
                    await next_presence(stream, SERIAL, "online", lines)  # the snapshot
                    loop = asyncio.get_running_loop()
                    stranger.client.stop(loop.time())
                    stranger.flush()
                    device.client.stop(loop.time())  # GOODBYE: offline at once
                    device.flush()
                    update = await next_presence(stream, SERIAL, "offline", lines)
                    assert update["online_count"] == 0 and update["last_seen"].endswith(" UTC")
                    assert not [line for line in lines if OTHER in line], lines
                    device.client.start(loop.time())  # registers again
                    device.flush()
                    update = await next_presence(stream, SERIAL, "online")
                    assert update["online_count"] == 1
            finally:
                await browser.close()

    run(main)


def test_the_api_names_a_paired_device(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            await t.device(SERIAL)
            alice, bob = await t.login("alice"), await t.login("bob")
            t.broker.registry.record_pairing("alice", SERIAL, bytes(32), time.time())
            path = f"/v1/devices/{SERIAL}/name"
            assert await t.call("PUT", path, alice, json={"name": " porch "}) == (
                200,
                {"serial": SERIAL, "name": "porch"},
            )
            status, body = await t.call("GET", "/v1/devices", alice)
            assert [d["name"] for d in body["devices"]] == ["porch"]
            status, body = await t.call("PUT", path, bob, json={"name": "mine"})
            assert (status, body["error"]) == (403, "not_paired")
            status, body = await t.call("PUT", "/v1/devices/DL-0016-9999/name", alice, json={"name": "x"})
            assert (status, body["error"]) == (404, "unknown_device")
            for bad in ("x" * 65, "tab\there", 7):
                status, body = await t.call("PUT", path, alice, json={"name": bad})
                assert (status, body["error"]) == (400, "bad_request"), bad
            assert await t.call("PUT", path, alice, json={"name": None}) == (
                200,
                {"serial": SERIAL, "name": None},
            )
            assert t.broker.registry.pairing("alice", SERIAL).name is None  # type: ignore[union-attr]

    run(main)
