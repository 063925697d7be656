"""Entries of the modem manager's own queue of AT commands: at most one is on the wire, the
others wait; a continuation (no command text) runs when the queue reaches it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dvrlink.protocol.at_events import CommandCompleted, CommandFailed

Handler = Callable[[CommandCompleted | CommandFailed, float], None]
"""Called with a command's outcome and ``now``."""


@dataclass(slots=True)
class QueuedCommand:
    """A command (``text``) and the handler of its outcome, or a continuation (``then``)."""

    text: str | None
    handler: Handler | None = None
    then: Callable[[float], None] | None = None
    """For a continuation (``text`` None): called when the queue reaches it."""
