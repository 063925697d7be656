"""A device that knows several broker nodes, as real processes on loopback.

Two ``dvrlink-broker`` processes with their own state directories but the same static key (the
fleet key: the second one's key file is a copy of the first's, made before it starts) and a real
``dvrlinkd`` with both in ``[broker] hosts`` and a short fixed keepalive. The node in use is
killed with SIGKILL: the device must be registered on the other node within two keepalive
intervals of the kill (the issue's bound, measured from the kill to the daemon's "registered"
line). A node with another key in the list is skipped, with a log line saying why.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from support.presence import Program

from dvrlink.broker.state import KEY_FILE, read_info
from dvrlink.daemon.broker_nodes import NODE_FILE
from dvrlink.protocol.identity import b64encode_key

BIN = Path(sys.executable).parent
SERIAL = "DL-0042-0016"
BOUND = 30.0
KEEPALIVE_S = 2.0
"""The device's fixed keepalive interval (the broker grants at least 1 s)."""

pytestmark = pytest.mark.integration


def _need_scripts() -> None:
    if not (BIN / "dvrlinkd").exists() or not (BIN / "dvrlink-broker").exists():
        pytest.skip("the dvrlinkd and dvrlink-broker scripts are not installed (run `make venv`)")


@asynccontextmanager
async def _broker(state: Path, *, key_from: Path | None = None) -> AsyncIterator[tuple[Program, int]]:
    """A broker on free loopback ports; ``key_from``: a state directory whose static key it gets
    (copied before it starts, so it joins that fleet). Yields the process and its presence UDP port."""
    state.mkdir(parents=True, exist_ok=True)
    if key_from is not None:
        shutil.copy2(key_from / KEY_FILE, state / KEY_FILE)
    program = await Program.start(
        str(BIN / "dvrlink-broker"), "serve", "--state-dir", str(state), "--udp-port", "0",
        "--https-port", "0", "--turn-port", "0", "--presence-tcp-port", "0",
    )  # fmt: skip
    try:
        await program.wait_for_line("dvrlink-broker ready")
        yield program, read_info(state).udp_port
    finally:
        await program.stop()


def _config(tmp_path: Path, public_key: bytes, ports: list[int]) -> Path:
    hosts = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
    config = tmp_path / "dvrlinkd.toml"
    config.write_text(
        f'[device]\nserial = "{SERIAL}"\nstate_dir = "{tmp_path / "device"}"\n'
        f'runtime_dir = "{tmp_path / "run"}"\n'
        f'[broker]\nhosts = [{hosts}]\npublic_key = "{b64encode_key(public_key)}"\n'
        f'[presence]\ntransport = "udp"\nlearn_keepalive = false\nkeepalive_interval_s = {KEEPALIVE_S:g}\n'
        "reply_timeout_s = 0.2\nretries = 2\n"
        '[log]\nlevel = "debug"\n'  # the keepalive lines time the kill
    )
    return config


async def _daemon(config: Path) -> Program:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    return await Program.start(str(BIN / "dvrlinkd"), "run", "--config", str(config), bound=BOUND, env=env)


