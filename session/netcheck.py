"""The I/O half of the NAT checks that both ends run: the RFC 5780 classifier on the event loop
(``dvrlinkd``'s NAT type for its report, ``dvrlinkd netcheck``, ``dvrlink netcheck`` and the NAT
lab's ``classify`` all drive it here), and netcheck's small probes: a STUN, TURN or TCP round
trip, the gateway's PCP/NAT-PMP port, and SSDP. The bytes and the report are
``protocol/netcheck.py``; the cores are ``protocol/nat_classify.py`` and ``protocol/stun_probe.py``.

Every probe has a bound (its ``timeout_s``) and turns a network error into a result (no answer,
with the reason), never an exception, except where a docstring says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dvrlink.driver.core_driver import CoreDriver
from dvrlink.protocol.nat_behaviour import NatBehaviour, format_direct_paths
from dvrlink.protocol.netcheck import (
    PCP_PORT,
    SSDP_GROUP,
    FamilyReport,
    GatewayAnswer,
    Latency,
    PortMapping,
    SsdpAnswer,
    is_turn_answer,
    natpmp_request,
    parse_gateway_answer,
    parse_ssdp_answer,
    ssdp_search,
    stun_message_length,
    turn_probe,
)
from dvrlink.protocol.presence_events import Address
from dvrlink.protocol.stun_probe import StunProbe, binding_request, is_binding_response

log = logging.getLogger(__name__)

IPV4_OVERHEAD = 28
"""IPv4 + UDP header bytes per datagram."""
IPV6_OVERHEAD = 48
"""IPv6 + UDP header bytes per datagram."""

Receiver = Callable[[bytes, Address], None]


IPV4_PROBE: Address = ("192.0.2.1", 9)
IPV6_PROBE: Address = ("2001:db8::1", 9)
"""Documentation addresses (RFC 5737, RFC 3849) whose route lookup tells whether this host has a
default route of that family; nothing is sent to them."""


NOT_GLOBAL6 = tuple(
    ipaddress.IPv6Network(n)
    for n in ("::1/128", "::/128", "fe80::/10", "fc00::/7", "fec0::/10", "::ffff:0:0/96")
)
"""IPv6 sources that do not reach the internet as themselves: loopback, unspecified, link-local,
unique local (RFC 4193; behind NAT66 at best), site-local, IPv4-mapped. The documentation prefix
2001:db8::/32 counts as global: the NAT lab's carrier hands it out as one."""


BEHIND_NAT = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
"""IPv4 addresses that reach the internet through a NAT (RFC 1918, RFC 6598)."""


def global_ipv6_source(probe: Address = IPV6_PROBE) -> str | None:
    """The IPv6 address this host sends from towards the IPv6 internet (``probe`` stands for it;
    nothing is sent) when it is a global one, else None: no IPv6 route, or only a link-local or
    unique local source."""
    try:
        source = ipaddress.IPv6Address(local_ip_towards(probe).split("%", 1)[0])
    except (OSError, ValueError):
        return None
    if any(source in network for network in NOT_GLOBAL6):
        return None
    return str(source)


def has_route(destination: Address) -> bool:
    """This host has a route (and a source address) towards ``destination``; nothing is sent."""
    try:
        local_ip_towards(destination)
    except OSError:
        return False
    return True


def local_ip_towards(server: Address) -> str:
    """The local address the kernel picks for ``server`` (no packet is sent).

    Raises:
        OSError: no route to ``server``.
    """
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(server)
        return str(probe.getsockname()[0])


