"""When the broker says a device is offline: about 3 of its own keepalive intervals of silence
(learned ones too), and at once when the TCP connection that carries its presence closes.

The cores run on made-up time; the devices API (``GET /v1/devices``) is read from the real
request handlers over the same cores. One test runs a real broker with presence over TCP/TLS.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.presence import Device, Lab, loopback_broker_config, of_type
from support.waiting import wait_until_async

from dvrlink.broker.api import BrokerApi
from dvrlink.broker.app import start_broker
from dvrlink.broker.config import config_from_mapping
from dvrlink.broker.presence_gateway import PresenceGateway
from dvrlink.broker.presence_tcp import stream_address
from dvrlink.broker.registry import Registry
from dvrlink.daemon.cloud_link import CloudLink
from dvrlink.daemon.presence_transport import TcpLink, presence_tls_context
from dvrlink.protocol.identity import ed25519_public_bytes
from dvrlink.protocol.presence_client import ClientConfig, ClientState, PresenceClient
from dvrlink.protocol.presence_events import ClientEvent, DeviceOffline, KeepaliveAcknowledged

SERIAL = "DL-0010-0001"
LEARNED = 600.0
WALL = 1_800_000_000.0  # the made-up wall clock at core time 0
PASSWORD = "correct horse battery"


def learned_device(lab: Lab, interval: float = LEARNED) -> Device:
    """A registered device that has told the broker its learned keepalive interval."""
    dev = lab.add_device(SERIAL)
    lab.start_all()
    dev.client.set_keepalive_interval(interval, lab.now)
    lab.advance(lab.interval + 0.5)  # the next keepalive carries it; the ack switches the device
    assert dev.client.keepalive_interval == interval
    info = lab.server.presence(SERIAL)
    assert info is not None and info.keepalive_interval == interval
    return dev


def test_silence_of_three_learned_intervals_is_offline_and_two_is_not() -> None:
    lab = Lab(interval=25.0)
    dev = learned_device(lab)
    lab.advance(lab.now + 2 * LEARNED + 1)  # the device keeps alive every 600 s: online throughout
    assert lab.server.presence(SERIAL).online  # type: ignore[union-attr]
    last = dev.client.last_keepalive_at
    assert last is not None
    lab.filter = lambda direction, data, device: direction == "down"  # the device dies
    lab.advance(last + 2 * LEARNED)
    assert lab.server.presence(SERIAL).online, "offline after 2 intervals of silence"  # type: ignore[union-attr]
    lab.advance(last + 3 * LEARNED)
    info = lab.server.presence(SERIAL)
    assert info is not None and not info.online, f"still online after 3 intervals of silence: {info}"
    assert [e.serial for e in of_type(lab.server_events, DeviceOffline)] == [SERIAL]


def test_a_closed_presence_connection_takes_its_device_offline_at_once() -> None:
    lab = Lab(interval=25.0)
    tcp = stream_address(("198.51.100.7", 40312))
    lab.add_device(SERIAL, address=tcp)
    other = lab.add_device("DL-0010-0002", seed=9)
    lab.start_all()
    lab.advance(5.0)
    lab.server.connection_closed(stream_address(("198.51.100.7", 40313)), lab.now)  # not its connection
    assert lab.server.presence(SERIAL).online  # type: ignore[union-attr]
    lab.server.connection_closed(tcp, lab.now)
    lab.pump()
    info = lab.server.presence(SERIAL)
    assert info is not None and not info.online, f"online after its connection closed: {info}"
    offline = of_type(lab.server_events, DeviceOffline)
    assert [(e.serial, "connection" in e.reason) for e in offline] == [(SERIAL, True)]
    assert lab.server.presence("DL-0010-0002").online  # type: ignore[union-attr]
    assert other.client.state is ClientState.ONLINE


def test_a_device_that_moved_to_a_new_connection_stays_online_when_the_old_one_closes() -> None:
    lab = Lab(interval=25.0)
    first = stream_address(("198.51.100.7", 40312))
    dev = lab.add_device(SERIAL, address=first)
    lab.start_all()
    dev.address = stream_address(("198.51.100.7", 40999))  # it reconnected and keeps alive there
    dev.client.network_changed(lab.now)
    lab.pump()
    lab.server.connection_closed(first, lab.now)
    info = lab.server.presence(SERIAL)
    assert info is not None and info.online and info.address == dev.address


# -- what the devices API says --------------------------------------------------------------------


class MadeUpLoop:
    """The two things ``PresenceGateway`` asks of its loop, on the lab's made-up time."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def time(self) -> float:
        return self.lab.now

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()


def with_api(
    lab: Lab,
    tmp_path: Path,
    dev: Device,
    check: Callable[[TestClient[Any, Any], dict[str, str]], Awaitable[None]],
) -> None:
    """Run ``check(client, auth)`` against the real API handlers over ``lab``'s broker core,
    for an account that has paired ``dev``."""

    def wall() -> float:
        return WALL + lab.now

    registry = Registry(tmp_path / "registry.sqlite3")
    try:
        registry.create_user("alice", PASSWORD, wall())
        registry.check_binding(SERIAL, ed25519_public_bytes(dev.key), wall(), False)
        registry.record_pairing("alice", SERIAL, bytes(32), wall())
        token = registry.issue_token("alice", wall(), 3600.0)
        config = config_from_mapping({"state_dir": str(tmp_path / "state")}, source="test")

        async def main() -> None:
            gateway = PresenceGateway(lab.server, MadeUpLoop(lab), flush=lambda: None, wall_clock=wall)  # type: ignore[arg-type]
            api = BrokerApi(registry, gateway, config, clock=wall)
            async with TestClient(TestServer(api.build_app())) as client:
                await check(client, {"Authorization": f"Bearer {token}"})

        asyncio.run(asyncio.wait_for(main(), 30.0))
    finally:
        registry.close()


