"""A SIM800 on a UART: PPP runs on the AT port itself. dvrlinkd hands the port to pppd while the link
is up (no AT command reaches the modem in data mode), takes it back when pppd ends (the network
hung up, or the daemon stops) and dials again, and before a recovery step when the data path
breaks under a running pppd; all without a restart.

The modem is the PTY emulator's SIM800 profile (one port, as on a UART); pppd and chat are the
stand-in ``hil/fake_pppd.py`` (pppd cannot run here: there is no /dev/ppp). The stand-in plays
the daemon's chat script on the PTY, so the emulator answers the dial with ``CONNECT`` and is in
data mode until the call ends; it reports ``lo`` with 127.0.0.1 as the PPP interface, so the
daemon's data-path probe is a real STUN request to the loopback broker. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.aio import run
from support.daemon_modem import WAIT, WORKING_APN, Rig, running

from dvrlink.modem.ladder import Step
from dvrlink.modem.manager import DataFailed, DataRequest, DataUp, ModemState

pytestmark = pytest.mark.timeout(60)

FAKE_PPPD = Path(__file__).resolve().parent.parent / "hil" / "fake_pppd.py"


class DataMode:
    """What the host sent while the emulator was in data mode, per call."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.ended = 0
        self._lock = threading.Lock()

    def connected(self, apn: str, mode: str, send: Callable[[bytes], None]) -> None:
        with self._lock:
            self.calls.append(b"")

    def received(self, data: bytes) -> None:
        with self._lock:
            self.calls[-1] += data

    def disconnected(self) -> None:
        with self._lock:
            self.ended += 1


class CountedProbes:
    """The daemon's data link, counting its data-path probes (the only traffic while online)."""

    def __init__(self, link: Any) -> None:
        self._link = link
        self.probes = 0
        self.healthy = True
        """False: every probe fails (the data path broke while the link stays up)."""
        self._probed = asyncio.Event()

    async def up(self, request: DataRequest) -> DataUp | DataFailed:
        return await self._link.up(request)  # type: ignore[no-any-return]

    async def down(self) -> None:
        await self._link.down()

    async def probe(self) -> bool:
        ok: bool = await self._link.probe() and self.healthy
        self.probes += 1
        self._probed.set()
        return ok

    def counters(self) -> tuple[int, int]:
        return self._link.counters()  # type: ignore[no-any-return]

    async def wait_down(self) -> Any:
        return await self._link.wait_down()

    async def probed(self, count: int) -> None:
        """Wait until ``count`` more probes ran."""
        target = self.probes + count
        async with asyncio.timeout(WAIT):
            while self.probes < target:
                self._probed.clear()
                await self._probed.wait()


def ppp_config() -> str:
    pppd = f'["{sys.executable}", "{FAKE_PPPD}"]'
    chat = f'["{sys.executable}", "{FAKE_PPPD}", "--as-chat"]'
    # the APN that works, first: each stand-in pppd start costs three Python start-ups
    return f'pppd = {pppd}\nchat = {chat}\napn = "{WORKING_APN}"\n'


def test_sim800_ppp_on_the_at_port_online_hangup_and_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PPPD_IFNAME", "lo")
    monkeypatch.setenv("FAKE_PPPD_LOCAL", "127.0.0.1")
    monkeypatch.setenv("FAKE_PPPD_REMOTE", "127.0.0.1")
    data = DataMode()
    links: list[CountedProbes] = []

    def count_probes(keywords: dict[str, Any]) -> dict[str, Any]:
        links.append(CountedProbes(keywords["data_link"]))
        return {**keywords, "data_link": links[-1]}

    async def main() -> None:
        async with running(
            tmp_path,
            monkeypatch,
            profile="simcom-sim800",
            extra_modem=ppp_config(),
            data_path=data,
            runner_keywords=count_probes,
        ) as rig:
            await online(rig)
            assert rig.emu.commands.count("ATD*99***1#") >= 1
            runner = rig.runners[-1]
            assert runner.link is None and runner.manager.port_lent  # pppd holds the port
            commands = len(rig.emu.commands)
            # several data-path probes (and registration and signal poll times) while online: no
            # AT traffic reaches the modem
            await links[-1].probed(3)
            assert runner.manager.state is ModemState.ONLINE
            assert len(rig.emu.commands) == commands
            # nothing reached the modem in data mode but the CR chat sends after CONNECT ('')
            assert data.calls[-1].strip() == b""

            # the network hangs up: pppd exits (16), the daemon takes the port back and dials again
            calls = len(data.calls)
            rig.emu.drop_carrier()
            await rig.modem(lambda s: s.state is not ModemState.ONLINE)
            await online(rig)
            assert len(data.calls) == calls + 1 and data.calls[-1].strip() == b""
            after = rig.emu.commands[commands:]
            assert any(c.startswith("AT+CREG?") for c in after)  # asked again over the AT port
            assert after[-1] == "ATD*99***1#"
            assert rig.hooks.calls == [] and len(rig.runners) == 1
            assert runner.steps_taken == []  # no recovery step for a hang-up

            # the data path breaks while pppd holds the port: the link is taken down so the port
            # comes back, and the ladder's step for it (re-attach) runs over the AT port
            mark = len(rig.emu.commands)
            links[-1].healthy = False
            await rig.modem(lambda s: s.state is ModemState.RECOVERING)
            links[-1].healthy = True
            await online(rig)
            assert [entry.step for entry in runner.steps_taken] == [Step.REATTACH]
            assert "AT+CGATT=1" in rig.emu.commands[mark:] and rig.emu.commands[-1] == "ATD*99***1#"
            assert runner.manager.port_lent and rig.hooks.calls == []
        # the daemon stopped: pppd got SIGTERM and its disconnect script hung the modem up over
        # the port (+++, then ATH), as on a UART without DTR
        assert data.ended == len(data.calls)
        assert rig.emu.commands[-1] == "ATH"

    run(main)


async def online(rig: Rig) -> None:
    block = await rig.watch.until(lambda b: b.state == "online", "online over PPP on the AT port")
    assert block.apn == WORKING_APN and block.modem.startswith("SIMCOM")
