"""The serial console's I/O: a TTY read from the event loop into a ``Console`` core, and the
service that answers the core's commands from the running daemon.

``ConsoleLink`` opens the port with pyserial (raw, 8N1, exclusive, non-blocking), feeds every
byte to the core with the loop's clock, writes what the core has to send, and hands its events
to ``ConsoleService``. If the port fails or is missing, it says so once and tries again every
``reopen_s``; the daemon goes on either way.

``ConsoleService`` reads status from the status file and the state directory, saves settings
through ``console_settings.save_settings`` and hands the new config to ``apply`` (the daemon
restarts its links with it, see ``app.run_daemon``), and calls ``reboot`` only after the reply
has been written. It never reads the device's private key: ``status`` shows the fingerprint it
was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import serial

from dvrlink.daemon.broker_nodes import bracket
from dvrlink.daemon.config import DaemonConfig
from dvrlink.daemon.console import (
    ChangeSettings,
    CommandReceived,
    Console,
    ConsoleEvent,
    InputRejected,
    PinRefused,
    Reboot,
    Relocked,
    ResetPairing,
    ShowPairingCode,
    ShowStatus,
    Unlocked,
)
from dvrlink.daemon.console_settings import SettingsRefused, save_settings
from dvrlink.daemon.state import DeviceState, NotCreated, StateError
from dvrlink.daemon.status import DaemonStatus, StatusUnavailable, read_status
from dvrlink.protocol import console_wire as wire
from dvrlink.protocol.pairing import PairingUri

log = logging.getLogger(__name__)

READ_SIZE = 1024
MAX_PENDING_WRITE = 64 * 1024
"""Output kept for a port nobody reads (a PTY without a peer); beyond it, output is dropped."""


class ConsoleService:
    """Carries out the console's commands for the running daemon.

    ``current`` gives the config in force; ``apply`` takes a newly saved config (or the same one,
    to restart the links after ``reset-pairing``); ``reboot`` acts on the machine.
    """

    def __init__(
        self,
        current: Callable[[], DaemonConfig],
        state: DeviceState,
        device_fingerprint: str,
        apply: Callable[[DaemonConfig], None],
        reboot: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._current = current
        self._state = state
        self._fingerprint = device_fingerprint
        self._apply = apply
        self._reboot = reboot
        self._reboot_pending = False
        self._clock = clock
        """The console core's clock (the loop's)."""
        self._wall_clock = wall_clock
        """Unix time, for the wrong-PIN times kept in the state directory."""
        self._saved_failures: tuple[float, ...] | None = None

    def saved_pin_failures(self, window_s: float) -> list[float]:
        """The wrong installer PINs recorded before (a reboot), on the core's clock, those
        still inside ``window_s``; none when the file cannot be read (logged)."""
        try:
            saved = self._state.console_pin_failures()
        except StateError as exc:
            log.error("console: cannot read the wrong-PIN record, starting without it: %s", exc)
            return []
        now, wall = self._clock(), self._wall_clock()
        # A time in the future (the clock was set back) counts as now.
        return [now - max(0.0, wall - t) for t in saved if wall - t < window_s]

    def _save_pin_failures(self, console: Console) -> None:
        failures = console.pin_failures
        if failures == self._saved_failures:
            return
        now, wall = self._clock(), self._wall_clock()
        try:
            self._state.save_console_pin_failures([wall - (now - t) for t in failures])
        except StateError as exc:  # the limit still holds in memory until a reboot
            log.error("console: cannot record wrong installer PINs: %s", exc)
            return
        self._saved_failures = failures

    def handle(self, console: Console, event: ConsoleEvent) -> None:
        """Answer a ``CommandReceived``; log the other events."""
        if isinstance(event, CommandReceived):
            try:
                self._command(console, event)
            except Exception as exc:  # a bug: the console still answers and goes on
                log.exception("console: %s failed", type(event.command).__name__)
                with contextlib.suppress(KeyError):  # unless it was answered before the failure
                    console.refuse(
                        event.ticket, wire.UNAVAILABLE, f"internal error ({type(exc).__name__}): see the log"
                    )
        elif isinstance(event, Unlocked):
            log.info("console: unlocked with the installer PIN")
            self._save_pin_failures(console)
        elif isinstance(event, Relocked):
            log.info("console: locked (%s)", event.reason)
        elif isinstance(event, PinRefused):
            log.warning(
                "console: wrong installer PIN (%d in the window%s)",
                event.failures,
                f", none checked for {event.retry_after_s:g} s" if event.retry_after_s else "",
            )
            self._save_pin_failures(console)
        elif isinstance(event, InputRejected):
            log.debug("console: input rejected (%s, %d bytes)", event.reason, event.size)

    def after_write(self) -> None:
        """Called once the core's output is written: a reboot asked for goes ahead now."""
        if not self._reboot_pending:
            return
        self._reboot_pending = False
        log.warning("console: rebooting the board, as asked on the console")
        try:
            self._reboot()
        except Exception:
            log.exception("console: the reboot failed")

    def _command(self, console: Console, event: CommandReceived) -> None:
        command = event.command
        if isinstance(command, ShowStatus):
            console.reply(event.ticket, self.status())
        elif isinstance(command, ShowPairingCode):
            self._pairing_code(console, event.ticket)
        elif isinstance(command, ChangeSettings):
            self._set(console, event.ticket, command)
        elif isinstance(command, ResetPairing):
            self._reset_pairing(console, event.ticket)
        elif isinstance(command, Reboot):
            self._reboot_pending = True
            console.reply(event.ticket, {"rebooting": True})
        else:
            console.refuse(event.ticket, wire.UNKNOWN_COMMAND, f"{type(command).__name__} is not handled")

    def status(self) -> dict[str, Any]:
        """What ``status`` shows: the status file's view and the config in force."""
        config = self._current()
        result: dict[str, Any] = {"serial": config.device.serial}
        status: DaemonStatus | None
        try:
            status = read_status(config.device.runtime_dir)
        except StatusUnavailable:  # not written yet, or the links restart with new settings
            status = None
        result["state"] = status.state if status else "starting"
        result["message"] = status.message if status else ""
        result["broker"] = (status.node if status else "") or config.broker.address  # the node in use
        if len(config.broker.nodes) > 1:
            result["broker_nodes"] = ", ".join(f"{bracket(n.host)}:{n.port}" for n in config.broker.nodes)
        result["transport"] = status.transport if status else ""
        result["public_address"] = status.reflexive_address if status else None
        result["sessions"] = len(status.sessions) if status else 0
        modem = status.modem if status else None
        result["modem"] = modem.state if modem else ("on" if config.modem.enabled else "off")
        result["apn"] = config.modem.apn or "automatic"
        if modem is not None:
            result["apn_in_use"] = modem.apn
            result["signal_dbm"] = modem.signal_dbm
            result["operator"] = modem.operator
        try:
            result["paired_viewers"] = len(self._state.viewers())
        except StateError as exc:
            result["paired_viewers"] = f"unreadable ({exc})"
        result["fingerprint"] = self._fingerprint
        result["config_file"] = str(config.source)
        return result

    def _pairing_code(self, console: Console, ticket: int) -> None:
        serial_number = self._current().device.serial
        try:
            code = self._state.pairing_secret(create=False)
        except (NotCreated, StateError) as exc:
            console.refuse(ticket, wire.UNAVAILABLE, str(exc))
            return
        uri = PairingUri(serial_number, code, self._fingerprint).format()
        console.reply(
            ticket, {"serial": serial_number, "code": code, "fingerprint": self._fingerprint, "uri": uri}
        )

    def _set(self, console: Console, ticket: int, command: ChangeSettings) -> None:
        before = self._current()
        try:
            saved = save_settings(before.source, command.changes)
        except SettingsRefused as exc:
            log.warning("console: settings refused: %s", exc.message)
            console.refuse(ticket, exc.code, exc.message)
            return
        notes: list[str] = []
        if "apn" in saved.changed and not saved.config.modem.enabled:
            notes.append("the modem is off ([modem] enabled = false): the APN is used once it is on")
        if saved.changed:
            log.info(
                "console: saved %s to %s; applying",
                ", ".join(f"{k} = {v!r}" for k, v in saved.changed.items() if k != "broker_public_key"),
                saved.file,
            )
            self._apply(saved.config)
        result = {
            "file": str(saved.file),
            "changed": saved.changed,
            "applied": bool(saved.changed),
            "notes": notes,
        }
        console.reply(ticket, result)

    def _reset_pairing(self, console: Console, ticket: int) -> None:
        try:
            viewers = self._state.viewers()
            for viewer in viewers:
                self._state.remove_viewer(viewer.public_key)
            self._state.save_pairing_failures([])
        except StateError as exc:
            console.refuse(ticket, wire.WRITE_FAILED, str(exc))
            return
        log.warning("console: forgot %d paired viewers (reset-pairing)", len(viewers))
        self._apply(self._current())  # open sessions of those viewers end with the restart
        console.reply(ticket, {"viewers_removed": len(viewers)})


