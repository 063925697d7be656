"""The SIM flow of the modem manager: ``+CPIN`` states (PIN, PUK, the modem's own locks, no SIM),
sending the configured PIN once, reading the ICCID (the profile's command, then EF_ICCID), the
IMSI, EF_AD and the service provider name, and noticing a swapped SIM.

:class:`SimFlow` is a base class of :class:`~dvrlink.modem.manager.ModemManager`: it owns the
SIM's state (set up by :meth:`SimFlow._init_sim`) and its command handlers, and uses the few
members of the manager declared at the top of the class (the command queue, the state, the
timers, the events).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from dvrlink.modem.apn import ApnChooser, ProviderIndex
from dvrlink.modem.manager_commands import Handler, QueuedCommand
from dvrlink.modem.manager_events import (
    ManagerEvent,
    SimAbsent,
    SimChanged,
    SimIdentified,
    SimLocked,
    SimRemoved,
)
from dvrlink.modem.manager_states import ModemState, SimState, StateTimers
from dvrlink.modem.reply_parsers import (
    luhn_valid,
    parse_cspn,
    parse_ef_ad,
    parse_ef_iccid,
    parse_iccid,
    strip_identity,
)
from dvrlink.protocol.at_events import CommandCompleted, CommandFailed
from dvrlink.protocol.at_results import FinalKind, reply_fields

if TYPE_CHECKING:
    from dvrlink.modem.manager import ModemConfig

log = logging.getLogger("dvrlink.modem.manager")
"""The manager's logger: the SIM lines are part of its story, and log filters keep working."""

EF_ICCID_READ = "AT+CRSM=176,12258,0,0,10"
EF_AD_READ = "AT+CRSM=176,28589,0,0,4"

SIM_REMOVED_HINTS = ("NOT READY", "NOT INSERTED", "NOT AVAILABLE", "REMOVED")

# +CME ERROR codes that answer +CPIN? with a SIM state (3GPP TS 27.007 9.2.1), as the +CPIN text.
# Any other error (100 unknown, 14 SIM busy, 3 not allowed, a plain ERROR) says nothing about the
# SIM: it is asked again.
CME_SIM_STATES: dict[int, str] = {
    10: "NO SIM",  # SIM not inserted
    13: "NO SIM",  # SIM failure
    15: "NO SIM",  # SIM wrong
    11: "SIM PIN",
    12: "SIM PUK",
    17: "SIM PIN2",
    18: "SIM PUK2",
    5: "PH-SIM PIN",  # PH-SIM PIN required
    40: "PH-NET PIN",
    41: "PH-NET PUK",
    42: "PH-NETSUB PIN",
    43: "PH-NETSUB PUK",
    44: "PH-SP PIN",
    45: "PH-SP PUK",
    46: "PH-CORP PIN",
    47: "PH-CORP PUK",
}

# +CPIN states in which the SIM serves registration and data. PIN2/PUK2 guard only a few SIM
# services (fixed dialling, charges); 27.007 asks for them after a command that needs them failed.
SIM_READY_STATES = ("READY", "SIM PIN2", "SIM PUK2")
_UNLOCK = "enter its unlock code from the seller or operator (in a phone or the vendor's tool)"
# Personalisation locks of the modem itself (3GPP TS 22.022), by +CPIN text: what it means, what to do.
MODEM_LOCKS: dict[str, str] = {
    "PH-NET PIN": f"the modem is network-locked: it takes only its operator's SIMs; {_UNLOCK}",
    "PH-NET PUK": f"the modem is network-locked and its unlock code was entered wrong too often; {_UNLOCK}",
    "PH-NETSUB PIN": f"the modem is network-subset-locked: it takes only some of a network's SIMs; {_UNLOCK}",
    "PH-NETSUB PUK": f"the modem is network-subset-locked and blocked after wrong codes; {_UNLOCK}",
    "PH-SP PIN": f"the modem is locked to a service provider: it takes only that provider's SIMs; {_UNLOCK}",
    "PH-SP PUK": f"the modem is locked to a service provider and blocked after wrong codes; {_UNLOCK}",
    "PH-CORP PIN": f"the modem is locked to a corporate SIM group; {_UNLOCK} (the company's IT)",
    "PH-CORP PUK": f"the modem is locked to a corporate SIM group and blocked after wrong codes; {_UNLOCK}",
    "PH-SIM PIN": f"the modem is locked to one SIM (phone-to-SIM lock): put that SIM back, or {_UNLOCK}",
    "PH-FSIM PIN": f"the modem is locked to the first SIM inserted in it: put it back, or {_UNLOCK}",
    "PH-FSIM PUK": f"the modem is locked to its first SIM and blocked after wrong codes; {_UNLOCK}",
}


