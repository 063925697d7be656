"""Resynchronisation after a timeout against a modem that answers in order, but late.

Whatever probe the engine writes, a modem that answers its commands one after another (the
timed-out command's late result first, if it owes one) must never have a result taken for the
wrong command. Issue 10, defect 18: with an ``AT`` probe and a 0.3 s settle, a late ``OK`` that
came 0.65 s after the timeout completed the next command (``AT+COPS?``) with no lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from dvrlink.protocol.at_engine import AtEngine
from dvrlink.protocol.at_events import CommandCompleted, CommandEvent, CommandTimedOut

COPS = '+COPS: 0,0,"Net",7'
ANSWERS: dict[str, list[str]] = {
    "AT": ["OK"],
    "AT+CMEE?": ["+CMEE: 1", "OK"],
    "AT+CSCS?": ['+CSCS: "IRA"', "OK"],
    "AT+COPS?": [COPS, "OK"],
}


@dataclass
class SequentialModem:
    """Takes written commands in order and answers each one after its delay, never two at once."""

    late_reply: list[str] | None  # the timed-out AT+CSQ's late answer, or None: it was lost
    late_after: float
    delays: list[float]
    free_at: float = 0.0
    received: int = 0
    outbox: list[tuple[float, list[str]]] = field(default_factory=list)

    def write(self, data: bytes, now: float) -> None:
        for raw in data.split(b"\r")[:-1]:
            command = raw.decode()
            self.received += 1
            if self.received == 1:  # AT+CSQ: hangs past its timeout, then answers late (or never)
                self.free_at = now + 3.0 + self.late_after
                if self.late_reply is not None:
                    self.outbox.append((self.free_at, self.late_reply))
                continue
            delay = self.delays[(self.received - 2) % len(self.delays)]
            self.free_at = max(self.free_at, now) + delay
            self.outbox.append((self.free_at, ANSWERS.get(command, ["ERROR"])))

    def next_time(self) -> float | None:
        return min((at for at, _ in self.outbox), default=None)

    def take(self, now: float) -> bytes:
        due = [lines for at, lines in self.outbox if at <= now]
        self.outbox = [(at, lines) for at, lines in self.outbox if at > now]
        return b"".join(f"\r\n{line}\r\n".encode() for lines in due for line in lines)


@settings(max_examples=300, deadline=None)
@given(
    late_reply=st.sampled_from([None, ["OK"], ["+CSQ: 20,99", "OK"], ["ERROR"]]),
    late_after=st.floats(0.0, 2.0),
    delays=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=4),
    cops_at=st.floats(3.0, 6.0),
)
def test_a_late_result_is_never_taken_for_the_next_command(
    late_reply: list[str] | None, late_after: float, delays: list[float], cops_at: float
) -> None:
    engine = AtEngine()
    modem = SequentialModem(late_reply, late_after, delays)
    now = 0.0
    engine.submit("AT+CSQ", now)
    modem.write(engine.data_to_send(), now)
    cops_id: int | None = None
    events: list[CommandEvent] = []
    wire: list[str] = []
    while now < 120.0 and not any(e.command_id == cops_id for e in events):
        times = [t for t in (engine.next_deadline(), modem.next_time()) if t is not None]
        if cops_id is None:
            times.append(cops_at)
        now = max(now, min(times))
        if cops_id is None and now >= cops_at:
            cops_id = engine.submit("AT+COPS?", now)
        engine.tick(now)
        answer = modem.take(now)
        if answer:
            wire.append(f"{now:.2f} <- {answer!r}")
            engine.feed(answer, now)
        written = engine.data_to_send()
        if written:
            wire.append(f"{now:.2f} -> {written!r}")
            modem.write(written, now)
        while (event := engine.next_event()) is not None:
            if isinstance(event, CommandEvent):
                events.append(event)
    trace = "\n".join(wire)
    assert isinstance(events[0], CommandTimedOut), f"AT+CSQ: {events[0]}\n{trace}"
    cops = [e for e in events if e.command_id == cops_id]
    assert cops, f"AT+COPS? never finished by {now:.1f} s\n{trace}"
    assert isinstance(cops[0], CommandCompleted) and cops[0].lines == (COPS,), (
        f"AT+COPS? got {cops[0]}: a result that was not its own\n{trace}"
    )
