"""Interop: coturn's standard TURN client, ``turnutils_uclient``, against a dvrlink-broker process,
with REST credentials made from the broker's TURN secret (the scheme of ``turn_credentials``).

The issue's command, ``-e 127.0.0.1 -n 1000 -m 10 -l 170 -y``: 10 client pairs relaying to each
other, each with an RTP allocation that asks for EVEN-PORT with the R bit and an RTCP one that
claims the reserved port with RESERVATION-TOKEN: 40 allocations under one name, which the default
``turn_max_allocations_per_name`` (40) holds. And a run refused over the quota (here set to 10)
must not block the next one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dvrlink.broker.turn_credentials import make_credentials
from hil.loopback import Broker, start_broker, stop_all

UCLIENT = shutil.which("turnutils_uclient")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(UCLIENT is None, reason="needs coturn's turnutils_uclient (Debian coturn)"),
]


def _broker(tmp_path: Path, quota: int | None) -> Broker:
    state = tmp_path / "broker"
    config = tmp_path / "broker.toml"
    config.write_text(
        f'state_dir = "{state}"\n'
        'udp_host = "127.0.0.1"\nudp_port = 0\n'
        'https_host = "127.0.0.1"\nhttps_port = 0\npresence_tcp_port = 0\n'
        "turn_udp_port = 0\nturn_tcp_port = 0\nturn_allow_loopback_peers = true\n"
        + (f"turn_max_allocations_per_name = {quota}\n" if quota is not None else "")
    )
    return start_broker(state, config=config)


def _uclient(broker: Broker, name: str, *flags: str) -> tuple[int, str]:
    """Run turnutils_uclient with fresh REST credentials for ``name`` (bounded: 120 s)."""
    assert UCLIENT is not None
    secret = (broker.state_dir / "turn_secret").read_text().strip()
    username, password = make_credentials(secret, name, time.time(), 3600)
    port = json.loads((broker.state_dir / "broker.json").read_text())["turn_udp_port"]
    argv = [UCLIENT, "-u", username, "-w", password, *flags, "-p", str(port), "127.0.0.1"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    return result.returncode, result.stdout + result.stderr


def test_the_standard_uclient_command_relays_through_the_broker(tmp_path: Path) -> None:
    broker = _broker(tmp_path, quota=None)  # the default quota
    try:
        code, out = _uclient(
            broker, "uclient", "-e", "127.0.0.1", "-n", "1000", "-m", "10", "-l", "170", "-y"
        )
        tail = out[-3000:]
        assert code == 0, tail
        match = re.search(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", out, re.MULTILINE)
        assert match and match.group(1) == match.group(2) == "12000", tail
        assert "Total lost packets 0 (0.000000%)" in out, tail
        assert broker.proc.poll() is None
    finally:
        stop_all([broker])


def test_a_run_refused_over_quota_does_not_block_the_next(tmp_path: Path) -> None:
    broker = _broker(tmp_path, quota=10)
    try:
        # -c -m 10 -y: 20 allocations, over the quota; the client gives up on 486.
        code, out = _uclient(
            broker, "runner", "-e", "127.0.0.1", "-n", "10", "-c", "-m", "10", "-l", "170", "-y"
        )
        assert code != 0 and "486" in out, out[-3000:]
        # Right after, a run that fits the quota (10 allocations) passes.
        code, out = _uclient(
            broker, "runner", "-e", "127.0.0.1", "-n", "10", "-c", "-m", "5", "-l", "170", "-y"
        )
        tail = out[-3000:]
        assert code == 0, f"the run after the refused one failed:\n{tail}"
        match = re.search(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", out, re.MULTILINE)
        assert match and int(match.group(1)) > 0 and match.group(1) == match.group(2), tail
    finally:
        stop_all([broker])
