"""S95dvrlinkd, the BusyBox init script of the image, run by a real BusyBox sh.

A fake dvrlinkd (a BusyBox sh script) beats its heartbeat file the way the real daemon does
(dvrlink.daemon.notify with $DVRLINKD_HEARTBEAT_FILE), stops beating while a "hang" file exists
and exits with a chosen status on request. The watchdog is a regular file: each feed appends a
byte, the magic close appends "V". Every wait is on an event (a log line, a file's contents), with
a bound.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.waiting import wait_until

from dvrlink.daemon.notify import HEARTBEAT_FILE_ENV, Notifier

SCRIPT = Path(__file__).resolve().parent.parent / "buildroot/board/dvrlink/S95dvrlinkd"
BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="needs busybox (make system-packages installs it)")
BOUND = 60.0  # seconds; the machine is shared and busy

FAKE_DVRLINKD = """#!{busybox} sh
# Stand-in for dvrlinkd: beats while {fake}/hang is absent; exits with the status written to
# {fake}/exit when that file appears.
fake="{fake}"
echo "$$ $* WATCHDOG_USEC=$WATCHDOG_USEC" >>"$fake/starts"
n=0
while :; do
	if [ -r "$fake/exit" ]; then
		read -r code <"$fake/exit"
		rm -f "$fake/exit"
		exit "$code"
	fi
	if [ ! -e "$fake/hang" ]; then
		n=$((n + 1))
		echo "$$ $n" >"$DVRLINKD_HEARTBEAT_FILE.tmp"
		mv "$DVRLINKD_HEARTBEAT_FILE.tmp" "$DVRLINKD_HEARTBEAT_FILE"
	fi
	sleep 0.05
done
"""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Rig:
    """The script's files in a temporary folder, and ways to drive and read them."""

    root: Path
    env: dict[str, str]

    @property
    def fake(self) -> Path:
        return self.root / "fake"

    @property
    def watchdog(self) -> Path:
        return self.root / "watchdog"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def pidfile(self) -> Path:
        return self.root / "dvrlinkd.pid"

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BUSYBOX), "sh", str(SCRIPT), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def feeds(self) -> str:
        return self.watchdog.read_text() if self.watchdog.exists() else ""

    def starts(self) -> list[str]:
        path = self.fake / "starts"
        return path.read_text().splitlines() if path.exists() else []

    def daemon_pids(self) -> list[int]:
        return [int(line.split()[0]) for line in self.starts()]

    def wait_log(self, text: str, count: int = 1) -> None:
        wait_until(
            f"{count} x {text!r} in the log", lambda: self.log_text().count(text) >= count, timeout=BOUND
        )

    def supervisor_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    fake = tmp_path / "fake"
    fake.mkdir()
    daemon = tmp_path / "dvrlinkd"
    daemon.write_text(FAKE_DVRLINKD.format(busybox=BUSYBOX, fake=fake))
    daemon.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DVRLINKD_DEFAULTS": str(tmp_path / "no-defaults"),
        "DVRLINKD_PIDFILE": str(tmp_path / "dvrlinkd.pid"),
        "DVRLINKD_BIN": str(daemon),
        "DVRLINKD_CONFIG": str(tmp_path / "dvrlinkd.toml"),
        "DVRLINKD_RUN_DIR": str(tmp_path / "run"),
        "DVRLINKD_STATE_DIR": str(tmp_path / "state"),
        "DVRLINKD_WATCHDOG": str(tmp_path / "watchdog"),
        "DVRLINKD_LOG": str(tmp_path / "log"),
        "DVRLINKD_HEALTH_TIMEOUT": "2",
        "DVRLINKD_TICK": "0.1",
        "DVRLINKD_BACKOFF_MAX": "1",
        "DVRLINKD_STOP_TIMEOUT": "5",
    }
    rig = Rig(tmp_path, env)
    try:
        yield rig
    finally:
        # Leave no process behind, whatever the test did.
        pids = [p for p in [rig.supervisor_pid(), *rig.daemon_pids()] if p is not None]
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_feeds_only_while_healthy_and_restarts_a_dead_daemon(rig: Rig) -> None:
    started = rig.run("start")
    assert started.returncode == 0 and "OK" in started.stdout, started
    supervisor = rig.supervisor_pid()
    assert supervisor is not None and pid_alive(supervisor)
    assert (rig.root / "state").is_dir() and (rig.root / "state").stat().st_mode & 0o777 == 0o700

    # Healthy: the watchdog is opened and fed.
    rig.wait_log("is healthy")
    wait_until("three feeds", lambda: len(rig.feeds()) >= 3, timeout=BOUND)
    first = rig.starts()[0].split()
    assert first[1:] == ["run", "--config", rig.env["DVRLINKD_CONFIG"], "WATCHDOG_USEC=2000000"], first
    assert (rig.root / "run/heartbeat").read_text().startswith(first[0] + " ")

    # Hung (alive, no heartbeat): no more feeds, and the daemon is left to the watchdog.
    (rig.fake / "hang").touch()
    rig.wait_log("not feeding the watchdog")
    fed_when_unhealthy = rig.feeds()
    # The fake stays alive and its heartbeat stays still for longer than the health timeout
    # again; the supervisor ticks every 0.1 s meanwhile.
    beat = (rig.root / "run/heartbeat").read_text()
    deadline = time.monotonic() + 4 * float(rig.env["DVRLINKD_HEALTH_TIMEOUT"])
    wait_until("time passing", lambda: time.monotonic() > deadline, timeout=BOUND)
    assert rig.feeds() == fed_when_unhealthy, "fed the watchdog while dvrlinkd was hung"
    assert (rig.root / "run/heartbeat").read_text() == beat
    assert len(rig.starts()) == 1, "a hung daemon was restarted although the watchdog is open"
    assert "V" not in rig.feeds()

    # Beating again: healthy again, fed again.
    (rig.fake / "hang").unlink()
    rig.wait_log("is healthy", count=2)
    wait_until("feeds after recovery", lambda: len(rig.feeds()) > len(fed_when_unhealthy), timeout=BOUND)

    # Dead: started again after the back-off, healthy and fed again.
    first_pid = rig.daemon_pids()[0]
    (rig.fake / "exit").write_text("1\n")
    rig.wait_log("exited with status 1: starting it again in 1 s")
    wait_until("a second start", lambda: len(rig.starts()) == 2, timeout=BOUND)
    assert not pid_alive(first_pid)
    rig.wait_log("is healthy", count=3)
    fed = len(rig.feeds())
    wait_until("feeds after the restart", lambda: len(rig.feeds()) > fed, timeout=BOUND)

    # Stop: daemon and supervisor end, the watchdog gets its magic close.
    stopped = rig.run("stop")
    assert stopped.returncode == 0 and "OK" in stopped.stdout, stopped
    assert not pid_alive(supervisor)
    assert not any(pid_alive(pid) for pid in rig.daemon_pids())
    assert rig.feeds().endswith("V") and rig.feeds().count("V") == 1, rig.feeds()
    assert set(rig.feeds()[:-1]) == {"."}
    assert not rig.pidfile.exists()
    assert "supervisor stopped" in rig.log_text()


