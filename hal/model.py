"""What the HAL says about a capture device: signal states, video formats, readings and events.

A capture device has channels, numbered from 0. A backend (V4L2, a register-level decoder on
I2C, the synthetic one) reads each channel's state as a ``ChannelReading``; the watcher
(``hal.watch.ChannelWatcher``) turns readings into the typed events below. Nothing here does I/O.

Formats: the analogue HD families (AHD, TVI, CVI) have no V4L2 standard, so they have their own
enum; CVBS is PAL or NTSC. Each format knows its family, frame size and nominal frame rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class SignalState(Enum):
    """A channel's input, as the decoder sees it."""

    NO_VIDEO = "no-video"
    """Nothing on the input: no camera, or its cable cut."""
    NO_LOCK = "no-lock"
    """Something is there, but the decoder cannot lock to it (a format it does not take, noise)."""
    LOCKED = "locked"
    """A picture: the decoder is locked to it."""


class Family(Enum):
    """The analogue video family of a format."""

    CVBS = "cvbs"
    AHD = "ahd"
    TVI = "tvi"
    CVI = "cvi"


@dataclass(frozen=True, slots=True)
class FormatInfo:
    """What a format is: its family, frame size and nominal frame rate."""

    family: Family | None
    width: int
    height: int
    fps: float


class VideoFormat(Enum):
    """A detected or requested input format."""

    UNKNOWN = "unknown"
    CVBS_PAL = "cvbs-pal"
    CVBS_NTSC = "cvbs-ntsc"
    AHD_720P25 = "ahd-720p25"
    AHD_720P30 = "ahd-720p30"
    AHD_1080P25 = "ahd-1080p25"
    AHD_1080P30 = "ahd-1080p30"
    AHD_4M = "ahd-4m"
    AHD_5M = "ahd-5m"
    TVI_720P25 = "tvi-720p25"
    TVI_720P30 = "tvi-720p30"
    TVI_1080P25 = "tvi-1080p25"
    TVI_1080P30 = "tvi-1080p30"
    TVI_4M = "tvi-4m"
    TVI_5M = "tvi-5m"
    CVI_720P25 = "cvi-720p25"
    CVI_720P30 = "cvi-720p30"
    CVI_1080P25 = "cvi-1080p25"
    CVI_1080P30 = "cvi-1080p30"
    CVI_4M = "cvi-4m"
    CVI_5M = "cvi-5m"

    @property
    def info(self) -> FormatInfo:
        """Family, size and rate (``UNKNOWN``: no family, 0 x 0 at 0 fps)."""
        return _INFO[self]

    @classmethod
    def parse(cls, text: str) -> VideoFormat:
        """The format named ``text`` (``"ahd-1080p25"``; case and ``_`` for ``-`` do not matter).

        Raises:
            ValueError: no such format; the message lists the names.
        """
        wanted = text.strip().lower().replace("_", "-")
        for member in cls:
            if member.value == wanted:
                return member
        names = ", ".join(m.value for m in cls if m is not cls.UNKNOWN)
        raise ValueError(f"unknown video format {text!r}; use one of {names}")


def _hd(family: Family, name: str) -> FormatInfo:
    size = {"720": (1280, 720), "1080": (1920, 1080), "4m": (2560, 1440), "5m": (2592, 1944)}
    if name.startswith("720p") or name.startswith("1080p"):
        lines, fps = name.split("p")
        return FormatInfo(family, *size[lines], float(fps))
    # 4M (2560 x 1440) runs at 25 or 30 frames per second, 5M at 12.5 or 20 depending on the
    # camera; the nominal rate here is the common one, the stream reports its own.
    return FormatInfo(family, *size[name], 25.0 if name == "4m" else 20.0)


def _format_table() -> dict[VideoFormat, FormatInfo]:
    table = {
        VideoFormat.UNKNOWN: FormatInfo(None, 0, 0, 0.0),
        VideoFormat.CVBS_PAL: FormatInfo(Family.CVBS, 720, 576, 25.0),
        VideoFormat.CVBS_NTSC: FormatInfo(Family.CVBS, 720, 480, 29.97),
    }
    for member in VideoFormat:
        if member not in table:
            family, name = member.value.split("-", 1)
            table[member] = _hd(Family(family), name)
    return table


_INFO = _format_table()


@dataclass(frozen=True, slots=True)
class ChannelReading:
    """One channel's state as a backend read it, at one moment."""

    channel: int
    signal: SignalState
    format: VideoFormat = VideoFormat.UNKNOWN
    """The detected format; ``UNKNOWN`` when not locked or not detectable."""
    motion: bool = False
    """The decoder's (or the analyser's) motion flag for the channel, any zone."""


