"""The direct path of a session: ICE gathering (host candidates, server-reflexive ones with a STUN
round trip, and predicted ones where the NAT steps its ports), and the pair ICE nominates.

``Connectivity`` (``connectivity.py``) runs aioice's checks over these candidates; the birthday
search (``birthday.py``) adds sockets when prediction alone cannot find the port. A pair of host
candidates to a private, link-local or loopback address is a ``lan`` path (``is_private``).
aioice's internals go through ``dvrlink.compat.aioice_compat``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

import aioice
import aioice.ice
from aioice import stun
from aioice.candidate import Candidate

from dvrlink.compat import aioice_compat
from dvrlink.protocol.port_prediction import Mapping, predict

log = logging.getLogger(__name__)

LAN_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8",
                "fc00::/7", "fe80::/10", "::1/128")
)  # fmt: skip
"""Where a host candidate makes a lan path (see ``is_private``)."""
PREDICTION_TIMEOUT_S = 1.5
"""How long the two RFC 5780 Bindings for port prediction may take (then nothing is predicted)."""


async def gather_host(ice: aioice.Connection, addresses: list[str] | None) -> None:
    """Host candidates only, on ``addresses`` (default: every interface address but loopback, as
    aioice picks them), and mark gathering done so ``connect`` may run: aioice's own
    ``gather_candidates`` waits for server-reflexive answers first."""
    if addresses is None:
        addresses = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    await aioice_compat.gather_host_candidates(ice, addresses)


def host_protocols(ice: aioice.Connection) -> list[Any]:
    """aioice's per-socket protocols (each has ``local_candidate`` and ``request``)."""
    protocols = aioice_compat.ice_sockets(ice)
    return [p for p in protocols if getattr(getattr(p, "local_candidate", None), "type", None) == "host"]


async def srflx_candidate(
    protocol: Any, stun_server: tuple[str, int]
) -> tuple[Candidate, tuple[str, int], tuple[str, int] | None, float] | None:
    """The server-reflexive candidate of one host socket, the STUN server's resolved address, its
    RFC 5780 OTHER-ADDRESS (None when it names none) and the Binding's round trip in seconds (from
    the first send to the answer: a retransmission after a loss adds its wait). The server is
    reached over the socket's own family (IPv4 or IPv6): None, with nothing sent, when
    ``stun_server`` has no address of that family (an IP literal of the other one, or a name
    without such an address)."""
    base = protocol.local_candidate
    server_ip = await resolve_for(stun_server[0], socket.AF_INET6 if ":" in base.host else socket.AF_INET)
    if server_ip is None:
        return None
    server = (server_ip, stun_server[1])
    response, rtt = await timed_request(protocol, binding_request(rfc5780=True), server)
    host, port = response.attributes["XOR-MAPPED-ADDRESS"]
    other = response.attributes.get("OTHER-ADDRESS")
    if other is not None and (other[0] == server[0] or other[1] == server[1]):
        other = None  # not two addresses and two ports: no RFC 5780 probes
    return reflexive(base, host, port), server, other, rtt


async def timed_request(
    protocol: Any, request: stun.Message, server: tuple[str, int]
) -> tuple[stun.Message, float]:
    """The answer to ``request`` sent by the aioice ``protocol`` to ``server``, and how long it
    took in seconds (the event loop's clock)."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    response, _ = await protocol.request(request, server)
    return response, loop.time() - sent


async def resolve_for(host: str, family: socket.AddressFamily) -> str | None:
    """``host``'s first address of ``family`` (an IP literal of that family as it is), or None when
    it has none: an IP literal of the other family, or a name that does not resolve to one.
    Never raises."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return None
    return str(infos[0][4][0]) if infos else None


