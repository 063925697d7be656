"""Issue 16: devices back after a broker node is killed — 500 devices simulated by the load generator.

    python -m bench.cluster_failover [--quick] [--devices N] [--interval S]

Three ``dvrlink-broker`` nodes (pinned to core 1) on one ``redis-server`` and one PostgreSQL
registry, with one fleet key (``fleet_key_file``). The generator (core 0) registers N devices
spread over the nodes, then runs them as the daemon does (``bench.loadgen.DeviceRuntime``): a
keepalive every interval, sent again after ``min(3 s, interval / 6)`` while unanswered, and
after two retransmissions without an answer the node is silent and the device registers with
the next node of its list, by the resumption ticket its last REGISTERED carried
(``protocol/presence_client.py``, ``daemon/broker_nodes.py``).

After one interval of steady keepalives node b gets SIGKILL. The benchmark prints when its
devices noticed (median, last), the time until 100 % are registered again at another node,
against two keepalive intervals (target: 100 % within 2), how many came back by ticket, and
that the other nodes' devices kept their sessions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.cluster_rig import ClusterRig, quantile, register_spread
from bench.common import (
    GENERATOR_CORE,
    SERVER_CORE,
    BenchError,
    describe_pinning,
    fmt_int,
    pin_to_core,
    run_main,
    verdict,
)
from bench.loadgen import DeviceRuntime, LoadGenerator, RuntimeTimers, check_register_layout

NODES = ("a", "b", "c")
VICTIM = 1  # node b
TARGET_INTERVALS = 2.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one run."""

    devices: int
    sockets: int
    interval_s: float


FULL = Plan(500, 128, 10.0)
QUICK = Plan(150, 32, 4.0)


def run(plan: Plan) -> None:
    """The whole benchmark."""
    check_register_layout()
    timers = RuntimeTimers(plan.interval_s)
    print(
        f"devices back after a node is killed: {fmt_int(plan.devices)} simulated devices on "
        f"{len(NODES)} nodes (one Redis, one PostgreSQL, one fleet key), keepalive interval "
        f"{plan.interval_s:g} s, reply timeout {timers.keepalive_reply_timeout:.2f} s, "
        f"{timers.retries} retransmissions"
    )
    with ClusterRig() as rig:
        pin_to_core(GENERATOR_CORE)
        nodes = [rig.add_node(name) for name in NODES]
        print(
            f"  {', '.join(describe_pinning(f'node {n.name}', n.pid, SERVER_CORE) for n in nodes)}; "
            f"{describe_pinning('generator', os.getpid(), GENERATOR_CORE)}"
        )
        if len({n.public_key for n in nodes}) != 1:
            raise BenchError("the nodes do not share the fleet key")
        with LoadGenerator(plan.sockets) as gen:
            indexes = gen.add_devices(plan.devices, prefix="FO-")
            node_of = register_spread(gen, nodes, indexes, round(plan.interval_s * 1000))
            runtime = DeviceRuntime(gen, [n.udp for n in nodes], nodes[0].public_key, timers)
            runtime.adopt(indexes, lambda i: node_of[i], time.monotonic())
            steady = runtime.run(plan.interval_s * 1.5)
            print(
                f"  steady for {steady.seconds:.1f} s: {fmt_int(steady.keepalives_answered)} of "
                f"{fmt_int(steady.keepalives_sent)} keepalives answered, {steady.silences} silences; "
                f"online per node {runtime.online_per_node()}"
            )
            victims = [i for i in indexes if runtime.state[i] >= 0 and runtime.node[i] == VICTIM]
            others = [i for i in indexes if runtime.node[i] != VICTIM]
            killed_at = time.monotonic()
            rig.kill(nodes[VICTIM])
            print(f"  node {nodes[VICTIM].name} killed (SIGKILL) holding {len(victims)} devices")

            def all_back() -> bool:
                return all(runtime.back_at[i] >= killed_at for i in victims)

            after = runtime.run(plan.interval_s * 4 + 10.0, all_back)
            noticed = [runtime.lost_at[i] - killed_at for i in victims if runtime.lost_at[i] >= killed_at]
            back = [runtime.back_at[i] - killed_at for i in victims if runtime.back_at[i] >= killed_at]
            resumed = sum(1 for i in victims if runtime.back_at[i] >= killed_at and gen.devices[i].resumed)
            elsewhere = sum(
                1 for i in victims if runtime.back_at[i] >= killed_at and runtime.node[i] != VICTIM
            )
            others_lost = sum(1 for i in others if runtime.lost_at[i] >= killed_at)
            print(
                f"  after the kill, {after.seconds:.1f} s: {after.silences} silences, "
                f"{after.registrations} registrations ({after.resumed} by ticket), {after.refused} refused, "
                f"{after.registration_timeouts} registrations unanswered; online per node "
                f"{runtime.online_per_node()}"
            )
    last = max(back) if len(back) == len(victims) and back else float("inf")
    print(
        f"  noticed the silence: median {quantile(noticed, 0.5):.2f} s, "
        f"last {max(noticed, default=0.0):.2f} s after the kill ({len(noticed)} of {len(victims)})"
    )
    print(
        f"  registered again: {len(back)} of {len(victims)} ({elsewhere} at another node), "
        f"{resumed} by ticket; median {quantile(back, 0.5):.2f} s, p95 {quantile(back, 0.95):.2f} s, "
        f"100 % at {last:.2f} s"
    )
    print(f"  devices of the other nodes that lost their session: {others_lost} of {len(others)}")
    limit = TARGET_INTERVALS * plan.interval_s
    print("  targets:")
    print(
        f"    100 % back within {TARGET_INTERVALS:g} intervals ({limit:g} s): {last:.2f} s "
        f"({last / plan.interval_s:.2f} intervals) {verdict(last <= limit)}"
    )
    print(f"    back by ticket: {resumed} of {len(victims)} {verdict(resumed == len(victims))}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 0 when the benchmark ran (targets missed or not)."""
    parser = argparse.ArgumentParser(description="devices back after a broker node is killed")
    parser.add_argument("--quick", action="store_true", help="small numbers, finishes in seconds")
    parser.add_argument("--devices", type=int, help="simulated devices (default 500, quick 150)")
    parser.add_argument("--interval", type=float, help="keepalive interval in s (default 10, quick 4)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = Plan(args.devices or plan.devices, plan.sockets, args.interval or plan.interval_s)
    return run_main(lambda: run(plan))


if __name__ == "__main__":
    sys.exit(main())
