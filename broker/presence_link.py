"""The thin asyncio link between a UDP socket and the presence core.

Datagrams in go to ``core.receive_datagram``; after every input (datagram, timer, or a call the
application made on the core, announced with :meth:`PresenceLink.flush`) the link hands events
to the application, sends what the core queued, and re-arms its one timer. This is the broker's
hot path: no logging or allocation per datagram beyond what asyncio and the core need.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol, cast

from dvrlink.protocol.presence_events import Address, ServerEvent

SOCKET_BUFFER_BYTES = 4 << 20  # asked for; the kernel caps it at net.core.[rw]mem_max

log = logging.getLogger(__name__)


class DatagramCore(Protocol):
    """What the link needs of a sans-I/O datagram core (``PresenceServer`` is one)."""

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None: ...
    def datagrams_to_send(self) -> list[tuple[bytes, Address]]: ...
    def next_event(self) -> ServerEvent | None: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


class PresenceLink(asyncio.DatagramProtocol):
    """Moves datagrams between the OS and ``core``; ``on_event`` gets every core event.

    ``on_event`` may call into the core (``accept``, ``refuse``); what that queues is sent in the
    same pass. Exceptions from the core or from ``on_event`` are logged (the first few, then
    every thousandth) and counted in ``errors``; they never reach asyncio.
    """

    def __init__(
        self,
        core: DatagramCore,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[ServerEvent], None],
    ) -> None:
        self._core = core
        self._loop = loop
        self._on_event = on_event
        self._transport: asyncio.DatagramTransport | None = None
        self._ipv6 = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._busy = False
        self._again = False
        self.errors = 0
        self.send_errors = 0

    # -- asyncio.DatagramProtocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # asyncio's class does not subclass it
        self._ipv6 = transport.get_extra_info("socket").family == socket.AF_INET6

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._ipv6:  # (host, port, flowinfo, scope_id) -> (host, port)
            addr = (addr[0], addr[1])
        try:
            self._core.receive_datagram(data, addr, self._loop.time())
        except Exception:
            self._error("presence core failed on a datagram")
        self.flush()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable from a vanished device) arrive here; they are normal.
        self.send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._transport = None

    # -- application interface ------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        """The bound (host, port).

        Raises:
            RuntimeError: the link is not connected to a socket.
        """
        if self._transport is None:
            raise RuntimeError("the presence link has no socket")
        sockname = self._transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    def flush(self) -> None:
        """Hand out events, send queued datagrams and re-arm the timer.

        Call it after calling the core from outside the link (e.g. ``send_invite``). Re-entrant:
        a call from inside ``on_event`` is folded into the running pass.
        """
        if self._busy:
            self._again = True
            return
        self._busy = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._pass()
        finally:
            self._busy = False

    def close(self) -> None:
        """Stop the timer and close the socket."""
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    # -- internals --------------------------------------------------------------------------------

    def _pass(self) -> None:
        core = self._core
        try:
            event = core.next_event()
            while event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    self._error(f"handling {type(event).__name__} failed")
                event = core.next_event()
            out = core.datagrams_to_send()
            transport = self._transport
            if out and transport is not None:
                sendto = transport.sendto
                for data, address in out:
                    sendto(data, address)
            deadline = core.get_timer()
        except Exception:
            self._error("presence core failed")
            return
        if deadline != self._timer_at:
            self._cancel_timer()
            if deadline is not None:
                self._timer_at = deadline
                self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self._core.handle_timer(self._loop.time())
        except Exception:
            self._error("presence core failed in its timer")
        self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None

    def _error(self, what: str) -> None:
        self.errors += 1
        if self.errors <= 10 or self.errors % 1000 == 0:
            log.exception("%s (%d errors so far); continuing", what, self.errors)


def open_udp_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to (host, port), with large buffers; ``::`` also takes IPv4.

    Raises:
        OSError: the address cannot be bound; the message names it and what to do.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # a smaller buffer still works
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"cannot bind UDP {host}:{port}: {exc.strerror}; another process may hold the port "
            "(use udp_port = 0 for a free one) or the address is not local",
        ) from exc
    return sock


async def start_presence_link(
    core: DatagramCore, on_event: Callable[[ServerEvent], None], host: str, port: int
) -> PresenceLink:
    """Bind UDP (host, port) and connect a :class:`PresenceLink` to it.

    Raises:
        OSError: the address cannot be bound (see ``open_udp_socket``).
    """
    loop = asyncio.get_running_loop()
    sock = open_udp_socket(host, port)
    _, link = await loop.create_datagram_endpoint(lambda: PresenceLink(core, loop, on_event), sock=sock)
    return link
