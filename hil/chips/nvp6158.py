"""A register model of a Nextchip NVP6158: 4 inputs of AHD, TVI, CVI or CVBS, bank-switched.

Registers as the public vendor driver uses them (docs/hal.md has the sources and what is still
to be checked on a board). Register 0xFF of every bank selects the bank. What the model computes
from its cameras:

- bank 0x00, 0xA8: bit per channel, 1 when nothing is on the input;
- bank 0x00, 0xA9: bit per channel, 1 when a locked picture shows motion and motion detection is
  on for the channel (bank 0x02, 0x00+7*ch bit 0 clear) with a block of its mask on;
- bank 0x00, 0xE2: bit per channel, 1 when the decoder is locked;
- bank 0x13, 0xF0+ch: the detected format code, 0xFF when nothing is detected.

Everything else is storage with reset values: the chip ID (0xF4, 0xA1 for an NVP6158) and
revision (0xF5), the picture controls, the format registers, motion settings; writes to the
computed registers are recorded and ignored.
"""

from __future__ import annotations

from dvrlink.hal.model import VideoFormat
from hil.chips import Inputs

CAMERA_CODES: dict[VideoFormat, int] = {
    VideoFormat.CVBS_NTSC: 0x00,
    VideoFormat.CVBS_PAL: 0x10,
    VideoFormat.AHD_720P30: 0x20,
    VideoFormat.AHD_720P25: 0x21,
    VideoFormat.TVI_720P30: 0x25,
    VideoFormat.TVI_720P25: 0x26,
    VideoFormat.CVI_720P30: 0x2B,
    VideoFormat.CVI_720P25: 0x2C,
    VideoFormat.AHD_1080P30: 0x30,
    VideoFormat.AHD_1080P25: 0x31,
    VideoFormat.TVI_1080P30: 0x33,
    VideoFormat.TVI_1080P25: 0x34,
    VideoFormat.CVI_1080P30: 0x35,
    VideoFormat.CVI_1080P25: 0x36,
    VideoFormat.AHD_4M: 0x51,  # 4M 25p
    VideoFormat.CVI_4M: 0x55,  # 4M 25p
    VideoFormat.TVI_4M: 0x58,  # 4M 25p
    VideoFormat.AHD_5M: 0x70,  # 5M 20p
    VideoFormat.TVI_5M: 0x74,  # 5M 20p
}
"""The code the chip's auto-detect reports for a camera of each format. A CVI 5M camera has no
code (the public detect table has none): the model reads 0xFF, no lock."""

FORMAT_REGISTERS: dict[tuple[int, int, int, int], VideoFormat] = {
    # (0x08+ch video format, 0x81+ch SD/AHD mode, 0x85+ch special mode, bank 5+ch 0x69 bit 0)
    (0xA0, 0xE0, 0x0, 1): VideoFormat.CVBS_NTSC,
    (0xDD, 0xF0, 0x0, 1): VideoFormat.CVBS_PAL,
    (0x00, 0x0C, 0x0, 0): VideoFormat.AHD_720P30,
    (0x00, 0x0D, 0x0, 0): VideoFormat.AHD_720P25,
    (0x00, 0x02, 0x0, 0): VideoFormat.AHD_1080P30,
    (0x00, 0x03, 0x0, 0): VideoFormat.AHD_1080P25,
    (0x00, 0x0F, 0x0, 0): VideoFormat.AHD_4M,
    (0x00, 0x01, 0x5, 0): VideoFormat.AHD_5M,
    (0x00, 0x0A, 0x1, 0): VideoFormat.TVI_720P30,
    (0x00, 0x0B, 0x1, 0): VideoFormat.TVI_720P25,
    (0x00, 0x02, 0x1, 0): VideoFormat.TVI_1080P30,
    (0x00, 0x03, 0x1, 0): VideoFormat.TVI_1080P25,
    (0x00, 0x0F, 0x3, 0): VideoFormat.TVI_4M,
    (0x00, 0x0E, 0x3, 0): VideoFormat.TVI_5M,
    (0x00, 0x0A, 0x2, 0): VideoFormat.CVI_720P30,
    (0x00, 0x0B, 0x2, 0): VideoFormat.CVI_720P25,
    (0x00, 0x02, 0x2, 0): VideoFormat.CVI_1080P30,
    (0x00, 0x03, 0x2, 0): VideoFormat.CVI_1080P25,
    (0x00, 0x0F, 0x2, 0): VideoFormat.CVI_4M,
    (0x00, 0x0E, 0x2, 0): VideoFormat.CVI_5M,
}
"""The format registers' values for each format (the vendor driver's format table)."""

CAMERA_FORMATS = frozenset(FORMAT_REGISTERS.values())
"""What a camera on the model may send: every HAL format but UNKNOWN."""

BANK_SELECT = 0xFF
NOT_DETECTED = 0xFF


