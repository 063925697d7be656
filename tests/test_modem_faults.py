"""The fault matrix: each fault the modem emulator can inject leads back to online without
restarting the runner, and the recovery ladder step used is the lowest that fixes it.

Each case brings a Quectel EC25 (ECM) or UC20 (PPP) online over the emulator's PTY with the real
AtLink and runner, injects one fault, undoes it when the fault is one a real network would undo
(coverage comes back, the SIM is put back), waits with a bound until the modem is online again,
and compares the ladder steps taken with the expected ones.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.aio import run
from support.modem_rig import Rig, needs_database, running

from dvrlink.modem.ladder import Step
from dvrlink.modem.manager import (
    ApnFailed,
    AtRecovered,
    ModemState,
    RegistrationRefused,
    SimChanged,
    SimRemoved,
    StateChanged,
)
from hil.modememu import SimCard
from hil.modememu.timings import COMMAND_CAP_S

pytestmark = needs_database

ICCID = "89490200001234500001"
HOME_SIM = SimCard.for_network("26201", iccid=ICCID, working_apns=frozenset({"internet.telekom"}))
OTHER_SIM = SimCard.for_network(
    "23415", iccid="89441000009876543210", working_apns=frozenset({"pp.vodafone.co.uk"})
)


async def garbage(rig: Rig) -> None:
    rig.emu.inject_garbage()
    rig.emu.inject_garbage(b"\r\n+QIND: \xff\xfe\x00junk\r\n")
    await rig.commands_answered(6)


async def split_reads(rig: Rig) -> None:
    rig.emu.split_writes(True)
    await rig.commands_answered(6)
    rig.emu.split_writes(False)


async def echo_on(rig: Rig) -> None:
    rig.emu.set_echo(True)
    await rig.commands_answered(6)


async def urc_storm(rig: Rig) -> None:
    rig.emu.urc_storm(300)
    rig.emu.urc_storm(50, "+CREG: 1")
    await rig.commands_answered(6)


async def late_ok(rig: Rig) -> None:
    since = len(rig.events)
    rig.emu.late_reply(COMMAND_CAP_S * 1.5)  # later than the test config caps a command at
    await rig.wait(lambda _: bool(rig.events_of(AtRecovered, since)))


async def reboot_mid_command(rig: Rig) -> None:
    since = len(rig.events)
    rig.emu.reboot(mid_command=True)
    await rig.wait(lambda _: any(e.new is ModemState.PROBING for e in rig.events_of(StateChanged, since)))


async def sim_removed_and_put_back(rig: Rig) -> None:
    since = len(rig.events)
    rig.emu.remove_sim()
    await rig.state(ModemState.SIM_ABSENT)
    assert rig.events_of(SimRemoved, since)
    assert rig.data.up_apn is None, "the data link must go down with the SIM"
    rig.emu.insert_sim(HOME_SIM)


async def sim_swapped(rig: Rig) -> None:
    since = len(rig.events)
    rig.emu.swap_sim(OTHER_SIM)
    status = await rig.wait(lambda s: s.online and s.iccid == OTHER_SIM.iccid)
    assert status.apn == "pp.vodafone.co.uk"
    assert [(e.old, e.new) for e in rig.events_of(SimChanged, since)] == [(ICCID, OTHER_SIM.iccid)]


async def registration_denied(rig: Rig) -> None:
    since = len(rig.events)
    rig.emu.set_registration("denied")
    await rig.state(ModemState.REG_BACKOFF)
    # the backoff retries (+COPS=0) and is refused again, waiting longer each time
    await rig.wait(lambda _: len(rig.events_of(RegistrationRefused, since)) >= 2)
    rig.emu.set_registration("home")


async def roaming_not_allowed(rig: Rig) -> None:
    rig.emu.set_registration("roaming")
    status = await rig.state(ModemState.REG_BACKOFF)
    assert "roaming" in status.detail
    rig.emu.set_registration("home")


async def signal_lost(rig: Rig) -> None:
    rig.emu.lose_signal()
    await rig.state(ModemState.REGISTERING)
    await rig.wait(lambda s: s.signal_dbm is None)
    rig.emu.set_signal(18)
    rig.emu.set_registration("home")


async def dial_no_carrier(rig: Rig) -> None:
    # the next call fails (NO CARRIER on PPP); a reboot makes the manager dial again
    since = len(rig.events)
    rig.emu.fail_dials(1)
    rig.emu.reboot()
    await rig.wait(lambda _: bool(rig.events_of(ApnFailed, since)))


async def port_vanishes(rig: Rig) -> None:
    rig.emu.vanish(reappear_after=0.3)
    await rig.state(ModemState.PORT_CLOSED)


async def hang_fixed_by_reopen(rig: Rig) -> None:
    # a stalled tty: the modem answers again once the port is reopened
    rig.emu.hang(True)
    await rig.state(ModemState.RECOVERING)

    def reopened() -> None:
        if any(e.step is Step.REOPEN_PORT for e in rig.runner.steps_taken):
            rig.emu.hang(False)

    rig.on_find_port = reopened


async def firmware_hang(rig: Rig) -> None:
    # the firmware hangs for good: only re-enumerating the modem (USB reset) ends it
    rig.emu.hang(True)
    await rig.wait(lambda _: bool(rig.hooks.calls))
    assert rig.hooks.calls == ["usb-reset"]


async def data_path_broken(rig: Rig) -> None:
    # registered, AT fine, but the data path probe fails: re-attaching mends it
    rig.data.healthy = False
    await rig.state(ModemState.RECOVERING)


@dataclass(frozen=True)
class Case:
    inject: Callable[[Rig], Awaitable[None]]
    steps: tuple[Step, ...]
    """Ladder steps expected after the injection, in order."""
    profile: str = "quectel-ec25"


CASES: dict[str, Case] = {
    "garbage": Case(garbage, ()),
    "split-reads": Case(split_reads, ()),
    "echo-on": Case(echo_on, ()),
    "urc-storm": Case(urc_storm, ()),
    "late-ok": Case(late_ok, (Step.RESYNC,)),
    "reboot-mid-command": Case(reboot_mid_command, ()),
    # Huawei prints no RDY: ^SYSSTART tells the reboot (^BOOT, a periodic report, must not)
    "reboot-mid-command-huawei": Case(reboot_mid_command, (), profile="huawei-mu709"),
    "sim-removed-inserted": Case(sim_removed_and_put_back, ()),
    "sim-swapped": Case(sim_swapped, ()),
    "registration-denied": Case(registration_denied, ()),
    "roaming-not-allowed": Case(roaming_not_allowed, ()),
    "signal-lost": Case(signal_lost, ()),
    "dial-no-carrier-ppp": Case(dial_no_carrier, (), profile="quectel-uc20"),
    "dial-error-ecm": Case(dial_no_carrier, ()),
    "port-vanishes": Case(port_vanishes, (Step.REOPEN_PORT,)),
    "hang-fixed-by-reopen": Case(hang_fixed_by_reopen, (Step.RESYNC, Step.REOPEN_PORT)),
    "firmware-hang": Case(firmware_hang, (Step.RESYNC, Step.REOPEN_PORT, Step.USB_RESET)),
    "data-path-broken": Case(data_path_broken, (Step.REATTACH,)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fault_leads_back_online_with_the_lowest_ladder_step(name: str, tmp_path: Path) -> None:
    case = CASES[name]

    async def main() -> None:
        async with running(case.profile, HOME_SIM, tmp_path) as rig:
            first = await rig.online()
            assert first.apn == "internet.telekom"
            await case.inject(rig)
            status = await rig.online()
            taken = tuple(entry.step for entry in rig.runner.steps_taken)
            assert taken == case.steps, f"ladder steps {taken}, expected {case.steps}"
            assert status.ladder_step == (max(case.steps) if case.steps else 0)
            # the same runner is still serving: the data path probes pass
            await rig.commands_answered(4)
            assert rig.runner.status().online
            if name != "sim-swapped":
                assert status.apn == "internet.telekom" and status.iccid == ICCID

    run(main)
