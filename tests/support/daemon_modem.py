"""dvrlinkd with ``[modem] enabled = true`` against a loopback broker, the modem being the PTY emulator
(``hil/modememu``) reached through a symlink that follows the emulator's PTY, as
``/dev/serial/by-id/...`` follows a real modem across re-enumeration. The DHCP client is the
stand-in ``hil/fake_udhcpc.py`` on ``lo``; board hooks only record (no test may reset USB devices
or reboot this machine). Timers are scaled down: the emulator answers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dvrlink.daemon.app import run_daemon
from dvrlink.daemon.config import DaemonConfig, load_config
from dvrlink.daemon.modem_service import ModemOptions, ModemTuning
from dvrlink.daemon.status import ModemBlock
from dvrlink.modem.driver import DriverConfig, ModemDriver
from dvrlink.modem.ladder import LadderConfig
from dvrlink.modem.manager import ModemStatus
from dvrlink.protocol.at_engine import AtConfig
from dvrlink.protocol.identity import b64encode_key
from hil.modememu import DataPath, ModemEmulator, SimCard
from support.broker import Lab, lab

SERIAL = "DL-0001-0002"
WAIT = 10.0
"""Seconds any single wait may take before the test fails."""
HIL = Path(__file__).resolve().parents[2] / "hil"
FAKE_UDHCPC = HIL / "fake_udhcpc.py"
ICCID = "89490200001234500001"
SWAPPED_ICCID = "89490200009999900002"
WORKING_APN = "internet.telekom"
"""Not the provider database's first APN for 262-01: the first ones are refused by the emulator."""

FAST_MODEM = {
    "sim_poll_s": 0.3,
    "sim_debounce_s": 0.05,
    "iccid_check_s": 1.0,
    "registration_poll_s": 0.5,
    "registration_timeout_s": 5.0,
    "registration_backoff_s": 0.2,
    "registration_backoff_max_s": 0.8,
    "signal_poll_s": 0.5,
    "probe_interval_s": 0.3,
    "data_backoff_s": 0.2,
    "at_unresponsive_s": 0.6,
    "reset_wait_s": 1.5,
    "ecm_result_timeout_s": 1.0,
}


def fast_tuning(**overrides: Any) -> ModemTuning:
    """The emulator answers at once: timers scaled down so the suite stays fast."""
    runner = DriverConfig(
        at=AtConfig(resync_timeout=0.15, resync_settle=0.05),
        ladder=LadderConfig(min_interval_s=(0.0,) * 8, stable_s=60.0, round_pause_s=0.5),
        command_timeout_cap_s=0.4,
        port_poll_s=0.02,
        port_wait_s=3.0,
        accounting_interval_s=0.1,
        data_down_timeout_s=6.0,  # a hang-up over the port (PPP on the AT port) takes 2 s of guard time
    )
    values: dict[str, Any] = {
        "modem": FAST_MODEM,
        "runner": runner,
        "probe_timeout_s": 1.0,
        "restart_backoff_s": 0.05,
        "restart_backoff_max_s": 0.2,
        **overrides,
    }
    return ModemTuning(**values)


