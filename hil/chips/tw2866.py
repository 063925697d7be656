"""A register model of a Techwell TW2866: 4 inputs of CVBS, PAL or NTSC, one flat register map.

Registers as the datasheet names them and the public drivers use them (docs/hal.md has the
sources; the motion registers are still to be checked on a board). What the model computes from
its cameras:

- 0x00+0x10*ch status: VDLOSS (bit 7) when nothing is on the input; HLOCK, SLOCK and VLOCK
  (bits 6, 5, 3) when locked, with DET50 (bit 0) for a 50 Hz picture. A channel whose standard is
  forced (STD, below) to another standard than the camera's has no VLOCK.
- 0x0E+0x10*ch bit 7 DETSTUS while detection runs (``set_detecting``); bits 6:4 STDNOW: 1
  PAL-BDGHI, 0 NTSC-M, 7 when nothing is detected; bits 2:0 the STD the host wrote (7, auto, at
  reset).
- 0xB1 bits 3:0: motion per channel, when a locked picture shows motion and the channel's motion
  detection is on (0xB2+ch bit 7, MD_DIS, clear; set at reset).
- 0xFF: device ID 0x19 in bits 7:3 and the revision (read-only).

Everything else is storage with reset values; writes are recorded and applied.
"""

from __future__ import annotations

from dvrlink.hal.model import VideoFormat
from hil.chips import Inputs

STDNOW = {VideoFormat.CVBS_PAL: 1, VideoFormat.CVBS_NTSC: 0}
STD_FORCED = {1: VideoFormat.CVBS_PAL, 0: VideoFormat.CVBS_NTSC}
"""STD values that force a standard (7 is auto; the others force standards not modelled)."""
NOT_VALID = 7
ID_REGISTER = 0xFF
MOTION_STATUS = 0xB1
MOTION_CONTROL = 0xB2


class Tw2866Model:
    """The chip's registers and the cameras on its 4 inputs."""

    def __init__(self, device_id: int = 0x19, revision: int = 0) -> None:
        """A chip that answers ``device_id`` in bits 7:3 of 0xFF (0x19 TW2866, 0x18 TW2865)."""
        self.inputs = Inputs(4, frozenset(STDNOW))
        self.writes: list[tuple[int, int]] = []
        """Every write taken, as (register, value)."""
        self._registers = bytearray(256)
        for channel in range(4):
            base = 0x10 * channel
            self._registers[base + 0x02] = 0x64  # contrast: gain 1
            self._registers[base + 0x03] = 0x11  # sharpness
            self._registers[base + 0x04] = 0x80  # saturation U
            self._registers[base + 0x05] = 0x80  # saturation V
            self._registers[base + 0x0E] = 0x07  # STD: auto
            self._registers[MOTION_CONTROL + channel] = 0x80  # MD_DIS: motion detection off
        self._registers[ID_REGISTER] = (device_id << 3 | revision) & 0xFF
        self._detecting: set[int] = set()

    # ---- the cameras (what tests drive) ----

    def plug(self, channel: int, fmt: VideoFormat) -> None:
        """A camera sending ``fmt`` (CVBS PAL or NTSC) is connected to ``channel``."""
        self.inputs.plug(channel, fmt)

    def unplug(self, channel: int) -> None:
        """The camera on ``channel`` is disconnected."""
        self.inputs.unplug(channel)

    def change_format(self, channel: int, fmt: VideoFormat) -> None:
        """The camera on ``channel`` switches to ``fmt``."""
        self.inputs.change_format(channel, fmt)

    def set_motion(self, channel: int, moving: bool) -> None:
        """The picture on ``channel`` shows motion, or stops."""
        self.inputs.set_motion(channel, moving)

    def set_no_lock(self, channel: int) -> None:
        """Something the decoder cannot lock to is on ``channel``."""
        self.inputs.set_no_lock(channel)

    def set_detecting(self, channel: int, running: bool) -> None:
        """The chip's standard detection is running on ``channel`` (DETSTUS set), as for a
        moment after a camera changes standard."""
        if running:
            self._detecting.add(channel)
        else:
            self._detecting.discard(channel)

    # ---- the bus side (hal.i2c.RegisterModel) ----

    def read(self, register: int) -> int:
        """The byte a read of ``register`` returns now."""
        return self.register(register)

    def write(self, register: int, value: int) -> None:
        """Take a write; status bits and the ID are read-only."""
        self.writes.append((register, value))
        if register in (ID_REGISTER, MOTION_STATUS):
            return
        if register < 0x40 and register & 0x0F == 0x00:
            return  # a channel's status register
        if register < 0x40 and register & 0x0F == 0x0E:
            value &= 0x0F  # DETSTUS and STDNOW are read-only
        self._registers[register] = value

    # ---- inspection (what tests assert on) ----

    def register(self, register: int) -> int:
        """The byte at ``register`` as a read returns it."""
        if register < 0x40 and register & 0x0F == 0x00:
            return self._status(register >> 4)
        if register < 0x40 and register & 0x0F == 0x0E:
            channel = register >> 4
            running = 0x80 if channel in self._detecting else 0x00
            return running | self._detected(channel) << 4 | self._registers[register] & 0x0F
        if register == MOTION_STATUS:
            return sum(
                1 << channel
                for channel, camera in enumerate(self.inputs.cameras)
                if camera.motion and self._locked(channel) and self.motion_enabled(channel)
            )
        return self._registers[register]

    def forced_standard(self, channel: int) -> VideoFormat | None:
        """The standard the channel's STD forces, or None for auto (or a standard not modelled)."""
        return STD_FORCED.get(self._registers[0x10 * channel + 0x0E] & 0x07)

    def motion_enabled(self, channel: int) -> bool:
        """Motion detection is on for the channel (MD_DIS clear)."""
        return not self._registers[MOTION_CONTROL + channel] & 0x80

    # ---- inside ----

    def _locked(self, channel: int) -> bool:
        camera = self.inputs.cameras[channel]
        if not camera.plugged or not camera.locked:
            return False
        forced = self.forced_standard(channel)
        return forced is None or forced is camera.format

    def _status(self, channel: int) -> int:
        camera = self.inputs.cameras[channel]
        if not camera.plugged:
            return 0x80  # VDLOSS
        if not camera.locked:
            return 0x00
        fifty = 0x01 if camera.format is VideoFormat.CVBS_PAL else 0x00
        if not self._locked(channel):
            return 0x40 | 0x20 | fifty  # horizontal lock, no vertical lock: the wrong field rate
        return 0x40 | 0x20 | 0x08 | fifty

    def _detected(self, channel: int) -> int:
        camera = self.inputs.cameras[channel]
        if not camera.plugged or not camera.locked:
            return NOT_VALID
        return STDNOW[camera.format]
