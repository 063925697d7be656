"""Presence over TCP/TLS: the broker's listener and router, the device's TCP link, and the switch
between UDP and TCP with a real broker on loopback (UDP "blocked" by a switchable relay socket)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.aio import run
from support.presence import loopback_broker_config
from support.waiting import wait_until_async

from dvrlink.broker.app import RunningBroker, start_broker
from dvrlink.broker.presence_tcp import TransportRouter, is_stream_address, stream_address
from dvrlink.daemon.broker_nodes import BrokerNode, NodeList
from dvrlink.daemon.cloud_link import CloudLink, EventHandler
from dvrlink.daemon.presence_transport import (
    Link,
    PolicyConfig,
    PresenceTransport,
    TcpLink,
    Transport,
    TransportPolicy,
    presence_tls_context,
    stun_reaches,
)
from dvrlink.protocol.presence_client import ClientConfig, ClientState, PresenceClient
from dvrlink.protocol.presence_events import Address, ClientEvent, InviteReceived, Registered, ServerEvent
from dvrlink.protocol.presence_stream import encode_frame

SERIAL = "DL-TCP-0001"


@contextlib.asynccontextmanager
async def broker(tmp_path: Path) -> AsyncIterator[RunningBroker]:
    running = await start_broker(loopback_broker_config(tmp_path / "state"))
    try:
        yield running
    finally:
        await running.close()


class Events:
    """Collects the device core's events."""

    def __init__(self) -> None:
        self.events: list[ClientEvent] = []
        self.steps = 0

    def on_event(self, event: ClientEvent) -> None:
        self.events.append(event)

    def after_step(self) -> None:
        self.steps += 1


def device(running: RunningBroker, reply_timeout: float = 0.3, keepalive: float = 1.0) -> PresenceClient:
    return PresenceClient(
        ClientConfig(
            serial=SERIAL,
            broker_public_key=running.info.public_key,
            keepalive_interval=keepalive,
            reply_timeout=reply_timeout,
            retries=1,
            backoff_initial=0.05,
            backoff_max=0.2,
        ),
        Ed25519PrivateKey.generate(),
    )


def tcp_address(running: RunningBroker) -> Address:
    assert running.presence_tcp is not None
    return running.presence_tcp.address


# -- the router ----------------------------------------------------------------------------------


class FakeServer:
    def __init__(self) -> None:
        self.stats = {"dropped": 0}
        self.received: list[tuple[bytes, Address]] = []
        self.outbox: list[tuple[bytes, Address]] = []

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        self.received.append((data, address))
        if data == b"bad":
            self.stats["dropped"] += 1

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self.outbox = self.outbox, []
        return out

    def next_event(self) -> ServerEvent | None:
        return None

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass


def test_the_router_sends_stream_addresses_to_tcp_and_the_rest_to_udp() -> None:
    core = FakeServer()
    router = TransportRouter(core)
    tcp_peer = stream_address(("198.51.100.7", 40000))
    assert is_stream_address(tcp_peer) and not is_stream_address(("198.51.100.7", 40000))
    core.outbox = [(b"a", ("198.51.100.7", 40000)), (b"b", tcp_peer)]
    assert router.datagrams_to_send() == [(b"a", ("198.51.100.7", 40000))]
    assert router.unrouted == 1  # no TCP listener attached yet
    written: list[tuple[bytes, Address]] = []
    router.attach(lambda data, address: written.append((data, address)))
    core.outbox = [(b"c", tcp_peer), (b"d", ("2001:db8::1", 9))]
    assert router.datagrams_to_send() == [(b"d", ("2001:db8::1", 9))]
    assert written == [(b"c", tcp_peer)]
    # a UDP datagram claiming a stream address as its source never reaches the core
    router.receive_datagram(b"x", tcp_peer, 0.0)
    assert core.received == [] and router.spoofed == 1
    assert router.receive_stream(b"ok", tcp_peer, 0.0) is True
    assert router.receive_stream(b"bad", tcp_peer, 0.0) is False


# -- the broker's listener with the device's TCP link ---------------------------------------------


