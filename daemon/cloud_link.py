"""The thin asyncio link between the presence core and one UDP socket connected to the broker.

It moves bytes between the OS and ``PresenceClient``; a ``CoreDriver`` (``dvrlink.driver``) passes
the core's events to a handler, sends what it queued and re-arms its one timer. Network trouble
never stops it:

- ``ECONNREFUSED`` (the broker host answered ICMP port unreachable) is logged and ignored; the
  core retries with its own backoff.
- Other socket errors (no route, address gone, network down) several times in a row, or a
  ``ConnectionLost`` while the route to the broker now leaves from another local IP, make the
  link resolve the broker again and open a new socket. When the socket's local address differs
  from the old one, the core is told with ``network_changed`` so it registers again at once.
- If the socket cannot be opened (no DNS or no uplink yet), it tries again every
  ``reopen_delay_s``; the core's datagrams are dropped meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from dvrlink.driver.core_driver import Core, CoreDriver
from dvrlink.protocol.presence_events import Address, ClientEvent, ConnectionLost, HandshakeUnanswered

log = logging.getLogger(__name__)


class LinkCore(Core[ClientEvent, bytes], Protocol):
    """What a presence link (``CloudLink`` over UDP, ``presence_transport.TcpLink`` over TCP) needs
    of ``PresenceClient``: what its driver needs (events, datagrams out, its timer), datagrams in,
    start and stop. What the transport above the links needs besides is
    ``presence_transport.PresenceCore``."""

    def start(self, now: float) -> None: ...
    def stop(self, now: float) -> None: ...
    def receive_datagram(self, data: bytes, now: float) -> None: ...
    def network_changed(self, now: float, reason: str = ...) -> None: ...


class EventHandler(Protocol):
    """Receives the core's events from a link: ``presence_transport.PresenceTransport``, which
    passes them on to the daemon's ``DeviceEvents`` (an ``EventHandler`` too)."""

    def on_event(self, event: ClientEvent) -> None:
        """Handle one event; may call back into the core (e.g. ``reply_invite``)."""

    def after_step(self) -> None:
        """Called after each input or timer once events are drained (state may have changed)."""


def presence_driver(
    core: LinkCore,
    handler: EventHandler,
    send: Callable[[Sequence[bytes]], None],
    on_event: Callable[[ClientEvent], None],
    path: str,
) -> CoreDriver[ClientEvent, bytes]:
    """The driver of a presence link (``CloudLink``, ``presence_transport.TcpLink``): the link's
    ``on_event`` (its own reaction, then ``handler``), ``send`` for the core's datagrams, and
    ``handler.after_step`` after each pass. ``path`` names the link in log lines."""
    return CoreDriver(
        core,
        send,
        on_event=on_event,
        after_step=handler.after_step,
        name=f"presence core (the broker over {path})",
        logger=log,
    )


