"""For every emulated modem family: a SIM goes in and the modem comes online with the APN the
real provider database gives for its network, walking past the APNs the network refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.aio import run
from support.modem_rig import needs_database, running

from dvrlink.modem.apn import ApnMemoryFile
from dvrlink.modem.manager import ApnFailed, ApnRemembered, ModemState
from hil.modememu import PROFILE_NAMES, SimCard

pytestmark = needs_database

# (MCC+MNC, the APN the emulated network accepts, how many database APNs are refused first)
NETWORKS = [
    pytest.param("26201", "internet.telekom", 3, id="telekom-de-5-apns-first-3-refused"),
    pytest.param("310410", "broadband", 3, id="att-us-3-digit-mnc"),
    pytest.param("23415", "pp.vodafone.co.uk", 1, id="vodafone-uk-with-credentials"),
]


@pytest.mark.parametrize("profile", PROFILE_NAMES)
@pytest.mark.parametrize(("mcc_mnc", "apn", "refused"), NETWORKS)
def test_sim_inserted_goes_online_with_the_database_apn(
    profile: str, mcc_mnc: str, apn: str, refused: int, tmp_path: Path
) -> None:
    sim = SimCard.for_network(mcc_mnc, iccid="8901410321111851072", working_apns=frozenset({apn}))

    async def main() -> None:
        async with running(profile, sim, tmp_path) as rig:
            status = await rig.online()
            assert status.apn == apn
            assert status.iccid == sim.iccid
            # PPP families try a NO CARRIER APN twice (dial_attempts_per_apn); count APNs
            assert len({e.candidate.settings.apn for e in rig.events_of(ApnFailed)}) == refused
            assert [e.settings.apn for e in rig.events_of(ApnRemembered)] == [apn]
            assert rig.runner.steps_taken == []
            if profile.startswith("simcom-sim800") or profile.startswith("quectel-uc20"):
                assert rig.data.requests[-1].dial == "ATD*99***1#"

    run(main)
    remembered = ApnMemoryFile(tmp_path / "apn.json").load().last_worked(sim.iccid)
    assert remembered is not None and remembered.apn == apn


def test_remembered_apn_is_tried_first_after_a_restart(tmp_path: Path) -> None:
    sim = SimCard.for_network(
        "26201", iccid="8949020000123450007", working_apns=frozenset({"internet.telekom"})
    )

    async def main() -> None:
        async with running("quectel-ec25", sim, tmp_path) as rig:
            await rig.online()
            assert len({e.candidate.settings.apn for e in rig.events_of(ApnFailed)}) == 3
        async with running("quectel-ec25", sim, tmp_path) as rig:
            status = await rig.online()
            assert status.apn == "internet.telekom"
            assert rig.events_of(ApnFailed) == []

    run(main)


def test_no_sim_then_inserted_with_pin(tmp_path: Path) -> None:
    sim = SimCard.for_network("26201", iccid="8949020000123450008", pin="4321")

    async def main() -> None:
        async with running("simcom-sim7600", None, tmp_path, no_sim=True, modem={"pin": "4321"}) as rig:
            status = await rig.state(ModemState.SIM_ABSENT)
            assert "insert" in status.detail
            rig.emu.insert_sim(sim)
            status = await rig.online()
            assert status.iccid == sim.iccid
            assert any(c.startswith('AT+CPIN="4321"') for c in rig.emu.commands)

    run(main)


def test_wrong_pin_is_sent_once_and_never_again(tmp_path: Path) -> None:
    sim = SimCard.for_network("26201", iccid="8949020000123450009", pin="4321")

    async def main() -> None:
        async with running("quectel-ec25", sim, tmp_path, modem={"pin": "1111"}) as rig:
            status = await rig.state(ModemState.SIM_LOCKED)
            assert "refused the PIN" in status.detail
            await rig.commands_answered(4)  # the SIM keeps being polled
            assert sum(c.startswith("AT+CPIN=") for c in rig.emu.commands) == 1

    run(main)


def test_roaming_allowed_stays_online_and_shows_it(tmp_path: Path) -> None:
    sim = SimCard.for_network("26201", iccid="8949020000123450010")

    async def main() -> None:
        async with running("huawei-mu709", sim, tmp_path, modem={"allow_roaming": True}) as rig:
            await rig.online()
            rig.emu.set_registration("roaming")
            status = await rig.wait(lambda s: s.roaming and s.operator == "Emulated Roaming")
            assert status.online
            assert str(status).count("roaming=True") == 1

    run(main)
