"""``python -m hil.matrix``: run the connectivity matrix (needs root); see ``hil.matrix``."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hil.matrix.cells import IPV6_SUFFIX, Cell, full_plan, lan_cells, profile_cells, quick_plan
from hil.matrix.report import invariants, load, table, targets, write
from hil.matrix.rig import MatrixError, matrix_rig
from hil.matrix.runner import meta, run_plans
from hil.netlab import PROFILES, NatType


def parse_cell(text: str) -> Cell:
    """``DEVICE:VIEWER[:PROFILE]``; ``symmetric+v6:symmetric+v6`` is an IPv6 cell (both sides or none).

    Raises:
        ValueError: malformed, or an unknown NAT type or profile.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"bad cell {text!r}: use DEVICE:VIEWER[:PROFILE], e.g. symmetric:full_cone:gprs")
    profile = parts[2] if len(parts) == 3 else "lan"
    if profile not in PROFILES:
        raise ValueError(f"bad cell {text!r}: profile {profile!r}; use one of: {', '.join(PROFILES)}")
    v6 = [part.endswith(IPV6_SUFFIX) for part in parts[:2]]
    if v6[0] != v6[1]:
        raise ValueError(f"bad cell {text!r}: give {IPV6_SUFFIX} on both sides or on neither")
    device, viewer = (part.removesuffix(IPV6_SUFFIX) for part in parts[:2])
    return Cell(NatType.parse(device), NatType.parse(viewer), profile, ipv6=v6[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when the hard invariants hold, 1 when one fails, 2 on usage or rig errors."""
    parser = argparse.ArgumentParser(prog="python -m hil.matrix", description=__doc__)
    parser.add_argument(
        "--full",
        action="store_true",
        help="LAN cells and the 3G/GPRS subset, every path waited for until final",
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="timed runs per cell (default 5 with --full, else 1)"
    )
    parser.add_argument(
        "--cell",
        action="append",
        default=[],
        metavar="DEVICE:VIEWER[:PROFILE]",
        help="run only these cells (repeatable; with --full they are waited for until final)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        metavar="DIR",
        help="write connectivity.md and connectivity.json into DIR",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the processes' logs here (default: a temporary directory)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="DIR",
        help="only render DIR/connectivity.md again from DIR/connectivity.json (no lab, no root)",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        try:
            records, info = load(args.render / "connectivity.json")
        except (OSError, ValueError) as exc:
            print(f"matrix: {exc}", file=sys.stderr)
            return 2
        for path in write(records, info, args.render):
            print(f"wrote {path}")
        return 0
    runs = args.runs if args.runs is not None else (5 if args.full else 1)
    if not 1 <= runs <= 50:
        parser.error("--runs must be 1-50")
    try:
        chosen = [parse_cell(text) for text in args.cell]
    except ValueError as exc:
        parser.error(str(exc))
    cells = chosen or (lan_cells() + profile_cells() if args.full else lan_cells())
    if chosen and not any(c.device is NatType.PUBLIC and c.viewer is NatType.PUBLIC for c in chosen):
        cells = [Cell(NatType.PUBLIC, NatType.PUBLIC), *cells]  # pairs the viewer first
    plans = [full_plan(c, runs) if args.full else quick_plan(c) for c in cells]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dvrlink-matrix-") as tmp:
        work = args.work or Path(tmp)
        try:
            with matrix_rig(work) as rig:
                netem = "yes" if rig.lab.netem else "no"
                print(f"matrix: {len(plans)} cells, {runs} run(s) each, netem {netem}")
                records = run_plans(rig, plans, progress=lambda line: print(line, flush=True))
                info = meta(rig, "full" if args.full else "quick", runs, started)
        except MatrixError as exc:
            print(f"matrix: {exc}", file=sys.stderr)
            return 2
    for profile in ("lan", "3g", "gprs"):
        if any(r.profile == profile for r in records):
            print(f"\n{profile}:\n{table(records, profile)}")
    print()
    for verdict in [*targets(records), *invariants(records)]:
        print(f"{'PASS' if verdict.passed else 'FAIL'}: {verdict.name}")
        for miss in verdict.misses:
            print(f"    {miss}")
    if args.docs is not None:
        for path in write(records, info, args.docs):
            print(f"wrote {path}")
    print(f"matrix took {info['runtime_s']:.0f} s")
    return 0 if all(v.passed for v in invariants(records)) else 1


if __name__ == "__main__":
    sys.exit(main())
