"""The viewer's home directory: resolution, 0600 files, atomic writes, malformed files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.protocol.identity import b64encode_key, ed25519_public_bytes, fingerprint
from dvrlink.viewer.errors import ViewerError
from dvrlink.viewer.home import Login, Pin, ViewerHome, resolve_home

LOGIN = Login("https://broker.test:8443", "/etc/ca.pem", "alice", "tok-1", 1_700_000_000.0)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pin(seed: int = 1, paired_at: float = 1_700_000_000.0) -> Pin:
    key = ed25519_public_bytes(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))
    return Pin(key, fingerprint(key), paired_at)


def test_home_option_wins_over_environment_and_default(tmp_path: Path) -> None:
    env = {"DVRLINK_HOME": str(tmp_path / "env"), "HOME": str(tmp_path / "user")}
    assert resolve_home(str(tmp_path / "opt"), env) == tmp_path / "opt"
    assert resolve_home(None, env) == tmp_path / "env"
    assert resolve_home(None, {}) == Path("~/.config/dvrlink").expanduser()
    assert resolve_home(None, {"DVRLINK_HOME": ""}) == Path("~/.config/dvrlink").expanduser()


def test_missing_files_read_as_empty(tmp_path: Path) -> None:
    home = ViewerHome(tmp_path / "none")
    assert home.load_login() is None
    assert home.load_key() is None
    assert home.load_pins() == {}
    assert not home.path.exists()


def test_login_round_trips_with_mode_0600_and_private_directory(tmp_path: Path) -> None:
    home = ViewerHome(tmp_path / "home")
    home.save_login(LOGIN)
    assert home.load_login() == LOGIN
    assert _mode(home.login_path) == 0o600
    assert _mode(home.path) == 0o700
    assert json.loads(home.login_path.read_text())["token"] == "tok-1"
    assert sorted(p.name for p in home.path.iterdir()) == ["viewer.json"]  # no temp file left


def test_login_without_cacert_round_trips(tmp_path: Path) -> None:
    home = ViewerHome(tmp_path)
    login = Login("https://b.test", None, "bob", "t", 5.0)
    home.save_login(login)
    assert home.load_login() == login


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = ViewerHome(tmp_path)
    home.save_login(LOGIN)
    before = home.login_path.read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ViewerError) as err:
        home.save_login(Login("https://other.test", None, "bob", "tok-2", 1.0))
    assert str(home.login_path) in err.value.message
    assert "No space left on device" in err.value.message
    monkeypatch.undo()
    assert home.login_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["viewer.json"]


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"broker": "https://b", "username": "a", "token": "t"}', '"expires_at"'),
        ('{"broker": "https://b", "username": "a", "token": 5, "expires_at": 1}', '"token"'),
        ('{"broker": "https://b", "username": "a", "token": "t", "expires_at": "x"}', '"expires_at"'),
        ('{"broker": "https://b", "username": "a", "token": "t", "expires_at": 1, "cacert": 3}', '"cacert"'),
    ],
)
def test_malformed_login_file_is_named_and_never_overwritten(tmp_path: Path, content: str, what: str) -> None:
    home = ViewerHome(tmp_path)
    home.login_path.write_text(content)
    with pytest.raises(ViewerError) as err:
        home.load_login()
    message = err.value.message
    assert str(home.login_path) in message
    assert what in message
    assert "dvrlink login" in message  # says what to do
    with pytest.raises(ViewerError):
        home.save_login(LOGIN)
    assert home.login_path.read_text() == content


def test_non_utf8_login_file_is_malformed(tmp_path: Path) -> None:
    home = ViewerHome(tmp_path)
    home.login_path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ViewerError, match="not UTF-8"):
        home.load_login()


def test_viewer_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    home = ViewerHome(tmp_path / "h")
    key, created = home.load_or_create_key()
    assert created
    assert _mode(home.key_path) == 0o600
    again, created_again = home.load_or_create_key()
    assert not created_again
    assert ed25519_public_bytes(again) == ed25519_public_bytes(key)
    loaded = home.load_key()
    assert loaded is not None
    assert ed25519_public_bytes(loaded) == ed25519_public_bytes(key)


def test_malformed_viewer_key_is_named_and_never_replaced(tmp_path: Path) -> None:
    home = ViewerHome(tmp_path)
    home.key_path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    before = home.key_path.read_bytes()
    with pytest.raises(ViewerError) as err:
        home.load_or_create_key()
    assert str(home.key_path) in err.value.message
    assert "restore it from a backup" in err.value.message
    assert "\n" not in err.value.message
    assert home.key_path.read_bytes() == before


def test_pins_round_trip_sorted_with_mode_0600(tmp_path: Path) -> None:
    home = ViewerHome(tmp_path)
    home.save_pin("DL-0002", _pin(2))
    home.save_pin("DL-0001", _pin(1))
    assert home.load_pins() == {"DL-0001": _pin(1), "DL-0002": _pin(2)}
    assert _mode(home.pins_path) == 0o600
    data = json.loads(home.pins_path.read_text())
    assert list(data) == ["DL-0001", "DL-0002"]
    assert data["DL-0001"]["public_key"] == b64encode_key(_pin(1).public_key)
    home.save_pin("DL-0001", _pin(3, paired_at=5.0))
    assert home.load_pins()["DL-0001"] == _pin(3, paired_at=5.0)


def _pins_text(**changes: object) -> str:
    entry: dict[str, object] = {
        "public_key": b64encode_key(_pin(1).public_key),
        "fingerprint": _pin(1).fingerprint,
        "paired_at": 1.0,
    }
    entry.update(changes)
    return json.dumps({"DL-0001": entry})


@pytest.mark.parametrize(
    ("content", "what"),
    [
        ("", "not valid JSON"),
        ('["DL-0001"]', "not a JSON object"),
        ('{"dl 1": {}}', "serial 'dl 1' is not valid"),
        ('{"DL-0001": 5}', "entry for DL-0001"),
        (_pins_text(public_key="!!"), "public_key of DL-0001"),
        (_pins_text(public_key=b64encode_key(b"x" * 31)), "32 bytes"),
        (_pins_text(fingerprint=_pin(2).fingerprint), "does not match its public key"),
        (_pins_text(paired_at=None), '"paired_at"'),
        (_pins_text(paired_at=True), '"paired_at"'),
    ],
)
def test_malformed_pins_are_named_and_never_overwritten(tmp_path: Path, content: str, what: str) -> None:
    home = ViewerHome(tmp_path)
    home.pins_path.write_text(content)
    with pytest.raises(ViewerError) as err:
        home.load_pins()
    assert str(home.pins_path) in err.value.message
    assert what in err.value.message
    assert "pair your devices again" in err.value.message
    with pytest.raises(ViewerError):
        home.save_pin("DL-0009", _pin(9))
    assert home.pins_path.read_text() == content


def test_home_that_is_a_file_gives_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    home = ViewerHome(blocker)
    with pytest.raises(ViewerError) as err:
        home.save_login(LOGIN)
    assert "--home DIR" in err.value.message
    assert str(blocker) in err.value.message
