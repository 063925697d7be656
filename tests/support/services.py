"""Helpers for the services tests: an in-memory stream pair shaped like a session stream (bounded
buffers, FIN, RESET both ways), an opener that serves the device side with ``SessionServices``,
and small TCP servers on 127.0.0.1. No sleeps: every wait is on an event, bounded by ``run``."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dvrlink.daemon.services import (
    DeviceInfo,
    RelayHandler,
    ServicesConfig,
    SessionServices,
    TcpConnector,
    no_relays,
    relay_rpc,
)
from dvrlink.protocol.session_streams import StreamTarget, encode_stream_header
from dvrlink.session.allow_list import parse_allowed_target
from dvrlink.session.streams import StreamLike

LOOPBACK = "127.0.0.1"
WAIT = 10.0
BUFFER_LIMIT = 64 * 1024


class StreamReset(Exception):
    """What a fake stream's ``read`` raises once the peer reset it."""

    def __init__(self, error_code: int) -> None:
        super().__init__(f"stream reset by the peer (code 0x{error_code:x})")
        self.error_code = error_code


class _Signal:
    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        await future

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)


@dataclass(eq=False)
class FakeStream:
    """One end of an in-memory stream: what ``write`` puts here, the peer's ``read`` takes."""

    limit: int = BUFFER_LIMIT
    peer: FakeStream | None = None
    inbox: bytearray = field(default_factory=bytearray)
    inbox_eof: bool = False
    reset_by_peer: int | None = None
    reset_by_me: int | None = None
    sent_eof: bool = False
    high_water: int = 0
    """Most bytes ever waiting in ``inbox`` (backpressure check)."""
    changed: _Signal = field(default_factory=_Signal)

    def _peer(self) -> FakeStream:
        assert self.peer is not None
        return self.peer

    async def read(self, n: int) -> bytes:
        assert n > 0
        while True:
            if self.reset_by_peer is not None:
                raise StreamReset(self.reset_by_peer)
            if self.reset_by_me is not None:
                raise ConnectionError("read on a stream this side reset")
            if self.inbox:
                data = bytes(self.inbox[:n])
                del self.inbox[:n]
                self._peer().changed.fire()  # room for the writer
                return data
            if self.inbox_eof:
                return b""
            await self.changed.wait()

    def write(self, data: bytes) -> None:
        peer = self._peer()
        if self.reset_by_me is not None or self.reset_by_peer is not None:
            raise ConnectionError("write on a reset stream")
        assert not self.sent_eof, "write after write_eof"
        peer.inbox += data
        peer.high_water = max(peer.high_water, len(peer.inbox))
        peer.changed.fire()

    async def drain(self) -> None:
        peer = self._peer()
        while len(peer.inbox) > self.limit:
            if self.reset_by_me is not None or self.reset_by_peer is not None:
                raise ConnectionError("drain on a reset stream")
            await self.changed.wait()

    def must_drain(self) -> bool:
        return (
            len(self._peer().inbox) > self.limit
            or self.reset_by_me is not None
            or (self.reset_by_peer is not None)
        )

    def write_eof(self) -> None:
        if self.sent_eof or self.reset_by_me is not None:
            return
        self.sent_eof = True
        peer = self._peer()
        peer.inbox_eof = True
        peer.changed.fire()

    def reset(self, code: int) -> None:
        if self.reset_by_me is not None or self.reset_by_peer is not None:
            return
        self.reset_by_me = code
        self.inbox.clear()
        peer = self._peer()
        peer.reset_by_peer = code
        peer.changed.fire()
        self.changed.fire()

    async def read_all(self) -> bytes:
        out = bytearray()
        while data := await self.read(65536):
            out += data
        return bytes(out)


def stream_pair() -> tuple[FakeStream, FakeStream]:
    a, b = FakeStream(), FakeStream()
    a.peer, b.peer = b, a
    return a, b


def check_stream_like(stream: FakeStream) -> StreamLike:
    return stream  # mypy checks the fake against the Protocol here


INFO = DeviceInfo(serial="DL-0001-0002", version="0.1.0", uptime_s=12.34, sessions=1)


class FakeOpener:
    """The viewer's session runner in memory: each stream is served by ``services`` on the other end."""

    def __init__(self, services: SessionServices) -> None:
        self.services = services
        self.opened: list[StreamTarget] = []
        self.fail: Exception | None = None

    async def open_stream(self, target: StreamTarget) -> StreamLike:
        if self.fail is not None:
            raise self.fail
        encode_stream_header(target)  # a target the real session could not send is a test bug
        self.opened.append(target)
        viewer_end, device_end = stream_pair()
        self.services.start(device_end, target)
        return viewer_end


def services(
    allow: tuple[str, ...] = (),
    *,
    connect_timeout_s: float = 5.0,
    max_streams_per_session: int = 32,
    max_rpc_request_bytes: int = 64 * 1024,
    connect: TcpConnector | None = None,
    info: Callable[[], DeviceInfo] = lambda: INFO,
    relay: RelayHandler = no_relays,
) -> SessionServices:
    config = ServicesConfig(
        forward_allow=tuple(parse_allowed_target(a) for a in allow),
        connect_timeout_s=connect_timeout_s,
        max_streams_per_session=max_streams_per_session,
        max_rpc_request_bytes=max_rpc_request_bytes,
    )
    handlers = {"relay": relay_rpc(relay)}
    if connect is None:
        return SessionServices(config, info, handlers=handlers)
    return SessionServices(config, info, connect=connect, handlers=handlers)


# --- TCP servers on loopback ---


@dataclass
class TcpServer:
    server: asyncio.Server
    port: int
    accepted: int = 0
    received: list[bytes] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def close(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "TcpServer"], Awaitable[None]]


async def tcp_server(handler: Handler) -> TcpServer:
    holder: list[TcpServer] = []

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        srv = holder[0]
        srv.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        srv.tasks.add(task)
        try:
            await handler(reader, writer, srv)
        finally:
            writer.close()
            srv.tasks.discard(task)

    server = await asyncio.start_server(accepted, LOOPBACK, 0)
    srv = TcpServer(server, int(server.sockets[0].getsockname()[1]))
    holder.append(srv)
    return srv


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: TcpServer) -> None:
    """Echo until the client's EOF, then half-close."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
