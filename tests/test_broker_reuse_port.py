"""Two brokers of one fleet share the presence port with SO_REUSEPORT (``udp_reuse_port``): the
kernel spreads devices over both and keeps each device with one (issue 16, one broker process per
core). Real brokers and real device cores over loopback UDP."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.presence import loopback_broker_config
from support.waiting import wait_until_async

from dvrlink.broker.app import RunningBroker, start_broker
from dvrlink.daemon.cloud_link import CloudLink
from dvrlink.protocol.presence_client import ClientConfig, PresenceClient
from dvrlink.protocol.presence_events import ClientEvent, KeepaliveAcknowledged, Registered

DEVICES = 24


class Events:
    def __init__(self) -> None:
        self.events: list[ClientEvent] = []

    def on_event(self, event: ClientEvent) -> None:
        self.events.append(event)

    def after_step(self) -> None:
        pass

    def count(self, kind: type) -> int:
        return sum(isinstance(e, kind) for e in self.events)


def test_two_brokers_share_the_presence_port_and_each_device_stays_with_one(tmp_path: Path) -> None:
    async def main() -> None:
        first = await start_broker(loopback_broker_config(tmp_path / "a", udp_reuse_port=True))
        brokers: list[RunningBroker] = [first]
        links: list[CloudLink] = []
        try:
            host, port = first.link.local_address
            (tmp_path / "b").mkdir()
            shutil.copy(tmp_path / "a" / "broker_key.pem", tmp_path / "b" / "broker_key.pem")  # the fleet key
            with pytest.raises(OSError, match="another process may hold the port"):
                await start_broker(loopback_broker_config(tmp_path / "b", udp_port=port))
            second = await start_broker(
                loopback_broker_config(tmp_path / "b", udp_port=port, udp_reuse_port=True)
            )
            brokers.append(second)
            assert second.link.local_address == (host, port)
            assert second.info.public_key == first.info.public_key
            devices: list[Events] = []
            for i in range(DEVICES):
                client = PresenceClient(
                    ClientConfig(
                        serial=f"DL-RP-{i:04d}",
                        broker_public_key=first.info.public_key,
                        keepalive_interval=0.5,
                        reply_timeout=0.5,
                        retries=2,
                    ),
                    Ed25519PrivateKey.generate(),
                )
                events = Events()
                link = CloudLink(client, events, host, port)
                await link.start()
                links.append(link)
                devices.append(events)

            def each_answered(times: int) -> Callable[[], bool]:
                return lambda: all(d.count(KeepaliveAcknowledged) >= times for d in devices)

            await wait_until_async(f"{DEVICES} devices online with a keepalive answered", each_answered(1))
            counts = [b.server.online_count for b in brokers]
            assert sum(counts) == DEVICES and all(counts), f"devices per broker: {counts}"
            # Sticky: four more keepalives each, and nobody registered again (the other broker does
            # not know the session, so a move would show as a second registration).
            await wait_until_async("four more keepalives each", each_answered(5))
            again = [i for i, d in enumerate(devices) if d.count(Registered) != 1]
            assert not again, f"devices that registered again: {again}"
            on_a, on_b = (set(b.server.online_serials()) for b in brokers)
            assert not on_a & on_b and len(on_a | on_b) == DEVICES
            assert [b.server.stats["registrations"] for b in brokers] == counts
        finally:
            for link in links:
                link.close()
            for broker in brokers:
                await broker.close()

    asyncio.run(asyncio.wait_for(main(), 120.0))
