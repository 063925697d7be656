"""bench/hil_guest.py's readings of a guest's /proc, run against this host's own /proc through a
local shell (the benchmark runs the same commands on the guest's console)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from bench import hil_guest
from bench.common import BenchError


class LocalShell:
    """Runs a command with this host's sh, as the guest's console would (output only)."""

    serial = "DL-LOCAL"

    def run(self, command: str, timeout: float = 120.0) -> str:
        done = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False
        )
        return done.stdout + done.stderr


def test_cpu_sample_counts_this_process_and_the_whole_machine() -> None:
    shell = LocalShell()
    first = hil_guest.cpu_sample(shell, os.getpid())  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    second = first
    while second[0] == first[0] and time.monotonic() < deadline:  # burn CPU until a tick shows
        sum(i * i for i in range(200_000))
        second = hil_guest.cpu_sample(shell, os.getpid())  # type: ignore[arg-type]
    assert second[0] > first[0], f"no CPU tick counted for this process in 30 s: {first} {second}"
    assert second[1] >= first[1], (first, second)
    assert 0 <= second[2] <= second[3] and second[3] > first[3] >= first[2], (first, second)


def test_cpu_sample_of_a_gone_process_says_so() -> None:
    child = subprocess.Popen(["true"])
    child.wait(10)
    with pytest.raises(BenchError, match=f"pid {child.pid}"):
        hil_guest.cpu_sample(LocalShell(), child.pid)  # type: ignore[arg-type]


def test_meminfo_and_this_process_rss() -> None:
    values = hil_guest.meminfo(LocalShell(), os.getpid())  # type: ignore[arg-type]
    assert 0 < values["MemFree"] <= values["MemTotal"], values
    assert values["VmRSS"] > 1024, values  # a Python process holds more than 1 MB
    assert "Cached" in values and "AnonPages" in values, sorted(values)


def test_the_largest_processes_list_reads_rss_and_command() -> None:
    lines = LocalShell().run(hil_guest.TOP_RSS).splitlines()
    assert 1 <= len(lines) <= 6, lines
    sizes = [int(line.split()[0]) for line in lines]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 0, lines


def test_rates_per_mbit() -> None:
    assert hil_guest.per_mbit(125.0) == "1.0 Mbit/s = 1000.00 ms per Mbit"
    assert hil_guest.per_mbit(12_500.0) == "100.0 Mbit/s = 10.00 ms per Mbit"
