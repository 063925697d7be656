"""The loopback session rig the session benchmarks share: a broker, one dvrlinkd, a logged-in and
paired viewer home, and device-side TCP services run by the benchmark itself.

Real processes, as ``hil.loopback`` starts them (``dvrlinkd run``, ``dvrlink forward``), except
the broker, which gets a config file here: the benchmarks open more sessions than the default
``session_max_per_account`` (16 within the 600 s ``session_ttl_s``) allows.

Pinning: a child inherits the affinity of the process that forks it, so ``on_core`` pins the
benchmark process to a core for the moment it starts a child. The daemon (the process under test)
gets core 1; the broker, the ``dvrlink forward`` process and the benchmark's own sockets core 0.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    GENERATOR_CORE,
    LOOPBACK,
    SERVER_CORE,
    BenchError,
    log_tail,
    online_cores,
)
from hil.loopback import (
    Broker,
    Daemon,
    Forward,
    Viewer,
    add_user,
    make_daemon,
    start_broker,
    start_forward,
    stop_all,
    wait_for,
)

SERIAL = "DL-BENCH-0001"
USER = "bench"
PASSWORD = "bench pass phrase"
START_TIMEOUT_S = 30.0
FORWARD_TIMEOUT_S = 30.0
IO_TIMEOUT_S = 30.0
POLICY_FLAGS = {"relay": "--relay-only", "direct": "--direct-only"}
"""The viewer's path policy flag per benchmark mode; direct on loopback is the ``lan`` path."""


@contextlib.contextmanager
def on_core(core: int) -> Iterator[None]:
    """Run the block with this process pinned to ``core`` (if online), so children forked in it
    start there; the previous affinity comes back afterwards."""
    before = os.sched_getaffinity(0)
    if core in online_cores():
        os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cores_of(pid: int) -> str:
    """The cores ``pid`` may run on, e.g. ``"1"``, or ``"?"`` if it is gone."""
    try:
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(pid)))
    except OSError:
        return "?"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) by linear interpolation between order statistics."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    """The median."""
    return statistics.median(values)


# --- the broker, with a config file ---


def start_bench_broker(state_dir: Path, timeout: float = START_TIMEOUT_S) -> Broker:
    """``dvrlink-broker serve --config`` on loopback, free ports, TURN on, loopback peers allowed,
    and room for many sessions per account.

    Raises:
        BenchError: it exited or wrote no broker.json in time (the message has its log).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir.parent / "broker.toml"
    config.write_text(
        f'state_dir = "{state_dir}"\n'
        f'udp_host = "{LOOPBACK}"\nudp_port = 0\n'
        f'https_host = "{LOOPBACK}"\nhttps_port = 0\n'
        "turn_udp_port = 0\nturn_tcp_port = 0\n"
        "turn_allow_loopback_peers = true\n"
        "session_max_per_account = 10000\n"
        'log_level = "WARNING"\n'
    )
    try:
        return start_broker(state_dir, timeout=timeout, config=config)
    except (TimeoutError, RuntimeError) as exc:
        raise BenchError(str(exc)) from None


# --- the rig ---


@dataclass
class Rig:
    """A running broker + dvrlinkd and a paired viewer home."""

    broker: Broker
    daemon: Daemon
    viewer: Viewer

    @property
    def daemon_pid(self) -> int:
        """The dvrlinkd process id."""
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def forward(self, remote_port: int, mode: str) -> Forward:
        """``dvrlink forward SERIAL 0:remote_port`` with the ``mode`` policy flag, started on the
        generator core; returns once it prints its "forwarding" line.

        Raises:
            BenchError: it did not come up (the message has its output).
        """
        with on_core(GENERATOR_CORE):
            try:
                return start_forward(
                    self.viewer, SERIAL, remote_port, POLICY_FLAGS[mode], timeout=FORWARD_TIMEOUT_S
                )
            except TimeoutError as exc:
                raise BenchError(f"dvrlink forward --{mode}-only did not come up: {exc}") from None

    def describe(self) -> str:
        """Where each process may run."""
        return (
            f"broker pid {self.broker.proc.pid} on core {cores_of(self.broker.proc.pid)}, "
            f"dvrlinkd pid {self.daemon_pid} on core {cores_of(self.daemon_pid)}, "
            f"benchmark pid {os.getpid()} on core {cores_of(os.getpid())}"
        )


@contextlib.contextmanager
def session_rig(work: Path, forward_ports: Sequence[int], broker_core: int = GENERATOR_CORE) -> Iterator[Rig]:
    """Start the broker (on ``broker_core``) and dvrlinkd (on core 1, allowed to forward to
    ``127.0.0.1:PORT`` for each port), log a viewer in and pair it; stop everything on exit.

    Raises:
        BenchError: a process did not start, register, log in or pair.
    """
    started: list[Daemon | Broker] = []
    try:
        with on_core(broker_core):
            broker = start_bench_broker(work / "broker")
        started.append(broker)
        add_user(broker.state_dir, USER, PASSWORD)
        allowed = ", ".join(f'"{LOOPBACK}:{port}"' for port in forward_ports)
        daemon = make_daemon(
            work,
            SERIAL,
            broker,
            keepalive_interval=25.0,
            reply_timeout=1.0,
            extra_toml=(
                f'[sessions]\nhost_addresses = ["{LOOPBACK}"]\nmax_sessions = 8\n'
                f"[services]\nforward = [{allowed}]\n"
                '[log]\nlevel = "WARNING"\n'
            ),
        )
        with on_core(SERVER_CORE):
            daemon.start()
        started.append(daemon)
        try:
            wait_for("dvrlinkd online", daemon.online, START_TIMEOUT_S)
        except TimeoutError as exc:
            raise BenchError(f"{exc}:\n{log_tail(daemon.log)}") from None
        viewer = Viewer(work / "viewer")
        try:
            viewer.login(broker, USER, PASSWORD)
            viewer.run("pair", daemon.pairing_uri())
        except subprocess.CalledProcessError as exc:
            raise BenchError(f"viewer login/pair failed: {exc.stderr or exc.stdout}") from None
        yield Rig(broker, daemon, viewer)
    finally:
        stop_all(list(reversed(started)))


# --- device-side TCP services, run as threads of the benchmark ---


class TcpService:
    """A loopback TCP listener that runs ``handler(conn)`` for each connection in its own thread.

    ``close`` stops accepting and waits (bounded) for the handlers.
    """

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self._handler = handler
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name=f"tcp-service-{self.port}", daemon=True)
        self._acceptor.start()
        self.errors: list[str] = []

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(IO_TIMEOUT_S)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._handler(conn)
            except OSError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop accepting; wait up to 5 s for running handlers."""
        self._stop.set()
        self._acceptor.join(5)
        self._listener.close()
        deadline = time.monotonic() + 5
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def recv_exactly(sock: socket.socket, total: int, chunk: int = 1 << 20) -> int:
    """Read and drop ``total`` bytes (fewer if the peer closes first); returns the count."""
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    got = 0
    while got < total:
        n = sock.recv_into(view, min(chunk, total - got))
        if n == 0:
            break
        got += n
    return got


def send_count(sock: socket.socket, total: int, chunk: int = 1 << 18) -> None:
    """Send ``total`` bytes of a fixed pattern."""
    block = bytes(range(256)) * (chunk // 256)
    view = memoryview(block)
    left = total
    while left > 0:
        n = min(left, len(block))
        sock.sendall(view[:n])
        left -= n
