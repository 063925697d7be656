"""The broker's UDP link: datagrams in and out, one timer, events, and no escaping exceptions."""

from __future__ import annotations

import asyncio
import socket
from collections import deque

from support.aio import run

from dvrlink.broker.presence_link import PresenceLink, start_presence_link
from dvrlink.protocol.presence_events import Address, DeviceOffline, ServerEvent

STEP = 10.0


class EchoCore:
    """A fake core: echoes datagrams upper-cased; b"boom" raises; b"timer" sets a timer 10 ms ahead."""

    def __init__(self) -> None:
        self.outbox: list[tuple[bytes, Address]] = []
        self.events: deque[ServerEvent] = deque()
        self.deadline: float | None = None
        self.fired: asyncio.Event = asyncio.Event()
        self.timer_calls = 0
        self.received: list[tuple[bytes, Address, float]] = []

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        self.received.append((data, address, now))
        if data == b"boom":
            raise RuntimeError("core bug")
        if data == b"timer":
            self.deadline = now + 0.01
        if data == b"event":
            self.events.append(DeviceOffline("DL-0001", "test"))
        self.outbox.append((data.upper(), address))

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        out, self.outbox = self.outbox, []
        return out

    def next_event(self) -> ServerEvent | None:
        return self.events.popleft() if self.events else None

    def get_timer(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.timer_calls += 1
        self.deadline = None
        self.outbox.append((b"tick", ("127.0.0.1", self.peer_port)))
        self.fired.set()

    peer_port = 0


async def _peer() -> tuple[asyncio.DatagramTransport, asyncio.Queue[bytes]]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    class Peer(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            queue.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    return transport, queue


def test_datagrams_round_trip_and_a_bad_one_does_not_escape() -> None:
    async def main() -> None:
        core = EchoCore()
        seen: list[ServerEvent] = []
        link = await start_presence_link(core, seen.append, "127.0.0.1", 0)
        peer, replies = await _peer()
        try:
            port = link.local_address[1]
            peer.sendto(b"hello", ("127.0.0.1", port))
            assert await asyncio.wait_for(replies.get(), STEP) == b"HELLO"
            peer.sendto(b"boom", ("127.0.0.1", port))
            peer.sendto(b"event", ("127.0.0.1", port))
            assert await asyncio.wait_for(replies.get(), STEP) == b"EVENT"
            assert link.errors == 1
            assert seen == [DeviceOffline("DL-0001", "test")]
            _data, address, _now = core.received[0]
            assert address == ("127.0.0.1", peer.get_extra_info("sockname")[1])
        finally:
            peer.close()
            link.close()

    run(main)


def test_timer_is_armed_once_and_fires() -> None:
    async def main() -> None:
        core = EchoCore()
        link = await start_presence_link(core, lambda e: None, "127.0.0.1", 0)
        peer, replies = await _peer()
        core.peer_port = peer.get_extra_info("sockname")[1]
        try:
            peer.sendto(b"timer", ("127.0.0.1", link.local_address[1]))
            assert await asyncio.wait_for(replies.get(), STEP) == b"TIMER"
            await asyncio.wait_for(core.fired.wait(), STEP)
            assert await asyncio.wait_for(replies.get(), STEP) == b"tick"
            assert core.timer_calls == 1
        finally:
            peer.close()
            link.close()

    run(main)


def test_event_handler_errors_are_contained_and_flush_is_reentrant() -> None:
    async def main() -> None:
        core = EchoCore()
        loop = asyncio.get_running_loop()
        calls: list[ServerEvent] = []

        def handler(event: ServerEvent) -> None:
            calls.append(event)
            link.flush()  # what an application may do from inside the handler
            raise ValueError("handler bug")

        link = PresenceLink(core, loop, handler)
        core.events.extend([DeviceOffline("A-1", "x"), DeviceOffline("B-2", "y")])
        link.flush()
        assert [e.serial for e in calls] == ["A-1", "B-2"]  # type: ignore[attr-defined]
        assert link.errors == 2

    run(main)


def test_ipv6_addresses_reach_the_core_as_pairs() -> None:
    if not socket.has_ipv6:
        return
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        return  # no IPv6 loopback here

    async def main() -> None:
        core = EchoCore()
        link = await start_presence_link(core, lambda e: None, "::1", 0)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        class Peer(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                queue.put_nowait(data)

        peer, _ = await loop.create_datagram_endpoint(Peer, local_addr=("::1", 0))
        try:
            peer.sendto(b"six", ("::1", link.local_address[1]))
            assert await asyncio.wait_for(queue.get(), STEP) == b"SIX"
            assert core.received[0][1] == ("::1", peer.get_extra_info("sockname")[1])
        finally:
            peer.close()
            link.close()

    run(main)
