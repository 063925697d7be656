"""The modem ladder's power-cycle rung through the board's supervisor: ``ModemService`` builds its
runner with board hooks whose power cycle asks the supervisor (the MicroPython firmware on a PTY,
tests/support/micropython.py) for the modem profile's timing, and the recorded pin trace has
that profile's pulse widths. Only the runner is a stand-in: it takes the power-cycle rung at once,
as the ladder does after the AT, USB and port steps have failed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import Any

import pytest
from pytest_mock import MockerFixture
from support.aio import run
from support.daemon_modem import running
from support.micropython import PtyBridge, SimulatedSupervisor, node_missing
from support.waiting import wait_until_async

from dvrlink.daemon.config import BoardConfig, ModemSettings
from dvrlink.daemon.modem_service import ModemOptions, ModemService
from dvrlink.daemon.supervisor_service import SupervisorService
from dvrlink.modem.ladder import Step
from dvrlink.modem.manager import ModemState, ModemStatus
from dvrlink.protocol import supervisor_wire as wire
from hil.modememu import ModemEmulator, SimCard
from hil.modememu.wire import RawPort
from hil.qemu.supervisor import ModemLines, ModemPower, PinWiring

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=node_missing() or "")

PWRKEY, POWER_CUT = 3, 4
BOOT_S = 1.0
"""The emulated modem's boot after power-on: it answers no AT for this long, then says RDY."""
WAIT_S = 60.0
"""Bound of each wait of the power-cycle scenario (the Quectel power-cut sequence alone is 6.7 s)."""


class PowerCyclingRunner:
    """A runner that takes the ladder's power-cycle rung with the hooks it was built with."""

    def __init__(self, config: Any, modem: Any, **keywords: Any) -> None:
        self.enabled = config.ladder.enabled
        self.hooks = keywords["hooks"]
        self.done = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        try:
            await self.hooks.power_cycle()
        except Exception as exc:
            self.done.set_exception(exc)
        else:
            self.done.set_result(None)
        await asyncio.Event().wait()

    def status(self) -> ModemStatus:
        return ModemStatus(ModemState.RECOVERING)


@pytest.mark.parametrize(
    ("profile", "power_cut", "pin", "width", "whole"),
    [
        ("simcom-sim800", False, PWRKEY, 1200, True),  # SIM800: PWRKEY low >= 1 s
        ("quectel-ec25", False, PWRKEY, 700, False),  # EC2x: >= 500 ms, then release
        ("quectel-uc20", True, POWER_CUT, 5000, False),  # the MOSFET cuts the supply 5 s
    ],
)
def test_the_ladders_power_cycle_goes_through_the_supervisor_with_the_profiles_timing(
    tmp_path: Path, profile: str, power_cut: bool, pin: int, width: int, whole: bool
) -> None:
    with SimulatedSupervisor(tmp_path / "flash") as sim, PtyBridge(sim) as pty:
        board = BoardConfig(supervisor=pty.path, supervisor_power_cut=power_cut)
        run(functools.partial(cycle, tmp_path, sim, board, profile, pin, whole), bound=60)
    (_, got), *_ = sim.trace.pulses(pin)
    assert got == width, sim.trace.pins
    if whole:
        assert [w for _, w in sim.trace.pulses(PWRKEY)] == [1200, 1200], "pressed to power down, then up"


