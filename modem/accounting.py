"""Cellular data accounting: bytes per ICCID and per billing cycle, a monthly cap policy.

:class:`DataAccounting` is the core: it counts, rolls billing cycles over and raises typed events,
with the time passed in (an aware ``datetime`` in the carrier's time zone; the calendar date decides
the billing cycle). :class:`AccountingLedger` adds the state file: it writes in batches to spare the
flash (after ``flush_bytes`` new bytes, after ``flush_interval_s``, on a cycle rollover or cap
change, and on :meth:`AccountingLedger.close`), always atomically, and survives a corrupt file by
keeping it aside and counting from zero.

Billing cycles start on ``cycle_start_day`` of each month; in a month without that day (day 31 in
April, 29–31 in February) the cycle starts on the month's last day.

Each SIM (ICCID) has its own counters, history and cap level, so a SIM swap never mixes plans.
"""

from __future__ import annotations

import calendar
import enum
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from dvrlink.store.files import atomic_write, move_corrupt_aside

log = logging.getLogger(__name__)

Writer = Callable[[Path, bytes], None]
STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class AccountingConfig:
    """Data accounting and cap settings."""

    cycle_start_day: int = 1
    """Day of month (1–31) the carrier's billing cycle starts."""
    monthly_cap_bytes: int | None = None
    """Data included per cycle, bytes (rx + tx); ``None``: no cap policy."""
    warn_fraction: float = 0.8
    """Share of the cap (0–1) that raises :class:`CapWarning`."""
    flush_bytes: int = 1_000_000
    """Write the state file after this many new bytes, bytes."""
    flush_interval_s: float = 900.0
    """Write the state file at least this often while counting, seconds."""
    history_cycles: int = 3
    """Finished cycles kept per ICCID, for status."""

    def __post_init__(self) -> None:
        if not 1 <= self.cycle_start_day <= 31:
            raise ValueError(f"cycle_start_day {self.cycle_start_day} must be 1 to 31")
        if self.monthly_cap_bytes is not None and self.monthly_cap_bytes <= 0:
            raise ValueError("monthly_cap_bytes must be positive, or left out for no cap")
        if not 0.0 < self.warn_fraction <= 1.0:
            raise ValueError(f"warn_fraction {self.warn_fraction} must be above 0 and at most 1")
        if self.flush_bytes <= 0 or self.flush_interval_s <= 0:
            raise ValueError("flush_bytes and flush_interval_s must be positive")
        if self.history_cycles < 0:
            raise ValueError("history_cycles must be 0 or more")


# ---------------------------------------------------------------------------------------- cycles


def _clamped(year: int, month: int, day: int) -> date:
    return date(year, month, min(day, calendar.monthrange(year, month)[1]))


def cycle_start(today: date, start_day: int) -> date:
    """First day of the billing cycle that contains ``today``."""
    this_month = _clamped(today.year, today.month, start_day)
    if today >= this_month:
        return this_month
    year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    return _clamped(year, month, start_day)


def next_cycle_start(start: date, start_day: int) -> date:
    """First day of the cycle after the one starting on ``start``."""
    year, month = (start.year, start.month + 1) if start.month < 12 else (start.year + 1, 1)
    return _clamped(year, month, start_day)


# ---------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class CycleUsage:
    """Bytes of one SIM in one billing cycle."""

    cycle_start: date
    rx: int = 0
    tx: int = 0

    @property
    def total(self) -> int:
        return self.rx + self.tx


class CapLevel(enum.IntEnum):
    NORMAL = 0
    WARN = 1
    STOP = 2
    """Stop optional traffic (e.g. live view over cellular); keep presence and control."""


