"""``dvrlink netcheck`` and ``dvrlinkd netcheck``: the report, its JSON and text, and the small
probes' wire formats. Sans-I/O: ``session/netcheck.py`` sends and times the probes.

The report is shaped after Tailscale's ``netcheck``: UDP reachability; per address family the
NAT's mapping and filtering (RFC 5780, ``protocol/nat_classify.py``) and hairpinning; whether the
default gateway answers PCP/NAT-PMP and whether a UPnP gateway answers SSDP (found or not: no
mapping is made); the NAT lifetime the daemon learned; the latency to each broker node and relay;
whether UDP is blocked and what carries presence (UDP, or TCP/TLS on 443); and, for a serial, the
path a session to it should end on, and why (``protocol/nat_behaviour.py``: :func:`predict_path`).

The JSON document (``--json``) is :meth:`NetcheckReport.as_json`; ``docs/netcheck.md`` lists its
fields. ``schema`` is :data:`SCHEMA_VERSION` and changes only when a field changes meaning or goes.

**The probes' bytes.**

The NAT-PMP request and the SSDP search are the mapping clients' own bytes, from
``protocol/port_mapping_wire.py`` (which loads no XML parser, unlike ``protocol/upnp_igd.py``).

- *Gateway (PCP/NAT-PMP)*: one NAT-PMP "external address" request (RFC 6886: 2 bytes, version 0,
  opcode 0) to the default gateway's UDP port 5351. A NAT-PMP gateway answers with its external
  address (12 bytes, version 0, opcode 128); a PCP server (RFC 6887) answers a version-0 request
  with a PCP response (version 2) carrying UNSUPP_VERSION, or the NAT-PMP answer if it speaks both.
  So one request tells all three apart: no answer, NAT-PMP, PCP.
- *UPnP*: one SSDP ``M-SEARCH`` for an Internet Gateway Device to 239.255.255.250:1900; a gateway
  answers ``HTTP/1.1 200 OK`` with a ``LOCATION`` (its description URL). The external address
  would take a SOAP call to that description's control URL, which netcheck does not make.
- *Relay*: a TURN ``Allocate`` without credentials (RFC 8656): the server answers 401 with a
  nonce and keeps no state, so the round trip costs the relay nothing.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field, replace
from typing import Any

from dvrlink.protocol import port_mapping_wire
from dvrlink.protocol.nat_behaviour import NatBehaviour, NatProfile, PathPrediction

SCHEMA_VERSION = 1
PCP_PORT = port_mapping_wire.PORT
"""UDP port of PCP and NAT-PMP on the gateway."""
SSDP_GROUP = port_mapping_wire.SSDP_ADDRESS
IGD_SEARCH_TARGET = port_mapping_wire.IGD_V1

_STUN_COOKIE = b"\x21\x12\xa4\x42"
_ALLOCATE_REQUEST = 0x0003
_REQUESTED_TRANSPORT = 0x0019
_UDP_PROTOCOL = 17


# -- probe wire formats -----------------------------------------------------------------------------


def natpmp_request() -> bytes:
    """The NAT-PMP external address request (RFC 6886 section 3.2): version 0, opcode 0; the
    mapping client's own (``protocol/port_mapping_wire.py``)."""
    return port_mapping_wire.address_request()


@dataclass(frozen=True, slots=True)
class GatewayAnswer:
    """What the gateway's port 5351 answered."""

    protocol: str
    """``NAT-PMP`` or ``PCP``."""
    result_code: int
    external_address: str | None = None
    """NAT-PMP's external IPv4 address when the result is success (0); else None."""


def parse_gateway_answer(data: bytes) -> GatewayAnswer | None:
    """An answer to :func:`natpmp_request`, or None when ``data`` is neither a NAT-PMP nor a PCP
    response (never raises on bad input)."""
    if len(data) >= 4 and data[0] == 0 and data[1] == 128:
        result = int.from_bytes(data[2:4], "big")
        complete = result == 0 and len(data) >= 12
        return GatewayAnswer("NAT-PMP", result, str(ipaddress.IPv4Address(data[8:12])) if complete else None)
    if len(data) >= 24 and data[0] == 2 and data[1] & 0x80:
        return GatewayAnswer("PCP", data[3])
    return None


def ssdp_search(wait_s: int = 1) -> bytes:
    """One SSDP M-SEARCH for an Internet Gateway Device (v1, which v2 gateways answer too);
    ``wait_s`` is its MX (clamped to 1-5 s). The mapping client's own search
    (``protocol/port_mapping_wire.py``)."""
    return port_mapping_wire.msearch(IGD_SEARCH_TARGET, wait_s)


@dataclass(frozen=True, slots=True)
class SsdpAnswer:
    """A gateway's answer to :func:`ssdp_search`."""

    location: str
    server: str = ""
    search_target: str = ""


