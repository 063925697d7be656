"""The modem state machine's states and its one transition table.

:data:`TRANSITIONS` lists every transition :class:`~dvrlink.modem.manager.ModemManager` makes,
with its cause; the manager refuses any other. The diagram in ``modem/README.md`` is generated
from it: ``python -m dvrlink.modem.manager_states``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dvrlink.protocol.state_diagram import mermaid_state_diagram


class ModemState(enum.Enum):
    """Where the modem is, from a closed port to online; its transitions are :data:`TRANSITIONS`."""

    PORT_CLOSED = "port-closed"
    PROBING = "probing"
    SIM_ABSENT = "sim-absent"
    SIM_LOCKED = "sim-locked"
    SIM_IDENTIFYING = "sim-identifying"
    REGISTERING = "registering"
    REG_BACKOFF = "registration-backoff"
    CONNECTING = "connecting"
    DATA_BACKOFF = "data-backoff"
    ONLINE = "online"
    STANDBY = "standby"
    """Registered on the network (so SMS arrive), the data session down because nobody wants it
    (``[presence] mode = "sms-wake"`` while the recorder sleeps): no dial, no data-path probe."""
    RECOVERING = "recovering"
    RESETTING = "resetting"


class SimState(enum.Enum):
    """What is known of the SIM (shown in ``ModemStatus.sim``)."""

    UNKNOWN = "unknown"
    ABSENT = "absent"
    LOCKED = "locked"
    READY = "ready"
    IDENTIFIED = "identified"


M = ModemState
TRANSITIONS: dict[tuple[ModemState, ModemState], str] = {
    # from port-closed
    (M.PORT_CLOSED, M.PROBING): "port opened",
    (M.PORT_CLOSED, M.PORT_CLOSED): "port closed",
    (M.PORT_CLOSED, M.RECOVERING): "fault: waiting for a recovery step",
    # from probing
    (M.PROBING, M.SIM_ABSENT): "no SIM",
    (M.PROBING, M.SIM_LOCKED): "SIM needs a PIN/PUK that cannot be sent",
    (M.PROBING, M.SIM_IDENTIFYING): "SIM ready",
    (M.PROBING, M.PROBING): "modem restarted during the probe",
    (M.PROBING, M.PORT_CLOSED): "port closed",
    (M.PROBING, M.RECOVERING): "fault: waiting for a recovery step",
    # from sim-absent
    (M.SIM_ABSENT, M.SIM_IDENTIFYING): "SIM inserted and ready",
    (M.SIM_ABSENT, M.SIM_LOCKED): "SIM inserted, locked",
    (M.SIM_ABSENT, M.SIM_ABSENT): "still no SIM",
    (M.SIM_ABSENT, M.PORT_CLOSED): "port closed",
    (M.SIM_ABSENT, M.RECOVERING): "fault: waiting for a recovery step",
    (M.SIM_ABSENT, M.PROBING): "modem restarted: probe again",
    # from sim-locked
    (M.SIM_LOCKED, M.SIM_IDENTIFYING): "SIM ready (another SIM, or unlocked)",
    (M.SIM_LOCKED, M.SIM_ABSENT): "SIM removed",
    (M.SIM_LOCKED, M.PORT_CLOSED): "port closed",
    (M.SIM_LOCKED, M.RECOVERING): "fault: waiting for a recovery step",
    (M.SIM_LOCKED, M.PROBING): "modem restarted: probe again",
    # from sim-identifying
    (M.SIM_IDENTIFYING, M.REGISTERING): "SIM identified",
    (M.SIM_IDENTIFYING, M.SIM_ABSENT): "SIM gone while reading it",
    (M.SIM_IDENTIFYING, M.SIM_IDENTIFYING): "SIM swapped while reading it",
    (M.SIM_IDENTIFYING, M.PORT_CLOSED): "port closed",
    (M.SIM_IDENTIFYING, M.RECOVERING): "fault: waiting for a recovery step",
    (M.SIM_IDENTIFYING, M.PROBING): "modem restarted: probe again",
    (M.SIM_IDENTIFYING, M.SIM_LOCKED): "SIM locked",
    # from registering
    (M.REGISTERING, M.CONNECTING): "registered",
    (M.REGISTERING, M.STANDBY): "registered, data not wanted",
    (M.REGISTERING, M.REG_BACKOFF): "registration denied, or roaming not allowed",
    (M.REGISTERING, M.PORT_CLOSED): "port closed",
    (M.REGISTERING, M.RECOVERING): "fault: waiting for a recovery step",
    (M.REGISTERING, M.PROBING): "modem restarted: probe again",
    (M.REGISTERING, M.SIM_ABSENT): "SIM removed",
    (M.REGISTERING, M.SIM_LOCKED): "SIM locked",
    (M.REGISTERING, M.SIM_IDENTIFYING): "another SIM inserted",
    # from registration-backoff
    (M.REG_BACKOFF, M.REGISTERING): "backoff over",
    (M.REG_BACKOFF, M.CONNECTING): "registered during the backoff",
    (M.REG_BACKOFF, M.STANDBY): "registered during the backoff, data not wanted",
    (M.REG_BACKOFF, M.PORT_CLOSED): "port closed",
    (M.REG_BACKOFF, M.RECOVERING): "fault: waiting for a recovery step",
    (M.REG_BACKOFF, M.PROBING): "modem restarted: probe again",
    (M.REG_BACKOFF, M.SIM_ABSENT): "SIM removed",
    (M.REG_BACKOFF, M.SIM_LOCKED): "SIM locked",
    (M.REG_BACKOFF, M.SIM_IDENTIFYING): "another SIM inserted",
    # from connecting
    (M.CONNECTING, M.ONLINE): "data link up",
    (M.CONNECTING, M.STANDBY): "data no longer wanted: the call is taken down",
    (M.CONNECTING, M.DATA_BACKOFF): "every APN failed, or the system cannot run the data link",
    (M.CONNECTING, M.REGISTERING): "registration lost, or no network service for the call",
    (M.CONNECTING, M.PORT_CLOSED): "port closed",
    (M.CONNECTING, M.RECOVERING): "fault: waiting for a recovery step",
    (M.CONNECTING, M.PROBING): "modem restarted: probe again",
    (M.CONNECTING, M.SIM_ABSENT): "SIM removed",
    (M.CONNECTING, M.SIM_LOCKED): "SIM locked",
    (M.CONNECTING, M.SIM_IDENTIFYING): "another SIM inserted",
    # from data-backoff
    (M.DATA_BACKOFF, M.CONNECTING): "backoff over",
    (M.DATA_BACKOFF, M.STANDBY): "data no longer wanted",
    (M.DATA_BACKOFF, M.REGISTERING): "registration lost",
    (M.DATA_BACKOFF, M.PORT_CLOSED): "port closed",
    (M.DATA_BACKOFF, M.RECOVERING): "fault: waiting for a recovery step",
    (M.DATA_BACKOFF, M.PROBING): "modem restarted: probe again",
    (M.DATA_BACKOFF, M.SIM_ABSENT): "SIM removed",
    (M.DATA_BACKOFF, M.SIM_LOCKED): "SIM locked",
    (M.DATA_BACKOFF, M.SIM_IDENTIFYING): "another SIM inserted",
    # from online
    (M.ONLINE, M.REGISTERING): "registration lost, or the data link on the AT port ended",
    (M.ONLINE, M.CONNECTING): "data link lost while registered",
    (M.ONLINE, M.STANDBY): "data no longer wanted: the data link is taken down",
    (M.ONLINE, M.PORT_CLOSED): "port closed",
    (M.ONLINE, M.RECOVERING): "fault: waiting for a recovery step",
    (M.ONLINE, M.PROBING): "modem restarted: probe again",
    (M.ONLINE, M.SIM_ABSENT): "SIM removed",
    (M.ONLINE, M.SIM_LOCKED): "SIM locked",
    (M.ONLINE, M.SIM_IDENTIFYING): "another SIM inserted",
    # from standby
    (M.STANDBY, M.CONNECTING): "data wanted again",
    (M.STANDBY, M.REGISTERING): "registration lost",
    (M.STANDBY, M.PORT_CLOSED): "port closed",
    (M.STANDBY, M.RECOVERING): "fault: waiting for a recovery step",
    (M.STANDBY, M.PROBING): "modem restarted: probe again",
    (M.STANDBY, M.SIM_ABSENT): "SIM removed",
    (M.STANDBY, M.SIM_LOCKED): "SIM locked",
    (M.STANDBY, M.SIM_IDENTIFYING): "another SIM inserted",
    # from recovering
    (M.RECOVERING, M.ONLINE): "AT port answers again; the data link stayed up",
    (M.RECOVERING, M.PROBING): "recovery step done: probe again",
    (M.RECOVERING, M.REGISTERING): "re-attached: register again",
    (M.RECOVERING, M.RESETTING): "reset command sent",
    (M.RECOVERING, M.PORT_CLOSED): "port closed",
    (M.RECOVERING, M.RECOVERING): "fault: waiting for a recovery step",
    # from resetting
    (M.RESETTING, M.PROBING): "modem restarted (or the wait is over)",
    (M.RESETTING, M.PORT_CLOSED): "port closed",
    (M.RESETTING, M.RECOVERING): "fault: waiting for a recovery step",
}
"""Every transition the manager makes, with its cause, grouped by the state it leaves."""


@dataclass(slots=True)
class StateTimers:
    """The manager's deadlines (its ``now`` clock); None: not armed. A state change keeps only
    ``unresponsive`` and ``sim_check``."""

    poll: float | None = None
    signal: float | None = None
    iccid: float | None = None
    probe: float | None = None
    sim_check: float | None = None
    state: float | None = None
    """The current state's own timeout (backoff end, registration timeout, reset wait, ...)."""
    unresponsive: float | None = None


def state_diagram() -> str:
    """The modem state machine as a Mermaid diagram, generated from :data:`TRANSITIONS`."""
    return mermaid_state_diagram(TRANSITIONS, ModemState.PORT_CLOSED)


if __name__ == "__main__":
    print(state_diagram())