async def cycle(
    tmp_path: Path, sim: SimulatedSupervisor, board: BoardConfig, profile: str, pin: int, whole: bool
) -> None:
    supervisor = SupervisorService(
        board, tmp_path, raise_alarm=lambda *_: None, health=lambda: wire.Health.OK
    )
    await supervisor.start()
    assert supervisor.problem == "", supervisor.problem
    settings = ModemSettings(
        enabled=True, profile=profile, port="/dev/null", provider_database=tmp_path / "none.xml"
    )
    built: list[PowerCyclingRunner] = []

    def factory(config: Any, modem: Any, **keywords: Any) -> PowerCyclingRunner:
        built.append(PowerCyclingRunner(config, modem, **keywords))
        return built[-1]

    modem = ModemService(
        settings,
        state_dir=tmp_path / "state",
        runtime_dir=tmp_path / "run",
        broker=("127.0.0.1", 3478),
        options=ModemOptions(runner_factory=factory),
        power_cycler=supervisor.power_cycle_modem,
    )
    task = asyncio.get_running_loop().create_task(modem.run())
    try:
        runner = await wait_until_async("the runner", lambda: built[-1:])
        assert Step.POWER_CYCLE in runner[0].enabled, "the rung is on with a supervisor and no command"
        if whole:
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(runner[0].done, 30)
            took = asyncio.get_running_loop().time() - started
            assert took >= 7.4, (
                f"the rung returned after {took:.1f} s, before the SIM800's 7.4 s sequence ran"
            )
            await wait_until_async(
                "the second PWRKEY pulse",
                lambda: len(sim.trace.pulses(PWRKEY)) >= 2,
                seen=lambda: sim.trace.pins,
            )
        else:
            await wait_until_async(
                "the first pulse", lambda: sim.trace.pulses(pin), seen=lambda: sim.trace.pins
            )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await supervisor.close()


def test_a_board_without_the_power_switch_says_so(tmp_path: Path) -> None:
    async def body(path: str) -> None:
        supervisor = SupervisorService(
            BoardConfig(supervisor=path, supervisor_power_cut=True),
            tmp_path,
            raise_alarm=lambda *_: None,
            health=lambda: wire.Health.OK,
        )
        await supervisor.start()
        try:
            with pytest.raises(
                RuntimeError,
                match="lacks the modem power switch; set \\[board\\] supervisor_power_cut = false",
            ):
                await supervisor.power_cycle_modem("quectel-ec25")
            with pytest.raises(
                RuntimeError, match="no power-cycle timing for the modem huawei-e173: set \\[board\\]"
            ):
                await supervisor.power_cycle_modem("huawei-e173")
        finally:
            await supervisor.close()

    with SimulatedSupervisor(tmp_path / "flash", {"no_power_cut": True}) as sim, PtyBridge(sim) as pty:
        run(functools.partial(body, pty.path), bound=60)
    assert sim.trace.pulses(PWRKEY) == [] and sim.trace.pulses(POWER_CUT) == []


def test_a_hung_modem_is_power_cycled_by_the_supervisor_and_comes_back_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mocker: MockerFixture
) -> None:
    """The whole chain, as on the QEMU rig but without a guest: ``dvrlinkd`` (its own board
    hooks) with the emulated Quectel EC25 and ``[board] supervisor`` on the firmware's PTY. The
    modem's firmware hangs; the ladder climbs to the power-cycle rung, the daemon asks the
    supervisor, the firmware cuts the modem's supply and presses PWRKEY, and the rig's wiring
    (``hil.qemu.supervisor``) switches the emulator off and on from the recorded pins. The modem
    then boots (no answer to AT for its boot time, then RDY) and comes back online."""
    spy_cycle = mocker.spy(SupervisorService, "power_cycle_modem")
    with SimulatedSupervisor(tmp_path / "flash") as sim, PtyBridge(sim) as pty:
        board = f'[board]\nsupervisor = "{pty.path}"\nsupervisor_power_cut = true\n'

        async def body() -> None:
            async with running(
                tmp_path,
                monkeypatch,
                extra_modem="usb_reset = false",
                extra_config=board,
                board_hooks=True,
            ) as rig:
                spy_power = mocker.spy(rig.emu, "power")
                rig.emu.model.boot_delay_s = BOOT_S
                modem = ModemPower(ModemLines.for_profile(rig.emu.profile.name))
                with PinWiring(sim.trace.pins, modem=modem, set_modem_power=rig.emu.power) as wiring:
                    await wait_until_async("the daemon's modem runner", lambda: rig.runners)
                    runner = rig.runners[-1]
                    await runner.wait_for(lambda s: s.state is ModemState.ONLINE, WAIT_S)
                    await wait_until_async(
                        "the daemon's first look at the supervisor (its reset log read)",
                        lambda: _replied(sim, wire.MsgType.READ_RESET_LOG),
                        seen=lambda: sim.trace.tx[-3:],
                    )
                    rig.emu.hang(True)
                    await runner.wait_for(
                        lambda _: any(e.step is Step.POWER_CYCLE for e in runner.steps_taken), WAIT_S
                    )
                    await runner.wait_for(lambda s: s.state is ModemState.ONLINE, WAIT_S)
                    assert rig.registered()
                    changes = list(wiring.power_changes)
                taken = [e.step for e in runner.steps_taken]
                assert taken.count(Step.POWER_CYCLE) == 1, taken
                assert Step.BOARD_REBOOT not in taken, taken
                assert [call.args for call in spy_power.call_args_list] == [(False,), (True,)]
                # Off when the supply was cut, on when PWRKEY (0.7 s, after 5 s off and 1 s
                # with the supply back) was released: the firmware's timing, in its own time.
                (off_at, off), (on_at, on) = changes
                assert (off, on, on_at - off_at) == (False, True, 6700), changes

        run(body, bound=120)
    spy_cycle.assert_called_once()
    assert spy_cycle.call_args.args[1:] == ("quectel-ec25",)
    assert [w for _, w in sim.trace.pulses(POWER_CUT)] == [5000]
    assert [w for _, w in sim.trace.pulses(PWRKEY)] == [700]


