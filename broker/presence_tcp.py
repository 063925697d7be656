"""Presence over TCP/TLS for devices whose network blocks UDP (only TCP to 443 gets out).

The same presence core serves both transports. Each TLS connection carries length-prefixed
presence messages (``protocol/presence_stream.py``); the link hands each message to the core as
a datagram from a **stream address**: the connection's peer ``(ip, port)`` with ``%tcp`` added to
the IP (``("198.51.100.7%tcp", 40312)``). That address is unique per open connection, can never be
the source of a UDP datagram (datagrams that claim such a source are dropped), and the core's
helpers ignore everything after ``%``, so:

- the reflexive address the device learns (REGISTERED, KEEPALIVE_ACK) is its TCP mapping as the
  broker sees it: true, shown in ``dvrlinkd status``, but no use for UDP hole punching;
- ``DeviceMoved`` over TCP means the device's session now arrives on another connection (it
  reconnected); replies and invites follow to the new one;
- when the connection a session is reached over closes, the core is told
  (``connection_closed``) and the device is offline at once: nothing can reach it there, and
  waiting for 2.5 of its (long, TCP) keepalive intervals would list a dead device as online;
- the cookie round trip still binds a registration to the connection's peer address; the
  amplification rules are moot over TCP, so the limits here are per connection instead:
  connections per IP and in all, a first message within ``first_message_timeout_s``, an idle
  timeout, and a close after ``max_dropped`` messages the core refused.

:class:`TransportRouter` wraps the core for the UDP :class:`~dvrlink.broker.presence_link.PresenceLink`,
which stays the one owner of the core's events and timer: what the core queues for a stream
address is written to that connection, the rest goes out of the UDP socket.

TLS uses the broker's HTTPS certificate. It is there to pass middleboxes on port 443 and to hide
the protocol, not for trust: devices pin the broker by its presence key inside the protocol and
do not check the certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from dvrlink.protocol.presence_events import Address, ServerEvent
from dvrlink.protocol.presence_stream import StreamDeframer, encode_frame

STREAM_MARK = "%tcp"
"""Added to a TCP peer's IP to make its stream address."""

log = logging.getLogger(__name__)


def stream_address(peer: Address) -> Address:
    """The core-facing address of a TCP connection from ``peer``."""
    return (f"{peer[0]}{STREAM_MARK}", peer[1])


def is_stream_address(address: Address) -> bool:
    """True if ``address`` names a TCP connection rather than a UDP source."""
    return address[0].endswith(STREAM_MARK)


class ServerCore(Protocol):
    """What the router needs of ``PresenceServer``."""

    stats: dict[str, int]

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None: ...
    def datagrams_to_send(self) -> list[tuple[bytes, Address]]: ...
    def next_event(self) -> ServerEvent | None: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def connection_closed(self, address: Address, now: float) -> None: ...


class TransportRouter:
    """The presence core as the UDP link sees it, with stream addresses routed to TCP.

    ``send_stream(data, address)`` writes to a connection (set by :meth:`attach`); until one is
    attached, messages for stream addresses are dropped and counted in ``unrouted``.
    """

    def __init__(self, core: ServerCore) -> None:
        self._core = core
        self._send_stream: Callable[[bytes, Address], None] | None = None
        self.unrouted = 0
        self.spoofed = 0
        """UDP datagrams whose source looked like a stream address (dropped)."""

    def attach(self, send_stream: Callable[[bytes, Address], None]) -> None:
        """Route stream-addressed messages to ``send_stream`` from now on."""
        self._send_stream = send_stream

    # -- DatagramCore, for the UDP link --------------------------------------------------------

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        """A datagram from the UDP socket (a source that looks like a stream address is dropped)."""
        if is_stream_address(address):
            self.spoofed += 1
            return
        self._core.receive_datagram(data, address, now)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """The core's UDP datagrams; stream-addressed ones are written to their connection here."""
        out = self._core.datagrams_to_send()
        if not any(is_stream_address(address) for _, address in out):
            return out
        udp: list[tuple[bytes, Address]] = []
        for data, address in out:
            if not is_stream_address(address):
                udp.append((data, address))
            elif self._send_stream is None:
                self.unrouted += 1
            else:
                self._send_stream(data, address)
        return udp

    def next_event(self) -> ServerEvent | None:
        """The core's next event."""
        return self._core.next_event()

    def get_timer(self) -> float | None:
        """The core's timer."""
        return self._core.get_timer()

    def handle_timer(self, now: float) -> None:
        """Run the core's timer."""
        self._core.handle_timer(now)

    # -- for the TCP link ----------------------------------------------------------------------

    def stream_closed(self, address: Address, now: float) -> None:
        """A TCP connection closed: a device reached over it goes offline at once."""
        self._core.connection_closed(address, now)

    def receive_stream(self, data: bytes, address: Address, now: float) -> bool:
        """A message from a TCP connection; True if the core accepted it (did not count it dropped)."""
        before = self._core.stats.get("dropped", 0)
        self._core.receive_datagram(data, address, now)
        return self._core.stats.get("dropped", 0) == before


