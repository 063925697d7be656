"""The broker and the device daemon as real processes on loopback: register, pair over the API.

Both programs run from the virtualenv's scripts; readiness is read from their logs (each wait
is bounded), and both must exit 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest
from support.presence import Program

from dvrlink.broker.state import read_info
from dvrlink.broker.tls import client_context
from dvrlink.protocol.identity import b64encode_key, normalize_fingerprint
from dvrlink.protocol.pairing import PairResult, PairStatus, normalize_code, pair_proof

BIN = Path(sys.executable).parent
SERIAL = "DL-0042-0001"
BOUND = 30.0

pytestmark = pytest.mark.integration


async def _run(*args: str, stdin: bytes = b"") -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), BOUND)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_daemon_registers_and_pairs_through_the_broker(tmp_path: Path) -> None:
    if not (BIN / "dvrlinkd").exists() or not (BIN / "dvrlink-broker").exists():
        pytest.skip("the dvrlinkd and dvrlink-broker scripts are not installed (run `make venv`)")
    broker_state = tmp_path / "broker"

    async def main() -> None:
        broker = await Program.start(
            str(BIN / "dvrlink-broker"), "serve", "--state-dir", str(broker_state), "--udp-port", "0",
            "--https-port", "0", "--turn-port", "0",
        )  # fmt: skip
        daemon: Program | None = None
        try:
            await broker.wait_for_line("dvrlink-broker ready")
            info = read_info(broker_state)
            config = tmp_path / "dvrlinkd.toml"
            config.write_text(
                f'[device]\nserial = "{SERIAL}"\nstate_dir = "{tmp_path / "device"}"\n'
                f'runtime_dir = "{tmp_path / "run"}"\n'
                f'[broker]\nhost = "127.0.0.1"\nport = {info.udp_port}\n'
                f'public_key = "{b64encode_key(info.public_key)}"\n'
            )
            label = await _run(str(BIN / "dvrlinkd"), "pairing-code", "--create", "--config", str(config))
            code = normalize_code(re.search(r"pairing code:\s*(\S+)", label).group(1))  # type: ignore[union-attr]
            fp = normalize_fingerprint(re.search(r"fingerprint:\s*(.+)", label).group(1))  # type: ignore[union-attr]

            env_free = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
            proc = await asyncio.create_subprocess_exec(
                str(BIN / "dvrlinkd"),
                "run",
                "--config",
                str(config),
                stderr=asyncio.subprocess.PIPE,
                env=env_free,
            )
            daemon = Program(proc, BOUND)
            await daemon.wait_for_line("registered")
            await _run(
                str(BIN / "dvrlink-broker"), "user", "add", "alice", "--password-stdin", "--state-dir",
                str(broker_state), stdin=b"s3cret-pass\n",
            )  # fmt: skip

            connector = aiohttp.TCPConnector(ssl=client_context(info.cert))
            async with aiohttp.ClientSession(
                f"https://localhost:{info.https_port}", connector=connector
            ) as http:
                async with http.post(
                    "/v1/tokens", json={"username": "alice", "password": "s3cret-pass"}
                ) as resp:
                    assert resp.status == 200
                    auth = {"Authorization": "Bearer " + (await resp.json())["token"]}
                async with http.get(f"/v1/devices/{SERIAL}/identity", headers=auth) as resp:
                    identity = await resp.json()
                assert identity["fingerprint"] == fp and identity["online"] is True
                device_key = base64.b64decode(identity["public_key"])

                viewer_key, nonce = os.urandom(32), os.urandom(16)
                body = {
                    "viewer_public_key": b64encode_key(viewer_key),
                    "nonce": base64.b64encode(nonce).decode(),
                    "proof": base64.b64encode(
                        pair_proof(code, SERIAL, device_key, viewer_key, nonce)
                    ).decode(),
                }
                async with http.post(f"/v1/devices/{SERIAL}/pairings", headers=auth, json=body) as resp:
                    answer = await resp.json()
                    assert resp.status == 200, answer
                result = PairResult.decode(base64.b64decode(answer["result"]))
                assert result.status is PairStatus.PAIRED
                assert result.verify(code, SERIAL, viewer_key, nonce)

                async with http.get("/v1/devices", headers=auth) as resp:
                    [device] = (await resp.json())["devices"]
                assert device["serial"] == SERIAL and device["online"] is True
                assert device["reflexive_address"].startswith("127.0.0.1:")

            assert await daemon.stop() == 0
            daemon = None
            assert await broker.stop() == 0
        finally:
            if daemon is not None:
                await daemon.stop()
            await broker.stop()

    asyncio.run(main())
