"""Registrations per broker core: in full, then resumed by ticket after the broker restarts.

    python -m bench.registration_storm [--quick]

The real ``dvrlink-broker serve`` (pinned to one core) and one generator process (on the other)
as in ``bench.presence_load``. N simulated devices register in full (Ed25519 signature, X25519),
then the broker is stopped and started again on the same state directory, so with the same
static (fleet) key, and every device comes back at once with the resumption ticket its REGISTERED
carried (``protocol/presence_ticket.py``). For both phases it prints registrations per second,
the broker's CPU over the phase and registrations per core-second, and for the storm how long
all N took against two keepalive intervals of the default (25 s) and of a cellular device
(learned, 120 s).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    GENERATOR_CORE,
    SERVER_CORE,
    BenchError,
    CpuMeter,
    describe_pinning,
    fmt_int,
    parse_args,
    pin_to_core,
    run_main,
    verdict,
)
from bench.loadgen import LoadGenerator, RegistrationReport, check_register_layout
from bench.servers import BrokerProcess, broker_process

KEEPALIVE_MS = 3_600_000
TARGET_PER_CORE = 4_000.0
INTERVALS_S = (25.0, 120.0)


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one run."""

    devices: int
    sockets: int


FULL = Plan(100_000, 256)
QUICK = Plan(2_000, 64)


@dataclass(frozen=True, slots=True)
class Phase:
    """One registration phase."""

    report: RegistrationReport
    cpu: float
    """Fraction of one core the broker used over the phase."""
    resumed: int
    opened: int
    bad: int

    @property
    def per_core(self) -> float:
        """Registrations per CPU-second of the broker."""
        return self.report.rate / self.cpu if self.cpu > 0 else self.report.rate


def register_all(gen: LoadGenerator, broker: BrokerProcess, indexes: range) -> Phase:
    """Register every device once against ``broker``; open the REGISTERED replies afterwards."""
    meter = CpuMeter(broker.pid)
    meter.start()
    report = gen.register(indexes, broker.udp, KEEPALIVE_MS, limit_s=60.0 + len(indexes) / 200.0)
    cpu = meter.fraction()
    if report.registered == 0:
        raise BenchError(
            f"no device registered (refused {report.refused}, failed {report.failed}); see {broker.log}"
        )
    resumed = sum(1 for i in indexes if gen.devices[i].resumed and gen.devices[i].registered)
    opened, bad = gen.open_sessions(indexes, broker.public_key)
    return Phase(report, cpu, resumed, opened, bad)


def describe(name: str, phase: Phase) -> str:
    """Lines about one phase."""
    report = phase.report
    return (
        f"  {name}: {fmt_int(report.registered)} of {fmt_int(report.attempted)} in {report.seconds:.1f} s "
        f"({report.refused} refused, {report.failed} failed, {report.retransmissions} retransmissions"
        f"{', TIMED OUT' if report.timed_out else ''}); {fmt_int(phase.resumed)} by ticket; "
        f"{fmt_int(phase.opened)} REGISTERED opened, {phase.bad} did not\n"
        f"    {fmt_int(report.rate)}/s; broker used {phase.cpu:.2f} of a core -> "
        f"{fmt_int(phase.per_core)} per core-second"
    )


def run(plan: Plan) -> None:
    """The whole benchmark."""
    check_register_layout()
    pin_to_core(GENERATOR_CORE)
    print(f"registration storm: {fmt_int(plan.devices)} devices, {plan.sockets} source sockets on 127.0.x.y")
    with tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp, LoadGenerator(plan.sockets) as gen:
        work = Path(tmp)
        indexes = gen.add_devices(plan.devices)
        with broker_process(work) as broker:
            print(
                f"  {describe_pinning('dvrlink-broker', broker.pid, SERVER_CORE)}; "
                f"{describe_pinning('generator', os.getpid(), GENERATOR_CORE)}"
            )
            full = register_all(gen, broker, indexes)
            print(describe("in full (first registration, a new broker)", full))
        gen.drain()
        with_tickets = sum(1 for d in gen.devices if d.ticket)
        print(f"  broker stopped; {fmt_int(with_tickets)} devices hold a ticket; starting it again")
        with broker_process(work) as broker:
            storm = register_all(gen, broker, indexes)
            print(describe("the storm (every device back at once after the restart)", storm))
            online = broker.online_count()
    print(f"  /v1/health after the storm: {online if online is not None else 'no answer'} online")
    print("  targets:")
    print(
        f"    resumed registrations per core-second {fmt_int(storm.per_core)} (>= {TARGET_PER_CORE:,.0f}) "
        f"{verdict(storm.per_core >= TARGET_PER_CORE)}; in full {fmt_int(full.per_core)}; "
        f"ratio {storm.per_core / full.per_core if full.per_core else 0:.1f}x"
    )
    everyone = storm.report.registered == plan.devices and storm.resumed == plan.devices
    for interval in INTERVALS_S:
        print(
            f"    all {fmt_int(plan.devices)} back within 2 x {interval:g} s: {storm.report.seconds:.1f} s "
            f"{verdict(everyone and storm.report.seconds <= 2 * interval)}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 when the benchmark ran (targets missed or not)."""
    args = parse_args("registrations per broker core, in full and resumed by ticket", argv)
    return run_main(lambda: run(QUICK if args.quick else FULL))


if __name__ == "__main__":
    sys.exit(main())
