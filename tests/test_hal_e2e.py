"""The HAL with real processes: dvrlinkd with a synthetic capture device, the broker, and
``dvrlink channels``; ``dvrlinkd synthetic`` unplugs a camera of the running daemon, and
``dvrlinkd check-config`` names what is wrong with a capture device."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.loopback import (
    BIN,
    Daemon,
    Viewer,
    loopback_services_toml,
    paired_recorder,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIAL = "DL-HAL-0001"
CAPTURE = """
[[capture]]
name = "front"
backend = "synthetic"
channels = 4
format = "ahd-1080p25"
lost_after_s = 0.2
"""


def dvrlinkd(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dvrlinkd"), *args, "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Daemon, Viewer]]:
    with paired_recorder(tmp_path, SERIAL, loopback_services_toml() + CAPTURE) as rig:
        yield rig


def channel_rows(viewer: Viewer) -> dict[int, dict[str, object]]:
    reply = json.loads(viewer.run("channels", SERIAL, "--json").stdout)
    (device,) = reply["devices"]
    assert (device["name"], device["backend"], device["error"]) == ("front", "synthetic", ""), device
    return {row["channel"]: row for row in device["channels"]}


def test_channels_lists_the_cameras_and_follows_an_unplug(rig: tuple[Daemon, Viewer]) -> None:
    daemon, viewer = rig
    table = viewer.run("channels", SERIAL).stdout
    assert "front (synthetic)" in table, table
    assert table.count("locked") == 4 and table.count("ahd-1080p25") == 4, table

    unplug = dvrlinkd(daemon, "synthetic", "2", "unplug")
    assert unplug.returncode == 0, unplug.stderr
    wait_for(
        "channel 2 to show no video",
        lambda: channel_rows(viewer)[2]["signal"] == "no-video",
        30,
    )
    rows = channel_rows(viewer)
    assert [rows[c]["signal"] for c in range(4)] == ["locked", "locked", "no-video", "locked"], rows
    log = daemon.log.read_text()
    assert "front channel 2: SignalLost (no-video)" in log, log[-2000:]

    wait_for(
        "the SignalLost alarm in dvrlink events",
        lambda: "SignalLost  channel 2  front: no-video" in viewer.run("events", SERIAL).stdout,
        30,
    )
    status = dvrlinkd(daemon, "status")
    assert "capture front (synthetic): 3 of 4 channels with a picture" in status.stdout, status.stdout
    assert "  channel 2: no-video" in status.stdout, status.stdout

    assert dvrlinkd(daemon, "synthetic", "2", "plug", "cvbs-pal").returncode == 0
    wait_for("channel 2 back in PAL", lambda: channel_rows(viewer)[2]["format"] == "cvbs-pal", 30)
    assert "front channel 2: SignalRestored (cvbs-pal)" in daemon.log.read_text()
    wait_for(
        "the SignalRestored alarm after the SignalLost one",
        lambda: "SignalRestored  channel 2  front: cvbs-pal" in viewer.run("events", SERIAL).stdout,
        30,
    )
    history = viewer.run("events", SERIAL).stdout
    assert history.index("SignalLost") < history.index("SignalRestored"), history


def test_synthetic_and_check_config_say_what_is_wrong(tmp_path: Path) -> None:
    broker_key = base64.b64encode(bytes(range(1, 33))).decode()
    home = tmp_path / "dev"
    home.mkdir()
    config = home / "dvrlinkd.toml"
    base = f'[device]\nserial = "{SERIAL}"\nstate_dir = "state"\nruntime_dir = "run"\n'
    base += f'[broker]\nhost = "127.0.0.1"\npublic_key = "{broker_key}"\n'
    daemon = Daemon(SERIAL, home, config)

    config.write_text(base + '[[capture]]\nbackend = "synthetic"\ncontrol = "missing/dir/ctl"\n')
    checked = dvrlinkd(daemon, "check-config")
    assert checked.returncode == 78, checked
    assert "capture device synthetic1 (synthetic)" in checked.stderr and "does not exist" in checked.stderr

    config.write_text(base + '[[capture]]\nbackend = "synthetic"\n')
    checked = dvrlinkd(daemon, "check-config")
    assert checked.returncode == 0, checked.stderr
    assert "capture device synthetic1 (synthetic): synthetic test pattern, 4 channels" in checked.stdout

    not_running = dvrlinkd(daemon, "synthetic", "1", "unplug")
    assert not_running.returncode == 2 and "start dvrlinkd first" in not_running.stderr
    assert not (home / "run").exists(), "a refused command creates nothing"

    config.write_text(base + "[capture]\nbackend = 'synthetic'\n")
    single = dvrlinkd(daemon, "check-config")
    assert single.returncode == 78 and "[[capture]] (double brackets" in single.stderr, single.stderr
    config.write_text(base + '[[capture]]\nbackend = "hdmi"\n')
    unknown = dvrlinkd(daemon, "check-config")
    assert unknown.returncode == 78 and "backend" in unknown.stderr and "synthetic" in unknown.stderr
