"""Parsers of 3GPP TS 27.007 replies the modem manager reads: registration (``+CREG``,
``+CGREG``, ``+CEREG``, ``+C5GREG``), operator (``+COPS``), signal (``+CSQ``, ``+CESQ``),
identity (``+CGSN``, ``+CGMI``...), the ICCID (vendor commands and ``+CRSM`` reading EF_ICCID),
EF_AD, ``+CSPN`` and the SIM's own number (``+CNUM``); and the status numbers they carry. Pure
functions: bad replies give None, "" or (), never an exception."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dvrlink.modem.apn import mnc_length_from_ef_ad
from dvrlink.protocol.at_results import reply_fields

CME_NO_NETWORK = 30
"""``+CME ERROR: 30`` (no network service) to a dial: register again before the next call."""

STAT_NOT_REGISTERED = 0
STAT_HOME = 1
STAT_SEARCHING = 2
STAT_DENIED = 3
STAT_UNKNOWN = 4
STAT_ROAMING = 5
STAT_HOME_SMS_ONLY = 6
STAT_ROAMING_SMS_ONLY = 7
STAT_EMERGENCY_ONLY = 8
STAT_HOME_CSFB_NOT_PREFERRED = 9
STAT_ROAMING_CSFB_NOT_PREFERRED = 10
STAT_RLOS = 11
"""Attached for access to restricted local operator services only: no data."""
HOME_STATS = frozenset({STAT_HOME, STAT_HOME_CSFB_NOT_PREFERRED})
ROAMING_STATS = frozenset({STAT_ROAMING, STAT_ROAMING_CSFB_NOT_PREFERRED})
REGISTERED_STATS = HOME_STATS | ROAMING_STATS
"""Registered for data (on a packet-domain line: +CGREG, +CEREG, +C5GREG)."""
SMS_STATS = REGISTERED_STATS | {STAT_HOME_SMS_ONLY, STAT_ROAMING_SMS_ONLY}
"""Registered for SMS (on +CREG, or any registration line)."""
PS_REG_NAMES = ("+CGREG", "+CEREG", "+C5GREG")
REG_NAMES = ("+CREG", *PS_REG_NAMES)
LIMITED_REGISTRATION: dict[int, str] = {
    STAT_RLOS: (
        "attached for restricted local operator services only (3GPP status 11), which carry no"
        " data: waiting for a full registration; check the SIM's subscription and the coverage"
    ),
    STAT_EMERGENCY_ONLY: (
        "attached for emergency services only (3GPP status 8): waiting for a full registration;"
        " check the SIM's subscription and the coverage"
    ),
    STAT_HOME_SMS_ONLY: (
        "registered for SMS only (3GPP status 6): waiting for a packet-domain registration for data"
    ),
    STAT_ROAMING_SMS_ONLY: (
        "registered for SMS only, roaming (3GPP status 7): waiting for a packet-domain registration for data"
    ),
}
"""Attached, but not for data: what ``status().detail`` says while registering."""

# 3GPP TS 27.007 <AcT> values, as a short radio technology name.
ACT_NAMES: dict[int, str] = {
    0: "GSM",
    1: "GSM",
    2: "UMTS",
    3: "EDGE",
    4: "HSDPA",
    5: "HSUPA",
    6: "HSPA",
    7: "LTE",
    8: "EC-GSM-IoT",
    9: "NB-IoT",
    10: "LTE",
    11: "NR",
    12: "NR",
    13: "LTE",
}


# ICCID rules as ModemManager's mm_3gpp_parse_iccid: 19 or 20 characters, digits, and hex digits
# only in the operator's account part (CMCC and others use them), from the 7th character on.
_ICCID = re.compile(r"^[0-9]{6}[0-9A-F]{13,14}$")
_IMEI = re.compile(r"^[0-9]{15}$")


@dataclass(frozen=True, slots=True)
class RegInfo:
    stat: int
    act: int | None = None


def parse_registration(line: str, *, reply: bool) -> RegInfo | None:
    """``+CREG: [<n>,]<stat>[,<lac>,<ci>[,<AcT>]]`` → stat and AcT; None when malformed.

    Whether ``<n>`` leads is told from the field count and from the second field, as
    ModemManager does: a ``<stat>`` is a short bare number (0-11), a ``<lac>``/``<tac>`` is
    quoted, hexadecimal or longer. Some modems send ``<n>`` in URCs too
    (``+CGREG: 2,1, 81ED, 1A9CEB``), some answer ``+CREG?`` with zero-padded fields
    (``+CREG:002,001,"18d8","ffff"``). ``reply`` (the line answers a ``?`` query) decides only
    what the fields cannot: a zero-padded second field such as ``0001``. Extra fields are known:
    ``<rac>`` after ``<AcT>`` in ``+CGREG``, ``<rac>`` before ``<ci>`` in ``+CEREG``, and the
    NSSAI after ``+C5GREG``'s ``<AcT>``. A ``<stat>`` above 11 reads as 4 (unknown).
    """
    if ":" not in line:
        return None
    name, body = line.split(":", 1)
    raw = [field.strip() for field in body.split(",")]
    count = len(raw)
    if count <= 2:
        has_n = count == 2
    elif count == 3:
        has_n = False
    else:
        has_n = _registration_has_n(raw[1], reply=reply)
    stat = _reg_number(raw[1] if has_n else raw[0])
    if stat is None or (has_n and _reg_number(raw[0]) is None):
        return None
    rest = raw[2:] if has_n else raw[1:]
    act_index = 2
    if name.strip().upper() == "+CEREG" and count == (6 if has_n else 5):
        act_index = 3  # <tac>,<rac>,<ci>,<AcT>
    act = _reg_number(rest[act_index]) if len(rest) > act_index else None
    return RegInfo(stat if stat <= STAT_RLOS else STAT_UNKNOWN, act)


def _reg_number(field: str) -> int | None:
    """A bare decimal field (``001`` → 1); None when quoted, empty or not a number."""
    field = field.strip()
    return int(field) if field.isdigit() else None


def _registration_has_n(second: str, *, reply: bool) -> bool:
    """Whether the second field of a registration line is its ``<stat>`` (then ``<n>`` leads)."""
    value = _reg_number(second)
    if value is None or value > STAT_RLOS:
        return False  # quoted, hexadecimal or too large: a <lac>/<tac>
    if len(second.strip()) <= 2:
        return True
    return reply  # "001" or "0001": a zero-padded <stat> in a reply, a <lac> in a URC


def csq_to_dbm(line: str) -> int | None:
    """``+CSQ: <rssi>,<ber>`` → dBm (−113 + 2·rssi), None for 99 or a malformed line."""
    fields = reply_fields(line)
    if not fields or not fields[0].isdigit():
        return None
    rssi = int(fields[0])
    if rssi > 31:
        return None
    return -113 + 2 * rssi


def cesq_to_dbm(line: str) -> int | None:
    """``+CESQ: <rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp>`` → the best-known power in dBm:
    RSRP (LTE), else RSCP (UMTS), else RXLEV (GSM); None when none is known."""
    fields = reply_fields(line)
    if len(fields) < 6 or not all(f.isdigit() for f in fields[:6]):
        return None
    rxlev, rscp, rsrp = int(fields[0]), int(fields[2]), int(fields[5])
    if rsrp <= 97:
        return -141 + rsrp
    if rscp <= 96:
        return -121 + rscp
    if rxlev <= 63:
        return -111 + rxlev
    return None


def parse_cops(line: str) -> tuple[str, int | None]:
    """``+COPS: <mode>[,<format>,<oper>[,<AcT>]]`` → operator and AcT ("" when none)."""
    fields = reply_fields(line)
    operator = fields[2] if len(fields) > 2 else ""
    act = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else None
    return operator, act


def luhn_valid(digits: str) -> bool:
    """Whether the last digit of ``digits`` is its Luhn check digit (ICCID, IMEI); False for non-digits."""
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def normalize_iccid(raw: str) -> str | None:
    """The ICCID in one reply value, or None when it is not one (ModemManager's rules).

    Quotes and spaces are dropped and hex digits upper-cased. It must start with the telecom
    industry identifier 89; a value starting with 98 is the raw, nibble-swapped EF_ICCID and is
    swapped back (only 20 characters long, like every +CRSM read). A trailing ``F`` filler of a
    19-digit ICCID is dropped. The Luhn digit is not checked here: see :func:`luhn_valid`.
    """
    value = raw.strip().strip('"').strip().upper()
    if not _ICCID.match(value):
        return None
    if value.startswith("98"):
        if len(value) != 20:
            return None
        value = "".join(value[i + 1] + value[i] for i in range(0, 20, 2))
    elif not value.startswith("89"):
        return None
    if value.endswith("F"):
        value = value[:-1]
    return value


def parse_iccid(lines: tuple[str, ...]) -> str | None:
    """The ICCID in a vendor reply (``+QCCID: 8949...``, ``^ICCID: ...``, bare digits), or None."""
    for line in lines:
        value = line.split(":", 1)[1] if ":" in line else line
        iccid = normalize_iccid(value)
        if iccid is not None:
            return iccid
    return None


def parse_ef_iccid(lines: tuple[str, ...]) -> str | None:
    """The ICCID from ``+CRSM: 144,0,"<EF_ICCID>"`` (BCD with swapped nibbles), or None."""
    for line in lines:
        fields = reply_fields(line)
        if len(fields) >= 3 and fields[0] == "144":
            iccid = normalize_iccid(fields[2])
            if iccid is not None:
                return iccid
    return None


def parse_imei(lines: tuple[str, ...]) -> str:
    """The IMEI in a ``+CGSN`` reply (``86...``, ``+CGSN: "86..."``), or "" when there is none.

    An IMEI is 15 digits; some modems append their serial number (``356936001568843,NL2A62Z0N5``),
    which is dropped. CDMA ESN/MEID replies and text that is not an IMEI give "". The Luhn digit is
    not checked here (the manager logs a bad one): see :func:`luhn_valid`.
    """
    value = strip_identity(lines)
    first = value.split(",", 1)[0].strip().strip('"')
    return first if _IMEI.match(first) else ""


def parse_ef_ad(lines: tuple[str, ...]) -> tuple[bool, int | None]:
    """``(read, mnc_length)`` from ``+CRSM`` reading EF_AD: read False when the SIM refused."""
    for line in lines:
        fields = reply_fields(line)
        if len(fields) >= 2 and fields[0] == "144":
            data = fields[2] if len(fields) > 2 else ""
            try:
                return True, mnc_length_from_ef_ad(data)
            except ValueError:
                return True, None
    return False, None


def parse_cspn(lines: tuple[str, ...]) -> str:
    for line in lines:
        if line.startswith("+CSPN:"):
            return reply_fields(line)[0]
    return ""


def strip_identity(lines: tuple[str, ...]) -> str:
    """The value of an identity reply (``+CGSN: 86...`` or the bare text)."""
    for line in lines:
        text = line.split(":", 1)[1].strip() if line.startswith("+") and ":" in line else line.strip()
        if text:
            return text.strip('"')
    return ""


_CNUM = re.compile(
    r'^\+CNUM:\s*(?:"(?P<alpha>[^"]*)"|(?P<bare>[^,"]*))\s*,\s*"?(?P<number>[^",]*)"?\s*,\s*(?P<type>\d{1,3})'
)
_E164_BODY = re.compile(r"[1-9][0-9]{5,14}")
TYPE_INTERNATIONAL = 145
"""``<type>`` of a number with its country code (TS 24.008 type of number 1, ISDN plan)."""


@dataclass(frozen=True, slots=True)
class OwnNumber:
    """One line of ``+CNUM`` (3GPP TS 27.007 7.1): a number of this subscriber, as the SIM keeps
    it (EF_MSISDN; the operator or the user writes it, and many SIMs hold none)."""

    number: str
    type: int
    """145: international (the number has its country code), 129: unknown or national."""
    alpha: str = ""
    """The label stored with it (``"Voice"``, ``"Line 1"``), often empty."""

    def e164(self, country_code: str | None = None) -> str | None:
        """The number as +E.164, or None when it cannot be made one: a national number (a leading
        0) needs ``country_code`` (digits, ``"49"``); a number in another form is not guessed."""
        digits = re.sub(r"[\s\-().]", "", self.number)
        if digits.startswith("+"):
            body = digits[1:]
        elif digits.startswith("00"):
            body = digits[2:]
        elif self.type == TYPE_INTERNATIONAL:
            body = digits
        elif country_code and digits.startswith("0") and not digits.startswith("00"):
            body = country_code + digits[1:]
        else:
            return None
        return "+" + body if _E164_BODY.fullmatch(body) else None


def parse_cnum(lines: tuple[str, ...]) -> tuple[OwnNumber, ...]:
    """The numbers of a ``+CNUM`` reply, in order; () for an empty reply (the SIM stores no
    number: only ``OK``) or lines that are not ``+CNUM:`` (a modem's echo or noise). A line with
    an empty number (``+CNUM: "","",129``) is left out."""
    found: list[OwnNumber] = []
    for line in lines:
        match = _CNUM.match(line.strip())
        if match is None or not match.group("number").strip():
            continue
        alpha = match.group("alpha") if match.group("alpha") is not None else (match.group("bare") or "")
        found.append(OwnNumber(match.group("number").strip(), int(match.group("type")), alpha.strip()))
    return tuple(found)
