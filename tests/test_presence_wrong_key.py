"""A device configured with a wrong broker key, as real processes on loopback: both sides say so.

The broker (``dvrlink-broker serve``) and the daemon (``dvrlinkd run``) run from the
virtualenv's scripts. The daemon pins a key that is not the broker's. Within a bounded wait, the
daemon's log and ``dvrlinkd status`` must say the broker did not complete the handshake and that
the configured broker key is the likely cause, and the broker's log must note the device that
never uses its sessions.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
from pathlib import Path

import pytest
from support.presence import Program

from dvrlink.broker.state import read_info

BIN = Path(sys.executable).parent
SERIAL = "DL-0005-0042"
BOUND = 30.0
WRONG_KEY = base64.b64encode(bytes(range(1, 33))).decode()

pytestmark = pytest.mark.integration


async def _status(config: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "dvrlinkd"), "status", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), BOUND)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_a_wrong_broker_key_is_named_in_the_daemon_log_its_status_and_the_broker_log(tmp_path: Path) -> None:
    if not (BIN / "dvrlinkd").exists() or not (BIN / "dvrlink-broker").exists():
        pytest.skip("the dvrlinkd and dvrlink-broker scripts are not installed")
    broker_state = tmp_path / "broker"

    async def main() -> None:
        broker = await Program.start(
            str(BIN / "dvrlink-broker"), "serve", "--state-dir", str(broker_state), "--udp-port", "0",
            "--https-port", "0", "--turn-port", "0", bound=BOUND,
        )  # fmt: skip
        daemon: Program | None = None
        try:
            await broker.wait_for_line("dvrlink-broker ready")
            info = read_info(broker_state)
            config = tmp_path / "dvrlinkd.toml"
            config.write_text(
                f'[device]\nserial = "{SERIAL}"\nstate_dir = "{tmp_path / "device"}"\n'
                f'runtime_dir = "{tmp_path / "run"}"\n'
                f'[broker]\nhost = "127.0.0.1"\nport = {info.udp_port}\npublic_key = "{WRONG_KEY}"\n'
                "[presence]\nreply_timeout_s = 0.5\nretries = 2\n"
            )
            env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
            daemon = await Program.start(
                str(BIN / "dvrlinkd"), "run", "--config", str(config), bound=BOUND, env=env
            )
            # One attempt is 3 tries of 0.5 s: the daemon must say it well within the bound.
            line = await daemon.wait_for_line("did not complete the handshake", bound=10.0)
            assert "WARNING" in line and "key is most likely wrong" in line, line
            assert "show-key" in line, line
            status = await _status(config)
            assert "key is most likely wrong" in status, status
            state = next(line for line in status.splitlines() if line.startswith("state:"))
            assert state.split()[1] in ("cookie-wait", "register-wait", "backoff"), status
            quiet = await broker.wait_for_line(f"{SERIAL}.*never used", bound=BOUND)
            assert "key" in quiet, quiet
            assert "Traceback" not in "".join(broker.lines + daemon.lines)
            assert await daemon.stop() == 0
            daemon = None
            assert await broker.stop() == 0
        finally:
            if daemon is not None:
                await daemon.stop()
            await broker.stop()

    asyncio.run(main())


def test_a_wrong_port_is_named_in_the_daemon_log_and_its_status(tmp_path: Path) -> None:
    if not (BIN / "dvrlinkd").exists():
        pytest.skip("the dvrlinkd script is not installed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there once the socket is closed

    async def main() -> None:
        config = tmp_path / "dvrlinkd.toml"
        config.write_text(
            f'[device]\nserial = "{SERIAL}"\nstate_dir = "{tmp_path / "device"}"\n'
            f'runtime_dir = "{tmp_path / "run"}"\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {port}\npublic_key = "{WRONG_KEY}"\n'
            '[presence]\nreply_timeout_s = 0.5\nretries = 2\ntransport = "udp"\n'
        )
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        daemon = await Program.start(
            str(BIN / "dvrlinkd"), "run", "--config", str(config), bound=BOUND, env=env
        )
        try:
            line = await daemon.wait_for_line("did not answer the handshake", bound=10.0)
            assert f"127.0.0.1:{port}" in line and "port" in line.split("HELLO", 1)[1], line
            status = await _status(config)
            assert "did not answer the handshake" in status, status
            assert await daemon.stop() == 0
        finally:
            await daemon.stop()

    asyncio.run(main())
