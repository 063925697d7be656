"""The suite's one polling helper (``support.waiting``): it returns the condition's first true
value, gives up after its bound, and its failure names what it waited for and what it saw."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from support.waiting import wait_until, wait_until_async


def test_wait_until_returns_the_first_true_value() -> None:
    looks = itertools.count()
    assert wait_until("the third look", lambda: next(looks) >= 3 and "seen") == "seen"
    assert next(looks) == 4  # no look after the condition held


def test_wait_until_fails_naming_what_it_waited_for_and_saw() -> None:
    with pytest.raises(AssertionError, match=r"^the door: not within 0\.2 s; last seen: \[\]$"):
        wait_until("the door", list, timeout=0.2)
    with pytest.raises(AssertionError, match=r"last seen: 'closed, 3 knocks'$"):
        wait_until("the door", lambda: False, timeout=0.1, seen=lambda: "closed, 3 knocks")


def test_a_condition_that_raises_ends_the_wait() -> None:
    def gone() -> bool:
        raise RuntimeError("the process it waits on died")

    with pytest.raises(RuntimeError, match="died"):
        wait_until("never", gone)


def test_wait_until_async_keeps_the_loop_running() -> None:
    async def main() -> None:
        flag = asyncio.Event()
        asyncio.get_running_loop().call_soon(flag.set)
        assert await wait_until_async("the flag", flag.is_set) is True
        with pytest.raises(AssertionError, match=r"^never: not within 0\.1 s; last seen: None$"):
            await wait_until_async("never", lambda: None, timeout=0.1)

    asyncio.run(main())
