"""Broker presence load: registrations/s, memory per online device, keepalives/s per core, vs coturn.

    python -m bench.presence_load [--quick]

The real ``dvrlink-broker`` runs pinned to core 1; this process (the load generator) pins itself
to core 0 and speaks from many UDP sockets on distinct 127.0.x.y addresses. It registers N
simulated devices (each with its own Ed25519 key, keepalive interval 3600 s so they stay
online), reads the broker's VmRSS before and after, then sends pre-sealed keepalives as fast as
the broker answers with a bounded window. In the same run it sends STUN Binding requests to
coturn (pinned to core 1, one relay thread) and to the broker's STUN responder.

The machine may be shared, so besides answers per wall-clock second it prints the CPU the
server process used in the measured window (/proc/PID/stat) and answers per CPU-second of the
server: the per-core figure the targets are judged on.
"""

from __future__ import annotations

import os
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
    CpuMeter,
    describe_pinning,
    fmt_int,
    parse_args,
    pin_to_core,
    rss_bytes,
    run_main,
    verdict,
)
from bench.loadgen import LoadGenerator, PumpReport, RegistrationReport, check_register_layout
from bench.servers import BrokerProcess, broker_process, coturn_available, coturn_process

KEEPALIVE_TARGET_PER_CORE = 20_000.0
MEMORY_TARGET_BYTES = 1024.0
MEANINGFUL_FLEET = 10_000  # below this, allocator granularity dominates the memory figure
KEEPALIVE_MS = 3_600_000  # devices ask for the longest interval so they stay online while measured


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations of one run."""

    sizes: tuple[int, ...]
    sockets: int
    keepalive_s: float
    stun_s: float
    warmup_s: float
    window: int
    max_rate: float  # requests pre-built per second of run (an upper bound, not a pace)
    settle_s: float


FULL = Plan((20_000, 100_000), 256, 10.0, 5.0, 1.0, 128, 100_000.0, 2.0)
QUICK = Plan((200, 500), 32, 1.0, 1.0, 0.2, 64, 40_000.0, 0.3)


@dataclass(frozen=True, slots=True)
class SizeResult:
    """Figures at one fleet size."""

    online: int
    registration: RegistrationReport
    registration_cpu: float
    rss_base: int
    rss_online: int
    rss_after_keepalives: int
    health_online: int | None
    sessions_bad: int
    keepalives: PumpReport

    @property
    def bytes_per_device(self) -> float:
        """(VmRSS with the fleet online − VmRSS before any device) / devices online."""
        return (self.rss_online - self.rss_base) / self.online


def per_core(report: PumpReport) -> float:
    """Answers per CPU-second of the server (its wall rate if it was not watched)."""
    if report.server_cpu <= 0:
        return report.rate
    return report.rate / report.server_cpu


def describe_pump(report: PumpReport, what: str) -> str:
    """One block of lines about a request/answer run."""
    cores = ", ".join(f"core {core} {load}" for core, load in sorted(report.cores.items()))
    lines = [
        f"    {what}: {fmt_int(report.rate)}/s answered over {report.seconds:.1f} s "
        f"({fmt_int(report.answered)} answers, {report.lost} lost, {report.invalid} invalid"
        f"{', requests ran out' if report.exhausted else ''})",
        f"      server used {report.server_cpu:.2f} of a core -> {fmt_int(per_core(report))} per core-second;"
        f" generator used {report.generator_cpu:.2f}; {cores}",
        f"      sampled answers opened and checked: {report.samples_ok} ok, {report.samples_bad} bad",
    ]
    return "\n".join(lines)


def run_size(gen: LoadGenerator, broker: BrokerProcess, plan: Plan, size: int, rss_base: int) -> SizeResult:
    """Grow the fleet to ``size`` devices, then measure memory and keepalives."""
    new = gen.add_devices(size - len(gen.devices))
    meter = CpuMeter(broker.pid)
    meter.start()
    limit = 30.0 + len(new) / 200.0
    registration = gen.register(new, broker.udp, KEEPALIVE_MS, limit_s=limit)
    registration_cpu = meter.fraction()
    if registration.registered == 0:
        raise BenchError(
            f"no device registered (refused {registration.refused}, failed {registration.failed}); "
            f"see the broker log {broker.log}"
        )
    time.sleep(plan.settle_s)
    rss_online = rss_bytes(broker.pid)
    health = broker.online_count()
    _, bad = gen.open_sessions(new, broker.public_key)
    online = [d.index for d in gen.devices if d.sealer is not None]
    keepalives = gen.keepalive_run(
        online, broker.udp, plan.keepalive_s, plan.warmup_s, plan.window, plan.max_rate, broker.pid
    )
    gen.drain()
    return SizeResult(
        len(online),
        registration,
        registration_cpu,
        rss_base,
        rss_online,
        rss_bytes(broker.pid),
        health,
        bad,
        keepalives,
    )


def print_size(result: SizeResult) -> None:
    """Print the figures at one fleet size."""
    reg = result.registration
    print(f"  N = {fmt_int(result.online)} devices online")
    print(
        f"    registrations: {fmt_int(reg.rate)}/s ({fmt_int(reg.registered)} of {fmt_int(reg.attempted)} "
        f"in {reg.seconds:.1f} s; {reg.refused} refused, {reg.failed} failed, "
        f"{reg.retransmissions} retransmissions{', TIMED OUT' if reg.timed_out else ''}); "
        f"broker used {result.registration_cpu:.2f} of a core -> "
        f"{fmt_int(reg.rate / result.registration_cpu if result.registration_cpu > 0 else reg.rate)} "
        "per core-second"
    )
    if result.sessions_bad:
        print(f"    WARNING: {result.sessions_bad} REGISTERED replies did not open with the derived key")
    health = "no answer" if result.health_online is None else fmt_int(result.health_online)
    per_device = result.bytes_per_device
    print(
        f"    broker VmRSS {result.rss_base / 2**20:.1f} MB before any device -> "
        f"{result.rss_online / 2**20:.1f} MB with N online ({result.rss_after_keepalives / 2**20:.1f} MB "
        f"after the keepalives); /v1/health says {health} online"
    )
    print(
        f"    memory per online device: {fmt_int(per_device)} B   "
        f"[target < {MEMORY_TARGET_BYTES:.0f} B: {verdict(per_device < MEMORY_TARGET_BYTES)}]"
        + ("  (too few devices for a meaningful figure)" if result.online < MEANINGFUL_FLEET else "")
    )
    print(describe_pump(result.keepalives, "keepalives"))
    ka = per_core(result.keepalives)
    print(
        f"    keepalives per core: {fmt_int(ka)}/s   "
        f"[target >= {KEEPALIVE_TARGET_PER_CORE:,.0f}/s: {verdict(ka >= KEEPALIVE_TARGET_PER_CORE)}]"
    )


def run(plan: Plan) -> None:
    """The whole benchmark."""
    check_register_layout()
    pin_to_core(GENERATOR_CORE)
    print(
        f"presence load: {plan.sockets} source sockets on 127.0.x.y; window {plan.window}; "
        f"keepalive phases {plan.keepalive_s:g} s after {plan.warmup_s:g} s warm-up"
    )
    results: list[SizeResult] = []
    with tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp:
        work = Path(tmp)
        with (
            broker_process(work) as broker,
            LoadGenerator(plan.sockets) as gen,
        ):
            print(
                f"  {describe_pinning('dvrlink-broker', broker.pid, SERVER_CORE)}; "
                f"{describe_pinning('generator', os.getpid(), GENERATOR_CORE)}"
            )
            time.sleep(plan.settle_s)
            rss_base = rss_bytes(broker.pid)
            for size in plan.sizes:
                result = run_size(gen, broker, plan, size, rss_base)
                results.append(result)
                print_size(result)
                sys.stdout.flush()
            stun_rate = 2 * plan.max_rate  # coturn answers faster than the broker
            broker_stun = gen.stun_run(
                broker.udp, plan.stun_s, plan.warmup_s, plan.window, stun_rate, broker.pid
            )
            gen.drain()
            coturn_stun: PumpReport | None = None
            if coturn_available():
                with coturn_process(work) as coturn:
                    if not gen.wait_stun(coturn.udp, 10.0):
                        raise BenchError("coturn did not answer a STUN Binding request within 10 s")
                    print(f"  {describe_pinning('turnserver', coturn.pid, SERVER_CORE)}")
                    coturn_stun = gen.stun_run(
                        coturn.udp, plan.stun_s, plan.warmup_s, plan.window, stun_rate, coturn.pid
                    )
                    gen.drain()
            errors = count_errors(broker.log)
    print_stun(results[-1], broker_stun, coturn_stun)
    if errors:
        print(f"  WARNING: the broker log has {errors} ERROR/Traceback lines")
    print_summary(results)


def count_errors(log: Path) -> int:
    """Lines in the broker's log that report an error."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if " ERROR " in line or line.startswith("Traceback"))


