"""The viewer CLI with several broker URLs: a node it cannot reach is passed for the next.

A real ``dvrlink-broker`` process and the installed ``dvrlink`` script; the "dead" node is a
loopback port nothing listens on (connection refused), so no request can have reached it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.presence import Program

from dvrlink.broker.state import read_info
from dvrlink.viewer.home import Login, ViewerHome

BIN = Path(sys.executable).parent
BOUND = 30.0

pytestmark = pytest.mark.integration


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DVRLINK_HOME"}
    return subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=BOUND, check=False, env=env
    )


def test_the_viewer_tries_the_next_broker_url_when_one_cannot_be_reached(tmp_path: Path) -> None:
    if not (BIN / "dvrlink").exists() or not (BIN / "dvrlink-broker").exists():
        pytest.skip("the dvrlink and dvrlink-broker scripts are not installed (run `make venv`)")
    state = tmp_path / "broker"
    home = tmp_path / "home"
    dead = f"https://127.0.0.1:{_free_port()}"

    async def main() -> None:
        broker = await Program.start(
            str(BIN / "dvrlink-broker"), "serve", "--state-dir", str(state), "--udp-port", "0",
            "--https-port", "0", "--turn-port", "0", "--presence-tcp-port", "0",
        )  # fmt: skip
        try:
            await broker.wait_for_line("dvrlink-broker ready")
            info = read_info(state)
            live = f"https://localhost:{info.https_port}"
            added = _run(
                str(BIN / "dvrlink-broker"), "user", "add", "alice", "--password-stdin", "--state-dir",
                str(state), stdin="s3cret-pass\n",
            )  # fmt: skip
            assert added.returncode == 0, added.stderr

            login = _run(
                str(BIN / "dvrlink"), "--home", str(home), "login", "--broker", dead, "--broker", live,
                "--user", "alice", "--password-stdin", "--cacert", str(info.cert), stdin="s3cret-pass\n",
            )  # fmt: skip
            assert login.returncode == 0, login.stderr
            assert f"logged in to {live} as alice" in login.stdout, login.stdout
            assert f"cannot reach the broker at {dead}" in login.stderr and f"trying {live}" in login.stderr
            stored = ViewerHome(home).load_login()
            assert stored is not None
            assert (stored.broker, stored.other_brokers) == (live, (dead,)), (
                "the node that answered comes first"
            )

            # The stored first node is gone: commands go on with the next one.
            ViewerHome(home).forget_login()
            ViewerHome(home).save_login(
                Login(dead, stored.cacert, "alice", stored.token, stored.expires_at, (live,))
            )
            devices = _run(str(BIN / "dvrlink"), "--home", str(home), "devices")
            assert devices.returncode == 0, devices.stderr
            assert f"cannot reach the broker at {dead}" in devices.stderr, devices.stderr

            # None can be reached: one error that names each.
            other_dead = f"https://127.0.0.1:{_free_port()}"
            ViewerHome(home).forget_login()
            ViewerHome(home).save_login(
                Login(dead, stored.cacert, "alice", stored.token, time.time() + 3600, (other_dead,))
            )
            nowhere = _run(str(BIN / "dvrlink"), "--home", str(home), "devices")
            assert nowhere.returncode != 0
            assert "cannot reach any of the 2 brokers" in nowhere.stderr, nowhere.stderr
            assert dead in nowhere.stderr and other_dead in nowhere.stderr, nowhere.stderr
            assert "Traceback" not in nowhere.stderr
            assert await broker.stop() == 0
        finally:
            await broker.stop()

    asyncio.run(main())