def _replied(sim: SimulatedSupervisor, msg_type: int) -> bool:
    return any(data[2:3] == bytes((msg_type | wire.REPLY_BIT,)) for _, data in sim.trace.tx)


def test_the_modems_power_follows_pwrkey_presses_and_the_supply_switch() -> None:
    sim800 = ModemPower(ModemLines.for_profile("simcom-sim800"))
    assert sim800.pin(0, PWRKEY, 1) is None
    assert sim800.pin(999, PWRKEY, 0) is None, "a press under 1 s does nothing to a SIM800"
    assert sim800.pin(1000, PWRKEY, 1) is None
    assert sim800.pin(2200, PWRKEY, 0) is False, "1.2 s: it powers down"
    assert sim800.pin(7200, PWRKEY, 1) is None
    assert sim800.pin(8400, PWRKEY, 0) is True, "and the next press powers it up"
    assert sim800.pin(8500, 2, 1) is None and sim800.pin(8700, 2, 0) is None, "the SoC reset line"

    quectel = ModemPower(ModemLines.for_profile("quectel-ec25"))
    assert quectel.pin(0, POWER_CUT, 1) is False
    assert quectel.pin(100, PWRKEY, 1) is None
    assert quectel.pin(800, PWRKEY, 0) is None, "no supply: PWRKEY does nothing"
    assert quectel.pin(5000, POWER_CUT, 0) is None, "the supply is back; the modem waits for PWRKEY"
    assert quectel.pin(6000, PWRKEY, 1) is None
    assert quectel.pin(6700, PWRKEY, 0) is True
    assert quectel.on and quectel.supplied
    with pytest.raises(ValueError, match="no PWRKEY timing for the modem 'huawei-e173'"):
        ModemLines.for_profile("huawei-e173")


def test_the_emulators_power_off_answers_nothing_and_power_on_boots_it() -> None:
    with ModemEmulator("quectel-ec25", SimCard(), boot_delay_s=0.3) as emu:
        port = RawPort(emu.path)
        try:
            assert port.command("AT").endswith(b"OK\r\n")
            emu.hang(True)
            emu.power(False)
            port.write(b"AT\r")
            emu.power(True)
            port.write(b"AT\r")  # still booting: dropped too
            boot = port.read_until(b"+QIND: PB DONE\r\n", timeout=WAIT_S)
            assert b"OK" not in boot, "nothing answered while off or booting"
            assert next(x for x in boot.decode().split("\r\n") if x) == "RDY"
            assert port.command("AT").endswith(b"OK\r\n"), "the power cycle ended the hang"
            assert emu.commands.count("AT") == 2, emu.commands
        finally:
            port.close()
