"""What the modem manager asks its driver to do (:class:`ManagerAction`) and what it reports
(:class:`ManagerEvent`, typed and past tense)."""

from __future__ import annotations

from dataclasses import dataclass

from dvrlink.modem.apn import ApnCandidate, ApnSettings
from dvrlink.modem.data_link import DataRequest
from dvrlink.modem.ladder import Fault
from dvrlink.modem.manager_states import ModemState


@dataclass(frozen=True, slots=True)
class ManagerAction:
    """Base of what the manager asks its driver to do."""


@dataclass(frozen=True, slots=True)
class SendAt(ManagerAction):
    """Submit ``command`` to the AT engine and report its id with ``at_submitted``."""

    command: str


@dataclass(frozen=True, slots=True)
class StartData(ManagerAction):
    """Call ``DataLink.up(request)`` and report with ``data_result``."""

    request: DataRequest
    generation: int
    """Pass it back with ``data_result``."""


@dataclass(frozen=True, slots=True)
class StopData(ManagerAction):
    """Call ``DataLink.down()`` (after a running ``up`` ends)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ProbeData(ManagerAction):
    """Call ``DataLink.probe()`` and report with ``probe_result``."""


@dataclass(frozen=True, slots=True)
class ResyncPort(ManagerAction):
    """Ask the AT engine to resynchronise (ladder step 1)."""


@dataclass(frozen=True, slots=True)
class ReopenPort(ManagerAction):
    """Close the port, wait until it is back, open it again (after a reset the port re-enumerates)."""

    reason: str


# ------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class ManagerEvent:
    """Base of the modem manager's events."""


@dataclass(frozen=True, slots=True)
class StateChanged(ManagerEvent):
    old: ModemState
    new: ModemState
    reason: str


@dataclass(frozen=True, slots=True)
class ModemIdentified(ManagerEvent):
    vendor: str
    model: str
    revision: str
    imei: str


@dataclass(frozen=True, slots=True)
class SimAbsent(ManagerEvent):
    """No SIM is inserted (or it cannot be read)."""


@dataclass(frozen=True, slots=True)
class SimLocked(ManagerEvent):
    """The SIM needs a PIN or PUK the manager will not send; ``detail`` says what to do."""

    detail: str


@dataclass(frozen=True, slots=True)
class SimIdentified(ManagerEvent):
    """A ready SIM was read. ``iccid`` in full: log it with :func:`redact_iccid`."""

    iccid: str
    mcc: str
    mnc: str
    spn: str


@dataclass(frozen=True, slots=True)
class SimChanged(ManagerEvent):
    """Another SIM is in the tray (``old`` None: the first one since the SIM was absent)."""

    old: str | None
    new: str


@dataclass(frozen=True, slots=True)
class SimRemoved(ManagerEvent):
    iccid: str | None


@dataclass(frozen=True, slots=True)
class RegistrationChanged(ManagerEvent):
    """The effective packet-domain registration status changed (3GPP ``<stat>``)."""

    stat: int
    rat: str
    operator: str


@dataclass(frozen=True, slots=True)
class RegistrationRefused(ManagerEvent):
    """Denied, or roaming while roaming is not allowed; the manager retries after ``retry_in``."""

    reason: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class SignalChanged(ManagerEvent):
    dbm: int | None


@dataclass(frozen=True, slots=True)
class ApnTrying(ManagerEvent):
    candidate: ApnCandidate
    attempt: int
    total: int


@dataclass(frozen=True, slots=True)
class ApnFailed(ManagerEvent):
    candidate: ApnCandidate
    reason: str


@dataclass(frozen=True, slots=True)
class ApnRemembered(ManagerEvent):
    """``settings`` worked for ``iccid`` and the memory changed: save it (``ApnMemoryFile``)."""

    iccid: str
    settings: ApnSettings


@dataclass(frozen=True, slots=True)
class CameOnline(ManagerEvent):
    apn: str
    interface: str


@dataclass(frozen=True, slots=True)
class WentOffline(ManagerEvent):
    reason: str


@dataclass(frozen=True, slots=True)
class FaultDetected(ManagerEvent):
    """A fault for the recovery ladder; the manager waits in ``RECOVERING`` for a step."""

    fault: Fault


@dataclass(frozen=True, slots=True)
class RadioSwitchedOn(ManagerEvent):
    """``+CFUN?`` found the radio off or in flight mode at the probe; the manager turned it on."""

    fun: int
    """What ``+CFUN?`` said: 0 (minimum), 4 (flight mode) or a vendor mode."""


@dataclass(frozen=True, slots=True)
class DataContextEnded(ManagerEvent):
    """A ``+CGEV`` report said the data context ended (the network or the modem deactivated it,
    or detached) while the data link was up or coming up; the manager takes the link down and
    dials again."""

    report: str


@dataclass(frozen=True, slots=True)
class AtRecovered(ManagerEvent):
    """The AT port answers again after a timeout (ladder step 1 worked)."""

    probes: int