class FakeHooks:
    """Board hooks that only record: a test never resets USB or reboots."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def usb_reset(self) -> None:
        self.calls.append("usb-reset")

    async def power_cycle(self) -> None:
        self.calls.append("power-cycle")

    async def reboot_board(self) -> None:
        self.calls.append("reboot-board")


class StatusWatch:
    """The modem blocks the service reported (each after the status file was rewritten)."""

    def __init__(self) -> None:
        self.blocks: list[ModemBlock] = []
        self._changed = asyncio.Event()

    def __call__(self, block: ModemBlock) -> None:
        self.blocks.append(block)
        self._changed.set()

    async def next_change(self) -> None:
        """Wait for the next snapshot (the modem reports changes every poll while it runs)."""
        self._changed.clear()
        await asyncio.wait_for(self._changed.wait(), WAIT)

    async def until(self, predicate: Callable[[ModemBlock], bool], what: str) -> ModemBlock:
        try:
            async with asyncio.timeout(WAIT):
                while not (self.blocks and predicate(self.blocks[-1])):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            last = self.blocks[-1] if self.blocks else None
            raise AssertionError(f"status never showed {what}; last modem block: {last}") from None
        return self.blocks[-1]


@dataclass
class Rig:
    lab: Lab
    emu: ModemEmulator
    config: DaemonConfig
    daemon: asyncio.Task[None]
    stop: asyncio.Event
    watch: StatusWatch
    hooks: FakeHooks
    runners: list[ModemDriver] = field(default_factory=list)

    async def modem(self, predicate: Callable[[ModemStatus], bool]) -> ModemStatus:
        assert self.runners, "the daemon built no modem runner"
        return await self.runners[-1].wait_for(predicate, WAIT)

    def registered(self) -> bool:
        return self.lab.broker.server.presence(SERIAL) is not None


def follow(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically (as udev rewrites a by-id symlink)."""
    tmp = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    runner_factory: Callable[..., Any] | None = None,
    extra_modem: str = "",
    extra_config: str = "",
    runner_keywords: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    lab_settings: dict[str, Any] | None = None,
    profile: str = "quectel-ec25",
    data_path: DataPath | None = None,
    broker_port: int | None = None,
    board_hooks: bool = False,
) -> AsyncIterator[Rig]:
    """The daemon with the emulated modem against a loopback broker. ``extra_modem`` goes into
    ``[modem]``, ``extra_config`` after it (other sections); ``runner_keywords`` rewrites the
    service's keywords to ``ModemDriver`` (to add a test calendar, to meter the data link).
    ``profile`` is the emulated modem family and the daemon's ``[modem] profile``; ``data_path``
    sees what the host sends while the emulator is in data mode; ``broker_port`` replaces the
    broker's presence port in the daemon's config (a port that never answers: a broker out of
    reach). ``board_hooks``: the daemon's own board hooks instead of ``FakeHooks`` (its power
    cycle through ``[board] supervisor``); give ``usb_reset = false`` in ``extra_modem`` then, and
    leave ``board_reboot`` off, so that no rung acts on this machine."""
    monkeypatch.setenv("FAKE_DHCP_IP", "127.0.0.1")
    monkeypatch.setenv("FAKE_DHCP_ROUTER", "127.0.0.1")
    sim = SimCard.for_network("26201", iccid=ICCID, working_apns=frozenset({WORKING_APN}))
    with ModemEmulator(profile, sim, boot_delay_s=0.05, data_path=data_path) as emu:
        port = tmp_path / "ttyMODEM"
        follow(port, emu.path)
        emu.on_path_change = lambda path: follow(port, path)
        async with lab(tmp_path, **(lab_settings or {})) as t:
            argv = (sys.executable, str(FAKE_UDHCPC), "-f", "-i", "{iface}", "-n")
            dhcp = ", ".join(f'"{word}"' for word in argv)
            config_file = tmp_path / "dvrlinkd.toml"
            config_file.write_text(
                f'[device]\nserial = "{SERIAL}"\nstate_dir = "{tmp_path / "device"}"\n'
                f'runtime_dir = "{tmp_path / "run"}"\n'
                f'[broker]\nhost = "127.0.0.1"\nport = {broker_port or t.broker.info.udp_port}\n'
                f'public_key = "{b64encode_key(t.broker.info.public_key)}"\n'
                f'[modem]\nenabled = true\nprofile = "{profile}"\nport = "{port}"\n'
                f'net_interface = "lo"\ndhcp_command = [{dhcp}]\n{extra_modem}\n{extra_config}'
            )
            config = load_config(config_file)
            runners: list[ModemDriver] = []

            def make_runner(*args: Any, **kwargs: Any) -> Any:
                if runner_factory is not None:
                    return runner_factory(*args, **kwargs)
                if runner_keywords is not None:
                    kwargs = runner_keywords(kwargs)
                runners.append(ModemDriver(*args, **kwargs))
                return runners[-1]

            watch = StatusWatch()
            hooks = FakeHooks()
            options = ModemOptions(
                tuning=fast_tuning(),
                hooks=None if board_hooks else hooks,
                runner_factory=make_runner,
                on_status=watch,
            )
            stop = asyncio.Event()
            daemon = asyncio.create_task(run_daemon(config, stop, {}, modem_options=options))
            rig = Rig(t, emu, config, daemon, stop, watch, hooks, runners)
            try:
                yield rig
                assert not daemon.done(), "the daemon stopped during the test"
            finally:
                stop.set()
                await asyncio.wait_for(daemon, WAIT)


def status_rows(text: str) -> dict[str, str]:
    """``dvrlinkd status`` lines as name -> value (the modem's rows are indented)."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep:
            rows.setdefault(name, value.strip())
    return rows
