"""A Nextchip NVP6158-class decoder over I2C: 4 channels of AHD, TVI, CVI and CVBS.

The chip detects each input's format itself; this backend reads what it detected, whether
anything is on the input and its motion flags, and writes the format, picture and motion
registers. Register facts come from Nextchip's public vendor-kernel driver for the NVP6158
("raptor3"); docs/hal.md lists them with their sources and marks those still to be checked on a
board. ``hil/chips/nvp6158.py`` models the same registers for the tests.

Registers (``BANK`` is written to 0xFF first; every bank has the select at 0xFF):

- bank 0x00: 0xF4 chip ID (0xA1 NVP6158, 0xA0 NVP6158C), 0xF5 revision; 0xA8 no-video, bit per
  channel (1: no video); 0xA9 motion, bit per channel; 0xE2 horizontal lock, bit per channel;
  0x08+ch video format, 0x81+ch SD/AHD mode, 0x85+ch special mode (the format registers);
  0x0C+ch brightness, 0x10+ch contrast, 0x3C+ch saturation, 0x40+ch hue.
- bank 0x05+ch: 0x69 bit 0, SD frequency select (set with the format).
- bank 0x02 (motion): 0x00+7*ch on/off (0x0C on, 0x0D off), 0x01+7*ch temporal sensitivity,
  0x02+7*ch bits 2:0 pixel sensitivity, 0x40+0x18*ch: 24 bytes of block mask (16 x 12 blocks).
- bank 0x13: 0xF0+ch the auto-detected format code (VFC; 0xFF: nothing detected).
"""

from __future__ import annotations

from dataclasses import dataclass

from dvrlink.hal.decoder import I2cDecoder
from dvrlink.hal.device import check_channel
from dvrlink.hal.model import (
    MOTION_GRID,
    ChannelReading,
    DeviceIoError,
    MotionConfig,
    PictureControls,
    SignalState,
    VideoFormat,
)

BANK_SELECT = 0xFF
BANK_MAIN = 0x00
BANK_MOTION = 0x02
BANK_DETECT = 0x13

CHIP_ID = 0xF4
REVISION = 0xF5
NO_VIDEO = 0xA8
MOTION = 0xA9
H_LOCK = 0xE2
VFC_BASE = 0xF0
VFC_NONE = 0xFF

FORMAT_REG = 0x08
AHD_MODE_REG = 0x81
SPECIAL_MODE_REG = 0x85
SD_FREQ_REG = 0x69
BRIGHTNESS_REG = 0x0C
CONTRAST_REG = 0x10
SATURATION_REG = 0x3C
HUE_REG = 0x40

MOTION_STRIDE = 7
MOTION_ON = 0x0C
MOTION_OFF = 0x0D
MASK_BASE = 0x40
MASK_STRIDE = 0x18
MASK_BYTES = 24
CHIP_GRID = (16, 12)
"""The chip's motion blocks: columns, rows (24 bytes, MSB first, row by row)."""

CHIP_IDS = {0xA1: "NVP6158", 0xA0: "NVP6158C"}
OTHER_IDS = {
    0xC1: "NVP6168",
    0xC0: "NVP6168C",
    0xA2: "a 1-port NVP61xx",
    0x91: "NVP6134",
    0x90: "NVP6134B",
    0x84: "NVP6124",
}
"""IDs of related Nextchip parts at 0xF4 (their detect registers differ: not driven here)."""


@dataclass(frozen=True, slots=True)
class FormatRegisters:
    """What ``set_format`` writes for one format (bank 0 0x08+ch, 0x81+ch, 0x85+ch; bank 5+ch
    0x69 bit 0), after the vendor driver's format table."""

    video_format: int
    ahd_mode: int
    special_mode: int
    sd_freq: int


