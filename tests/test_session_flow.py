"""Receive-side backpressure: a stream whose reader stops holds at most one window
(``SessionConfig.max_stream_data``) of the peer's data, and resumes without loss when it reads.

aioquic alone grows a stream's window whenever half of it has arrived, so a stalled reader (a
recorder's service that stopped reading, a phone on a slow link) would buffer everything the
peer sends. Real sockets on 127.0.0.1 through the in-process TURN relay of the lab.
"""

from __future__ import annotations

import asyncio
import hashlib

from support.aio import run
from support.connectivity import lab, payload, session, sha, write_all
from support.waiting import wait_until_async

from dvrlink.protocol.session import SessionConfig
from dvrlink.protocol.session_streams import RpcTarget, StreamTarget
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session.runner import SessionStream

WAIT = 20.0
WINDOW = SessionConfig().max_stream_data
SENT = 6 * WINDOW


def test_a_stalled_reader_holds_one_window_then_gets_everything() -> None:
    async def main() -> None:
        held: asyncio.Future[SessionStream] = asyncio.get_running_loop().create_future()

        async def on_stream(stream: SessionStream, target: StreamTarget) -> None:
            if target == RpcTarget("hold"):
                held.set_result(stream)  # nobody reads it until the test says so
                return
            while data := await stream.read():
                stream.write(data)
            stream.write_eof()

        async with lab() as the_lab, session(the_lab, PathPolicy.RELAY_ONLY, on_stream=on_stream) as s:
            await asyncio.wait_for(s.viewer.established(), WAIT)
            upload = await s.viewer.open_stream(RpcTarget("hold"))
            data = payload(SENT, seed=3)
            writer = asyncio.create_task(write_all(upload, data))
            device_stream = await asyncio.wait_for(held, WAIT)

            await wait_until_async(
                "half the window buffered on the device's stream",
                lambda: len(device_stream._buffer) >= WINDOW // 2,
                timeout=WAIT,
                seen=lambda: f"{len(device_stream._buffer)} bytes buffered",
            )
            # Several round trips on another stream: acknowledgements and window updates flow
            # meanwhile, so a window that grows with arrivals would let much more in.
            for i in range(5):
                echo = await s.viewer.open_stream(RpcTarget("echo"))
                echo.write(b"x" * 20_000)
                echo.write_eof()
                got = b""
                while chunk := await asyncio.wait_for(echo.read(), WAIT):
                    got += chunk
                assert got == b"x" * 20_000, i
            assert not writer.done()
            assert len(device_stream._buffer) <= WINDOW, len(device_stream._buffer)
            assert device_stream.bytes_read == 0

            # The reader resumes: everything arrives, in order.
            digest = hashlib.sha256()
            total = 0
            while chunk := await asyncio.wait_for(device_stream.read(65536), WAIT):
                digest.update(chunk)
                total += len(chunk)
                assert len(device_stream._buffer) <= WINDOW
            await asyncio.wait_for(writer, WAIT)
            assert (total, digest.hexdigest()) == (SENT, sha(data))

    run(main)
