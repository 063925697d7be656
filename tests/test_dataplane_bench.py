"""Smoke run of ``python -m bench.dataplane_core --quick``: it exits 0 and prints positive figures.
Nothing here judges speed (the machine may be busy)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dataplane_core_quick_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.dataplane_core", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    per_packet = [float(v) for v in re.findall(r"(?:sender|receiver): +([\d.]+) µs per packet", out)]
    assert len(per_packet) == 4 and all(v > 0 for v in per_packet), out
    assert float(re.findall(r"seal ([\d.]+) µs", out)[0]) > 0, out
    assert len(re.findall(r"core/cipher: sender [\d.]+x seal, receiver [\d.]+x open", out)) == 2, out
