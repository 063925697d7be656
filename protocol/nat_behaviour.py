"""NAT behaviour and the path it predicts between two ends. Sans-I/O, no STUN codec.

One classifier for everything that names a NAT or predicts a path: ``dvrlink netcheck``,
``dvrlinkd netcheck``, the device's report (``nat_type``, item 9), the NAT lab's cells and the
connectivity matrix's targets (``hil/matrix/cells.py``). The RFC 5780 tests that *measure* a
behaviour are ``protocol/nat_classify.py``; what they find is a :class:`NatBehaviour`, and
:attr:`NatBehaviour.profile` is the :class:`NatProfile` the rules here take.

Terms are RFC 4787's. **Mapping**: endpoint-independent (EIM: one outer port for every remote),
address-dependent (ADM) or address-and-port-dependent (APDM, "symmetric"). **Filtering**: who may
send to a mapping: anyone (EIF), any port of an address the inside has sent to (ADF), or only the
exact address and port (APDF).

**The path rules** (:func:`predict_path`; a session always opens on the relay and moves to a
direct path once ICE finds one, so "relay" means it stays there):

1. Either side cannot send UDP: **relay**, over TURN on TCP (port 443 where that is all that is
   let out). Presence then runs over TCP/TLS too.
2. Both sides behind one NAT (the same public address): **lan**, host candidates on the LAN.
3. Either side's behaviour unknown: **unknown** (the relay at least).
4. Both sides map per remote (ADM or APDM): **relay**. Neither side's port towards the other can
   be learned from the broker, so ICE checks cannot meet.
5. Both sides map endpoint-independently: **direct** by plain ICE checks (simultaneous sends
   open both filters, also two APDF filters).
6. One side maps per remote, the other (EIM) filters by address at most (EIF, ADF): **direct**
   by plain ICE checks: the new port the per-remote side uses gets through an address filter.
7. One side maps per remote, the other (EIM) filters by address and port (APDF): **direct**, but
   only by searching for the new port: **port prediction** when the per-remote side allocates
   ports sequentially, a **birthday search** when it allocates them at random.
8. The device's router maps ports on request (PCP, NAT-PMP or UPnP-IGD: :attr:`NatProfile.maps_ports`)
   and the device asks it for each session's port (``[sessions] port_mapping``): **direct** by
   **port mapping** wherever rules 4 and 7 would leave the relay or a search. The mapped public
   port forwards whatever arrives to the device's socket, so the other side's checks get in from
   whichever port its own NAT picks, and the device answers through the same entry. Only the
   device asks for a mapping: a viewer whose router maps ports counts as its NAT's behaviour alone.
   A device's ``nat_type`` does not say that its router maps ports; its ``direct_paths`` (item 11
   of its report, :func:`with_direct_paths`) does, and a viewer's netcheck takes it from there
   (a device that predates the item is predicted by rules 1-7).
9. Both sides have a global IPv6 address (:attr:`NatProfile.ipv6`: no NAT66, at most a stateful
   firewall that lets replies in and drops new inbound flows): **direct** by **ICE checks over
   IPv6**, whatever their IPv4 NATs do (so before rules 3-8). The host candidates are the public
   addresses, and the first check each side sends opens its own firewall for the other's checks,
   as two APDF filters open in rule 5. Checked after rules 1 and 2: a side that cannot send UDP
   has no IPv6 path either, and one NAT still means the LAN. A device says it has IPv6 in its
   report's ``direct_paths``; netcheck's own side has it when it has a global IPv6 address that
   the IPv6 STUN test (where the broker has one) finds unNATed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

Address = tuple[str, int]

UDP_BLOCKED = "UDP blocked"
"""The report's text when no STUN answer comes over UDP."""
NO_NAT = "no NAT"
"""The report's text when the broker sees the device's own address and nothing filters."""


class Mapping(enum.Enum):
    """RFC 4787 mapping behaviour."""

    ENDPOINT_INDEPENDENT = "EIM"
    ADDRESS_DEPENDENT = "ADM"
    ADDRESS_AND_PORT_DEPENDENT = "APDM"


