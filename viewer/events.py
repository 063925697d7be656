"""Alarms as the viewer reads them: the API's JSON, the Server-Sent Events framing, and the one
line ``dvrlink events`` prints per alarm. No I/O."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One alarm (``Alarm`` in the broker's OpenAPI document)."""

    id: int
    serial: str
    seq: int
    time: float
    kind: str
    channel: int | None
    detail: str
    snapshot_size: int | None


def parse_alarm(data: Any) -> AlarmEvent:
    """Check one ``Alarm`` object.

    Raises:
        ValueError: not an object, or a field missing or of the wrong type (named).
    """
    if not isinstance(data, dict):
        raise ValueError("an alarm is not a JSON object")

    def field(name: str, kinds: tuple[type, ...], nullable: bool = False) -> Any:
        value = data.get(name)
        if value is None and nullable:
            return None
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ValueError(f"alarm field {name!r} is missing or not {kinds[0].__name__}")
        return value

    detail = data.get("detail")
    return AlarmEvent(
        field("id", (int,)),
        field("serial", (str,)),
        field("seq", (int,)),
        float(field("time", (int, float))),
        field("kind", (str,)),
        field("channel", (int,), nullable=True),
        detail if isinstance(detail, str) else "",
        field("snapshot_size", (int,), nullable=True),
    )


def parse_alarm_list(data: Any) -> list[AlarmEvent]:
    """Check a ``{"events": [...]}`` answer. Raises ValueError naming the bad entry."""
    items = data.get("events") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError('field "events" is missing or not a list')
    out = []
    for index, item in enumerate(items):
        try:
            out.append(parse_alarm(item))
        except ValueError as exc:
            raise ValueError(f"alarm #{index + 1}: {exc}") from exc
    return out


def render_alarm(alarm: AlarmEvent, tz: datetime.tzinfo | None = None) -> str:
    """``2026-12-06 23:50:01.123  DL-0001  SignalLost  channel 2  cable cut`` (local time unless
    ``tz``), without a newline."""
    when = datetime.datetime.fromtimestamp(alarm.time, tz or datetime.UTC)
    if tz is None:
        when = when.astimezone()
    parts = [
        when.strftime("%Y-%m-%d %H:%M:%S.") + f"{when.microsecond // 1000:03d}",
        alarm.serial,
        alarm.kind,
    ]
    if alarm.channel is not None:
        parts.append(f"channel {alarm.channel}")
    if alarm.detail:
        parts.append(alarm.detail)
    if alarm.snapshot_size:
        parts.append(f"[snapshot {alarm.snapshot_size} bytes, id {alarm.id}]")
    return "  ".join(parts)


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One Server-Sent Events message."""

    event: str
    data: str
    id: str | None


class SseParser:
    """Feed lines of a ``text/event-stream`` (without their line ends); take messages."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None
        """The last ``id:`` seen (a reconnect sends it as ``Last-Event-ID``)."""

    def feed(self, line: str) -> SseMessage | None:
        """One line; a blank line completes a message (returned), comments are skipped."""
        if not line:
            if not self._data:
                self._event, self._id = "", None
                return None
            message = SseMessage(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = self.last_id = value
        return None


def alarm_from_sse(message: SseMessage) -> AlarmEvent | None:
    """The alarm of an ``alarm`` message, or None for another event.

    Raises:
        ValueError: an ``alarm`` message whose data is not an ``Alarm``.
    """
    if message.event != "alarm":
        return None
    try:
        data = json.loads(message.data)
    except ValueError as exc:
        raise ValueError(f"alarm data is not JSON ({exc})") from exc
    return parse_alarm(data)