def test_a_config_error_is_not_restarted_and_closes_the_watchdog(rig: Rig) -> None:
    assert rig.run("start").returncode == 0
    supervisor = rig.supervisor_pid()
    assert supervisor is not None
    rig.wait_log("is healthy")
    wait_until("a feed", lambda: len(rig.feeds()) >= 1, timeout=BOUND)
    (rig.fake / "exit").write_text("78\n")
    rig.wait_log("supervisor stopped")
    wait_until("the supervisor's exit", lambda: not pid_alive(supervisor), timeout=BOUND)
    assert "exited with status 78 (usage or config error): not starting it again" in rig.log_text()
    assert len(rig.starts()) == 1
    assert rig.feeds().endswith("V"), rig.feeds()
    assert not rig.pidfile.exists()
    assert "not running" in rig.run("status").stdout


def test_without_a_watchdog_a_hung_daemon_is_killed_and_started_again(rig: Rig) -> None:
    rig.env["DVRLINKD_WATCHDOG"] = ""
    assert rig.run("start").returncode == 0
    rig.wait_log("is healthy")
    (rig.fake / "hang").touch()
    rig.wait_log("is hung (no heartbeat for 2 s) and no watchdog is open: killing it")
    (rig.fake / "hang").unlink()
    wait_until("a second start", lambda: len(rig.starts()) == 2, timeout=BOUND)
    rig.wait_log("is healthy", count=2)
    assert not rig.watchdog.exists()
    assert "exited with status 137" in rig.log_text()  # SIGKILL
    assert rig.run("stop").returncode == 0


def test_start_twice_keeps_one_supervisor(rig: Rig) -> None:
    assert rig.run("start").returncode == 0
    first = rig.supervisor_pid()
    again = rig.run("start")
    assert "already running" in again.stdout, again
    assert rig.supervisor_pid() == first
    rig.wait_log("is healthy")
    assert len(rig.starts()) == 1
    assert rig.run("stop").returncode == 0
    assert "not running" in rig.run("stop").stdout


def test_the_daemon_beats_the_heartbeat_file(tmp_path: Path) -> None:
    """The daemon side of the contract: each watchdog ping writes a new line."""
    heartbeat = tmp_path / "heartbeat"
    notifier = Notifier({HEARTBEAT_FILE_ENV: str(heartbeat), "WATCHDOG_USEC": "60000000"})
    assert notifier.watchdog_period == 30.0
    assert not notifier.enabled  # no service manager: nothing else is sent
    lines = []
    for _ in range(3):
        assert notifier.watchdog()
        lines.append(heartbeat.read_text())
    assert lines == [f"{os.getpid()} {n}\n" for n in (1, 2, 3)]
    assert heartbeat.stat().st_mode & 0o777 == 0o644


