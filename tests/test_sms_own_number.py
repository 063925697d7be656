"""The SIM's own number (``AT+CNUM``) for a recorder in ``sms-wake`` whose ``[sms_wake]
own_number`` is not set: the parser on the reply shapes modems give (with and without a label,
an empty label field, several lines, a national number, an empty record, an empty reply), the
inbox reading it once over the emulator's PTY, the wake service turning it into +E.164 (or saying
what to do), and dvrlinkd reporting it to the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import support.daemon_modem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from support.aio import run
from support.daemon_modem import SERIAL, running
from support.waiting import wait_until_async

from dvrlink.daemon.sms_wake import SmsWakeService, SmsWakeSettings
from dvrlink.driver.at_link import AtLink
from dvrlink.modem.reply_parsers import OwnNumber, parse_cnum
from dvrlink.modem.sms_wake import InboxConfig, InboxEvent, OwnNumberRead, SmsInbox
from dvrlink.modem.sms_wake_link import SmsInboxDriver
from dvrlink.protocol.at_engine import AtEngine
from dvrlink.protocol.at_events import AtEvent
from dvrlink.protocol.sms_wake import WakeConfig, WakeVerifier
from hil.modememu import ModemEmulator, SimCard

BROKER = "+491609876543"
WAIT = 20.0


@pytest.mark.parametrize(
    ("lines", "country_code", "numbers"),
    [
        (('+CNUM: "","+491701234567",145',), None, ["+491701234567"]),
        (('+CNUM: ,"491701234567",145',), None, ["+491701234567"]),  # empty label field, no plus
        (('+CNUM: "Line 1","+15555550123",145,7,4',), None, ["+15555550123"]),  # speed, service
        (
            ('+CNUM: "Voice","+447700900123",145', '+CNUM: "Data","+447700900124",145'),
            None,
            ["+447700900123", "+447700900124"],
        ),
        (('+CNUM: "","01701234567",129',), "49", ["+491701234567"]),  # national: needs the code
        (('+CNUM: "","01701234567",129',), None, [None]),
        (('+CNUM: "My number","0049170123456",129',), None, ["+49170123456"]),
        (('+CNUM: "","",129',), "49", []),  # an empty EF_MSISDN record
        ((), "49", []),  # no number stored: the modem answers only OK
        (("+CNUM: 12", "garbage", '+CNUM: "","+12",145'), None, [None]),  # too short for E.164
    ],
)
def test_cnum_replies_as_modems_give_them(
    lines: tuple[str, ...], country_code: str | None, numbers: list[str | None]
) -> None:
    parsed = parse_cnum(lines)
    assert [entry.e164(country_code) for entry in parsed] == numbers
    assert all(isinstance(entry, OwnNumber) for entry in parsed)


def test_the_label_and_type_are_kept() -> None:
    assert parse_cnum(('+CNUM: "Voice","+447700900123",145,4,4',)) == (
        OwnNumber("+447700900123", 145, "Voice"),
    )


@contextlib.asynccontextmanager
async def inbox_on(
    sim: SimCard, *, read_own_number: bool = True
) -> AsyncIterator[tuple[ModemEmulator, list[InboxEvent], asyncio.Event]]:
    events: list[InboxEvent] = []
    arrived = asyncio.Event()

    def on_event(event: InboxEvent) -> None:
        events.append(event)
        arrived.set()

    with ModemEmulator("quectel-ec25", sim) as emu:
        verifier = WakeVerifier(bytes(32), WakeConfig(allowed_senders=frozenset({BROKER})))
        inbox = SmsInbox(verifier, InboxConfig(read_own_number=read_own_number))
        box: list[SmsInboxDriver] = []

        def route(event: AtEvent) -> None:
            box[0].at_event(event)

        link = AtLink(emu.path, AtEngine(), on_event=route)
        box.append(SmsInboxDriver(link, inbox, on_event))
        await link.open()
        task = asyncio.get_running_loop().create_task(box[0].run())
        try:
            yield emu, events, arrived
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            link.close()


async def _event(events: list[InboxEvent], arrived: asyncio.Event, kind: type[Any]) -> Any:
    async with asyncio.timeout(WAIT):
        while not any(isinstance(e, kind) for e in events):
            arrived.clear()
            await arrived.wait()
    return next(e for e in events if isinstance(e, kind))


def test_the_inbox_reads_the_own_numbers_once_over_the_emulator() -> None:
    async def main() -> None:
        sim = SimCard(own_numbers=("+491701234567", "01701234568"))
        async with inbox_on(sim) as (emu, events, arrived):
            read = await _event(events, arrived, OwnNumberRead)
            assert read == OwnNumberRead(
                (OwnNumber("+491701234567", 145), OwnNumber("01701234568", 129)), ""
            ), "both lines of the reply (the engine takes +CNUM as several lines)"
            assert emu.commands.count("AT+CNUM") == 1
        async with inbox_on(SimCard()) as (emu, events, arrived):
            assert await _event(events, arrived, OwnNumberRead) == OwnNumberRead((), "")
        async with inbox_on(SimCard(own_numbers=("+491701234567",)), read_own_number=False) as (
            emu,
            events,
            arrived,
        ):
            await wait_until_async("the first sweep", lambda: "AT+CMGL=4" in emu.commands)
            assert "AT+CNUM" not in emu.commands and not any(isinstance(e, OwnNumberRead) for e in events)

    run(main)


def _service(tmp_path: Path, country_code: str | None, found: list[str]) -> SmsWakeService:
    class Actions:
        def wake(self, request: object) -> None: ...

        def reboot(self, request: object) -> None: ...

        def status_fields(self) -> list[tuple[str, str]]:
            return []

    return SmsWakeService(
        SmsWakeSettings(allowed_senders=(BROKER,), country_code=country_code, read_own_number=True),
        serial=SERIAL,
        device_key=Ed25519PrivateKey.generate(),
        broker_static_public=X25519PrivateKey.generate().public_key().public_bytes_raw(),
        state_dir=tmp_path,
        actions=Actions(),
        on_own_number=found.append,
    )


@pytest.mark.parametrize(
    ("numbers", "country_code", "expected"),
    [(("01701234567",), "49", "+491701234567"), (("01701234567",), None, None), ((), "49", None)],
)
def test_the_wake_service_reports_the_number_as_e164_or_says_what_to_do(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    numbers: tuple[str, ...],
    country_code: str | None,
    expected: str | None,
) -> None:
    caplog.set_level(logging.INFO, logger="dvrlink")
    found: list[str] = []

    async def main() -> None:
        service = _service(tmp_path, country_code, found)
        with ModemEmulator("quectel-ec25", SimCard(own_numbers=numbers)) as emu:
            link = AtLink(emu.path, AtEngine(), on_event=service.at_event)
            await link.open()
            task = asyncio.get_running_loop().create_task(service.serve(link))
            try:
                await wait_until_async(
                    "the number handled",
                    lambda: bool(found) or any("AT+CNUM" in r.getMessage() for r in caplog.records),
                )
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                link.close()

    run(main)
    if expected is not None:
        assert found == [expected]
    else:
        assert found == []
        warning = next(r.getMessage() for r in caplog.records if "AT+CNUM" in r.getMessage())
        assert "set [sms_wake] own_number" in warning and f"device sms {SERIAL} --number" in warning


def test_dvrlinkd_without_own_number_reports_the_number_the_sim_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    number = "+491701234599"
    for_network: Callable[..., SimCard] = SimCard.for_network

    class SimWithNumber:  # the rig's SIM, holding a number in EF_MSISDN
        @staticmethod
        def for_network(mcc_mnc: str, **kwargs: Any) -> SimCard:
            return for_network(mcc_mnc, own_numbers=(number,), **kwargs)

    monkeypatch.setattr(support.daemon_modem, "SimCard", SimWithNumber)
    config = f"""
[presence]
mode = "sms-wake"
transport = "udp"
awake_idle_s = 60
keepalive_interval_s = 1
reply_timeout_s = 0.3
retries = 1
[sms_wake]
allowed_senders = ["{BROKER}"]
"""

    async def main() -> None:
        async with running(tmp_path, monkeypatch, extra_config=config) as rig:
            registry = rig.lab.broker.registry

            def reported() -> object:
                device = registry.device(SERIAL)
                return (
                    None if device is None or device.report is None else device.report.get("sms_wake_number")
                )

            await wait_until_async(
                "the number read from the SIM at the broker",
                lambda: reported() == number,
                seen=reported,
                timeout=WAIT,
            )
            assert rig.emu.commands.count("AT+CNUM") == 1

    run(main, bound=120)
