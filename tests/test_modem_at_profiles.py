"""Quirk profiles and command specs: the data the AT engine and the modem manager run on."""

from __future__ import annotations

import pytest

from dvrlink.modem.profiles import PROFILES, DialMethod, profile_by_name, profile_for_usb
from dvrlink.protocol.at_engine import AtEngine
from dvrlink.protocol.at_events import CommandCompleted, ModemRestarted, UrcReceived
from dvrlink.protocol.at_specs import NETWORK_TIMEOUT, SIM_TIMEOUT, command_name, spec_for

FAMILIES = {
    "generic",
    "quectel-uc20",
    "quectel-ec25",
    "simcom-sim800",
    "simcom-sim7600",
    "huawei-e173",
    "huawei-mu709",
}


def test_every_family_has_a_profile_and_usb_ids_are_unique() -> None:
    assert set(PROFILES) == FAMILIES
    seen = [(p.vendor, p.product) for profile in PROFILES.values() for p in profile.usb]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("vendor", "product", "name", "at_interface"),
    [
        (0x2C7C, 0x0125, "quectel-ec25", 2),
        (0x05C6, 0x9003, "quectel-uc20", 2),
        (0x1E0E, 0x9001, "simcom-sim7600", 2),
        (0x12D1, 0x1436, "huawei-e173", 4),
    ],
)
def test_usb_lookup(vendor: int, product: int, name: str, at_interface: int) -> None:
    found = profile_for_usb(vendor, product)
    assert found is not None
    profile, ports = found
    assert (profile.name, ports.at_interface) == (name, at_interface)


def test_unknown_usb_id_and_name() -> None:
    assert profile_for_usb(0x1234, 0x5678) is None
    with pytest.raises(ValueError, match="quectel-ec25"):
        profile_by_name("quectel-ec99")


def test_dial_commands() -> None:
    assert profile_by_name("generic").connect_command(1, "internet") == "ATD*99#"
    assert profile_by_name("quectel-ec25").connect_command(1, "internet") == "AT+QNETDEVCTL=1,1,1"
    mu709 = profile_by_name("huawei-mu709")
    assert mu709.dial_method is DialMethod.ECM
    assert mu709.connect_command(2, "web.example") == 'AT^NDISDUP=2,1,"web.example"'
    with pytest.raises(ValueError, match="APN"):
        mu709.connect_command(1, 'bad"apn')
    assert profile_by_name("simcom-sim7600").reset_command == "AT+CRESET"


def test_profile_urcs_reach_the_engine() -> None:
    # a Huawei periodic URC inside a bare-text reply is routed, not taken for the IMEI
    engine = AtEngine(profile_by_name("huawei-e173").at_config())
    engine.submit("AT+CGSN", 0.0)
    engine.feed(b"\r\n^RSSI: 17\r\n\r\n867123456789012\r\n\r\nOK\r\n", 0.0)
    first, second = engine.next_event(), engine.next_event()
    assert isinstance(first, UrcReceived) and first.name == "^RSSI"
    assert isinstance(second, CommandCompleted) and second.lines == ("867123456789012",)
    # Huawei modules print no RDY but ^SYSSTART, which is a restart; ^BOOT is a periodic URC
    huawei = profile_by_name("huawei-e173").at_config()
    assert huawei.restart_markers == ("^SYSSTART",)
    engine = AtEngine(huawei)
    engine.feed(b"\r\n^BOOT:20952171,0,0,0,75\r\n\r\n^SYSSTART\r\n", 1.0)
    boot, started = engine.next_event(), engine.next_event()
    assert isinstance(boot, UrcReceived) and boot.name == "^BOOT"
    assert isinstance(started, ModemRestarted) and started.marker == "^SYSSTART"
    # SIM800 boot URCs are known
    sim800 = profile_by_name("simcom-sim800").at_config()
    assert "SMS Ready" in sim800.urc_prefixes and "+CSMINS:" in sim800.urc_prefixes


def test_command_names_and_specs() -> None:
    assert command_name("AT+CREG?") == ("+CREG", "?")
    assert command_name("at+cops=?") == ("+COPS", "=?")
    assert command_name("ATD*99#") == ("D", "")
    assert command_name("AT") == ("", "")
    assert command_name("hello") == ("", "")
    assert spec_for("AT+COPS=?").timeout == NETWORK_TIMEOUT
    assert spec_for("ATD*99#").call_results
    assert spec_for("AT+CPIN?").timeout == SIM_TIMEOUT
    assert spec_for("AT+CMGS=23").prompt
    assert spec_for("AT+QCFG?").prefixes == ("+QCFG:",)
    assert spec_for("ATE0").prefixes == ()
    with pytest.raises(ValueError, match="must start with AT"):
        AtEngine().submit("+CSQ", 0.0)
