"""The supervisor firmware (supervisor/) in real MicroPython: the WebAssembly port under node, on a
simulated RP2040 board (tests/support/micropython.py). The daemon's codec
(dvrlink.protocol.supervisor_wire) speaks to it, and every scenario checks the recorded pin trace.

Pins of the Pico board (sv_board.PICO_BOARD): GPIO 2 the SoC's reset line, GPIO 3 the modem's
PWRKEY, GPIO 4 the modem's power cut; all asserted high.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.micropython import SIM_SUPPORT, PtyBridge, SimulatedSupervisor, node_missing, run_entry
from support.waiting import wait_until

from dvrlink.protocol import supervisor_wire as wire

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=node_missing() or "")

SOC_RESET, PWRKEY, POWER_CUT = 2, 3, 4
HEARTBEATS = SIM_SUPPORT / "micropython_heartbeats.py"
SECOND = 1000


@pytest.fixture
def flash(tmp_path: Path) -> Path:
    return tmp_path / "flash"


def start(flash: Path, **config: object) -> SimulatedSupervisor:
    return SimulatedSupervisor(flash, dict(config))


@pytest.fixture
def mcu(flash: Path) -> Iterator[SimulatedSupervisor]:
    with start(flash, policy={"heartbeat_timeout_s": 60}) as sim:
        yield sim
        assert not sim.trace.wdt_expired, f"the MCU's watchdog was starved: {sim.trace.wdt_expired}"


def beat(sim: SimulatedSupervisor, seq: int, unix: int = 0) -> wire.Reply:
    return sim.request(wire.heartbeat(seq, wire.Health.OK, unix))


def test_outputs_start_released_and_the_watchdog_is_fed(mcu: SimulatedSupervisor) -> None:
    assert sorted((g, v) for t, g, v in mcu.trace.pins) == [(SOC_RESET, 0), (PWRKEY, 0), (POWER_CUT, 0)]
    mcu.run(30 * SECOND)
    assert mcu.trace.wdt_started == [0]
    assert mcu.trace.pulses(SOC_RESET) == [], "no heartbeat yet: the watchdog is not armed"


def test_no_heartbeat_for_the_timeout_pulses_the_soc_reset_line(mcu: SimulatedSupervisor) -> None:
    for seq in range(6):
        assert beat(mcu, seq, unix=1_800_000_000 + seq * 10) == wire.HeartbeatAck(seq, 60)
        mcu.run(10 * SECOND - 50)
    last_beat = max(t for t, data in mcu.trace.tx)  # the ack went out when the last heartbeat came
    mcu.run_until(last_beat + 60 * SECOND - 1)
    assert mcu.trace.pulses(SOC_RESET) == [], "reset before the timeout"
    mcu.run(5 * SECOND)
    (start_ms, width), *more = mcu.trace.pulses(SOC_RESET)
    assert not more
    assert start_ms - last_beat == 60 * SECOND
    assert width == 200
    log = mcu.request(wire.read_reset_log(9))
    assert isinstance(log, wire.ResetLog)
    newest = log.entries[0]
    assert newest.cause == wire.ResetCause.HEARTBEAT_TIMEOUT
    assert newest.detail == 60
    assert newest.unix_time == 1_800_000_050 + 60, "the time comes from the heartbeats' clock"


def test_a_reset_storm_is_bounded_by_backoff_and_the_daily_cap(flash: Path) -> None:
    policy = {
        "heartbeat_timeout_s": 60,
        "boot_grace_ms": 120_000,
        "backoff_base_ms": 60_000,
        "backoff_max_ms": 3_600_000,
        "daily_cap": 5,
        "day_ms": 6 * 3_600_000,  # a short "day" keeps the test quick; the rule is the same
    }
    with start(flash, policy=policy) as sim:
        beat(sim, 1)
        sim.run(20 * 3_600_000)
        resets = [t for t, _ in sim.trace.pulses(SOC_RESET)]
        gaps = [b - a for a, b in itertools.pairwise(resets)]
        assert len(resets) >= 6, resets
        # Backoff: each gap is the boot grace plus a doubling backoff (or longer, held by the cap).
        for n, gap in enumerate(gaps, start=1):
            assert gap >= 120_000 + min(60_000 * 2 ** (n - 1), 3_600_000), (n, gaps)
        assert gaps[:4] == [180_000, 240_000, 360_000, 600_000]
        # The cap: never more than 5 in any window of a "day".
        for i, t in enumerate(resets):
            assert len([u for u in resets[i:] if u - t < 6 * 3_600_000]) <= 5, resets
        assert len(resets) <= 5 * 4
        log = sim.request(wire.read_reset_log(2))
        assert isinstance(log, wire.ResetLog)
        assert wire.ResetCause.CAPPED in [e.cause for e in log.entries]
        status = sim.request(wire.get_status(3))
        assert isinstance(status, wire.SupervisorStatus)
        assert status.resets_24h <= 5
        assert not sim.trace.wdt_expired


def test_heartbeats_after_a_reset_end_the_run_of_resets(flash: Path) -> None:
    policy = {"heartbeat_timeout_s": 60, "boot_grace_ms": 120_000, "stable_ms": 300_000}
    with start(flash, policy=policy) as sim:
        beat(sim, 1)
        sim.run(60 * SECOND + 100 * SECOND)  # first reset at 60 s
        sim.run(120 * SECOND + 60 * SECOND)  # second, after the grace and the first backoff
        assert len(sim.trace.pulses(SOC_RESET)) == 2
        for seq in range(40):  # the board is back: 400 s of heartbeats, longer than stable_ms
            beat(sim, seq)
            sim.run(10 * SECOND)
        t_last = sim.now
        sim.run(120 * SECOND)
        third = sim.trace.pulses(SOC_RESET)[2][0]
        assert third - t_last < 60 * SECOND, "after a stable period the plain timeout applies again"
        sim.run(120 * SECOND + 60 * SECOND + 10 * SECOND)
        fourth = sim.trace.pulses(SOC_RESET)[3][0]
        assert fourth - third == 120 * SECOND + 60 * SECOND, "the backoff starts again at its base"


@pytest.mark.parametrize(
    ("profile", "pin_widths"),
    [
        (wire.ModemProfile.SIM800, {PWRKEY: [1200, 1200]}),
        (wire.ModemProfile.QUECTEL_EC2X_UC20, {PWRKEY: [700, 700]}),
        (wire.ModemProfile.SIM800_POWER_CUT, {POWER_CUT: [5000], PWRKEY: [1200]}),
        (wire.ModemProfile.QUECTEL_POWER_CUT, {POWER_CUT: [5000], PWRKEY: [700]}),
    ],
)
def test_modem_power_cycle_pulses_have_the_profiles_widths(
    mcu: SimulatedSupervisor, profile: wire.ModemProfile, pin_widths: dict[int, list[int]]
) -> None:
    reply = mcu.request(wire.power_cycle_modem(7, profile))
    assert isinstance(reply, wire.PowerCycleStarted) and reply.status == wire.Status.OK
    asked = mcu.trace.tx[-1][0]
    mcu.run(reply.duration_ms + SECOND)
    for pin, widths in pin_widths.items():
        assert [w for _, w in mcu.trace.pulses(pin)] == widths, (pin, mcu.trace.levels(pin))
    starts = sorted(s for pin in pin_widths for s, _ in mcu.trace.pulses(pin))
    assert starts[0] - asked == 20, "the sequence starts right after the reply"
    ends = [s + w for pin in pin_widths for s, w in mcu.trace.pulses(pin)]
    assert max(ends) - asked == reply.duration_ms
    if profile == wire.ModemProfile.SIM800:
        (a, wa), (b, _) = mcu.trace.pulses(PWRKEY)
        assert b - (a + wa) == 5000, "the SIM800 gets 5 s to power down between the pulses"
    assert mcu.trace.pulses(SOC_RESET) == []


def test_a_second_power_cycle_while_one_runs_is_refused_and_a_repeat_acts_once(
    mcu: SimulatedSupervisor,
) -> None:
    first = mcu.request(wire.power_cycle_modem(1, wire.ModemProfile.SIM800))
    again = mcu.request(wire.power_cycle_modem(1, wire.ModemProfile.SIM800))
    assert again == first, "a repeated request (same seq) gets the same reply"
    busy = mcu.request(wire.power_cycle_modem(2, wire.ModemProfile.QUECTEL_EC2X_UC20))
    assert isinstance(busy, wire.PowerCycleStarted) and busy.status == wire.Status.BUSY
    mcu.run(20 * SECOND)
    assert len(mcu.trace.pulses(PWRKEY)) == 2, "one sequence: two PWRKEY pulses"


def test_a_board_without_the_power_mosfet_refuses_the_power_cut(flash: Path) -> None:
    with start(flash, no_power_cut=True) as sim:
        reply = sim.request(wire.power_cycle_modem(1, wire.ModemProfile.SIM800_POWER_CUT))
        assert isinstance(reply, wire.PowerCycleStarted) and reply.status == wire.Status.NOT_FITTED
        unknown = sim.request(wire.power_cycle_modem(2, 9))
        assert isinstance(unknown, wire.PowerCycleStarted) and unknown.status == wire.Status.NOT_FITTED
        sim.run(10 * SECOND)
        assert all(g != POWER_CUT for _, g, _ in sim.trace.pins)
        assert sim.trace.pulses(PWRKEY) == []


def corrupt_frames(rng: random.Random) -> list[bytes]:
    reset = wire.reset_soc(5)
    cycle = wire.power_cycle_modem(6, wire.ModemProfile.SIM800)
    frames = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(30)]
    for good in (reset, cycle):
        for i in range(len(good)):  # every single-bit error
            bad = bytearray(good)
            bad[i] ^= 1 << rng.randrange(8)
            frames.append(bytes(bad))
        frames.append(good[:-1])  # truncated (its end arrives after the gap)
    body = bytes((2, wire.MsgType.RESET_SOC, 7, 0))  # version 2, with a valid CRC
    frames.append(bytes((wire.SYNC,)) + body + wire.crc16(body).to_bytes(2, "big"))
    return frames


def test_corrupt_frames_never_act(mcu: SimulatedSupervisor) -> None:
    beat(mcu, 1)
    pins_before = list(mcu.trace.pins)
    for junk in corrupt_frames(random.Random(18)):
        mcu.run(200, rx=junk)
    mcu.run(SECOND)
    assert mcu.trace.pins == pins_before, "a corrupt frame moved a pin"
    replies = list(mcu.replies())
    assert all(f.msg_type != 0x83 and f.msg_type != 0x82 for f in replies), replies
    status = mcu.request(wire.get_status(40))
    assert isinstance(status, wire.SupervisorStatus)
    assert status.bad_crc >= 10 and status.bad_version == 1 and status.garbage_bytes > 100, status
    # A good frame right behind garbage still acts.
    assert mcu.request(wire.reset_soc(41), ms=300, junk=b"\x00\xa5\x13") == wire.ResetAccepted(
        41, wire.Status.OK, 20
    )
    mcu.run(SECOND)
    assert [w for _, w in mcu.trace.pulses(SOC_RESET)] == [200]


def test_a_well_formed_request_of_unknown_type_or_bad_length_is_refused(mcu: SimulatedSupervisor) -> None:
    assert mcu.request(wire.encode_frame(0x42, 3)) == wire.ErrorReply(3, wire.ErrorCode.UNKNOWN_TYPE, 0x42)
    assert mcu.request(wire.encode_frame(wire.MsgType.RESET_SOC, 4, b"x")) == wire.ErrorReply(
        4, wire.ErrorCode.BAD_PAYLOAD, wire.MsgType.RESET_SOC
    )
    mcu.run(SECOND)
    assert mcu.trace.pulses(SOC_RESET) == []


def test_a_disarm_stops_the_reset_until_the_next_heartbeat(mcu: SimulatedSupervisor) -> None:
    # dvrlinkd stopped on purpose (systemctl stop): DISARM, then silence for three timeouts.
    assert beat(mcu, 1, unix=1_800_000_000) == wire.HeartbeatAck(1, 60)
    mcu.run(5 * SECOND)
    assert mcu.request(wire.disarm(2, 1_800_000_005)) == wire.Disarmed(2, was_armed=True)
    mcu.run(3 * 60 * SECOND)
    assert mcu.trace.pulses(SOC_RESET) == [], "a disarmed watchdog reset the SoC"
    status = mcu.request(wire.get_status(3))
    assert isinstance(status, wire.SupervisorStatus) and not status.armed, status
    # Logged once, dated by the disarm's own clock; a repeat (a retransmit) logs nothing more.
    assert mcu.request(wire.disarm(4, 0)) == wire.Disarmed(4, was_armed=False)
    log = mcu.request(wire.read_reset_log(5))
    assert isinstance(log, wire.ResetLog)
    assert [e.cause for e in log.entries] == [wire.ResetCause.DISARMED, wire.ResetCause.MCU_START]
    assert log.entries[0].unix_time == 1_800_000_005 and log.entries[0].detail == 5
    # The daemon starts again: its first heartbeat arms the watchdog, which resets after the timeout.
    assert beat(mcu, 6) == wire.HeartbeatAck(6, 60)
    armed_at = max(t for t, _ in mcu.trace.tx)
    mcu.run(61 * SECOND)
    (start_ms, width), *more = mcu.trace.pulses(SOC_RESET)
    assert not more and start_ms - armed_at == 60 * SECOND and width == 200


def test_a_corrupt_disarm_frame_never_disarms(mcu: SimulatedSupervisor) -> None:
    rng = random.Random(35)
    beat(mcu, 1)
    armed_at = max(t for t, _ in mcu.trace.tx)
    good = wire.disarm(2, 1_800_000_000)
    frames = []
    for i in range(len(good)):  # every single-bit error, each bit of each byte once over the run
        bad = bytearray(good)
        bad[i] ^= 1 << rng.randrange(8)
        frames.append(bytes(bad))
    frames += [good[:n] for n in range(1, len(good))]  # truncated (the rest never comes)
    body = bytes((2, wire.MsgType.DISARM, 3, 4)) + good[5:9]  # version 2, with a valid CRC
    frames.append(bytes((wire.SYNC,)) + body + wire.crc16(body).to_bytes(2, "big"))
    for junk in frames:
        mcu.run(200, rx=junk)
    # Well formed with a wrong length: refused, not acted on.
    for n, payload in enumerate((b"", b"\x00\x00\x00", b"\x00" * 5), start=10):
        assert mcu.request(wire.encode_frame(wire.MsgType.DISARM, n, payload)) == wire.ErrorReply(
            n, wire.ErrorCode.BAD_PAYLOAD, wire.MsgType.DISARM
        )
    assert all(f.msg_type != wire.MsgType.DISARM | wire.REPLY_BIT for f in mcu.replies())
    status = mcu.request(wire.get_status(20))
    assert isinstance(status, wire.SupervisorStatus) and status.armed, status
    assert status.bad_crc >= 5 and status.bad_version == 1, status  # a flipped sync or length is no CRC error
    mcu.run_until(armed_at + 61 * SECOND)
    assert [s - armed_at for s, _ in mcu.trace.pulses(SOC_RESET)] == [60 * SECOND]
    log = mcu.request(wire.read_reset_log(21))
    assert isinstance(log, wire.ResetLog)
    assert wire.ResetCause.DISARMED not in [e.cause for e in log.entries]


def test_the_reset_log_survives_a_restart_of_the_firmware(mcu: SimulatedSupervisor, flash: Path) -> None:
    beat(mcu, 1, unix=1_800_000_000)
    assert mcu.request(wire.reset_soc(2)) == wire.ResetAccepted(2, wire.Status.OK, 20)
    mcu.request(wire.power_cycle_modem(3, wire.ModemProfile.QUECTEL_EC2X_UC20))
    before = mcu.request(wire.read_reset_log(4))
    assert isinstance(before, wire.ResetLog)
    assert [e.cause for e in before.entries] == [
        wire.ResetCause.MODEM_POWER_CYCLE,
        wire.ResetCause.COMMAND,
        wire.ResetCause.MCU_START,
    ]
    # Written atomically: the whole file under a temporary name, then renamed over the log.
    writes = [op for op in mcu.trace.fs if op[0] in ("write", "rename")]
    assert writes[-2:] == [
        ["write", "/flash/reset_log.json.tmp"],
        ["rename", "/flash/reset_log.json.tmp", "/flash/reset_log.json"],
    ]
    mcu.restart()
    after = mcu.request(wire.read_reset_log(1))
    assert isinstance(after, wire.ResetLog)
    assert after.boots == before.boots + 1
    assert after.entries[1:] == before.entries
    assert after.entries[0].cause == wire.ResetCause.MCU_START


def test_a_torn_or_corrupt_log_file_does_not_stop_the_firmware(flash: Path) -> None:
    flash.mkdir(parents=True)
    (flash / "reset_log.json").write_text('{"format": 1, "boots": 4, "entries": [[2, 0, 5, 0]]}')
    (flash / "reset_log.json.tmp").write_text('{"format": 1, "boo')  # power lost mid-write
    with start(flash) as sim:
        log = sim.request(wire.read_reset_log(1))
        assert isinstance(log, wire.ResetLog) and log.boots == 5
        assert [e.cause for e in log.entries] == [wire.ResetCause.MCU_START, wire.ResetCause.COMMAND]
    (flash / "reset_log.json").unlink()  # FAT: the old log removed, power lost before the rename
    (flash / "reset_log.json.tmp").write_text('{"format": 1, "boots": 9, "entries": [[1, 0, 7, 120]]}')
    with start(flash) as sim:
        log = sim.request(wire.read_reset_log(1))
        assert isinstance(log, wire.ResetLog) and log.boots == 10
        assert [e.cause for e in log.entries] == [
            wire.ResetCause.MCU_START,
            wire.ResetCause.HEARTBEAT_TIMEOUT,
        ]
    (flash / "reset_log.json").write_text("\x00\xff not json")
    with start(flash) as sim:
        log = sim.request(wire.read_reset_log(1))
        assert isinstance(log, wire.ResetLog) and log.boots == 1
        assert [e.cause for e in log.entries] == [wire.ResetCause.MCU_START]


def test_the_codec_reads_supply_status_and_sets_the_timeout(mcu: SimulatedSupervisor) -> None:
    # 12.0 V through 100k over 22k is 2.164 V at the ADC: 42976 of 65535 at 3.3 V.
    mcu.run(1100, adc=42976)
    supply = mcu.request(wire.read_supply(1))
    assert isinstance(supply, wire.SupplyReading)
    assert supply.raw == 42976 and abs(supply.millivolts - 12000) < 10, supply
    mcu.run(1100, adc=39000)
    low = mcu.request(wire.read_supply(2))
    assert isinstance(low, wire.SupplyReading) and low.min_millivolts == low.millivolts < 11000
    assert mcu.request(wire.set_heartbeat_timeout(3, 5)) == wire.TimeoutSet(3, wire.Status.OUT_OF_RANGE, 60)
    assert mcu.request(wire.set_heartbeat_timeout(4, 30)) == wire.TimeoutSet(4, wire.Status.OK, 30)
    assert beat(mcu, 5) == wire.HeartbeatAck(5, 30)
    status = mcu.request(wire.get_status(6))
    assert isinstance(status, wire.SupervisorStatus)
    assert status.firmware == (1, 1, 0) and status.armed and status.timeout_s == 30
    assert status.since_heartbeat_s == 0 and status.bad_crc == 0
    t = max(t for t, _ in mcu.trace.tx)
    mcu.run(31 * SECOND)
    assert mcu.trace.pulses(SOC_RESET)[0][0] - t <= 30 * SECOND


def test_the_maintenance_jumper_keeps_main_py_from_starting(tmp_path: Path) -> None:
    # The device's own main.py, with GPIO 22 pulled to ground: no pin is driven, no watchdog
    # started (so mpremote can use the REPL), and it says why.
    done = run_entry("main", tmp_path / "flash", {"inputs": {"22": 0}})
    assert done.returncode == 0, done.stderr
    assert "maintenance jumper set" in done.stderr
    assert done.stdout == "", "the firmware never reached its loop"
    assert not (tmp_path / "flash" / "reset_log.json").exists()


def test_a_stopped_daemon_gets_its_soc_reset_through_a_pty(flash: Path) -> None:
    # Real time and a real process: the heartbeat sender (the daemon's codec) talks to the
    # firmware through a PTY; SIGSTOP hangs it, and the reset line pulses one timeout after its
    # last heartbeat. SIGCONT: heartbeats flow again and are answered.
    policy = {"heartbeat_timeout_s": 1, "min_timeout_s": 1, "boot_grace_ms": 1000, "backoff_base_ms": 60_000}
    with start(flash, policy=policy) as sim, PtyBridge(sim) as pty:
        sender = subprocess.Popen(
            [sys.executable, str(HEARTBEATS), pty.path, "--interval-ms", "200"],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        try:
            wait_until("five heartbeats answered", lambda: len(sim.trace.tx) >= 5, seen=lambda: sim.trace.tx)
            assert sim.trace.pulses(SOC_RESET) == []
            sender.send_signal(signal.SIGSTOP)
            pulses = wait_until(
                "the SoC reset pulse", lambda: sim.trace.pulses(SOC_RESET), seen=lambda: sim.trace.pins
            )
            last_ack = max(t for t, _ in sim.trace.tx if t < pulses[0][0])
            assert pulses[0][0] - last_ack == 1000, (last_ack, pulses)
            sender.send_signal(signal.SIGCONT)
            acks = len(sim.trace.tx)
            wait_until("heartbeats again after SIGCONT", lambda: len(sim.trace.tx) >= acks + 3)
        finally:
            sender.kill()
            sender.wait(10)
    assert not sim.trace.wdt_expired
