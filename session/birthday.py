"""The I/O of a birthday search (``dvrlink.protocol.port_prediction`` explains the search).

Both parts send ICE connectivity checks that aioice itself would accept: a Binding request with
the peer's username fragment and ours, our ICE role and tie-breaker, a PRIORITY, and
MESSAGE-INTEGRITY under the peer's password. They go out raw (no retransmission, no transaction
kept); whichever one meets an open port makes the peer's aioice answer it and start a triggered
check back along the same ports, and from then on aioice's own checks and nomination run as for
any other pair. So a search never makes a path aioice did not check.

- ``open_sockets`` (random mapping here): new UDP sockets on the base's address, each an aioice
  ``StunProtocol`` of the session's connection (so what arrives on them is handled as on any ICE
  socket), each sending one check to the peer's server-reflexive address. They are not host
  candidates: nothing is signalled for them and aioice pairs them with nothing by itself.
- ``probe_ports`` (endpoint-independent mapping here): checks from the base socket to many ports
  of the peer's address, paced.

aioice names used: ``StunProtocol`` and its ``local_candidate``, ``Connection.remote_username``,
``remote_password`` and ``local_username`` (public, undocumented), and the connection's ICE
tie-breaker (private: read through ``dvrlink.compat.aioice_compat.tie_breaker``, guarded in
``tests/test_compat_aioice.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aioice
import aioice.ice
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from dvrlink.compat import aioice_compat

BATCH = 32
"""Checks sent per pacing step."""
PACE_S = 0.01
"""Pause between two batches (1,024 probes take about 0.3 s; 256 sockets about 0.1 s)."""

log = logging.getLogger(__name__)


def check_request(ice: aioice.Connection) -> bytes | None:
    """One authenticated ICE Binding request of ``ice`` towards its peer, as bytes; None before
    the peer's credentials are known."""
    remote_username = getattr(ice, "remote_username", None)
    remote_password = getattr(ice, "remote_password", None)
    if remote_username is None or remote_password is None:
        return None
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{remote_username}:{ice.local_username}"
    request.attributes["PRIORITY"] = candidate_priority(1, "prflx")
    role = "ICE-CONTROLLING" if ice.ice_controlling else "ICE-CONTROLLED"
    request.attributes[role] = aioice_compat.tie_breaker(ice)
    request.add_message_integrity(str(remote_password).encode("utf8"))
    request.add_fingerprint()
    return bytes(request)


async def open_sockets(
    ice: aioice.Connection, base: Candidate, remote: tuple[str, int], count: int, protocols: list[Any]
) -> None:
    """Open ``count`` sockets on ``base.host`` as aioice protocols of ``ice``, appending each to
    ``protocols`` as it opens (so the caller can close them even if this is cancelled), and send
    one check from each to ``remote`` (paced). When no more sockets can be opened (out of file
    descriptors), the search goes on with those it has, with a log line."""
    loop = asyncio.get_running_loop()
    for index in range(count):
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(ice), local_addr=(base.host, 0)
            )
        except OSError as exc:
            log.warning("birthday search: opened %d of %d sockets (%s)", index, count, exc)
            break
        port = protocol.transport.get_extra_info("sockname")[1]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", base.host),
            component=base.component,
            transport="udp",
            priority=candidate_priority(base.component, "host", 0),
            host=base.host,
            port=port,
            type="host",
        )
        protocols.append(protocol)
    for start in range(0, len(protocols), BATCH):
        for protocol in protocols[start : start + BATCH]:
            request = check_request(ice)
            if request is not None and not protocol.transport.is_closing():
                protocol.transport.sendto(request, remote)
        await asyncio.sleep(PACE_S)


async def probe_ports(ice: aioice.Connection, protocol: Any, host: str, ports: Sequence[int]) -> int:
    """Send one check from ``protocol``'s socket to each of ``host``:``ports`` (paced); returns
    how many went out."""
    sent = 0
    for start in range(0, len(ports), BATCH):
        transport = getattr(protocol, "transport", None)
        if transport is None or transport.is_closing():
            break
        for port in ports[start : start + BATCH]:
            request = check_request(ice)
            if request is None:
                return sent
            transport.sendto(request, (host, port))
            sent += 1
        await asyncio.sleep(PACE_S)
    return sent


async def close_sockets(protocols: Sequence[Any], keep: Any = None) -> None:
    """Close the search's sockets but ``keep`` (the nominated pair's, if it is one of them)."""
    for protocol in protocols:
        if protocol is not keep:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(protocol.close(), 1.0)
