"""The cells of the connectivity matrix, what NAT behaviour predicts for each, and the issue's targets.

Terms are RFC 4787's: mapping EIM (endpoint-independent) or APDM (address and port dependent),
filtering EIF, ADF or APDF. This file holds no I/O: it names cells and judges records.
"""

from __future__ import annotations

from dataclasses import dataclass

from hil.netlab import NatType

SIDE_TYPES: tuple[NatType, ...] = (
    NatType.PUBLIC,
    NatType.FULL_CONE,
    NatType.RESTRICTED_CONE,
    NatType.PORT_RESTRICTED_CONE,
    NatType.CGNAT,
    NatType.SYMMETRIC,
    NatType.SEQUENTIAL_SYMMETRIC,
    NatType.UDP_BLOCKED,
)
"""Rows (device) and columns (viewer). Hairpin is one extra cell: both behind the same NAT."""

EIF = frozenset({NatType.PUBLIC, NatType.FULL_CONE})
"""Endpoint-independent filtering: anyone may send to the mapped address."""
EIM = frozenset(
    {
        NatType.PUBLIC,
        NatType.FULL_CONE,
        NatType.RESTRICTED_CONE,
        NatType.PORT_RESTRICTED_CONE,
        NatType.CGNAT,
        NatType.HAIRPIN,
    }
)
"""Endpoint-independent mapping (the same outer port for every remote)."""
APDM = frozenset({NatType.SYMMETRIC, NatType.SEQUENTIAL_SYMMETRIC})
"""Address-and-port-dependent mapping (a new outer port per remote)."""
APDF_EIM = frozenset({NatType.PORT_RESTRICTED_CONE, NatType.CGNAT, NatType.HAIRPIN})
"""EIM with address-and-port-dependent filtering."""
MAPPERS = frozenset({NatType.SYMMETRIC_UPNP})
"""Routers that map a port on request (PCP, NAT-PMP, UPnP-IGD). Only the device asks, so a mapper
on the viewer's side is just symmetric."""
MAPPING_CELLS: tuple[tuple[NatType, NatType], ...] = ((NatType.SYMMETRIC_UPNP, NatType.SYMMETRIC),)
"""Extra LAN cells: a symmetric device NAT whose router maps ports (miniupnpd), against a symmetric
viewer, the pair that has no direct path without a mapping."""

DIRECT_PATHS = frozenset({"lan", "direct"})
FIRST_BYTE_TARGET_S = 2.0

PROFILE_SUBSET: tuple[tuple[NatType, NatType], ...] = (
    (NatType.CGNAT, NatType.FULL_CONE),
    (NatType.CGNAT, NatType.PORT_RESTRICTED_CONE),
    (NatType.CGNAT, NatType.SYMMETRIC),
    (NatType.SYMMETRIC, NatType.FULL_CONE),
    (NatType.SYMMETRIC, NatType.PORT_RESTRICTED_CONE),
    (NatType.SYMMETRIC, NatType.SYMMETRIC),
)
"""The cells also run on the 3G and GPRS profiles (the profile on the device's uplink; the viewer
stays on LAN). A recorder on a SIM sits behind its carrier's NAT, which is a carrier-grade NAT
(EIM/APDF) or, for about a third of carriers, symmetric; the viewer is at home or in an office
behind a full cone, a port-restricted router, or itself symmetric. The six cells cover the three
outcomes on a slow lossy link: a punch towards an open viewer, a punch between two filtering
NATs, and the relay."""


