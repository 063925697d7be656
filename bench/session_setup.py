"""Session setup time, from the viewer command to the first byte forwarded, on loopback.

    python -m bench.session_setup [--quick] [--sessions N]

Real processes: dvrlink-broker (core 0), dvrlinkd (core 1), and for each session a fresh
``dvrlink forward DL-BENCH-0001 0:PORT --relay-only`` (or ``--direct-only``) on core 0. PORT is a
TCP service of this benchmark on the device side that writes one byte to each connection.

One session is timed from the ``Popen`` of the ``dvrlink forward`` command until that byte has
come back through the forward: the command prints its "forwarding 127.0.0.1:P ..." line once
the session is established (the device's key checked, one ping round trip), the benchmark
connects to P, the viewer opens a stream, the device connects to the service, and the byte
travels back. That is what a user waits for between pressing Enter and the first bytes in VLC,
so the figure includes the interpreter's start and imports. To show what the session itself
costs, the same sessions are also opened in this process with the viewer API the command uses
(``dvrlink.viewer.session_client.open_session``, then one stream, timed to its first byte).

50 sessions per mode (3 with ``--quick``), one after the other, relay-only then direct-only.
Direct on loopback is the ``lan`` path (both sides offer host candidates on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import GENERATOR_CORE, LOOPBACK, BenchError, pin_to_core, run_main
from bench.session_rig import (
    IO_TIMEOUT_S,
    SERIAL,
    Rig,
    TcpService,
    median,
    percentile,
    session_rig,
)
from dvrlink.protocol.session_streams import ForwardTarget
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.viewer.api_client import BrokerClient
from dvrlink.viewer.home import ViewerHome
from dvrlink.viewer.session_client import open_session

MODES = ("relay", "direct")
POLICIES = {"relay": PathPolicy.RELAY_ONLY, "direct": PathPolicy.DIRECT_ONLY}
EXPECTED_PATHS = {"relay": {"relay"}, "direct": {"lan", "direct"}}


def hello(conn: socket.socket) -> None:
    """The device-side service: one byte, then close."""
    conn.sendall(b"!")


def one_session(rig: Rig, port: int, mode: str) -> tuple[float, float, str]:
    """Time one session: (seconds to the "forwarding" line, seconds to the first byte, path).

    Raises:
        BenchError: the forward did not come up, used an unexpected path, or no byte came back.
    """
    t0 = time.perf_counter()
    forward = rig.forward(port, mode)
    t_line = time.perf_counter() - t0
    try:
        if forward.path not in EXPECTED_PATHS[mode]:
            raise BenchError(f"--{mode}-only forward came up via {forward.path}")
        with socket.create_connection((LOOPBACK, forward.local_port), timeout=IO_TIMEOUT_S) as conn:
            data = conn.recv(1)
            t_byte = time.perf_counter() - t0
        if data != b"!":
            raise BenchError(f"--{mode}-only: expected the service's byte through the forward, got {data!r}")
    finally:
        status = forward.stop()
        if status != 0:
            print(f"  (dvrlink forward exited {status})")
    return t_line, t_byte, forward.path


async def in_process(rig: Rig, port: int, mode: str, sessions: int) -> list[float]:
    """Time ``sessions`` sessions opened with the viewer API in this process: from
    ``open_session`` (the same call ``dvrlink forward`` makes, login file to established and one
    ping) to the first byte of a forwarded stream. No interpreter start, no imports.

    Raises:
        BenchError: the session used an unexpected path or no byte came back.
    """
    home = ViewerHome(rig.viewer.home)
    login = home.load_login()
    if login is None:
        raise BenchError(f"no login in {rig.viewer.home}")
    times: list[float] = []
    for _ in range(sessions + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        async with asyncio.timeout(IO_TIMEOUT_S):
            async with BrokerClient(login.broker, cacert=login.cacert, token=login.token) as client:
                runner = await open_session(client, home, SERIAL, POLICIES[mode], [LOOPBACK])
            try:
                stream = await runner.open_stream(ForwardTarget(LOOPBACK, port))
                data = await stream.read(1)
                elapsed = time.perf_counter() - t0
                path = runner.path[0] if runner.path is not None else "-"
            finally:
                await runner.close()
        if data != b"!" or path not in EXPECTED_PATHS[mode]:
            raise BenchError(f"in-process {mode}-only session: got {data!r} via {path}")
        times.append(elapsed)
    return times[1:]


def run(sessions: int) -> None:
    """The whole benchmark."""
    pin_to_core(GENERATOR_CORE)
    print(f"session setup: {sessions} sessions per mode, `dvrlink forward` command to first byte, loopback")
    service = TcpService(hello)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp,
            session_rig(Path(tmp), [service.port]) as rig,
        ):
            print(f"  {rig.describe()}; each dvrlink forward on core {GENERATOR_CORE}")
            for mode in MODES:
                one_session(rig, service.port, mode)  # warm-up: page cache, first TURN secret use
                lines: list[float] = []
                firsts: list[float] = []
                paths: set[str] = set()
                for _ in range(sessions):
                    t_line, t_byte, path = one_session(rig, service.port, mode)
                    lines.append(t_line)
                    firsts.append(t_byte)
                    paths.add(path)
                ms = 1000.0
                print(
                    f"  {mode}-only ({'/'.join(sorted(paths))} path), {sessions} sessions: "
                    f"first byte median {median(firsts) * ms:.0f} ms, "
                    f"p95 {percentile(firsts, 0.95) * ms:.0f} ms "
                    f"(min {min(firsts) * ms:.0f}, max {max(firsts) * ms:.0f}); "
                    f"'forwarding' line median {median(lines) * ms:.0f} ms"
                )
                api = asyncio.run(in_process(rig, service.port, mode, sessions))
                print(
                    f"  {mode}-only via the in-process viewer API (open_session + stream), {sessions} "
                    f"sessions: first byte median {median(api) * ms:.1f} ms, "
                    f"p95 {percentile(api, 0.95) * ms:.1f} ms; so the command's start (interpreter, "
                    f"imports, login file) is ~{(median(firsts) - median(api)) * ms:.0f} ms of the median"
                )
    finally:
        service.close()
    if service.errors:
        print(f"  device-side service errors: {len(service.errors)} (first: {service.errors[0]})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="session setup time through dvrlink forward")
    parser.add_argument("--quick", action="store_true", help="3 sessions per mode instead of 50")
    parser.add_argument("--sessions", type=int, default=None, help="sessions per mode (1-500)")
    args = parser.parse_args(argv)
    sessions = args.sessions if args.sessions is not None else (3 if args.quick else 50)
    if not 1 <= sessions <= 500:
        parser.error("--sessions must be 1-500")
    return run_main(lambda: run(sessions))


if __name__ == "__main__":
    sys.exit(main())