async def listed(client: TestClient[Any, Any], auth: dict[str, str]) -> dict[str, Any]:
    async with client.get("/v1/devices", headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        [device] = (await resp.json())["devices"]
    assert device["serial"] == SERIAL
    return dict(device)


def test_the_devices_api_lists_a_silent_device_offline_after_three_intervals(tmp_path: Path) -> None:
    lab = Lab(interval=25.0)
    dev = learned_device(lab)
    last = dev.client.last_keepalive_at
    assert last is not None
    lab.filter = lambda direction, data, device: direction == "down"

    async def check(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
        lab.advance(last + 2 * LEARNED)
        device = await listed(client, auth)
        assert device["online"] is True and device["keepalive_interval"] == LEARNED, device
        assert device["last_seen"] == WALL + last
        lab.advance(last + 3 * LEARNED)
        device = await listed(client, auth)
        assert device["online"] is False, f"listed online after 3 intervals of silence: {device}"
        assert device["last_seen"] == WALL + last

    with_api(lab, tmp_path, dev, check)


def test_the_devices_api_lists_a_device_offline_once_its_connection_closed(tmp_path: Path) -> None:
    lab = Lab(interval=25.0)
    tcp = stream_address(("198.51.100.7", 40312))
    dev = lab.add_device(SERIAL, address=tcp)
    lab.start_all()

    async def check(client: TestClient[Any, Any], auth: dict[str, str]) -> None:
        lab.advance(30.0)
        assert (await listed(client, auth))["online"] is True
        lab.server.connection_closed(tcp, lab.now)
        lab.advance(31.0)
        device = await listed(client, auth)
        assert device["online"] is False, f"listed online 1 s after its connection closed: {device}"

    with_api(lab, tmp_path, dev, check)


# -- a real broker, presence over TCP/TLS ---------------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.events: list[ClientEvent] = []

    def on_event(self, event: ClientEvent) -> None:
        self.events.append(event)

    def after_step(self) -> None:
        pass


def test_a_running_broker_shows_a_tcp_device_offline_when_its_connection_drops(tmp_path: Path) -> None:
    async def main() -> None:
        config = loopback_broker_config(tmp_path / "state", presence_tcp_host="127.0.0.1")
        running = await start_broker(config)
        try:
            core = PresenceClient(
                ClientConfig(
                    serial=SERIAL,
                    broker_public_key=running.info.public_key,
                    keepalive_interval=60.0,
                    reply_timeout=0.5,
                    retries=1,
                ),
                Ed25519PrivateKey.generate(),
            )
            events = Events()
            assert running.presence_tcp is not None
            host, port = running.presence_tcp.address
            link = TcpLink(core, events, host, port, tls=presence_tls_context())
            await link.start()
            try:
                await wait_until_async("registered over TCP", lambda: core.state is ClientState.ONLINE)
                assert running.server.presence(SERIAL).online  # type: ignore[union-attr]
            finally:
                link.detach()  # the daemon dies: its connection closes, no GOODBYE
            await wait_until_async(
                "offline after the connection closed (the keepalive interval is 60 s)",
                lambda: not running.server.presence(SERIAL).online,  # type: ignore[union-attr]
                timeout=5.0,
            )
            assert not of_type(events.events, KeepaliveAcknowledged)
        finally:
            await running.close()

    asyncio.run(asyncio.wait_for(main(), 30.0))


def test_a_running_broker_shows_a_silent_udp_device_offline_after_its_intervals(tmp_path: Path) -> None:
    async def main() -> None:
        config = loopback_broker_config(tmp_path / "state")
        running = await start_broker(config)
        loop = asyncio.get_running_loop()
        try:
            core = PresenceClient(
                ClientConfig(
                    serial=SERIAL,
                    broker_public_key=running.info.public_key,
                    keepalive_interval=1.0,  # the broker's shortest
                    reply_timeout=0.2,
                    retries=1,
                ),
                Ed25519PrivateKey.generate(),
            )
            events = Events()
            link = CloudLink(core, events, *running.link.local_address)
            await link.start()
            try:
                await wait_until_async(
                    "a keepalive acknowledged", lambda: of_type(events.events, KeepaliveAcknowledged)
                )
            finally:
                link.detach()  # the daemon dies: no GOODBYE
            stopped = loop.time()
            await wait_until_async(
                "offline after its keepalives stopped",
                lambda: not running.server.presence(SERIAL).online,  # type: ignore[union-attr]
                timeout=10.0,
            )
            silent = loop.time() - stopped
            # 2.5 intervals after the last keepalive, seen by a sweep that runs every second, and
            # half a second of slack for a loaded machine: under 3 intervals and a half in all
            assert silent <= 2.5 * 1.0 + 1.0 + 0.5, f"offline {silent:.1f} s after its keepalives stopped"
        finally:
            await running.close()

    asyncio.run(asyncio.wait_for(main(), 30.0))
