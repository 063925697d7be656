"""Learning how long the device's NAT keeps an idle UDP mapping, to keep alive no more often than
it must. Sans-I/O; time passed in; ``daemon/nat_probe.py`` does the I/O.

A probe is one fresh UDP socket (a mapping of its own) that asks the broker to answer after a
delay (``PresenceClient.probe_datagram``); if the answer arrives, the NAT kept the mapping idle
that long. Probes run ``parallel`` (6) at a time, in rounds:

1. The first round tries the configured interval times 0.5, 1, 2, 4, ... (``parallel`` probes).
2. While no probe has failed, each round doubles on from the longest success (up to
   ``max_probe_s``). Once one failed, each round spreads its probes evenly over the interval
   between the longest success (``low``) and the shortest failure (``high``). A probe at or above
   a known failure is moot and its result ignored; a round ends when the rest have answered or
   were lost.
3. The bracket is narrow enough when ``high - low`` is at most ``resolution`` of ``low`` (or
   ``min_resolution_s``), or when ``low`` reached ``max_probe_s``. The keepalive interval is then
   ``safety`` times ``low``, within ``min_interval_s`` and ``max_interval_s``.

While measuring, the interval stays at the configured one, unless a probe at or below it failed:
then it drops to a safe fraction of the longest success (reachability first). A change of path
(another reflexive address, another network) starts over from the configured interval. A settled
measurement is repeated after ``remeasure_s``.

A lost probe is only evidence when the broker was answering: the presence session's own
keepalives (on the old, busy mapping) are the control. A lost probe counts as an expired mapping
once a keepalive of the same session is answered after the loss (``broker_answered``); if the
session is lost first (``session_lost``: keepalives unanswered, UNKNOWN_SESSION after a broker
restart, a new registration), the round proves nothing and is tried again after ``retry_s``.

The broker holds a few probes per device at once (``max_probes_per_device``, 8) and silently drops
more, which would look like expired mappings. The learners of one device (UDP and TCP) therefore
share a :class:`ProbeBudget`: a probe is handed out only while the budget has room, the rest of a
round waits for a slot.

A device the broker sees at its own address (``behind_nat`` is False: a public or loopback
address) has no NAT mapping to learn; the daemon does not start the learner then.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

BROKER_PROBE_LIMIT = 8
"""Probes the broker holds for one device at once (its ``max_probes_per_device`` default)."""


def behind_nat(local: tuple[str, int] | None, reflexive: tuple[str, int]) -> bool:
    """False when the broker sees the device at the address its socket has (no NAT on the way:
    a public or loopback address); True otherwise, and when the local address is unknown."""
    if local is None:
        return True
    return (_plain_ip(local[0]), local[1]) != (_plain_ip(reflexive[0]), reflexive[1])


def _plain_ip(ip: str) -> str:
    ip = ip.split("%", 1)[0].lower()
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


class ProbeBudget:
    """Probe slots at the broker, shared by the learners of one device (see the module docstring).
    ``on_release`` callbacks are called when a slot frees (a driver schedules its learner's pump)."""

    def __init__(self, limit: int = BROKER_PROBE_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"probe budget {limit}: must be at least 1")
        self.limit = limit
        self.in_use = 0
        self._listeners: list[Callable[[], None]] = []

    @property
    def free(self) -> int:
        """Slots free now."""
        return self.limit - self.in_use

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (no arguments) each time slots free."""
        self._listeners.append(callback)

    def take(self) -> None:
        """Use one slot.

        Raises:
            RuntimeError: none is free.
        """
        if self.in_use >= self.limit:
            raise RuntimeError(f"probe budget of {self.limit} used up")
        self.in_use += 1

    def release(self, count: int = 1) -> None:
        """Free ``count`` slots."""
        if count <= 0:
            return
        self.in_use = max(0, self.in_use - count)
        for callback in list(self._listeners):
            callback()


class LearnerState(enum.Enum):
    """Where the learner is."""

    IDLE = "idle"
    MEASURING = "measuring"
    SETTLED = "settled"


@dataclass(frozen=True, slots=True)
class LearnerConfig:
    """How the NAT lifetime is measured and turned into an interval (seconds)."""

    parallel: int = 6
    max_probe_s: float = 1800.0
    min_interval_s: float = 10.0
    max_interval_s: float = 1800.0
    safety: float = 0.9
    resolution: float = 0.1
    min_resolution_s: float = 2.0
    remeasure_s: float = 86400.0
    retry_s: float = 300.0
    """Wait before a round whose probes could not be sent (not registered) is tried again."""
    max_unsent_rounds: int = 3
    """Rounds in a row that could not be sent (an endpoint that does not answer) before the
    measurement is given up until ``start``; the interval stays as it is."""

    def __post_init__(self) -> None:
        if self.parallel < 1 or not 0 < self.safety < 1 or self.min_interval_s > self.max_interval_s:
            raise ValueError(
                "learner config: parallel >= 1, 0 < safety < 1 and min_interval_s <= max_interval_s"
            )


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe to send now: ask for an answer after ``delay`` seconds."""

    probe_id: int
    delay: float


class LearnerEvent:
    """Base of what the learner reports."""


@dataclass(frozen=True, slots=True)
class IntervalChanged(LearnerEvent):
    """Use ``interval`` seconds between keepalives from now on."""

    interval: float
    low: float | None
    high: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class MeasurementDone(LearnerEvent):
    """The NAT kept an idle mapping at least ``low`` seconds (``high``: and lost it by then)."""

    low: float
    high: float | None


@dataclass(slots=True)
class _Round:
    probes: dict[int, float] = field(default_factory=dict)  # outstanding: id -> delay
    unconfirmed: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Lost, waiting for the control: id -> (delay, when it was declared lost)."""


class LifetimeLearner:
    """See the module docstring."""

    def __init__(
        self, config: LearnerConfig, configured_interval: float, budget: ProbeBudget | None = None
    ) -> None:
        self._config = config
        self._budget = budget
        self._in_flight: set[int] = set()
        self._configured = configured_interval
        self._interval = configured_interval
        self._state = LearnerState.IDLE
        self._low: float | None = None
        self._high: float | None = None
        self._round: _Round | None = None
        self._rounds = 0
        self._unsent_rounds = 0
        self._next_id = 1
        self._to_send: list[Probe] = []
        self._timer: float | None = None
        self._events: deque[LearnerEvent] = deque()

    # -- read ----------------------------------------------------------------------------------

    @property
    def state(self) -> LearnerState:
        """Idle, measuring or settled."""
        return self._state

    @property
    def interval(self) -> float:
        """The keepalive interval to use now."""
        return self._interval

    @property
    def budget(self) -> ProbeBudget | None:
        """The probe slots this learner shares, if any."""
        return self._budget

    @property
    def bracket(self) -> tuple[float | None, float | None]:
        """(longest idle time the mapping survived, shortest it did not), as far as known."""
        return self._low, self._high

    def next_event(self) -> LearnerEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next, or None."""
        return self._timer

    # -- drive ---------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin a measurement (again), from the configured interval."""
        self._low = self._high = None
        self._drop_round()
        self._rounds = 0
        self._unsent_rounds = 0
        self._state = LearnerState.MEASURING
        self._timer = None
        self._set_interval(self._configured, "measuring the NAT's mapping lifetime")
        self._next_round(now)

    def path_changed(self, now: float, reason: str) -> None:
        """The device's path to the broker changed: what was learned no longer holds."""
        self._set_interval(self._configured, f"path changed ({reason}): measuring again")
        self.start(now)

    def stop(self) -> None:
        """Drop the measurement under way (its probes were cancelled) and the re-measurement; a
        settled result stays known, an unfinished one is forgotten (idle) until ``start``."""
        self._drop_round()
        if self._state is LearnerState.MEASURING:
            self._state = LearnerState.IDLE
        self._timer = None

    def probes_to_send(self) -> list[Probe]:
        """Probes to start now, as many as the budget has room for; the rest wait for a slot."""
        count = len(self._to_send) if self._budget is None else min(len(self._to_send), self._budget.free)
        out, self._to_send = self._to_send[:count], self._to_send[count:]
        for probe in out:
            if self._budget is not None:
                self._budget.take()
            self._in_flight.add(probe.probe_id)
        return out

    def broker_answered(self, now: float) -> None:
        """A keepalive of the presence session was answered (the control): probes lost before
        ``now`` count as expired mappings."""
        current = self._round
        if current is None or not current.unconfirmed:
            return
        confirmed = [(pid, delay) for pid, (delay, lost_at) in current.unconfirmed.items() if lost_at <= now]
        for pid, delay in sorted(confirmed, key=lambda item: item[1]):
            if current.unconfirmed.pop(pid, None) is not None:  # else moot by a shorter loss
                self._record_loss(delay)
        self._after_result(now)

    def session_lost(self, now: float) -> None:
        """The presence session ended (keepalives unanswered, the broker forgot it, a new
        registration): the probes out and those lost meanwhile prove nothing about the NAT; the
        round is tried again after ``retry_s``."""
        if self._state is not LearnerState.MEASURING or self._round is None:
            return
        self._drop_round()
        self._rounds = max(0, self._rounds - 1)
        self._timer = now + self._config.retry_s

    def probe_unsent(self, probe_id: int, now: float) -> None:
        """A probe could not be sent (not registered): the round is tried again later."""
        if self._round is not None and probe_id in self._round.probes:
            self._drop_round()
            self._rounds = max(0, self._rounds - 1)
            self._unsent_rounds += 1
            if self._unsent_rounds >= self._config.max_unsent_rounds:
                self._state = LearnerState.IDLE
                self._timer = None
                return
            self._timer = now + self._config.retry_s

    def probe_answered(self, probe_id: int, now: float) -> None:
        """The broker's answer to the probe arrived: the mapping survived its delay."""
        delay = self._take(probe_id)
        if delay is None:
            return
        if self._high is None or delay < self._high:
            self._low = max(self._low or 0.0, delay)
        self._after_result(now)

    def probe_lost(self, probe_id: int, now: float) -> None:
        """No answer in time: the mapping did not survive the probe's delay, if the broker was
        answering; that is known at the next ``broker_answered`` (or not, at ``session_lost``)."""
        delay = self._take(probe_id)
        if delay is None:
            return
        assert self._round is not None
        self._round.unconfirmed[probe_id] = (delay, now)

    def _record_loss(self, delay: float) -> None:
        if self._low is None or delay > self._low:
            self._high = delay if self._high is None else min(self._high, delay)
        if delay <= self._interval:
            safe = self._clamp(self._config.safety * (self._low or 0.0))
            if safe < self._interval:
                self._set_interval(safe, f"an idle mapping did not last {delay:g} s")
        assert self._round is not None
        high = self._high
        if high is not None:
            for moot in [pid for pid, d in self._round.probes.items() if d >= high]:
                del self._round.probes[moot]
                self._to_send = [p for p in self._to_send if p.probe_id != moot]
            for moot in [pid for pid, (d, _) in self._round.unconfirmed.items() if d >= high]:
                del self._round.unconfirmed[moot]

    def handle_timer(self, now: float) -> None:
        """Start the retry or the periodic re-measurement that is due."""
        if self._timer is None or now < self._timer:
            return
        self._timer = None
        if self._state is LearnerState.SETTLED:
            self.start(now)
        elif self._state is LearnerState.MEASURING and self._round is None:
            self._next_round(now)

    # -- internals -----------------------------------------------------------------------------

    def _take(self, probe_id: int) -> float | None:
        self._release({probe_id})  # a moot probe holds its slot until now: the broker held it
        if self._round is None:
            return None
        delay = self._round.probes.pop(probe_id, None)
        if delay is not None:
            self._unsent_rounds = 0
        return delay

    def _release(self, probe_ids: set[int]) -> None:
        done = self._in_flight & probe_ids
        self._in_flight -= done
        if self._budget is not None and done:
            self._budget.release(len(done))

    def _drop_round(self) -> None:
        """Forget the round under way and free its slots."""
        self._round = None
        self._to_send = []
        self._release(set(self._in_flight))

    def _after_result(self, now: float) -> None:
        assert self._round is not None
        if self._round.probes or self._round.unconfirmed:
            return
        self._round = None
        if self._converged():
            self._settle(now)
        else:
            self._next_round(now)

    def _converged(self) -> bool:
        low, high, config = self._low, self._high, self._config
        if high is None:
            return low is not None and low >= config.max_probe_s
        width = high - (low or 0.0)
        return width <= max(config.min_resolution_s, config.resolution * (low or 0.0))

    def _delays(self) -> list[float]:
        config, low, high = self._config, self._low, self._high
        if self._rounds == 0:
            delays = [self._configured * 2 ** (i - 1) for i in range(config.parallel)]
        elif high is None:
            start = low or self._configured
            delays = [start * 2 ** (i + 1) for i in range(config.parallel)]
        else:
            bottom = low or 0.0
            step = (high - bottom) / (config.parallel + 1)
            delays = [bottom + step * (i + 1) for i in range(config.parallel)]
        out = sorted({round(min(d, config.max_probe_s), 1) for d in delays if d > 0})
        return [d for d in out if (low is None or d > low) and (high is None or d < high)]

    def _next_round(self, now: float) -> None:
        delays = self._delays()
        if not delays:
            self._settle(now)
            return
        self._rounds += 1
        self._round = _Round()
        for delay in delays:
            probe = Probe(self._next_id, delay)
            self._next_id += 1
            self._round.probes[probe.probe_id] = delay
            self._to_send.append(probe)

    def _settle(self, now: float) -> None:
        self._state = LearnerState.SETTLED
        low = self._low
        if low is None:
            interval = self._config.min_interval_s
            reason = "no idle mapping lasted the shortest probe"
        else:
            interval = self._clamp(self._config.safety * low)
            reason = f"the NAT keeps an idle mapping {low:g} s" + (
                f" (not {self._high:g} s)" if self._high is not None else " or more"
            )
        self._events.append(MeasurementDone(low or 0.0, self._high))
        self._set_interval(interval, reason)
        self._timer = now + self._config.remeasure_s

    def _set_interval(self, interval: float, reason: str) -> None:
        if not math.isclose(interval, self._interval):
            self._interval = interval
            self._events.append(IntervalChanged(interval, self._low, self._high, reason))

    def _clamp(self, interval: float) -> float:
        config = self._config
        return round(min(max(interval, config.min_interval_s), config.max_interval_s), 1)
