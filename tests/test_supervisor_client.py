"""The daemon's supervisor client core (dvrlink.protocol.supervisor_client): made-up time, replies
built with the codec, and every event and frame checked."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import struct
import tty
from pathlib import Path

import pytest
from support.aio import run
from support.micropython import FIRMWARE, PtyBridge, SimulatedSupervisor, node_missing
from support.waiting import wait_until

from dvrlink.daemon.config import BoardConfig
from dvrlink.daemon.supervisor_link import SupervisorError, SupervisorLink
from dvrlink.daemon.supervisor_service import SupervisorService
from dvrlink.protocol import supervisor_wire as wire
from dvrlink.protocol.supervisor_client import (
    ClientConfig,
    ReplyReceived,
    RequestFailed,
    RequestKind,
    SupervisorClient,
    SupervisorEvent,
)

PWRKEY = 3
SOC_RESET = 2


def events(client: SupervisorClient) -> list[SupervisorEvent]:
    out = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def reply(request: bytes, payload: bytes) -> bytes:
    """The firmware's reply to ``request``."""
    return wire.encode_frame(request[2] | wire.REPLY_BIT, request[3], payload)


def test_a_request_is_sent_and_its_reply_matched_by_seq() -> None:
    client = SupervisorClient()
    rid = client.read_supply(10.0)
    (frame,) = client.datagrams_to_send()
    assert frame == wire.read_supply(1)
    assert client.get_timer() == 10.5
    client.receive_data(reply(frame, struct.pack(">HHH", 12000, 11800, 4000)), 10.01)
    assert events(client) == [
        ReplyReceived(rid, RequestKind.READ_SUPPLY, wire.SupplyReading(1, 12000, 11800, 4000), 1)
    ]
    assert client.get_timer() is None and client.waiting == 0


def test_no_reply_is_retransmitted_with_the_same_seq_then_fails() -> None:
    client = SupervisorClient(ClientConfig(reply_timeout_s=1.0, tries=3))
    rid = client.power_cycle_modem(wire.ModemProfile.SIM800, 0.0)
    first = client.datagrams_to_send()
    client.handle_timer(1.0)
    client.handle_timer(2.0)
    assert client.datagrams_to_send() == first * 2, "the same frame, seq and all"
    assert events(client) == []
    client.handle_timer(3.0)
    (failed,) = events(client)
    assert isinstance(failed, RequestFailed) and failed.request_id == rid
    assert "no reply to power cycle modem after 3 tries (3.0 s)" in failed.reason
    assert (client.counts.retransmits, client.counts.timeouts) == (2, 1)
    assert client.get_timer() is None


def test_a_reply_after_a_retransmit_ends_the_request_once() -> None:
    client = SupervisorClient(ClientConfig(reply_timeout_s=1.0))
    rid = client.reset_soc(0.0)
    (frame,) = client.datagrams_to_send()
    client.handle_timer(1.0)
    answer = reply(frame, struct.pack(">BH", 0, 200))
    client.receive_data(answer + answer, 1.1)  # both sends answered
    assert events(client) == [
        ReplyReceived(rid, RequestKind.RESET_SOC, wire.ResetAccepted(1, wire.Status.OK, 200), 2)
    ]
    assert client.counts.unmatched == 1


def test_a_newer_heartbeat_supersedes_a_waiting_one() -> None:
    client = SupervisorClient()
    old = client.heartbeat(wire.Health.OK, 1_800_000_000, 0.0)
    new = client.heartbeat(wire.Health.DEGRADED, 1_800_000_010, 0.1)
    first, second = client.datagrams_to_send()
    assert events(client) == [RequestFailed(old, RequestKind.HEARTBEAT, "a newer heartbeat took its place")]
    client.receive_data(reply(first, b"\x00\x78") + reply(second, b"\x00\x78"), 0.2)
    assert events(client) == [ReplyReceived(new, RequestKind.HEARTBEAT, wire.HeartbeatAck(2, 120), 1)]
    assert client.counts.unmatched == 1


def test_garbage_wrong_types_and_malformed_replies_never_raise() -> None:
    client = SupervisorClient()
    rid = client.get_status(0.0)
    (frame,) = client.datagrams_to_send()
    client.receive_data(b"noise" + wire.encode_frame(0x85, frame[3], b"\x00" * 6), 0.01)
    assert events(client) == [] and client.counts.unmatched == 1, "a reply of another type under this seq"
    client.receive_data(reply(frame, b"\x01\x02"), 0.02)
    (failed,) = events(client)
    assert isinstance(failed, RequestFailed) and failed.request_id == rid
    assert "is the firmware of this version" in failed.reason
    assert client.counts.malformed == 1


def test_an_error_reply_answers_the_request_it_names() -> None:
    client = SupervisorClient()
    rid = client.set_heartbeat_timeout(120, 0.0)
    (frame,) = client.datagrams_to_send()
    client.receive_data(wire.encode_frame(wire.MsgType.ERROR, frame[3], bytes((2, 0x01))), 0.01)
    assert events(client) == [], "an error about a heartbeat is not this request's"
    client.receive_data(wire.encode_frame(wire.MsgType.ERROR, frame[3], bytes((2, 0x06))), 0.02)
    assert events(client) == [
        ReplyReceived(
            rid, RequestKind.SET_HEARTBEAT_TIMEOUT, wire.ErrorReply(1, wire.ErrorCode.BAD_PAYLOAD, 6), 1
        )
    ]


