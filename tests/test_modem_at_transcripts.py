"""AT engine conformance: replays the wire transcripts in tests/data/at/ (format in its README)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from dvrlink.modem.profiles import profile_by_name
from dvrlink.protocol.at_engine import AtEngine, EngineState
from dvrlink.protocol.at_events import (
    AtEvent,
    CommandAborted,
    CommandCompleted,
    CommandFailed,
    CommandRetrying,
    CommandTimedOut,
    LineDiscarded,
    ModemRestarted,
    PromptAnswered,
    Resynced,
    ResyncFailed,
    UrcReceived,
)
from dvrlink.protocol.at_results import FinalKind

DATA = Path(__file__).parent / "data" / "at"
TRANSCRIPTS = sorted(DATA.glob("*.txt"))
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
KINDS = {
    "OK": FinalKind.OK,
    "ERROR": FinalKind.ERROR,
    "CME": FinalKind.CME_ERROR,
    "CMS": FinalKind.CMS_ERROR,
    "CONNECT": FinalKind.CONNECT,
    "NO_CARRIER": FinalKind.NO_CARRIER,
    "BUSY": FinalKind.BUSY,
    "NO_DIALTONE": FinalKind.NO_DIALTONE,
    "NO_ANSWER": FinalKind.NO_ANSWER,
}


class Replay:
    """Runs one transcript against an engine and checks every expectation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = AtEngine()
        self.now = 0.0
        self.events: list[AtEvent] = []
        self.written = b""
        self.lineno = 0

    def fail(self, message: str) -> None:
        pytest.fail(f"{self.path.name}:{self.lineno}: {message}", pytrace=False)

    def collect(self) -> None:
        self.written += self.engine.data_to_send()
        while (event := self.engine.next_event()) is not None:
            self.events.append(event)

    def run(self) -> None:
        for lineno, raw in enumerate(self.path.read_text().splitlines(), 1):
            self.lineno = lineno
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            verb, _, rest = line.partition(" ")
            self.step(verb, rest.strip())
            self.collect()
        self.step("end", "")

    def step(self, verb: str, rest: str) -> None:
        tokens = _TOKEN.findall(rest)
        if verb == "profile":
            self.engine = AtEngine(profile_by_name(rest).at_config())
        elif verb == "submit":
            text, _, payload = rest.partition(" payload=")
            data = ast.literal_eval(payload) if payload else None
            self.engine.submit(text.strip(), self.now, data)
        elif verb == "cancel":
            if not self.engine.cancel(int(rest), self.now):
                self.fail(f"cancel {rest}: the engine does not know the command")
        elif verb == "at":
            self.now = float(rest)
            self.engine.tick(self.now)
        elif verb == "recv":
            for token in tokens:
                self.engine.feed(ast.literal_eval("b" + token), self.now)
        elif verb == "recv-repeat":
            chunk = ast.literal_eval("b" + tokens[1])
            for _ in range(int(tokens[0])):
                self.engine.feed(chunk, self.now)
        elif verb == "nothing":
            if self.events or self.written:
                self.fail(f"expected nothing new, got {self.events!r} and {self.written!r}")
        elif verb == "sent":
            want = b"".join(ast.literal_eval("b" + token) for token in tokens)
            if not self.written.startswith(want):
                self.fail(f"expected the engine to write {want!r}, it wrote {self.written!r}")
            self.written = self.written[len(want) :]
        elif verb == "state":
            if self.engine.state is not EngineState(rest):
                self.fail(f"expected state {rest}, engine is {self.engine.state.value}")
        elif verb == "expect":
            if not self.events:
                self.fail(f"expected event {rest!r}, there is none")
            event = self.events.pop(0)
            problem = check(event, tokens)
            if problem:
                self.fail(f"expected {rest!r}, got {event!r}: {problem}")
        elif verb == "end":
            self.collect()
            if self.events:
                self.fail(f"events left unchecked: {self.events!r}")
            if self.written:
                self.fail(f"bytes written but not checked: {self.written!r}")
        else:
            self.fail(f"unknown verb {verb!r}")


def literal(token: str) -> str:
    value = ast.literal_eval(token) if token.startswith('"') else token
    assert isinstance(value, str)
    return value


def check(event: AtEvent, tokens: list[str]) -> str | None:
    """None when ``event`` matches the expectation ``tokens``; otherwise what differs."""
    kind, args = tokens[0], tokens[1:]
    if kind in ("completed", "failed"):
        cls = CommandCompleted if kind == "completed" else CommandFailed
        if not isinstance(event, cls):
            return f"not {cls.__name__}"
        if event.command_id != int(args[0]):
            return "other command"
        if event.result.kind is not KINDS[args[1]]:
            return "other final result"
        rest = args[2:]
        if event.result.kind in (FinalKind.CME_ERROR, FinalKind.CMS_ERROR):
            want_code = None if rest[0] == "-" else int(rest[0])
            if event.result.code != want_code:
                return f"code {event.result.code} != {want_code}"
            rest = rest[1:]
        lines = tuple(literal(t) for t in rest)
        return None if event.lines == lines else f"lines {event.lines!r} != {lines!r}"
    if kind == "timedout":
        ok = isinstance(event, CommandTimedOut) and event.command_id == int(args[0])
        return None if ok else "not that CommandTimedOut"
    if kind == "aborted":
        if not isinstance(event, CommandAborted) or event.command_id != int(args[0]):
            return "not that CommandAborted"
        return None if len(args) < 2 or literal(args[1]) in event.reason else "other reason"
    if kind == "retrying":
        if not isinstance(event, CommandRetrying) or event.command_id != int(args[0]):
            return "not that CommandRetrying"
        want = (KINDS[args[1]], int(args[2]), float(args[3]))
        got = (event.result.kind, event.result.code, event.delay)
        return None if got == want else f"{got} != {want}"
    if kind == "prompt":
        if not isinstance(event, PromptAnswered) or event.command_id != int(args[0]):
            return "not that PromptAnswered"
        return None if event.aborted == (args[1] == "esc") else "payload/esc differs"
    if kind == "urc":
        if not isinstance(event, UrcReceived):
            return "not a URC"
        body = literal(args[1]) if len(args) > 1 else None
        return None if (event.line, event.body) == (literal(args[0]), body) else "other URC"
    if kind == "restarted":
        ok = isinstance(event, ModemRestarted) and event.marker == literal(args[0])
        return None if ok else "not that ModemRestarted"
    if kind == "resynced":
        return None if isinstance(event, Resynced) else "not Resynced"
    if kind == "resync-failed":
        return None if isinstance(event, ResyncFailed) else "not ResyncFailed"
    if kind == "discarded":
        if not isinstance(event, LineDiscarded):
            return "not LineDiscarded"
        return None if not args or event.line.startswith(literal(args[0])) else "other line"
    return f"unknown expectation {kind!r}"


def test_transcripts_exist() -> None:
    assert len(TRANSCRIPTS) >= 12, "tests/data/at/ lost its transcripts"


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path: Path) -> None:
    Replay(path).run()
