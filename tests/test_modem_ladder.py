"""The recovery ladder policy with made-up wall-clock time: escalation, rate limits, the daily
reboot cap, the episode closing after a stable period, and the state surviving a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvrlink.modem.ladder import (
    DAY_S,
    Fault,
    FaultKind,
    Ladder,
    LadderConfig,
    LadderFile,
    LadderState,
    RunStep,
    Step,
    WaitUntil,
)

T0 = 1_700_000_000.0
AT_DEAD = Fault(FaultKind.AT_UNRESPONSIVE, "no answer to AT", at_alive=False)
DATA = Fault(FaultKind.DATA_PATH, "probe failed", at_alive=True)
NO_LIMITS = LadderConfig(min_interval_s=(0.0,) * 8, stable_s=100.0, round_pause_s=50.0)


def take(ladder: Ladder, fault: Fault, now: float) -> Step:
    decision = ladder.decide(fault, now)
    assert isinstance(decision, RunStep), decision
    ladder.started(decision.step, fault.reason, now)
    return decision.step


def test_escalates_one_step_per_fault_while_the_episode_is_open() -> None:
    ladder = Ladder(NO_LIMITS)
    steps = [take(ladder, DATA, T0 + i) for i in range(6)]
    assert steps == [
        Step.REATTACH,
        Step.CFUN_CYCLE,
        Step.MODEM_RESET,
        Step.USB_RESET,
        Step.POWER_CYCLE,
        Step.BOARD_REBOOT,
    ]


def test_at_steps_are_skipped_when_the_modem_does_not_answer() -> None:
    ladder = Ladder(NO_LIMITS)
    assert [take(ladder, AT_DEAD, T0 + i) for i in range(3)] == [
        Step.RESYNC,
        Step.REOPEN_PORT,
        Step.USB_RESET,
    ]


def test_success_closes_the_episode_only_after_the_stable_period() -> None:
    ladder = Ladder(NO_LIMITS)
    assert take(ladder, DATA, T0) is Step.REATTACH
    ladder.online(T0 + 1)
    assert not ladder.tick(T0 + 50)
    # failing again before the stable period: the re-attach did not really fix it
    ladder.offline()
    assert take(ladder, DATA, T0 + 60) is Step.CFUN_CYCLE
    ladder.online(T0 + 61)
    assert ladder.next_deadline() == T0 + 161
    assert ladder.tick(T0 + 161)
    assert ladder.episode_step is None
    assert take(ladder, DATA, T0 + 200) is Step.REATTACH


def test_rate_limit_waits_instead_of_skipping_to_a_heavier_step() -> None:
    config = LadderConfig(min_interval_s=(0, 5, 30, 60, 120, 300, 600, 3600), stable_s=10.0)
    ladder = Ladder(config)
    assert take(ladder, DATA, T0) is Step.REATTACH
    ladder.online(T0 + 1)
    assert ladder.tick(T0 + 11)
    decision = ladder.decide(DATA, T0 + 12)
    assert isinstance(decision, WaitUntil) and decision.until == T0 + 30
    assert "rate limit" in decision.reason
    assert take(ladder, DATA, T0 + 30) is Step.REATTACH


def test_board_reboots_are_capped_per_day_then_the_ladder_starts_over() -> None:
    config = LadderConfig(
        min_interval_s=(0.0,) * 8,
        reboots_per_day=1,
        round_pause_s=50.0,
        enabled=frozenset({Step.BOARD_REBOOT}),
    )
    ladder = Ladder(config)
    assert take(ladder, DATA, T0) is Step.BOARD_REBOOT
    decision = ladder.decide(DATA, T0 + 10)
    assert isinstance(decision, WaitUntil) and decision.until == T0 + 60
    # still capped after the pause, within the day
    assert isinstance(ladder.decide(DATA, T0 + 60), WaitUntil)
    assert take(ladder, DATA, T0 + DAY_S + 1) is Step.BOARD_REBOOT


def test_state_survives_a_restart_and_a_corrupt_file_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "ladder.json"
    ladder = Ladder(NO_LIMITS)
    take(ladder, AT_DEAD, T0)
    take(ladder, AT_DEAD, T0 + 1)
    LadderFile(path).save(ladder.state, T0 + 2)
    again = Ladder(NO_LIMITS, LadderFile(path).load())
    assert again.episode_step is Step.REOPEN_PORT
    assert [e.step for e in again.history] == [Step.RESYNC, Step.REOPEN_PORT]
    assert take(again, AT_DEAD, T0 + 3) is Step.USB_RESET
    path.write_text('{"version": 1, "episode_step": 99}')
    assert LadderFile(path).load() == LadderState()
    assert (tmp_path / "ladder.json.corrupt").exists()


def test_a_clock_stepped_back_does_not_block_recovery() -> None:
    config = LadderConfig(min_interval_s=(0, 3600, 3600, 3600, 3600, 3600, 3600, 3600), stable_s=1.0)
    ladder = Ladder(config)
    take(ladder, DATA, T0)
    ladder.online(T0)
    assert ladder.tick(T0 + 2)
    # NTP moved the clock back an hour: the limit passes rather than blocking for two hours
    assert take(ladder, DATA, T0 - 3600) is Step.REATTACH


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="8 values"):
        LadderConfig(min_interval_s=(1.0,))
    with pytest.raises(ValueError, match="reboots_per_day"):
        LadderConfig(reboots_per_day=-1)
