"""The channel watcher: readings in, confirmed changes out as typed events (sans-I/O).

A backend's readings are noisy at the edges: a decoder loses lock for a frame while a camera
switches modes, and a loose connector flickers. The watcher reports a signal or format change
only once the readings have shown it for a moment, and reports motion at once but its end only
after a hold time.

- **Signal.** A locked channel whose readings show no lock (or no video) for ``lost_after_s`` is
  reported ``SignalLost``; one that shows a lock again for ``restored_after_s``, ``SignalRestored``
  with its format. A change that goes back before its time is not reported.
- **Format.** A locked channel whose detected format differs for ``restored_after_s`` is reported
  ``FormatChanged`` (a swap of cameras with no gap in between).
- **Motion.** ``MotionStart`` on the first reading with the channel's motion flag (alarms are
  wanted within a second); ``MotionStop`` after ``motion_hold_s`` of readings without it. A
  channel that loses its signal stops its motion at once.
- **Start.** The first reading sets each channel's state without an event: ``status`` shows a
  channel without a camera from the start, and an event means a change.
- **Errors.** ``failed`` reports the first of a run of read errors as ``DeviceError`` and the
  next successful reading as ``DeviceRecovered``; the channels keep their last states meanwhile.
  ``poll_delay`` backs off from the poll interval to ``max_retry_s`` while it fails.
- **Reads.** The watcher keeps the poll schedule: when a read is due, ``handle_timer`` queues a
  ``ReadDue`` and ``reads_due()`` hands it out (``datagrams_to_send``, by the name
  ``dvrlink.driver.CoreDriver`` gives a core's output). The driver reads the device and answers
  with ``update`` or ``failed``; the next read is due ``poll_delay()`` after that.

Time is an argument: ``update(readings, now)``, ``get_timer()``, ``handle_timer(now)``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dvrlink.hal.model import (
    ChannelReading,
    ChannelStatus,
    DeviceError,
    DeviceRecovered,
    FormatChanged,
    HalEvent,
    MotionStart,
    MotionStop,
    SignalLost,
    SignalRestored,
    SignalState,
    VideoFormat,
)


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """How readings become events. Times in seconds."""

    poll_interval_s: float = 0.2
    """How often the poller reads the device."""
    lost_after_s: float = 0.3
    """A locked channel must read unlocked this long before ``SignalLost``."""
    restored_after_s: float = 0.5
    """A lock (or a new format) must hold this long before ``SignalRestored`` / ``FormatChanged``."""
    motion_hold_s: float = 2.0
    """Readings without motion for this long end it (``MotionStop``)."""
    max_retry_s: float = 30.0
    """The longest wait between reads of a failing device."""

    def __post_init__(self) -> None:
        for name in ("poll_interval_s", "lost_after_s", "restored_after_s", "motion_hold_s", "max_retry_s"):
            value = getattr(self, name)
            if not 0 <= value <= 3600:
                raise ValueError(f"watch setting {name} = {value}: use 0-3600 seconds")
        if self.poll_interval_s <= 0:
            raise ValueError("watch setting poll_interval_s must be above 0 seconds")


@dataclass(frozen=True, slots=True)
class ReadDue:
    """The watcher's request: read the device now (and, after a failure, ``reset`` it first)."""

    reset_first: bool


class _Channel:
    __slots__ = ("format", "motion", "motion_seen", "pending", "pending_since", "signal", "since")

    def __init__(self, reading: ChannelReading, now: float) -> None:
        self.signal = reading.signal
        self.format = reading.format if reading.signal is SignalState.LOCKED else VideoFormat.UNKNOWN
        self.since = now
        self.motion = False
        self.motion_seen = 0.0
        self.pending: tuple[SignalState, VideoFormat] | None = None
        """The (signal, format) the readings show and the reported state does not, if any."""
        self.pending_since = 0.0


