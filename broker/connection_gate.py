"""The viewer API's door: a cap on the connections one client address may hold at once, checked
when the TCP connection is accepted, before any TLS work.

``AddressGate.protocol(inner)`` makes the protocol the event loop gets for an accepted TCP
connection (``inner`` is aiohttp's request handler for it). A connection over its address's cap
is aborted at once, so a flood from one address costs neither a TLS handshake nor its buffers
(asyncio keeps 256 KiB per TLS connection). Admitted connections do their TLS handshake (bounded
by ``handshake_timeout_s``) and then go to ``inner``. Refusals are logged once per burst.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

log = logging.getLogger(__name__)


class AddressGate:
    """Open connections per client address, at most ``max_per_address`` each, and the TLS
    handshake every admitted connection goes through."""

    def __init__(self, max_per_address: int, tls: ssl.SSLContext, handshake_timeout_s: float) -> None:
        self._max = max_per_address
        self._tls = tls
        self._handshake_timeout = handshake_timeout_s
        self._open: dict[str, int] = {}
        self._refused: dict[str, int] = {}  # refusals since the address last closed a connection
        self._handshakes: set[asyncio.Task[None]] = set()

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (nothing counted) if it is at the cap."""
        count = self._open.get(address, 0)
        if count >= self._max:
            refused = self._refused.get(address, 0) + 1
            self._refused[address] = refused
            if refused == 1:
                log.warning(
                    "refusing API connections from %s: it already holds %d connections "
                    "(http_max_connections_per_address); further refusals are counted until it "
                    "closes one",
                    address,
                    count,
                )
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        """A connection ``admit`` counted has closed."""
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)
        refused = self._refused.pop(address, 0)
        if refused > 1:
            log.info("refused %d API connections from %s while it was at the cap", refused, address)

    def open_count(self, address: str) -> int:
        """Connections counted for ``address`` now."""
        return self._open.get(address, 0)

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        """The protocol for an accepted TCP connection whose HTTP protocol is ``inner``."""
        return _GatedConnection(inner, self, self._tls, self._handshake_timeout, self._handshakes)

    def close(self) -> None:
        """Abort the connections still in their TLS handshake (the server is stopping)."""
        for task in self._handshakes:
            task.cancel()


class _GatedConnection(asyncio.Protocol):
    """The raw TCP protocol until TLS is up, then the TLS transport's protocol: it passes
    everything on to ``inner`` and gives the connection's place back when it closes."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        gate: AddressGate,
        tls: ssl.SSLContext,
        handshake_timeout_s: float,
        handshakes: set[asyncio.Task[None]],
    ) -> None:
        self._inner = inner
        self._gate = gate
        self._tls = tls
        self._handshake_timeout = handshake_timeout_s
        self._handshakes = handshakes
        self._address: str | None = None  # set once admitted
        self._serving = False  # inner has its connection
        self._closed = False
        # Bytes the TLS layer delivers between the end of the handshake and start_tls returning
        # (a client that sends its request right after the handshake), given to inner once it
        # has its connection.
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._gate.admit(address):
            transport.abort()
            return
        self._address = address
        transport.pause_reading()  # the TLS layer reads, once start_tls installed it
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                self,
                self._tls,
                server_side=True,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, asyncio.CancelledError) as exc:
            log.debug("API connection from %s: no TLS handshake (%r)", self._address, exc)
            transport.abort()
            self._release()
            return
        if tls is None or self._closed:  # pragma: no cover (closed while the handshake finished)
            return
        self._serving = True
        self._inner.connection_made(tls)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)
        if self._early_eof and not self._inner.eof_received():
            tls.close()

    def _release(self) -> None:
        if self._address is not None and not self._closed:
            self._closed = True
            self._gate.release(self._address)

    def data_received(self, data: bytes) -> None:
        if self._serving:
            self._inner.data_received(data)
        elif self._address is not None and not self._closed:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._serving:
            return self._inner.eof_received()
        self._early_eof = True
        return True  # keep the transport open until inner has seen the early bytes

    def pause_writing(self) -> None:
        if self._serving:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._serving:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._serving:
            self._serving = False
            self._inner.connection_lost(exc)