def test_seqs_wrap_and_skip_those_still_waiting() -> None:
    client = SupervisorClient()
    client.read_reset_log(0.0)  # seq 1 stays waiting
    client.datagrams_to_send()
    seqs = []
    for _ in range(300):
        client.get_status(0.0)
        (frame,) = client.datagrams_to_send()
        seqs.append(frame[3])
        client.receive_data(reply(frame, bytes(wire._STATUS.size)), 0.0)
    assert 1 not in seqs and 0 not in seqs and set(seqs) == set(range(2, 256))


def test_misuse_raises() -> None:
    with pytest.raises(ValueError, match="tries"):
        ClientConfig(tries=0)
    with pytest.raises(ValueError, match="does not fit"):
        SupervisorClient().set_heartbeat_timeout(70000, 0.0)


# -- both sides real: the daemon's link against the MicroPython firmware through a PTY ----------


@pytest.mark.skipif(node_missing() is not None, reason=node_missing() or "")
def test_the_link_talks_to_the_real_firmware_through_a_pty(tmp_path: Path) -> None:
    with SimulatedSupervisor(tmp_path / "flash", {"policy": {"heartbeat_timeout_s": 60}}) as sim:
        sim.run(2000, adc=43000)  # 12.0 V through the Pico board's divider
        with PtyBridge(sim) as pty:
            run(functools.partial(talk, pty.path), bound=60)
            pulses = wait_until(
                "the first PWRKEY pulse", lambda: sim.trace.pulses(PWRKEY), seen=lambda: sim.trace.pins
            )
    assert pulses[0][1] == 1200, "the SIM800 profile holds PWRKEY low 1.2 s"


async def talk(path: str) -> None:
    link = SupervisorLink(path, config=ClientConfig(reply_timeout_s=0.3, tries=5))
    link.open()
    try:
        status = await link.get_status()
        assert status.firmware == (1, 1, 0) and not status.armed
        ack = await link.heartbeat(wire.Health.OK, 1_800_000_000)
        assert ack.timeout_s == 60
        assert (await link.set_heartbeat_timeout(90)).timeout_s == 90
        assert (await link.set_heartbeat_timeout(5)).status is wire.Status.OUT_OF_RANGE
        supply = await link.read_supply()
        assert 11_500 < supply.millivolts < 12_500, supply
        log = await link.read_reset_log()
        assert log.entries[0].cause == wire.ResetCause.MCU_START
        started = await link.power_cycle_modem(wire.ModemProfile.SIM800)
        assert started.status is wire.Status.OK and started.duration_ms == 1200 + 5000 + 1200 + 20, started
        assert (await link.get_status()).armed
        assert (await link.disarm(1_800_000_100)).was_armed
        assert not (await link.get_status()).armed
        assert (await link.heartbeat(wire.Health.OK, 0)).timeout_s == 90
        assert (await link.get_status()).armed, "the next heartbeat arms it again"
        assert link.client.counts.timeouts == 0
    finally:
        link.close()
    with pytest.raises(SupervisorError, match="is not open"):
        await link.read_supply()


def test_a_silent_port_fails_each_request_with_advice() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)

    async def body() -> None:
        link = SupervisorLink(os.ttyname(slave), config=ClientConfig(reply_timeout_s=0.05, tries=2))
        link.open()
        try:
            with pytest.raises(SupervisorError, match=r"no reply to get status after 2 tries.*wiring"):
                await link.get_status()
        finally:
            link.close()

    try:
        run(body, bound=30)
        assert os.read(master, 100) == wire.get_status(1) * 2
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.skipif(node_missing() is not None, reason=node_missing() or "")
def test_a_firmware_before_1_1_refuses_the_disarm_and_resets_after_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Firmware 1.0 had no DISARM: the same firmware without it answers the error reply for an
    # unknown type, as 1.0 does. The service says so, and the board is reset one timeout later.
    old = tmp_path / "firmware-1.0"
    shutil.copytree(FIRMWARE, old)
    core = (old / "sv_core.py").read_text()
    assert "            DISARM: self._disarm,\n" in core
    core = core.replace("            DISARM: self._disarm,\n", "")
    (old / "sv_core.py").write_text(
        core.replace("FIRMWARE_VERSION = (1, 1, 0)", "FIRMWARE_VERSION = (1, 0, 0)")
    )
    policy = {"heartbeat_timeout_s": 2, "min_timeout_s": 1, "boot_grace_ms": 1000}
    with SimulatedSupervisor(tmp_path / "flash", {"policy": policy}, firmware=old) as sim:
        with PtyBridge(sim) as pty:
            service = SupervisorService(
                BoardConfig(supervisor=pty.path),
                tmp_path / "state",
                raise_alarm=lambda *_: None,
                health=lambda: wire.Health.OK,
            )
            (tmp_path / "state").mkdir()

            async def body() -> None:
                await service.start()
                assert service.status is not None and service.status.firmware == (1, 0, 0), service.problem
                with caplog.at_level(logging.WARNING, logger="dvrlink.daemon.supervisor_service"):
                    await service.close(disarm=True)

            run(body, bound=60)
            assert "firmware older than 1.1, which cannot be disarmed" in caplog.text, caplog.text
            pulses = wait_until(
                "the reset pulse", lambda: sim.trace.pulses(SOC_RESET), seen=lambda: sim.trace.pins
            )
        acks = [t for t, data in sim.trace.tx if data[2] == wire.MsgType.HEARTBEAT | wire.REPLY_BIT]
        assert pulses[0][0] - max(t for t in acks if t < pulses[0][0]) == 2000
        refused = [data for _, data in sim.trace.tx if data[2] == wire.MsgType.ERROR]
        assert [wire.parse_reply(wire.Frame(f[2], f[3], f[5:-2])) for f in refused][-1].request_type == 0x08
