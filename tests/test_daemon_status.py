"""The status file and `dvrlinkd status`."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import socket
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
from hil.loopback import BIN, Broker, Daemon, start_broker, stop_all, unused_tcp_port, wait_for

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


def unused_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    assert lines["alarms"].strip() == "none waiting"
    queued = dict(line.split(": ", 1) for line in format_status(status(alarms_pending=3), NOW).splitlines())
    assert queued["alarms"].strip() == "3 waiting for the broker"
    full = format_status(status(alarms_pending=1000, alarms_dropped=2), NOW)
    assert "1000 waiting for the broker; 2 dropped unsent since the start" in full
    assert "raise [alarms] queue_size" in full
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


# -- a real daemon and a real broker on loopback ------------------------------------------------


def presence_tcp_port(broker: Broker) -> int:
    """The broker's presence TCP/TLS port, from its ``broker.json``."""
    info = json.loads((broker.state_dir / "broker.json").read_text())
    return int(info["listening"]["presence/tcp"].rsplit(":", 1)[1])


def daemon_config(
    root: Path, serial: str, host: str, udp_port: int, tcp_port: int, key: str, presence: str
) -> Daemon:
    """A daemon config under ``root/serial``: short timers, ``presence`` lines added to [presence]."""
    home = root / serial
    home.mkdir(parents=True)
    config = home / "dvrlinkd.toml"
    config.write_text(
        f'[device]\nserial = "{serial}"\nstate_dir = "state"\nruntime_dir = "run"\n'
        f'[broker]\nhost = "{host}"\nport = {udp_port}\ntcp_port = {tcp_port}\npublic_key = "{key}"\n'
        "[presence]\nkeepalive_interval_s = 2\nreply_timeout_s = 0.5\nretries = 1\nlearn_keepalive = false\n"
        f"{presence}\n"
    )
    return Daemon(serial, home, config)


def shown(daemon: Daemon) -> str:
    """What `dvrlinkd status` prints for ``daemon`` (its exit code is not checked)."""
    return subprocess.run(
        [str(BIN / "dvrlinkd"), "status", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout


def row(text: str, name: str) -> str:
    """The value of the ``name:`` row of `dvrlinkd status`, or '' if there is none."""
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return ""


def log_tail(daemon: Daemon) -> str:
    return "\n".join(daemon.log.read_text(errors="replace").splitlines()[-15:])


def test_over_tcp_status_stops_saying_online_when_the_broker_dies(tmp_path: Path) -> None:
    """The issue: over TCP, `dvrlinkd status` said `online` 37 s after the broker died (the log
    said it was reconnecting), and showed the UDP port while the TCP link used another."""
    broker = start_broker(tmp_path / "broker")
    tcp_port = presence_tcp_port(broker)
    daemon = daemon_config(
        tmp_path,
        "DL-0009-0010",
        "127.0.0.1",
        broker.udp_port,
        tcp_port,
        broker.public_key,
        'transport = "tcp"\ntcp_keepalive_interval_s = 60',
    )
    daemon.start()
    try:
        try:
            wait_for("daemon online over TCP", daemon.online, 30)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{log_tail(daemon)}") from None
        before = shown(daemon)
        assert row(before, "broker").startswith(f"127.0.0.1:{tcp_port}"), before
        assert f":{broker.udp_port}" not in row(before, "broker"), before
        assert row(before, "transport").startswith("tcp"), before
        assert row(before, "link").startswith("connected since"), before

        # the keepalive interval over TCP (60 s) is in use, so only the link can tell
        wait_for(
            "the TCP keepalive interval in use", lambda: (daemon.status() or {}).get("keepalive_s") == 60, 20
        )
        broker.stop(signal.SIGKILL)
        try:
            wait_for("status no longer online", lambda: not daemon.online(), 10)
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}: `dvrlinkd status` shows\n{shown(daemon)}\n--- log\n{log_tail(daemon)}"
            ) from None
        after = shown(daemon)
        assert row(after, "state") != "online", after
        assert row(after, "link").startswith("reconnecting since"), after
        assert row(after, "broker").startswith(f"127.0.0.1:{tcp_port}"), after
        log = daemon.log.read_text()
        assert "local network changed" not in log, log_tail(daemon)
    finally:
        stop_all([daemon, broker])


