"""The one way a test waits for a condition it cannot be told about: ``wait_until`` (or its
coroutine twin ``wait_until_async``) polls, bounded in time and in count, and its failure says
what it waited for and what it saw last.

Prefer waiting on an event (a future, an ``asyncio.Event``, a log line) where the code under test
offers one; poll only what has no event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

WAIT = 20.0
"""Seconds a wait may take by default: generous, so a busy machine does not fail a test."""
FIRST_POLL = 0.005
"""Seconds before the second look; the pause doubles up to ``poll``."""


class _Poll(Generic[T]):
    """The bookkeeping of one wait: the deadline, the pauses, the condition's last value."""

    def __init__(
        self,
        what: str,
        condition: Callable[[], T],
        timeout: float,
        poll: float,
        seen: Callable[[], object] | None,
        clock: Callable[[], float],
    ) -> None:
        self.what, self.condition, self.timeout, self.poll, self.seen = what, condition, timeout, poll, seen
        self.clock = clock
        self.deadline = clock() + timeout
        self.last = condition()

    def pauses(self) -> Iterator[float]:
        """The pauses to sleep, each followed by a look, while the condition is false and time
        is left: growing from ``FIRST_POLL`` to ``poll``, as many as fit into ``timeout`` (so the
        wait is bounded in count as well as in time)."""
        pause, total = min(FIRST_POLL, self.poll), 0.0
        while not self.last and total < self.timeout and self.clock() < self.deadline:
            yield pause
            self.last = self.condition()
            total += pause
            pause = min(pause * 2, self.poll)

    def result(self) -> T:
        if self.last:
            return self.last
        shown = self.seen() if self.seen is not None else self.last
        raise AssertionError(f"{self.what}: not within {self.timeout:g} s; last seen: {shown!r}")


def wait_until(
    what: str,
    condition: Callable[[], T],
    *,
    timeout: float = WAIT,
    poll: float = 0.05,
    seen: Callable[[], object] | None = None,
) -> T:
    """Call ``condition`` until it returns something true, and return that.

    Raises AssertionError naming ``what`` after ``timeout`` seconds, with the condition's last
    value (or ``seen()``, where the condition's value says too little). An exception the condition
    raises ends the wait at once (a condition may fail early, say when a process it waits on died).
    """
    waiting = _Poll(what, condition, timeout, poll, seen, time.monotonic)
    for pause in waiting.pauses():
        time.sleep(pause)
    return waiting.result()


async def wait_until_async(
    what: str,
    condition: Callable[[], T],
    *,
    timeout: float = WAIT,
    poll: float = 0.05,
    seen: Callable[[], object] | None = None,
) -> T:
    """``wait_until`` on the running loop: the loop keeps running between looks."""
    waiting = _Poll(what, condition, timeout, poll, seen, asyncio.get_running_loop().time)
    for pause in waiting.pauses():
        await asyncio.sleep(pause)
    return waiting.result()
