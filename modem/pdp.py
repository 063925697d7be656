"""Packet-domain and radio replies: ``+CFUN?``, ``+CGDCONT=?``, ``+CGDCONT?``, ``+CGACT?`` and the
``+CGEV`` event reports (3GPP TS 27.007 8.2, 10.1.1, 10.1.10, 10.1.19). Pure parsers: the manager
sends the commands and acts on what these return.

- ``+CFUN: <fun>[,<rst>]``: 1 is full function, 0 minimum (radio and often SIM off), 4 the
  transmitter and receiver off (flight mode); anything else is a vendor mode.
- ``+CGDCONT: (<cid ranges>),"<PDP_type>",...``, one line per PDP type, answers ``=?``;
  ``+CGDCONT: <cid>,"<PDP_type>","<APN>",...``, one line per defined context, answers ``?``.
- ``+CGACT: <cid>,<state>``, one line per defined context.
- ``+CGEV: ...`` arrives unsolicited once ``AT+CGEREP=2,1`` is set: it is how an ECM/NDIS modem
  says the network took the data context down, where no ``NO CARRIER`` comes. The forms (27.007
  10.1.19): ``NW DEACT <PDP_type>, <PDP_addr>[, <cid>]`` and ``ME DEACT`` (pre-Release 8),
  ``NW PDN DEACT <cid>`` and ``ME PDN DEACT`` (Release 8 and later), ``NW DEACT <p_cid>, <cid>,
  <event_type>`` for a secondary context, ``NW DETACH``, and their ``ACT``/``REACT``/``REJECT``/
  ``MODIFY``/``CLASS`` siblings. ModemManager's parser reads the ``+CGEV:`` prefix as optional,
  and so does this one.

None of these ever raises on what a modem sends: a line that does not parse gives ``None`` or is
left out.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dvrlink.protocol.at_results import reply_fields

PDP_TYPES = ("IP", "IPV6", "IPV4V6")
"""The PDP types a data call can use; ``PPP`` and vendor types in a ``+CGDCONT=?`` reply are left
out, as ModemManager does."""


class RadioPower(enum.Enum):
    """What ``+CFUN?`` says of the radio."""

    ON = "on"
    OFF = "off"
    LOW = "low power"
    OTHER = "a vendor mode"


_POWER = {1: RadioPower.ON, 0: RadioPower.OFF, 4: RadioPower.LOW}


@dataclass(frozen=True, slots=True)
class FunctionalityLevel:
    """A ``+CFUN?`` reply: ``fun`` as the modem gave it."""

    fun: int

    @property
    def power(self) -> RadioPower:
        return _POWER.get(self.fun, RadioPower.OTHER)


def _int(text: str) -> int | None:
    text = text.strip().strip('"').strip()
    return int(text) if text.isdigit() and len(text) <= 9 else None


def parse_cfun(lines: Sequence[str]) -> FunctionalityLevel | None:
    """The ``+CFUN:`` line of a ``+CFUN?`` reply; None without one."""
    for line in lines:
        if line.upper().startswith("+CFUN:"):
            fun = _int(reply_fields(line)[0])
            return FunctionalityLevel(fun) if fun is not None else None
    return None


@dataclass(frozen=True, slots=True)
class ContextFormat:
    """One line of ``+CGDCONT=?``: a PDP type and the context ids it may use."""

    pdp_type: str
    cid_ranges: tuple[tuple[int, int], ...]

    @property
    def min_cid(self) -> int:
        return self.cid_ranges[0][0]

    @property
    def max_cid(self) -> int:
        """The end of the first range: the contiguous ids a dial may pick from (a Cinterion PHS8
        also offers 101-116, which are for its internal use)."""
        return self.cid_ranges[0][1]


_CGDCONT_TEST = re.compile(r'\+CGDCONT:\s*\(([^)]*)\)\s*,\s*"?\s*([A-Za-z0-9]+)\s*"?', re.IGNORECASE)


def _ranges(text: str) -> tuple[tuple[int, int], ...]:
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = _int(low), _int(high or low)
        if first is None or last is None or last < first:
            return ()
        ranges.append((first, last))
    return tuple(ranges)


def parse_cgdcont_test(lines: Sequence[str]) -> tuple[ContextFormat, ...]:
    """The PDP types a ``+CGDCONT=?`` reply offers for data, with their context ids."""
    formats: list[ContextFormat] = []
    for line in lines:
        match = _CGDCONT_TEST.match(line.strip())
        if match is None:
            continue
        pdp_type = match.group(2).upper()
        ranges = _ranges(match.group(1))
        if pdp_type in PDP_TYPES and ranges:
            formats.append(ContextFormat(pdp_type, ranges))
    return tuple(formats)


@dataclass(frozen=True, slots=True)
class PdpContext:
    """One line of ``+CGDCONT?``; ``apn`` is empty where the context names none."""

    cid: int
    pdp_type: str
    apn: str


def parse_cgdcont_read(lines: Sequence[str]) -> tuple[PdpContext, ...]:
    """The contexts a ``+CGDCONT?`` reply lists."""
    contexts: list[PdpContext] = []
    for line in lines:
        if not line.upper().startswith("+CGDCONT:"):
            continue
        fields = reply_fields(line)
        cid = _int(fields[0])
        if cid is None or len(fields) < 2:
            continue
        contexts.append(PdpContext(cid, fields[1].upper(), fields[2] if len(fields) > 2 else ""))
    return tuple(contexts)


def parse_cgact_read(lines: Sequence[str]) -> dict[int, bool]:
    """Each listed context id of a ``+CGACT?`` reply, and whether it is active."""
    states: dict[int, bool] = {}
    for line in lines:
        if not line.upper().startswith("+CGACT:"):
            continue
        fields = reply_fields(line)
        cid = _int(fields[0])
        state = _int(fields[1]) if len(fields) > 1 else None
        if cid is not None and state in (0, 1):
            states[cid] = state == 1
    return states


_OPERATOR_SUFFIX = re.compile(r"\.mnc\d{3}\.mcc\d{3}\.gprs", re.IGNORECASE)


def apn_matches(requested: str, existing: str) -> bool:
    """Whether the APN a modem reports for a context (``existing``) is the one set
    (``requested``): the same name in any case, or with the operator identifier
    (``.mnc<MNC>.mcc<MCC>.gprs``, 3GPP TS 23.003 9.1.2) that networks append. An empty APN
    (the network picks one) matches only an empty one."""
    if not requested or not existing:
        return not requested and not existing  # none set and none reported is a match
    want, have = requested.lower(), existing.lower()
    if have == want:
        return True
    return have.startswith(want + ".") and _OPERATOR_SUFFIX.fullmatch(have[len(want) :]) is not None


class CgevKind(enum.Enum):
    """The kinds of ``+CGEV`` report (27.007 10.1.19)."""

    REJECT = "REJECT"
    NW_REACT = "NW REACT"
    NW_DEACT_PDP = "NW DEACT"
    ME_DEACT_PDP = "ME DEACT"
    NW_ACT_PRIMARY = "NW PDN ACT"
    ME_ACT_PRIMARY = "ME PDN ACT"
    NW_DEACT_PRIMARY = "NW PDN DEACT"
    ME_DEACT_PRIMARY = "ME PDN DEACT"
    NW_ACT_SECONDARY = "NW ACT"
    ME_ACT_SECONDARY = "ME ACT"
    NW_DEACT_SECONDARY = "NW DEACT (secondary)"
    ME_DEACT_SECONDARY = "ME DEACT (secondary)"
    NW_MODIFY = "NW MODIFY"
    ME_MODIFY = "ME MODIFY"
    NW_DETACH = "NW DETACH"
    ME_DETACH = "ME DETACH"
    NW_CLASS = "NW CLASS"
    ME_CLASS = "ME CLASS"


CONTEXT_ENDED = frozenset(
    {
        CgevKind.NW_DEACT_PDP,
        CgevKind.ME_DEACT_PDP,
        CgevKind.NW_DEACT_PRIMARY,
        CgevKind.ME_DEACT_PRIMARY,
        CgevKind.NW_DETACH,
        CgevKind.ME_DETACH,
    }
)
"""Reports after which a primary context (the data call) no longer carries data. A detach ends
every context; a secondary context's end leaves its primary up."""


