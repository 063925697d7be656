"""Running a coroutine test body: a fresh loop and an overall bound.

A body that leaves a task running fails: its teardown missed something.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

BOUND = 120.0
"""Seconds a whole test body may take by default."""


def run(main: Callable[[], Awaitable[None]], bound: float = BOUND) -> None:
    """Run ``main()`` in a fresh event loop: TimeoutError after ``bound`` seconds, AssertionError
    naming the tasks ``main`` left running."""

    async def bounded() -> None:
        async with asyncio.timeout(bound):
            await main()
        # Tasks cancelled during teardown finish on the next iterations; give them a few.
        for _ in range(10):
            if not asyncio.all_tasks() - {asyncio.current_task()}:
                break
            await asyncio.sleep(0)
        left = asyncio.all_tasks() - {asyncio.current_task()}
        assert not left, f"tasks left behind: {left}"

    asyncio.run(bounded())
