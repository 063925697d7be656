"""The viewer's forwards, ping and info end to end: a local client socket -> Forwarder -> in-memory
session stream -> the device's services -> a TCP server on 127.0.0.1, and back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

import pytest
from support.aio import run
from support.services import (
    INFO,
    LOOPBACK,
    WAIT,
    FakeOpener,
    echo,
    services,
    sha,
    stream_pair,
    tcp_server,
)

from dvrlink.protocol.session_streams import ForwardTarget, RpcTarget, StreamTarget
from dvrlink.session.streams import ServiceErrorCode, StreamLike
from dvrlink.viewer.errors import ViewerError
from dvrlink.viewer.forward import (
    ConnectionAccepted,
    ConnectionClosed,
    Forwarder,
    ForwardEvent,
    ForwardListening,
    ForwardRefused,
    ForwardSpec,
    ForwardStats,
    describe_reset,
    device_info,
    ping,
    run_forward,
)

MB5 = 5 * 1024 * 1024


async def client_exchange(address: tuple[str, int], payload: bytes) -> bytes:
    """Connect, send ``payload`` then half-close, and read until the end (or a reset: returns what came)."""
    reader, writer = await asyncio.open_connection(*address)

    async def send() -> None:
        for i in range(0, len(payload), 100_000):
            writer.write(payload[i : i + 100_000])
            await writer.drain()
        writer.write_eof()

    async def receive() -> bytes:
        out = bytearray()
        try:
            while data := await reader.read(65536):
                out += data
        except ConnectionResetError:
            pass
        return bytes(out)

    try:
        _, got = await asyncio.gather(send(), receive(), return_exceptions=True)
        assert not isinstance(got, BaseException)
        return got
    finally:
        writer.close()


async def next_of(events: asyncio.Queue[ForwardEvent], kind: type[ForwardEvent]) -> ForwardEvent:
    while True:
        event = await asyncio.wait_for(events.get(), WAIT)
        if isinstance(event, kind):
            return event


def test_forward_end_to_end_5_mb_through_an_echo_server() -> None:
    async def main() -> None:
        server = await tcp_server(echo)
        svc = services((f"{LOOPBACK}:{server.port}",))
        events: asyncio.Queue[ForwardEvent] = asyncio.Queue()
        forwarder = Forwarder(
            FakeOpener(svc), ForwardSpec(LOOPBACK, 0, LOOPBACK, server.port), events.put_nowait
        )
        address = await forwarder.start()
        listening = await next_of(events, ForwardListening)
        assert isinstance(listening, ForwardListening) and listening.address == address
        payload = os.urandom(MB5)
        got = await asyncio.wait_for(client_exchange(address, payload), WAIT * 3)
        assert sha(got) == sha(payload)
        closed = await next_of(events, ConnectionClosed)
        assert isinstance(closed, ConnectionClosed)
        assert (closed.bytes_out, closed.bytes_in, closed.error) == (MB5, MB5, None)
        stats = forwarder.stats
        assert (stats.connections_total, stats.connections_open, stats.refused) == (1, 0, 0)
        assert (stats.bytes_out, stats.bytes_in) == (MB5, MB5)
        await forwarder.aclose()
        await svc.aclose()
        await server.close()

    run(main)


def test_run_forward_serves_concurrent_connections_until_cancelled() -> None:
    async def main() -> None:
        server = await tcp_server(echo)
        svc = services((f"{LOOPBACK}:{server.port}",))
        stats = ForwardStats()
        events: asyncio.Queue[ForwardEvent] = asyncio.Queue()
        spec = ForwardSpec(LOOPBACK, 0, LOOPBACK, server.port)
        task = asyncio.create_task(run_forward(FakeOpener(svc), spec, events.put_nowait, stats))
        listening = await next_of(events, ForwardListening)
        assert isinstance(listening, ForwardListening)
        payloads = [os.urandom(200_000 + i) for i in range(4)]
        got = await asyncio.wait_for(
            asyncio.gather(*(client_exchange(listening.address, p) for p in payloads)), WAIT
        )
        assert got == payloads
        assert stats.connections_total == 4
        assert stats.bytes_in == stats.bytes_out == sum(len(p) for p in payloads)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with pytest.raises(OSError):
            await asyncio.open_connection(*listening.address)  # the listener is gone
        await svc.aclose()
        await server.close()

    run(main)


def test_device_refusing_the_port_closes_the_local_connection_with_a_clear_message() -> None:
    async def main() -> None:
        svc = services(("127.0.0.1:80",))
        events: asyncio.Queue[ForwardEvent] = asyncio.Queue()
        forwarder = Forwarder(FakeOpener(svc), ForwardSpec(LOOPBACK, 0, "127.0.0.1", 554), events.put_nowait)
        address = await forwarder.start()
        got = await asyncio.wait_for(client_exchange(address, b"OPTIONS rtsp://x RTSP/1.0\r\n\r\n"), WAIT)
        assert got == b""
        refused = await next_of(events, ForwardRefused)
        assert isinstance(refused, ForwardRefused)
        assert refused.code == ServiceErrorCode.NOT_ALLOWED
        assert refused.message == (
            'the device refuses port 554 on 127.0.0.1: add "127.0.0.1:554" to [services] forward '
            "in dvrlinkd.toml on the device"
        )
        closed = await next_of(events, ConnectionClosed)
        assert isinstance(closed, ConnectionClosed) and closed.error == refused.message
        assert forwarder.stats.refused == 1
        await forwarder.aclose()
        await svc.aclose()

    run(main)


def test_nothing_listening_on_the_device_is_reported() -> None:
    async def main() -> None:
        bound = socket.socket()
        bound.bind((LOOPBACK, 0))
        port = bound.getsockname()[1]
        svc = services((f"{LOOPBACK}:{port}",))
        events: asyncio.Queue[ForwardEvent] = asyncio.Queue()
        forwarder = Forwarder(FakeOpener(svc), ForwardSpec(LOOPBACK, 0, LOOPBACK, port), events.put_nowait)
        address = await forwarder.start()
        assert await asyncio.wait_for(client_exchange(address, b"x"), WAIT) == b""
        refused = await next_of(events, ForwardRefused)
        assert isinstance(refused, ForwardRefused)
        assert refused.message.startswith(f"nothing listens on {LOOPBACK}:{port} on the device")
        await forwarder.aclose()
        await svc.aclose()
        bound.close()

    run(main)


def test_no_session_aborts_the_local_connection() -> None:
    async def main() -> None:
        opener = FakeOpener(services())
        opener.fail = ConnectionError("the session is closed")
        events: asyncio.Queue[ForwardEvent] = asyncio.Queue()
        forwarder = Forwarder(opener, ForwardSpec(LOOPBACK, 0, LOOPBACK, 554), events.put_nowait)
        address = await forwarder.start()
        assert await asyncio.wait_for(client_exchange(address, b"x"), WAIT) == b""
        assert isinstance(await next_of(events, ConnectionAccepted), ConnectionAccepted)
        closed = await next_of(events, ConnectionClosed)
        assert isinstance(closed, ConnectionClosed)
        assert closed.error == "cannot open a stream to the device: the session is closed"
        await forwarder.aclose()

    run(main)


def test_aclose_aborts_open_connections() -> None:
    """... quietly: asyncio's start_server (Python 3.11) read ``exception()`` of the cancelled
    connection task and reported an 'Exception in callback' with a CancelledError traceback
    (seen on SIGINT of ``dvrlink forward`` with a connection open)."""

    async def main() -> None:
        reported: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
        server = await tcp_server(echo)
        svc = services((f"{LOOPBACK}:{server.port}",))
        forwarder = Forwarder(FakeOpener(svc), ForwardSpec(LOOPBACK, 0, LOOPBACK, server.port))
        address = await forwarder.start()
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.read(5), WAIT) == b"hello"
        await asyncio.wait_for(forwarder.aclose(), WAIT)
        await asyncio.sleep(0)  # the connection task's done callbacks have run by now
        # (checked before the test's own echo server closes: its tasks end the same way)
        assert not reported, [context.get("message") for context in reported]
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
        writer.close()
        await svc.aclose()
        await server.close()

    run(main)


def test_bind_failure_says_what_to_do() -> None:
    async def main() -> None:
        taken = socket.socket()
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        forwarder = Forwarder(FakeOpener(services()), ForwardSpec(LOOPBACK, port, LOOPBACK, 554))
        with pytest.raises(ViewerError, match=rf"cannot listen on 127.0.0.1:{port} \(.*\): pick another"):
            await forwarder.start()
        taken.close()

    run(main)


def test_ping_measures_each_round_trip() -> None:
    ticks = iter(range(100))

    async def main() -> None:
        svc = services()
        rtts = await ping(FakeOpener(svc), count=3, payload_size=1000, clock=lambda: float(next(ticks)))
        assert rtts == [1.0, 1.0, 1.0]
        await svc.aclose()

    run(main)


def test_ping_arguments_are_checked() -> None:
    async def main() -> None:
        opener = FakeOpener(services())
        with pytest.raises(ValueError, match="at least 1"):
            await ping(opener, count=0)
        with pytest.raises(ValueError, match="0-65536 bytes"):
            await ping(opener, payload_size=70_000)

    run(main)


class ResettingOpener:
    """A device that resets every stream with ``code`` (or never answers, with None)."""

    def __init__(self, code: int | None) -> None:
        self.code = code
        self.device_ends: list[StreamLike] = []

    async def open_stream(self, target: StreamTarget) -> StreamLike:
        viewer_end, device_end = stream_pair()
        self.device_ends.append(device_end)
        if self.code is not None:
            device_end.reset(self.code)
        return viewer_end


def test_ping_failures_become_viewer_errors() -> None:
    async def main() -> None:
        with pytest.raises(ViewerError, match='does not know the "ping" request: update dvrlinkd'):
            await ping(ResettingOpener(ServiceErrorCode.UNKNOWN_METHOD), count=1)
        with pytest.raises(ViewerError, match=r"ping 1: no reply from the device within 0.05 s"):
            await ping(ResettingOpener(None), count=1, timeout_s=0.05)

    run(main)


def test_info_over_the_session() -> None:
    async def main() -> None:
        svc = services(("127.0.0.1:554",))
        body = await device_info(FakeOpener(svc))
        assert body == {
            "serial": INFO.serial,
            "version": INFO.version,
            "uptime_s": 12.3,
            "forward": ["127.0.0.1:554"],
            "sessions": 1,
            "live_port": 0,
            "cellular": False,
        }
        await svc.aclose()

    run(main)


def test_info_that_is_not_json_is_an_error() -> None:
    class Garbage:
        async def open_stream(self, target: StreamTarget) -> StreamLike:
            viewer_end, device_end = stream_pair()
            device_end.write(b"[1, 2")
            device_end.write_eof()
            return viewer_end

    async def main() -> None:
        with pytest.raises(ViewerError, match="not a JSON object"):
            await device_info(Garbage())

    run(main)


@pytest.mark.parametrize(
    ("code", "target", "expected"),
    [
        (
            ServiceErrorCode.CONNECT_TIMEOUT,
            ForwardTarget("10.0.0.9", 80),
            "no answer from 10.0.0.9:80 in time",
        ),
        (ServiceErrorCode.CONNECT_FAILED, ForwardTarget("::1", 80), "cannot connect to [::1]:80"),
        (ServiceErrorCode.TOO_MANY_STREAMS, RpcTarget("ping"), "too many streams open"),
        (ServiceErrorCode.BAD_REQUEST, RpcTarget("ping"), 'refused the "ping" request as too large'),
        (None, RpcTarget("ping"), "the session to the device ended"),
        (0x99, ForwardTarget("127.0.0.1", 80), "reset the stream (code 0x99)"),
    ],
)
def test_reset_messages(code: int | None, target: StreamTarget, expected: str) -> None:
    assert expected in describe_reset(code, target)
