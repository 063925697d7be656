"""Guards of ``dvrlink.compat.asyncio_compat``: the selector loop's ``_add_reader`` and a datagram
transport's ``_sock``, on a real UDP endpoint over loopback. If one fails after a Python upgrade,
its message names the Python version and the name that moved."""

from __future__ import annotations

import asyncio
import platform
import re
import socket
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Awaitable, Callable

import pytest
from pytest_mock import MockerFixture

from dvrlink.compat import InternalsMoved, asyncio_compat

LOOPBACK = "127.0.0.1"
BOUND_S = 30.0
BATCH = 8
RECV_SIZE = 2048


def moved_message(name: str) -> str:
    return rf"asyncio in Python {re.escape(platform.python_version())} has no {re.escape(name)}"


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), BOUND_S)

    asyncio.run(bounded())


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []
        self.arrived = asyncio.Event()
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | None, int]) -> None:
        self.datagrams.append(data)
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(None)


def test_one_wake_up_reads_a_batch_and_closing_removes_the_reader(mocker: MockerFixture) -> None:
    """``loop._add_reader`` replaces the transport's reader with one that reads up to ``BATCH``
    datagrams per call (``transport._sock``); closing the transport removes it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
        add_reader = mocker.spy(loop, "_add_reader")
        assert asyncio_compat.batch_datagram_reads(transport, protocol, BATCH, RECV_SIZE, rcvbuf=1 << 20)
        fd, ready = add_reader.call_args.args[:2]
        assert fd == transport.get_extra_info("socket").fileno()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for index in range(BATCH + 2):  # queued in the kernel: the loop has not run since
                sender.sendto(b"d%d" % index, transport.get_extra_info("sockname"))
            ready()  # one wake-up
            assert protocol.datagrams == [b"d%d" % i for i in range(BATCH)], protocol.datagrams
            ready()
            assert len(protocol.datagrams) == BATCH + 2, protocol.datagrams
        transport.close()
        await protocol.lost
        assert not loop.remove_reader(fd), "the batch reader outlived its transport"

    run(main)


def test_a_closing_transport_keeps_its_own_reader() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
        transport.close()
        assert not asyncio_compat.batch_datagram_reads(transport, protocol, BATCH, RECV_SIZE)
        await protocol.lost

    run(main)


def test_a_missing_add_reader_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
        try:
            with monkeypatch.context() as patch:
                patch.delattr(BaseSelectorEventLoop, "_add_reader")
                expected = moved_message("BaseSelectorEventLoop._add_reader()")
                with pytest.raises(InternalsMoved, match=expected):
                    asyncio_compat.batch_datagram_reads(transport, protocol, BATCH, RECV_SIZE)
        finally:
            transport.close()
            await protocol.lost

    run(main)


def test_a_missing_transport_socket_fails_loudly() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
        sock = transport._sock  # type: ignore[attr-defined]
        del transport._sock  # type: ignore[attr-defined]
        try:
            with pytest.raises(InternalsMoved, match=moved_message(f"{type(transport).__name__}._sock")):
                asyncio_compat.batch_datagram_reads(transport, protocol, BATCH, RECV_SIZE)
        finally:
            transport._sock = sock  # type: ignore[attr-defined]
            transport.close()
            await protocol.lost

    run(main)


def test_the_datagram_socket_is_the_transports_own() -> None:
    """``datagram_socket`` (the GSO sender's ``sendmsg``) is ``transport._sock``: the socket the
    transport itself reads and writes."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
        try:
            sock = asyncio_compat.datagram_socket(transport)
            assert sock is not None and sock.fileno() == transport.get_extra_info("socket").fileno()
            sock.sendto(b"to self", transport.get_extra_info("sockname"))
            await asyncio.wait_for(protocol.arrived.wait(), BOUND_S)
            assert protocol.datagrams == [b"to self"], protocol.datagrams
            saved = transport._sock  # type: ignore[attr-defined]
            del transport._sock  # type: ignore[attr-defined]
            try:
                with pytest.raises(InternalsMoved, match=moved_message(f"{type(transport).__name__}._sock")):
                    asyncio_compat.datagram_socket(transport)
            finally:
                transport._sock = saved  # type: ignore[attr-defined]
        finally:
            transport.close()
            await protocol.lost

    run(main)


def test_before_and_after_bracket_each_wake_up_and_first_takes_the_fast_ones(mocker: MockerFixture) -> None:
    """``first`` sees each datagram before the protocol and keeps the ones it takes; ``before``
    and ``after`` run once around each wake-up's reads, even one that found nothing."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
        add_reader = mocker.spy(loop, "_add_reader")
        taken: list[bytes] = []
        marks: list[str] = []

        def first(data: bytes, addr: object) -> bool:
            marks.append("first")
            if data.startswith(b"fast"):
                taken.append(data)
                return True
            return False

        try:
            assert asyncio_compat.batch_datagram_reads(
                transport,
                protocol,
                BATCH,
                RECV_SIZE,
                first=first,
                before=lambda: marks.append("before"),
                after=lambda: marks.append("after"),
            )
            ready = add_reader.call_args.args[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for data in (b"fast 1", b"slow 1", b"fast 2"):
                    sender.sendto(data, transport.get_extra_info("sockname"))
                ready()
            assert taken == [b"fast 1", b"fast 2"] and protocol.datagrams == [b"slow 1"], (
                taken,
                protocol.datagrams,
            )
            assert marks == ["before", "first", "first", "first", "after"], marks
            marks.clear()
            ready()  # nothing queued
            assert marks == ["before", "after"], marks
        finally:
            transport.close()
            await protocol.lost

    run(main)
