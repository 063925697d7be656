"""``[modem]`` in dvrlinkd's config, the modem lines of ``dvrlinkd status``, the board hooks and the
pieces of the modem service that need no emulator."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from support.daemon_config import KEY_B64, MINIMAL, load_text, run_dvrlinkd, write

from dvrlink.daemon.config import DEFAULT_DHCP_COMMAND, ModemSettings
from dvrlink.daemon.errors import ConfigError
from dvrlink.daemon.modem_service import (
    BoardHooks,
    CurrentPortLink,
    ModemPorts,
    ModemService,
    ModemTuning,
    advice,
    cap_bytes,
)
from dvrlink.daemon.status import DaemonStatus, ModemBlock, format_status
from dvrlink.modem.apn import DEFAULT_DATABASE, ApnSettings
from dvrlink.modem.ecm import EcmConfig
from dvrlink.modem.manager import DataFailure, DataRequest, ModemState, ModemStatus, SimState
from dvrlink.modem.netprobe import DataPathProbe, ProbeConfig
from dvrlink.modem.ppp import PppConfig
from dvrlink.modem.profiles import DialMethod

FULL = """
[modem]
enabled = true
profile = "simcom-sim7600"
port = "/dev/ttyUSB2"
data_port = "/dev/ttyUSB3"
net_interface = "usb0"
pin = "1234"
apn = "internet.example"
apn_username = "user"
apn_password = "secret"
apn_auth = "CHAP"
allow_roaming = true
provider_database = "providers.xml"
billing_cycle_day = 15
monthly_cap_mb = 500
cap_warn_percent = 70
cap_stop_percent = 95
data_link = "ecm"
pppd = ["/usr/bin/python3", "fake_pppd.py"]
chat = "/usr/sbin/chat"
dhcp_command = ["udhcpc", "-f", "-i", "{iface}"]
reboots_per_day = 1
usb_reset = false
power_cycle_command = ["/usr/libexec/modem-power", "cycle"]
board_reboot = true
reboot_command = ["reboot"]
probe_host = "probe.example.net"
probe_port = 3479
"""


def test_modem_is_off_by_default_and_a_full_block_maps_to_settings(tmp_path: Path) -> None:
    assert load_text(tmp_path, MINIMAL).modem == ModemSettings()
    assert ModemSettings().enabled is False
    modem = load_text(tmp_path, MINIMAL + FULL).modem
    assert modem.enabled and modem.profile == "simcom-sim7600"
    assert (modem.port, modem.data_port, modem.net_interface) == ("/dev/ttyUSB2", "/dev/ttyUSB3", "usb0")
    assert (modem.pin, modem.apn, modem.apn_auth) == ("1234", "internet.example", "chap")
    assert "secret" not in repr(modem) and "1234" not in repr(modem)
    assert modem.provider_database == tmp_path / "providers.xml"  # relative to the config file
    assert (modem.billing_cycle_day, modem.monthly_cap_mb) == (15, 500)
    assert modem.pppd == ("/usr/bin/python3", "fake_pppd.py") and modem.chat == ("/usr/sbin/chat",)
    assert modem.power_cycle_command == ("/usr/libexec/modem-power", "cycle")
    assert (modem.board_reboot, modem.usb_reset, modem.reboots_per_day) == (True, False, 1)
    assert (modem.probe_host, modem.probe_port) == ("probe.example.net", 3479)
    assert cap_bytes(modem) == 475_000_000
    assert ModemSettings().dhcp_command == DEFAULT_DHCP_COMMAND


def test_enabled_alone_is_a_complete_modem_config(tmp_path: Path) -> None:
    modem = load_text(tmp_path, MINIMAL + "[modem]\nenabled = true\n").modem
    assert modem.enabled and modem.profile == "auto" and modem.port == ""
    assert modem.provider_database == DEFAULT_DATABASE
    assert modem.board_reboot is False and modem.usb_reset is True


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("enabled = true", 'enabled = "yes"', r"\[modem\] enabled = \"yes\": expected true or false"),
        (
            'profile = "simcom-sim7600"',
            'profile = "nokia"',
            r"\[modem\] profile = \"nokia\": expected \"auto\" or",
        ),
        ('pin = "1234"', 'pin = "12ab"', r"\[modem\] pin = \"\*\*\*\*\": a SIM PIN is 4 to 8 digits"),
        ('apn_auth = "CHAP"', 'apn_auth = "mschap"', r"\[modem\] apn_auth = \"mschap\": expected \"pap\""),
        ('apn = "internet.example"', 'apn = "a\\"b"', r"\[modem\] apn = .*quotes"),
        ('apn = "internet.example"', 'apn = ""', r'\[modem\] apn_username = "user": credentials need an APN'),
        ('port = "/dev/ttyUSB2"', 'port = "ttyUSB2"', r"\[modem\] port = \"ttyUSB2\": expected an absolute"),
        ('port = "/dev/ttyUSB2"', 'port = ""', r"\[modem\] data_port = \"/dev/ttyUSB3\": needs port"),
        ('net_interface = "usb0"', 'net_interface = "usb 0"', r"\[modem\] net_interface = \"usb 0\""),
        ('data_link = "ecm"', 'data_link = "qmi"', r'\[modem\] data_link = "qmi": expected one of auto, ppp'),
        (
            "billing_cycle_day = 15",
            "billing_cycle_day = 32",
            r"billing_cycle_day = 32: out of range.*1 to 31",
        ),
        ("monthly_cap_mb = 500", "monthly_cap_mb = -1", r"monthly_cap_mb = -1: out of range"),
        ("cap_warn_percent = 70", "cap_warn_percent = 99", r"cap_warn_percent = 99: must not be above"),
        (
            'pppd = ["/usr/bin/python3", "fake_pppd.py"]',
            "pppd = 5",
            r"\[modem\] pppd = 5: expected a program",
        ),
        ('reboot_command = ["reboot"]', "reboot_command = []", r"reboot_command = \[\]: expected a program"),
        (
            'dhcp_command = ["udhcpc", "-f", "-i", "{iface}"]',
            'dhcp_command = ["udhcpc"]',
            r"dhcp_command = \[\"udhcpc\"\]: pass the interface as \"\{iface\}\"",
        ),
        ("reboots_per_day = 1", "reboots_per_day = 100", r"reboots_per_day = 100: out of range"),
        ('probe_host = "probe.example.net"', 'probe_host = "udp://x"', r"probe_host = .*without scheme"),
        ("probe_port = 3479", "probe_port = 70000", r"probe_port = 70000: out of range"),
        (
            "usb_reset = false",
            "usb_rest = false",
            r"unknown key usb_rest in \[modem\]; did you mean usb_reset\?",
        ),
    ],
)
def test_bad_modem_values_name_the_key_and_what_to_do(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in FULL
    with pytest.raises(ConfigError, match=expected) as info:
        load_text(tmp_path, MINIMAL + FULL.replace(old, new, 1))
    assert str(tmp_path / "dvrlinkd.toml") in str(info.value)


def test_profile_combinations(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"port = \"/dev/ttyS1\": with an explicit port, set profile too"):
        load_text(tmp_path, MINIMAL + '[modem]\nport = "/dev/ttyS1"\n')
    with pytest.raises(
        ConfigError, match=r"data_link = \"ecm\": profile simcom-sim800 has no ECM call command"
    ):
        load_text(tmp_path, MINIMAL + '[modem]\nprofile = "simcom-sim800"\ndata_link = "ecm"\n')


def test_check_config_exits_78_on_a_bad_modem_block(tmp_path: Path) -> None:
    good = write(tmp_path, MINIMAL + '[modem]\nenabled = true\napn = "internet"\n')
    ok = run_dvrlinkd("--check-config", "--config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "modem auto on detected by USB ID, data link auto, APN internet" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "[modem]\nenabled = true\nbilling_cycle_day = 0\n")
    result = run_dvrlinkd("--check-config", "--config", str(bad))
    assert result.returncode == 78
    assert f"{bad}: [modem] billing_cycle_day = 0: out of range; use a value from 1 to 31" in result.stderr
    assert KEY_B64 not in result.stderr


# ----------------------------------------------------------------------------------- status


def daemon_status(modem: ModemBlock | None) -> DaemonStatus:
    return DaemonStatus(
        state="online",
        serial="DL-0001-0002",
        broker="127.0.0.1:3478",
        reflexive_address="198.51.100.1:4000",
        session_id=7,
        registered_at=100.0,
        last_keepalive=100.0,
        rtt=0.05,
        pid=1,
        started_at=90.0,
        modem=modem,
    )


def test_status_file_round_trip_and_rendering_of_the_modem_block() -> None:
    block = ModemBlock(
        state="online",
        modem="Quectel EC25",
        sim="identified",
        iccid="894902**********0001",
        operator="Telekom.de",
        roaming=True,
        rat="LTE",
        signal_dbm=-81,
        apn="internet.telekom",
        interface="wwan0",
        ladder_step=3,
        ladder_step_name="reattach",
        data_used_bytes=412_300_000,
        data_cap_bytes=500_000_000,
        cap_level="warn",
    )
    status = daemon_status(block)
    assert DaemonStatus.from_json(status.to_json()) == status
    assert DaemonStatus.from_json(daemon_status(None).to_json()).modem is None
    text = format_status(status, 130.0)
    assert text.splitlines()[-8:] == [
        "modem:             online",
        "  device:          Quectel EC25",
        "  SIM:             identified 894902**********0001",
        "  network:         Telekom.de LTE (roaming)",
        "  signal:          -81 dBm",
        "  APN:             internet.telekom",
        "  recovery step:   3 (reattach)",
        "  data this cycle: 412.3 MB of 500.0 MB cap (warn)",
    ]


def test_a_modem_that_is_not_online_says_what_to_do() -> None:
    settings = ModemSettings(enabled=True)
    absent = ModemStatus(ModemState.SIM_ABSENT, vendor="Quectel", model="EC25", sim=SimState.ABSENT)
    detail = advice(absent, settings)
    assert detail.startswith("no SIM: insert a SIM card")
    block = ModemBlock(state="sim-absent", modem="Quectel EC25", sim="absent", detail=detail)
    text = format_status(daemon_status(block), 130.0)
    assert text.splitlines()[-1] == f"  to do:           {detail}"
    roaming = ModemStatus(ModemState.REG_BACKOFF, roaming=True, signal_dbm=-95, detail="roaming not allowed")
    assert "set [modem] allow_roaming = true" in advice(roaming, settings)
    assert "-95 dBm" in advice(roaming, settings)
    no_apn = ModemStatus(ModemState.DATA_BACKOFF, detail="no APN worked: retrying in 30 s")
    assert advice(no_apn, settings).endswith("set [modem] apn (and credentials) to what the carrier gives")
    assert advice(ModemStatus(ModemState.ONLINE), settings) == ""
    with pytest.raises(ValueError, match="modem entry"):
        ModemBlock.from_mapping({"state": 3})


def test_report_and_snapshot_before_the_modem_runs(tmp_path: Path) -> None:
    service = ModemService(
        ModemSettings(enabled=True, profile="quectel-ec25", port=str(tmp_path / "nope")),
        state_dir=tmp_path / "state",
        runtime_dir=tmp_path / "run",
        broker=("127.0.0.1", 3478),
    )
    report = service.report()
    assert (report.state, report.signal_dbm, report.rat, report.data_used_bytes) == (
        "port-closed",
        None,
        "",
        None,
    )
    assert service.find_port() is None  # the configured port does not exist (yet)
    snapshot = service.snapshot()
    assert snapshot.state == "port-closed"
    assert (
        snapshot.detail == f"waiting for {tmp_path / 'nope'}: check that the modem is plugged in and powered"
    )


# ------------------------------------------------------------------------------------ hooks


def test_usb_reset_deauthorises_then_authorises_the_modems_usb_device(tmp_path: Path) -> None:
    device = tmp_path / "1-1"
    device.mkdir()
    (device / "authorized").write_text("1")
    writes: list[str] = []

    hooks = BoardHooks(ModemSettings(), ModemTuning(usb_reset_off_s=0.0), lambda: device)

    async def main() -> None:
        task = asyncio.create_task(hooks.usb_reset())
        await asyncio.sleep(0)  # runs up to the pause between the two writes
        writes.append((device / "authorized").read_text())
        await task
        writes.append((device / "authorized").read_text())

    asyncio.run(main())
    assert writes == ["0", "1"]
    with pytest.raises(RuntimeError, match="USB device is not known"):
        asyncio.run(BoardHooks(ModemSettings(), ModemTuning(), lambda: None).usb_reset())


def test_board_reboot_is_off_unless_configured_and_commands_report_failures(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(RuntimeError, match=r"board reboot is off: set \[modem\] board_reboot = true"):
        asyncio.run(BoardHooks(ModemSettings(), ModemTuning(), lambda: None).reboot_board())
    with pytest.raises(RuntimeError, match=r"power cycle: no command configured"):
        asyncio.run(BoardHooks(ModemSettings(), ModemTuning(), lambda: None).power_cycle())
    touch = ModemSettings(power_cycle_command=(sys.executable, "-c", f"open({str(marker)!r}, 'w')"))
    asyncio.run(BoardHooks(touch, ModemTuning(), lambda: None).power_cycle())
    assert marker.exists()
    failing = ModemSettings(board_reboot=True, reboot_command=(sys.executable, "-c", "raise SystemExit(3)"))
    with pytest.raises(RuntimeError, match=r"board reboot: .* exited with 3"):
        asyncio.run(BoardHooks(failing, ModemTuning(), lambda: None).reboot_board())


def test_data_link_binds_to_the_current_ports(tmp_path: Path) -> None:
    ports: list[ModemPorts | None] = [None]
    probe = DataPathProbe(ProbeConfig(host="127.0.0.1"))
    request = DataRequest(ApnSettings("internet"), 1, DialMethod.PPP, "ATD*99#", "generic")
    ppp = CurrentPortLink(
        DialMethod.PPP, lambda: ports[0], PppConfig(run_dir=tmp_path / "ppp"), EcmConfig(), probe
    )
    ecm = CurrentPortLink(
        DialMethod.ECM, lambda: ports[0], PppConfig(run_dir=tmp_path / "ppp"), EcmConfig(), probe
    )

    async def main() -> None:
        for link in (ppp, ecm):
            result = await link.up(request)
            assert getattr(result, "reason", None) is DataFailure.NO_DEVICE
            assert not await link.probe() and link.counters() == (0, 0)
        ports[0] = ModemPorts("/dev/ttyUSB2", "/dev/ttyUSB3", None, None)
        result = await ecm.up(request)
        assert getattr(result, "reason", None) is DataFailure.NO_DEVICE
        assert "net_interface" in getattr(result, "detail", "")

    asyncio.run(main())
