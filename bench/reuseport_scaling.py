"""Keepalives per broker core-second: one broker process, then two sharing the port (SO_REUSEPORT).

    python -m bench.reuseport_scaling [--quick]

One broker process per core is how a host of the cluster uses its cores (``udp_reuse_port``; the
kernel hashes each device's address to one process). This machine has two cores and the load
generator needs one, so both broker processes run on the same core and the figure is
CPU-normalised: keepalives answered per CPU-second of all broker processes. A ratio near 1 says
sharing the port costs nothing per core, so N cores serve N times the keepalives.

Each phase registers its own N devices (the second phase's brokers share one static key, as the
nodes of a fleet do), then sends keepalives as fast as they are answered, as
``bench.presence_load`` does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    GENERATOR_CORE,
    SERVER_CORE,
    BenchError,
    describe_pinning,
    fmt_int,
    parse_args,
    pin_to_core,
    run_main,
    verdict,
)
from bench.loadgen import LoadGenerator, PumpReport, check_register_layout
from bench.servers import BrokerProcess, broker_process

KEEPALIVE_MS = 3_600_000
TARGET_RATIO = 0.9


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one run."""

    devices: int
    sockets: int
    keepalive_s: float
    warmup_s: float
    window: int
    max_rate: float


FULL = Plan(20_000, 256, 10.0, 2.0, 128, 100_000.0)
QUICK = Plan(1_000, 64, 2.0, 0.5, 64, 40_000.0)


def keepalives(
    gen: LoadGenerator, brokers: Sequence[BrokerProcess], plan: Plan
) -> tuple[PumpReport, list[int]]:
    """Register a fresh set of devices on the shared port, then one keepalive run; the devices
    each broker process holds."""
    new = gen.add_devices(plan.devices, prefix=f"RP{len(brokers)}-")
    report = gen.register(new, brokers[0].udp, KEEPALIVE_MS, limit_s=60.0 + plan.devices / 200.0)
    if report.registered != plan.devices:
        raise BenchError(
            f"{report.registered} of {plan.devices} registered (refused {report.refused}, failed "
            f"{report.failed}); see {brokers[0].log}"
        )
    time.sleep(0.5)
    held = [b.online_count() or 0 for b in brokers]
    _, bad = gen.open_sessions(new, brokers[0].public_key)
    if bad:
        raise BenchError(f"{bad} REGISTERED replies did not open")
    pids = [b.pid for b in brokers]
    run = gen.keepalive_run(
        new, brokers[0].udp, plan.keepalive_s, plan.warmup_s, plan.window, plan.max_rate, pids
    )
    gen.drain()
    return run, held


def describe(name: str, report: PumpReport, held: list[int]) -> str:
    """Lines about one phase."""
    per_core = report.rate / report.server_cpu if report.server_cpu > 0 else report.rate
    return (
        f"  {name}: devices per process {held}\n"
        f"    {fmt_int(report.rate)}/s answered over {report.seconds:.1f} s ({report.lost} lost, "
        f"{report.invalid} invalid); broker processes used {report.server_cpu:.2f} of a core "
        f"-> {fmt_int(per_core)} per core-second; generator used {report.generator_cpu:.2f}"
    )


def per_core(report: PumpReport) -> float:
    """Answers per CPU-second of the broker processes."""
    return report.rate / report.server_cpu if report.server_cpu > 0 else 0.0


def run(plan: Plan) -> None:
    """The whole benchmark."""
    check_register_layout()
    pin_to_core(GENERATOR_CORE)
    print(
        "keepalives per broker core-second, 1 process vs 2 sharing the port: "
        f"{fmt_int(plan.devices)} devices per phase, {plan.sockets} source sockets"
    )
    with tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp, LoadGenerator(plan.sockets) as gen:
        work = Path(tmp)
        with broker_process(work, name="single") as single:
            print(
                f"  {describe_pinning('dvrlink-broker', single.pid, SERVER_CORE)}; "
                f"{describe_pinning('generator', os.getpid(), GENERATOR_CORE)}"
            )
            one, held_one = keepalives(gen, [single], plan)
            print(describe("one process", one, held_one))
        with contextlib.ExitStack() as stack:
            first = stack.enter_context(broker_process(work, name="shared-1", reuse_port=True))
            key = first.state_dir / "broker_key.pem"
            second_state = work / "shared-2-state"
            second_state.mkdir()
            shutil.copy(key, second_state / key.name)  # one fleet key
            second = stack.enter_context(
                broker_process(work, name="shared-2", udp_port=first.udp[1], reuse_port=True)
            )
            if second.udp != first.udp or second.public_key != first.public_key:
                raise BenchError("the second broker did not share the port and the key")
            print(f"  {describe_pinning('second dvrlink-broker', second.pid, SERVER_CORE)}")
            two, held_two = keepalives(gen, [first, second], plan)
            print(describe("two processes, one port", two, held_two))
    ratio = per_core(two) / per_core(one) if per_core(one) else 0.0
    print("  targets:")
    print(
        f"    keepalives per core-second, 2 processes / 1: {ratio:.2f} (>= {TARGET_RATIO}) "
        f"{verdict(ratio >= TARGET_RATIO)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 when the benchmark ran (targets missed or not)."""
    args = parse_args("keepalives per broker core-second, 1 process vs 2 sharing the port", argv)
    return run_main(lambda: run(QUICK if args.quick else FULL))


if __name__ == "__main__":
    sys.exit(main())
