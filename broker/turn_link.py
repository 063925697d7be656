"""The thin asyncio links around the TURN core: a UDP and a TCP listener for clients, and one UDP
relay socket per allocation.

Client datagrams, TCP frames and peer datagrams go into the :class:`TurnServer`; after each
batch of input a ``CoreDriver`` (``dvrlink.driver``) hands out the core's events, has the link
send what the core queued, and re-arms one timer.
TCP streams carry STUN messages and ChannelData frames back to back (RFC 8656 section 12.5,
frames padded to 4 bytes); the link reassembles them across reads and closes a stream that
carries anything else.

The client UDP listener and the relay sockets are plain non-blocking sockets watched with
``add_reader``: opening a relay socket is then synchronous, as the core's :class:`RelayPorts`
needs, and each wake-up reads up to ``READS_PER_WAKEUP`` datagrams. Relayed data takes the core's
hot paths (:meth:`TurnServer.receive_udp`, :meth:`TurnServer.relay_from_peer`), which hand back
the datagram to forward; the link sends it at once with ``sendto`` and only goes through the
outbox, the events and the timer after a datagram that queued something there. A datagram that
does not fit a full send buffer is dropped and counted in ``send_errors``, as UDP allows.

Start it with :func:`start_turn_link`; the core's ``now`` is unix time (``time.time``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from dvrlink.broker.turn_server import (
    Address,
    ToPeer,
    Transport,
    TurnConfig,
    TurnEvent,
    TurnServer,
    Via,
)
from dvrlink.driver.core_driver import CoreDriver

SOCKET_BUFFER_BYTES = 4 << 20  # asked for; the kernel caps it at net.core.[rw]mem_max
READS_PER_WAKEUP = 64
RELAY_BIND_TRIES = 64
MAX_UDP_PAYLOAD = 65535
TCP_LIMIT = 1 << 20  # a TCP client this far behind loses relayed data instead of memory

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnLinkConfig:
    """Where the TURN relay listens and relays.

    Raises (on construction):
        ValueError: an address is not an IP literal, a port is out of range, or the relay binds
            a wildcard address without ``relay_public_host``.
    """

    host: str = "0.0.0.0"
    """IP literal the client UDP and TCP listeners bind to."""
    udp_port: int = 3479
    """Client UDP port; 0 picks a free one (see ``TurnLink.udp_address``)."""
    tcp_port: int | None = 3479
    """Client TCP port; 0 picks a free one; None: no TCP listener."""
    relay_host: str = "0.0.0.0"
    """IP literal relay sockets bind to."""
    relay_public_host: str | None = None
    """IP sent to clients as XOR-RELAYED-ADDRESS; default ``relay_host`` (required if that is a
    wildcard)."""
    relay_port_min: int = 49152
    """Lowest relay port; with ``relay_port_max`` 0 and 0 the kernel picks ephemeral ports."""
    relay_port_max: int = 65535
    """Highest relay port."""
    max_tcp_connections: int = 1024
    """Client TCP connections at once; more are closed on accept."""

    def __post_init__(self) -> None:
        for name in ("host", "relay_host"):
            try:
                ipaddress.ip_address(getattr(self, name))
            except ValueError as exc:
                value = getattr(self, name)
                raise ValueError(f"TurnLinkConfig.{name}: {value!r} is not an IP literal") from exc
        relay = ipaddress.ip_address(self.relay_host)
        if self.relay_public_host is not None:
            public = ipaddress.ip_address(self.relay_public_host)
            if public.version != relay.version:
                raise ValueError("TurnLinkConfig.relay_public_host and relay_host differ in IP version")
        elif relay.is_unspecified:
            raise ValueError(
                f"TurnLinkConfig.relay_host is {self.relay_host}; set relay_public_host to the address "
                "peers reach the relay at, or bind relay_host to that address"
            )
        for name in ("udp_port", "tcp_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"TurnLinkConfig.{name} must be 0..65535, got {port}")
        if (self.relay_port_min, self.relay_port_max) != (0, 0) and not (
            1 <= self.relay_port_min <= self.relay_port_max <= 65535
        ):
            raise ValueError(
                f"TurnLinkConfig relay ports {self.relay_port_min}..{self.relay_port_max}: need "
                "1 <= min <= max <= 65535, or 0 and 0 for ephemeral ports"
            )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _short(address: Any) -> Address:
    return (str(address[0]), int(address[1]))


def _as_is(address: Any) -> Address:
    return address  # type: ignore[no-any-return]  # an AF_INET recvfrom address is (str, int)


def _address_reader(sock: socket.socket) -> Callable[[Any], Address]:
    """How to turn this socket's recvfrom addresses into an :data:`Address`: AF_INET ones already
    are (host, port); AF_INET6 ones carry flow info and scope id too."""
    return _as_is if sock.family == socket.AF_INET else _short


class _RelaySockets:
    """The core's :class:`RelayPorts`: one bound, non-blocking UDP socket per allocation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: TurnLinkConfig) -> None:
        self._loop = loop
        self._config = config
        self.sockets: dict[int, socket.socket] = {}
        """The open relay socket of each allocation id (the link sends from these directly)."""
        self.held: dict[int, socket.socket] = {}
        """Ports held for a reservation (EVEN-PORT with the R bit), by reservation id; not read."""
        self._random = random.Random(os.urandom(16))
        self.link: TurnLink | None = None

    def _candidates(self, even: bool, pair: bool = False) -> list[int]:
        """Ports to try binding, in a random order; [0, ...] when the kernel picks."""
        config = self._config
        if config.relay_port_min == 0:
            return [0] * RELAY_BIND_TRIES  # the kernel picks; retried until even if asked
        high = config.relay_port_max - (1 if pair else 0)
        span = high - config.relay_port_min + 1
        if span < 1:
            return []
        start = self._random.randrange(span)
        candidates = [config.relay_port_min + (start + i * 7919) % span for i in range(span)]
        if even:
            candidates = [port for port in candidates if port % 2 == 0]
        return candidates[:RELAY_BIND_TRIES]

    def _bind(self, port: int) -> socket.socket | None:
        sock = socket.socket(_family(self._config.relay_host), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self._config.relay_host, port))
        except OSError:
            sock.close()
            return None
        return sock

    def _serve(self, allocation_id: int, sock: socket.socket) -> Address:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, 1 << 18)
        self.sockets[allocation_id] = sock
        self._loop.add_reader(sock.fileno(), self._readable, allocation_id, sock)
        config = self._config
        return (config.relay_public_host or config.relay_host, int(sock.getsockname()[1]))

    def _no_port(self, what: str, tries: int) -> None:
        config = self._config
        log.warning(
            "no free relay %s in %s:%d-%d after %d tries; widen the range or lower the quotas",
            what,
            config.relay_host,
            config.relay_port_min,
            config.relay_port_max,
            tries,
        )

    def open(self, allocation_id: int, even: bool) -> Address | None:
        candidates = self._candidates(even)
        rejected: list[socket.socket] = []  # odd kernel-picked ports, held so they are not picked again
        try:
            for port in candidates:
                sock = self._bind(port)
                if sock is None:
                    continue
                if even and int(sock.getsockname()[1]) % 2:
                    rejected.append(sock)
                    continue
                return self._serve(allocation_id, sock)
        finally:
            for sock in rejected:
                sock.close()
        self._no_port("port", len(candidates))
        return None

    def open_pair(self, allocation_id: int, reservation_id: int) -> Address | None:
        candidates = self._candidates(even=True, pair=True)
        rejected: list[socket.socket] = []  # kernel-picked ports that did not start a free pair
        try:
            for port in candidates:
                sock = self._bind(port)
                if sock is None:
                    continue
                bound = int(sock.getsockname()[1])
                following = self._bind(bound + 1) if bound % 2 == 0 and bound < 65535 else None
                if following is None:
                    rejected.append(sock)
                    continue
                self.held[reservation_id] = following
                return self._serve(allocation_id, sock)
        finally:
            for sock in rejected:
                sock.close()
        self._no_port("port pair", len(candidates))
        return None

    def claim(self, reservation_id: int, allocation_id: int) -> Address | None:
        sock = self.held.pop(reservation_id, None)
        return None if sock is None else self._serve(allocation_id, sock)

    def release(self, reservation_id: int) -> None:
        sock = self.held.pop(reservation_id, None)
        if sock is not None:
            sock.close()

    def close(self, allocation_id: int) -> None:
        sock = self.sockets.pop(allocation_id, None)
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def send(self, allocation_id: int, data: bytes, peer: Address) -> bool:
        sock = self.sockets.get(allocation_id)
        if sock is None:
            return False
        try:
            sock.sendto(data, peer)
        except OSError:
            return False
        return True

    def close_all(self) -> None:
        for allocation_id in list(self.sockets):
            self.close(allocation_id)
        for reservation_id in list(self.held):
            self.release(reservation_id)

    def _readable(self, allocation_id: int, sock: socket.socket) -> None:
        link = self.link
        if link is None:
            return
        link.relay_readable(allocation_id, sock)