class Filtering(enum.Enum):
    """RFC 4787 filtering behaviour."""

    ENDPOINT_INDEPENDENT = "EIF"
    ADDRESS_DEPENDENT = "ADF"
    ADDRESS_AND_PORT_DEPENDENT = "APDF"


@dataclass(frozen=True, slots=True)
class NatProfile:
    """What the path rules need to know of one side. ``mapping`` or ``filtering`` None: unknown."""

    udp: bool = True
    """The side can send and receive UDP (False: only TCP gets out)."""
    nat: bool = True
    """The side's public address differs from its own (False: no NAT; a firewall may filter)."""
    mapping: Mapping | None = None
    filtering: Filtering | None = None
    sequential: bool = False
    """A per-remote mapping allocates ports in sequence (predictable); False: at random or unknown."""
    maps_ports: bool = False
    """The side's router maps a port on request (PCP, NAT-PMP or UPnP-IGD): a public port that
    forwards whatever arrives to the side's socket. False: it does not, or not known. Not part of
    :attr:`name` or :attr:`nat_type`, which name the NAT's own behaviour (the RFC 5780 tests do not
    see a router's port mapping)."""
    ipv6: bool = False
    """The side has a global IPv6 address behind at most a stateful firewall (no NAT66): its IPv6
    host candidate is its public address (rule 9). False: no IPv6, or not known. Like
    ``maps_ports``, not part of :attr:`name` or :attr:`nat_type`, which describe the IPv4 NAT."""

    @property
    def known(self) -> bool:
        """The rules can judge this side: UDP is blocked, or both behaviours are known."""
        return not self.udp or (self.mapping is not None and self.filtering is not None)

    @property
    def per_remote(self) -> bool:
        """The mapping depends on the remote (ADM or APDM): a new outer port per peer."""
        return self.mapping is not None and self.mapping is not Mapping.ENDPOINT_INDEPENDENT

    @property
    def name(self) -> str:
        """The NAT lab's name for this behaviour: ``udp_blocked``, ``public``, ``firewalled``
        (no NAT but filtering), ``full_cone``, ``restricted_cone``, ``port_restricted_cone``,
        ``symmetric``, ``sequential_symmetric`` or ``unknown``."""
        if not self.udp:
            return "udp_blocked"
        if self.mapping is None or self.filtering is None:
            return "unknown"
        if not self.nat:
            return "public" if self.filtering is Filtering.ENDPOINT_INDEPENDENT else "firewalled"
        if self.mapping is Mapping.ENDPOINT_INDEPENDENT:
            return {
                Filtering.ENDPOINT_INDEPENDENT: "full_cone",
                Filtering.ADDRESS_DEPENDENT: "restricted_cone",
                Filtering.ADDRESS_AND_PORT_DEPENDENT: "port_restricted_cone",
            }[self.filtering]
        return "sequential_symmetric" if self.sequential else "symmetric"

    @property
    def nat_type(self) -> str | None:
        """The device report's text (``nat_type``, item 9, at most 16 bytes): ``EIM/APDF``,
        ``APDM/APDF``, ``no NAT``, ``no NAT, APDF``, ``UDP blocked``; None when unknown."""
        if not self.udp:
            return UDP_BLOCKED
        if self.filtering is None:
            return None
        if not self.nat:
            if self.filtering is Filtering.ENDPOINT_INDEPENDENT:
                return NO_NAT
            return f"{NO_NAT}, {self.filtering.value}"
        if self.mapping is None:
            return None
        return f"{self.mapping.value}/{self.filtering.value}"


