"""The device's state directory: key and secret created once, kept, never silently replaced."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from dvrlink.daemon import modem_service
from dvrlink.daemon.broker_nodes import BrokerNode, NodeMemory
from dvrlink.daemon.state import (
    DEVICE_KEY_FILE,
    LOCK_FILE,
    PAIRING_FAILURES_FILE,
    PAIRING_SECRET_FILE,
    STATE_FILES,
    SUPERVISOR_LOG_FILE,
    VIEWERS_FILE,
    AlreadyRunning,
    DeviceState,
    NotCreated,
    OnCorrupt,
    StateError,
    StateFile,
    Viewer,
    check_state_files,
)
from dvrlink.modem.accounting import AccountingConfig, AccountingLedger
from dvrlink.modem.apn import ApnMemory, ApnMemoryFile, ApnSettings
from dvrlink.modem.ladder import LadderFile, LadderState
from dvrlink.protocol.identity import ed25519_public_bytes
from dvrlink.protocol.pairing import normalize_code


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_created_0600_and_reloaded_identical(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "nested"  # created on first use
    key = DeviceState(state_dir).device_key()
    path = state_dir / DEVICE_KEY_FILE
    assert mode(path) == 0o600
    assert mode(state_dir) == 0o700
    before = path.read_bytes()
    again = DeviceState(state_dir).device_key()
    assert ed25519_public_bytes(again) == ed25519_public_bytes(key)
    assert path.read_bytes() == before
    assert [p.name for p in state_dir.iterdir()] == [DEVICE_KEY_FILE]  # no temporary files left


@pytest.mark.parametrize("content", [b"garbage\n", b"", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_corrupt_key_is_an_error_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / DEVICE_KEY_FILE
    path.write_bytes(content)
    with pytest.raises(
        StateError, match=f"{path} is not a readable PEM private key.*restore it from a backup"
    ):
        DeviceState(tmp_path).device_key()
    assert path.read_bytes() == content


def test_key_of_the_wrong_type_is_an_error(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from dvrlink.protocol.identity import private_key_to_pem

    pem = private_key_to_pem(X25519PrivateKey.generate())
    (tmp_path / DEVICE_KEY_FILE).write_bytes(pem)
    with pytest.raises(StateError, match="not an Ed25519 key"):
        DeviceState(tmp_path).device_key()
    assert (tmp_path / DEVICE_KEY_FILE).read_bytes() == pem


def test_pairing_secret_created_once(tmp_path: Path) -> None:
    state = DeviceState(tmp_path, rng=lambda n: bytes(range(n)))
    secret = state.pairing_secret()
    assert secret == normalize_code(secret)
    assert mode(tmp_path / PAIRING_SECRET_FILE) == 0o600
    assert DeviceState(tmp_path, rng=lambda n: b"\xff" * n).pairing_secret() == secret


def test_corrupt_pairing_secret(tmp_path: Path) -> None:
    (tmp_path / PAIRING_SECRET_FILE).write_text("short\n")
    with pytest.raises(StateError, match="does not hold a pairing code"):
        DeviceState(tmp_path).pairing_secret()
    assert (tmp_path / PAIRING_SECRET_FILE).read_text() == "short\n"


def test_viewers_add_is_idempotent(tmp_path: Path) -> None:
    state = DeviceState(tmp_path)
    assert state.viewers() == []
    a, b = b"\x01" * 32, b"\x02" * 32
    assert state.add_viewer(a, "alice", 1000.0) is True
    assert state.add_viewer(a, "alice", 2000.0) is False
    assert state.add_viewer(b, "bob", 3000.0) is True
    assert DeviceState(tmp_path).viewers() == [Viewer(a, "alice", 1000.0), Viewer(b, "bob", 3000.0)]
    assert mode(tmp_path / VIEWERS_FILE) == 0o600
    stored = json.loads((tmp_path / VIEWERS_FILE).read_text())
    assert stored[0] == {
        "public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "account": "alice",
        "paired_at": 1000.0,
    }


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[{", "is not valid JSON"),
        ('{"a": 1}', "valid JSON but not a list"),
        ('[{"public_key": "AQ==", "account": "x", "paired_at": 1}]', "valid JSON but not a list"),
        (
            '[{"public_key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "account": 5, "paired_at": 1}]',
            "not a list",
        ),
        ("[1]", "not a list"),
    ],
)
def test_malformed_viewers_file_is_an_error_and_untouched(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / VIEWERS_FILE
    path.write_text(content)
    state = DeviceState(tmp_path)
    with pytest.raises(StateError, match=expected):
        state.viewers()
    with pytest.raises(StateError, match="leaves it untouched"):
        state.add_viewer(b"\x01" * 32, "alice", 1.0)
    assert path.read_text() == content


def test_pairing_failures_round_trip_and_malformed(tmp_path: Path) -> None:
    state = DeviceState(tmp_path)
    assert state.pairing_failures() == []
    state.save_pairing_failures([10.0, 20.5])
    assert DeviceState(tmp_path).pairing_failures() == [10.0, 20.5]
    assert mode(tmp_path / PAIRING_FAILURES_FILE) == 0o600
    (tmp_path / PAIRING_FAILURES_FILE).write_text('["yesterday"]')
    with pytest.raises(StateError, match="not a list of unix times"):
        state.pairing_failures()
    assert (tmp_path / PAIRING_FAILURES_FILE).read_text() == '["yesterday"]'


def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"cannot create the state directory .*set \[device\] state_dir"):
        DeviceState(blocker / "state").device_key()


# --- every state file checked at start, one way for each (issue 10, defect 7) ------------------

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STAMP = "20260101T000000Z"


def full_state_dir(path: Path) -> Path:
    """A state directory with every file the daemon keeps, each written by its own code."""
    state = DeviceState(path)
    state.device_key()
    state.pairing_secret()
    state.add_viewer(b"\x01" * 32, "alice", 1.0)
    state.save_pairing_failures([NOW - 10])
    state.save_console_pin_failures([NOW - 20])
    NodeMemory(path).save(BrokerNode("node2.example.net", 3478, "192.0.2.2"))
    modem = path / modem_service.MODEM_DIR
    modem.mkdir()
    ApnMemoryFile(modem / modem_service.APN_MEMORY_FILE).save(
        ApnMemory({"8944": ApnSettings("internet", "", "", "")})
    )
    LadderFile(modem / modem_service.LADDER_FILE).save(LadderState())
    (path / SUPERVISOR_LOG_FILE).write_text('{"entries": [[1, 1800000000, 500, 120], [4, 0, 0, 1]]}')
    ledger = AccountingLedger(modem / modem_service.ACCOUNTING_FILE, AccountingConfig())
    ledger.path.write_bytes(ledger.core.to_bytes())
    return path


def test_the_check_knows_every_file_the_daemon_writes(tmp_path: Path) -> None:
    names = {spec.name for spec in STATE_FILES}
    written = {str(p.relative_to(tmp_path)) for p in full_state_dir(tmp_path).rglob("*") if p.is_file()}
    assert written == names, (
        f"written but not checked: {written - names}; checked, never written: {names - written}"
    )
    assert check_state_files(tmp_path, NOW) == ()
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == names


@pytest.mark.parametrize("spec", STATE_FILES, ids=lambda spec: spec.name)
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_corrupt_state_file_stops_or_is_moved_aside(tmp_path: Path, spec: StateFile, damage: str) -> None:
    full_state_dir(tmp_path)
    path = tmp_path / spec.name
    good = path.read_bytes()
    bad = good[: len(good) // 2] if damage == "truncated" else b""
    path.write_bytes(bad)
    if spec.on_corrupt is OnCorrupt.STOP:
        with pytest.raises(StateError) as caught:
            check_state_files(tmp_path, NOW)
        message = str(caught.value)
        assert str(path) in message, message
        assert "restore it from a backup" in message, message
        assert path.read_bytes() == bad  # left as it was, for the operator
        assert not list(tmp_path.rglob("*.corrupt-*"))
    else:
        (moved,) = check_state_files(tmp_path, NOW)
        assert (moved.path, moved.aside) == (path, path.with_name(f"{path.name}.corrupt-{STAMP}"))
        assert str(path) in moved.problem and moved.if_lost
        assert not path.exists()
        assert moved.aside.read_bytes() == bad
        assert check_state_files(tmp_path, NOW) == ()  # the next start is clean


def test_viewers_file_with_the_wrong_shape_stops_the_start(tmp_path: Path) -> None:
    full_state_dir(tmp_path)
    (tmp_path / VIEWERS_FILE).write_text('{"viewers": []}')
    with pytest.raises(StateError, match=r"viewers\.json is valid JSON but not a list.*pair again"):
        check_state_files(tmp_path, NOW)


def test_nothing_is_moved_aside_when_the_start_stops(tmp_path: Path) -> None:
    full_state_dir(tmp_path)
    (tmp_path / VIEWERS_FILE).write_text("[")
    (tmp_path / PAIRING_SECRET_FILE).write_text("short")
    (tmp_path / PAIRING_FAILURES_FILE).write_text("[")
    with pytest.raises(StateError) as caught:
        check_state_files(tmp_path, NOW)
    assert "pairing_secret" in str(caught.value) and "viewers.json" in str(caught.value)
    assert (tmp_path / PAIRING_FAILURES_FILE).read_text() == "["


def test_an_unreadable_state_file_stops_the_start(tmp_path: Path) -> None:
    full_state_dir(tmp_path)
    (tmp_path / PAIRING_FAILURES_FILE).unlink()
    (tmp_path / PAIRING_FAILURES_FILE).mkdir()  # unreadable as a file, also for root
    with pytest.raises(StateError, match=r"cannot read .*pairing_failures.json"):
        check_state_files(tmp_path, NOW)


def test_a_second_corrupt_copy_gets_its_own_name(tmp_path: Path) -> None:
    path = tmp_path / PAIRING_FAILURES_FILE
    for expected in (f"{path.name}.corrupt-{STAMP}", f"{path.name}.corrupt-{STAMP}-2"):
        path.write_text("[")
        (moved,) = check_state_files(tmp_path, NOW)
        assert moved.aside.name == expected


def test_read_only_reads_create_nothing(tmp_path: Path) -> None:
    state = DeviceState(tmp_path / "state")
    with pytest.raises(NotCreated, match=r"no device key yet.*pairing-code --create"):
        state.device_key(create=False)
    with pytest.raises(NotCreated, match="no pairing code yet"):
        state.pairing_secret(create=False)
    assert not (tmp_path / "state").exists()
    key = state.device_key()
    assert ed25519_public_bytes(state.device_key(create=False)) == ed25519_public_bytes(key)


def test_running_lock_is_exclusive_and_names_the_holder(tmp_path: Path) -> None:
    state = DeviceState(tmp_path / "state")
    with state.running_lock():
        assert (tmp_path / "state" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        second = DeviceState(tmp_path / "state").running_lock()
        with pytest.raises(AlreadyRunning, match=rf"already running \(pid {os.getpid()}\)"), second:
            pass
    with state.running_lock():  # released on exit
        pass
