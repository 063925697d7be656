"""The viewer's side of alarms without I/O: the SSE framing, the JSON checks, the printed line."""

from __future__ import annotations

import datetime

import pytest

from dvrlink.viewer.events import AlarmEvent, SseMessage, SseParser, alarm_from_sse, parse_alarm, render_alarm

ALARM = {
    "id": 42,
    "serial": "DL-0042-0001",
    "seq": 7,
    "time": 1780000000.123,
    "received_at": 1780000000.2,
    "kind": "SignalLost",
    "kind_code": 1,
    "channel": 2,
    "detail": "no video",
    "snapshot_size": None,
}


def feed(parser: SseParser, text: str) -> list[SseMessage]:
    return [m for line in text.split("\n") if (m := parser.feed(line)) is not None]


def test_sse_messages_comments_and_the_last_id() -> None:
    parser = SseParser()
    stream = 'retry: 2000\n: following\n\nid: 1\nevent: alarm\ndata: {"a":\ndata: 1}\n\n: keepalive\n\n'
    assert feed(parser, stream) == [SseMessage("alarm", '{"a":\n1}', "1")]
    assert parser.last_id == "1"
    assert feed(parser, "data: plain\n\n") == [SseMessage("message", "plain", None)]


def test_an_alarm_line_has_time_serial_kind_channel_and_detail() -> None:
    alarm = parse_alarm(ALARM)
    line = render_alarm(alarm, datetime.UTC)
    assert line == "2026-05-28 20:26:40.123  DL-0042-0001  SignalLost  channel 2  no video"
    no_channel = AlarmEvent(1, "DL-1", 1, 0.0, "DiskError", None, "", 9000)
    assert render_alarm(no_channel, datetime.UTC) == (
        "1970-01-01 00:00:00.000  DL-1  DiskError  [snapshot 9000 bytes, id 1]"
    )


def test_malformed_alarms_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'seq' is missing or not int"):
        parse_alarm({**ALARM, "seq": "7"})
    with pytest.raises(ValueError, match="not JSON"):
        alarm_from_sse(SseMessage("alarm", "{", "1"))
    assert alarm_from_sse(SseMessage("other", "{}", None)) is None
