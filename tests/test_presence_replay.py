"""A captured REGISTER replayed to the broker must not replace the device's session (sans-I/O).

The attacker copies a REGISTER off the wire and sends it again, from the device's own address (a
spoofed source), while its cookie is still fresh. The broker must neither open a new session
(the device would get UNKNOWN_SESSION at its next keepalive and miss invites until then) nor
answer with anything the attacker could use.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_mock import MockerFixture
from support.presence import Device, Lab, loopback_broker_config, of_type, spoof_udp
from support.waiting import wait_until_async

from dvrlink.broker.app import start_broker
from dvrlink.daemon.cloud_link import CloudLink
from dvrlink.protocol.presence_client import ClientConfig, ClientState, PresenceClient
from dvrlink.protocol.presence_events import (
    ClientEvent,
    ConnectionLost,
    DeviceOnline,
    InviteAnswered,
    InviteReceived,
    KeepaliveAcknowledged,
    Registered,
)
from dvrlink.protocol.presence_wire import INVITE_KIND_PING, INVITE_OK, MessageType

SERIAL = "DL-0001-0001"


def registers(lab: Lab) -> list[bytes]:
    return [b for d, b, _ in lab.wire if d == "up" and b[0] == MessageType.REGISTER]


def assert_session_intact(lab: Lab, dev: Device, session_id: int | None) -> None:
    """The device keeps its session: the next keepalive is answered and an invite gets through."""
    acks = len(of_type(dev.events, KeepaliveAcknowledged))
    seen = len(dev.events)
    lab.advance(lab.now + lab.interval + 0.5)
    lost = of_type(dev.events[seen:], ConnectionLost)
    assert not lost, f"the device lost its session after the replay: {lost}"
    assert dev.client.state is ClientState.ONLINE
    assert dev.client.session_id == session_id
    assert len(of_type(dev.events, KeepaliveAcknowledged)) == acks + 1, dev.events[-3:]
    answered_before = len(of_type(lab.server_events, InviteAnswered))
    invite_id = lab.server.send_invite(SERIAL, INVITE_KIND_PING, b"", lab.now)
    lab.pump()
    received = [e for e in of_type(dev.events, InviteReceived) if e.invite_id == invite_id]
    assert received, "the invite did not reach the device"
    dev.client.reply_invite(invite_id, INVITE_OK, b"", lab.now)
    lab.pump()
    answered = of_type(lab.server_events, InviteAnswered)[answered_before:]
    assert [e.invite_id for e in answered] == [invite_id]


def test_a_replayed_register_leaves_the_session_alone() -> None:
    lab = Lab(interval=60.0)
    dev = lab.add_device(SERIAL)
    lab.start_all()
    assert dev.client.state is ClientState.ONLINE
    session_id = dev.client.session_id
    captured = registers(lab)[-1]
    lab.advance(30.0)  # well inside the 120 s cookie lifetime, before the first keepalive
    lab.server.receive_datagram(captured, dev.address, lab.now)  # spoofed from the device's address
    lab.pump()
    online = of_type(lab.server_events, DeviceOnline)
    assert len(online) == 1, f"the replay opened a new session: {online}"
    assert_session_intact(lab, dev, session_id)
    # Once the device has used its session, the replay is not even answered.
    replies = len(lab.wire)
    lab.server.receive_datagram(captured, dev.address, lab.now)
    lab.pump()
    assert lab.server.stats["replayed"] == 1
    sent = [b for d, b, _ in lab.wire[replies:] if d == "down"]
    assert not sent, f"the broker answered the replay after the device used its session: {sent}"
    assert len(of_type(lab.server_events, DeviceOnline)) == 1
    assert_session_intact(lab, dev, session_id)


def test_an_older_register_replayed_after_a_re_registration_is_refused() -> None:
    lab = Lab(interval=60.0)
    dev = lab.add_device(SERIAL)
    lab.start_all()
    first = registers(lab)[-1]
    lab.advance(10.0)
    dev.client.network_changed(lab.now)  # registers again with a fresh cookie
    lab.pump()
    assert len(of_type(dev.events, Registered)) == 2
    session_id = dev.client.session_id
    lab.advance(20.0)
    lab.server.receive_datagram(first, dev.address, lab.now)
    lab.pump()
    assert len(of_type(lab.server_events, DeviceOnline)) == 2
    assert lab.server.stats["replayed"] == 1
    assert_session_intact(lab, dev, session_id)


@pytest.mark.parametrize("kind", ["full", "full with a ticket", "resumed by ticket"])
def test_a_register_repeated_because_registered_was_lost_gets_the_same_session(kind: str) -> None:
    """The broker answers the repeat with the same REGISTERED, byte for byte, ticket included (it
    seals the ticket again from the session key rather than keeping it)."""
    lab = Lab(interval=60.0)
    if kind != "full":
        lab.wall = 1_800_000_000.0
    dev = lab.add_device(SERIAL)
    if kind == "resumed by ticket":
        lab.start_all()
        assert dev.client.state is ClientState.ONLINE
        lab.restart_broker()
        lab.advance(lab.now + 2 * 60.0)  # the device finds the restart at a keepalive and resumes
        assert [r.resumed for r in of_type(dev.events, Registered)] == [False, True]
        lab.restart_broker()
    sent_before = len(registers(lab))
    online_before = len(of_type(lab.server_events, DeviceOnline))
    lost: list[bytes] = []

    def lose_first_registered(direction: str, data: bytes, device: object) -> bool:
        if data[0] == MessageType.REGISTERED and not lost:
            lost.append(data)
            return False
        return True

    lab.filter = lose_first_registered
    if kind == "resumed by ticket":
        lab.advance(lab.now + 2 * 60.0)
        lab.advance(lab.now + 2.5)
    else:
        lab.start_all()
        assert dev.client.state is ClientState.REGISTER_WAIT
        lab.advance(2.5)  # the device repeats its REGISTER after reply_timeout
    assert dev.client.state is ClientState.ONLINE
    assert len(registers(lab)) - sent_before == 2
    opened = len(of_type(lab.server_events, DeviceOnline)) - online_before
    assert opened == 1, "a repeated REGISTER opened a second session"
    again = [b for d, b, _ in lab.wire if d == "down" and b[0] == MessageType.REGISTERED]
    assert again[-1] == lost[0], "the repeat was not answered with the same REGISTERED"
    if kind != "full":
        assert len(lost[0]) > 150, "the REGISTERED carried no ticket (69 bytes without one)"
    resumed = [r.resumed for r in of_type(dev.events, Registered)]
    assert resumed[-1] is (kind == "resumed by ticket"), resumed
    assert_session_intact(lab, dev, dev.client.session_id)


def test_the_cookie_stamp_orders_registrations_within_one_second() -> None:
    lab = Lab(interval=60.0)
    dev = lab.add_device(SERIAL)
    lab.now = 5.2
    lab.start_all()
    first = registers(lab)[-1]
    lab.now = 5.7  # same whole second
    dev.client.network_changed(lab.now)
    lab.pump()
    assert len(of_type(dev.events, Registered)) == 2
    session_id = dev.client.session_id
    lab.now = 5.9
    lab.server.receive_datagram(first, dev.address, lab.now)
    lab.pump()
    assert len(of_type(lab.server_events, DeviceOnline)) == 2
    assert_session_intact(lab, dev, session_id)


# -- over a real broker on loopback ------------------------------------------------------------


class Collector:
    """The device core's events; answers invites at once."""

    def __init__(self, client: PresenceClient, clock: Callable[[], float]) -> None:
        self.client = client
        self.clock = clock
        self.events: list[ClientEvent] = []

    def on_event(self, event: ClientEvent) -> None:
        self.events.append(event)
        if isinstance(event, InviteReceived):
            self.client.reply_invite(event.invite_id, INVITE_OK, b"", self.clock())

    def after_step(self) -> None:
        pass

    def count(self, kind: type) -> int:
        return sum(isinstance(e, kind) for e in self.events)