def print_stun(last: SizeResult, broker_stun: PumpReport, coturn_stun: PumpReport | None) -> None:
    """STUN Binding rates and the ratios to coturn."""
    print("  STUN Binding, same generator, same window:")
    print(describe_pump(broker_stun, "dvrlink-broker STUN responder"))
    if coturn_stun is None:
        print("    coturn: not installed (Debian package coturn), no comparison")
        return
    print(describe_pump(coturn_stun, "coturn (stun-only, 1 relay thread)"))
    coturn_core = per_core(coturn_stun)
    if coturn_core <= 0:
        print("    coturn answered nothing: no ratio")
        return
    ka_core = per_core(last.keepalives)
    print(
        f"    ratio to coturn STUN per core: broker keepalives {ka_core / coturn_core:.2f}, "
        f"broker STUN {per_core(broker_stun) / coturn_core:.2f} "
        f"(wall-clock: {last.keepalives.rate / coturn_stun.rate:.2f} and "
        f"{broker_stun.rate / coturn_stun.rate:.2f})"
    )


def print_summary(results: Sequence[SizeResult]) -> None:
    """One line per target and fleet size."""
    print("  targets:")
    for result in results:
        ka = per_core(result.keepalives)
        mem = result.bytes_per_device
        print(
            f"    N={result.online:>7,}: keepalives/s per core {fmt_int(ka):>8} (>= 20,000) "
            f"{verdict(ka >= KEEPALIVE_TARGET_PER_CORE)};  memory per device {fmt_int(mem):>6} B (< 1024) "
            f"{verdict(mem < MEMORY_TARGET_BYTES)};  registrations/s {fmt_int(result.registration.rate)}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 when the benchmark ran (targets missed or not)."""
    args = parse_args("broker presence load, and STUN against coturn", argv)
    return run_main(lambda: run(QUICK if args.quick else FULL))


if __name__ == "__main__":
    sys.exit(main())