@dataclass(frozen=True, slots=True)
class PacketDomainEvent:
    """One ``+CGEV`` report. ``cid`` is None where the report names no context (a detach, or a
    pre-Release 8 ``NW DEACT`` without its optional ``<cid>``)."""

    kind: CgevKind
    cid: int | None = None
    parent_cid: int | None = None
    event_type: int | None = None
    pdp_type: str = ""
    address: str = ""
    detail: str = ""
    """The rest of the line: a ``CLASS`` report's class, a ``MODIFY`` report's fields."""

    @property
    def ends_context(self) -> bool:
        return self.kind in CONTEXT_ENDED

    def concerns(self, cid: int) -> bool:
        """Whether the report is about context ``cid`` (or names none, so may be)."""
        return self.cid is None or self.cid == cid


# Longest prefixes first: "NW PDN DEACT" before "NW DEACT", "NW DEACT" before "NW DETACH" is safe
_PREFIXES: tuple[tuple[str, CgevKind], ...] = (
    ("NW PDN DEACT", CgevKind.NW_DEACT_PRIMARY),
    ("ME PDN DEACT", CgevKind.ME_DEACT_PRIMARY),
    ("NW PDN ACT", CgevKind.NW_ACT_PRIMARY),
    ("ME PDN ACT", CgevKind.ME_ACT_PRIMARY),
    ("NW DETACH", CgevKind.NW_DETACH),
    ("ME DETACH", CgevKind.ME_DETACH),
    ("NW REACT", CgevKind.NW_REACT),
    ("NW DEACT", CgevKind.NW_DEACT_PDP),
    ("ME DEACT", CgevKind.ME_DEACT_PDP),
    ("NW ACT", CgevKind.NW_ACT_SECONDARY),
    ("ME ACT", CgevKind.ME_ACT_SECONDARY),
    ("NW MODIFY", CgevKind.NW_MODIFY),
    ("ME MODIFY", CgevKind.ME_MODIFY),
    ("NW CLASS", CgevKind.NW_CLASS),
    ("ME CLASS", CgevKind.ME_CLASS),
    ("REJECT", CgevKind.REJECT),
)
_SECONDARY = {
    CgevKind.NW_DEACT_PDP: CgevKind.NW_DEACT_SECONDARY,
    CgevKind.ME_DEACT_PDP: CgevKind.ME_DEACT_SECONDARY,
}


