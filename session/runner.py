"""Asyncio driver of one sans-I/O session core (``DeviceSession`` or ``ViewerSession``) over a
``Connectivity``, with asyncio stream objects on top of the core's stream events.

The runner is a thin link in the house sense: datagrams from the connectivity layer go into the
core with ``loop.time()``; after each batch of input (one ``call_soon`` pass) it hands out the
core's events, sends ``datagrams_to_send(now)`` on the path each one names, and re-arms one timer
from ``get_timer()``. Path labels (``connectivity.RELAY`` / ``DIRECT`` / ``LAN``) are the
addresses the core sees.

The viewer runner connects on the first path that becomes ready (the relay, within one TURN round
trip of ``Connectivity.start``) and moves the session to a better path (lan > direct > relay)
as soon as one is ready and the session is established (``ViewerSession.switch_path``); QUIC
keeps every stream across the move. The device runner answers on whatever path the viewer uses
(the core follows the viewer's migration).

Streams: ``SessionStream.read`` / ``write`` / ``drain`` / ``write_eof`` / ``reset``. ``drain``
waits while more than ``buffer_limit`` bytes written on the stream are not yet acknowledged by
the peer (read from aioquic's send buffer through ``dvrlink.compat.aioquic_compat``, which fails
loudly if an aioquic upgrade moved it). Received data is buffered until read; QUIC flow control does not
push back on a slow reader (the core credits the window as it delivers).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from dvrlink.protocol.session import (
    DataplaneStarted,
    DeviceSession,
    PeerMoved,
    PinMismatch,
    SessionClosed,
    SessionEstablished,
    SessionEvent,
    SessionState,
    SessionStateError,
    StreamData,
    StreamEnded,
    StreamOpened,
    ViewerRefused,
    ViewerSession,
)
from dvrlink.protocol.session_streams import StreamErrorCode, StreamTarget
from dvrlink.session.connectivity import PATH_RANK, RELAY, Connectivity, Path

DEFAULT_BUFFER_LIMIT = 1 << 20
DEAD_PATH_S = 2.0
"""A lan or direct path that has been silent this long while QUIC's probe timeout fired at least
``DEAD_PATH_PTOS`` times in a row (data in flight, no acknowledgement) is given up, and the
session moves back to the relay."""
DEAD_PATH_PTOS = 2
PATH_CHECK_S = 1.0
"""How often the viewer checks its path for that."""
DATAPLANE_WAIT_S = 2.0
"""The viewer's streams wait at most this long for the device to answer the data plane's hello
(one round trip after the session is established), so that they ride the data plane rather
than QUIC; after it they open on QUIC."""
SEND_NOW_BYTES = 1024
"""A stream write at least this big is pumped out at once, in the writer's event-loop pass;
smaller ones wait for the end of the pass, so that a few small writes share a datagram."""
PATH_MTU_CEILING = 1452
"""The largest datagram the data plane probes for on a lan or direct path: a 1500-byte
Ethernet MTU less the IPv6 and UDP headers (it also fits PPPoE's 1492 over IPv4). The relay
path stays at the base size (TURN's own headers, and a server that may fragment)."""
TIMER_RESOLUTION_S = 0.001
"""Deadlines nearer than this are polled on each event-loop pass instead of slept for."""
"""Unacknowledged bytes per stream above which ``SessionStream.drain`` waits."""

log = logging.getLogger(__name__)
AFTER_CLOSE_TIMEOUT_S = 5.0
"""How long each ``after_close`` hook may take."""


class SessionError(Exception):
    """Base of the session runner's errors; the message says what happened and what to do."""


class PinMismatchError(SessionError):
    """The device presented a key other than the one pinned at pairing."""


class ViewerRefusedError(SessionError):
    """The device refused the viewer's key (raised on the device side, and on the viewer's as the
    close reason it got)."""


class SessionClosedError(SessionError):
    """The session is closed (by either side, an idle timeout, or for lack of a path)."""


class StreamResetError(SessionError):
    """The peer reset the stream; ``code`` (also ``error_code``, which services read) is its
    application error code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    @property
    def error_code(self) -> int:
        """The same as ``code``, under the name ``dvrlink.session.streams.reset_code`` reads."""
        return self.code


Core = DeviceSession | ViewerSession
StreamCallback = Callable[["SessionStream", StreamTarget], Awaitable[None] | None]


class SessionStream:
    """One bidirectional QUIC stream of a session, as asyncio reads and writes."""

    def __init__(self, runner: _Runner, stream_id: int, target: StreamTarget) -> None:
        self._runner = runner
        self.stream_id = stream_id
        self.target = target
        self._buffer = bytearray()
        self._eof = False
        self._error: SessionError | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_closed = False
        self.bytes_read = 0
        self.bytes_written = 0

    async def read(self, n: int = -1) -> bytes:
        """Return up to ``n`` bytes (all buffered if ``n`` < 0), waiting for at least one;
        ``b""`` once the peer finished its direction.

        Raises:
            StreamResetError: the peer reset the stream (after the bytes before it were read).
            SessionClosedError, PinMismatchError, ViewerRefusedError: the session ended first.
        """
        while not self._buffer and not self._eof and self._error is None:
            self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        if self._buffer:
            size = len(self._buffer) if n < 0 else min(n, len(self._buffer))
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            self.bytes_read += size
            self._runner._consumed(self.stream_id, size)
            return data
        if self._error is not None:
            raise self._error
        return b""

    async def readexactly(self, n: int) -> bytes:
        """Return exactly ``n`` bytes.

        Raises:
            asyncio.IncompleteReadError: the stream ended before ``n`` bytes.
            StreamResetError, SessionClosedError: as ``read``.
        """
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(out), n)
            out += chunk
        return bytes(out)

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer; ``drain`` to wait for room.

        Raises:
            RuntimeError: ``write_eof`` or ``reset`` was called.
            SessionClosedError: the session ended (or the stream was reset, see ``read``).
        """
        if self._write_closed:
            raise RuntimeError(f"stream {self.stream_id} is closed for writing")
        self._runner._send(self.stream_id, data, end_stream=False)
        self.bytes_written += len(data)

    async def drain(self) -> None:
        """Wait until at most ``buffer_limit`` bytes written on this stream are unacknowledged.

        Raises:
            SessionClosedError (or the session's error): the session ended meanwhile.
        """
        runner = self._runner
        while runner._backlog(self.stream_id) > runner.buffer_limit:
            if runner._error is not None:
                raise runner._error
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if runner._error is not None:
            raise runner._error

    def must_drain(self) -> bool:
        """True while ``drain`` would wait (more than ``buffer_limit`` bytes unacknowledged) or
        raise (the session ended)."""
        runner = self._runner
        return runner._error is not None or runner._backlog(self.stream_id) > runner.buffer_limit

    def write_eof(self) -> None:
        """Finish our direction (FIN); reads go on. Idempotent.

        Raises:
            SessionClosedError: the session ended.
        """
        if self._write_closed:
            return
        self._write_closed = True
        self._runner._send(self.stream_id, b"", end_stream=True)

    def reset(self, code: int = StreamErrorCode.CANCELLED) -> None:
        """Abort the stream both ways with ``code``; later reads return what was buffered, then
        ``b""``. Never raises."""
        self._write_closed = True
        self._eof = True
        self._runner._reset(self.stream_id, code)
        self._wake()

    @property
    def at_eof(self) -> bool:
        """True once everything the peer sent was read and it finished (or the stream is done)."""
        return not self._buffer and (self._eof or self._error is not None)

    # -- runner side --

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def _ended(self, error_code: int | None) -> None:
        if error_code is None:
            self._eof = True
        else:
            self._error = StreamResetError(
                f"the peer reset stream {self.stream_id} ({self.target}) with code {error_code}", error_code
            )
            self._write_closed = True
        self._wake()

    def _fail(self, error: SessionError) -> None:
        if not self._eof and self._error is None:
            self._error = error
        self._write_closed = True
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _wake(self) -> None:
        if self._read_waiter is not None and not self._read_waiter.done():
            self._read_waiter.set_result(None)


class _Runner:
    """What both runners share: pump, timer, streams, errors."""

    def __init__(self, core: Core, connectivity: Connectivity, buffer_limit: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._core = core
        self._connectivity = connectivity
        self.buffer_limit = buffer_limit
        self._streams: dict[int, SessionStream] = {}
        self._established: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._error: SessionError | None = None
        self._pending_error: SessionError | None = None
        self._pump_handle: asyncio.Handle | None = None
        self._dataplane_settled = asyncio.Event()
        """Set once the viewer's data plane hello was answered or refused (see ``open_stream``)."""
        self._timer: asyncio.Handle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_stream: StreamCallback | None = None
        self.on_dataplane: Callable[[], None] = lambda: None
        """Called once the session's data plane is up (the device rewrites its status file)."""
        self.after_close: list[Callable[[], Awaitable[object]]] = []
        """Awaited at the end of ``close`` (the viewer tells the broker the session ended), each
        at most ``AFTER_CLOSE_TIMEOUT_S``; what they raise is logged, not raised."""
        self._shut = False
        # Nobody may await these (a refused device session): keep asyncio quiet about them.
        self._established.add_done_callback(_consume)
        self._pumping = False
        self._plane_path: object = None
        """The path the data plane was last told about (``set_dataplane_path``)."""
        self._dirty = False
        """Datagrams went into the core since the last pump."""
        connectivity.on_datagram = self._on_datagram
        connectivity.on_datagrams = self._on_datagrams
        connectivity.on_batch = self._flush
        connectivity.on_path_ready = self._on_path_ready
        connectivity.on_failed = self._on_failed

    # -- public --

    @property
    def state(self) -> SessionState:
        """The core's state."""
        return self._core.state

    @property
    def path(self) -> Path | None:
        """The path the session's datagrams go on now, or None before the first one."""
        raise NotImplementedError

    @property
    def rtt(self) -> float | None:
        """The smoothed round-trip time in seconds, or None before the first sample."""
        return self._core.smoothed_rtt()

    @property
    def silent_s(self) -> float:
        """Seconds since the peer was last heard while established (0 otherwise): the session is
        declared dead when this passes the core's ``silent_for_limit``."""
        heard = self._core.last_heard
        if heard is None or self._core.state is not SessionState.ESTABLISHED:
            return 0.0
        return max(0.0, self._loop.time() - heard)

    @property
    def bytes_in(self) -> int:
        """Datagram bytes received, all paths."""
        return sum(self._connectivity.bytes_in.values())

    @property
    def bytes_out(self) -> int:
        """Datagram bytes sent, all paths."""
        return sum(self._connectivity.bytes_out.values())

    @property
    def connectivity(self) -> Connectivity:
        """The path layer this runner drives (per-path counters, errors)."""
        return self._connectivity

    def on_stream(self, callback: StreamCallback) -> None:
        """Call ``callback(stream, target)`` for each stream the peer opens; if it returns an
        awaitable, it runs as a task that ``close`` cancels. Without a callback, peer streams are
        refused."""
        self._on_stream = callback

    async def established(self) -> None:
        """Wait until the peer is authenticated.

        Raises:
            PinMismatchError: (viewer) the device's key is not the pinned one.
            ViewerRefusedError: the device refused the viewer's key.
            SessionClosedError: closed first (no path, timeout, peer closed); the message says why.
        """
        await asyncio.shield(self._established)

    async def open_stream(self, target: StreamTarget) -> SessionStream:
        """Wait until established (and, on the viewer, at most ``DATAPLANE_WAIT_S`` for the
        device's answer to the data plane's hello), then open a stream for ``target``: on the
        data plane when it is up, else on QUIC.

        Raises:
            ValueError: ``target`` cannot be encoded.
            SessionError: as ``established``, or the session closed.
        """
        await self.established()
        if self._core.dataplane_pending:
            self._dataplane_settled.clear()  # the pump sets it once the hello is answered or refused
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dataplane_settled.wait(), DATAPLANE_WAIT_S)
        try:
            stream_id = self._core.open_stream(target)
        except SessionStateError as exc:
            raise self._error or SessionClosedError(str(exc)) from exc
        stream = self._streams[stream_id] = SessionStream(self, stream_id, target)
        self._schedule()
        return stream

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``coro`` as a task of this session: cancelled by ``close``; a failure is logged
        (naming ``what``), never raised."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("%s failed", what, exc_info=task.exception())

        task.add_done_callback(done)

    async def wait_closed(self) -> str:
        """Wait until the session is over; return the reason."""
        return await asyncio.shield(self._closed)

    async def close(self, reason: str = "closed by the user") -> None:
        """Close the session (CONNECTION_CLOSE to the peer), stop stream tasks, then the paths.
        Idempotent; never raises."""
        if self._shut:
            return
        self._shut = True
        self._core.close(reason)
        self._pump()
        self._cancel_timer()
        if self._pump_handle is not None:
            self._pump_handle.cancel()
            self._pump_handle = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        await self._connectivity.close()
        for hook in self.after_close:
            try:
                async with asyncio.timeout(AFTER_CLOSE_TIMEOUT_S):
                    await hook()
            except Exception as exc:
                log.debug("after closing the session: %s", exc)

    # -- link --

    def _on_datagram(self, data: bytes, path: Path) -> None:
        if self._shut:
            return
        self._core.receive_datagram(data, path, self._loop.time())
        self._dirty = True  # the connectivity's on_batch (``_flush``) follows before the pass ends

    def _on_datagrams(self, datagrams: list[bytes], path: Path, arrived: float | None) -> None:
        if self._shut:
            return
        self._core.receive_datagrams(datagrams, path, self._loop.time(), arrived)
        self._dirty = True

    def _on_path_ready(self, path: Path) -> None:
        pass

    def _on_failed(self, reason: str) -> None:
        if self._core.state is not SessionState.CLOSED:
            self._core.close(reason)
            self._schedule()

    def _schedule(self) -> None:
        if self._pump_handle is None and not self._shut:
            self._pump_handle = self._loop.call_soon(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_handle = None
        self._pump()

    def _flush(self) -> None:
        """Pump now, in this event-loop pass, what a batch of datagrams caused (the
        connectivity's ``on_batch``). Scheduling the pump instead costs a pass, and an
        ``epoll_wait``, per wake-up: at 4 Mbit/s the passes, not the bytes, are most of the
        cost. Inside the pump (an event handler) the pump is scheduled instead."""
        if not self._dirty or self._shut:
            return
        if self._pumping:
            self._schedule()
        else:
            self._pump()

    def _pump(self) -> None:
        if self._pump_handle is not None:  # this pump does what the scheduled one would
            self._pump_handle.cancel()
            self._pump_handle = None
        self._dirty = False
        self._pumping = True
        try:
            core = self._core
            while (event := core.next_event()) is not None:
                self._handle(event)
            if not core.dataplane_pending:
                self._dataplane_settled.set()
            if core.dataplane is not None:
                where = self._peer_label()
                if where != self._plane_path:
                    self._plane_path = where
                    base = self._core.config.max_datagram_size
                    probe = where not in (RELAY, None) and self._connectivity.path_mtu_probing
                    ceiling = PATH_MTU_CEILING if probe else base
                    core.set_dataplane_path(ceiling, self._loop.time())
            out = core.datagrams_to_send(self._loop.time())
            if out:
                self._send_out(out)
            self._rearm(core.get_timer())
            self._wake_drainers()
        finally:
            self._pumping = False

    def _send_out(self, out: list[tuple[bytes, Any]]) -> None:
        """Hand each run of datagrams to one path to the connectivity at once (one ``sendmsg``
        per run where the path and the kernel allow)."""
        connectivity = self._connectivity
        if len(out) == 1:
            connectivity.send(*out[0])
            return
        run: list[bytes] = []
        run_path = out[0][1]
        for data, addr in out:
            if addr != run_path:
                connectivity.send_many(run, run_path)
                run = []
                run_path = addr
            run.append(data)
        connectivity.send_many(run, run_path)

    def _peer_label(self) -> object:
        """The path label the core sends on now, as the core holds it (cheap: no copy)."""
        raise NotImplementedError

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._core.handle_timer(self._loop.time())
        self._pump()

    def _rearm(self, deadline: float | None) -> None:
        if deadline == self._timer_at:
            return
        self._cancel_timer()
        if self._shut:
            return
        if deadline is not None:
            self._timer_at = deadline
            if deadline - self._loop.time() < TIMER_RESOLUTION_S:
                self._timer = self._loop.call_soon(self._poll_timer)
            else:
                self._timer = self._loop.call_at(deadline, self._on_timer)

    def _poll_timer(self) -> None:
        """A deadline closer than the event loop can sleep (QUIC's pacer spaces datagrams tens of
        microseconds apart; epoll sleeps whole milliseconds): check it on each loop pass, so a
        fast transfer is not held to one pacing burst per millisecond."""
        if self._timer_at is not None and self._loop.time() < self._timer_at:
            self._timer = self._loop.call_soon(self._poll_timer)
            return
        self._on_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None

    def _wake_drainers(self) -> None:
        for stream in self._streams.values():
            waiter = stream._drain_waiter
            if (
                waiter is not None
                and not waiter.done()
                and self._backlog(stream.stream_id) <= self.buffer_limit
            ):
                waiter.set_result(None)

    # -- events --

    def _handle(self, event: SessionEvent) -> None:
        if isinstance(event, StreamData):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._feed(event.data)
            else:
                self._core.consumed(event.stream_id, len(event.data))  # dropped: no window held
        elif isinstance(event, StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._ended(event.error_code)
        elif isinstance(event, StreamOpened):
            self._peer_stream(event)
        elif isinstance(event, SessionEstablished):
            log.info("session established with %s on %s", event.peer_fingerprint, self.path)
            if not self._established.done():
                self._established.set_result(None)
            self._connectivity.allow_search()
            self._on_established()
        elif isinstance(event, PinMismatch):
            self._pending_error = PinMismatchError(
                f"the device presented key {event.seen or '(not Ed25519)'}, not the pinned "
                f"{event.expected}: someone may be impersonating it; if it was reset, pair it again"
            )
        elif isinstance(event, ViewerRefused):
            self._pending_error = ViewerRefusedError(
                f"viewer {event.fingerprint or '(no key)'} refused: {event.reason}"
            )
            log.warning("%s", self._pending_error)
        elif isinstance(event, PeerMoved):
            log.info("viewer moved to path %s", event.address)
        elif isinstance(event, DataplaneStarted):
            log.debug("the data plane is up")
            self.on_dataplane()
        elif isinstance(event, SessionClosed):
            self._session_closed(event)

    def _on_established(self) -> None:
        pass

    def _peer_stream(self, event: StreamOpened) -> None:
        callback = self._on_stream
        if callback is None:
            self._core.reset_stream(event.stream_id, StreamErrorCode.REFUSED)
            return
        stream = self._streams[event.stream_id] = SessionStream(self, event.stream_id, event.target)
        try:
            result = callback(stream, event.target)
        except Exception:
            log.exception("stream handler for %s failed; resetting stream %d", event.target, event.stream_id)
            stream.reset(StreamErrorCode.REFUSED)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _consumed(self, stream_id: int, size: int) -> None:
        """A stream's reader took ``size`` bytes: the peer may send that much more."""
        if not self._shut:
            self._core.consumed(stream_id, size)
            self._schedule()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("stream handler failed", exc_info=task.exception())

    def _session_closed(self, event: SessionClosed) -> None:
        error: SessionError
        if self._pending_error is not None:
            error = self._pending_error
        elif "refused this viewer" in event.reason:
            error = ViewerRefusedError(event.reason)
        else:
            error = SessionClosedError(f"session closed: {event.reason}")
        self._error = error
        log.info("session closed: %s", event.reason)
        if not self._established.done():
            self._established.set_exception(error)
        for stream in self._streams.values():
            stream._fail(error)
        if not self._closed.done():
            self._closed.set_result(event.reason)

    # -- stream side --

    def _send(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self._error is not None:
            raise self._error
        try:
            self._core.send(stream_id, data, end_stream)
        except SessionStateError as exc:
            raise self._error or SessionClosedError(str(exc)) from exc
        if len(data) >= SEND_NOW_BYTES and not self._pumping:
            self._pump()
        else:
            self._schedule()

    def _reset(self, stream_id: int, code: int) -> None:
        with contextlib.suppress(SessionStateError):
            self._core.reset_stream(stream_id, code)
        self._schedule()

    def _backlog(self, stream_id: int) -> int:
        return self._core.unacknowledged(stream_id)


class DeviceRunner(_Runner):
    """Drives a ``DeviceSession``: answers on whatever path the viewer's datagrams come on."""

    def __init__(
        self,
        core: DeviceSession,
        connectivity: Connectivity,
        *,
        on_stream: StreamCallback | None = None,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
    ) -> None:
        """Take over ``connectivity``'s callbacks; call before ``connectivity.start``."""
        super().__init__(core, connectivity, buffer_limit)
        self._device = core
        self._on_stream = on_stream

    @property
    def path(self) -> Path | None:
        """The path the viewer is reached on now (where the core sends), or None."""
        address = self._device.peer_address
        return None if address is None else (str(address[0]), int(address[1]))

    def _peer_label(self) -> object:
        return self._device.peer_address


class ViewerRunner(_Runner):
    """Drives a ``ViewerSession``: connects on the first ready path, then moves to better ones."""

    def __init__(
        self,
        core: ViewerSession,
        connectivity: Connectivity,
        *,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
    ) -> None:
        """Take over ``connectivity``'s callbacks; paths already ready are used at once."""
        super().__init__(core, connectivity, buffer_limit)
        self._viewer = core
        self.path_changes: list[Path] = []
        """Every path the session moved to, in order (the first is where it connected)."""
        self.on_path_change: Callable[[Path], None] = lambda path: None
        """Called with each path appended to ``path_changes`` (the viewer tells the broker)."""
        self._path_check: asyncio.TimerHandle | None = None
        self._switched_at = time.monotonic()
        """``time.monotonic()`` of the last move to another path."""
        for path in connectivity.paths:
            self._on_path_ready(path)

    @property
    def path(self) -> Path | None:
        """The path the session's datagrams go on now, or None before connecting."""
        address = self._viewer.path
        return None if address is None else (str(address[0]), int(address[1]))

    def _peer_label(self) -> object:
        return self._viewer.path

    def _on_path_ready(self, path: Path) -> None:
        core = self._viewer
        now = self._loop.time()
        if self._shut:
            return
        if core.path is None:
            core.connect(path, now)
            self.path_changes.append(path)
            self.on_path_change(path)
            self._schedule()
        elif core.state is SessionState.ESTABLISHED:
            self._maybe_switch()

    def _on_established(self) -> None:
        self._maybe_switch()

    def _maybe_switch(self) -> None:
        best = self._connectivity.best_path
        current = self.path
        if best is None or current is None:
            return
        if current in self._connectivity.paths and PATH_RANK[best] <= PATH_RANK.get(current, 0):
            return
        if best == current:
            return
        log.info("moving session from %s to %s", current[0], best[0])
        self._viewer.switch_path(best, self._loop.time())
        self._switched_at = time.monotonic()
        self.path_changes.append(best)
        self.on_path_change(best)
        self._schedule()
        self._watch_path()

    def _watch_path(self) -> None:
        """While on a lan or direct path with the relay in reserve, check every ``PATH_CHECK_S``
        that the path still answers; if it has been silent for ``DEAD_PATH_S`` while we sent,
        give it up and move back to the relay (QUIC migrates the session; streams carry on)."""
        if self._path_check is not None or self._shut:
            return
        self._path_check = self._loop.call_later(PATH_CHECK_S, self._check_path)

    def _check_path(self) -> None:
        self._path_check = None
        conn, current = self._connectivity, self.path
        if self._shut or current is None or current == RELAY or RELAY not in conn.paths:
            return
        now = time.monotonic()
        ptos = self._core.probe_timeouts()
        if path_is_dead(now, conn.last_in.get(current), self._switched_at, ptos):
            silent = now - max(conn.last_in.get(current, 0.0), self._switched_at)
            conn.retire(
                current, f"silent for {silent:.1f} s with data unacknowledged ({ptos} probe timeouts)"
            )
            self._maybe_switch()
            return
        self._watch_path()

    async def close(self, reason: str = "closed by the user") -> None:
        """As ``_Runner.close``; also stops the path check."""
        if self._path_check is not None:
            self._path_check.cancel()
            self._path_check = None
        await super().close(reason)


def path_is_dead(now: float, last_in: float | None, switched_at: float, probe_timeouts: int) -> bool:
    """Whether the path the session moved to at ``switched_at`` is to be given up at ``now``: QUIC's
    probe timeout fired ``DEAD_PATH_PTOS`` times in a row and nothing came in on the path for
    ``DEAD_PATH_S``, counting from the move when it has carried nothing yet (``last_in`` None or
    older): a path just moved to is not silent, whatever timed out before the move on a slow
    link."""
    silent = now - max(last_in if last_in is not None else switched_at, switched_at)
    return probe_timeouts >= DEAD_PATH_PTOS and silent > DEAD_PATH_S


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
