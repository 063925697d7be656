"""Opens the capture device a ``CaptureConfig`` names. Backends are imported when used, so a
board pays only for its own."""

from __future__ import annotations

from pathlib import Path

from dvrlink.hal.config import CaptureConfig
from dvrlink.hal.device import CaptureDevice, FrameSource
from dvrlink.hal.i2c import I2cBus
from dvrlink.hal.model import ChannelReading, MotionConfig, PictureControls, VideoFormat


def control_path(config: CaptureConfig, runtime_dir: Path) -> Path:
    """The synthetic device's control file: ``control``, or ``runtime_dir/capture-NAME.ctl``."""
    return Path(config.control) if config.control else runtime_dir / f"capture-{config.name}.ctl"


def open_device(config: CaptureConfig, runtime_dir: Path) -> CaptureDevice:
    """The device ``config`` names, not yet probed (``probe`` checks it is there).

    Raises:
        ValueError: a backend this build does not have (the config check refuses it first).
    """
    if config.backend == "synthetic":
        from dvrlink.hal.synthetic import SyntheticDevice  # noqa: PLC0415

        return SyntheticDevice(
            config.name,
            config.channels,
            config.video_format,
            control_path(config, runtime_dir),
            check_control=bool(config.control),
        )
    if config.backend in ("nvp6158", "tw2866"):
        from dvrlink.hal.i2c import open_i2c_bus  # noqa: PLC0415

        bus = open_i2c_bus(config.bus)
        try:
            if config.backend == "nvp6158":
                from dvrlink.hal.nvp6158 import Nvp6158  # noqa: PLC0415

                chip: CaptureDevice = Nvp6158(config.name, bus, config.address, config.channels)
            else:
                from dvrlink.hal.tw2866 import Tw2866  # noqa: PLC0415

                chip = Tw2866(config.name, bus, config.address, config.channels)
        except ValueError:
            bus.close()
            raise
        return BusOwner(chip, bus)
    if config.backend == "v4l2":
        from dvrlink.hal.v4l2 import V4l2Device  # noqa: PLC0415

        return V4l2Device(config.name, config.devices)
    raise ValueError(f"capture backend {config.backend!r} is not in this build")


class BusOwner:
    """A decoder chip that owns its I2C bus: closing it closes the bus too (a chip backend leaves
    the bus open, since several chips may share one)."""

    def __init__(self, chip: CaptureDevice, bus: I2cBus) -> None:
        self.chip = chip
        self.bus = bus

    @property
    def name(self) -> str:
        return self.chip.name

    @property
    def channel_count(self) -> int:
        return self.chip.channel_count

    def probe(self) -> str:
        return self.chip.probe()

    def read(self) -> list[ChannelReading]:
        return self.chip.read()

    def set_format(self, channel: int, video_format: VideoFormat) -> None:
        self.chip.set_format(channel, video_format)

    def set_controls(self, channel: int, controls: PictureControls) -> None:
        self.chip.set_controls(channel, controls)

    def set_motion(self, channel: int, motion: MotionConfig) -> None:
        self.chip.set_motion(channel, motion)

    def reset(self) -> None:
        self.chip.reset()

    def frame_source(self, channel: int) -> FrameSource | None:
        return self.chip.frame_source(channel)

    def close(self) -> None:
        self.chip.close()
        self.bus.close()
