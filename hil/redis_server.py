"""A real ``redis-server`` (Debian's package) on loopback for the cluster tests and benchmarks: a
free port, no persistence (``--save "" --appendonly no``), its working folder in a temporary
directory. ``restart`` stops and starts it on the same port, empty, the way a Redis without
persistence comes back after a crash. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from hil.loopback import wait_for

REDIS_SERVER = "redis-server"
START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``url`` is what a broker's ``redis_url`` takes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.log = folder / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING.

        Raises:
            RuntimeError: redis-server is not installed, or did not answer (its log is quoted).
        """
        binary = shutil.which(REDIS_SERVER) or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("redis-server is not installed; run `make deps` (Debian package redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            arguments += ["--dir", str(self.folder), "--protected-mode", "yes"]
            self._process = subprocess.Popen([binary, *arguments], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(
                f"redis-server on port {self.port} to answer PING",
                lambda: _answers_ping(self.port) or not self.running,
                START_TIMEOUT_S,
            )
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; its log: {self.log.read_text(errors='replace')[-500:]}") from None
        if not self.running:
            raise RuntimeError(f"redis-server exited at start: {self.log.read_text(errors='replace')[-500:]}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); nothing is kept."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def restart(self) -> None:
        """Stop and start again on the same port: an empty Redis, as after a crash."""
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer` in ``folder``, stopped on exit."""
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