class _ClientTcp(asyncio.Protocol):
    """One client TCP connection: splits the stream into STUN messages and ChannelData frames."""

    def __init__(self, link: TurnLink) -> None:
        self._link = link
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._address: Address | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        link = self._link
        self._transport = cast(asyncio.Transport, transport)
        self._address = _short(transport.get_extra_info("peername"))
        if len(link.tcp_clients) >= link.config.max_tcp_connections:
            log.warning(
                "TURN TCP connection from %s refused: %d connections open",
                self._address,
                len(link.tcp_clients),
            )
            self._transport.close()
            self._address = None
            return
        link.tcp_clients[self._address] = self._transport

    def data_received(self, data: bytes) -> None:
        address = self._address
        if address is None:
            return
        buffer = self._buffer
        buffer += data
        link = self._link
        now = link.clock()
        offset = 0
        while len(buffer) - offset >= 4:
            first = buffer[offset]
            length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
            if first < 0x40:
                size = 20 + length
            elif first < 0x80:
                size = 4 + length + (-length % 4)
            else:
                log.info("TURN TCP client %s sent a frame starting 0x%02x; closing", address, first)
                buffer.clear()
                if self._transport is not None:
                    self._transport.close()
                return
            if len(buffer) - offset < size:
                break
            frame = bytes(buffer[offset : offset + size])
            offset += size
            try:
                link.core.receive_datagram(frame, address, now, Transport.TCP)
            except Exception:
                link.log_error("TURN core failed on a TCP frame")
        del buffer[:offset]
        link.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        address = self._address
        if address is None:
            return
        self._address = None
        link = self._link
        link.tcp_clients.pop(address, None)
        try:
            link.core.client_disconnected(Transport.TCP, address, link.clock())
        except Exception:
            link.log_error("TURN core failed on a TCP disconnect")
        link.flush()