class ChannelWatcher:
    """Turns one device's readings into events; see the module's docstring."""

    def __init__(self, device: str, channels: Iterable[int], config: WatchConfig) -> None:
        """Watch ``channels`` of the device named ``device``; readings of other channels are
        ignored (inputs without a camera wired)."""
        self.device = device
        self.config = config
        self._watched = frozenset(channels)
        self._channels: dict[int, _Channel] = {}
        self._events: deque[HalEvent] = deque()
        self._failing_since: float | None = None
        self._failures = 0
        self._next_read: float | None = 0.0
        """When the next read is due; None while one is out (asked for, not answered)."""
        self._reads: list[ReadDue] = []
        self.errors = 0
        """Read errors counted since start."""

    # ---- input ----

    def update(self, readings: Iterable[ChannelReading], now: float) -> None:
        """Take a successful read of the device."""
        self._next_read = now + self.config.poll_interval_s
        if self._failing_since is not None:
            self._events.append(DeviceRecovered(self.device, now, now - self._failing_since))
            self._failing_since = None
            self._failures = 0
        for reading in readings:
            if reading.channel not in self._watched:
                continue
            state = self._channels.get(reading.channel)
            if state is None:
                self._channels[reading.channel] = _Channel(reading, now)
                continue
            self._signal(reading.channel, state, reading, now)
            self._motion(reading.channel, state, reading, now)
        self.handle_timer(now)

    def failed(self, message: str, now: float) -> None:
        """Take a failed read (``message`` says what failed and what to check)."""
        self.errors += 1
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = now
            self._events.append(DeviceError(self.device, now, message))
        self._next_read = now + self.poll_delay()

    # ---- output ----

    def next_event(self) -> HalEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> Sequence[ReadDue]:
        """The reads asked for since the last call (at most one; see the module's docstring)."""
        reads, self._reads = self._reads, []
        return reads

    def get_timer(self) -> float | None:
        """When a read, a pending change or a motion's end is next due, or None."""
        due = self._next_read
        config = self.config
        for state in self._channels.values():
            if state.pending is not None:
                at = state.pending_since + self._confirm_after(state.pending[0])
                due = at if due is None else min(due, at)
            if state.motion:
                at = state.motion_seen + config.motion_hold_s
                due = at if due is None else min(due, at)
        return due

    def handle_timer(self, now: float) -> None:
        """Confirm the changes and motion ends that are due, and ask for a read if one is."""
        if self._next_read is not None and now >= self._next_read:
            self._next_read = None
            self._reads.append(ReadDue(self._failing_since is not None))
        config = self.config
        for channel, state in self._channels.items():
            if state.pending is not None:
                signal, video_format = state.pending
                if now >= state.pending_since + self._confirm_after(signal):
                    self._confirm(channel, state, signal, video_format, now)
            if state.motion and now >= state.motion_seen + config.motion_hold_s:
                state.motion = False
                self._events.append(MotionStop(self.device, now, channel))

    def poll_delay(self) -> float:
        """Seconds until the next read: the poll interval, doubled per consecutive failure up
        to ``max_retry_s``."""
        if not self._failures:
            return self.config.poll_interval_s
        delay = self.config.poll_interval_s * (1 << min(self._failures, 16))
        return min(max(delay, self.config.poll_interval_s), self.config.max_retry_s)

    def status(self) -> list[ChannelStatus]:
        """The watched channels as last reported, by channel number (channels not read yet are
        left out)."""
        return [
            ChannelStatus(channel, state.signal, state.format, state.motion, state.since)
            for channel, state in sorted(self._channels.items())
        ]

    @property
    def failing(self) -> bool:
        """The last read failed."""
        return self._failing_since is not None

    # ---- inside ----

    def _confirm_after(self, signal: SignalState) -> float:
        config = self.config
        return config.restored_after_s if signal is SignalState.LOCKED else config.lost_after_s

    def _signal(self, channel: int, state: _Channel, reading: ChannelReading, now: float) -> None:
        locked = reading.signal is SignalState.LOCKED
        seen = (reading.signal, reading.format if locked else VideoFormat.UNKNOWN)
        if seen == (state.signal, state.format) or (
            # no lock either way: NO_VIDEO and NO_LOCK are one state for events; follow it quietly
            not locked and state.signal is not SignalState.LOCKED
        ):
            state.pending = None
            if not locked:
                state.signal = reading.signal
            return
        if state.pending is None or (state.pending[0] is SignalState.LOCKED) != locked:
            state.pending = seen
            state.pending_since = now
        else:
            state.pending = seen  # the same direction; the latest details (format, which loss) win

    def _confirm(
        self, channel: int, state: _Channel, signal: SignalState, video_format: VideoFormat, now: float
    ) -> None:
        state.pending = None
        was_locked = state.signal is SignalState.LOCKED
        if signal is SignalState.LOCKED:
            if was_locked:
                self._events.append(FormatChanged(self.device, now, channel, state.format, video_format))
            else:
                self._events.append(SignalRestored(self.device, now, channel, video_format))
                state.since = now
        else:
            if state.motion:
                state.motion = False
                self._events.append(MotionStop(self.device, now, channel))
            self._events.append(SignalLost(self.device, now, channel, signal))
            state.since = now
        state.signal = signal
        state.format = video_format

    def _motion(self, channel: int, state: _Channel, reading: ChannelReading, now: float) -> None:
        if not reading.motion or state.signal is not SignalState.LOCKED:
            return
        state.motion_seen = now
        if not state.motion:
            state.motion = True
            self._events.append(MotionStart(self.device, now, channel))
