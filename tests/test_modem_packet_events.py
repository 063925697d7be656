"""The modem manager over the PTY emulator: ``+CGEV`` reports end a data call the network
deactivated, a radio left in flight mode is switched on, and registration URCs that carry the
leading ``<n>`` (as some modems send them) keep an online modem online.

The data link is the rig's fake (pppd and DHCP cannot run here): see support.modem_rig.
"""

from __future__ import annotations

from pathlib import Path

from support.aio import run
from support.modem_rig import needs_database, running

from dvrlink.modem.manager import DataContextEnded, ModemState, RadioSwitchedOn
from hil.modememu import ModemEmulator, SimCard

SIM = SimCard.for_network("26201", iccid="89490200001234500001", working_apns=frozenset({"internet.telekom"}))


@needs_database
def test_a_network_deactivated_ecm_call_is_dialled_again_at_once(tmp_path: Path) -> None:
    # the probe is slowed to a minute, so that only the +CGEV report can bring the call back
    # within the test's bound; a Quectel in ECM mode sends no URC of its own when a call ends
    async def main() -> None:
        async with running("quectel-ec25", SIM, tmp_path, modem={"probe_interval_s": 60.0}) as rig:
            await rig.online()
            assert "AT+CGEREP=2,1" in rig.emu.commands
            assert rig.emu.model.settings.cgerep == 2
            rig.emu.drop_carrier()
            await rig.wait(lambda _: bool(rig.events_of(DataContextEnded)))
            [ended] = rig.events_of(DataContextEnded)
            assert ended.report == "+CGEV: NW PDN DEACT 1"
            await rig.wait(lambda s: s.state is ModemState.ONLINE and len(rig.data.requests) == 2)
            assert rig.emu.model.active == {1}, "the new call's context is not active"

    run(main)


@needs_database
def test_a_modem_powered_on_in_flight_mode_is_switched_on_and_comes_online(tmp_path: Path) -> None:
    def flight_mode(emu: ModemEmulator) -> None:
        emu.power_on_in_flight_mode(4)

    async def main() -> None:
        async with running("quectel-ec25", SIM, tmp_path, before_start=flight_mode) as rig:
            await rig.online()
            assert [e.fun for e in rig.events_of(RadioSwitchedOn)] == [4]
            commands = rig.emu.commands
            assert commands.index("AT+CFUN?") < commands.index("AT+CFUN=1") < commands.index("AT+CPIN?")

    run(main)


@needs_database
def test_registration_urcs_with_n_keep_an_online_modem_online(tmp_path: Path) -> None:
    # "+CREG: 2,5,..." as a URC: read as status 2 (searching), it took the link down
    def with_n(emu: ModemEmulator) -> None:
        emu.urcs_with_n(True)

    async def main() -> None:
        async with running(
            "quectel-ec25", SIM, tmp_path, modem={"allow_roaming": True}, before_start=with_n
        ) as rig:
            await rig.online()
            rig.emu.set_registration("roaming")
            status = await rig.wait(lambda s: s.roaming)
            assert status.state is ModemState.ONLINE, status.detail
            assert len(rig.data.requests) == 1, "the link was taken down and dialled again"
            # what the emulator sent was the <n> form
            assert rig.emu.model._reg_line("+CREG", 2, 5, urc=True).startswith("+CREG: 2,5,")

    run(main)
