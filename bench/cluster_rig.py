"""Broker nodes of one fleet for the cluster load benchmarks: a real ``redis-server``, a real
PostgreSQL (``hil/postgres_server.py``), one fleet key and TURN secret (``hil/cluster.py``), and
``dvrlink-broker serve`` processes that can be killed (SIGKILL, as a crash) and started again on
the same presence port with the same state.

Every broker is pinned to the server core; Redis and PostgreSQL are started before the generator
pins itself and may use either core.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.common import SERVER_CORE, BenchError, CpuMeter, log_tail, taskset_prefix, venv_script, wait_until
from bench.loadgen import LoadGenerator
from dvrlink.protocol.identity import b64decode_key
from hil.cluster import fleet_files, node_config
from hil.postgres_server import PostgresServer, find_bindir
from hil.redis_server import RedisServer

BROKER_START_TIMEOUT_S = 60.0
LOOPBACK = "127.0.0.1"


@dataclass(slots=True)
class Node:
    """One ``dvrlink-broker`` process of the rig (replaced by ``ClusterRig.restart``)."""

    name: str
    config: Path
    state_dir: Path
    log: Path
    clustered: bool
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0
    udp: tuple[str, int] = (LOOPBACK, 0)
    public_key: bytes = b""
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ClusterRig:
    """Redis, PostgreSQL and broker nodes under one temporary folder; ``close`` stops them all."""

    def __init__(self, *, redis: bool = True, postgres: bool = True) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="dvrlink-bench-cluster-")
        self.root = Path(self._tmp.name)
        self.fleet_key, self.turn_secret = fleet_files(self.root / "fleet")
        self.redis: RedisServer | None = None
        self.postgres: PostgresServer | None = None
        self.registry_url = ""
        self.nodes: list[Node] = []
        try:
            if redis:
                if shutil.which("redis-server") is None:
                    raise BenchError("redis-server is not installed; install the Debian package redis-server")
                self.redis = RedisServer(self.root / "redis")
                self.redis.start()
            if postgres:
                bindir = find_bindir()
                if bindir is None:
                    raise BenchError(
                        "PostgreSQL (initdb, pg_ctl) is not installed; install the Debian package postgresql"
                    )
                self.postgres = PostgresServer(bindir, Path(tempfile.mkdtemp(prefix="dvrlink-bench-pg-")))
                self.postgres.init()
                self.registry_url = self.postgres.new_database()
        except (RuntimeError, OSError) as exc:
            self.close()
            raise BenchError(f"cannot start the cluster's engines: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ClusterRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- nodes ------------------------------------------------------------------------------------

    def add_node(
        self, name: str, *, clustered: bool = True, udp_port: int = 0, reuse_port: bool = False
    ) -> Node:
        """Write node ``name``'s config and start it. A clustered node gets the rig's Redis and
        PostgreSQL registry; an unclustered one is a single broker on SQLite with the same key
        and settings otherwise."""
        redis_url = self.redis.url if clustered and self.redis is not None else ""
        config = node_config(self.root, name, redis_url, self.fleet_key, self.turn_secret)
        text = config.read_text().replace('log_level = "DEBUG"', 'log_level = "INFO"')
        text = text.replace("udp_port = 0\n", f"udp_port = {udp_port}\n", 1)
        if reuse_port:
            text += "udp_reuse_port = true\n"
        if clustered and self.registry_url:
            text += f'registry_url = "{self.registry_url}"\n'
        config.write_text(text)
        node = Node(name, config, self.root / name, self.root / f"{name}.log", clustered)
        self.nodes.append(node)
        self._start(node)
        return node

    def _start(self, node: Node) -> None:
        self._launch(node)
        self._wait_ready(node)

    def _launch(self, node: Node) -> None:
        (node.state_dir / "broker.json").unlink(missing_ok=True)  # a killed broker leaves its old one
        argv = [
            *taskset_prefix(SERVER_CORE),
            venv_script("dvrlink-broker"),
            "serve",
            "--config",
            str(node.config),
        ]
        node.log_file = node.log.open("ab")
        try:
            node.proc = subprocess.Popen(argv, stdout=node.log_file, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise BenchError(f"cannot start dvrlink-broker: {exc}") from exc

    def _wait_ready(self, node: Node) -> None:
        info_path = node.state_dir / "broker.json"
        proc = node.proc
        assert proc is not None

        def ready() -> bool:
            if proc.poll() is not None:
                raise BenchError(
                    f"dvrlink-broker {node.name} exited with status {proc.returncode}:\n{log_tail(node.log)}"
                )
            return info_path.exists()

        wait_until(ready, BROKER_START_TIMEOUT_S, f"{info_path} (dvrlink-broker {node.name} start)")
        info = json.loads(info_path.read_text())
        node.pid = int(info["pid"])
        node.udp = (LOOPBACK, int(info["udp_port"]))
        node.public_key = b64decode_key(info["public_key"], "public_key in broker.json")

    def kill(self, node: Node) -> None:
        """SIGKILL the node, as a crash or a power cut: nothing is flushed or said to anyone."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)
        if node.log_file is not None:
            node.log_file.close()
            node.log_file = None

    def restart(self, node: Node) -> None:
        """Start a killed node again on the same presence port, with the same state and key."""
        self.restart_all([node])

    def restart_all(self, nodes: Sequence[Node]) -> None:
        """Start killed nodes again, all at once (each on its presence port, with its state and
        key), and wait until every one is up."""
        for node in nodes:
            if node.running:
                raise BenchError(f"node {node.name} is still running; kill it first")
            text = node.config.read_text()
            lines = [
                f"udp_port = {node.udp[1]}" if line.startswith("udp_port = ") else line
                for line in text.splitlines()
            ]
            node.config.write_text("\n".join(lines) + "\n")
        for node in nodes:
            self._launch(node)
        for node in nodes:
            self._wait_ready(node)

    def stop_node(self, node: Node) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait(timeout=10)
        if node.log_file is not None:
            node.log_file.close()
            node.log_file = None

    def meters(self, nodes: list[Node]) -> list[CpuMeter]:
        """Started CPU meters of ``nodes``."""
        meters = [CpuMeter(node.pid) for node in nodes]
        for meter in meters:
            meter.start()
        return meters

    # -- Redis ------------------------------------------------------------------------------------

    def redis_commands(self) -> dict[str, int]:
        """Calls per command since Redis started (``INFO commandstats``), without the INFO calls."""
        if self.redis is None:
            return {}
        return redis_commandstats(self.redis.port)

    def close(self) -> None:
        """Stop every node, Redis and PostgreSQL, and remove the folders."""
        for node in self.nodes:
            self.stop_node(node)
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.destroy()
        self._tmp.cleanup()


