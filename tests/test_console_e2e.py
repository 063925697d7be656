"""The serial console end to end with real processes: two brokers, a real ``dvrlinkd run`` with
its console on a PTY cable, and the ``dvrlink`` CLI on the cable's other end.

``dvrlink provision --port`` moves the recorder from broker A to broker B and sets its APN; the
daemon applies both without a restart (same pid) and comes online at B, as ``dvrlinkd status``
shows. Then ``dvrlink pair --port`` pairs a viewer of broker B with the code read over the wire.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.console import PtyCable

from hil.loopback import BIN, Broker, Daemon, Viewer, add_user, make_daemon, start_broker, stop_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIAL = "DL-CONS-0001"


def dvrlinkd_status(daemon: Daemon) -> dict[str, object]:
    run = subprocess.run(
        [str(BIN / "dvrlinkd"), "status", "--json", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    doc: dict[str, object] = json.loads(run.stdout.splitlines()[0] if run.returncode else run.stdout)
    return doc


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Broker, Broker, Daemon, PtyCable]]:
    started: list[Daemon | Broker] = []
    with PtyCable() as cable:
        try:
            first = start_broker(tmp_path / "broker-a")
            started.append(first)
            second = start_broker(tmp_path / "broker-b")
            started.append(second)
            add_user(second.state_dir, "alice", "correct horse")
            daemon = make_daemon(
                tmp_path,
                SERIAL,
                first,
                keepalive_interval=1.0,
                reply_timeout=0.3,
                extra_toml=f'[console]\nport = "{cable.device_path}"\n',
            )
            daemon.start()
            started.append(daemon)
            wait_for(f"{SERIAL} online at broker A", daemon.online, 30)
            cable.wait_for_device_output(b"Type help")
            yield first, second, daemon, cable
        finally:
            stop_all(list(reversed(started)))


def test_provision_moves_the_recorder_to_another_broker_and_pair_reads_the_code(
    rig: tuple[Broker, Broker, Daemon, PtyCable], tmp_path: Path
) -> None:
    first, second, daemon, cable = rig
    viewer = Viewer(tmp_path / "viewer")
    assert daemon.proc is not None
    pid = daemon.proc.pid

    shown = viewer.run("provision", "--port", cable.laptop_path)
    assert f"127.0.0.1:{first.udp_port}" in shown.stdout and "online" in shown.stdout, shown.stdout

    moved = viewer.run(
        "provision",
        "--port",
        cable.laptop_path,
        "--broker",
        f"127.0.0.1:{second.udp_port}",
        "--broker-key",
        second.public_key,
        "--apn",
        "iot.example",
        check=False,
    )
    assert moved.returncode == 0, moved.stderr
    assert f"saved on {SERIAL}" in moved.stdout and 'apn = "iot.example"' in moved.stdout, moved.stdout

    def at_second_broker() -> bool:
        status = daemon.status()
        return bool(
            status
            and status.get("state") == "online"
            and status.get("broker") == f"127.0.0.1:{second.udp_port}"
        )

    wait_for(f"{SERIAL} online at broker B", at_second_broker, 30)
    status = dvrlinkd_status(daemon)
    assert status["running"] is True and status["pid"] == pid, status  # applied in place: same process
    assert status["broker"] == f"127.0.0.1:{second.udp_port}", status
    wait_for("broker B sees the recorder", lambda: second.health()["online"] == 1, 15)
    config = daemon.config.read_text()
    assert f"port = {second.udp_port}" in config and 'apn = "iot.example"' in config, config
    after = viewer.run("provision", "--port", cable.laptop_path, "--json")
    doc = json.loads(after.stdout)
    assert doc["status"]["apn"] == "iot.example" and doc["status"]["state"] == "online", doc

    viewer.login(second, "alice", "correct horse")
    paired = viewer.run("pair", "--port", cable.laptop_path, check=False)
    assert paired.returncode == 0, paired.stderr
    assert f"read the pairing code of {SERIAL} from {cable.laptop_path}" in paired.stdout, paired.stdout
    assert f"paired {SERIAL}" in paired.stdout, paired.stdout
    viewers = json.loads((daemon.home / "state" / "viewers.json").read_text())
    assert [v["account"] for v in viewers] == ["alice"], viewers
    listing = viewer.run("devices").stdout
    assert SERIAL in listing and "ok" in listing, listing
    assert daemon.proc.poll() is None
    assert b"PRIVATE KEY" not in cable.device_output()


def test_a_refused_value_leaves_the_running_recorder_as_it_was(
    rig: tuple[Broker, Broker, Daemon, PtyCable], tmp_path: Path
) -> None:
    first, _, daemon, cable = rig
    viewer = Viewer(tmp_path / "viewer")
    before = daemon.config.read_bytes()
    refused = viewer.run("provision", "--port", cable.laptop_path, "--broker", "no such host!", check=False)
    assert refused.returncode == 1 and "the recorder refused set" in refused.stderr, refused.stderr
    wrong_baud = viewer.run(
        "provision", "--port", cable.laptop_path, "--baud", "9600", "--timeout", "2", check=False
    )
    assert wrong_baud.returncode == 1, wrong_baud.stderr
    assert "no answer in machine mode at 9600 baud: check the baud rate and cable" in wrong_baud.stderr
    assert daemon.config.read_bytes() == before
    status = daemon.status()
    assert status is not None and status["broker"] == f"127.0.0.1:{first.udp_port}" and daemon.online()
    assert daemon.proc is not None and daemon.proc.poll() is None