class CloudLink:
    """Drives ``core`` over UDP to ``host``:``port``. Use ``await start()``, then ``close()``."""

    def __init__(
        self,
        core: LinkCore,
        handler: EventHandler,
        host: str,
        port: int,
        *,
        rebind_after_errors: int = 3,
        reopen_delay_s: float = 5.0,
    ) -> None:
        self._core = core
        self._handler = handler
        self._host = host
        self._port = port
        self._rebind_after = rebind_after_errors
        self._reopen_delay = reopen_delay_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._local: Address | None = None
        self._remote: Address | None = None
        self._driver = presence_driver(core, handler, self._send, self._on_event, f"UDP to {host}:{port}")
        self._reopen: asyncio.Task[None] | None = None
        self._errors = 0
        self._started = False
        self._closed = False
        self.dropped = 0
        """Datagrams the core wanted to send while no socket was open."""
        self.problem = ""
        """Why no socket is open (the broker's name does not resolve, no route), for
        ``dvrlinkd status``; empty while one is."""

    @property
    def local_address(self) -> Address | None:
        """The socket's local (ip, port), or None while no socket is open."""
        return self._local

    async def start(self, *, resume: bool = False, register_now: bool = True) -> None:
        """Open the socket and start the core. Network errors are logged and retried, not raised.
        ``resume``: the core runs already (presence moves here from another transport or broker
        node), so it is told the network changed instead, and registers again over this socket;
        with ``register_now=False`` it is not told (it backs off after a failed attempt, and its
        own timer sends the next HELLO here).

        Raises:
            RuntimeError: called twice.
        """
        if self._loop is not None:
            raise RuntimeError("CloudLink.start() called twice")
        self._loop = asyncio.get_running_loop()
        await self._open()
        self._started = True
        if resume:
            if register_now:
                self._core.network_changed(
                    self._loop.time(), f"presence moved to UDP {self._host}:{self._port}"
                )
        else:
            self._core.start(self._loop.time())
        self._driver.flush()

    def close(self) -> None:
        """Stop the core (it says goodbye if online), send what it queued, close the socket."""
        if self._closed or self._loop is None:
            return
        if self._started:
            self._core.stop(self._loop.time())
            self._send(self._core.datagrams_to_send())
        self.detach()

    def detach(self) -> None:
        """Close the socket and stop driving the core, which keeps its state (presence moves to
        another transport; no GOODBYE)."""
        if self._closed:
            return
        self._closed = True
        self._driver.close()
        if self._reopen is not None:
            self._reopen.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # --- socket ------------------------------------------------------------------------------

    async def _open(self) -> None:
        """(Re)resolve the broker and open a new connected socket; on failure retry later."""
        assert self._loop is not None
        loop = self._loop
        try:
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
            transport, remote = await self._connect_first(infos)
        except OSError as exc:
            self.problem = unreachable_problem(
                exc, self._host, f"cannot open a UDP socket to the broker {self._host}:{self._port}"
            )
            log.warning(
                "cannot open a UDP socket to the broker %s:%d (%s); retrying in %g s",
                self._host,
                self._port,
                exc,
                self._reopen_delay,
            )
            self._schedule_reopen(self._reopen_delay)
            return
        if self._closed:
            transport.close()
            return
        old_transport, old_local = self._transport, self._local
        sockname = transport.get_extra_info("sockname")
        self._transport = transport
        self._local = (str(sockname[0]), int(sockname[1]))
        self._remote = remote
        self._errors = 0
        self.problem = ""
        if old_transport is not None:
            old_transport.close()
        log.info("UDP socket %s:%d -> broker %s:%d", *self._local, *remote)
        if self._started and self._local != old_local:
            self._core.network_changed(loop.time())
            self._driver.flush()

    async def _connect_first(
        self, infos: list[tuple[Any, Any, Any, Any, Any]]
    ) -> tuple[asyncio.DatagramTransport, Address]:
        """A socket connected to the first resolved address that has a route (IPv6 may have none).

        Raises:
            OSError: none of them could be used (the last error).
        """
        assert self._loop is not None
        error: OSError = OSError(f"{self._host} has no address")
        for family, _, _, _, sockaddr in infos:
            remote = (str(sockaddr[0]), int(sockaddr[1]))
            try:
                transport, _ = await self._loop.create_datagram_endpoint(
                    lambda: _Endpoint(self), remote_addr=remote, family=family
                )
            except OSError as exc:
                error = exc
                continue
            return transport, remote
        raise error

    def _schedule_reopen(self, delay: float) -> None:
        assert self._loop is not None
        if self._closed or (self._reopen is not None and not self._reopen.done()):
            return

        async def reopen() -> None:
            await asyncio.sleep(delay)
            await self._open()

        self._reopen = self._loop.create_task(reopen())

    def _route_source_changed(self) -> bool:
        """True if the kernel would now send to the broker from another local IP than ours."""
        if self._remote is None or self._local is None:
            return False
        family = socket.AF_INET6 if ":" in self._remote[0] else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(self._remote)  # picks a route and source address; sends nothing
                source = str(probe.getsockname()[0])
        except OSError:
            return True  # no route now: reopen and wait for one
        return source != self._local[0]

    # --- callbacks from the endpoint ---------------------------------------------------------

    def _datagram_received(self, endpoint: _Endpoint, data: bytes) -> None:
        if endpoint.transport is not self._transport or self._loop is None:
            return
        self._errors = 0
        self._driver.receive(self._core.receive_datagram, data)

    def _error_received(self, endpoint: _Endpoint, exc: Exception) -> None:
        if endpoint.transport is not self._transport:
            return
        if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            log.debug("broker %s:%d refused a datagram (port unreachable)", self._host, self._port)
            return
        self._errors += 1
        log.warning("socket error towards the broker %s:%d: %s", self._host, self._port, exc)
        if self._errors >= self._rebind_after:
            log.warning("%d socket errors in a row: opening a new socket", self._errors)
            self._errors = 0
            self._schedule_reopen(0.0)

    def _connection_lost(self, endpoint: _Endpoint, exc: Exception | None) -> None:
        if endpoint.transport is self._transport and not self._closed:
            log.warning("the UDP socket closed (%s); opening a new one", exc)
            self._transport = None
            self._schedule_reopen(0.0)

    # --- the core ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what the core has queued after a call made outside the link (an async invite reply)."""
        self._driver.flush()

    def _on_event(self, event: ClientEvent) -> None:
        if isinstance(event, ConnectionLost) and self._route_source_changed():
            log.warning("the route to the broker now uses another local address: new socket")
            self._schedule_reopen(0.0)
        self._handler.on_event(event)

    def _send(self, datagrams: Sequence[bytes]) -> None:
        for data in datagrams:
            if self._transport is None:
                self.dropped += 1
            else:
                self._transport.sendto(data)


