"""Opens the capture device a ``CaptureConfig`` names. Backends are imported when used, so a
board pays only for its own."""

from __future__ import annotations

from pathlib import Path

from dvrlink.hal.config import CaptureConfig
from dvrlink.hal.device import CaptureDevice


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
    if config.backend == "v4l2":
        from dvrlink.hal.v4l2 import V4l2Device  # noqa: PLC0415

        return V4l2Device(config.name, config.devices)
    raise ValueError(f"capture backend {config.backend!r} is not in this build")