def test_a_device_registers_over_tls_and_gets_invites(tmp_path: Path) -> None:
    async def main() -> None:
        async with broker(tmp_path) as running:
            core = device(running)
            events = Events()
            host, port = tcp_address(running)
            link = TcpLink(core, events, host, port, tls=presence_tls_context())
            await link.start()
            try:
                await wait_until_async("registered over TCP", lambda: core.state is ClientState.ONLINE)
                registered = next(e for e in events.events if isinstance(e, Registered))
                # the reflexive address is the TCP mapping the broker sees: the link's local address
                assert registered.reflexive_address == link.local_address
                info = running.server.presence(SERIAL)
                assert info is not None and info.online and is_stream_address(info.address or ("", 0))
                invite_id = running.server.send_invite(SERIAL, 9, b"hello", asyncio.get_running_loop().time())
                running.link.flush()
                await wait_until_async(
                    "invite received", lambda: any(isinstance(e, InviteReceived) for e in events.events)
                )
                invite = next(e for e in events.events if isinstance(e, InviteReceived))
                assert (invite.invite_id, invite.body) == (invite_id, b"hello")
                # keepalives keep flowing over the stream
                before = core.stats["received"]
                await wait_until_async(
                    "a keepalive acknowledged", lambda: core.stats["received"] > before + 1
                )
            finally:
                link.close()
            await wait_until_async("GOODBYE seen", lambda: not running.server.presence(SERIAL).online)  # type: ignore[union-attr]

    run(main)


def test_a_dropped_connection_is_reopened_and_the_device_registers_again(tmp_path: Path) -> None:
    async def main() -> None:
        async with broker(tmp_path) as running:
            core = device(running)
            host, port = tcp_address(running)
            link = TcpLink(core, Events(), host, port, tls=presence_tls_context(), reconnect_delay_s=0.05)
            await link.start()
            try:
                await wait_until_async("registered", lambda: core.state is ClientState.ONLINE)
                first = core.session_id
                assert running.presence_tcp is not None
                running.presence_tcp.disconnect_all()
                await wait_until_async("registered again", lambda: core.session_id not in (None, first))
                assert link.connections == 2
            finally:
                link.close()

    run(main)


async def raw_tls(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(address[0], address[1], ssl=presence_tls_context())


def test_garbage_closes_that_connection_and_the_broker_keeps_serving(tmp_path: Path) -> None:
    async def main() -> None:
        async with broker(tmp_path) as running:
            address = tcp_address(running)
            assert running.presence_tcp is not None
            for garbage in (
                b"\x00\x00",
                b"\xff\xff" + bytes(64),
                b"GET / HTTP/1.1\r\n\r\n",
                b"\x00\x02\x30\x31",
            ):
                reader, writer = await raw_tls(address)
                writer.write(garbage)
                await writer.drain()
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the broker
                writer.close()
            assert running.presence_tcp.bad_streams == 4
            # plain TCP without TLS is not presence either: the handshake fails, nothing breaks
            reader, writer = await asyncio.open_connection(*address)
            writer.write(encode_frame(bytes([4, 1]) + bytes(46)))
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 20) == b""
            writer.close()
            # and a real device still registers
            core = device(running)
            link = TcpLink(core, Events(), *address, tls=presence_tls_context())
            await link.start()
            try:
                await wait_until_async("registered", lambda: core.state is ClientState.ONLINE)
            finally:
                link.close()

    run(main, bound=45)


def test_a_hello_over_tcp_gets_its_cookie_in_a_frame(tmp_path: Path) -> None:
    async def main() -> None:
        async with broker(tmp_path) as running:
            reader, writer = await raw_tls(tcp_address(running))
            hello = bytes([4, 1]) + bytes(range(16)) + bytes(30)
            writer.write(encode_frame(hello)[:3])  # split writes are fine
            await writer.drain()
            writer.write(encode_frame(hello)[3:])
            length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
            cookie = await reader.readexactly(length)
            assert length == 38 and cookie[0] == 5 and cookie[2:18] == bytes(range(16))
            writer.close()

    run(main)


