"""Wake SMS end to end on the device side: the modem emulator's real PTY, the AT engine and link,
the SMS inbox and the verifier. Each case injects messages the way the network would and waits
for the inbox's events (no sleeps): PDU and text mode, a text-only modem, a replay, a forged MAC,
a wrong sender, a full SIM store, messages that were waiting before the reader started, and a
counter window that survives a restart through its state file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from support.aio import run
from support.waiting import wait_until_async

from dvrlink.driver.at_link import AtLink
from dvrlink.modem.sms_wake import (
    InboxEvent,
    InboxReady,
    InboxSwept,
    RebootRequested,
    SmsDropped,
    SmsInbox,
    SmsSent,
    StatusRequested,
    WakeRequested,
    WakeStateChanged,
)
from dvrlink.modem.sms_wake_link import SmsInboxDriver, load_wake_state, save_wake_state
from dvrlink.protocol.at_engine import AtEngine
from dvrlink.protocol.at_events import AtEvent
from dvrlink.protocol.sms_wake import (
    CounterState,
    DropReason,
    WakeCommand,
    WakeConfig,
    WakeMessage,
    WakeVerifier,
    encode_binary,
    encode_text,
    status_reply,
)
from hil.modememu import ModemEmulator, SimCard, get_profile
from hil.modememu.model import SentSms

BROKER = "+491701234567"
KEY = bytes(range(1, 33))
WAIT = 20.0


def binary(counter: int, command: WakeCommand = WakeCommand.WAKE, key: bytes = KEY) -> bytes:
    return encode_binary(WakeMessage(command, counter, b"node-2"), key)


def text(counter: int, command: WakeCommand = WakeCommand.WAKE) -> str:
    return encode_text(WakeMessage(command, counter), KEY)


@dataclass
class Rig:
    emu: ModemEmulator
    state_file: Path | None = None
    driver: SmsInboxDriver = field(init=False)
    events: list[InboxEvent] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    seen: int = 0

    def on_event(self, event: InboxEvent) -> None:
        """The daemon's part: store the window before the command is acted on."""
        if isinstance(event, WakeStateChanged) and self.state_file is not None:
            save_wake_state(self.state_file, event.state)
        self.events.append(event)
        self.arrived.set()

    def at_event(self, event: AtEvent) -> None:
        """The link's events go to the inbox's driver (the daemon's modem owner does this)."""
        self.driver.at_event(event)

    async def next(self, kind: type[InboxEvent] | tuple[type[InboxEvent], ...]) -> InboxEvent:
        """The next event of ``kind`` after the ones already taken (others are skipped)."""
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    while self.seen < len(self.events):
                        event = self.events[self.seen]
                        self.seen += 1
                        if isinstance(event, kind):
                            return event
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise AssertionError(f"no {kind} within {WAIT} s; events: {self.events}") from None

    async def ready(self) -> InboxReady:
        """Setup done and the first sweep over (a message injected later comes by +CMTI)."""
        ready = await self.next(InboxReady)
        await self.next(InboxSwept)
        assert isinstance(ready, InboxReady)
        return ready

    async def dropped(self) -> DropReason:
        event = await self.next((SmsDropped, WakeRequested, StatusRequested, RebootRequested))
        assert isinstance(event, SmsDropped), event
        return event.reason

    async def empty_store(self) -> None:
        """Wait until the emulator's store is empty and the network holds nothing (the inbox
        deletes what it read; a delete has no event, so this polls the emulator)."""
        await wait_until_async(
            "the SIM store emptied by the inbox",
            lambda: self.emu.sms_counts()[0::2] == (0, 0),
            seen=self.emu.sms_counts,
        )


