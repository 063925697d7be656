"""Modem hot-plug inside dvrlinkd: the modem is removed and comes back under other tty numbers, and
the running daemon rebinds to its new AT port and comes online again, without a restart.

The watcher itself (``UdevModemWatcher``, real pyudev and libudev) is tested against real udev
with umockdev in ``test_modem_detect_umockdev.py``: it reports the EC25's removal and its return
with the AT port (USB interface 2) moved from /dev/ttyUSB0 to /dev/ttyUSB13. This test covers the
daemon's side with the same event types: ``ModemService`` (``_watch``, ``_wait_for_modem``,
``find_port``) acting on ``ModemAdded`` / ``ModemRemoved`` inside a running ``run_daemon``. Its
watcher, given through ``ModemOptions.watcher_factory``, keeps the real detection core
(``ModemDetector``, whose events the udev watcher passes on as they are) and scripts only udev:
``plug`` hands the core a settled USB device's snapshot, ``unplug`` the device's removal.

The modems are PTY emulators (``hil/modememu``): the tty on interface 2 of a snapshot is an
emulator's PTY path, standing for /dev/ttyUSB0 and, after the re-enumeration, /dev/ttyUSB13 (the
other interfaces keep the names of the umockdev descriptions; the EC25 dials ECM, so only the AT
port is opened). The modem's network interface is ``lo``, where the stand-in udhcpc and the
loopback broker play their parts as in ``test_daemon_modem.py``. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from support.aio import run
from support.broker import lab
from support.daemon_modem import (
    FAKE_UDHCPC,
    ICCID,
    SERIAL,
    SWAPPED_ICCID,
    WAIT,
    WORKING_APN,
    FakeHooks,
    StatusWatch,
    fast_tuning,
)

from dvrlink.daemon.app import run_daemon
from dvrlink.daemon.config import parse_config
from dvrlink.daemon.modem_service import ModemOptions
from dvrlink.modem.apn import DEFAULT_DATABASE
from dvrlink.modem.detect import DetectConfig, DetectionEvent, ModemDetector, UsbSnapshot
from dvrlink.modem.driver import ModemDriver
from dvrlink.modem.manager import ModemState
from dvrlink.protocol.identity import b64encode_key
from hil.modememu import ModemEmulator, SimCard

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not DEFAULT_DATABASE.exists(), reason="Debian package mobile-broadband-provider-info not installed"
    ),
]

HUB = "/sys/devices/pci0000:00/0000:00:14.0/usb1"
EC25_USB = f"{HUB}/1-1"
SIM7600_USB = f"{HUB}/1-2"
OPENED = re.compile(r"modem: AT port (\S+) open ")


def ec25(at_port: str, *, renumbered: bool = False) -> UsbSnapshot:
    """The Quectel EC25 (2c7c:0125) at 1-1 as ``hil/umockdev/quectel-ec25*.umockdev`` describe it:
    AT on interface 2, PPP on 3, the network interface on 4."""
    first, second, ppp = (16, 14, 15) if renumbered else (3, 1, 2)
    ttys = {0: f"/dev/ttyUSB{first}", 1: f"/dev/ttyUSB{second}", 2: at_port, 3: f"/dev/ttyUSB{ppp}"}
    return snapshot(EC25_USB, 0x2C7C, 0x0125, ttys, {4: "lo"})


def sim7600(at_port: str) -> UsbSnapshot:
    """The SIMCom SIM7600 (1e0e:9001) at 1-2, as ``hil/umockdev/simcom-sim7600.umockdev``."""
    ttys = {0: "/dev/ttyUSB4", 1: "/dev/ttyUSB5", 2: at_port, 3: "/dev/ttyUSB7", 4: "/dev/ttyUSB8"}
    return snapshot(SIM7600_USB, 0x1E0E, 0x9001, ttys, {5: "wwan0"})


def snapshot(
    usb_path: str, vendor: int, product: int, ttys: Mapping[int, str], nets: Mapping[int, str]
) -> UsbSnapshot:
    return UsbSnapshot(usb_path, vendor, product, MappingProxyType(dict(ttys)), MappingProxyType(dict(nets)))


class ScriptedUdev:
    """The daemon's modem watcher (``WatcherLike``, and its factory): the real detection core, fed
    by the test instead of udev, so its ``ModemAdded`` / ``ModemRemoved`` are the real ones."""

    def __init__(self) -> None:
        self.core = ModemDetector()
        self.config: DetectConfig | None = None
        self.started = False
        self.closed = False
        self._events: asyncio.Queue[DetectionEvent] = asyncio.Queue()
        self._idle = asyncio.Event()
        """Set while the service waits for an event with none queued: it handled the last one."""

    def __call__(self, config: DetectConfig) -> ScriptedUdev:
        self.config = config
        return self

    async def start(self) -> None:
        self.started = True

    async def next_event(self) -> DetectionEvent:
        if self._events.empty():
            self._idle.set()
        return await self._events.get()

    def close(self) -> None:
        self.closed = True

    def plug(self, snapshot: UsbSnapshot) -> None:
        """The USB device came and settled; the core is given the scan of it."""
        self.core.scanned(snapshot.usb_path, snapshot, asyncio.get_running_loop().time())
        self._pump()

    def unplug(self, usb_path: str) -> None:
        """The USB device is gone (its ``remove`` uevent)."""
        self.core.scanned(usb_path, None, asyncio.get_running_loop().time())
        self._pump()

    async def handled(self) -> None:
        """Wait until the service has handled every event given so far."""
        await asyncio.wait_for(self._idle.wait(), WAIT)

    def _pump(self) -> None:
        while (event := self.core.next_event()) is not None:
            self._idle.clear()
            self._events.put_nowait(event)


@dataclass
class Rig:
    udev: ScriptedUdev
    watch: StatusWatch
    daemon: asyncio.Task[None]
    caplog: pytest.LogCaptureFixture
    runners: list[ModemDriver]
    port_finders: list[Callable[[], str | None]]
    """The ``find_port`` the service gave each runner: where it (re)opens the AT port."""

    def at_port(self) -> str | None:
        """Where the runner would open the AT port now."""
        return self.port_finders[-1]()

    def opened_ports(self) -> list[str]:
        """The AT ports the modem runners opened, in order."""
        return [m.group(1) for r in self.caplog.records if (m := OPENED.match(r.getMessage()))]

    def logged(self, text: str) -> bool:
        return any(text in record.getMessage() for record in self.caplog.records)


@contextlib.asynccontextmanager
async def hotplug_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, *, profile: str
) -> AsyncIterator[Rig]:
    """The daemon with ``[modem] enabled = true``, no ``port``, and the scripted watcher."""
    caplog.set_level(logging.INFO, logger="dvrlink")
    monkeypatch.setenv("FAKE_DHCP_IP", "127.0.0.1")
    monkeypatch.setenv("FAKE_DHCP_ROUTER", "127.0.0.1")
    async with lab(tmp_path) as t:
        udhcpc = [sys.executable, str(FAKE_UDHCPC), "-f", "-i", "{iface}", "-n"]
        device = {
            "serial": SERIAL,
            "state_dir": str(tmp_path / "device"),
            "runtime_dir": str(tmp_path / "run"),
        }
        broker = {
            "host": "127.0.0.1",
            "port": t.broker.info.udp_port,
            "public_key": b64encode_key(t.broker.info.public_key),
        }
        modem = {"enabled": True, "profile": profile, "dhcp_command": udhcpc}
        document = {"device": device, "broker": broker, "modem": modem}
        config = parse_config(document, tmp_path / "dvrlinkd.toml")
        udev, watch = ScriptedUdev(), StatusWatch()
        runners: list[ModemDriver] = []
        port_finders: list[Callable[[], str | None]] = []

        def make_runner(*args: Any, **kwargs: Any) -> ModemDriver:
            port_finders.append(kwargs["find_port"])
            runners.append(ModemDriver(*args, **kwargs))
            return runners[-1]

        options = ModemOptions(
            tuning=fast_tuning(),
            hooks=FakeHooks(),
            runner_factory=make_runner,
            watcher_factory=udev,
            on_status=watch,
        )
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(config, stop, {}, modem_options=options))
        rig = Rig(udev, watch, daemon, caplog, runners, port_finders)
        try:
            yield rig
            assert not rig.daemon.done(), "the daemon stopped during the test"
        finally:
            stop.set()
            await asyncio.wait_for(rig.daemon, WAIT)
    assert rig.udev.started and rig.udev.closed


@contextlib.contextmanager
def two_modems(second: str) -> Iterator[tuple[ModemEmulator, ModemEmulator]]:
    """An emulated EC25 with SIM ``ICCID`` and a ``second`` family's with SIM ``SWAPPED_ICCID``,
    both up from the start, so their PTY paths differ."""
    sims = [
        SimCard.for_network("26201", iccid=i, working_apns=frozenset({WORKING_APN}))
        for i in (ICCID, SWAPPED_ICCID)
    ]
    with ModemEmulator("quectel-ec25", sims[0]) as first, ModemEmulator(second, sims[1]) as other:
        yield first, other


def test_removed_and_back_under_other_ttys_the_daemon_reopens_the_new_at_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        # The same modem family before (ttyUSB0) and after (ttyUSB13); the SIM tells them apart.
        with two_modems("quectel-ec25") as (before, after):
            old_port, new_port = before.path, after.path  # a vanished emulator's path is empty
            async with hotplug_daemon(tmp_path, monkeypatch, caplog, profile="auto") as rig:
                await rig.watch.until(lambda b: "waiting for a modem" in b.detail, "waiting for a modem")
                assert rig.udev.config == fast_tuning().detect
                rig.udev.plug(ec25(old_port))
                await rig.watch.until(
                    lambda b: b.state == "online" and b.iccid.endswith("0001"), "online on the first AT port"
                )
                assert rig.opened_ports() == [old_port]

                # Unplugged: the tty goes at once, udev reports the USB device's removal after.
                before.vanish()
                rig.udev.unplug(EC25_USB)
                await rig.udev.handled()
                await rig.watch.until(lambda b: b.state == "port-closed", "the port closed after the removal")
                assert rig.logged("modem quectel-ec25 removed; waiting for it to come back")
                assert rig.at_port() is None

                # Back after a reset, renumbered: the AT port is still interface 2, now ttyUSB13.
                rig.udev.plug(ec25(new_port, renumbered=True))
                block = await rig.watch.until(
                    lambda b: b.state == "online" and b.iccid.endswith("0002"),
                    "online again on the renumbered AT port",
                )
                assert rig.logged(f"modem quectel-ec25 (2c7c:0125) attached: AT port {new_port}")
                assert rig.opened_ports() == [old_port, new_port]
                assert rig.at_port() == new_port
                assert block.interface == "lo" and block.apn == WORKING_APN
                assert after.commands, "the emulator behind the new AT port got no command"
                assert len(rig.runners) == 1  # the same runner in the same daemon throughout

    run(main)


def test_an_excluded_family_is_ignored_and_its_removal_keeps_the_modem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        with two_modems("simcom-sim7600") as (ec25_emu, simcom_emu):
            async with hotplug_daemon(tmp_path, monkeypatch, caplog, profile="quectel-ec25") as rig:
                rig.udev.plug(ec25(ec25_emu.path))
                await rig.watch.until(lambda b: b.state == "online", "online with the EC25")

                # A SIM7600 is plugged in while online, then unplugged: [modem] profile excludes it.
                rig.udev.plug(sim7600(simcom_emu.path))
                await rig.udev.handled()
                assert rig.logged("modem simcom-sim7600 (1e0e:9001) ignored: [modem] profile is quectel-ec25")
                assert rig.at_port() == ec25_emu.path
                rig.udev.unplug(SIM7600_USB)
                await rig.udev.handled()
                assert not rig.logged("removed; waiting for it to come back")
                assert rig.at_port() == ec25_emu.path  # a reopen would find the EC25 again

                # The EC25 goes on being polled over its own port, online throughout.
                shown = len(rig.watch.blocks)
                for _ in range(2):  # two signal polls after the removal
                    after = len(ec25_emu.commands)
                    await asyncio.to_thread(ec25_emu.wait_for_command, "AT+CSQ", WAIT, after=after)
                assert {b.state for b in rig.watch.blocks[shown:]} <= {"online"}
                assert rig.runners[-1].status().state is ModemState.ONLINE
                assert rig.opened_ports() == [ec25_emu.path]
                assert simcom_emu.commands == []
                assert [r.manager.config.profile.name for r in rig.runners] == ["quectel-ec25"]

    run(main)
