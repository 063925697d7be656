"""The AT command engine of one modem port: commands in, bytes out, replies matched, URCs routed.

Sans-I/O: feed it the bytes read from the port and the current time; take the bytes to write,
the events, and the next deadline. It never raises on bad input from the modem: noise, overlong
lines, late replies and stray results become ``LineDiscarded`` events and are counted in ``stats``.

How a line is classified, in this order:

1. the body line of a two-line URC (``+CMT:``, ``+CDS:``) or of a two-line reply (``+CMGR:``);
2. a restart marker (``RDY``): the modem rebooted, the pending command is aborted;
3. the echo of the pending command (a line equal to the text just sent), whatever ``ATE`` says;
4. a final result of the pending command (``OK``, ``ERROR``, ``+CME ERROR: 10``, ``+CME ERROR: SIM
   busy``, ``+CMS ERROR: 330``, and for dial commands ``CONNECT``, ``NO CARRIER``, ``BUSY``,
   ``NO DIALTONE``, ``NO ANSWER``);
5. a reply line the pending command's spec expects (prefix, shape, bare text);
6. anything else is unsolicited: a URC, or a stray result that is dropped.

Only one command is on the wire at a time; the others wait in a queue. When a command gets no
final result in time, the engine resynchronises: it writes a probe whose answer cannot be stale
(``AT+CMEE?``: its ``+CMEE:`` line is unlike any bare ``OK``) and waits for that line and the final
result after it. Results before it (the timed-out command's late ``OK``, however late) are dropped
and never taken for the answer of the next command. A modem that answers the probe without its
line (an ``ERROR``) falls back to counting final results and a quiet period. States and transitions
are in ``TRANSITIONS``. Final results are parsed in ``at_results.py``; the events are in
``at_events.py``.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

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
from dvrlink.protocol.at_results import CALL_RESULTS, FinalKind, FinalResult, parse_final
from dvrlink.protocol.at_specs import CommandSpec, spec_for
from dvrlink.protocol.state_diagram import mermaid_state_diagram

CTRL_Z = b"\x1a"
ESC = b"\x1b"
_TERMINATOR = re.compile(rb"[\r\n]")

STANDARD_URCS: tuple[str, ...] = (
    "RING",
    "+CRING:",
    "+CLIP:",
    "+CCWA:",
    "+CREG:",
    "+CGREG:",
    "+CEREG:",
    "+C5GREG:",
    "+CMTI:",
    "+CMT:",
    "+CDS:",
    "+CDSI:",
    "+CBM:",
    "+CBMI:",
    "+CUSD:",
    "+CGEV:",
    "+CPIN:",
    "+CFUN:",
    "+CTZV:",
    "+CTZE:",
    "+CIEV:",
    "NO CARRIER",
)
"""Unsolicited result codes of 3GPP TS 27.007 and 27.005 that any modem may send."""

TWO_LINE_URCS: tuple[str, ...] = ("+CMT:", "+CDS:", "+CBM:")
"""URCs followed by a body line (the PDU, or the text in text mode)."""

_ONE_LINE_CDS = re.compile(r"^\+CDS:\s*\d+\s*,")
"""A text-mode ``+CDS`` (27.005 3.4.1: ``<fo>,<mr>,...`` on one line, no body); PDU mode's is
``+CDS: <length>`` and the PDU on the next line."""


@dataclass(frozen=True, slots=True)
class AtConfig:
    """Settings of one AT port. Times are in seconds.

    ``urc_prefixes``: lines known to be unsolicited (3GPP ones plus the profile's). A line that
    starts with one of them is never taken for a bare-text reply (``+CGSN``, ``ATI``).
    ``two_line_urcs``: URCs whose next line is their body. ``restart_markers``: lines a modem
    prints when it has (re)booted. ``max_line``: longer lines are dropped, in bytes.
    ``resync_probes``: the probes written to resynchronise, as (command, the prefix of its unique
    reply line), in turn (those the timed-out command also answers with are left out), so that
    the answer to the latest probe is told from a slow answer to the one before.
    ``resync_timeout``: how long one probe may go unanswered. ``resync_settle``: a quiet period, the
    time with no line from the modem after which a resync that could not see a probe's unique line
    (the modem answered it with an error, or a probe was lost) is taken as done.
    """

    urc_prefixes: tuple[str, ...] = STANDARD_URCS
    two_line_urcs: tuple[str, ...] = TWO_LINE_URCS
    restart_markers: tuple[str, ...] = ("RDY",)
    max_line: int = 4096
    resync_timeout: float = 3.0
    resync_settle: float = 0.3
    resync_probes: tuple[tuple[str, str], ...] = (
        ("AT+CMEE?", "+CMEE:"),
        ("AT+CSCS?", "+CSCS:"),
        ("AT+CMGF?", "+CMGF:"),
    )

    def __post_init__(self) -> None:
        if not self.resync_probes or any(
            not command.upper().startswith("AT") or not prefix for command, prefix in self.resync_probes
        ):
            raise ValueError(
                f"resync_probes {self.resync_probes!r}: give one or more (AT command, reply prefix) pairs, "
                'e.g. (("AT+CMEE?", "+CMEE:"),)'
            )
        if not 64 <= self.max_line <= 1 << 20:
            raise ValueError(f"max_line {self.max_line} bytes is out of range: use 64-1048576")
        if self.resync_timeout <= 0 or self.resync_settle <= 0:
            raise ValueError(
                f"resync_timeout ({self.resync_timeout} s) and resync_settle "
                f"({self.resync_settle} s) must be > 0"
            )
        for prefix in (*self.urc_prefixes, *self.two_line_urcs, *self.restart_markers):
            if not prefix or prefix != prefix.strip():
                raise ValueError(f"URC prefix {prefix!r} must be non-empty text without surrounding blanks")

    def with_urcs(self, extra: Iterable[str]) -> AtConfig:
        """A copy that also knows the URC prefixes ``extra``."""
        return replace(self, urc_prefixes=tuple(dict.fromkeys((*self.urc_prefixes, *extra))))


@dataclass(frozen=True, slots=True)
class Command:
    """One command line, without its CR. ``payload`` answers a ``> `` prompt (then Ctrl-Z)."""

    text: str
    spec: CommandSpec
    payload: bytes | None = None


class EngineState(enum.Enum):
    """What the port is doing."""

    IDLE = "idle"
    WAITING = "waiting"
    BACKOFF = "backoff"
    RESYNC = "resync"
    DATA = "data"


S = EngineState
# Every transition the engine makes, with its cause. ``_enter`` refuses anything else;
# abort_all() goes from any state to IDLE.
TRANSITIONS: dict[tuple[EngineState, EngineState], str] = {
    (S.IDLE, S.WAITING): "command written",
    (S.WAITING, S.WAITING): "final result; next queued command written",
    (S.WAITING, S.IDLE): "final result; queue empty",
    (S.WAITING, S.BACKOFF): "SIM busy or please wait: retry after a backoff",
    (S.BACKOFF, S.WAITING): "backoff over (or cancelled): command written",
    (S.BACKOFF, S.IDLE): "cancelled or modem restarted; queue empty",
    (S.WAITING, S.RESYNC): "no final result in time, or resync requested: probe written",
    (S.IDLE, S.RESYNC): "resync requested: probe written",
    (S.BACKOFF, S.RESYNC): "resync requested: probe written",
    (S.RESYNC, S.RESYNC): "probe unanswered: another probe written",
    (S.RESYNC, S.IDLE): "in sync; queue empty",
    (S.RESYNC, S.WAITING): "in sync; next queued command written",
    (S.WAITING, S.DATA): "CONNECT: the port carries data now",
    (S.DATA, S.IDLE): "NO CARRIER or modem restarted; queue empty",
    (S.DATA, S.WAITING): "NO CARRIER or modem restarted; next queued command written",
    (S.DATA, S.RESYNC): "data mode left by the caller: probe written",
    (S.IDLE, S.IDLE): "aborted: port reset",
}


def state_diagram() -> str:
    """The engine's states as a Mermaid diagram, generated from :data:`TRANSITIONS`
    (``python -m dvrlink.protocol.at_engine`` prints it)."""
    return mermaid_state_diagram(TRANSITIONS, EngineState.IDLE)


def _has_body(spec: CommandSpec, line: str) -> bool:
    """A reply line of a two-line reply that a body line follows (see ``CommandSpec``)."""
    if not (spec.two_line_reply and spec.prefixes and line.startswith(spec.prefixes)):
        return False
    return spec.bodiless_pattern is None or re.match(spec.bodiless_pattern, line) is None


@dataclass(slots=True)
class _Pending:
    id: int
    command: Command
    attempt: int = 1
    lines: list[str] = field(default_factory=list)
    replies: int = 0
    echo_seen: bool = False
    prompt_served: bool = False
    cancelled: bool = False
    in_body: bool = False
    """A two-line reply's body has begun: bare lines after it continue it (text mode)."""


class AtEngine:
    """The AT engine of one port (see module docstring).

    ``spec_for`` gives the spec of a command submitted as text; the default is
    ``dvrlink.protocol.at_specs.spec_for``.
    """

    def __init__(
        self,
        config: AtConfig | None = None,
        spec_for: Callable[[str], CommandSpec] = spec_for,
    ) -> None:
        self._config = config or AtConfig()
        self._spec_for = spec_for
        self._state = EngineState.IDLE
        self._queue: deque[_Pending] = deque()
        self._pending: _Pending | None = None
        self._deadline: float | None = None
        self._events: deque[AtEvent] = deque()
        self._outbox = bytearray()
        self._buf = bytearray()
        self._scanned = 0
        self._skipping = False
        self._next_id = 1
        self._urc_head: str | None = None
        self._body_expected = False
        # resync bookkeeping
        self._late: Command | None = None
        self._probes = 0
        self._finals = 0
        self._probe_sent_at = 0.0
        self._resync_started_at = 0.0
        self._settle: float | None = None
        self._probe: tuple[str, str] = self._config.resync_probes[0]
        self._probe_cycle: tuple[tuple[str, str], ...] = self._config.resync_probes
        self._probe_replies = 0  # unique probe reply lines seen in this resync
        self._probe_final_due = False  # a unique reply line came: the next final result is the probe's
        self.stats: dict[str, int] = {
            "lines": 0,
            "urcs": 0,
            "discarded": 0,
            "noise": 0,
            "data_bytes": 0,
            "commands": 0,
        }

    # -- properties -----------------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        """Current state."""
        return self._state

    @property
    def config(self) -> AtConfig:
        """The settings this engine runs with."""
        return self._config

    @property
    def pending_id(self) -> int | None:
        """Id of the command on the wire (or waiting to be retried), if any."""
        return self._pending.id if self._pending is not None else None

    @property
    def queued(self) -> int:
        """Number of commands waiting behind the pending one."""
        return len(self._queue)

    # -- sans-I/O interface ---------------------------------------------------------------------

    def submit(self, command: str | Command, now: float, payload: bytes | str | None = None) -> int:
        """Queue a command; it is written at once when the port is free. Returns its id.

        ``command`` is a line such as ``AT+CSQ`` (its spec comes from ``spec_for``) or a
        ``Command``. ``payload`` is what to write at the ``> `` prompt (a PDU in hex, or text);
        Ctrl-Z is added by the engine.

        Raises:
            ValueError: the line is empty, does not start with ``AT``, or holds CR, LF, Ctrl-Z
                or ESC; or the payload holds Ctrl-Z or ESC.
        """
        if isinstance(command, str):
            data = payload.encode("ascii") if isinstance(payload, str) else payload
            command = Command(command.strip(), self._spec_for(command), data)
        elif payload is not None:
            raise ValueError("give the payload inside the Command, not as a separate argument")
        text = command.text
        if text[:2].upper() != "AT" or any(ch in text for ch in "\r\n\x1a\x1b"):
            raise ValueError(
                f"AT command {text!r} must start with AT and hold no CR, LF, Ctrl-Z or ESC: "
                "the engine adds the CR"
            )
        if command.payload is not None and (CTRL_Z in command.payload or ESC in command.payload):
            raise ValueError("the prompt payload must not hold Ctrl-Z or ESC: the engine adds Ctrl-Z")
        entry = _Pending(self._next_id, command)
        self._next_id += 1
        self._queue.append(entry)
        self.stats["commands"] += 1
        if self._state is EngineState.IDLE:
            self._send_next(now)
        return entry.id

    def cancel(self, command_id: int, now: float) -> bool:
        """Give up a command. Returns False when it is unknown or already finished.

        A queued command is dropped at once. The command on the wire still runs to its final
        result (then ``CommandAborted``); at a ``> `` prompt the engine writes ESC instead of
        the payload. A command waiting to be retried is dropped at once.
        """
        for entry in self._queue:
            if entry.id == command_id:
                self._queue.remove(entry)
                self._emit(CommandAborted(entry.id, entry.command.text, "cancelled"))
                return True
        pending = self._pending
        if pending is None or pending.id != command_id or pending.cancelled:
            return False
        if self._state is EngineState.BACKOFF:
            self._pending = None
            self._emit(CommandAborted(pending.id, pending.command.text, "cancelled"))
            self._send_next(now)
        else:
            pending.cancelled = True
        return True

    def resync(self, now: float) -> None:
        """Write probes until the modem answers, first giving up the pending command.

        The first step of the recovery ladder. In data mode it means the caller knows the port
        is back in command mode (the PPP peer hung up, DTR dropped).
        """
        late: Command | None = None
        if self._pending is not None:
            pending = self._pending
            self._pending = None
            self._emit(CommandAborted(pending.id, pending.command.text, "resync requested"))
            if self._state is EngineState.WAITING:
                late = pending.command
        if self._state is EngineState.RESYNC:
            return
        self._start_resync(late, now)

    def abort_all(self, reason: str, now: float) -> None:
        """Give up every command (the port was closed or reopened) and forget partial input."""
        del now
        entries = ([self._pending] if self._pending is not None else []) + list(self._queue)
        self._pending = None
        self._queue.clear()
        for entry in entries:
            self._emit(CommandAborted(entry.id, entry.command.text, reason))
        self._buf.clear()
        self._scanned = 0
        self._skipping = False
        self._urc_head = None
        self._body_expected = False
        self._late = None
        self._settle = None
        self._deadline = None
        self._outbox.clear()
        if self._state is not EngineState.IDLE:
            self._enter(EngineState.IDLE)

    def feed(self, data: bytes, now: float) -> None:
        """Take bytes read from the port. Never raises on their content."""
        if not data:
            return
        self._buf += data
        while True:
            match = _TERMINATOR.search(self._buf, self._scanned)
            if match is None:
                break
            end = match.start()
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._scanned = 0
            if self._skipping:
                self._skipping = False
                continue
            if len(raw) > self._config.max_line:
                self._overlong(raw)
                continue
            self._raw_line(raw, now)
        if self._skipping:
            # still inside an overlong line: drop what came of it
            self._buf.clear()
        elif len(self._buf) > self._config.max_line:
            self._overlong(bytes(self._buf))
            self._buf.clear()
            self._skipping = True
        elif self._buf:
            self._partial(now)
        self._scanned = len(self._buf)

    def tick(self, now: float) -> None:
        """Act on expired deadlines; calling it early does nothing."""
        state = self._state
        if state is EngineState.WAITING and self._deadline is not None and now >= self._deadline:
            pending = self._pending
            assert pending is not None
            self._pending = None
            self._emit(
                CommandTimedOut(
                    pending.id, pending.command.text, tuple(pending.lines), pending.command.spec.timeout
                )
            )
            self._start_resync(pending.command, now)
        elif state is EngineState.BACKOFF and self._deadline is not None and now >= self._deadline:
            pending = self._pending
            assert pending is not None
            pending.attempt += 1
            self._write_command(pending, now)
        elif state is EngineState.RESYNC:
            if self._settle is not None and now >= self._settle:
                self._resynced(now)
            elif self._deadline is not None and now >= self._deadline:
                self._emit(ResyncFailed(self._probes, now - self._resync_started_at))
                self._send_probe(now)

    def next_deadline(self) -> float | None:
        """When ``tick`` must be called next (absolute time), or None."""
        if self._state is EngineState.RESYNC and self._settle is not None:
            return min(self._settle, self._deadline) if self._deadline is not None else self._settle
        if self._state in (EngineState.WAITING, EngineState.BACKOFF, EngineState.RESYNC):
            return self._deadline
        return None

    def data_to_send(self) -> bytes:
        """Bytes for the port, oldest first; the buffer is drained."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def next_event(self) -> AtEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    # -- line handling --------------------------------------------------------------------------

    def _overlong(self, raw: bytes) -> None:
        if self._state is EngineState.DATA:
            self.stats["data_bytes"] += len(raw)
            return
        preview = raw[:40].decode("utf-8", "replace")
        self._discard(preview, f"line longer than {self._config.max_line} bytes: dropped")

    def _raw_line(self, raw: bytes, now: float) -> None:
        if self._state is EngineState.DATA:
            self.stats["data_bytes"] += len(raw) + 1
            text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
            if text == "NO CARRIER":
                self._emit(UrcReceived("NO CARRIER", text))
                self._send_next(now)
            elif text in self._config.restart_markers:
                self._emit(ModemRestarted(text))
                self._send_next(now)
            return
        text = raw.replace(b"\x00", b"").decode("utf-8", "replace").strip()
        if not text:
            return
        self.stats["lines"] += 1
        self._line(text, now)

    def _line(self, line: str, now: float) -> None:
        if self._urc_head is not None:
            head, self._urc_head = self._urc_head, None
            self._urc(head, line)
            return
        pending = self._pending
        if self._body_expected and pending is not None and self._state is EngineState.WAITING:
            self._body_expected = False
            pending.lines.append(line)
            pending.in_body = True
            return
        if self._state is not EngineState.RESYNC:
            self._body_expected = False
        if any(ch < " " and ch not in "\t\x1a" for ch in line) or "\ufffd" in line:
            self.stats["noise"] += 1
            self._discard(line, "noise: control or undecodable bytes")
            return
        if line in self._config.restart_markers:
            self._restarted(line, now)
            return
        if self._state is EngineState.RESYNC:
            self._resync_line(line, now)
            return
        if (
            self._state is EngineState.WAITING
            and pending is not None
            and self._pending_line(pending, line, now)
        ):
            return
        final = parse_final(line)
        if final is not None:
            if final.kind is FinalKind.NO_CARRIER:
                self._urc(line)
            else:
                self._discard(line, "final result with no command waiting for it")
            return
        self._unsolicited(line)

    def _pending_line(self, pending: _Pending, line: str, now: float) -> bool:
        """Handle a line while ``pending`` is on the wire; False when it is not the command's."""
        spec = pending.command.spec
        if not pending.echo_seen and line.upper() == pending.command.text.upper():
            pending.echo_seen = True
            return True
        if spec.prompt and pending.prompt_served and pending.command.payload is not None:
            echoed = line.rstrip("\x1a").strip()
            if echoed == pending.command.payload.decode("ascii", "replace").strip():
                return True
        if spec.prompt and not pending.prompt_served and line in (">", "> "):
            self._answer_prompt(pending)
            return True
        final = parse_final(line)
        if final is not None and (final.kind not in CALL_RESULTS or spec.call_results):
            self._on_final(pending, final, now)
            return True
        if final is not None:
            return False
        if self._is_reply(pending, line):
            pending.lines.append(line)
            pending.replies += 1
            pending.in_body = False
            self._body_expected = _has_body(spec, line)
            return True
        if spec.two_line_reply and pending.in_body and not self._looks_unsolicited(line):
            pending.lines.append(line)  # a text-mode body goes on over several lines
            return True
        return False

    def _is_reply(self, pending: _Pending, line: str) -> bool:
        spec = pending.command.spec
        if pending.replies >= 1 and not spec.multiline:
            return False
        if spec.prefixes and line.startswith(spec.prefixes):
            return spec.reply_pattern is None or re.match(spec.reply_pattern, line) is not None
        return spec.text_reply and not self._looks_unsolicited(line)

    def _looks_unsolicited(self, line: str) -> bool:
        return line.startswith(("+", "^")) or line.startswith(self._config.urc_prefixes)

    def _unsolicited(self, line: str) -> None:
        if line.startswith(self._config.two_line_urcs) and _ONE_LINE_CDS.match(line) is None:
            self._urc_head = line
            return
        self._urc(line)

    def _urc(self, line: str, body: str | None = None) -> None:
        name = line.split(":", 1)[0].strip() if ":" in line else line
        self.stats["urcs"] += 1
        self._emit(UrcReceived(name, line, body))

    def _partial(self, now: float) -> None:
        """A prompt arrives without CR/LF: look at the unterminated tail."""
        del now
        pending = self._pending
        if (
            self._state is EngineState.WAITING
            and pending is not None
            and pending.command.spec.prompt
            and not pending.prompt_served
            and self._urc_head is None
            and bytes(self._buf) in (b">", b"> ")
        ):
            self._buf.clear()
            self._scanned = 0
            self._answer_prompt(pending)

    def _answer_prompt(self, pending: _Pending) -> None:
        pending.prompt_served = True
        payload = pending.command.payload
        if pending.cancelled or payload is None:
            self._outbox += ESC
            self._emit(PromptAnswered(pending.id, pending.command.text, aborted=True))
        else:
            self._outbox += payload + CTRL_Z
            self._emit(PromptAnswered(pending.id, pending.command.text, aborted=False))

    def _on_final(self, pending: _Pending, final: FinalResult, now: float) -> None:
        spec = pending.command.spec
        busy = (final.kind is FinalKind.CME_ERROR and final.code in spec.retry_cme) or (
            final.kind is FinalKind.CMS_ERROR and final.code in spec.retry_cms
        )
        if busy and not pending.cancelled and pending.attempt <= spec.max_retries:
            delay = spec.backoff(pending.attempt)
            self._emit(CommandRetrying(pending.id, pending.command.text, final, pending.attempt, delay))
            pending.lines.clear()
            pending.replies = 0
            pending.echo_seen = False
            pending.prompt_served = False
            pending.in_body = False
            self._deadline = now + delay
            self._enter(EngineState.BACKOFF)
            return
        self._pending = None
        lines = tuple(pending.lines)
        if pending.cancelled:
            self._emit(CommandAborted(pending.id, pending.command.text, "cancelled"))
        elif final.ok:
            self._emit(CommandCompleted(pending.id, pending.command.text, lines, final))
        else:
            self._emit(CommandFailed(pending.id, pending.command.text, lines, final, pending.attempt))
        if final.kind is FinalKind.CONNECT:
            self._deadline = None
            self._enter(EngineState.DATA)
        else:
            self._send_next(now)

    def _restarted(self, marker: str, now: float) -> None:
        self._emit(ModemRestarted(marker))
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._emit(
                CommandAborted(
                    pending.id,
                    pending.command.text,
                    f"modem restarted ({marker}) before the final result",
                )
            )
        if self._state is EngineState.RESYNC:
            # a rebooted modem owes no late results: it is in sync
            self._resynced(now)
        elif self._state is not EngineState.IDLE:
            self._send_next(now)

    # -- resync ---------------------------------------------------------------------------------

    def _start_resync(self, late: Command | None, now: float) -> None:
        self._late = late
        self._probes = 0
        self._finals = 0
        self._probe_replies = 0
        self._probe_final_due = False
        self._settle = None
        self._resync_started_at = now
        late_prefixes = late.spec.prefixes if late is not None else ()
        eligible = tuple(
            probe
            for probe in self._config.resync_probes
            if not any(probe[1].startswith(p) or p.startswith(probe[1]) for p in late_prefixes)
        )
        self._probe_cycle = eligible or self._config.resync_probes[-1:]
        # a two-line reply cut by the timeout: its body is still to come, and is late
        self._body_expected = self._body_expected and late is not None
        self._send_probe(now)

    def _send_probe(self, now: float) -> None:
        # successive probes differ, so the answer to the latest one is told from a slow answer to
        # the one before it
        self._probe = self._probe_cycle[self._probes % len(self._probe_cycle)]
        self._probes += 1
        self._probe_final_due = False
        self._outbox += self._probe[0].encode("ascii") + b"\r"
        self._probe_sent_at = now
        self._deadline = now + self._config.resync_timeout
        self._enter(EngineState.RESYNC)

    def _resync_line(self, line: str, now: float) -> None:
        upper = line.upper()
        late = self._late
        probe, unique = self._probe
        if self._settle is not None:
            # a quiet period is measured from the last line the modem sent
            self._settle = now + self._config.resync_settle
        if upper == "AT" or any(upper == p.upper() for p, _ in self._probe_cycle):
            return  # echo of a probe
        if late is not None and upper == late.text.upper():
            return  # echo of the timed-out command
        if line.startswith(unique):
            # the latest probe's own reply: everything the modem owed before it has come
            self._probe_replies += 1
            self._probe_final_due = True
            self._body_expected = False
            return
        if line.startswith(tuple(prefix for _, prefix in self._probe_cycle)):
            self._probe_replies += 1
            self._discard(line, f"answer to an earlier probe; waiting for the answer to {probe}")
            return
        final = parse_final(line)
        if final is not None:
            self._finals += 1
            if self._probe_final_due:
                self._resynced(now)
                return
            owed = self._probes + (1 if late is not None else 0)
            self._discard(line, f"result during resync before the answer to {probe}: late result")
            if self._finals >= owed and self._probe_replies == 0:
                # the modem answers the probes without their line (an error): fall back to a
                # quiet period
                self._settle = now + self._config.resync_settle
            return
        if late is not None and (self._body_expected or self._late_reply(late, line)):
            self._body_expected = not self._body_expected and _has_body(late.spec, line)
            self._discard(line, f"late reply to timed-out {late.text}")
            return
        self._unsolicited(line)

    def _late_reply(self, late: Command, line: str) -> bool:
        spec = late.spec
        if spec.prefixes and line.startswith(spec.prefixes):
            return spec.reply_pattern is None or re.match(spec.reply_pattern, line) is not None
        return spec.text_reply and not self._looks_unsolicited(line)

    def _resynced(self, now: float) -> None:
        self._emit(Resynced(self._probes))
        self._late = None
        self._settle = None
        self._probe_final_due = False
        self._send_next(now)

    # -- writing --------------------------------------------------------------------------------

    def _send_next(self, now: float) -> None:
        self._deadline = None
        self._body_expected = False
        if self._pending is not None:
            # a command waiting to be retried keeps its place at the head
            self._write_command(self._pending, now)
            return
        if not self._queue:
            self._enter(EngineState.IDLE)
            return
        self._write_command(self._queue.popleft(), now)

    def _write_command(self, entry: _Pending, now: float) -> None:
        self._pending = entry
        entry.echo_seen = False
        entry.prompt_served = False
        self._outbox += entry.command.text.encode("ascii", "replace") + b"\r"
        self._deadline = now + entry.command.spec.timeout
        self._enter(EngineState.WAITING)

    # -- helpers --------------------------------------------------------------------------------

    def _discard(self, line: str, reason: str) -> None:
        self.stats["discarded"] += 1
        self._emit(LineDiscarded(line, reason))

    def _emit(self, event: AtEvent) -> None:
        self._events.append(event)

    def _enter(self, state: EngineState) -> None:
        if (self._state, state) not in TRANSITIONS:
            raise RuntimeError(f"AT engine bug: no transition {self._state.value} -> {state.value}")
        self._state = state


if __name__ == "__main__":
    print(state_diagram())
