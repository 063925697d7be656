"""The connectivity matrix's judging and rendering, without the lab (no root needed): which path
each cell should end on, how targets and invariants are judged, and what the docs look like."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil.matrix.__main__ import parse_cell
from hil.matrix.cells import SETTLE_S, Cell, full_plan, lan_cells, profile_cells, quick_plan
from hil.matrix.report import (
    cell_of,
    cell_text,
    invariants,
    ipv6_section,
    load,
    markdown,
    table,
    targets,
    write,
)
from hil.matrix.report import document as document_of
from hil.matrix.rig import CellRecord, device_path, parse_counters, set_aside_log
from hil.netlab import NatType as N

META = {
    "date": "2026-01-01 00:00 UTC",
    "kernel": "6.1",
    "cpus": 2,
    "netem": False,
    "runs": 1,
    "runtime_s": 60,
}


def record(cell: Cell, path: str | None = "direct", seconds: float = 0.4, settled: bool = True) -> CellRecord:
    connected = path is not None
    return CellRecord(
        cell.device_name,
        cell.viewer_name,
        cell.profile,
        netem=False,
        registered=connected,
        connected=connected,
        path=path,
        settled=settled,
        first_byte_s=seconds if connected else None,
        relay_in_bytes=5000,
        error=None if connected else "dvrlink: device DL-MATRIX-0001 is offline",
    )


def physical(cell: Cell) -> CellRecord:
    """What NAT behaviour allows, with port prediction and a birthday search."""
    return record(cell, cell.predicted_path)


def test_the_lan_matrix_has_every_pair_one_hairpin_cell_one_port_mapping_cell_and_one_ipv6_cell() -> None:
    cells = lan_cells()
    assert len(cells) == 8 * 8 + 1 + 1 + 1
    assert cells[0] == Cell(N.PUBLIC, N.PUBLIC)  # pairs the viewer first
    assert cells[-3:] == [
        Cell(N.HAIRPIN, N.HAIRPIN),
        Cell(N.SYMMETRIC_UPNP, N.SYMMETRIC),
        Cell(N.SYMMETRIC, N.SYMMETRIC, ipv6=True),
    ]
    assert len({c.key for c in cells}) == len(cells)
    assert {c.profile for c in profile_cells()} == {"3g", "gprs"} and len(profile_cells()) == 12


@pytest.mark.parametrize(
    ("device", "viewer", "target", "predicted"),
    [
        (N.PUBLIC, N.SYMMETRIC, "direct", "direct"),
        (N.PORT_RESTRICTED_CONE, N.PORT_RESTRICTED_CONE, "direct", "direct"),
        (N.RESTRICTED_CONE, N.SYMMETRIC, "direct", "direct"),
        (N.PORT_RESTRICTED_CONE, N.SYMMETRIC, "direct", "direct"),
        (N.SEQUENTIAL_SYMMETRIC, N.CGNAT, "direct", "direct"),
        (N.SYMMETRIC, N.SEQUENTIAL_SYMMETRIC, "relay", "relay"),
        (N.UDP_BLOCKED, N.PUBLIC, "relay", "relay"),
        (N.HAIRPIN, N.HAIRPIN, "direct", "direct"),
        (N.SYMMETRIC_UPNP, N.SYMMETRIC, "direct", "direct"),
    ],
)
def test_targets_and_predictions_per_cell(device: N, viewer: N, target: str, predicted: str) -> None:
    cell = Cell(device, viewer)
    assert cell.target_path == target
    assert cell.predicted_path == predicted
    assert bool(cell.why_not_direct) is (predicted != "direct")


def test_quick_plans_wait_for_the_final_path_where_a_direct_one_is_predicted() -> None:
    plans = {p.cell: p for p in map(quick_plan, lan_cells())}
    waited = {c for c, p in plans.items() if p.wait_for_ice}
    predicted_direct = {c for c in plans if c.predicted_path == "direct"}
    assert waited == predicted_direct | {Cell(N.SYMMETRIC, N.SYMMETRIC)}, waited ^ predicted_direct
    assert Cell(N.FULL_CONE, N.CGNAT) in waited
    assert plans[Cell(N.FULL_CONE, N.CGNAT)].settle_s == SETTLE_S
    assert plans[Cell(N.PUBLIC, N.UDP_BLOCKED)].settle_s == 1.0
    assert not plans[Cell(N.PUBLIC, N.UDP_BLOCKED)].wait_for_ice
    full = full_plan(Cell(N.CGNAT, N.SYMMETRIC, "gprs"), runs=5)
    assert full.wait_for_ice and full.runs == 5


def test_cell_text() -> None:
    cell = Cell(N.SYMMETRIC, N.FULL_CONE)
    assert cell_text(record(cell, "direct", 0.4213)) == "direct 0.42 s"
    assert cell_text(record(cell, "relay", 0.61, settled=False)) == "relay? 0.61 s"
    assert cell_text(record(cell, None)) == "FAIL"
    assert cell_text(None) == "-"


def test_physics_meets_every_target_and_invariant() -> None:
    records = [physical(c) for c in lan_cells()]
    assert all(v.passed for v in invariants(records))
    assert all(v.passed for v in targets(records))


def test_a_punch_that_found_nothing_misses_the_direct_target_and_invariant() -> None:
    records = [physical(c) for c in lan_cells()]
    punched = [r for r in records if cell_of(r).punch]
    assert len(punched) == 9  # (sequential) symmetric × port-restricted/cgnat, both ways; a mapping
    assert {cell_of(r).punch for r in punched} == {"port prediction", "birthday search", "port mapping"}
    for r in punched:
        r.path = "relay"
    _, direct, _, _ = targets(records)
    assert len(direct.misses) == 9
    assert len(invariants(records)[2].misses) == 8
    assert [m.split(":")[0] for m in invariants(records)[3].misses] == ["symmetric_upnp × symmetric"]


def test_cells_that_fail_to_connect_miss_every_target_they_touch() -> None:
    records = [physical(c) for c in lan_cells()]
    for r in records:
        if "udp_blocked" in (r.device_nat, r.viewer_nat):
            r.connected, r.path, r.first_byte_s, r.error = False, None, None, "dvrlink: no working path"
    assert all(v.passed for v in invariants(records))  # UDP-blocked cells are not hard invariants
    connect, _, relay, fast = targets(records)
    assert len(connect.misses) == len(relay.misses) == len(fast.misses) == 15
    assert all("did not connect" in miss for miss in fast.misses)


def test_invariants_catch_a_missed_punch_a_direct_symmetric_pair_and_a_failure() -> None:
    records = [physical(c) for c in lan_cells()]
    by_key = {r.device_nat + "/" + r.viewer_nat: r for r in records}
    assert by_key["symmetric+v6/symmetric+v6"].path == "direct"
    by_key["full_cone/cgnat"].path = "relay"
    by_key["symmetric/symmetric"].settled = False
    by_key["cgnat/cgnat"].connected = False
    by_key["symmetric_upnp/symmetric"].path = "relay"
    by_key["symmetric+v6/symmetric+v6"].path = "relay"
    connect, relay, direct, mapped, ipv6 = invariants(records)
    assert [m.split(":")[0] for m in connect.misses] == ["cgnat × cgnat"]
    assert [m.split(":")[0] for m in relay.misses] == ["symmetric × symmetric"]
    assert [m.split(":")[0] for m in direct.misses] == ["full_cone × cgnat"]
    assert [m.split(":")[0] for m in mapped.misses] == ["symmetric_upnp × symmetric"]
    assert [m.split(":")[0] for m in ipv6.misses] == ["symmetric+v6 × symmetric+v6"]


def test_an_ipv6_cell_round_trips_through_its_record_and_the_command_line() -> None:
    cell = Cell(N.SYMMETRIC, N.SYMMETRIC, ipv6=True)
    assert cell.key == "symmetric+v6/symmetric+v6/lan"
    assert cell_of(record(cell)) == cell
    assert parse_cell("symmetric+v6:symmetric+v6") == cell
    with pytest.raises(ValueError, match="both sides"):
        parse_cell("symmetric+v6:symmetric")
    assert "IPv6: device symmetric × viewer symmetric" in table([record(cell)], "lan")


def test_a_slow_first_byte_fails_the_two_second_target_only() -> None:
    records = [record(c, "relay" if c.target_path == "relay" else "direct") for c in lan_cells()]
    records[3].first_byte_s = 2.5
    records[7].first_byte_s = 3.01
    _, _, _, fast = targets(records)
    assert fast.misses == [
        "public × port_restricted_cone: first byte after 2.50 s",
        "public × udp_blocked: first byte after 3.01 s (TURN over UDP tried for 2.5 s before TCP)",
    ]


def test_markdown_and_json(tmp_path: Path) -> None:
    records = [physical(c) for c in lan_cells() + profile_cells()]
    text = markdown(records, META)
    assert "| device ↓ / viewer → | public | full_cone |" in text
    assert "Hairpin (device and viewer behind one NAT): **direct 0.40 s**" in text
    assert "Port mapping: device symmetric_upnp (its router runs miniupnpd" in text
    assert "## GPRS (no netem: rate/loss only)" in text
    assert "- **PASS**: 100% of cells connect" in text
    assert "- **PASS**: cells with endpoint-independent mapping" in text
    assert "- **PASS**: symmetric × symmetric ends on the relay" in text
    gprs = table(records, "gprs")
    assert gprs.count("\n") == 3 and "udp_blocked" not in gprs  # two rows, three columns
    md, js = write(records, META, tmp_path)
    document = json.loads(js.read_text())
    assert len(document["cells"]) == 67 + 12 and document["no_netem_note"] == "no netem: rate/loss only"
    assert md.read_text() == text
    assert load(js) == (records, META)  # --render draws the same Markdown from the JSON
    js.write_text('{"cells": [{"device_nat": "public"}]}')
    with pytest.raises(ValueError, match="does not fit"):
        load(js)
    wired = {**META, "netem": False, "delay": "wire"}  # a run with the lab's user-space wire
    text = markdown(records, wired)
    assert "## GPRS\n" in text and "no netem: rate/loss only" not in text
    assert "the delay came from the lab's user-space wire" in text
    assert document_of(records, wired)["no_netem_note"] is None


def test_parse_counters_sums_the_commented_rules() -> None:
    listing = """Chain DLM-TURN (2 references)
    pkts      bytes target     prot opt in     out     source               destination
      12     5229 RETURN     17   --  eth0   *       0.0.0.0/0  0.0.0.0/0  udp dpt:3479 /* in */
       0        0 RETURN     17   --  *      eth0    0.0.0.0/0  0.0.0.0/0  udp spt:3479 /* out */
       2      120 RETURN     6    --  eth0   *       0.0.0.0/0  0.0.0.0/0  tcp dpt:3479 /* in */
      10     4917 RETURN     6    --  *      eth0    0.0.0.0/0  0.0.0.0/0  tcp spt:3479 /* out */
