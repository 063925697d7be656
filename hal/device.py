"""The capture-device interface every backend implements, and the frame-source seam.

A backend is a plain object over its device (an I2C bus, a V4L2 node, nothing for the synthetic
one). It does not run timers or tasks: ``hal.watch.ChannelWatcher`` decides what a reading means
and ``hal.poller`` calls ``read`` on the event loop. Reads are short (a few register reads or an
ioctl per channel), so they run inline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dvrlink.hal.model import ChannelReading, MotionConfig, PictureControls, VideoFormat


@dataclass(frozen=True, slots=True)
class FrameSource:
    """Where a channel's frames come from, for the encoder seam: the input arguments of the
    software encoder (ffmpeg), e.g. ``("-f", "v4l2", "-i", "/dev/video0")``. A board with a
    hardware encoder gets its frames another way and has no ``FrameSource``."""

    input_args: tuple[str, ...]
    width: int
    height: int
    fps: float


class CaptureDevice(Protocol):
    """One capture device: a decoder chip, a V4L2 capture card, the synthetic source."""

    @property
    def name(self) -> str:
        """The device's name in the config (``[[capture]] name``), used in events and messages."""
        ...

    @property
    def channel_count(self) -> int:
        """Its channels, numbered 0 to ``channel_count - 1``."""
        ...

    def probe(self) -> str:
        """Check that the device is there and is what the config says; a line describing it
        (chip ID, driver) for ``dvrlinkd --check-config``.

        Raises:
            DeviceIoError: the node is missing, the chip does not answer or answers with another
                ID; the message names it and says what to fix.
        """
        ...

    def read(self) -> list[ChannelReading]:
        """Every channel's signal, detected format and motion flag, now.

        Raises:
            DeviceIoError: the device could not be read (bus NACK or time-out, ioctl failure).
        """
        ...

    def set_format(self, channel: int, video_format: VideoFormat) -> None:
        """Set the channel's input format (decoders that cannot detect it need this).

        Raises:
            ValueError: no such channel, or the device cannot take that format.
            DeviceIoError: the device could not be written.
        """
        ...

    def set_controls(self, channel: int, controls: PictureControls) -> None:
        """Apply brightness, contrast, hue and saturation (``None`` fields are left alone).

        Raises:
            ValueError: no such channel.
            DeviceIoError: the device could not be written.
        """
        ...

    def set_motion(self, channel: int, motion: MotionConfig) -> None:
        """Configure motion detection on the channel.

        Raises:
            ValueError: no such channel, or a zone the device cannot express.
            DeviceIoError: the device could not be written.
        """
        ...

    def reset(self) -> None:
        """Initialise the device again after errors (registers as at start, formats and motion
        settings as last set).

        Raises:
            DeviceIoError: it still does not answer.
        """
        ...

    def frame_source(self, channel: int) -> FrameSource | None:
        """Where the channel's frames come from for the software encoder; ``None`` if this
        device's frames do not reach user space this way."""
        ...

    def close(self) -> None:
        """Release the bus or node. Idempotent."""
        ...


class HasChannels(Protocol):
    """A device's name and channel count (what ``check_channel`` reads)."""

    @property
    def name(self) -> str: ...

    @property
    def channel_count(self) -> int: ...


def check_channel(device: HasChannels, channel: int) -> None:
    """For backends: raise ``ValueError`` unless ``channel`` is one of ``device``'s."""
    if not 0 <= channel < device.channel_count:
        raise ValueError(
            f"{device.name} has channels 0-{device.channel_count - 1}, not {channel}; "
            "check the channel number (dvrlink channels lists them)"
        )
