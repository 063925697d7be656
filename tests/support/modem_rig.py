"""The rig the modem manager's end-to-end tests share: the PTY modem emulator, the real AtLink and
runner, a fake data link and fake board hooks, with timeouts short enough for a fast suite.

pppd cannot run on this machine (no /dev/ppp), so ``FakeDataLink`` stands in for it: for a PPP
profile it dials ``ATD*99***1#`` itself over the one emulated port, takes ``CONNECT`` as "up" and
has the emulated network hang up at once, so the port returns to command mode as the AT port of
a USB modem (whose PPP runs on another port) would stay; for an ECM profile the manager has
already started the call and the fake only checks the emulator holds an active context. Its
probe asks the emulator whether the data path would work (registered, attached, call active).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dvrlink.modem.accounting import AccountingConfig, AccountingLedger
from dvrlink.modem.apn import DEFAULT_DATABASE, ApnMemoryFile, ProviderIndex
from dvrlink.modem.driver import DriverConfig, DriverEvent, ModemDriver
from dvrlink.modem.ladder import LadderFile
from dvrlink.modem.manager import (
    DataFailed,
    DataFailure,
    DataRequest,
    DataUp,
    ModemConfig,
    ModemState,
    ModemStatus,
)
from dvrlink.modem.profiles import DialMethod
from dvrlink.protocol.at_events import CommandCompleted, CommandFailed, CommandTimedOut
from dvrlink.protocol.at_results import FinalKind
from hil.modememu import ModemEmulator, SimCard
from hil.modememu.timings import emulator_driver_config, emulator_modem_config

needs_database = pytest.mark.skipif(
    not DEFAULT_DATABASE.exists(), reason="Debian package mobile-broadband-provider-info not installed"
)
BOUND = 10.0
"""Seconds any single wait in these tests may take before it fails."""

_INDEX: list[ProviderIndex] = []


def provider_index() -> ProviderIndex:
    """The real provider database, parsed once per test session."""
    if not _INDEX:
        _INDEX.append(ProviderIndex.parse(DEFAULT_DATABASE))
    return _INDEX[0]


def fast_modem_config(profile: str, **overrides: Any) -> ModemConfig:
    """The emulator's timers (``hil.modememu.timings``), two failed probes to call the path dead."""
    return emulator_modem_config(profile, **{"probe_failures": 2, **overrides})


def fast_runner_config(**overrides: Any) -> DriverConfig:
    """The emulator's timers, with quick accounting and data-down waits for the tests."""
    return emulator_driver_config(**{"accounting_interval_s": 0.1, "data_down_timeout_s": 2.0, **overrides})


class FakeDataLink:
    """Stands in for pppd and ECM/DHCP (see module docstring)."""

    def __init__(self, emu: ModemEmulator) -> None:
        self.emu = emu
        self.runner: ModemDriver | None = None
        self.requests: list[DataRequest] = []
        self.up_apn: str | None = None
        self.method: DialMethod | None = None
        self.healthy = True
        """Set False to break the data path; a new call (up) mends it, as a re-attach does."""
        self.rx = self.tx = 0

    async def up(self, request: DataRequest) -> DataUp | DataFailed:
        self.requests.append(request)
        if request.method is DialMethod.PPP:
            assert self.runner is not None
            link = self.runner.link
            if link is None or not link.is_open:
                return DataFailed(DataFailure.NO_DEVICE, "AT port closed")
            outcome = await link.command(request.dial)
            if isinstance(outcome, CommandTimedOut):
                return DataFailed(DataFailure.TIMEOUT, outcome.command)
            if isinstance(outcome, CommandFailed) and outcome.result.kind is FinalKind.NO_CARRIER:
                return DataFailed(DataFailure.NO_CARRIER, outcome.result.line)
            if not isinstance(outcome, CommandCompleted):
                return DataFailed(DataFailure.OTHER, repr(outcome))
            self.emu.drop_carrier()  # give the single emulated port back to AT (see docstring)
        elif not self.emu.model.active:
            return DataFailed(DataFailure.IPCP, "no active context: DHCP would get no lease")
        self.up_apn = request.apn.apn
        self.method = request.method
        self.healthy = True
        self.rx = self.tx = 0
        return DataUp("ppp0" if request.method is DialMethod.PPP else "usb0", "10.64.0.2")

    async def down(self) -> None:
        self.up_apn = None

    async def probe(self) -> bool:
        model = self.emu.model
        if not self.healthy or self.up_apn is None or not model.registered() or model.detached:
            return False
        return self.method is DialMethod.PPP or bool(model.active)

    def counters(self) -> tuple[int, int]:
        if self.up_apn is not None:
            self.rx += 1000
            self.tx += 100
        return self.rx, self.tx


