"""One port mapping on a home router, asked for with PCP (RFC 6887) or NAT-PMP (RFC 6886). Sans-I/O.

A router that speaks PCP or NAT-PMP opens an inbound port on its public address on request, for a
lifetime it grants; the client renews the mapping before it runs out and deletes it (lifetime 0)
when done. Both protocols are request/response over UDP to the router's port 5351, retransmitted
on the protocol's schedule until an answer comes. What differs is the wire format and the
schedule; :class:`MappingCore` holds what is common and takes a :class:`MappingWire` for the rest
(``protocol.pcp.PcpWire``, ``protocol.natpmp.NatPmpWire``).

Feed the core the router's datagrams and the time; take its datagrams (all for the router), its
events and its next deadline (``get_timer``/``handle_timer``). Datagrams that are not an answer to
this mapping (another client's nonce, garbage) are counted in ``ignored`` and dropped; nothing
from the network raises. States and transitions are in ``TRANSITIONS``::

    idle --start--> requesting --granted--> mapped --half the lifetime--> renewing --granted--> mapped
    requesting --refused or no answer--> failed     renewing --lifetime over--> lost
    any live state --delete--> deleting --answer or no answer--> deleted
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

Address = tuple[str, int]
"""An IP literal and a port."""


class MappingProtocol(enum.Enum):
    """How a mapping was asked for."""

    PCP = "pcp"
    NATPMP = "natpmp"
    UPNP = "upnp"


class MappingState(enum.Enum):
    """Where one mapping stands (see ``TRANSITIONS``)."""

    IDLE = "idle"
    REQUESTING = "requesting"
    MAPPED = "mapped"
    RENEWING = "renewing"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
    LOST = "lost"


TRANSITIONS: dict[tuple[MappingState, MappingState], str] = {
    (MappingState.IDLE, MappingState.REQUESTING): "start: request sent",
    (MappingState.REQUESTING, MappingState.MAPPED): "granted",
    (MappingState.REQUESTING, MappingState.FAILED): "refused, or no answer after every retransmission",
    (MappingState.MAPPED, MappingState.RENEWING): "renewal due (half the granted lifetime): request sent",
    (MappingState.RENEWING, MappingState.MAPPED): "granted again",
    (MappingState.RENEWING, MappingState.LOST): "refused, or no answer before the lifetime ran out",
    (MappingState.MAPPED, MappingState.LOST): "the granted lifetime ran out (no renewal possible)",
    (MappingState.REQUESTING, MappingState.DELETING): "delete: lifetime 0 sent",
    (MappingState.MAPPED, MappingState.DELETING): "delete: lifetime 0 sent",
    (MappingState.RENEWING, MappingState.DELETING): "delete: lifetime 0 sent",
    (
        MappingState.DELETING,
        MappingState.DELETED,
    ): "deletion answered, or no answer after every retransmission",
    (MappingState.IDLE, MappingState.DELETED): "delete before start",
    (MappingState.FAILED, MappingState.DELETED): "delete (nothing to remove)",
    (MappingState.LOST, MappingState.DELETED): "delete (nothing to remove)",
}

LIVE = frozenset({MappingState.REQUESTING, MappingState.MAPPED, MappingState.RENEWING})
"""States in which the router may hold the mapping."""


# -- what a wire hands the core ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Granted:
    """The router's answer: the mapping exists at ``external`` for ``lifetime_s`` (0: deleted)."""

    external: Address
    lifetime_s: int
    epoch_s: int
    """The router's seconds since its start of epoch (its mapping table's age)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The router's error answer."""

    code: int
    name: str
    lifetime_s: int
    """How long the error stands (RFC 6887 8.3; 0 when the protocol has no such field)."""
    transient: bool
    """The error may pass (resources, network failure): a renewal keeps retrying."""
    other_version: bool = False
    """The router speaks another version of the protocol (a NAT-PMP router asked in PCP)."""


Reply = Granted | Refused


