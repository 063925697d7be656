"""Final result codes of V.250 and 3GPP TS 27.007/27.005 (``OK``, ``ERROR``, ``+CME ERROR: 10``,
``+CMS ERROR: 330``, ``CONNECT``, ``NO CARRIER``...) and the fields of an information line.
Pure functions: a line that is not a final result gives None, never an exception."""

from __future__ import annotations

import enum
from dataclasses import dataclass

# 3GPP TS 27.007 section 9.2 and TS 27.005 section 3.2.5: verbose texts of the error codes the
# engine and the modem state machine act on, lower case.
CME_TEXTS: dict[str, int] = {
    "phone failure": 0,
    "no connection to phone": 1,
    "operation not allowed": 3,
    "operation not supported": 4,
    "ph-sim pin required": 5,
    "sim not inserted": 10,
    "sim pin required": 11,
    "sim puk required": 12,
    "sim failure": 13,
    "sim busy": 14,
    "sim wrong": 15,
    "incorrect password": 16,
    "sim pin2 required": 17,
    "sim puk2 required": 18,
    "memory full": 20,
    "invalid index": 21,
    "not found": 22,
    "memory failure": 23,
    "text string too long": 24,
    "invalid characters in text string": 25,
    "dial string too long": 26,
    "invalid characters in dial string": 27,
    "no network service": 30,
    "network timeout": 31,
    "network not allowed - emergency calls only": 32,
    "unknown": 100,
    "please wait, init or command processing in progress": 515,
}
CMS_TEXTS: dict[str, int] = {
    "me failure": 300,
    "sms service of me reserved": 301,
    "operation not allowed": 302,
    "operation not supported": 303,
    "invalid pdu mode parameter": 304,
    "invalid text mode parameter": 305,
    "sim not inserted": 310,
    "sim pin required": 311,
    "sim failure": 313,
    "sim busy": 314,
    "sim wrong": 315,
    "memory failure": 320,
    "invalid memory index": 321,
    "memory full": 322,
    "smsc address unknown": 330,
    "no network service": 331,
    "network timeout": 332,
    "no +cnma acknowledgement expected": 340,
    "unknown error": 500,
}


class FinalKind(enum.Enum):
    """The final result codes of V.250 and 3GPP TS 27.007/27.005."""

    OK = "OK"
    ERROR = "ERROR"
    CME_ERROR = "+CME ERROR"
    CMS_ERROR = "+CMS ERROR"
    CONNECT = "CONNECT"
    NO_CARRIER = "NO CARRIER"
    BUSY = "BUSY"
    NO_DIALTONE = "NO DIALTONE"
    NO_ANSWER = "NO ANSWER"


CALL_RESULTS = frozenset(
    {FinalKind.CONNECT, FinalKind.NO_CARRIER, FinalKind.BUSY, FinalKind.NO_DIALTONE, FinalKind.NO_ANSWER}
)


@dataclass(frozen=True, slots=True)
class FinalResult:
    """The line that ended a command.

    ``code`` is the numeric ``+CME``/``+CMS`` error (taken from the verbose text when the modem
    uses ``+CMEE=2``; None for a text the tables do not know); ``detail`` is what follows the
    keyword: the verbose error text, or the rate after ``CONNECT``.
    """

    kind: FinalKind
    line: str
    code: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True for ``OK`` and ``CONNECT``."""
        return self.kind in (FinalKind.OK, FinalKind.CONNECT)


def parse_final(line: str) -> FinalResult | None:
    """The final result a line is, or None. Never raises."""
    text = line.strip()
    upper = text.upper()
    for kind in (FinalKind.CME_ERROR, FinalKind.CMS_ERROR):
        if upper.startswith(kind.value):
            rest = text[len(kind.value) :].lstrip()
            if rest.startswith(":"):
                rest = rest[1:].strip()
            elif rest:
                return None
            table = CME_TEXTS if kind is FinalKind.CME_ERROR else CMS_TEXTS
            numeric = rest.isascii() and rest.isdigit() and len(rest) <= 6
            code = int(rest) if numeric else table.get(rest.lower())
            return FinalResult(kind, text, code, rest)
    if upper == "CONNECT" or upper.startswith("CONNECT "):
        return FinalResult(FinalKind.CONNECT, text, None, text[len("CONNECT") :].strip())
    if upper == "NO DIAL TONE":
        return FinalResult(FinalKind.NO_DIALTONE, text)
    for kind in (
        FinalKind.OK,
        FinalKind.ERROR,
        FinalKind.NO_CARRIER,
        FinalKind.BUSY,
        FinalKind.NO_DIALTONE,
        FinalKind.NO_ANSWER,
    ):
        if upper == kind.value:
            return FinalResult(kind, text)
    return None


def reply_fields(line: str) -> list[str]:
    """The comma-separated fields of an information line after its ``+NAME:`` prefix (the whole
    line without one), stripped and unquoted: ``+CPIN: "READY"`` → ``["READY"]``."""
    body = line.split(":", 1)[1] if ":" in line else line
    return [field.strip().strip('"') for field in body.split(",")]
