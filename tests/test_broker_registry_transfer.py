"""Moving a single-node SQLite broker to PostgreSQL with ``dvrlink-broker migrate``, ``export``
and ``import``: every table arrives as it was, and a viewer's token from before still works on a
broker that runs on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support.aio import run
from support.broker import lab
from support.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)

from dvrlink.broker.registry import MIGRATIONS, Registry, ScryptParams
from dvrlink.broker.registry_postgres import PostgresRegistry
from dvrlink.broker.registry_transfer import TransferError, parse_export

BROKER = Path(sys.executable).with_name("dvrlink-broker")
CHEAP = ScryptParams(n=2**4, r=1, p=1)
SCHEMA_3 = Path(__file__).parent / "data" / "registry" / "schema3.sql"
T0 = 1_700_000_000.0
KEY_A = bytes(range(32))
KEY_D = bytes(range(3, 35))


def broker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BROKER), *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.fixture
def url(postgres_url: str) -> str:  # noqa: F811 (the imported fixture)
    """This test's fresh database."""
    return postgres_url


def filled_sqlite_state(state: Path) -> str:
    """A state directory whose registry holds a row in every table and column (the schema 3
    file, upgraded, plus names, a report and a refusal of today); returns alice's token."""
    state.mkdir()
    path = state / "registry.sqlite3"
    text = SCHEMA_3.read_text()
    db = sqlite3.connect(path)
    db.executescript(text)
    db.close()
    path.chmod(0o600)
    reg = Registry(path, password_params=CHEAP)
    reg.set_device_name("alice", "DL-0001", "<b>Gate</b> & yard ü")
    reg.check_binding("DL-0004", KEY_D, T0 + 60, manifest_only=False)
    reg.record_report("DL-0004", {"signal_dbm": -101, "rat": "gsm", "temperature_c": 41.5}, T0 + 61.123456789)
    reg.record_refusal("DL-0004", KEY_A, ("2001:db8::9", 6000), T0 + 62, "key-mismatch")
    reg.close()
    return text.split("alice's token: ", 1)[1].split()[0]


