"""Run every benchmark in turn: ``python -m bench [--quick]`` (what ``make bench`` runs, in one command).

The in-process profile of the presence core (``python -m bench.presence_profile``) is not part of
this run; it is a tool for finding where time and memory go.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from bench import (
    alarm_latency,
    cellular_cost,
    cluster_failover,
    cluster_invite,
    cluster_load,
    cluster_redis_memory,
    cluster_storm,
    daemon_footprint,
    daemon_memory,
    daemon_streaming,
    dataplane_core,
    hal_watch,
    live_view,
    login_burst,
    modem_online,
    presence_load,
    relay_pps,
    session_setup,
    sms_wake,
    tunnel_throughput,
    wakeup_floor,
)
from bench.common import parse_args

BENCHMARKS: tuple[tuple[str, Callable[[Sequence[str]], int]], ...] = (
    ("presence_load", presence_load.main),
    ("cellular_cost", cellular_cost.main),
    ("daemon_footprint", daemon_footprint.main),
    ("daemon_memory", daemon_memory.main),
    ("session_setup", session_setup.main),
    ("tunnel_throughput", tunnel_throughput.main),
    ("relay_pps", relay_pps.main),
    ("daemon_streaming", daemon_streaming.main),
    ("wakeup_floor", wakeup_floor.main),
    ("hal_watch", hal_watch.main),
    ("live_view", live_view.main),
    ("modem_online", modem_online.main),
    ("login_burst", login_burst.main),
    ("dataplane_core", dataplane_core.main),
    ("alarm_latency", alarm_latency.main),
    ("cluster_invite", cluster_invite.main),
    ("cluster_redis_memory", cluster_redis_memory.main),
    ("cluster_load", cluster_load.main),
    ("cluster_failover", cluster_failover.main),
    ("cluster_storm", cluster_storm.main),
    ("sms_wake", sms_wake.main),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; the exit status is the first non-zero one (0 if all ran)."""
    args = parse_args("run every dvrlink benchmark", argv)
    forwarded = ["--quick"] if args.quick else []
    status = 0
    for name, bench_main in BENCHMARKS:
        print(f"== bench.{name} {' '.join(forwarded)}".rstrip(), flush=True)
        result = bench_main(forwarded)
        sys.stdout.flush()
        status = status or result
    return status


if __name__ == "__main__":
    sys.exit(main())
