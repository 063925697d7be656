"""dvrlinkd's wake SMS service on the modem emulator: the broker's key (from the fleet key and the
device's public key) and the device's (from its private key and the pinned broker key) meet through
a real modem PTY; each command runs after its counter is on disk, a status request is answered
by SMS, and a window that cannot be stored stops the command."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from support.aio import run
from support.waiting import wait_until_async

from dvrlink.daemon.sms_wake import STATE_FILE, SmsWakeService, SmsWakeSettings
from dvrlink.driver.at_link import AtLink
from dvrlink.modem.sms_wake import RebootRequested, WakeRequested
from dvrlink.protocol.at_engine import AtEngine
from dvrlink.protocol.at_events import AtEvent
from dvrlink.protocol.identity import ed25519_public_bytes, x25519_public_bytes
from dvrlink.protocol.sms_wake import WakeCommand, WakeMessage, broker_wake_key, encode_binary, encode_text
from hil.modememu import ModemEmulator, SentSms, SimCard

SERIAL = "DL-0042-0001"
BROKER_NUMBER = "+491701234567"
DEVICE_KEY = Ed25519PrivateKey.generate()
FLEET_KEY = X25519PrivateKey.generate()
BROKER_KEY = broker_wake_key(FLEET_KEY, ed25519_public_bytes(DEVICE_KEY), SERIAL)  # what the broker holds


@dataclass
class Recorder:
    """The recorder's actions; the reboot is stubbed (it would act on this machine)."""

    state_file: Path
    done: list[object] = field(default_factory=list)
    stored_at_reboot: object = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self, request: WakeRequested) -> None:
        self.done.append(request)
        self.changed.set()

    def reboot(self, request: RebootRequested) -> None:
        self.stored_at_reboot = json.loads(self.state_file.read_text())  # the window is on disk already
        self.done.append(request)
        self.changed.set()

    def status_fields(self) -> Sequence[tuple[str, str]]:
        return [("reg", "home"), ("csq", "20"), ("data", "down")]

    async def wait_done(self, count: int) -> None:
        async with asyncio.timeout(20):
            while len(self.done) < count:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def device(state_dir: Path) -> AsyncIterator[tuple[ModemEmulator, SmsWakeService, Recorder]]:
    recorder = Recorder(state_dir / STATE_FILE)
    service = SmsWakeService(
        SmsWakeSettings(allowed_senders=(BROKER_NUMBER,)),
        serial=SERIAL,
        device_key=DEVICE_KEY,
        broker_static_public=x25519_public_bytes(FLEET_KEY),
        state_dir=state_dir,
        actions=recorder,
    )

    def route(event: AtEvent) -> None:
        service.at_event(event)

    with ModemEmulator("quectel-ec25", SimCard()) as emu:
        link = AtLink(emu.path, AtEngine(), on_event=route)
        await link.open()
        task = asyncio.get_running_loop().create_task(service.serve(link))
        try:
            await wait_until_async("the inbox's first sweep", lambda: service.inbox.stats["sweeps"] >= 1)
            yield emu, service, recorder
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            link.close()


def sms(counter: int, command: WakeCommand) -> bytes:
    return encode_binary(WakeMessage(command, counter), BROKER_KEY)


def test_wake_status_and_reboot_with_the_keys_both_ends_derive(tmp_path: Path) -> None:
    async def main() -> None:
        async with device(tmp_path) as (emu, service, recorder):
            emu.receive_sms(BROKER_NUMBER, sms(1_765_000_000_000, WakeCommand.WAKE))
            await recorder.wait_done(1)
            assert recorder.done == [WakeRequested(BROKER_NUMBER, 1_765_000_000_000, b"")]
            emu.receive_sms(BROKER_NUMBER, sms(1_765_000_000_001, WakeCommand.STATUS))
            await wait_until_async("the status reply", emu.sent_sms, seen=emu.sent_sms)
            assert emu.sent_sms() == [
                SentSms(BROKER_NUMBER, f"dvrlink {SERIAL} reg=home csq=20 data=down", 1)
            ]
            emu.receive_sms(
                BROKER_NUMBER, encode_text(WakeMessage(WakeCommand.REBOOT, 1_765_000_000_002), BROKER_KEY)
            )
            await recorder.wait_done(2)
            assert recorder.stored_at_reboot == {"highest": 1_765_000_000_002, "below": 0b11}
            emu.receive_sms(BROKER_NUMBER, sms(1_765_000_000_002, WakeCommand.REBOOT))  # a replay
            await wait_until_async(
                "the replay dropped", lambda: service.inbox.verifier.stats["replayed"] == 1
            )
            assert len(recorder.done) == 2 and service.errors == 0

    run(main)


def test_a_window_that_cannot_be_stored_stops_the_command(tmp_path: Path) -> None:
    async def main() -> None:
        async with device(tmp_path / "missing") as (emu, service, recorder):
            emu.receive_sms(BROKER_NUMBER, sms(5, WakeCommand.REBOOT))
            await wait_until_async("the command refused", lambda: service.errors == 1)
            assert recorder.done == []

    run(main)


def test_settings_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="no allowed sender"):
        SmsWakeSettings()
    with pytest.raises(ValueError, match="sweep interval"):
        SmsWakeSettings(allowed_senders=(BROKER_NUMBER,), sweep_interval_s=1)
