"""The report policy: first report, categorical changes, signal and data steps, spacing, refresh."""

from __future__ import annotations

import pytest

from dvrlink.daemon.reporting import DueReport, Reporter, ReportPolicy
from dvrlink.protocol.presence_report import DeviceReport

POLICY = ReportPolicy(min_interval_s=60, refresh_s=3600, signal_step_db=6, data_step_bytes=1_000_000)


def sent_at(reporter: Reporter, now: float) -> DueReport | None:
    due = reporter.due(now)
    if due is not None:
        reporter.sent(due.report, now)
    return due


def test_nothing_known_nothing_sent_then_the_first_report_goes() -> None:
    reporter = Reporter(POLICY)
    assert reporter.due(0) is None
    reporter.update(keepalive_s=25, presence_transport="udp", signal_dbm=None)
    due = sent_at(reporter, 0)
    assert due == DueReport(DeviceReport(keepalive_s=25, presence_transport="udp"), urgent=False)
    assert reporter.due(1) is None


def test_small_changes_wait_big_ones_go_after_the_minimum_spacing() -> None:
    reporter = Reporter(POLICY)
    reporter.update(signal_dbm=-80, data_used=0, rat="lte")
    assert sent_at(reporter, 0) is not None
    reporter.update(signal_dbm=-83, data_used=500_000)
    assert reporter.due(100) is None  # under both steps
    reporter.update(signal_dbm=-90)
    assert reporter.due(30) is None  # a step, but within min_interval_s
    assert sent_at(reporter, 61) == DueReport(reporter.current, urgent=False)
    reporter.update(data_used=1_600_000)
    assert reporter.due(100) is None
    assert sent_at(reporter, 125) is not None  # 1.1 MB more than last sent
    reporter.update(rat="umts")
    assert sent_at(reporter, 190) is not None  # categorical


def test_a_modem_state_change_is_urgent_even_within_the_spacing() -> None:
    reporter = Reporter(POLICY)
    reporter.update(modem_state="online")
    sent_at(reporter, 0)
    reporter.update(modem_state="searching")
    assert sent_at(reporter, 5) == DueReport(DeviceReport(modem_state="searching"), urgent=True)


def test_an_unchanged_report_is_refreshed_hourly() -> None:
    reporter = Reporter(POLICY)
    reporter.update(keepalive_s=25)
    sent_at(reporter, 0)
    assert reporter.due(3599) is None
    assert sent_at(reporter, 3600) is not None


def test_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Reporter().update(colour="red")
