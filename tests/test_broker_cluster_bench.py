"""Smoke runs of the cluster benchmarks: ``--quick`` exits 0 and prints its figures (the speed
itself is judged by the full runs, recorded in docs/benchmarks.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration]


def _quick(name: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"bench.{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_invite_latency_bench_prints_both_medians() -> None:
    out = _quick("cluster_invite")
    medians = [float(m) for m in re.findall(r"median\s+([0-9.]+) ms", out)]
    assert len(medians) == 4 and all(m > 0 for m in medians), out  # invite and session, both ways
    assert "cross-node extra" in out, out


def test_the_redis_memory_bench_prints_bytes_per_device() -> None:
    out = _quick("cluster_redis_memory")
    found = re.search(r"growth per device: (\d+) B", out)
    assert found and 0 < int(found.group(1)) < 1000, out
