"""Interop: our viewer and daemon relay through coturn instead of the built-in relay.

The broker runs with its own relay off and hands out coturn (Debian package, `-c /dev/null`,
`use-auth-secret`) with REST credentials from the shared secret file. A relay-only forward
then carries an echo through coturn.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun

from hil.loopback import (
    Broker,
    Daemon,
    Viewer,
    add_user,
    loopback_services_toml,
    make_daemon,
    start_broker,
    start_forward,
    stop_all,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("turnserver") is None, reason="needs coturn (Debian package coturn)"),
]

SECRET = "interop-secret-for-tests"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_stun(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST)), ("127.0.0.1", port))
        try:
            return bool(sock.recv(2048))
        except OSError:
            return False


class EchoServer:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, name="coturn-test-echo", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop accepting (shutdown wakes the blocked accept; close alone does not) and join."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the echo server's thread is still serving a connection"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    log = tmp_path / "turnserver.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                "turnserver",
                "-c",
                "/dev/null",
                "--use-auth-secret",
                f"--static-auth-secret={SECRET}",
                "--realm=dvrlink",
                "--listening-ip=127.0.0.1",
                f"--listening-port={port}",
                "--relay-ip=127.0.0.1",
                "--allow-loopback-peers",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--log-file=stdout",
                "--verbose",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for("coturn answers STUN", lambda: answers_stun(port), 20)
        yield port, log
    finally:
        proc.terminate()
        proc.wait(10)


def test_viewer_and_daemon_relay_through_coturn(tmp_path: Path, coturn: tuple[int, Path]) -> None:
    turn_port, turn_log = coturn
    state = tmp_path / "broker"
    state.mkdir()
    secret_file = tmp_path / "turn_secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    config = tmp_path / "broker.toml"
    config.write_text(
        f'state_dir = "{state}"\n'
        'udp_host = "127.0.0.1"\nudp_port = 0\n'
        'https_host = "127.0.0.1"\nhttps_port = 0\n'
        "turn_enabled = false\n"
        f'turn_secret_file = "{secret_file}"\n'
        f'turn_servers = [{{host = "127.0.0.1", port = {turn_port}, transport = "udp"}}]\n'
    )
    echo = EchoServer()
    started: list[Daemon | Broker] = []
    try:
        broker = start_broker(state, config=config)
        started.append(broker)
        assert broker.turn_port == 0, "the built-in relay should be off"
        add_user(state, "owner", "pass phrase")
        daemon = make_daemon(
            tmp_path,
            "DL-COT-0001",
            broker,
            extra_toml=loopback_services_toml(echo.port),
        )
        daemon.start()
        started.append(daemon)
        wait_for("device online", daemon.online, 30)
        viewer = Viewer(tmp_path / "viewer")
        viewer.login(broker, "owner", "pass phrase")
        viewer.run("pair", daemon.pairing_uri())
        forward = start_forward(viewer, "DL-COT-0001", echo.port, "--relay-only")
        try:
            assert forward.path == "relay"
            payload = bytes(range(256)) * 4096  # 1 MiB
            with socket.create_connection(("127.0.0.1", forward.local_port), timeout=30) as conn:
                received = bytearray()
                sender = threading.Thread(target=conn.sendall, args=(payload,))
                sender.start()
                while len(received) < len(payload):
                    chunk = conn.recv(65536)
                    assert chunk, "the forward closed early"
                    received += chunk
                sender.join(30)
            assert bytes(received) == payload
        finally:
            assert forward.stop() == 0
    finally:
        stop_all(list(reversed(started)))
        echo.close()
    log = turn_log.read_text(errors="replace")
    # Both sides allocated on coturn with REST credentials issued by the broker.
    assert "DL-COT-0001" in log, log[-3000:]
    assert ":owner" in log, log[-3000:]
