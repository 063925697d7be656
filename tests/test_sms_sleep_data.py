"""dvrlinkd in ``[presence] mode = "sms-wake"`` (docs/sms-wake.md) and its modem's data session:
in-process, the modem being the PTY emulator (an EC25: an ECM call and DHCP on ``lo``), the broker
in-process with an HTTP SMS provider on loopback that delivers each wake into the emulator.

Asleep, the modem is in ``standby``: the ECM call is down in the emulator, the DHCP client is
stopped, no dial and no data-path probe (nothing at all reaches the broker's port) while the
registration polls go on over AT. A sleeping recorder still answers LAN discovery from a paired
viewer (LAN traffic costs no cellular byte). A session request wakes it by SMS: the data call
comes up first, and only then does the first presence datagram reach the broker.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.aio import run
from support.daemon_modem import SERIAL, WORKING_APN, running
from support.sms_provider import provider_server
from support.waiting import wait_until_async

from dvrlink.modem.manager import ModemState
from dvrlink.protocol.lan_discovery import LanTiming
from dvrlink.viewer.lan import find_on_lan

BROKER_NUMBER = "+491609876543"
OWN_NUMBER = "+491701234567"
WAIT = 20.0
DIAL = "AT+QNETDEVCTL=1"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_asleep_the_data_session_is_down_lan_discovery_answers_and_a_wake_brings_data_before_presence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dvrlink")
    lan_port = free_udp_port()
    config = f"""
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
[lan]
discovery = true
port = {lan_port}
"""

    async def main() -> None:
        async with provider_server(OWN_NUMBER) as provider:
            gateway = {
                "backend": "http",
                "url": provider.url,
                "body": "to={to}&from={from}&text={text}",
                "content_type": "application/x-www-form-urlencoded",
                "sender": BROKER_NUMBER,
                "wake_hold_s": 30,
            }
            async with running(
                tmp_path, monkeypatch, extra_config=config, lab_settings={"sms_gateway": gateway}
            ) as rig:
                provider.rig = rig
                server, registry = rig.lab.broker.server, rig.lab.broker.registry

                def online() -> bool:
                    info = server.presence(SERIAL)
                    return info is not None and info.online

                await wait_until_async("the modem runner", lambda: bool(rig.runners))
                await rig.modem(lambda s: s.state is ModemState.ONLINE)
                await wait_until_async("asleep: offline at the broker", lambda: not online(), timeout=WAIT)
                await rig.modem(lambda s: s.state is ModemState.STANDBY)
                emu = rig.emu

                # every datagram that reaches the broker, with the modem's state and dials so far
                seen: list[tuple[bytes, ModemState, int]] = []
                original = server.receive_datagram

                def receive_datagram(data: bytes, *args: Any, **kwargs: Any) -> Any:
                    dials = sum(1 for c in emu.commands if c.startswith(DIAL))
                    seen.append((bytes(data[:1]), rig.runners[-1].status().state, dials))
                    return original(data, *args, **kwargs)

                monkeypatch.setattr(server, "receive_datagram", receive_datagram)
                await wait_until_async("the ECM call down", lambda: emu.model.ecm_call is None)
                dials_asleep = sum(1 for c in emu.commands if c.startswith(DIAL))
                polls = emu.commands.count("AT+CGREG?")

                def polled() -> int:
                    return emu.commands.count("AT+CGREG?") - polls

                # 6 registration polls (0.5 s apart here): 3 keepalive intervals, 10 probe intervals
                await wait_until_async(
                    "6 registration polls while asleep", lambda: polled() >= 6, seen=polled
                )
                assert seen == [], "datagrams from a sleeping recorder"
                assert sum(1 for c in emu.commands if c.startswith(DIAL)) == dials_asleep
                assert emu.model.ecm_call is None and not emu.model.detached and emu.model.registered()
                assert rig.runners[-1].status().state is ModemState.STANDBY

                # a paired viewer on the LAN still finds the sleeping recorder: no cellular byte
                device = registry.device(SERIAL)
                assert device is not None
                found = await find_on_lan(
                    device.public_key,
                    Ed25519PrivateKey.generate(),
                    port=lan_port,
                    extra_targets=["127.0.0.1"],
                    timing=LanTiming(discovery_timeout_s=2.0, answer_timeout_s=2.0),
                )
                assert found is not None, "a sleeping recorder did not answer LAN discovery"
                await found.close()
                assert seen == [] and not online()

                # a session request wakes it: the data call first, then presence
                headers = await rig.lab.login()
                registry.record_pairing("alice", SERIAL, bytes(32), time.time())
                status, body = await asyncio.wait_for(
                    rig.lab.call("POST", "/v1/sessions", headers, json={"serial": SERIAL}), WAIT + 30
                )
                assert status == 201, body
                assert len(provider.sent) == 1
                first_kind, state_then, dials_then = seen[0]
                assert first_kind >= b"\x04", f"the first datagram after the wake is not presence: {seen[:3]}"
                assert state_then is ModemState.ONLINE and dials_then == dials_asleep + 1, seen[:3]
                assert any("the data session is up: registering" in r.getMessage() for r in caplog.records)

    run(main, bound=150)


FAKE_PPPD = Path(__file__).resolve().parent.parent / "hil" / "fake_pppd.py"


def test_a_sim800_hangs_up_ppp_on_its_only_port_while_asleep_and_reads_the_wake_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PPP on the AT port (a SIM800 on a UART): while awake, pppd holds the one port; asleep,
    pppd hangs up, the port is the AT engine's again and the inbox reads the wake SMS on it, and
    the wake dials PPP again before presence registers. pppd is the stand-in ``hil/fake_pppd.py``."""
    monkeypatch.setenv("FAKE_PPPD_IFNAME", "lo")
    monkeypatch.setenv("FAKE_PPPD_LOCAL", "127.0.0.1")
    monkeypatch.setenv("FAKE_PPPD_REMOTE", "127.0.0.1")
    pppd = f'["{sys.executable}", "{FAKE_PPPD}"]'
    chat = f'["{sys.executable}", "{FAKE_PPPD}", "--as-chat"]'
    config = f"""
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
[lan]
discovery = false
"""

    async def main() -> None:
        async with provider_server(OWN_NUMBER) as provider:
            gateway = {
                "backend": "http",
                "url": provider.url,
                "body": "to={to}&from={from}&text={text}",
                "content_type": "application/x-www-form-urlencoded",
                "sender": BROKER_NUMBER,
                "wake_hold_s": 40,
            }
            async with running(
                tmp_path,
                monkeypatch,
                profile="simcom-sim800",
                extra_modem=f'pppd = {pppd}\nchat = {chat}\napn = "{WORKING_APN}"\n',
                extra_config=config,
                lab_settings={"sms_gateway": gateway},
            ) as rig:
                provider.rig = rig
                server, registry = rig.lab.broker.server, rig.lab.broker.registry

                def online() -> bool:
                    info = server.presence(SERIAL)
                    return info is not None and info.online

                await wait_until_async("the modem runner", lambda: bool(rig.runners))
                runner = rig.runners[-1]
                await rig.modem(lambda s: s.state is ModemState.ONLINE)
                dials = rig.emu.commands.count("ATD*99***1#")
                assert dials >= 1
                await wait_until_async("asleep: offline at the broker", lambda: not online(), timeout=WAIT)
                await rig.modem(lambda s: s.state is ModemState.STANDBY)
                await wait_until_async(
                    "the AT port back from pppd",
                    lambda: runner.link is not None and not runner.manager.port_lent,
                )
                assert not rig.emu.model.data_mode
                polls = rig.emu.commands.count("AT+CREG?")
                await wait_until_async(
                    "registration polls on the port while asleep",
                    lambda: rig.emu.commands.count("AT+CREG?") >= polls + 4,
                )
                assert rig.emu.commands.count("ATD*99***1#") == dials
                headers = await rig.lab.login()
                registry.record_pairing("alice", SERIAL, bytes(32), time.time())
                status, body = await asyncio.wait_for(
                    rig.lab.call("POST", "/v1/sessions", headers, json={"serial": SERIAL}), WAIT + 40
                )
                assert status == 201, body
                assert rig.emu.commands.count("ATD*99***1#") == dials + 1, "PPP dialled again for the wake"
                read = max(i for i, c in enumerate(rig.emu.commands) if c.startswith("AT+CMGR="))
                dialled = max(i for i, c in enumerate(rig.emu.commands) if c == "ATD*99***1#")
                assert read < dialled, "the wake was read on the AT port before PPP took it"

    run(main, bound=150)