@dataclass(frozen=True, slots=True)
class PresenceTcpConfig:
    """Where presence over TCP/TLS listens, and its per-connection limits (fixed in the code;
    only ``host`` and ``port`` are broker configuration keys)."""

    host: str = "0.0.0.0"
    """IP literal to listen on."""
    port: int = 443
    """TCP port; 0 picks a free one (see :attr:`PresenceTcpServer.address`)."""
    max_connections: int = 20000
    """Connections at once; more are closed on accept."""
    max_per_ip: int = 256
    """Connections at once from one IP (many devices may share a carrier or office NAT)."""
    tls_handshake_timeout_s: float = 15.0
    """Seconds a client may take for the TLS handshake."""
    first_message_timeout_s: float = 20.0
    """Seconds from accept to the first whole presence message."""
    idle_timeout_s: float = 3900.0
    """Seconds without a message before the connection is closed (above the longest keepalive
    interval the core grants, 3600 s)."""
    max_dropped: int = 32
    """Messages the core refused on one connection before it is closed."""
    max_write_buffer: int = 64 * 1024
    """Bytes queued towards one client; beyond it messages are dropped (the cores retransmit)."""
    sweep_interval_s: float = 5.0
    """How often the timeouts are checked."""


class _Connection(asyncio.Protocol):
    """One device's TLS connection."""

    def __init__(self, server: PresenceTcpServer) -> None:
        self._server = server
        self._deframer = StreamDeframer()
        self.transport: asyncio.Transport | None = None
        self.address: Address | None = None
        self.peer_ip = ""
        self.last_message: float | None = None
        self.accepted_at = 0.0
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.accepted_at = self._server.now()
        if not peer:
            self.transport.close()
            return
        self.peer_ip = str(peer[0])
        self.address = stream_address((self.peer_ip, int(peer[1])))
        self._server.opened(self)

    def data_received(self, data: bytes) -> None:
        if self.address is None or self.transport is None or self.transport.is_closing():
            return
        self._deframer.receive_data(data)
        while (message := self._deframer.next_message()) is not None:
            self.last_message = self._server.now()
            if not self._server.message(message, self.address):
                self.dropped += 1
                if self.dropped >= self._server.config.max_dropped:
                    log.info("presence TCP %s: %d refused messages, closing", self.address[0], self.dropped)
                    self.transport.close()
                    return
        if self._deframer.error is not None:
            self._server.bad_streams += 1
            log.info("presence TCP %s: %s; closing", self.address[0], self._deframer.error)
            self.transport.close()
        self._server.flush()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.closed(self)


