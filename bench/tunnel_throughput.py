"""Tunnel throughput through ``dvrlink forward``, direct (lan path) and relayed (built-in TURN),
as a ratio to a plain loopback TCP copy of the same size in the same run.

    python -m bench.tunnel_throughput [--quick] [--mbytes N] [--profile DIR]

Real processes: dvrlink-broker (core 0), dvrlinkd (core 1), ``dvrlink forward`` (core 0). The
benchmark's device-side TCP service sends N MB to each connection (device -> viewer, the way a
recorder's video flows); the benchmark connects through the forward, reads all N MB and times it.
The baseline is the same service read directly over loopback TCP. A second figure per path
sends N MB the other way (viewer -> device) and times until the device-side service has read it
all and answered one byte.

It prints Mbit/s (10^6 bit/s), the ratio to the plain copy, and the CPU each process used during
the transfer (utime + stime, in cores). Target: at least 200 Mbit/s direct.

``--profile DIR`` also samples dvrlinkd and ``dvrlink forward`` with py-spy (``PYSPY`` or
``py-spy`` on PATH) during a second direct download, and writes the flat profiles to DIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.common import (
    GENERATOR_CORE,
    LOOPBACK,
    BenchError,
    cpu_seconds,
    pin_to_core,
    run_main,
    verdict,
)
from bench.session_rig import IO_TIMEOUT_S, Rig, TcpService, recv_exactly, send_count, session_rig

TARGET_DIRECT_MBITS = 200.0
TRANSFER_TIMEOUT_S = 180.0


def source(total: int) -> Callable[[socket.socket], None]:
    """Device-side service: send ``total`` bytes, then close."""

    def handler(conn: socket.socket) -> None:
        send_count(conn, total)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the reader to close, so no RST cuts the tail

    return handler


def sink(total: int) -> Callable[[socket.socket], None]:
    """Device-side service: read ``total`` bytes, answer one byte."""

    def handler(conn: socket.socket) -> None:
        got = recv_exactly(conn, total)
        conn.sendall(b"!" if got == total else b"?")

    return handler


@contextmanager
def cpu_window(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds each process used in the block, filled in on exit."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    used: dict[str, float] = {}
    yield used
    for name, pid in pids.items():
        used[name] = cpu_seconds(pid) - before[name]


def download(port: int, total: int) -> float:
    """Connect to ``port``, read ``total`` bytes; returns the seconds it took.

    Raises:
        BenchError: fewer bytes came, or it took longer than ``TRANSFER_TIMEOUT_S``.
    """
    t0 = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT_S) as conn:
        got = recv_exactly(conn, total)
    elapsed = time.perf_counter() - t0
    if got != total:
        raise BenchError(f"download via port {port}: {got} of {total} bytes arrived")
    if elapsed > TRANSFER_TIMEOUT_S:
        raise BenchError(f"download via port {port} took {elapsed:.0f} s")
    return elapsed


def upload(port: int, total: int) -> float:
    """Connect to ``port``, send ``total`` bytes, wait for the one-byte answer; returns seconds.

    Raises:
        BenchError: the device-side service did not confirm all bytes.
    """
    t0 = time.perf_counter()
    with socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT_S) as conn:
        send_count(conn, total)
        answer = conn.recv(1)
    elapsed = time.perf_counter() - t0
    if answer != b"!":
        raise BenchError(f"upload via port {port}: the device side answered {answer!r}, not b'!'")
    return elapsed


def mbits(total: int, seconds: float) -> float:
    """Megabits (10^6) per second."""
    return total * 8 / seconds / 1e6


def pids_of(rig: Rig, forward_pid: int) -> dict[str, int]:
    """The processes whose CPU is reported."""
    return {"dvrlinkd": rig.daemon_pid, "forward": forward_pid, "broker": rig.broker.proc.pid}


def fmt_cpu(used: dict[str, float], seconds: float) -> str:
    """``dvrlinkd 0.98, forward 0.95, broker 0.01`` (cores)."""
    return ", ".join(f"{name} {cpu / seconds:.2f}" for name, cpu in used.items())


def pyspy() -> str | None:
    """The py-spy program: ``$PYSPY``, or py-spy on PATH, or None."""
    return os.environ.get("PYSPY") or shutil.which("py-spy")


def profile_direct(rig: Rig, port: int, total: int, out_dir: Path) -> None:
    """Sample dvrlinkd and ``dvrlink forward`` with py-spy during one direct download."""
    program = pyspy()
    if program is None:
        print("  profile: py-spy not found (pip install py-spy; or set PYSPY)")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    forward = rig.forward(port, "direct")
    try:
        recorders = []
        for name, pid in (("dvrlinkd", rig.daemon_pid), ("forward", forward.proc.pid)):
            path = out_dir / f"{name}.txt"
            with path.open("wb") as out:
                recorders.append(
                    (
                        path,
                        subprocess.Popen(
                            [
                                program,
                                "record",
                                "--pid",
                                str(pid),
                                "--format",
                                "raw",
                                "--rate",
                                "250",
                                "--nonblocking",
                                "--output",
                                str(out_dir / f"{name}.folded"),
                            ],
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        ),
                    )
                )
        time.sleep(1.0)  # py-spy attaches
        seconds = download(forward.local_port, total)
        for _, proc in recorders:
            proc.send_signal(2)
        for path, proc in recorders:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            print(
                f"  profile: {path.with_suffix('.folded')} ({mbits(total, seconds):.0f} Mbit/s while sampled)"
            )
    finally:
        forward.stop()


def run(total: int, profile: Path | None) -> None:
    """The whole benchmark."""
    pin_to_core(GENERATOR_CORE)
    mb = total / 1e6
    print(f"tunnel throughput: {mb:.0f} MB per transfer through dvrlink forward, loopback")
    down_service = TcpService(source(total))
    up_service = TcpService(sink(total))
    results: dict[str, tuple[float, float]] = {}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp,
            session_rig(Path(tmp), [down_service.port, up_service.port]) as rig,
        ):
            print(f"  {rig.describe()}; dvrlink forward on core {GENERATOR_CORE}")
            plain_down = download(down_service.port, total)  # warm-up
            plain_down = download(down_service.port, total)
            plain_up = upload(up_service.port, total)
            print(
                f"  plain loopback TCP copy: {mbits(total, plain_down):,.0f} Mbit/s device->viewer, "
                f"{mbits(total, plain_up):,.0f} Mbit/s viewer->device"
            )
            for mode in ("direct", "relay"):
                for name, service, plain, transfer in (
                    ("device->viewer", down_service, plain_down, download),
                    ("viewer->device", up_service, plain_up, upload),
                ):
                    forward = rig.forward(service.port, mode)
                    try:
                        with cpu_window(pids_of(rig, forward.proc.pid)) as used:
                            seconds = transfer(forward.local_port, total)
                    finally:
                        forward.stop()
                    rate = mbits(total, seconds)
                    ratio = plain / seconds
                    results[f"{mode} {name}"] = (rate, ratio)
                    print(
                        f"  {mode} ({forward.path} path) {name}: {rate:,.1f} Mbit/s in {seconds:.2f} s, "
                        f"ratio to plain TCP {ratio:.4f}; CPU (cores) {fmt_cpu(used, seconds)}"
                    )
            if profile is not None:
                profile_direct(rig, down_service.port, total, profile)
    finally:
        down_service.close()
        up_service.close()
    for service in (down_service, up_service):
        if service.errors:
            print(f"  device-side service errors: {service.errors[:3]}")
    direct = results["direct device->viewer"][0]
    print(
        f"  direct throughput: {direct:,.1f} Mbit/s   "
        f"[target >= {TARGET_DIRECT_MBITS:.0f} Mbit/s: {verdict(direct >= TARGET_DIRECT_MBITS)}]"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="throughput through dvrlink forward vs plain TCP")
    parser.add_argument("--quick", action="store_true", help="4 MB per transfer instead of 64 MB")
    parser.add_argument("--mbytes", type=int, default=None, help="MB per transfer (1-4096)")
    parser.add_argument("--profile", type=Path, default=None, help="also sample with py-spy into DIR")
    args = parser.parse_args(argv)
    size = args.mbytes if args.mbytes is not None else (4 if args.quick else 64)
    if not 1 <= size <= 4096:
        parser.error("--mbytes must be 1-4096")
    return run_main(lambda: run(size * 1_000_000, args.profile))


if __name__ == "__main__":
    sys.exit(main())
