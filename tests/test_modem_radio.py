"""Vendor radio info (``modem/radio.py``): Quectel ``+QNWINFO``, Huawei ``^SYSINFOEX`` and SIMCom
``+CPSI`` replies, as the vendors' AT manuals show them, parsed into technology, network and band;
and the manager putting them into the status (with made-up time and a scripted modem)."""

from __future__ import annotations

import pytest
from support.modem_rig import needs_database, provider_index
from support.modem_script import ANSWERS, ScriptedModem

from dvrlink.daemon.status import ModemBlock, format_modem
from dvrlink.modem.apn import ApnMemory
from dvrlink.modem.manager import ModemConfig, ModemManager, ModemState
from dvrlink.modem.profiles import PROFILES, profile_by_name
from dvrlink.modem.radio import RadioInfo, parse_radio_info


@pytest.mark.parametrize(
    ("command", "line", "expected"),
    [
        (
            "AT+QNWINFO",
            '+QNWINFO: "FDD LTE","26201","LTE BAND 3",1300',
            RadioInfo("LTE", "262-01", "LTE BAND 3"),
        ),
        (
            "AT+QNWINFO",
            '+QNWINFO: "TDD LTE","46000","LTE BAND 40",38950',
            RadioInfo("LTE", "460-00", "LTE BAND 40"),
        ),
        (
            "AT+QNWINFO",
            '+QNWINFO: "HSPA+","310410","WCDMA 850",4385',
            RadioInfo("HSPA+", "310-410", "WCDMA 850"),
        ),
        ("AT+QNWINFO", '+QNWINFO: "EDGE","23415","GSM 900",62', RadioInfo("EDGE", "234-15", "GSM 900")),
        ("AT+QNWINFO", "+QNWINFO: No Service", None),
        ("AT^SYSINFOEX", '^SYSINFOEX: 2,3,0,1,,3,"WCDMA",46,"DC-HSPA+"', RadioInfo("HSPA+")),
        ("AT^SYSINFOEX", '^SYSINFOEX: 2,3,0,1,,1,"GSM",3,"EDGE"', RadioInfo("EDGE")),
        ("AT^SYSINFOEX", '^SYSINFOEX: 2,3,1,1,,6,"LTE",101,"LTE"', RadioInfo("LTE")),
        ("AT^SYSINFOEX", '^SYSINFOEX: 0,0,0,1,,0,"NO SERVICE",0,"NO SERVICE"', None),
        (
            "AT+CPSI?",
            "+CPSI: LTE,Online,262-01,0x1A2B,12345678,300,EUTRAN-BAND3,1300,5,5,-94,-850,-545,15",
            RadioInfo("LTE", "262-01", "EUTRAN-BAND3"),
        ),
        (
            "AT+CPSI?",
            "+CPSI: GSM,Online,262-01,0x1a2b,1234,12 EGSM 900,-62,0,40-40",
            RadioInfo("GSM", "262-01", "EGSM 900"),
        ),
        (
            "AT+CPSI?",
            "+CPSI: WCDMA,Online,234-15,0x00A1,123456,WCDMA IMT 2000,10836,0,-3,-85,-85,24,11,17,43,14",
            RadioInfo("UMTS", "234-15", ""),
        ),
        ("AT+CPSI?", "+CPSI: NO SERVICE,Online", None),
        ("AT+CPSI?", "garbage", None),
        ("AT+CSQ", "+CSQ: 20,99", None),
    ],
)
def test_vendor_radio_info_replies(command: str, line: str, expected: RadioInfo | None) -> None:
    assert parse_radio_info(command, (line,)) == expected


def test_each_family_with_a_vendor_command_polls_one_the_parser_knows() -> None:
    commands = {p.name: p.radio_info_command for p in PROFILES.values()}
    assert commands["quectel-ec25"] == commands["quectel-uc20"] == "AT+QNWINFO"
    assert commands["huawei-e173"] == commands["huawei-mu709"] == "AT^SYSINFOEX"
    assert commands["simcom-sim7600"] == "AT+CPSI?"
    assert commands["generic"] is None and commands["simcom-sim800"] is None  # SIM800: no CPSI


@needs_database
def test_the_status_shows_the_vendors_technology_network_and_band() -> None:
    config = ModemConfig(profile=profile_by_name("quectel-ec25"))
    manager = ModemManager(config, provider_index(), ApnMemory())
    answers = {**ANSWERS, "AT+QNWINFO": ('+QNWINFO: "HSPA+","26201","WCDMA 2100",10700', "OK")}
    modem = ScriptedModem(manager, answers)
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.ONLINE and "AT+QNWINFO" in modem.sent
    status = manager.status()
    # +COPS said LTE (act 7); the vendor's answer is the serving cell's, and more precise
    assert (status.operator, status.rat, status.band) == ("Telekom.de", "HSPA+", "WCDMA 2100")
    assert status.as_dict()["band"] == "WCDMA 2100"
    # a modem that does not know the command keeps the 3GPP answers
    plain = ModemManager(config, provider_index(), ApnMemory())
    modem = ScriptedModem(plain, {**ANSWERS, "AT+QNWINFO": ("ERROR",)})
    plain.port_opened(0.0)
    modem.step(0.0)
    assert plain.state is ModemState.ONLINE
    assert (plain.status().rat, plain.status().band) == ("LTE", "")


def test_dvrlinkd_status_prints_the_band() -> None:
    block = ModemBlock(state="online", operator="Telekom.de", rat="LTE", band="LTE BAND 3")
    rows = dict(line.strip().split(":", 1) for line in format_modem(block) if ":" in line)
    assert rows["network"].strip() == "Telekom.de LTE, LTE BAND 3"
