"""A device that gets no usable answer to its registration says so, and why (sans-I/O).

A wrong pinned broker key used to mean silence: the device sat in ``register-wait``, the broker
logged nothing. Now the device core reports each failed attempt with what it saw (no COOKIE, or
handshake replies that do not open with the pinned key), and the broker reports a device that
registers again without ever having used its last session.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.presence import Lab

from dvrlink.broker.device_events import UNCONFIRMED_LOG_INTERVAL_S, DeviceEventHandler
from dvrlink.broker.registry import Registry
from dvrlink.protocol.presence_client import ClientState
from dvrlink.protocol.presence_events import (
    HandshakeUnanswered,
    Registered,
    RegistrationUnconfirmed,
)
from dvrlink.protocol.presence_wire import RefuseReason

SERIAL = "DL-0005-0001"
WRONG_KEY = bytes(range(100, 132))
ATTEMPT = 2.0 * 3  # the harness's reply_timeout (2 s) times 1 + retries (2)


def of_type(events: list[object], kind: type) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def test_a_wrong_broker_key_is_reported_within_the_first_attempt() -> None:
    lab = Lab(interval=20.0)
    dev = lab.add_device(SERIAL, broker_key=WRONG_KEY)
    lab.start_all()
    assert dev.client.state is ClientState.REGISTER_WAIT
    lab.advance(ATTEMPT + 0.1)  # the first attempt is over; the retry has not started
    assert dev.client.state is ClientState.BACKOFF
    reports = of_type(dev.events, HandshakeUnanswered)
    assert len(reports) == 1, f"no report of the failed attempt: {dev.events}"
    report = reports[0]
    assert report.stage == "register"
    assert report.tries == 3
    assert report.unverified == 3, "the broker's REGISTERED (3 times) did not open with the pinned key"
    assert report.waited == ATTEMPT
    assert not of_type(dev.events, Registered)


def test_the_broker_notes_a_device_that_never_uses_its_session() -> None:
    lab = Lab(interval=20.0)
    dev = lab.add_device(SERIAL, broker_key=WRONG_KEY)
    lab.start_all()
    assert not of_type(lab.server_events, RegistrationUnconfirmed)
    lab.advance(ATTEMPT + lab.interval)  # backoff is at most one interval: the second attempt
    assert len(of_type(dev.events, HandshakeUnanswered)) >= 1
    unconfirmed = of_type(lab.server_events, RegistrationUnconfirmed)
    assert unconfirmed, f"the broker did not notice: {lab.server_events}"
    assert unconfirmed[0].serial == SERIAL
    assert unconfirmed[0].address == dev.address


def test_a_broker_that_does_not_answer_at_all_is_reported_at_the_hello_stage() -> None:
    lab = Lab(interval=20.0)
    dev = lab.add_device(SERIAL)
    lab.broker_up = False  # a wrong port: nothing answers
    lab.start_all()
    lab.advance(ATTEMPT + 0.1)
    reports = of_type(dev.events, HandshakeUnanswered)
    assert [(r.stage, r.tries, r.unverified) for r in reports] == [("hello", 3, 0)], dev.events


def test_a_device_with_the_right_key_reports_nothing_and_the_broker_neither() -> None:
    lab = Lab(interval=20.0)
    dev = lab.add_device(SERIAL)
    lab.start_all()
    lab.advance(3 * lab.interval)
    assert not of_type(dev.events, HandshakeUnanswered)
    assert not of_type(lab.server_events, RegistrationUnconfirmed)
    assert dev.client.state is ClientState.ONLINE


class Core:
    """The calls ``DeviceEventHandler`` makes on the presence core (none for this event)."""

    public_key = bytes(32)

    def accept(self, handle: int, now: float, wall: float | None = None) -> None:
        raise AssertionError("not expected")

    def refuse(self, handle: int, reason: RefuseReason, message: str, now: float) -> None:
        raise AssertionError("not expected")


def test_the_broker_logs_one_quiet_line_per_device_and_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wall = [1000.0]
    registry = Registry(tmp_path / "registry.sqlite3")
    try:
        handler = DeviceEventHandler(Core(), registry, False, lambda: 0.0, lambda: wall[0], lambda e: None)
        caplog.set_level(logging.INFO, logger="dvrlink.broker.device_events")
        event = RegistrationUnconfirmed(SERIAL, ("192.0.2.9", 4000), 10.0)
        for _ in range(5):
            handler(event)
            wall[0] += 10.0
        lines = [r for r in caplog.records if SERIAL in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert lines[0].levelno == logging.WARNING and "\n" not in lines[0].getMessage()
        assert "another broker key" in lines[0].getMessage() and lines[0].exc_info is None
        wall[0] += UNCONFIRMED_LOG_INTERVAL_S
        handler(event)
        lines = [r.getMessage() for r in caplog.records if SERIAL in r.getMessage()]
        assert len(lines) == 2 and "4 more since the last" in lines[1], lines
    finally:
        registry.close()
