"""A Techwell/Intersil TW2866-class decoder over I2C: 4 channels of CVBS (PAL or NTSC).

The chip locks to each input and detects its standard; this backend reads the per-channel
status and standard registers and the motion flags, and writes the standard, picture and motion
registers. Facts come from the TW2864/65/66 datasheets' register names, HiSilicon's public
tw2865 driver and the Linux solo6x10 driver (docs/hal.md lists them and marks those still to be
checked on a board). ``hil/chips/tw2866.py`` models the same registers for the tests.

Registers (one flat map; channel ``ch`` at ``0x10 * ch`` for the per-channel block):

- 0x00+0x10*ch status: bit 7 VDLOSS, 6 HLOCK, 5 SLOCK, 4 FIELD, 3 VLOCK, 1 MONO, 0 DET50.
- 0x01 brightness (signed), 0x02 contrast (0x64 = gain 1), 0x04/0x05 saturation U/V (0x80 =
  100 %), 0x06 hue (signed), 0x07-0x0B cropping and delays (set with the standard).
- 0x0E+0x10*ch standard: bit 7 DETSTUS (detection running), bits 6:4 STDNOW (detected),
  bits 2:0 STD (set: 0 NTSC-M, 1 PAL-BDGHI, 7 auto).
- 0xFF: bits 7:3 device ID (0x19 TW2866, 0x18 TW2865), bits 2:0 revision.
- motion (to be checked on a board): 0xB1 bits 3:0 motion flag per channel; 0xB2+ch bit 7
  MD_DIS (detection off), bits 3:0 MD_LVSENS (level threshold, 0 most sensitive).
"""

from __future__ import annotations

from dvrlink.hal.decoder import I2cDecoder
from dvrlink.hal.device import check_channel
from dvrlink.hal.model import (
    ChannelReading,
    DeviceIoError,
    MotionConfig,
    PictureControls,
    SignalState,
    VideoFormat,
)

CHANNEL_STRIDE = 0x10
STATUS = 0x00
BRIGHTNESS = 0x01
CONTRAST = 0x02
SATURATION_U = 0x04
SATURATION_V = 0x05
HUE = 0x06
CROP_BASE = 0x07
STANDARD = 0x0E
DEVICE_ID = 0xFF
MOTION_STATUS = 0xB1
MOTION_CONTROL = 0xB2

VDLOSS = 0x80
HLOCK = 0x40
SLOCK = 0x20
VLOCK = 0x08
LOCKED_BITS = HLOCK | SLOCK | VLOCK
DETECTING = 0x80
MD_DISABLE = 0x80

DEVICE_IDS = {0x19: "TW2866", 0x18: "TW2865"}
OTHER_IDS = {0x0C: "TW2864"}

STANDARD_SET = {VideoFormat.CVBS_NTSC: 0, VideoFormat.CVBS_PAL: 1}
"""STD (bits 2:0 of 0x0E+0x10*ch) for each format: NTSC-M, PAL-BDGHI."""
STANDARD_NOW = {
    0: VideoFormat.CVBS_NTSC,  # NTSC-M
    1: VideoFormat.CVBS_PAL,  # PAL-B/D/G/H/I
    2: VideoFormat.CVBS_PAL,  # SECAM: 625 lines, 50 Hz
    3: VideoFormat.CVBS_NTSC,  # NTSC 4.43: 525 lines, 60 Hz
    4: VideoFormat.CVBS_NTSC,  # PAL-M: 525 lines, 60 Hz
    5: VideoFormat.CVBS_PAL,  # PAL-CN: 625 lines, 50 Hz
    6: VideoFormat.CVBS_NTSC,  # PAL-60: 525 lines, 60 Hz
}
"""STDNOW (bits 6:4) to the HAL's format by frame size and rate; 7 (not valid) reads as no lock."""
CROPPING = {
    VideoFormat.CVBS_PAL: (0x12, 0x17, 0x20, 0x0C, 0xD0),
    VideoFormat.CVBS_NTSC: (0x02, 0x15, 0xF0, 0x0C, 0xD0),
}
"""0x07-0x0B (cropping high bits, vertical delay, vertical active, horizontal delay, horizontal
active) per standard, the values of the public HiSilicon driver."""


def level_sensitivity(sensitivity: int) -> int:
    """MD_LVSENS (0 most sensitive, 15 least) for the HAL's 1 (least) to 10 (most)."""
    return ((10 - sensitivity) * 15 + 4) // 9