async def predicted_candidates(
    protocol: Any, server: tuple[str, int], other: tuple[str, int], srflx: Candidate
) -> tuple[Mapping | None, list[Candidate], float | None]:
    """Predicted server-reflexive candidates of ``srflx``'s socket when its NAT maps each remote
    to the next port (``port_prediction``); empty for any other NAT or when a probe goes
    unanswered within ``PREDICTION_TIMEOUT_S``. Also the NAT's mapping and the shorter round
    trip of the two probes in seconds (None with no answer): with the first Binding's, a second
    and third measure of the link, so that one loss (a retransmission's wait) does not make a
    fast link look slow.

    Two Bindings go out back to back, to the server's alternate port and to its alternate
    address, so that nothing else of ours takes a port between them; with the first mapping they
    show whether and by how much the NAT steps. A NAT that maps endpoint-independently answers the
    same port thrice and nothing is predicted.
    """
    targets = [(server[0], int(other[1])), (str(other[0]), server[1])]
    try:
        answers = await asyncio.wait_for(
            asyncio.gather(*(timed_request(protocol, binding_request(), target) for target in targets)),
            PREDICTION_TIMEOUT_S,
        )
    except (OSError, ConnectionError, stun.TransactionError, TimeoutError) as exc:
        log.info("no port prediction (RFC 5780 probes unanswered: %r)", exc)
        return None, [], None
    mapped = [answer.attributes.get("XOR-MAPPED-ADDRESS") for answer, _ in answers]
    ports = [srflx.port, *(m[1] for m in mapped if m is not None and m[0] == srflx.host)]
    prediction = predict(ports)
    if prediction.ports:
        log.info("the NAT maps each remote to a new port, in steps of %d: offering %s:%s",
                 prediction.stride, srflx.host, ",".join(map(str, prediction.ports)))  # fmt: skip
    base = protocol.local_candidate
    return (
        prediction.mapping,
        [
            reflexive(base, srflx.host, port, local_pref=65535 - rank)
            for rank, port in enumerate(prediction.ports, start=1)
        ],
        min(rtt for _, rtt in answers),
    )


def binding_request(rfc5780: bool = False) -> stun.Message:
    """A Binding request; with ``rfc5780`` it carries CHANGE-REQUEST 0 (no change), which asks the
    broker for its OTHER-ADDRESS (it sends it only to clients that signal RFC 5780)."""
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    if rfc5780:
        message.attributes["CHANGE-REQUEST"] = 0
    return message


def reflexive(base: Candidate, host: str, port: int, local_pref: int = 65535) -> Candidate:
    """A server-reflexive candidate of ``base`` at ``host:port`` (predicted ones rank lower)."""
    return Candidate(
        foundation=aioice.candidate.candidate_foundation("srflx", "udp", base.host),
        component=base.component,
        transport=base.transport,
        priority=aioice.candidate.candidate_priority(base.component, "srflx", local_pref),
        host=host,
        port=port,
        type="srflx",
        related_address=base.host,
        related_port=base.port,
    )


def mapped_candidate(base: Candidate, host: str, port: int) -> Candidate:
    """A server-reflexive candidate of ``base`` at the public ``host:port`` a home router mapped
    to it on request (PCP, NAT-PMP, UPnP-IGD). Its foundation differs from the STUN one's, so
    the peer checks it independently of that one (RFC 8445 5.1.1.3: another server)."""
    candidate = reflexive(base, host, port)
    candidate.foundation = aioice.candidate.candidate_foundation("srflx", "udp", f"{base.host}/mapped")
    return candidate


def is_private(host: str) -> bool:
    """A private (RFC 1918, RFC 4193), link-local or loopback address: a host pair to one is a lan
    path; a host pair to any other address crosses networks (a public device seen from behind a
    NAT). Python's ``is_private`` is not used: it also counts documentation and other reserved
    ranges."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return any(address in network for network in LAN_NETWORKS if network.version == address.version)


def selected_pair(ice: aioice.Connection) -> tuple[Candidate, Candidate] | None:
    """The (local, remote) candidates of the nominated pair of component 1, or None."""
    pair = aioice_compat.nominated_pair(ice)
    if pair is None:
        return None
    local = getattr(pair, "local_candidate", None)
    remote = getattr(pair, "remote_candidate", None)
    if not isinstance(local, Candidate) or not isinstance(remote, Candidate):
        return None
    return local, remote


def nominated_protocol(ice: aioice.Connection) -> Any:
    """The aioice protocol (socket) of the nominated pair of component 1, or None."""
    pair = aioice_compat.nominated_pair(ice)
    return None if pair is None else pair.protocol


def selected_transport(ice: aioice.Connection) -> tuple[asyncio.DatagramTransport, tuple[str, int]] | None:
    """The socket and remote address of the nominated pair of component 1, or None."""
    pair = aioice_compat.nominated_pair(ice)
    if pair is None:
        return None
    transport = getattr(pair.protocol, "transport", None)
    address = getattr(pair, "remote_addr", None)
    if transport is None or transport.is_closing() or not isinstance(address, tuple):
        return None
    return transport, address
