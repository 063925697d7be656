"""ECM data link: DHCP on the modem's network interface, with a stand-in DHCP client.

``hil/fake_udhcpc.py`` takes BusyBox udhcpc's options and prints what it prints, but configures
nothing, so this machine's network stays as it is; the interface's existence and byte counters are
read from a fake ``/sys/class/net`` in a temporary directory. The AT half of an ECM call (the
vendor dial command) runs against the PTY modem emulator through the real AT engine and link.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

import pytest

from dvrlink.driver.at_link import AtLink
from dvrlink.modem.apn import ApnSettings
from dvrlink.modem.ecm import DEFAULT_DHCP_COMMAND, EcmConfig, EcmLink, dhcp_argv
from dvrlink.modem.manager import DataFailed, DataFailure, DataRequest, DataUp
from dvrlink.modem.ppp import FailureAction, LinkFailed, LinkUp
from dvrlink.modem.profiles import DialMethod, profile_by_name
from dvrlink.protocol.at_engine import AtEngine
from dvrlink.protocol.at_events import CommandCompleted
from hil.modememu import ModemEmulator, SimCard

FAKE = str(Path(__file__).resolve().parent.parent / "hil" / "fake_udhcpc.py")
REQUEST = DataRequest(ApnSettings("internet"), 1, DialMethod.ECM, "", "quectel-ec25")

pytestmark = pytest.mark.timeout(60)


def sysfs(tmp_path: Path, interface: str = "usb0", rx: int = 4096, tx: int = 1024) -> Path:
    statistics = tmp_path / "net" / interface / "statistics"
    statistics.mkdir(parents=True)
    (statistics / "rx_bytes").write_text(f"{rx}\n")
    (statistics / "tx_bytes").write_text(f"{tx}\n")
    return tmp_path / "net"


def config(
    tmp_path: Path, *extra: str, timeout: float = 20.0, oneshot: bool = False, **environment: str
) -> EcmConfig:
    return EcmConfig(
        dhcp_command=(sys.executable, FAKE, *DEFAULT_DHCP_COMMAND[1:], *extra),
        dhcp_timeout_s=timeout,
        oneshot=oneshot,
        sysfs_net=tmp_path / "net",
        environment={"FAKE_DHCP_RECORD": str(tmp_path / "argv.json"), **environment},
    )


def test_config_and_argv() -> None:
    assert dhcp_argv(EcmConfig(), "usb0") == ["udhcpc", "-f", "-i", "usb0", "-t", "5", "-T", "3", "-n", "-R"]
    with pytest.raises(ValueError, match="interface name"):
        dhcp_argv(EcmConfig(), "usb0; reboot")
    with pytest.raises(ValueError, match="iface"):
        EcmConfig(dhcp_command=("dhclient", "usb0"))
    with pytest.raises(ValueError, match="regular expression"):
        EcmConfig(lease_pattern="(")


def test_lease_brings_the_link_up_and_down_releases_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dvrlink.modem.ecm")
    sysfs(tmp_path)
    probed: list[LinkUp] = []

    async def path_probe(up: LinkUp) -> bool:
        probed.append(up)
        return True

    async def run() -> tuple[object, ...]:
        link = EcmLink(config(tmp_path, FAKE_DHCP_IP="10.170.9.9"), "usb0", path_probe=path_probe)
        result = await link.up(REQUEST)
        healthy, counters, pid = await link.probe(), link.counters(), link.pid
        await link.down()
        return result, healthy, counters, pid, await link.probe(), link.counters()

    result, healthy, counters, pid, healthy_after, counters_after = asyncio.run(run())
    assert result == DataUp("usb0", "10.170.9.9")
    assert (healthy, counters) == (True, (4096, 1024))
    assert probed == [LinkUp("usb0", "10.170.9.9")]
    assert pid is not None
    assert (healthy_after, counters_after) == (False, (0, 0))
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("-i") + 1] == "usb0"
    assert "unicasting a release" in caplog.text  # SIGTERM reached the client, which released


def test_no_lease_is_an_address_failure(tmp_path: Path) -> None:
    sysfs(tmp_path)
    result = asyncio.run(EcmLink(config(tmp_path, FAKE_DHCP_RESULT="fail"), "usb0").start())
    assert isinstance(result, LinkFailed)
    assert (result.action, result.failure, result.exit_code) == (FailureAction.NEXT_APN, DataFailure.IPCP, 1)
    assert "usb0" in result.reason


def test_silent_dhcp_times_out_and_the_client_is_stopped(tmp_path: Path) -> None:
    sysfs(tmp_path)

    async def run() -> tuple[DataUp | DataFailed, int | None]:
        link = EcmLink(config(tmp_path, timeout=0.5, FAKE_DHCP_RESULT="silent"), "usb0")
        return await link.up(REQUEST), link.pid

    result, pid = asyncio.run(run())
    assert isinstance(result, DataFailed) and result.reason is DataFailure.TIMEOUT
    assert pid is None


def test_missing_interface_is_no_device_with_a_hint(tmp_path: Path) -> None:
    sysfs(tmp_path, "usb0")
    result = asyncio.run(EcmLink(config(tmp_path), "wwan0").start())
    assert isinstance(result, LinkFailed) and result.failure is DataFailure.NO_DEVICE
    assert "usbnet" in result.reason and "wwan0" in result.reason


def test_missing_client_is_a_config_error(tmp_path: Path) -> None:
    sysfs(tmp_path)
    cfg = EcmConfig(dhcp_command=(str(tmp_path / "no-udhcpc"), "-i", "{iface}"), sysfs_net=tmp_path / "net")
    result = asyncio.run(EcmLink(cfg, "usb0").start())
    assert isinstance(result, LinkFailed) and result.action is FailureAction.CONFIG
    assert "install it" in result.reason


def test_client_exit_after_the_lease_takes_the_link_down(tmp_path: Path) -> None:
    sysfs(tmp_path)

    async def run() -> tuple[object, bool, bool]:
        link = EcmLink(config(tmp_path, FAKE_DHCP_EXIT_AFTER="0.1"), "usb0")
        result = await link.start()
        assert link._proc is not None
        await asyncio.wait_for(link._proc.wait(), 10)
        healthy = await link.probe()
        await link.down()
        again = await link.start()  # a new client after the old one ended
        up_again = await link.probe()
        await link.stop()
        return (result, again), healthy, up_again

    (result, again), healthy, up_again = asyncio.run(run())
    assert isinstance(result, LinkUp) and isinstance(again, LinkUp)
    assert healthy is False and up_again is True


def test_one_shot_client_stays_up_after_it_exits(tmp_path: Path) -> None:
    sysfs(tmp_path)

    async def run() -> tuple[LinkUp | LinkFailed, bool]:
        link = EcmLink(config(tmp_path, "-q", oneshot=True), "usb0")
        result = await link.start()
        assert link._proc is not None
        await asyncio.wait_for(link._proc.wait(), 10)
        return result, await link.probe()

    result, healthy = asyncio.run(run())
    assert result == LinkUp("usb0", "10.170.3.7")
    assert healthy is True


@pytest.mark.parametrize("apn", ["internet.telekom", "wrong.apn"])
def test_quectel_ecm_call_over_the_emulator_then_dhcp(tmp_path: Path, apn: str) -> None:
    """The whole ECM bring-up: context and vendor dial over the AT engine, then DHCP."""
    sysfs(tmp_path)
    profile = profile_by_name("quectel-ec25")
    sim = SimCard.for_network("26201", working_apns=frozenset({"internet.telekom"}))

    async def run(path: str) -> tuple[bool, DataUp | DataFailed | None]:
        link = AtLink(path, AtEngine(profile.at_config()))
        await link.open()
        try:
            context = await link.command(f'AT+CGDCONT=1,"IP","{apn}"')
            assert isinstance(context, CommandCompleted)
            dialled = await link.command(profile.connect_command(1, apn))
        finally:
            link.close()
        if not isinstance(dialled, CommandCompleted):
            return False, None
        ecm = EcmLink(config(tmp_path), "usb0")
        try:
            return True, await ecm.up(DataRequest(ApnSettings(apn), 1, DialMethod.ECM, "", profile.name))
        finally:
            await ecm.down()

    with ModemEmulator("quectel-ec25", sim, boot_delay_s=0.01) as emu:
        dialled, result = asyncio.run(run(emu.path))
        assert "AT+QNETDEVCTL=1,1,1" in emu.commands
    if apn == "wrong.apn":
        assert (dialled, result) == (False, None)  # +CME ERROR: no DHCP attempted
    else:
        assert dialled and result == DataUp("usb0", "10.170.3.7")