def parse_nat_type(text: str | None) -> NatProfile | None:
    """The profile a report's ``nat_type`` text names (the inverse of :attr:`NatProfile.nat_type`;
    the text does not say whether ports are sequential or whether the router maps ports, so
    ``sequential`` and ``maps_ports`` are False). None for
    None or text it does not know (a newer device's): never raises."""
    if text is None:
        return None
    text = text.strip()
    if text == UDP_BLOCKED:
        return NatProfile(udp=False)
    if text == NO_NAT:
        return NatProfile(
            nat=False, mapping=Mapping.ENDPOINT_INDEPENDENT, filtering=Filtering.ENDPOINT_INDEPENDENT
        )
    if text.startswith(f"{NO_NAT}, "):
        filtering = _FILTERINGS.get(text[len(NO_NAT) + 2 :])
        if filtering is None:
            return None
        return NatProfile(nat=False, mapping=Mapping.ENDPOINT_INDEPENDENT, filtering=filtering)
    mapping_text, slash, filtering_text = text.partition("/")
    mapping = _MAPPINGS.get(mapping_text)
    filtering = _FILTERINGS.get(filtering_text)
    if not slash or mapping is None or filtering is None:
        return None
    return NatProfile(mapping=mapping, filtering=filtering)


DIRECT_PATH_NAMES = ("ipv6", "mapping")
"""The names of a report's ``direct_paths`` (item 11): :attr:`NatProfile.ipv6` and
:attr:`NatProfile.maps_ports`."""


def format_direct_paths(*, ipv6: bool, maps_ports: bool) -> str:
    """A report's ``direct_paths`` text: ``ipv6``, ``mapping``, both comma-separated, or ``""``."""
    return ",".join(name for name, on in zip(DIRECT_PATH_NAMES, (ipv6, maps_ports), strict=True) if on)


def with_direct_paths(profile: NatProfile | None, text: str | None) -> NatProfile | None:
    """``profile`` (from ``nat_type``; None: not reported) with what a report's ``direct_paths``
    says: ``ipv6`` sets :attr:`NatProfile.ipv6`, ``mapping`` sets :attr:`NatProfile.maps_ports`.
    A side with IPv6 but no reported NAT type becomes an unknown IPv4 profile with IPv6 (rule 9
    still applies). ``text`` None (not reported) leaves ``profile`` as it is; unknown names are
    ignored. Never raises."""
    if text is None:
        return profile
    names = {name.strip() for name in text.split(",")}
    ipv6, maps_ports = "ipv6" in names, "mapping" in names
    if profile is None:
        return NatProfile(ipv6=True) if ipv6 else None
    return replace(profile, ipv6=ipv6 or profile.ipv6, maps_ports=maps_ports or profile.maps_ports)


_MAPPINGS = {m.value: m for m in Mapping}
_FILTERINGS = {f.value: f for f in Filtering}


@dataclass(frozen=True, slots=True)
class NatBehaviour:
    """What the RFC 5780 tests found (``protocol/nat_classify.py``). ``None`` fields could not be
    determined (see ``notes``)."""

    udp: bool
    """Any answer from the server arrived over UDP."""
    local: Address
    """The local address the tests ran from."""
    mapped: Address | None = None
    """Server-reflexive address from test I (M1)."""
    other_address: Address | None = None
    """The server's OTHER-ADDRESS; None if the server does not support RFC 5780."""
    mapping: Mapping | None = None
    filtering: Filtering | None = None
    hairpin: bool | None = None
    """True if the NAT hairpins; None if not tested (no NAT, or disabled)."""
    mapped_ports: tuple[int, ...] = ()
    """Mapped ports of tests I, II and III, in that order."""
    port_delta: int | None = None
    """When the NAT allocates ports sequentially: the step between the last two new mappings'
    ports (every step between new mappings goes the same way by at most ``MAX_PORT_DELTA``).
    Else None."""
    notes: tuple[str, ...] = ()
    """Why something is unknown, in words."""

    @property
    def nat(self) -> bool:
        """True if the mapped address differs from the local one."""
        return self.mapped is not None and self.mapped != self.local

    @property
    def profile(self) -> NatProfile:
        """What the path rules take from this."""
        return NatProfile(
            udp=self.udp,
            nat=self.nat,
            mapping=self.mapping,
            filtering=self.filtering,
            sequential=self.port_delta is not None,
        )

    @property
    def name(self) -> str:
        """The NAT lab's name for this behaviour (:attr:`NatProfile.name`)."""
        return self.profile.name

    def describe(self) -> str:
        """One line for people, e.g.
        ``port_restricted_cone (EIM/APDF, hairpin no) mapped 198.51.100.2:40001``."""
        if not self.udp:
            return "udp_blocked (no STUN answer over UDP: only TCP/TLS or a TURN relay over TCP will work)"
        parts = [
            self.mapping.value if self.mapping else "mapping ?",
            self.filtering.value if self.filtering else "filtering ?",
        ]
        extra = []
        if self.hairpin is not None:
            extra.append(f"hairpin {'yes' if self.hairpin else 'no'}")
        if self.port_delta is not None:
            extra.append(f"ports step {self.port_delta:+d}")
        text = f"{self.name} ({'/'.join(parts)}{', ' if extra else ''}{', '.join(extra)})"
        if self.mapped is not None:
            text += f" mapped {self.mapped[0]}:{self.mapped[1]}"
        if self.notes:
            text += " [" + "; ".join(self.notes) + "]"
        return text