class TurnLink:
    """A running TURN relay: the core, its sockets and its timer. Build it with
    :func:`start_turn_link`; stop it with :meth:`close` (then ``await wait_closed()``)."""

    def __init__(
        self,
        core: TurnServer,
        relays: _RelaySockets,
        config: TurnLinkConfig,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[TurnEvent], None] | None,
        clock: Callable[[], float],
    ) -> None:
        self.core = core
        self.config = config
        self.clock = clock
        self._relays = relays
        self._loop = loop
        self._driver: CoreDriver[TurnEvent, tuple[bytes, Address, Via]] = CoreDriver(
            core, self._transmit, on_event=on_event, clock=clock, loop=loop, name="TURN core", logger=log
        )
        self._udp: socket.socket | None = None
        self._udp_address: Callable[[Any], Address] = _short
        self._tcp_server: asyncio.Server | None = None
        self.tcp_clients: dict[Address, asyncio.Transport] = {}
        self.send_errors = 0
        self.dropped_tcp = 0

    @property
    def errors(self) -> int:
        """Exceptions from the core or ``on_event`` so far (each logged, then every thousandth)."""
        return self._driver.errors

    @property
    def udp_address(self) -> Address:
        """The bound client UDP (host, port).

        Raises:
            RuntimeError: the link is closed.
        """
        if self._udp is None:
            raise RuntimeError("the TURN link is closed")
        return _short(self._udp.getsockname())

    @property
    def tcp_address(self) -> Address | None:
        """The bound client TCP (host, port), or None without a TCP listener."""
        if self._tcp_server is None or not self._tcp_server.sockets:
            return None
        return _short(self._tcp_server.sockets[0].getsockname())

    def flush(self) -> None:
        """Hand out events, send what the core queued and re-arm the timer. Re-entrant."""
        self._driver.flush()

    def close(self) -> None:
        """Stop the timer, delete every allocation and close every socket."""
        self._driver.close()
        with contextlib.suppress(Exception):
            self.core.close()
            while self.core.next_event() is not None:
                pass
        self._relays.close_all()
        if self._udp is not None:
            self._loop.remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        if self._tcp_server is not None:
            self._tcp_server.close()
        for transport in list(self.tcp_clients.values()):
            transport.abort()
        self.tcp_clients.clear()

    async def wait_closed(self) -> None:
        """Wait until the TCP listener has shut down (after :meth:`close`)."""
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
            self._tcp_server = None

    def log_error(self, what: str) -> None:
        """Count and log a failure of the core (call it in an ``except`` block)."""
        self._driver.failed(what)

    def attach_udp(self, sock: socket.socket) -> None:
        """Serve clients on ``sock``, a bound, non-blocking UDP socket the link now owns."""
        self._udp = sock
        self._udp_address = _address_reader(sock)
        self._loop.add_reader(sock.fileno(), self._client_readable, sock)

    def relay_readable(self, allocation_id: int, sock: socket.socket) -> None:
        """Read up to ``READS_PER_WAKEUP`` peer datagrams from the relay socket of ``allocation_id``."""
        core = self.core
        relay = core.relay_from_peer
        address_of = _address_reader(sock)
        client_udp = self._udp
        sockets = self._relays.sockets
        now = self.clock()
        queued = False
        for _ in range(READS_PER_WAKEUP):
            try:
                data, peer = sock.recvfrom(MAX_UDP_PAYLOAD)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.send_errors += 1
                break
            try:
                routed = relay(allocation_id, data, address_of(peer), now)
            except Exception:
                self.log_error("TURN core failed on a peer datagram")
                queued = True
                continue
            if routed is None:
                queued = True  # maybe something for a TCP client in the outbox; flushed below
            elif client_udp is not None:
                if queued:
                    self.flush()  # keep the order of what goes to the client
                    queued = False
                try:
                    client_udp.sendto(routed[0], routed[1])
                except OSError:
                    self.send_errors += 1
            if allocation_id not in sockets:  # the allocation went while handling it
                break
        if queued:
            self.flush()

    # -- internals -------------------------------------------------------------------------------

    def _client_readable(self, sock: socket.socket) -> None:
        """Read up to ``READS_PER_WAKEUP`` datagrams from the client UDP listener."""
        receive = self.core.receive_udp
        address_of = self._udp_address
        sockets = self._relays.sockets
        now = self.clock()
        queued = False
        for _ in range(READS_PER_WAKEUP):
            try:
                data, address = sock.recvfrom(MAX_UDP_PAYLOAD)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.send_errors += 1  # an ICMP error reported on the socket
                break
            try:
                routed = receive(data, address_of(address), now)
            except Exception:
                self.log_error("TURN core failed on a client datagram")
                queued = True
                continue
            if routed is None:
                queued = True  # a reply, an event or a queued datagram may be waiting
                continue
            if queued:
                self.flush()  # keep the order of what goes to the peer
                queued = False
            relay = sockets.get(routed[0])
            if relay is None:
                self.send_errors += 1
                continue
            try:
                relay.sendto(routed[1], routed[2])
            except OSError:
                self.send_errors += 1
        if queued:
            self.flush()

    def _send_udp(self, data: bytes, destination: Address) -> None:
        sock = self._udp
        if sock is None:
            return
        try:
            sock.sendto(data, destination)
        except OSError:
            self.send_errors += 1

    def _transmit(self, out: Sequence[tuple[bytes, Address, Via]]) -> None:
        for data, destination, via in out:
            if isinstance(via, ToPeer):
                if not self._relays.send(via.allocation_id, data, destination):
                    self.send_errors += 1
            elif via.transport is Transport.UDP:
                self._send_udp(data, destination)
            else:
                stream = self.tcp_clients.get(destination)
                if stream is None or stream.is_closing() or stream.get_write_buffer_size() > TCP_LIMIT:
                    self.dropped_tcp += 1
                else:
                    stream.write(data)


