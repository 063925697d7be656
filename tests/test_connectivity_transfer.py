"""Bulk transfers through the session runners on loopback, on the data plane: relayed (and
ciphertext on the relay), and across a relay -> lan path switch in the middle of the transfer."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from support.aio import run
from support.connectivity import (
    WAIT,
    lab,
    payload,
    read_digest,
    session,
    sha,
    trade_direct_candidates,
    write_all,
)

from dvrlink.protocol.session import DATAPLANE_STREAM_BASE
from dvrlink.protocol.session_streams import RpcTarget, StreamTarget
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session.connectivity import LAN, RELAY
from dvrlink.session.runner import SessionStream

MARKER = b"DVRLINK-PLAINTEXT-MARKER:"
RELAY_SIZE = 5 * 1024 * 1024
SWITCH_SIZE = int(os.environ.get("DVRLINK_SWITCH_MB", "50")) * 1024 * 1024


class Transfer:
    """The device side of a two-way transfer: receives the upload (hashing it) while it sends
    ``download``, and reports the upload's digest."""

    def __init__(self, download: bytes) -> None:
        self.download = download
        self.upload: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    async def __call__(self, stream: SessionStream, target: StreamTarget) -> None:
        writer = asyncio.create_task(write_all(stream, self.download))
        try:
            self.upload.set_result(await read_digest(stream))
        finally:
            await writer


def test_relay_only_moves_5_mb_both_ways_as_ciphertext() -> None:
    upload = (MARKER * (RELAY_SIZE // len(MARKER) + 1))[:RELAY_SIZE]
    download = payload(RELAY_SIZE, seed=2)

    async def main() -> None:
        device = Transfer(download)
        async with (
            lab(marker=MARKER) as the_lab,
            session(the_lab, PathPolicy.RELAY_ONLY, on_stream=device) as s,
        ):
            await asyncio.wait_for(s.viewer.established(), WAIT)
            started = time.perf_counter()
            stream = await s.viewer.open_stream(RpcTarget("transfer"))
            assert stream.stream_id >= DATAPLANE_STREAM_BASE, "the stream did not ride the data plane"
            writer = asyncio.create_task(write_all(stream, upload))
            got_download = await asyncio.wait_for(read_digest(stream), 60)
            await writer
            got_upload = await asyncio.wait_for(device.upload, 60)
            elapsed = time.perf_counter() - started
            print(f"relay-only: 2 x {RELAY_SIZE >> 20} MB in {elapsed:.2f} s")
            assert got_upload == (sha(upload), RELAY_SIZE)
            assert got_download == (sha(download), RELAY_SIZE)
            assert s.viewer.path_changes == [RELAY]
            relayed = the_lab.relayed
            assert relayed.bytes > 2 * RELAY_SIZE  # everything went through the relay, both ways
            assert the_lab.turn is not None
            assert the_lab.turn.core.stats["to_peer"] == relayed.datagrams
            assert relayed.marker_hits == 0  # the relay never saw the plaintext
            assert MARKER in upload[:4096]  # (and the marker is what the stream carried)

    run(main)


@pytest.mark.slow
def test_switch_from_relay_to_lan_mid_transfer_keeps_every_byte() -> None:
    upload = payload(SWITCH_SIZE, seed=3)
    download = payload(SWITCH_SIZE // 4, seed=4)

    async def main() -> None:
        device = Transfer(download)
        async with (
            lab() as the_lab,
            session(the_lab, PathPolicy.ALL, on_stream=device, trickle_direct=True) as s,
        ):
            await asyncio.wait_for(s.viewer.established(), WAIT)
            assert s.viewer.path == RELAY
            moved = asyncio.get_running_loop().create_future()
            viewer_conn = s.viewer.connectivity
            previous = viewer_conn.on_path_ready

            def path_ready(path: tuple[str, int]) -> None:
                previous(path)
                if path == LAN and not moved.done():
                    moved.set_result(None)

            viewer_conn.on_path_ready = path_ready

            async def offer_direct() -> None:
                # Half the upload went over the relay: now the viewer learns the device's host
                # candidates (trickle), ICE finds the lan pair and the session moves to it.
                assert s.viewer.path == RELAY
                await trade_direct_candidates(s)

            started = time.perf_counter()
            stream = await s.viewer.open_stream(RpcTarget("transfer"))
            assert stream.stream_id >= DATAPLANE_STREAM_BASE, "the stream did not ride the data plane"
            writer = asyncio.create_task(write_all(stream, upload, midway=offer_direct))
            got_download = await asyncio.wait_for(read_digest(stream), 120)
            await asyncio.wait_for(writer, 120)
            got_upload = await asyncio.wait_for(device.upload, 120)
            elapsed = time.perf_counter() - started
            await asyncio.wait_for(moved, WAIT)
            out = viewer_conn.bytes_out
            print(
                f"relay -> lan switch: {SWITCH_SIZE >> 20} MB up + {len(download) >> 20} MB down in "
                f"{elapsed:.2f} s; viewer sent {out.get(RELAY, 0) >> 20} MB relayed, "
                f"{out.get(LAN, 0) >> 20} MB on lan"
            )
            assert got_upload == (sha(upload), SWITCH_SIZE)
            assert got_download == (sha(download), len(download))
            assert s.viewer.path_changes == [RELAY, LAN]
            assert s.device.path == LAN
            # Both paths carried a real share of the transfer.
            assert out.get(RELAY, 0) > SWITCH_SIZE // 4
            assert out.get(LAN, 0) > SWITCH_SIZE // 4

    run(main, bound=180)