class DatagramPort(asyncio.DatagramProtocol):
    """One UDP socket: what arrives goes to ``receiver`` (swapped as a run moves on), and every
    datagram either way is counted with its IP and UDP headers."""

    def __init__(self, overhead: int = IPV4_OVERHEAD) -> None:
        self.receiver: Receiver | None = None
        self.datagrams = 0
        self.bytes_on_wire = 0
        self._overhead = overhead
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams += 1
        self.bytes_on_wire += len(data) + self._overhead
        if self.receiver is not None:
            self.receiver(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: the test times out
        log.debug("NAT check: %s", exc)

    @property
    def local(self) -> Address:
        """The bound (ip, port)."""
        assert self._transport is not None
        name = self._transport.get_extra_info("sockname")
        return (str(name[0]), int(name[1]))

    def send(self, data: bytes, destination: Address) -> None:
        """Send and count ``data``; a closed socket drops it."""
        if self._transport is None or self._transport.is_closing():
            return
        self.datagrams += 1
        self.bytes_on_wire += len(data) + self._overhead
        self._transport.sendto(data, destination)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.receiver = None
        if self._transport is not None:
            self._transport.close()


async def open_port(local_ip: str) -> DatagramPort:
    """A :class:`DatagramPort` bound to ``local_ip`` on a free port.

    Raises:
        OSError: it cannot be bound.
    """
    loop = asyncio.get_running_loop()
    overhead = IPV6_OVERHEAD if ":" in local_ip else IPV4_OVERHEAD
    _transport, port = await loop.create_datagram_endpoint(
        lambda: DatagramPort(overhead), local_addr=(local_ip, 0)
    )
    return port


class _ProbeCore:
    """``StunProbe`` as a ``CoreDriver`` core (it has no events)."""

    def __init__(self, probe: StunProbe) -> None:
        self.probe = probe

    def next_event(self) -> None:
        return None

    def datagrams_to_send(self) -> list[bytes]:
        return self.probe.datagrams_to_send()

    def get_timer(self) -> float | None:
        return self.probe.get_timer()

    def handle_timer(self, now: float) -> None:
        self.probe.handle_timer(now)


async def stun_check(
    port: DatagramPort, server: Address, *, timeout_s: float, retransmit_s: float, rfc5780: bool = True
) -> StunProbe:
    """One STUN Binding exchange (retransmitted every ``retransmit_s`` up to ``timeout_s``) from
    ``port`` to ``server``; returns the finished probe (``verdict``, ``other_address``)."""
    loop = asyncio.get_running_loop()
    core = _ProbeCore(
        StunProbe(os.urandom(12), timeout_s=timeout_s, initial_rto_s=retransmit_s, rfc5780=rfc5780)
    )
    done = asyncio.Event()

    def sent(batch: Sequence[bytes]) -> None:
        for data in batch:
            port.send(data, server)

    driver: CoreDriver[None, bytes] = CoreDriver(
        core,
        sent,
        after_step=lambda: done.set() if core.probe.get_timer() is None else None,
        name="STUN check",
    )
    port.receiver = lambda data, _source: driver.receive(core.probe.datagram_received, data)
    try:
        core.probe.start(loop.time())
        driver.flush()
        await done.wait()
        return core.probe
    finally:
        driver.close()
        port.receiver = None


async def run_classifier(
    server: Address,
    main: DatagramPort,
    *,
    retransmit_s: float,
    test_timeout_s: float,
    hairpin: DatagramPort | None = None,
) -> NatBehaviour:
    """Drive the RFC 5780 classifier from ``main`` (and the hairpinning test from ``hairpin``,
    when given) until it is done; returns what it found."""
    from dvrlink.protocol.nat_classify import (  # noqa: PLC0415 (aioice: only for a run)
        Classified,
        ClassifierConfig,
        NatClassifier,
        Socket,
        Transmit,
    )

    loop = asyncio.get_running_loop()
    config = ClassifierConfig(server, retransmit_s, test_timeout_s, hairpin=hairpin is not None)
    core = NatClassifier(config, main.local, loop.time())
    finished: asyncio.Future[NatBehaviour] = loop.create_future()
    ports = {Socket.MAIN: main, Socket.HAIRPIN: hairpin}

    def on_event(event: Classified) -> None:
        if not finished.done():
            finished.set_result(event.behaviour)

    def transmit(batch: Sequence[Transmit]) -> None:
        for each in batch:
            port = ports[each.socket]
            if port is not None:
                port.send(each.data, each.destination)

    driver: CoreDriver[Classified, Transmit] = CoreDriver(
        core, transmit, on_event=on_event, name="NAT classifier"
    )

    def receiver(which: Socket) -> Receiver:
        return lambda data, source: driver.receive_from(
            lambda d, a, now: core.receive_datagram(which, d, a, now), data, source
        )

    main.receiver = receiver(Socket.MAIN)
    if hairpin is not None:
        hairpin.receiver = receiver(Socket.HAIRPIN)
    driver.flush()
    try:
        return await finished
    finally:
        driver.close()
        main.receiver = None
        if hairpin is not None:
            hairpin.receiver = None


async def classify_nat(
    server: Address,
    *,
    retransmit_s: float = 0.25,
    test_timeout_s: float = 2.0,
    hairpin: bool = True,
    local_ip: str | None = None,
) -> NatBehaviour:
    """The RFC 5780 tests against ``server`` from two fresh sockets on ``local_ip`` (default:
    the address that routes to the server); the second runs the hairpinning test.

    Raises:
        OSError: no route to the server, or the sockets cannot be bound.
    """
    ip = local_ip or local_ip_towards(server)
    main = await open_port(ip)
    second = await open_port(ip) if hairpin else None
    try:
        return await run_classifier(
            server, main, retransmit_s=retransmit_s, test_timeout_s=test_timeout_s, hairpin=second
        )
    finally:
        main.close()
        if second is not None:
            second.close()


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return str(exc.strerror or exc).lower()
    return str(exc) or type(exc).__name__


async def stun_latency(server: Address, *, timeout_s: float = 2.0, name: str = "") -> Latency:
    """The round trip of one STUN Binding to ``server`` (sent again after 0.5 s, 1 s, ...; the
    time is that of the request that was answered)."""
    tid = os.urandom(12)
    return await _udp_round_trip(
        server, binding_request(tid), lambda data: is_binding_response(data, tid), "stun", timeout_s, name
    )


async def turn_latency(host: str, port: int, transport: str, *, timeout_s: float = 2.0) -> Latency:
    """The round trip of an unauthenticated TURN Allocate (answered 401, no state kept) to a
    relay over ``transport`` (``udp`` or ``tcp``; over TCP the connect is not counted)."""
    tid = os.urandom(12)
    request = turn_probe(tid)
    if transport != "tcp":
        return await _udp_round_trip(
            (host, port), request, lambda data: is_turn_answer(data, tid), "turn-udp", timeout_s
        )
    label, kind = _label(host, port), "turn-tcp"
    loop = asyncio.get_running_loop()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            started = loop.time()
            writer.write(request)
            header = await reader.readexactly(20)
            rest = await reader.readexactly(stun_message_length(header) - 20)
            ended = loop.time()
    except TimeoutError:
        return Latency(label, kind, None, f"no answer within {timeout_s:g} s")
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        return Latency(label, kind, None, _error(exc))
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not is_turn_answer(header + rest, tid):
        return Latency(label, kind, None, "the answer is not a TURN answer")
    return Latency(label, kind, round((ended - started) * 1000, 2))


async def _udp_round_trip(
    server: Address,
    request: bytes,
    matches: Callable[[bytes], bool],
    kind: str,
    timeout_s: float,
    name: str = "",
) -> Latency:
    label = name or _label(*server)
    addresses = resolve(*server)
    resolved = addresses.get("ipv4") or addresses.get("ipv6")
    if resolved is None:
        return Latency(label, kind, None, f"cannot resolve {server[0]}")
    server = resolved  # answers come from the address, not the name
    try:
        udp = await open_port(local_ip_towards(server))
    except OSError as exc:
        return Latency(label, kind, None, _error(exc))
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[float] = loop.create_future()

    def received(data: bytes, source: Address) -> None:
        if source == server and matches(data) and not answer.done():
            answer.set_result(loop.time())

    udp.receiver = received
    deadline = loop.time() + timeout_s
    wait = min(0.5, timeout_s)
    try:
        while loop.time() < deadline:
            sent = loop.time()
            udp.send(request, server)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), max(0.0, min(wait, deadline - loop.time())))
            if answer.done():
                return Latency(label, kind, round((answer.result() - sent) * 1000, 2))
            wait *= 2
        return Latency(label, kind, None, f"no answer within {timeout_s:g} s")
    finally:
        if not answer.done():
            answer.cancel()
        udp.close()


