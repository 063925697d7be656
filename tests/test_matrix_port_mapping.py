"""The matrix's port-mapping cell on its own (needs root, miniupnpd and nft): symmetric × symmetric
ends direct when the device's router maps ports.

The same cell runs in ``tests/test_matrix.py`` and ``make matrix``; this is the quick check of it
alone (about 30 s: one broker, one daemon, one forward). Without a mapping a symmetric × symmetric
pair has no direct path (``test_matrix.py`` asserts the relay there), so a direct path here is
the mapped candidate at work. When the session is over the router holds no mapping any more.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil.matrix import Cell, MatrixRig, matrix_rig, quick_plan
from hil.matrix.cells import DIRECT_PATHS
from hil.netlab import NatType
from hil.netlab.lab import upnp_unavailable_reason

REASON = upnp_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

CELL = Cell(NatType.SYMMETRIC_UPNP, NatType.SYMMETRIC)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixRig]:
    with matrix_rig(tmp_path_factory.mktemp("matrix")) as built:
        yield built


def test_symmetric_pair_ends_direct_through_the_devices_port_mapping(rig: MatrixRig) -> None:
    plan = quick_plan(CELL)
    assert plan.wait_for_ice, "the cell waits until the path is final"
    record = rig.run_cell(plan)
    log = (rig.work / "cells" / CELL.key.replace("/", "__") / "dvrlinkd.log").read_text(errors="replace")
    assert record.connected, record.error
    assert "mapped to 100.63.0.2:" in log, f"the device's router mapped no port:\n{log[-3000:]}"
    assert record.path in DIRECT_PATHS and record.settled, (
        f"symmetric × symmetric with a port-mapping router should end direct, yet it ended on "
        f"{record.path}: {record.settle_note}"
    )
    mappings = rig.lab.upnp_mappings("device")
    assert mappings == "", f"the session ended, yet the router still maps: {mappings}"
