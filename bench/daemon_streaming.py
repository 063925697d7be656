"""dvrlinkd resident memory and CPU while one session streams 4 Mbit/s.

    python -m bench.daemon_streaming [--quick] [--rate MBIT]

Real processes: dvrlink-broker (core 0), dvrlinkd (core 1, the process under test) and one
``dvrlink forward`` (core 0). A paced TCP sender (10,000 B every 20 ms for 4 Mbit/s) runs for
30 s (3 s with ``--quick``) per case:

- device -> viewer: the benchmark's device-side service sends, the benchmark reads through the
  forward (a recorder streaming video to a viewer, the case that matters);
- viewer -> device: the benchmark sends through the forward to a device-side sink (as the
  benchmark brief put it).

each over the direct (lan) path and over the relay. The daemon's VmRSS (/proc/PID/status) is
sampled every 0.5 s and its CPU time (utime + stime over all threads, /proc/PID/stat, and the
finer schedstat) is read at the ends of the window. The idle figures before the first session
are printed for comparison.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import (
    GENERATOR_CORE,
    LOOPBACK,
    BenchError,
    cpu_ns,
    cpu_seconds,
    pin_to_core,
    rss_bytes,
    run_main,
)
from bench.session_rig import IO_TIMEOUT_S, Rig, TcpService, session_rig

CHUNK = 10_000
SAMPLE_S = 0.5
MB = 2**20


def paced_send(conn: socket.socket, rate_bits: float, seconds: float, stop: threading.Event) -> int:
    """Send ``CHUNK``-byte writes at ``rate_bits`` per second for ``seconds``; returns bytes sent."""
    interval = CHUNK * 8 / rate_bits
    block = bytes(CHUNK)
    start = time.monotonic()
    sent = 0
    count = int(seconds / interval)
    for i in range(count):
        if stop.is_set():
            break
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        conn.sendall(block)
        sent += CHUNK
    return sent


def drain(conn: socket.socket) -> int:
    """Read until the peer closes; returns the count."""
    got = 0
    buffer = bytearray(1 << 16)
    while n := conn.recv_into(buffer):
        got += n
    return got


class Case:
    """One streaming window: which way, and the device-side service for it."""

    def __init__(self, rate_bits: float, seconds: float) -> None:
        self.rate_bits = rate_bits
        self.seconds = seconds
        self.stop = threading.Event()
        self.device_bytes = 0

    def source(self, conn: socket.socket) -> None:
        """Device side sends (device -> viewer)."""
        paced_send(conn, self.rate_bits, self.seconds, self.stop)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)

    def sink(self, conn: socket.socket) -> None:
        """Device side reads (viewer -> device)."""
        self.device_bytes = drain(conn)


def sample(
    rig: Rig, port: int, mode: str, client: Callable[[socket.socket], int], seconds: float
) -> tuple[list[int], float, float | None, float, int, str]:
    """Open a forward, run ``client`` on a connection through it in a thread, and sample the
    daemon while it runs. Returns (rss samples, cpu s, schedstat cpu s, wall s, bytes, path)."""
    pid = rig.daemon_pid
    forward = rig.forward(port, mode)
    result: list[int] = []
    errors: list[BaseException] = []
    try:
        conn = socket.create_connection((LOOPBACK, forward.local_port), timeout=IO_TIMEOUT_S)

        def work() -> None:
            try:
                result.append(client(conn))
            except OSError as exc:
                errors.append(exc)

        thread = threading.Thread(target=work, daemon=True)
        rss = [rss_bytes(pid)]
        cpu0, ns0, wall0 = cpu_seconds(pid), cpu_ns(pid), time.perf_counter()
        thread.start()
        deadline = wall0 + seconds + IO_TIMEOUT_S
        while thread.is_alive() and time.perf_counter() < deadline:
            thread.join(SAMPLE_S)
            rss.append(rss_bytes(pid))
        wall = time.perf_counter() - wall0
        cpu, ns1 = cpu_seconds(pid) - cpu0, cpu_ns(pid)
        conn.close()
        thread.join(5)
    finally:
        forward.stop()
    if errors or not result:
        raise BenchError(f"streaming through the {mode} forward failed: {errors or 'timed out'}")
    fine = None if ns0 is None or ns1 is None else (ns1 - ns0) / 1e9
    return rss, cpu, fine, wall, result[0], forward.path


def run(rate_mbit: float, seconds: float) -> None:
    """The whole benchmark."""
    pin_to_core(GENERATOR_CORE)
    rate = rate_mbit * 1e6
    print(f"dvrlinkd while streaming {rate_mbit:g} Mbit/s through one session, {seconds:g} s per case")
    case = Case(rate, seconds)
    source = TcpService(case.source)
    sink = TcpService(case.sink)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp,
            session_rig(Path(tmp), [source.port, sink.port]) as rig,
        ):
            pid = rig.daemon_pid
            print(f"  {rig.describe()}; dvrlink forward on core {GENERATOR_CORE}")
            idle0, t0 = cpu_ns(pid), time.perf_counter()
            time.sleep(2.0)
            idle = None if idle0 is None else (cpu_ns(pid) or 0) - idle0
            idle_share = (
                "" if idle is None else f", CPU {100 * idle / 1e9 / (time.perf_counter() - t0):.2f} %"
            )
            print(f"  idle, before any session: VmRSS {rss_bytes(pid) / MB:.1f} MB{idle_share}")
            for mode in ("direct", "relay"):
                for name, port, client in (
                    ("device->viewer", source.port, drain),
                    ("viewer->device", sink.port, lambda c: _send_then_close(c, case)),
                ):
                    rss, cpu, fine, wall, moved, path = sample(rig, port, mode, client, seconds)
                    got = moved if name == "device->viewer" else case.device_bytes
                    fine_text = "" if fine is None else f" (schedstat {100 * fine / wall:.1f} %)"
                    print(
                        f"  {mode} ({path} path) {name}: {got * 8 / wall / 1e6:.2f} Mbit/s arrived over "
                        f"{wall:.1f} s; dvrlinkd CPU {100 * cpu / wall:.1f} % of a core{fine_text}; "
                        f"VmRSS {rss[0] / MB:.1f} MB at the start, {rss[-1] / MB:.1f} MB at the end, "
                        f"max {max(rss) / MB:.1f} MB ({len(rss)} samples)"
                    )
            print(f"  after the sessions: VmRSS {rss_bytes(pid) / MB:.1f} MB")
    finally:
        case.stop.set()
        source.close()
        sink.close()


def _send_then_close(conn: socket.socket, case: Case) -> int:
    sent = paced_send(conn, case.rate_bits, case.seconds, case.stop)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # the forward closes once the device side has read everything
    return sent


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="dvrlinkd memory and CPU while streaming")
    parser.add_argument("--quick", action="store_true", help="3 s per case instead of 30 s")
    parser.add_argument("--rate", type=float, default=4.0, help="Mbit/s (0.1-100)")
    args = parser.parse_args(argv)
    if not 0.1 <= args.rate <= 100:
        parser.error("--rate must be 0.1-100 Mbit/s")
    return run_main(lambda: run(args.rate, 3.0 if args.quick else 30.0))


if __name__ == "__main__":
    sys.exit(main())
