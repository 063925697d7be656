"""Issue 16: an invite, and a whole session setup, across broker nodes vs on the device's own node,
median and p95, in one run.

Two ``dvrlink-broker`` processes (nodes b and c) on one ``redis-server``, and a real ``dvrlinkd``
registered on node c. The viewer's request is ``POST /v1/devices/{serial}/ping``: one invite to
the device and its answer, the signalling step every session setup, pairing and candidate update
makes. Asked of node c it stays on c; asked of node b it goes b → Redis → c → device → c → Redis
→ b. The two kinds alternate, each on its own kept-alive HTTPS connection, timed by this process
from request to answer. Target: cross-node adds at most 20 ms to the median.

Session setup: the viewer API ``dvrlink forward`` uses (``open_session``: create, offer, answer,
ICE on the relay, the device's key checked, one ping; then one stream), timed to the first byte
of a device-side service, relay-only, through node c (same node) and through node b (cross
node), alternating; the relay is the asking node's, with TURN credentials any node's relay takes.

Each node has its own SQLite registry here (a shared registry is PostgreSQL's job), so the device
registers on b first (b binds it and the viewer pairs there), then moves to c and pairs there too.

    python -m bench.cluster_invite [--quick]
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import BenchError, parse_args, run_main, verdict
from bench.session_rig import IO_TIMEOUT_S, TcpService, percentile
from dvrlink.protocol.session_streams import ForwardTarget
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.viewer.api_client import BrokerClient
from dvrlink.viewer.home import ViewerHome
from dvrlink.viewer.session_client import open_session
from hil.cluster import fleet_files, node_config
from hil.loopback import (
    Broker,
    Daemon,
    Viewer,
    add_user,
    loopback_services_toml,
    make_daemon,
    start_broker,
    stop_all,
    wait_for,
)
from hil.redis_server import RedisServer

SERIAL = "DL-BENCH-NODE"
USER = "bench"
PASSWORD = "bench pass phrase"
TARGET_EXTRA_MS = 20.0
ROUNDS = 200
QUICK_ROUNDS = 20
SESSIONS = 30
QUICK_SESSIONS = 2
LOOPBACK = "127.0.0.1"


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


def _hello(conn: socket.socket) -> None:
    conn.sendall(b"!")


async def session_ms(home: Path, port: int) -> float:
    """One relay-only session opened through the node ``home`` is logged in at, to the first
    byte of a stream to the device-side service on ``port``."""
    viewer = ViewerHome(home)
    login = viewer.load_login()
    if login is None:
        raise BenchError(f"no login in {home}")
    started = time.perf_counter()
    async with asyncio.timeout(IO_TIMEOUT_S):
        async with BrokerClient(login.broker, cacert=login.cacert, token=login.token) as client:
            runner = await open_session(client, viewer, SERIAL, PathPolicy.RELAY_ONLY, [LOOPBACK])
        try:
            stream = await runner.open_stream(ForwardTarget(LOOPBACK, port))
            data = await stream.read(1)
            elapsed = (time.perf_counter() - started) * 1000
        finally:
            await runner.close()
    if data != b"!":
        raise BenchError(f"expected the service's byte through the session, got {data!r}")
    return elapsed


async def sessions_ms(same: Path, cross: Path, port: int, count: int) -> tuple[list[float], list[float]]:
    """(same-node ms, cross-node ms) of ``count`` sessions each, alternating, after a warm-up."""
    await session_ms(same, port)
    await session_ms(cross, port)
    same_ms, cross_ms = [], []
    for _ in range(count):
        same_ms.append(await session_ms(same, port))
        cross_ms.append(await session_ms(cross, port))
    return same_ms, cross_ms


Figures = dict[str, tuple[list[float], list[float]]]


def measure(root: Path, rounds: int, sessions: int) -> Figures:
    """{"invite": (same-node ms, cross-node ms), "session": (…)} of ``rounds`` pings and
    ``sessions`` sessions each."""
    redis = RedisServer(root / "redis")
    redis.start()
    service = TcpService(_hello)
    started: list[Daemon | Broker] = []
    try:
        key, secret = fleet_files(root / "fleet")
        nodes = []
        for name in ("b", "c"):
            config = node_config(root, name, redis.url, key, secret)
            # more sessions than an account may hold by default (16 within session_ttl_s)
            config.write_text(config.read_text() + "session_max_per_account = 10000\n")
            nodes.append(start_broker(root / name, config=config))
            started.append(nodes[-1])
        node_b, node_c = nodes
        services = loopback_services_toml(service.port)
        daemon = make_daemon(root, SERIAL, node_b, extra_toml=services)
        daemon.start()
        started.append(daemon)
        wait_for(f"{SERIAL} online at node b", daemon.online, 30)
        _pair(Viewer(root / "viewer-b"), node_b, daemon)
        daemon.stop()
        moved = make_daemon(root, SERIAL, node_c, extra_toml=services)
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
        finally:
            same.close()
            cross.close()
        setups = asyncio.run(sessions_ms(root / "viewer-c", root / "viewer-b", service.port, sessions))
        return {"invite": (same_ms, cross_ms), "session": setups}
    finally:
        stop_all(list(reversed(started)))
        service.close()
        redis.stop()


def body(rounds: int, sessions: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dvrlink-cluster-bench-") as tmp:
        figures = measure(Path(tmp), rounds, sessions)
    titles = {
        "invite": f"invite round trip over the API (ping), {rounds} each",
        "session": f"session setup to first byte (relay-only, open_session + stream), {sessions} each",
    }
    for kind, (same, cross) in figures.items():
        med_same, med_cross = statistics.median(same), statistics.median(cross)
        print(f"{titles[kind]}, alternating, dvrlinkd on node c:")
        print(f"  same node  (ask c): median {med_same:7.2f} ms  p95 {percentile(same, 0.95):7.2f} ms")
        print(f"  cross node (ask b): median {med_cross:7.2f} ms  p95 {percentile(cross, 0.95):7.2f} ms")
        extra = med_cross - med_same
        print(f"  cross-node extra: {extra:+.2f} ms median (target <= +{TARGET_EXTRA_MS:.0f} ms) "
              f"{verdict(extra <= TARGET_EXTRA_MS)}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("cross-node vs same-node invite latency on a 2-node broker cluster", argv)
    if args.quick:
        return run_main(lambda: body(QUICK_ROUNDS, QUICK_SESSIONS))
    return run_main(lambda: body(ROUNDS, SESSIONS))


if __name__ == "__main__":
    raise SystemExit(main())
