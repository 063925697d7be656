"""The events an :class:`~dvrlink.protocol.at_engine.AtEngine` emits: typed, past tense, one base."""

from __future__ import annotations

from dataclasses import dataclass

from dvrlink.protocol.at_results import FinalResult


@dataclass(frozen=True, slots=True)
class AtEvent:
    """Base of the events an ``AtEngine`` emits."""


@dataclass(frozen=True, slots=True)
class CommandEvent(AtEvent):
    """Base of the events about one submitted command."""

    command_id: int
    command: str


@dataclass(frozen=True, slots=True)
class CommandCompleted(CommandEvent):
    """The command ended with ``OK`` or ``CONNECT``; ``lines`` are its information lines."""

    lines: tuple[str, ...]
    result: FinalResult


@dataclass(frozen=True, slots=True)
class CommandFailed(CommandEvent):
    """The command ended with an error result (after the retries its spec allows)."""

    lines: tuple[str, ...]
    result: FinalResult
    attempts: int


@dataclass(frozen=True, slots=True)
class CommandTimedOut(CommandEvent):
    """No final result came within the command's timeout; the engine resynchronises."""

    lines: tuple[str, ...]
    timeout: float


@dataclass(frozen=True, slots=True)
class CommandAborted(CommandEvent):
    """The command was given up: cancelled, the modem restarted, or the port was reset."""

    reason: str


@dataclass(frozen=True, slots=True)
class CommandRetrying(CommandEvent):
    """The modem said busy (``+CME ERROR: 14``/``515``); the command is written again later."""

    result: FinalResult
    attempt: int
    delay: float


@dataclass(frozen=True, slots=True)
class PromptAnswered(CommandEvent):
    """The modem asked with ``> ``; the engine wrote the payload and Ctrl-Z, or ESC to abort."""

    aborted: bool


@dataclass(frozen=True, slots=True)
class UrcReceived(AtEvent):
    """An unsolicited line; ``body`` is the second line of a two-line URC (``+CMT:``).

    ``name`` is the part before the colon (``+CREG``), or the whole line (``RING``).
    """

    name: str
    line: str
    body: str | None = None


@dataclass(frozen=True, slots=True)
class ModemRestarted(AtEvent):
    """The modem printed a restart marker (``RDY``): it rebooted, and forgot its settings."""

    marker: str


@dataclass(frozen=True, slots=True)
class Resynced(AtEvent):
    """After a timeout the port answers ``AT`` with ``OK`` again; queued commands go on."""

    probes: int


@dataclass(frozen=True, slots=True)
class ResyncFailed(AtEvent):
    """``probes`` probes went unanswered so far; the engine keeps probing."""

    probes: int
    waited: float


@dataclass(frozen=True, slots=True)
class LineDiscarded(AtEvent):
    """A line that belongs to nobody: noise, a late reply, a stray result, an overlong line."""

    line: str
    reason: str