async def tcp_latency(host: str, port: int, *, timeout_s: float = 2.0) -> Latency:
    """The time a TCP connect to ``host``:``port`` takes (one round trip; nothing is sent)."""
    label = _label(host, port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return Latency(label, "tcp", None, f"no answer within {timeout_s:g} s")
    except OSError as exc:
        return Latency(label, "tcp", None, _error(exc))
    rtt = loop.time() - started
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Latency(label, "tcp", round(rtt * 1000, 2))


def default_gateway(route_table: Path = Path("/proc/net/route")) -> str | None:
    """The IPv4 default gateway from the kernel's route table, or None (no default route, or no
    such table)."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "00000000" and fields[2] != "00000000":
            try:
                raw = int(fields[2], 16)
            except ValueError:
                continue
            return socket.inet_ntoa(raw.to_bytes(4, "little"))
    return None


async def probe_gateway(
    gateway: str, *, port: int = PCP_PORT, timeout_s: float = 1.0
) -> GatewayAnswer | None:
    """One NAT-PMP external address request to ``gateway``'s PCP/NAT-PMP port; what answered
    within ``timeout_s``, or None."""
    loop = asyncio.get_running_loop()
    try:
        udp = await open_port(local_ip_towards((gateway, port)))
    except OSError:
        return None
    found: asyncio.Future[GatewayAnswer] = loop.create_future()

    def received(data: bytes, source: Address) -> None:
        answer = parse_gateway_answer(data)
        if answer is not None and source[0] == gateway and not found.done():
            found.set_result(answer)

    udp.receiver = received
    try:
        udp.send(natpmp_request(), (gateway, port))
        async with asyncio.timeout(timeout_s):
            return await found
    except TimeoutError:
        return None
    finally:
        udp.close()


async def probe_upnp(*, timeout_s: float = 1.5, group: Address = SSDP_GROUP) -> SsdpAnswer | None:
    """One SSDP M-SEARCH for an Internet Gateway Device; the first answer with a LOCATION
    within ``timeout_s``, or None (also when multicast cannot be sent: no route)."""
    loop = asyncio.get_running_loop()
    found: asyncio.Future[SsdpAnswer] = loop.create_future()

    def received(data: bytes, _source: Address) -> None:
        answer = parse_ssdp_answer(data)
        if answer is not None and not found.done():
            found.set_result(answer)

    try:
        udp = await open_port("0.0.0.0")  # the answers come unicast from the gateway
    except OSError:
        return None
    udp.receiver = received
    try:
        try:
            udp.send(ssdp_search(max(1, int(timeout_s))), group)
        except OSError:
            return None
        async with asyncio.timeout(timeout_s):
            return await found
    except TimeoutError:
        return None
    finally:
        udp.close()


def resolve(host: str, port: int) -> dict[str, Address]:
    """``host``'s first IPv4 and first IPv6 address (``ipv4``/``ipv6`` keys; missing ones are
    left out); empty when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return {}
    found: dict[str, Address] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        key = "ipv6" if family == socket.AF_INET6 else "ipv4" if family == socket.AF_INET else ""
        if key and key not in found:
            found[key] = (str(sockaddr[0]), int(sockaddr[1]))
    return found