@pytest.mark.skipif(os.geteuid() != 0, reason="spoofing the device's address needs a raw socket (root)")
def test_a_spoofed_replay_to_a_running_broker_leaves_the_device_online(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    async def main() -> None:
        config = loopback_broker_config(tmp_path / "state")
        running = await start_broker(config)
        loop = asyncio.get_running_loop()
        client = PresenceClient(
            ClientConfig(
                serial=SERIAL,
                broker_public_key=running.info.public_key,
                keepalive_interval=1.0,
                reply_timeout=0.3,
                retries=1,
            ),
            Ed25519PrivateKey.generate(),
        )
        sent = mocker.spy(client, "datagrams_to_send")
        events = Collector(client, loop.time)
        broker_address = running.link.local_address
        link = CloudLink(client, events, *broker_address)
        try:
            await link.start()
            await wait_until_async(
                "first keepalive acknowledged", lambda: events.count(KeepaliveAcknowledged) >= 1
            )
            captured = [d for batch in sent.spy_return_list for d in batch if d[0] == MessageType.REGISTER]
            assert len(captured) == 1, captured
            before = running.server.presence(SERIAL)
            assert before is not None and before.online
            device_address = link.local_address
            assert device_address is not None
            acks = events.count(KeepaliveAcknowledged)
            spoof_udp(device_address, broker_address, captured[0])
            # Two more keepalives (one may have been on its way already), or the session lost.
            await wait_until_async(
                "two more keepalives answered, or the session lost",
                lambda: events.count(KeepaliveAcknowledged) > acks + 1 or events.count(ConnectionLost),
            )
            lost = [e for e in events.events if isinstance(e, ConnectionLost)]
            assert not lost, f"the device lost its session after the replay: {lost}"
            after = running.server.presence(SERIAL)
            assert after is not None and after.online
            assert after.registered_at == before.registered_at, "the replay replaced the session"
            assert running.server.stats["replayed"] == 1
            running.server.send_invite(SERIAL, INVITE_KIND_PING, b"", loop.time())
            running.link.flush()
            await wait_until_async("the ping reached the device", lambda: events.count(InviteReceived) == 1)
            assert running.server.stats["registrations"] == 1
        finally:
            link.close()
            await running.close()

    asyncio.run(asyncio.wait_for(main(), 30.0))