"""
    assert parse_counters(listing) == (5349, 4917)
    assert parse_counters("") == (0, 0)


def test_device_path_takes_the_last_path_the_log_names() -> None:
    log = (
        "INFO dvrlink.daemon.session_server: session 1a2b: viewer ab:cd authenticated on the relay path\n"
        "INFO dvrlink.session.runner: viewer moved to path ('direct', 0)\n"
    )
    assert device_path(log) == "direct"
    assert device_path("nothing") is None


def test_parse_cell() -> None:
    assert parse_cell("symmetric:full-cone:gprs") == Cell(N.SYMMETRIC, N.FULL_CONE, "gprs")
    with pytest.raises(ValueError, match="DEVICE:VIEWER"):
        parse_cell("symmetric")
    with pytest.raises(ValueError, match="use one of"):
        parse_cell("public:public:5g")


def test_a_rerun_of_a_cell_gets_a_fresh_daemon_log(tmp_path: Path) -> None:
    # The daemon appends to its log; a rerun that kept the first run's "no direct path" line
    # would call its own relay final at once.
    log = tmp_path / "dvrlinkd.log"
    set_aside_log(log)
    assert not log.exists() and not list(tmp_path.iterdir()), "nothing to set aside, nothing made"
    log.write_text("run 1: no direct path: ICE checks timed out\n")
    set_aside_log(log)
    log.write_text("run 2\n")
    set_aside_log(log)
    assert not log.exists()
    assert (tmp_path / "dvrlinkd.log.1").read_text().startswith("run 1")
    assert (tmp_path / "dvrlinkd.log.2").read_text() == "run 2\n"


def test_the_ipv6_section_is_generated_and_in_the_docs() -> None:
    section = "\n".join(ipv6_section())
    assert section in markdown([physical(c) for c in lan_cells()], META)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "connectivity.md").read_text()
    assert section in doc, (
        "docs/connectivity.md lacks the IPv6 section: paste hil.matrix.report.ipv6_section()"
    )
