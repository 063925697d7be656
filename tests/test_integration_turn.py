"""Interop: coturn's turnutils_uclient allocates and relays through the dvrlink-broker process."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from hil.loopback import start_broker, stop_all, wait_for

UCLIENT = shutil.which("turnutils_uclient")
PEER_TOOL = shutil.which("turnutils_peer")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        UCLIENT is None or PEER_TOOL is None, reason="needs coturn's turnutils (Debian coturn)"
    ),
]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echoes(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(b"ping", ("127.0.0.1", port))
        try:
            return sock.recv(64) == b"ping"
        except OSError:
            return False


@pytest.mark.parametrize("flags", [[], ["-t"]], ids=["udp", "tcp"])
def test_turnutils_uclient_relays_through_the_broker(tmp_path: Path, flags: list[str]) -> None:
    broker = start_broker(tmp_path / "broker")
    peer_port = free_udp_port()
    assert PEER_TOOL is not None and UCLIENT is not None
    peer = subprocess.Popen(
        [PEER_TOOL, "-L", "127.0.0.1", "-p", str(peer_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("turnutils_peer echoes", lambda: echoes(peer_port), 15)
        secret = (broker.state_dir / "turn_secret").read_text().strip()
        info = json.loads((broker.state_dir / "broker.json").read_text())
        port = info["turn_tcp_port"] if "-t" in flags else info["turn_udp_port"]
        result = subprocess.run(
            [
                UCLIENT,
                *flags,
                "-c",
                "-n",
                "50",
                "-l",
                "170",
                "-m",
                "1",
                "-e",
                "127.0.0.1",
                "-r",
                str(peer_port),
                "-u",
                "uclient",
                "-W",
                secret,
                "-p",
                str(port),
                "127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out = result.stdout + result.stderr
        assert result.returncode == 0, out
        match = re.search(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", out, re.MULTILINE)
        assert match and match.group(1) == match.group(2) == "50", out
        assert "Total lost packets 0 (0.000000%)" in out, out
        assert broker.proc.poll() is None
    finally:
        peer.kill()
        peer.wait(10)
        stop_all([broker])
