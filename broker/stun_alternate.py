"""The broker's RFC 5780 sockets: NAT behaviour discovery next to the presence port.

With ``stun_alternate_host`` (a second address of the broker host) configured, the broker
answers STUN Binding requests on four transport addresses (``dvrlink.protocol.stun_behaviour``):
the presence socket (primary IP, primary port) and three sockets this module opens::

    ALTERNATE_PORT  udp_host:stun_alternate_port
    ALTERNATE_IP    stun_alternate_host:udp_port
    ALTERNATE_BOTH  stun_alternate_host:stun_alternate_port

The presence core keeps answering STUN on its own socket, through :meth:`StunResponder.answer_on_primary`
(its ``stun`` hook); a request with CHANGE-REQUEST is answered from one of the alternate sockets
instead. A request on an alternate socket whose reply must come from the primary address, and a
request on the primary socket with RESPONSE-PORT, go through ``send_from_primary`` (the presence
link). The alternate sockets carry nothing but STUN. Without ``stun_alternate_host`` the same
responder answers plain STUN (``dvrlink.protocol.stun``). Either way, a per-source-IP rate limit
(``stun_rate_per_s``, ``stun_rate_burst``) decides which requests are answered at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from dvrlink.broker.presence_link import open_udp_socket
from dvrlink.protocol.presence_events import Address
from dvrlink.protocol.stun import StunRateLimiter, binding_response
from dvrlink.protocol.stun_behaviour import Origin, Rfc5780Addresses, StunReply, answer_binding

log = logging.getLogger(__name__)

SendFunction = Callable[[bytes, Address], None]


class _AlternateSocket(asyncio.DatagramProtocol):
    """One alternate socket: every datagram goes to the owner with this socket's origin."""

    def __init__(self, owner: StunResponder, origin: Origin) -> None:
        self._owner = owner
        self.origin = origin
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._owner.receive(data, (str(addr[0]), int(addr[1])), self.origin)

    def error_received(self, exc: Exception) -> None:
        self._owner.stats["send_errors"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class StunResponder:
    """The broker's STUN Binding responder: plain (``alternate_host`` None) or RFC 5780 over the
    presence socket and three alternate sockets, with a per-source rate limit.

    Build it before the presence core (which takes :meth:`answer_on_primary` as its STUN hook);
    with an alternate host, :meth:`start` it once the presence socket is bound. Until then, and
    after :meth:`close`, the hook answers like a plain STUN server (no RFC 5780 attributes).
    ``limiter`` (None: no limit) decides, per source IP, which requests are answered at all;
    ``clock`` gives it a monotonic ``now`` in seconds.
    """

    def __init__(
        self,
        alternate_host: str | None,
        alternate_port: int,
        limiter: StunRateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._alternate_host = alternate_host
        self._alternate_port = alternate_port
        self._limiter = limiter
        self._clock = clock
        self._addresses: Rfc5780Addresses | None = None
        self._sockets: dict[Origin, _AlternateSocket] = {}
        self._send_from_primary: SendFunction | None = None
        self.stats: dict[str, int] = {
            "requests": 0,
            "changed": 0,
            "dropped": 0,
            "send_errors": 0,
            "rate_limited": 0,
        }

    @property
    def addresses(self) -> Rfc5780Addresses | None:
        """The four addresses once started, else None."""
        return self._addresses

    def _allowed(self, source: Address) -> bool:
        if self._limiter is None or self._limiter.allow(source[0], self._clock()):
            return True
        self.stats["rate_limited"] += 1
        return False

    def answer_on_primary(self, data: bytes, source: Address) -> bytes | None:
        """The presence core's STUN hook: the reply to send from the presence socket, ``b""``
        when the reply went out from another socket (or to another port) or the source is over
        its rate, or None if ``data`` is not a Binding request. Never raises on bad input."""
        if self._addresses is None:
            reply_data = binding_response(data, source)
            if reply_data is None:
                return None
            return reply_data if self._allowed(source) else b""
        reply = answer_binding(data, source, Origin.PRIMARY, self._addresses)
        if reply is None:
            return None
        if not self._allowed(source):
            return b""
        self.stats["requests"] += 1
        if reply.origin is Origin.PRIMARY and reply.destination == source:
            return reply.data
        self._send(reply)
        return b""

    def receive(self, data: bytes, source: Address, origin: Origin) -> None:
        """A datagram arrived on the alternate socket of ``origin``; answer it if it is a
        Binding request (and the source is within its rate), else drop it."""
        if self._addresses is None:
            return
        reply = answer_binding(data, source, origin, self._addresses)
        if reply is None or not self._allowed(source):
            self.stats["dropped"] += 1
            return
        self.stats["requests"] += 1
        self._send(reply)

    def _send(self, reply: StunReply) -> None:
        if reply.origin is Origin.PRIMARY:
            if self._send_from_primary is not None:
                self._send_from_primary(reply.data, reply.destination)
            return
        self.stats["changed"] += 1
        sock = self._sockets.get(reply.origin)
        if sock is None or sock.transport is None:
            self.stats["dropped"] += 1
            return
        sock.transport.sendto(reply.data, reply.destination)

    async def start(self, primary: Address, send_from_primary: SendFunction) -> Rfc5780Addresses:
        """Open the three alternate sockets next to the bound presence socket ``primary``.

        ``send_from_primary(data, destination)`` sends from the presence socket. A configured
        alternate port of 0 takes a free port (the same on both IPs).

        Raises:
            ValueError: the addresses cannot serve RFC 5780 (e.g. the presence socket is bound
                to a wildcard); the message says what to set.
            OSError: an alternate socket cannot be bound; the message names the address.
        """
        if self._alternate_host is None:
            raise ValueError(
                "the STUN responder has no alternate host; set stun_alternate_host to serve RFC 5780"
            )
        alternate_host = self._alternate_host
        loop = asyncio.get_running_loop()
        primary_host, primary_port = primary
        # Check the addresses before binding anything (a stand-in port while the real one is 0).
        Rfc5780Addresses(
            primary_host, primary_port, alternate_host, self._alternate_port or 1 + primary_port % 65535
        )
        self._send_from_primary = send_from_primary
        try:
            port = self._alternate_port
            # Bound in this order so that a kernel-picked alternate port is known for the last one.
            for origin in (Origin.ALTERNATE_PORT, Origin.ALTERNATE_IP, Origin.ALTERNATE_BOTH):
                host = alternate_host if origin.alternate_ip else primary_host
                sock = open_udp_socket(host, port if origin.alternate_port else primary_port)
                if origin is Origin.ALTERNATE_PORT:
                    port = int(sock.getsockname()[1])
                _, protocol = await loop.create_datagram_endpoint(
                    lambda o=origin: _AlternateSocket(self, o),  # type: ignore[misc]
                    sock=sock,
                )
                self._sockets[origin] = protocol
            self._addresses = Rfc5780Addresses(primary_host, primary_port, alternate_host, port)
        except BaseException:
            self.close()
            raise
        log.info(
            "RFC 5780 STUN: primary %s:%d, alternate %s:%d",
            primary_host,
            primary_port,
            alternate_host,
            port,
        )
        return self._addresses

    def close(self) -> None:
        """Close the alternate sockets; the hook falls back to plain STUN answers."""
        self._addresses = None
        for sock in self._sockets.values():
            if sock.transport is not None:
                sock.transport.close()
        self._sockets.clear()


class _StunOnlyPrimary(asyncio.DatagramProtocol):
    """The primary socket of a STUN-only service: it answers through the responder's presence
    hook (:meth:`StunResponder.answer_on_primary`), as the presence socket does."""

    def __init__(self, owner: StunResponder) -> None:
        self._owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        source = (str(addr[0]), int(addr[1]))
        reply = self._owner.answer_on_primary(data, source)
        if reply and self.transport is not None:
            self.transport.sendto(reply, source)

    def error_received(self, exc: Exception) -> None:
        self._owner.stats["send_errors"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def send(self, data: bytes, destination: Address) -> None:
        """Send from this socket (the responder's ``send_from_primary``); dropped once closed."""
        if self.transport is not None:
            self.transport.sendto(data, destination)


class StunService:
    """STUN on its own socket, next to the presence one: the broker's IPv6 STUN (``stun_host6``,
    and with ``stun_alternate_host6`` RFC 5780 on three more sockets) when presence runs on a
    specific IPv4 address. Carries STUN only. Start with :func:`start_stun_service`."""

    def __init__(self, responder: StunResponder, primary: _StunOnlyPrimary, address: Address) -> None:
        self.responder = responder
        self._primary = primary
        self.address = address
        """The bound primary (host, port)."""

    def listening(self) -> list[tuple[str, Address]]:
        """(label, address) of every socket, for the broker's start-up log and broker.json."""
        out = [("stun6/udp", self.address)]
        addresses = self.responder.addresses
        if addresses is not None:
            out += [
                ("stun6-alternate-port/udp", (addresses.primary_host, addresses.alternate_port)),
                ("stun6-alternate-address/udp", (addresses.alternate_host, addresses.primary_port)),
                ("stun6-alternate-both/udp", (addresses.alternate_host, addresses.alternate_port)),
            ]
        return out

    def close(self) -> None:
        """Close every socket (idempotent)."""
        self.responder.close()
        if self._primary.transport is not None:
            self._primary.transport.close()


async def start_stun_service(
    host: str,
    port: int,
    alternate_host: str | None,
    alternate_port: int,
    limiter: StunRateLimiter | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> StunService:
    """Bind STUN on (``host``, ``port``), and with ``alternate_host`` RFC 5780 on the alternate
    address and ``alternate_port`` (0: a free one).

    Raises:
        OSError: a socket cannot be bound; the message names the address.
        ValueError: the addresses cannot serve RFC 5780 (the message says what to set).
    """
    loop = asyncio.get_running_loop()
    responder = StunResponder(alternate_host, alternate_port, limiter, clock)
    sock = open_udp_socket(host, port)
    _, primary = await loop.create_datagram_endpoint(lambda: _StunOnlyPrimary(responder), sock=sock)
    name = sock.getsockname()
    address = (str(name[0]), int(name[1]))
    service = StunService(responder, primary, address)
    if alternate_host is not None:
        try:
            await responder.start(address, primary.send)
        except BaseException:
            service.close()
            raise
    log.info("STUN also on %s:%d%s", address[0], address[1], " (RFC 5780)" if alternate_host else "")
    return service
