"""A PTY modem emulator with per-family profiles and scriptable faults (see hil/README.md).

From tests: ``with ModemEmulator("quectel-ec25", SimCard.for_network("26201")) as emu: ...``;
by hand: ``python -m hil.modememu --profile quectel-ec25``.
"""

from hil.modememu.emulator import REGISTRATION_NAMES, ModemEmulator
from hil.modememu.model import DataPath, ModemModel, SimCard
from hil.modememu.profiles import PROFILE_NAMES, PROFILES, EmuProfile, get_profile

__all__ = [
    "PROFILES",
    "PROFILE_NAMES",
    "REGISTRATION_NAMES",
    "DataPath",
    "EmuProfile",
    "ModemEmulator",
    "ModemModel",
    "SimCard",
    "get_profile",
]
