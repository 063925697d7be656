"""The AT serial link over a real PTY pair, with a scripted modem on the master side."""

from __future__ import annotations

import asyncio
import os

import pytest
from support.aio import run

from dvrlink.driver.at_link import AtLink, PortError
from dvrlink.protocol.at_engine import AtEngine, Command
from dvrlink.protocol.at_events import (
    AtEvent,
    CommandAborted,
    CommandCompleted,
    CommandTimedOut,
    Resynced,
    UrcReceived,
)
from dvrlink.protocol.at_specs import CommandSpec

BOUND = 10.0


class ScriptedModem:
    """The master side of a PTY: answers known command lines, one byte per write."""

    def __init__(self, master: int, script: dict[bytes, list[bytes]]) -> None:
        self.master = master
        self.script = script
        self.received = bytearray()
        self.lines: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 1024)
        except OSError:
            return
        self.received += data
        while True:
            # a command line ends with CR; a prompt payload with Ctrl-Z
            ends = [i for i in (self.received.find(b"\r"), self.received.find(b"\x1a")) if i >= 0]
            if not ends:
                break
            end = min(ends)
            line = bytes(self.received[:end])
            del self.received[: end + 1]
            self.lines.append(line)
            replies = self.script.get(line)
            if replies:
                task = asyncio.get_running_loop().create_task(self._answer(replies.pop(0)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _answer(self, reply: bytes) -> None:
        for i in range(len(reply)):
            os.write(self.master, reply[i : i + 1])
            await asyncio.sleep(0)  # yield, so the link sees split reads

    def stop(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        for task in self.tasks:
            task.cancel()


def test_link_runs_commands_urcs_prompt_and_resync_over_a_pty() -> None:
    async def main() -> None:
        master, slave = os.openpty()
        path = os.ttyname(slave)
        modem = ScriptedModem(
            master,
            {
                b"AT+CSQ": [b"AT+CSQ\r\r\n+CREG: 1\r\n\r\n+CSQ: 20,99\r\n\r\nOK\r\n"],
                b"AT+CMGS=5": [b"\r\n> "],
                b"00AABBCCDD": [b"\r\n+CMGS: 7\r\n\r\nOK\r\n"],
                b"AT+CMEE?": [b"\r\n+CMEE: 1\r\n\r\nOK\r\n"],
                b"AT+CGSN": [b"\r\n867123456789012\r\n\r\nOK\r\n"],
            },
        )
        events: asyncio.Queue[AtEvent] = asyncio.Queue()
        link = AtLink(path, AtEngine(), on_event=events.put_nowait)
        try:
            await link.open()
            with pytest.raises(RuntimeError):
                await link.open()

            outcome = await link.command("AT+CSQ")
            assert isinstance(outcome, CommandCompleted)
            assert outcome.lines == ("+CSQ: 20,99",)
            urc = await events.get()
            assert isinstance(urc, UrcReceived) and urc.line == "+CREG: 1"

            outcome = await link.command("AT+CMGS=5", payload="00AABBCCDD")
            assert isinstance(outcome, CommandCompleted)
            assert outcome.lines == ("+CMGS: 7",)

            # no answer: the engine's timer fires through the link, then the probe resyncs
            silent = Command("AT+SILENT", CommandSpec(timeout=0.2))
            outcome = await link.command(silent)
            assert isinstance(outcome, CommandTimedOut)
            while not isinstance(await events.get(), Resynced):
                pass
            outcome = await link.command("AT+CGSN")
            assert isinstance(outcome, CommandCompleted)
            assert outcome.lines == ("867123456789012",)
            assert modem.lines == [
                b"AT+CSQ",
                b"AT+CMGS=5",
                b"00AABBCCDD",
                b"AT+SILENT",
                b"AT+CMEE?",
                b"AT+CGSN",
            ]
        finally:
            link.close()
            modem.stop()
            os.close(master)
            os.close(slave)
        assert await link.wait_closed() == "port closed"

    run(main)


def test_link_reports_a_vanished_port_and_aborts_commands() -> None:
    async def main() -> None:
        master, slave = os.openpty()
        path = os.ttyname(slave)
        os.set_blocking(master, False)
        link = AtLink(path, AtEngine(), exclusive=False)
        await link.open()
        waiter = asyncio.ensure_future(link.command("AT+CSQ"))
        await asyncio.sleep(0)
        # the modem goes away: the master side closes, reads on the port fail
        os.close(master)
        os.close(slave)
        reason = await link.wait_closed()
        assert "lost" in reason and path in reason
        outcome = await waiter
        assert isinstance(outcome, CommandAborted)
        with pytest.raises(PortError):
            link.submit("AT")

    run(main)


def test_open_names_the_port_and_what_to_check() -> None:
    async def main() -> None:
        link = AtLink("/dev/nonexistent-modem-port", AtEngine())
        with pytest.raises(PortError, match=r"nonexistent-modem-port.*no other process"):
            await link.open()
        assert await link.wait_closed() == "never opened"

    run(main)
