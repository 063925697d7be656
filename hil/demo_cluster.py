"""`make demo-cluster`: a broker cluster on one machine, and what it survives.

Three ``dvrlink-broker`` nodes (a, b, c) share one PostgreSQL registry and one Redis, and serve one
fleet key. A recorder (``dvrlinkd``) knows all three and registers with node c; a viewer (``dvrlink``)
logs in at node a, pairs the recorder and opens its web page through a forward: the invite crosses
from a to c through Redis. Then:

1. node c is killed: the recorder is on another node within two keepalive intervals, and the
   viewer's forward works again with the same pairing;
2. Redis restarts empty: the nodes write their devices back, and the viewer reaches the recorder;
3. PostgreSQL stops for a while: the recorder stays online, a second recorder is told to retry,
   and registers once PostgreSQL is back.

Everything runs as real processes (PostgreSQL and Redis from Debian's packages, ``make
system-packages``) in a temporary directory, and is stopped at the end.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hil.cluster import add_fleet_user, fleet_configs, fleet_daemon, node_in_use
from hil.demo import start_web_ui, step
from hil.loopback import (
    Broker,
    Daemon,
    Viewer,
    loopback_services_toml,
    start_broker,
    start_forward,
    stop_all,
    wait_for,
)
from hil.postgres_server import PostgresServer, find_bindir
from hil.redis_server import redis_server

INTERVAL = 3.0
SERIAL = "DL-CLUSTER-0001"
LATE = "DL-CLUSTER-0002"


def fetch(port: int) -> str:
    """The recorder's page through the forward's local port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=20) as reply:
        return f"{reply.status}, {len(reply.read())} bytes"


def forward_once(viewer: Viewer, web_port: int) -> str:
    """Open a forward, fetch the page through it, close it; what came back."""
    forward = start_forward(viewer, SERIAL, web_port, "--relay-only")
    try:
        return fetch(forward.local_port)
    finally:
        forward.stop()


def run(root: Path, outage_s: float) -> int:
    """The demo in ``root``; returns the exit code."""
    bindir = find_bindir()
    if bindir is None:
        print(
            "PostgreSQL's server binaries are missing: run `make system-packages` (Debian package postgresql)"
        )
        return 1
    processes: list[Daemon | Broker] = []
    web = start_web_ui(root)
    web_port = int(web.server_address[1])
    # its own folder: as root the server runs as the postgres user, who must own it
    postgres = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="dvrlink-pg-")))
    try:
        with redis_server(root / "redis") as redis:
            step("PostgreSQL and Redis")
            postgres.init()
            url = postgres.new_database()
            print(f"   registry {url}\n   redis    {redis.url}")

            step("three broker nodes of one fleet (one fleet key, one TURN secret)")
            configs = fleet_configs(root, redis.url, url)
            nodes: dict[str, Broker] = {}
            for name, config in configs.items():
                nodes[name] = start_broker(root / name, config=config)
                processes.append(nodes[name])
                print(f"   node {name}: presence udp {nodes[name].udp_port}, API {nodes[name].url}")
            add_fleet_user(configs["a"], "alice", "correct horse")
            print("   account alice, made at node a, is in the shared registry")

            step(f"recorder {SERIAL}: knows nodes c, a, b; registers with c")
            order = [nodes["c"], nodes["a"], nodes["b"]]
            recorder = fleet_daemon(root, SERIAL, order, INTERVAL, loopback_services_toml(web_port))
            recorder.start()
            processes.append(recorder)
            on_c = f"127.0.0.1:{nodes['c'].udp_port}"
            wait_for("the recorder online at node c", lambda: node_in_use(recorder) == on_c, 30)
            print(f"   online at {on_c} (node c), keepalive every {INTERVAL:g} s")

            step("viewer logs in at node a, pairs the recorder and opens its web page")
            viewer = Viewer(root / "viewer")
            viewer.login(nodes["a"], "alice", "correct horse")
            viewer.run("pair", recorder.pairing_uri())
            print(f"   paired; through a forward: {forward_once(viewer, web_port)}")
            routed = f"for {SERIAL} routed to node c" in nodes["a"].log.read_text(errors="replace")
            print(f"   node a's log: the invite was routed to node c through Redis: {routed}")

            step("node c is killed")
            nodes["c"].stop(signal.SIGKILL)
            processes.remove(nodes["c"])
            lost = time.monotonic()
            wait_for("the recorder on another node", lambda: node_in_use(recorder) not in (None, on_c), 60)
            took = time.monotonic() - lost
            print(
                f"   the recorder is on {node_in_use(recorder)} after {took:.1f} s "
                f"(two keepalive intervals: {2 * INTERVAL:g} s)"
            )
            wait_for(
                "the viewer to reach it", lambda: viewer.run("ping", SERIAL, check=False).returncode == 0, 30
            )
            print(f"   same pairing, through a forward: {forward_once(viewer, web_port)}")

            step("Redis restarts, empty")
            redis.restart()
            back = time.monotonic()
            wait_for(
                "the viewer to reach it", lambda: viewer.run("ping", SERIAL, check=False).returncode == 0, 30
            )
            took = time.monotonic() - back
            print(
                f"   the nodes wrote their devices back; the viewer reached the recorder after {took:.1f} s"
            )

            step(f"PostgreSQL stops for {outage_s:g} s")
            before = (recorder.status() or {}).get("registered_at")
            postgres.stop()
            stopped = time.monotonic()
            late = fleet_daemon(root, LATE, [nodes["a"], nodes["b"]], INTERVAL)
            late.start()
            processes.append(late)
            refused = "registry is unavailable"
            wait_for(
                "the second recorder's refusal", lambda: refused in late.log.read_text(errors="replace"), 30
            )
            refusal = next(
                line
                for line in late.log.read_text(errors="replace").splitlines()
                if "registry is unavailable" in line
            )
            print(f"   second recorder {LATE}: {refusal.split(': ', 1)[-1]}")
            answer = viewer.run("ping", SERIAL, check=False)
            print(f"   the viewer meanwhile: {(answer.stderr or answer.stdout).strip().splitlines()[-1]}")
            wait_for("the outage", lambda: time.monotonic() - stopped >= outage_s, outage_s + 5)
            kept = (recorder.status() or {}).get("registered_at") == before and node_in_use(
                recorder
            ) is not None
            print(f"   after {outage_s:g} s the first recorder is still online with its session: {kept}")
            postgres.start()
            again = time.monotonic()
            wait_for("the second recorder online", late.online, 90)
            print(f"   PostgreSQL is back: {LATE} registered after {time.monotonic() - again:.1f} s")
            wait_for(
                "the viewer to reach it", lambda: viewer.run("ping", SERIAL, check=False).returncode == 0, 30
            )
            print(f"   the viewer's requests are answered again; a forward: {forward_once(viewer, web_port)}")

            step("done: stopping everything")
            return 0
    finally:
        stop_all(list(reversed(processes)))
        postgres.destroy()
        web.shutdown()


def main() -> int:
    """Entry point of ``python -m hil.demo_cluster``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    parser.add_argument(
        "--outage", type=float, default=30.0, help="seconds PostgreSQL stays stopped (default 30)"
    )
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args.keep, args.outage)
    with tempfile.TemporaryDirectory(prefix="dvrlink-demo-cluster-") as tmp:
        return run(Path(tmp), args.outage)


if __name__ == "__main__":
    sys.exit(main())
