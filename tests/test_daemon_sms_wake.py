"""dvrlinkd in ``[presence] mode = "sms-wake"`` (docs/sms-wake.md): the config's checks, the sleep
policy with made-up time, and the daemon itself (in-process, the modem being the PTY emulator)
against the in-process broker whose SMS gateway is an HTTP provider on loopback that delivers
each wake SMS into the emulator: it registers and reports that it sleeps by SMS, sleeps when idle
(the broker shows it offline, and no presence datagram arrives), and a session request wakes it
through the broker, the provider, the modem and the inbox on the modem's AT port, and it sleeps
again afterwards. Also the broker's modem backend on a second emulator, its 8-bit SMS handed to
the recorder's modem."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from support.aio import run
from support.daemon_modem import SERIAL, running
from support.sms_provider import Provider, provider_server
from support.waiting import wait_until_async

from dvrlink.daemon.config import ConfigError, parse_config
from dvrlink.daemon.sms_sleep import SleepPolicy, Wakefulness
from dvrlink.modem.manager import ModemState
from hil.modememu import ModemEmulator, SimCard

BROKER_NUMBER = "+491609876543"
OWN_NUMBER = "+491701234567"
WAIT = 20.0

BASE = {
    "device": {"serial": SERIAL, "state_dir": "/tmp/x", "runtime_dir": "/tmp/y"},
    "broker": {"host": "127.0.0.1", "port": 3478, "public_key": "AQ" + "A" * 41 + "="},
}


def _config(**sections: dict[str, object]) -> object:
    return parse_config({**BASE, **sections}, Path("/etc/dvrlink/dvrlinkd.toml"))


def test_sms_wake_needs_a_modem_udp_and_a_sender_and_turns_learning_off() -> None:
    modem = {"enabled": True, "profile": "quectel-ec25", "port": "/dev/ttyUSB2"}
    good = _config(
        presence={"mode": "sms-wake", "transport": "udp", "awake_idle_s": 120},
        modem=modem,
        sms_wake={"allowed_senders": [BROKER_NUMBER], "own_number": OWN_NUMBER, "country_code": "+49"},
    )
    presence = good.presence  # type: ignore[attr-defined]
    assert presence.mode == "sms-wake" and presence.awake_idle_s == 120.0
    assert not presence.learn_keepalive and not presence.classify_nat
    assert good.sms_wake.country_code == "49" and good.sms_wake.own_number == OWN_NUMBER  # type: ignore[attr-defined]
    cases = [
        ({"presence": {"mode": "sms-wake", "transport": "udp"}}, "set [modem] enabled = true"),
        ({"presence": {"mode": "sms-wake"}, "modem": modem}, 'set transport = "udp"'),
        ({"presence": {"mode": "sms-wake", "transport": "udp"}, "modem": modem}, "allows no sender"),
        ({"presence": {"mode": "sometimes"}}, "expected one of always, sms-wake"),
        ({"sms_wake": {"allowed_senders": ["0170 1234567"]}}, "is not +E.164"),
        ({"sms_wake": {"own_number": "12"}}, "this SIM's number as +E.164"),
        ({"sms_wake": {"country_code": "DE"}}, "1 to 3 digits"),
        ({"sms_wake": {"colour": "red"}}, "colour"),
    ]
    for sections, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            _config(**sections)


def test_the_sleep_policy_sleeps_after_the_idle_time_without_sessions() -> None:
    policy = SleepPolicy(10.0, now=100.0)
    assert policy.state is Wakefulness.AWAKE and policy.get_timer() == 110.0
    assert not policy.handle_timer(109.9)
    policy.sessions_changed(1, 105.0)  # a session holds it awake
    assert policy.get_timer() is None
    policy.sessions_changed(0, 130.0)
    assert policy.get_timer() == 140.0
    assert policy.handle_timer(140.0) and policy.state is Wakefulness.ASLEEP
    assert policy.get_timer() is None and not policy.handle_timer(1e9)
    assert policy.woken(200.0) is True and policy.get_timer() == 210.0
    assert policy.woken(205.0) is False and policy.get_timer() == 215.0  # a second wake only extends
    policy.sessions_changed(2, 206.0)
    assert policy.woken(207.0) is False and policy.get_timer() is None


SMS_WAKE_CONFIG = f"""
[presence]
mode = "sms-wake"
transport = "udp"
awake_idle_s = 2
keepalive_interval_s = 1
reply_timeout_s = 0.3
retries = 1
[sms_wake]
allowed_senders = ["{BROKER_NUMBER}"]
own_number = "{OWN_NUMBER}"
sweep_interval_s = 30
"""


def gateway(provider: Provider) -> dict[str, object]:
    return {
        "backend": "http",
        "url": provider.url,
        "body": "to={to}&from={from}&text={text}",
        "content_type": "application/x-www-form-urlencoded",
        "sender": BROKER_NUMBER,
        "wake_hold_s": 30,
    }


def test_the_daemon_sleeps_when_idle_and_a_session_request_wakes_it_by_sms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mocker: MockerFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dvrlink")

    def logged(text: str) -> bool:
        return any(text in record.getMessage() for record in caplog.records)

    async def main() -> None:
        async with (
            provider_server(OWN_NUMBER) as provider,
            running(
                tmp_path,
                monkeypatch,
                extra_config=SMS_WAKE_CONFIG,
                lab_settings={"sms_gateway": gateway(provider)},
            ) as rig,
        ):
            provider.rig = rig
            server, registry = rig.lab.broker.server, rig.lab.broker.registry

            def report() -> object:
                device = registry.device(SERIAL)
                return (
                    None if device is None or device.report is None else device.report.get("sms_wake_number")
                )

            def online() -> bool:
                info = server.presence(SERIAL)
                return info is not None and info.online

            await wait_until_async(
                "the report that it sleeps by SMS", lambda: report() == OWN_NUMBER, seen=report
            )
            await wait_until_async("asleep: offline at the broker", lambda: not online(), timeout=WAIT)
            # asleep, the data session is down (modem in standby): nothing reaches the broker's
            # port, neither presence nor the data-path probe (STUN, every 0.3 s while online), while
            # the modem's registration polls (every 0.5 s here) show time passing: 3 keepalive intervals
            await rig.modem(lambda s: s.state is ModemState.STANDBY)
            received = mocker.spy(server, "receive_datagram")
            polls = rig.emu.commands.count("AT+CGREG?")

            def polled() -> int:
                return rig.emu.commands.count("AT+CGREG?") - polls

            await wait_until_async("6 registration polls while asleep", lambda: polled() >= 6, seen=polled)
            assert received.call_count == 0, "datagrams from a sleeping recorder"
            assert rig.runners[-1].status().state is ModemState.STANDBY
            registered_before = registry.device(SERIAL).last_registered_at  # type: ignore[union-attr]
            headers = await rig.lab.login()
            registry.record_pairing("alice", SERIAL, bytes(32), time.time())
            started = time.monotonic()
            status, body = await asyncio.wait_for(
                rig.lab.call("POST", "/v1/sessions", headers, json={"serial": SERIAL}), WAIT + 30
            )
            assert status == 201, body
            print(f"wake SMS to registered: {time.monotonic() - started:.2f} s")
            (sent,) = provider.sent
            assert (
                sent["to"] == OWN_NUMBER and sent["from"] == BROKER_NUMBER and sent["text"].startswith("DW1:")
            )
            assert online()
            await wait_until_async(
                "the registry's new registration",
                lambda: registry.device(SERIAL).last_registered_at != registered_before,  # type: ignore[union-attr]
            )
            # the inbox read and deleted the message; then the device sleeps again
            await wait_until_async(
                "the SIM store emptied", lambda: rig.emu.sms_counts()[0] == 0, seen=rig.emu.sms_counts
            )
            await wait_until_async("asleep again", lambda: not online(), timeout=WAIT)
            # a replay of the same SMS (someone re-sent it) does not wake it
            rig.emu.receive_sms(BROKER_NUMBER, sent["text"])
            await wait_until_async(
                "the replay read", lambda: rig.emu.sms_counts()[0] == 0, seen=rig.emu.sms_counts
            )
            assert not online()

    run(main, bound=150)


def test_a_modem_on_the_broker_host_wakes_the_recorder_with_an_8bit_sms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's modem backend on one emulator, the recorder's modem on another: the network
    (this test) hands what the broker's modem sends (8-bit data in PDU mode) to the recorder's."""

    async def main() -> None:
        with ModemEmulator("quectel-ec25", SimCard(), boot_delay_s=0.05) as broker_modem:
            settings = {"backend": "modem", "modem_port": broker_modem.path, "wake_hold_s": 30}
            async with running(
                tmp_path, monkeypatch, extra_config=SMS_WAKE_CONFIG, lab_settings={"sms_gateway": settings}
            ) as rig:
                recorder_modem = rig.emu
                broker_modem.model.on_sms_sent = lambda sms: recorder_modem.receive_sms(
                    BROKER_NUMBER, sms.body
                )
                server, registry = rig.lab.broker.server, rig.lab.broker.registry

                def online() -> bool:
                    info = server.presence(SERIAL)
                    return info is not None and info.online

                def reported() -> object:
                    device = registry.device(SERIAL)
                    return (
                        None
                        if device is None or device.report is None
                        else device.report.get("sms_wake_number")
                    )

                await wait_until_async("the number reported", lambda: reported() == OWN_NUMBER, seen=reported)
                await wait_until_async("asleep", lambda: not online(), timeout=WAIT)
                headers = await rig.lab.login()
                registry.record_pairing("alice", SERIAL, bytes(32), time.time())
                status, body = await asyncio.wait_for(
                    rig.lab.call("POST", "/v1/sessions", headers, json={"serial": SERIAL}), WAIT + 30
                )
                assert status == 201, body
                (sent,) = broker_modem.sent_sms()
                assert (
                    sent.recipient == OWN_NUMBER and isinstance(sent.body, bytes) and sent.body[:2] == b"DW"
                )
                status, wake = await rig.lab.call("GET", f"/v1/devices/{SERIAL}/wake", headers)
                assert status == 200 and wake["state"] == "online" and wake["via"] == "modem 8-bit", wake

    run(main, bound=150)
