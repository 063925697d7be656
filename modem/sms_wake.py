"""The device's SMS inbox for wake SMS: read every message the modem receives, hand it to the
verifier, delete it. Sans-I/O.

The inbox asks for one AT command at a time and is told how each ended; URCs are routed to it:

- inputs: :meth:`SmsInbox.start` (the port is open: set up and sweep the store),
  :meth:`~SmsInbox.command_done` (the outcome of the command it asked for), :meth:`~SmsInbox.urc`
  (every ``UrcReceived``), :meth:`~SmsInbox.tick` at :meth:`~SmsInbox.next_deadline`; ``now`` is
  a monotonic time in seconds.
- outputs: :meth:`~SmsInbox.next_command` (the command to run next, or None) and typed
  events from :meth:`~SmsInbox.next_event`: the verifier's :class:`WakeRequested`,
  :class:`StatusRequested`, :class:`RebootRequested` and :class:`SmsDropped`, each command event
  after a :class:`WakeStateChanged` that the caller persists before acting on the command; and
  :class:`InboxReady`, :class:`InboxSwept`, :class:`SmsSent`, :class:`InboxProblem`.
  :meth:`~SmsInbox.send_sms` queues a reply (the answer to a status request).

Setup: PDU mode (``AT+CMGF=0``; a modem that refuses it is read in text mode, ``AT+CMGF=1`` with
the IRA character set, ``AT+CSCS="IRA"``, so bodies are not printed as UCS-2 hex), the
SIM store for reading and receiving (``AT+CPMS="SM","SM","SM"``), and store-and-indicate
(``AT+CNMI=2,1,0,0,0``: a message waits on the SIM while nobody listens, and ``+CMTI`` names its
slot). Then a sweep: list every stored message (``AT+CMGL``), read and delete each
(``AT+CMGD=<index>``), one slot at a time, so a message stored during the sweep is not lost. A
``+CMTI`` is read with ``AT+CMGR`` and deleted; a direct ``+CMT`` (a modem set to 2,2 by someone
else) is read from the URC. A sweep also runs every ``sweep_interval_s`` (indications are lost
while a PPP call holds the port) and when a URC says the store is full (Huawei ``^SMMEMFULL``,
Quectel ``+QIND: "smsfull",1``): a full store is emptied, and the network then delivers what it
held.

Every message is deleted after it is read, wake SMS or not: the SIM of a recorder is the
recorder's, and a store that fills up stops wake SMS from arriving.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from dataclasses import dataclass, replace

from dvrlink.modem.reply_parsers import OwnNumber, parse_cnum
from dvrlink.protocol.at_events import (
    CommandAborted,
    CommandCompleted,
    CommandFailed,
    CommandTimedOut,
    UrcReceived,
)
from dvrlink.protocol.sms import (
    Alphabet,
    Deliver,
    PduError,
    PduMessage,
    StorageIndication,
    StorageState,
    TextMessage,
    Unparsed,
    decode_pdu,
    encode_submit,
    parse_cmgl,
    parse_cmgr,
    parse_cmt,
    parse_cpms_query,
    parse_cpms_set,
    parse_storage_indication,
)
from dvrlink.protocol.sms_wake import (
    TEXT_PREFIX,
    CounterState,
    RebootRequested,
    SmsDropped,
    StatusRequested,
    WakeEvent,
    WakeRequested,
    WakeVerifier,
)

CMS_INVALID_INDEX = 321
"""What some modems answer ``AT+CMGL`` with when the store is empty."""
SEND_VALIDITY_MINUTES = 60
"""How long the network keeps trying to deliver a reply."""
CommandOutcome = CommandCompleted | CommandFailed | CommandTimedOut | CommandAborted

__all__ = [
    "InboxCommand",
    "InboxConfig",
    "InboxEvent",
    "InboxProblem",
    "InboxReady",
    "InboxSwept",
    "OwnNumberRead",
    "RebootRequested",
    "SmsDropped",
    "SmsInbox",
    "SmsSent",
    "StatusRequested",
    "WakeRequested",
    "WakeStateChanged",
]


@dataclass(frozen=True, slots=True)
class InboxConfig:
    """How the inbox reads the modem. Times in seconds.

    ``storage``: the store to read and receive into (``"SM"``, the SIM; ``"ME"``, the modem's).
    ``sweep_interval_s``: how often the whole store is listed and emptied besides the URCs
    (0: only at start and when full). ``pdu_mode``: try PDU mode first (False: text mode only).
    ``read_own_number``: read the SIM's own number (``AT+CNUM``) once, after the setup
    (:class:`OwnNumberRead`), for a device not told its number.

    Raises ValueError (from the constructor) for a value out of range.
    """

    storage: str = "SM"
    sweep_interval_s: float = 600.0
    pdu_mode: bool = True
    read_own_number: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z]{2}", self.storage):
            raise ValueError(f"SMS storage {self.storage!r} must be a 27.005 name such as SM or ME")
        if self.sweep_interval_s < 0 or 0 < self.sweep_interval_s < 10:
            raise ValueError(
                f"sweep interval {self.sweep_interval_s} s is out of range: 0 (off) or at least 10 s"
            )


@dataclass(frozen=True, slots=True)
class WakeStateChanged(WakeEvent):
    """The verifier's counter window moved: store ``state`` (atomically) before acting on the
    command event that follows, so a replay after a crash or a reboot is still refused."""

    state: CounterState


@dataclass(frozen=True, slots=True)
class InboxReady(WakeEvent):
    """Setup is done: messages are read in ``text_mode`` (False: PDU mode), ``indications`` tells
    whether the modem took ``+CNMI`` (False: only sweeps find new messages)."""

    text_mode: bool
    indications: bool


@dataclass(frozen=True, slots=True)
class InboxSwept(WakeEvent):
    """A sweep listed ``found`` stored messages (all then deleted); ``full`` the store was full."""

    found: int
    full: bool


@dataclass(frozen=True, slots=True)
class SmsSent(WakeEvent):
    """A reply went out (``AT+CMGS``): the network took it under message ``reference``."""

    recipient: str
    reference: int | None


@dataclass(frozen=True, slots=True)
class OwnNumberRead(WakeEvent):
    """``AT+CNUM`` answered: the SIM's own numbers (EF_MSISDN), () when it stores none, or
    ``detail`` says why the modem did not answer."""

    numbers: tuple[OwnNumber, ...]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InboxProblem(WakeEvent):
    """A command failed or a reply could not be read; ``what`` says which and what was seen."""

    what: str


InboxEvent = (
    WakeRequested
    | StatusRequested
    | RebootRequested
    | SmsDropped
    | WakeStateChanged
    | InboxReady
    | InboxSwept
    | SmsSent
    | OwnNumberRead
    | InboxProblem
)


@dataclass(frozen=True, slots=True)
class InboxCommand:
    """An AT command the inbox asks for; ``payload`` answers its ``> `` prompt (``AT+CMGS``)."""

    text: str
    payload: str | None = None


class _Step(enum.Enum):
    PDU_MODE = "pdu mode"
    CHARSET = "character set"
    TEXT_MODE = "text mode"
    STORAGE = "storage"
    INDICATIONS = "indications"
    OWN_NUMBER = "own number"
    STATE = "store state"
    LIST = "list"
    READ = "read"
    DELETE = "delete"
    SEND = "send"


@dataclass(frozen=True, slots=True)
class _Job:
    step: _Step
    command: str
    index: int = 0
    recipient: str = ""
    body: str = ""
    payload: str | None = None


_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_STORE_FULL = re.compile(r'^\^SMMEMFULL\b|^\+QIND:\s*"smsfull"\s*,\s*1\b', re.IGNORECASE)
"""URCs that say the message store is full: Huawei's ``^SMMEMFULL: "SM"``, Quectel's
``+QIND: "smsfull",1``."""


class SmsInbox:
    """The inbox of one modem (see the module docstring). ``verifier`` checks each message."""

    def __init__(self, verifier: WakeVerifier, config: InboxConfig | None = None) -> None:
        self._verifier = verifier
        self._config = config or InboxConfig()
        self._jobs: deque[_Job] = deque()
        self._running: _Job | None = None
        self._events: deque[InboxEvent] = deque()
        self._text_mode = not self._config.pdu_mode
        self._indications = False
        self._started = False
        self._sweep_due: float | None = None
        self._sweep_queued = False
        self._full = False
        self._own_number_read = False
        self._handled: set[int] = set()
        """Slots whose message went to the verifier and whose delete is still to come: a sweep or
        a +CMTI that sees them again neither checks them twice nor deletes what comes after."""
        self.stats: dict[str, int] = {"read": 0, "deleted": 0, "sweeps": 0, "problems": 0}

    @property
    def verifier(self) -> WakeVerifier:
        return self._verifier

    @property
    def text_mode(self) -> bool:
        """Messages are read in text mode (the modem refused PDU mode, or the config said so)."""
        return self._text_mode

    # -- inputs ----------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The port is (re)opened, or the modem restarted: set up and sweep again. Queued work
        from before is dropped (slot numbers may have changed)."""
        self._jobs.clear()
        self._running = None
        self._handled.clear()
        self._started = True
        self._sweep_queued = False
        if self._config.pdu_mode:
            self._jobs.append(_Job(_Step.PDU_MODE, "AT+CMGF=0"))
        else:
            self._jobs.append(_Job(_Step.TEXT_MODE, "AT+CMGF=1"))
        storage = self._config.storage
        self._jobs.append(_Job(_Step.STORAGE, f'AT+CPMS="{storage}","{storage}","{storage}"'))
        self._jobs.append(_Job(_Step.INDICATIONS, "AT+CNMI=2,1,0,0,0"))
        if self._config.read_own_number and not self._own_number_read:
            self._jobs.append(_Job(_Step.OWN_NUMBER, "AT+CNUM"))
        self._queue_sweep(now)

    def send_sms(self, recipient: str, text: str) -> None:
        """Queue a reply (a status answer) to ``recipient``, sent with ``AT+CMGS`` in the mode the
        modem reads in; :class:`SmsSent` or :class:`InboxProblem` tells how it went.

        Raises ValueError when ``text`` does not fit one SMS or ``recipient`` is not a number.
        """
        encode_submit(recipient, text)  # checks both now, where the caller can act on it
        if not recipient.lstrip("+").isdigit():
            raise ValueError(f"reply recipient {recipient!r} is not a phone number")
        self._jobs.append(_Job(_Step.SEND, "AT+CMGS", recipient=recipient, body=text))

    def next_command(self) -> InboxCommand | None:
        """The command to run now, or None (one at a time: the previous one has ended)."""
        if self._running is not None or not self._jobs:
            return None
        job = self._jobs.popleft()
        # the mode is known only now (PDU mode may have been refused)
        if job.step is _Step.LIST:
            job = _Job(_Step.LIST, 'AT+CMGL="ALL"' if self._text_mode else "AT+CMGL=4")
        elif job.step is _Step.SEND and self._text_mode:
            body = job.body.encode("ascii", "replace").decode()  # text mode takes IRA characters
            job = replace(job, command=f'AT+CMGS="{job.recipient}"', payload=body)
        elif job.step is _Step.SEND:
            encoded = encode_submit(job.recipient, job.body, validity_minutes=SEND_VALIDITY_MINUTES)
            job = replace(job, command=f"AT+CMGS={encoded.tpdu_length}", payload=encoded.hex())
        self._running = job
        return InboxCommand(job.command, job.payload)

    def command_done(self, outcome: CommandOutcome, now: float) -> None:
        """How the command from :meth:`next_command` ended. Never raises on the reply's content."""
        job, self._running = self._running, None
        if job is None:
            return
        try:
            self._done(job, outcome, now)
        except Exception as exc:  # a backstop: the modem's bytes must not stop the inbox
            self._problem(f"{job.command}: reply could not be handled ({type(exc).__name__}: {exc})")

    def urc(self, event: UrcReceived, now: float) -> None:
        """An unsolicited line from the modem; the inbox takes ``+CMTI``/``+CMT`` and ignores the rest."""
        if not self._started:
            return
        name = event.name.upper()
        if name == "+CMTI":
            indication = parse_storage_indication(event.line)
            if isinstance(indication, StorageIndication):
                self._jobs.append(_Job(_Step.READ, f"AT+CMGR={indication.index}", indication.index))
                self._jobs.append(_Job(_Step.DELETE, f"AT+CMGD={indication.index}", indication.index))
            else:
                self._problem(f"unreadable +CMTI {indication.line!r}: {indication.reason}")
        elif name == "+CMT":
            message = parse_cmt(event.line, event.body)
            if isinstance(message, Unparsed):
                self._problem(f"unreadable +CMT {message.line!r}: {message.reason}")
            else:
                self._handle(message)
        elif _STORE_FULL.search(event.line):
            self._queue_sweep(now)

    def tick(self, now: float) -> None:
        """Run what is due: the periodic sweep."""
        if self._sweep_due is not None and now >= self._sweep_due:
            self._sweep_due = None
            self._queue_sweep(now)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` wants to be called (None: no timer)."""
        return self._sweep_due

    def next_event(self) -> InboxEvent | None:
        return self._events.popleft() if self._events else None

    # -- replies ---------------------------------------------------------------------------------

    def _done(self, job: _Job, outcome: CommandOutcome, now: float) -> None:
        ok = isinstance(outcome, CommandCompleted)
        lines = outcome.lines if isinstance(outcome, CommandCompleted) else ()
        step = job.step
        if step is _Step.PDU_MODE:
            if not ok:  # a text-only modem: read in text mode
                self._jobs.appendleft(_Job(_Step.TEXT_MODE, "AT+CMGF=1"))
            self._text_mode = not ok
        elif step is _Step.TEXT_MODE:
            self._text_mode = True
            if not ok:
                self._problem(f"the modem takes neither PDU nor text mode: {_why(outcome)}")
            # text mode prints bodies in the +CSCS character set: UCS2 would turn them into hex
            self._jobs.appendleft(_Job(_Step.CHARSET, 'AT+CSCS="IRA"'))
        elif step is _Step.CHARSET:
            if not ok:
                self._problem(f"{job.command} failed ({_why(outcome)}): text bodies may not read as sent")
        elif step is _Step.STORAGE:
            if not ok:
                self._problem(f"{job.command} failed ({_why(outcome)}): reading the modem's default store")
            elif lines and isinstance(counts := parse_cpms_set(lines[0]), tuple) and counts:
                used, total = counts[-1]
                self._full = total > 0 and used >= total
        elif step is _Step.INDICATIONS:
            self._indications = ok
            self._events.append(InboxReady(self._text_mode, ok))
            if not ok:
                self._problem(f"{job.command} failed ({_why(outcome)}): new messages are found by sweeps")
        elif step is _Step.OWN_NUMBER:
            self._own_number_read = True  # once: a SIM without a number has none on the next opening
            self._events.append(OwnNumberRead(parse_cnum(lines), "" if ok else _why(outcome)))
        elif step is _Step.STATE:
            self._full = (
                bool(lines) and isinstance(state := parse_cpms_query(lines[0]), StorageState) and state.full
            )
        elif step is _Step.LIST:
            self._listed_reply(job, outcome, now)
        elif step is _Step.READ:
            if ok and lines and job.index not in self._handled:
                self._entry(parse_cmgr(lines), job.index)
            elif not ok:
                self._problem(f"{job.command} failed: {_why(outcome)}")
        elif step is _Step.SEND:
            if ok:
                references = [parse_cmgs(line) for line in lines]
                reference = next((r for r in references if r is not None), None)
                self._events.append(SmsSent(job.recipient, reference))
            else:
                self._problem(f"the reply to {job.recipient} was not sent ({_why(outcome)})")
        elif step is _Step.DELETE:
            self._handled.discard(job.index)
            if ok:
                self.stats["deleted"] += 1
            else:
                self._problem(f"{job.command} failed: {_why(outcome)}")

    def _listed_reply(self, job: _Job, outcome: CommandOutcome, now: float) -> None:
        self._sweep_queued = False
        self.stats["sweeps"] += 1
        if self._config.sweep_interval_s:
            self._sweep_due = now + self._config.sweep_interval_s
        if isinstance(outcome, CommandFailed) and outcome.result.code == CMS_INVALID_INDEX:
            outcome = CommandCompleted(outcome.command_id, outcome.command, (), outcome.result)  # empty
        if not isinstance(outcome, CommandCompleted):
            self._problem(f"{job.command} failed: {_why(outcome)}")
            return
        found = 0
        for entry in parse_cmgl(outcome.lines):
            index = getattr(entry, "index", None)
            if not isinstance(index, int):
                self._entry(entry, None)
                continue
            found += 1
            if index not in self._handled:
                self._entry(entry, index)
                # read here: a +CMTI's read of the same slot, still queued, is not needed
                self._jobs = deque(j for j in self._jobs if not (j.step is _Step.READ and j.index == index))
            if not any(j.step is _Step.DELETE and j.index == index for j in self._jobs):
                self._jobs.append(_Job(_Step.DELETE, f"AT+CMGD={index}", index))
        self._events.append(InboxSwept(found, self._full))
        self._full = False

    def _entry(self, entry: object, index: int | None) -> None:
        if isinstance(entry, Unparsed):
            self._problem(f"unreadable stored message {entry.line!r}: {entry.reason}")
        elif isinstance(entry, PduMessage | TextMessage):
            if index is not None:
                self._handled.add(index)
            self._handle(entry)

    def _handle(self, message: PduMessage | TextMessage) -> None:
        self.stats["read"] += 1
        if isinstance(message, TextMessage):
            if message.status is not None and message.status > 1:
                return  # a message stored to send (STO UNSENT/SENT): not received
            self._verify(message.address, _text_payload(message.body))
            return
        pdu = decode_pdu(message.pdu)
        if isinstance(pdu, PduError):
            self._problem(f"undecodable PDU: {pdu.reason}")
            return
        if not isinstance(pdu, Deliver):
            return  # a status report or a stored outgoing message
        data = pdu.user_data
        payload: bytes | str = data.data if pdu.coding.alphabet is Alphabet.DATA8 else (data.text or "")
        self._verify(pdu.sender.number, payload)

    def _verify(self, sender: str, payload: bytes | str) -> None:
        result = self._verifier.receive(sender, payload)
        if not isinstance(result, SmsDropped):
            self._events.append(WakeStateChanged(self._verifier.state))
        self._events.append(result)

    # -- helpers ---------------------------------------------------------------------------------

    def _queue_sweep(self, now: float) -> None:
        if self._sweep_queued:
            return
        self._sweep_queued = True
        self._jobs.append(_Job(_Step.STATE, "AT+CPMS?"))
        self._jobs.append(_Job(_Step.LIST, "AT+CMGL"))

    def _problem(self, what: str) -> None:
        self.stats["problems"] += 1
        self._events.append(InboxProblem(what))


def parse_cmgs(line: str) -> int | None:
    """The message reference of ``+CMGS: <mr>``, or None."""
    match = re.fullmatch(r"\+CMGS:\s*(\d{1,3})\b.*", line.strip())
    return int(match.group(1)) if match else None


def _text_payload(body: str) -> bytes | str:
    """A text-mode body: the text form as it is, 8-bit data (which text mode prints in hex) as bytes."""
    stripped = body.strip()
    if stripped[: len(TEXT_PREFIX)].upper() != TEXT_PREFIX and _HEX.fullmatch(stripped):
        return bytes.fromhex(stripped)
    return body


def _why(outcome: CommandOutcome) -> str:
    if isinstance(outcome, CommandFailed):
        return outcome.result.line
    if isinstance(outcome, CommandTimedOut):
        return f"no reply within {outcome.timeout} s"
    if isinstance(outcome, CommandAborted):
        return outcome.reason
    return "completed"