async def _status(config: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "dvrlinkd"), "status", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), BOUND)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_killing_the_node_in_use_moves_the_device_within_two_intervals(tmp_path: Path) -> None:
    _need_scripts()

    async def main() -> None:
        async with (
            _broker(tmp_path / "node-a") as (node_a, port_a),
            _broker(tmp_path / "node-b", key_from=tmp_path / "node-a") as (_node_b, port_b),
        ):
            fleet_key = read_info(tmp_path / "node-a").public_key
            assert read_info(tmp_path / "node-b").public_key == fleet_key, "the copy makes one fleet"
            config = _config(tmp_path, fleet_key, [port_a, port_b])
            daemon = await _daemon(config)
            try:
                # The child runs this tree's code: only it logs the node list.
                await daemon.wait_for_line(
                    rf"broker nodes: 127\.0\.0\.1:{port_a}, 127\.0\.0\.1:{port_b}; registering with "
                    rf"127\.0\.0\.1:{port_a}"
                )
                await daemon.wait_for_line(rf"registered: online via 127\.0\.0\.1:{port_a} ")
                # The worst moment: just after a keepalive was answered, so the node is given up
                # as late as the core allows (one interval, then the retransmissions).
                await daemon.wait_for_line("keepalive acknowledged")
                node_a.proc.kill()  # SIGKILL: no goodbye, the node just falls silent
                killed_at = time.monotonic()
                await daemon.wait_for_line(rf"registered: online via 127\.0\.0\.1:{port_b} ")
                took = time.monotonic() - killed_at
                bound = 2 * KEEPALIVE_S
                assert took <= bound, (
                    f"registered on the other node {took:.2f} s after the kill; the bound is two "
                    f"keepalive intervals = {bound:g} s\n" + "".join(daemon.lines)
                )
                assert any(
                    f"leaving broker node 127.0.0.1:{port_a}: it fell silent" in line for line in daemon.lines
                ), "".join(daemon.lines)

                status = await _status(config)
                assert re.search(rf"^broker nodes:\s+2, using 127\.0\.0\.1:{port_b}$", status, re.M), status
                assert f"  * 127.0.0.1:{port_b}: last answered" in status, status
                assert f"    127.0.0.1:{port_a}: last answered" in status, status
                assert "last failed: it fell silent (no keepalive reply after 3 tries" in status, status
                remembered = json.loads((tmp_path / "device" / NODE_FILE).read_text())
                assert (remembered["host"], remembered["port"]) == ("127.0.0.1", port_b)
                assert await daemon.stop() == 0
            finally:
                await daemon.stop()

            # A restart begins with the node that answered last, not the top of the list.
            again = await _daemon(config)
            try:
                await again.wait_for_line(rf"registering with 127\.0\.0\.1:{port_b}$")
                await again.wait_for_line(rf"registered: online via 127\.0\.0\.1:{port_b} ")
                assert not any(f"127.0.0.1:{port_a}: it" in line for line in again.lines), "".join(
                    again.lines
                )
                assert await again.stop() == 0
            finally:
                await again.stop()

    asyncio.run(main())


def test_a_node_outside_the_fleet_is_skipped(tmp_path: Path) -> None:
    _need_scripts()

    async def main() -> None:
        async with (
            _broker(tmp_path / "fleet") as (_fleet, port_fleet),
            _broker(tmp_path / "outsider") as (_outsider, port_outsider),
        ):
            fleet_key = read_info(tmp_path / "fleet").public_key
            assert read_info(tmp_path / "outsider").public_key != fleet_key
            config = _config(tmp_path, fleet_key, [port_outsider, port_fleet])
            daemon = await _daemon(config)
            try:
                line = await daemon.wait_for_line(rf"skipping broker node 127\.0\.0\.1:{port_outsider}")
                assert "is outside the fleet" in line and "do not open with the fleet key" in line, line
                assert f"moving to 127.0.0.1:{port_fleet}" in line, line
                await daemon.wait_for_line(rf"registered: online via 127\.0\.0\.1:{port_fleet} ")
                assert not any(
                    f"registered: online via 127.0.0.1:{port_outsider}" in seen for seen in daemon.lines
                )
                status = await _status(config)
                assert f"using 127.0.0.1:{port_fleet}" in status, status
                assert "is outside the fleet" in status and "passed over for" in status, status
                assert await daemon.stop() == 0
            finally:
                await daemon.stop()

    asyncio.run(main())


def test_a_node_that_does_not_answer_at_start_is_left_for_the_next(tmp_path: Path) -> None:
    _need_scripts()

    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
            dead.bind(("127.0.0.1", 0))  # bound and never read: datagrams vanish, as on a dead host
            dead_port = int(dead.getsockname()[1])
            async with _broker(tmp_path / "fleet") as (_fleet, port_fleet):
                config = _config(tmp_path, read_info(tmp_path / "fleet").public_key, [dead_port, port_fleet])
                daemon = await _daemon(config)
                try:
                    line = await daemon.wait_for_line(rf"leaving broker node 127\.0\.0\.1:{dead_port}")
                    assert (
                        "did not answer HELLO (3 tries" in line
                        and f"moving to 127.0.0.1:{port_fleet}" in line
                    )
                    await daemon.wait_for_line(rf"registered: online via 127\.0\.0\.1:{port_fleet} ")
                    assert await daemon.stop() == 0
                finally:
                    await daemon.stop()

    asyncio.run(main())
