"""dvrlinkd's board I/O: requests the ``[[alarm_input]]`` and ``[[relay]]`` lines, watches the
inputs' file descriptors on the event loop, raises alarms, and switches relays for the ``relay``
RPC.

The cores are ``hal.gpio.InputWatcher`` and ``hal.gpio.RelayBank``, each driven by the
project's one core driver (``dvrlink.driver.CoreDriver``). This module only does the I/O: when
an input's fd is readable (``loop.add_reader``) it reads the edges and the level and hands them
to the watcher; it writes the bank's ``SetRelay`` requests to the lines.

Nothing a line does stops the daemon: a line that cannot be requested (no chip, busy, no
permission) is listed with its error in the status and the RPC reply and requested again every
``REOPEN_S``; a failed read or write is a ``LineFailed`` event in the log (and an input whose
read failed is released and requested again with them, so a descriptor that stays readable
cannot spin the loop). Relays go to their
default at start and at exit (``close``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from dvrlink.driver.core_driver import CoreDriver
from dvrlink.hal.gpio import (
    MAX_PULSE_S,
    AlarmInputActive,
    AlarmInputCleared,
    AlarmInputConfig,
    BoardEvent,
    GpioError,
    InputLine,
    InputWatcher,
    LineBackend,
    LineFailed,
    OutputLine,
    RelayBank,
    RelayConfig,
    RelaySwitched,
    SetRelay,
)
from dvrlink.protocol.alarm_wire import AlarmKind

log = logging.getLogger(__name__)

REOPEN_S = 30.0
"""How often a line that could not be requested is tried again."""
EventSink = Callable[[BoardEvent], None]


def default_backend() -> LineBackend:
    """The real chips (``hal.gpio_chip.GpiodBackend``); the binding loads only when called."""
    from dvrlink.hal.gpio_chip import GpiodBackend  # noqa: PLC0415

    return GpiodBackend()


class RelayRequestError(ValueError):
    """A ``relay`` RPC request that cannot be done; the message says what to send instead."""


class BoardIoService:
    """The board's alarm inputs and relays (see the module's docstring)."""

    def __init__(
        self,
        inputs: Sequence[AlarmInputConfig],
        relays: Sequence[RelayConfig],
        backend: LineBackend,
        clock: Callable[[], float],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        reopen_s: float = REOPEN_S,
    ) -> None:
        """``clock`` is the event loop's (``loop.time``: the edges' timestamps are on the same
        monotonic clock); ``reopen_s`` how often lines that could not be requested are tried
        again."""
        self._reopen_s = reopen_s
        self._inputs = {config.name: config for config in inputs}
        self._relay_configs = {config.name: config for config in relays}
        self._backend = backend
        self._clock = clock
        self._loop = loop
        self.watcher = InputWatcher(inputs)
        self.bank = RelayBank(relays)
        self._input_lines: dict[str, InputLine] = {}
        self._output_lines: dict[str, OutputLine] = {}
        self._driven: dict[str, bool] = {}
        """The level each requested relay line was last driven to (a write of the same is skipped)."""
        self._errors: dict[str, str] = {}
        """Why a line is not requested, by name."""
        self._reopen: asyncio.TimerHandle | None = None
        self._sinks: list[EventSink] = []
        self._closed = False
        self._inputs_driver: CoreDriver[BoardEvent, object] = CoreDriver(
            self.watcher,
            None,
            on_event=self._on_event,
            clock=clock,
            loop=loop,
            name="alarm inputs",
            logger=log,
        )
        self._relays_driver: CoreDriver[BoardEvent, SetRelay] = CoreDriver(
            self.bank, self._write, on_event=self._on_event, clock=clock, loop=loop, name="relays", logger=log
        )
        self.events = 0
        """Board events handed out so far."""

    def add_sink(self, sink: EventSink) -> None:
        """Also hand each event to ``sink`` (the alarm queue, the status file); a sink that
        raises is logged."""
        self._sinks.append(sink)

    def start(self) -> None:
        """Request the lines, put the relays at their defaults, and watch the inputs (needs a
        running event loop, or the ``loop`` given)."""
        self.bank.start(self._clock())
        self._request_missing()
        self._relays_driver.flush()
        self._inputs_driver.flush()

    def close(self) -> None:
        """Put the relays at their defaults, stop watching, release the lines. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        self.bank.stop(self._clock())
        self._relays_driver.flush()
        self._relays_driver.close()
        self._inputs_driver.close()
        for name, line in list(self._input_lines.items()):
            self._event_loop().remove_reader(line.fd)
            line.release()
            self.watcher.stop(name)
        for output in self._output_lines.values():
            output.release()
        self._input_lines.clear()
        self._output_lines.clear()

    # ---- the relay RPC ----

    def relay_call(self, request: Mapping[str, object]) -> dict[str, Any]:
        """Serve the ``relay`` RPC: ``{}`` lists, ``{"relay": NAME, "action": "on"|"off"}``
        switches, ``{"relay": NAME, "action": "pulse", "seconds": S}`` pulses. The reply is
        ``snapshot()`` after the action.

        Raises:
            RelayRequestError: an unknown relay or action, a bad ``seconds``, or a relay whose
                line is not requested (the message says why).
        """
        if not request:
            return self.snapshot()
        name, action = request.get("relay"), request.get("action")
        if not isinstance(name, str) or not isinstance(action, str):
            raise RelayRequestError('expected {"relay": NAME, "action": "on" | "off" | "pulse"}')
        if name not in self._relay_configs:
            known = ", ".join(self._relay_configs) or "none: the device's config has no [[relay]]"
            raise RelayRequestError(f"no relay named {name!r} (relays: {known})")
        if name in self._errors:
            raise RelayRequestError(f"relay {name} is not usable: {self._errors[name]}")
        now = self._clock()
        if action in ("on", "off"):
            self.bank.set(name, action == "on", now)
        elif action == "pulse":
            seconds = request.get("seconds")
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float))
                or not 0 < seconds <= MAX_PULSE_S
            ):
                raise RelayRequestError(f"pulse needs seconds: more than 0 and at most {MAX_PULSE_S:g}")
            self.bank.pulse(name, float(seconds), now)
        else:
            raise RelayRequestError(f"unknown action {action!r}: use on, off or pulse")
        log.info("relay %s: %s requested by a viewer", name, action)
        self._relays_driver.flush()
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """The inputs and relays now, JSON-ready (the status file's ``board`` block and the
        ``relay`` reply): ``inputs`` with ``name``, ``chip``, ``line``, ``state`` (``active``,
        ``inactive`` or ``unknown``), ``for_s`` and ``error``; ``relays`` with ``name``, ``chip``,
        ``line``, ``on``, ``pulse_left_s`` (None without a pulse), ``for_s`` and ``error``."""
        now = self._clock()
        inputs = []
        for name, config in self._inputs.items():
            active, since = self.watcher.active(name), self.watcher.since(name)
            error = self._errors.get(name, "")
            if not error and self.watcher.failing(name):
                error = "reads fail; see the daemon's log"
            inputs.append(
                {
                    "name": name,
                    "chip": config.chip,
                    "line": config.line,
                    "state": "unknown" if active is None else ("active" if active else "inactive"),
                    "for_s": None if since is None else round(max(0.0, now - since), 1),
                    "error": error,
                }
            )
        relays = []
        for name, relay_config in self._relay_configs.items():
            on, until, since = self.bank.state(name)
            relays.append(
                {
                    "name": name,
                    "chip": relay_config.chip,
                    "line": relay_config.line,
                    "on": on,
                    "pulse_left_s": None if until is None else round(max(0.0, until - now), 1),
                    "for_s": round(max(0.0, now - since), 1),
                    "error": self._errors.get(name, ""),
                }
            )
        return {"inputs": inputs, "relays": relays}

    # ---- inside ----

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _request_missing(self) -> None:
        self._reopen = None
        if self._closed:
            return
        now = self._clock()
        for name, config in self._inputs.items():
            if name in self._input_lines:
                continue
            try:
                line = self._backend.request_input(config)
            except GpioError as exc:
                self._note_error(name, "alarm input", str(exc))
                continue
            try:
                active = line.get_value()
            except GpioError as exc:
                line.release()
                self._note_error(name, "alarm input", str(exc))
                continue
            self._errors.pop(name, None)
            self._input_lines[name] = line
            self.watcher.start(name, active, now)
            self._event_loop().add_reader(line.fd, self._readable, name)
            log.info(
                "alarm input %s: %s line %s, %s now",
                name,
                config.chip,
                config.line,
                "active" if active else "inactive",
            )
        for name, relay_config in self._relay_configs.items():
            if name in self._output_lines:
                continue
            on = self.bank.state(name)[0]
            try:
                self._output_lines[name] = self._backend.request_output(relay_config, on)
                self._driven[name] = on
            except GpioError as exc:
                self._note_error(name, "relay", str(exc))
                continue
            self._errors.pop(name, None)
            log.info(
                "relay %s: %s line %s, %s", name, relay_config.chip, relay_config.line, "on" if on else "off"
            )
        if self._errors:
            self._reopen = self._event_loop().call_later(self._reopen_s, self._retry)

    def _retry(self) -> None:
        self._request_missing()
        self._relays_driver.flush()
        self._inputs_driver.flush()

    def _note_error(self, name: str, kind: str, message: str) -> None:
        if self._errors.get(name) != message:
            log.error("%s %s: %s; trying again every %g s", kind, name, message, self._reopen_s)
        self._errors[name] = message

    def _readable(self, name: str) -> None:
        line = self._input_lines.get(name)
        if line is None:
            return
        now = self._clock()
        try:
            for edge in line.read_edges():
                self.watcher.edge(name, edge.active, edge.at)
            self.watcher.level(name, line.get_value(), now)
        except GpioError as exc:
            # The fd may stay readable: stop watching it (no busy loop), give the line back and
            # request it again with the others that failed.
            self.watcher.failed(name, str(exc), now)
            self._event_loop().remove_reader(line.fd)
            line.release()
            del self._input_lines[name]
            self.watcher.stop(name)
            self._note_error(name, "alarm input", f"{exc}; released")
            if self._reopen is None and not self._closed:
                self._reopen = self._event_loop().call_later(self._reopen_s, self._retry)
        self._inputs_driver.flush()

    def _write(self, writes: Sequence[SetRelay]) -> None:
        for write in writes:
            line = self._output_lines.get(write.name)
            if line is None or self._driven.get(write.name) == write.on:
                continue  # not requested (requested later at the bank's state), or already there
            try:
                line.set_value(write.on)
                self._driven[write.name] = write.on
            except GpioError as exc:
                self.bank.failed(write.name, str(exc), self._clock())

    def _on_event(self, event: BoardEvent) -> None:
        self.events += 1
        if isinstance(event, LineFailed):
            log.warning("board I/O: %s", describe_board_event(event))
        else:
            log.info("board I/O: %s", describe_board_event(event))
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                log.exception("a board I/O event sink failed on %r; carrying on", event)


