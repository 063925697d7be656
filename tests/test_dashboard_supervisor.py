"""A board that keeps resetting, as the operator's dashboard shows it: the supervisor's firmware
(real MicroPython, simulated time) goes through a reset storm after its daemon's heartbeats stop;
its reset log becomes alarms the way ``dvrlinkd`` makes them (``supervisor_service.alarm_for``),
which a device (a real presence client with an alarm queue) sends to a real broker on loopback.
The operator's page of that device counts the resets of the last 24 h above its recent alarms,
which list each one; a device without resets shows no count, and a device's text is escaped.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from support.aio import run
from support.broker import PASSWORD, lab
from support.dashboard import DashboardClient
from support.micropython import SimulatedSupervisor, node_missing

from dvrlink.broker.alarm_store import AlarmStore
from dvrlink.daemon.supervisor_service import alarm_for, entry_tuple
from dvrlink.protocol import supervisor_wire as wire
from dvrlink.protocol.alarm_link import AlarmsDelivered, AlarmSender, SenderConfig
from dvrlink.protocol.alarm_wire import AlarmKind, AlarmRecord

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=node_missing() or "")

SERIAL = "DL-0018-0007"
QUIET = "DL-0018-0008"
XSS = "<script>alert(1)</script>"
HOUR_MS = 3_600_000
RESETS = 3
COUNT = "<dt>SupervisorReset alarms in the last 24 h</dt>"


def storm(flash: Path, last_heartbeat: int) -> list[AlarmRecord]:
    """The alarms a board's reset storm raises: one heartbeat at unix time ``last_heartbeat``,
    then none (the SoC hangs again after each reset) until the supervisor has reset it
    ``RESETS`` times; its log read and turned into alarms as ``dvrlinkd`` does at its next start."""
    with SimulatedSupervisor(flash) as sim:
        sim.request(wire.heartbeat(1, wire.Health.OK, last_heartbeat))
        while len(sim.trace.pulses(2)) < RESETS:
            sim.run(60_000)
        log = sim.request(wire.read_reset_log(2))
    assert isinstance(log, wire.ResetLog)
    records = []
    for entry in reversed(log.entries):  # oldest first, as the daemon queues them
        alarm = alarm_for(entry_tuple(entry), None)
        if alarm is not None:
            kind, detail = alarm
            at_ms = entry.unix_time * 1000 or int(time.time() * 1000)  # undated: the daemon's now
            records.append(AlarmRecord(len(records) + 1, at_ms, kind, detail=detail))
    return records


def test_the_operators_device_page_shows_a_board_that_keeps_resetting(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    now = int(time.time())
    records = storm(tmp_path / "flash", now - 3600)
    kinds = [r.kind for r in records]
    assert kinds.count(AlarmKind.SUPERVISOR_RESET) == RESETS, records
    # One more from two days ago (outside the window) and a device's text that is markup.
    old = AlarmRecord(0, (now - 48 * 3600) * 1000, AlarmKind.SUPERVISOR_RESET, detail="an old reset")
    odd = AlarmRecord(0, now * 1000, AlarmKind.OTHER, detail=XSS)
    sent = [old, *records, odd]
    sent = [AlarmRecord(seq, r.time_ms, r.kind, detail=r.detail) for seq, r in enumerate(sent, start=1)]
    counted = mocker.spy(AlarmStore, "count_since")

    async def main() -> None:
        async with lab(tmp_path, dashboard_operators=["olga"]) as t:
            t.broker.registry.create_user("olga", PASSWORD, time.time())
            device = await t.device(SERIAL, alarms=AlarmSender(SenderConfig(), 18))
            await t.device(QUIET)
            for record in sent:
                device.client.send_alarm(record, device.loop.time())
            device.flush()
            while (await device.next_event(AlarmsDelivered)).through_seq < len(sent):
                pass
            olga = DashboardClient(t.broker)
            try:
                assert (await olga.login("olga", PASSWORD))[0] == 303
                status, text, _resp = await olga.get(f"/dashboard/devices/{SERIAL}")
                assert status == 200
                assert f"{COUNT}<dd>{RESETS}</dd>" in text, text
                recent = text[text.index("<h2>Recent alarms</h2>") :].split("</section>")[0]
                shown = recent.count(
                    f"SupervisorReset: the supervisor reset the board after {120} s without a heartbeat"
                )
                assert shown == 1, recent  # the first reset: two minutes after the last heartbeat
                assert recent.count("SupervisorReset: ") == RESETS + 1, recent  # the old one too
                assert XSS not in text and "Other: &lt;script&gt;alert(1)&lt;/script&gt;" in recent
                status, text, _resp = await olga.get(f"/dashboard/devices/{QUIET}")
                assert status == 200 and COUNT not in text
            finally:
                await olga.close()

    run(main)
    windows = {call.args[1:] for call in counted.call_args_list}
    assert {(s, k) for s, k, _ in windows} == {
        (SERIAL, AlarmKind.SUPERVISOR_RESET),
        (QUIET, AlarmKind.SUPERVISOR_RESET),
    }
    assert all(abs(since - (now * 1000 - 24 * HOUR_MS)) < HOUR_MS for _, _, since in windows)
