"""Board I/O: alarm inputs and relay outputs on GPIO lines (sans-I/O cores and their config).

A DVR's rear panel has alarm inputs (door contacts, PIR detectors: dry contacts to ground) and
relay outputs (a siren, a strobe, a door strike). On Linux each is a line of a GPIO chip,
requested through the character device (``/dev/gpiochipN``). This module holds what needs no
I/O:

- ``AlarmInputConfig`` and ``RelayConfig``, frozen and checked when built;
- the events, under ``BoardEvent``: ``AlarmInputActive``, ``AlarmInputCleared``,
  ``RelaySwitched``, ``LineFailed``;
- ``InputWatcher``: edges (with the kernel's timestamps) in, confirmed changes out. A level must
  hold for the input's ``debounce_s`` before it is reported, so contact bounce and a spike
  shorter than that are never an alarm. The first level read sets an input's state without an
  event (an event means a change).
- ``RelayBank``: on, off and pulse commands in, line writes out (``SetRelay``), a pulse's end
  through ``get_timer`` / ``handle_timer``; ``start`` and ``stop`` put every relay at its
  default.
- ``LineBackend``, ``InputLine`` and ``OutputLine``: the seam to the lines themselves.
  ``hal.gpio_chip.GpiodBackend`` is the real one (the ``gpiod`` binding), and
  ``hal.gpio_fake.FakeBackend`` the fake the host tests and a laptop run use.

Levels here are logical: ``True`` is active (with ``active_low`` the kernel inverts the line).
Time is an argument everywhere; the edges' timestamps are on the same clock as ``now``
(``CLOCK_MONOTONIC``, which is also the event loop's clock).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
"""What an input or relay name looks like (it goes into alarms, the status and RPC replies)."""
MAX_PULSE_S = 3600.0
"""The longest relay pulse."""
CONSUMER = "dvrlinkd"
"""The consumer name dvrlinkd's line requests carry (``gpioinfo`` shows it)."""


class Bias(Enum):
    """A line's internal pull resistor."""

    AS_IS = "as-is"
    """Leave it as the board's firmware set it."""
    DISABLED = "disabled"
    PULL_UP = "pull-up"
    """The usual one for a dry contact to ground (then set ``active_low``)."""
    PULL_DOWN = "pull-down"


def _check_where(kind: str, name: str, chip: str, line: int | str) -> None:
    if not NAME.match(name):
        raise ValueError(
            f"{kind} name {name!r}: use 1-32 lower-case letters, digits, - or _, starting with a "
            "letter or digit"
        )
    if not chip.strip():
        raise ValueError(f"{kind} {name}: chip is empty; give a path such as /dev/gpiochip0 or a label")
    if isinstance(line, int) and not 0 <= line <= 511:
        raise ValueError(f"{kind} {name}: line {line}: give an offset from 0 to 511 or the line's name")
    if isinstance(line, str) and not line.strip():
        raise ValueError(f"{kind} {name}: line is empty; give an offset such as 3 or the line's name")


@dataclass(frozen=True, slots=True)
class AlarmInputConfig:
    """One alarm input (``[[alarm_input]]``)."""

    name: str
    """Its name in alarms (``door: active``), the status and ``dvrlink relay``."""
    chip: str
    """The GPIO chip: a path (``/dev/gpiochip0``) or its label (``pl061``, ``gpio-mockup-A``)."""
    line: int | str
    """The line: its offset on the chip, or its name (``gpioinfo`` lists both)."""
    active_low: bool = False
    """The input is active when the line is low (a contact to ground with a pull-up)."""
    bias: Bias = Bias.AS_IS
    """The line's pull resistor."""
    debounce_s: float = 0.05
    """A level must hold this long before it is reported (0: report every edge)."""

    def __post_init__(self) -> None:
        _check_where("alarm input", self.name, self.chip, self.line)
        if not 0 <= self.debounce_s <= 60:
            raise ValueError(f"alarm input {self.name}: debounce_s = {self.debounce_s}: use 0-60 seconds")


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """One relay output (``[[relay]]``)."""

    name: str
    """Its name in ``dvrlink relay`` and the status."""
    chip: str
    """The GPIO chip: a path or its label, as for an input."""
    line: int | str
    """The line: its offset or its name."""
    active_low: bool = False
    """The relay is energised when the line is low (many relay boards)."""
    default_on: bool = False
    """The state at start and at exit (off: a siren is silent while dvrlinkd is not running)."""

    def __post_init__(self) -> None:
        _check_where("relay", self.name, self.chip, self.line)


