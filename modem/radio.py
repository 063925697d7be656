"""Vendor radio information: the serving cell's radio technology, network (MCC-MNC) and band, from
the one command each family answers with all three. Pure parsers; the manager polls the command
of the modem's profile (``ModemProfile.radio_info_command``) with the signal.

- Quectel (UC20, EC25): ``AT+QNWINFO`` → ``+QNWINFO: "FDD LTE","26201","LTE BAND 3",1300``
  (``No Service`` without a cell).
- Huawei (E173, MU709): ``AT^SYSINFOEX`` → ``^SYSINFOEX: 2,3,0,1,,3,"WCDMA",46,"DC-HSPA+"``
  (service status, domain, roaming, SIM state, lock, system mode and its name, submode and its
  name; system mode 0 is no service). The numbers name the technology; the names are a hint
  only (see :func:`parse_sysinfoex`). It names no network and no band.
- SIMCom SIM7600: ``AT+CPSI?`` → ``+CPSI: LTE,Online,262-01,0x1A2B,...,EUTRAN-BAND3,1300,...``
  or ``+CPSI: GSM,Online,262-01,0x1a2b,1234,12 EGSM 900,...`` (``NO SERVICE`` without a cell).

The technology is given in the words ``ModemStatus.rat`` uses elsewhere: GSM, GPRS, EDGE, UMTS,
HSDPA, HSUPA, HSPA, HSPA+, LTE, NR.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from dvrlink.protocol.at_results import reply_fields


@dataclass(frozen=True, slots=True)
class RadioInfo:
    """The serving cell as the modem's vendor command reports it; empty strings where not told."""

    rat: str
    network: str = ""
    """MCC-MNC of the serving network, ``262-01``."""
    band: str = ""
    """As the modem names it: ``LTE BAND 3``, ``EGSM 900``, ``WCDMA 2100``."""


_RAT_WORDS: tuple[tuple[str, str], ...] = (
    ("NR", "NR"),
    ("LTE", "LTE"),
    ("CAT-M", "LTE"),
    ("HSPA+", "HSPA+"),
    ("HSPA", "HSPA"),
    ("HSUPA", "HSUPA"),
    ("HSDPA", "HSDPA"),
    ("WCDMA", "UMTS"),
    ("UMTS", "UMTS"),
    ("TDSCDMA", "UMTS"),
    ("TD-SCDMA", "UMTS"),
    ("EDGE", "EDGE"),
    ("GPRS", "GPRS"),
    ("GSM", "GSM"),
)


def _rat(text: str) -> str:
    """A vendor's technology name in the status's words; empty when not recognised."""
    upper = text.upper().replace(" ", "")
    return next((rat for word, rat in _RAT_WORDS if word in upper), "")


def _fields(lines: Sequence[str], prefix: str) -> list[str] | None:
    """The comma-separated fields of the first line starting with ``prefix``, unquoted; None
    without one."""
    return next((reply_fields(line) for line in lines if line.startswith(prefix)), None)


def _network(plmn: str) -> str:
    digits = plmn.replace("-", "")
    if not re.fullmatch(r"\d{5,6}", digits):
        return ""
    return f"{digits[:3]}-{digits[3:]}"


def parse_qnwinfo(lines: Sequence[str]) -> RadioInfo | None:
    """Quectel ``+QNWINFO``; None without service or for anything else."""
    fields = _fields(lines, "+QNWINFO:")
    if fields is None or len(fields) < 3 or not (rat := _rat(fields[0])):
        return None
    return RadioInfo(rat, _network(fields[1]), fields[2])


_SYSINFOEX_SUBMODES: Mapping[int, str] = MappingProxyType(
    {1: "GSM", 2: "GPRS", 3: "EDGE", 41: "UMTS", 42: "HSDPA", 43: "HSUPA", 44: "HSPA", 45: "HSPA+"}
    | {46: "HSPA+", 61: "UMTS", 62: "HSDPA", 63: "HSUPA", 64: "HSPA", 65: "HSPA+", 101: "LTE"}
)
"""``^SYSINFOEX``'s ``<submode>`` numbers (Huawei's AT interface specification; 46 is DC-HSPA+,
61-65 the TD-SCDMA family, read as its WCDMA counterparts). The CDMA submodes (21-30) and WiMAX
(81) are not cellular technologies a recorder's status names."""

_SYSINFOEX_MODES: Mapping[int, str] = MappingProxyType({1: "GSM", 3: "UMTS", 4: "UMTS", 6: "LTE", 7: "LTE"})
"""``^SYSINFOEX``'s ``<sysmode>``: 1 GSM, 3 WCDMA, 4 TD-SCDMA, 6 LTE, 7 LTE (some firmwares); 2 CDMA
and 5 WiMAX are left out."""


def parse_sysinfoex(lines: Sequence[str]) -> RadioInfo | None:
    """Huawei ``^SYSINFOEX``; None without service.

    The numbers decide, as in ModemManager: ``<submode>`` first, then ``<sysmode>``. The names
    after them are only a hint, read when neither number is known: firmwares print names that
    disagree with the numbers (a reply in ModemManager's tests, ``...,3,WCDMA,41,HSPA+``, names
    HSPA+ for submode 41, plain WCDMA), and some (the E303) leave the names unquoted.
    """
    fields = _fields(lines, "^SYSINFOEX:")
    if fields is None or len(fields) < 6 or fields[0] not in ("1", "2") or fields[5] in ("", "0"):
        return None
    submode = int(fields[7]) if len(fields) > 7 and fields[7].isdigit() and len(fields[7]) < 4 else None
    sysmode = int(fields[5]) if fields[5].isdigit() and len(fields[5]) < 4 else None
    rat = (_SYSINFOEX_SUBMODES.get(submode, "") if submode is not None else "") or (
        _SYSINFOEX_MODES.get(sysmode, "") if sysmode is not None else ""
    )
    if not rat:
        rat = _rat(fields[8] if len(fields) > 8 else "") or (_rat(fields[6]) if len(fields) > 6 else "")
    return RadioInfo(rat) if rat else None


def parse_cpsi(lines: Sequence[str]) -> RadioInfo | None:
    """SIMCom ``+CPSI``; None without service."""
    fields = _fields(lines, "+CPSI:")
    if fields is None or len(fields) < 3 or not (rat := _rat(fields[0])):
        return None
    if rat == "GSM" and len(fields) > 5:
        band = re.sub(r"^\d+\s+", "", fields[5])  # "<arfcn> EGSM 900"
    else:
        band = next((f for f in fields[3:] if "BAND" in f.upper()), "")
    return RadioInfo(rat, _network(fields[2]), band)


_PARSERS: Mapping[str, Callable[[Sequence[str]], RadioInfo | None]] = MappingProxyType(
    {"AT+QNWINFO": parse_qnwinfo, "AT^SYSINFOEX": parse_sysinfoex, "AT+CPSI?": parse_cpsi}
)


def parse_radio_info(command: str, lines: Sequence[str]) -> RadioInfo | None:
    """The reply ``lines`` of ``command`` (one of the profiles' radio info commands); None when
    the modem reports no service or the command is not one of them."""
    parser = _PARSERS.get(command.upper())
    return parser(lines) if parser is not None else None