def test_a_udp_port_that_got_no_answer_shows_in_status(tmp_path: Path) -> None:
    """A wrong UDP port: `auto` falls back to TCP, and status says why."""
    broker = start_broker(tmp_path / "broker")
    wrong = unused_udp_port()
    daemon = daemon_config(
        tmp_path,
        "DL-0009-0011",
        "127.0.0.1",
        wrong,
        presence_tcp_port(broker),
        broker.public_key,
        'transport = "auto"\nfallback_after_failures = 2\ntcp_keepalive_interval_s = 60',
    )
    daemon.start()
    try:
        try:
            wait_for("daemon online over TCP", daemon.online, 40)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{log_tail(daemon)}") from None
        text = shown(daemon)
        transport = row(text, "transport")
        assert transport.startswith("tcp") and f"UDP to 127.0.0.1:{wrong} got no answer" in transport, text
    finally:
        stop_all([daemon, broker])


def test_an_unresolvable_broker_name_shows_in_status(tmp_path: Path) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    daemon = daemon_config(
        tmp_path, "DL-0009-0012", "no-such-broker.invalid", 3478, 443, key, 'transport = "udp"'
    )
    daemon.start()
    try:
        text = wait_for(
            "a status that names the broker's name",
            lambda: "no-such-broker.invalid" in (s := shown(daemon)) and s,
            30,
        )
        assert "cannot resolve" in text and "no-such-broker.invalid" in row(text, "link"), text
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}: `dvrlinkd status` shows\n{shown(daemon)}\n--- log\n{log_tail(daemon)}"
        ) from None
    finally:
        stop_all([daemon])


def test_a_broker_restart_over_tcp_is_logged_as_what_was_seen(tmp_path: Path) -> None:
    """The issue: a broker restart was logged as "local network changed"."""
    state = tmp_path / "broker"
    config = tmp_path / "broker.toml"
    udp_port, tcp_port = unused_udp_port(), unused_tcp_port()
    config.write_text(
        f'state_dir = "{state}"\nudp_host = "127.0.0.1"\nudp_port = {udp_port}\nhttps_host = "127.0.0.1"\n'
        f"https_port = 0\npresence_tcp_port = {tcp_port}\nturn_enabled = false\n"
    )
    broker = start_broker(state, config=config)
    daemon = daemon_config(
        tmp_path,
        "DL-0009-0013",
        "127.0.0.1",
        udp_port,
        tcp_port,
        broker.public_key,
        'transport = "tcp"\ntcp_keepalive_interval_s = 60',
    )
    daemon.start()
    try:
        wait_for("daemon online over TCP", daemon.online, 30)
        session = (daemon.status() or {}).get("session_id")
        broker.stop(signal.SIGKILL)
        broker = start_broker(state, config=config)
        try:
            wait_for(
                "online again in a new session",
                lambda: (daemon.status() or {}).get("session_id") not in (None, session) and daemon.online(),
                40,
            )
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{log_tail(daemon)}") from None
        lost = [line for line in daemon.log.read_text().splitlines() if "lost:" in line]
        assert lost, log_tail(daemon)
        assert "local network changed" not in lost[0], lost
        assert f"the broker 127.0.0.1:{tcp_port} closed the presence TCP connection" in lost[0], lost
    finally:
        stop_all([daemon, broker])


def test_the_link_rows_show_endpoint_state_since_and_why() -> None:
    down = status(
        state="backoff",
        transport="tcp",
        endpoint="broker.example.net:443",
        link="reconnecting",
        link_since=NOW - 12,
        link_detail="cannot connect to broker.example.net:443 (connection refused)",
        transport_reason=(
            "UDP to broker.example.net:3478 got no answer: 2 registration attempts over udp got no reply"
        ),
    )
    text = format_status(down, NOW)
    assert row(text, "broker") == "broker.example.net:443 (TCP/TLS)", text
    assert row(text, "transport") == (
        "tcp (UDP to broker.example.net:3478 got no answer: 2 registration attempts over udp got no reply)"
    ), text
    link = row(text, "link")
    assert link.startswith("reconnecting since ") and "(12 s ago)" in link, text
    assert link.endswith(": cannot connect to broker.example.net:443 (connection refused)"), text
    up = dataclasses.replace(down, state="online", link="connected", link_detail="")
    assert row(format_status(up, NOW), "link").startswith("connected since"), format_status(up, NOW)
    assert DaemonStatus.from_json(down.to_json()) == down
    # a status file from before these fields: the configured broker, no link row
    assert row(format_status(status(), NOW), "broker") == "broker.example.net:3478"
    assert row(format_status(status(), NOW), "link") == ""