class FakeHooks:
    """Board hooks: a USB reset or power cycle re-enumerates the emulated modem (and ends a hang)."""

    def __init__(self, emu: ModemEmulator) -> None:
        self.emu = emu
        self.calls: list[str] = []

    async def usb_reset(self) -> None:
        self.calls.append("usb-reset")
        self._replug()

    async def power_cycle(self) -> None:
        self.calls.append("power-cycle")
        self._replug()

    async def reboot_board(self) -> None:
        self.calls.append("reboot-board")

    def _replug(self) -> None:
        self.emu.hang(False)
        self.emu.vanish(reappear_after=0.05)


@dataclass
class Rig:
    emu: ModemEmulator
    runner: ModemDriver
    data: FakeDataLink
    hooks: FakeHooks
    tmp_path: Path
    ledger: AccountingLedger
    events: list[DriverEvent] = field(default_factory=list)
    on_find_port: Callable[[], None] | None = None
    """Called each time the runner looks for the port (to end a hang "fixed by reopening")."""

    async def wait(self, predicate: Callable[[ModemStatus], bool], timeout: float = BOUND) -> ModemStatus:
        return await self.runner.wait_for(predicate, timeout)

    async def online(self, timeout: float = BOUND) -> ModemStatus:
        return await self.wait(lambda s: s.state is ModemState.ONLINE, timeout)

    async def state(self, state: ModemState, timeout: float = BOUND) -> ModemStatus:
        return await self.wait(lambda s: s.state is state, timeout)

    async def commands_answered(self, count: int) -> None:
        """Wait until the emulator got ``count`` more commands (the manager keeps polling)."""
        start = len(self.emu.commands)
        await self.wait(lambda _: len(self.emu.commands) >= start + count)

    def events_of(self, kind: type[Any], since: int = 0) -> list[Any]:
        return [e for e in self.events[since:] if isinstance(e, kind)]


@contextlib.asynccontextmanager
async def running(
    profile: str,
    sim: SimCard | None,
    tmp_path: Path,
    *,
    no_sim: bool = False,
    modem: dict[str, Any] | None = None,
    runner: dict[str, Any] | None = None,
    before_start: Callable[[ModemEmulator], None] | None = None,
) -> AsyncIterator[Rig]:
    """The emulator and a running ModemDriver on its PTY; both stopped on the way out."""
    with ModemEmulator(profile, sim, no_sim=no_sim, boot_delay_s=0.05) as emu:
        if before_start is not None:
            before_start(emu)
        data = FakeDataLink(emu)
        hooks = FakeHooks(emu)
        ledger = AccountingLedger(tmp_path / "accounting.json", AccountingConfig())
        rig_box: list[Rig] = []

        def find_port() -> str | None:
            if rig_box and rig_box[0].on_find_port is not None:
                rig_box[0].on_find_port()
            return emu.path or None

        events: list[DriverEvent] = []
        the_runner = ModemDriver(
            fast_runner_config(**(runner or {})),
            fast_modem_config(profile, **(modem or {})),
            find_port=find_port,
            data_link=data,
            index=provider_index(),
            apn_memory_file=ApnMemoryFile(tmp_path / "apn.json"),
            ladder_file=LadderFile(tmp_path / "ladder.json"),
            hooks=hooks,
            ledger=ledger,
            on_event=events.append,
        )
        data.runner = the_runner
        rig = Rig(emu, the_runner, data, hooks, tmp_path, ledger, events)
        rig_box.append(rig)
        task = asyncio.create_task(the_runner.run())
        try:
            yield rig
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
