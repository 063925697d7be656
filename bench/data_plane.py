"""Issue 14's acceptance figures: dvrlinkd's data plane as a ratio to the cipher in the same place.

    python -m bench.data_plane [--quick] [--arch armhf|arm64|none] [--mbytes N] [--stream-seconds S]
                               [--stream-mbytes N] [--a7-bytes-per-s B]

On this machine (the session rig of ``bench.session_rig``: broker and ``dvrlink forward`` on
core 0, dvrlinkd on core 1):

1. ``openssl speed -elapsed -seconds 3 -evp chacha20-poly1305 -bytes 1024`` on core 1: bytes/s
   (elapsed), and bytes per CPU-second of the openssl process (its rusage), which is what the
   ratio uses: a busy machine stretches the elapsed figure, not the CPU one.
2. ``bench.tunnel_throughput``'s direct download (device -> viewer) of ``--mbytes`` MB: Mbit/s
   with one core per end, and the bytes dvrlinkd forwarded per CPU-second of its own (schedstat).
3. The ratio of the two (target at least 1/25).
4. ``bench.daemon_streaming``'s direct device -> viewer case at 4 Mbit/s for ``--stream-seconds``:
   dvrlinkd's % of a core (target at most 0.8 %). Then the same again with both cores kept busy
   by a spinning process at ``SCHED_IDLE`` each (it runs only when nothing else wants the core),
   for information: a recorder's core is busy recording, whereas this machine's idle core
   sleeps between writes, and waking it costs about as much again as the work (no target).
5. Direct throughput against the target of 1 Gbit/s.

In the QEMU guest (``--arch``, root; ``bench.hil_guest`` boots it, streams ``--stream-mbytes`` MB
from the guest's httpd through dvrlinkd over a direct path and runs ``openssl speed`` there),
once per network card (``--nic``, both by default): virtio-net, which on QEMU's user network
offers no checksum offload, so that the guest's kernel refuses UDP GSO and dvrlinkd sends
datagram by datagram (a recorder MAC without checksum offload), and e1000, which offers it (a
MAC with it):

6. The same ratio, from dvrlinkd's CPU per streamed Mbit and the guest's ``openssl speed``.
7. dvrlinkd's CPU for a 4 Mbit/s stream on a 1 GHz Cortex-A7, estimated as
   ``4e6/8 / (ratio x A7's ChaCha20-Poly1305 bytes/s)`` (target at most 10 %). The A7 figure is
   ``A7_CHACHA20_POLY1305_BYTES_S`` below (its sources are there), or ``--a7-bytes-per-s``.
8. ``bench.udp_batching --quick`` run by the guest's python3 (the driver design's numbers there).

Each figure is printed with the command behind it and a PASS/FAIL against its target.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench import daemon_streaming, hil_guest, tunnel_throughput
from bench.common import (
    GENERATOR_CORE,
    SERVER_CORE,
    BenchError,
    cpu_ns,
    cpu_seconds,
    online_cores,
    pin_to_core,
    run_main,
    taskset_prefix,
    verdict,
)
from bench.session_rig import TcpService, session_rig
from hil.board import Board

TARGET_RATIO = 1 / 25
"""Issue 14: bytes dvrlinkd forwards per CPU-second over bytes openssl seals per CPU-second."""
TARGET_A7_CPU = 0.10
"""Issue 14: dvrlinkd's share of one 1 GHz Cortex-A7 core for a 4 Mbit/s stream."""
TARGET_HOST_CPU = 0.008
"""Issue 14: dvrlinkd's share of one of this machine's cores for a 4 Mbit/s stream."""
TARGET_DIRECT_MBITS = 1000.0
"""Issue 14: direct throughput on this machine, one core per end."""
STREAM_BITS_S = 4e6
A7_CYCLES_PER_BYTE_CHACHA20 = 11.37
"""ChaCha20 (NEON) on a Cortex-A7: about 11.37 cycles per byte, from the Linux commit a1b22a5f45fe
("crypto: arm/chacha20 - faster 8-bit rotations and other optimizations", Eric Biggers, 2018),
https://gerrit-public.fairphone.software/plugins/gitiles/kernel/msm-5.4/+/a1b22a5f45fe884147a99e7c381bcc48d9b2acef
(the kernel's NEON code, derived from OpenSSL's chacha-armv4.pl)."""
A7_CYCLES_PER_BYTE_POLY1305 = 3.00
"""Poly1305 (NEON): 3.00 cycles per byte on a Cortex-A5, the nearest in-order core in the table at
the head of OpenSSL's crypto/poly1305/asm/poly1305-armv4.pl (Cortex-A7 is not listed there;
the table's footnote tunes for A5 and A7 together)."""
A7_HZ = 1e9
A7_CHACHA20_POLY1305_BYTES_S = A7_HZ / (A7_CYCLES_PER_BYTE_CHACHA20 + A7_CYCLES_PER_BYTE_POLY1305)
"""About 69.6 MB/s: a 1 GHz Cortex-A7 sealing large buffers with ChaCha20-Poly1305, the sum of the
two published per-byte costs above. No published ``openssl speed -evp chacha20-poly1305`` run on a
Cortex-A7 was found to quote; at 1 KB the real figure is a little lower (per-call setup), which
makes the estimate of dvrlinkd's CPU share optimistic, not pessimistic."""
OPENSSL_SECONDS = 3
UDP_BATCHING = Path(__file__).resolve().parent / "udp_batching.py"
OPENSSL_LINE = re.compile(r"for \d+s on 1024 size blocks: (\d+) ChaCha20-Poly1305", re.I)
OPENSSL_RATE = re.compile(r"^chacha20[-_]poly1305\s+([\d.]+)k", re.M | re.I)