# -- the path between two sides ---------------------------------------------------------------------


class Path(enum.Enum):
    """Where a session between two sides ends."""

    LAN = "lan"
    DIRECT = "direct"
    RELAY = "relay"
    UNKNOWN = "unknown"


class Punch(enum.Enum):
    """What finds the direct path."""

    NONE = "none"
    """No direct path (relay, or unknown)."""
    HOST = "host candidates"
    """The two sides reach each other on the LAN."""
    IPV6 = "ice checks over IPv6"
    """Plain ICE connectivity checks between the two sides' global IPv6 host candidates (rule 9)."""
    ICE_CHECKS = "ice checks"
    """Plain ICE connectivity checks between server-reflexive candidates."""
    PORT_PREDICTION = "port prediction"
    """The sequential side also offers the next ports (``protocol/port_prediction.py``)."""
    BIRTHDAY_SEARCH = "birthday search"
    """Many sockets on the random side, many ports probed by the other (``session/birthday.py``)."""
    PORT_MAPPING = "port mapping"
    """The device's router forwards a public port it mapped on request to the device's socket (PCP,
    NAT-PMP or UPnP-IGD, ``session/port_mapping.py``); that port is one more candidate."""


@dataclass(frozen=True, slots=True)
class PathPrediction:
    """The path a session between two sides should end on, and why in words."""

    path: Path
    punch: Punch
    reason: str
    relay_over_tcp: bool = False
    """The relay must be reached over TCP (a side cannot send UDP)."""

    @property
    def direct(self) -> bool:
        """The session should end on a direct path (``lan`` or ``direct``)."""
        return self.path in (Path.LAN, Path.DIRECT)


def _side(name: str, profile: NatProfile) -> str:
    text = profile.nat_type or "unknown"
    return f"the {name} ({text})"


