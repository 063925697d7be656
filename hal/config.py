"""A capture device's settings (``[[capture]]`` in dvrlinkd's config), checked when built.

The daemon reads the TOML (``dvrlink.daemon.capture_config``); this is the frozen result the HAL
opens devices from (``hal.backends.open_device``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dvrlink.hal.model import VideoFormat
from dvrlink.hal.watch import WatchConfig

BACKENDS = ("synthetic", "v4l2", "nvp6158", "tw2866")
"""The backends this build can open."""


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """One capture device."""

    name: str
    """Its name in events, ``dvrlink channels`` and messages (unique in the config)."""
    backend: str
    """One of ``BACKENDS``."""
    channels: int = 4
    """The device's channels (inputs)."""
    watch: tuple[int, ...] = ()
    """The channels watched for signal, format and motion; empty: all of them."""
    video_format: VideoFormat = VideoFormat.AHD_1080P25
    """The synthetic cameras' format."""
    control: str = ""
    """The synthetic device's control file (``dvrlinkd synthetic`` writes it); empty: the
    runtime folder's ``capture-NAME.ctl``."""
    bus: str = ""
    """The I2C bus device of a decoder chip, e.g. ``/dev/i2c-1``."""
    address: int = 0
    """The chip's 7-bit I2C address."""
    devices: tuple[str, ...] = ()
    """A V4L2 capture card's nodes, one per channel, e.g. ``("/dev/video0", "/dev/video1")``."""
    watch_settings: WatchConfig = field(default_factory=WatchConfig)

    def watched(self) -> tuple[int, ...]:
        """The channels watched (``watch``, or every channel)."""
        return self.watch or tuple(range(self.channels))
