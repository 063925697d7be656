"""Data accounting: billing cycles, batched writes, per-ICCID counters, cap events, corrupt file."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dvrlink.modem.accounting import (
    AccountingConfig,
    AccountingLedger,
    CapCleared,
    CapLevel,
    CapReached,
    CapWarning,
    CycleStarted,
    CycleUsage,
    DataAccounting,
    cycle_start,
    next_cycle_start,
)

SIM_A = "89490200001111111111"
SIM_B = "89490200002222222222"


def at(y: int, m: int, d: int, hour: int = 12) -> datetime:
    return datetime(y, m, d, hour, tzinfo=UTC)


class CountingWriter:
    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, path: Path, data: bytes) -> None:
        self.calls.append(data)
        path.write_bytes(data)


# ---------------------------------------------------------------------------------------- cycles


@pytest.mark.parametrize(
    ("today", "start_day", "expected"),
    [
        (date(2026, 3, 15), 1, date(2026, 3, 1)),
        (date(2026, 3, 14), 15, date(2026, 2, 15)),
        (date(2026, 3, 15), 15, date(2026, 3, 15)),
        (date(2026, 1, 5), 10, date(2025, 12, 10)),  # across the year
        (date(2026, 2, 28), 31, date(2026, 2, 28)),  # February has no 31st: its last day
        (date(2026, 2, 27), 31, date(2026, 1, 31)),
        (date(2026, 3, 1), 31, date(2026, 2, 28)),
        (date(2026, 3, 30), 31, date(2026, 2, 28)),
        (date(2026, 3, 31), 31, date(2026, 3, 31)),
        (date(2028, 2, 29), 30, date(2028, 2, 29)),  # leap year
        (date(2026, 4, 30), 31, date(2026, 4, 30)),
    ],
)
def test_cycle_start(today: date, start_day: int, expected: date) -> None:
    assert cycle_start(today, start_day) == expected


def test_next_cycle_start_with_short_months() -> None:
    starts = [date(2026, 1, 31)]
    for _ in range(4):
        starts.append(next_cycle_start(starts[-1], 31))
    assert starts == [
        date(2026, 1, 31),
        date(2026, 2, 28),
        date(2026, 3, 31),
        date(2026, 4, 30),
        date(2026, 5, 31),
    ]
    assert next_cycle_start(date(2026, 12, 5), 5) == date(2027, 1, 5)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="1 to 31"):
        AccountingConfig(cycle_start_day=0)
    with pytest.raises(ValueError, match="warn_fraction"):
        AccountingConfig(warn_fraction=1.5)


# ------------------------------------------------------------------------------------------ core


def test_rollover_on_day_31_in_february_keeps_history() -> None:
    acc = DataAccounting(AccountingConfig(cycle_start_day=31))
    assert acc.record(SIM_A, 100, 10, at(2026, 2, 27)) == [CycleStarted(SIM_A, date(2026, 1, 31), None)]
    assert acc.record(SIM_A, 5, 5, at(2026, 2, 27, 23)) == []
    events = acc.record(SIM_A, 1, 2, at(2026, 2, 28, 0))
    assert events == [CycleStarted(SIM_A, date(2026, 2, 28), CycleUsage(date(2026, 1, 31), 105, 15))]
    assert acc.usage(SIM_A) == CycleUsage(date(2026, 2, 28), 1, 2)
    assert acc.history(SIM_A) == (CycleUsage(date(2026, 1, 31), 105, 15),)


def test_cycle_uses_the_callers_time_zone() -> None:
    acc = DataAccounting(AccountingConfig(cycle_start_day=1))
    instant = datetime(2026, 3, 31, 22, tzinfo=UTC)  # already 1 April in UTC+3
    acc.record(SIM_A, 1, 0, instant.astimezone(timezone(timedelta(hours=3))))
    assert acc.usage(SIM_A) == CycleUsage(date(2026, 4, 1), 1, 0)
    acc.record(SIM_B, 1, 0, instant)
    assert acc.usage(SIM_B) == CycleUsage(date(2026, 3, 1), 1, 0)
    with pytest.raises(ValueError, match="time zone"):
        acc.record(SIM_A, 1, 0, datetime(2026, 4, 1))
    with pytest.raises(ValueError, match="negative"):
        acc.record(SIM_A, -1, 0, at(2026, 4, 1))


def test_iccids_are_kept_apart_on_sim_swap() -> None:
    acc = DataAccounting(AccountingConfig(monthly_cap_bytes=1000))
    acc.record(SIM_A, 500, 300, at(2026, 5, 2))
    events = acc.record(SIM_B, 10, 10, at(2026, 5, 3))  # SIM swapped
    assert events == [CycleStarted(SIM_B, date(2026, 5, 1), None)]
    acc.record(SIM_A, 50, 0, at(2026, 5, 4))  # swapped back
    assert acc.usage(SIM_A) == CycleUsage(date(2026, 5, 1), 550, 300)
    assert acc.usage(SIM_B) == CycleUsage(date(2026, 5, 1), 10, 10)
    assert acc.cap_level(SIM_A) is CapLevel.WARN
    assert acc.cap_level(SIM_B) is CapLevel.NORMAL


def test_cap_warns_then_stops_once_each_and_clears_next_cycle() -> None:
    acc = DataAccounting(AccountingConfig(monthly_cap_bytes=1000, warn_fraction=0.8))
    acc.record(SIM_A, 700, 0, at(2026, 6, 1))
    assert acc.record(SIM_A, 50, 49, at(2026, 6, 2)) == []  # 799
    assert acc.record(SIM_A, 1, 0, at(2026, 6, 3)) == [CapWarning(SIM_A, date(2026, 6, 1), 800, 1000)]
    assert acc.record(SIM_A, 100, 0, at(2026, 6, 4)) == []
    assert acc.record(SIM_A, 0, 100, at(2026, 6, 5)) == [CapReached(SIM_A, date(2026, 6, 1), 1000, 1000)]
    assert acc.record(SIM_A, 5000, 0, at(2026, 6, 6)) == []
    assert acc.cap_level(SIM_A) is CapLevel.STOP
    events = acc.record(SIM_A, 0, 0, at(2026, 7, 1))
    assert events == [
        CycleStarted(SIM_A, date(2026, 7, 1), CycleUsage(date(2026, 6, 1), 5851, 149)),
        CapCleared(SIM_A, date(2026, 7, 1)),
    ]
    assert acc.cap_level(SIM_A) is CapLevel.NORMAL


def test_jump_over_both_thresholds_raises_both_events() -> None:
    acc = DataAccounting(AccountingConfig(monthly_cap_bytes=100))
    events = acc.record(SIM_A, 150, 0, at(2026, 6, 1))
    assert [type(e) for e in events] == [CycleStarted, CapWarning, CapReached]


# ---------------------------------------------------------------------------------------- ledger


def test_batching_counts_actual_writes(tmp_path: Path) -> None:
    writer = CountingWriter()
    config = AccountingConfig(flush_bytes=10_000, flush_interval_s=600)
    ledger = AccountingLedger(tmp_path / "data.json", config, writer=writer)
    ledger.load()
    t = at(2026, 6, 1)
    ledger.record(SIM_A, 100, 100, t)  # first sight of a SIM: written at once
    assert len(writer.calls) == 1
    for i in range(1, 40):  # 39 × 200 B = 7800 B over 390 s: below both thresholds
        ledger.record(SIM_A, 100, 100, t + timedelta(seconds=10 * i))
    assert len(writer.calls) == 1
    ledger.record(SIM_A, 1200, 1000, t + timedelta(seconds=400))  # 10 000 B since the last write
    assert len(writer.calls) == 2
    ledger.record(SIM_A, 1, 0, t + timedelta(seconds=500))
    assert len(writer.calls) == 2
    ledger.record(SIM_A, 1, 0, t + timedelta(seconds=1000))  # 600 s since the last write
    assert len(writer.calls) == 3
    ledger.record(SIM_A, 0, 0, t + timedelta(seconds=5000))  # nothing new: nothing written
    assert len(writer.calls) == 3
    ledger.record(SIM_A, 7, 0, t + timedelta(seconds=5001))
    assert ledger.close(t + timedelta(seconds=5002))
    assert len(writer.calls) == 4
    assert ledger.close(t + timedelta(seconds=5003))  # nothing pending
    assert len(writer.calls) == 4
    assert ledger.writes == 4

    reloaded = AccountingLedger(tmp_path / "data.json", config, writer=writer)
    reloaded.load()
    assert reloaded.core.usage(SIM_A) == CycleUsage(
        date(2026, 6, 1), 100 * 40 + 1200 + 2 + 7, 100 * 40 + 1000
    )


def test_clock_stepping_back_flushes(tmp_path: Path) -> None:
    writer = CountingWriter()
    ledger = AccountingLedger(tmp_path / "data.json", AccountingConfig(), writer=writer)
    ledger.record(SIM_A, 1, 1, at(2026, 6, 1))
    ledger.record(SIM_A, 1, 1, at(2026, 6, 1) + timedelta(minutes=5))
    assert len(writer.calls) == 1
    ledger.record(SIM_A, 1, 1, at(2026, 6, 1, 11))  # NTP stepped the clock back
    assert len(writer.calls) == 2


def test_cap_events_are_written_at_once_and_raised_again_after_restart(tmp_path: Path) -> None:
    writer = CountingWriter()
    config = AccountingConfig(monthly_cap_bytes=1000, flush_bytes=10**9, flush_interval_s=10**6)
    ledger = AccountingLedger(tmp_path / "data.json", config, writer=writer)
    ledger.record(SIM_A, 10, 0, at(2026, 6, 1))
    ledger.record(SIM_A, 990, 0, at(2026, 6, 1, 13))
    assert len(writer.calls) == 2  # the STOP is on disk before optional traffic is stopped
    restarted = AccountingLedger(tmp_path / "data.json", config, writer=writer)
    restarted.load()
    events = restarted.record(SIM_A, 0, 0, at(2026, 6, 2))
    assert [type(e) for e in events] == [CapWarning, CapReached]


def test_sim_swap_is_persisted_per_iccid(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    ledger = AccountingLedger(path, AccountingConfig(), writer=CountingWriter())
    ledger.record(SIM_A, 10, 20, at(2026, 6, 1))
    ledger.record(SIM_B, 1, 2, at(2026, 6, 1))
    ledger.close(at(2026, 6, 1))
    doc = json.loads(path.read_bytes())
    assert doc["sims"][SIM_A]["current"] == {"cycle_start": "2026-06-01", "rx": 10, "tx": 20}
    assert doc["sims"][SIM_B]["current"] == {"cycle_start": "2026-06-01", "rx": 1, "tx": 2}


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff garbage",
        b'{"version": 1, "sims": {"x": {"current": {"cycle_start": "2026-13-01", "rx": 1, "tx": 1}, '
        b'"history": []}}}',
        b'{"version": 1, "sims": {"x": {"current": {"cycle_start": "2026-01-01", "rx": -5, "tx": 1}, '
        b'"history": []}}}',
        b'{"version": 99}',
        b"[]",
    ],
)
def test_corrupt_file_is_kept_aside_and_counting_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(content)
    ledger = AccountingLedger(path, AccountingConfig(), writer=CountingWriter())
    with caplog.at_level(logging.ERROR):
        ledger.load()
    assert "corrupt" in caplog.text and "data.json.corrupt" in caplog.text
    assert (tmp_path / "data.json.corrupt").read_bytes() == content
    ledger.record(SIM_A, 5, 5, at(2026, 6, 1))
    assert ledger.core.usage(SIM_A) == CycleUsage(date(2026, 6, 1), 5, 5)
    assert json.loads(path.read_bytes())["version"] == 1


def test_failed_write_is_logged_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def failing(path: Path, data: bytes) -> None:
        calls.append(len(data))
        if len(calls) == 1:
            raise OSError(28, f"cannot write {path}: No space left on device")
        path.write_bytes(data)

    ledger = AccountingLedger(tmp_path / "data.json", AccountingConfig(flush_bytes=1), writer=failing)
    with caplog.at_level(logging.ERROR):
        ledger.record(SIM_A, 1, 1, at(2026, 6, 1))
    assert "retrying" in caplog.text
    assert ledger.writes == 0
    ledger.record(SIM_A, 1, 1, at(2026, 6, 1, 13))
    assert ledger.writes == 1 and len(calls) == 2