# ---- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BoardEvent:
    """Base of the board I/O events. ``name`` is the input's or relay's config name, ``at`` the
    core's clock when the change was confirmed."""

    name: str
    at: float


@dataclass(frozen=True, slots=True)
class AlarmInputActive(BoardEvent):
    """An alarm input became active (a door opened) and held for its debounce time."""

    since: float
    """When the line changed (the edge's timestamp)."""


@dataclass(frozen=True, slots=True)
class AlarmInputCleared(BoardEvent):
    """An active alarm input went back to rest and held for its debounce time."""

    since: float
    active_s: float
    """How long it was active."""


@dataclass(frozen=True, slots=True)
class RelaySwitched(BoardEvent):
    """A relay was switched (a command, a pulse's end, start or stop)."""

    on: bool
    why: str
    """``set``, ``pulse 5 s``, ``pulse over``, ``start`` or ``stop``."""


@dataclass(frozen=True, slots=True)
class LineFailed(BoardEvent):
    """A line could not be read or written; ``message`` says what failed and what to check."""

    message: str


class GpioError(Exception):
    """A GPIO chip or line could not be used. The message names the chip and line, what was
    seen (no such chip, the line held by another consumer, permission) and what to fix."""


# ---- the seam to the lines -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Edge:
    """One edge on an input line: its logical level after the edge, and when (seconds on the
    monotonic clock)."""

    active: bool
    at: float


class InputLine(Protocol):
    """A requested input line with edge detection on both edges."""

    @property
    def fd(self) -> int:
        """A file descriptor that is readable when edges are waiting (for ``loop.add_reader``)."""

    def read_edges(self) -> list[Edge]:
        """The edges waiting, oldest first (call it when ``fd`` is readable).

        Raises:
            GpioError: the read failed.
        """

    def get_value(self) -> bool:
        """The line's logical level now.

        Raises:
            GpioError: the read failed.
        """

    def release(self) -> None:
        """Give the line back to the kernel. Idempotent."""


class OutputLine(Protocol):
    """A requested output line."""

    def set_value(self, active: bool) -> None:
        """Drive the line to the logical level ``active``.

        Raises:
            GpioError: the write failed.
        """

    def release(self) -> None:
        """Give the line back (the kernel keeps its last level). Idempotent."""


class LineBackend(Protocol):
    """Requests lines: the real chips (``hal.gpio_chip``) or a fake (``hal.gpio_fake``)."""

    def request_input(self, config: AlarmInputConfig) -> InputLine:
        """Request the input's line: input, both edges, its bias and active-low.

        Raises:
            GpioError: no such chip or line, the line is held by another consumer, or permission.
        """

    def request_output(self, config: RelayConfig, active: bool) -> OutputLine:
        """Request the relay's line as an output, driven to ``active`` from the first moment.

        Raises:
            GpioError: as for ``request_input``.
        """

    def probe(self, chip: str, line: int | str) -> str:
        """Describe the chip and line without requesting it (``dvrlinkd check-config``):
        ``/dev/gpiochip0 (pl061, 8 lines) line 3: free``.

        Raises:
            GpioError: no such chip or line, permission, or the line is held by a consumer
                other than dvrlinkd (the message names it).
        """


# ---- the input watcher ------------------------------------------------------------------------


class _Input:
    __slots__ = ("active", "changed_at", "seen", "seen_since")

    def __init__(self, active: bool, now: float) -> None:
        self.active = active
        """The reported level."""
        self.changed_at = now
        """When the reported level's edge came."""
        self.seen = active
        """The level the line shows now."""
        self.seen_since = now


