"""Port prediction for NATs that give each new remote its own outer port, in sequence.

A NAT with address-and-port-dependent mapping (APDM, RFC 4787) gives the flow towards the peer
an outer port that the STUN server never sees, so the peer's checks aim at the wrong port and a
peer behind an address-and-port-dependent filter drops ours. Many such NATs (home routers and
some carrier NATs) allocate ports in sequence: the flow after one to port *p* gets *p + s* for a
small stride *s*. Mapping the same socket towards two or three of the broker's RFC 5780
addresses shows the stride; the ports just after the last one seen are then good guesses for the
flow towards the peer, and are offered to it as extra server-reflexive candidates. The peer's
checks to the guesses open its own filter for them, so whichever guess is right lets our check
through.

A NAT that picks ports at random gives strides with no pattern: nothing can be predicted. Against
a peer whose NAT maps endpoint-independently (its one outer port is known) but filters per address
and port, a birthday search still finds a path (the search Tailscale describes for "hard" NATs):
the random side opens ``BIRTHDAY_SOCKETS`` sockets, each sending an ICE check to the peer's
server-reflexive address, so its NAT holds that many random outer ports open towards the peer;
the peer sends ``BIRTHDAY_PROBES`` checks to random ports of the random side's address, each
opening its own filter for one port. Any port in both sets is a path, found in whichever order
the packets meet: with 256 sockets and 1,024 probes over 64,512 ports, 98 % of the time
(``birthday_success``). Each side learns what the other's NAT does from an extension attribute
on its server-reflexive candidate (``mapping eim|sequential|random``, RFC 8839 section 5.1
allows extension attributes; peers that do not know it ignore it).

No I/O here: the caller sends the STUN Bindings and passes the mapped ports it saw, in order.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

MAX_STRIDE = 8
"""Largest step between two consecutive mappings still read as a sequence (a NAT serving other
hosts skips a few ports between ours)."""
WINDOW = 8
"""How many ports past the last mapping seen are offered; the flows this socket opens between the
STUN probes and its check towards the peer (checks to the peer's other candidates, a probe
answered late) each take one."""
LOWEST_PORT = 1024
HIGHEST_PORT = 65535
BIRTHDAY_SOCKETS = 256
"""Sockets the random-mapping side opens towards the peer in a birthday search."""
BIRTHDAY_PROBES = 1024
"""Checks the endpoint-independent side sends to random ports of the peer in a birthday search."""
MAPPING_ATTRIBUTE = "mapping"
"""The candidate extension attribute naming the NAT's mapping (``Mapping`` values)."""


class Mapping(enum.Enum):
    """How a NAT maps one socket's flows to different remotes, from the mapped ports seen."""

    EIM = "eim"
    """The same outer port for every remote (or no NAT)."""
    SEQUENTIAL = "sequential"
    """A new port per remote, a small stride from the last (``predict`` guesses the next)."""
    RANDOM = "random"
    """A new port per remote with no pattern: only a birthday search can punch it."""


class SearchBudget(enum.Enum):
    """How much of a birthday search this side may spend (``[sessions] port_search``)."""

    FULL = "full"
    """Either part: opening sockets (about 31 kB) or probing (about 123 kB per round)."""
    LIGHT = "light"
    """Only the opening part; on a metered link (a recorder on a SIM) the probes cost too much."""
    OFF = "off"
    """No birthday search (port prediction still runs: it costs two STUN round trips)."""


class BirthdayRole(enum.Enum):
    """This side's part in a birthday search (``birthday_role``)."""

    OPEN = "open"
    """Random mapping here: open ``BIRTHDAY_SOCKETS`` sockets towards the peer."""
    PROBE = "probe"
    """Endpoint-independent mapping here: probe ``BIRTHDAY_PROBES`` random ports of the peer."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the mappings showed."""

    mapping: Mapping | None
    """None with fewer than two mappings."""
    stride: int | None
    """The step between consecutive mappings; None: no sequence (or the same port each time)."""
    ports: tuple[int, ...]
    """Outer ports to offer the peer, most likely first (empty without a stride)."""


def stride_of(mapped: Sequence[int], max_stride: int = MAX_STRIDE) -> int | None:
    """The sequence step of consecutive outer ports ``mapped`` (the same socket towards different
    remotes, in the order the flows opened), or None.

    The last step wins when it is small: two flows of ours may straddle the end of the NAT's port
    range or another host's flow, so an earlier odd step does not spoil a later good one. Equal
    ports mean endpoint-independent mapping: nothing to predict (None).
    """
    for earlier, later in reversed(list(itertools.pairwise(mapped))):
        step = later - earlier
        if step != 0 and abs(step) <= max_stride:
            return step
    return None