def unreachable_problem(exc: BaseException, host: str, failed: str) -> str:
    """Why a link has no socket or connection to the broker at ``host``, for ``dvrlinkd status``:
    its name does not resolve, or ``failed`` (what could not be done) with the error, named by
    its type where it has no message (a timeout)."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the broker's name {host} ({exc.strerror or exc})"
    return f"{failed} ({exc_text(exc)})"


def exc_text(exc: BaseException) -> str:
    """An exception's message, or its type's name where it has none."""
    return str(exc) or type(exc).__name__


def handshake_problem(event: HandshakeUnanswered, broker: str) -> str:
    """What a failed registration attempt most likely means, for the log and ``dvrlinkd status``:
    what was seen, the likely cause, and what to check. ``broker`` names the endpoint tried."""
    tries = f"{event.tries} tries in {event.waited:.0f} s"
    if event.stage == "hello":
        return (
            f"the broker {broker} did not answer the handshake (no reply to HELLO after {tries}): "
            "check host and port in [broker] (nothing answers on a wrong port), that "
            "dvrlink-broker runs there, and that the network lets the datagrams through"
        )
    if event.unverified:
        return (
            f"the broker {broker} did not complete the handshake: its {event.unverified} replies to "
            f"REGISTER ({tries}) do not verify with public_key in [broker], so the broker holds "
            "another key; the configured broker key is most likely wrong (or the port is another "
            "broker's): set it to what `dvrlink-broker show-key` prints on the broker"
        )
    return (
        f"the broker {broker} answered HELLO but not the registration ({tries}): the configured "
        "public_key in [broker] may be wrong (check it against `dvrlink-broker show-key`), or its "
        "replies are lost on the way back"
    )


class _Endpoint(asyncio.DatagramProtocol):
    """asyncio callbacks of one socket, forwarded to the link with the socket they came from."""

    def __init__(self, link: CloudLink) -> None:
        self._link = link
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: the selector loop's UDP transport does not subclass it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._link._datagram_received(self, data)

    def error_received(self, exc: Exception) -> None:
        self._link._error_received(self, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._connection_lost(self, exc)