class InputWatcher:
    """Edges of the alarm inputs in, ``AlarmInputActive`` / ``AlarmInputCleared`` out (see the
    module docstring). The daemon drives it with ``dvrlink.driver.CoreDriver``."""

    def __init__(self, inputs: Iterable[AlarmInputConfig]) -> None:
        self._debounce = {config.name: config.debounce_s for config in inputs}
        self._inputs: dict[str, _Input] = {}
        self._events: deque[BoardEvent] = deque()
        self._failing: set[str] = set()
        self.edges = 0
        """Edges taken so far."""

    def start(self, name: str, active: bool, now: float) -> None:
        """The input's line is requested and reads ``active``: its state, without an event.

        Raises:
            KeyError: ``name`` is not a configured input (a caller's mistake).
        """
        self._debounce[name]
        self._inputs[name] = _Input(active, now)
        self._failing.discard(name)

    def edge(self, name: str, active: bool, at: float) -> None:
        """An edge of the input's line (its level after it, and its timestamp). An input not
        started is ignored; an edge to the level already seen changes nothing (a lost edge
        between them does not matter). The debounce is judged on the edges' timestamps: a level
        that held for its debounce time before this edge is reported, even when both edges are
        read together (the loop was busy, or the pulse was shorter than a loop turn)."""
        state = self._inputs.get(name)
        if state is None:
            return
        self.edges += 1
        self._failing.discard(name)
        if active == state.seen:
            return
        self._settle(name, state, at)
        state.seen = active
        state.seen_since = max(at, state.seen_since)

    def level(self, name: str, active: bool, now: float) -> None:
        """The input's line read ``active`` at ``now`` (after its edges were read): a level that
        differs from the last edge counts as an edge at ``now`` (the kernel's event buffer
        overflowed, or an edge is still on its way)."""
        state = self._inputs.get(name)
        if state is not None and active != state.seen:
            self._settle(name, state, now)
            state.seen = active
            state.seen_since = max(now, state.seen_since)
            self.edges += 1

    def failed(self, name: str, message: str, now: float) -> None:
        """A read of the input failed: one ``LineFailed`` per run of failures."""
        if name not in self._failing:
            self._failing.add(name)
            self._events.append(LineFailed(name, now, message))

    def stop(self, name: str) -> None:
        """The input's line is released: forget it (its state is no longer known)."""
        self._inputs.pop(name, None)

    # ---- output ----

    def next_event(self) -> BoardEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> Sequence[object]:
        """Nothing: the watcher only reads (the name is the one ``CoreDriver`` asks for)."""
        return ()

    def get_timer(self) -> float | None:
        """When a change that the lines show is confirmed, or None."""
        due: float | None = None
        for name, state in self._inputs.items():
            if state.seen != state.active:
                at = state.seen_since + self._debounce[name]
                due = at if due is None else min(due, at)
        return due

    def handle_timer(self, now: float) -> None:
        """Confirm the changes that have held for their debounce time."""
        for name, state in self._inputs.items():
            self._settle(name, state, now)

    def _settle(self, name: str, state: _Input, now: float) -> None:
        """Report the level the line shows if it has held for its debounce time by ``now``; the
        event's time is when it had held that long."""
        confirmed_at = state.seen_since + self._debounce[name]
        if state.seen == state.active or now < confirmed_at:
            return
        state.active = state.seen
        if state.active:
            self._events.append(AlarmInputActive(name, confirmed_at, state.seen_since))
        else:
            active_s = max(0.0, state.seen_since - state.changed_at)
            self._events.append(AlarmInputCleared(name, confirmed_at, state.seen_since, active_s))
        state.changed_at = state.seen_since

    # ---- state ----

    def active(self, name: str) -> bool | None:
        """The input's reported level, or None while it is not started."""
        state = self._inputs.get(name)
        return None if state is None else state.active

    def since(self, name: str) -> float | None:
        """When the input's reported level began, or None while it is not started."""
        state = self._inputs.get(name)
        return None if state is None else state.changed_at

    def failing(self, name: str) -> bool:
        """The last read of the input failed."""
        return name in self._failing


# ---- the relays -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetRelay:
    """The bank's request: drive the relay's line to ``on`` (a logical level)."""

    name: str
    on: bool


