"""A session request for a device that sleeps by SMS, through the broker in-process on loopback:
the broker sends the wake to an SMS provider (a real HTTP server on loopback, the http backend),
holds the request, and answers once the device registers; the viewer's client shows the wake's
progress meanwhile. Also: a provider that refuses, a device that never comes, a device that does
not sleep by SMS, and one whose number is not known.

The provider plays the network: it checks the wake with the device's own verifier (its key from
the device's private key and the pinned broker key) and, for a good one, starts the device, a
real ``PresenceClient`` on a UDP socket, which registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.aio import run
from support.broker import PASSWORD, STEP, Lab, SimulatedDevice, lab
from support.waiting import wait_until_async

from dvrlink.protocol.identity import ed25519_public_bytes
from dvrlink.protocol.presence_client import ClientConfig, PresenceClient
from dvrlink.protocol.presence_report import DeviceReport
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.protocol.sms_wake import WakeConfig, WakeRequested, WakeVerifier, device_wake_key
from dvrlink.viewer.api_client import BrokerClient
from dvrlink.viewer.api_types import WakeStatus
from dvrlink.viewer.errors import ViewerError

SERIAL = "DL-0042-0001"
NUMBER = "+491701234567"
BROKER_NUMBER = "+491609876543"


class KeyedDevice(SimulatedDevice):
    """A simulated device with a given key (it must be the same device at each registration)."""

    def __init__(self, serial: str, broker_key: bytes, key: Ed25519PrivateKey) -> None:
        super().__init__(serial, broker_key)
        self.key = key
        self.public_key = ed25519_public_bytes(key)
        self.client = PresenceClient(
            ClientConfig(serial=serial, broker_public_key=broker_key, reply_timeout=1.0), key
        )


@dataclass
class Provider:
    """The SMS provider on loopback; for each good wake it starts the device (when ``deliver``)."""

    lab: Lab | None = None
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    status: int = 200
    deliver: bool = True
    delay_s: float = 0.5
    """Between the provider taking the SMS and the device registering (data up, handshake)."""
    wakes: list[WakeRequested] = field(default_factory=list)
    other: list[object] = field(default_factory=list)
    url: str = ""
    verifier: WakeVerifier | None = None

    async def handle(self, request: web.Request) -> web.Response:
        assert self.lab is not None and self.verifier is not None
        if self.status != 200:
            return web.Response(status=self.status, text="account suspended")
        form = await request.post()
        event = self.verifier.receive(str(form["from"]), str(form["text"]))
        if not isinstance(event, WakeRequested) or form["to"] != NUMBER:
            self.other.append(event)
            return web.Response(status=200, text="queued")
        self.wakes.append(event)
        if self.deliver:
            asyncio.get_running_loop().call_later(self.delay_s, self._start_device)
        return web.Response(status=200, text="queued")

    def _start_device(self) -> None:
        assert self.lab is not None
        device = KeyedDevice(SERIAL, self.lab.broker.info.public_key, self.key)
        self.lab.devices.append(device)
        asyncio.get_running_loop().create_task(device.start(self.lab.broker.info.udp_port))


@contextlib.asynccontextmanager
async def wake_lab(tmp_path: Path, provider: Provider, **gateway: Any) -> AsyncIterator[Lab]:
    """The broker with the http backend pointed at ``provider``, and the device bound, paired to
    alice, and gone to sleep."""
    app = web.Application()
    app.router.add_post("/send", provider.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    provider.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    table = {
        "backend": "http",
        "url": provider.url + "/send",
        "body": "to={to}&from={from}&text={text}",
        "content_type": "application/x-www-form-urlencoded",
        "sender": BROKER_NUMBER,
        "wake_hold_s": 20,
        **gateway,
    }
    try:
        async with lab(tmp_path, sms_gateway=table) as t:
            provider.lab = t
            wake_key = device_wake_key(provider.key, t.broker.info.public_key, SERIAL)
            provider.verifier = WakeVerifier(wake_key, WakeConfig(allowed_senders=frozenset({BROKER_NUMBER})))
            registry = t.broker.registry
            registry.check_binding(
                SERIAL, ed25519_public_bytes(provider.key), time.time(), manifest_only=False
            )
            registry.record_report(
                SERIAL, DeviceReport(rat="lte", sms_wake_number=NUMBER).as_dict(), time.time()
            )
            registry.create_user("alice", PASSWORD, time.time())
            registry.record_pairing("alice", SERIAL, bytes(32), time.time())
            yield t
    finally:
        await runner.cleanup()


def test_a_session_request_wakes_the_device_by_sms_and_is_answered_once_it_registers(tmp_path: Path) -> None:
    provider = Provider()

    async def main() -> None:
        async with wake_lab(tmp_path, provider) as t:
            headers = await t.login()
            request = asyncio.ensure_future(t.call("POST", "/v1/sessions", headers, json={"serial": SERIAL}))
            seen: list[dict[str, Any]] = []

            async def wake_state() -> str | None:
                status, body = await t.call("GET", f"/v1/devices/{SERIAL}/wake", headers)
                if status == 200:
                    seen.append(body)
                return body.get("state") if status == 200 else None

            await wait_until_async("the wake under way", lambda: provider.wakes, seen=lambda: provider.other)
            status, body = await asyncio.wait_for(request, STEP + 20)
            assert status == 201, body
            assert body["serial"] == SERIAL and body["turn"]
            assert await wake_state() == "online"
            (wake,) = provider.wakes
            assert seen[-1]["via"] == "http text" and seen[-1]["sms_sent_at"] is not None
            assert seen[-1]["elapsed_s"] >= provider.delay_s
            device = t.broker.registry.device(SERIAL)
            assert device is not None and device.sms_counter == wake.counter
            # online now: the next request is answered at once and sends no SMS
            status, body = await t.call("POST", "/v1/sessions", headers, json={"serial": SERIAL})
            assert status == 201, body
            assert len(provider.wakes) == 1 and not provider.other

    run(main)


def test_the_viewer_client_shows_the_wake_while_the_broker_holds_its_request(tmp_path: Path) -> None:
    provider = Provider(delay_s=2.5)

    async def main() -> None:
        async with wake_lab(tmp_path, provider) as t:
            headers = await t.login()
            token = headers["Authorization"].split()[1]
            cafile = tmp_path / "broker.pem"
            cafile.write_bytes(Path(t.broker.info.cert).read_bytes())
            shown: list[WakeStatus] = []
            url = f"https://localhost:{t.broker.info.https_port}"
            async with BrokerClient(url, cacert=str(cafile), token=token) as client:
                grant = await client.create_session(SERIAL, PathPolicy.ALL, on_wake=shown.append)
            assert grant.serial == SERIAL
            assert shown, "no wake progress shown while the request was held"
            assert {s.state for s in shown} <= {"sending", "sent"}
            assert shown[-1].describe().startswith("waking the recorder by SMS… sent (http text), ")
            assert len(provider.wakes) == 1

    run(main)


def test_a_refusing_provider_a_device_that_never_comes_and_devices_that_cannot_be_woken(
    tmp_path: Path,
) -> None:
    provider = Provider(status=402, deliver=False)

    async def main() -> None:
        async with wake_lab(tmp_path, provider, wake_hold_s=5, resend_after_s=5) as t:
            headers = await t.login()
            status, body = await t.call("POST", "/v1/sessions", headers, json={"serial": SERIAL})
            assert status == 502 and body["error"] == "wake_failed", body
            assert "answered 402" in body["message"] and body["wake"]["state"] == "failed"
            provider.status = 200  # the SMS goes out now, but the device never registers
            status, body = await t.call("POST", "/v1/sessions", headers, json={"serial": SERIAL})
            assert status == 504 and body["error"] == "device_not_woken", body
            assert body["wake"]["state"] == "timed_out" and len(provider.wakes) == 1
            registry = t.broker.registry
            registry.record_report(SERIAL, DeviceReport(rat="lte", sms_wake_number="").as_dict(), time.time())
            status, body = await t.call("POST", "/v1/sessions", headers, json={"serial": SERIAL})
            assert status == 409 and "--number +E164" in body["message"], body
            registry.record_report(SERIAL, DeviceReport(rat="lte").as_dict(), time.time())  # always mode
            status, body = await t.call("POST", "/v1/sessions", headers, json={"serial": SERIAL})
            assert status == 409 and body["error"] == "device_offline", body
            assert "does not sleep by SMS" in body["message"]
            assert len(provider.wakes) == 1

    run(main)


def test_a_viewer_sees_why_a_wake_failed(tmp_path: Path) -> None:
    provider = Provider(status=402, deliver=False)

    async def main() -> None:
        async with wake_lab(tmp_path, provider) as t:
            headers = await t.login()
            token = headers["Authorization"].split()[1]
            cafile = tmp_path / "broker.pem"
            cafile.write_bytes(Path(t.broker.info.cert).read_bytes())
            url = f"https://localhost:{t.broker.info.https_port}"
            async with BrokerClient(url, cacert=str(cafile), token=token) as client:
                with pytest.raises(ViewerError, match="could not send its wake SMS"):
                    await client.create_session(SERIAL, PathPolicy.ALL, on_wake=lambda _: None)

    run(main)
