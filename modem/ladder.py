"""The recovery ladder: which step to take against a modem fault, rate-limited and persisted.

Steps, lightest first (``Step``):

1. AT resync (the AT engine probes with ``AT`` until the modem answers);
2. reopen the port;
3. re-attach to the packet network (``+CGATT=0/1``, or ``+COPS=2/0``);
4. radio off and on (``+CFUN=0`` then ``+CFUN=1``);
5. the profile's reset command, then wait for ``RDY`` or the port to come back;
6. USB reset (a board hook);
7. power cycle through a GPIO (a board hook);
8. board reboot, at most ``reboots_per_day`` times a day.

The ladder is a policy without I/O. The owner reports a fault with :meth:`Ladder.decide` and
gets back the step to run (:class:`RunStep`) or when to ask again (:class:`WaitUntil`); it calls
:meth:`Ladder.started` when it runs the step, :meth:`Ladder.online` when the modem is online
again and :meth:`Ladder.tick` now and then. A fault while the episode is still open escalates to
the next step; an episode closes (the ladder goes back to the bottom) once the modem has stayed
online for ``stable_s``. So a step that fixes the fault for good is never followed by a heavier
one, and one that only seemed to fix it is.

Each fault kind has a first step (:data:`FIRST_STEP`): a lost port starts at reopening it, a
data path that fails while the modem answers starts at re-attaching. Steps 3 and 4 need a modem
that answers AT; when it does not (``at_alive`` False) they are skipped, as is step 5.

Times are wall-clock seconds (``time.time()``), because the state outlives the process and the
board: the rate limits and the daily reboot cap hold across daemon restarts and reboots. A clock
that steps backwards (NTP after boot) makes a limit pass early rather than block.
:class:`LadderFile` keeps the state in a small JSON file written atomically.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dvrlink.store.files import atomic_write, move_corrupt_aside

log = logging.getLogger(__name__)

STATE_VERSION = 1
DAY_S = 86400.0
HISTORY_LIMIT = 50

Writer = Callable[[Path, bytes], None]


class Step(enum.IntEnum):
    """The rungs of the ladder, lightest first."""

    RESYNC = 1
    REOPEN_PORT = 2
    REATTACH = 3
    CFUN_CYCLE = 4
    MODEM_RESET = 5
    USB_RESET = 6
    POWER_CYCLE = 7
    BOARD_REBOOT = 8

    @property
    def label(self) -> str:
        """Lower-case name with dashes, as logs and status show it."""
        return self.name.lower().replace("_", "-")


NEEDS_AT = frozenset({Step.REATTACH, Step.CFUN_CYCLE, Step.MODEM_RESET})
"""Steps that are AT commands: useless while the modem does not answer."""


class FaultKind(enum.Enum):
    """What went wrong, as the modem manager sees it."""

    AT_TIMEOUT = "at-timeout"
    """A command got no final result; the engine is resynchronising."""
    AT_UNRESPONSIVE = "at-unresponsive"
    """The modem has not answered ``AT`` for a while."""
    PORT_LOST = "port-lost"
    """The port closed under us (unplug, USB reset, driver)."""
    NO_SERVICE = "no-service"
    """No network registration for too long with a ready SIM."""
    DATA_PATH = "data-path"
    """The data path probe fails while the modem is registered."""
    DATA_SETUP = "data-setup"
    """Every APN failed, round after round, while registered."""


FIRST_STEP: dict[FaultKind, Step] = {
    FaultKind.AT_TIMEOUT: Step.RESYNC,
    FaultKind.AT_UNRESPONSIVE: Step.RESYNC,
    FaultKind.PORT_LOST: Step.REOPEN_PORT,
    FaultKind.NO_SERVICE: Step.REATTACH,
    FaultKind.DATA_PATH: Step.REATTACH,
    FaultKind.DATA_SETUP: Step.REATTACH,
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault report. ``at_alive``: the modem still answers AT."""

    kind: FaultKind
    reason: str
    at_alive: bool = True


