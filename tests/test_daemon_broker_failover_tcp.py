"""Several broker nodes over presence TCP/TLS: the same list applies where UDP is blocked.

Two real brokers in this process share the fleet key (the second's key file is a copy of the
first's, made before it starts). The device's TCP links reach them through relays that can
freeze: a frozen relay keeps the connection open and forwards nothing, as a hung node or a path
that drops everything does. The device must then be registered with the other node within two
keepalive intervals of the freeze.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.aio import run
from support.presence import loopback_broker_config
from support.waiting import wait_until_async

from dvrlink.broker.app import RunningBroker, start_broker
from dvrlink.broker.state import KEY_FILE
from dvrlink.daemon.broker_nodes import BrokerNode, NodeList
from dvrlink.daemon.cloud_link import EventHandler
from dvrlink.daemon.presence_transport import (
    Link,
    PolicyConfig,
    PresenceTransport,
    TcpLink,
    Transport,
    TransportMode,
    TransportPolicy,
    presence_tls_context,
)
from dvrlink.protocol.presence_client import ClientConfig, ClientState, PresenceClient
from dvrlink.protocol.presence_events import Address, ClientEvent, ConnectionLost, Registered

SERIAL = "DL-TCP-0016"
KEEPALIVE_S = 1.0


class FreezableRelay:
    """A TCP relay on loopback to ``target``; while ``frozen`` it reads and drops both ways."""

    def __init__(self, target: Address) -> None:
        self.target = target
        self.frozen = False
        self.server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Address:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return (str(host), int(port))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if not self.frozen:
                    dst.write(data)
        dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


class Events:
    """The device core's events with the loop time each came at."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, ClientEvent]] = []

    def on_event(self, event: ClientEvent) -> None:
        self.seen.append((asyncio.get_running_loop().time(), event))

    def after_step(self) -> None:
        pass


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[RunningBroker, RunningBroker]]:
    first = await start_broker(loopback_broker_config(tmp_path / "a"))
    try:
        (tmp_path / "b").mkdir()
        shutil.copy2(tmp_path / "a" / KEY_FILE, tmp_path / "b" / KEY_FILE)
        second = await start_broker(loopback_broker_config(tmp_path / "b"))
        try:
            assert second.info.public_key == first.info.public_key
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()


def test_a_silent_node_over_tcp_is_left_for_the_next_within_two_intervals(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with fleet(tmp_path) as (a, b):
            relays = {}
            for running in (a, b):
                assert running.presence_tcp is not None
                relays[running.info.udp_port] = FreezableRelay(running.presence_tcp.address)
            addresses = {port: await relay.start() for port, relay in relays.items()}
            node_a, node_b = (BrokerNode("127.0.0.1", r.info.udp_port) for r in (a, b))
            core = PresenceClient(
                ClientConfig(
                    serial=SERIAL,
                    broker_public_key=a.info.public_key,
                    keepalive_interval=KEEPALIVE_S,
                    reply_timeout=0.1,
                    retries=2,
                ),
                Ed25519PrivateKey.generate(),
            )
            events = Events()

            def make_link(transport: Transport, node: BrokerNode, handler: EventHandler) -> Link:
                assert transport is Transport.TCP
                return TcpLink(core, handler, *addresses[node.port], tls=presence_tls_context())

            async def no_udp(_node: BrokerNode) -> bool:
                return False

            presence = PresenceTransport(
                core,
                events,
                TransportPolicy(PolicyConfig(mode=TransportMode.TCP)),
                make_link,
                no_udp,
                tcp_keepalive_interval_s=KEEPALIVE_S,
                nodes=NodeList([node_a, node_b]),
            )
            await presence.start()
            try:
                await wait_until_async(
                    "registered with node A over TCP", lambda: core.state is ClientState.ONLINE
                )
                assert presence.node == node_a and presence.transport is Transport.TCP
                info = a.server.presence(SERIAL)
                assert info is not None and info.online

                relays[node_a.port].frozen = True
                frozen_at = loop.time()

                def on_b() -> bool:
                    info = b.server.presence(SERIAL)
                    return (
                        core.state is ClientState.ONLINE
                        and presence.node == node_b
                        and bool(info and info.online)
                    )

                await wait_until_async("registered with node B over TCP", on_b, seen=lambda: events.seen[-3:])
                [registered_at] = [t for t, e in events.seen if isinstance(e, Registered) and t > frozen_at][
                    :1
                ]
                took = registered_at - frozen_at
                assert took <= 2 * KEEPALIVE_S, (
                    f"registered with node B {took:.2f} s after node A fell silent; the bound is two "
                    f"keepalive intervals = {2 * KEEPALIVE_S:g} s"
                )
                lost = [e for t, e in events.seen if isinstance(e, ConnectionLost) and t > frozen_at]
                assert lost and lost[0].silence, lost
                assert presence.status()["endpoint"] == f"127.0.0.1:{node_b.port}"
                assert [row["in_use"] for row in presence.status()["nodes"]] == [False, True]
            finally:
                presence.close()
                for relay in relays.values():
                    await relay.close()

    run(main)
