"""PPP supervision (PppLink) against a stand-in pppd, with the modem emulator on the data port.

pppd cannot run on this machine (there is no /dev/ppp), so ``pppd_command`` and ``chat_command``
point at ``hil/fake_pppd.py``: it parses the options file the daemon wrote, runs the daemon's connect
script (and, as chat, its chat script against the emulator's PTY, so the emulator's SIM decides by
APN whether ``ATD*99#`` gives ``CONNECT`` or ``NO CARRIER``), runs the ip-up/ip-down hooks with
pppd's arguments and environment, and exits with pppd's statuses. Negotiation failures and other
exit statuses are chosen with its environment switches. The real pppd path is for the QEMU rig.
Every wait is bounded by the link's own timeouts and pytest-timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvrlink.modem.apn import ApnSettings
from dvrlink.modem.manager import DataFailed, DataFailure, DataRequest, DataUp
from dvrlink.modem.ppp import FailureAction, LinkFailed, LinkUp, PppConfig, PppLink
from dvrlink.modem.profiles import DialMethod
from hil.modememu import ModemEmulator, SimCard

FAKE = str(Path(__file__).resolve().parent.parent / "hil" / "fake_pppd.py")
WORKING_APN = "internet.telekom"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def emulator() -> Iterator[ModemEmulator]:
    sim = SimCard.for_network("26201", working_apns=frozenset({WORKING_APN}))
    with ModemEmulator("quectel-ec25", sim, boot_delay_s=0.01) as emu:
        yield emu


def config(tmp_path: Path, **environment: str) -> PppConfig:
    return PppConfig(
        pppd_command=(sys.executable, FAKE),
        chat_command=(sys.executable, FAKE, "--as-chat"),
        run_dir=tmp_path / "ppp",
        chat_timeout_s=5,
        dial_timeout_s=5,
        up_timeout_s=20,
        stop_timeout_s=5,
        environment=environment,
    )


def test_up_reports_interface_and_addresses_then_down_sends_sigterm(
    tmp_path: Path, emulator: ModemEmulator
) -> None:
    async def run() -> tuple[LinkUp | LinkFailed, bool, LinkFailed | None, bool]:
        link = PppLink(config(tmp_path, FAKE_PPPD_LOCAL="100.70.1.2"), emulator.path)
        result = await link.start(ApnSettings(WORKING_APN))
        alive = link.alive
        stopped = await link.stop()
        return result, alive, stopped, link.alive

    result, alive, stopped, alive_after = asyncio.run(run())
    assert result == LinkUp("ppp0", "100.70.1.2", "10.64.64.1", ("10.11.12.13", "10.11.12.14"))
    assert alive and not alive_after
    # pppd exits with 5 ("terminated by SIGINT, SIGTERM or SIGHUP") when it gets our SIGTERM
    assert stopped == LinkFailed(FailureAction.STOPPED, f"pppd on {emulator.path} stopped by the daemon", 5)
    assert 'AT+CGDCONT=1,"IP","internet.telekom"' in emulator.commands
    assert "ATD*99#" in emulator.commands


def test_rejected_apn_no_carrier_and_the_next_one_works(tmp_path: Path, emulator: ModemEmulator) -> None:
    async def run() -> tuple[LinkUp | LinkFailed, LinkUp | LinkFailed]:
        link = PppLink(config(tmp_path), emulator.path)
        first = await link.start(ApnSettings("wrong.apn"))
        second = await link.start(ApnSettings(WORKING_APN))
        await link.stop()
        return first, second

    first, second = asyncio.run(run())
    assert isinstance(first, LinkFailed)
    assert (first.action, first.failure, first.exit_code) == (FailureAction.RETRY, DataFailure.NO_CARRIER, 8)
    assert "NO CARRIER" in first.reason
    assert isinstance(second, LinkUp) and second.interface == "ppp0"


@pytest.mark.parametrize(
    ("negotiation", "code", "action"),
    [
        ("ipcp-fail", 10, FailureAction.NEXT_APN),
        ("auth-fail", 19, FailureAction.NEXT_APN),
    ],
)
def test_negotiation_failures(
    tmp_path: Path, emulator: ModemEmulator, negotiation: str, code: int, action: FailureAction
) -> None:
    link = PppLink(config(tmp_path, FAKE_PPPD_NEGOTIATION=negotiation), emulator.path)
    result = asyncio.run(link.start(ApnSettings(WORKING_APN)))
    assert isinstance(result, LinkFailed)
    assert (result.action, result.exit_code) == (action, code)


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (2, FailureAction.CONFIG),
        (3, FailureAction.CONFIG),
        (4, FailureAction.CONFIG),
        (6, FailureAction.RECOVER),
        (7, FailureAction.RECOVER),
        (16, FailureAction.RETRY),
    ],
)
def test_exit_statuses_before_the_link_is_up(tmp_path: Path, code: int, action: FailureAction) -> None:
    link = PppLink(config(tmp_path, FAKE_PPPD_EXIT=str(code)), "/dev/null")
    result = asyncio.run(link.start(ApnSettings("any")))
    assert isinstance(result, LinkFailed)
    assert (result.action, result.exit_code) == (action, code)


def test_unknown_option_is_pppds_options_error(tmp_path: Path) -> None:
    link = PppLink(
        PppConfig(**{**_fields(config(tmp_path)), "extra_options": ("no-such-option",)}), "/dev/null"
    )
    result = asyncio.run(link.start(ApnSettings("any")))
    assert isinstance(result, LinkFailed)
    assert (result.action, result.exit_code) == (FailureAction.CONFIG, 2)
    assert "option" in result.reason


def _fields(cfg: PppConfig) -> dict[str, object]:
    return {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}


def test_missing_pppd_is_a_config_error(tmp_path: Path) -> None:
    link = PppLink(
        PppConfig(pppd_command=(str(tmp_path / "no-pppd"),), run_dir=tmp_path / "ppp"), "/dev/null"
    )
    result = asyncio.run(link.start(ApnSettings("any")))
    assert isinstance(result, LinkFailed) and result.action is FailureAction.CONFIG
    assert "install pppd" in result.reason


def test_modem_hangup_after_up_is_retry(tmp_path: Path, emulator: ModemEmulator) -> None:
    async def run() -> LinkFailed:
        link = PppLink(config(tmp_path), emulator.path)
        assert isinstance(await link.start(ApnSettings(WORKING_APN)), LinkUp)
        emulator.drop_carrier()  # the network ends the call: NO CARRIER on the data port
        return await asyncio.wait_for(link.wait_down(), 20)

    ended = asyncio.run(run())
    assert (ended.action, ended.exit_code) == (FailureAction.RETRY, 16)
    assert "hung up" in ended.reason


def test_echo_timeout_after_up_is_retry(tmp_path: Path, emulator: ModemEmulator) -> None:
    async def run() -> LinkFailed:
        link = PppLink(config(tmp_path, FAKE_PPPD_NEGOTIATION="echo-timeout"), emulator.path)
        assert isinstance(await link.start(ApnSettings(WORKING_APN)), LinkUp)
        return await asyncio.wait_for(link.wait_down(), 20)

    ended = asyncio.run(run())
    assert (ended.action, ended.exit_code) == (FailureAction.RETRY, 15)


def test_pppd_killed_is_reported(tmp_path: Path, emulator: ModemEmulator) -> None:
    async def run() -> tuple[LinkFailed, bool]:
        link = PppLink(config(tmp_path), emulator.path)
        assert isinstance(await link.start(ApnSettings(WORKING_APN)), LinkUp)
        assert link.pid is not None
        os.kill(link.pid, signal.SIGKILL)
        ended = await asyncio.wait_for(link.wait_down(), 20)
        return ended, link.alive

    ended, alive = asyncio.run(run())
    assert (ended.action, ended.exit_code) == (FailureAction.RETRY, -signal.SIGKILL)
    assert "SIGKILL" in ended.reason
    assert not alive


def test_pppd_ignoring_sigterm_is_killed(tmp_path: Path, emulator: ModemEmulator) -> None:
    async def run() -> LinkFailed | None:
        cfg = PppConfig(**{**_fields(config(tmp_path, FAKE_PPPD_IGNORE_TERM="1")), "stop_timeout_s": 0.5})
        link = PppLink(cfg, emulator.path)
        assert isinstance(await link.start(ApnSettings(WORKING_APN)), LinkUp)
        return await link.stop()

    stopped = asyncio.run(run())
    assert stopped is not None
    assert (stopped.action, stopped.exit_code) == (FailureAction.STOPPED, -signal.SIGKILL)


def test_secrets_never_reach_the_log(
    tmp_path: Path, emulator: ModemEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def run() -> None:
        link = PppLink(config(tmp_path), emulator.path)
        result = await link.start(
            ApnSettings(WORKING_APN, username="carrier-user", password="s3cret-pw", auth="chap")
        )
        assert isinstance(result, LinkUp)
        await link.stop()

    asyncio.run(run())
    assert "pppd[" in caplog.text  # pppd's output is logged...
    assert "s3cret-pw" not in caplog.text  # ...but never the password
    assert "s3cret-pw" in (tmp_path / "ppp" / "options").read_text()


def test_up_twice_is_a_caller_error(tmp_path: Path, emulator: ModemEmulator) -> None:
    async def run() -> None:
        link = PppLink(config(tmp_path), emulator.path)
        assert isinstance(await link.start(ApnSettings(WORKING_APN)), LinkUp)
        try:
            with pytest.raises(RuntimeError, match="already running"):
                await link.start(ApnSettings(WORKING_APN))
        finally:
            await link.stop()

    asyncio.run(run())


def test_the_managers_data_link_calls(tmp_path: Path, emulator: ModemEmulator) -> None:
    """up(request)/probe()/counters()/down() as the modem runner calls them."""
    sysfs = tmp_path / "net"
    (sysfs / "ppp0" / "statistics").mkdir(parents=True)
    (sysfs / "ppp0" / "statistics" / "rx_bytes").write_text("1234\n")
    (sysfs / "ppp0" / "statistics" / "tx_bytes").write_text("567\n")
    probed: list[LinkUp] = []

    async def path_probe(up: LinkUp) -> bool:
        probed.append(up)
        return True

    def request(apn: str) -> DataRequest:
        return DataRequest(ApnSettings(apn), 1, DialMethod.PPP, "ATD*99#", "quectel-ec25")

    async def run() -> list[object]:
        link = PppLink(config(tmp_path), emulator.path, path_probe=path_probe, sysfs_net=sysfs)
        seen: list[object] = [await link.up(request("wrong.apn"))]
        seen.append(await link.probe())
        seen.append(await link.up(request(WORKING_APN)))
        seen += [await link.probe(), link.counters()]
        emulator.drop_carrier()
        await asyncio.wait_for(link.wait_down(), 20)
        seen += [await link.probe(), link.counters()]
        await link.down()
        seen.append(await link.up(request(WORKING_APN)))  # again after the drop
        await link.down()
        return seen

    failed, probe_down, up, probe_up, counters_up, probe_after, counters_after, again = asyncio.run(run())
    assert isinstance(failed, DataFailed) and failed.reason is DataFailure.NO_CARRIER
    assert probe_down is False
    assert up == DataUp("ppp0", "10.64.64.64")
    assert (probe_up, counters_up) == (True, (1234, 567))
    assert [p.interface for p in probed] == ["ppp0"]
    assert (probe_after, counters_after) == (False, (0, 0))  # pppd ended: no probe needed to tell
    assert again == DataUp("ppp0", "10.64.64.64")


@pytest.mark.parametrize(
    ("environment", "extra", "code", "says", "pppd_says"),
    [
        ({}, ("no-such-option",), 2, "options error", "unrecognized option 'no-such-option'"),
        ({"FAKE_PPPD_NOT_ROOT": "1"}, (), 3, "install pppd setuid root", "must be root to run pppd"),
        (
            {"FAKE_PPPD_DEV_PPP": "/nonexistent/ppp"},
            (),
            4,
            "CONFIG_PPP_ASYNC",
            "lacks kernel support for PPP",
        ),
    ],
)
def test_a_system_that_cannot_run_pppd_is_a_config_failure_that_says_what_to_fix(
    tmp_path: Path, environment: dict[str, str], extra: tuple[str, ...], code: int, says: str, pppd_says: str
) -> None:
    """pppd's options error (2), not root (3) and no kernel PPP (4), as the stand-in reproduces them
    (with pppd's own messages): the manager gets ``DataFailure.CONFIG`` (no APN or modem step fixes
    these), and the reason names what to fix."""
    cfg = PppConfig(**{**_fields(config(tmp_path, **environment)), "extra_options": extra})
    link = PppLink(cfg, "/dev/null")
    result = asyncio.run(link.start(ApnSettings("any")))
    assert isinstance(result, LinkFailed)
    assert (result.action, result.exit_code, result.failure) == (
        FailureAction.CONFIG,
        code,
        DataFailure.CONFIG,
    )
    assert says in result.reason
    failed = result.to_data_failed()
    assert failed.reason is DataFailure.CONFIG and says in failed.detail
    # the stand-in itself: pppd's status and words, from the options file the daemon wrote
    options = next((tmp_path / "ppp").glob("*options*"))
    ran = subprocess.run(
        [sys.executable, FAKE, "file", str(options)],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert ran.returncode == code and pppd_says in ran.stdout
