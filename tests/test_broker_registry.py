"""Broker registry: migrations, bindings, manifest, users, tokens, pairings, durability.

Every test that takes ``backend`` runs twice: on SQLite (a file in ``tmp_path``) and on a real
PostgreSQL server (a fresh database per test, see ``support/postgres.py``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)

from dvrlink.broker.registry import (
    BINDING_QUERY_BATCH,
    DEVICE_NAME_MAX,
    MIGRATIONS,
    BindingVerdict,
    Registry,
    RegistryError,
    RegistryStore,
    ScryptParams,
    TokenProblem,
    UserExistsError,
    token_hash,
)
from dvrlink.broker.registry_postgres import PG_MIGRATIONS, PostgresRegistry

CHEAP = ScryptParams(n=2**4, r=1, p=1)  # fast hashing for tests; the default is checked once below
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
T0 = 1_700_000_000.0


@dataclass
class Backend:
    """Where one test's registry lives, and how to open it again."""

    name: str
    path: Path  # SQLite's file (also given to open_registry for PostgreSQL, which ignores it)
    url: str  # "" for SQLite
    migrations: Sequence[Sequence[str]]

    def open(
        self,
        migrations: Sequence[Sequence[str]] | None = None,
        password_params: ScryptParams | None = CHEAP,
        create: bool = True,
    ) -> RegistryStore:
        steps = self.migrations if migrations is None else migrations
        if self.url:
            return PostgresRegistry(
                self.url, migrations=steps, password_params=password_params, create=create
            )
        return Registry(self.path, migrations=steps, password_params=password_params, create=create)

    def has_table(self, name: str) -> bool:
        if self.url:
            with psycopg.connect(self.url) as conn:
                return conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() != (None,)
        if not self.path.exists():
            return False
        db = sqlite3.connect(self.path)
        try:
            return bool(
                db.execute("SELECT count(*) FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
            )
        finally:
            db.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "registry.sqlite3"
    if request.param == "sqlite":
        yield Backend("sqlite", path, "", MIGRATIONS)
        return
    yield Backend("postgresql", path, request.getfixturevalue("postgres_url"), PG_MIGRATIONS)


def rows(reg: RegistryStore, table: str) -> list[tuple[Any, ...]]:
    """What ``table`` holds, read the same way on either backend."""
    return reg.export_rows()[table]


def test_migrates_an_empty_registry_and_reopens_idempotently(backend: Backend) -> None:
    reg = backend.open()
    assert reg.created and reg.migrated_from == 0
    assert reg.schema_version == len(backend.migrations) == len(MIGRATIONS)
    assert set(reg.row_counts()) == {"devices", "users", "tokens", "pairings", "pair_failures", "refusals"}
    reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    reg.close()
    again = backend.open()
    assert not again.created and again.migrated_from == len(MIGRATIONS)
    assert again.schema_version == len(MIGRATIONS)
    assert again.device("DL-0001") is not None
    again.close()


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    Registry(tmp_path / "registry.sqlite3", password_params=CHEAP).close()
    assert (tmp_path / "registry.sqlite3").stat().st_mode & 0o777 == 0o600  # password hashes inside
    db = sqlite3.connect(tmp_path / "registry.sqlite3")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"devices", "users", "tokens", "pairings", "pair_failures", "refusals"} <= tables
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_applies_only_missing_steps_and_refuses_a_newer_schema(backend: Backend) -> None:
    backend.open().close()
    extra = (*backend.migrations, ("CREATE TABLE notes (text TEXT)",))
    reg = backend.open(migrations=extra)
    assert reg.schema_version == len(backend.migrations) + 1
    assert reg.migrated_from == len(backend.migrations)
    reg.close()
    with pytest.raises(RegistryError, match="newer than this broker knows"):
        backend.open()


def test_failed_migration_step_is_rolled_back(backend: Backend) -> None:
    broken = (*backend.migrations, ("CREATE TABLE notes (text TEXT)", "THIS IS NOT SQL"))
    with pytest.raises(RegistryError):
        backend.open(migrations=broken)
    assert not backend.has_table("notes") and not backend.has_table("devices")
    backend.open().close()
    with pytest.raises(RegistryError):
        backend.open(migrations=broken)
    assert not backend.has_table("notes")
    reg = backend.open()
    assert reg.schema_version == len(backend.migrations)
    reg.close()