def test_export_then_import_moves_every_row_to_postgresql(tmp_path: Path, url: str) -> None:
    state = tmp_path / "state"
    token = filled_sqlite_state(state)
    export = tmp_path / "registry.jsonl"

    done = broker("export", str(export), "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert "4 devices, 2 users, 2 tokens, 3 pairings, 2 pair_failures, 3 refusals" in done.stdout, done.stdout
    assert export.stat().st_mode & 0o777 == 0o600  # password and token hashes inside

    done = broker("migrate", "--state-dir", str(state), "--registry-url", url)
    assert done.returncode == 0, done.stderr
    assert f"migrated from schema version 0 to {len(MIGRATIONS)}" in done.stdout, done.stdout
    done = broker("migrate", "--state-dir", str(state), "--registry-url", url)
    assert "up to date" in done.stdout, done.stdout

    done = broker("import", str(export), "--state-dir", str(state), "--registry-url", url)
    assert done.returncode == 0, done.stderr
    assert "@127.0.0.1" in done.stdout and "4 devices" in done.stdout, done.stdout

    source = Registry(state / "registry.sqlite3", password_params=CHEAP)
    target = PostgresRegistry(url, password_params=CHEAP)
    try:
        before, after = source.export_rows(), target.export_rows()
        assert set(before) == set(after)
        for table in before:
            assert after[table] == before[table], f"{table} differs after the import"
            assert before[table], f"the test fills no row of {table}"
        assert target.token_user(token, T0 + 100) == "alice"
        assert target.authenticate("bob", "bob-password")
        assert target.pairing("alice", "DL-0001").name == "<b>Gate</b> & yard ü"  # type: ignore[union-attr]
        device = target.device("DL-0004")
        assert device is not None and device.reported_at == T0 + 61.123456789
        target.record_refusal(
            "DL-0005", KEY_A, None, T0 + 70, "not-in-manifest"
        )  # ids go on after the import
        assert target.refusals(limit=1)[0].serial == "DL-0005"
    finally:
        source.close()
        target.close()

    done = broker("import", str(export), "--state-dir", str(state), "--registry-url", url)
    assert done.returncode == 1 and "not empty" in done.stderr and "--replace" in done.stderr, done.stderr
    done = broker("import", str(export), "--state-dir", str(state), "--registry-url", url, "--replace")
    assert done.returncode == 0, done.stderr
    target = PostgresRegistry(url, password_params=CHEAP)
    try:
        assert [r.serial for r in target.refusals()].count("DL-0005") == 0  # replaced: as the file says
    finally:
        target.close()

    async def main() -> None:  # a broker node on PostgreSQL serves the viewer's old token
        async with lab(tmp_path / "node", registry_url=url) as node:
            headers = {"Authorization": f"Bearer {token}"}
            status, body = await node.call("GET", "/v1/devices", headers=headers)
            assert status == 200, body
            assert sorted(d["serial"] for d in body["devices"]) == ["DL-0001", "DL-0002"], body

    run(main)

    back, state_2 = tmp_path / "back.jsonl", tmp_path / "state-2"  # and the way back, to SQLite
    assert broker("export", str(back), "--state-dir", str(state), "--registry-url", url).returncode == 0
    done = broker("import", str(back), "--state-dir", str(state_2))
    assert done.returncode == 0, done.stderr
    target = PostgresRegistry(url, password_params=CHEAP)
    returned = Registry(state_2 / "registry.sqlite3", password_params=CHEAP)
    try:
        assert returned.export_rows() == target.export_rows()
    finally:
        target.close()
        returned.close()


def test_a_cut_or_foreign_file_imports_nothing(tmp_path: Path, url: str) -> None:
    state = tmp_path / "state"
    filled_sqlite_state(state)
    export = tmp_path / "registry.jsonl"
    assert broker("export", str(export), "--state-dir", str(state)).returncode == 0
    lines = export.read_text().splitlines()
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:-3]) + "\n")
    done = broker("import", str(cut), "--state-dir", str(state), "--registry-url", url)
    assert done.returncode == 1 and "cut short" in done.stderr, done.stderr
    bad_row = tmp_path / "bad.jsonl"
    broken = json.loads(lines[-2])
    broken["row"][0] = None  # a NOT NULL column: the insert fails inside the transaction
    bad_row.write_text("\n".join([*lines[:-2], json.dumps(broken), lines[-1]]) + "\n")
    done = broker("import", str(bad_row), "--state-dir", str(state), "--registry-url", url)
    assert done.returncode == 1 and "nothing was imported" in done.stderr, done.stderr
    target = PostgresRegistry(url, password_params=CHEAP)
    try:
        assert set(target.row_counts().values()) == {0}, "a failed import left rows behind"
    finally:
        target.close()
    with pytest.raises(TransferError, match="not a dvrlink registry export"):
        parse_export(['{"hello": 1}'], "x.jsonl", len(MIGRATIONS))
    newer = json.loads(lines[0]) | {"schema_version": len(MIGRATIONS) + 1}
    with pytest.raises(TransferError, match="newer than this broker knows"):
        parse_export([json.dumps(newer), *lines[1:]], "x.jsonl", len(MIGRATIONS))


def test_migrate_upgrades_a_sqlite_registry_and_says_from_which_version(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "registry.sqlite3")
    db.executescript(SCHEMA_3.read_text())
    db.close()
    done = broker("migrate", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert f"migrated from schema version 3 to {len(MIGRATIONS)}" in done.stdout, done.stdout
    done = broker("migrate", "--state-dir", str(state))
    assert f"schema version {len(MIGRATIONS)}, up to date" in done.stdout, done.stdout
    done = broker("user", "list", "--state-dir", str(state))
    assert done.returncode == 0 and "alice" in done.stdout and "2 paired devices" in done.stdout, done.stdout
    done = broker("migrate", "--state-dir", str(state), "--registry-url", "mysql://nowhere/db")
    assert done.returncode == 78 and "registry_url" in done.stderr, done.stderr
