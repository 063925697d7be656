"""The matrix's IPv6 cell on its own (needs root): symmetric × symmetric ends direct when both sides
also have a global IPv6 address behind a stateful firewall.

The same cell runs in ``tests/test_matrix.py`` and ``make matrix``; this is the quick check of it
alone (about 30 s: one broker, one daemon, one forward). Over IPv4 a symmetric × symmetric pair has
no direct path (``test_matrix.py`` asserts the relay there), so a direct path here is the IPv6 one:
the device's log names the pair it took, between the two global addresses.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hil import netlab
from hil.matrix import Cell, MatrixRig, matrix_rig, quick_plan
from hil.matrix.cells import DIRECT_PATHS
from hil.netlab import NatType

REASON = netlab.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

CELL = Cell(NatType.SYMMETRIC, NatType.SYMMETRIC, ipv6=True)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixRig]:
    with matrix_rig(tmp_path_factory.mktemp("matrix")) as built:
        yield built


def test_symmetric_pair_with_ipv6_ends_direct_over_ipv6(rig: MatrixRig) -> None:
    plan = quick_plan(CELL)
    assert plan.wait_for_ice, "the cell waits until the path is final"
    assert CELL.prediction.direct, CELL.prediction.reason
    record = rig.run_cell(plan)
    log = (rig.work / "cells" / CELL.key.replace("/", "__") / "dvrlinkd.log").read_text(errors="replace")
    assert record.connected, record.error
    assert record.path in DIRECT_PATHS and record.settled, (
        f"symmetric × symmetric with global IPv6 on both sides should end direct, yet it ended on "
        f"{record.path}: {record.settle_note}\n{log[-3000:]}"
    )
    device, viewer = rig.lab.host_addr6("device"), rig.lab.host_addr6("viewer")
    assert device is not None and viewer is not None
    assert device in log and viewer in log, f"the device's log names no IPv6 pair:\n{log[-3000:]}"
