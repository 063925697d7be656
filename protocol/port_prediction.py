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

A search is skipped on a slow link (``slow_link``): its few hundred checks take tens of seconds
of a GPRS uplink and starve the session on the relay, and on a SIM they cost more data than a
short relayed session. Each side measures the round trip of its STUN Binding with the broker and
advertises it beside the mapping (``rtt <ms>``); a round trip at or above ``SLOW_LINK_RTT_MS`` on
either side leaves the session on the relay. A peer that does not advertise it counts as unknown:
only our own round trip decides then.

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
RTT_ATTRIBUTE = "rtt"
"""The candidate extension attribute giving the round trip of the STUN Binding that found the
candidate, in whole milliseconds."""
MAX_RTT_MS = 60_000
"""Largest advertised round trip read as one (a larger or negative value is ignored)."""
SLOW_LINK_RTT_MS = 500
"""A STUN round trip from which a link is too slow for a birthday search: GPRS takes 600 ms and
more, EDGE about 300, 3G about 150."""
CHECK_BYTES = 124
"""One search check on the wire: a 96-byte STUN Binding (8-character user fragments) with IPv4
and UDP headers."""


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
    """Either part: opening sockets (about 32 kB) or probing (about 127 kB per round)."""
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


@dataclass(frozen=True, slots=True)
class SlowLink:
    """Why a birthday search is skipped (``slow_link``)."""

    ours: bool
    """True: this side's link is slow; False: the peer's (by its advertised round trip)."""
    rtt_ms: int
    """That side's STUN round trip, milliseconds."""
    threshold_ms: int


def slow_link(
    local_rtt_ms: int | None, remote_rtt_ms: int | None, threshold_ms: int = SLOW_LINK_RTT_MS
) -> SlowLink | None:
    """The slow link that rules a birthday search out, or None when the search may run: a STUN
    round trip (ours, or the one the peer advertised) at or above ``threshold_ms``. None for a
    round trip means unknown (a peer that does not advertise it, or no measurement) and rules
    nothing out. With both sides slow, the slower one is named."""
    slow = [
        SlowLink(ours, rtt, threshold_ms)
        for ours, rtt in ((True, local_rtt_ms), (False, remote_rtt_ms))
        if rtt is not None and rtt >= threshold_ms
    ]
    return max(slow, key=lambda link: link.rtt_ms) if slow else None


def search_cost(role: BirthdayRole) -> tuple[int, int]:
    """(checks, bytes) this side's part of a birthday search sends: ``BIRTHDAY_SOCKETS`` checks
    to open, ``BIRTHDAY_PROBES`` per round to probe."""
    checks = BIRTHDAY_SOCKETS if role is BirthdayRole.OPEN else BIRTHDAY_PROBES
    return checks, checks * CHECK_BYTES


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


def attribute_of(sdp: str, name: str) -> str | None:
    """The value of the extension attribute ``name`` of an SDP candidate value (the name-value
    pairs after ``typ <type>``, RFC 8839 section 5.1), or None when absent or without a value."""
    bits = sdp.split()
    for index in range(8, len(bits) - 1, 2):
        if bits[index] == name:
            return bits[index + 1]
    return None


def mapping_of(sdp: str) -> Mapping | None:
    """The ``mapping`` extension attribute of an SDP candidate value, or None (absent, unknown
    value, or malformed)."""
    value = attribute_of(sdp, MAPPING_ATTRIBUTE)
    try:
        return None if value is None else Mapping(value)
    except ValueError:
        return None


def rtt_of(sdp: str) -> int | None:
    """The ``rtt`` extension attribute of an SDP candidate value, milliseconds, or None (absent,
    not a whole number, negative, or above ``MAX_RTT_MS``)."""
    value = attribute_of(sdp, RTT_ATTRIBUTE)
    if value is None or not value.isascii() or not value.isdigit():
        return None
    rtt = int(value)
    return rtt if rtt <= MAX_RTT_MS else None


def with_mapping(sdp: str, mapping: Mapping) -> str:
    """``sdp`` with the ``mapping`` extension attribute appended."""
    return f"{sdp} {MAPPING_ATTRIBUTE} {mapping.value}"


def with_rtt(sdp: str, rtt_ms: float) -> str:
    """``sdp`` with the ``rtt`` extension attribute appended (rounded to whole milliseconds,
    at most ``MAX_RTT_MS``).

    Raises:
        ValueError: a negative round trip.
    """
    if rtt_ms < 0:
        raise ValueError(f"a round trip cannot be negative ({rtt_ms} ms)")
    return f"{sdp} {RTT_ATTRIBUTE} {min(round(rtt_ms), MAX_RTT_MS)}"
