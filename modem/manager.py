"""The modem state machine: probe → SIM → identify → register → connect → online, and back.

Sans-I/O. The driver (``modem/driver.py``) feeds it what happened and carries out what it asks:

- inputs: :meth:`ModemManager.port_opened`, :meth:`~ModemManager.port_closed`,
  :meth:`~ModemManager.at_submitted` (the engine's id of the command it asked for),
  :meth:`~ModemManager.at_event` (every ``AtEngine`` event), :meth:`~ModemManager.data_result`,
  :meth:`~ModemManager.probe_result`, :meth:`~ModemManager.recover` (a ladder step to run),
  :meth:`~ModemManager.want_data` (False: stay registered in ``STANDBY`` with no data session),
  :meth:`~ModemManager.tick` at :meth:`~ModemManager.next_deadline`; ``now`` is a monotonic time
  in seconds passed to each.
- outputs: requests from :meth:`~ModemManager.next_action` (:class:`SendAt`, :class:`StartData`,
  :class:`StopData`, :class:`ProbeData`, :class:`ResyncPort`, :class:`ReopenPort`) and typed,
  past-tense events from :meth:`~ModemManager.next_event`; :meth:`~ModemManager.status` is a
  frozen snapshot.

At most one AT command of the manager is on the wire; the others wait in its own queue. Every
state change starts a new generation: results of commands sent under an older one are ignored,
so a SIM swap or a modem reboot in the middle of a script never lets a stale reply steer the
new state. The states and every transition are in :data:`TRANSITIONS`.

Faults the manager cannot fix on its own (the modem stops answering, the port goes away, no
service for too long, the data path probe fails while registered) become :class:`FaultDetected`
events; the driver asks the recovery ladder (``modem/ladder.py``) which step to take and tells
the manager with :meth:`~ModemManager.recover` or by reopening the port. Everything else (a
rebooted modem, a swapped SIM, a denied registration, a lost signal, a failing APN) the manager
handles itself, without the ladder.

The machine is spread over a few modules, each one seam: ``manager_states.py`` (states, the
transition table, the diagram), ``manager_events.py`` (actions and events),
``manager_commands.py`` (its AT command queue), ``reply_parsers.py`` (3GPP TS 27.007 replies),
``sim_flow.py`` (the SIM: PIN, ICCID, IMSI, swaps) and ``data_link.py`` (the data link's
contract). This module holds the config, the status snapshot, and the rest of the machine: the
probe, registration, data calls, recovery and URCs. The names a user of the manager needs are
importable from here (``__all__``); the parsers from ``reply_parsers.py``.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dvrlink.modem.apn import (
    ApnCandidate,
    ApnChooser,
    ApnConfig,
    ApnFailure,
    ApnMemory,
    ApnSelected,
    ApnsExhausted,
    ProviderIndex,
    rank_apns,
)
from dvrlink.modem.data_link import DataFailed, DataFailure, DataLink, DataRequest, DataUp
from dvrlink.modem.ladder import Fault, FaultKind, Step
from dvrlink.modem.manager_commands import Handler, QueuedCommand
from dvrlink.modem.manager_events import (
    ApnFailed,
    ApnRemembered,
    ApnTrying,
    AtRecovered,
    CameOnline,
    DataContextEnded,
    FaultDetected,
    ManagerAction,
    ManagerEvent,
    ModemIdentified,
    ProbeData,
    RadioSwitchedOn,
    RegistrationChanged,
    RegistrationRefused,
    ReopenPort,
    ResyncPort,
    SendAt,
    SignalChanged,
    SimAbsent,
    SimChanged,
    SimIdentified,
    SimLocked,
    SimRemoved,
    StartData,
    StateChanged,
    StopData,
    WentOffline,
)
from dvrlink.modem.manager_states import TRANSITIONS, ModemState, SimState, StateTimers
from dvrlink.modem.pdp import (
    RadioPower,
    apn_matches,
    parse_cfun,
    parse_cgact_read,
    parse_cgdcont_read,
    parse_cgev,
)
from dvrlink.modem.profiles import DialMethod, ModemProfile
from dvrlink.modem.radio import RadioInfo, parse_radio_info
from dvrlink.modem.reply_parsers import (
    ACT_NAMES,
    CME_NO_NETWORK,
    HOME_STATS,
    LIMITED_REGISTRATION,
    PS_REG_NAMES,
    REG_NAMES,
    REGISTERED_STATS,
    ROAMING_STATS,
    SMS_STATS,
    STAT_DENIED,
    STAT_EMERGENCY_ONLY,
    STAT_HOME_SMS_ONLY,
    STAT_NOT_REGISTERED,
    STAT_RLOS,
    STAT_ROAMING_SMS_ONLY,
    STAT_SEARCHING,
    STAT_UNKNOWN,
    RegInfo,
    cesq_to_dbm,
    csq_to_dbm,
    luhn_valid,
    parse_cops,
    parse_imei,
    parse_registration,
    strip_identity,
)
from dvrlink.modem.sim_flow import SIM_REMOVED_HINTS, SimFlow, redact_iccid
from dvrlink.protocol.at_events import (
    AtEvent,
    CommandAborted,
    CommandCompleted,
    CommandEvent,
    CommandFailed,
    CommandTimedOut,
    ModemRestarted,
    Resynced,
    ResyncFailed,
    UrcReceived,
)
from dvrlink.protocol.at_results import reply_fields

# The manager's interface, importable from here: its config, status, states, actions, events
# and the data link's contract.
__all__ = [
    "TRANSITIONS",
    "ApnFailed",
    "ApnRemembered",
    "ApnTrying",
    "AtRecovered",
    "CameOnline",
    "DataContextEnded",
    "DataFailed",
    "DataFailure",
    "DataLink",
    "DataRequest",
    "DataUp",
    "FaultDetected",
    "ManagerAction",
    "ManagerEvent",
    "ModemConfig",
    "ModemIdentified",
    "ModemManager",
    "ModemState",
    "ModemStatus",
    "ProbeData",
    "RadioSwitchedOn",
    "RegistrationChanged",
    "RegistrationRefused",
    "ReopenPort",
    "ResyncPort",
    "SendAt",
    "SignalChanged",
    "SimAbsent",
    "SimChanged",
    "SimIdentified",
    "SimLocked",
    "SimRemoved",
    "SimState",
    "StartData",
    "StateChanged",
    "StopData",
    "WentOffline",
    "redact_iccid",
]

log = logging.getLogger(__name__)

# Huawei ECM calls answer OK at once and report the outcome with this URC.
NDIS_STATUS_URC = "^NDISSTAT"

_PIN = re.compile(r"^[0-9]{4,8}$")


# ------------------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class ModemConfig:
    """Settings of the modem state machine. Times are in seconds.

    ``pin``: the SIM PIN, sent once when the SIM asks; a PIN the SIM refuses is not sent again
    (three wrong tries lock the SIM) until the SIM changes. ``allow_roaming``: go online while
    registered on a visited network. ``cid``: the PDP context to define and dial;
    ``pdp_type``: ``IP``, ``IPV6`` or ``IPV4V6``.
    """

    profile: ModemProfile
    apn: ApnConfig = field(default_factory=ApnConfig)
    pin: str | None = field(default=None, repr=False)
    allow_roaming: bool = False
    cid: int = 1
    pdp_type: str = "IP"
    sim_poll_s: float = 10.0
    """While no SIM is ready: how often to ask ``+CPIN?``."""
    sim_debounce_s: float = 1.0
    """After a SIM hot-swap URC: wait this long for the tray to settle before reading the SIM."""
    iccid_check_s: float = 60.0
    """While registered or online: how often to read the ICCID (a swap without URCs)."""
    registration_poll_s: float = 10.0
    """While registering and online: how often to read registration, operator and signal."""
    registration_timeout_s: float = 300.0
    """No registration this long with a ready SIM: a fault for the recovery ladder."""
    registration_backoff_s: float = 30.0
    """After a denied registration: first wait before asking again (doubles up to the max)."""
    registration_backoff_max_s: float = 600.0
    signal_poll_s: float = 30.0
    probe_interval_s: float = 60.0
    """While online: how often to probe the data path."""
    probe_failures: int = 2
    """Consecutive failed probes that make a fault."""
    data_backoff_s: float = 30.0
    """After every APN failed: wait this long before the next round."""
    config_backoff_s: float = 300.0
    """After the system refused to run the data link (:attr:`DataFailure.CONFIG`): wait this long
    before trying again, so a fix (a package, a permission, a kernel module) needs no restart."""
    data_rounds_before_fault: int = 2
    """Rounds of failed APNs while registered before the recovery ladder is asked."""
    dial_attempts_per_apn: int = 2
    """Tries of one APN when the call failed without a rejection (NO CARRIER, timeout)."""
    at_unresponsive_s: float = 15.0
    """The engine has probed with ``AT`` this long without an answer: a fault (ladder)."""
    reset_wait_s: float = 60.0
    """After the reset command: wait this long for ``RDY`` or the port to come back."""
    ecm_result_timeout_s: float = 30.0
    """Huawei ECM call: wait this long for ``^NDISSTAT``."""

    def __post_init__(self) -> None:
        if self.pin is not None and not _PIN.match(self.pin):
            raise ValueError("SIM PIN must be 4 to 8 digits: fix modem.pin in the config")
        if not 1 <= self.cid <= 24:
            raise ValueError(f"PDP context id {self.cid} out of range: use 1-24")
        if self.pdp_type not in ("IP", "IPV6", "IPV4V6"):
            raise ValueError(f"pdp_type {self.pdp_type!r}: use IP, IPV6 or IPV4V6")
        times = (
            self.sim_poll_s,
            self.sim_debounce_s,
            self.iccid_check_s,
            self.registration_poll_s,
            self.registration_timeout_s,
            self.registration_backoff_s,
            self.signal_poll_s,
            self.probe_interval_s,
            self.data_backoff_s,
            self.config_backoff_s,
            self.at_unresponsive_s,
            self.reset_wait_s,
            self.ecm_result_timeout_s,
        )
        if any(t <= 0 for t in times):
            raise ValueError("every modem timer must be > 0 seconds")
        if self.registration_backoff_max_s < self.registration_backoff_s:
            raise ValueError("registration_backoff_max_s must be >= registration_backoff_s")
        if self.probe_failures < 1 or self.data_rounds_before_fault < 1 or self.dial_attempts_per_apn < 1:
            raise ValueError(
                "probe_failures, data_rounds_before_fault and dial_attempts_per_apn must be >= 1"
            )


_APN_FAILURE: dict[DataFailure, ApnFailure] = {
    DataFailure.NO_CARRIER: ApnFailure.DIAL_FAILED,
    DataFailure.REJECTED: ApnFailure.ACTIVATION_REJECTED,
    DataFailure.AUTH: ApnFailure.PPP_FAILED,
    DataFailure.LCP: ApnFailure.PPP_FAILED,
    DataFailure.IPCP: ApnFailure.IPCP_FAILED,
    DataFailure.TIMEOUT: ApnFailure.DIAL_FAILED,
    DataFailure.NO_DEVICE: ApnFailure.DIAL_FAILED,
    DataFailure.OTHER: ApnFailure.DIAL_FAILED,
    DataFailure.CONFIG: ApnFailure.DIAL_FAILED,  # not used: data_result handles it without the APN
}
_RETRY_SAME_APN = frozenset({DataFailure.NO_CARRIER, DataFailure.TIMEOUT, DataFailure.OTHER})


# ------------------------------------------------------------------------------------ status


@dataclass(frozen=True, slots=True)
class ModemStatus:
    """A snapshot for ``dvrlinkd status`` and the broker report. ``str()`` and :meth:`as_dict`
    show the ICCID redacted; the full one is in ``iccid`` (not in ``repr``)."""

    state: ModemState
    vendor: str = ""
    model: str = ""
    revision: str = ""
    imei: str = field(default="", repr=False)
    sim: SimState = SimState.UNKNOWN
    iccid: str = field(default="", repr=False)
    operator: str = ""
    roaming: bool = False
    rat: str = ""
    signal_dbm: int | None = None
    band: str = ""
    """The serving cell's band as the modem names it (vendor radio info), empty when unknown."""
    apn: str | None = None
    interface: str = ""
    ladder_step: int = 0
    data_used_bytes: int | None = None
    detail: str = ""
    setup_problem: str = ""
    """What in this system keeps the data link from running (:attr:`DataFailure.CONFIG`) and how
    to fix it; empty when nothing does. Kept until the link comes up or fails for another reason."""

    @property
    def online(self) -> bool:
        return self.state is ModemState.ONLINE

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "modem": " ".join(x for x in (self.vendor, self.model) if x),
            "revision": self.revision,
            "sim": self.sim.value,
            "iccid": redact_iccid(self.iccid),
            "operator": self.operator,
            "roaming": self.roaming,
            "rat": self.rat,
            "band": self.band,
            "signal_dbm": self.signal_dbm,
            "apn": self.apn,
            "interface": self.interface,
            "ladder_step": self.ladder_step,
            "data_used_bytes": self.data_used_bytes,
            "detail": self.detail,
            "setup_problem": self.setup_problem,
        }

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.as_dict().items() if v not in ("", None)]
        return "modem " + " ".join(parts)


