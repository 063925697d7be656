"""The thin asyncio link between a UDP socket and the presence core.

Datagrams in go to ``core.receive_datagram`` through a ``CoreDriver`` (``dvrlink.driver``); after
every input (datagram, timer, or a call the application made on the core, announced with
:meth:`PresenceLink.flush`) the driver hands events to the application, has the link send what
the core queued, and re-arms its one timer. This is the broker's hot path: no logging or
allocation per datagram beyond what asyncio and the core need.

A link bound to a specific IPv4 address may take a second socket on a specific IPv6 address
(:meth:`PresenceLink.open_ipv6`, the broker's ``stun_host6``): one core, one driver, and each
answer leaves from the socket of its destination's family. (A ``::`` socket takes both families
too, but its answers leave from whichever address the kernel picks, which a device that sent to
another address of a host with several drops.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from dvrlink.compat import asyncio_compat
from dvrlink.driver.core_driver import Core, CoreDriver
from dvrlink.protocol.presence_events import Address, ServerEvent

SOCKET_BUFFER_BYTES = 4 << 20  # asked for; the kernel caps it at net.core.[rw]mem_max
READ_BATCH = 64
"""Datagrams read per event-loop wake-up at most (``PresenceLink.read_in_batches``)."""
MAX_READ = 65535
"""Bytes read per datagram (a STUN request may carry padding: the core judges the size)."""
V4_MAPPED = "::ffff:"
"""How a dual-stack (``::``) socket names an IPv4 peer: ``::ffff:a.b.c.d``."""

log = logging.getLogger(__name__)


class DatagramCore(Core[ServerEvent, tuple[bytes, Address]], Protocol):
    """What the link needs of a sans-I/O datagram core (``PresenceServer`` is one): what its driver
    needs (events, datagrams out, its timer) and datagrams in from an address."""

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None: ...


class PresenceLink(asyncio.DatagramProtocol):
    """Moves datagrams between the OS and ``core``; ``on_event`` gets every core event.

    ``on_event`` may call into the core (``accept``, ``refuse``); what that queues is sent in the
    same pass. Exceptions from the core or from ``on_event`` are logged (the first few, then
    every thousandth) and counted in ``errors``; they never reach asyncio (``CoreDriver``).
    """

    def __init__(
        self,
        core: DatagramCore,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[ServerEvent], None],
    ) -> None:
        self._receive = core.receive_datagram
        self._driver: CoreDriver[ServerEvent, tuple[bytes, Address]] = CoreDriver(
            core, self._transmit, on_event=on_event, loop=loop, name="presence core", logger=log
        )
        self._transport: asyncio.DatagramTransport | None = None
        self._ipv6 = False
        self._socket6: _Ipv6Socket | None = None
        """The IPv6 socket beside an IPv4 one (:meth:`open_ipv6`), else None."""
        self._batching = False
        self.send_errors = 0

    @property
    def errors(self) -> int:
        """Exceptions from the core or ``on_event`` so far (each logged, then every thousandth)."""
        return self._driver.errors

    # -- asyncio.DatagramProtocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # asyncio's class does not subclass it
        self._ipv6 = transport.get_extra_info("socket").family == socket.AF_INET6

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self._ipv6:  # (host, port, flowinfo, scope_id) -> (host, port)
            host = addr[0]
            # A dual-stack socket (``::``) sees an IPv4 client as ::ffff:a.b.c.d; the core (and
            # the STUN answer's XOR-MAPPED-ADDRESS) takes it as the IPv4 address it is.
            addr = (host[7:] if host.startswith(V4_MAPPED) and "." in host else host, addr[1])
        if self._batching:
            self._driver.feed_from(self._receive, data, addr)
        else:
            self._driver.receive_from(self._receive, data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable from a vanished device) arrive here; they are normal.
        self.send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
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

    @property
    def local_address6(self) -> Address | None:
        """The bound (host, port) of the IPv6 socket :meth:`open_ipv6` added, else None."""
        socket6 = self._socket6
        if socket6 is None or socket6.transport is None:
            return None
        sockname = socket6.transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    async def open_ipv6(self, host: str, port: int, reuse_port: bool = False) -> Address:
        """Take presence on the IPv6 address ``host`` too, beside the link's IPv4 socket (the
        broker's ``stun_host6``): datagrams from IPv6 peers arrive there, and whatever the core
        sends to an IPv6 address leaves from it, so a device that sent to ``host`` hears back
        from ``host``. Returns the bound (host, port). Call it from the running loop.

        Raises:
            RuntimeError: the link has no socket, its socket is IPv6 already, or one was added.
            ValueError: ``host`` is not a specific IPv6 address.
            OSError: the address cannot be bound (see ``open_udp_socket``).
        """
        if self._transport is None or self._transport.is_closing():
            raise RuntimeError("the presence link has no socket; open its IPv4 socket first")
        if self._ipv6 or self._socket6 is not None:
            raise RuntimeError("the presence link takes IPv6 already; open_ipv6 is for an IPv4 link, once")
        address = ipaddress.ip_address(host)
        if address.version != 6 or address.is_unspecified:
            raise ValueError(f"{host} is not a specific IPv6 address; give one address of this host")
        loop = asyncio.get_running_loop()
        sock = open_udp_socket(host, port, reuse_port)
        name = sock.getsockname()
        transport, socket6 = await loop.create_datagram_endpoint(lambda: _Ipv6Socket(self), sock=sock)
        self._socket6 = socket6
        asyncio_compat.batch_datagram_reads(
            transport, socket6, READ_BATCH, MAX_READ, before=self._batch_start, after=self._batch_end
        )
        return (str(name[0]), int(name[1]))

    def read_in_batches(self) -> bool:
        """Read up to ``READ_BATCH`` datagrams per event-loop wake-up (on asyncio's selector loop):
        the core gets them all, then one pass hands out their events, sends their answers and
        re-arms the timer. A storm of registrations then costs one wake-up and one pass per
        batch instead of per datagram. False (one datagram per wake-up, as before) on another
        loop. Call it from the running loop once connected.

        Raises:
            InternalsMoved: asyncio no longer has the internals this uses (``dvrlink.compat``).
        """
        if self._transport is None:
            return False
        return asyncio_compat.batch_datagram_reads(
            self._transport,
            self,
            READ_BATCH,
            MAX_READ,
            before=self._batch_start,
            after=self._batch_end,
        )

    def _batch_start(self) -> None:
        self._batching = True

    def _batch_end(self) -> None:
        self._batching = False
        self._driver.flush()

    def flush(self) -> None:
        """Hand out events, send queued datagrams and re-arm the timer.

        Call it after calling the core from outside the link (e.g. ``send_invite``). Re-entrant:
        a call from inside ``on_event`` is folded into the running pass.
        """
        self._driver.flush()

    def close(self) -> None:
        """Stop the timer and close the socket."""
        self._driver.close()
        if self._transport is not None:
            self._transport.close()
        if self._socket6 is not None and self._socket6.transport is not None:
            self._socket6.transport.close()

    def _transmit(self, out: Sequence[tuple[bytes, Address]]) -> None:
        transport = self._transport
        if transport is not None:
            sendto = transport.sendto
            six = self._ipv6
            socket6 = self._socket6
            for data, address in out:
                if ":" in address[0]:
                    if six:
                        sendto(data, address)
                    elif socket6 is not None and socket6.transport is not None:
                        socket6.transport.sendto(data, address)
                    else:  # no IPv6 socket (closed): nothing can carry it
                        self.send_errors += 1
                elif six:  # an IPv4 client of a dual-stack socket
                    sendto(data, (V4_MAPPED + address[0], address[1]))
                else:
                    sendto(data, address)


class _Ipv6Socket(asyncio.DatagramProtocol):
    """The IPv6 socket of an IPv4 :class:`PresenceLink` (:meth:`PresenceLink.open_ipv6`): what
    arrives goes to the link's core as from (host, port); the link sends through ``transport``."""

    def __init__(self, link: PresenceLink) -> None:
        self._link = link
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._link.datagram_received(data, (addr[0], addr[1]))  # (host, port, flowinfo, scope_id)

    def error_received(self, exc: Exception) -> None:
        self._link.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def open_udp_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A non-blocking UDP socket bound to (host, port), with large buffers; ``::`` also takes IPv4.
    ``reuse_port``: ``SO_REUSEPORT``, so several broker processes share the port (the kernel hashes
    each source address and port to one of them, so a device stays with one process).

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
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
    core: DatagramCore,
    on_event: Callable[[ServerEvent], None],
    host: str,
    port: int,
    reuse_port: bool = False,
) -> PresenceLink:
    """Bind UDP (host, port) and connect a :class:`PresenceLink` to it.

    Raises:
        OSError: the address cannot be bound (see ``open_udp_socket``).
    """
    loop = asyncio.get_running_loop()
    sock = open_udp_socket(host, port, reuse_port)
    _, link = await loop.create_datagram_endpoint(lambda: PresenceLink(core, loop, on_event), sock=sock)
    link.read_in_batches()
    return link