def test_heartbeat_needs_an_absolute_path_and_a_period(tmp_path: Path) -> None:
    assert Notifier({HEARTBEAT_FILE_ENV: "heartbeat", "WATCHDOG_USEC": "60000000"}).watchdog_period is None
    assert Notifier({HEARTBEAT_FILE_ENV: str(tmp_path / "h")}).watchdog_period is None
    unwritable = Notifier({HEARTBEAT_FILE_ENV: str(tmp_path / "missing/h"), "WATCHDOG_USEC": "2000000"})
    assert unwritable.watchdog_period == 1.0
    assert not unwritable.watchdog()  # logged, not raised


OVERLAY_CONFIG = SCRIPT.parent / "rootfs-overlay/etc/dvrlink/dvrlinkd.toml"


def test_the_real_dvrlinkd_under_the_script(rig: Rig) -> None:
    """The image's config (provisioned, with test paths), the real daemon and the real script:
    healthy while its event loop turns, unfed while SIGSTOPped, healthy again on SIGCONT."""
    run_dir = rig.root / "run"
    text = OVERLAY_CONFIG.read_text()
    replacements = {
        f'public_key = "{"A" * 43}="': f'public_key = "{base64.b64encode(bytes(range(1, 33))).decode()}"',
        'host = "broker.example.net"': 'host = "127.0.0.1"',
        "port = 3478": "port = 9",  # discard: nothing answers, the daemon keeps registering
        'state_dir = "/var/lib/dvrlink"': f'state_dir = "{rig.root / "state"}"',
        'runtime_dir = "/run/dvrlink"': f'runtime_dir = "{run_dir}"',
        "enabled = true": "enabled = false",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"the image config no longer holds {old!r}: update the test"
        text = text.replace(old, new)
    config = rig.root / "dvrlinkd.toml"
    config.write_text(text)
    rig.env.update(
        DVRLINKD_BIN=str(Path(sys.executable).parent / "dvrlinkd"),
        DVRLINKD_CONFIG=str(config),
        DVRLINKD_HEALTH_TIMEOUT="4",
        DVRLINKD_TICK="0.2",
    )
    assert rig.run("start").returncode == 0
    rig.wait_log("is healthy")
    wait_until("feeds", lambda: len(rig.feeds()) >= 3, timeout=BOUND)
    match = re.search(r"started \S+ \(pid (\d+)\)", rig.log_text())
    assert match is not None, rig.log_text()
    daemon = int(match.group(1))
    assert (run_dir / "heartbeat").read_text().startswith(f"{daemon} ")

    unfed = rig.log_text().count("not feeding the watchdog")
    os.kill(daemon, signal.SIGSTOP)
    try:
        rig.wait_log("not feeding the watchdog", count=unfed + 1)
        fed = rig.feeds()
        deadline = time.monotonic() + 8
        wait_until("time passing", lambda: time.monotonic() > deadline, timeout=BOUND)
        assert rig.feeds() == fed, "fed the watchdog while dvrlinkd was stopped"
    finally:
        os.kill(daemon, signal.SIGCONT)
    healthy = rig.log_text().count("is healthy")
    rig.wait_log("is healthy", count=healthy + 1)
    wait_until("feeds after SIGCONT", lambda: len(rig.feeds()) > len(fed), timeout=BOUND)

    assert rig.run("stop").returncode == 0
    assert f"dvrlinkd (pid {daemon}) stopped with status 0" in rig.log_text(), rig.log_text()
    assert not pid_alive(daemon)
    assert rig.feeds().endswith("V")
    assert not (run_dir / "status.json").exists()  # removed on the clean stop


def test_default_log_goes_to_syslog_through_logger(rig: Rig) -> None:
    """Without DVRLINKD_LOG, the daemon's output and the supervisor's lines reach ``logger``."""
    tools = rig.root / "tools"
    tools.mkdir()
    syslog = rig.root / "syslog"
    logger = tools / "logger"
    # Stand-in for BusyBox logger: tag and each line read from stdin, into a file.
    logger.write_text(f'#!{BUSYBOX} sh\nwhile read -r line; do echo "$2: $line" >>"{syslog}"; done\n')
    logger.chmod(0o755)
    del rig.env["DVRLINKD_LOG"]
    rig.env["PATH"] = f"{tools}:{rig.env['PATH']}"
    assert rig.run("start").returncode == 0
    wait_until(
        "the healthy line in syslog",
        lambda: syslog.exists() and "is healthy" in syslog.read_text(),
        timeout=BOUND,
    )
    assert "dvrlinkd: S95dvrlinkd: supervising " in syslog.read_text()
    assert not (rig.root / "run/.dvrlinkd.log").exists()  # the FIFO's name is gone once both ends are open
    assert rig.run("stop").returncode == 0
    assert "dvrlinkd: S95dvrlinkd: supervisor stopped" in syslog.read_text()
