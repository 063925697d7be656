"""Helpers shared by the benchmarks: core pinning, /proc readings, child processes, verdicts."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

SERVER_CORE = 1
"""The core the server under test runs on (``taskset -c 1``)."""
GENERATOR_CORE = 0
"""The core the load generator pins itself to."""
LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark could not run (a program is missing, a server did not start); the message says
    what was seen and what to do."""


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The common command line: ``--quick`` for a smoke run with small numbers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small numbers, finishes in seconds")
    return parser.parse_args(argv)


def run_main(body: Callable[[], None]) -> int:
    """Run a benchmark body; a ``BenchError`` is printed and turns into exit status 1.

    A missed target is not an error: the body prints FAIL and this returns 0.
    """
    try:
        body()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def verdict(ok: bool) -> str:
    """``PASS`` or ``FAIL``."""
    return "PASS" if ok else "FAIL"


def online_cores() -> set[int]:
    """Cores the kernel has online (from /sys; all of ``os.cpu_count()`` if that is unreadable).

    Not this process's affinity: after ``pin_to_core`` that is one core, and children started
    with taskset may still use the others.
    """
    try:
        text = Path("/sys/devices/system/cpu/online").read_text().strip()
    except OSError:
        return set(range(os.cpu_count() or 1))
    cores: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cores.update(range(int(low), int(high or low) + 1))
    return cores


def pin_to_core(core: int) -> bool:
    """Pin the calling process to ``core``; False (and no change) if that core is not online."""
    if core not in online_cores():
        return False
    os.sched_setaffinity(0, {core})
    return True


def taskset_prefix(core: int) -> list[str]:
    """``taskset -c CORE`` if taskset exists and the core is online, else nothing."""
    if shutil.which("taskset") is None or core not in online_cores():
        return []
    return ["taskset", "-c", str(core)]


def describe_pinning(name: str, pid: int, expected: int) -> str:
    """``name pid N on core C``, with a warning if it may run elsewhere than ``expected``."""
    cores = sorted(os.sched_getaffinity(pid))
    where = ",".join(str(c) for c in cores)
    warning = "" if cores == [expected] else f" (WARNING: not pinned to core {expected})"
    return f"{name} pid {pid} on core {where}{warning}"


def venv_script(name: str) -> str:
    """Path of a console script installed next to the running interpreter.

    Raises:
        BenchError: the script is not installed; the message says how to install it.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} is not installed next to {sys.executable}; run `make venv` first")
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS in /proc/PID/status).

    Raises:
        BenchError: the process is gone.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise BenchError(f"process {pid} is gone (reading its status: {exc})") from exc
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/{pid}/status has no VmRSS line")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and all its threads (/proc/PID/stat utime + stime).

    Raises:
        BenchError: the process is gone.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise BenchError(f"process {pid} is gone (reading its stat: {exc})") from exc
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_ns(pid: int) -> int | None:
    """CPU time of ``pid`` in nanoseconds, summed over its threads (/proc/PID/task/*/schedstat);
    None where the kernel has no schedstat. Finer than the clock ticks of ``cpu_seconds``."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


@dataclass(slots=True)
class CpuMeter:
    """CPU used by a process over a stretch of wall time, as a fraction of one core."""

    pid: int
    wall0: float = 0.0
    cpu0: float = 0.0

    def start(self) -> None:
        """Take the first reading."""
        self.wall0 = time.perf_counter()
        self.cpu0 = cpu_seconds(self.pid) if self.pid != os.getpid() else time.process_time()

    def fraction(self) -> float:
        """Fraction of one core used since ``start`` (1.0 = one core busy all the time)."""
        wall = time.perf_counter() - self.wall0
        cpu = cpu_seconds(self.pid) if self.pid != os.getpid() else time.process_time()
        return (cpu - self.cpu0) / wall if wall > 0 else 0.0


def core_times() -> dict[int, tuple[int, ...]]:
    """Per-core jiffies from /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal."""
    out: dict[int, tuple[int, ...]] = {}
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                out[int(fields[0][3:])] = tuple(int(v) for v in fields[1:9])
    return out


@dataclass(frozen=True, slots=True)
class CoreLoad:
    """How busy one core was over a stretch of time, as fractions of that time."""

    busy: float  # everything but idle and iowait
    softirq: float  # of which packet processing in softirq (loopback delivery), charged to no process

    def __str__(self) -> str:
        return f"{self.busy:.0%} busy ({self.softirq:.0%} softirq)"


@dataclass(slots=True)
class CoreMeter:
    """Busy fraction of each core between ``start`` and ``loads``."""

    first: dict[int, tuple[int, ...]] | None = None

    def start(self) -> None:
        """Take the first reading."""
        self.first = core_times()

    def loads(self) -> dict[int, CoreLoad]:
        """Load of every core since ``start``."""
        assert self.first is not None, "CoreMeter.start() was not called"
        out: dict[int, CoreLoad] = {}
        for core, now in core_times().items():
            before = self.first.get(core)
            if before is None:
                continue
            delta = [b - a for a, b in zip(before, now, strict=True)]
            total = sum(delta)
            if total <= 0:
                continue
            out[core] = CoreLoad(1 - (delta[3] + delta[4]) / total, delta[6] / total)
        return out


def free_udp_port(host: str = LOOPBACK) -> int:
    """A UDP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``predicate`` until it holds.

    Raises:
        BenchError: it did not hold within ``timeout`` seconds; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


@contextlib.contextmanager
def child_process(
    argv: Sequence[str], log_path: Path, core: int | None = SERVER_CORE, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` (pinned to ``core`` with taskset), output to ``log_path``; stop it on exit.

    The process gets SIGTERM, then SIGKILL after 10 s.

    Raises:
        BenchError: the program cannot be started.
    """
    prefix = taskset_prefix(core) if core is not None else []
    log: IO[bytes] = log_path.open("wb")
    try:
        proc = subprocess.Popen([*prefix, *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
    except OSError as exc:
        log.close()
        raise BenchError(f"cannot start {argv[0]}: {exc}") from exc
    try:
        yield proc
    finally:
        stop_process(proc)
        log.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``proc``, then SIGKILL if it is still there after 10 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a child's log, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def fmt_int(value: float) -> str:
    """A rate or count with thousands separators."""
    return f"{value:,.0f}"