def test_a_failed_sqlite_creation_leaves_no_file(tmp_path: Path) -> None:
    broken = (*MIGRATIONS, ("THIS IS NOT SQL",))
    with pytest.raises(RegistryError):
        Registry(tmp_path / "registry.sqlite3", migrations=broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_not_a_database_and_missing_directory_give_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "registry.sqlite3"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError, match="not a usable registry"):
        Registry(bad)
    with pytest.raises(RegistryError, match="does not exist"):
        Registry(tmp_path / "missing" / "registry.sqlite3")


def test_first_use_binds_and_another_key_is_refused(backend: Backend) -> None:
    reg = backend.open()
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


def test_registrations_are_noted_in_one_batch(backend: Backend) -> None:
    reg = backend.open()
    for i in range(3):
        reg.check_binding(f"DL-000{i}", KEY_A, T0, manifest_only=False)
    entries = [(f"DL-000{i}", (f"203.0.113.{i}", 4000 + i), T0 + i) for i in range(3)]
    reg.record_registrations([*entries, ("DL-0404", ("203.0.113.9", 9), T0)])  # unknown: no-op
    for serial, (ip, port), at in entries:
        device = reg.device(serial)
        assert device is not None and (device.last_registered_at, device.last_address) == (at, f"{ip}:{port}")
    assert reg.device("DL-0404") is None
    reg.record_registrations([])


def test_binding_keys_answers_a_batch_of_serials_in_few_queries(backend: Backend) -> None:
    reg = backend.open()
    count = BINDING_QUERY_BATCH + 7  # two queries
    for i in range(count):
        reg.check_binding(f"DL-{i:05d}", KEY_A if i % 2 else KEY_B, T0, manifest_only=False)
    reg.load_manifest({"DL-M0001": KEY_B}, T0)
    asked = [f"DL-{i:05d}" for i in range(count)] + ["DL-M0001", "DL-NOPE"]
    found = reg.binding_keys(asked)
    assert len(found) == count + 1 and "DL-NOPE" not in found
    assert found["DL-00001"] == (KEY_A, "first-use") and found["DL-00002"] == (KEY_B, "first-use")
    assert found[f"DL-{count - 1:05d}"][1] == "first-use"
    assert found["DL-M0001"] == (KEY_B, "manifest")
    assert reg.binding_keys([]) == {}


def test_manifest_only_accepts_only_manifest_serials(backend: Backend) -> None:
    reg = backend.open()
    assert reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False) is BindingVerdict.BOUND_NOW
    assert reg.check_binding("DL-0002", KEY_A, T0, manifest_only=True) is BindingVerdict.NOT_IN_MANIFEST
    assert reg.device("DL-0002") is None  # nothing bound
    # bound on first use earlier does not count as manifest
    assert reg.check_binding("DL-0001", KEY_A, T0, manifest_only=True) is BindingVerdict.NOT_IN_MANIFEST
    reg.load_manifest({"DL-0003": KEY_B}, T0)
    assert reg.check_binding("DL-0003", KEY_B, T0, manifest_only=True) is BindingVerdict.MATCHES
    assert reg.check_binding("DL-0003", KEY_A, T0, manifest_only=True) is BindingVerdict.KEY_MISMATCH


def test_manifest_reports_conflicts_and_does_not_overwrite(backend: Backend) -> None:
    reg = backend.open()
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


def test_refusals_are_recorded(backend: Backend) -> None:
    reg = backend.open()
    reg.record_refusal("DL-0001", KEY_B, ("198.51.100.7", 5000), T0, "key-mismatch")
    [row] = reg.refusals("DL-0001")
    assert (row.public_key, row.address, row.reason) == (KEY_B, "198.51.100.7:5000", "key-mismatch")
    assert reg.refusals("DL-0009") == []


def test_users_and_passwords(backend: Backend) -> None:
    reg = backend.open()
    reg.create_user("alice", "correct horse", T0)
    with pytest.raises(UserExistsError, match="exists"):
        reg.create_user("alice", "other password", T0)
    with pytest.raises(ValueError, match="not valid"):
        reg.create_user("no spaces", "pw123456", T0)
    assert reg.authenticate("alice", "correct horse")
    assert not reg.authenticate("alice", "wrong horse")
    assert not reg.authenticate("bob", "correct horse")
    [stored] = [r for r in rows(reg, "users") if r[0] == "alice"]
    assert b"correct horse" not in b"".join(v for v in stored if isinstance(v, bytes))


def test_default_scrypt_parameters_verify(backend: Backend) -> None:
    reg = backend.open(password_params=None)
    reg.create_user("alice", "pw123456", T0)
    record = reg.password_record("alice")
    assert record is not None
    assert record.params == ScryptParams()
    assert reg.authenticate("alice", "pw123456")