def redis_commandstats(port: int, timeout: float = 5.0) -> dict[str, int]:
    """``INFO commandstats`` of the Redis on ``port``: calls per command (lower case), INFO itself
    left out."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise BenchError("Redis closed the connection during INFO")
            data += chunk
        head, _, rest = data.partition(b"\r\n")
        if not head.startswith(b"$"):
            raise BenchError(f"Redis answered INFO with {head[:60]!r}")
        size = int(head[1:])
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise BenchError("Redis closed the connection during INFO")
            rest += chunk
    calls: dict[str, int] = {}
    for line in rest[:size].decode().splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_") :].partition(":")
        for item in fields.split(","):
            key, _, value = item.partition("=")
            if key == "calls" and name != "info":
                calls[name] = int(value)
    return calls


def commands_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Calls per command from ``before`` to ``after`` (commands that were not called left out)."""
    delta = {name: after[name] - before.get(name, 0) for name in after}
    return {name: count for name, count in sorted(delta.items()) if count > 0}


def register_spread(
    gen: LoadGenerator, nodes: Sequence[Node], indexes: range, keepalive_ms: int
) -> list[int]:
    """Register device ``indexes[j]`` at node ``j % len(nodes)`` in full and open the replies;
    returns the node index of each device (by device index; -1 for devices not in ``indexes``).

    Raises:
        BenchError: a device did not register, or a reply did not open.
    """
    node_of = [-1] * len(gen.devices)
    for n, node in enumerate(nodes):
        share = indexes[n :: len(nodes)]
        report = gen.register(share, node.udp, keepalive_ms, limit_s=60.0 + len(share) / 100.0)
        if report.registered != len(share):
            raise BenchError(
                f"{report.registered} of {len(share)} registered at {node.name} (refused {report.refused}, "
                f"failed {report.failed}); see {node.log}"
            )
        _, bad = gen.open_sessions(share, node.public_key)
        if bad:
            raise BenchError(f"{bad} REGISTERED replies from {node.name} did not open")
        for i in share:
            node_of[i] = n
    return node_of


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
