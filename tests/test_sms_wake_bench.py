"""Smoke run of ``python -m bench.sms_wake --quick`` (a short idle window, one wake per case): it
exits 0 and prints the idle bytes and each step of the wake. Nothing here judges speed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def test_the_sms_wake_benchmark_runs_and_prints_each_figure() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.sms_wake", "--quick", "--window", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    month = re.search(r"per month, extrapolated:\s+(\d+) B", out)
    assert month is not None and month.group(1) == "0", out
    assert re.search(r"data call up in emulator samples:\s+0 of \d+", out), out
    totals = [float(x) for x in re.findall(r"total: SMS delivered -> first byte\s+([0-9.]+)", out)]
    assert len(totals) == 2 and all(t > 0 for t in totals), out
    assert totals[1] > 2.0, "with a 2 s PDP activation the wake takes longer than 2 s"
