"""The TURN relay path of a session: aioice's TURN client (UDP or TCP to the server), what it
delivers to, and the ChannelData fast path.

``Connectivity`` (``connectivity.py``) allocates on every TURN server the broker offers at once
and keeps the first allocation that succeeds; these are the pieces of that path it uses. aioice's
internals go through ``dvrlink.compat.aioice_compat``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aioice import stun
from aioice.turn import TurnTransport

from dvrlink.compat import aioice_compat
from dvrlink.protocol.signalling import TurnServer


def turn_error(server: TurnServer, exc: BaseException) -> str:
    """Why an allocation on ``server`` failed, in words that say what to do."""
    where = f"TURN server {server.host}:{server.port} ({server.transport})"
    if isinstance(exc, stun.TransactionFailed):
        code = exc.response.error_code
        if code == 401:
            return (
                f"TURN credentials rejected by {where} (401 Unauthorized): they may have expired or "
                "come from another broker; ask the broker for a new session"
            )
        if code == 486:
            return f"{where} refused the allocation: quota reached (486); close other sessions first"
        return f"{where} refused the allocation: {exc}"
    if isinstance(exc, (stun.TransactionTimeout, TimeoutError)):
        return f"no answer from {where}: check that the broker's TURN port is reachable"
    return f"cannot reach {where}: {exc}"


class RelayReceiver(asyncio.DatagramProtocol):
    """What aioice's TURN transport delivers to: relayed datagrams (with the peer's relayed
    address), send errors, and the loss of the allocation's connection."""

    def __init__(
        self,
        on_datagram: Callable[[bytes, tuple[str, int]], None],
        on_error: Callable[[Exception], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._on_datagram = on_datagram
        self._on_error = on_error
        self._on_lost = on_lost
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self._on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_lost()


def release_turn(task: asyncio.Task[tuple[TurnTransport, RelayReceiver | None]]) -> None:
    """An allocation attempt that lost the race: release it if it succeeded after all."""
    if not task.cancelled() and task.exception() is None:
        task.result()[0].close()


def turn_client(turn: TurnTransport) -> Any:
    """aioice's TURN client protocol behind a ``TurnTransport`` (channels, its socket)."""
    return aioice_compat.turn_client(turn)


def channel_send(turn: TurnTransport, data: bytes, peer: tuple[str, int]) -> bool:
    """Send ``data`` to ``peer`` as ChannelData at once when its channel is bound and needs no
    refresh; False otherwise (``TurnTransport.sendto`` then binds or refreshes, in a task per
    datagram, which is what this avoids on the hot path)."""
    return aioice_compat.send_channel_data(turn, data, peer)