FORMATS: dict[VideoFormat, FormatRegisters] = {
    VideoFormat.CVBS_NTSC: FormatRegisters(0xA0, 0xE0, 0x0, 1),  # SD 960H 2EX B-type NTSC
    VideoFormat.CVBS_PAL: FormatRegisters(0xDD, 0xF0, 0x0, 1),  # SD 960H 2EX B-type PAL
    VideoFormat.AHD_720P30: FormatRegisters(0x00, 0x0C, 0x0, 0),  # 720p30 EX B-type
    VideoFormat.AHD_720P25: FormatRegisters(0x00, 0x0D, 0x0, 0),
    VideoFormat.AHD_1080P30: FormatRegisters(0x00, 0x02, 0x0, 0),
    VideoFormat.AHD_1080P25: FormatRegisters(0x00, 0x03, 0x0, 0),
    VideoFormat.AHD_4M: FormatRegisters(0x00, 0x0F, 0x0, 0),  # 4M 25p
    VideoFormat.AHD_5M: FormatRegisters(0x00, 0x01, 0x5, 0),  # 5M 20p
    VideoFormat.TVI_720P30: FormatRegisters(0x00, 0x0A, 0x1, 0),  # HD 30p EX
    VideoFormat.TVI_720P25: FormatRegisters(0x00, 0x0B, 0x1, 0),
    VideoFormat.TVI_1080P30: FormatRegisters(0x00, 0x02, 0x1, 0),
    VideoFormat.TVI_1080P25: FormatRegisters(0x00, 0x03, 0x1, 0),
    VideoFormat.TVI_4M: FormatRegisters(0x00, 0x0F, 0x3, 0),  # 4M 25p
    VideoFormat.TVI_5M: FormatRegisters(0x00, 0x0E, 0x3, 0),  # 5M 20p
    VideoFormat.CVI_720P30: FormatRegisters(0x00, 0x0A, 0x2, 0),  # HD 30p EX
    VideoFormat.CVI_720P25: FormatRegisters(0x00, 0x0B, 0x2, 0),
    VideoFormat.CVI_1080P30: FormatRegisters(0x00, 0x02, 0x2, 0),
    VideoFormat.CVI_1080P25: FormatRegisters(0x00, 0x03, 0x2, 0),
    VideoFormat.CVI_4M: FormatRegisters(0x00, 0x0F, 0x2, 0),  # 4M 25p
    VideoFormat.CVI_5M: FormatRegisters(0x00, 0x0E, 0x2, 0),  # 5M 20p
}

DETECTED: dict[int, VideoFormat] = {
    0x00: VideoFormat.CVBS_NTSC,
    0x10: VideoFormat.CVBS_PAL,
    0x20: VideoFormat.AHD_720P30,
    0x21: VideoFormat.AHD_720P25,
    0x25: VideoFormat.TVI_720P30,
    0x26: VideoFormat.TVI_720P25,
    0x29: VideoFormat.TVI_720P30,  # TVI 720p B-type
    0x2A: VideoFormat.TVI_720P25,
    0x2B: VideoFormat.CVI_720P30,
    0x2C: VideoFormat.CVI_720P25,
    0x30: VideoFormat.AHD_1080P30,
    0x31: VideoFormat.AHD_1080P25,
    0x33: VideoFormat.TVI_1080P30,
    0x34: VideoFormat.TVI_1080P25,
    0x35: VideoFormat.CVI_1080P30,
    0x36: VideoFormat.CVI_1080P25,
    0x50: VideoFormat.AHD_4M,  # 30p
    0x51: VideoFormat.AHD_4M,  # 25p
    0x52: VideoFormat.AHD_4M,  # 15p
    0x54: VideoFormat.CVI_4M,  # 30p
    0x55: VideoFormat.CVI_4M,  # 25p
    0x4F: VideoFormat.TVI_4M,  # 15p (older code)
    0x57: VideoFormat.TVI_4M,  # 30p
    0x58: VideoFormat.TVI_4M,  # 25p
    0x59: VideoFormat.TVI_4M,  # 15p
    0x70: VideoFormat.AHD_5M,  # 20p
    0x71: VideoFormat.AHD_5M,  # 12.5p
    0x73: VideoFormat.TVI_5M,  # 12.5p
    0x74: VideoFormat.TVI_5M,  # 20p
}
"""Auto-detect codes (bank 0x13, 0xF0+ch) and the formats they mean. Codes for modes the HAL
has no format for (720p50/60, 3M, 8M, ...) and 0xFF read as no lock; the chip has no CVI 5M code."""


