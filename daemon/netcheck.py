"""``dvrlinkd netcheck``: what the recorder's network allows, next to what the running daemon learned.

Read-only: it reads the config and, when the daemon runs, its status file (the presence transport
and why, the NAT lifetime the keepalive learning measured, the keepalive in use); it writes
nothing. It runs the RFC 5780 tests with hairpinning against the broker node in use (its presence
port answers STUN; the node needs ``stun_alternate_host`` for the full tests), per address family
(IPv6 when this host has a global IPv6 address, against ``[broker] stun_host6`` or the node's
name's IPv6 address; the broker needs ``stun_alternate_host6`` for the full IPv6 tests);
probes the gateway for PCP/NAT-PMP and UPnP (nothing is mapped); times a STUN round trip to every
node of ``[broker] hosts`` and a TCP connect to presence over TCP/TLS (port 443 by default). The
broker hands a device its relays only with a session, so their round trips are ``dvrlink
netcheck``'s to measure.
"""

from __future__ import annotations

import asyncio

from dvrlink.daemon.config import DaemonConfig
from dvrlink.daemon.status import DaemonStatus, StatusUnavailable, read_status
from dvrlink.protocol.netcheck import NetcheckReport, Presence
from dvrlink.session.netcheck import check_families, check_port_mapping, stun_latency, tcp_latency


async def daemon_netcheck(
    config: DaemonConfig, *, test_timeout_s: float = 2.0, gateway: str | None = None
) -> NetcheckReport:
    """Run the checks for the device ``config`` describes (see the module docstring). Never
    raises for a network failure: each probe reports its own."""
    notes: list[str] = []
    status: DaemonStatus | None
    try:
        status = read_status(config.device.runtime_dir)
    except StatusUnavailable as exc:
        status = None
        notes.append(
            f"no running daemon's status ({exc}): the NAT lifetime and presence transport are not known"
        )
    nodes = config.broker.nodes
    node = nodes[0]
    if status is not None:
        node = next((n for n in nodes if n.label == status.node), node)
    host = node.connect_host
    tcp_host, tcp_port = config.broker.tcp_address_of(node)
    # The round trips first, on a quiet loop: the NAT tests load the STUN codec and keep sockets busy.
    node_times, tcp = await asyncio.gather(
        asyncio.gather(*(stun_latency((n.connect_host, n.port), name=n.label) for n in nodes)),
        tcp_latency(tcp_host, tcp_port),
    )
    families, port_mapping = await asyncio.gather(
        check_families(host, node.port, ipv6_server=config.broker.stun6, test_timeout_s=test_timeout_s),
        check_port_mapping(gateway=gateway),
    )
    if status is not None:
        presence = Presence(status.transport, status.transport_reason, tcp)
        lifetime = status.nat_lifetime_s
        keepalive = status.keepalive_s
    else:
        presence = Presence(None, "", tcp)
        lifetime = keepalive = None
    return NetcheckReport(
        program="dvrlinkd",
        stun_server=node.label,
        families=families,
        port_mapping=port_mapping,
        presence=presence,
        broker_nodes=tuple(node_times),
        relays_note="the broker hands the device its relays with each session: `dvrlink netcheck` times them",
        nat_lifetime_s=lifetime,
        keepalive_s=keepalive,
        notes=tuple(notes),
    )