@dataclass(frozen=True, slots=True)
class LadderConfig:
    """Recovery ladder settings. Times in seconds.

    ``min_interval_s``: per step (index 0 is step 1), the least time between two runs of that
    step; a fault that would need it sooner waits. ``stable_s``: online this long closes the
    episode (the next fault starts at the bottom again). ``reboots_per_day``: board reboots
    allowed in any 24 h. ``round_pause_s``: after the top of the ladder, wait this long and start
    over from the fault's first step. ``enabled``: the steps this board can take (no GPIO wired:
    leave out ``POWER_CYCLE``).
    """

    min_interval_s: tuple[float, ...] = (0.0, 5.0, 30.0, 60.0, 120.0, 300.0, 600.0, 3600.0)
    stable_s: float = 300.0
    reboots_per_day: int = 2
    round_pause_s: float = 600.0
    enabled: frozenset[Step] = frozenset(Step)

    def __post_init__(self) -> None:
        if len(self.min_interval_s) != len(Step):
            raise ValueError(
                f"min_interval_s needs {len(Step)} values (one per ladder step), "
                f"got {len(self.min_interval_s)}"
            )
        if any(v < 0 for v in self.min_interval_s) or self.stable_s < 0 or self.round_pause_s < 0:
            raise ValueError("ladder intervals, stable_s and round_pause_s must be >= 0 seconds")
        if self.reboots_per_day < 0:
            raise ValueError(f"reboots_per_day {self.reboots_per_day} must be >= 0 (0: never reboot)")

    def interval(self, step: Step) -> float:
        return self.min_interval_s[step - 1]


@dataclass(frozen=True, slots=True)
class RunStep:
    """Run ``step`` now, because of ``fault``."""

    step: Step
    fault: Fault


@dataclass(frozen=True, slots=True)
class WaitUntil:
    """Nothing to run before ``until`` (wall clock); then call :meth:`Ladder.decide` again."""

    until: float
    reason: str


Decision = RunStep | WaitUntil


@dataclass(frozen=True, slots=True)
class LadderEntry:
    """One step taken: when (wall clock), which, and why."""

    at: float
    step: Step
    reason: str


