"""Alarms end to end with real processes on loopback: ``dvrlink-broker``, ``dvrlinkd`` and
``dvrlink events --follow``.

1,000 alarms wait in the device's queue while the broker is down; ``dvrlinkd`` is killed with
SIGKILL while they wait, and again once the broker is back and the follower printed the first
(on loopback the rest is usually delivered by then; a kill between the broker's commit and the
device's journal entry is the duplicate case ``test_alarm_core`` covers). After the restarts
every alarm is at the broker exactly once, in order, and the follower printed each.

The alarms are put in the queue through ``AlarmQueue`` (the daemon's own code) while
``dvrlinkd`` is stopped: the daemon has no local command that raises an alarm (the HAL and the
modem service call ``AlarmQueue.raise_alarm`` inside it). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from support.presence import Program
from support.status import status_or_none
from support.waiting import wait_until_async

from dvrlink.broker.state import read_info
from dvrlink.broker.tls import client_context
from dvrlink.daemon.alarms import JOURNAL_FILE, AlarmQueue, read_journal
from dvrlink.protocol.alarm_wire import AlarmKind
from dvrlink.protocol.identity import b64encode_key

BIN = Path(sys.executable).parent
SERIAL = "DL-0015-0003"
PASSWORD = "s3cret-pass"
BOUND = 60.0
COUNT = 1000

pytestmark = pytest.mark.integration


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), BOUND)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_alarms_queued_while_the_broker_is_down_survive_sigkill_and_arrive_once_in_order(
    tmp_path: Path,
) -> None:
    for name in ("dvrlinkd", "dvrlink-broker", "dvrlink"):
        if not (BIN / name).exists():
            pytest.skip(f"the {name} script is not installed (run `make venv`)")
    broker_state, device_state, home = tmp_path / "broker", tmp_path / "device", tmp_path / "viewer"
    udp_port, https_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "DVRLINK_HOME")}
    broker_args = (
        str(BIN / "dvrlink-broker"), "serve", "--state-dir", str(broker_state), "--udp-port", str(udp_port),
        "--https-port", str(https_port), "--turn-port", "0", "--presence-tcp-port", "0",
    )  # fmt: skip
    config = tmp_path / "dvrlinkd.toml"

    async def start_daemon() -> Program:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "dvrlinkd"), "run", "--config", str(config), stderr=asyncio.subprocess.PIPE, env=env
        )
        return Program(proc, BOUND)

    async def kill(program: Program) -> None:
        program.proc.send_signal(signal.SIGKILL)
        await program.proc.wait()
        await program.stop()  # reaps the reader

    async def main() -> None:
        broker = await Program.start(*broker_args, bound=BOUND, env=env)
        daemon: Program | None = None
        follower: asyncio.subprocess.Process | None = None
        try:
            await broker.wait_for_line("dvrlink-broker ready")
            info = read_info(broker_state)
            config.write_text(
                f'[device]\nserial = "{SERIAL}"\nstate_dir = "{device_state}"\n'
                f'runtime_dir = "{tmp_path / "run"}"\n'
                f'[broker]\nhost = "127.0.0.1"\nport = {udp_port}\n'
                f'public_key = "{b64encode_key(info.public_key)}"\n'
                '[presence]\ntransport = "udp"\nkeepalive_interval_s = 2.0\nreply_timeout_s = 0.5\n'
                "learn_keepalive = false\n"
            )
            label = await _run(
                str(BIN / "dvrlinkd"), "pairing-code", "--create", "--config", str(config), env=env
            )
            code = re.search(r"pairing code:\s*(\S+)", label).group(1)  # type: ignore[union-attr]
            daemon = await start_daemon()
            await daemon.wait_for_line("registered")
            await _run(
                str(BIN / "dvrlink-broker"), "user", "add", "alice", "--password-stdin", "--state-dir",
                str(broker_state), stdin=f"{PASSWORD}\n".encode(), env=env,
            )  # fmt: skip
            viewer = (str(BIN / "dvrlink"), "--home", str(home))
            await _run(
                *viewer, "login", "--broker", f"https://127.0.0.1:{https_port}", "--user", "alice",
                "--password-stdin", "--cacert", str(info.cert), stdin=f"{PASSWORD}\n".encode(), env=env,
            )  # fmt: skip
            await _run(*viewer, "pair", SERIAL, code, env=env)
            assert await daemon.stop() == 0
            daemon = None

            # the broker goes down; 1,000 alarms are raised and wait in the device's queue
            assert await broker.stop() == 0
            queue = AlarmQueue.open(device_state)
            for seq in range(1, COUNT + 1):
                queue.raise_alarm(AlarmKind.SIGNAL_LOST, channel=seq % 16, detail=f"alarm {seq}")
            queue.close()

            daemon = await start_daemon()
            await daemon.wait_for_line(
                rf"alarm queue .*: {COUNT} alarms \(seq 1-{COUNT}\) wait for the broker"
            )
            await daemon.wait_for_line("did not answer the handshake")  # the broker is down
            await kill(daemon)
            daemon = None
            journal = read_journal((device_state / JOURNAL_FILE).read_bytes())
            assert journal is not None and len(journal.records) == COUNT

            # the broker comes back, with a follower; the daemon is killed again mid-delivery
            broker = await Program.start(*broker_args, bound=BOUND, env=env)
            await broker.wait_for_line("dvrlink-broker ready")
            follower = await asyncio.create_subprocess_exec(
                *viewer, "events", SERIAL, "--follow", "--after", "0",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            assert follower.stdout is not None
            daemon = await start_daemon()
            try:
                first = await asyncio.wait_for(follower.stdout.readline(), BOUND)
            except TimeoutError:
                follower.kill()
                _, err = await follower.communicate()
                raise AssertionError(
                    f"the follower printed nothing in {BOUND} s; its stderr: {err.decode()}\ndaemon:\n"
                    + "".join(daemon.lines)
                    + "\nbroker:\n"
                    + "".join(broker.lines)
                ) from None
            await kill(daemon)
            daemon = None
            left = read_journal((device_state / JOURNAL_FILE).read_bytes())
            assert left is not None
            print(f"killed with {len(left.records)} of {COUNT} alarms still queued")
            daemon = await start_daemon()
            lines = [first.decode()]
            while len(lines) < COUNT:
                line = await asyncio.wait_for(follower.stdout.readline(), BOUND)
                assert line, f"the follower ended after {len(lines)} lines"
                lines.append(line.decode())
            assert [int(re.search(r"alarm (\d+)$", x.rstrip()).group(1)) for x in lines] == list(  # type: ignore[union-attr]
                range(1, COUNT + 1)
            )
            assert all(f"{SERIAL}  SignalLost  channel " in x for x in lines)

            connector = aiohttp.TCPConnector(ssl=client_context(info.cert))
            async with aiohttp.ClientSession(f"https://localhost:{https_port}", connector=connector) as http:
                async with http.post("/v1/tokens", json={"username": "alice", "password": PASSWORD}) as resp:
                    auth = {"Authorization": "Bearer " + (await resp.json())["token"]}
                async with http.get(f"/v1/devices/{SERIAL}/events?after=0&limit=1000", headers=auth) as resp:
                    stored = (await resp.json())["events"]
            assert [e["seq"] for e in stored] == list(range(1, COUNT + 1))  # once each, in order
            await daemon.wait_for_line("registered")

            # Stored at the broker is not yet acknowledged to the device: wait for the last ACK
            # (its status file counts the alarms still waiting) before stopping it.
            def pending() -> int | None:
                status = status_or_none(tmp_path / "run")
                return None if status is None else status.alarms_pending

            await wait_until_async(
                "the daemon's last acknowledgement", lambda: pending() == 0, timeout=BOUND, seen=pending
            )
            assert await daemon.stop() == 0
            daemon = None
            assert read_journal((device_state / JOURNAL_FILE).read_bytes()).records == ()  # type: ignore[union-attr]
        finally:
            if follower is not None and follower.returncode is None:
                follower.kill()
                await follower.wait()
            if daemon is not None:
                await kill(daemon)
            await broker.stop()

    asyncio.run(asyncio.wait_for(main(), 8 * BOUND))