class MappingWire(Protocol):
    """One protocol's encoding and schedule (``PcpWire``, ``NatPmpWire``)."""

    @property
    def protocol(self) -> MappingProtocol:
        """Which protocol this is."""

    @property
    def max_attempts(self) -> int:
        """Transmissions of a new request before it is given up (renewals go on until expiry)."""

    def requests(self, lifetime_s: int) -> list[bytes]:
        """The datagrams that ask for the mapping for ``lifetime_s`` (0: delete it)."""

    def parse(self, data: bytes) -> Reply | None:
        """The answer in ``data``, or None when it is not one to this mapping's request (dropped)."""

    def next_delay(self, previous: float | None) -> float:
        """Seconds to wait for an answer after a transmission, given the previous wait (None for
        the first transmission)."""


# -- events -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MappingEvent:
    """Base of the events of one mapping."""


@dataclass(frozen=True, slots=True)
class MappingCreated(MappingEvent):
    """The router granted the mapping: datagrams to ``external`` reach the internal port."""

    protocol: MappingProtocol
    external: Address
    lifetime_s: int


@dataclass(frozen=True, slots=True)
class MappingRenewed(MappingEvent):
    """A renewal was granted; ``external`` differs from before when ``moved``."""

    external: Address
    lifetime_s: int
    moved: bool


@dataclass(frozen=True, slots=True)
class MappingFailed(MappingEvent):
    """No mapping: the router refused (``reason`` names its error) or never answered.
    ``other_version``: it speaks NAT-PMP, not PCP (ask again in NAT-PMP, RFC 6887 appendix A)."""

    reason: str
    other_version: bool = False


@dataclass(frozen=True, slots=True)
class MappingLost(MappingEvent):
    """A mapping that existed is gone: its renewal was refused or went unanswered until the
    lifetime ran out."""

    reason: str


@dataclass(frozen=True, slots=True)
class MappingDeleted(MappingEvent):
    """The mapping is released; ``confirmed`` when the router answered the deletion."""

    confirmed: bool


# -- the core -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MappingConfig:
    """What a mapping asks for. Times in seconds."""

    lifetime_s: int = 7200
    """Requested lifetime (RFC 6886 recommends 7200 s; the router may grant less)."""
    renew_fraction: float = 0.5
    """Renew when this part of the granted lifetime has passed (RFC 6887 11.2.1: 1/2 to 5/8)."""
    delete_attempts: int = 2
    """Transmissions of a deletion before it is given up (the router expires it anyway)."""

    def __post_init__(self) -> None:
        if not 1 <= self.lifetime_s <= 0xFFFFFFFF:
            raise ValueError(f"lifetime_s must be 1..{0xFFFFFFFF} seconds, got {self.lifetime_s}")
        if not 0.1 <= self.renew_fraction < 1.0:
            raise ValueError(f"renew_fraction must be in [0.1, 1), got {self.renew_fraction}")
        if self.delete_attempts < 1:
            raise ValueError(f"delete_attempts must be at least 1, got {self.delete_attempts}")


@dataclass(frozen=True, slots=True)
class PortMappingConfig:
    """How a device maps its session ports on a home router (``[sessions] port_mapping``)."""

    protocols: tuple[MappingProtocol, ...] = (
        MappingProtocol.PCP,
        MappingProtocol.NATPMP,
        MappingProtocol.UPNP,
    )
    """Protocols to try; empty: no port mapping. NAT-PMP is asked when PCP is not listed or the
    router answered PCP with "unsupported version"."""
    gateway: str | None = None
    """The router's address; None: the gateway of the default route."""
    lifetime_s: int = 3600
    """Lifetime asked for (renewed at half of what is granted; deleted on close)."""
    pcp_attempts: int = 3
    """PCP transmissions before a router that stays silent is given up (3 s, 6 s, 12 s apart)."""
    natpmp_attempts: int = 6
    """NAT-PMP transmissions (250 ms doubling: 6 cover about 16 s)."""
    upnp_timeout_s: float = 3.0
    """How long SSDP discovery and each HTTP exchange with the router may take."""
    description: str = "dvrlink"
    """The mapping's name in the router's UPnP table."""

    def __post_init__(self) -> None:
        if not 1 <= self.lifetime_s <= 0xFFFFFFFF:
            raise ValueError(f"port mapping lifetime_s must be 1..{0xFFFFFFFF} s, got {self.lifetime_s}")
        if self.pcp_attempts < 1 or self.natpmp_attempts < 1 or self.upnp_timeout_s <= 0:
            raise ValueError("port mapping attempts must be at least 1 and upnp_timeout_s above 0")


