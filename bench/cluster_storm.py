"""Issue 16: the re-registration storm — N simulated devices back after every broker node restarts
at once.

    python -m bench.cluster_storm [--quick] [--devices N] [--interval S] [--reuse-port]

Two ``dvrlink-broker`` nodes (pinned to core 1; on two ports, or with ``--reuse-port`` sharing one
port with ``SO_REUSEPORT`` as one host's processes do) on one ``redis-server`` and one PostgreSQL
registry, with one fleet key. The generator (core 0) registers N devices spread over the nodes
(default 100,000; ``--quick`` 2,000) and runs them as the daemon does
(``bench.loadgen.DeviceRuntime``): a keepalive every interval (default 25 s, the daemon's
default; ``--quick`` 5 s), their phases spread over the interval.

Then every node gets SIGKILL at the same moment and is started again at once on its port, with
its state (the fleet key) but no sessions. Each device finds out at its next keepalive: the
restarted node answers UNKNOWN_SESSION and the device registers again there by its resumption
ticket (no signature, no X25519); a device whose tries all fall in the restart's gap takes the
silence path and moves to the next node. The benchmark prints the time from the kill until
100 % are registered again, against two keepalive intervals (target: 100 % within 2), how many
came back by ticket, and the CPU each node used from its restart until then.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.cluster_rig import ClusterRig, Node, quantile, register_spread
from bench.common import (
    GENERATOR_CORE,
    SERVER_CORE,
    BenchError,
    CpuMeter,
    describe_pinning,
    fmt_int,
    pin_to_core,
    run_main,
    verdict,
)
from bench.loadgen import DeviceRuntime, LoadGenerator, RuntimeTimers, check_register_layout

NODES = ("a", "b")
TARGET_INTERVALS = 2.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one run."""

    devices: int
    sockets: int
    interval_s: float
    reuse_port: bool = False


FULL = Plan(100_000, 256, 25.0)
QUICK = Plan(2_000, 64, 5.0)


