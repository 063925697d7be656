"""What each AT command answers, and how long to wait: the specs the AT engine matches replies with.

A ``CommandSpec`` tells the engine which lines belong to the reply of one command (expected prefixes,
an optional shape the line must have, whether bare text lines count), how long the command may take
(its timeout class), whether it ends with a call result (``CONNECT``, ``NO CARRIER`` ...), whether it
asks for a ``> `` prompt, and which ``+CME ERROR``/``+CMS ERROR`` codes mean "busy, try again".

``spec_for("AT+CREG?")`` looks a command up in ``SPECS``. Extended commands that are not in the table
still get a sensible spec: their own name as the reply prefix (``AT+QCFG?`` expects ``+QCFG:``).
Timeouts follow the command families of 3GPP TS 27.007 and the vendor manuals: 3 s for local
queries, 20 s for SIM access and radio on/off, 180 s for operator selection, attach and dialling.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

DEFAULT_TIMEOUT = 3.0
"""Seconds: local queries and settings (``+CSQ``, ``+CREG?``, ``E0``)."""
SIM_TIMEOUT = 20.0
"""Seconds: commands that touch the SIM or the radio (``+CPIN``, ``+CRSM``, ``+CFUN=``)."""
NETWORK_TIMEOUT = 180.0
"""Seconds: commands that wait for the network (``+COPS``, ``+CGATT=``, ``ATD``, vendor dials, SMS)."""

CME_SIM_BUSY = 14
CME_PLEASE_WAIT = 515
"""Vendor code (Quectel, SIMCom): "please wait, init or command processing in progress"."""
CMS_SIM_BUSY = 314

_NAME = re.compile(r"AT([+^$*%#!][A-Z0-9_]+|&[A-Z]|[A-Z]?)(=\?|\?|=)?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """How the engine treats one command's reply. Times are in seconds.

    ``prefixes``: a line starting with one of these belongs to the reply (``+CSQ:``).
    ``reply_pattern``: a regular expression a prefixed line must also match to count as the reply;
    it tells ``+CREG: 0,1`` (reply to ``AT+CREG?``) from ``+CREG: 1`` (a URC).
    ``multiline``: more than one reply line may come (``+CGDCONT?``); otherwise a second matching
    line is routed as a URC.
    ``text_reply``: bare lines (no ``+``/``^`` lead, not a known URC) are reply lines (``ATI``,
    ``+CGSN``, ``+CIMI``).
    ``two_line_reply``: each prefixed reply line is followed by a body line (``+CMGR``, ``+CMGL``);
    in text mode the body may go on over more lines: bare lines after it belong to it.
    ``bodiless_pattern``: with ``two_line_reply``, a prefixed reply line that matches it has no
    body line after it (a PDU on the header line itself, a text-mode status report).
    ``prompt``: the modem asks for a payload with ``> `` (``+CMGS``, ``+CMGW``).
    ``call_results``: ``CONNECT``, ``NO CARRIER``, ``BUSY``, ``NO DIALTONE``, ``NO ANSWER`` end this
    command; for other commands ``NO CARRIER`` is a URC.
    ``retry_cme``/``retry_cms``: error codes that mean "busy, ask again"; the engine retries up to
    ``max_retries`` times, waiting ``backoff_initial`` doubled each time, at most ``backoff_max``.
    """

    prefixes: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    multiline: bool = False
    text_reply: bool = False
    reply_pattern: str | None = None
    two_line_reply: bool = False
    bodiless_pattern: str | None = None
    prompt: bool = False
    call_results: bool = False
    retry_cme: frozenset[int] = frozenset({CME_SIM_BUSY, CME_PLEASE_WAIT})
    retry_cms: frozenset[int] = frozenset({CMS_SIM_BUSY})
    max_retries: int = 4
    backoff_initial: float = 0.5
    backoff_max: float = 8.0

    def __post_init__(self) -> None:
        if not 0 < self.timeout <= 3600:
            raise ValueError(f"command timeout {self.timeout} s is out of range: use 0-3600 s")
        if self.max_retries < 0 or self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ValueError(
                "retry settings need max_retries >= 0 and 0 < backoff_initial <= backoff_max, "
                f"got {self.max_retries}, {self.backoff_initial}, {self.backoff_max}"
            )
        for name, pattern in (
            ("reply_pattern", self.reply_pattern),
            ("bodiless_pattern", self.bodiless_pattern),
        ):
            if pattern is None:
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{name} {pattern!r} is not a valid regex: {exc}") from exc

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        return float(min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1)))


def command_name(text: str) -> tuple[str, str]:
    """Split a command line into its first command's name and form.

    ``AT+CREG?`` → ``("+CREG", "?")``, ``AT+COPS=?`` → ``("+COPS", "=?")``, ``ATD*99#`` →
    ``("D", "")``, ``AT`` → ``("", "")``. Names are upper case. Text that does not start with
    ``AT`` gives ``("", "")``.
    """
    match = _NAME.match(text.strip())
    if match is None:
        return "", ""
    return match.group(1).upper(), match.group(2) or ""


def _registration(name: str) -> CommandSpec:
    # Reply: +CREG: <n>,<stat>[,...]; URC: +CREG: <stat>[,"<lac>",...]. The reply's second
    # field is a bare number, a URC's is absent or a quoted area code.
    return CommandSpec(prefixes=(f"{name}:",), reply_pattern=rf"^\{name}: *\d+ *, *\d+")


def _stored_sms(name: str, multiline: bool) -> CommandSpec:
    # 27.005 3.4.2/3.4.3: a header line, then the PDU (PDU mode) or the text (text mode). No body
    # follows a header that carries the PDU after a blank (ModemManager's
    # test_cmgr_response_generic), nor a text-mode status report (<stat> then a bare <fo>).
    bodiless = rf'^\{name}:(?:.*,\s*\d+\s+[0-9A-Fa-f]+\s*$|\s*(?:\d+\s*,\s*)?"[^"]*"\s*,\s*\d+\s*,)'
    return CommandSpec(
        prefixes=(f"{name}:",),
        two_line_reply=True,
        bodiless_pattern=bodiless,
        multiline=multiline,
        timeout=SIM_TIMEOUT,
    )


def _build() -> dict[tuple[str, str], CommandSpec]:
    text = CommandSpec(text_reply=True)
    sim = CommandSpec(timeout=SIM_TIMEOUT)
    table: dict[tuple[str, str], CommandSpec] = {
        ("", ""): CommandSpec(),
        ("D", ""): CommandSpec(timeout=NETWORK_TIMEOUT, call_results=True),
        ("A", ""): CommandSpec(timeout=NETWORK_TIMEOUT, call_results=True),
        ("H", ""): CommandSpec(timeout=SIM_TIMEOUT),
        ("I", ""): CommandSpec(text_reply=True, multiline=True),
        ("Z", ""): CommandSpec(),
        ("&F", ""): CommandSpec(),
        ("+CGDATA", "="): CommandSpec(timeout=NETWORK_TIMEOUT, call_results=True),
        ("+CPIN", "?"): CommandSpec(prefixes=("+CPIN:",), timeout=SIM_TIMEOUT),
        ("+CPIN", "="): sim,
        ("+CIMI", ""): replace(text, timeout=SIM_TIMEOUT),
        ("+CRSM", "="): CommandSpec(prefixes=("+CRSM:",), timeout=SIM_TIMEOUT),
        ("+CSIM", "="): CommandSpec(prefixes=("+CSIM:",), timeout=SIM_TIMEOUT),
        ("+CFUN", "="): sim,
        ("+COPS", "="): CommandSpec(timeout=NETWORK_TIMEOUT),
        ("+COPS", "=?"): CommandSpec(prefixes=("+COPS:",), timeout=NETWORK_TIMEOUT),
        ("+CGATT", "="): CommandSpec(timeout=NETWORK_TIMEOUT),
        ("+CGACT", "="): CommandSpec(timeout=NETWORK_TIMEOUT),
        ("+CGACT", "?"): CommandSpec(prefixes=("+CGACT:",), multiline=True),
        ("+CGDCONT", "?"): CommandSpec(prefixes=("+CGDCONT:",), multiline=True),
        ("+CNUM", ""): CommandSpec(prefixes=("+CNUM:",), multiline=True),  # a line per number
        ("+CGPADDR", ""): CommandSpec(prefixes=("+CGPADDR:",), multiline=True),
        ("+CGPADDR", "="): CommandSpec(prefixes=("+CGPADDR:",), multiline=True),
        ("+CGCONTRDP", ""): CommandSpec(prefixes=("+CGCONTRDP:",), multiline=True),
        ("+CGCONTRDP", "="): CommandSpec(prefixes=("+CGCONTRDP:",), multiline=True),
        ("+CMGS", "="): CommandSpec(prefixes=("+CMGS:",), prompt=True, timeout=NETWORK_TIMEOUT),
        ("+CMGW", "="): CommandSpec(prefixes=("+CMGW:",), prompt=True, timeout=SIM_TIMEOUT),
        ("+CMGW", ""): CommandSpec(prefixes=("+CMGW:",), prompt=True, timeout=SIM_TIMEOUT),
        ("+CMGR", "="): _stored_sms("+CMGR", multiline=False),
        ("+CMGL", "="): _stored_sms("+CMGL", multiline=True),
        ("+CMGL", ""): _stored_sms("+CMGL", multiline=True),
        # SMS storage and character sets (27.005 3.2.2, 27.007 5.5): the SIM is asked
        ("+CPMS", "?"): CommandSpec(prefixes=("+CPMS:",), timeout=SIM_TIMEOUT),
        ("+CPMS", "=?"): CommandSpec(prefixes=("+CPMS:",), timeout=SIM_TIMEOUT),
        ("+CPMS", "="): CommandSpec(prefixes=("+CPMS:",), timeout=SIM_TIMEOUT),
        ("+CSCS", "=?"): CommandSpec(prefixes=("+CSCS:",)),
        ("+CMGD", "="): sim,
        # vendor dials and resets (Quectel, SIMCom, Huawei manuals)
        ("+QNETDEVCTL", "="): CommandSpec(prefixes=("+QNETDEVCTL:",), timeout=NETWORK_TIMEOUT),
        ("$QCRMCALL", "="): CommandSpec(prefixes=("$QCRMCALL:",), timeout=NETWORK_TIMEOUT),
        ("^NDISDUP", "="): CommandSpec(prefixes=("^NDISDUP:",), timeout=NETWORK_TIMEOUT),
        ("+CNETSTART", ""): CommandSpec(prefixes=("+CNETSTART:",), timeout=NETWORK_TIMEOUT),
        ("+CRESET", ""): sim,
        ("^RESET", ""): sim,
        ("+QPOWD", ""): sim,
        ("+QPOWD", "="): sim,
    }
    for name in ("+CREG", "+CGREG", "+CEREG", "+C5GREG"):
        table[(name, "?")] = _registration(name)
    # identity: some firmwares prefix the value ("+CGSN: 86..."), most send it bare
    for name in ("+CGMI", "+CGMM", "+CGMR", "+CGSN", "+GMI", "+GMM", "+GMR", "+GSN"):
        table[(name, "")] = CommandSpec(prefixes=(f"{name}:",), text_reply=True)
    table[("+CGSN", "=")] = CommandSpec(prefixes=("+CGSN:",), text_reply=True)
    for name in ("+CCID", "+ICCID", "+QCCID", "^ICCID", "+CICCID"):
        table[(name, "")] = CommandSpec(prefixes=(f"{name}:",), text_reply=True, timeout=SIM_TIMEOUT)
        table[(name, "?")] = CommandSpec(prefixes=(f"{name}:",), text_reply=True, timeout=SIM_TIMEOUT)
    return table


SPECS: Mapping[tuple[str, str], CommandSpec] = MappingProxyType(_build())
"""Known commands by (name, form); read-only."""


def spec_for(text: str) -> CommandSpec:
    """The spec of a command line (its first command when several are chained).

    Unknown extended commands expect their own name as reply prefix, and several lines for the
    test form ``=?``; unknown basic commands expect no information lines.
    """
    name, form = command_name(text)
    known = SPECS.get((name, form))
    if known is not None:
        return known
    if name[:1] in ("+", "^", "$", "*", "%", "#", "!"):
        return CommandSpec(prefixes=(f"{name}:",), multiline=form == "=?")
    return CommandSpec()