class Nvp6158Model:
    """The chip's registers and the cameras on its 4 inputs."""

    def __init__(self, chip_id: int = 0xA1, revision: int = 0x00) -> None:
        """A chip that answers ``chip_id`` at bank 0 0xF4 (0xA1 NVP6158, 0xA0 NVP6158C)."""
        self.inputs = Inputs(4, CAMERA_FORMATS)
        self.bank = 0
        self.writes: list[tuple[int, int, int]] = []
        """Every write taken, as (bank, register, value); bank selects are written as (bank, 0xFF, bank)."""
        self._banks: dict[int, bytearray] = {}
        self._codes: dict[int, int] = {}
        self._chip_id = chip_id
        self._revision = revision

    # ---- the cameras (what tests drive) ----

    def plug(self, channel: int, fmt: VideoFormat) -> None:
        """A camera sending ``fmt`` is connected to ``channel``."""
        self.inputs.plug(channel, fmt)
        self._codes.pop(channel, None)

    def unplug(self, channel: int) -> None:
        """The camera on ``channel`` is disconnected."""
        self.inputs.unplug(channel)
        self._codes.pop(channel, None)

    def change_format(self, channel: int, fmt: VideoFormat) -> None:
        """The camera on ``channel`` switches to ``fmt``."""
        self.inputs.change_format(channel, fmt)
        self._codes.pop(channel, None)

    def set_motion(self, channel: int, moving: bool) -> None:
        """The picture on ``channel`` shows motion, or stops."""
        self.inputs.set_motion(channel, moving)

    def set_no_lock(self, channel: int) -> None:
        """Something the decoder cannot lock to is on ``channel``."""
        self.inputs.set_no_lock(channel)
        self._codes.pop(channel, None)

    def send_code(self, channel: int, code: int) -> None:
        """A camera in a mode the HAL has no format for: the decoder locks and reports ``code``
        (e.g. 0x22, AHD 720p60)."""
        self.inputs.plug(channel, VideoFormat.AHD_720P30)
        self._codes[channel] = code

    # ---- the bus side (hal.i2c.RegisterModel) ----

    def read(self, register: int) -> int:
        """The byte at ``register`` of the selected bank."""
        if register == BANK_SELECT:
            return self.bank
        computed = self._computed(self.bank, register)
        if computed is not None:
            return computed
        return self._storage(self.bank)[register]

    def write(self, register: int, value: int) -> None:
        """Take a write to ``register`` of the selected bank (0xFF selects the bank)."""
        self.writes.append((self.bank, register, value))
        if register == BANK_SELECT:
            self.bank = value
            return
        if self._computed(self.bank, register) is not None:
            return  # a status register: read-only
        self._storage(self.bank)[register] = value

    # ---- inspection (what tests assert on) ----

    def register(self, bank: int, register: int) -> int:
        """The byte at ``register`` of ``bank``, as a read would return it (without selecting)."""
        computed = self._computed(bank, register)
        return computed if computed is not None else self._storage(bank)[register]

    def configured_format(self, channel: int) -> VideoFormat | None:
        """The format the channel's format registers select, or None if they select none of
        the HAL's formats (as at reset)."""
        key = (
            self.register(0x00, 0x08 + channel),
            self.register(0x00, 0x81 + channel),
            self.register(0x00, 0x85 + channel),
            self.register(0x05 + channel, 0x69) & 0x01,
        )
        return FORMAT_REGISTERS.get(key)

    def motion_enabled(self, channel: int) -> bool:
        """Motion detection is on for the channel (bank 0x02, 0x00+7*ch bit 0 clear)."""
        return not self.register(0x02, 7 * channel) & 0x01

    def motion_mask(self, channel: int) -> bytes:
        """The channel's 24 mask bytes (bank 0x02, 0x40+0x18*ch), 16 x 12 blocks MSB first."""
        start = 0x40 + 0x18 * channel
        return bytes(self._storage(0x02)[start : start + 24])

    # ---- inside ----

    def _computed(self, bank: int, register: int) -> int | None:
        cameras = self.inputs.cameras
        if bank == 0x00 and register == 0xA8:
            return sum(1 << ch for ch, camera in enumerate(cameras) if not camera.plugged)
        if bank == 0x00 and register == 0xE2:
            return sum(1 << ch for ch, camera in enumerate(cameras) if camera.plugged and camera.locked)
        if bank == 0x00 and register == 0xA9:
            return sum(
                1 << ch
                for ch, camera in enumerate(cameras)
                if camera.locked and camera.motion and self.motion_enabled(ch) and any(self.motion_mask(ch))
            )
        if bank == 0x13 and 0xF0 <= register <= 0xF3:
            channel = register - 0xF0
            camera = cameras[channel]
            if not camera.plugged or not camera.locked:
                return NOT_DETECTED
            return self._codes.get(channel, CAMERA_CODES.get(camera.format, NOT_DETECTED))
        return None

    def _storage(self, bank: int) -> bytearray:
        storage = self._banks.get(bank)
        if storage is None:
            storage = self._banks[bank] = self._reset_values(bank)
        return storage

    def _reset_values(self, bank: int) -> bytearray:
        values = bytearray(256)
        if bank == 0x00:
            values[0xF4] = self._chip_id
            values[0xF5] = self._revision
            for channel in range(4):
                values[0x10 + channel] = 0x86  # contrast, as the vendor driver's tables leave it
                values[0x3C + channel] = 0x80  # saturation
        if bank == 0x02:
            for channel in range(4):
                values[7 * channel] = 0x0D  # motion detection off
                values[0x40 + 0x18 * channel : 0x40 + 0x18 * channel + 24] = b"\xff" * 24
        values[BANK_SELECT] = bank
        return values
