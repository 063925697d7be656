"""What the HTTP API may ask of the presence core: presence, and invites it can await.

The core is sans-I/O and reports invite outcomes as events; the gateway turns them into
futures. The application passes ``InviteAnswered``/``InviteExpired`` events to
:meth:`PresenceGateway.on_event`, and gives the gateway a ``flush`` callable that sends what
the core queued (``PresenceLink.flush``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from dvrlink.protocol.presence_events import InviteAnswered, InviteExpired, ServerEvent
from dvrlink.protocol.presence_server import PresenceInfo, PresenceServer

InviteOutcome = InviteAnswered | InviteExpired


class PresenceGateway:
    """Asyncio face of a :class:`PresenceServer` for request handlers (one event loop)."""

    def __init__(
        self,
        server: PresenceServer,
        loop: asyncio.AbstractEventLoop,
        flush: Callable[[], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._server = server
        self._loop = loop
        self._flush = flush
        self._wall_clock = wall_clock
        self._waiting: dict[int, asyncio.Future[InviteOutcome]] = {}

    def presence(self, serial: str) -> PresenceInfo | None:
        """The core's presence record of ``serial`` (None if it has not registered since start)."""
        return self._server.presence(serial)

    async def lookup(self, serial: str) -> PresenceInfo | None:
        """:meth:`presence`, as the API's view awaits it (a cluster's view may ask Redis)."""
        return self._server.presence(serial)

    @property
    def online_count(self) -> int:
        """Number of online devices."""
        return self._server.online_count

    def wall_time(self, core_time: float) -> float:
        """Convert a core time stamp (event-loop clock) to Unix seconds."""
        return self._wall_clock() - (self._loop.time() - core_time)

    async def invite(self, serial: str, kind: int, body: bytes, ttl: float) -> InviteOutcome:
        """Push an invite to ``serial`` and wait for its answer or expiry (after ``ttl`` s).

        Raises:
            NotOnlineError: the device is not online.
            ValueError: ``body`` is too large for an invite.
        """
        invite_id = self._server.send_invite(serial, kind, body, self._loop.time(), ttl=ttl)
        future: asyncio.Future[InviteOutcome] = self._loop.create_future()
        self._waiting[invite_id] = future
        try:
            self._flush()
            return await future
        finally:
            self._waiting.pop(invite_id, None)

    def on_event(self, event: ServerEvent) -> None:
        """Resolve the waiter of an ``InviteAnswered``/``InviteExpired``; other events are ignored."""
        if isinstance(event, InviteAnswered | InviteExpired):
            future = self._waiting.pop(event.invite_id, None)
            if future is not None and not future.done():
                future.set_result(event)

    def cancel_all(self) -> None:
        """Cancel every waiting request (at shutdown)."""
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()
