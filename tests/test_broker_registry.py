"""Broker registry: migrations, bindings, manifest, users, tokens, pairings, durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dvrlink.broker.registry import (
    MIGRATIONS,
    BindingVerdict,
    Registry,
    RegistryError,
    ScryptParams,
    TokenProblem,
    UserExistsError,
    token_hash,
)

CHEAP = ScryptParams(n=2**4, r=1, p=1)  # fast hashing for tests; the default is checked once below
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
T0 = 1_700_000_000.0


def open_registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry.sqlite3", password_params=CHEAP)


def test_migrates_an_empty_file_and_reopens_idempotently(tmp_path: Path) -> None:
    reg = open_registry(tmp_path)
    assert reg.schema_version == len(MIGRATIONS)
    assert (tmp_path / "registry.sqlite3").stat().st_mode & 0o777 == 0o600  # password hashes inside
    db = sqlite3.connect(tmp_path / "registry.sqlite3")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"devices", "users", "tokens", "pairings", "pair_failures", "refusals"} <= tables
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    reg.close()
    again = open_registry(tmp_path)
    assert again.schema_version == len(MIGRATIONS)
    assert again.device("DL-0001") is not None
    again.close()


def test_applies_only_missing_steps_and_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    Registry(path, migrations=MIGRATIONS).close()
    extra = (*MIGRATIONS, ("CREATE TABLE notes (text TEXT)",))
    reg = Registry(path, migrations=extra)
    assert reg.schema_version == len(MIGRATIONS) + 1
    reg.close()
    with pytest.raises(RegistryError, match="newer than this broker knows"):
        Registry(path, migrations=MIGRATIONS)


def test_failed_migration_step_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    broken = (*MIGRATIONS, ("CREATE TABLE notes (text TEXT)", "THIS IS NOT SQL"))
    with pytest.raises(RegistryError):
        Registry(path, migrations=broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # a failed creation leaves nothing behind
    Registry(path).close()
    with pytest.raises(RegistryError):
        Registry(path, migrations=broken)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'notes'").fetchone()[0] == 0
    db.close()
    assert Registry(path).schema_version == len(MIGRATIONS)


def test_not_a_database_and_missing_directory_give_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "registry.sqlite3"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError, match="not a usable registry"):
        Registry(bad)
    with pytest.raises(RegistryError, match="does not exist"):
        Registry(tmp_path / "missing" / "registry.sqlite3")


def test_first_use_binds_and_another_key_is_refused(tmp_path: Path) -> None:
    reg = open_registry(tmp_path)
    assert reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False) is BindingVerdict.BOUND_NOW
    assert reg.check_binding("DL-0001", KEY_A, T0 + 1, manifest_only=False) is BindingVerdict.MATCHES
    assert reg.check_binding("DL-0001", KEY_B, T0 + 2, manifest_only=False) is BindingVerdict.KEY_MISMATCH
    device = reg.device("DL-0001")
    assert device is not None
    assert device.public_key == KEY_A
    assert device.source == "first-use"
    assert device.bound_at == T0
    reg.record_registration("DL-0001", ("203.0.113.5", 4000), T0 + 3)
    device = reg.device("DL-0001")
    assert device is not None
    assert (device.last_registered_at, device.last_address) == (T0 + 3, "203.0.113.5:4000")
    reg.record_registration("DL-0001", ("2001:db8::1", 4000), T0 + 4)
    assert reg.device("DL-0001").last_address == "[2001:db8::1]:4000"  # type: ignore[union-attr]
    assert reg.device("DL-0002") is None


def test_manifest_only_accepts_only_manifest_serials(tmp_path: Path) -> None:
    reg = open_registry(tmp_path)
    assert reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False) is BindingVerdict.BOUND_NOW
    assert reg.check_binding("DL-0002", KEY_A, T0, manifest_only=True) is BindingVerdict.NOT_IN_MANIFEST
    assert reg.device("DL-0002") is None  # nothing bound
    # bound on first use earlier does not count as manifest
    assert reg.check_binding("DL-0001", KEY_A, T0, manifest_only=True) is BindingVerdict.NOT_IN_MANIFEST
    reg.load_manifest({"DL-0003": KEY_B}, T0)
    assert reg.check_binding("DL-0003", KEY_B, T0, manifest_only=True) is BindingVerdict.MATCHES
    assert reg.check_binding("DL-0003", KEY_A, T0, manifest_only=True) is BindingVerdict.KEY_MISMATCH


def test_manifest_reports_conflicts_and_does_not_overwrite(tmp_path: Path) -> None:
    reg = open_registry(tmp_path)
    reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    reg.check_binding("DL-0002", KEY_A, T0, manifest_only=False)
    report = reg.load_manifest({"DL-0001": KEY_B, "DL-0002": KEY_A, "DL-0003": KEY_B}, T0 + 10)
    assert report.added == ("DL-0003",)
    assert report.confirmed == ("DL-0002",)
    assert [c.serial for c in report.conflicts] == ["DL-0001"]
    assert "left unchanged" in report.conflicts[0].describe()
    assert reg.device("DL-0001").public_key == KEY_A  # type: ignore[union-attr]
    assert reg.device("DL-0002").source == "manifest"  # type: ignore[union-attr]
    again = reg.load_manifest({"DL-0003": KEY_B}, T0 + 20)
    assert again.unchanged == ("DL-0003",)
    with pytest.raises(ValueError, match="DL-0004"):
        reg.load_manifest({"DL-0004": b"short"}, T0)
    with pytest.raises(ValueError, match="not valid"):
        reg.load_manifest({"bad serial": KEY_A}, T0)


def test_refusals_are_recorded(tmp_path: Path) -> None:
    reg = open_registry(tmp_path)
    reg.record_refusal("DL-0001", KEY_B, ("198.51.100.7", 5000), T0, "key-mismatch")
    [row] = reg.refusals("DL-0001")
    assert (row.public_key, row.address, row.reason) == (KEY_B, "198.51.100.7:5000", "key-mismatch")
    assert reg.refusals("DL-0009") == []


def test_users_and_passwords(tmp_path: Path) -> None:
    reg = open_registry(tmp_path)
    reg.create_user("alice", "correct horse", T0)
    with pytest.raises(UserExistsError, match="exists"):
        reg.create_user("alice", "other password", T0)
    with pytest.raises(ValueError, match="not valid"):
        reg.create_user("no spaces", "pw123456", T0)
    assert reg.authenticate("alice", "correct horse")
    assert not reg.authenticate("alice", "wrong horse")
    assert not reg.authenticate("bob", "correct horse")
    stored = sqlite3.connect(tmp_path / "registry.sqlite3").execute("SELECT * FROM users").fetchone()
    assert b"correct horse" not in b"".join(v for v in stored if isinstance(v, bytes))


def test_default_scrypt_parameters_verify(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry.sqlite3")
    reg.create_user("alice", "pw123456", T0)
    record = reg.password_record("alice")
    assert record is not None
    assert record.params == ScryptParams()
    assert reg.authenticate("alice", "pw123456")


def test_tokens_store_only_a_hash_and_expire(tmp_path: Path) -> None:
    reg = open_registry(tmp_path)
    reg.create_user("alice", "pw123456", T0)
    token = reg.issue_token("alice", T0, 3600)
    assert len(token) >= 40
    assert reg.token_user(token, T0 + 10) == "alice"
    assert reg.token_user(token, T0 + 3600) is TokenProblem.EXPIRED
    assert reg.token_user("not-a-token", T0) is TokenProblem.UNKNOWN
    rows = sqlite3.connect(tmp_path / "registry.sqlite3").execute("SELECT token_hash FROM tokens").fetchall()
    assert rows == [(token_hash(token),)]
    with pytest.raises(LookupError):
        reg.issue_token("nobody", T0, 3600)


def test_pairings_and_failure_window(tmp_path: Path) -> None:
    reg = open_registry(tmp_path)
    reg.create_user("alice", "pw123456", T0)
    reg.create_user("bob", "pw123456", T0)
    reg.check_binding("DL-0002", KEY_A, T0, manifest_only=False)
    reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    reg.record_pairing("alice", "DL-0002", KEY_B, T0 + 1)
    reg.record_pairing("alice", "DL-0001", KEY_B, T0 + 2)
    reg.record_pairing("alice", "DL-0001", KEY_A, T0 + 3)  # pairing again replaces
    assert [p.serial for p in reg.pairings_for("alice")] == ["DL-0001", "DL-0002"]
    pairing = reg.pairing("alice", "DL-0001")
    assert pairing is not None
    assert (pairing.viewer_key, pairing.paired_at) == (KEY_A, T0 + 3)
    assert reg.pairing("bob", "DL-0001") is None
    assert reg.pairings_for("bob") == []
    for i in range(5):
        reg.record_pair_failure("DL-0001", T0 + 100 * i)
    assert reg.pair_failures_since("DL-0001", T0) == 5
    assert reg.pair_failures_since("DL-0001", T0 + 250) == 2
    assert reg.pair_failures_since("DL-0002", T0) == 0

    assert reg.release_device("DL-0001")
    assert not reg.release_device("DL-0001")
    assert reg.device("DL-0001") is None
    assert reg.pairing("alice", "DL-0001") is None
    assert reg.pair_failures_since("DL-0001", T0) == 0
    assert reg.check_binding("DL-0001", KEY_B, T0 + 1000, manifest_only=False) is BindingVerdict.BOUND_NOW


_CHILD = """
import sys
from pathlib import Path
from dvrlink.broker.registry import Registry, ScryptParams
reg = Registry(Path(sys.argv[1]), password_params=ScryptParams(n=16, r=1, p=1))
reg.create_user("alice", "pw123456", 1.0)
token = reg.issue_token("alice", 1.0, 3600)
reg.check_binding("DL-0001", bytes(32), 1.0, manifest_only=False)
reg.record_pairing("alice", "DL-0001", bytes(32), 2.0)
print(token, flush=True)
sys.stdin.read()  # hold the connection open until killed
"""


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        token = child.stdout.readline().strip()
        assert token
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert child.stdin is not None
        child.stdin.close()
        assert child.stdout is not None
        child.stdout.close()
    reg = open_registry(tmp_path)
    assert reg.token_user(token, 10.0) == "alice"
    assert reg.device("DL-0001") is not None
    assert reg.pairing("alice", "DL-0001") is not None


def test_admin_connection_writes_while_another_is_open(tmp_path: Path) -> None:
    broker = open_registry(tmp_path)
    admin = open_registry(tmp_path)
    admin.create_user("carol", "pw123456", T0)
    admin.load_manifest({"DL-0009": KEY_A}, T0)
    admin.close()
    assert broker.authenticate("carol", "pw123456")
    assert broker.check_binding("DL-0009", KEY_A, T0, manifest_only=True) is BindingVerdict.MATCHES


def test_reports_are_kept_per_device_and_survive_a_reopen(tmp_path: Path) -> None:
    reg = open_registry(tmp_path)
    reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    record = reg.device("DL-0001")
    assert record is not None and record.report is None and record.reported_at is None
    reg.record_report("DL-0001", {"signal_dbm": -87, "rat": "lte"}, T0 + 5)
    reg.record_report("DL-9999", {"rat": "gsm"}, T0 + 5)  # not bound: nothing to update
    reg.close()
    again = open_registry(tmp_path)
    record = again.device("DL-0001")
    assert record is not None and record.report == {"signal_dbm": -87, "rat": "lte"}
    assert record.reported_at == T0 + 5
    assert again.device("DL-9999") is None
    again.close()


def test_a_version_1_registry_gains_the_report_columns(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    old = Registry(path, migrations=MIGRATIONS[:1])
    old.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    old.close()
    reg = Registry(path)
    assert reg.schema_version == len(MIGRATIONS) >= 2
    reg.record_report("DL-0001", {"keepalive_s": 25}, T0)
    record = reg.device("DL-0001")
    assert record is not None and record.report == {"keepalive_s": 25}
    reg.close()