class AccountingEvent:
    """Base of the accounting events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class CycleStarted(AccountingEvent):
    """A new billing cycle began for ``iccid``; ``previous`` is the finished one, if any."""

    iccid: str
    cycle_start: date
    previous: CycleUsage | None


@dataclass(frozen=True, slots=True)
class CapWarning(AccountingEvent):
    """Usage passed ``warn_fraction`` of the cap."""

    iccid: str
    cycle_start: date
    used_bytes: int
    cap_bytes: int


@dataclass(frozen=True, slots=True)
class CapReached(AccountingEvent):
    """Usage reached the cap: stop optional traffic until :class:`CapCleared`."""

    iccid: str
    cycle_start: date
    used_bytes: int
    cap_bytes: int


@dataclass(frozen=True, slots=True)
class CapCleared(AccountingEvent):
    """A new cycle began after a warning or a stop: optional traffic may resume."""

    iccid: str
    cycle_start: date


# ------------------------------------------------------------------------------------------ core


@dataclass(slots=True)
class _Sim:
    current: CycleUsage
    history: list[CycleUsage] = field(default_factory=list)
    level: CapLevel = CapLevel.NORMAL


class DataAccounting:
    """Counters per ICCID and cycle, and the cap policy; no I/O.

    The cap level is not persisted: the first :meth:`record` after a restart raises the events for
    the level already reached, so the daemon re-applies its policy.
    """

    def __init__(self, config: AccountingConfig) -> None:
        self.config = config
        self._sims: dict[str, _Sim] = {}

    def record(self, iccid: str, rx: int, tx: int, now: datetime) -> list[AccountingEvent]:
        """Add ``rx``/``tx`` bytes for ``iccid`` at ``now``; 0 bytes just checks cycle and cap.

        Raises ValueError for negative counts or a ``now`` without a time zone (the billing
        calendar would depend on the machine's zone).
        """
        if rx < 0 or tx < 0:
            raise ValueError(f"byte counts must not be negative (rx={rx}, tx={tx})")
        if now.tzinfo is None:
            raise ValueError("now must carry a time zone (the carrier's billing calendar)")
        events: list[AccountingEvent] = []
        start = cycle_start(now.date(), self.config.cycle_start_day)
        sim = self._sims.get(iccid)
        if sim is None:
            sim = self._sims[iccid] = _Sim(CycleUsage(start))
            events.append(CycleStarted(iccid, start, None))
        elif sim.current.cycle_start != start:
            previous = sim.current
            sim.history.append(previous)
            del sim.history[: max(0, len(sim.history) - self.config.history_cycles)]
            sim.current = CycleUsage(start)
            events.append(CycleStarted(iccid, start, previous))
            if sim.level is not CapLevel.NORMAL:
                sim.level = CapLevel.NORMAL
                events.append(CapCleared(iccid, start))
        sim.current = CycleUsage(start, sim.current.rx + rx, sim.current.tx + tx)
        events.extend(self._check_cap(iccid, sim))
        return events

    def _check_cap(self, iccid: str, sim: _Sim) -> list[AccountingEvent]:
        cap = self.config.monthly_cap_bytes
        if cap is None:
            return []
        used = sim.current.total
        level = CapLevel.NORMAL
        if used >= cap:
            level = CapLevel.STOP
        elif used >= cap * self.config.warn_fraction:
            level = CapLevel.WARN
        events: list[AccountingEvent] = []
        start = sim.current.cycle_start
        if level >= CapLevel.WARN > sim.level:
            events.append(CapWarning(iccid, start, used, cap))
        if level >= CapLevel.STOP > sim.level:
            events.append(CapReached(iccid, start, used, cap))
        sim.level = max(sim.level, level)
        return events

    def usage(self, iccid: str) -> CycleUsage | None:
        """The current cycle's counters of ``iccid`` as of its last record, or None if unknown."""
        sim = self._sims.get(iccid)
        return sim.current if sim else None

    def history(self, iccid: str) -> tuple[CycleUsage, ...]:
        sim = self._sims.get(iccid)
        return tuple(sim.history) if sim else ()

    def cap_level(self, iccid: str) -> CapLevel:
        sim = self._sims.get(iccid)
        return sim.level if sim else CapLevel.NORMAL

    def iccids(self) -> tuple[str, ...]:
        return tuple(self._sims)

    # -- serialisation

    def to_bytes(self) -> bytes:
        def row(u: CycleUsage) -> dict[str, int | str]:
            return {"cycle_start": u.cycle_start.isoformat(), "rx": u.rx, "tx": u.tx}

        doc = {
            "version": STATE_VERSION,
            "sims": {
                iccid: {"current": row(s.current), "history": [row(h) for h in s.history]}
                for iccid, s in sorted(self._sims.items())
            },
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def load_bytes(self, data: bytes) -> None:
        """Replace the counters with a saved state. Raises ValueError when it is not one."""

        def usage(row: dict[str, object]) -> CycleUsage:
            rx, tx = row["rx"], row["tx"]
            if not (isinstance(rx, int) and isinstance(tx, int) and rx >= 0 and tx >= 0):
                raise ValueError(f"bad byte counts {rx!r}/{tx!r}")
            return CycleUsage(date.fromisoformat(str(row["cycle_start"])), rx, tx)

        try:
            doc = json.loads(data)
            if doc.get("version") != STATE_VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {STATE_VERSION}")
            sims = {
                str(iccid): _Sim(usage(s["current"]), [usage(h) for h in s["history"]])
                for iccid, s in doc["sims"].items()
            }
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a data accounting state: {exc!r}") from exc
        self._sims = sims


# ---------------------------------------------------------------------------------------- ledger


class AccountingLedger:
    """:class:`DataAccounting` plus its state file, written in batches.

    ``writer`` writes a whole file atomically (the daemon's ``atomic_write``; tests count calls).
    """

    def __init__(self, path: Path, config: AccountingConfig, *, writer: Writer = atomic_write) -> None:
        self.path = Path(path)
        self.core = DataAccounting(config)
        self._writer = writer
        self._unflushed = 0
        self._dirty = False
        self._last_flush: datetime | None = None
        self.writes = 0
        """State file writes so far."""

    def load(self) -> None:
        """Read the state file. A missing file starts from zero; a corrupt one is renamed to
        ``<name>.corrupt``, logged, and counting starts from zero (never raises for bad content)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read data accounting file %s: %s; counting from zero", self.path, exc)
            return
        try:
            self.core.load_bytes(data)
        except ValueError as exc:
            move_corrupt_aside(
                self.path,
                str(exc),
                what="data accounting file",
                instead="counting this cycle from zero, so usage shown is low by what the file held; "
                "inspect it and delete it when done",
                log=log,
            )

    def record(self, iccid: str, rx: int, tx: int, now: datetime) -> list[AccountingEvent]:
        """Count bytes (see :meth:`DataAccounting.record`) and write the file when a batch is due.

        A failed write is logged and retried at the next record; it never raises.
        """
        events = self.core.record(iccid, rx, tx, now)
        self._unflushed += rx + tx
        self._dirty = self._dirty or bool(rx or tx or events)
        if self._last_flush is None:
            self._last_flush = now
        elapsed = (now - self._last_flush).total_seconds()
        config = self.core.config
        due = (
            bool(events)
            or self._unflushed >= config.flush_bytes
            or elapsed >= config.flush_interval_s
            or elapsed < 0  # the clock stepped back (NTP after boot): write now, restart the timer
        )
        if due and self._dirty:
            self.flush(now)
        elif elapsed < 0:
            self._last_flush = now
        return events

    def flush(self, now: datetime) -> bool:
        """Write the state file if anything changed; True when it is now on disk."""
        if not self._dirty:
            return True
        try:
            self._writer(self.path, self.core.to_bytes())
        except OSError as exc:
            log.error("cannot save data accounting: %s; keeping the counts in memory and retrying", exc)
            return False
        self.writes += 1
        self._dirty = False
        self._unflushed = 0
        self._last_flush = now
        return True

    def close(self, now: datetime) -> bool:
        """Write what is pending (on shutdown). Returns :meth:`flush`'s result."""
        return self.flush(now)
