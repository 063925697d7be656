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
from typing import TypeVar

T = TypeVar("T")

WAIT = 20.0
"""Seconds a wait may take by default: generous, so a busy machine does not fail a test."""
FIRST_POLL = 0.005
"""Seconds before the second look; the pause doubles up to ``poll``."""


def _pauses(timeout: float, poll: float) -> Iterator[float]:
    """The pauses between looks: growing from ``FIRST_POLL`` to ``poll``, as many as fit into
    ``timeout`` (so the loop is bounded in count as well as in time)."""
    pause, total = min(FIRST_POLL, poll), 0.0
    while total < timeout:
        yield pause
        total += pause
        pause = min(pause * 2, poll)


def _failure(what: str, timeout: float, last: object, seen: Callable[[], object] | None) -> AssertionError:
    shown = seen() if seen is not None else last
    return AssertionError(f"{what}: not within {timeout:g} s; last seen: {shown!r}")


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
    deadline = time.monotonic() + timeout
    last = condition()
    for pause in _pauses(timeout, poll):
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(pause)
        last = condition()
    if last:
        return last
    raise _failure(what, timeout, last, seen)


async def wait_until_async(
    what: str,
    condition: Callable[[], T],
    *,
    timeout: float = WAIT,
    poll: float = 0.05,
    seen: Callable[[], object] | None = None,
) -> T:
    """``wait_until`` on the running loop: the loop keeps running between looks."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = condition()
    for pause in _pauses(timeout, poll):
        if last:
            return last
        if loop.time() >= deadline:
            break
        await asyncio.sleep(pause)
        last = condition()
    if last:
        return last
    raise _failure(what, timeout, last, seen)
