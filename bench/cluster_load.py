"""Issue 16: keepalives and registrations per broker core-second with PostgreSQL + Redis vs SQLite,
in one run.

    python -m bench.cluster_load [--quick]

The same generator (``bench.loadgen``, pinned to core 0) against two ``dvrlink-broker serve``
processes, both running and pinned to core 1, with the same fleet key and settings:

1. a single broker on SQLite (``registry_url`` and ``redis_url`` empty);
2. a clustered node: ``registry_url`` on a real PostgreSQL and ``redis_url`` on a real
   ``redis-server`` (both started here).

For each: N new devices register in full (Ed25519 + X25519; the first registration binds the
serial in the registry), then keepalives are sent as fast as they are answered, as in
``bench.presence_load``, alternating between the two brokers (3 rounds; quick 1) so that a
busier moment of the machine does not favour one side; the median of each side counts. Figures
are per CPU-second of the broker process (keepalives per core-second). Presence must not touch
PostgreSQL per keepalive: target ratio ≥ 0.9. ``INFO commandstats`` before and after the
clustered node's keepalive run shows how many Redis commands it sent per keepalive (the
presence location is written once per device per keepalive interval, not per keepalive; the
heartbeat is one command a second per node).

Then the clustered node is stopped and started again on the same port and state, and every
device comes back at once with the resumption ticket of its REGISTERED: resumed registrations
per core-second on PostgreSQL (report).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.cluster_rig import ClusterRig, Node, commands_between
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
from bench.loadgen import LoadGenerator, PumpReport, RegistrationReport, check_register_layout

KEEPALIVE_MS = 3_600_000
TARGET_RATIO = 0.9
SETTLE_S = 1.0  # lets the node's 100 ms Redis pipeline write the registrations' locations first


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one run."""

    devices: int
    sockets: int
    keepalive_s: float
    warmup_s: float
    window: int
    max_rate: float
    rounds: int
    """Keepalive runs per broker, alternating between the two."""


FULL = Plan(20_000, 256, 10.0, 2.0, 128, 100_000.0, 3)
QUICK = Plan(1_000, 64, 2.0, 0.5, 64, 40_000.0, 1)


@dataclass(frozen=True, slots=True)
class Registrations:
    """One registration phase."""

    report: RegistrationReport
    cpu: float
    resumed: int

    @property
    def per_core(self) -> float:
        """Registrations per CPU-second of the broker."""
        return self.report.rate / self.cpu if self.cpu > 0 else 0.0


def register(gen: LoadGenerator, node: Node, indexes: range) -> Registrations:
    """Register ``indexes`` at ``node`` (by ticket where a device holds one) and open the replies.

    Raises:
        BenchError: not every device registered.
    """
    meter = CpuMeter(node.pid)
    meter.start()
    report = gen.register(indexes, node.udp, KEEPALIVE_MS, limit_s=60.0 + len(indexes) / 100.0)
    cpu = meter.fraction()
    resumed = sum(1 for i in indexes if gen.devices[i].resumed and gen.devices[i].registered)
    if report.registered != len(indexes):
        raise BenchError(
            f"{report.registered} of {len(indexes)} registered at {node.name} (refused {report.refused}, "
            f"failed {report.failed}); see {node.log}"
        )
    _, bad = gen.open_sessions(indexes, node.public_key)
    if bad:
        raise BenchError(f"{bad} REGISTERED replies from {node.name} did not open")
    return Registrations(report, cpu, resumed)


def keepalives(gen: LoadGenerator, node: Node, indexes: range, plan: Plan) -> PumpReport:
    """One keepalive run against ``node``."""
    report = gen.keepalive_run(
        indexes, node.udp, plan.keepalive_s, plan.warmup_s, plan.window, plan.max_rate, node.pid
    )
    gen.drain()
    if report.answered == 0:
        raise BenchError(f"no keepalive answered by {node.name}; see {node.log}")
    return report


def per_core(report: PumpReport) -> float:
    """Answers per CPU-second of the broker."""
    return report.rate / report.server_cpu if report.server_cpu > 0 else 0.0


def describe_registrations(name: str, phase: Registrations) -> str:
    """One line about a registration phase."""
    report = phase.report
    return (
        f"  registrations, {name}: {fmt_int(report.registered)} in {report.seconds:.1f} s "
        f"({report.retransmissions} retransmissions, {fmt_int(phase.resumed)} by ticket); "
        f"{fmt_int(report.rate)}/s, broker used {phase.cpu:.2f} of a core -> "
        f"{fmt_int(phase.per_core)} per core-second"
    )


