"""A PTY modem emulator with per-family profiles and scriptable faults (see hil/README.md).

From tests: ``with ModemEmulator("quectel-ec25", SimCard.for_network("26201")) as emu: ...``;
by hand: ``python -m hil.modememu --profile quectel-ec25``. Data paths behind a dial:
``hil.modememu.cellular`` (ECM calls as veth links) and ``hil.modememu.ppp_link`` (a PPP server
for ``ATD*99#`` with a TUN device per call; imported on its own, since it loads scapy).
"""

from hil.modememu.emulator import REGISTRATION_NAMES, ModemEmulator
from hil.modememu.model import DataPath, ModemModel, NetworkDelays, SentSms, SimCard
from hil.modememu.profiles import PROFILE_NAMES, PROFILES, EmuProfile, get_profile

__all__ = [
    "PROFILES",
    "PROFILE_NAMES",
    "REGISTRATION_NAMES",
    "DataPath",
    "EmuProfile",
    "ModemEmulator",
    "ModemModel",
    "NetworkDelays",
    "SentSms",
    "SimCard",
    "get_profile",
]
