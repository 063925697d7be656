"""What each emulated modem family says: identity, ICCID command, boot and hot-swap URCs, reset, dial.

Taken from the vendors' AT command manuals (Quectel UC20/EC25, SIMCom SIM800/SIM7600, Huawei
E173/MU709) as far as the modem manager relies on them; check details against the real modules in
the hardware rig before relying on a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

PROFILE_NAMES = (
    "generic",
    "quectel-uc20",
    "quectel-ec25",
    "simcom-sim800",
    "simcom-sim7600",
    "huawei-e173",
    "huawei-mu709",
)


@dataclass(frozen=True, slots=True)
class EmuProfile:
    """One modem family as the emulator plays it."""

    name: str
    manufacturer: str
    """``AT+CGMI`` reply."""
    model: str
    """``AT+CGMM`` reply."""
    revision: str
    """``AT+CGMR`` reply."""
    imei: str
    ati: tuple[str, ...]
    """``ATI`` reply lines."""
    iccid_command: str
    """Vendor ICCID command as sent, upper case: ``AT+QCCID``, ``AT+CICCID``, ``AT^ICCID?``, ``AT+CCID``."""
    iccid_reply_prefix: str
    """Prefix of the ICCID reply line (``""``: the bare number, as SIM800 answers)."""
    reset_command: str
    """Vendor reset: ``AT+CFUN=1,1``, ``AT+CRESET`` or ``AT^RESET``."""
    boot_urcs: tuple[str, ...]
    """Lines sent after power-on or reset (with ``{iccid}``-free text; ``+CPIN: READY`` is replaced
    by ``+CPIN: SIM PIN`` or left out when the SIM is locked or absent)."""
    sim_removed_urcs: tuple[str, ...]
    sim_inserted_urcs: tuple[str, ...]
    signal_urc: str
    """A URC the family sends often; the default line of a URC storm."""
    lte: bool
    """Has ``+CEREG`` and ``+CESQ``."""
    act: int
    """Access technology reported in ``+CREG``/``+COPS`` (0 GSM, 2 UTRAN, 7 E-UTRAN)."""
    ecm_dial: str | None
    """Vendor command (prefix, upper case) that starts a network-interface (ECM/NDIS) data call."""
    ecm_dial_reply: tuple[str, ...] = ()
    """Information lines of a successful ECM dial, before ``OK``."""
    ecm_connected_urc: str | None = None
    """URC sent after a successful ECM dial (Huawei ``^NDISSTAT``)."""
    ecm_ended_urc: str | None = None
    """URC sent when the network ends an ECM call (Huawei ``^NDISSTAT: 0``)."""
    net_interface: str | None = None
    """The host's name for the modem's network function (``usb0`` for cdc_ether, ``wwan0`` for
    qmi_wwan and huawei_cdc_ncm); None: no network function. A data path names its interface so."""
    default_cmee: int = 0
    extra_ok: tuple[str, ...] = ()
    """Vendor set commands (prefixes, upper case) answered ``OK`` without effect (init strings)."""
    sms_text_only: bool = False
    """The modem has no SMS PDU mode: ``AT+CMGF=0`` is an ``ERROR`` and text mode is on from power-on
    (some modules' firmware, and modem front ends of SMS gateways)."""


_COMMON_OK = ("AT&C", "AT&D", "AT&F", "AT&W", "ATQ0", "ATS0", "AT+IFC", "AT+IPR")

PROFILES: dict[str, EmuProfile] = {
    "generic": EmuProfile(
        name="generic",
        manufacturer="Generic",
        model="3GPP Modem",
        revision="GEN_1.0",
        imei="490154203237518",
        ati=("Generic", "3GPP Modem", "Revision: GEN_1.0"),
        iccid_command="AT+CCID",
        iccid_reply_prefix="+CCID: ",
        reset_command="AT+CFUN=1,1",
        boot_urcs=(),
        sim_removed_urcs=("+CPIN: NOT READY",),
        sim_inserted_urcs=("+CPIN: READY",),
        signal_urc="+CREG: 1",
        lte=True,
        act=7,
        ecm_dial=None,
        extra_ok=_COMMON_OK,
    ),
    "quectel-uc20": EmuProfile(
        name="quectel-uc20",
        manufacturer="Quectel",
        model="UC20",
        revision="UC20GQBR03A12E1G",
        imei="861075021234561",
        ati=("Quectel", "UC20", "Revision: UC20GQBR03A12E1G"),
        iccid_command="AT+QCCID",
        iccid_reply_prefix="+QCCID: ",
        reset_command="AT+CFUN=1,1",
        boot_urcs=("RDY", "+CFUN: 1", "+CPIN: READY", "+QIND: SMS DONE", "+QIND: PB DONE"),
        sim_removed_urcs=("+QSIMSTAT: 1,0",),
        sim_inserted_urcs=("+QSIMSTAT: 1,1", "+CPIN: READY"),
        signal_urc='+QIND: "csq",20,99',
        lte=False,
        act=2,
        ecm_dial=None,
        default_cmee=1,
        extra_ok=(*_COMMON_OK, "AT+QSIMSTAT=", "AT+QSIMDET=", "AT+QURCCFG=", "AT+QINDCFG=", "AT+QCFG="),
    ),
    "quectel-ec25": EmuProfile(
        name="quectel-ec25",
        manufacturer="Quectel",
        model="EC25",
        revision="EC25EFAR06A06M4G",
        imei="866425031234567",
        ati=("Quectel", "EC25", "Revision: EC25EFAR06A06M4G"),
        iccid_command="AT+QCCID",
        iccid_reply_prefix="+QCCID: ",
        reset_command="AT+CFUN=1,1",
        boot_urcs=("RDY", "+CFUN: 1", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE", "+QIND: PB DONE"),
        sim_removed_urcs=("+QSIMSTAT: 1,0",),
        sim_inserted_urcs=("+QSIMSTAT: 1,1", "+CPIN: READY"),
        signal_urc='+QIND: "csq",20,99',
        lte=True,
        act=7,
        ecm_dial="AT+QNETDEVCTL=",
        net_interface="usb0",
        default_cmee=1,
        extra_ok=(*_COMMON_OK, "AT+QSIMSTAT=", "AT+QSIMDET=", "AT+QURCCFG=", "AT+QINDCFG=", "AT+QCFG="),
    ),
    "simcom-sim800": EmuProfile(
        name="simcom-sim800",
        manufacturer="SIMCOM_Ltd",
        model="SIMCOM_SIM800",
        revision="Revision:1418B04SIM800C24",
        imei="869170031234568",
        ati=("SIM800 R14.18",),
        iccid_command="AT+CCID",
        iccid_reply_prefix="",
        reset_command="AT+CFUN=1,1",
        boot_urcs=("RDY", "+CFUN: 1", "+CPIN: READY", "Call Ready", "SMS Ready"),
        sim_removed_urcs=("+CPIN: NOT READY",),
        sim_inserted_urcs=("+CPIN: READY", "Call Ready", "SMS Ready"),
        signal_urc="+CREG: 1",
        lte=False,
        act=0,
        ecm_dial=None,
        extra_ok=(*_COMMON_OK, "AT+CSDT=", "AT+CSCLK=", "AT+CIURC="),
    ),
    "simcom-sim7600": EmuProfile(
        name="simcom-sim7600",
        manufacturer="SIMCOM INCORPORATED",
        model="SIMCOM_SIM7600E-H",
        revision="LE20B04SIM7600M22",
        imei="862636051234569",
        ati=(
            "Manufacturer: SIMCOM INCORPORATED",
            "Model: SIMCOM_SIM7600E-H",
            "Revision: LE20B04SIM7600M22",
            "IMEI: 862636051234569",
            "+GCAP: +CGSM",
        ),
        iccid_command="AT+CICCID",
        iccid_reply_prefix="+ICCID: ",
        reset_command="AT+CRESET",
        boot_urcs=("RDY", "+CPIN: READY", "SMS DONE", "PB DONE"),
        sim_removed_urcs=("+SIMCARD: NOT AVAILABLE",),
        sim_inserted_urcs=("+CPIN: READY", "SMS DONE", "PB DONE"),
        signal_urc="+CSQ: 20,99",
        lte=True,
        act=7,
        ecm_dial="AT$QCRMCALL=",
        ecm_dial_reply=("$QCRMCALL: 1,V4",),
        net_interface="wwan0",
        extra_ok=(*_COMMON_OK, "AT+UIMHOTSWAPON=", "AT+UIMHOTSWAPLEVEL=", "AT+CUSBPIDSWITCH="),
    ),
    "huawei-e173": EmuProfile(
        name="huawei-e173",
        manufacturer="huawei",
        model="E173",
        revision="11.126.85.00.209",
        imei="353142041234560",
        ati=("Manufacturer: huawei", "Model: E173", "Revision: 11.126.85.00.209", "IMEI: 353142041234560"),
        iccid_command="AT^ICCID?",
        iccid_reply_prefix="^ICCID: ",
        reset_command="AT^RESET",
        boot_urcs=("^SIMST: 1", "^SRVST: 2"),
        sim_removed_urcs=("^SIMST: 255",),
        sim_inserted_urcs=("^SIMST: 1",),
        signal_urc="^RSSI: 20",
        lte=False,
        act=2,
        ecm_dial="AT^NDISDUP=",
        ecm_connected_urc='^NDISSTAT: 1,,,"IPV4"',
        ecm_ended_urc='^NDISSTAT: 0,,,"IPV4"',
        net_interface="wwan0",
        extra_ok=(*_COMMON_OK, "AT^CURC=", "AT^SYSCFG=", "AT^PORTSEL="),
    ),
    "huawei-mu709": EmuProfile(
        name="huawei-mu709",
        manufacturer="Huawei Technologies Co., Ltd.",
        model="MU709s-2",
        revision="11.652.60.00.00",
        imei="867278021234564",
        ati=(
            "Manufacturer: Huawei Technologies Co., Ltd.",
            "Model: MU709s-2",
            "Revision: 11.652.60.00.00",
            "IMEI: 867278021234564",
        ),
        iccid_command="AT^ICCID?",
        iccid_reply_prefix="^ICCID: ",
        reset_command="AT^RESET",
        boot_urcs=("^SYSSTART", "^SIMST: 1", "^SRVST: 2"),
        sim_removed_urcs=("^SIMST: 255",),
        sim_inserted_urcs=("^SIMST: 1",),
        signal_urc="^RSSI: 20",
        lte=False,
        act=2,
        ecm_dial="AT^NDISDUP=",
        ecm_connected_urc='^NDISSTAT: 1,,,"IPV4"',
        ecm_ended_urc='^NDISSTAT: 0,,,"IPV4"',
        net_interface="wwan0",
        extra_ok=(*_COMMON_OK, "AT^CURC=", "AT^SYSCFG=", "AT^SYSCFGEX="),
    ),
}


def get_profile(name: str) -> EmuProfile:
    """The profile called ``name``. Raises KeyError naming the known profiles."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown modem profile {name!r}; known: {', '.join(PROFILE_NAMES)}") from None
