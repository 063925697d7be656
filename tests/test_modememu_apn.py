"""The APN chooser against the emulator: the SIM's identity read over the wire, the provider
database's APNs tried in order until the emulated network accepts one, and remembered per ICCID.

This stands in for the modem state machine (another part of the modem package): raw AT over the
PTY, so it checks that the emulator and the APN pieces fit, not the AT engine.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dvrlink.modem.apn import (
    DEFAULT_DATABASE,
    ApnChooser,
    ApnConfig,
    ApnFailure,
    ApnMemoryFile,
    ApnSelected,
    ApnSource,
    ProviderIndex,
    mnc_length_from_ef_ad,
)
from hil.modememu import PROFILE_NAMES, PROFILES, ModemEmulator, SimCard
from hil.modememu.wire import RawPort

pytestmark = pytest.mark.skipif(
    not DEFAULT_DATABASE.exists(), reason="Debian package mobile-broadband-provider-info not installed"
)


@pytest.fixture(scope="module")
def index() -> ProviderIndex:
    return ProviderIndex.parse(DEFAULT_DATABASE)


def info(port: RawPort, command: str) -> list[str]:
    reply = port.command(command)
    return [x for x in reply.decode().split("\r\n") if x and x != "OK"]


def bring_up(
    port: RawPort, profile: str, index: ProviderIndex, memory_file: ApnMemoryFile
) -> tuple[str, int]:
    """Identify the SIM, walk the APN ranking with +CGDCONT/+CGACT; returns (APN, attempts)."""
    port.command("ATE0 V1 +CMEE=1")
    iccid = info(port, PROFILES[profile].iccid_command)[0].split(" ")[-1]
    imsi = info(port, "AT+CIMI")[0]
    ef_ad = re.fullmatch(r'\+CRSM: 144,0,"([0-9A-F]+)"', info(port, "AT+CRSM=176,28589,0,0,4")[0])
    assert ef_ad is not None
    memory = memory_file.load()
    chooser = ApnChooser.for_sim(
        iccid=iccid,
        imsi=imsi,
        mnc_length=mnc_length_from_ef_ad(ef_ad.group(1)),
        index=index,
        memory=memory,
        config=ApnConfig(),
    )
    event = chooser.start()
    while isinstance(event, ApnSelected):
        port.command(f'AT+CGDCONT=1,"IP","{event.candidate.settings.apn}"')
        port.send("AT+CGACT=1,1")
        reply = port.read_until(b"\r\n", timeout=3) + port.read_until(b"\r\n", timeout=3)
        if b"OK" in reply:
            worked = chooser.worked()
            if worked.memory_changed:
                memory_file.save(memory)
            return worked.candidate.settings.apn, event.attempt
        assert b"+CME ERROR: 533" in reply
        event = chooser.failed(ApnFailure.ACTIVATION_REJECTED)
    pytest.fail(f"no APN worked: {event}")


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_first_apns_fail_then_the_database_one_that_works_is_remembered(
    profile: str, index: ProviderIndex, tmp_path: Path
) -> None:
    # Telekom (262-01) lists five internet APNs; this SIM only works with the fourth.
    sim = SimCard.for_network(
        "26201", iccid="89490200001234500001", working_apns=frozenset({"internet.telekom"})
    )
    memory_file = ApnMemoryFile(tmp_path / "apn.json")
    with ModemEmulator(profile, sim) as emu, RawPort(emu.path) as port:
        assert bring_up(port, profile, index, memory_file) == ("internet.telekom", 4)
    # After a restart the remembered APN is tried first and works at once.
    with ModemEmulator(profile, sim) as emu, RawPort(emu.path) as port:
        assert bring_up(port, profile, index, memory_file) == ("internet.telekom", 1)
    remembered = memory_file.load().last_worked("89490200001234500001")
    assert remembered is not None and remembered.apn == "internet.telekom"


@pytest.mark.parametrize(
    ("mcc_mnc", "working", "expected_attempt"),
    [
        ("310410", "broadband", 4),  # AT&T, 3-digit MNC (EF_AD says 3)
        ("405800", "aircelgprs", 2),  # Aircel India, 3-digit MNC
        ("23415", "pp.vodafone.co.uk", 2),  # Vodafone UK, 2-digit MNC, credentials in the file
    ],
)
def test_three_digit_and_two_digit_networks(
    mcc_mnc: str, working: str, expected_attempt: int, index: ProviderIndex, tmp_path: Path
) -> None:
    sim = SimCard.for_network(mcc_mnc, working_apns=frozenset({working}))
    with ModemEmulator("quectel-ec25", sim) as emu, RawPort(emu.path) as port:
        apn, attempt = bring_up(port, "quectel-ec25", index, ApnMemoryFile(tmp_path / "apn.json"))
    assert (apn, attempt) == (working, expected_attempt)


def test_unknown_network_falls_back_to_the_network_apn(index: ProviderIndex, tmp_path: Path) -> None:
    sim = SimCard.for_network("00101", working_apns=frozenset({""}))
    memory_file = ApnMemoryFile(tmp_path / "apn.json")
    with ModemEmulator("generic", sim) as emu, RawPort(emu.path) as port:
        assert bring_up(port, "generic", index, memory_file) == ("", 1)
    assert memory_file.load().last_worked(sim.iccid) is not None
    ranked = ApnChooser.for_sim(
        iccid=sim.iccid,
        imsi=sim.imsi,
        mnc_length=2,
        index=index,
        memory=memory_file.load(),
        config=ApnConfig(),
    ).candidates
    assert [c.source for c in ranked] == [ApnSource.LAST_WORKED]