class PresenceTcpServer:
    """The TCP/TLS listener; build it with :func:`start_presence_tcp`."""

    def __init__(
        self,
        router: TransportRouter,
        flush: Callable[[], None],
        config: PresenceTcpConfig,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.config = config
        self._router = router
        self._flush = flush
        self._loop = loop
        self._server: asyncio.Server | None = None
        self._connections: dict[Address, _Connection] = {}
        self._per_ip: dict[str, int] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.refused = 0
        """Connections closed on accept (limits)."""
        self.timed_out = 0
        self.bad_streams = 0
        self.dropped_writes = 0

    @property
    def address(self) -> Address:
        """The bound (host, port).

        Raises:
            RuntimeError: not listening.
        """
        if self._server is None or not self._server.sockets:
            raise RuntimeError("presence TCP is not listening")
        name = self._server.sockets[0].getsockname()
        return (str(name[0]), int(name[1]))

    @property
    def connection_count(self) -> int:
        """Open connections."""
        return len(self._connections)

    def now(self) -> float:
        """The core's clock."""
        return self._loop.time()

    # -- called by connections ------------------------------------------------------------------

    def opened(self, conn: _Connection) -> None:
        assert conn.address is not None and conn.transport is not None
        count = self._per_ip.get(conn.peer_ip, 0)
        if len(self._connections) >= self.config.max_connections or count >= self.config.max_per_ip:
            self.refused += 1
            if self.refused <= 10 or self.refused % 1000 == 0:
                log.warning(
                    "presence TCP: refused a connection from %s (%d open from it, %d in all; limits %d, %d)",
                    conn.peer_ip,
                    count,
                    len(self._connections),
                    self.config.max_per_ip,
                    self.config.max_connections,
                )
            conn.address = None
            conn.transport.close()
            return
        old = self._connections.get(conn.address)
        if old is not None and old.transport is not None:
            old.transport.close()  # the same peer port again: the old one is gone
        self._connections[conn.address] = conn
        self._per_ip[conn.peer_ip] = count + 1

    def closed(self, conn: _Connection) -> None:
        if conn.address is None or self._connections.get(conn.address) is not conn:
            return
        del self._connections[conn.address]
        left = self._per_ip.get(conn.peer_ip, 1) - 1
        if left > 0:
            self._per_ip[conn.peer_ip] = left
        else:
            self._per_ip.pop(conn.peer_ip, None)
        try:
            self._router.stream_closed(conn.address, self._loop.time())
        except Exception:  # a bug must not kill the link
            log.exception("presence core failed on the close of %s", conn.address[0])
        self._flush()

    def message(self, data: bytes, address: Address) -> bool:
        try:
            return self._router.receive_stream(data, address, self._loop.time())
        except Exception:  # the core never raises on bad input; a bug must not kill the link
            log.exception("presence core failed on a TCP message from %s", address[0])
            return False

    def flush(self) -> None:
        self._flush()

    # -- for the router -------------------------------------------------------------------------

    def send(self, data: bytes, address: Address) -> None:
        """Write one message to the connection at ``address`` (dropped if it is gone or backed up)."""
        conn = self._connections.get(address)
        transport = None if conn is None else conn.transport
        if transport is None or transport.is_closing():
            self.dropped_writes += 1
            return
        if transport.get_write_buffer_size() > self.config.max_write_buffer:
            self.dropped_writes += 1
            return
        transport.write(encode_frame(data))

    def disconnect_all(self) -> None:
        """Close every connection (devices reconnect and register again); the listener stays."""
        for conn in list(self._connections.values()):
            if conn.transport is not None:
                conn.transport.close()

    # -- lifecycle ------------------------------------------------------------------------------

    def start_sweeping(self) -> None:
        self._sweep = self._loop.call_later(self.config.sweep_interval_s, self._run_sweep)

    def _run_sweep(self) -> None:
        now = self._loop.time()
        for conn in list(self._connections.values()):
            if conn.last_message is None:
                late = now - conn.accepted_at > self.config.first_message_timeout_s
            else:
                late = now - conn.last_message > self.config.idle_timeout_s
            if late and conn.transport is not None:
                self.timed_out += 1
                conn.transport.close()
        self.start_sweeping()

    def close(self) -> None:
        """Stop listening and close every connection."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            if conn.transport is not None:
                conn.transport.abort()
        self._connections.clear()
        self._per_ip.clear()

    async def wait_closed(self) -> None:
        """Wait until the listener is closed."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _listen(self, ssl_context: ssl.SSLContext | None) -> None:
        kwargs: dict[str, Any] = {}
        if ssl_context is not None:
            kwargs["ssl_handshake_timeout"] = self.config.tls_handshake_timeout_s
        self._server = await self._loop.create_server(
            lambda: _Connection(self),
            self.config.host,
            self.config.port,
            ssl=ssl_context,
            reuse_address=True,
            **kwargs,
        )


async def start_presence_tcp(
    router: TransportRouter,
    flush: Callable[[], None],
    config: PresenceTcpConfig,
    ssl_context: ssl.SSLContext | None,
) -> PresenceTcpServer:
    """Listen for presence over TCP (TLS unless ``ssl_context`` is None: tests only) and attach
    the listener to ``router``; ``flush`` sends what the core queued (``PresenceLink.flush``).

    Raises:
        OSError: the address cannot be bound; the message names it and what to do.
    """
    server = PresenceTcpServer(router, flush, config, asyncio.get_running_loop())
    try:
        await server._listen(ssl_context)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot listen for presence over TCP on {config.host}:{config.port}: {exc.strerror}; "
            "another service (the HTTPS API, TURN over TCP) may hold the port on that address: give "
            "each its own address or port (presence_tcp_host, presence_tcp_port; 0 = a free port), "
            "and ports below 1024 need root or CAP_NET_BIND_SERVICE",
        ) from exc
    router.attach(server.send)
    server.start_sweeping()
    return server