@dataclass(slots=True)
class LadderState:
    """What the ladder remembers across restarts."""

    episode_step: int = 0
    """Highest step taken in the open episode; 0: none (at the bottom)."""
    online_since: float | None = None
    last_run: dict[Step, float] = field(default_factory=dict)
    reboots: list[float] = field(default_factory=list)
    history: list[LadderEntry] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        doc = {
            "version": STATE_VERSION,
            "episode_step": self.episode_step,
            "online_since": self.online_since,
            "last_run": {step.label: at for step, at in sorted(self.last_run.items())},
            "reboots": self.reboots,
            "history": [[e.at, e.step.label, e.reason] for e in self.history],
        }
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LadderState:
        """Raises ValueError when ``data`` is not a ladder state."""
        by_label = {step.label: step for step in Step}
        try:
            doc = json.loads(data)
            if doc.get("version") != STATE_VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {STATE_VERSION}")
            episode = int(doc["episode_step"])
            if not 0 <= episode <= len(Step):
                raise ValueError(f"episode_step {episode} out of range")
            since = doc["online_since"]
            return cls(
                episode_step=episode,
                online_since=None if since is None else float(since),
                last_run={by_label[k]: float(v) for k, v in doc["last_run"].items()},
                reboots=[float(x) for x in doc["reboots"]],
                history=[LadderEntry(float(at), by_label[s], str(r)) for at, s, r in doc["history"]],
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a recovery ladder state: {exc!r}") from exc


class Ladder:
    """The ladder policy (see module docstring). No I/O; ``now`` is wall-clock seconds."""

    def __init__(self, config: LadderConfig, state: LadderState | None = None) -> None:
        self.config = config
        self.state = state or LadderState()
        self.dirty = False
        """True when the state changed since the owner last saved it (the owner clears it)."""

    @property
    def episode_step(self) -> Step | None:
        """The highest step taken in the open episode, or None at the bottom."""
        return Step(self.state.episode_step) if self.state.episode_step else None

    @property
    def history(self) -> tuple[LadderEntry, ...]:
        """The last steps taken, oldest first."""
        return tuple(self.state.history)

    def decide(self, fault: Fault, now: float) -> Decision:
        """The step to take against ``fault``, or when to ask again. Does not record anything."""
        if self.state.episode_step >= len(Step):
            return self._round_over(fault, now)
        start = max(int(FIRST_STEP[fault.kind]), self.state.episode_step + 1)
        for step in Step:
            if step < start or step not in self.config.enabled:
                continue
            if step in NEEDS_AT and not fault.at_alive:
                continue
            if step is Step.BOARD_REBOOT and self._reboots_today(now) >= self.config.reboots_per_day:
                continue
            last = self.state.last_run.get(step)
            if last is not None and last <= now < last + self.config.interval(step):
                return WaitUntil(
                    last + self.config.interval(step),
                    f"{step.label} ran {now - last:.0f} s ago; its rate limit is "
                    f"{self.config.interval(step):.0f} s",
                )
            return RunStep(step, fault)
        return self._round_over(fault, now)

    def _round_over(self, fault: Fault, now: float) -> WaitUntil:
        # the top was reached (or every step left is off or capped): start over after a pause
        self.state.episode_step = 0
        self.dirty = True
        return WaitUntil(
            now + self.config.round_pause_s,
            f"every recovery step was tried against {fault.kind.value}; starting over after a pause",
        )

    def started(self, step: Step, reason: str, now: float) -> LadderEntry:
        """Record that ``step`` runs now. The episode's step only goes up."""
        entry = LadderEntry(now, step, reason)
        self.state.last_run[step] = now
        self.state.episode_step = max(self.state.episode_step, int(step))
        self.state.online_since = None
        if step is Step.BOARD_REBOOT:
            self.state.reboots.append(now)
        self.state.history.append(entry)
        del self.state.history[: max(0, len(self.state.history) - HISTORY_LIMIT)]
        self.dirty = True
        log.warning("modem recovery step %d (%s): %s", step, step.label, reason)
        return entry

    def online(self, now: float) -> None:
        """The modem is online (data path up); the episode closes after ``stable_s`` of it."""
        if self.state.online_since is None and self.state.episode_step:
            self.state.online_since = now
            self.dirty = True

    def offline(self) -> None:
        """The modem went offline before the episode closed."""
        if self.state.online_since is not None:
            self.state.online_since = None
            self.dirty = True

    def tick(self, now: float) -> bool:
        """Close the episode when the modem stayed online long enough; True when it did."""
        since = self.state.online_since
        if since is None or not self.state.episode_step:
            return False
        if now - since >= self.config.stable_s or now < since:
            log.info(
                "modem stable for %.0f s after recovery step %d: recovery ladder back at the bottom",
                self.config.stable_s,
                self.state.episode_step,
            )
            self.state.episode_step = 0
            self.state.online_since = None
            self.dirty = True
            return True
        return False

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (wall clock), or None."""
        if self.state.online_since is None or not self.state.episode_step:
            return None
        return self.state.online_since + self.config.stable_s

    def _reboots_today(self, now: float) -> int:
        return sum(1 for at in self.state.reboots if 0 <= now - at < DAY_S)


class LadderFile:
    """Loads and saves :class:`LadderState` (JSON, written atomically)."""

    def __init__(self, path: Path, *, writer: Writer = atomic_write) -> None:
        self.path = Path(path)
        self._writer = writer

    def load(self) -> LadderState:
        """The saved state; a fresh one when there is none. A corrupt file is kept aside as
        ``<name>.corrupt`` and logged (the ladder then starts at the bottom with no rate limits
        remembered, which may run a step early but never blocks recovery)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return LadderState()
        except OSError as exc:
            log.error("cannot read recovery ladder state %s: %s; starting at the bottom", self.path, exc)
            return LadderState()
        try:
            state = LadderState.from_bytes(data)
        except ValueError as exc:
            move_corrupt_aside(
                self.path, str(exc), what="recovery ladder state", instead="starting at the bottom", log=log
            )
            return LadderState()
        return state

    def save(self, state: LadderState, now: float | None = None) -> None:
        """Write the state. Raises OSError naming the path when the directory is not writable."""
        if now is not None:
            state.reboots = [at for at in state.reboots if 0 <= now - at < DAY_S]
        self._writer(self.path, state.to_bytes())