async def check_families(
    host: str,
    port: int,
    *,
    ipv6_server: Address | None = None,
    test_timeout_s: float = 2.0,
    retransmit_s: float = 0.25,
) -> tuple[FamilyReport, ...]:
    """The RFC 5780 tests (with hairpinning) against the STUN service, once per address family:
    IPv4 against ``host``:``port``; IPv6 against ``ipv6_server`` (the broker's ``stun6``), else
    ``host``'s IPv6 address, and only when this host has a global IPv6 address
    (:func:`global_ipv6_source`; otherwise the family says "no IPv6")."""
    addresses = resolve(host, port)
    reports: list[FamilyReport] = []
    for family in ("ipv4", "ipv6"):
        server = addresses.get(family)
        local_ip: str | None = None
        if family == "ipv6":
            server = ipv6_server or server
            local_ip = global_ipv6_source()
            if local_ip is None:
                reports.append(
                    FamilyReport(family, False, note="no IPv6: this host has no global IPv6 address")
                )
                continue
        if server is None:
            routed = local_ip is not None or has_route(IPV4_PROBE)
            note = (
                f"this host has {family} ({local_ip or 'routed'}) but the broker names no {family} STUN "
                f"address ({host} has none{'; the broker sets stun_host6' if family == 'ipv6' else ''})"
                if routed
                else f"this host has no {family} route"
            )
            reports.append(FamilyReport(family, routed, note=note))
            continue
        try:
            local_ip = local_ip_towards(server)
        except OSError as exc:
            reports.append(FamilyReport(family, False, note=f"no route to {_label(*server)}: {_error(exc)}"))
            continue
        try:
            behaviour = await classify_nat(
                server, retransmit_s=retransmit_s, test_timeout_s=test_timeout_s, local_ip=local_ip
            )
        except OSError as exc:
            reports.append(FamilyReport(family, True, note=f"cannot test from {local_ip}: {_error(exc)}"))
            continue
        note = "" if behaviour.udp else f"no STUN answer over UDP from {_label(*server)}"
        reports.append(FamilyReport(family, True, behaviour, note))
    return tuple(reports)