def parse_ssdp_answer(data: bytes) -> SsdpAnswer | None:
    """An ``HTTP/1.1 200 OK`` SSDP answer with a LOCATION, or None (never raises)."""
    try:
        text = data.decode("utf-8", errors="replace")
    except (UnicodeDecodeError, ValueError):
        return None
    lines = text.split("\r\n")
    if not lines or not lines[0].upper().startswith("HTTP/1.1 200"):
        return None
    headers = port_mapping_wire.ssdp_headers(lines[1:])
    location = headers.get("location", "")
    if not location:
        return None
    return SsdpAnswer(location[:300], headers.get("server", "")[:200], headers.get("st", "")[:200])


def turn_probe(transaction_id: bytes) -> bytes:
    """A TURN Allocate request without credentials (UDP relay transport): a TURN server answers
    it with 401 and keeps no state.

    Raises:
        ValueError: ``transaction_id`` is not 12 bytes.
    """
    if len(transaction_id) != 12:
        raise ValueError(f"a STUN transaction id is 12 bytes, not {len(transaction_id)}")
    attribute = struct.pack("!HHB3x", _REQUESTED_TRANSPORT, 4, _UDP_PROTOCOL)
    return struct.pack("!HH", _ALLOCATE_REQUEST, len(attribute)) + _STUN_COOKIE + transaction_id + attribute


def is_turn_answer(data: bytes, transaction_id: bytes) -> bool:
    """``data`` answers the Allocate of :func:`turn_probe` (success or error; a 401 is normal)."""
    if len(data) < 20 or data[4:8] != _STUN_COOKIE or data[8:20] != transaction_id:
        return False
    (kind,) = struct.unpack_from("!H", data, 0)
    return kind in (_ALLOCATE_REQUEST | 0x0100, _ALLOCATE_REQUEST | 0x0110)


def stun_message_length(header: bytes) -> int:
    """Bytes of a STUN message over TCP, from its first 20 bytes (header plus attributes).

    Raises:
        ValueError: not a STUN header.
    """
    if len(header) < 20 or header[4:8] != _STUN_COOKIE:
        raise ValueError("not a STUN message header")
    return 20 + int.from_bytes(header[2:4], "big")


# -- the report -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    """One round trip to a broker node or a relay."""

    name: str
    """``host:port`` (``https://...`` for an API node)."""
    kind: str
    """``stun`` (a Binding round trip), ``turn-udp``/``turn-tcp`` (an Allocate answered with 401),
    ``tcp`` (a TCP connect), or ``https`` (``GET /v1/health``)."""
    rtt_ms: float | None
    """None: no answer (``error`` says why)."""
    error: str = ""


@dataclass(frozen=True, slots=True)
class FamilyReport:
    """One address family (IPv4 or IPv6) towards the broker's STUN service."""

    family: str
    """``ipv4`` or ``ipv6``."""
    available: bool
    """The host has a route to the broker's address of this family."""
    behaviour: NatBehaviour | None = None
    """What the RFC 5780 tests found; None when not run (``note`` says why)."""
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        b = self.behaviour
        out: dict[str, Any] = {"family": self.family, "available": self.available, "note": self.note}
        if b is None:
            out["udp"] = None
            return out
        profile = b.profile
        out.update(
            {
                "udp": b.udp,
                "nat": b.nat,
                "local": _address(b.local),
                "mapped": _address(b.mapped),
                "mapping": b.mapping.value if b.mapping else None,
                "filtering": b.filtering.value if b.filtering else None,
                "nat_type": profile.nat_type,
                "name": profile.name,
                "hairpin": b.hairpin,
                "mapped_ports": list(b.mapped_ports),
                "port_delta": b.port_delta,
                "notes": list(b.notes),
            }
        )
        return out


