"""Register-level models of the capture decoders the HAL drives over I2C.

Each model is a ``hal.i2c.RegisterModel``: attach it to a ``hal.i2c.FakeBus`` at the chip's
address and a backend (``hal.nvp6158``, ``hal.tw2866``) talks to it as to the chip. Tests drive
the cameras on its inputs: ``plug(channel, fmt)``, ``unplug(channel)``,
``change_format(channel, fmt)``, ``set_motion(channel, bool)``, ``set_no_lock(channel)``. The
status registers follow those; writes are recorded (``writes``) and applied; a register the
model does not implement reads its reset value (0x00 unless the model says otherwise).

The models are written from the chips' public facts (docs/hal.md), separately from the
backends, so a backend that reads the wrong bit fails its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from dvrlink.hal.model import VideoFormat


@dataclass(slots=True)
class Camera:
    """What is on one input: nothing, a camera the decoder locks to, or a signal it cannot
    lock to; its format; whether it shows motion."""

    plugged: bool = False
    locked: bool = False
    format: VideoFormat = VideoFormat.UNKNOWN
    motion: bool = False


class Inputs:
    """The cameras on a model's inputs, and the test-facing calls that change them."""

    def __init__(self, channels: int, formats: frozenset[VideoFormat]) -> None:
        self.cameras = [Camera() for _ in range(channels)]
        self._formats = formats

    def plug(self, channel: int, fmt: VideoFormat) -> None:
        """A camera sending ``fmt`` is connected to ``channel``; the decoder locks to it."""
        self._check_format(fmt)
        self.cameras[channel] = Camera(plugged=True, locked=True, format=fmt)

    def unplug(self, channel: int) -> None:
        """The camera on ``channel`` is disconnected (its cable cut)."""
        self.cameras[channel] = Camera()

    def change_format(self, channel: int, fmt: VideoFormat) -> None:
        """The camera on ``channel`` switches to ``fmt`` (a swap with no gap in between)."""
        camera = self.cameras[channel]
        if not camera.plugged:
            raise ValueError(f"channel {channel} has no camera; plug one first")
        self._check_format(fmt)
        camera.format = fmt
        camera.locked = True

    def set_motion(self, channel: int, moving: bool) -> None:
        """The picture on ``channel`` shows motion (or stops showing it)."""
        self.cameras[channel].motion = moving

    def set_no_lock(self, channel: int) -> None:
        """Something is on ``channel`` that the decoder cannot lock to (noise, an odd format)."""
        self.cameras[channel] = Camera(plugged=True, locked=False)

    def _check_format(self, fmt: VideoFormat) -> None:
        if fmt not in self._formats:
            names = ", ".join(sorted(f.value for f in self._formats))
            raise ValueError(f"this chip model takes {names}, not {fmt.value}")
