"""dvrlinkd's capture devices: opens each ``[[capture]]`` device, watches its channels, and hands
the HAL's events to the daemon (the log, and the alarm queue when one is attached).

A device that cannot be opened (a missing bus or node) does not stop the daemon: it is listed
with its error in ``dvrlink channels`` and the status file, and opened again every
``REOPEN_S``. One that fails while running is retried by its poller (``hal.poller``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dvrlink.hal.backends import open_device
from dvrlink.hal.config import CaptureConfig
from dvrlink.hal.device import FrameSource
from dvrlink.hal.model import (
    DeviceError,
    DeviceIoError,
    DeviceRecovered,
    EncoderError,
    FormatChanged,
    HalEvent,
    SignalLost,
    SignalRestored,
    StreamStalled,
)
from dvrlink.hal.poller import DevicePoller
from dvrlink.hal.watch import ChannelWatcher
from dvrlink.protocol.alarm_wire import AlarmKind, kind_from_name

log = logging.getLogger(__name__)

REOPEN_S = 30.0
"""How often a device that could not be opened is tried again."""
EventSink = Callable[[HalEvent], None]


class _Device:
    __slots__ = ("config", "error", "poller", "reopen")

    def __init__(self, config: CaptureConfig) -> None:
        self.config = config
        self.poller: DevicePoller | None = None
        self.error = ""
        self.reopen: asyncio.TimerHandle | None = None


class CaptureService:
    """The board's capture devices (see the module's docstring)."""

    def __init__(
        self, devices: Sequence[CaptureConfig], runtime_dir: Path, clock: Callable[[], float]
    ) -> None:
        self._devices = [_Device(config) for config in devices]
        self._runtime_dir = runtime_dir
        self._clock = clock
        self._sinks: list[EventSink] = []
        self._closed = False
        self.events = 0
        """HAL events handed out so far."""

    def add_sink(self, sink: EventSink) -> None:
        """Also hand each event to ``sink`` (the alarm queue); a sink that raises is logged."""
        self._sinks.append(sink)

    def start(self) -> None:
        """Open the devices and start watching them (needs a running event loop)."""
        for device in self._devices:
            self._open(device)

    def close(self) -> None:
        """Stop watching and release the devices. Idempotent."""
        self._closed = True
        for device in self._devices:
            if device.reopen is not None:
                device.reopen.cancel()
            if device.poller is not None:
                device.poller.close()
                device.poller = None

    def first_device(self) -> str:
        """The first capture device's name (what a viewer gets without naming one)."""
        return self._devices[0].config.name if self._devices else ""

    def channels(self) -> list[dict[str, Any]]:
        """Each device with its channels as last reported, as ``dvrlink channels`` shows them
        (JSON-ready): ``name``, ``backend``, ``error`` (empty when it reads fine), ``channels``
        with ``channel``, ``signal``, ``format``, ``motion`` and ``for_s`` (since the signal
        last changed)."""
        now = self._clock()
        out = []
        for device in self._devices:
            poller = device.poller
            channels = [] if poller is None else poller.status()
            error = device.error
            if poller is not None and poller.watcher.failing:
                error = error or "not answering; see the daemon's log"
            out.append(
                {
                    "name": device.config.name,
                    "backend": device.config.backend,
                    "error": error,
                    "channels": [
                        {
                            "channel": status.channel,
                            "signal": status.signal.value,
                            "format": status.format.value,
                            "motion": status.motion,
                            "for_s": round(max(0.0, now - status.since), 1),
                        }
                        for status in channels
                    ],
                }
            )
        return out

    def live_source(self, name: str, channel: int) -> tuple[FrameSource | None, str]:
        """(the channel's frame source, its signal state) for live view; the state is
        ``unknown device``, ``no such channel`` or ``not read yet`` where there is none."""
        for device in self._devices:
            if device.config.name != name:
                continue
            poller = device.poller
            if poller is None:
                return None, f"not read: {device.error}"
            status = {s.channel: s for s in poller.status()}.get(channel)
            if status is None:
                known = channel in range(device.config.channels)
                return None, "not watched" if known else "no such channel"
            return poller.device.frame_source(channel), status.signal.value
        return None, "unknown device"

    def _open(self, device: _Device) -> None:
        device.reopen = None
        if self._closed:
            return
        config = device.config
        try:
            capture = open_device(config, self._runtime_dir)
        except (DeviceIoError, ValueError) as exc:
            device.error = str(exc)
            log.error("capture device %s: %s; trying again in %g s", config.name, exc, REOPEN_S)
            device.reopen = asyncio.get_running_loop().call_later(REOPEN_S, self._open, device)
            return
        device.error = ""
        watcher = ChannelWatcher(config.name, config.watched(), config.watch_settings)
        device.poller = DevicePoller(capture, watcher, self.publish)
        device.poller.start()
        log.info(
            "capture device %s (%s): watching channels %s", config.name, config.backend, config.watched()
        )

    def publish(self, event: HalEvent) -> None:
        """Hand ``event`` (a watcher's, or the live view's ``StreamStalled``/``EncoderError``) to
        the log and every sink."""
        self.events += 1
        if isinstance(event, (SignalLost, DeviceError, EncoderError, StreamStalled)):
            log.warning("capture: %s", describe_event(event))
        else:
            log.info("capture: %s", describe_event(event))
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                log.exception("an event sink failed on %r; carrying on", event)