@contextlib.asynccontextmanager
async def rig(
    profile: str = "quectel-ec25",
    *,
    text_only: bool = False,
    capacity: int = 10,
    state: CounterState | None = None,
    before_start: list[tuple[str, bytes | str]] | None = None,
    fill: bool = False,
    state_file: Path | None = None,
) -> AsyncIterator[Rig]:
    emu_profile = get_profile(profile)
    if text_only:
        emu_profile = replace(emu_profile, sms_text_only=True)
    with ModemEmulator(emu_profile, SimCard(sms_capacity=capacity)) as emu:
        if fill:
            emu.fill_sms_store()
        for sender, body in before_start or []:
            emu.receive_sms(sender, body)
        verifier = WakeVerifier(KEY, WakeConfig(allowed_senders=frozenset({BROKER})), state)
        the_rig = Rig(emu, state_file)
        link = AtLink(emu.path, AtEngine(), on_event=the_rig.at_event)
        the_rig.driver = SmsInboxDriver(link, SmsInbox(verifier), the_rig.on_event)
        await link.open()
        task = asyncio.get_running_loop().create_task(the_rig.driver.run())
        try:
            yield the_rig
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            link.close()


def test_a_wake_in_pdu_mode_reaches_wake_requested_and_leaves_the_store_empty(mocker: MockerFixture) -> None:
    async def main() -> None:
        async with rig() as r:
            receive = mocker.spy(r.driver.inbox.verifier, "receive")
            assert await r.ready() == InboxReady(text_mode=False, indications=True)
            r.emu.receive_sms(BROKER, binary(1))
            state = await r.next(WakeStateChanged)
            assert isinstance(state, WakeStateChanged) and state.state.highest == 1
            wake = await r.next(WakeRequested)
            assert wake == WakeRequested(BROKER, 1, b"node-2")
            assert receive.call_args.args == (BROKER, binary(1))
            await r.empty_store()
            after_sweep = r.emu.commands.index("AT+CMGL=4")
            assert r.emu.commands[after_sweep + 1 :] == ["AT+CMGR=1", "AT+CMGD=1"]

    run(main)


@pytest.mark.parametrize("form", ["text", "8-bit"])
def test_a_wake_reaches_wake_requested_in_text_mode(form: str) -> None:
    async def main() -> None:
        async with rig("simcom-sim800", text_only=True) as r:
            assert await r.ready() == InboxReady(text_mode=True, indications=True)
            r.emu.wait_for_command("AT+CMGF=1")  # after the refused AT+CMGF=0
            r.emu.receive_sms(BROKER, text(5) if form == "text" else binary(5))
            wake = await r.next(WakeRequested)
            assert isinstance(wake, WakeRequested) and wake.counter == 5
            await r.empty_store()

    run(main)


@pytest.mark.parametrize("text_only", [False, True])
def test_a_status_request_is_answered_by_sms_and_a_reboot_is_its_own_event(text_only: bool) -> None:
    async def main() -> None:
        async with rig("simcom-sim800", text_only=text_only) as r:
            await r.ready()
            r.emu.receive_sms(BROKER, binary(1, WakeCommand.STATUS))
            request = await r.next((StatusRequested, RebootRequested))
            assert request == StatusRequested(BROKER, 1, b"node-2")
            # the daemon's part: answer with what it knows
            r.driver.send_sms(request.sender, status_reply("DL-0001", [("reg", "home"), ("data", "down")]))
            sent = await r.next(SmsSent)
            assert isinstance(sent, SmsSent) and sent.recipient == BROKER and sent.reference == 1
            assert r.emu.sent_sms() == [SentSms(BROKER, "dvrlink DL-0001 reg=home data=down", 1)]
            r.emu.receive_sms(BROKER, text(2, WakeCommand.REBOOT))
            assert await r.next((StatusRequested, RebootRequested)) == RebootRequested(BROKER, 2, b"")

    run(main)