def _address(address: tuple[str, int] | None) -> str | None:
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class PortMapping:
    """What the gateway answered to the PCP/NAT-PMP and SSDP probes (no mapping is made)."""

    gateway: str | None
    """The default gateway (IPv4); None: no default route."""
    gateway_answer: GatewayAnswer | None = None
    upnp: SsdpAnswer | None = None

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        answer = self.gateway_answer
        return {
            "gateway": self.gateway,
            "pcp": answer is not None and answer.protocol == "PCP",
            "nat_pmp": answer is not None and answer.protocol == "NAT-PMP",
            "external_address": answer.external_address if answer is not None else None,
            "gateway_result_code": answer.result_code if answer is not None else None,
            "upnp": self.upnp is not None,
            "upnp_location": self.upnp.location if self.upnp is not None else None,
            "upnp_server": self.upnp.server if self.upnp is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Presence:
    """What carries presence (the device's link to the broker)."""

    transport: str | None
    """``udp`` or ``tcp`` (TLS, port 443 where UDP is blocked); None: not known here (the viewer,
    or no daemon running)."""
    reason: str = ""
    tcp: Latency | None = None
    """A TCP connect to the presence-over-TCP endpoint (or the relay's TCP port)."""


@dataclass(frozen=True, slots=True)
class PathReport:
    """The expected path to one serial."""

    serial: str
    device_nat_type: str | None
    """What the device reported (``nat_type``, item 9); None: it has not."""
    prediction: PathPrediction
    device_address: str | None = None
    device_direct_paths: str | None = None
    """What the device reported as ``direct_paths`` (item 11: ``ipv6``, ``mapping``); None: it has
    not (a device that predates the item)."""

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {
            "serial": self.serial,
            "device_nat_type": self.device_nat_type,
            "device_direct_paths": self.device_direct_paths,
            "device_address": self.device_address,
            "path": self.prediction.path.value,
            "punch": self.prediction.punch.value,
            "relay_over_tcp": self.prediction.relay_over_tcp,
            "reason": self.prediction.reason,
        }


@dataclass(frozen=True, slots=True)
class NetcheckReport:
    """One netcheck run."""

    program: str
    """``dvrlink`` (a viewer) or ``dvrlinkd`` (a device)."""
    stun_server: str | None
    """The STUN service the tests ran against (``host:port``)."""
    families: tuple[FamilyReport, ...]
    port_mapping: PortMapping
    presence: Presence
    broker_nodes: tuple[Latency, ...] = ()
    relays: tuple[Latency, ...] = ()
    relays_note: str = ""
    nat_lifetime_s: float | None = None
    """The idle UDP mapping lifetime the daemon learned; None: not learned (or not a device)."""
    keepalive_s: float | None = None
    path: PathReport | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def udp(self) -> bool:
        """Any family got a STUN answer over UDP."""
        return any(f.behaviour is not None and f.behaviour.udp for f in self.families)

    @property
    def udp_blocked(self) -> bool:
        """A family was tested and none got a STUN answer over UDP."""
        tested = [f for f in self.families if f.behaviour is not None]
        return bool(tested) and not self.udp

    def family(self, name: str) -> FamilyReport | None:
        """The report for ``ipv4`` or ``ipv6``, or None."""
        return next((f for f in self.families if f.family == name), None)

    @property
    def ipv6_direct(self) -> bool:
        """This host has a global IPv6 address that reaches the internet as itself (rule 9)."""
        return ipv6_direct(self.families)

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` document (fields in ``docs/netcheck.md``)."""
        tcp = self.presence.tcp
        return {
            "schema": SCHEMA_VERSION,
            "program": self.program,
            "stun_server": self.stun_server,
            "udp": self.udp,
            "udp_blocked": self.udp_blocked,
            "ipv4": _family_json(self.family("ipv4")),
            "ipv6": _family_json(self.family("ipv6")),
            "port_mapping": self.port_mapping.as_json(),
            "presence": {
                "transport": self.presence.transport,
                "reason": self.presence.reason,
                "tcp": _latency_json(tcp) if tcp is not None else None,
            },
            "nat_lifetime_s": self.nat_lifetime_s,
            "keepalive_s": self.keepalive_s,
            "broker_nodes": [_latency_json(n) for n in self.broker_nodes],
            "relays": [_latency_json(r) for r in self.relays],
            "relays_note": self.relays_note,
            "path": self.path.as_json() if self.path is not None else None,
            "notes": list(self.notes),
        }


def ipv6_direct(families: tuple[FamilyReport, ...]) -> bool:
    """This side has a global IPv6 address its IPv6 host candidate is public at (path rule 9):
    the IPv6 family is available (a global source address), and its STUN test, where it ran,
    got an answer over UDP from that very address (no NAT66)."""
    six = next((f for f in families if f.family == "ipv6"), None)
    if six is None or not six.available:
        return False
    b = six.behaviour
    return b is None or (b.udp and not b.nat)


def own_profile(families: tuple[FamilyReport, ...]) -> NatProfile | None:
    """This side's profile for the path rules: the IPv4 NAT's behaviour (the first tested family
    when IPv4 was not), with :attr:`NatProfile.ipv6` from :func:`ipv6_direct`; None when nothing
    was tested and there is no IPv6."""
    tested = [f for f in families if f.behaviour is not None]
    v4 = next((f for f in tested if f.family == "ipv4"), tested[0] if tested else None)
    six = ipv6_direct(families)
    if v4 is None or v4.behaviour is None:
        return NatProfile(ipv6=True) if six else None
    return replace(v4.behaviour.profile, ipv6=six)


def _family_json(family: FamilyReport | None) -> dict[str, Any] | None:
    return family.as_json() if family is not None else None


def _latency_json(latency: Latency) -> dict[str, Any]:
    return {"name": latency.name, "kind": latency.kind, "rtt_ms": latency.rtt_ms, "error": latency.error}


def _ms(latency: Latency) -> str:
    if latency.rtt_ms is None:
        return f"no answer ({latency.error})" if latency.error else "no answer"
    return f"{latency.rtt_ms:.1f} ms"


def render_text(report: NetcheckReport) -> str:
    """The report for people, one fact a line."""
    lines = ["Report:"]
    lines.append(f"  * UDP: {'yes' if report.udp else 'no'}" + (" (blocked)" if report.udp_blocked else ""))
    for name in ("ipv4", "ipv6"):
        family = report.family(name)
        label = "IPv4" if name == "ipv4" else "IPv6"
        if family is None or family.behaviour is None:
            note = family.note if family is not None else "not tested"
            note = note.removeprefix("no IPv6: ")  # the line says "IPv6: no" already
            lines.append(f"  * {label}: {'no' if family is None or not family.available else 'yes'} ({note})")
            continue
        b = family.behaviour
        if not b.udp:
            lines.append(f"  * {label}: no UDP answer from {report.stun_server or 'the STUN service'}")
            continue
        mapped = _address(b.mapped) or "-"
        lines.append(f"  * {label}: yes, {mapped}" + (" (no NAT)" if not b.nat else ""))
        mapping = b.mapping.value if b.mapping else "?"
        filtering = b.filtering.value if b.filtering else "?"
        lines.append(f"  * {label} NAT: {b.profile.name} (mapping {mapping}, filtering {filtering})")
        if b.port_delta is not None:
            lines.append(f"  * {label} ports: sequential, step {b.port_delta:+d}")
        hairpin = "not tested" if b.hairpin is None else "yes" if b.hairpin else "no"
        lines.append(f"  * {label} hairpinning: {hairpin}")
        for note in b.notes:
            lines.append(f"  * {label} note: {note}")
    pm = report.port_mapping.as_json()
    gateway = pm["gateway"] or "no default route"
    lines.append(
        f"  * port mapping: PCP {_yes(pm['pcp'])}, NAT-PMP {_yes(pm['nat_pmp'])}, UPnP {_yes(pm['upnp'])} "
        f"(gateway {gateway})"
    )
    answer = report.port_mapping.gateway_answer
    if pm["external_address"]:
        lines.append(f"  * gateway's external address: {pm['external_address']}")
    elif answer is not None and answer.result_code != 0:
        lines.append(
            f"  * gateway's {answer.protocol} answered result {answer.result_code}: no external address "
            "(the gateway has none it can map to, or refuses)"
        )
    if pm["upnp_location"]:
        lines.append(f"  * UPnP gateway: {pm['upnp_location']} {pm['upnp_server'] or ''}".rstrip())
    presence = report.presence
    if presence.transport is not None:
        text = presence.transport + (f" ({presence.reason})" if presence.reason else "")
        lines.append(f"  * presence: {text}")
    if presence.tcp is not None:
        lines.append(f"  * TCP {presence.tcp.name} ({presence.tcp.kind}): {_ms(presence.tcp)}")
    if report.nat_lifetime_s is not None:
        lines.append(
            f"  * NAT lifetime (learned): an idle UDP mapping lasts at least {report.nat_lifetime_s:g} s"
        )
    elif report.program == "dvrlinkd":
        lines.append("  * NAT lifetime: not learned (yet)")
    if report.keepalive_s is not None:
        lines.append(f"  * keepalive: every {report.keepalive_s:g} s")
    if report.broker_nodes:
        lines.append("  * broker nodes:")
        lines += [f"      - {n.name} ({n.kind}): {_ms(n)}" for n in report.broker_nodes]
    if report.relays:
        lines.append("  * relays:")
        lines += [f"      - {r.name} ({r.kind}): {_ms(r)}" for r in report.relays]
    elif report.relays_note:
        lines.append(f"  * relays: {report.relays_note}")
    if report.path is not None:
        p = report.path
        how = "" if p.prediction.punch.value == "none" else f" ({p.prediction.punch.value})"
        lines.append(f"  * path to {p.serial}: {p.prediction.path.value}{how}")
        lines.append(f"      device NAT: {p.device_nat_type or 'not reported'}")
        paths = p.device_direct_paths
        lines.append(
            "      device's direct paths: "
            + (
                "not reported"
                if paths is None
                else paths.replace(",", ", ")
                if paths
                else "none besides its NAT"
            )
        )
        lines.append(f"      why: {p.prediction.reason}")
    lines += [f"  * note: {note}" for note in report.notes]
    return "\n".join(lines)


def _yes(value: object) -> str:
    return "yes" if value else "no"
