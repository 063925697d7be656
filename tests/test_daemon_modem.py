"""dvrlinkd with ``[modem] enabled = true``: the daemon brings the emulated modem online, shows it in
``dvrlinkd status``, recovers faults without a restart, keeps registering with a loopback broker,
and survives a modem runner that raises.

The modem is the PTY emulator (``hil/modememu``) as a Quectel EC25, reached through a symlink that
follows the emulator's PTY, as ``/dev/serial/by-id/...`` follows a real modem across re-enumeration.
The data link is the daemon's real one for this profile: the EC25 dials ECM over AT
(``AT+QNETDEVCTL``), then the daemon runs its DHCP client as a child process on the modem's
network interface. The client is the stand-in ``hil/fake_udhcpc.py`` on ``lo`` (this machine's
network stays as it is), reporting a lease of 127.0.0.1, so the daemon's data-path probe is a real
STUN request through that "interface" to the loopback broker's presence port. (pppd cannot run
here: there is no /dev/ppp, and the emulator has one port, which the AT link holds; the pppd
supervision with ``hil/fake_pppd.py`` is tested in ``test_modem_ppp_supervisor.py``.)

Board hooks are fakes: no test may reset USB devices or reboot this machine. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from support.aio import run
from support.daemon_modem import ICCID, SWAPPED_ICCID, WAIT, WORKING_APN, Rig, running, status_rows
from support.waiting import wait_until_async

from dvrlink.daemon import app as daemon_app
from dvrlink.daemon.status import format_status, read_status
from dvrlink.modem.apn import DEFAULT_DATABASE
from dvrlink.modem.manager import ModemState, ModemStatus
from hil.modememu import SimCard

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not DEFAULT_DATABASE.exists(), reason="Debian package mobile-broadband-provider-info not installed"
    ),
]


def test_sim_to_online_status_and_recovery_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with running(tmp_path, monkeypatch) as rig:
            block = await rig.watch.until(
                lambda b: b.state == "online" and b.signal_dbm is not None and b.operator != "", "online"
            )
            assert block.apn == WORKING_APN  # the database's first APNs were refused
            assert rig.emu.commands.count("AT+QNETDEVCTL=1,1,1") > 1
            assert block.iccid == "894902**********0001"
            assert (block.modem, block.operator, block.rat) == ("Quectel EC25", "Emulated Net", "LTE")
            assert block.detail == ""

            status = read_status(tmp_path / "run")
            assert status.modem is not None and status.modem.state == "online"
            text = format_status(status, status.started_at)
            assert ICCID not in text
            rows = status_rows(text)
            assert rows["modem"] == "online"
            assert rows["device"] == "Quectel EC25"
            assert rows["SIM"] == "identified 894902**********0001"
            assert rows["network"] == "Emulated Net LTE"
            assert rows["signal"] == f"{block.signal_dbm} dBm"
            assert rows["APN"] == WORKING_APN
            assert rows["recovery step"] == "-"
            assert "to do" not in rows
            # APN memory and accounting live in the device's state directory
            assert (tmp_path / "device" / "modem" / "apn_memory.json").exists()

            # the daemon registers with the broker meanwhile
            await _registered(rig)
            registered_at = read_status(tmp_path / "run").registered_at

            # fault 1: the modem's port vanishes and comes back under another PTY
            rig.emu.vanish(reappear_after=0.1)
            await rig.watch.until(lambda b: b.state != "online", "the modem offline after the port vanished")
            block = await rig.watch.until(
                lambda b: b.state == "online" and b.ladder_step >= 2, "online again after reopening the port"
            )
            assert (block.ladder_step, block.ladder_step_name) == (2, "reopen-port")
            rows = status_rows(format_status(read_status(tmp_path / "run"), 0.0))
            assert rows["recovery step"] == "2 (reopen-port)"

            # fault 2: another SIM in the tray is re-provisioned, its ICCID shown
            swapped = SimCard.for_network("26201", iccid=SWAPPED_ICCID, working_apns=frozenset({WORKING_APN}))
            rig.emu.swap_sim(swapped)
            block = await rig.watch.until(
                lambda b: b.state == "online" and b.iccid.endswith("0002"), "online with the swapped SIM"
            )
            assert block.iccid == "894902**********0002"

            assert rig.hooks.calls == []  # nothing heavier than reopening the port
            assert len(rig.runners) == 1  # one runner throughout: no restart of the daemon or the modem
            status = read_status(tmp_path / "run")
            assert status.state == "online" and status.registered_at == registered_at
            assert rig.registered()

    run(main)


async def _registered(rig: Rig) -> None:
    """Wait until the broker has the device online (checked at each modem status change)."""
    async with asyncio.timeout(WAIT):
        while not rig.registered():
            await rig.watch.next_change()


class ExplodingRunner:
    """A runner whose ``run`` raises, as a bug would."""

    built = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).built += 1

    async def run(self) -> None:
        raise RuntimeError("injected modem failure")

    def status(self) -> ModemStatus:
        return ModemStatus(ModemState.PORT_CLOSED)


def test_a_failing_modem_runner_never_stops_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        ExplodingRunner.built = 0
        async with running(tmp_path, monkeypatch, runner_factory=ExplodingRunner) as rig:
            block = await rig.watch.until(lambda b: "modem service failed" in b.detail, "the failure")
            assert "injected modem failure" in block.detail and "restarting it in" in block.detail
            await rig.watch.until(lambda b: ExplodingRunner.built >= 3, "the runner built again")
            await _registered(rig)
            assert not rig.daemon.done()
            # the status file is rewritten before the service reports a snapshot
            block = await rig.watch.until(lambda b: "modem service failed" in b.detail, "the failure again")
            status = read_status(tmp_path / "run")
            assert status.state == "online" and status.modem == block
            rows = status_rows(format_status(status, status.started_at))
            assert "injected modem failure" in rows["to do"] and "journalctl" in rows["to do"]

    run(main)


def test_a_wired_recorder_registers_while_the_modem_stack_is_still_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The modem stack is imported in a worker thread while presence starts: here that import is
    held until the broker has the device online, and only then does the modem service start."""
    gate = threading.Event()
    loading: list[str] = []
    real_import = daemon_app._import_modem_service

    def held_import() -> type[Any]:
        loading.append(threading.current_thread().name)
        if not gate.wait(WAIT):
            raise AssertionError(f"the test never released the modem import within {WAIT} s")
        return real_import()

    monkeypatch.setattr(daemon_app, "_import_modem_service", held_import)

    async def main() -> None:
        async with running(tmp_path, monkeypatch) as rig:
            await wait_until_async("the broker has the device online", rig.registered, seen=lambda: loading)
            # the import starts once presence has registered, in a worker thread
            await wait_until_async("the modem import started", lambda: loading)
            assert loading[0] != threading.main_thread().name, loading
            status = read_status(tmp_path / "run")
            assert status.state == "online" and status.modem is None, status
            assert not rig.runners, "a modem runner was built before the modem stack was loaded"
            gate.set()
            block = await rig.watch.until(lambda b: b.state == "online", "the modem online once loaded")
            assert read_status(tmp_path / "run").modem == block

    try:
        run(main)
    finally:
        gate.set()