def test_a_replay_a_forged_mac_and_a_wrong_sender_are_dropped_and_counted() -> None:
    async def main() -> None:
        async with rig() as r:
            await r.ready()
            r.emu.receive_sms(BROKER, binary(7))
            await r.next(WakeRequested)
            r.emu.receive_sms(BROKER, binary(7))  # the same SMS again, as an attacker who recorded it
            assert await r.dropped() is DropReason.REPLAYED
            r.emu.receive_sms(BROKER, binary(8, key=bytes(32)))
            assert await r.dropped() is DropReason.BAD_MAC
            r.emu.receive_sms("+491709999999", binary(9))
            assert await r.dropped() is DropReason.UNKNOWN_SENDER
            r.emu.receive_sms(BROKER, "Ihr Guthaben: 5,00 EUR")
            assert await r.dropped() is DropReason.NOT_WAKE
            r.emu.receive_sms(BROKER, binary(8))  # the forged one did not spend counter 8
            assert await r.next(WakeRequested) == WakeRequested(BROKER, 8, b"node-2")
            stats = r.driver.inbox.verifier.stats
            assert (stats["accepted"], stats["replayed"], stats["bad_mac"], stats["unknown_sender"]) == (
                2,
                1,
                1,
                1,
            )
            assert stats["not_wake"] == 1
            await r.empty_store()

    run(main)


def test_a_full_sim_store_is_emptied_and_the_held_wake_then_arrives() -> None:
    async def main() -> None:
        async with rig(capacity=4, fill=True, before_start=[(BROKER, binary(3))]) as r:
            assert r.emu.sms_counts() in ((4, 4, 1), (3, 4, 0), (4, 4, 0))  # the inbox may already be at work
            swept = await r.next(InboxSwept)
            assert isinstance(swept, InboxSwept) and swept.found == 4 and swept.full
            wake = await r.next(WakeRequested)
            assert isinstance(wake, WakeRequested) and wake.counter == 3
            await r.empty_store()
            assert r.emu.model.sms_rejected == 1

    run(main)


def test_messages_stored_before_the_reader_started_are_read_by_the_first_sweep() -> None:
    async def main() -> None:
        async with rig(before_start=[(BROKER, binary(4)), ("+491709999999", binary(5))]) as r:
            swept = await r.next(InboxSwept)
            assert isinstance(swept, InboxSwept) and swept.found == 2 and not swept.full
            assert [type(e) for e in r.events if isinstance(e, WakeRequested | SmsDropped)] == [
                WakeRequested,
                SmsDropped,
            ]
            await r.empty_store()

    run(main)


def test_the_counter_window_survives_a_restart_through_its_state_file(tmp_path: Path) -> None:
    state_file = tmp_path / "sms-wake.json"
    assert load_wake_state(state_file) == CounterState() and not state_file.exists()

    async def first() -> None:
        async with rig(state_file=state_file) as r:
            await r.ready()
            r.emu.receive_sms(BROKER, binary(11))
            await r.next(WakeRequested)

    async def second() -> None:
        async with rig(state=load_wake_state(state_file)) as r:
            await r.ready()
            r.emu.receive_sms(BROKER, binary(11))
            assert await r.dropped() is DropReason.REPLAYED

    run(first)
    assert load_wake_state(state_file).highest == 11
    run(second)


def test_a_slow_noisy_port_and_a_modem_reboot_do_not_lose_a_wake() -> None:
    async def main() -> None:
        async with rig("quectel-ec25") as r:
            await r.ready()
            r.emu.split_writes(True)  # one byte at a time
            r.emu.inject_garbage()
            r.emu.receive_sms(BROKER, binary(1))
            assert isinstance(await r.next(WakeRequested), WakeRequested)
            r.emu.split_writes(False)
            commands = len(r.emu.commands)
            r.emu.reboot()  # RDY: the modem forgot +CMGF and +CNMI; the inbox sets them again
            assert await r.next(InboxReady) == InboxReady(text_mode=False, indications=True)
            assert "AT+CNMI=2,1,0,0,0" in r.emu.commands[commands:]
            r.emu.receive_sms(BROKER, text(2))
            wake = await r.next(WakeRequested)
            assert isinstance(wake, WakeRequested) and wake.counter == 2
            await r.empty_store()

    run(main)
