"""Property tests of the AT engine: replies go to the right command, URCs arrive exactly once,
and no input crashes it.

A model modem answers a random list of commands. Its wire stream has URCs (single and two-line)
at random places, echo on or off per command, some commands answered only after their timeout
(late, with the engine resynchronising in between), and is cut into reads at random points, down
to one byte at a time. The engine's events are then checked against the model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvrlink.modem.profiles import profile_by_name
from dvrlink.protocol.at_engine import AtEngine, EngineState
from dvrlink.protocol.at_events import (
    AtEvent,
    CommandAborted,
    CommandCompleted,
    CommandEvent,
    CommandFailed,
    CommandTimedOut,
    LineDiscarded,
    UrcReceived,
)
from dvrlink.protocol.at_results import FinalKind

PDU = "07911326040000F0040B911346610089F60000208062917314080CC8F71D14969741F977FD07"


@dataclass(frozen=True)
class Exchange:
    command: str
    units: tuple[tuple[str, ...], ...]  # reply lines; a unit is never split by a URC
    final: str
    kind: FinalKind

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(line for unit in self.units for line in unit)


EXCHANGES = (
    Exchange("AT+CSQ", (("+CSQ: 17,99",),), "OK", FinalKind.OK),
    Exchange("AT+CREG?", (('+CREG: 2,1,"00C3","0010A5B7",7',),), "OK", FinalKind.OK),
    Exchange(
        "AT+CGDCONT?",
        (('+CGDCONT: 1,"IP","internet","0.0.0.0",0,0',), ('+CGDCONT: 2,"IPV4V6","ims","0.0.0.0",0,0',)),
        "OK",
        FinalKind.OK,
    ),
    Exchange("AT+CGSN", (("867123456789012",),), "OK", FinalKind.OK),
    Exchange("ATI", (("Quectel",), ("EC25",), ("Revision: EC25EFAR06A06M4G",)), "OK", FinalKind.OK),
    Exchange("AT+CMGR=1", (("+CMGR: 0,,24", PDU),), "OK", FinalKind.OK),
    Exchange("AT+CPIN?", (), "+CME ERROR: 10", FinalKind.CME_ERROR),
    Exchange("AT+CGATT=1", (), "ERROR", FinalKind.ERROR),
    Exchange("AT+COPS?", (('+COPS: 0,0,"Operator",7',),), "OK", FinalKind.OK),
)

URCS: tuple[tuple[str, ...], ...] = (
    ("RING",),
    ("+CREG: 1",),
    ('+CREG: 5,"00C3","0010A5B7",7',),
    ('+CMTI: "SM",3',),
    ("+CGEV: NW DETACH",),
    ('+QIND: "csq",20,99',),
    ("+QIND: SMS DONE",),
    ("+CMT: ,24", PDU),
    ('+CMT: "+31612345678",,"24/05/01,12:00:00+08"', "OK"),
    ('+CMT: "+31612345678",,"24/05/01,12:00:00+08"', "RING"),
    ("+CDS: 25", "07913306092011F006F00B913306123456F8121010712152801210107121538000"),
)


@dataclass(frozen=True)
class Plan:
    exchange: Exchange
    echo: bool
    late: bool
    urc_slots: tuple[tuple[int, tuple[str, ...]], ...]  # (slot, urc) pairs


ECHO = "<echo>"


def wire(stream: list[tuple[bool, tuple[str, ...]]]) -> bytes:
    """V.250 framing: information and result lines in CR LF pairs, the echo as sent."""
    out = b""
    for _, unit in stream:
        if unit[0] == ECHO:
            out += unit[1].encode() + b"\r"
        else:
            out += b"".join(b"\r\n" + line.encode() + b"\r\n" for line in unit)
    return out


def place(
    units: list[tuple[str, ...]], slots: tuple[tuple[int, tuple[str, ...]], ...]
) -> list[tuple[bool, tuple[str, ...]]]:
    """Insert URC units between the units; slot i is before unit i. Returns (is_urc, unit)."""
    out: list[tuple[bool, tuple[str, ...]]] = []
    for index in range(len(units) + 1):
        out.extend((True, urc) for slot, urc in slots if slot % (len(units) + 1) == index)
        if index < len(units):
            out.append((False, units[index]))
    return out


plans = st.builds(
    Plan,
    exchange=st.sampled_from(EXCHANGES),
    echo=st.booleans(),
    late=st.integers(0, 5).map(lambda n: n == 0),
    urc_slots=st.lists(st.tuples(st.integers(0, 50), st.sampled_from(URCS)), max_size=3).map(tuple),
)


def cut(data: bytes, draw: st.DataObject) -> list[bytes]:
    mode = draw.draw(st.sampled_from(["whole", "bytes", "random"]), label="split mode")
    if mode == "whole" or not data:
        return [data]
    if mode == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    points = draw.draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=12), label="cuts")
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def drain(engine: AtEngine) -> list[AtEvent]:
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(plans, min_size=1, max_size=6), data=st.data())
def test_replies_attributed_and_urcs_delivered_once(script: list[Plan], data: st.DataObject) -> None:
    engine = AtEngine(profile_by_name("quectel-ec25").at_config())
    now = 0.0
    ids = [engine.submit(plan.exchange.command, now) for plan in script]
    written = engine.data_to_send()
    events: list[AtEvent] = []
    expected_urcs: list[tuple[str, str | None]] = []
    for plan in script:
        exchange = plan.exchange
        assert written.endswith(exchange.command.encode() + b"\r"), (written, exchange.command)
        units: list[tuple[str, ...]] = [(ECHO, exchange.command)] if plan.echo else []
        units += exchange.units
        units.append((exchange.final,))
        if plan.late:
            now += exchange_timeout(engine, exchange) + 0.01
            engine.tick(now)
            written = engine.data_to_send()
            assert written == b"AT+CMEE?\r"
            units.append(("AT+CMEE?",) if plan.echo else ())
            units.append(("+CMEE: 1",))
            units.append(("OK",))
        units = [unit for unit in units if unit]
        stream = place(units, plan.urc_slots)
        expected_urcs += [(u[0], u[1] if len(u) > 1 else None) for is_urc, u in stream if is_urc]
        for chunk in cut(wire(stream), data):
            engine.feed(chunk, now)
        written = engine.data_to_send()
        events += drain(engine)

    assert engine.state is EngineState.IDLE
    finished = [e for e in events if isinstance(e, CommandEvent)]
    assert [e.command_id for e in finished] == ids, finished
    for plan, event in zip(script, finished, strict=True):
        if plan.late:
            assert isinstance(event, CommandTimedOut), event
            continue
        assert isinstance(event, CommandCompleted | CommandFailed), event
        assert event.command == plan.exchange.command
        assert event.lines == plan.exchange.lines
        assert event.result.kind is plan.exchange.kind
    urcs = [(e.line, e.body) for e in events if isinstance(e, UrcReceived)]
    assert urcs == expected_urcs
    discarded = [e for e in events if isinstance(e, LineDiscarded)]
    if not any(plan.late for plan in script):
        assert discarded == []


def exchange_timeout(engine: AtEngine, exchange: Exchange) -> float:
    del engine
    from dvrlink.protocol.at_specs import spec_for

    return spec_for(exchange.command).timeout


# -- bad input never crashes the engine ----------------------------------------------------------

noise = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"\r\nOK\r\n",
            b"\r\nERROR\r\n",
            b"\r\n+CME ERROR: 14\r\n",
            b"\r\n+CME ERROR: SIM busy\r\n",
            b"\r\nRDY\r\n",
            b"\r\n> ",
            b"\r\nCONNECT\r\n",
            b"\r\nNO CARRIER\r\n",
            b"\r\n+CMT: ,24\r\n",
            b"\r\n+CREG: 1\r\n",
            b"AT+CSQ\r",
            b"\xff\xfe\x00\x1b\x1a",
        ]
    ),
)
actions = st.one_of(
    st.tuples(st.just("feed"), noise),
    st.tuples(st.just("tick"), st.floats(0, 400)),
    st.tuples(st.just("submit"), st.sampled_from(["AT+CSQ", "AT+CMGS=5", "ATD*99#", "AT+CPIN?", "ATI"])),
    st.tuples(st.just("cancel"), st.integers(1, 6)),
    st.tuples(st.just("resync"), st.none()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(actions, max_size=25))
def test_engine_never_raises_and_recovers(steps: list[tuple[str, object]]) -> None:
    engine = AtEngine()
    now = 0.0
    terminal: dict[int, int] = {}
    for action, argument in steps:
        if action == "feed":
            assert isinstance(argument, bytes)
            engine.feed(argument, now)
        elif action == "tick":
            assert isinstance(argument, float)
            now += argument
            engine.tick(now)
        elif action == "submit":
            assert isinstance(argument, str)
            engine.submit(argument, now, payload="00" if "CMGS" in argument else None)
        elif action == "cancel":
            assert isinstance(argument, int)
            engine.cancel(argument, now)
        elif engine.state is not EngineState.DATA:
            engine.resync(now)
        engine.data_to_send()
        for event in drain(engine):
            if isinstance(event, CommandCompleted | CommandFailed | CommandTimedOut | CommandAborted):
                terminal[event.command_id] = terminal.get(event.command_id, 0) + 1
        deadline = engine.next_deadline()
        assert deadline is None or deadline >= 0
    assert all(count == 1 for count in terminal.values()), terminal

    # whatever happened, the engine gets back in step and serves the next command right
    if engine.state is EngineState.DATA:
        engine.feed(b"\r\nNO CARRIER\r\n", now)
    engine.abort_all("test over", now)
    engine.feed(b"\r\n", now)
    drain(engine)
    command_id = engine.submit("AT+CSQ", now)
    assert engine.data_to_send() == b"AT+CSQ\r"
    engine.feed(b"\r\n+CSQ: 20,99\r\n\r\nOK\r\n", now)
    done = [e for e in drain(engine) if isinstance(e, CommandEvent)]
    assert len(done) == 1
    assert isinstance(done[0], CommandCompleted)
    assert (done[0].command_id, done[0].lines) == (command_id, ("+CSQ: 20,99",))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(max_size=600), data=st.data())
def test_garbage_between_commands_keeps_replies_in_order(garbage: bytes, data: st.DataObject) -> None:
    """Random bytes then a CR LF, with no command pending: the next reply still lands right."""
    engine = AtEngine()
    for chunk in cut(garbage + b"\r\n\r\n", data):
        engine.feed(chunk, 0.0)
    drain(engine)
    # a +CMT: head in the garbage eats one line as its body; a spare CR LF pair absorbs nothing
    engine.feed(b"\r\nX\r\n", 0.0)
    drain(engine)
    command_id = engine.submit("AT+CREG?", 0.0)
    engine.feed(b"\r\n+CREG: 0,1\r\n\r\nOK\r\n", 0.0)
    done = [e for e in drain(engine) if isinstance(e, CommandEvent)]
    assert len(done) == 1 and isinstance(done[0], CommandCompleted)
    assert (done[0].command_id, done[0].lines) == (command_id, ("+CREG: 0,1",))
