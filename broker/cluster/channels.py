"""The cluster's long-running Redis loops: following a pub/sub channel through Redis outages,
and stopping the loops at close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

RESUBSCRIBE_FIRST_S = 0.1
"""The first pause before subscribing again after the channel was lost; it doubles up to ..."""
RESUBSCRIBE_MAX_S = 2.0
STOP_TRIES = 10
STOP_WAIT_S = 0.5

log = logging.getLogger(__name__)


async def follow_channel(
    redis: Redis,
    channel: str,
    on_subscribed: Callable[[], None],
    on_data: Callable[[bytes | str], None],
    read_timeout: float,
    who: str,
) -> None:
    """Subscribe to ``channel`` and hand each message's data to ``on_data``, until cancelled.
    When Redis goes away the subscription is made again (pausing ``RESUBSCRIBE_FIRST_S``,
    doubling up to ``RESUBSCRIBE_MAX_S``), and ``on_subscribed`` is called after each
    subscription. ``read_timeout``: how long one read waits (seconds)."""
    pause = RESUBSCRIBE_FIRST_S
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            on_subscribed()
            pause = RESUBSCRIBE_FIRST_S
            while True:
                message = await pubsub.get_message(timeout=read_timeout)
                if message is not None and message.get("type") == "message":
                    on_data(message["data"])
        except (RedisError, OSError) as exc:
            log.debug("%s: channel %s lost (%s); subscribing again", who, channel, exc)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
        await asyncio.sleep(pause)
        pause = min(pause * 2, RESUBSCRIBE_MAX_S)


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], what: str) -> None:
    """Cancel ``tasks`` and wait for them, bounded: a Redis read may swallow one cancellation (a
    timeout and a cancel landing together), so a task still running is cancelled again, up to
    ``STOP_TRIES`` times ``STOP_WAIT_S``; one that still runs then is left behind with a warning."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(STOP_TRIES):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=STOP_WAIT_S)
    if pending:
        log.warning("%s: %d task(s) did not stop within %.0f s", what, len(pending), STOP_TRIES * STOP_WAIT_S)
