"""The cloud link: bytes between a UDP socket and a core, one timer, and new sockets after errors."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import deque
from typing import Any

import pytest

from dvrlink.daemon.cloud_link import CloudLink, unreachable_problem
from dvrlink.protocol.presence_events import ClientEvent, ConnectionLost, InviteReceived

WAIT = 10.0  # s, bound on every wait


class FakeCore:
    """Records what the link does; sends b"hello" at start, b"bye" at stop, b"tick" per timer."""

    def __init__(self) -> None:
        self.outbox: list[bytes] = []
        self.events: deque[ClientEvent] = deque()
        self.timer: float | None = None
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.timers: asyncio.Queue[float] = asyncio.Queue()
        self.network_changes: asyncio.Queue[float] = asyncio.Queue()

    def start(self, now: float) -> None:
        self.outbox.append(b"hello")
        self.timer = now + 0.01

    def stop(self, now: float) -> None:
        self.outbox.append(b"bye")
        self.timer = None

    def receive_datagram(self, data: bytes, now: float) -> None:
        self.received.put_nowait(data)
        if data == b"invite":
            self.events.append(InviteReceived(1, 1, b""))
        self.outbox.append(b"ack:" + data)

    def datagrams_to_send(self) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out

    def next_event(self) -> ClientEvent | None:
        return self.events.popleft() if self.events else None

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        assert self.timer is not None and now >= self.timer, "called before its time"
        self.timer = None
        self.timers.put_nowait(now)
        self.outbox.append(b"tick")

    def network_changed(self, now: float) -> None:
        self.network_changes.put_nowait(now)


class Handler:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[ClientEvent] = []
        self.steps = 0
        self.fail = fail

    def on_event(self, event: ClientEvent) -> None:
        self.events.append(event)
        if self.fail:
            raise RuntimeError("handler bug")

    def after_step(self) -> None:
        self.steps += 1


class Peer(asyncio.DatagramProtocol):
    """The broker's side: records datagrams with their source address."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.put_nowait((data, (str(addr[0]), int(addr[1]))))

    async def expect(self, data: bytes) -> tuple[str, int]:
        """Wait for ``data`` (skipping others); returns its source address."""
        while True:
            got, source = await asyncio.wait_for(self.received.get(), WAIT)
            if got == data:
                return source


async def setup(handler: Handler | None = None) -> tuple[CloudLink, FakeCore, Handler, Peer]:
    loop = asyncio.get_running_loop()
    peer = Peer()
    transport, _ = await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
    port = int(transport.get_extra_info("sockname")[1])
    core, handler = FakeCore(), handler or Handler()
    link = CloudLink(core, handler, "127.0.0.1", port, rebind_after_errors=3)
    await link.start()
    return link, core, handler, peer


def endpoint_of(link: CloudLink) -> asyncio.DatagramProtocol:
    transport = link._transport
    assert transport is not None
    protocol = transport.get_protocol()
    assert isinstance(protocol, asyncio.DatagramProtocol)
    return protocol


def test_moves_datagrams_events_and_timer() -> None:
    async def scenario() -> None:
        link, core, handler, peer = await setup()
        source = await peer.expect(b"hello")
        assert source == link.local_address
        await asyncio.wait_for(core.timers.get(), WAIT)  # the one timer fired, not early
        await peer.expect(b"tick")

        assert peer.transport is not None
        peer.transport.sendto(b"invite", source)
        assert await asyncio.wait_for(core.received.get(), WAIT) == b"invite"
        await peer.expect(b"ack:invite")
        assert handler.events == [InviteReceived(1, 1, b"")]
        assert handler.steps >= 3  # start, timer, datagram

        link.close()
        await peer.expect(b"bye")  # the core's goodbye is sent before the socket closes
        peer.transport.close()
        await asyncio.sleep(0)  # let the transports' close callbacks run
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())


def test_handler_failure_does_not_stop_the_link(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        link, _core, _handler, peer = await setup(Handler(fail=True))
        source = await peer.expect(b"hello")
        assert peer.transport is not None
        peer.transport.sendto(b"invite", source)
        await peer.expect(b"ack:invite")  # still sending
        peer.transport.sendto(b"more", source)
        await peer.expect(b"ack:more")
        link.close()
        peer.transport.close()

    asyncio.run(scenario())
    assert "event handler failed" in caplog.text


def test_port_unreachable_keeps_the_socket() -> None:
    async def scenario() -> None:
        link, core, _handler, peer = await setup()
        before = link.local_address
        for _ in range(10):
            endpoint_of(link).error_received(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
        assert link._reopen is None  # nothing scheduled
        assert link.local_address == before
        assert core.network_changes.empty()
        link.close()
        assert peer.transport is not None
        peer.transport.close()

    asyncio.run(scenario())


def test_repeated_socket_errors_open_a_new_socket_and_tell_the_core(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        link, core, _handler, peer = await setup()
        old = await peer.expect(b"hello")
        for _ in range(2):
            endpoint_of(link).error_received(OSError(errno.ENETUNREACH, "Network is unreachable"))
        assert link._reopen is None  # two errors are not enough
        endpoint_of(link).error_received(OSError(errno.ENETUNREACH, "Network is unreachable"))
        await asyncio.wait_for(core.network_changes.get(), WAIT)
        new = link.local_address
        assert new is not None and new != old

        # Traffic uses the new socket; the old one is closed.
        assert peer.transport is not None
        peer.transport.sendto(b"to-old", old)
        peer.transport.sendto(b"to-new", new)
        assert await asyncio.wait_for(core.received.get(), WAIT) == b"to-new"
        assert core.received.empty()
        assert await peer.expect(b"ack:to-new") == new
        link.close()
        peer.transport.close()
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(scenario())
    assert "opening a new socket" in caplog.text


def test_connection_lost_with_unchanged_route_keeps_the_socket() -> None:
    async def scenario() -> None:
        link, core, handler, peer = await setup()
        source = await peer.expect(b"hello")
        core.events.append(ConnectionLost("no keepalive reply"))
        assert peer.transport is not None
        peer.transport.sendto(b"x", source)
        await peer.expect(b"ack:x")
        assert handler.events == [ConnectionLost("no keepalive reply")]
        assert link._reopen is None  # 127.0.0.1 still routes from 127.0.0.1
        link.close()
        peer.transport.close()

    asyncio.run(scenario())


def test_the_status_says_why_the_broker_is_unreachable() -> None:
    where = "cannot connect to broker.example.net:443"
    # A timeout has no message: its type names it (it read "()" before).
    assert unreachable_problem(TimeoutError(), "broker.example.net", where) == f"{where} (TimeoutError)"
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert unreachable_problem(refused, "broker.example.net", where) == (
        f"{where} ([Errno {errno.ECONNREFUSED}] Connection refused)"
    )
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert unreachable_problem(unknown, "broker.example.net", where) == (
        "cannot resolve the broker's name broker.example.net (Name or service not known)"
    )
