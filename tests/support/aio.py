"""Running a coroutine test body: a fresh loop and an overall bound.

A body that leaves a task running fails the test: the leak check in tests/conftest.py watches
every loop the suite makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

BOUND = 120.0
"""Seconds a whole test body may take by default."""


def run(main: Callable[[], Awaitable[None]], bound: float = BOUND) -> None:
    """Run ``main()`` in a fresh event loop; TimeoutError after ``bound`` seconds."""

    async def bounded() -> None:
        async with asyncio.timeout(bound):
            await main()

    asyncio.run(bounded())
