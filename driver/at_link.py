"""The asyncio serial link of one AT port: the only code that reads and writes the AT port.

It lives below both users of an AT port: the recorder's modem stack (``modem/``; its other I/O
is in ``modem/driver.py``, ``ppp.py``, ``ecm.py``, ``netprobe.py``, ``detect.py`` and a few state
files) and the broker's SMS gateway, which sends wake SMS through a modem on the broker host. The
engine it drives (``protocol/at_engine.py``) does no I/O.

It opens the port with pyserial (non-blocking, exclusive), reads it from the event loop with
``add_reader``, feeds the bytes to an ``AtEngine``, writes what the engine has to send, and
re-arms one timer at the engine's next deadline. The engine's time is the loop's clock. Every
engine event goes to ``on_event``; ``command()`` also awaits the end of one command.

If the port fails (unplugged modem, USB reset, PTY closed), the link closes itself: pending
commands end with ``CommandAborted``, ``wait_closed()`` returns the reason, and the owner decides
whether to reopen (the second step of the recovery ladder).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

import serial

from dvrlink.protocol.at_engine import AtEngine, Command
from dvrlink.protocol.at_events import (
    AtEvent,
    CommandAborted,
    CommandCompleted,
    CommandEvent,
    CommandFailed,
    CommandTimedOut,
)

log = logging.getLogger(__name__)

READ_SIZE = 4096
CommandOutcome = CommandCompleted | CommandFailed | CommandTimedOut | CommandAborted


class PortError(OSError):
    """The AT port could not be opened or used; the message names the port and what to check."""


class AtLink:
    """Moves bytes between one serial port and one ``AtEngine`` (see module docstring)."""

    def __init__(
        self,
        path: str,
        engine: AtEngine,
        *,
        baudrate: int = 115200,
        exclusive: bool = True,
        on_event: Callable[[AtEvent], None] | None = None,
    ) -> None:
        self._path = path
        self._engine = engine
        self._baudrate = baudrate
        self._exclusive = exclusive
        self._on_event = on_event
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pending_write = bytearray()
        self._writing = False
        self._waiters: dict[int, asyncio.Future[CommandOutcome]] = {}
        self._closed: asyncio.Future[str] | None = None

    @property
    def engine(self) -> AtEngine:
        """The engine this link drives."""
        return self._engine

    @property
    def path(self) -> str:
        """The port's device path."""
        return self._path

    @property
    def is_open(self) -> bool:
        """True between ``open()`` and the port closing."""
        return self._serial is not None

    async def open(self) -> None:
        """Open the port and start reading.

        Raises:
            PortError: the port is missing, busy (held by another process), or not a tty.
            RuntimeError: already open.
        """
        if self._serial is not None:
            raise RuntimeError(f"AT link on {self._path} is already open")
        try:
            port = serial.Serial(
                self._path, self._baudrate, timeout=0, write_timeout=0, exclusive=self._exclusive
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortError(
                f"cannot open AT port {self._path}: {exc}: check that the modem is attached, that "
                "this is its AT interface, and that no other process (ModemManager, a terminal) "
                "holds the port"
            ) from exc
        self._loop = asyncio.get_running_loop()
        self._serial = port
        self._fd = port.fileno()
        self._closed = self._loop.create_future()
        self._loop.add_reader(self._fd, self._readable)
        self._pump()

    def submit(self, command: str | Command, payload: bytes | str | None = None) -> int:
        """Queue a command (see ``AtEngine.submit``) and return its id.

        Raises:
            PortError: the port is not open.
            ValueError: a malformed command, as ``AtEngine.submit``.
        """
        loop = self._require_open()
        command_id = self._engine.submit(command, loop.time(), payload)
        self._pump()
        return command_id

    async def command(self, command: str | Command, payload: bytes | str | None = None) -> CommandOutcome:
        """Run a command and return how it ended (completed, failed, timed out or aborted).

        It never waits longer than the command's own timeout plus any resync before it.

        Raises:
            PortError: the port is not open.
        """
        loop = self._require_open()
        command_id = self._engine.submit(command, loop.time(), payload)
        waiter: asyncio.Future[CommandOutcome] = loop.create_future()
        self._waiters[command_id] = waiter
        self._pump()
        try:
            return await waiter
        finally:
            self._waiters.pop(command_id, None)

    def cancel(self, command_id: int) -> bool:
        """Cancel a command (see ``AtEngine.cancel``)."""
        loop = self._require_open()
        found = self._engine.cancel(command_id, loop.time())
        self._pump()
        return found

    def resync(self) -> None:
        """Resynchronise the port with probes (see ``AtEngine.resync``)."""
        loop = self._require_open()
        self._engine.resync(loop.time())
        self._pump()

    def close(self, reason: str = "port closed") -> None:
        """Stop reading and close the port; pending commands end with ``CommandAborted``."""
        port, self._serial = self._serial, None
        if port is None or self._loop is None:
            return
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending_write.clear()
        self._engine.abort_all(reason, self._loop.time())
        self._dispatch()
        with contextlib.suppress(OSError, serial.SerialException):
            port.close()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(reason)

    async def wait_closed(self) -> str:
        """Wait until the port is closed; returns why."""
        if self._closed is None:
            return "never opened"
        return await asyncio.shield(self._closed)

    # -- loop callbacks -------------------------------------------------------------------------

    def _require_open(self) -> asyncio.AbstractEventLoop:
        if self._serial is None or self._loop is None:
            raise PortError(f"AT port {self._path} is not open: call open() first, or reopen it")
        return self._loop

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(f"read failed: {exc}")
            return
        if not data:
            self._lost("end of file (hang-up)")
            return
        assert self._loop is not None
        self._engine.feed(data, self._loop.time())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        if self._loop is None or self._serial is None:
            return
        self._engine.tick(self._loop.time())
        self._pump()

    def _pump(self) -> None:
        """Write what the engine has, hand out its events, re-arm the timer."""
        if self._serial is None or self._loop is None:
            return
        self._pending_write += self._engine.data_to_send()
        self._flush()
        self._dispatch()
        if not self.is_open:  # the write failed, or an event handler closed the link
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._engine.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _flush(self) -> None:
        while self._pending_write and self._serial is not None:
            try:
                written = os.write(self._fd, self._pending_write)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError as exc:
                self._lost(f"write failed: {exc}")
                return
            if written == 0:
                if not self._writing and self._loop is not None:
                    self._loop.add_writer(self._fd, self._writable)
                    self._writing = True
                return
            del self._pending_write[:written]
        if self._writing and self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _writable(self) -> None:
        self._flush()

    def _dispatch(self) -> None:
        while (event := self._engine.next_event()) is not None:
            if isinstance(event, CommandEvent):
                waiter = self._waiters.get(event.command_id)
                if (
                    waiter is not None
                    and not waiter.done()
                    and isinstance(event, CommandCompleted | CommandFailed | CommandTimedOut | CommandAborted)
                ):
                    waiter.set_result(event)
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception:
                    log.exception("AT port %s: event handler failed on %r", self._path, event)

    def _lost(self, what: str) -> None:
        reason = (
            f"AT port {self._path} lost: {what}: the modem may have reset or been unplugged; "
            "reopen the port when it is back"
        )
        log.warning("%s", reason)
        self.close(reason)