class AlarmRaiser(Protocol):
    """What the capture alarms need of the alarm queue (``daemon.alarms.AlarmQueue``)."""

    def raise_alarm(
        self,
        kind: AlarmKind | int,
        *,
        channel: int | None = None,
        detail: str = "",
        snapshot: bytes | None = None,
    ) -> object: ...


def raise_capture_alarm(alarms: AlarmRaiser, event: HalEvent, snapshot: bytes | None = None) -> None:
    """Queue the alarm for a HAL event: its kind by name (``SignalLost`` is ``SIGNAL_LOST``),
    its channel, and the device and details as text (``front: no-video``), with ``snapshot``
    (a JPEG within ``alarm_wire.MAX_SNAPSHOT``) if given. ``DeviceRecovered`` has no kind of
    its own and goes as ``OTHER``."""
    try:
        kind = kind_from_name(type(event).__name__)
    except ValueError:
        kind = AlarmKind.OTHER
    detail = event_detail(event)
    if kind is AlarmKind.OTHER:
        detail = f"{type(event).__name__}" + (f" ({detail})" if detail else "")
    text = f"{event.device}: {detail}" if detail else event.device
    alarms.raise_alarm(kind, channel=getattr(event, "channel", None), detail=text, snapshot=snapshot)


def describe_event(event: HalEvent) -> str:
    """One line for the log: ``front channel 2: SignalLost (no-video)``."""
    channel = getattr(event, "channel", None)
    where = event.device if channel is None else f"{event.device} channel {channel}"
    detail = event_detail(event)
    return f"{where}: {type(event).__name__}" + (f" ({detail})" if detail else "")


def event_detail(event: HalEvent) -> str:
    """What an event says beyond its kind and channel: ``no-video``, ``cvbs-pal -> ahd-720p25``,
    a device error's message, how long a device failed."""
    if isinstance(event, SignalLost):
        return event.signal.value
    if isinstance(event, SignalRestored):
        return event.format.value
    if isinstance(event, FormatChanged):
        return f"{event.old.value} -> {event.new.value}"
    if isinstance(event, (DeviceError, EncoderError)):
        return event.message
    if isinstance(event, StreamStalled):
        return f"no frames for {event.silent_s:.0f} s"
    if isinstance(event, DeviceRecovered):
        return f"after {event.failed_s:.0f} s"
    return ""
