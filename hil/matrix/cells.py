"""The cells of the connectivity matrix, what NAT behaviour predicts for each, and the issue's targets.

The prediction is ``protocol/nat_behaviour.py``'s ``predict_path`` on each side's
``NatType.profile``: the one classifier that ``dvrlink netcheck`` and ``dvrlinkd netcheck`` use.

Terms are RFC 4787's: mapping EIM (endpoint-independent) or APDM (address and port dependent),
filtering EIF, ADF or APDF. This file holds no I/O: it names cells and judges records.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dvrlink.protocol.nat_behaviour import NatProfile, Path, PathPrediction, Punch, predict_path
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

MAPPING_CELLS: tuple[tuple[NatType, NatType], ...] = ((NatType.SYMMETRIC_UPNP, NatType.SYMMETRIC),)
"""Extra LAN cells: a symmetric device NAT whose router maps ports (miniupnpd), against a symmetric
viewer, the pair that has no direct path without a mapping. What a mapping does for a path is
``predict_path``'s rule 8 on ``NatType.SYMMETRIC_UPNP.profile`` (``maps_ports``)."""

IPV6_CELLS: tuple[tuple[NatType, NatType], ...] = ((NatType.SYMMETRIC, NatType.SYMMETRIC),)
"""Extra LAN cells where both sides also have a global IPv6 address behind a stateful firewall (the
lab's IPv6 carrier, ``Lab.ipv6``) beside their IPv4 NATs: symmetric × symmetric, which has no
direct path over IPv4, must end direct over IPv6 (``predict_path``'s rule 9)."""
IPV6_SUFFIX = "+v6"
"""How a cell's key and the report name a side with IPv6: ``symmetric+v6``."""

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
    ipv6: bool = False
    """Both sides also have a global IPv6 address behind a stateful firewall (``Lab.ipv6``)."""

    @property
    def device_name(self) -> str:
        """The device side as the report names it: its NAT type, ``+v6`` with IPv6."""
        return self.device.value + (IPV6_SUFFIX if self.ipv6 else "")

    @property
    def viewer_name(self) -> str:
        """The viewer side as the report names it: its NAT type, ``+v6`` with IPv6."""
        return self.viewer.value + (IPV6_SUFFIX if self.ipv6 else "")

    @property
    def key(self) -> str:
        """``device/viewer/profile`` (each side with ``+v6`` in an IPv6 cell)."""
        return f"{self.device_name}/{self.viewer_name}/{self.profile}"

    def side_profile(self, nat: NatType) -> NatProfile:
        """What the path rules take for a side behind ``nat`` in this cell (with IPv6 or not)."""
        return replace(nat.profile, ipv6=self.ipv6)

    @property
    def prediction(self) -> PathPrediction:
        """What NAT behaviour predicts for this cell, by the same rules ``dvrlink netcheck`` uses
        (``protocol/nat_behaviour.py``: ``predict_path``); the hairpin cell is one NAT."""
        return predict_path(
            self.side_profile(self.viewer),
            self.side_profile(self.device),
            same_nat=self.device is NatType.HAIRPIN and self.viewer is NatType.HAIRPIN,
        )

    @property
    def udp_blocked(self) -> bool:
        """Either side can send no UDP."""
        return self.prediction.relay_over_tcp

    @property
    def device_maps(self) -> bool:
        """The device's router maps its session ports on request (a public port that forwards
        whatever arrives: a server-reflexive candidate any viewer reaches): ``maps_ports`` of its
        profile. A mapper on the viewer's side counts for nothing; the viewer asks for no mapping."""
        return self.device.profile.maps_ports

    @property
    def both_apdm(self) -> bool:
        """Both sides map per remote (symmetric × symmetric, sequential or random) and the
        prediction is the relay: no port mapping of the device's router opens a direct path."""
        per_remote = self.device.profile.per_remote and self.viewer.profile.per_remote
        return per_remote and self.prediction.path is Path.RELAY

    @property
    def one_eim(self) -> bool:
        """At least one side maps endpoint-independently and no side blocks UDP."""
        per_remote = self.device.profile.per_remote and self.viewer.profile.per_remote
        return not self.udp_blocked and not per_remote

    @property
    def target_path(self) -> str:
        """The path the issue's targets ask for: ``relay`` for symmetric × symmetric and
        UDP-blocked cells, ``direct`` (lan or direct) where one side has EIM or the device's router
        maps ports, else ``any``: what ``predict_path`` predicts."""
        prediction = self.prediction
        if prediction.path is Path.RELAY:
            return "relay"
        return "direct" if prediction.direct else "any"

    @property
    def predicted_path(self) -> str:
        """What NAT behaviour allows: ``relay`` where UDP is blocked (TURN over TCP 443) or where
        both sides map per remote and the device's router maps no port; else ``direct``. Where one
        side maps per remote and the other filters per address and port, plain checks cannot meet:
        it takes port prediction (a sequential NAT) or a birthday search (a random one), see
        ``punch``; a device's port mapping meets any viewer."""
        return "relay" if self.prediction.path is Path.RELAY else "direct"

    @property
    def punch(self) -> str:
        """What finds the direct path beyond plain ICE checks: ``port prediction`` (sequential
        mapping against address-and-port filtering), ``birthday search`` (random mapping against
        it), ``port mapping`` (the device's router opens a port on request), or empty."""
        punch = self.prediction.punch
        return "" if punch in (Punch.NONE, Punch.HOST, Punch.ICE_CHECKS, Punch.IPV6) else punch.value

    @property
    def why_not_direct(self) -> str:
        """Why this cell cannot be punched (empty when it can)."""
        prediction = self.prediction
        return "" if prediction.direct else prediction.reason


def lan_cells() -> list[Cell]:
    """Every device × viewer cell on LAN, then the hairpin cell, the port-mapping cells and the
    IPv6 cells."""
    cells = [Cell(d, v) for d in SIDE_TYPES for v in SIDE_TYPES]
    cells.append(Cell(NatType.HAIRPIN, NatType.HAIRPIN))
    cells += [Cell(d, v) for d, v in MAPPING_CELLS]
    cells += [Cell(d, v, ipv6=True) for d, v in IPV6_CELLS]
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
