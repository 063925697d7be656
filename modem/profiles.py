"""Quirk profiles of the modem families recorders ship with: ports, init, URCs, dial and reset.

A profile is data, not code: the AT engine takes its URCs and restart markers (``at_config``), the
detection layer its USB IDs and interface numbers, the state machine its init and hot-swap commands,
the data link its dial method. Facts come from the vendors' AT manuals and Linux USB driver guides:

- Quectel UC20 (05c6:9003) and EC25 (2c7c:0125): interface 0 DM, 1 NMEA, 2 AT, 3 modem (PPP), 4 the
  network interface (QMI, or ECM after ``AT+QCFG="usbnet",1``). URCs go to the port named by
  ``AT+QURCCFG="urcport"``. ``+QSIMSTAT: <enable>,<inserted>`` reports SIM insertion once
  ``AT+QSIMSTAT=1`` is set; the SIM detect pin (``AT+QSIMDET=1,<level>``) depends on how the
  carrier board wires it, so it is left to the board's config.
- SIMCom SIM800: UART only, so PPP runs on the AT port itself; ``AT+CSMINS=1`` turns on
  ``+CSMINS: <n>,<inserted>``; ``RDY`` is printed at boot unless auto-bauding is on.
- SIMCom SIM7600 (1e0e:9001): interface 0 DM, 1 NMEA, 2 AT, 3 modem, 4 audio, 5 network (QMI).
  ``AT+UIMHOTSWAPON=1`` (stored, active after a reset) turns on SIM hot-swap; ``AT+CRESET`` resets.
  ECM or RNDIS needs another USB composition (``AT+CUSBPIDSWITCH=9018/9011``), then
  ``AT$QCRMCALL=1,<cid>`` starts the call.
- Huawei E173 (12d1:1436 after mode switch, or 12d1:1001) and MU709: the PCUI port speaks AT,
  the modem port PPP; ``^SIMST:`` reports the SIM state, ``^RSSI``/``^MODE``/``^BOOT`` are
  periodic URCs (``^BOOT`` is no restart); ``^SYSSTART`` is printed once the module has started;
  ``AT^NDISDUP=<cid>,1,"<apn>"`` starts an NDIS/ECM call; ``AT^RESET`` resets; ``AT^SYSINFOEX``
  names the technology. Quectel's ``AT+QNWINFO`` and SIMCom's ``AT+CPSI?`` also name the network
  and band (``modem/radio.py``).
  Huawei assigns product IDs and the port layout per USB configuration (``AT^SETPORT``), so for the
  MU709 the AT port is found by probing rather than by number.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from dvrlink.protocol.at_engine import AtConfig


class DialMethod(enum.Enum):
    """How a data call is brought up."""

    PPP = "ppp"
    """``ATD*99#`` on the modem port, then pppd."""
    ECM = "ecm"
    """A vendor command starts the call; then DHCP on the modem's network interface."""


@dataclass(frozen=True, slots=True)
class UsbPorts:
    """One USB identity of a modem and the interface numbers of its functions.

    ``at_interface`` None: probe each serial interface with ``AT``. ``ppp_interface`` None: PPP
    runs on the AT port (or the modem has no PPP port). ``net_interface`` None: no network function.
    """

    vendor: int
    product: int
    at_interface: int | None
    ppp_interface: int | None = None
    net_interface: int | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.vendor <= 0xFFFF and 0 <= self.product <= 0xFFFF):
            raise ValueError(f"USB ID {self.vendor:x}:{self.product:x} out of range: use 16-bit hex values")

    @property
    def usb_id(self) -> str:
        """``vvvv:pppp`` as lsusb prints it."""
        return f"{self.vendor:04x}:{self.product:04x}"


