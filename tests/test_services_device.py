"""The device's services over an in-memory stream pair: forwards to real TCP servers on 127.0.0.1
(allow-list, refusals, 5 MB each way, half-close, resets, backpressure), ping, info and limits."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import struct

import pytest
from pytest_mock import MockerFixture
from support.aio import run
from support.services import (
    BUFFER_LIMIT,
    INFO,
    LOOPBACK,
    WAIT,
    FakeStream,
    StreamReset,
    TcpServer,
    check_stream_like,
    echo,
    services,
    sha,
    stream_pair,
    tcp_server,
)

from dvrlink.daemon.services import DeviceInfo, ServicesConfig, SessionServices
from dvrlink.protocol.session_streams import ForwardTarget, RpcTarget, StreamErrorCode
from dvrlink.session.streams import CHUNK_SIZE, ServiceErrorCode, TcpEnd

MB5 = 5 * 1024 * 1024


async def send_all(stream: FakeStream, data: bytes, chunk: int = 50_000) -> None:
    for i in range(0, len(data), chunk):
        stream.write(data[i : i + chunk])
        await stream.drain()
    stream.write_eof()


async def reset_code_of(stream: FakeStream) -> int:
    with pytest.raises(StreamReset) as info:
        await asyncio.wait_for(stream.read_all(), WAIT)
    return info.value.error_code


def test_fake_stream_matches_the_protocol() -> None:
    a, _ = stream_pair()
    assert check_stream_like(a) is a


def test_allowed_forward_carries_5_mb_each_way_with_backpressure() -> None:
    up, down = os.urandom(MB5), os.urandom(MB5)

    async def swap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: TcpServer) -> None:
        async def send() -> None:
            for i in range(0, len(down), 100_000):
                writer.write(down[i : i + 100_000])
                await writer.drain()
            writer.write_eof()

        async def receive() -> None:
            srv.received.append(await reader.read())

        await asyncio.gather(send(), receive())

    async def main() -> None:
        server = await tcp_server(swap)
        svc = services((f"{LOOPBACK}:{server.port}",))
        viewer, device = stream_pair()
        task = svc.start(device, ForwardTarget(LOOPBACK, server.port))
        got, _ = await asyncio.gather(asyncio.wait_for(viewer.read_all(), WAIT), send_all(viewer, up))
        await asyncio.wait_for(task, WAIT)
        assert sha(got) == sha(down)
        assert sha(server.received[0]) == sha(up)
        # Neither end ever had more than its limit plus one chunk waiting.
        assert viewer.high_water <= BUFFER_LIMIT + CHUNK_SIZE
        assert device.high_water <= BUFFER_LIMIT + 50_000
        assert svc.open_streams == 0
        assert device.reset_by_me is None
        await server.close()

    run(main)


def test_not_allowed_target_is_refused_and_never_connected() -> None:
    async def main() -> None:
        listener = socket.socket()
        listener.bind((LOOPBACK, 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        svc = services((f"{LOOPBACK}:{port + 1 if port < 65535 else port - 1}", "localhost:554"))
        for target in (ForwardTarget(LOOPBACK, port), ForwardTarget("localhost", port)):
            viewer, device = stream_pair()
            await asyncio.wait_for(svc.serve(device, target), WAIT)
            assert await reset_code_of(viewer) == ServiceErrorCode.NOT_ALLOWED
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
        listener.close()

    run(main)


def test_allow_list_compares_normalised_hosts() -> None:
    svc = services(("LocalHost:80", "[0:0::1]:554"))
    config = svc._config
    assert config.allows("localhost", 80)
    assert config.allows("::1", 554)
    assert not config.allows("127.0.0.1", 80)
    assert not config.allows("localhost", 81)
    assert not config.allows("not a host", 80)


def test_nothing_listening_is_connect_refused() -> None:
    async def main() -> None:
        bound = socket.socket()  # bound, not listening: a connection gets a RST
        bound.bind((LOOPBACK, 0))
        port = bound.getsockname()[1]
        svc = services((f"{LOOPBACK}:{port}",))
        viewer, device = stream_pair()
        await asyncio.wait_for(svc.serve(device, ForwardTarget(LOOPBACK, port)), WAIT)
        assert await reset_code_of(viewer) == ServiceErrorCode.CONNECT_REFUSED
        bound.close()

    run(main)


def test_connect_timeout_and_other_failures_have_their_codes() -> None:
    async def never(host: str, port: int) -> TcpEnd:
        await asyncio.get_running_loop().create_future()
        raise AssertionError

    async def unreachable(host: str, port: int) -> TcpEnd:
        raise OSError(errno.EHOSTUNREACH, os.strerror(errno.EHOSTUNREACH))

    async def main() -> None:
        for connect, code in (
            (never, ServiceErrorCode.CONNECT_TIMEOUT),
            (unreachable, ServiceErrorCode.CONNECT_FAILED),
        ):
            svc = services(("192.0.2.7:8000",), connect_timeout_s=0.05, connect=connect)
            viewer, device = stream_pair()
            await asyncio.wait_for(svc.serve(device, ForwardTarget("192.0.2.7", 8000)), WAIT)
            assert await reset_code_of(viewer) == code

    run(main)


def test_half_close_from_the_viewer_then_the_reply() -> None:
    async def reply_after_eof(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: TcpServer
    ) -> None:
        request = await reader.read()  # until the viewer's FIN arrives as a TCP half-close
        writer.write(b"got " + request)
        await writer.drain()

    async def main() -> None:
        server = await tcp_server(reply_after_eof)
        svc = services((f"{LOOPBACK}:{server.port}",))
        viewer, device = stream_pair()
        task = svc.start(device, ForwardTarget(LOOPBACK, server.port))
        viewer.write(b"hello")
        viewer.write_eof()
        assert await asyncio.wait_for(viewer.read_all(), WAIT) == b"got hello"
        await asyncio.wait_for(task, WAIT)
        await server.close()

    run(main)


def test_half_close_from_the_server_then_the_request() -> None:
    async def banner_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: TcpServer
    ) -> None:
        writer.write(b"banner")
        writer.write_eof()
        await writer.drain()
        srv.received.append(await reader.read())

    async def main() -> None:
        server = await tcp_server(banner_first)
        svc = services((f"{LOOPBACK}:{server.port}",))
        viewer, device = stream_pair()
        task = svc.start(device, ForwardTarget(LOOPBACK, server.port))
        assert await asyncio.wait_for(viewer.read_all(), WAIT) == b"banner"
        viewer.write(b"late data")  # our direction is still open after the server's FIN
        viewer.write_eof()
        await asyncio.wait_for(task, WAIT)
        assert server.received == [b"late data"]
        await server.close()

    run(main)


@pytest.mark.parametrize(("server_fin", "size"), [(False, 300_000), (True, 3_000)])
def test_bytes_and_fin_that_came_before_the_pump_go_first(server_fin: bool, size: int) -> None:
    """A server that speaks first (an SSH or FTP banner): what the ``TcpEnd`` read before the
    pump attached reaches the stream first and whole, then what follows; a FIN that came that
    early ends the stream after them. The connector hands the connection over only once the
    banner was read: more than ``CHUNK_SIZE`` of it, so that the held bytes paused the reading;
    or, with the FIN, all of it and the FIN."""
    banner = os.urandom(size)

    async def banner_first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: TcpServer
    ) -> None:
        writer.write(banner)
        if server_fin:
            writer.write_eof()
        await writer.drain()
        request = await reader.read()
        srv.received.append(request)
        if not server_fin:
            writer.write(b"after " + request)
            await writer.drain()

    class Watched(TcpEnd):
        def __init__(self) -> None:
            super().__init__()
            self.read_bytes = 0
            self.banner_read = asyncio.Event()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.read_bytes += len(data)
            if not server_fin and self.read_bytes >= CHUNK_SIZE:
                self.banner_read.set()

        def eof_received(self) -> bool:
            if server_fin:
                self.banner_read.set()
            return super().eof_received()

    async def connect(host: str, port: int) -> TcpEnd:
        _, end = await asyncio.get_running_loop().create_connection(Watched, host, port)
        await asyncio.wait_for(end.banner_read.wait(), WAIT)
        return end

    async def main() -> None:
        server = await tcp_server(banner_first)
        svc = services((f"{LOOPBACK}:{server.port}",), connect=connect)
        viewer, device = stream_pair()
        task = svc.start(device, ForwardTarget(LOOPBACK, server.port))
        viewer.write(b"request")
        viewer.write_eof()
        got = await asyncio.wait_for(viewer.read_all(), WAIT)
        assert got == banner + (b"" if server_fin else b"after request"), f"{len(got)} bytes, {got[-20:]!r}"
        await asyncio.wait_for(task, WAIT)
        assert server.received == [b"request"]
        assert device.reset_by_me is None
        await server.close()

    run(main)


def test_viewer_reset_aborts_the_tcp_connection() -> None:
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: TcpServer) -> None:
        data = await reader.read(100)
        await seen.put(data)
        try:
            rest = await reader.read()
        except ConnectionError:
            rest = b"<reset>"
        await seen.put(rest)

    async def main() -> None:
        server = await tcp_server(record)
        svc = services((f"{LOOPBACK}:{server.port}",))
        viewer, device = stream_pair()
        task = svc.start(device, ForwardTarget(LOOPBACK, server.port))
        viewer.write(b"x")
        assert await asyncio.wait_for(seen.get(), WAIT) == b"x"
        viewer.reset(StreamErrorCode.CANCELLED)
        assert await asyncio.wait_for(seen.get(), WAIT) in (b"", b"<reset>")
        await asyncio.wait_for(task, WAIT)
        await server.close()

    run(main)


def test_tcp_reset_resets_the_stream() -> None:
    async def reset_at_once(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: TcpServer
    ) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # close with linger 0: the kernel sends RST

    async def main() -> None:
        server = await tcp_server(reset_at_once)
        svc = services((f"{LOOPBACK}:{server.port}",))
        viewer, device = stream_pair()
        task = svc.start(device, ForwardTarget(LOOPBACK, server.port))
        viewer.write(b"x")
        assert await reset_code_of(viewer) == StreamErrorCode.CANCELLED
        await asyncio.wait_for(task, WAIT)
        await server.close()

    run(main)


def test_ping_echoes_the_request() -> None:
    async def main() -> None:
        svc = services()
        for payload in (b"", b"p" * 1000, os.urandom(64 * 1024)):
            viewer, device = stream_pair()
            task = svc.start(device, RpcTarget("ping"))
            viewer.write(payload)
            viewer.write_eof()
            assert await asyncio.wait_for(viewer.read_all(), WAIT) == payload
            await asyncio.wait_for(task, WAIT)

    run(main)


def test_oversized_rpc_request_is_reset() -> None:
    async def main() -> None:
        svc = services(max_rpc_request_bytes=1000)
        viewer, device = stream_pair()
        task = svc.start(device, RpcTarget("ping"))
        viewer.write(b"p" * 1001)
        assert await reset_code_of(viewer) == ServiceErrorCode.BAD_REQUEST
        await asyncio.wait_for(task, WAIT)

    run(main)


def test_info_returns_json() -> None:
    async def main() -> None:
        svc = services(("127.0.0.1:554", "[::1]:80"))
        viewer, device = stream_pair()
        task = svc.start(device, RpcTarget("info"))
        viewer.write_eof()
        body = json.loads(await asyncio.wait_for(viewer.read_all(), WAIT))
        assert body == {
            "serial": INFO.serial,
            "version": INFO.version,
            "uptime_s": 12.3,
            "forward": ["127.0.0.1:554", "[::1]:80"],
            "sessions": 1,
            "live_port": 0,
            "cellular": False,
        }
        await asyncio.wait_for(task, WAIT)

    run(main)


def test_unknown_method_and_failing_info_are_resets_not_exceptions() -> None:
    def broken() -> DeviceInfo:
        raise RuntimeError("boom")

    async def main() -> None:
        svc = services(info=broken)
        for method, code in (
            ("reboot", ServiceErrorCode.UNKNOWN_METHOD),
            ("info", ServiceErrorCode.INTERNAL),
        ):
            viewer, device = stream_pair()
            viewer.write_eof()
            await asyncio.wait_for(svc.serve(device, RpcTarget(method)), WAIT)  # returns, no raise
            assert await reset_code_of(viewer) == code

    run(main)


def test_unpair_asks_the_session_to_forget_its_viewer(mocker: MockerFixture) -> None:
    paired = {"viewer"}

    def revoke() -> bool:
        if "viewer" not in paired:
            return False
        paired.discard("viewer")
        return True

    def failing() -> bool:
        raise OSError("read-only file system")

    async def main() -> None:
        spy = mocker.Mock(side_effect=revoke)
        svc = SessionServices(ServicesConfig(), lambda: INFO, revoke=spy)
        for expected in (True, False):  # the second time it was already forgotten
            viewer, device = stream_pair()
            task = svc.start(device, RpcTarget("unpair"))
            viewer.write_eof()
            assert json.loads(await asyncio.wait_for(viewer.read_all(), WAIT)) == {"revoked": expected}
            await asyncio.wait_for(task, WAIT)
        assert spy.call_count == 2 and paired == set()
        broken = SessionServices(ServicesConfig(), lambda: INFO, revoke=failing)
        without = SessionServices(ServicesConfig(), lambda: INFO)  # no revoker: not a known method
        for svc_, code in ((broken, ServiceErrorCode.INTERNAL), (without, ServiceErrorCode.UNKNOWN_METHOD)):
            viewer, device = stream_pair()
            viewer.write_eof()
            await asyncio.wait_for(svc_.serve(device, RpcTarget("unpair")), WAIT)
            assert await reset_code_of(viewer) == code

    run(main)


def test_session_stream_limit() -> None:
    async def main() -> None:
        svc = services(max_streams_per_session=1)
        first_viewer, first_device = stream_pair()
        first = svc.start(first_device, RpcTarget("ping"))  # open until the viewer's FIN
        while svc.open_streams == 0:
            await asyncio.sleep(0)
        viewer, device = stream_pair()
        await asyncio.wait_for(svc.serve(device, RpcTarget("ping")), WAIT)
        assert await reset_code_of(viewer) == ServiceErrorCode.TOO_MANY_STREAMS
        first_viewer.write_eof()
        assert await asyncio.wait_for(first_viewer.read_all(), WAIT) == b""
        await asyncio.wait_for(first, WAIT)
        assert svc.open_streams == 0

    run(main)


def test_aclose_cancels_open_forwards() -> None:
    async def main() -> None:
        server = await tcp_server(echo)
        svc: SessionServices = services((f"{LOOPBACK}:{server.port}",))
        viewer, device = stream_pair()
        svc.start(device, ForwardTarget(LOOPBACK, server.port))
        viewer.write(b"ping")
        assert await asyncio.wait_for(viewer.read(100), WAIT) == b"ping"
        await asyncio.wait_for(svc.aclose(), WAIT)
        assert await reset_code_of(viewer) == StreamErrorCode.CANCELLED
        assert svc.open_streams == 0
        await server.close()

    run(main)


def test_a_server_that_quits_while_the_viewer_still_sends_cancels_the_stream() -> None:
    """The server closes its connection (FIN, nothing unread) and the viewer then sends on and
    on (a player that quit while a camera streams, the other way round): the device's writes
    to the closed socket fail, and with the server's side ended it resets the stream, so the
    sender stops. Before, the device read and dropped the viewer's bytes for as long as they
    came."""

    async def close_at_once(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, srv: TcpServer
    ) -> None:
        writer.close()

    async def main() -> None:
        server = await tcp_server(close_at_once)
        svc = services((f"{LOOPBACK}:{server.port}",))
        viewer, device = stream_pair()
        task = svc.start(device, ForwardTarget(LOOPBACK, server.port))
        assert await asyncio.wait_for(viewer.read_all(), WAIT) == b"", "the server's FIN did not arrive"

        async def endless() -> None:
            for _ in range(2_000):  # bounded: 100 MB, far more than a closed socket takes
                viewer.write(bytes(50_000))
                await viewer.drain()

        sender = asyncio.create_task(endless())
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(sender, WAIT)
        assert viewer.reset_by_peer == StreamErrorCode.CANCELLED, viewer.reset_by_peer
        await asyncio.wait_for(task, WAIT)
        await server.close()

    run(main)
