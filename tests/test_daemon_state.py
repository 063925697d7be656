"""The device's state directory: key and secret created once, kept, never silently replaced."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from dvrlink.daemon.state import (
    DEVICE_KEY_FILE,
    PAIRING_FAILURES_FILE,
    PAIRING_SECRET_FILE,
    VIEWERS_FILE,
    DeviceState,
    StateError,
    Viewer,
)
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