class Tw2866(I2cDecoder):
    """A TW2866 (or register-compatible TW2865) at one I2C address (0x28-0x2B by its strap): a
    ``CaptureDevice``."""

    CHIP = "TW2866"
    STRAPS = "0x28-0x2B"

    def probe(self) -> str:
        """Read the device ID; a line naming the chip, its revision, bus and address.

        Raises:
            DeviceIoError: no answer, or another chip's ID; the message says what to fix.
        """
        value = self._read(DEVICE_ID)
        device_id, revision = value >> 3, value & 0x07
        where = f"address 0x{self._address:02x} on {self._bus.name}"
        if device_id in DEVICE_IDS:
            chip = DEVICE_IDS[device_id]
            return f"{self._name}: Techwell {chip} rev {revision} at {where}, {self._channels} channels"
        if device_id in OTHER_IDS:
            raise DeviceIoError(
                f"{self._name}: the chip at {where} is a {OTHER_IDS[device_id]} (ID 0x{device_id:02x}), "
                "not a TW2866/TW2865; set the capture backend to match the board"
            )
        raise DeviceIoError(
            f"{self._name}: the chip at {where} answers 0x{value:02x} at 0xFF, not a TW2866's ID 0x19 "
            "(0xC8-0xCF); check the address in the config (TW2866 straps 0x28-0x2B) and the chip's reset"
        )

    def read(self) -> list[ChannelReading]:
        """Every channel's signal, detected standard and motion flag.

        Raises:
            DeviceIoError: a bus error; the message names the register and what to check.
        """
        motion = self._read(MOTION_STATUS)
        readings = []
        for channel in range(self._channels):
            base = CHANNEL_STRIDE * channel
            status = self._read(base + STATUS)
            if status & VDLOSS:
                readings.append(ChannelReading(channel, SignalState.NO_VIDEO))
                continue
            standard = self._read(base + STANDARD)
            detected = STANDARD_NOW.get((standard >> 4) & 0x07)
            if detected is None or standard & DETECTING or status & LOCKED_BITS != LOCKED_BITS:
                readings.append(ChannelReading(channel, SignalState.NO_LOCK))
                continue
            readings.append(
                ChannelReading(channel, SignalState.LOCKED, detected, bool(motion & (1 << channel)))
            )
        return readings

    def set_format(self, channel: int, video_format: VideoFormat) -> None:
        """Set the channel's standard (PAL or NTSC) and its cropping.

        Raises:
            ValueError: no such channel, or not a CVBS format.
            DeviceIoError: a bus error.
        """
        check_channel(self, channel)
        if video_format not in STANDARD_SET:
            raise ValueError(
                f"{self._name}: the TW2866 decodes CVBS only, not {video_format.value}; "
                "use cvbs-pal or cvbs-ntsc"
            )
        self._write_format(channel, video_format)
        self._formats[channel] = video_format

    def set_motion(self, channel: int, motion: MotionConfig) -> None:
        """Motion detection on or off and its sensitivity, over the whole picture.

        Raises:
            ValueError: no such channel, or zones (this backend does not write the chip's cell mask).
            DeviceIoError: a bus error.
        """
        check_channel(self, channel)
        if motion.zones:
            raise ValueError(
                f"{self._name}: the TW2866 backend watches the whole picture; remove the motion zones"
            )
        self._write_motion(channel, motion)
        self._motion[channel] = motion

    # ---- inside ----

    def _write_format(self, channel: int, video_format: VideoFormat) -> None:
        base = CHANNEL_STRIDE * channel
        self._write(base + STANDARD, STANDARD_SET[video_format])
        for offset, value in enumerate(CROPPING[video_format]):
            self._write(base + CROP_BASE + offset, value)

    def _write_controls(self, channel: int, controls: PictureControls) -> None:
        base = CHANNEL_STRIDE * channel
        if controls.brightness is not None:
            self._write(base + BRIGHTNESS, (controls.brightness - 128) & 0xFF)
        if controls.contrast is not None:
            self._write(base + CONTRAST, min(0xFF, controls.contrast * 0x64 // 128))
        if controls.saturation is not None:
            self._write(base + SATURATION_U, controls.saturation)
            self._write(base + SATURATION_V, controls.saturation)
        if controls.hue is not None:
            self._write(base + HUE, (controls.hue - 128) & 0xFF)

    def _write_motion(self, channel: int, motion: MotionConfig) -> None:
        value = level_sensitivity(motion.sensitivity) | (0 if motion.enabled else MD_DISABLE)
        self._write(MOTION_CONTROL + channel, value)