async def check_port_mapping(*, gateway: str | None = None, timeout_s: float = 1.0) -> PortMapping:
    """The PCP/NAT-PMP probe to ``gateway`` (default: the default route's) and the SSDP search,
    at once; nothing is mapped."""
    gateway = gateway or default_gateway()
    if gateway is None:
        upnp = await probe_upnp(timeout_s=timeout_s)
        return PortMapping(None, None, upnp)
    answer, upnp = await asyncio.gather(
        probe_gateway(gateway, timeout_s=timeout_s), probe_upnp(timeout_s=timeout_s)
    )
    return PortMapping(gateway, answer, upnp)


async def direct_paths(
    *, port_mapping: bool, local_ip: str | None, gateway: str | None = None, timeout_s: float = 1.0
) -> str:
    """What a device reports as ``direct_paths`` (item 11; ``protocol/nat_behaviour.py``:
    :func:`~dvrlink.protocol.nat_behaviour.format_direct_paths`): ``ipv6`` when this host has a
    global IPv6 address (nothing is sent), ``mapping`` when ``port_mapping`` (its sessions ask
    the router), ``local_ip`` (its address towards the broker) is a private IPv4 address (the
    sessions map only those) and the gateway offers mapping: a NAT-PMP answer with an external
    address, a PCP answer, or a UPnP gateway answering SSDP (:func:`check_port_mapping`: two
    small datagrams, nothing mapped). Never raises for a network failure."""
    ipv6 = global_ipv6_source() is not None
    maps = False
    if port_mapping and local_ip is not None and _behind_nat(local_ip):
        found = await check_port_mapping(gateway=gateway, timeout_s=timeout_s)
        answer = found.gateway_answer
        maps = found.upnp is not None or (
            answer is not None and (answer.protocol == "PCP" or answer.external_address is not None)
        )
    return format_direct_paths(ipv6=ipv6, maps_ports=maps)


def _behind_nat(local_ip: str) -> bool:
    """``local_ip`` is a private IPv4 address (RFC 1918, or RFC 6598 carrier-grade NAT space): the
    one kind of address a router maps ports for. (Python's ``is_private`` also counts the
    documentation ranges, which the NAT lab uses as public addresses.)"""
    try:
        address = ipaddress.IPv4Address(local_ip)
    except ValueError:
        return False
    return any(address in network for network in BEHIND_NAT)
