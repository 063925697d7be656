"""Smoke runs of the cluster load benchmarks (issue 16): each ``--quick`` run exits 0 and prints its
figures. Speed is not judged here (the machine may be busy); the full runs are recorded in
docs/benchmarks.md. Each needs a real ``redis-server`` and PostgreSQL, as the cluster tests do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hil.postgres_server import find_bindir

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 240.0

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(find_bindir() is None, reason="needs PostgreSQL (initdb, pg_ctl)"),
]


def _quick(name: str, *extra: str) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", "--quick", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"bench.{name} --quick did not finish within {RUN_TIMEOUT_S:g} s:\n{exc.stdout!r}")
    assert done.returncode == 0, f"bench.{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"no line matches {pattern!r} in:\n{text}"
    return float(found.group(1).replace(",", ""))


def test_the_load_bench_prints_both_backends_and_redis_commands_per_keepalive() -> None:
    out = _quick("cluster_load")
    assert _number(r"keepalives, SQLite: .* -> ([\d,]+) per core-second", out) > 0
    assert _number(r"keepalives, PostgreSQL \+ Redis: .* -> ([\d,]+) per core-second", out) > 0
    assert _number(r"PostgreSQL \+ Redis / SQLite: ([\d.]+)", out) > 0
    # presence location is written per device and interval: far below one command per keepalive
    assert _number(r"Redis commands per keepalive: ([\d.]+)", out) < 0.1, out
    assert _number(r"resumed by ticket ([\d,]+)$", out) > 0


def test_the_failover_bench_brings_every_device_of_the_killed_node_back() -> None:
    out = _quick("cluster_failover")
    back = re.search(r"registered again: (\d+) of (\d+) \((\d+) at another node\), (\d+) by ticket", out)
    assert back, out
    assert back.group(1) == back.group(2) == back.group(3) and int(back.group(2)) > 0, out
    assert _number(r"100 % at ([\d.]+) s", out) > 0


def test_the_storm_bench_prints_time_to_all_back_and_node_cpu() -> None:
    out = _quick("cluster_storm")
    back = re.search(r"registered again: ([\d,]+) of ([\d,]+), ([\d,]+) by ticket", out)
    assert back and back.group(1) == back.group(2) != "0", out
    assert _number(r"100 % at ([\d.]+) s", out) > 0
    assert len(re.findall(r"node \w from its restart to 100 %: [\d.]+ of a core", out)) == 2, out
