"""Alarm webhooks: signed deliveries retried until the endpoint takes them, and the SSRF guard.

The broker runs in-process with a real presence device; the webhook endpoint is a real HTTP
server on loopback (allowed by ``webhook_allowed_networks``, as a lab would). Waits are bounded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pytest_mock import MockerFixture
from support.aio import run
from support.broker import STEP, lab, pairing_body

from dvrlink.broker.webhooks import WebhookPolicy, WebhookRefusedError, sign
from dvrlink.protocol.alarm_link import AlarmSender, SenderConfig
from dvrlink.protocol.alarm_wire import AlarmKind, AlarmRecord

SERIAL = "DL-0015-0002"


class Endpoint:
    """A webhook receiver that fails its first ``failures`` requests with 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[int, dict[str, str], bytes]] = []
        self.accepted: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        failing = len(self.requests) < self.failures
        self.requests.append((500 if failing else 200, dict(request.headers), body))
        if not failing:
            self.accepted.append({"headers": dict(request.headers), "body": body})
        self.changed.set()
        return web.Response(status=500 if failing else 200)

    async def wait_accepted(self, count: int) -> None:
        async def until() -> None:
            while len(self.accepted) < count:
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(until(), STEP)
        except TimeoutError:
            raise AssertionError(
                f"{len(self.accepted)} of {count} deliveries after {STEP} s; statuses "
                f"{[r[0] for r in self.requests]}"
            ) from None


def test_an_endpoint_failing_3_times_still_gets_each_alarm_once_signed_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        endpoint = Endpoint(failures=3)
        app = web.Application()
        app.router.add_post("/hook", endpoint.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with lab(
                tmp_path, webhook_allowed_networks=["127.0.0.0/8"], webhook_retry_initial_s=0.05
            ) as t:
                auth = await t.login("alice")
                device = await t.device(SERIAL, alarms=AlarmSender(SenderConfig(), 9))
                body, _ = pairing_body(device)
                status, _answer = await t.call("POST", f"/v1/devices/{SERIAL}/pairings", auth, json=body)
                assert status == 200
                url = f"http://127.0.0.1:{port}/hook"
                status, hook = await t.call("PUT", "/v1/webhook", auth, json={"url": url})
                assert status == 200, hook
                secret = base64.b64decode(hook["secret"])
                status, shown = await t.call("GET", "/v1/webhook", auth)
                assert status == 200 and shown["url"] == url and "secret" not in shown
                for seq in range(1, 6):
                    record = AlarmRecord(seq, int(time.time() * 1000), AlarmKind.MOTION_START, seq, "zone 1")
                    device.client.send_alarm(record, device.loop.time())
                    device.flush()
                await endpoint.wait_accepted(5)
                assert [r[0] for r in endpoint.requests] == [500, 500, 500, 200, 200, 200, 200, 200]
                events = [json.loads(a["body"])["event"] for a in endpoint.accepted]
                assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]  # each once, in order
                assert {e["kind"] for e in events} == {"MotionStart"}
                retried = {r[1]["X-Dvrlink-Event-Id"] for r in endpoint.requests[:4]}
                assert len(retried) == 1  # the same alarm, same id, until it was taken
                for accepted in endpoint.accepted:
                    headers = accepted["headers"]
                    expected = sign(secret, int(headers["X-Dvrlink-Timestamp"]), accepted["body"])
                    assert headers["X-Dvrlink-Signature"] == expected
                dispatcher = t.broker.webhooks
                assert dispatcher is not None and dispatcher.stats["failed_attempts"] == 3
                assert t.broker.alarms is not None and t.broker.alarms.store.delivery_users() == []
        finally:
            await runner.cleanup()

    run(main)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("https://[::1]:8443/hook", "::1 is a loopback address"),
        ("https://10.20.30.40/hook", "10.20.30.40 is a private address"),
        ("https://192.168.1.10/hook", "192.168.1.10 is a private address"),
        ("https://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("https://[fe80::1]/hook", "is a link-local address"),
        ("https://[::ffff:10.0.0.1]/hook", "10.0.0.1 is a private address"),
        ("https://0.0.0.0/hook", "0.0.0.0 is a"),
        ("https://100.64.1.2/hook", "100.64.1.2 is not a public address"),
        ("https://broker.example.net/hook", "points at this broker"),
        ("https://localhost:8443/hook", "points at this broker"),
        ("http://hooks.example.com/x", "is plain http: use https"),
        ("https://u:p@hooks.example.com/x", "no user name or password"),
        ("ftp://hooks.example.com/x", "must be an https:// URL"),
    ],
)
def test_the_ssrf_guard_refuses_urls_into_the_broker_and_private_networks(url: str, why: str) -> None:
    policy = WebhookPolicy.from_config([], ["broker.example.net"])
    with pytest.raises(WebhookRefusedError) as refused:
        policy.check_url(url)
    assert why in str(refused.value), str(refused.value)


def test_the_allow_list_lets_a_lab_network_through_and_nothing_else() -> None:
    policy = WebhookPolicy.from_config(["10.20.0.0/16"], [])
    policy.check_url("http://10.20.30.40:8080/hook")
    policy.check_url("https://hooks.example.com/x")
    with pytest.raises(WebhookRefusedError, match=r"10\.30\.0\.1 is a private address"):
        policy.check_url("https://10.30.0.1/hook")


def test_a_name_that_resolves_to_a_private_address_is_refused(mocker: MockerFixture) -> None:
    policy = WebhookPolicy.from_config([], [])
    resolved = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 443))]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        mocker.patch.object(loop, "getaddrinfo", return_value=resolved)  # no DNS from tests
        with pytest.raises(
            WebhookRefusedError, match=r"rebind.example.com resolves to 10.0.0.7 is a private"
        ):
            await policy.check_resolved(policy.check_url("https://rebind.example.com/hook"))

    run(main)


def test_put_webhook_refuses_with_a_clear_error(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, server_names=["broker.example.net"]) as t:
            auth = await t.login("alice")
            for url in ("https://10.0.0.1/hook", "https://broker.example.net/hook", "https://127.0.0.1:1/x"):
                status, answer = await t.call("PUT", "/v1/webhook", auth, json={"url": url})
                assert (status, answer["error"]) == (400, "webhook_refused"), answer
                assert "webhook_allowed_networks" in answer["message"] or "this broker" in answer["message"]
            status, answer = await t.call("GET", "/v1/webhook", auth)
            assert (status, answer["error"]) == (404, "no_webhook")

    run(main)
