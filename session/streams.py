"""Session streams as both ends use them: their shape, the services' reset codes, and the pump
that copies a stream to a TCP socket and back (the device's forwards and the viewer's).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dvrlink.protocol.session_streams import StreamErrorCode

CHUNK_SIZE = 256 * 1024
"""Bytes read from a stream or a socket at a time, and the TCP reader's buffer limit (asyncio
pauses the socket at twice it). asyncio's socket transport reads up to 256 KiB per ``recv``;
taking all of it per wake-up, not 64 KiB, cut dvrlinkd's CPU per byte of a saturated forward
by about a fifth (docs/benchmarks.md, section 15). At most 0.5 MiB waits per connection."""
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
    writer: asyncio.StreamWriter,
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


async def _tcp_to_stream(
    stream: StreamLike,
    reader: asyncio.StreamReader,
    counters: Sequence[TrafficCounters],
    done: asyncio.Event,
) -> None:
    while True:
        try:
            data = await reader.read(CHUNK_SIZE)
        except OSError as exc:
            raise _TcpFailed(exc) from exc
        try:
            if not data:
                stream.write_eof()
                done.set()
                return
            stream.write(data)
            for c in counters:
                c.from_tcp += len(data)
            await stream.drain()
        except Exception as exc:
            raise _StreamFailed(exc) from exc


async def pump(
    stream: StreamLike,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
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
    session gone) the TCP connection is aborted and the stream reset (``CANCELLED``). The
    writer is closed in every case. Never raises, except ``CancelledError`` (after the same
    clean-up).
    """
    tcp_read_done = asyncio.Event()
    up = asyncio.ensure_future(_stream_to_tcp(stream, writer, counters, tcp_read_done))
    down = asyncio.ensure_future(_tcp_to_stream(stream, reader, counters, tcp_read_done))
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
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        if failure is None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        else:
            writer.transport.abort()
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