def predict(mapped: Sequence[int], window: int = WINDOW, max_stride: int = MAX_STRIDE) -> Prediction:
    """The ports to offer for the next flows of a socket whose flows so far were mapped to
    ``mapped`` (in order).

    The guesses continue the sequence from the last mapping, ``window`` steps; ports already seen
    (taken by our own probes) and ports outside 1024-65535 are left out.

    Raises:
        ValueError: ``window`` below 1 or ``max_stride`` below 1.
    """
    if window < 1 or max_stride < 1:
        raise ValueError(f"window ({window}) and max_stride ({max_stride}) must be at least 1")
    stride = stride_of(mapped, max_stride)
    if stride is None:
        return Prediction(classify(mapped, max_stride), None, ())
    seen = set(mapped)
    last = mapped[-1]
    ports = []
    for step in range(1, window + 1):
        port = last + stride * step
        if LOWEST_PORT <= port <= HIGHEST_PORT and port not in seen:
            ports.append(port)
    return Prediction(Mapping.SEQUENTIAL, stride, tuple(ports))


def classify(mapped: Sequence[int], max_stride: int = MAX_STRIDE) -> Mapping | None:
    """The mapping behaviour shown by consecutive outer ports of one socket towards different
    remotes; None with fewer than two."""
    if len(mapped) < 2:
        return None
    if len(set(mapped)) == 1:
        return Mapping.EIM
    if stride_of(mapped, max_stride) is not None:
        return Mapping.SEQUENTIAL
    return Mapping.RANDOM


def birthday_role(
    local: Mapping | None, remote: Mapping | None, budget: SearchBudget = SearchBudget.FULL
) -> BirthdayRole | None:
    """This side's part in a birthday search, or None when there is none to do: only a random
    mapping against an endpoint-independent one needs (and allows) it, and ``budget`` may rule a
    part out. Two random sides would need both sets of ports to meet in the middle: no search,
    the relay serves."""
    if budget is SearchBudget.OFF:
        return None
    if local is Mapping.RANDOM and remote is Mapping.EIM:
        return BirthdayRole.OPEN
    if local is Mapping.EIM and remote is Mapping.RANDOM and budget is SearchBudget.FULL:
        return BirthdayRole.PROBE
    return None


def probe_ports(
    count: int, rng: random.Random, low: int = LOWEST_PORT, high: int = HIGHEST_PORT
) -> list[int]:
    """``count`` distinct random ports in ``low``-``high`` for the probing side of a birthday search.

    Raises:
        ValueError: ``count`` larger than the range, or an empty range.
    """
    if not 0 < low <= high <= HIGHEST_PORT or count > high - low + 1:
        raise ValueError(f"cannot pick {count} distinct ports in {low}-{high}")
    return rng.sample(range(low, high + 1), count)


def birthday_success(sockets: int, probes: int, span: int = HIGHEST_PORT - LOWEST_PORT + 1) -> float:
    """The chance that ``probes`` distinct random ports out of ``span`` hit at least one of
    ``sockets`` random outer ports (hypergeometric: 1 - C(span - sockets, probes) / C(span, probes))."""
    if sockets <= 0 or probes <= 0:
        return 0.0
    if sockets + probes > span:
        return 1.0
    miss = math.lgamma(span - sockets + 1) - math.lgamma(span - sockets - probes + 1)
    miss -= math.lgamma(span + 1) - math.lgamma(span - probes + 1)
    return 1.0 - math.exp(miss)


def mapping_of(sdp: str) -> Mapping | None:
    """The ``mapping`` extension attribute of an SDP candidate value, or None (absent, unknown
    value, or malformed)."""
    bits = sdp.split()
    for index in range(8, len(bits) - 1, 2):
        if bits[index] == MAPPING_ATTRIBUTE:
            try:
                return Mapping(bits[index + 1])
            except ValueError:
                return None
    return None


def with_mapping(sdp: str, mapping: Mapping) -> str:
    """``sdp`` with the ``mapping`` extension attribute appended."""
    return f"{sdp} {MAPPING_ATTRIBUTE} {mapping.value}"