class _Relay:
    __slots__ = ("config", "on", "pulse_until", "since")

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.on = config.default_on
        self.pulse_until: float | None = None
        self.since = 0.0


class RelayBank:
    """The relays' states, on/off/pulse commands, and pulse timers (see the module docstring).

    Commands queue ``SetRelay`` writes (``datagrams_to_send``) and ``RelaySwitched`` events; a
    command that leaves a relay as it was queues neither (a pulse still moves its end).
    """

    def __init__(self, relays: Iterable[RelayConfig]) -> None:
        self._relays = {config.name: _Relay(config) for config in relays}
        self._writes: list[SetRelay] = []
        self._events: deque[BoardEvent] = deque()

    @property
    def names(self) -> list[str]:
        """The relays' names, in config order."""
        return list(self._relays)

    def start(self, now: float) -> None:
        """Put every relay at its default (written even where it already is)."""
        for relay in self._relays.values():
            relay.pulse_until = None
            self._switch(relay, relay.config.default_on, now, "start", force=True)

    def stop(self, now: float) -> None:
        """Put every relay at its default and end the pulses (the daemon is stopping)."""
        for relay in self._relays.values():
            relay.pulse_until = None
            self._switch(relay, relay.config.default_on, now, "stop", force=True)

    def set(self, name: str, on: bool, now: float) -> None:
        """Switch the relay on or off (ending a pulse).

        Raises:
            KeyError: no relay ``name``; the message lists the relays.
        """
        relay = self._relay(name)
        relay.pulse_until = None
        self._switch(relay, on, now, "set")

    def pulse(self, name: str, seconds: float, now: float) -> None:
        """Switch the relay on for ``seconds``, then off (a pulse during a pulse restarts it).

        Raises:
            KeyError: no relay ``name``; the message lists the relays.
            ValueError: ``seconds`` is not above 0 and at most ``MAX_PULSE_S``.
        """
        relay = self._relay(name)
        if not 0 < seconds <= MAX_PULSE_S:
            raise ValueError(f"pulse of {seconds:g} s: give more than 0 and at most {MAX_PULSE_S:g} seconds")
        relay.pulse_until = now + seconds
        self._switch(relay, True, now, f"pulse {seconds:g} s")

    def state(self, name: str) -> tuple[bool, float | None, float]:
        """(on, when its pulse ends or None, since when it is in this state).

        Raises:
            KeyError: no relay ``name``.
        """
        relay = self._relay(name)
        return relay.on, relay.pulse_until, relay.since

    def config(self, name: str) -> RelayConfig:
        """The relay's config.

        Raises:
            KeyError: no relay ``name``.
        """
        return self._relay(name).config

    def failed(self, name: str, message: str, now: float) -> None:
        """Writing the relay's line failed: a ``LineFailed`` event (its state stays as wanted)."""
        self._events.append(LineFailed(name, now, message))

    # ---- output ----

    def next_event(self) -> BoardEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> Sequence[SetRelay]:
        """The line writes asked for since the last call, in order."""
        writes, self._writes = self._writes, []
        return writes

    def get_timer(self) -> float | None:
        """When the next pulse ends, or None."""
        ends = [r.pulse_until for r in self._relays.values() if r.pulse_until is not None]
        return min(ends) if ends else None

    def handle_timer(self, now: float) -> None:
        """End the pulses that are due: their relays go off."""
        for relay in self._relays.values():
            if relay.pulse_until is not None and now >= relay.pulse_until:
                relay.pulse_until = None
                self._switch(relay, False, now, "pulse over")

    # ---- inside ----

    def _relay(self, name: str) -> _Relay:
        relay = self._relays.get(name)
        if relay is None:
            known = ", ".join(self._relays) or "none configured"
            raise KeyError(f"no relay named {name!r} (relays: {known})")
        return relay

    def _switch(self, relay: _Relay, on: bool, now: float, why: str, *, force: bool = False) -> None:
        if relay.on == on and not force:
            return
        changed = relay.on != on
        relay.on = on
        if changed or why == "start":
            relay.since = now
        self._writes.append(SetRelay(relay.config.name, on))
        if changed:
            self._events.append(RelaySwitched(relay.config.name, now, on, why))