def predict_path(
    here: NatProfile | None,
    there: NatProfile | None,
    *,
    here_name: str = "viewer",
    there_name: str = "device",
    same_nat: bool = False,
    asks_mapping: str | None = "device",
) -> PathPrediction:
    """The path between two sides by the rules in the module docstring. ``same_nat``: both are
    behind one NAT (their public addresses are the same). ``here_name``/``there_name`` name the
    sides in the reason. ``asks_mapping``: the name of the side that asks its router for a port
    mapping (rule 8: ``dvrlinkd``'s sessions do, a viewer does not); None: neither side asks (the
    device has ``[sessions] port_mapping = []``). Symmetric in the two sides but for those names.
    Never raises."""
    sides = ((here_name, here), (there_name, there))
    blocked = [name for name, p in sides if p is not None and not p.udp]
    if blocked:
        who = " and the ".join(blocked)
        return PathPrediction(
            Path.RELAY,
            Punch.NONE,
            f"UDP is blocked at the {who}: only TCP gets out, so the session runs on the TURN relay over "
            "TCP (port 443) and no direct path can be punched",
            relay_over_tcp=True,
        )
    if same_nat:
        return PathPrediction(
            Path.LAN,
            Punch.HOST,
            "both sides are behind the same public address: their host candidates meet on the LAN "
            "(or the NAT hairpins)",
        )
    if here is not None and there is not None and here.ipv6 and there.ipv6:
        return PathPrediction(
            Path.DIRECT,
            Punch.IPV6,
            f"the {here_name} and the {there_name} both have a global IPv6 address (no NAT, at most a "
            "stateful firewall): their IPv6 host candidates are their public addresses, and each side's "
            "first ICE check opens its own firewall for the other's, whatever their IPv4 NATs do",
        )
    unknown = [name for name, p in sides if p is None or not p.known]
    if unknown:
        who = " and the ".join(unknown)
        return PathPrediction(
            Path.UNKNOWN,
            Punch.NONE,
            f"the NAT behaviour of the {who} is not known, so the path cannot be predicted: the session "
            "opens on the relay and moves to a direct path if ICE finds one",
        )
    assert here is not None and there is not None
    by_behaviour = _by_behaviour(here, there, here_name, there_name)
    mapper = next(
        (name for name, p in sides if name == asks_mapping and p is not None and p.maps_ports), None
    )
    if mapper is None or by_behaviour.punch is Punch.ICE_CHECKS:
        return by_behaviour
    other = there_name if mapper == here_name else here_name
    without = by_behaviour.path.value
    if by_behaviour.punch is not Punch.NONE:
        without += f" by {by_behaviour.punch.value}"
    return PathPrediction(
        Path.DIRECT,
        Punch.PORT_MAPPING,
        f"the {mapper}'s router maps ports on request (PCP, NAT-PMP or UPnP-IGD) and the {mapper} asks "
        f"it for a public port: the mapped port forwards whatever arrives, so the {other}'s checks get "
        f"in from whichever port its own NAT picks and ICE meets on the mapped candidate (without the "
        f"mapping: {without})",
    )


def _by_behaviour(here: NatProfile, there: NatProfile, here_name: str, there_name: str) -> PathPrediction:
    """Rules 4-7 of the module docstring: two known sides that can send UDP, by their NATs'
    mapping and filtering alone."""
    a, b = _side(here_name, here), _side(there_name, there)
    if here.per_remote and there.per_remote:
        return PathPrediction(
            Path.RELAY,
            Punch.NONE,
            f"{a} and {b} both map per remote: neither side's port towards the other can be learned "
            "from the broker, so ICE checks cannot meet and the session stays on the relay",
        )
    if not here.per_remote and not there.per_remote:
        return PathPrediction(
            Path.DIRECT,
            Punch.ICE_CHECKS,
            f"{a} and {b} both map endpoint-independently: the ports the broker sees are the ports "
            "each side uses towards the other, so ICE checks from both sides open both filters",
        )
    (per_name, per), (eim_name, eim) = (
        ((here_name, here), (there_name, there))
        if here.per_remote
        else ((there_name, there), (here_name, here))
    )
    p, e = _side(per_name, per), _side(eim_name, eim)
    if eim.filtering is not Filtering.ADDRESS_AND_PORT_DEPENDENT:
        return PathPrediction(
            Path.DIRECT,
            Punch.ICE_CHECKS,
            f"{p} uses a new port towards the {eim_name}, but {e} maps endpoint-independently and "
            "filters by address at most, so that port gets through and ICE checks meet",
        )
    if per.sequential:
        return PathPrediction(
            Path.DIRECT,
            Punch.PORT_PREDICTION,
            f"{p} uses a new port towards the {eim_name} and {e} admits only the exact port it sent "
            f"to; the {per_name}'s NAT allocates ports in sequence, so offering the next ports finds it",
        )
    return PathPrediction(
        Path.DIRECT,
        Punch.BIRTHDAY_SEARCH,
        f"{p} uses a new, unpredictable port towards the {eim_name} and {e} admits only the exact "
        "port it sent to: plain ICE checks cannot meet, a birthday search (many sockets against many "
        "ports) finds the port, most often in its first round",
    )
