"""The recording disks: a disk that is gone, not mounted, read-only, failing or full is an alarm.

A recorder's disk fails quietly: the kernel remounts a filesystem with errors read-only, a
loose SATA cable leaves the mount point an empty directory, a full disk stops the recording.
``[disks] paths`` names the disks' mount points; dvrlinkd looks at each every ``interval_s``:

- ``DiskReading`` comes from ``read_disk``: ``os.stat``, the mount table
  (``/proc/self/mountinfo``) and ``statvfs`` (free blocks). Whether the disk is read-only is
  taken from its superblock's options in the mount table, not from this mount's: the systemd
  unit's ``ProtectSystem=strict`` makes every mount read-only for dvrlinkd, while the kernel's
  remount after filesystem errors shows on the superblock. It never writes to the disk, so a
  sleeping disk is not spun up, and it runs in a worker thread with a time-out, since a dying
  disk can hang ``statvfs`` for minutes (``DiskService``).
- ``DiskWatcher``, sans-I/O, turns readings into ``DiskProblem`` (the first bad reading, or a
  different problem) and ``DiskRecovered`` (good again, with how long it was bad). A disk that
  is bad at the first look is a problem at once: a recorder that boots with a dead disk is
  what the operator most needs to hear of.
- The events become alarms: ``DISK_ERROR`` with ``/mnt/hdd: read-only (the kernel remounted
  it: filesystem errors)``, and ``OTHER`` for a recovery.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dvrlink.protocol.alarm_wire import AlarmKind

log = logging.getLogger(__name__)

MAX_DISKS = 8


@dataclass(frozen=True, slots=True)
class DisksConfig:
    """``[disks]``: the recording disks dvrlinkd watches (none: not watched)."""

    paths: tuple[Path, ...] = ()
    """The disks' mount points."""
    min_free_percent: float = 5.0
    """A disk with less free space than this is ``full``."""
    interval_s: float = 60.0
    """Seconds between two looks at every disk."""
    timeout_s: float = 20.0
    """A look that takes longer is ``not-answering`` (a dying disk can hang ``statvfs``)."""


class DiskState(enum.Enum):
    """What a look at a disk found."""

    OK = "ok"
    MISSING = "missing"
    """The mount point does not exist."""
    NOT_MOUNTED = "not-mounted"
    """The mount point is a plain directory of the root filesystem: the disk is not there."""
    READ_ONLY = "read-only"
    IO_ERROR = "io-error"
    NOT_ANSWERING = "not-answering"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class DiskReading:
    """One look at a disk."""

    path: Path
    state: DiskState
    free_percent: float | None = None
    detail: str = ""
    """What was seen, in words (the error, the free space)."""


@dataclass(frozen=True, slots=True)
class DiskEvent:
    """Base of the disk watch's events."""

    path: Path
    at: float


@dataclass(frozen=True, slots=True)
class DiskProblem(DiskEvent):
    """A disk went bad, or bad in another way."""

    state: DiskState
    detail: str


@dataclass(frozen=True, slots=True)
class DiskRecovered(DiskEvent):
    """A disk is good again after ``bad_s`` seconds."""

    bad_s: float


class DiskWatcher:
    """Readings in, events out (see the module docstring). Time is passed in."""

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self._state: dict[Path, DiskState] = dict.fromkeys(paths, DiskState.OK)
        self._bad_since: dict[Path, float] = {}
        self.readings: dict[Path, DiskReading] = {}
        """The last reading of each disk (for the status file)."""

    def update(self, reading: DiskReading, now: float) -> list[DiskEvent]:
        """The events ``reading`` (of a watched path) calls for."""
        path = reading.path
        self.readings[path] = reading
        before = self._state.get(path, DiskState.OK)
        self._state[path] = reading.state
        if reading.state is before:
            return []
        if reading.state is DiskState.OK:
            since = self._bad_since.pop(path, now)
            return [DiskRecovered(path, now, now - since)]
        self._bad_since.setdefault(path, now)
        return [DiskProblem(path, now, reading.state, reading.detail)]


MOUNTINFO = Path("/proc/self/mountinfo")


def superblock_options(mount_point: str, mountinfo: str) -> frozenset[str] | None:
    """The superblock options of what is mounted at ``mount_point`` (the last mount there wins,
    as in the kernel), from the text of ``/proc/PID/mountinfo``; None if nothing is."""
    found: frozenset[str] | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if point == mount_point:
            dash = fields.index("-", 6)
            found = frozenset(fields[dash + 3].split(",")) if len(fields) > dash + 3 else frozenset()
    return found


