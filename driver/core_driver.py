"""Drive a sans-I/O core from asyncio: inputs and timer expiries in, events and datagrams out.

A core (``PresenceClient``, ``PresenceServer``, ``TurnServer``) is a plain object: bytes and
calls in, events and datagrams out, time passed in, and one deadline (``get_timer``) at which it
wants ``handle_timer``. What turns such an object into a running protocol is the same for every
core, and lives here; a link only moves bytes between its sockets and a :class:`CoreDriver`:

- After every input (a datagram, a timer, or a call the application made on the core, announced
  with :meth:`CoreDriver.flush`), one pass hands the core's events to ``on_event``, gives the
  datagrams it queued to ``transmit``, calls ``after_step``, and re-arms the one asyncio timer
  at the core's new deadline (left alone when the deadline did not move).
- The timer calls ``handle_timer`` with the core's clock, never earlier than the deadline it was
  armed for (asyncio may run a callback up to a clock tick early), then runs a pass.
- A pass is re-entrant: a flush from inside ``on_event``, ``transmit`` or ``after_step`` is
  folded into the running pass, which then runs once more.
- Nothing the core or a callback raises reaches asyncio: bad input never stops a long-running
  process. Each failure is counted in ``errors`` and logged with its traceback (the first
  ``LOGGED_ERRORS``, then every ``LOG_EVERY``-th, so a flood of bad input cannot flood the log).
- :meth:`CoreDriver.close` cancels the timer and stops driving: later inputs, flushes and a timer
  already due do nothing.

The core's clock is the event loop's (``loop.time()``) unless ``clock`` is given (the TURN core
runs on unix time); either way the core is handed ``now`` and never reads a clock itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

LOGGED_ERRORS = 10
"""Failures logged with a traceback before the log thins out."""
LOG_EVERY = 1000
"""After the first ``LOGGED_ERRORS``, every this many failures is logged."""

EventT = TypeVar("EventT")
OutT = TypeVar("OutT")
AddressT = TypeVar("AddressT")
EventT_co = TypeVar("EventT_co", covariant=True)
OutT_co = TypeVar("OutT_co", covariant=True)


class Core(Protocol[EventT_co, OutT_co]):
    """What the driver needs of a sans-I/O core besides its inputs: its output and its timer.

    The inputs differ per core (a connected client's ``receive_datagram(data, now)``, a server's
    ``receive_datagram(data, address, now)``, the TURN core's hot paths) and are handed in with
    :meth:`CoreDriver.receive`, :meth:`CoreDriver.receive_from`, or a call on the core followed by
    :meth:`CoreDriver.flush`.
    """

    def next_event(self) -> EventT_co | None:
        """The next event, or None when there is none."""

    def datagrams_to_send(self) -> Sequence[OutT_co]:
        """What the core queued since the last call (each item as the link's ``transmit`` takes it)."""

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is due on the core's clock, or None."""

    def handle_timer(self, now: float) -> None:
        """The deadline of ``get_timer`` has come."""


class CoreDriver(Generic[EventT, OutT]):
    """Runs ``core`` on the event loop: see the module docstring.

    ``transmit`` gets each non-empty batch of the core's datagrams (it owns the sockets, and
    drops or counts what it cannot send); None for a core that sends nothing (a policy: a batch it
    queues anyway counts as a failure); ``on_event`` gets each event (it may call into the core:
    what that queues goes out in the same pass); ``after_step`` runs after each pass's events and
    datagrams. ``name`` names the core in log lines; ``logger`` is the link's logger. ``loop`` is
    the running loop when None (looked up on first use, so a driver can be built before it runs).
    """

    def __init__(
        self,
        core: Core[EventT, OutT],
        transmit: Callable[[Sequence[OutT]], None] | None,
        *,
        on_event: Callable[[EventT], None] | None = None,
        after_step: Callable[[], None] | None = None,
        clock: Callable[[], float] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        name: str = "core",
        logger: logging.Logger = log,
    ) -> None:
        self._core = core
        self._transmit = transmit
        self._on_event = on_event
        self._after_step = after_step
        self._clock = clock
        self._loop = loop
        self._name = name
        self._log = logger
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._busy = False
        self._again = False
        self._closed = False
        self.errors = 0
        """Failures of the core or a callback so far (each logged, see ``LOGGED_ERRORS``)."""

    @property
    def timer_at(self) -> float | None:
        """The core deadline the timer is armed for, or None while none is."""
        return self._timer_at

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def now(self) -> float:
        """The core's clock now (``loop.time()`` unless a ``clock`` was given).

        Raises:
            RuntimeError: no ``loop`` was given and none is running.
        """
        return self._clock() if self._clock is not None else self._event_loop().time()

    def receive(self, receive: Callable[[bytes, float], object], data: bytes) -> None:
        """Hand ``data`` to ``receive`` (a connected core's ``receive_datagram(data, now)``) at the
        core's now, then run a pass. A failure is counted and logged; ignored once closed."""
        if self._closed:
            return
        try:
            receive(data, self.now())
        except Exception:
            self.failed(f"{self._name} failed on a datagram")
        self.flush()

    def receive_from(
        self, receive: Callable[[bytes, AddressT, float], object], data: bytes, address: AddressT
    ) -> None:
        """Hand ``data`` from ``address`` to ``receive`` (a core's ``receive_datagram(data, address,
        now)``) at the core's now, then run a pass. A failure is counted and logged; ignored once
        closed."""
        if self._closed:
            return
        try:
            receive(data, address, self.now())
        except Exception:
            self.failed(f"{self._name} failed on a datagram from {address}")
        self.flush()

    def feed_from(
        self, receive: Callable[[bytes, AddressT, float], object], data: bytes, address: AddressT
    ) -> None:
        """As :meth:`receive_from`, without the pass: a link that reads a batch of datagrams per
        wake-up feeds them all, then calls :meth:`flush` once, so that their answers go out
        together and the timer is re-armed once. A failure is counted and logged; ignored once
        closed."""
        if self._closed:
            return
        try:
            receive(data, address, self.now())
        except Exception:
            self.failed(f"{self._name} failed on a datagram from {address}")

    def flush(self) -> None:
        """Hand out events, send queued datagrams, run ``after_step``, re-arm the timer.

        Call it after calling the core from outside the driver (an invite, a reply). Re-entrant:
        a call from inside a pass is folded into it. Does nothing once closed.
        """
        if self._closed:
            return
        if self._busy:
            self._again = True
            return
        self._busy = True
        try:
            self._again = True
            while self._again and not self._closed:
                self._again = False
                self._pass()
        finally:
            self._busy = False

    def failed(self, what: str) -> None:
        """Count a failure and log it with its traceback (call it in an ``except`` block); the
        log thins out after ``LOGGED_ERRORS`` (see the module docstring)."""
        self.errors += 1
        if self.errors <= LOGGED_ERRORS or self.errors % LOG_EVERY == 0:
            self._log.exception("%s (%d errors so far); carrying on", what, self.errors)

    def close(self) -> None:
        """Cancel the timer and stop driving the core (it keeps its state). Idempotent."""
        self._closed = True
        self._cancel_timer()

    # -- internals -------------------------------------------------------------------------------

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _pass(self) -> None:
        core = self._core
        on_event = self._on_event
        try:
            event = core.next_event()
            while event is not None:
                if on_event is not None:
                    try:
                        on_event(event)
                    except Exception:
                        self.failed(f"event handler failed on {event!r}")
                event = core.next_event()
            out = core.datagrams_to_send()
        except Exception:
            self.failed(f"{self._name} failed handing out its events or datagrams")
            return
        if out:
            try:
                if self._transmit is None:
                    raise RuntimeError(f"{len(out)} datagrams queued, but this driver has no transmit")
                self._transmit(out)
            except Exception:
                self.failed(f"sending what {self._name} queued failed")
        if self._after_step is not None:
            try:
                self._after_step()
            except Exception:
                self.failed("event handler failed after a step")
        if self._closed:
            return
        try:
            deadline = core.get_timer()
        except Exception:
            self.failed(f"{self._name} failed telling its next deadline")
            return
        if deadline != self._timer_at:
            self._arm(deadline)

    def _arm(self, deadline: float | None) -> None:
        self._cancel_timer()
        if deadline is None:
            return
        loop = self._event_loop()
        self._timer_at = deadline
        if self._clock is None:
            self._timer = loop.call_at(deadline, self._expired)
        else:
            self._timer = loop.call_later(max(0.0, deadline - self._clock()), self._expired)

    def _expired(self) -> None:
        deadline = self._timer_at
        self._timer = None
        self._timer_at = None
        if self._closed or deadline is None:
            return
        try:
            self._core.handle_timer(max(self.now(), deadline))
        except Exception:
            self.failed(f"{self._name} failed in its timer")
        self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