def parse_cgev(line: str) -> PacketDomainEvent | None:
    """A ``+CGEV`` report, with or without its ``+CGEV:`` prefix; None for anything else."""
    text = line.strip()
    if text.upper().startswith("+CGEV:"):
        text = text[len("+CGEV:") :].strip()
    upper = text.upper()
    found = next(((p, k) for p, k in _PREFIXES if upper == p or upper.startswith(p + " ")), None)
    if found is None:
        return None
    prefix, kind = found
    rest = text[len(prefix) :].strip()
    fields = [f.strip().strip('"') for f in rest.split(",")] if rest else []
    if kind in (CgevKind.NW_DETACH, CgevKind.ME_DETACH):
        return PacketDomainEvent(kind)
    if kind in (CgevKind.NW_CLASS, CgevKind.ME_CLASS, CgevKind.NW_MODIFY, CgevKind.ME_MODIFY):
        cid = _int(fields[0]) if kind in (CgevKind.NW_MODIFY, CgevKind.ME_MODIFY) and fields else None
        return PacketDomainEvent(kind, cid=cid, detail=rest)
    if kind in (CgevKind.NW_DEACT_PDP, CgevKind.ME_DEACT_PDP) and fields and _int(fields[0]) is not None:
        kind = _SECONDARY[kind]  # "NW DEACT <p_cid>, <cid>, <event_type>": all numbers
    if kind in (
        CgevKind.NW_ACT_SECONDARY,
        CgevKind.ME_ACT_SECONDARY,
        CgevKind.NW_DEACT_SECONDARY,
        CgevKind.ME_DEACT_SECONDARY,
    ):
        numbers = [_int(f) for f in fields[:3]]
        if len(numbers) < 3 or None in numbers:
            return None
        return PacketDomainEvent(kind, cid=numbers[1], parent_cid=numbers[0], event_type=numbers[2])
    if kind in (
        CgevKind.NW_ACT_PRIMARY,
        CgevKind.ME_ACT_PRIMARY,
        CgevKind.NW_DEACT_PRIMARY,
        CgevKind.ME_DEACT_PRIMARY,
    ):
        cid = _int(fields[0]) if fields else None
        return PacketDomainEvent(kind, cid=cid, detail=",".join(fields[1:])) if cid is not None else None
    # REJECT, NW REACT, NW/ME DEACT: <PDP_type>, <PDP_addr>[, <cid>]
    if len(fields) < 2 or not fields[0]:
        return None
    cid = _int(fields[2]) if len(fields) > 2 else None
    return PacketDomainEvent(kind, cid=cid, pdp_type=fields[0].upper(), address=fields[1])
