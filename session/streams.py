"""Session streams as both ends use them: their shape, the services' reset codes, and the pump
that copies a stream to a TCP socket and back (the device's forwards and the viewer's).

The TCP side is a ``TcpEnd``, an asyncio protocol of ours rather than asyncio's StreamReader and
StreamWriter: a pump hands each TCP read to the stream in the callback that read it. Through a
StreamReader every read was copied into its buffer, woke the pump's task in the next pass of the
event loop and was copied out again, about a fifth of dvrlinkd's work per write of a 4 Mbit/s
stream (docs/protocol.md, "The data plane").
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from dvrlink.protocol.session_streams import StreamErrorCode

CHUNK_SIZE = 256 * 1024
"""Bytes read from a stream at a time, and what a ``TcpEnd`` holds before a pump attaches.
asyncio's socket transport reads up to 256 KiB per ``recv``; taking all of it per wake-up, not
64 KiB, cut dvrlinkd's CPU per byte of a saturated forward by about a fifth (docs/benchmarks.md,
section 15)."""
RESET_GRACE_S = 1.0
"""After a failed send on a stream, how long to wait for its read side to report the peer's reset code."""


class ServiceErrorCode(enum.IntEnum):
    """Stream reset codes the device's services use (beside ``StreamErrorCode``' 1-3)."""

    NOT_ALLOWED = 0x10
    """The forward target is not in ``[services] forward``; no connection was attempted."""
    CONNECT_REFUSED = 0x11
    """Nothing listens on the target (the connection was refused)."""
    CONNECT_TIMEOUT = 0x12
    """The target did not answer within ``connect_timeout_s``."""
    CONNECT_FAILED = 0x13
    """Any other connection failure (no route, name not resolved, ...)."""
    UNKNOWN_METHOD = 0x14
    """No RPC by that name."""
    BAD_REQUEST = 0x15
    """The RPC request is larger than the device accepts."""
    TOO_MANY_STREAMS = 0x16
    """The session already has ``max_streams_per_session`` streams open."""
    INTERNAL = 0x17
    """A bug on the device; its log says more."""


# --- the stream shape (the session runner provides it) ---


