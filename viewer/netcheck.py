"""``dvrlink netcheck [SERIAL]``: what this network lets a viewer do, and the path to a device.

Read-only: it writes no file and the broker stores nothing for it (``GET /v1/relays`` hands out
no credentials; a TURN round trip is an Allocate without them, which the relay answers with 401
and forgets). Steps, each bounded:

1. The broker's STUN service and relays (``GET /v1/relays``), through the logged-in node.
2. The RFC 5780 tests with hairpinning against that STUN service, per address family: IPv4,
   and IPv6 against the broker's ``stun6`` when this host has a global IPv6 address
   (``session/netcheck.py``); the PCP/NAT-PMP and SSDP probes at the same time.
3. The round trip to each broker node of the login (``GET /v1/health`` on an open connection)
   and to each relay (a TURN Allocate over its transport). Where UDP gets no answer, the TCP
   relays' round trip says whether TCP (443) still gets out.
4. With SERIAL: the device's reported NAT type and direct paths (its IPv6 and port mapping,
   ``GET /v1/devices/{serial}``) and this side's (IPv4 NAT and global IPv6), through
   ``predict_path`` (``protocol/nat_behaviour.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from dvrlink.protocol.nat_behaviour import parse_nat_type, predict_path, with_direct_paths
from dvrlink.protocol.netcheck import Latency, NetcheckReport, PathReport, Presence, own_profile
from dvrlink.session.netcheck import check_families, check_port_mapping, turn_latency
from dvrlink.viewer.api_client import BrokerClient
from dvrlink.viewer.errors import ViewerError


async def node_latency(client: BrokerClient) -> Latency:
    """The HTTPS round trip to ``client``'s node: ``GET /v1/health`` twice on one connection,
    the second timed (the first pays for TCP and TLS)."""
    name = client.broker_url
    try:
        async with client:
            await client.health()
            started = time.monotonic()
            await client.health()
            return Latency(name, "https", round((time.monotonic() - started) * 1000, 2))
    except ViewerError as exc:
        return Latency(name, "https", None, exc.message)


async def viewer_netcheck(
    client: BrokerClient,
    node_clients: list[BrokerClient],
    serial: str | None,
    *,
    test_timeout_s: float = 2.0,
    gateway: str | None = None,
    progress: Callable[[str], None] = lambda _text: None,
) -> NetcheckReport:
    """Run the checks (see the module docstring); ``client`` is logged in, ``node_clients`` has one
    client per broker URL of the login. ``progress`` gets a line per step.

    Raises:
        ViewerError: the broker cannot be reached, the login is refused, or SERIAL is not paired.
    """
    notes: list[str] = []
    async with client:
        progress("asking the broker for its STUN service and relays")
        relays = await client.relays()
        device = await client.device(serial) if serial is not None else None
    stun = relays.stun
    if stun is None:
        host = urlsplit(client.broker_url).hostname or ""
        stun = (host, 3478)
        notes.append(f"the broker names no STUN service; tried {host}:3478")
    progress(f"testing the NAT against {stun[0]}:{stun[1]} (RFC 5780) and probing the gateway")
    families, port_mapping = await asyncio.gather(
        check_families(stun[0], stun[1], ipv6_server=relays.stun6, test_timeout_s=test_timeout_s),
        check_port_mapping(gateway=gateway),
    )
    progress("timing the broker nodes and relays")
    nodes = await asyncio.gather(*(node_latency(c) for c in node_clients))
    relay_times = await asyncio.gather(*(turn_latency(h, p, t) for h, p, t in relays.turn))
    udp = any(f.behaviour is not None and f.behaviour.udp for f in families)
    tcp_relays = [r for r in relay_times if r.kind == "turn-tcp"]
    tcp = next((r for r in tcp_relays if r.rtt_ms is not None), tcp_relays[0] if tcp_relays else None)
    transport = None
    reason = ""
    if not udp:
        transport = "tcp" if tcp is not None and tcp.rtt_ms is not None else None
        reason = (
            "UDP gets no answer: sessions use the relay over TCP"
            if transport
            else "neither UDP nor the relays' TCP port answers"
        )
    path = None
    if serial is not None and device is not None:
        own = own_profile(families)
        report = device.report
        reported = report.nat_type if report is not None else None
        paths = report.direct_paths if report is not None else None
        own_mapped = next(
            (f.behaviour.mapped[0] for f in families if f.behaviour is not None and f.behaviour.mapped), None
        )
        device_ip = (
            device.reflexive_address.rsplit(":", 1)[0].strip("[]") if device.reflexive_address else None
        )
        # The device's NAT type (item 9) with what else it reported (item 11, direct_paths): a
        # global IPv6 address (rule 9) and a router that maps ports (rule 8).
        prediction = predict_path(
            own,
            with_direct_paths(parse_nat_type(reported), paths),
            same_nat=own_mapped is not None and own_mapped == device_ip,
        )
        if not device.online:
            notes.append(f"{serial} is offline now: a session needs it online")
        path = PathReport(serial, reported, prediction, device.reflexive_address, paths)
    return NetcheckReport(
        program="dvrlink",
        stun_server=f"{stun[0]}:{stun[1]}",
        families=families,
        port_mapping=port_mapping,
        presence=Presence(transport, reason, tcp),
        broker_nodes=tuple(nodes),
        relays=tuple(relay_times),
        relays_note="" if relays.turn else "the broker hands out no relays",
        path=path,
        notes=tuple(notes),
    )