def redact_iccid(iccid: str | None) -> str:
    """The ICCID with all but its first 6 and last 4 digits hidden (``894902**********7890``)."""
    if not iccid:
        return ""
    if len(iccid) <= 10:
        return "*" * len(iccid)
    return iccid[:6] + "*" * (len(iccid) - 10) + iccid[-4:]


class SimFlow:
    """The SIM half of the modem manager (see module docstring)."""

    # What the manager provides.
    config: ModemConfig
    _index: ProviderIndex
    _state: ModemState
    _detail: str
    _queue: deque[QueuedCommand]
    _t: StateTimers
    _events: deque[ManagerEvent]
    _chooser: ApnChooser | None
    _data_rounds: int
    _reg_backoff: float

    def _send(self, text: str, handler: Handler) -> None:
        raise NotImplementedError

    def _then(self, fn: Callable[[float], None]) -> None:
        raise NotImplementedError

    def _enter(self, state: ModemState, reason: str) -> None:
        raise NotImplementedError

    def _stop_data(self, reason: str) -> None:
        raise NotImplementedError

    def _registering(self, now: float) -> None:
        raise NotImplementedError

    def _init_sim(self) -> None:
        self._sim = SimState.UNKNOWN
        self._iccid: str | None = None
        self._imsi = ""
        self._mnc_length: int | None = None
        self._spn = ""
        self._pin_refused = False
        self._pin_sent = False
        self._cpin_retry = False
        """The probe's +CPIN? named no SIM state: ask again when the ``sim_check`` timer is due."""

    def _cpin(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            code = outcome.result.code if outcome.result.kind is FinalKind.CME_ERROR else None
            status = CME_SIM_STATES.get(code) if code is not None else None
            if status is None:
                self._sim_unknown(now, outcome.result.line)
                return
        else:
            status = reply_fields(outcome.lines[0])[0].upper() if outcome.lines else ""
        self._sim_status(status, now)

    def _sim_status(self, status: str, now: float) -> None:
        """Act on a +CPIN state (3GPP TS 27.007 8.3), from its text or its +CME ERROR code."""
        if status in SIM_READY_STATES:
            self._sim_ready(now)
        elif status == "SIM PIN":
            self._sim_locked_pin(now)
        elif status == "SIM PUK":
            self._sim_locked(now, "the SIM is PUK-locked (+CPIN: SIM PUK): unlock it with its PUK in a phone")
        elif status in MODEM_LOCKS:
            self._sim_locked(now, f"{MODEM_LOCKS[status]} (+CPIN: {status})")
        elif status == "NO SIM" or any(hint in status for hint in SIM_REMOVED_HINTS):
            self._sim_absent(now)
        else:
            self._sim_unknown(now, f"+CPIN: {status}" if status else "an empty +CPIN reply")

    def _sim_unknown(self, now: float, seen: str) -> None:
        """A +CPIN? reply that names no SIM state: keep the state, and ask again in sim_poll_s."""
        log.warning("modem: SIM state unknown (%s): asking again in %g s", seen, self.config.sim_poll_s)
        if self._state in (ModemState.PROBING, ModemState.SIM_ABSENT, ModemState.SIM_LOCKED):
            self._sim = SimState.UNKNOWN
            self._detail = f"the SIM state is unknown ({seen}): asking again in {self.config.sim_poll_s:g} s"
            self._cpin_retry = self._state is ModemState.PROBING
        due = now + self.config.sim_poll_s
        self._t.sim_check = due if self._t.sim_check is None else min(self._t.sim_check, due)

    def _sim_locked_pin(self, now: float) -> None:
        pin = self.config.pin
        if pin is None:
            self._sim_locked(now, "the SIM asks for its PIN: set modem.pin in the config, or remove the PIN")
            return
        if self._pin_refused or self._pin_sent:
            self._sim_locked(
                now,
                "the SIM refused the PIN from the config; it is not sent again (3 wrong tries lock "
                "the SIM): fix modem.pin and reinsert the SIM",
            )
            return
        self._pin_sent = True
        self._send(f'AT+CPIN="{pin}"', self._pin_answer)

    def _pin_answer(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            self._pin_refused = True
            self._sim_locked(
                now,
                f"the SIM refused the PIN from the config ({outcome.result.line}); it is not sent "
                "again: fix modem.pin and reinsert the SIM",
            )
            return
        # the SIM needs a moment after the PIN; ask again
        self._send("AT+CPIN?", self._cpin)

    def _sim_locked(self, now: float, detail: str) -> None:
        self._sim = SimState.LOCKED
        self._detail = detail
        if self._state is not ModemState.SIM_LOCKED:
            self._stop_data("SIM locked")
            self._enter(ModemState.SIM_LOCKED, "SIM locked")
            self._events.append(SimLocked(detail))
            log.error("modem: %s", detail)
        self._t.state = now + self.config.sim_poll_s

    def _sim_absent(self, now: float) -> None:
        old = self._iccid
        self._sim = SimState.ABSENT
        self._pin_refused = False
        self._detail = "no SIM: insert one"
        if self._state is not ModemState.SIM_ABSENT:
            self._stop_data("SIM removed")
            self._enter(ModemState.SIM_ABSENT, "no SIM")
            if old is not None:
                self._events.append(SimRemoved(old))
            self._events.append(SimAbsent())
        self._t.state = now + self.config.sim_poll_s

    def _sim_ready(self, now: float) -> None:
        self._sim = SimState.READY
        self._detail = ""
        if self._state is not ModemState.SIM_IDENTIFYING:
            self._stop_data("SIM state changed")
            self._enter(ModemState.SIM_IDENTIFYING, "SIM ready")
        self._send(self.config.profile.iccid_command, self._iccid_read)

    def _iccid_read(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        iccid = parse_iccid(outcome.lines) if isinstance(outcome, CommandCompleted) else None
        if iccid is None:
            self._queue.appendleft(QueuedCommand(EF_ICCID_READ, self._ef_iccid_read))
            return
        self._identify(iccid)

    def _ef_iccid_read(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        iccid = parse_ef_iccid(outcome.lines) if isinstance(outcome, CommandCompleted) else None
        self._identify(iccid or "")

    def _identify(self, iccid: str) -> None:
        old = self._iccid
        if iccid and iccid != old:
            if iccid.isdigit() and not luhn_valid(iccid):
                # kept: the accounting and APN memory key on it, and some issuers get this digit wrong
                log.warning("modem: ICCID %s has a bad check digit; kept as is", redact_iccid(iccid))
            self._events.append(SimChanged(old, iccid))
            if old is not None:
                log.info("modem: SIM changed from %s to %s", redact_iccid(old), redact_iccid(iccid))
            self._chooser = None
            self._data_rounds = 0
        self._iccid = iccid or old
        self._send("AT+CIMI", self._imsi_read)
        self._send(EF_AD_READ, self._ef_ad_read)
        self._send("AT+CSPN?", self._spn_read)
        self._then(self._sim_identified)

    def _imsi_read(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandCompleted):
            value = strip_identity(outcome.lines)
            self._imsi = value if value.isdigit() else ""

    def _ef_ad_read(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        self._mnc_length = None
        if isinstance(outcome, CommandCompleted):
            _, self._mnc_length = parse_ef_ad(outcome.lines)

    def _spn_read(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        self._spn = parse_cspn(outcome.lines) if isinstance(outcome, CommandCompleted) else ""

    def _sim_identified(self, now: float) -> None:
        self._sim = SimState.IDENTIFIED
        mcc = mnc = ""
        if len(self._imsi) >= 5:
            try:
                mcc, mnc, _ = self._index.lookup_imsi(self._imsi, self._mnc_length)
            except ValueError:
                mcc, mnc = self._imsi[:3], self._imsi[3:5]
        self._events.append(SimIdentified(self._iccid or "", mcc, mnc, self._spn))
        self._enter(ModemState.REGISTERING, "SIM identified")
        self._reg_backoff = self.config.registration_backoff_s
        self._registering(now)

    def _sim_check(self, now: float, *, periodic: bool = False) -> None:
        """Read the SIM state and ICCID (after a hot-swap URC, or periodically)."""
        state = self._state
        if state is ModemState.PROBING and self._cpin_retry and not periodic:
            self._cpin_retry = False
            self._send("AT+CPIN?", self._cpin)
            return
        if state in (ModemState.PORT_CLOSED, ModemState.PROBING, ModemState.RECOVERING, ModemState.RESETTING):
            return
        if state in (ModemState.SIM_ABSENT, ModemState.SIM_LOCKED):
            self._pin_sent = False
            self._send("AT+CPIN?", self._cpin)
            return
        if any(c.text == "AT+CPIN?" for c in self._queue):
            return
        self._send("AT+CPIN?", self._check_cpin)

    def _check_cpin(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        ready = (
            isinstance(outcome, CommandCompleted)
            and bool(outcome.lines)
            and reply_fields(outcome.lines[0])[0].upper() in SIM_READY_STATES
        )
        if not ready:
            self._cpin(outcome, now)
            return
        self._send(self.config.profile.iccid_command, self._check_iccid)

    def _check_iccid(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        iccid = parse_iccid(outcome.lines) if isinstance(outcome, CommandCompleted) else None
        if iccid is None or iccid == self._iccid:
            return
        self._stop_data("SIM swapped")
        self._enter(ModemState.SIM_IDENTIFYING, "another SIM inserted")
        self._sim = SimState.READY
        self._identify(iccid)
