"""``dvrlink-broker`` administration as an operator meets it: a damaged registry, a mistyped state
directory, no TTY, no aiohttp, and the account commands. Every case runs the real program."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from dvrlink.broker.registry import Registry
from dvrlink.broker.state import load_or_create_static_key, read_info
from dvrlink.protocol.identity import b64encode_key

BROKER = Path(sys.executable).with_name("dvrlink-broker")
NEW = "new-pass-1\n"
SERVE_PORTS = ("--udp-port", "0", "--https-port", "0", "--turn-port", "0", "--presence-tcp-port", "0")


def broker(
    *args: str, stdin: str | None = "", env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BROKER), *args],
        check=False,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        start_new_session=True,  # no controlling terminal: getpass cannot fall back to /dev/tty
    )


def add_user(state: Path, name: str, password: str = "s3cret-pass") -> None:
    done = broker("user", "add", name, "--password-stdin", "--state-dir", str(state), stdin=password + "\n")
    assert done.returncode == 0, done.stderr


# -- defect 2: a registry file that exists but holds no registry --------------------------------


def _damaged_registries(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "registry.sqlite3").write_bytes(b"")
    no_schema = tmp_path / "no_schema"
    no_schema.mkdir()
    db = sqlite3.connect(no_schema / "registry.sqlite3")
    db.execute("CREATE TABLE unrelated (x)")
    db.commit()
    db.close()
    newer = tmp_path / "newer"
    newer.mkdir()
    Registry(newer / "registry.sqlite3").close()
    db = sqlite3.connect(newer / "registry.sqlite3")
    db.execute("PRAGMA user_version = 99")
    db.close()
    return {"empty": empty, "no schema": no_schema, "newer": newer}


def test_a_registry_without_its_schema_stops_every_command_with_exit_78(tmp_path: Path) -> None:
    for what, state in _damaged_registries(tmp_path).items():
        path = state / "registry.sqlite3"
        before = path.read_bytes()
        for args, stdin in (
            (("user", "add", "alice", "--password-stdin"), "s3cret-pass\n"),
            (("user", "list"), ""),
            (("manifest", "load", str(tmp_path / "none.csv")), ""),
            (("serve", *SERVE_PORTS), ""),
        ):
            if args[0] == "manifest":
                (tmp_path / "none.csv").write_text("")
            done = broker(*args, "--state-dir", str(state), stdin=stdin, timeout=30)
            assert done.returncode == 78, f"{what}: {args}: exit {done.returncode}: {done.stderr}"
            assert str(path) in done.stderr and "backup" in done.stderr, f"{what}: {done.stderr}"
            assert "Traceback" not in done.stderr, done.stderr
            assert path.read_bytes() == before, f"{what}: {args} changed the registry file"
    assert "newer" in broker("user", "list", "--state-dir", str(tmp_path / "newer")).stderr


def test_only_a_missing_registry_is_created_and_serve_says_so(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [str(BROKER), "serve", "--state-dir", str(state), *SERVE_PORTS],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines: list[str] = []
        for line in proc.stderr:
            lines.append(line)
            if "dvrlink-broker ready" in line:
                break
        log = "".join(lines)
        assert "dvrlink-broker ready" in log, log
        assert f"created a new registry {state / 'registry.sqlite3'}" in log, log
        info = read_info(state)  # friction: the key devices pin and every listening address
        assert f"public key (devices pin it as [broker] public_key): {b64encode_key(info.public_key)}" in log
        listening = dict(info.listening)
        assert sorted(listening) == ["https", "presence+stun/udp", "presence/tcp", "turn/tcp", "turn/udp"]
        assert listening["https"] == f"0.0.0.0:{info.https_port}"
        for what, address in listening.items():
            assert f"listening: {what} on {address}" in log, log
    finally:
        proc.terminate()
        proc.wait(30)
    proc = subprocess.Popen(
        [str(BROKER), "serve", "--state-dir", str(state), *SERVE_PORTS], stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "dvrlink-broker ready" in line:
                break
        assert "created a new registry" not in "".join(lines), lines
    finally:
        proc.terminate()
        proc.wait(30)


# -- defect 3: read-only commands never create state --------------------------------------------


def test_read_only_commands_never_create_state(tmp_path: Path) -> None:
    typo = tmp_path / "stat"
    for args in (("show-key",), ("user", "list")):
        done = broker(*args, "--state-dir", str(typo))
        assert done.returncode == 78, f"{args}: exit {done.returncode}: {done.stdout} {done.stderr}"
        assert str(typo) in done.stderr and "does not exist" in done.stderr, done.stderr
        assert not typo.exists(), f"{args} created {typo}"
    state = tmp_path / "state"
    add_user(state, "alice")  # a registry, but no key yet (the broker never ran)
    done = broker("show-key", "--state-dir", str(state))
    assert done.returncode == 78, done.stdout
    assert "broker_key.pem" in done.stderr and "serve" in done.stderr, done.stderr
    assert not (state / "broker_key.pem").exists()
    for args in (("user", "delete", "bob"), ("user", "passwd", "bob", "--password-stdin")):
        done = broker(*args, "--state-dir", str(typo), stdin="s3cret-pass\n")
        assert done.returncode == 78 and not typo.exists(), done.stderr
    key = load_or_create_static_key(state)
    assert key is not None
    done = broker("show-key", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr


# -- defect 6: no TTY -----------------------------------------------------------------------------


def test_user_add_without_a_tty_says_to_use_password_stdin(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for args in (("user", "add", "alice"), ("user", "passwd", "bob")):
        if args[1] == "passwd":
            add_user(state, "bob")
        done = broker(*args, "--state-dir", str(state), stdin=None)
        assert done.returncode == 1, f"{args}: exit {done.returncode}: {done.stderr}"
        assert "--password-stdin" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr


# -- friction -------------------------------------------------------------------------------------


def test_without_aiohttp_the_program_names_the_extra_to_install(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['aiohttp'] = None\n")
    env = {**os.environ, "PYTHONPATH": str(shim)}
    for args in (("--help",), ("serve", "--state-dir", str(tmp_path / "state"))):
        done = broker(*args, env=env)
        assert "Traceback" not in done.stderr, done.stderr
        assert "pip install 'dvrlink[broker]'" in done.stderr, done.stderr
        assert done.returncode == 1, done.returncode
    assert not (tmp_path / "state").exists()


def test_version_and_a_description_on_every_subcommand() -> None:
    from importlib.metadata import version

    done = broker("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"dvrlink-broker {version('dvrlink')}"
    top = broker("--help").stdout
    for command in ("serve", "check-config", "user", "manifest", "device", "show-key"):
        line = next((x for x in top.splitlines() if x.strip().startswith(command + " ")), "")
        assert len(line.split()) > 2, f"no description for {command} in:\n{top}"
    for parent, actions in (("user", ("add", "list", "delete", "passwd")), ("manifest", ("load",))):
        text = broker(parent, "--help").stdout
        for action in actions:
            line = next((x for x in text.splitlines() if x.strip().startswith(action + " ")), "")
            assert len(line.split()) > 2, f"no description for {parent} {action} in:\n{text}"
    load = broker("manifest", "load", "--help").stdout
    assert "serial,public_key" in load and "JSON" in load, load


def test_user_list_delete_and_passwd(tmp_path: Path) -> None:
    state = tmp_path / "state"
    add_user(state, "alice")
    add_user(state, "bob")
    done = broker("user", "list", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["alice", "bob"], done.stdout
    done = broker("user", "passwd", "alice", "--password-stdin", "--state-dir", str(state), stdin=NEW)
    assert done.returncode == 0, done.stderr
    done = broker("user", "passwd", "carol", "--password-stdin", "--state-dir", str(state), stdin=NEW)
    assert done.returncode == 1 and "carol" in done.stderr, done.stderr
    done = broker("user", "delete", "bob", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    done = broker("user", "delete", "bob", "--state-dir", str(state))
    assert done.returncode == 1 and "bob" in done.stderr, done.stderr
    registry = Registry(state / "registry.sqlite3")
    try:
        assert registry.authenticate("alice", NEW.strip())
        assert not registry.authenticate("alice", "s3cret-pass")
        assert registry.password_record("bob") is None
    finally:
        registry.close()
    assert broker("user", "list", "--state-dir", str(state)).stdout.split()[0] == "alice"
