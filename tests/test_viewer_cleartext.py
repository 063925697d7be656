"""``dvrlink`` never sends a password or a token over plain http unless told to, loudly.

Each test runs the installed ``dvrlink`` script as a subprocess against a listening socket on
127.0.0.1. A refused command must exit before any connection reaches that socket: once the
process has exited, a connection it made would already sit in the socket's accept queue, so
``select`` with no wait tells.
"""

from __future__ import annotations

import http.server
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvrlink.viewer.home import Login, ViewerHome

BIN = Path(sys.executable).parent
VIEWER_BIN = BIN / "dvrlink"
BOUND = 30.0  # s, the longest one command may take

pytestmark = pytest.mark.skipif(not VIEWER_BIN.exists(), reason="the dvrlink script is not installed")


def _dvrlink(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DVRLINK_HOME"}
    return subprocess.run(
        [str(VIEWER_BIN), "--home", str(home), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
        env=env,
    )


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on 127.0.0.1 that nobody accepts on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


def _pending_connections(sock: socket.socket) -> int:
    count = 0
    sock.setblocking(False)
    while select.select([sock], [], [], 0)[0]:
        conn, _ = sock.accept()
        conn.close()
        count += 1
    return count


def test_login_over_http_is_refused_before_the_password_is_sent(
    tmp_path: Path, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    run = _dvrlink(
        tmp_path / "home",
        "login",
        "--broker",
        f"http://127.0.0.1:{port}",
        "--user",
        "alice",
        "--password-stdin",
        stdin="secret\n",
    )
    reached = _pending_connections(listener)
    assert (run.returncode, reached) == (2, 0), (
        f"exit {run.returncode}, {reached} connection(s) reached the http broker; stderr: {run.stderr!r}"
    )
    assert "plain http" in run.stderr and "--insecure-http" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "home" / "viewer.json").exists()


@pytest.mark.parametrize("command", [["devices"], ["status", "DL-TEST-0001"], ["sessions"]])
def test_a_stored_http_broker_gets_no_token(
    tmp_path: Path, listener: socket.socket, command: list[str]
) -> None:
    port = listener.getsockname()[1]
    home = ViewerHome(tmp_path / "home")
    home.save_login(Login(f"http://127.0.0.1:{port}", None, "alice", "T" * 43, time.time() + 3600))
    run = _dvrlink(home.path, *command)
    reached = _pending_connections(listener)
    assert (run.returncode, reached) == (2, 0), (
        f"`dvrlink {' '.join(command)}`: exit {run.returncode}, {reached} connection(s) reached "
        f"the http broker; stderr: {run.stderr!r}"
    )
    assert "plain http" in run.stderr and "--insecure-http" in run.stderr, run.stderr


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None]] = []

    def do_POST(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        body = json.dumps({"error": "unauthorized", "message": "no such token"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_insecure_http_flag_allows_it_with_a_warning_each_time(tmp_path: Path) -> None:
    seen: list[tuple[str, str, str | None]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="http-broker", daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        home = tmp_path / "home"
        login = _dvrlink(
            home, "login", "--broker", url, "--user", "alice", "--password-stdin", "--insecure-http",
            stdin="secret\n",
        )  # fmt: skip
        assert login.returncode == 1, login.stderr  # the stand-in refuses every password
        assert "warning" in login.stderr and "in clear" in login.stderr, login.stderr
        assert seen and seen[0][:2] == ("POST", "/v1/tokens")
        ViewerHome(home).save_login(Login(url, None, "alice", "T" * 43, time.time() + 3600))
        devices = _dvrlink(home, "--insecure-http", "devices")
        assert "warning" in devices.stderr and "in clear" in devices.stderr, devices.stderr
        assert seen[-1] == ("GET", "/v1/devices", "Bearer " + "T" * 43)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(BOUND)