class Restarter(threading.Thread):
    """Starts the killed nodes again, all at once, while the devices run; CPU meters start when
    every one is up."""

    def __init__(self, rig: ClusterRig, nodes: Sequence[Node]) -> None:
        super().__init__(name="restart nodes", daemon=True)
        self.rig = rig
        self.nodes = nodes
        self.meters: list[CpuMeter] = []
        self.up_at: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.rig.restart_all(self.nodes)
            self.up_at = [time.monotonic()] * len(self.nodes)
            self.meters = self.rig.meters(list(self.nodes))
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def run(plan: Plan) -> None:
    """The whole benchmark."""
    check_register_layout()
    timers = RuntimeTimers(plan.interval_s)
    layout = "sharing one port (SO_REUSEPORT)" if plan.reuse_port else "on their own ports"
    print(
        f"re-registration storm: {fmt_int(plan.devices)} simulated devices on {len(NODES)} nodes {layout} "
        f"(one Redis, one PostgreSQL, one fleet key), keepalive interval {plan.interval_s:g} s, "
        f"{plan.sockets} source sockets"
    )
    with ClusterRig() as rig:
        pin_to_core(GENERATOR_CORE)
        nodes: list[Node] = []
        for name in NODES:
            port = nodes[0].udp[1] if nodes and plan.reuse_port else 0
            nodes.append(rig.add_node(name, udp_port=port, reuse_port=plan.reuse_port))
        print(
            f"  {', '.join(describe_pinning(f'node {n.name}', n.pid, SERVER_CORE) for n in nodes)}; "
            f"{describe_pinning('generator', os.getpid(), GENERATOR_CORE)}"
        )
        if len({n.public_key for n in nodes}) != 1:
            raise BenchError("the nodes do not share the fleet key")
        entry = nodes[:1] if plan.reuse_port else nodes  # one address, or one per node
        with LoadGenerator(plan.sockets) as gen:
            indexes = gen.add_devices(plan.devices, prefix="ST-")
            started = time.monotonic()
            node_of = register_spread(gen, entry, indexes, round(plan.interval_s * 1000))
            print(f"  {fmt_int(plan.devices)} registered in full in {time.monotonic() - started:.1f} s")
            runtime = DeviceRuntime(gen, [n.udp for n in entry], nodes[0].public_key, timers)
            runtime.adopt(indexes, lambda i: node_of[i], time.monotonic())
            steady = runtime.run(plan.interval_s * 1.2)
            print(
                f"  steady for {steady.seconds:.1f} s: {fmt_int(steady.keepalives_answered)} of "
                f"{fmt_int(steady.keepalives_sent)} keepalives answered, {steady.silences} silences"
            )
            killed_at = time.monotonic()
            for node in nodes:
                rig.kill(node)
            restarter = Restarter(rig, nodes)
            restarter.start()
            print("  every node killed (SIGKILL) and started again at once")

            def all_back() -> bool:
                return all(at >= killed_at for at in runtime.back_at[indexes.start : indexes.stop])

            # checked every 0.25 s (a pass over 100,000 devices is not free); the time to 100 %
            # printed is the last device's own registration time, not the check's
            after = runtime.run(plan.interval_s * 4 + 30.0, all_back, check_every_s=0.25)
            cpu = [
                (m.fraction(), time.monotonic() - up)
                for m, up in zip(restarter.meters, restarter.up_at, strict=False)
            ]
            restarter.join(timeout=120)
            if restarter.error is not None:
                raise BenchError(f"a node did not start again: {restarter.error}")
            back = [runtime.back_at[i] - killed_at for i in indexes if runtime.back_at[i] >= killed_at]
            resumed = sum(1 for i in indexes if runtime.back_at[i] >= killed_at and gen.devices[i].resumed)
            up = [at - killed_at for at in restarter.up_at]
            print(
                f"  nodes up again {', '.join(f'{s:.2f} s' for s in up)} after the kill; in "
                f"{after.seconds:.1f} s: {fmt_int(after.registrations)} registrations "
                f"({fmt_int(after.resumed)} by ticket), {fmt_int(after.unknown_sessions)} UNKNOWN_SESSION, "
                f"{fmt_int(after.silences)} silences (moved on), {after.refused} refused, "
                f"{after.registration_timeouts} registrations unanswered; online per address "
                f"{runtime.online_per_node()}"
            )
    n = len(indexes)
    last = max(back) if len(back) == n and back else float("inf")
    print(
        f"  registered again: {fmt_int(len(back))} of {fmt_int(n)}, {fmt_int(resumed)} by ticket; "
        f"median {quantile(back, 0.5):.2f} s, p95 {quantile(back, 0.95):.2f} s, 100 % at {last:.2f} s"
    )
    for node, (fraction, seconds) in zip(nodes, cpu, strict=False):
        print(
            f"  node {node.name} from its restart to 100 %: {fraction:.2f} of a core over {seconds:.1f} s "
            f"({fraction * seconds:.2f} CPU-s: start, registrations and keepalives)"
        )
    limit = TARGET_INTERVALS * plan.interval_s
    print("  targets:")
    print(
        f"    100 % of {fmt_int(n)} back within {TARGET_INTERVALS:g} intervals ({limit:g} s): {last:.2f} s "
        f"({last / plan.interval_s:.2f} intervals) {verdict(last <= limit)}"
    )
    print(f"    back by ticket: {fmt_int(resumed)} of {fmt_int(n)} {verdict(resumed == n)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 when the benchmark ran (targets missed or not)."""
    parser = argparse.ArgumentParser(description="the re-registration storm after every broker node restarts")
    parser.add_argument("--quick", action="store_true", help="small numbers, finishes in seconds")
    parser.add_argument("--devices", type=int, help="simulated devices (default 100,000, quick 2,000)")
    parser.add_argument("--interval", type=float, help="keepalive interval in s (default 25, quick 5)")
    parser.add_argument("--reuse-port", action="store_true", help="the nodes share one port (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    plan = Plan(args.devices or base.devices, base.sockets, args.interval or base.interval_s, args.reuse_port)
    return run_main(lambda: run(plan))


if __name__ == "__main__":
    sys.exit(main())
