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
from support.aio import run
from support.micropython import PtyBridge, SimulatedSupervisor, node_missing
from support.waiting import wait_until_async

from dvrlink.daemon.config import BoardConfig, ModemSettings
from dvrlink.daemon.modem_service import ModemOptions, ModemService
from dvrlink.daemon.supervisor_service import SupervisorService
from dvrlink.modem.ladder import Step
from dvrlink.modem.manager import ModemState, ModemStatus
from dvrlink.protocol import supervisor_wire as wire

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=node_missing() or "")

PWRKEY, POWER_CUT = 3, 4


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
