"""aioice's private names that dvrlink uses, each behind one function (guards:
``tests/test_compat_aioice.py``; written against aioice 0.13, the range pyproject.toml pins).

I/O (aioice runs on asyncio): only the session layer imports this module. Every function raises
``dvrlink.compat.InternalsMoved`` when a name is gone; none falls back quietly (the fallbacks
this replaced left a session on the relay, or on aioice's slow send path, without a word).

Names, what they are for, and the public API that could replace them upstream:

- ``Connection._local_candidates``, ``_local_candidates_start``, ``_local_candidates_end``:
  gather host candidates only and let ``connect`` run at once, while server-reflexive ones are
  trickled (``gather_host_candidates``); ``Connection.gather_candidates`` waits for every STUN
  answer first. Upstream could take the kinds to gather, or support trickle ICE (RFC 8838:
  ``add_local_candidate`` and an end-of-candidates call).
- ``Connection._protocols``: the connection's sockets, to ask the STUN server for each one's
  mapping, predict ports and read in batches (``ice_sockets``). Upstream could list them.
- ``Connection._nominated``: the nominated pair of a component, for the path label and for
  sending on its socket without aioice's per-datagram ``sendto`` coroutine
  (``nominated_pair``). Upstream could offer ``Connection.get_selected_pair(component)``, as
  libnice's ``nice_agent_get_selected_pair``.
- ``Connection._tie_breaker``: the birthday search's checks carry it, so that the peer's aioice
  accepts them (``tie_breaker``). Upstream could make it a read-only property, as
  ``local_username`` is.
- ``TurnTransport._TurnTransport__inner_protocol`` (name-mangled) and the inner protocol's
  ``_send``: send ChannelData at once when the channel is bound (``send_channel_data``) and read
  the relay socket in batches (``turn_client``); ``TurnTransport.sendto`` starts a task per
  datagram. Upstream could send synchronously on a bound channel, and expose the socket through
  ``get_extra_info("socket")``.
"""

from __future__ import annotations

import struct
import time

import aioice
from aioice.ice import CandidatePair, StunProtocol
from aioice.turn import TurnClientProtocol, TurnTransport

from dvrlink.compat import moved

__all__ = [
    "gather_host_candidates",
    "ice_sockets",
    "nominated_pair",
    "send_channel_data",
    "tie_breaker",
    "turn_client",
]

_MISSING = object()
COMPONENT = 1
"""The one ICE component a session uses (RTP/RTCP muxing is all QUIC needs)."""


def _attribute(owner: object, name: str, where: str, used_for: str) -> object:
    value = getattr(owner, name, _MISSING)
    if value is _MISSING:
        raise moved("aioice", f"{where}.{name}", used_for)
    return value


async def gather_host_candidates(ice: aioice.Connection, addresses: list[str]) -> None:
    """Add host candidates on ``addresses`` (component 1) to ``ice`` and mark gathering done, so
    ``ice.connect`` may run; nothing if gathering already started.

    Raises:
        InternalsMoved: aioice no longer has the names this sets.
    """
    used_for = "gathering host candidates without waiting for STUN (trickle)"
    started = _attribute(ice, "_local_candidates_start", "Connection", used_for)
    candidates = _attribute(ice, "_local_candidates", "Connection", used_for)
    _attribute(ice, "_local_candidates_end", "Connection", used_for)
    if not isinstance(candidates, list):
        raise moved("aioice", "Connection._local_candidates as a list", used_for)
    if started:
        return
    ice._local_candidates_start = True
    candidates += await ice.get_component_candidates(component=COMPONENT, addresses=addresses)
    ice._local_candidates_end = True


def ice_sockets(ice: aioice.Connection) -> list[StunProtocol]:
    """The connection's sockets (aioice protocols, each with ``local_candidate``, ``transport``
    and ``request``), in the order they were opened.

    Raises:
        InternalsMoved: aioice no longer has ``Connection._protocols``.
    """
    protocols = _attribute(ice, "_protocols", "Connection", "reading the ICE sockets")
    if not isinstance(protocols, list):
        raise moved("aioice", "Connection._protocols as a list", "reading the ICE sockets")
    return list(protocols)


def nominated_pair(ice: aioice.Connection) -> CandidatePair | None:
    """The nominated candidate pair of component 1, or None before nomination.

    Raises:
        InternalsMoved: aioice no longer has ``Connection._nominated``.
    """
    nominated = _attribute(ice, "_nominated", "Connection", "the nominated ICE pair")
    if not isinstance(nominated, dict):
        raise moved("aioice", "Connection._nominated as a dict", "the nominated ICE pair")
    pair = nominated.get(COMPONENT)
    return pair if isinstance(pair, CandidatePair) else None


def tie_breaker(ice: aioice.Connection) -> int:
    """The connection's ICE tie-breaker (RFC 8445 §7.1.1).

    Raises:
        InternalsMoved: aioice no longer has ``Connection._tie_breaker``.
    """
    value = _attribute(ice, "_tie_breaker", "Connection", "the birthday search's ICE checks")
    if not isinstance(value, int):
        raise moved("aioice", "Connection._tie_breaker as an int", "the birthday search's ICE checks")
    return value


def turn_client(turn: TurnTransport) -> TurnClientProtocol:
    """aioice's TURN client protocol behind ``turn`` (its ``transport`` is the socket to the TURN
    server).

    Raises:
        InternalsMoved: the ``TurnTransport`` no longer keeps it there.
    """
    used_for = "sending on a bound TURN channel at once"
    inner = _attribute(turn, "_TurnTransport__inner_protocol", "TurnTransport", used_for)
    for name in ("_send", "peer_to_channel", "channel_refresh_at", "transport"):
        _attribute(inner, name, "TurnClientMixin", used_for)
    return inner  # type: ignore[return-value]


def send_channel_data(turn: TurnTransport, data: bytes, peer: tuple[str, int]) -> bool:
    """Send ``data`` to ``peer`` as ChannelData (RFC 8656 §12.4) at once when its channel is bound
    and needs no refresh; False otherwise (``TurnTransport.sendto`` then binds or refreshes it).

    Raises:
        InternalsMoved: aioice no longer has the names this uses.
    """
    inner = turn_client(turn)
    channel = inner.peer_to_channel.get(peer)
    refresh_at = inner.channel_refresh_at.get(channel) if channel is not None else None
    if channel is None or refresh_at is None or time.time() > refresh_at or inner.transport.is_closing():
        return False
    inner._send(struct.pack("!HH", channel, len(data)) + data)
    return True