class StreamLike(Protocol):
    """One bidirectional session stream, as the session runner exposes it."""

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` once the peer ended its direction.

        Raises an exception with an int ``error_code`` attribute if the peer reset the stream, or
        some exception if the session closed.
        """
        ...

    def write(self, data: bytes) -> None:
        """Queue bytes to send; may raise if the stream or session is gone."""
        ...

    async def drain(self) -> None:
        """Wait until the send buffer is below its limit; may raise if the stream is gone."""
        ...

    def must_drain(self) -> bool:
        """True while ``drain`` would wait (or raise): a writer should await it before writing more."""
        ...

    def write_eof(self) -> None:
        """End our direction (FIN)."""
        ...

    def reset(self, code: int) -> None:
        """Abort both directions with ``code``."""
        ...


def reset_code(exc: BaseException) -> int | None:
    """The peer's reset code carried by ``exc`` (its ``error_code`` attribute), else None."""
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def reset_quietly(stream: StreamLike, code: int) -> None:
    """Reset ``stream`` with ``code``; ignores any error (the stream or session may be gone)."""
    with contextlib.suppress(Exception):
        stream.reset(code)


# --- the TCP side ---


class TcpEnd(asyncio.Protocol):
    """One TCP connection of a forward (the device's to a local service, the viewer's from a
    local player), for ``pump``.

    Until a pump attaches, what arrives is held; reading pauses once ``CHUNK_SIZE`` bytes wait.
    Then each read goes to the pump in the callback that read it. Writes follow asyncio's flow
    control (``drain`` waits while the transport's buffer is over its high-water mark).

    ``on_connected`` is called from ``connection_made`` (a server's way to learn of a new
    connection).
    """

    def __init__(self, on_connected: Callable[[TcpEnd], None] | None = None) -> None:
        self._transport: asyncio.Transport | None = None
        self._on_connected = on_connected
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._sink: _ToStream | None = None
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None

    @property
    def transport(self) -> asyncio.Transport:
        if self._transport is None:
            raise RuntimeError("TcpEnd used before its connection was made")
        return self._transport

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._closed = asyncio.get_running_loop().create_future()
        if self._on_connected is not None:
            self._on_connected(self)

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.data(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= CHUNK_SIZE:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if self._sink is not None:
            self._sink.eof()
        return True  # keep the connection open: a half-close, our direction may still write

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._error = exc
        self._wake_writer()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._sink is not None:
            self._sink.lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- what the pump and the forwards use --

    def get_extra_info(self, name: str) -> Any:
        return self.transport.get_extra_info(name)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark.

        Raises:
            OSError: the connection failed (its error), or is gone (``ConnectionResetError``).
        """
        while not self._lost and self._write_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._lost:
            if isinstance(self._error, OSError):
                raise self._error
            raise ConnectionResetError("the TCP connection is closed")

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def write_eof(self) -> None:
        self.transport.write_eof()

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    async def wait_closed(self) -> None:
        if self._closed is not None:
            await self._closed

    def _attach(self, sink: _ToStream) -> None:
        self._sink = sink
        held, self._held, self._held_bytes = self._held, [], 0
        for data in held:
            sink.data(data)
        if self._lost:
            sink.lost(self._error)
        elif self._eof:
            sink.eof()
        elif not sink.paused:
            self.transport.resume_reading()  # (a no-op unless held bytes had paused it)

    def _wake_writer(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)


class _ToStream:
    """The TCP-to-stream direction of one pump: each read is written to the stream at once.
    While the stream's buffer is full (``must_drain``), reading pauses and what came meanwhile
    waits here; ``finished`` ends with None at the TCP side's end (a FIN, passed on as
    ``write_eof``) or with the failure."""

    def __init__(
        self, end: TcpEnd, stream: StreamLike, counters: Sequence[TrafficCounters], done: asyncio.Event
    ) -> None:
        self._end = end
        self._stream = stream
        self._counters = counters
        self._done = done
        self._pending: list[bytes] = []
        self._eof = False
        self._draining: asyncio.Future[None] | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def paused(self) -> bool:
        return self._draining is not None

    def data(self, data: bytes) -> None:
        if self.finished.done():
            return
        if self._draining is not None:
            self._pending.append(data)
            return
        stream = self._stream
        try:
            stream.write(data)
            for c in self._counters:
                c.from_tcp += len(data)
            if not stream.must_drain():
                return
            self._end.transport.pause_reading()
            self._draining = asyncio.ensure_future(stream.drain())
        except Exception as exc:
            self._fail(_StreamFailed(exc))
            return
        self._draining.add_done_callback(self._drained)

    def _drained(self, future: asyncio.Future[None]) -> None:
        self._draining = None
        if self.finished.done() or future.cancelled():
            return
        error = future.exception()
        if error is not None:
            self._fail(_StreamFailed(error))
            return
        pending, self._pending = self._pending, []
        for index, data in enumerate(pending):
            self.data(data)
            if self.paused:
                self._pending.extend(pending[index + 1 :])
                return
        if self._eof:
            self.eof()
        elif not self._end.transport.is_closing():
            self._end.transport.resume_reading()

    def eof(self) -> None:
        self._eof = True
        if self.finished.done() or self._draining is not None:
            return  # (after the pending bytes, from _drained)
        try:
            self._stream.write_eof()
        except Exception as exc:
            self._fail(_StreamFailed(exc))
            return
        self._done.set()
        self.finished.set_result(None)

    def lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            self._fail(_TcpFailed(exc))
        else:
            self.eof()  # closed without an error: the end of its bytes

    def close(self) -> None:
        if self._draining is not None:
            self._draining.cancel()
        if not self.finished.done():
            self.finished.cancel()

    def _fail(self, error: Exception) -> None:
        if not self.finished.done():
            self.finished.set_exception(error)


# --- the byte pump, shared with the viewer's forwards ---


@dataclass(slots=True)
class TrafficCounters:
    """Bytes copied by one or more pumps; updated live while they run."""

    to_tcp: int = 0
    """Bytes read from the stream and written to the TCP socket."""
    from_tcp: int = 0
    """Bytes read from the TCP socket and written to the stream."""


@dataclass(frozen=True, slots=True)
class PumpResult:
    """How a pump ended. ``clean`` means both directions ended with an end of stream."""

    clean: bool
    stream_error_code: int | None = None
    """The peer reset the stream with this code (or None)."""
    error: str | None = None
    """What went wrong, for logs, if not clean."""


class _StreamFailed(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"stream ended abnormally: {cause!r}")
        self.code = reset_code(cause)


class _TcpFailed(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"TCP connection failed: {getattr(cause, 'strerror', None) or cause!r}")


async def _stream_to_tcp(
    stream: StreamLike,
    writer: TcpEnd,
    counters: Sequence[TrafficCounters],
    tcp_read_done: asyncio.Event,
) -> bool:
    """Copy until the stream ends; returns True if the TCP side stopped taking bytes before that
    (at once if the TCP side has also finished sending, ``tcp_read_done``; else once it has,
    or the stream ended)."""
    write_failed = False
    while True:
        if write_failed:
            # The TCP side is gone for our bytes: wait only for its last ones to reach the
            # stream (the other direction), not for a peer that may never stop sending.
            reading = asyncio.ensure_future(stream.read(CHUNK_SIZE))
            finished = asyncio.ensure_future(tcp_read_done.wait())
            try:
                await asyncio.wait((reading, finished), return_when=asyncio.FIRST_COMPLETED)
            finally:
                finished.cancel()
            if tcp_read_done.is_set():
                reading.cancel()
                return True
            try:
                data = reading.result()
            except Exception as exc:
                raise _StreamFailed(exc) from exc
            if not data:
                return True
            continue
        try:
            data = await stream.read(CHUNK_SIZE)
        except Exception as exc:
            raise _StreamFailed(exc) from exc
        try:
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return False
            writer.write(data)
            for c in counters:
                c.to_tcp += len(data)
            await writer.drain()
        except OSError:
            # The TCP peer closed or reset. Its reply may still be in flight towards the stream,
            # and a reset now could discard it: let the other direction find out how the TCP
            # side ended (EOF: finish cleanly; reset: abort), and swallow the rest meanwhile.
            write_failed = True


async def pump(
    stream: StreamLike,
    tcp: TcpEnd,
    counters: Sequence[TrafficCounters] = (),
) -> PumpResult:
    """Copy bytes between ``stream`` and a TCP connection until both directions have ended.

    Each direction waits for its receiver (``drain``) before reading more, so a slow side slows
    the other down instead of filling memory. An end of stream on one side becomes a half-close
    (``write_eof``) on the other, and the other direction carries on. If the TCP side stops
    taking bytes, the rest of the stream is read and dropped while the TCP side's reply finishes.
    Once the TCP side has also finished sending, the stream is reset (``CANCELLED``), so that a
    peer that would go on sending (a camera streaming to a player that quit) stops: over a
    cellular uplink those bytes cost money. On any other failure (a reset on either side, the
    session gone) the TCP connection is aborted and the stream reset (``CANCELLED``). The TCP
    connection is closed in every case. Never raises, except ``CancelledError`` (after the same
    clean-up).
    """
    tcp_read_done = asyncio.Event()
    up = asyncio.ensure_future(_stream_to_tcp(stream, tcp, counters, tcp_read_done))
    sink = _ToStream(tcp, stream, counters, tcp_read_done)
    down = sink.finished
    tcp._attach(sink)
    failure: BaseException | None = None
    try:
        await asyncio.wait((up, down), return_when=asyncio.FIRST_EXCEPTION)
        if down.done() and isinstance(down.exception(), _StreamFailed) and not up.done():
            # Sending failed; the reason (the peer's reset code) surfaces on the reading side.
            await asyncio.wait((up,), timeout=RESET_GRACE_S)
        failures = [t.exception() for t in (up, down) if t.done() and t.exception() is not None]
        coded = [f for f in failures if isinstance(f, _StreamFailed) and f.code is not None]
        failure = coded[0] if coded else (failures[0] if failures else None)
    except asyncio.CancelledError:
        failure = asyncio.CancelledError()
    finally:
        up.cancel()
        sink.close()
        await asyncio.gather(up, down, return_exceptions=True)
        if failure is None:
            tcp.close()
            with contextlib.suppress(OSError):
                await tcp.wait_closed()
        else:
            tcp.abort()
            # The peer may have reset the stream already; a second reset is harmless.
            reset_quietly(stream, StreamErrorCode.CANCELLED)
    if isinstance(failure, asyncio.CancelledError):
        raise failure
    if failure is not None:
        code = failure.code if isinstance(failure, _StreamFailed) else None
        return PumpResult(clean=False, stream_error_code=code, error=str(failure))
    if up.result():
        # The peer may still be sending (a camera's stream to a player that quit): tell it to
        # stop rather than leave the stream open with nobody reading.
        reset_quietly(stream, StreamErrorCode.CANCELLED)
        return PumpResult(
            clean=False, error="the TCP side closed before the stream's end; the stream was cancelled"
        )
    return PumpResult(clean=True)
