"""The board supervisor's serial port: the only code that reads and writes it.

:class:`SupervisorLink` opens the port with pyserial (raw 8N1, exclusive, non-blocking), reads it
from the event loop with ``add_reader`` into a :class:`~dvrlink.protocol.supervisor_client.SupervisorClient`,
and lets :class:`~dvrlink.driver.core_driver.CoreDriver` write the client's frames and re-arm its
one timer. Each request is a coroutine that returns the firmware's reply, or raises
:class:`SupervisorError` saying what went wrong and what to check.

If the port fails (a USB adapter unplugged, a PTY closed) the link closes itself: waiting
requests raise, and the owner opens it again (``SupervisorService`` does at its next heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import serial

from dvrlink.driver.core_driver import CoreDriver
from dvrlink.protocol import supervisor_wire as wire
from dvrlink.protocol.supervisor_client import (
    ClientConfig,
    ReplyReceived,
    RequestFailed,
    SupervisorClient,
    SupervisorEvent,
)

log = logging.getLogger(__name__)

READ_SIZE = 4096
ReplyT = TypeVar("ReplyT")


class SupervisorError(RuntimeError):
    """A supervisor request did not succeed; the message names the port, what happened and what
    to check."""


class SupervisorRefused(SupervisorError):
    """The firmware answered a request with its error reply; ``code`` says why (UNKNOWN_TYPE: a
    firmware older than the request)."""

    def __init__(self, message: str, code: wire.ErrorCode | int) -> None:
        super().__init__(message)
        self.code = code


class SupervisorLink:
    """Requests to the supervisor on ``path`` (see the module docstring). ``open`` first."""

    def __init__(self, path: str, *, baudrate: int = 115200, config: ClientConfig | None = None) -> None:
        self.path = path
        self._baudrate = baudrate
        self.client = SupervisorClient(config)
        self._port: serial.Serial | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driver: CoreDriver[SupervisorEvent, bytes] | None = None
        self._waiters: dict[int, asyncio.Future[SupervisorEvent]] = {}
        self.closed_reason = "not opened yet"
        self.write_errors = 0

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        """Open the port.

        Raises:
            SupervisorError: it cannot be opened (the message says what to check).
        """
        if self._port is not None:
            return
        try:
            port = serial.Serial(self.path, self._baudrate, timeout=0, write_timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SupervisorError(
                f"cannot open the supervisor's port {self.path} ({exc}): check [board] supervisor, "
                "that the UART is enabled in the device tree, and that no getty or console uses it"
            ) from exc
        self._loop = asyncio.get_running_loop()
        self._port = port
        self._fd = port.fileno()
        self.client = SupervisorClient(self.client.config)  # a fresh seq space for a fresh port
        self._driver = CoreDriver(
            self.client,
            self._transmit,
            on_event=self._on_event,
            loop=self._loop,
            name="supervisor client",
            logger=log,
        )
        self._loop.add_reader(self._fd, self._readable)
        self.closed_reason = ""

    def close(self, reason: str = "closed") -> None:
        """Close the port; waiting requests raise ``SupervisorError`` with ``reason``. Idempotent."""
        if self._port is None:
            return
        self.closed_reason = reason
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        if self._driver is not None:
            self._driver.close()
        with contextlib.suppress(OSError, serial.SerialException):
            self._port.close()
        self._port, self._fd = None, -1
        waiters, self._waiters = self._waiters, {}
        for future in waiters.values():
            if not future.done():
                future.set_exception(SupervisorError(f"supervisor port {self.path} {reason}"))

    # -- requests --------------------------------------------------------------------------------

    async def heartbeat(self, health: wire.Health, unix_time: int) -> wire.HeartbeatAck:
        return await self._ask(
            lambda now: self.client.heartbeat(health, unix_time, now), wire.HeartbeatAck, "heartbeat"
        )

    async def power_cycle_modem(self, profile: wire.ModemProfile) -> wire.PowerCycleStarted:
        return await self._ask(
            lambda now: self.client.power_cycle_modem(profile, now),
            wire.PowerCycleStarted,
            f"modem power cycle ({profile.name.lower()})",
        )

    async def reset_soc(self) -> wire.ResetAccepted:
        return await self._ask(self.client.reset_soc, wire.ResetAccepted, "SoC reset")

    async def read_reset_log(self) -> wire.ResetLog:
        return await self._ask(self.client.read_reset_log, wire.ResetLog, "reset log")

    async def read_supply(self) -> wire.SupplyReading:
        return await self._ask(self.client.read_supply, wire.SupplyReading, "supply voltage")

    async def get_status(self) -> wire.SupervisorStatus:
        return await self._ask(self.client.get_status, wire.SupervisorStatus, "status")

    async def set_heartbeat_timeout(self, seconds: int) -> wire.TimeoutSet:
        return await self._ask(
            lambda now: self.client.set_heartbeat_timeout(seconds, now), wire.TimeoutSet, "heartbeat timeout"
        )

    async def disarm(self, unix_time: int) -> wire.Disarmed:
        """Stand the heartbeat watchdog down (raises ``SupervisorRefused`` from a firmware before 1.1)."""
        return await self._ask(lambda now: self.client.disarm(unix_time, now), wire.Disarmed, "disarm")

    async def _ask(self, start: Callable[[float], int], expected: type[ReplyT], what: str) -> ReplyT:
        driver = self._driver
        if self._port is None or driver is None or self._loop is None:
            raise SupervisorError(f"supervisor port {self.path} is not open ({self.closed_reason})")
        future: asyncio.Future[SupervisorEvent] = self._loop.create_future()
        request_id = start(driver.now())
        self._waiters[request_id] = future
        driver.flush()
        try:
            event = await future
        finally:
            if self._waiters.pop(request_id, None) is not None:
                self.client.cancel(request_id)  # the caller was cancelled
        if isinstance(event, RequestFailed):
            raise SupervisorError(
                f"supervisor on {self.path}: {what}: {event.reason}; check the wiring (SoC TX to the "
                "MCU's RX and back), the baud rate, and that the supervisor's firmware runs"
            )
        assert isinstance(event, ReplyReceived)
        reply = event.reply
        if isinstance(reply, wire.ErrorReply):
            raise SupervisorRefused(
                f"supervisor on {self.path} refused the {what} request (error {reply.code!r}): "
                "is its firmware older than this daemon? GET_STATUS shows its version",
                reply.code,
            )
        if not isinstance(reply, expected):
            raise SupervisorError(f"supervisor on {self.path}: {what}: unexpected reply {reply!r}")
        return reply

    # -- the loop side ---------------------------------------------------------------------------

    def _on_event(self, event: SupervisorEvent) -> None:
        request_id = event.request_id if isinstance(event, ReplyReceived | RequestFailed) else None
        future = self._waiters.pop(request_id, None) if request_id is not None else None
        if future is not None and not future.done():
            future.set_result(event)
        elif isinstance(event, RequestFailed):
            log.debug("supervisor request %d ended: %s", event.request_id, event.reason)

    def _transmit(self, frames: Sequence[bytes]) -> None:
        if self._fd < 0:
            return
        for frame in frames:
            try:
                if os.write(self._fd, frame) < len(frame):
                    self.write_errors += 1  # a torn frame: the firmware skips it, the retransmit follows
            except BlockingIOError:
                self.write_errors += 1  # the UART's buffer is full; the retransmit tries again
            except OSError as exc:
                self._loop_close(f"failed on write ({exc})")
                return

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._loop_close(f"failed on read ({exc})")
            return
        if not data:
            self._loop_close("was closed by the other end")
            return
        if self._driver is not None:
            self._driver.receive(self.client.receive_data, data)

    def _loop_close(self, reason: str) -> None:
        log.warning("supervisor port %s %s; it is opened again at the next heartbeat", self.path, reason)
        assert self._loop is not None
        self._loop.call_soon(self.close, reason)
