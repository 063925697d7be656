"""The supervisor's policy (supervisor/sv_core.py) in CPython, over many made-up heartbeat
schedules: it is a plain object with time passed in, so hypothesis can drive it for days in
milliseconds. test_supervisor_firmware.py runs the same code in MicroPython on the simulated board.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from support.micropython import load_firmware

from dvrlink.protocol import supervisor_wire as wire

core: Any = load_firmware("sv_core")
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def make(**policy: int) -> Any:
    return core.Supervisor(core.Config(**policy), core.SIGNALS, [], 1, 0, 1)


class Run:
    """A Supervisor driven the way sv_board.run drives it: to each deadline, recording pulses."""

    def __init__(self, sup: Any) -> None:
        self.sup = sup
        self.now = 0
        self.reset_starts: list[int] = []
        self.seq = 0
        self._level = False

    def step_to(self, t: int) -> None:
        while True:
            deadline = self.sup.next_deadline(self.now)
            if deadline == core.NEVER or deadline > t:
                break
            self._at(max(deadline, self.now))
        self._at(t)

    def _at(self, t: int) -> None:
        self.now = t
        self.sup.poll(t)
        level = self.sup.asserted[core.SOC_RESET]
        if level and not self._level:
            self.reset_starts.append(t)
        self._level = level

    def heartbeat(self) -> None:
        self.seq = (self.seq + 1) % 256
        self.sup.receive(wire.heartbeat(self.seq, wire.Health.OK, 0), self.now)
        self.sup.take_output()

    def disarm(self) -> None:
        self.seq = (self.seq + 1) % 256
        self.sup.receive(wire.disarm(self.seq, 0), self.now)
        self.sup.take_output()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=80))
def test_heartbeats_within_the_timeout_never_reset(gaps_s: list[int]) -> None:
    run = Run(make(heartbeat_timeout_s=200))
    for gap in gaps_s:
        run.heartbeat()
        run.step_to(run.now + gap * 1000 - 1)
    assert run.reset_starts == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, 4 * 3600)), min_size=1, max_size=60),
    st.integers(1, 8),
)
def test_resets_respect_the_timeout_the_backoff_and_the_cap(
    schedule: list[tuple[bool, int]], cap: int
) -> None:
    # The SoC alternates between beating every 30 s and falling silent, for random stretches.
    policy = {
        "heartbeat_timeout_s": 60,
        "boot_grace_ms": 2 * MINUTE,
        "backoff_base_ms": MINUTE,
        "daily_cap": cap,
    }
    run = Run(make(**policy))
    beats: list[int] = []
    for alive, seconds in schedule:
        end = run.now + seconds * 1000
        while alive and run.now + 30_000 <= end:
            run.heartbeat()
            beats.append(run.now)
            run.step_to(run.now + 30_000)
        run.step_to(end)
    resets = run.reset_starts
    for i, t in enumerate(resets):
        assert len([u for u in resets[i:] if u - t < DAY]) <= cap, (
            "more watchdog resets in a day than the cap"
        )
        before = [b for b in beats if b < t]  # a heartbeat at t itself came after the reset
        assert before, "a reset before the first heartbeat (the watchdog was not armed)"
        assert t - before[-1] >= 60_000, "a reset less than the timeout after a heartbeat"
        if i and resets[i - 1] > before[-1]:  # no heartbeat since the previous reset
            assert t - resets[i - 1] >= 2 * MINUTE + MINUTE, "a reset inside the boot grace and backoff"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["beat", "disarm", "silent"]), st.integers(1, 3600)), max_size=60))
def test_no_reset_follows_a_disarm_until_a_heartbeat_arms_again(schedule: list[tuple[str, int]]) -> None:
    # The daemon heartbeats every 30 s, stops cleanly (DISARM), or hangs (silent), for random stretches.
    run = Run(make(heartbeat_timeout_s=60, boot_grace_ms=2 * MINUTE, backoff_base_ms=MINUTE, daily_cap=50))
    events: list[tuple[int, str]] = []
    for what, seconds in schedule:
        end = run.now + seconds * 1000
        if what == "disarm":
            run.disarm()
            events.append((run.now, what))
        while what == "beat" and run.now + 30_000 <= end:
            run.heartbeat()
            events.append((run.now, what))
            run.step_to(run.now + 30_000)
        run.step_to(end)
    for t in run.reset_starts:
        before = [e for e in events if e[0] < t]
        assert before and before[-1][1] == "beat", (t, before[-3:])
    armed = False
    logged = 0
    for _, what in events:
        logged += what == "disarm" and armed
        armed = what == "beat"
    in_log = [e[0] for e in run.sup.log].count(core.CAUSE_DISARMED)
    if run.sup.log_serial <= len(run.sup.log):  # nothing fell off the log's end
        assert in_log == logged, ("one entry per disarm of an armed watchdog", run.sup.log)
    else:
        assert in_log <= logged, run.sup.log


def test_the_backoff_doubles_up_to_its_ceiling() -> None:
    run = Run(
        make(
            heartbeat_timeout_s=60,
            boot_grace_ms=0,
            backoff_base_ms=MINUTE,
            backoff_max_ms=8 * MINUTE,
            daily_cap=20,
        )
    )
    run.heartbeat()
    run.step_to(2 * HOUR)
    gaps = [b - a for a, b in itertools.pairwise(run.reset_starts)]
    assert gaps[:6] == [MINUTE, 2 * MINUTE, 4 * MINUTE, 8 * MINUTE, 8 * MINUTE, 8 * MINUTE]


def test_the_cap_holds_resets_back_for_a_rolling_day_and_logs_the_first_one_it_holds() -> None:
    run = Run(make(heartbeat_timeout_s=60, boot_grace_ms=MINUTE, backoff_base_ms=MINUTE, daily_cap=3))
    run.heartbeat()
    run.step_to(DAY + 30 * MINUTE)
    s = 1000
    # 60 s after the heartbeat, then grace + 1, 2 min; the fourth waits for the first to be a day
    # old; later ones follow the backoff (8, 16 min) while no window of 24 h holds more than 3.
    assert run.reset_starts == [60 * s, 180 * s, 360 * s, DAY + 60 * s, DAY + 600 * s, DAY + 1620 * s]
    causes = [entry[0] for entry in run.sup.log]
    assert causes.count(core.CAUSE_CAPPED) == 1
    capped = run.sup.log[causes.index(core.CAUSE_CAPPED)]
    assert capped[2] == 660, "logged when the fourth reset was due (uptime 660 s)"


def test_a_retransmitted_request_gets_its_own_reply_again_and_acts_once() -> None:
    run = Run(make())
    run.sup.receive(wire.power_cycle_modem(9, wire.ModemProfile.SIM800), 0)
    first = run.sup.take_output()
    run.step_to(1000)
    run.heartbeat()  # another reply in between
    run.sup.receive(wire.power_cycle_modem(9, wire.ModemProfile.SIM800), run.now)
    assert run.sup.take_output() == first
    causes = [entry[0] for entry in run.sup.log]
    assert causes.count(core.CAUSE_MODEM_POWER_CYCLE) == 1
    run.step_to(6_000)  # past the repeat window, the same seq is a new request (BUSY: one runs)
    run.sup.receive(wire.power_cycle_modem(9, wire.ModemProfile.SIM800), run.now)
    (frame,) = wire.FrameDecoder().feed(run.sup.take_output(), 0)
    busy = wire.parse_reply(frame)
    assert isinstance(busy, wire.PowerCycleStarted) and busy.status == wire.Status.BUSY
