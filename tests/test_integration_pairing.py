"""Pairing with real processes: broker, dvrlinkd and the dvrlink CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvrlink.protocol.pairing import PairingUri
from hil.loopback import Broker, Daemon, Viewer, add_user, make_daemon, start_broker, stop_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Broker, list[Daemon], Viewer]]:
    started: list[Daemon | Broker] = []
    try:
        broker = start_broker(tmp_path / "broker")
        started.append(broker)
        add_user(broker.state_dir, "alice", "correct horse")
        daemons = [
            make_daemon(tmp_path, f"DL-PAIR-000{i}", broker, keepalive_interval=1.0, reply_timeout=0.3)
            for i in (1, 2)
        ]
        for daemon in daemons:
            daemon.start()
            started.append(daemon)
        for daemon in daemons:
            wait_for(f"{daemon.serial} online", daemon.online, 30)
        viewer = Viewer(tmp_path / "viewer")
        viewer.login(broker, "alice", "correct horse")
        yield broker, daemons, viewer
    finally:
        stop_all(list(reversed(started)))


def wrong(code: str) -> str:
    return ("A" if code[0] != "A" else "B") + code[1:]


def authorised_viewers(daemon: Daemon) -> list[dict[str, object]]:
    path = daemon.home / "state" / "viewers.json"
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    return list(doc["viewers"] if isinstance(doc, dict) else doc)


def test_right_code_pairs_and_wrong_codes_are_limited(rig: tuple[Broker, list[Daemon], Viewer]) -> None:
    _broker, (first, second), viewer = rig

    # The right code pairs; the device records the viewer, the viewer pins the device key.
    uri = PairingUri.parse(first.pairing_uri())
    paired = viewer.run("pair", first.serial, uri.code)
    assert "paired DL-PAIR-0001" in paired.stdout
    assert len(authorised_viewers(first)) == 1
    listing = viewer.run("devices").stdout
    assert "DL-PAIR-0001" in listing and "yes" in listing and "ok" in listing

    # Five wrong codes fail; the sixth try is refused even with the right code.
    code = PairingUri.parse(second.pairing_uri()).code
    for attempt in range(5):
        result = viewer.run("pair", second.serial, wrong(code), check=False)
        assert result.returncode != 0, attempt
        assert "wrong" in result.stderr.lower(), result.stderr
    sixth = viewer.run("pair", second.serial, code, check=False)
    assert sixth.returncode != 0
    assert "too many" in sixth.stderr.lower() or "rate" in sixth.stderr.lower(), sixth.stderr
    assert authorised_viewers(second) == []
    status = viewer.run("status", second.serial, check=False)
    assert status.returncode != 0 and "not paired" in status.stderr


def test_errors_say_what_to_do(rig: tuple[Broker, list[Daemon], Viewer]) -> None:
    broker, (first, _), viewer = rig
    uri = first.pairing_uri()
    first.stop()
    wait_for("the broker sees the device leave", lambda: broker.health()["online"] == 1, 15)
    offline = viewer.run("pair", uri, check=False)
    assert offline.returncode != 0 and "offline" in offline.stderr
    broker.stop()
    unreachable = viewer.run("devices", check=False)
    assert unreachable.returncode != 0 and "cannot reach the broker" in unreachable.stderr


def test_other_accounts_wrong_codes_do_not_lock_the_owner_out(
    rig: tuple[Broker, list[Daemon], Viewer], tmp_path: Path
) -> None:
    """Two accounts that know the serial spend their own tries (3 each at the broker), six wrong
    codes in all reach the device, and the owner still pairs with the right code: the device's
    own limit sits above what the broker lets through."""
    broker, (_, device), owner = rig
    code = PairingUri.parse(device.pairing_uri()).code
    for name in ("mallory", "trudy"):
        add_user(broker.state_dir, name, "guessing all day")
        attacker = Viewer(tmp_path / name)
        attacker.login(broker, name, "guessing all day")
        refusals = []
        for _ in range(4):  # bounded: the broker refuses this account after 3 wrong codes
            result = attacker.run("pair", device.serial, wrong(code), check=False)
            assert result.returncode != 0
            refusals.append(result.stderr.strip().splitlines()[-1])
        assert all("wrong" in line.lower() for line in refusals[:3]), refusals
        assert "too many" in refusals[3].lower() or "rate" in refusals[3].lower(), refusals
    paired = owner.run("pair", device.serial, code, check=False)
    assert paired.returncode == 0 and f"paired {device.serial}" in paired.stdout, (
        f"the owner was locked out by other accounts' wrong codes:\n{paired.stdout}{paired.stderr}"
    )
    assert len(authorised_viewers(device)) == 1
