"""The pure parts of the daemon's supervisor service: which reset log entries are new, the alarm
each raises, the profile for each modem, and the words ``dvrlinkd status`` uses."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvrlink.daemon.config import BoardConfig
from dvrlink.daemon.status import describe_reset, format_supervisor
from dvrlink.daemon.supervisor_service import Entry, alarm_for, new_entries, supervisor_profile
from dvrlink.protocol import supervisor_wire as wire
from dvrlink.protocol.alarm_wire import AlarmKind

RESET = (1, 1_800_000_000, 500, 120)
START = (4, 0, 0, 1)
CYCLE = (3, 1_800_000_100, 600, 0)


def test_new_entries_are_those_before_the_log_last_seen() -> None:
    assert new_entries([], [RESET, START]) == [RESET, START], "first start: all of it"
    assert new_entries([RESET, START], [RESET, START]) == []
    assert new_entries([RESET, START], [CYCLE, RESET, START]) == [CYCLE]
    full = [(1, 0, n, 120) for n in range(16)]
    assert new_entries(full, [CYCLE, *full[:15]]) == [CYCLE], "the oldest fell off the end"
    assert new_entries([START], [START, START]) == [START], "the same words twice: one is new"


@given(
    st.lists(
        st.tuples(st.integers(1, 5), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), max_size=24
    )
)
def test_a_log_that_grows_reports_each_entry_once(stream: list[Entry]) -> None:
    # The log keeps the newest 16, newest first; reading it after every entry reports each once.
    reported: list[Entry] = []
    seen: list[Entry] = []
    for n in range(1, len(stream) + 1):
        log = list(reversed(stream[:n]))[:16]
        reported += new_entries(seen, log)
        seen = log
    assert len(reported) == len(stream)


def test_each_cause_raises_its_alarm() -> None:
    assert alarm_for(RESET, None) == (
        AlarmKind.SUPERVISOR_RESET,
        "the supervisor reset the board after 120 s without a heartbeat",
    )
    kind, detail = alarm_for(START, 11_800) or (None, "")
    assert kind is AlarmKind.BROWN_OUT and "supply now at least 11.8 V" in detail
    assert alarm_for(CYCLE, None) is None, "the daemon asked for it"
    assert alarm_for((4, 0, 0, 3), None) == (
        AlarmKind.SUPERVISOR_RESET,
        "the supervisor's own watchdog restarted it",
    )
    capped = alarm_for((5, 0, 9, 700), None)
    assert capped is not None and "daily cap" in capped[1]


def test_the_profile_follows_the_modem_and_the_power_switch() -> None:
    assert supervisor_profile(BoardConfig(), "simcom-sim800") is wire.ModemProfile.SIM800
    assert supervisor_profile(BoardConfig(), "quectel-uc20") is wire.ModemProfile.QUECTEL_EC2X_UC20
    cut = BoardConfig(supervisor_power_cut=True)
    assert supervisor_profile(cut, "quectel-ec25") is wire.ModemProfile.QUECTEL_POWER_CUT
    named = BoardConfig(supervisor_modem="sim800")
    assert supervisor_profile(named, "huawei-e173") is wire.ModemProfile.SIM800
    with pytest.raises(RuntimeError, match='set \\[board\\] supervisor_modem = "sim800"'):
        supervisor_profile(BoardConfig(), "huawei-e173")


def test_status_says_the_last_reset_in_words() -> None:
    at = time.mktime((2026, 12, 7, 3, 12, 0, 0, 0, -1))
    entry = {"cause": 1, "unix_time": int(at), "uptime_s": 500, "detail": 120}
    assert describe_reset(entry, at + 3600) == (
        "the supervisor reset this board at 03:12 after 120 s without a heartbeat"
    )
    assert describe_reset(entry, at + 2 * 86400).startswith(
        "the supervisor reset this board at 2026-12-07 03:12"
    )
    assert describe_reset({"cause": 4, "unix_time": 0, "uptime_s": 0, "detail": 1}, at) == (
        "the supervisor started at an unknown time (0 s into the supervisor's run; no heartbeat had "
        "told it the time): power-on: the board's supply was cut or failed"
    )
    lines = format_supervisor(
        {
            "port": "/dev/ttyS2",
            "firmware": "1.0.0",
            "supply_mv": 12010,
            "min_supply_mv": 10950,
            "timeout_s": 120,
            "resets_24h": 0,
            "problem": "",
            "last_reset": entry,
        },
        at + 60,
    )
    assert lines == [
        "supervisor /dev/ttyS2: firmware 1.0.0, supply 12.01 V (lowest 10.95 V since it started), "
        "resets the board after 120 s without a heartbeat",
        "  last reset: the supervisor reset this board at 03:12 after 120 s without a heartbeat",
    ]
    assert format_supervisor({}, at) == []
    silent = format_supervisor({"port": "/dev/ttyS2", "problem": "no reply"}, at)
    assert silent == ["supervisor /dev/ttyS2: not read yet", "  not answering: no reply"]


def test_a_disarm_is_no_alarm_and_status_names_the_clean_stop() -> None:
    at = int(time.mktime((2026, 12, 7, 9, 30, 0, 0, 0, -1)))
    disarm = (int(wire.ResetCause.DISARMED), at, 900, 4)
    assert alarm_for(disarm, None) is None, "a deliberate stop is not a fault"
    entry = {"cause": 6, "unix_time": at, "uptime_s": 900, "detail": 4}
    assert describe_reset(entry, at + 60) == (
        "disarmed by the daemon at 09:30 (dvrlinkd stopped on purpose; not a reset)"
    )
    lines = format_supervisor({"port": "/dev/ttyS2", "firmware": "1.1.0", "last_disarm": entry}, at + 60)
    assert (
        lines[-1] == "  last stop: disarmed by the daemon at 09:30 (dvrlinkd stopped on purpose; not a reset)"
    )