def motion_mask(zones: MotionConfig) -> bytes:
    """The 24-byte block mask for ``zones``: a chip block is on when it overlaps a zone of the
    HAL's 22 x 18 grid (all on without zones). Block ``n`` (row by row) is bit ``0x80 >> n % 8``
    of byte ``n // 8``."""
    columns, rows = MOTION_GRID
    chip_columns, chip_rows = CHIP_GRID
    mask = bytearray(MASK_BYTES)
    for row in range(chip_rows):
        for column in range(chip_columns):
            on = not zones.zones or any(
                column * columns < (zone.x + zone.width) * chip_columns
                and zone.x * chip_columns < (column + 1) * columns
                and row * rows < (zone.y + zone.height) * chip_rows
                and zone.y * chip_rows < (row + 1) * rows
                for zone in zones.zones
            )
            if on:
                block = row * chip_columns + column
                mask[block // 8] |= 0x80 >> (block % 8)
    return bytes(mask)


def motion_sensitivity(sensitivity: int) -> tuple[int, int]:
    """(temporal, pixel) sensitivity register values for the HAL's 1 (least) to 10 (most):
    lower thresholds are more sensitive; 10 gives (0x00, 0), 1 gives (0xFC, 7)."""
    step = 10 - sensitivity
    return step * 0x1C, (step * 7 + 4) // 9


class Nvp6158(I2cDecoder):
    """An NVP6158 or NVP6158C at one I2C address (0x30-0x33 by its strap): a ``CaptureDevice``."""

    CHIP = "NVP6158"
    STRAPS = "0x30-0x33"

    def probe(self) -> str:
        """Read the chip ID; a line naming the chip, its revision, bus and address.

        Raises:
            DeviceIoError: no answer, or another chip's ID; the message says what to fix.
        """
        self._select(BANK_MAIN)
        chip_id = self._read(CHIP_ID)
        revision = self._read(REVISION)
        where = f"address 0x{self._address:02x} on {self._bus.name}"
        if chip_id in CHIP_IDS:
            chip = CHIP_IDS[chip_id]
            return f"{self._name}: Nextchip {chip} rev {revision} at {where}, {self._channels} channels"
        if chip_id in OTHER_IDS:
            raise DeviceIoError(
                f"{self._name}: the chip at {where} is {OTHER_IDS[chip_id]} (ID 0x{chip_id:02x}), not an "
                "NVP6158; its registers differ: set the capture backend to match the board"
            )
        raise DeviceIoError(
            f"{self._name}: the chip at {where} answers with ID 0x{chip_id:02x}, not an NVP6158's 0xA1/0xA0; "
            "check the address in the config (NVP6158 straps 0x30-0x33) and that the chip is out of reset"
        )

    def read(self) -> list[ChannelReading]:
        """Every channel's signal, detected format and motion flag.

        Raises:
            DeviceIoError: a bus error; the message names the register and what to check.
        """
        self._select(BANK_MAIN)
        no_video = self._read(NO_VIDEO)
        motion = self._read(MOTION)
        h_lock = self._read(H_LOCK)
        self._select(BANK_DETECT)
        readings = []
        for channel in range(self._channels):
            bit = 1 << channel
            if no_video & bit:
                readings.append(ChannelReading(channel, SignalState.NO_VIDEO))
                continue
            detected = DETECTED.get(self._read(VFC_BASE + channel))
            if detected is None or not h_lock & bit:
                readings.append(ChannelReading(channel, SignalState.NO_LOCK))
                continue
            readings.append(ChannelReading(channel, SignalState.LOCKED, detected, bool(motion & bit)))
        return readings

    def set_format(self, channel: int, video_format: VideoFormat) -> None:
        """Write the channel's format registers.

        Raises:
            ValueError: no such channel, or a format the chip has no mode for (``UNKNOWN``).
            DeviceIoError: a bus error.
        """
        check_channel(self, channel)
        registers = FORMATS.get(video_format)
        if registers is None:
            names = ", ".join(f.value for f in FORMATS)
            raise ValueError(
                f"{self._name}: the NVP6158 has no mode for {video_format.value}; use one of {names}"
            )
        self._write_format(channel, video_format)
        self._formats[channel] = video_format

    def set_motion(self, channel: int, motion: MotionConfig) -> None:
        """Motion detection on or off, its sensitivity and block mask. Zones of the HAL's 22 x 18
        grid are widened to the chip's 16 x 12 blocks they overlap.

        Raises:
            ValueError: no such channel.
            DeviceIoError: a bus error.
        """
        check_channel(self, channel)
        self._write_motion(channel, motion)
        self._motion[channel] = motion

    # ---- inside ----

    def _write_format(self, channel: int, video_format: VideoFormat) -> None:
        registers = FORMATS[video_format]
        self._select(BANK_MAIN)
        self._write(FORMAT_REG + channel, registers.video_format)
        self._write(SPECIAL_MODE_REG + channel, registers.special_mode)
        self._write(AHD_MODE_REG + channel, registers.ahd_mode)
        self._select(0x05 + channel)
        value = self._read(SD_FREQ_REG)
        self._write(SD_FREQ_REG, (value & ~0x01) | registers.sd_freq)

    def _write_controls(self, channel: int, controls: PictureControls) -> None:
        self._select(BANK_MAIN)
        if controls.brightness is not None:
            self._write(BRIGHTNESS_REG + channel, (controls.brightness - 128) & 0xFF)
        if controls.contrast is not None:
            self._write(CONTRAST_REG + channel, controls.contrast)
        if controls.saturation is not None:
            self._write(SATURATION_REG + channel, controls.saturation)
        if controls.hue is not None:
            self._write(HUE_REG + channel, (controls.hue - 128) & 0xFF)

    def _write_motion(self, channel: int, motion: MotionConfig) -> None:
        base = MOTION_STRIDE * channel
        temporal, pixel = motion_sensitivity(motion.sensitivity)
        self._select(BANK_MOTION)
        self._write(base, MOTION_ON if motion.enabled else MOTION_OFF)
        self._write(base + 1, temporal)
        self._write(base + 2, (self._read(base + 2) & 0xF0) | pixel)
        for offset, value in enumerate(motion_mask(motion)):
            self._write(MASK_BASE + MASK_STRIDE * channel + offset, value)

    def _select(self, bank: int) -> None:
        self._write(BANK_SELECT, bank)