def test_the_modem_starts_while_the_broker_is_out_of_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recorder whose only uplink is the modem cannot register before the modem is up: the
    modem stack must load although presence never registers (its wait is bounded by
    ``[presence] reply_timeout_s``)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never read: no reply, no ICMP
    silent.bind(("127.0.0.1", 0))

    async def main() -> None:
        async with running(
            tmp_path,
            monkeypatch,
            broker_port=silent.getsockname()[1],
            extra_config="[presence]\nreply_timeout_s = 1.0\nretries = 2\nkeepalive_interval_s = 25\n",
        ) as rig:
            await wait_until_async(
                "a modem runner built", lambda: rig.runners, seen=lambda: rig.watch.blocks[-1:]
            )
            await rig.watch.until(lambda b: b.state != "", "a modem block in the status")
            status = read_status(tmp_path / "run")
            assert status.state != "online" and status.modem is not None, status

    try:
        run(main)
    finally:
        silent.close()


def _dhcp_children() -> list[int]:
    """This process's children that are the stand-in DHCP client."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"fake_udhcpc" in cmdline:
            found.append(int(entry.name))
    return found


def test_stopping_while_the_dhcp_client_waits_for_a_lease_stops_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon stops while the ECM data link is half-way up (its DHCP client started, no
    lease yet): the client must not outlive the daemon."""
    monkeypatch.setenv("FAKE_DHCP_RESULT", "silent")

    async def main() -> None:
        async with running(tmp_path, monkeypatch):
            await wait_until_async("the DHCP client started", _dhcp_children)
        assert not _dhcp_children(), f"DHCP clients left running: {_dhcp_children()}"

    run(main)
