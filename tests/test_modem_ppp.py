"""PPP data link, the pure parts: the files the daemon writes for pppd and the exit-status mapping.

The supervision of a running pppd is in test_modem_ppp_supervisor.py (against hil/fake_pppd.py,
because pppd cannot run here: there is no /dev/ppp).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from dvrlink.modem.apn import ApnSettings
from dvrlink.modem.manager import DataFailed, DataFailure
from dvrlink.modem.ppp import (
    ABORT_STRINGS,
    PPPD_EXIT,
    FailureAction,
    LinkUp,
    PppConfig,
    PppFiles,
    build_chat,
    build_options,
    outcome_for_exit,
    parse_status_line,
    write_files,
)

DEVICE = "/dev/ttyUSB3"


def options_words(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_options_let_the_daemon_own_retries() -> None:
    text = build_options(PppConfig(), DEVICE, ApnSettings("internet"), PppFiles(Path("/run/x")))
    lines = options_words(text)
    for forbidden in ("persist", "demand", "maxfail", "updetach"):
        assert not any(line.split()[0] == forbidden for line in lines), forbidden
    for needed in (
        "nodetach",
        "noipdefault",
        "noauth",
        "usepeerdns",
        "defaultroute",
        "linkname dvrlink",
        "ipparam dvrlink",
        "lcp-echo-interval 10",
        "lcp-echo-failure 4",
        "lcp-echo-adaptive",
        'ip-up-script "/run/x/ip-up"',
        'ip-down-script "/run/x/ip-down"',
        'connect "/run/x/connect"',
        f'"{DEVICE}"',
    ):
        assert needed in lines, needed
    assert not any(line.startswith(("user", "password")) for line in lines)


def test_options_follow_the_config_and_the_apn_credentials() -> None:
    config = PppConfig(defaultroute=False, usepeerdns=False, lcp_echo_interval_s=0, extra_options=("novj",))
    apn = ApnSettings("web", username='odd"user', password="pa\\ss", auth="pap")
    lines = options_words(build_options(config, DEVICE, apn, PppFiles(Path("/run/x"))))
    assert "nodefaultroute" in lines and "defaultroute" not in lines
    assert "usepeerdns" not in lines
    assert not any(line.startswith("lcp-echo") for line in lines)
    assert 'user "odd\\"user"' in lines
    assert 'password "pa\\\\ss"' in lines
    assert "refuse-chap" in lines and "refuse-pap" not in lines
    assert lines[-1] == "novj"


def test_unsafe_values_and_retry_options_are_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        build_options(PppConfig(), DEVICE, ApnSettings("x", "u", "p\nersist"), PppFiles(Path("/r")))
    with pytest.raises(ValueError, match="quote"):
        build_chat(PppConfig(), ApnSettings("it's"))
    with pytest.raises(ValueError, match="persist"):
        PppConfig(extra_options=("persist",))
    with pytest.raises(ValueError, match="linkname"):
        PppConfig(linkname="a b")


def test_chat_script_sets_the_context_and_dials_with_aborts_in_order() -> None:
    text = build_chat(PppConfig(cid=2, dial_timeout_s=90), ApnSettings("internet.telekom"), "ATD*99***2#")
    lines = text.splitlines()
    assert lines[: len(ABORT_STRINGS)] == [f"ABORT '{s}'" for s in ABORT_STRINGS]
    assert ABORT_STRINGS.index("+CME ERROR") < ABORT_STRINGS.index("ERROR")
    assert 'OK \'AT+CGDCONT=2,"IP","internet.telekom"\'' in lines
    assert "OK 'ATD*99***2#'" in lines
    assert lines[-2:] == ["TIMEOUT 90", "CONNECT ''"]


def test_files_modes_secrets_only_in_the_0600_options(tmp_path: Path) -> None:
    config = PppConfig(run_dir=tmp_path / "ppp")
    files = write_files(config, DEVICE, ApnSettings("web", "user", "s3cret-pw", "chap"))
    assert stat.S_IMODE(files.options.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.chat.stat().st_mode) == 0o600
    for script in (files.connect, files.ip_up, files.ip_down):
        assert stat.S_IMODE(script.stat().st_mode) == 0o700
    assert stat.S_ISFIFO(files.events.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "ppp").stat().st_mode) == 0o700
    holding = [p.name for p in (tmp_path / "ppp").iterdir() if p.is_file() and b"s3cret-pw" in p.read_bytes()]
    assert holding == ["options"]
    # written again (next APN): same FIFO, no stale connect status
    files.connect_status.write_text("4\n")
    again = write_files(config, DEVICE, ApnSettings("web2"))
    assert not again.connect_status.exists()
    assert b"s3cret-pw" not in again.options.read_bytes()


def test_status_line_from_the_hook() -> None:
    line = (
        "up\tiface=ppp0\ttty=/dev/ttyUSB3\tlocal=10.1.2.3\tremote=10.64.64.1\tdns1=8.8.8.8\tdns2=\t"
        "ipparam=dvrlink\n"
    )
    assert parse_status_line(line) == ("up", LinkUp("ppp0", "10.1.2.3", "10.64.64.1", ("8.8.8.8",)))
    assert parse_status_line("down\tiface=ppp0\tlocal=\tremote=") == ("down", LinkUp("ppp0", "", "", ()))
    assert parse_status_line("garbage") is None
    assert parse_status_line("up\tlocal=1.2.3.4") is None


A, F = FailureAction, DataFailure


@pytest.mark.parametrize(
    ("code", "action", "failure"),
    [
        (0, A.RETRY, F.OTHER),
        (1, A.CONFIG, F.CONFIG),
        (2, A.CONFIG, F.CONFIG),
        (3, A.CONFIG, F.CONFIG),
        (4, A.CONFIG, F.CONFIG),
        (5, A.STOPPED, F.OTHER),
        (6, A.RECOVER, F.NO_DEVICE),
        (7, A.RECOVER, F.NO_DEVICE),
        (9, A.CONFIG, F.CONFIG),
        (10, A.NEXT_APN, F.IPCP),
        (11, A.NEXT_APN, F.AUTH),
        (12, A.RETRY, F.OTHER),
        (13, A.RETRY, F.OTHER),
        (14, A.RETRY, F.OTHER),
        (15, A.RETRY, F.NO_CARRIER),
        (16, A.RETRY, F.NO_CARRIER),
        (17, A.RECOVER, F.OTHER),
        (18, A.RECOVER, F.OTHER),
        (19, A.NEXT_APN, F.AUTH),
        (99, A.RETRY, F.OTHER),
    ],
)
def test_every_pppd_exit_status_has_an_action(code: int, action: FailureAction, failure: DataFailure) -> None:
    failed = outcome_for_exit(code, DEVICE)
    assert failed.action is action
    assert failed.failure is failure
    assert failed.to_data_failed() == DataFailed(failure, f"{action.value}: {failed.reason}")
    assert failed.exit_code == code
    assert DEVICE in failed.reason and str(code) in failed.reason


def test_exit_table_covers_pppd_statuses_and_config_errors_say_what_to_do() -> None:
    assert set(PPPD_EXIT) == set(range(20))
    assert "CONFIG_PPP" in outcome_for_exit(4, DEVICE).reason
    assert "root" in outcome_for_exit(3, DEVICE).reason


@pytest.mark.parametrize(
    ("chat_status", "action", "failure", "seen"),
    [
        (4, FailureAction.RETRY, DataFailure.NO_CARRIER, "NO CARRIER"),
        (5, FailureAction.RETRY, DataFailure.NO_CARRIER, "NO DIALTONE"),
        (6, FailureAction.RETRY, DataFailure.NO_CARRIER, "BUSY"),
        (8, FailureAction.NEXT_APN, DataFailure.REJECTED, "+CME ERROR"),
        (9, FailureAction.NEXT_APN, DataFailure.REJECTED, "ERROR"),
        (3, FailureAction.RECOVER, DataFailure.TIMEOUT, "timed out"),
        (2, FailureAction.CONFIG, DataFailure.CONFIG, "status 2"),
        (None, FailureAction.RETRY, DataFailure.OTHER, "status None"),
    ],
)
def test_connect_failures_by_chat_status(
    chat_status: int | None, action: FailureAction, failure: DataFailure, seen: str
) -> None:
    failed = outcome_for_exit(8, DEVICE, chat_status)
    assert (failed.action, failed.failure, failed.exit_code) == (action, failure, 8)
    assert seen in failed.reason


def test_killed_pppd() -> None:
    failed = outcome_for_exit(-signal.SIGKILL, DEVICE)
    assert failed.action is FailureAction.RETRY
    assert "SIGKILL" in failed.reason


def test_hook_reports_pppds_arguments_and_gives_up_without_a_reader(tmp_path: Path) -> None:
    """The ip-up script run as pppd runs it; then again with nobody reading the FIFO."""
    files = write_files(PppConfig(run_dir=tmp_path, hook_timeout_s=1), DEVICE, ApnSettings("web"))
    env = {**os.environ, "DNS1": "192.0.2.53", "DNS2": "192.0.2.54"}
    args = [str(files.ip_up), "ppp0", DEVICE, "115200", "100.64.1.2", "10.64.64.1", "dvrlink"]
    reader = os.open(files.events, os.O_RDONLY | os.O_NONBLOCK)
    try:
        subprocess.run(args, env=env, check=True, timeout=30)
        line = os.read(reader, 4096).decode()
    finally:
        os.close(reader)
    assert parse_status_line(line) == (
        "up",
        LinkUp("ppp0", "100.64.1.2", "10.64.64.1", ("192.0.2.53", "192.0.2.54")),
    )
    if shutil.which("timeout"):
        # no reader: opening the FIFO would block for ever; the hook gives up after 1 s
        done = subprocess.run(args, env=env, check=False, timeout=30)
        assert done.returncode != 0


def test_hang_up_adds_a_disconnect_script_with_guard_times(tmp_path: Path) -> None:
    config = PppConfig(run_dir=tmp_path / "ppp", hang_up=True, chat_command=("/usr/sbin/chat",))
    files = write_files(config, "/dev/ttyS2", ApnSettings("internet"))
    assert f'disconnect "{files.disconnect}"' in files.options.read_text()
    assert "\\d+++\\d\\c" in files.hangup_chat.read_text() and "OK ATH" in files.hangup_chat.read_text()
    assert str(files.hangup_chat) in files.disconnect.read_text()
    plain = PppConfig(run_dir=tmp_path / "plain")
    options = write_files(plain, "/dev/ttyUSB3", ApnSettings("internet")).options.read_text()
    assert "\ndisconnect " not in options
