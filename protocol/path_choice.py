"""The order in which a viewer prefers the ways to a device (sans-I/O).

From best to worst::

    lan      found on the LAN (``protocol.lan_discovery``, no broker), or an ICE pair of two host
             candidates on a private, link-local or loopback address
    direct6  an ICE pair over IPv6 to a global address (no NAT on the way, usually)
    direct   an ICE pair over IPv4 (host to a public address, server-reflexive, port-mapped)
    relay    the broker's TURN relay

Two places use the order:

- **Before a session** (``plan_sources``): a viewer with LAN discovery on looks on the LAN first
  and only then asks the broker; ``--relay-only`` skips the LAN (a LAN session has no relay).
- **During a session** (``best``, ``pair_kind``): of the paths that are ready, the session moves
  to the best one. ``session.connectivity.PATH_RANK`` ranks its path labels the same way (a test
  holds the two together); an IPv6 label slots in between ``lan`` and ``direct``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from dvrlink.protocol.signalling import PathPolicy


class PathKind(enum.Enum):
    """A kind of path; ``value`` is its label (``connectivity.Path[0]``)."""

    LAN = "lan"
    DIRECT_V6 = "direct6"
    DIRECT_V4 = "direct"
    RELAY = "relay"


PATH_ORDER: tuple[PathKind, ...] = (PathKind.LAN, PathKind.DIRECT_V6, PathKind.DIRECT_V4, PathKind.RELAY)
"""Best first."""


def rank(kind: PathKind) -> int:
    """Higher is better: ``relay`` 1 up to ``lan`` 4."""
    return len(PATH_ORDER) - PATH_ORDER.index(kind)


def best(ready: Iterable[PathKind]) -> PathKind | None:
    """The best of the ``ready`` paths, or None if there is none."""
    kinds = list(ready)
    return max(kinds, key=rank) if kinds else None


def pair_kind(local_type: str, remote_type: str, remote_host: str, *, remote_private: bool) -> PathKind:
    """The kind of a nominated ICE pair: ``local_type``/``remote_type`` are ICE candidate types
    (``host``, ``srflx``, ``prflx``, ``relay``); ``remote_private`` says whether the remote
    address is private, link-local or loopback (``session.direct.is_private``).

    A pair of two host candidates to a private address is ``lan``; any other pair to an IPv6
    address (a colon in it) is ``direct6``; the rest ``direct``, and relayed ones ``relay``.
    """
    if "relay" in (local_type, remote_type):
        return PathKind.RELAY
    if local_type == "host" and remote_type == "host" and remote_private:
        return PathKind.LAN
    if ":" in remote_host:
        return PathKind.DIRECT_V6
    return PathKind.DIRECT_V4


class Source(enum.Enum):
    """Where a viewer gets the device's candidates from."""

    LAN_DISCOVERY = "lan discovery"
    """The device answers on the LAN itself: host candidates only, a ``lan`` path."""
    BROKER = "broker"
    """The broker signals: ICE over IPv6 and IPv4 direct paths and the TURN relay."""


def plan_sources(policy: PathPolicy, *, lan: bool) -> tuple[Source, ...]:
    """The sources to try, in order, for a session under ``policy``; ``lan``: LAN discovery is on
    (``dvrlink --lan``, the default)."""
    sources: list[Source] = []
    if lan and policy is not PathPolicy.RELAY_ONLY:
        sources.append(Source.LAN_DISCOVERY)
    sources.append(Source.BROKER)
    return tuple(sources)


def kinds_from(source: Source, policy: PathPolicy) -> tuple[PathKind, ...]:
    """The path kinds a source can give under ``policy``, best first."""
    if source is Source.LAN_DISCOVERY:
        return (PathKind.LAN,)
    allowed = {
        PathPolicy.ALL: PATH_ORDER,
        PathPolicy.DIRECT_ONLY: (PathKind.LAN, PathKind.DIRECT_V6, PathKind.DIRECT_V4),
        PathPolicy.RELAY_ONLY: (PathKind.RELAY,),
    }
    return allowed[policy]


def order(policy: PathPolicy, *, lan: bool) -> tuple[PathKind, ...]:
    """Every path kind a viewer may end on, in the order it prefers them (sources in order, each
    source's kinds best first, each kind once)."""
    seen: list[PathKind] = []
    for source in plan_sources(policy, lan=lan):
        for kind in kinds_from(source, policy):
            if kind not in seen:
                seen.append(kind)
    return tuple(seen)