def test_connections_per_ip_are_limited(tmp_path: Path) -> None:
    async def main() -> None:
        async with broker(tmp_path) as running:
            tcp = running.presence_tcp
            assert tcp is not None
            tcp.config = dataclasses.replace(tcp.config, max_per_ip=2)
            writers = []
            for _ in range(2):
                _, writer = await raw_tls(tcp_address(running))
                writers.append(writer)
            await wait_until_async("two open", lambda: tcp.connection_count == 2)
            reader, writer = await raw_tls(tcp_address(running))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert tcp.refused == 1 and tcp.connection_count == 2
            for w in [*writers, writer]:
                w.close()

    run(main)


# -- the switch between transports ---------------------------------------------------------------


class UdpGate(asyncio.DatagramProtocol):
    """A UDP relay in front of the broker's presence port that passes datagrams only while open
    (UDP 'blocked' on loopback without root). One upstream socket per client address."""

    def __init__(self, target: Address) -> None:
        self.target = target
        self.open = False
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: dict[Address, asyncio.DatagramTransport] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.open:
            return
        client = (str(addr[0]), int(addr[1]))
        if client in self.upstream:
            self.upstream[client].sendto(data)
            return
        task = asyncio.get_running_loop().create_task(self._connect(client, data))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, client: Address, first: bytes) -> None:
        gate = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, _addr: Any) -> None:
                if gate.open and gate.transport is not None:
                    gate.transport.sendto(reply, client)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Back, remote_addr=self.target
        )
        self.upstream[client] = transport
        transport.sendto(first)

    def close(self) -> None:
        for transport in self.upstream.values():
            transport.close()
        if self.transport is not None:
            self.transport.close()


def test_auto_falls_back_to_tcp_and_returns_to_udp_when_it_works_again(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with broker(tmp_path) as running:
            gate_transport, gate = await loop.create_datagram_endpoint(
                lambda: UdpGate(("127.0.0.1", running.info.udp_port)), local_addr=("127.0.0.1", 0)
            )
            udp = gate_transport.get_extra_info("sockname")[:2]
            tcp = tcp_address(running)
            core = device(running, reply_timeout=0.2, keepalive=1.0)
            events = Events()
            policy = TransportPolicy(
                PolicyConfig(fallback_after_failures=2, fallback_after_s=10.0, udp_probe_interval_s=0.5),
                jitter=lambda: 0.5,
            )

            def make_link(transport: Transport, _node: BrokerNode, handler: EventHandler) -> Link:
                if transport is Transport.UDP:
                    return CloudLink(core, handler, udp[0], udp[1])
                return TcpLink(core, handler, tcp[0], tcp[1], tls=presence_tls_context())

            switch = PresenceTransport(
                core,
                events,
                policy,
                make_link,
                lambda _node: stun_reaches(udp[0], udp[1], timeout_s=0.3, initial_rto_s=0.1),
                tcp_keepalive_interval_s=3.0,
                nodes=NodeList([BrokerNode(udp[0], udp[1])]),
            )
            await switch.start()
            try:
                await wait_until_async(
                    "fell back to TCP and registered",
                    lambda: switch.transport is Transport.TCP and core.state is ClientState.ONLINE,
                )
                assert running.server.presence(SERIAL) is not None
                info = running.server.presence(SERIAL)
                assert info is not None and is_stream_address(info.address or ("", 0))
                gate.open = True
                await wait_until_async(
                    "back on UDP and registered",
                    lambda: switch.transport is Transport.UDP and core.state is ClientState.ONLINE,
                )

                # The broker may have taken a last registration over the closing TCP connection
                # after the UDP one (both in flight at the switch): the device's next UDP
                # keepalive puts it right, so wait for the broker to see it on UDP.
                def on_udp() -> bool:
                    info = running.server.presence(SERIAL)
                    return info is not None and info.online and not is_stream_address(info.address or ("", 0))

                await wait_until_async("the broker sees the device on UDP", on_udp)
                assert switch.switches == 2
            finally:
                switch.close()
                gate.close()

    run(main)