async def start_turn_link(
    config: TurnConfig,
    link_config: TurnLinkConfig,
    *,
    on_event: Callable[[TurnEvent], None] | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    clock: Callable[[], float] = time.time,
) -> TurnLink:
    """Build a :class:`TurnServer`, bind its client UDP (and TCP) listeners and return the link.

    ``on_event`` gets every :class:`TurnEvent` (allocations created and deleted) for logging.

    Raises:
        OSError: a listening address cannot be bound; the message names it.
    """
    loop = asyncio.get_running_loop()
    relays = _RelaySockets(loop, link_config)
    core = TurnServer(config, relays, rng)
    link = TurnLink(core, relays, link_config, loop, on_event, clock)
    relays.link = link
    sock = socket.socket(_family(link_config.host), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sock.bind((link_config.host, link_config.udp_port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"cannot bind TURN UDP {link_config.host}:{link_config.udp_port}: {exc.strerror}; another "
            "process (coturn?) may hold the port; pick another turn port or 0 for a free one",
        ) from exc
    link.attach_udp(sock)
    if link_config.tcp_port is not None:
        try:
            link._tcp_server = await loop.create_server(
                lambda: _ClientTcp(link), link_config.host, link_config.tcp_port, reuse_address=True
            )
        except OSError as exc:
            link.close()
            raise OSError(
                exc.errno,
                f"cannot bind TURN TCP {link_config.host}:{link_config.tcp_port}: {exc.strerror}; "
                "another process may hold the port; pick another or 0 for a free one",
            ) from exc
    return link