@dataclass(frozen=True, slots=True)
class Cell:
    """One device NAT × viewer NAT pair on one link profile."""

    device: NatType
    viewer: NatType
    profile: str = "lan"

    @property
    def key(self) -> str:
        """``device/viewer/profile``."""
        return f"{self.device.value}/{self.viewer.value}/{self.profile}"

    @property
    def udp_blocked(self) -> bool:
        """Either side can send no UDP."""
        return NatType.UDP_BLOCKED in (self.device, self.viewer)

    @property
    def device_maps(self) -> bool:
        """The device's router maps its session ports on request (a public port that forwards
        whatever arrives: a server-reflexive candidate any viewer reaches)."""
        return self.device in MAPPERS

    @property
    def both_apdm(self) -> bool:
        """Both sides map per remote (symmetric × symmetric, sequential or random) and the device's
        router maps no port on request."""
        return self.device in APDM and (self.viewer in APDM or self.viewer in MAPPERS)

    @property
    def one_eif(self) -> bool:
        """At least one side filters nothing (public or full cone) and no side blocks UDP."""
        return not self.udp_blocked and (self.device in EIF or self.viewer in EIF)

    @property
    def one_eim(self) -> bool:
        """At least one side maps endpoint-independently and no side blocks UDP."""
        return not self.udp_blocked and (self.device in EIM or self.viewer in EIM)

    @property
    def target_path(self) -> str:
        """The path the issue's targets ask for: ``relay`` for symmetric × symmetric and
        UDP-blocked cells, ``direct`` (lan or direct) where one side has EIM or the device's router
        maps ports, else ``any``."""
        if not self.udp_blocked and self.device_maps:
            return "direct"
        if self.udp_blocked or self.both_apdm:
            return "relay"
        if self.one_eim:
            return "direct"
        return "any"

    @property
    def predicted_path(self) -> str:
        """What NAT behaviour allows: ``relay`` where UDP is blocked (TURN over TCP 443) or where
        both sides map per remote; else ``direct``. Where one side maps per remote and the other
        filters per address and port, plain checks cannot meet: it takes port prediction (a
        sequential NAT) or a birthday search (a random one), see ``punch``."""
        if self.udp_blocked or self.both_apdm:
            return "relay"
        return "direct"

    @property
    def punch(self) -> str:
        """What finds the direct path beyond plain ICE checks: ``port prediction`` (sequential
        mapping against address-and-port filtering), ``birthday search`` (random mapping against
        it), ``port mapping`` (the device's router opens a port on request), or empty."""
        if self.udp_blocked or self.both_apdm:
            return ""
        if self.device_maps:
            return "port mapping"
        sides = {self.device, self.viewer}
        if not sides & APDF_EIM:
            return ""
        if NatType.SEQUENTIAL_SYMMETRIC in sides:
            return "port prediction"
        if NatType.SYMMETRIC in sides:
            return "birthday search"
        return ""

    @property
    def why_not_direct(self) -> str:
        """Why this cell cannot be punched (empty when it can)."""
        if self.udp_blocked:
            return "UDP is blocked: only presence over TCP/TLS and TURN over TCP on 443 get through"
        if self.both_apdm:
            return "both sides map per remote: only the relay works"
        return ""


def lan_cells() -> list[Cell]:
    """Every device × viewer cell on LAN, then the hairpin cell and the port-mapping cells."""
    cells = [Cell(d, v) for d in SIDE_TYPES for v in SIDE_TYPES]
    cells.append(Cell(NatType.HAIRPIN, NatType.HAIRPIN))
    cells += [Cell(d, v) for d, v in MAPPING_CELLS]
    return cells


def profile_cells(profiles: tuple[str, ...] = ("3g", "gprs")) -> list[Cell]:
    """The subset on the slow profiles."""
    return [Cell(d, v, p) for p in profiles for d, v in PROFILE_SUBSET]


ICE_GIVES_UP_S = 30.0
"""The session's ICE checks run at most this long (``ICE_TIMEOUT_S`` in session/connectivity.py)."""
SETTLE_S = ICE_GIVES_UP_S + 15.0
FORWARD_S = 45.0
"""The viewer's own bounds (TURN 5 s per server, answer, 20 s to establish) add up to about this."""


@dataclass(frozen=True, slots=True)
class CellPlan:
    """How one cell is run: timed runs, and how long each wait may take (seconds)."""

    cell: Cell
    runs: int = 1
    wait_for_ice: bool = True
    """Wait for the device's ICE checks to give up before calling the relay final."""
    settle_s: float = SETTLE_S
    """After the first byte: how long to wait for the final path."""
    forward_s: float = FORWARD_S
    """``dvrlink forward`` start to its "forwarding" line."""


def full_plan(cell: Cell, runs: int) -> CellPlan:
    """``make matrix``: ``runs`` timed runs, every path waited for until it is final."""
    return CellPlan(cell, runs=runs)


def quick_plan(cell: Cell) -> CellPlan:
    """``make test``: one run. Where NAT behaviour allows a direct path (and in symmetric ×
    symmetric, a hard invariant) the path is waited for until it is final: direct, or the
    device's ICE checks gave up. On a quiet machine the direct path comes within a few seconds;
    on a busy one ICE takes longer, and a fixed 10 s made cells fail that were only slow.
    Elsewhere the wait is 1 s (the record then says the path was not final)."""
    if cell.predicted_path == "direct" or (
        cell.device is NatType.SYMMETRIC and cell.viewer is NatType.SYMMETRIC
    ):
        return CellPlan(cell)
    return CellPlan(cell, wait_for_ice=False, settle_s=1.0)