def read_disk(path: Path, min_free_percent: float, mountinfo: Path = MOUNTINFO) -> DiskReading:
    """Look at the disk mounted at ``path`` (blocking: run it in a thread). Never raises."""
    try:
        os.stat(path)
        table = mountinfo.read_text("utf-8", "replace")
    except FileNotFoundError:
        return DiskReading(path, DiskState.MISSING, None, "the mount point does not exist")
    except OSError as exc:
        return _error_reading(path, exc)
    options = superblock_options(os.path.realpath(path), table)
    if options is None:
        return DiskReading(
            path, DiskState.NOT_MOUNTED, None, "nothing is mounted there: check the disk and its cable"
        )
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        return _error_reading(path, exc)
    free = 100.0 * vfs.f_bavail / vfs.f_blocks if vfs.f_blocks else 0.0
    if "ro" in options:
        return DiskReading(
            path, DiskState.READ_ONLY, free, "read-only (the kernel remounts a filesystem with errors so)"
        )
    if free < min_free_percent:
        return DiskReading(path, DiskState.FULL, free, f"{free:.1f} % free, under {min_free_percent:g} %")
    return DiskReading(path, DiskState.OK, free, f"{free:.1f} % free")


def _error_reading(path: Path, exc: OSError) -> DiskReading:
    if exc.errno == errno.EACCES:
        return DiskReading(path, DiskState.IO_ERROR, None, "permission denied: dvrlinkd's user cannot see it")
    return DiskReading(path, DiskState.IO_ERROR, None, exc.strerror or str(exc))


def disk_alarm(event: DiskEvent) -> tuple[AlarmKind, str]:
    """The alarm kind and detail of a disk event."""
    if isinstance(event, DiskProblem):
        return AlarmKind.DISK_ERROR, f"{event.path}: {event.state.value} ({event.detail})"
    assert isinstance(event, DiskRecovered)
    return AlarmKind.OTHER, f"DiskRecovered ({event.path}: ok after {event.bad_s:.0f} s)"


class DiskService:
    """Looks at every disk each ``interval_s`` in a worker thread, and hands the events to
    ``on_event``. A look that hangs is ``not-answering``; the next one waits for it to end,
    so a dead disk holds one thread, not one per interval."""

    def __init__(
        self,
        config: DisksConfig,
        on_event: Callable[[DiskEvent], None],
        clock: Callable[[], float],
        reader: Callable[[Path, float], DiskReading] = read_disk,
    ) -> None:
        self.config = config
        self.watcher = DiskWatcher(config.paths)
        self._on_event = on_event
        self._clock = clock
        self._reader = reader
        self._task: asyncio.Task[None] | None = None
        self._hung: dict[Path, asyncio.Future[DiskReading]] = {}
        self.on_look: Callable[[], None] = lambda: None
        """Called after each look at every disk (the status file is rewritten)."""

    def start(self) -> None:
        """Start looking (needs a running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="disk watch")

    def close(self) -> None:
        """Stop looking."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def status(self) -> list[dict[str, object]]:
        """Each disk's last reading, for the status file."""
        return [
            {"path": str(r.path), "state": r.state.value, "free_percent": r.free_percent, "detail": r.detail}
            for r in self.watcher.readings.values()
        ]

    async def look(self) -> None:
        """Look at every disk once and report what changed."""
        loop = asyncio.get_running_loop()
        for path in self.config.paths:
            pending = self._hung.get(path)
            if pending is not None and not pending.done():
                reading = DiskReading(path, DiskState.NOT_ANSWERING, None, "the last look has not ended")
            else:
                self._hung.pop(path, None)
                future = loop.run_in_executor(None, self._reader, path, self.config.min_free_percent)
                try:
                    reading = await asyncio.wait_for(asyncio.shield(future), self.config.timeout_s)
                except TimeoutError:
                    self._hung[path] = future
                    reading = DiskReading(
                        path, DiskState.NOT_ANSWERING, None, f"no answer within {self.config.timeout_s:g} s"
                    )
            for event in self.watcher.update(reading, self._clock()):
                self._on_event(event)
        self.on_look()

    async def _run(self) -> None:
        while True:
            try:
                await self.look()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the disk watch failed; it looks again in %g s", self.config.interval_s)
            await asyncio.sleep(self.config.interval_s)
