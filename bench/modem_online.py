"""Modem manager overhead against the PTY modem emulator (zero network delay, so what is measured
is our own cost): time from SIM insertion to data online, recovery time per fault class, and the
runner's CPU while online and idle.

``python -m bench.modem_online [--quick] [--daemon [--window S]]``. Prints figures; asserts
nothing.

- insertion → online: the emulator starts with the SIM inside (boot URCs as a power-on gives), a
  fresh runner opens the port; the clock runs from the runner's start to ``CameOnline``. The SIM's
  network refuses the first three database APNs (Telekom DE), so the APN walk is included. Median
  and max over N runs; target under 2 s.
- recovery: per fault class, from injecting the fault (or from undoing it, for faults a network
  undoes: coverage, denial, SIM put back) to online again, with the ladder steps it took. The
  timeouts are the test-scale ones (0.4 s command cap, 0.6 s unresponsive), so hang figures
  show the ladder's own overhead, not production timeouts.
- CPU: process CPU time (user+system) over 10 s while online with the production polling
  intervals (registration 10 s, signal 30 s, probe 60 s), as a percentage of one core.
- with ``--daemon`` instead: the whole ``dvrlinkd run`` as a real process (pinned to core 1) with
  ``[modem] enabled``, the emulated EC25 on its PTY (a thread of this process, so its CPU is not
  counted), the stand-in udhcpc on ``lo`` as the ECM data link (so the data-path probe is a real
  STUN request to the broker) and a loopback dvrlink-broker (core 0). Once presence and the modem
  are online: the daemon's CPU (utime+stime, and schedstat in ns) and VmRSS over an idle window
  of 30 s (``--window``; 5 s with ``--quick``), with the production modem timers and keepalive
  (25 s; the NAT lifetime learning is off so no probe falls in the window), and the AT commands
  the modem received meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from bench.common import (
    GENERATOR_CORE,
    SERVER_CORE,
    BenchError,
    child_process,
    describe_pinning,
    log_tail,
    run_main,
    venv_script,
    verdict,
    wait_until,
)
from bench.daemon_footprint import measure, read_status, write_daemon_config
from bench.servers import broker_process
from dvrlink.modem.apn import DEFAULT_DATABASE, ApnConfig, ApnMemoryFile, ProviderIndex
from dvrlink.modem.driver import DriverConfig, DriverEvent, ModemDriver
from dvrlink.modem.ladder import LadderFile
from dvrlink.modem.manager import (
    DataFailed,
    DataFailure,
    DataRequest,
    DataUp,
    ModemConfig,
    ModemState,
)
from dvrlink.modem.profiles import DialMethod, profile_by_name
from dvrlink.protocol.at_events import CommandCompleted, CommandFailed
from dvrlink.protocol.at_results import FinalKind
from hil.modememu import ModemEmulator, SimCard
from hil.modememu.timings import COMMAND_CAP_S, emulator_driver_config, emulator_modem_config

TARGET_ONLINE_S = 2.0
SIM = SimCard.for_network("26201", iccid="89490200001234500001", working_apns=frozenset({"internet.telekom"}))


class EmulatorDataLink:
    """The data link against the emulator: PPP dials over the one PTY and hands the port back;
    ECM checks the emulator's active context. Probe: the emulator's data path would work."""

    def __init__(self, emu: ModemEmulator) -> None:
        self.emu = emu
        self.runner: ModemDriver | None = None
        self.up_apn: str | None = None

    async def up(self, request: DataRequest) -> DataUp | DataFailed:
        if request.method is DialMethod.PPP:
            assert self.runner is not None
            link = self.runner.link
            if link is None:
                return DataFailed(DataFailure.NO_DEVICE)
            outcome = await link.command(request.dial)
            if isinstance(outcome, CommandFailed) and outcome.result.kind is FinalKind.NO_CARRIER:
                return DataFailed(DataFailure.NO_CARRIER)
            if not isinstance(outcome, CommandCompleted):
                return DataFailed(DataFailure.OTHER)
            self.emu.drop_carrier()
        elif not self.emu.model.active:
            return DataFailed(DataFailure.IPCP)
        self.up_apn = request.apn.apn
        return DataUp("usb0")

    async def down(self) -> None:
        self.up_apn = None

    async def probe(self) -> bool:
        model = self.emu.model
        return self.up_apn is not None and model.registered() and not model.detached

    def counters(self) -> tuple[int, int]:
        return (0, 0)


class Hooks:
    def __init__(self, emu: ModemEmulator) -> None:
        self.emu = emu

    async def usb_reset(self) -> None:
        self.emu.hang(False)
        self.emu.vanish(reappear_after=0.05)

    async def power_cycle(self) -> None:
        await self.usb_reset()

    async def reboot_board(self) -> None:
        pass


def modem_config(profile: str, *, fast: bool) -> ModemConfig:
    if fast:
        return emulator_modem_config(profile)
    return ModemConfig(profile=profile_by_name(profile), apn=ApnConfig(database=DEFAULT_DATABASE))


def runner_config(*, fast: bool) -> DriverConfig:
    return emulator_driver_config() if fast else DriverConfig(port_poll_s=0.05)


class Session:
    """One emulator and one runner, started and stopped together."""

    def __init__(self, index: ProviderIndex, workdir: Path, profile: str, *, fast: bool) -> None:
        self.emu = ModemEmulator(profile, SIM, boot_delay_s=0.01)
        self.events: list[DriverEvent] = []
        self.data = EmulatorDataLink(self.emu)
        self.runner = ModemDriver(
            runner_config(fast=fast),
            modem_config(profile, fast=fast),
            find_port=lambda: self.emu.path or None,
            data_link=self.data,
            index=index,
            apn_memory_file=ApnMemoryFile(workdir / "apn.json"),
            ladder_file=LadderFile(workdir / "ladder.json"),
            hooks=Hooks(self.emu),
            on_event=self.events.append,
        )
        self.data.runner = self.runner
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Session:
        self.emu.start()
        self.task = asyncio.create_task(self.runner.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.emu.stop()

    async def online(self, timeout: float = 20.0) -> None:
        await self.runner.wait_for(lambda s: s.state is ModemState.ONLINE, timeout)


async def time_to_online(index: ProviderIndex, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            session = Session(index, Path(tmp), "quectel-ec25", fast=False)
            start = time.perf_counter()
            async with session:
                await session.online()
                times.append(time.perf_counter() - start)
    return times


async def _state(s: Session, state: ModemState) -> None:
    await s.runner.wait_for(lambda st: st.state is state, 20.0)


async def _leave_online(s: Session) -> None:
    await s.runner.wait_for(lambda st: st.state is not ModemState.ONLINE, 20.0)


FaultScript = Callable[[Session], Awaitable[float]]


async def f_late_ok(s: Session) -> float:
    s.emu.late_reply(COMMAND_CAP_S * 1.5)  # later than the fast config caps a command at
    return time.perf_counter()


async def f_reboot(s: Session) -> float:
    s.emu.reboot(mid_command=True)
    return time.perf_counter()


async def f_swap(s: Session) -> float:
    s.emu.swap_sim(replace(SIM, iccid="89490200001234500002"))
    return time.perf_counter()


async def f_reinsert(s: Session) -> float:
    s.emu.remove_sim()
    await _state(s, ModemState.SIM_ABSENT)
    s.emu.insert_sim(SIM)
    return time.perf_counter()


async def f_denied(s: Session) -> float:
    s.emu.set_registration("denied")
    await _state(s, ModemState.REG_BACKOFF)
    s.emu.set_registration("home")
    return time.perf_counter()


async def f_signal(s: Session) -> float:
    s.emu.lose_signal()
    await _leave_online(s)
    s.emu.set_signal(20)
    s.emu.set_registration("home")
    return time.perf_counter()


async def f_vanish(s: Session) -> float:
    start = time.perf_counter()
    s.emu.vanish(reappear_after=0.1)
    return start


async def f_hang(s: Session) -> float:
    s.emu.hang(True)
    return time.perf_counter()


FAULTS: tuple[tuple[str, FaultScript], ...] = (
    ("late OK", f_late_ok),
    ("reboot mid-command", f_reboot),
    ("SIM swapped", f_swap),
    ("SIM removed, put back", f_reinsert),
    ("registration denied, then home", f_denied),
    ("signal lost, then back", f_signal),
    ("port vanishes for 0.1 s", f_vanish),
    ("firmware hang (USB reset)", f_hang),
)


async def recovery(index: ProviderIndex, runs: int) -> list[tuple[str, float, str]]:
    rows = []
    for name, script in FAULTS:
        times = []
        steps = ""
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                async with Session(index, Path(tmp), "quectel-ec25", fast=True) as s:
                    await s.online()
                    if name == "late OK":
                        await asyncio.sleep(0)  # the next poll is the late one
                    since = len(s.events)
                    start = await script(s)
                    # wait until it left online and came back (or stayed, for harmless faults)
                    want = "89490200001234500002" if name == "SIM swapped" else SIM.iccid
                    await s.runner.wait_for(
                        lambda st, s=s, since=since, want=want: (
                            st.online
                            and st.iccid == want
                            and any(
                                type(e).__name__ in ("CameOnline", "AtRecovered") for e in s.events[since:]
                            )
                        ),
                        20.0,
                    )
                    times.append(time.perf_counter() - start)
                    steps = ",".join(e.step.label for e in s.runner.steps_taken) or "none"
        rows.append((name, statistics.median(times), steps))
    return rows


async def idle_cpu(index: ProviderIndex, seconds: float) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        async with Session(index, Path(tmp), "quectel-ec25", fast=False) as s:
            await s.online()
            before_cmds = len(s.emu.commands)
            cpu0 = time.process_time()
            await asyncio.sleep(seconds)
            cpu = time.process_time() - cpu0
            return 100.0 * cpu / seconds, len(s.emu.commands) - before_cmds


async def bench(quick: bool) -> None:
    if not DEFAULT_DATABASE.exists():
        print(f"provider database {DEFAULT_DATABASE} missing: install mobile-broadband-provider-info")
        return
    index = ProviderIndex.parse(DEFAULT_DATABASE)
    runs = 3 if quick else 15
    times = await time_to_online(index, runs)
    median = statistics.median(times)
    print(
        f"SIM insertion to online (Quectel EC25, 3 refused APNs first), {runs} runs: median "
        f"{median * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; target < {TARGET_ONLINE_S:g} s "
        f"{verdict(median < TARGET_ONLINE_S)}"
    )
    print("recovery per fault class (test-scale timeouts), median:")
    for name, value, steps in await recovery(index, 1 if quick else 3):
        print(f"  {name:34s} {value * 1000:7.0f} ms   ladder: {steps}")
    seconds = 2.0 if quick else 10.0
    cpu, commands = await idle_cpu(index, seconds)
    print(
        f"driver CPU while online and idle ({seconds:g} s, production polling): {cpu:.2f} % of a core "
        f"(emulator thread included), {commands} AT commands"
    )


FAKE_UDHCPC = Path(__file__).resolve().parent.parent / "hil" / "fake_udhcpc.py"
DAEMON_KEEPALIVE_S = 25.0
DAEMON_ONLINE_TIMEOUT_S = 60.0


def daemon_idle(window: float, step: float) -> None:
    """dvrlinkd with the emulated modem, online and idle: CPU and RSS (see module docstring)."""
    if not DEFAULT_DATABASE.exists():
        print(f"provider database {DEFAULT_DATABASE} missing: install mobile-broadband-provider-info")
        return
    print(
        f"dvrlinkd online and idle with the modem attached (Quectel EC25 emulator, ECM over the "
        f"stand-in udhcpc on lo): keepalive {DAEMON_KEEPALIVE_S:g} s, window {window:g} s"
    )
    with (
        tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp,
        ModemEmulator("quectel-ec25", SIM, boot_delay_s=0.05) as emu,
    ):
        work = Path(tmp)
        with broker_process(work, core=GENERATOR_CORE) as broker:
            config = write_daemon_config(work, broker.udp[1], broker.public_key, DAEMON_KEEPALIVE_S)
            dhcp = ", ".join(
                f'"{w}"' for w in (sys.executable, str(FAKE_UDHCPC), "-f", "-i", "{iface}", "-n")
            )
            with config.open("a") as handle:
                handle.write(
                    f'\n[modem]\nenabled = true\nprofile = "quectel-ec25"\nport = "{emu.path}"\n'
                    f'net_interface = "lo"\ndhcp_command = [{dhcp}]\n'
                )
            env = {**os.environ, "FAKE_DHCP_IP": "127.0.0.1", "FAKE_DHCP_ROUTER": "127.0.0.1"}
            log = work / "dvrlinkd.log"
            argv = [venv_script("dvrlinkd"), "run", "--config", str(config)]
            runtime_dir = work / "daemon-run"
            started = time.monotonic()
            with child_process(argv, log, core=SERVER_CORE, env=env) as proc:
                wait_until(
                    lambda: _all_online(proc, log, runtime_dir),
                    DAEMON_ONLINE_TIMEOUT_S,
                    f"dvrlinkd and its modem online ({runtime_dir})",
                )
                print(
                    f"  presence and modem online {time.monotonic() - started:.2f} s after start; "
                    f"{describe_pinning('dvrlinkd', proc.pid, SERVER_CORE)}"
                )
                time.sleep(min(1.0, step))
                commands = len(emu.commands)
                measure(proc.pid, runtime_dir, window, step)
                print(f"  {len(emu.commands) - commands} AT commands reached the modem during the window")
                if not _all_online(proc, log, runtime_dir):
                    raise BenchError(f"dvrlinkd or its modem left online during the window:\n{log_tail(log)}")


def _all_online(proc: subprocess.Popen[bytes], log: Path, runtime_dir: Path) -> bool:
    """Presence and the modem online in dvrlinkd's status.json.

    Raises:
        BenchError: dvrlinkd has exited.
    """
    if proc.poll() is not None:
        raise BenchError(f"dvrlinkd exited with status {proc.returncode}:\n{log_tail(log)}")
    status = read_status(runtime_dir) or {}
    modem = status.get("modem")
    return status.get("state") == "online" and isinstance(modem, dict) and modem.get("state") == "online"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="modem manager: SIM to online, recovery per fault, idle CPU")
    parser.add_argument("--quick", action="store_true", help="fewer runs, shorter windows")
    parser.add_argument(
        "--daemon", action="store_true", help="measure the whole dvrlinkd process online and idle instead"
    )
    parser.add_argument("--window", type=float, default=30.0, help="--daemon: idle window in seconds")
    args = parser.parse_args(argv)
    if not 1.0 <= args.window <= 3600.0:
        parser.error("--window must be 1-3600 s")
    logging.basicConfig(level=logging.ERROR)

    def body() -> None:
        if args.daemon:
            daemon_idle(5.0 if args.quick else args.window, 0.5 if args.quick else 1.0)
        else:
            asyncio.run(bench(args.quick))

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
