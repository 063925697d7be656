"""Issue 16: an invite across broker nodes vs on the device's own node, median and p95, in one run.

Two ``dvrlink-broker`` processes (nodes b and c) on one ``redis-server``, and a real ``dvrlinkd``
registered on node c. The viewer's request is ``POST /v1/devices/{serial}/ping``: one invite to
the device and its answer, the signalling step every session setup, pairing and candidate update
makes. Asked of node c it stays on c; asked of node b it goes b → Redis → c → device → c → Redis
→ b. The two kinds alternate, each on its own kept-alive HTTPS connection, timed by this process
from request to answer. Target: cross-node adds at most 20 ms to the median.

Each node has its own SQLite registry here (a shared registry is PostgreSQL's job), so the device
registers on b first (b binds it and the viewer pairs there), then moves to c and pairs there too.

    python -m bench.cluster_invite [--quick]
"""

from __future__ import annotations

import http.client
import json
import ssl
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import BenchError, parse_args, run_main, verdict
from bench.session_rig import percentile
from hil.cluster import fleet_files, node_config
from hil.loopback import Broker, Daemon, Viewer, add_user, make_daemon, start_broker, stop_all, wait_for
from hil.redis_server import RedisServer

SERIAL = "DL-BENCH-NODE"
USER = "bench"
PASSWORD = "bench pass phrase"
TARGET_EXTRA_MS = 20.0
ROUNDS = 200
QUICK_ROUNDS = 20


class Api:
    """One kept-alive HTTPS connection to a node's viewer API, logged in."""

    def __init__(self, broker: Broker) -> None:
        context = ssl.create_default_context(cafile=str(broker.cert))
        context.check_hostname = False
        self._conn = http.client.HTTPSConnection("127.0.0.1", broker.https_port, context=context, timeout=30)
        status, body = self.call("POST", "/v1/tokens", {"username": USER, "password": PASSWORD})
        if status != 200:
            raise BenchError(f"login on {broker.url} answered {status}: {body}")
        self._auth = {"Authorization": f"Bearer {body['token']}"}

    def call(
        self, method: str, path: str, payload: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json", **getattr(self, "_auth", {})}
        self._conn.request(
            method, path, body=None if payload is None else json.dumps(payload), headers=headers
        )
        reply = self._conn.getresponse()
        body: dict[str, Any] = json.loads(reply.read() or b"{}")
        return reply.status, body

    def ping_ms(self) -> float:
        started = time.perf_counter()
        status, body = self.call("POST", f"/v1/devices/{SERIAL}/ping")
        elapsed = (time.perf_counter() - started) * 1000
        if status != 200:
            raise BenchError(f"ping answered {status}: {body}")
        return elapsed

    def close(self) -> None:
        self._conn.close()


def _pair(viewer: Viewer, broker: Broker, daemon: Daemon) -> None:
    add_user(broker.state_dir, USER, PASSWORD)
    viewer.login(broker, USER, PASSWORD)
    viewer.run("pair", daemon.pairing_uri())


def measure(root: Path, rounds: int) -> tuple[list[float], list[float]]:
    """(same-node ms, cross-node ms) of ``rounds`` pings each."""
    redis = RedisServer(root / "redis")
    redis.start()
    started: list[Daemon | Broker] = []
    try:
        key, secret = fleet_files(root / "fleet")
        node_b = start_broker(root / "b", config=node_config(root, "b", redis.url, key, secret))
        started.append(node_b)
        node_c = start_broker(root / "c", config=node_config(root, "c", redis.url, key, secret))
        started.append(node_c)
        daemon = make_daemon(root, SERIAL, node_b)
        daemon.start()
        started.append(daemon)
        wait_for(f"{SERIAL} online at node b", daemon.online, 30)
        _pair(Viewer(root / "viewer-b"), node_b, daemon)
        daemon.stop()
        moved = make_daemon(root, SERIAL, node_c)
        moved.start()
        started.append(moved)
        wait_for(f"{SERIAL} online at node c", moved.online, 30)
        _pair(Viewer(root / "viewer-c"), node_c, moved)
        same, cross = Api(node_c), Api(node_b)
        try:
            wait_for("node b to find the device at node c", lambda: cross.call(
                "POST", f"/v1/devices/{SERIAL}/ping")[0] == 200, 30)  # fmt: skip
            for _ in range(3):  # warm both paths
                same.ping_ms()
                cross.ping_ms()
            same_ms, cross_ms = [], []
            for _ in range(rounds):
                same_ms.append(same.ping_ms())
                cross_ms.append(cross.ping_ms())
            return same_ms, cross_ms
        finally:
            same.close()
            cross.close()
    finally:
        stop_all(list(reversed(started)))
        redis.stop()


def body(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dvrlink-cluster-bench-") as tmp:
        same, cross = measure(Path(tmp), rounds)
    med_same, med_cross = statistics.median(same), statistics.median(cross)
    print(f"invite round trip over the API, {rounds} each, alternating (dvrlinkd on node c):")
    print(f"  same node  (ask c): median {med_same:6.2f} ms  p95 {percentile(same, 0.95):6.2f} ms")
    print(f"  cross node (ask b): median {med_cross:6.2f} ms  p95 {percentile(cross, 0.95):6.2f} ms")
    extra = med_cross - med_same
    print(f"  cross-node extra: {extra:+.2f} ms median (target <= +{TARGET_EXTRA_MS:.0f} ms) "
          f"{verdict(extra <= TARGET_EXTRA_MS)}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("cross-node vs same-node invite latency on a 2-node broker cluster", argv)
    return run_main(lambda: body(QUICK_ROUNDS if args.quick else ROUNDS))


if __name__ == "__main__":
    raise SystemExit(main())