class MappingCore:
    """One mapping's lifecycle (see the module docstring). Not thread-safe; time is passed in."""

    def __init__(self, wire: MappingWire, config: MappingConfig | None = None) -> None:
        self.wire = wire
        self.config = config or MappingConfig()
        self._state = MappingState.IDLE
        self._events: deque[MappingEvent] = deque()
        self._out: list[bytes] = []
        self._attempts = 0
        self._delay: float | None = None
        self._retransmit_at: float | None = None
        self._renew_at: float | None = None
        self._expires_at: float | None = None
        self.external: Address | None = None
        """The granted external address, while mapped."""
        self.lifetime_s = 0
        """The lifetime last granted."""
        self.ignored = 0
        """Datagrams that were no answer to this mapping."""
        self.transmissions = 0
        """Requests sent so far (first tries, retransmissions, renewals, deletions)."""

    @property
    def state(self) -> MappingState:
        """Where the mapping stands."""
        return self._state

    # -- calls -----------------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Ask for the mapping.

        Raises:
            RuntimeError: called twice (a core maps once; make a new one to map again).
        """
        if self._state is not MappingState.IDLE:
            raise RuntimeError(f"start() on a mapping that is {self._state.value}: make a new MappingCore")
        self._enter(MappingState.REQUESTING)
        self._send(now, self.config.lifetime_s, first=True)

    def renew(self, now: float) -> None:
        """Renew now instead of at the scheduled time (e.g. after the network changed). Does
        nothing unless the mapping is mapped."""
        if self._state is MappingState.MAPPED:
            self._begin_renewal(now)

    def delete(self, now: float) -> None:
        """Release the mapping (lifetime 0). Idempotent; a mapping that never existed is deleted
        at once."""
        if self._state in LIVE:
            self._enter(MappingState.DELETING)
            self._renew_at = self._expires_at = None
            self._send(now, 0, first=True)
        elif self._state in (MappingState.IDLE, MappingState.FAILED, MappingState.LOST):
            self._enter(MappingState.DELETED)
            self._events.append(MappingDeleted(confirmed=False))

    def router_unreachable(self, reason: str, now: float) -> None:
        """The router refused the request at the socket level (ICMP port unreachable: nothing
        listens on its port 5351). A new request fails at once; a renewal or deletion carries on
        retransmitting (the error may be passing)."""
        if self._state is MappingState.REQUESTING:
            self._retransmit_at = None
            self._enter(MappingState.FAILED)
            self._events.append(MappingFailed(f"{self.wire.protocol.value}: {reason}"))

    def receive_datagram(self, data: bytes, now: float) -> None:
        """A datagram from the router (anything else is ignored)."""
        if self._state not in (MappingState.REQUESTING, MappingState.RENEWING, MappingState.DELETING):
            self.ignored += 1
            return
        try:
            reply = self.wire.parse(data)
        except ValueError:
            reply = None
        if reply is None:
            self.ignored += 1
            return
        if self._state is MappingState.DELETING:
            self._retransmit_at = None
            self._enter(MappingState.DELETED)
            self.external = None
            self._events.append(MappingDeleted(confirmed=True))
        elif isinstance(reply, Granted):
            self._granted(reply, now)
        else:
            self._refused(reply, now)

    # -- output ------------------------------------------------------------------------------------------

    def next_event(self) -> MappingEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> Sequence[bytes]:
        """Datagrams for the router queued since the last call."""
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is due, or None."""
        times = [t for t in (self._retransmit_at, self._renew_at, self._expires_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, renew or expire, whichever is due."""
        if self._expires_at is not None and now >= self._expires_at and self._state in LIVE:
            self._retransmit_at = self._renew_at = self._expires_at = None
            self._enter(MappingState.LOST)
            self.external = None
            self._events.append(
                MappingLost(f"no {self.wire.protocol.value} renewal before the lifetime ran out")
            )
            return
        if self._renew_at is not None and now >= self._renew_at and self._state is MappingState.MAPPED:
            self._begin_renewal(now)
            return
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._retransmit(now)

    # -- internals ---------------------------------------------------------------------------------------

    def _enter(self, state: MappingState) -> None:
        if (self._state, state) not in TRANSITIONS:
            raise AssertionError(f"no transition {self._state} -> {state}")
        self._state = state

    def _send(self, now: float, lifetime_s: int, first: bool) -> None:
        if first:
            self._attempts = 0
            self._delay = None
        self._attempts += 1
        self._delay = self.wire.next_delay(self._delay)
        self._retransmit_at = now + self._delay
        self._out += self.wire.requests(lifetime_s)
        self.transmissions += 1

    def _retransmit(self, now: float) -> None:
        state = self._state
        if state is MappingState.REQUESTING and self._attempts >= self.wire.max_attempts:
            self._retransmit_at = None
            self._enter(MappingState.FAILED)
            self._events.append(
                MappingFailed(f"no {self.wire.protocol.value} answer after {self._attempts} requests")
            )
        elif state is MappingState.DELETING and self._attempts >= self.config.delete_attempts:
            self._retransmit_at = None
            self._enter(MappingState.DELETED)
            self.external = None
            self._events.append(MappingDeleted(confirmed=False))
        elif state is MappingState.DELETING:
            self._send(now, 0, first=False)
        elif state in (MappingState.REQUESTING, MappingState.RENEWING):
            self._send(now, self.config.lifetime_s, first=False)
            if state is MappingState.RENEWING and self._expires_at is not None and self._retransmit_at:
                self._retransmit_at = min(self._retransmit_at, self._expires_at)
        else:
            self._retransmit_at = None

    def _begin_renewal(self, now: float) -> None:
        self._renew_at = None
        self._enter(MappingState.RENEWING)
        self._send(now, self.config.lifetime_s, first=True)

    def _granted(self, reply: Granted, now: float) -> None:
        self._retransmit_at = None
        if reply.lifetime_s <= 0:
            # A grant of nothing: treat it as a refusal that cannot pass.
            self._refused(Refused(0, "granted a lifetime of 0", 0, transient=False), now)
            return
        before, renewing = self.external, self._state is MappingState.RENEWING
        self.external, self.lifetime_s = reply.external, reply.lifetime_s
        self._renew_at = now + reply.lifetime_s * self.config.renew_fraction
        self._expires_at = now + reply.lifetime_s
        self._enter(MappingState.MAPPED)
        if renewing:
            self._events.append(
                MappingRenewed(reply.external, reply.lifetime_s, moved=before != reply.external)
            )
        else:
            self._events.append(MappingCreated(self.wire.protocol, reply.external, reply.lifetime_s))

    def _refused(self, reply: Refused, now: float) -> None:
        what = f"{self.wire.protocol.value} refused: {reply.name} ({reply.code})"
        if self._state is MappingState.REQUESTING:
            self._retransmit_at = None
            self._enter(MappingState.FAILED)
            self._events.append(MappingFailed(what, other_version=reply.other_version))
        elif reply.transient and self._expires_at is not None and now < self._expires_at:
            # RFC 6887 8.3: retry a short-lived error after its lifetime, within ours.
            wait = max(reply.lifetime_s, self._delay or 1.0)
            self._retransmit_at = min(now + wait, self._expires_at)
        else:
            self._retransmit_at = self._renew_at = self._expires_at = None
            self._enter(MappingState.LOST)
            self.external = None
            self._events.append(MappingLost(what))


def state_diagram() -> str:
    """The mapping state machine as a Mermaid diagram, generated from ``TRANSITIONS``."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    for (src, dst), cause in TRANSITIONS.items():
        lines.append(f"    {src.value} --> {dst.value}: {cause}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(state_diagram())