def test_tokens_store_only_a_hash_and_expire(backend: Backend) -> None:
    reg = backend.open()
    reg.create_user("alice", "pw123456", T0)
    token = reg.issue_token("alice", T0, 3600)
    assert len(token) >= 40
    assert reg.token_user(token, T0 + 10) == "alice"
    assert reg.token_user(token, T0 + 3600) is TokenProblem.EXPIRED
    assert reg.token_user("not-a-token", T0) is TokenProblem.UNKNOWN
    assert [r[0] for r in rows(reg, "tokens")] == [token_hash(token)]
    with pytest.raises(LookupError):
        reg.issue_token("nobody", T0, 3600)


def test_pairings_and_failure_window(backend: Backend) -> None:
    reg = backend.open()
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
from dvrlink.broker.registry import ScryptParams, open_registry
reg = open_registry(sys.argv[2], Path(sys.argv[1]), password_params=ScryptParams(n=16, r=1, p=1))
reg.create_user("alice", "pw123456", 1.0)
token = reg.issue_token("alice", 1.0, 3600)
reg.check_binding("DL-0001", bytes(32), 1.0, manifest_only=False)
reg.record_pairing("alice", "DL-0001", bytes(32), 2.0)
print(token, flush=True)
sys.stdin.read()  # hold the connection open until killed
"""


def test_acknowledged_writes_survive_kill_9(backend: Backend) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(backend.path), backend.url],
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
    reg = backend.open()
    assert reg.token_user(token, 10.0) == "alice"
    assert reg.device("DL-0001") is not None
    assert reg.pairing("alice", "DL-0001") is not None


def test_admin_connection_writes_while_another_is_open(backend: Backend) -> None:
    broker = backend.open()
    admin = backend.open()
    admin.create_user("carol", "pw123456", T0)
    admin.load_manifest({"DL-0009": KEY_A}, T0)
    admin.close()
    assert broker.authenticate("carol", "pw123456")
    assert broker.check_binding("DL-0009", KEY_A, T0, manifest_only=True) is BindingVerdict.MATCHES


def test_reports_are_kept_per_device_and_survive_a_reopen(backend: Backend) -> None:
    reg = backend.open()
    reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    record = reg.device("DL-0001")
    assert record is not None and record.report is None and record.reported_at is None
    reg.record_report("DL-0001", {"signal_dbm": -87, "rat": "lte", "nat_type": "EIM/APDF"}, T0 + 5)
    reg.record_report("DL-9999", {"rat": "gsm"}, T0 + 5)  # not bound: nothing to update
    reg.close()
    again = backend.open()
    record = again.device("DL-0001")
    assert record is not None and record.report == {"signal_dbm": -87, "rat": "lte", "nat_type": "EIM/APDF"}
    assert record.reported_at == T0 + 5
    assert again.device("DL-9999") is None
    again.close()


def test_a_version_1_registry_gains_the_report_columns(backend: Backend) -> None:
    old = backend.open(migrations=backend.migrations[:1])
    old.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    old.close()
    reg = backend.open()
    assert reg.schema_version == len(MIGRATIONS) >= 2
    reg.record_report("DL-0001", {"keepalive_s": 25}, T0)
    record = reg.device("DL-0001")
    assert record is not None and record.report == {"keepalive_s": 25}
    reg.close()


def test_device_names_belong_to_the_pairing(backend: Backend) -> None:
    reg = backend.open()
    reg.create_user("alice", "pw123456", T0)
    reg.create_user("bob", "pw123456", T0)
    reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    reg.record_pairing("alice", "DL-0001", KEY_B, T0)
    reg.record_pairing("bob", "DL-0001", KEY_B, T0)
    assert reg.pairing("alice", "DL-0001").name is None  # type: ignore[union-attr]
    assert reg.set_device_name("alice", "DL-0001", "<script>alert(1)</script> Hof ü")
    assert reg.set_device_name("bob", "DL-0001", "x" * DEVICE_NAME_MAX)
    assert reg.pairing("alice", "DL-0001").name == "<script>alert(1)</script> Hof ü"  # type: ignore[union-attr]
    assert [p.name for p in reg.pairings_for("bob")] == ["x" * DEVICE_NAME_MAX]
    with pytest.raises(ValueError, match=f"at most {DEVICE_NAME_MAX}"):
        reg.set_device_name("alice", "DL-0001", "y" * (DEVICE_NAME_MAX + 1))
    assert not reg.set_device_name("alice", "DL-0002", "gate")  # not paired
    assert not reg.set_device_name("carol", "DL-0001", "gate")
    reg.record_pairing("alice", "DL-0001", KEY_A, T0 + 1)  # pairing again keeps the name
    again = reg.pairing("alice", "DL-0001")
    assert again is not None and (again.viewer_key, again.name) == (KEY_A, "<script>alert(1)</script> Hof ü")
    assert reg.set_device_name("alice", "DL-0001", "")  # "" removes it
    assert reg.pairing("alice", "DL-0001").name is None  # type: ignore[union-attr]
    assert reg.remove_pairing("bob", "DL-0001")
    reg.record_pairing("bob", "DL-0001", KEY_B, T0 + 2)
    assert reg.pairing("bob", "DL-0001").name is None  # type: ignore[union-attr]  # unpairing forgot it
    reg.close()


def test_a_version_3_registry_keeps_its_rows_through_the_name_migration(backend: Backend) -> None:
    old = backend.open(migrations=backend.migrations[:3])
    old.create_user("alice", "pw123456", T0)
    token = old.issue_token("alice", T0, 3600)
    old.check_binding("DL-0001", KEY_A, T0, manifest_only=False)
    old.record_pairing("alice", "DL-0001", KEY_B, T0 + 1)  # the v3 INSERT names no name column
    old.record_pair_failure("DL-0001", T0 + 2, "alice")
    old.close()
    reg = backend.open()
    assert reg.migrated_from == 3 and reg.schema_version == len(backend.migrations)
    assert reg.pairing("alice", "DL-0001") == reg.pairings_for("alice")[0]
    assert reg.pairing("alice", "DL-0001").name is None  # type: ignore[union-attr]
    assert reg.token_user(token, T0 + 10) == "alice"
    assert reg.pair_failures_since("DL-0001", T0, "alice") == 1
    reg.close()


SCHEMA_3 = Path(__file__).parent / "data" / "registry" / "schema3.sql"


def test_a_registry_written_by_the_schema_3_broker_upgrades_intact(tmp_path: Path) -> None:
    """The file was written by the broker before this migration (tests/data/registry/schema3.sql,
    dumped from it); every binding, account, token, pairing, failure and refusal survives."""
    path = tmp_path / "registry.sqlite3"
    text = SCHEMA_3.read_text()
    token = text.split("alice's token: ", 1)[1].split()[0]
    db = sqlite3.connect(path)
    db.executescript(text)
    before = {
        table: sorted(db.execute(f"SELECT * FROM {table}").fetchall())
        for table in ("devices", "users", "tokens", "pairings", "pair_failures", "refusals")
    }
    db.close()
    assert before["devices"] and before["users"] and before["pairings"] and before["refusals"]
    reg = Registry(path)
    assert (reg.migrated_from, reg.schema_version) == (3, len(MIGRATIONS))
    after = reg.export_rows()
    for table, old_rows in before.items():
        new_rows = sorted(after[table])
        if table == "pairings":
            assert [r[-1] for r in new_rows] == [None] * len(old_rows)  # the new name column
            new_rows = [r[:-1] for r in new_rows]
        if table == "devices":
            assert [r[-2:] for r in new_rows] == [(None, None)] * len(old_rows)  # SMS number, counter
            new_rows = [r[:-2] for r in new_rows]
        assert new_rows == old_rows, f"{table} changed in the migration"
    device = reg.device("DL-0001")
    assert (
        device is not None
        and device.public_key == KEY_A
        and device.report == {"rat": "lte", "signal_dbm": -87}
    )
    assert reg.device("DL-0002").last_address == "[2001:db8::7]:5000"  # type: ignore[union-attr]
    assert reg.check_binding("DL-0002", KEY_B, T0, manifest_only=True) is BindingVerdict.MATCHES
    assert reg.authenticate("alice", "alice-password") and reg.authenticate("bob", "bob-password")
    assert reg.token_user(token, T0 + 100) == "alice"
    assert [p.serial for p in reg.pairings_for("alice")] == ["DL-0001", "DL-0002"]
    assert reg.paired_users("DL-0001") == ["alice", "bob"]
    assert reg.pair_failures_since("DL-0001", T0) == 2
    assert [r.reason for r in reg.refusals()] == ["not-in-manifest", "key-mismatch"]
    assert reg.set_device_name("alice", "DL-0001", "Gate")
    reg.close()
