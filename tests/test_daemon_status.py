"""The status file and `dvrlinkd status`."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dvrlink.daemon.cli import main
from dvrlink.daemon.status import (
    STATUS_FILE,
    DaemonStatus,
    StatusFile,
    StatusUnavailable,
    format_keepalive,
    format_status,
    read_status,
)

NOW = 1_700_000_000.0


def status(pid: int | None = None, **changes: object) -> DaemonStatus:
    values: dict[str, object] = {
        "state": "online",
        "serial": "DL-0001-0002",
        "broker": "broker.example.net:3478",
        "reflexive_address": "203.0.113.7:40001",
        "session_id": 0x1234ABCD,
        "registered_at": NOW - 600,
        "last_keepalive": NOW - 5,
        "rtt": 0.0421,
        "pid": os.getpid() if pid is None else pid,
        "started_at": NOW - 700,
        **changes,
    }
    return DaemonStatus(**values)  # type: ignore[arg-type]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def write_config(tmp_path: Path) -> Path:
    key = base64.b64encode(bytes(range(32))).decode()
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(
        f'[device]\nserial = "DL-0001-0002"\nstate_dir = "state"\nruntime_dir = "run"\n'
        f'[broker]\nhost = "127.0.0.1"\npublic_key = "{key}"\n'
    )
    return path


def test_write_and_read(tmp_path: Path) -> None:
    StatusFile(tmp_path).write(status())
    path = tmp_path / STATUS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_status(tmp_path) == status()
    assert json.loads(path.read_text())["reflexive_address"] == "203.0.113.7:40001"
    StatusFile(tmp_path).remove()
    StatusFile(tmp_path).remove()  # twice is fine
    assert not path.exists()


def test_not_running(tmp_path: Path) -> None:
    with pytest.raises(StatusUnavailable, match=r"not running: no status file .*systemctl start dvrlinkd"):
        read_status(tmp_path)
    pid = dead_pid()
    StatusFile(tmp_path).write(status(pid=pid))
    with pytest.raises(StatusUnavailable, match=rf"not running: .* names pid {pid}, which has exited"):
        read_status(tmp_path)
    (tmp_path / STATUS_FILE).write_text("{}")
    with pytest.raises(StatusUnavailable, match="unreadable"):
        read_status(tmp_path)


def test_format() -> None:
    text = format_status(status(message="registered"), NOW)
    lines = dict(line.split(": ", 1) for line in text.splitlines())
    assert lines["state"].strip() == "online"
    assert lines["broker"].strip() == "broker.example.net:3478"
    assert lines["reflexive address"].strip() == "203.0.113.7:40001"
    assert lines["session"].strip() == "0x1234abcd"
    assert lines["rtt"].strip() == "42 ms"
    assert lines["last keepalive"].endswith("(5 s ago)")
    assert lines["registered"].endswith("(10 min ago)")
    assert lines["last event"].strip() == "registered"
    offline = format_status(status(state="backoff", reflexive_address=None, session_id=None, rtt=None), NOW)
    assert "reflexive address: -" in offline
    assert "session:           -" in offline


def test_status_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert main(["status", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "dvrlinkd is not running: no status file" in err
    assert str(tmp_path / "run" / STATUS_FILE) in err

    (tmp_path / "run").mkdir()
    StatusFile(tmp_path / "run").write(status())
    assert main(["--config", str(config), "status"]) == 0  # --config before the command works too
    out = capsys.readouterr().out
    assert out.startswith("state:             online\nserial:            DL-0001-0002\n")

    assert main(["status", "--config", str(config), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["running"] is True
    assert document["session_id"] == 0x1234ABCD
    assert document["last_keepalive"] == NOW - 5

    StatusFile(tmp_path / "run").write(status(pid=dead_pid()))
    assert main(["status", "--config", str(config), "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["running"] is False
    assert "which has exited" in captured.err


def test_keepalive_line_says_fixed_measuring_or_learned() -> None:
    now = 1_700_000_000.0
    base = DaemonStatus("online", "DL-0001-0002", "192.0.2.1:3478", None, 7, now, now, 0.01, 1, now)
    assert format_keepalive(base) == "-"
    fixed = dataclasses.replace(base, keepalive_s=25.0)
    assert format_keepalive(fixed) == "every 25 s (fixed)"
    measuring = dataclasses.replace(fixed, keepalive_learning="measuring")
    assert "measuring how long the NAT keeps" in format_keepalive(measuring)
    learned = dataclasses.replace(base, keepalive_s=26.6, keepalive_learning="settled", nat_lifetime_s=29.6)
    assert format_keepalive(learned) == (
        "every 26.6 s (learned: the NAT keeps an idle UDP mapping at least 29.6 s)"
    )
    assert "keepalive:" in format_status(learned, now)
    assert DaemonStatus.from_json(learned.to_json()) == learned