@dataclass(frozen=True, slots=True)
class OpensslSpeed:
    """One ``openssl speed`` run: the command, its elapsed rate and its rate per CPU-second."""

    command: str
    version: str
    bytes_per_s: float
    bytes_per_cpu_s: float


def parse_openssl_speed(text: str) -> tuple[int, float]:
    """(blocks of 1 KB sealed, elapsed rate in bytes/s) from ``openssl speed -bytes 1024``'s output.

    Raises:
        BenchError: the output has neither figure; the message quotes its end.
    """
    count = OPENSSL_LINE.search(text)
    rate = OPENSSL_RATE.search(text)
    if count is None or rate is None:
        raise BenchError(f"no ChaCha20-Poly1305 figure in openssl speed's output: {text[-400:]!r}")
    return int(count.group(1)), float(rate.group(1)) * 1000


def openssl_speed_here(seconds: int) -> OpensslSpeed:
    """``openssl speed`` ChaCha20-Poly1305 at 1 KB on ``SERVER_CORE`` (where dvrlinkd runs).

    Raises:
        BenchError: no openssl on PATH, or it printed no figure.
    """
    program = shutil.which("openssl")
    if program is None:
        raise BenchError("no openssl on PATH: install the openssl package (Debian: openssl)")
    argv = [
        *taskset_prefix(SERVER_CORE), program, "speed", "-elapsed", "-seconds", str(seconds),
        "-evp", "chacha20-poly1305", "-bytes", "1024",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    blocks, rate = parse_openssl_speed(done.stdout + done.stderr)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    version = subprocess.run([program, "version"], capture_output=True, text=True, check=False)
    return OpensslSpeed(
        " ".join(argv[argv.index(program) :]).replace(program, "openssl", 1),
        version.stdout.strip().split(" (")[0],
        rate,
        blocks * 1024 / cpu if cpu > 0 else rate,
    )


def a7_cpu_share(ratio: float, a7_bytes_s: float, stream_bits_s: float = STREAM_BITS_S) -> float:
    """dvrlinkd's share of one core for ``stream_bits_s``, given its ``ratio`` to the cipher and
    the cipher's bytes/s on that core: ``stream/8 / (ratio x a7_bytes_s)``."""
    return stream_bits_s / 8 / (ratio * a7_bytes_s)


def one_in(ratio: float) -> str:
    """A ratio below 1 as ``1/N``."""
    return f"1/{1 / ratio:,.0f}" if ratio > 0 else "0"


def host_environment() -> str:
    """One line: kernel, CPU model, cores, Python, cryptography."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        crypto_version = metadata.version("cryptography")
    except metadata.PackageNotFoundError:
        crypto_version = "absent"
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, {model}, "
        f"{len(online_cores())} cores online, load {os.getloadavg()[0]:.1f}; Python "
        f"{platform.python_version()}, cryptography {crypto_version}"
    )


NIC_MEANS = {
    "virtio": "no checksum offload: no UDP GSO, datagrams one by one",
    "e1000": "checksum offload: UDP GSO",
}
"""What each guest NIC stands for among recorder MACs (docs/benchmarks.md, section 15)."""


@dataclass(slots=True)
class Summary:
    """The table printed at the end: one row per issue 14 target."""

    rows: list[tuple[str, str, str, str]]

    def add(self, figure: str, value: str, target: str, ok: bool | None) -> None:
        self.rows.append((figure, value, target, "n/a" if ok is None else verdict(ok)))


def this_machine(mbytes: float, stream_seconds: float, openssl_seconds: int, summary: Summary) -> None:
    """Figures 1-5 on this machine."""
    pin_to_core(GENERATOR_CORE)
    print(f"this machine: {host_environment()}")
    speed = openssl_speed_here(openssl_seconds)
    print(
        f"  openssl speed ({speed.command}; {speed.version}, on core {SERVER_CORE}): "
        f"{speed.bytes_per_s / 1e6:,.1f} MB/s elapsed, {speed.bytes_per_cpu_s / 1e6:,.1f} MB per CPU-second"
    )
    total = int(mbytes * 1_000_000)
    case = daemon_streaming.Case(STREAM_BITS_S, stream_seconds)
    download_service = TcpService(tunnel_throughput.source(total))
    stream_service = TcpService(case.source)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp,
            session_rig(Path(tmp), [download_service.port, stream_service.port]) as rig,
        ):
            print(f"  {rig.describe()}; dvrlink forward on core {GENERATOR_CORE}")
            pid = rig.daemon_pid
            forward = rig.forward(download_service.port, "direct")
            try:
                tunnel_throughput.download(forward.local_port, total)  # warm-up: path, congestion window
                ns0, ticks0 = cpu_ns(pid), cpu_seconds(pid)
                seconds = tunnel_throughput.download(forward.local_port, total)
                ns1, ticks1 = cpu_ns(pid), cpu_seconds(pid)
            finally:
                forward.stop()
            daemon_cpu = (ns1 - ns0) / 1e9 if ns0 is not None and ns1 is not None else ticks1 - ticks0
            rate = tunnel_throughput.mbits(total, seconds)
            per_cpu = total / daemon_cpu if daemon_cpu > 0 else float("inf")
            print(
                f"  dvrlinkd, direct ({forward.path} path) device->viewer, {mbytes:g} MB "
                f"(bench.tunnel_throughput's download): {rate:,.1f} Mbit/s in {seconds:.2f} s; dvrlinkd "
                f"{daemon_cpu:.2f} CPU s = {per_cpu / 1e6:,.2f} MB forwarded per CPU-second"
            )
            ratio = per_cpu / speed.bytes_per_cpu_s
            print(f"  ratio dvrlinkd / openssl per CPU-second: {one_in(ratio)}  [target >= 1/25: "
                  f"{verdict(ratio >= TARGET_RATIO)}]")  # fmt: skip
            summary.add("ratio to openssl per CPU-second, this machine", one_in(ratio), ">= 1/25",
                        ratio >= TARGET_RATIO)  # fmt: skip

            def streamed() -> tuple[float, float, float, str]:
                """(dvrlinkd's share of a core, Mbit/s arrived, seconds, path) for ``stream_seconds``."""
                _rss, cpu, fine, wall, moved, path = daemon_streaming.sample(
                    rig, stream_service.port, "direct", daemon_streaming.drain, stream_seconds
                )
                return (fine if fine is not None else cpu) / wall, moved * 8 / wall / 1e6, wall, path

            share, arrived, wall, path = streamed()
            print(
                f"  dvrlinkd at {STREAM_BITS_S / 1e6:g} Mbit/s, direct ({path} path) device->viewer for "
                f"{wall:.1f} s (bench.daemon_streaming's case): {arrived:.2f} Mbit/s "
                f"arrived, dvrlinkd {100 * share:.2f} % of a core  [target <= 0.8 %: "
                f"{verdict(share <= TARGET_HOST_CPU)}]"
            )
            summary.add("dvrlinkd CPU at 4 Mbit/s, this machine", f"{100 * share:.2f} % of a core",
                        "<= 0.8 %", share <= TARGET_HOST_CPU)  # fmt: skip
            with busy_cores():
                busy, arrived, _wall, _path = streamed()
            print(
                f"  the same with both cores kept busy (a SCHED_IDLE spinner on each): "
                f"{arrived:.2f} Mbit/s arrived, dvrlinkd {100 * busy:.2f} % of a core "
                f"(for information: the idle core's wake-ups cost the difference)"
            )
            print(f"  direct throughput, one core per end: {rate:,.1f} Mbit/s  [target >= 1 Gbit/s: "
                  f"{verdict(rate >= TARGET_DIRECT_MBITS)}]")  # fmt: skip
            summary.add("direct throughput, one core per end, this machine", f"{rate:,.0f} Mbit/s",
                        ">= 1 Gbit/s", rate >= TARGET_DIRECT_MBITS)  # fmt: skip
    finally:
        case.stop.set()
        download_service.close()
        stream_service.close()


@contextlib.contextmanager
def busy_cores() -> Iterator[None]:
    """One CPU-bound process per online core at ``SCHED_IDLE`` (it gets a core only when nothing
    else wants it), killed on exit: the cores never go idle, as a recorder's do not."""
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        for core in sorted(online_cores()):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            spinners.append(spinner)
            os.sched_setaffinity(spinner.pid, {core})
            os.sched_setscheduler(spinner.pid, os.SCHED_IDLE, os.sched_param(0))
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait(timeout=10)


def udp_batching_in_guest(board: Board, host_address: str) -> None:
    """Fetch bench/udp_batching.py into the guest from the host over HTTP and run it there with
    the guest's python3 (``--quick``: TCG is slow); print what it printed."""
    with hil_guest.serve_file(UDP_BATCHING) as port:
        got = board.run(
            f"busybox wget -q -O /tmp/{UDP_BATCHING.name} http://{host_address}:{port}/{UDP_BATCHING.name}"
            " && echo fetched",
            timeout=120,
        )
    if "fetched" not in got:
        print(f"  udp_batching in the guest: could not fetch it from the host: {got!r}")
        return
    out = board.run(f"python3 /tmp/{UDP_BATCHING.name} --quick 2>&1", timeout=900)
    print("  bench.udp_batching --quick in the guest:")
    for line in out.strip().splitlines():
        print(f"    {line}")


def in_guest(arch: str, stream_mbytes: int, a7_bytes_s: float, nic: str, summary: Summary) -> None:
    """Figures 6-7 in the QEMU guest, through ``bench.hil_guest``'s boot."""
    if os.geteuid() != 0:
        raise BenchError("the QEMU guest needs root (image build, boot): run with sudo, or --arch none")
    # Undo this_machine's pinning before QEMU and the viewer start (they inherit it): on one core
    # they take turns, and the guest then counts the time QEMU waited as its processes' CPU
    # (its timer ticks land on whatever ran when QEMU resumed).
    os.sched_setaffinity(0, online_cores())
    args = argparse.Namespace(
        arch=arch,
        mem=0,
        idle_seconds=10.0,
        idle_minutes=0.0,
        stream_mbytes=stream_mbytes,
        openssl=None,
        nic=nic,
    )
    with tempfile.TemporaryDirectory(prefix="dvrlink-data-plane-") as tmp:
        print(f"{arch} guest (bench.hil_guest's boot: rigs/qemu-{arch}.toml, TCG, {nic} NIC):", flush=True)
        figures = hil_guest.boot(args, Path(tmp), udp_batching_in_guest)
    ms, kbytes_s = figures.stream_ms_per_mbit, figures.openssl_kbytes_s
    if ms is None or kbytes_s is None:
        missing = "the stream" if ms is None else "openssl speed (is openssl in the image?)"
        raise BenchError(f"the {arch} guest gave no figure for {missing}; its lines: {figures.lines}")
    per_cpu = 125_000 / (ms / 1000)  # bytes per CPU-second: 1 Mbit = 125,000 bytes
    ratio = per_cpu / (kbytes_s * 1000)
    print(
        f"  {arch} guest ({figures.mem_mb} MB): dvrlinkd {ms:.1f} CPU ms per streamed Mbit = "
        f"{per_cpu / 1e3:,.1f} kB forwarded per CPU-second; openssl speed -elapsed -evp "
        f"chacha20-poly1305 -bytes 1024 in the guest {kbytes_s / 1e3:,.1f} MB/s"
    )
    print(f"  ratio dvrlinkd / openssl in the guest: {one_in(ratio)}  [target >= 1/25: "
          f"{verdict(ratio >= TARGET_RATIO)}]")  # fmt: skip
    where = f"{arch} guest, {nic} NIC ({NIC_MEANS[nic]})"
    summary.add(f"ratio to openssl per CPU-second, {where}", one_in(ratio), ">= 1/25",
                ratio >= TARGET_RATIO)  # fmt: skip
    share = a7_cpu_share(ratio, a7_bytes_s)
    print(
        f"  1 GHz Cortex-A7 estimate: 4e6/8 / ({one_in(ratio)} x {a7_bytes_s / 1e6:.1f} MB/s) = "
        f"{100 * share:,.0f} % of a core  [target <= 10 %: {verdict(share <= TARGET_A7_CPU)}]"
    )
    summary.add(f"dvrlinkd CPU at 4 Mbit/s, 1 GHz Cortex-A7 (estimate from the {nic} guest)",
                f"{100 * share:,.0f} % of a core", "<= 10 %", share <= TARGET_A7_CPU)  # fmt: skip


def run(args: argparse.Namespace) -> None:
    """The whole benchmark."""
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"data_plane: issue 14's figures, {' '.join(sys.argv[1:]) or '(defaults)'}; {started}", flush=True)
    summary = Summary([])
    this_machine(args.mbytes, args.stream_seconds, 1 if args.quick else OPENSSL_SECONDS, summary)
    if args.arch != "none":
        for nic in tuple(hil_guest.NICS) if args.nic == "both" else (args.nic,):
            in_guest(args.arch, args.stream_mbytes, args.a7_bytes_per_s, nic, summary)
    else:
        print("guest: skipped (--arch none)")
        summary.add("ratio to openssl per CPU-second, armhf guest", "not run", ">= 1/25", None)
        summary.add("dvrlinkd CPU at 4 Mbit/s, 1 GHz Cortex-A7 (estimate)", "not run", "<= 10 %", None)
    print(f"\ndata_plane, {started}:")
    print("| figure | value | target | verdict |")
    print("|---|---|---|---|")
    for row in summary.rows:
        print("| " + " | ".join(row) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.data_plane``: see the module's docstring."""
    parser = argparse.ArgumentParser(description="issue 14: dvrlinkd's data plane against the cipher")
    parser.add_argument("--quick", action="store_true", help="small numbers, no guest unless --arch")
    parser.add_argument("--arch", choices=("armhf", "arm64", "none"), default=None,
                        help="the QEMU guest to measure in (default armhf; none with --quick)")  # fmt: skip
    parser.add_argument("--mbytes", type=float, default=None, help="MB per direct download (default 64)")
    parser.add_argument("--stream-seconds", type=float, default=None, help="4 Mbit/s window (default 30)")
    parser.add_argument("--stream-mbytes", type=int, default=16, help="MB streamed from the guest")
    parser.add_argument("--nic", choices=(*hil_guest.NICS, "both"), default="both",
                        help=f"{hil_guest.NIC_HELP}; both (the default) measures each")  # fmt: skip
    parser.add_argument("--a7-bytes-per-s", type=float, default=A7_CHACHA20_POLY1305_BYTES_S,
                        help="ChaCha20-Poly1305 bytes/s of a 1 GHz Cortex-A7 (default: the published"
                             " per-byte costs, about 69.6e6)")  # fmt: skip
    args = parser.parse_args(argv)
    args.arch = args.arch or ("none" if args.quick else "armhf")
    args.mbytes = args.mbytes or (2.0 if args.quick else 64.0)
    args.stream_seconds = args.stream_seconds or (2.0 if args.quick else 30.0)
    if not 0.5 <= args.mbytes <= 4096 or not 1 <= args.stream_seconds <= 600:
        parser.error("--mbytes must be 0.5-4096 and --stream-seconds 1-600")
    if args.a7_bytes_per_s <= 0 or args.stream_mbytes < 1:
        parser.error("--a7-bytes-per-s and --stream-mbytes must be positive")
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