class AlarmRaiser(Protocol):
    """What the input alarms need of the alarm queue (``daemon.alarms.AlarmQueue``)."""

    def raise_alarm(
        self, kind: AlarmKind | int, *, channel: int | None = None, detail: str = ""
    ) -> object: ...


def raise_board_alarm(alarms: AlarmRaiser, event: BoardEvent) -> None:
    """Queue the alarm for an input's change: ``ALARM_INPUT`` with ``door: active`` or ``door:
    cleared after 12 s``; a line failure goes as ``OTHER``. Relay switches raise nothing (a
    viewer asked for them)."""
    if isinstance(event, AlarmInputActive):
        alarms.raise_alarm(AlarmKind.ALARM_INPUT, detail=f"{event.name}: active")
    elif isinstance(event, AlarmInputCleared):
        alarms.raise_alarm(
            AlarmKind.ALARM_INPUT, detail=f"{event.name}: cleared after {event.active_s:.0f} s"
        )
    elif isinstance(event, LineFailed):
        alarms.raise_alarm(AlarmKind.OTHER, detail=f"LineFailed ({event.name}: {event.message})")


def describe_board_event(event: BoardEvent) -> str:
    """One line for the log: ``door: AlarmInputActive``, ``siren: RelaySwitched (on, pulse 5 s)``."""
    if isinstance(event, AlarmInputCleared):
        detail = f"active {event.active_s:.1f} s"
    elif isinstance(event, RelaySwitched):
        detail = f"{'on' if event.on else 'off'}, {event.why}"
    elif isinstance(event, LineFailed):
        detail = event.message
    else:
        detail = ""
    return f"{event.name}: {type(event).__name__}" + (f" ({detail})" if detail else "")


def check_board_io(
    inputs: Sequence[AlarmInputConfig], relays: Sequence[RelayConfig], backend: LineBackend
) -> list[str]:
    """``dvrlinkd check-config``'s probe of every input's and relay's chip and line, without
    requesting them; one line each. A chip that is missing, a line that does not exist or is
    held by another consumer gives a line starting ``error:`` that says what to fix."""
    lines = []
    items: list[tuple[str, AlarmInputConfig | RelayConfig]] = [("alarm input", c) for c in inputs]
    items += [("relay", c) for c in relays]
    for kind, config in items:
        try:
            found = backend.probe(config.chip, config.line)
        except GpioError as exc:
            lines.append(f"error: {kind} {config.name}: {exc}")
        else:
            lines.append(f"{kind} {config.name}: {found}")
    return lines