def describe_keepalives(name: str, report: PumpReport) -> str:
    """One line about a keepalive run."""
    return (
        f"  keepalives, {name}: {fmt_int(report.rate)}/s over {report.seconds:.1f} s ({report.lost} lost, "
        f"{report.invalid} invalid, {report.samples_bad} bad of {report.samples_ok + report.samples_bad} "
        f"opened); broker used {report.server_cpu:.2f} of a core -> {fmt_int(per_core(report))} "
        f"per core-second; generator used {report.generator_cpu:.2f}"
    )


def run(plan: Plan) -> None:
    """The whole benchmark."""
    check_register_layout()
    print(
        "keepalives and registrations per broker core-second, PostgreSQL + Redis vs SQLite: "
        f"{fmt_int(plan.devices)} devices per broker, {plan.sockets} source sockets"
    )
    with ClusterRig() as rig:
        pin_to_core(GENERATOR_CORE)
        with LoadGenerator(plan.sockets) as gen:
            single = rig.add_node("sqlite", clustered=False)
            node = rig.add_node("pg")
            print(
                f"  {describe_pinning('dvrlink-broker on SQLite', single.pid, SERVER_CORE)}; "
                f"{describe_pinning('clustered dvrlink-broker', node.pid, SERVER_CORE)}; "
                f"{describe_pinning('generator', os.getpid(), GENERATOR_CORE)}"
            )
            on_sqlite = gen.add_devices(plan.devices, prefix="SQ-")
            full_sqlite = register(gen, single, on_sqlite)
            print(describe_registrations("in full, SQLite", full_sqlite))
            on_pg = gen.add_devices(plan.devices, prefix="PG-")
            redis_at_start = rig.redis_commands()
            full_pg = register(gen, node, on_pg)
            print(describe_registrations("in full, PostgreSQL + Redis", full_pg))
            time.sleep(SETTLE_S)
            during_registration = commands_between(redis_at_start, rig.redis_commands())
            print(
                f"  Redis commands while {fmt_int(full_pg.report.registered)} devices registered: "
                f"{fmt_int(sum(during_registration.values()))} {during_registration}"
            )
            runs_sqlite: list[PumpReport] = []
            runs_pg: list[PumpReport] = []
            during_keepalives: dict[str, int] = {}
            for _ in range(plan.rounds):  # alternating, so a busier moment does not favour one side
                runs_sqlite.append(keepalives(gen, single, on_sqlite, plan))
                print(describe_keepalives("SQLite", runs_sqlite[-1]))
                before = rig.redis_commands()
                runs_pg.append(keepalives(gen, node, on_pg, plan))
                for name, count in commands_between(before, rig.redis_commands()).items():
                    during_keepalives[name] = during_keepalives.get(name, 0) + count
                print(describe_keepalives("PostgreSQL + Redis", runs_pg[-1]))
            ka_sqlite = statistics.median(per_core(r) for r in runs_sqlite)
            ka_pg = statistics.median(per_core(r) for r in runs_pg)
            answered_pg = sum(r.answered_total for r in runs_pg)
            redis_per_keepalive = sum(during_keepalives.values()) / max(answered_pg, 1)
            print(
                f"  Redis commands during the clustered node's keepalive runs: "
                f"{fmt_int(sum(during_keepalives.values()))} {during_keepalives} for "
                f"{fmt_int(answered_pg)} keepalives answered -> {redis_per_keepalive:.4f} per keepalive"
            )
            rig.stop_node(single)

            rig.stop_node(node)
            gen.drain()
            with_tickets = sum(1 for i in on_pg if gen.devices[i].ticket)
            print(
                f"  clustered node stopped; {fmt_int(with_tickets)} devices hold a ticket; starting it again"
            )
            rig.restart(node)
            resumed_pg = register(gen, node, on_pg)
            print(describe_registrations("resumed after the restart, PostgreSQL + Redis", resumed_pg))

    ratio = ka_pg / ka_sqlite if ka_sqlite else 0.0
    print("  targets:")
    print(
        f"    keepalives per core-second, PostgreSQL + Redis / SQLite: {fmt_int(ka_pg)} / "
        f"{fmt_int(ka_sqlite)} (median of {plan.rounds}) = {ratio:.2f} (>= {TARGET_RATIO}) "
        f"{verdict(ratio >= TARGET_RATIO)}"
    )
    print(
        f"    Redis commands per keepalive: {redis_per_keepalive:.4f} "
        "(presence writes once per device and interval, not per keepalive)"
    )
    print(
        f"    registrations per core-second with PostgreSQL (report): in full {fmt_int(full_pg.per_core)} "
        f"(SQLite {fmt_int(full_sqlite.per_core)}), resumed by ticket {fmt_int(resumed_pg.per_core)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 when the benchmark ran (targets missed or not)."""
    args = parse_args(
        "keepalives and registrations per broker core-second, PostgreSQL + Redis vs SQLite", argv
    )
    return run_main(lambda: run(QUICK if args.quick else FULL))


if __name__ == "__main__":
    sys.exit(main())
