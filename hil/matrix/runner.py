"""Run a list of cell plans on one rig, and describe the run (date, kernel, netem)."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from hil.matrix.cells import CellPlan
from hil.matrix.report import cell_text
from hil.matrix.rig import CellRecord, MatrixRig


def run_plans(
    rig: MatrixRig, plans: Sequence[CellPlan], progress: Callable[[str], None] | None = None
) -> list[CellRecord]:
    """Run every plan in order; ``progress`` gets one line per cell."""
    records: list[CellRecord] = []
    for index, plan in enumerate(plans, 1):
        record = rig.run_cell(plan)
        records.append(record)
        if progress is not None:
            progress(
                f"[{index}/{len(plans)}] {plan.cell.key:<52} {cell_text(record):<16} "
                f"({record.cell_seconds:.1f} s){'' if record.connected else ' ' + (record.error or '')[:120]}"
            )
    return records


def meta(rig: MatrixRig, mode: str, runs: int, started: float) -> dict[str, Any]:
    """What the JSON and Markdown say about the run."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "netem": bool(rig.lab.netem),
        "delay": "netem" if rig.lab.netem else "wire",  # the lab's user-space wire (docs/netlab.md)
        "mode": mode,
        "runs": runs,
        "runtime_s": round(time.monotonic() - started, 1),
    }
