"""What the register-level decoder backends share: a chip at one I2C address, its channels, and
the settings a reset writes again. ``hal.nvp6158`` and ``hal.tw2866`` add their registers."""

from __future__ import annotations

from typing import ClassVar

from dvrlink.hal.device import FrameSource, check_channel
from dvrlink.hal.i2c import I2cBus
from dvrlink.hal.model import DeviceIoError, MotionConfig, PictureControls, VideoFormat


class I2cDecoder:
    """A decoder chip at one I2C address: a ``CaptureDevice`` once a subclass adds ``probe``,
    ``read``, ``set_format``, ``set_motion`` and the ``_write_*`` steps.

    The backend does not close the bus it is given (decoders share a bus): whoever opened it
    closes it.
    """

    CHIP: ClassVar[str] = "decoder"
    """The chip's name in messages."""
    STRAPS: ClassVar[str] = ""
    """The 7-bit addresses its strap pins select, for messages."""

    def __init__(self, name: str, bus: I2cBus, address: int, channels: int = 4) -> None:
        """Drive the decoder at 7-bit ``address`` on ``bus``, using its first ``channels`` inputs.

        Raises:
            ValueError: ``channels`` is not 1-4 or ``address`` not a 7-bit address.
        """
        if not 1 <= channels <= 4:
            raise ValueError(f"{name}: the {self.CHIP} has 4 channels, not {channels}; use 1-4")
        if not 0x03 <= address <= 0x77:
            raise ValueError(
                f"{name}: I2C address 0x{address:02x} is not 7-bit (an 8-bit one? that is "
                f"0x{address >> 1:02x}); the {self.CHIP} straps {self.STRAPS}"
            )
        self._name = name
        self._bus = bus
        self._address = address
        self._channels = channels
        self._formats: dict[int, VideoFormat] = {}
        self._controls: dict[int, PictureControls] = {}
        self._motion: dict[int, MotionConfig] = {}
        self._closed = False

    @property
    def name(self) -> str:
        """The device's name in the config."""
        return self._name

    @property
    def channel_count(self) -> int:
        """The channels in use."""
        return self._channels

    def probe(self) -> str:
        """Check the chip's ID (subclasses).

        Raises:
            DeviceIoError: no answer, or another chip's ID.
        """
        raise NotImplementedError

    def set_controls(self, channel: int, controls: PictureControls) -> None:
        """Write the picture controls (``None`` fields are left alone) and keep them for a reset.

        Raises:
            ValueError: no such channel.
            DeviceIoError: a bus error.
        """
        check_channel(self, channel)
        self._write_controls(channel, controls)
        self._controls[channel] = self._controls.get(channel, PictureControls()).merged(controls)

    def reset(self) -> None:
        """Check the chip answers with its ID, then write the formats, controls and motion
        settings last set again.

        Raises:
            DeviceIoError: the chip still does not answer, or answers with another ID.
        """
        self.probe()
        for channel, video_format in self._formats.items():
            self._write_format(channel, video_format)
        for channel, controls in self._controls.items():
            self._write_controls(channel, controls)
        for channel, motion in self._motion.items():
            self._write_motion(channel, motion)

    def frame_source(self, channel: int) -> FrameSource | None:
        """None: the decoder's pictures go to the SoC's video input, not to user space."""
        check_channel(self, channel)
        return None

    def close(self) -> None:
        """Stop using the bus (it stays open for its owner). Idempotent."""
        self._closed = True

    # ---- for subclasses ----

    def _write_format(self, channel: int, video_format: VideoFormat) -> None:
        raise NotImplementedError

    def _write_controls(self, channel: int, controls: PictureControls) -> None:
        raise NotImplementedError

    def _write_motion(self, channel: int, motion: MotionConfig) -> None:
        raise NotImplementedError

    def _read(self, register: int) -> int:
        self._check_open()
        try:
            return self._bus.read_byte_data(self._address, register)
        except DeviceIoError as exc:
            raise DeviceIoError(f"{self._name} ({self.CHIP}): {exc}") from exc

    def _write(self, register: int, value: int) -> None:
        self._check_open()
        try:
            self._bus.write_byte_data(self._address, register, value)
        except DeviceIoError as exc:
            raise DeviceIoError(f"{self._name} ({self.CHIP}): {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceIoError(f"{self._name} is closed; open the capture device again (restart dvrlinkd)")