@dataclass(frozen=True, slots=True)
class ModemProfile:
    """The quirks of one modem family (see module docstring).

    ``init_commands`` run after the common probe (``ATE0``, ``ATV1``, ``AT+CMEE=1``).
    ``ecm_connect``/``ecm_disconnect`` are templates with ``{cid}`` and ``{apn}``.
    ``sim_hotswap_setup`` turns on SIM insertion reports, which arrive as ``sim_hotswap_urcs``.
    """

    name: str
    description: str
    usb: tuple[UsbPorts, ...]
    init_commands: tuple[str, ...]
    urc_prefixes: tuple[str, ...]
    dial_method: DialMethod
    reset_command: str = "AT+CFUN=1,1"
    ppp_dial: str = "ATD*99#"
    ecm_connect: str | None = None
    ecm_disconnect: str | None = None
    sim_hotswap_setup: tuple[str, ...] = ()
    sim_hotswap_urcs: tuple[str, ...] = ("+CPIN:",)
    restart_markers: tuple[str, ...] = ("RDY",)
    boot_urcs: tuple[str, ...] = ()
    radio_info_command: str | None = None
    """The vendor command that names the serving cell's technology, network and band
    (``modem/radio.py``), polled with the signal; None: the 3GPP commands only."""
    iccid_command: str = "AT+CCID"
    """The vendor command that reads the SIM's ICCID. Every SIM also answers a read of EF_ICCID
    with ``+CRSM``, which the manager falls back to when this one fails or gives no ICCID."""

    def __post_init__(self) -> None:
        if self.dial_method is DialMethod.ECM and (self.ecm_connect is None or self.ecm_disconnect is None):
            raise ValueError(f"profile {self.name}: the ECM dial method needs ecm_connect and ecm_disconnect")
        singles = (self.reset_command, self.ppp_dial, self.iccid_command)
        for command in (*self.init_commands, *self.sim_hotswap_setup, *singles):
            if not command.upper().startswith("AT"):
                raise ValueError(f"profile {self.name}: command {command!r} must start with AT")

    def at_config(self, base: AtConfig | None = None) -> AtConfig:
        """The AT engine settings for this family: ``base`` plus its URCs and restart markers."""
        config = (base or AtConfig()).with_urcs((*self.urc_prefixes, *self.sim_hotswap_urcs))
        return replace(config, restart_markers=self.restart_markers)

    def ports_for(self, vendor: int, product: int) -> UsbPorts | None:
        """The port layout for a USB ID, or None when this profile does not know it."""
        for ports in self.usb:
            if (ports.vendor, ports.product) == (vendor, product):
                return ports
        return None

    def connect_command(self, cid: int, apn: str) -> str:
        """The command that starts a data call on context ``cid``.

        Raises:
            ValueError: the APN holds a quote, CR or LF, which would break the command line.
        """
        if any(ch in apn for ch in '"\r\n'):
            raise ValueError(f"APN {apn!r} holds a quote or line break: fix the APN setting")
        if self.dial_method is DialMethod.PPP or self.ecm_connect is None:
            return self.ppp_dial
        return self.ecm_connect.format(cid=cid, apn=apn)