@dataclass(frozen=True, slots=True)
class PictureControls:
    """Picture adjustments, each 0-255 with 128 the neutral middle (backends scale to their
    registers or V4L2 control ranges); ``None`` leaves a control as it is."""

    brightness: int | None = None
    contrast: int | None = None
    hue: int | None = None
    saturation: int | None = None

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "hue", "saturation"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 255:
                raise ValueError(f"picture control {name} = {value}: use 0-255 (128 is neutral)")

    def merged(self, changes: PictureControls) -> PictureControls:
        """These controls with ``changes``'s set fields written over them."""
        return PictureControls(
            *(
                new if new is not None else was
                for new, was in (
                    (changes.brightness, self.brightness),
                    (changes.contrast, self.contrast),
                    (changes.hue, self.hue),
                    (changes.saturation, self.saturation),
                )
            )
        )


MOTION_GRID = (22, 18)
"""The motion grid's columns and rows (the common decoder block grid: 22 x 18 blocks)."""


@dataclass(frozen=True, slots=True)
class MotionZone:
    """A rectangle of the motion grid, in blocks: columns ``x`` to ``x + width - 1``, rows ``y``
    to ``y + height - 1``."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        columns, rows = MOTION_GRID
        if not (
            0 <= self.x < columns
            and 0 <= self.y < rows
            and 1 <= self.width <= columns - self.x
            and 1 <= self.height <= rows - self.y
        ):
            raise ValueError(
                f"motion zone {self.x},{self.y} {self.width}x{self.height} does not fit the "
                f"{columns} x {rows} block grid; give x, y, width, height inside it"
            )


@dataclass(frozen=True, slots=True)
class MotionConfig:
    """Motion detection on one channel: on or off, sensitivity 1 (least) to 10 (most), and the
    zones watched (none: the whole picture)."""

    enabled: bool = True
    sensitivity: int = 5
    zones: tuple[MotionZone, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 1 <= self.sensitivity <= 10:
            raise ValueError(f"motion sensitivity {self.sensitivity}: use 1 (least) to 10 (most)")


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """A channel as the watcher last reported it (what ``dvrlink channels`` shows)."""

    channel: int
    signal: SignalState
    format: VideoFormat
    motion: bool
    since: float
    """When the signal state last changed (the watcher's clock)."""


# ---- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HalEvent:
    """Base of the HAL's events. ``device`` names the capture device (its config name),
    ``at`` is the watcher's clock when the change was confirmed."""

    device: str
    at: float


@dataclass(frozen=True, slots=True)
class SignalLost(HalEvent):
    """A channel that had a picture has none (``signal`` says whether anything is there)."""

    channel: int
    signal: SignalState


@dataclass(frozen=True, slots=True)
class SignalRestored(HalEvent):
    """A channel has a picture again, in ``format``."""

    channel: int
    format: VideoFormat


@dataclass(frozen=True, slots=True)
class FormatChanged(HalEvent):
    """A locked channel's detected format changed (a camera swapped or reconfigured)."""

    channel: int
    old: VideoFormat
    new: VideoFormat


@dataclass(frozen=True, slots=True)
class MotionStart(HalEvent):
    """Motion began on a channel."""

    channel: int


@dataclass(frozen=True, slots=True)
class MotionStop(HalEvent):
    """Motion on a channel ended (none seen for the hold time)."""

    channel: int


@dataclass(frozen=True, slots=True)
class StreamStalled(HalEvent):
    """A locked channel's frame stream stopped delivering frames."""

    channel: int
    silent_s: float


@dataclass(frozen=True, slots=True)
class EncoderError(HalEvent):
    """A channel's encoder (the live view's, or a board's hardware one) failed while it was
    being watched; ``message`` says how and where its log is."""

    channel: int
    message: str


@dataclass(frozen=True, slots=True)
class DeviceError(HalEvent):
    """The device could not be read (a bus NACK or time-out, a failed ioctl); ``message`` says
    what failed and what to check. The watcher keeps the channels' last states."""

    message: str


@dataclass(frozen=True, slots=True)
class DeviceRecovered(HalEvent):
    """The device answers again after a ``DeviceError``."""

    failed_s: float


class DeviceIoError(Exception):
    """A backend could not talk to its device. The message names the device and what to check;
    the watcher turns it into a ``DeviceError`` and the poller retries."""
