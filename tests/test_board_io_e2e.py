"""Board I/O with real processes: dvrlinkd (its real gpiod backend), the broker and ``dvrlink
relay`` through a session. This host has no GPIO chip (and no gpio-sim), so the tables name a
chip that is not there: the daemon keeps running, lists each line with the kernel's reason, and
the viewer gets that reason for a switch it cannot do. tests/hil/test_board_gpio.py does the
same against a real chip in the guest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.loopback import Daemon, Viewer, loopback_services_toml, paired_recorder

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIAL = "DL-GPIO-0001"
CHIP = "/dev/gpiochip-absent-in-this-test"
BOARD_IO = f"""
[[alarm_input]]
name = "door"
chip = "{CHIP}"
line = 3

[[relay]]
name = "siren"
chip = "{CHIP}"
line = 4
"""


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Daemon, Viewer]]:
    with paired_recorder(tmp_path, SERIAL, loopback_services_toml() + BOARD_IO) as rig:
        yield rig


def test_dvrlink_relay_lists_the_lines_with_why_they_are_not_in_use(rig: tuple[Daemon, Viewer]) -> None:
    daemon, viewer = rig
    reply = json.loads(viewer.run("relay", SERIAL, "--json").stdout)
    (door,) = reply["inputs"]
    (siren,) = reply["relays"]
    assert (door["name"], door["state"]) == ("door", "unknown"), door
    assert door["error"].startswith(f"no GPIO chip {CHIP} (No such file or directory)"), door
    assert (siren["name"], siren["on"]) == ("siren", False) and "gpiodetect" in siren["error"], siren

    table = viewer.run("relay", SERIAL).stdout
    assert f"relay  siren  {CHIP}:4  not in use: no GPIO chip {CHIP}" in table, table

    refused = viewer.run("relay", SERIAL, "siren", "on", check=False)
    assert refused.returncode == 1, refused
    assert f"the device refused: relay siren is not usable: no GPIO chip {CHIP}" in refused.stderr, refused
    log = daemon.log.read_text()
    assert f"relay siren: no GPIO chip {CHIP}" in log and "trying again every 30 s" in log, log[-2000:]