_QUECTEL_URCS = ("+QIND:", "+QUSIM:", "+QIURC:", "POWERED DOWN")
_QUECTEL_BOOT = ("RDY", "+CFUN: 1", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE")
HUAWEI_STARTED = "^SYSSTART"
"""What a Huawei module prints once it has started (after power-on or a reset): its ``RDY``."""

_HUAWEI_URCS = (
    "^RSSI:",
    "^HCSQ:",
    "^MODE:",
    "^BOOT:",
    "^SRVST:",
    "^SIMST:",
    "^DSFLOWRPT:",
    "^NDISSTAT:",
    "^CEND:",
    "^ORIG:",
    "^CONF:",
    "^CONN:",
    "^STIN:",
    "^RFSWITCH:",
    "^NWTIME:",
)


def _build() -> dict[str, ModemProfile]:
    quectel_init = ('AT+QURCCFG="urcport","usbat"', "AT+QSIMSTAT=1")
    quectel_uc20 = ModemProfile(
        name="quectel-uc20",
        description="Quectel UC20 (UMTS/HSPA)",
        usb=(UsbPorts(0x05C6, 0x9003, at_interface=2, ppp_interface=3, net_interface=4),),
        init_commands=quectel_init,
        urc_prefixes=_QUECTEL_URCS,
        dial_method=DialMethod.PPP,
        sim_hotswap_urcs=("+QSIMSTAT:", "+CPIN:", "+QUSIM:"),
        boot_urcs=_QUECTEL_BOOT,
        radio_info_command="AT+QNWINFO",
        iccid_command="AT+QCCID",
    )
    huawei_e173 = ModemProfile(
        name="huawei-e173",
        description="Huawei E173 USB stick (HSPA), modem mode 12d1:1436 or 12d1:1001",
        usb=(
            UsbPorts(0x12D1, 0x1436, at_interface=4, ppp_interface=0, net_interface=1),
            UsbPorts(0x12D1, 0x1001, at_interface=2, ppp_interface=0),
        ),
        init_commands=(),
        urc_prefixes=_HUAWEI_URCS,
        dial_method=DialMethod.PPP,
        reset_command="AT^RESET",
        ecm_connect='AT^NDISDUP={cid},1,"{apn}"',
        ecm_disconnect="AT^NDISDUP={cid},0",
        sim_hotswap_urcs=("^SIMST:", "+CPIN:"),
        # Huawei modules print no RDY but ^SYSSTART once started (a reset also shows as the
        # USB device leaving and returning); ^BOOT is a periodic report, not a restart
        restart_markers=(HUAWEI_STARTED,),
        radio_info_command="AT^SYSINFOEX",
        iccid_command="AT^ICCID?",
    )
    profiles = (
        ModemProfile(
            name="generic",
            description="Any 3GPP TS 27.007 modem: PPP on the port given by config",
            usb=(),
            init_commands=(),
            urc_prefixes=(),
            dial_method=DialMethod.PPP,
        ),
        quectel_uc20,
        replace(
            quectel_uc20,
            name="quectel-ec25",
            description='Quectel EC25 (LTE Cat 4); ECM after AT+QCFG="usbnet",1',
            usb=(UsbPorts(0x2C7C, 0x0125, at_interface=2, ppp_interface=3, net_interface=4),),
            dial_method=DialMethod.ECM,
            # older firmware without +QNETDEVCTL: AT$QCRMCALL=1,{cid}
            ecm_connect="AT+QNETDEVCTL=1,{cid},1",
            ecm_disconnect="AT+QNETDEVCTL=0,{cid},0",
        ),
        ModemProfile(
            name="simcom-sim800",
            description="SIMCom SIM800 (GSM/GPRS) on a UART: PPP on the AT port",
            usb=(),
            init_commands=("AT+CSMINS=1",),
            urc_prefixes=(
                "Call Ready",
                "SMS Ready",
                "*PSUTTZ:",
                "DST:",
                "+CSQN:",
                "+CDRIND:",
                "UNDER-VOLTAGE",
                "OVER-VOLTAGE",
                "NORMAL POWER DOWN",
            ),
            dial_method=DialMethod.PPP,
            sim_hotswap_urcs=("+CSMINS:", "+CPIN:"),
            boot_urcs=("RDY", "+CFUN: 1", "+CPIN: READY", "Call Ready", "SMS Ready"),
        ),
        ModemProfile(
            name="simcom-sim7600",
            description="SIMCom SIM7600 (LTE Cat 1/4), default USB composition 9001",
            usb=(UsbPorts(0x1E0E, 0x9001, at_interface=2, ppp_interface=3, net_interface=5),),
            init_commands=(),
            urc_prefixes=("SMS DONE", "PB DONE"),
            dial_method=DialMethod.PPP,
            reset_command="AT+CRESET",
            ecm_connect="AT$QCRMCALL=1,{cid}",
            ecm_disconnect="AT$QCRMCALL=0,{cid}",
            sim_hotswap_setup=("AT+UIMHOTSWAPON=1",),
            sim_hotswap_urcs=("+SIMCARD:", "+CPIN:"),
            boot_urcs=("RDY", "+CPIN: READY", "SMS DONE", "PB DONE"),
            radio_info_command="AT+CPSI?",
            iccid_command="AT+CICCID",
        ),
        huawei_e173,
        # the same family as a module: its ports are found by probing, and it dials NDIS/ECM
        replace(
            huawei_e173,
            name="huawei-mu709",
            description="Huawei MU709 (HSPA+ module), NDIS/ECM call with AT^NDISDUP",
            usb=(
                UsbPorts(0x12D1, 0x1C25, at_interface=None),
                UsbPorts(0x12D1, 0x1506, at_interface=None),
            ),
            dial_method=DialMethod.ECM,
        ),
    )
    return {profile.name: profile for profile in profiles}


PROFILES: Mapping[str, ModemProfile] = MappingProxyType(_build())
"""Every profile by name; read-only."""


def profile_by_name(name: str) -> ModemProfile:
    """The profile called ``name``.

    Raises:
        ValueError: no such profile; the message lists the known ones.
    """
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown modem profile {name!r}: use one of {known}") from None


def profile_for_usb(vendor: int, product: int) -> tuple[ModemProfile, UsbPorts] | None:
    """The profile and port layout of a USB modem, or None for an unknown ID."""
    for profile in PROFILES.values():
        ports = profile.ports_for(vendor, product)
        if ports is not None:
            return profile, ports
    return None