class ConsoleLink:
    """Moves bytes between one TTY and one ``Console`` (see the module docstring)."""

    def __init__(
        self,
        path: str,
        baud: int,
        console: Console,
        service: ConsoleService,
        *,
        reopen_s: float = 5.0,
    ) -> None:
        self.path = path
        self._baud = baud
        self._console = console
        self._service = service
        self._reopen_s = reopen_s
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = bytearray()
        self._writing = False
        self._lost: asyncio.Future[str] | None = None
        self._dropped = False
        self.opened = asyncio.Event()
        """Set while the port is open (tests wait on it)."""

    async def run(self) -> None:
        """Serve the port until cancelled, reopening it when it fails."""
        loop = self._loop = asyncio.get_running_loop()
        last_problem = ""
        while True:
            try:
                port = serial.Serial(self.path, self._baud, timeout=0, write_timeout=0, exclusive=True)
            except (serial.SerialException, OSError, ValueError) as exc:
                problem = str(exc)
                if problem != last_problem:
                    log.error(
                        "console: cannot open %s (%s): check [console] port, that no getty or other "
                        "program holds it, and the daemon user's access (group dialout); retrying every %g s",
                        self.path,
                        problem,
                        self._reopen_s,
                    )
                last_problem = problem
                await asyncio.sleep(self._reopen_s)
                continue
            last_problem = ""
            log.info("console: serving %s at %d baud", self.path, self._baud)
            try:
                reason = await self._serve(loop, port)
            except Exception as exc:  # a bug: the daemon goes on, and so does the console
                log.exception("console: serving %s failed", self.path)
                reason = f"internal error ({type(exc).__name__})"
            log.warning("console: %s lost (%s); reopening in %g s", self.path, reason, self._reopen_s)
            await asyncio.sleep(self._reopen_s)

    async def _serve(self, loop: asyncio.AbstractEventLoop, port: serial.Serial) -> str:
        self._fd = port.fileno()
        self._lost = loop.create_future()
        self._pending.clear()
        loop.add_reader(self._fd, self._readable)
        self.opened.set()
        try:
            self._console.start(loop.time())
            self._pump()
            return await self._lost
        finally:
            self.opened.clear()
            loop.remove_reader(self._fd)
            if self._writing:
                loop.remove_writer(self._fd)
                self._writing = False
            with contextlib.suppress(OSError, serial.SerialException):
                port.close()

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(f"read failed: {exc.strerror or exc}")
            return
        if not data:
            self._lose("end of file (hang-up)")
            return
        assert self._loop is not None
        self._console.receive_data(data, self._loop.time())
        self._pump()

    def _pump(self) -> None:
        while (event := self._console.next_event()) is not None:
            self._service.handle(self._console, event)
        out = self._console.data_to_send()
        if len(self._pending) + len(out) > MAX_PENDING_WRITE:
            if not self._dropped:
                log.warning("console: nobody reads %s; dropping its output", self.path)
            self._dropped = True
        else:
            self._pending += out
        self._flush()
        self._service.after_write()

    def _flush(self) -> None:
        while self._pending:
            try:
                written = os.write(self._fd, self._pending)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError as exc:
                self._lose(f"write failed: {exc.strerror or exc}")
                return
            if written == 0:
                if not self._writing and self._loop is not None:
                    self._loop.add_writer(self._fd, self._flush)
                    self._writing = True
                return
            self._dropped = False
            del self._pending[:written]
        if self._writing and self._loop is not None:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _lose(self, reason: str) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)  # a dead TTY stays readable: stop the callbacks now
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)