# ----------------------------------------------------------------------------------- manager


class ModemManager(SimFlow):
    """The modem state machine of one modem (see module docstring).

    ``index``: the provider database index; ``memory``: the APNs that worked per ICCID (the
    manager updates it and emits :class:`ApnRemembered`; the driver saves it).
    """

    def __init__(self, config: ModemConfig, index: ProviderIndex, memory: ApnMemory) -> None:
        self.config = config
        self._index = index
        self._memory = memory
        self._state = ModemState.PORT_CLOSED
        self._gen = 0
        self._queue: deque[QueuedCommand] = deque()
        self._inflight: QueuedCommand | None = None
        self._inflight_gen = -1
        self._inflight_id: int | None = None
        self._awaiting_id = False
        self._actions: deque[ManagerAction] = deque()
        self._events: deque[ManagerEvent] = deque()
        self._t = StateTimers()
        self._at_stalled = False
        self._stalled_since: float | None = None
        self._setup_problem = ""
        self._radio: RadioInfo | None = None
        """The serving cell from the profile's vendor radio info command, if it answered."""
        self._port_lent = False
        """The AT port is the data link's (PPP on the AT port itself): no command goes out."""
        # identity and SIM
        self._vendor = self._model = self._revision = self._imei = ""
        self._init_sim()
        self._detail = ""
        self._has_cereg = False
        self._has_c5greg = False
        # network
        self._reg: dict[str, int] = {}
        self._effective_stat = STAT_UNKNOWN
        self._act: int | None = None
        self._operator = ""
        self._dbm: int | None = None
        self._reg_backoff = config.registration_backoff_s
        # data
        self._chooser: ApnChooser | None = None
        self._candidate: ApnCandidate | None = None
        self._candidate_tries = 0
        self._data_rounds = 0
        self._data_pending = False
        self._data_up = False
        self._interface = ""
        self._apn_online: str | None = None
        self._probe_pending = False
        self._probe_fails = 0
        self._ndis_wait = False
        self._data_wanted = True
        """False: stay registered with the data session down (:meth:`want_data`)."""

    # ----------------------------------------------------------------------------- properties

    @property
    def state(self) -> ModemState:
        return self._state

    @property
    def iccid(self) -> str | None:
        return self._iccid

    @property
    def data_up(self) -> bool:
        return self._data_up

    @property
    def data_wanted(self) -> bool:
        """What :meth:`want_data` last said (True at first)."""
        return self._data_wanted

    def status(self, *, ladder_step: int = 0, data_used_bytes: int | None = None) -> ModemStatus:
        """A snapshot; the driver adds the ladder step and the data used this cycle."""
        rat = ACT_NAMES.get(self._act, "") if self._act is not None else ""
        radio = self._radio
        return ModemStatus(
            state=self._state,
            vendor=self._vendor,
            model=self._model,
            revision=self._revision,
            imei=self._imei,
            sim=self._sim,
            iccid=self._iccid or "",
            operator=self._operator or (radio.network if radio is not None else ""),
            roaming=self._effective_stat in ROAMING_STATS,
            rat=radio.rat if radio is not None and radio.rat else rat,
            band=radio.band if radio is not None else "",
            signal_dbm=self._dbm,
            apn=self._apn_online,
            interface=self._interface,
            ladder_step=ladder_step,
            data_used_bytes=data_used_bytes,
            detail=self._detail,
            setup_problem=self._setup_problem,
        )

    # ------------------------------------------------------------------------ driver interface

    def next_action(self) -> ManagerAction | None:
        return self._actions.popleft() if self._actions else None

    def next_event(self) -> ManagerEvent | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must be called next (the ``now`` clock), or None."""
        t = self._t
        times = [
            x
            for x in (t.poll, t.signal, t.iccid, t.probe, t.sim_check, t.state, t.unresponsive)
            if x is not None
        ]
        return min(times) if times else None

    def port_opened(self, now: float) -> None:
        """The AT port is open: probe the modem."""
        self._port_lent = False
        self._forget_inflight()
        self._at_stalled = False
        self._stalled_since = None
        self._t.unresponsive = None
        self._probe(now, "port opened")
        self._pump(now)

    def want_data(self, wanted: bool, now: float) -> None:
        """Whether the data session is wanted (True at first). Not wanted (an ``sms-wake``
        recorder that sleeps): the manager takes the data link down (:class:`StopData`; an ECM
        call also with the profile's disconnect command) or never dials, sends no data-path
        probe, and waits in ``STANDBY`` while it stays registered on the network, so SMS keep
        arriving; registration, signal and SIM polls go on over AT. Wanted again: it dials from
        ``STANDBY`` at once. Any other state goes on as it was and takes the wish into account
        once registered."""
        if wanted == self._data_wanted:
            return
        self._data_wanted = wanted
        state = self._state
        if not wanted and state in (ModemState.CONNECTING, ModemState.DATA_BACKOFF, ModemState.ONLINE):
            self._standby(now, "data no longer wanted")
        elif wanted and state is ModemState.STANDBY:
            log.info("modem: data wanted again: dialling")
            self._enter(ModemState.CONNECTING, "data wanted again")
            self._connect(now)
        self._pump(now)

    def port_closed(self, reason: str, now: float, *, expected: bool = False) -> None:
        """The AT port closed. ``expected``: the driver closed it (a ladder step); otherwise it is
        a :data:`FaultKind.PORT_LOST` fault, or, while waiting for a reset, the modem
        re-enumerating (then the driver is asked to reopen it)."""
        was = self._state
        self._port_lent = False
        self._forget_inflight()
        self._stop_data(f"AT port closed: {reason}")
        self._enter(ModemState.PORT_CLOSED, reason)
        if expected:
            return
        if was is ModemState.RESETTING:
            self._actions.append(ReopenPort("the modem re-enumerates after its reset"))
            return
        self._fault(FaultKind.PORT_LOST, reason, at_alive=False, now=now)

    @property
    def port_lent(self) -> bool:
        """True between :meth:`lend_port` and :meth:`port_returned`."""
        return self._port_lent

    def lend_port(self, now: float) -> None:
        """The driver hands the AT port to the data link (a modem with PPP on its only port, such
        as the SIM800 on a UART): no AT command is sent until :meth:`port_returned`. Registration,
        signal and SIM polls pause; the data-path probes go on."""
        self._port_lent = True

    def port_returned(self, now: float, *, data_ended: str = "") -> None:
        """The AT port is the driver's again. ``data_ended``: why the data link is no longer up
        (it ended by itself, or was taken down for recovery), empty when it never came up. Online,
        the modem is asked for its registration again before the next dial."""
        self._port_lent = False
        if data_ended and self._data_up:
            self._data_up = False
            self._interface = ""
            if self._state is ModemState.ONLINE:
                self._enter(ModemState.REGISTERING, f"data link ended: {data_ended}")
                self._registering(now)
        self._pump(now)

    def _forget_inflight(self) -> None:
        self._inflight = None
        self._inflight_id = None
        self._awaiting_id = False
        self._queue.clear()

    def at_submitted(self, command_id: int | None) -> None:
        """The engine's id of the command of the last :class:`SendAt`; None when it could not be
        submitted (the port is closed: the manager waits for ``port_closed``)."""
        if not self._awaiting_id:
            raise RuntimeError("at_submitted() without a SendAt waiting for its id")
        self._awaiting_id = False
        self._inflight_id = command_id
        if command_id is None:
            # the port is gone; the driver reports it with port_closed()
            self._inflight = None
            self._queue.clear()

    def at_event(self, event: AtEvent, now: float) -> None:
        """Any event of the AT engine. Never raises for what the modem says."""
        if isinstance(event, CommandEvent):
            if event.command_id == self._inflight_id and self._inflight is not None:
                self._command_done(event, now)
                self._pump(now)
            return
        if isinstance(event, UrcReceived):
            self._urc(event, now)
        elif isinstance(event, ModemRestarted):
            self._restarted(event.marker, now)
        elif isinstance(event, Resynced):
            self._resynced(event.probes, now)
        elif isinstance(event, ResyncFailed) and self._stalled_since is None:
            self._stalled_since = now - event.waited
            self._t.unresponsive = self._stalled_since + self.config.at_unresponsive_s
        self._pump(now)

    def data_result(self, result: DataUp | DataFailed, now: float, *, generation: int) -> None:
        """How a :class:`StartData` ended; ``generation`` is the action's (a result for an older
        generation is stale: the modem state changed meanwhile, so the link is taken down)."""
        self._data_pending = False
        if generation != self._gen or self._state is not ModemState.CONNECTING:
            if isinstance(result, DataUp):
                self._actions.append(StopData("the modem state changed while the link came up"))
            return
        if isinstance(result, DataUp):
            self._data_up = True
            self._interface = result.interface
            self._setup_problem = ""
            self._online(now)
        elif result.reason is DataFailure.CONFIG:
            self._cannot_run_data(result.detail, now)
        else:
            self._setup_problem = ""
            self._apn_failed(result.reason, result.detail, now)
        self._pump(now)

    def probe_result(self, ok: bool, now: float) -> None:
        """How a :class:`ProbeData` ended."""
        self._probe_pending = False
        if self._state is not ModemState.ONLINE:
            return
        if ok:
            self._probe_fails = 0
            return
        self._probe_fails += 1
        log.warning("modem data path probe failed (%d in a row)", self._probe_fails)
        if self._probe_fails < self.config.probe_failures:
            self._t.probe = now
            return
        self._probe_fails = 0
        if self._effective_stat in REGISTERED_STATS:
            self._fault(
                FaultKind.DATA_PATH,
                f"data path probe failed {self.config.probe_failures} times while registered",
                at_alive=not self._at_stalled,
                now=now,
            )
        else:
            self._stop_data("data path probe failed and not registered")
            self._enter(ModemState.REGISTERING, "data path lost: not registered")
            self._registering(now)
        self._pump(now)

    def recover(self, step: Step, now: float) -> None:
        """Run an AT-level ladder step: ``RESYNC``, ``REATTACH``, ``CFUN_CYCLE`` or ``MODEM_RESET``.
        The other steps are the driver's (port, USB, GPIO, board); it then reopens the port.

        Raises:
            ValueError: ``step`` is not one the manager runs.
        """
        if step is Step.RESYNC:
            self._enter(ModemState.RECOVERING, "ladder: AT resync")
            self._actions.append(ResyncPort())
            if self._stalled_since is None:
                self._stalled_since = now
                self._t.unresponsive = now + self.config.at_unresponsive_s
            return
        if step is Step.REATTACH:
            self._stop_data("ladder: re-attach")
            self._enter(ModemState.RECOVERING, "ladder: re-attach")
            self._send("AT+CGATT=0", self._ignore)
            self._send("AT+CGATT=1", self._reattached)
        elif step is Step.CFUN_CYCLE:
            self._stop_data("ladder: radio off and on")
            self._enter(ModemState.RECOVERING, "ladder: radio off and on")
            self._send("AT+CFUN=0", self._ignore)
            self._send("AT+CFUN=1", self._ignore)
            self._then(lambda t: self._probe(t, "radio back on"))
        elif step is Step.MODEM_RESET:
            self._stop_data("ladder: modem reset")
            self._enter(ModemState.RECOVERING, "ladder: modem reset")
            self._send(self.config.profile.reset_command, self._reset_sent)
        else:
            raise ValueError(f"ladder step {step.label} is run by the driver, not by the modem manager")
        self._pump(now)

    def tick(self, now: float) -> None:
        """Act on expired timers; calling it early does nothing."""
        t = self._t
        if t.unresponsive is not None and now >= t.unresponsive:
            t.unresponsive = None
            waited = now - (self._stalled_since or now)
            self._fault(
                FaultKind.AT_UNRESPONSIVE,
                f"the modem has not answered AT for {waited:.1f} s",
                at_alive=False,
                now=now,
            )
        if t.state is not None and now >= t.state:
            t.state = None
            self._state_timeout(now)
        lent = self._port_lent  # no AT polls while the data link holds the port
        if t.sim_check is not None and now >= t.sim_check:
            t.sim_check = None
            if not lent:
                self._sim_check(now)
        if t.poll is not None and now >= t.poll:
            t.poll = now + self.config.registration_poll_s
            if not lent:
                self._poll_registration()
        if t.signal is not None and now >= t.signal:
            t.signal = now + self.config.signal_poll_s
            if not lent:
                self._poll_signal()
        if t.iccid is not None and now >= t.iccid:
            t.iccid = now + self.config.iccid_check_s
            if not lent:
                self._sim_check(now, periodic=True)
        if t.probe is not None and now >= t.probe:
            t.probe = now + self.config.probe_interval_s
            if self._state is ModemState.ONLINE and not self._probe_pending:
                self._probe_pending = True
                self._actions.append(ProbeData())
        self._pump(now)

    # ------------------------------------------------------------------------ command plumbing

    def _send(self, text: str, handler: Handler) -> None:
        self._queue.append(QueuedCommand(text, handler))

    def _then(self, fn: Callable[[float], None]) -> None:
        self._queue.append(QueuedCommand(None, then=fn))

    def _ignore(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            log.debug("modem: %s failed (%s), going on", outcome.command, outcome.result.line)

    def _pump(self, now: float) -> None:
        while self._inflight is None and self._queue and not self._at_stalled and not self._port_lent:
            if self._state in (ModemState.PORT_CLOSED, ModemState.RESETTING):
                self._queue.clear()
                return
            cmd = self._queue.popleft()
            if cmd.text is None:
                assert cmd.then is not None
                cmd.then(now)
                continue
            self._inflight = cmd
            self._inflight_gen = self._gen
            self._inflight_id = None
            self._awaiting_id = True
            self._actions.append(SendAt(cmd.text))

    def _command_done(self, event: CommandEvent, now: float) -> None:
        cmd, gen = self._inflight, self._inflight_gen
        self._inflight = None
        self._inflight_id = None
        if isinstance(event, CommandTimedOut):
            self._at_timeout(event, now)
            return
        if isinstance(event, CommandAborted) or gen != self._gen:
            return
        if isinstance(event, CommandCompleted | CommandFailed) and cmd is not None and cmd.handler:
            cmd.handler(event, now)

    def _at_timeout(self, event: CommandTimedOut, now: float) -> None:
        self._at_stalled = True
        self._queue.clear()
        if self._stalled_since is None:
            self._stalled_since = now
            self._t.unresponsive = now + self.config.at_unresponsive_s
        if self._state is ModemState.RESETTING:
            return  # a reset command may go unanswered; the reset wait runs on
        self._fault(
            FaultKind.AT_TIMEOUT,
            f"no final result to {event.command} within {event.timeout:g} s",
            at_alive=False,
            now=now,
        )

    def _resynced(self, probes: int, now: float) -> None:
        if not self._at_stalled and self._stalled_since is None:
            return
        self._at_stalled = False
        self._stalled_since = None
        self._t.unresponsive = None
        self._events.append(AtRecovered(probes))
        if self._state is ModemState.RECOVERING:
            if self._data_up and self._effective_stat in REGISTERED_STATS:
                self._enter(ModemState.ONLINE, "AT port answers again; the data link stayed up")
                self._online_timers(now)
            else:
                self._probe(now, "AT port answers again")

    # ------------------------------------------------------------------------- state handling

    def _enter(self, state: ModemState, reason: str) -> None:
        old = self._state
        if (old, state) not in TRANSITIONS:
            raise RuntimeError(f"modem manager bug: no transition {old.value} -> {state.value}")
        self._gen += 1
        self._queue.clear()
        self._t = StateTimers(unresponsive=self._t.unresponsive, sim_check=self._t.sim_check)
        self._ndis_wait = False
        if old is not state:
            if old is ModemState.ONLINE:
                self._apn_online = None
                self._events.append(WentOffline(reason))
            self._events.append(StateChanged(old, state, reason))
            log.info("modem: %s -> %s (%s)", old.value, state.value, reason)
        self._state = state
        if state in (ModemState.ONLINE, ModemState.CONNECTING, ModemState.DATA_BACKOFF):
            self._detail = ""

    def _fault(self, kind: FaultKind, reason: str, *, at_alive: bool, now: float) -> None:
        if self._state is ModemState.RECOVERING and kind is FaultKind.AT_TIMEOUT:
            return  # already waiting for a step
        if self._state is not ModemState.PORT_CLOSED:
            self._enter(ModemState.RECOVERING, reason)
        self._detail = reason
        self._events.append(FaultDetected(Fault(kind, reason, at_alive)))

    def _state_timeout(self, now: float) -> None:
        state = self._state
        if state is ModemState.SIM_ABSENT or state is ModemState.SIM_LOCKED:
            self._t.state = now + self.config.sim_poll_s
            self._sim_check(now)
        elif state is ModemState.REGISTERING:
            self._fault(
                FaultKind.NO_SERVICE,
                f"not registered after {self.config.registration_timeout_s:g} s with a ready SIM",
                at_alive=True,
                now=now,
            )
        elif state is ModemState.REG_BACKOFF:
            self._enter(ModemState.REGISTERING, "registration backoff over")
            self._send("AT+COPS=0", self._ignore)
            self._registering(now)
        elif state is ModemState.DATA_BACKOFF:
            self._connect(now)
        elif state is ModemState.CONNECTING and self._ndis_wait:
            self._apn_failed(DataFailure.TIMEOUT, f"no {NDIS_STATUS_URC} within the wait", now)
        elif state is ModemState.RESETTING:
            self._probe(now, "reset wait over")

    def _restarted(self, marker: str, now: float) -> None:
        if self._state is ModemState.PORT_CLOSED:
            return
        self._at_stalled = False
        self._stalled_since = None
        self._t.unresponsive = None
        self._forget_inflight()
        self._stop_data(f"modem restarted ({marker})")
        self._probe(now, f"modem restarted ({marker})")

    # ---------------------------------------------------------------------------------- probe

    def _probe(self, now: float, reason: str) -> None:
        self._enter(ModemState.PROBING, reason)
        self._sim = SimState.UNKNOWN
        self._reg.clear()
        self._effective_stat = STAT_UNKNOWN
        self._pin_sent = False
        self._cpin_retry = False
        self._send("ATE0 V1 +CMEE=1", self._probe_basic)
        for command in ("AT+CGMI", "AT+CGMM", "AT+CGMR", "AT+CGSN"):
            self._send(command, self._identity)
        for command in (*self.config.profile.init_commands, *self.config.profile.sim_hotswap_setup):
            self._send(command, self._ignore)
        self._send("AT+COPS=3,0", self._ignore)
        self._send("AT+CREG=2", self._ignore)
        self._send("AT+CGREG=2", self._ignore)
        self._send("AT+CEREG=2", self._cereg_enabled)
        self._send("AT+C5GREG=2", self._c5greg_enabled)
        # packet-domain event reports (+CGEV): how an ECM/NDIS modem says the network ended the
        # data context, where no NO CARRIER comes; buffered while the port is busy
        self._send("AT+CGEREP=2,1", self._ignore)
        self._then(self._identified_modem)
        self._send("AT+CFUN?", self._cfun_read)
        self._send("AT+CPIN?", self._cpin)

    def _probe_basic(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            # some firmwares refuse the chained form: set each alone
            alone = [QueuedCommand(c, self._ignore) for c in ("ATE0", "ATV1", "AT+CMEE=1")]
            self._queue.extendleft(reversed(alone))

    def _identity(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            return
        value = strip_identity(outcome.lines)
        name = outcome.command.upper()
        if name == "AT+CGMI":
            self._vendor = value
        elif name == "AT+CGMM":
            self._model = value
        elif name == "AT+CGMR":
            self._revision = value.removeprefix("Revision:").strip()
        elif name == "AT+CGSN":
            self._imei = parse_imei(outcome.lines)
            if not self._imei:
                log.warning("modem: +CGSN gave no IMEI (%r): the modem is identified without one", value[:40])
            elif not luhn_valid(self._imei):
                log.warning("modem: IMEI %s has a bad check digit; kept as the modem reports it", self._imei)

    def _cereg_enabled(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        self._has_cereg = isinstance(outcome, CommandCompleted)

    def _c5greg_enabled(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        self._has_c5greg = isinstance(outcome, CommandCompleted)

    def _cfun_read(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        """A radio left off (``+CFUN: 0``) or in flight mode (``+CFUN: 4``) never registers:
        turn it on before anything else. Some modems keep the SIM off at ``+CFUN: 0`` too, so
        this runs before ``+CPIN?``."""
        if isinstance(outcome, CommandFailed):
            return
        level = parse_cfun(outcome.lines)
        if level is None or level.power is RadioPower.ON:
            return
        log.warning(
            "modem: the radio was %s (+CFUN: %d) and would never register: switching it on (AT+CFUN=1)",
            level.power.value,
            level.fun,
        )
        self._events.append(RadioSwitchedOn(level.fun))
        self._queue.appendleft(QueuedCommand("AT+CFUN=1", self._cfun_set))

    def _cfun_set(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            log.error(
                "modem: AT+CFUN=1 was refused (%s): the radio stays off; the recovery ladder's "
                "radio cycle or a modem reset will try again",
                outcome.result.line,
            )

    def _identified_modem(self, now: float) -> None:
        self._events.append(ModemIdentified(self._vendor, self._model, self._revision, self._imei))

    # --------------------------------------------------------------------------- registration

    def _registering(self, now: float) -> None:
        self._t.state = now + self.config.registration_timeout_s
        self._t.poll = now + self.config.registration_poll_s
        self._t.signal = now + self.config.signal_poll_s
        self._t.iccid = now + self.config.iccid_check_s
        self._poll_registration()
        self._poll_signal()

    def _poll_registration(self) -> None:
        if self._state in (ModemState.PORT_CLOSED, ModemState.RECOVERING, ModemState.RESETTING):
            return
        names = ["+CREG", "+CGREG"] + (["+CEREG"] if self._has_cereg else [])
        names += ["+C5GREG"] if self._has_c5greg else []
        for name in names:
            self._send(f"AT{name}?", self._reg_reply)
        self._send("AT+COPS?", self._cops_reply)

    def _poll_signal(self) -> None:
        if self._state in (ModemState.PORT_CLOSED, ModemState.RECOVERING, ModemState.RESETTING):
            return
        if self.config.profile.radio_info_command:
            self._send(self.config.profile.radio_info_command, self._radio_reply)
        self._send("AT+CSQ", self._csq_reply)
        if self._has_cereg:
            self._send("AT+CESQ", self._cesq_reply)

    def _reg_reply(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed) or not outcome.lines:
            return
        info = parse_registration(outcome.lines[0], reply=True)
        if info is not None:
            self._reg_update(outcome.lines[0].split(":", 1)[0], info, now)

    def _cops_reply(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed) or not outcome.lines:
            return
        operator, act = parse_cops(outcome.lines[0])
        self._operator = operator
        if act is not None:
            self._act = act

    def _radio_reply(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            return  # firmware without it: the 3GPP answers stand
        radio = parse_radio_info(outcome.command, outcome.lines)
        if radio != self._radio:
            self._radio = radio
            self._events.append(SignalChanged(self._dbm))

    def _csq_reply(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandCompleted) and outcome.lines:
            dbm = csq_to_dbm(outcome.lines[0])
            if not (self._has_cereg and self._dbm is not None and dbm is not None):
                self._set_signal(dbm)

    def _cesq_reply(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandCompleted) and outcome.lines:
            dbm = cesq_to_dbm(outcome.lines[0])
            if dbm is not None:
                self._set_signal(dbm)

    def _set_signal(self, dbm: int | None) -> None:
        if dbm != self._dbm:
            self._dbm = dbm
            self._events.append(SignalChanged(dbm))

    def _reg_update(self, name: str, info: RegInfo, now: float) -> None:
        self._reg[name] = info.stat
        if info.act is not None and info.stat in REGISTERED_STATS:
            self._act = info.act
        stat = self._data_stat()
        if stat != self._effective_stat:
            self._effective_stat = stat
            rat = ACT_NAMES.get(self._act, "") if self._act is not None else ""
            self._events.append(RegistrationChanged(stat, rat, self._operator))
            if stat in REGISTERED_STATS:
                self._send("AT+COPS?", self._cops_reply)
        self._evaluate_registration(now)

    def _data_stat(self) -> int:
        """The packet-domain status the manager acts on, from every registration line read.

        ``+CREG`` speaks for data only while no packet-domain line (``+CGREG``, ``+CEREG``,
        ``+C5GREG``) has been read, and its SMS-only statuses (6, 7) never do: those need a
        packet-domain registration beside them. Registered wins over denied, denied over the
        limited attaches (11, 8, 6, 7), and those over searching.
        """
        ps = [self._reg[n] for n in PS_REG_NAMES if n in self._reg]
        cs = self._reg.get("+CREG")
        stats = ps or ([cs] if cs is not None else [STAT_UNKNOWN])
        for wanted in (HOME_STATS, ROAMING_STATS):
            found = [s for s in stats if s in wanted]
            if found:
                return found[0]
        if STAT_DENIED in stats or cs == STAT_DENIED:
            return STAT_DENIED
        for limited in (STAT_RLOS, STAT_EMERGENCY_ONLY, STAT_HOME_SMS_ONLY, STAT_ROAMING_SMS_ONLY):
            if limited in stats:
                return limited
        return STAT_SEARCHING if max(stats) == STAT_SEARCHING else STAT_NOT_REGISTERED

    @property
    def sms_registered(self) -> bool:
        """Whether any registration line read says the modem can send and receive SMS."""
        return any(stat in SMS_STATS for stat in self._reg.values())

    def _evaluate_registration(self, now: float) -> None:
        stat = self._effective_stat
        state = self._state
        registered = stat in HOME_STATS or (stat in ROAMING_STATS and self.config.allow_roaming)
        refused = stat == STAT_DENIED or stat in ROAMING_STATS
        limited = LIMITED_REGISTRATION.get(stat, "")
        if state in (ModemState.REGISTERING, ModemState.REG_BACKOFF):
            if registered:
                self._reg_backoff = self.config.registration_backoff_s
                if self._data_wanted:
                    self._connect(now)
                else:
                    self._standby(now, "registered, data not wanted")
            elif refused:
                why = "registration denied" if stat == STAT_DENIED else "roaming, and roaming is not allowed"
                if state is ModemState.REGISTERING:
                    self._refused(why, now)
            elif limited and state is ModemState.REGISTERING:
                self._detail = limited
        elif not registered and state in (
            ModemState.CONNECTING,
            ModemState.DATA_BACKOFF,
            ModemState.ONLINE,
            ModemState.STANDBY,
        ):
            why = "registration lost" if stat not in ROAMING_STATS else "roaming, not allowed"
            if limited:
                why = f"registration lost: {limited}"
            self._stop_data(why)
            self._enter(ModemState.REGISTERING, why)
            self._registering(now)
            if refused:
                self._refused(why, now)
            elif limited:
                self._detail = limited

    def _refused(self, why: str, now: float) -> None:
        delay = self._reg_backoff
        self._reg_backoff = min(self._reg_backoff * 2, self.config.registration_backoff_max_s)
        self._enter(ModemState.REG_BACKOFF, why)
        self._detail = f"{why}: retrying in {delay:g} s"
        self._events.append(RegistrationRefused(why, delay))
        self._t.state = now + delay
        self._t.iccid = now + self.config.iccid_check_s

    # ------------------------------------------------------------------------------ data calls

    def _connect(self, now: float) -> None:
        if self._state is not ModemState.CONNECTING:
            self._enter(ModemState.CONNECTING, "registered")
        self._t.poll = now + self.config.registration_poll_s
        self._t.iccid = now + self.config.iccid_check_s
        iccid = self._iccid or ""
        self._chooser = self._new_chooser(iccid)
        event = self._chooser.start()
        self._try(event, now)

    def _new_chooser(self, iccid: str) -> ApnChooser:
        apn = self.config.apn
        try:
            return ApnChooser.for_sim(
                iccid=iccid,
                imsi=self._imsi,
                mnc_length=self._mnc_length,
                index=self._index,
                memory=self._memory,
                config=apn,
                spn=self._spn,
            )
        except ValueError as exc:
            log.warning("modem: IMSI not usable for the APN lookup (%s): trying config and network APNs", exc)
            candidates = rank_apns(
                override=apn.override,
                last_worked=self._memory.last_worked(iccid),
                provider_apns=(),
                allow_network_apn=apn.allow_network_apn,
            )
            return ApnChooser(iccid, candidates, self._memory)

    def _try(self, event: ApnSelected | ApnsExhausted, now: float) -> None:
        if isinstance(event, ApnsExhausted):
            self._data_rounds += 1
            tried = ", ".join(f"{c.settings.apn or '(network)'}: {r.value}" for c, r in event.tried)
            self._detail = f"no APN worked ({tried or 'no candidates'})"
            log.warning("modem: %s", self._detail)
            if self._data_rounds >= self.config.data_rounds_before_fault:
                self._data_rounds = 0
                self._fault(FaultKind.DATA_SETUP, self._detail, at_alive=True, now=now)
                return
            self._enter(ModemState.DATA_BACKOFF, "every APN failed")
            self._detail = f"no APN worked: retrying in {self.config.data_backoff_s:g} s"
            self._t.state = now + self.config.data_backoff_s
            self._t.poll = now + self.config.registration_poll_s
            return
        self._candidate = event.candidate
        self._candidate_tries = 1
        self._events.append(ApnTrying(event.candidate, event.attempt, event.total))
        self._dial(now)

    def _dial(self, now: float) -> None:
        candidate = self._candidate
        assert candidate is not None
        apn = candidate.settings.apn
        cid = self.config.cid
        profile = self.config.profile
        self._send(f'AT+CGDCONT={cid},"{self.config.pdp_type}","{apn}"', self._context_defined)
        if profile.dial_method is DialMethod.ECM:
            try:
                command = profile.connect_command(cid, apn)
            except ValueError as exc:
                self._queue.clear()
                self._apn_failed(DataFailure.REJECTED, str(exc), now)
                return
            self._send(command, self._ecm_dialled)
        else:
            self._then(self._start_data)

    def _context_defined(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            self._queue.clear()
            self._apn_failed(DataFailure.REJECTED, f"+CGDCONT: {outcome.result.line}", now)
            return
        self._queue.appendleft(QueuedCommand("AT+CGDCONT?", self._context_read))

    def _context_read(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        """Check the modem kept the context as set: some firmwares answer ``OK`` to
        ``+CGDCONT=`` and keep an APN of their own (an operator-locked profile), and the call
        would then go out on it. A modem that lists no such context is believed."""
        candidate = self._candidate
        if isinstance(outcome, CommandFailed) or candidate is None:
            return
        cid = self.config.cid
        context = next((c for c in parse_cgdcont_read(outcome.lines) if c.cid == cid), None)
        if context is None or apn_matches(candidate.settings.apn, context.apn):
            return
        self._queue.clear()
        self._apn_failed(
            DataFailure.REJECTED,
            f"the modem kept APN {context.apn!r} for context {cid} after AT+CGDCONT set "
            f"{candidate.settings.apn!r} (an operator-locked profile?)",
            now,
        )

    def _ecm_dialled(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            if outcome.result.code == CME_NO_NETWORK:
                self._enter(ModemState.REGISTERING, "no network service for the call")
                self._registering(now)
                return
            self._apn_failed(DataFailure.REJECTED, outcome.result.line, now)
            return
        if outcome.command.upper().startswith("AT^NDISDUP"):
            self._ndis_wait = True
            self._t.state = now + self.config.ecm_result_timeout_s
            return
        self._send("AT+CGACT?", self._context_activated)

    def _context_activated(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        """After a vendor dial's ``OK``, whether ``+CGACT?`` shows the context active: a dial
        that the network refused later leaves it inactive, and the interface would carry
        nothing. A modem that does not answer, or lists no such context, is believed."""
        if self._state is not ModemState.CONNECTING:
            return
        active = parse_cgact_read(outcome.lines) if isinstance(outcome, CommandCompleted) else {}
        if active.get(self.config.cid, True):
            self._start_data(now)
            return
        self._apn_failed(
            DataFailure.REJECTED,
            f"the dial answered OK but +CGACT? shows context {self.config.cid} inactive",
            now,
        )

    def _start_data(self, now: float) -> None:
        candidate = self._candidate
        assert candidate is not None
        profile = self.config.profile
        cid = self.config.cid
        dial = f"ATD*99***{cid}#" if profile.ppp_dial == "ATD*99#" else profile.ppp_dial
        request = DataRequest(candidate.settings, cid, profile.dial_method, dial, profile.name)
        self._data_pending = True
        self._actions.append(StartData(request, self._gen))

    def _cannot_run_data(self, detail: str, now: float) -> None:
        """The system cannot run the data link: neither the APN nor the modem is at fault, so the
        APN ranking stays and the recovery ladder is not asked; try again after a long wait."""
        backoff = self.config.config_backoff_s
        self._setup_problem = detail
        log.error(
            "modem: the data link cannot run on this system: %s; trying again in %g s (no restart "
            "needed once fixed)",
            detail,
            backoff,
        )
        self._enter(ModemState.DATA_BACKOFF, "the system cannot run the data link")
        self._detail = f"{detail} (trying again in {backoff:g} s)"
        self._t.state = now + backoff
        self._t.poll = now + self.config.registration_poll_s

    def _apn_failed(self, reason: DataFailure, detail: str, now: float) -> None:
        candidate = self._candidate
        chooser = self._chooser
        if candidate is None or chooser is None or chooser.current is None:
            return
        self._ndis_wait = False
        self._t.state = None
        self._events.append(ApnFailed(candidate, f"{reason.value}: {detail}".rstrip(": ")))
        log.info("modem: APN %r failed: %s %s", candidate.settings.apn, reason.value, detail)
        if reason in _RETRY_SAME_APN and self._candidate_tries < self.config.dial_attempts_per_apn:
            self._candidate_tries += 1
            self._dial(now)
            return
        self._try(chooser.failed(_APN_FAILURE[reason]), now)

    def _online(self, now: float) -> None:
        chooser = self._chooser
        candidate = self._candidate
        assert chooser is not None and candidate is not None
        worked = chooser.worked()
        if worked.memory_changed:
            self._events.append(ApnRemembered(worked.iccid, candidate.settings))
        self._data_rounds = 0
        self._enter(ModemState.ONLINE, "data link up")
        self._events.append(CameOnline(candidate.settings.apn, self._interface))
        self._online_timers(now)

    def _online_timers(self, now: float) -> None:
        self._probe_fails = 0
        self._probe_pending = False
        self._t.poll = now + self.config.registration_poll_s
        self._t.signal = now + self.config.signal_poll_s
        self._t.iccid = now + self.config.iccid_check_s
        self._t.probe = now + self.config.probe_interval_s
        self._send("AT+COPS?", self._cops_reply)
        self._poll_signal()
        if self._candidate is not None:
            self._apn_online = self._candidate.settings.apn

    def _standby(self, now: float, reason: str) -> None:
        """Registered, data not wanted: take the call down (or never start it) and keep polling
        registration, signal and SIM over AT, without data-path probes."""
        had_call = self._state in (ModemState.CONNECTING, ModemState.ONLINE) and (
            self._data_up or self._data_pending or self._candidate is not None
        )
        self._stop_data(reason)
        self._enter(ModemState.STANDBY, reason)
        self._candidate = None
        self._chooser = None
        self._data_rounds = 0
        profile = self.config.profile
        if had_call and profile.dial_method is DialMethod.ECM and profile.ecm_disconnect:
            # the ECM call lives in the modem: DHCP stopping does not end it (PPP ends with pppd)
            self._send(profile.ecm_disconnect.format(cid=self.config.cid), self._ignore)
        self._detail = "data session down: not wanted (a wake brings it up)"
        self._t.poll = now + self.config.registration_poll_s
        self._t.signal = now + self.config.signal_poll_s
        self._t.iccid = now + self.config.iccid_check_s
        self._send("AT+COPS?", self._cops_reply)

    def _stop_data(self, reason: str) -> None:
        if self._data_up or self._data_pending:
            self._actions.append(StopData(reason))
        self._data_up = False
        self._data_pending = False
        self._interface = ""

    def _reattached(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        if isinstance(outcome, CommandFailed):
            # no packet attach: deregister and register again instead
            self._send("AT+COPS=2", self._ignore)
            self._send("AT+COPS=0", self._ignore)
        self._then(self._after_reattach)

    def _after_reattach(self, now: float) -> None:
        self._enter(ModemState.REGISTERING, "re-attached")
        self._reg.clear()
        self._effective_stat = STAT_UNKNOWN
        self._registering(now)

    def _reset_sent(self, outcome: CommandCompleted | CommandFailed, now: float) -> None:
        self._enter(ModemState.RESETTING, "reset command sent")
        self._t.state = now + self.config.reset_wait_s

    # ----------------------------------------------------------------------------------- URCs

    def _packet_domain_event(self, line: str, now: float) -> None:
        """A ``+CGEV`` report: the end of our data context takes the link down and dials again
        (an ECM/NDIS modem sends no ``NO CARRIER``; without this the link probe would notice
        only after ``probe_failures`` probes)."""
        event = parse_cgev(line)
        if event is None:
            log.debug("modem: unreadable +CGEV report %r, ignored", line[:80])
            return
        if not event.ends_context or not event.concerns(self.config.cid):
            return
        if self._state is not ModemState.ONLINE and not (
            self._state is ModemState.CONNECTING and (self._data_pending or self._data_up)
        ):
            return
        why = f"the data context ended ({line.strip()})"
        log.warning("modem: %s: taking the link down and dialling again", why)
        self._events.append(DataContextEnded(line.strip()))
        self._stop_data(why)
        self._enter(ModemState.REGISTERING, why)
        self._registering(now)

    def _urc(self, event: UrcReceived, now: float) -> None:
        name = event.name
        line = event.line
        if name in REG_NAMES:
            info = parse_registration(line, reply=False)
            if info is not None and self._state not in (ModemState.PORT_CLOSED, ModemState.PROBING):
                self._reg_update(name, info, now)
            return
        if name == "+CGEV":
            self._packet_domain_event(line, now)
            return
        if name == NDIS_STATUS_URC:
            if self._state is ModemState.CONNECTING and self._ndis_wait:
                self._ndis_wait = False
                self._t.state = None
                if reply_fields(line)[0] == "1":
                    self._start_data(now)
                else:
                    self._apn_failed(DataFailure.REJECTED, line, now)
            return
        hotswap = self.config.profile.sim_hotswap_urcs
        if line.startswith(hotswap) or name == "+CPIN":
            if self._state in (ModemState.PORT_CLOSED, ModemState.PROBING, ModemState.RESETTING):
                return
            if any(hint in line.upper() for hint in SIM_REMOVED_HINTS):
                log.info("modem: SIM hot-swap URC %r", line)
            self._t.sim_check = now + self.config.sim_debounce_s
