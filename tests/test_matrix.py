"""Connectivity matrix on LAN (needs root): the real broker, daemon and viewer in every device NAT ×
viewer NAT cell of the NAT lab, once each, with the hard invariants asserted per cell.

One lab and one broker serve every cell (``Lab.reconfigure``); each cell starts its own
``dvrlinkd`` and ``dvrlink forward``. The waits are bounded per cell (``hil.matrix.quick_plan``):
cells where a direct path is predicted, and symmetric × symmetric, wait until the path is final
(direct, or the device's ICE checks gave up); the others look 1 s after the first byte.
``make matrix`` runs the full set (LAN and the 3G/GPRS subset, every path waited for, median
of 5) and rewrites ``docs/connectivity.md``; this suite writes its report to a temporary
directory and prints the table.

No assertion here is about time: the "first byte within 2 s on LAN" target is judged in the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import netlab
from hil.matrix import Cell, CellRecord, MatrixRig, lan_cells, matrix_rig, meta, quick_plan
from hil.matrix.cells import DIRECT_PATHS
from hil.matrix.report import cell_text, invariants, table, write
from hil.netlab import NatType

REASON = netlab.unavailable_reason()
# slow: a lab, a daemon and a forward per cell; some cells take 20-30 s on a busy machine
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

CELLS = lan_cells()
ICE_GAVE_UP = "ICE checks gave up"
"""What a cell's settle note says when the direct checks ran out of time (see ``test_cell``)."""


@pytest.fixture(scope="module")
def started() -> float:
    return time.monotonic()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, started: float) -> Iterator[MatrixRig]:
    with matrix_rig(tmp_path_factory.mktemp("matrix")) as built:
        yield built


@pytest.fixture(scope="module")
def records() -> dict[str, CellRecord]:
    return {}


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: f"{c.device_name}-{c.viewer_name}")
def test_cell(rig: MatrixRig, records: dict[str, CellRecord], cell: Cell) -> None:
    record = rig.run_cell(quick_plan(cell))
    if (
        cell.one_eim
        and record.connected
        and record.path == "relay"
        and ICE_GAVE_UP in (record.settle_note or "")
    ):
        # A known intermittent fault, not yet understood (about one full matrix in five,
        # 2026-12, always a cgnat cell): the device's checks to the viewer's server-reflexive
        # candidate run for the whole 30 s and no check of the viewer's arrives, as if the
        # viewer never got the device's own server-reflexive candidate. Seen again on
        # 2026-12-07 in a port_restricted_cone × port_restricted_cone cell, twice in a row
        # while the suite ran on 3 workers, with the checks failing within a second, not
        # timing out (the note now carries the daemon's reason). Up to two more runs of the
        # cell, said out loud; a third relay fails the test as before. (Until 2026-12-07 the
        # reruns appended to the first run's daemon log, read its "no direct path" line and
        # ended at once: a CI run failed so, with one real run. Each run now logs afresh.)
        # 2026-12-07: a likely cause found and fixed: `dvrlink forward` closed the broker client
        # that trickles candidates as soon as the session was up on the relay, so a device
        # candidate found later (its server-reflexive one on a busy machine) never reached the
        # viewer ("trickle ... stopped: ... closed the connection without an answer" in the
        # viewer's log). The client now closes with the session (viewer/cli.py ``_open``).
        for attempt in (2, 3):
            print(f"{cell.key}: relay ({record.settle_note}); running the cell again (run {attempt})")
            record = rig.run_cell(quick_plan(cell))
            if record.path != "relay" or ICE_GAVE_UP not in (record.settle_note or ""):
                break
    records[cell.key] = record
    print(f"{cell.key}: {cell_text(record)} ({record.settle_note or record.error})")
    if cell.udp_blocked:
        # Not a hard invariant (presence over TCP and TURN over TCP 443 are new); when it
        # connects, it can only be through the relay, and a blocked device registers over TCP.
        assert record.connected or record.error
        assert not record.connected or record.path == "relay", record.settle_note
        if cell.device is NatType.UDP_BLOCKED and record.registered:
            assert record.presence == "tcp"
        return
    assert record.registered, record.error
    assert record.connected, record.error
    if cell.device is NatType.HAIRPIN:
        # Both hosts on one LAN bridge: the viewer finds the device by LAN discovery (issue 17,
        # docs/connectivity.md) and the session runs on the LAN with no broker and no relay.
        assert record.path == "lan", record.settle_note
        assert not record.relay_in_bytes, "a session found on the LAN never touches the relay"
    else:
        assert record.relay_in_bytes, "every session opens on the relay, so the TURN port saw bytes"
    if cell.both_apdm:
        assert record.path == "relay", f"two per-remote mappings cannot be punched: {record.settle_note}"
    if cell.device is NatType.SYMMETRIC and cell.viewer is NatType.SYMMETRIC:
        assert record.settled, f"the relay must be final in symmetric × symmetric: {record.settle_note}"
    if cell.device_maps:
        assert record.path in DIRECT_PATHS, (
            f"the device's router maps ports ({cell.device.value}), so the viewer should reach the "
            f"mapped candidate directly, yet the session stayed on {record.path}: {record.settle_note}"
        )
    if cell.one_eim:
        how = cell.punch or "plain ICE checks"
        assert record.path in DIRECT_PATHS, (
            f"one side maps endpoint-independently ({cell.device.value} × {cell.viewer.value}), so "
            f"{how} should have found a direct path, yet the session stayed on {record.path}: "
            f"{record.settle_note}"
        )


def test_report(rig: MatrixRig, records: dict[str, CellRecord], started: float, tmp_path: Path) -> None:
    if len(records) < len(CELLS):
        pytest.skip(f"the report needs every cell; {len(records)} of {len(CELLS)} ran")
    ordered = [records[c.key] for c in CELLS]
    md, js = write(ordered, meta(rig, "quick", 1, started), tmp_path)
    print(f"\n{table(ordered, 'lan')}")
    document = json.loads(js.read_text())
    assert len(document["cells"]) == len(CELLS) == 67
    assert document["kernel"] and document["netem"] is rig.lab.netem
    assert "| **symmetric** |" in md.read_text()
    assert [v.passed for v in invariants(ordered)] == [True, True, True, True, True], [
        v.misses for v in invariants(ordered)
    ]
