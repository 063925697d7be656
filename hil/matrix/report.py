"""Judge matrix records against the issue's targets and the hard invariants, and render
``docs/connectivity.md`` and ``docs/connectivity.json``. No I/O but the two writes in ``write``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvrlink.protocol.port_mapping import state_diagram as mapping_state_diagram
from hil.matrix.cells import (
    DIRECT_PATHS,
    FIRST_BYTE_TARGET_S,
    IPV6_CELLS,
    IPV6_SUFFIX,
    MAPPING_CELLS,
    PROFILE_SUBSET,
    SIDE_TYPES,
    Cell,
)
from hil.matrix.rig import CellRecord
from hil.netlab import NatType

NO_NETEM = "no netem: rate/loss only"


def cell_of(record: CellRecord) -> Cell:
    """The cell a record belongs to (``symmetric+v6``: an IPv6 cell)."""
    device, viewer = record.device_nat, record.viewer_nat
    ipv6 = device.endswith(IPV6_SUFFIX) and viewer.endswith(IPV6_SUFFIX)
    if ipv6:
        device, viewer = device.removesuffix(IPV6_SUFFIX), viewer.removesuffix(IPV6_SUFFIX)
    return Cell(NatType.parse(device), NatType.parse(viewer), record.profile, ipv6=ipv6)


def cell_text(record: CellRecord | None) -> str:
    """``direct 0.42 s``, ``relay 0.61 s``, ``FAIL``; ``relay? ...`` when the path was not final;
    ``-`` when the cell was not run."""
    if record is None:
        return "-"
    if not record.connected:
        return "FAIL"
    mark = "" if record.settled else "?"
    seconds = f" {record.first_byte_s:.2f} s" if record.first_byte_s is not None else ""
    return f"{record.path or '-'}{mark}{seconds}"


@dataclass
class Verdict:
    """One target or invariant: PASS or FAIL, and the cells that miss it with why."""

    name: str
    passed: bool
    misses: list[str] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return {"name": self.name, "passed": self.passed, "misses": self.misses, "note": self.note}


def _label(cell: Cell) -> str:
    return f"{cell.device_name} × {cell.viewer_name}"


def _miss(record: CellRecord, what: str) -> str:
    cell = cell_of(record)
    why = cell.why_not_direct
    return f"{_label(cell)}: {what}" + (f" ({why})" if why else "")


def targets(records: Sequence[CellRecord]) -> list[Verdict]:
    """The issue's four targets, judged on the LAN records."""
    lan = [r for r in records if r.profile == "lan"]
    connect = Verdict("100% of cells connect", all(r.connected for r in lan))
    connect.misses = [_miss(r, f"did not connect: {first_line(r.error)}") for r in lan if not r.connected]

    direct = Verdict("cells with endpoint-independent mapping on one side end on a direct path", True)
    relay = Verdict("symmetric × symmetric and UDP-blocked cells end on the relay", True)
    for r in lan:
        cell = cell_of(r)
        if cell.target_path == "direct" and not (r.connected and r.settled and r.path in DIRECT_PATHS):
            direct.misses.append(_miss(r, describe_path(r)))
        if cell.target_path == "relay" and not (r.connected and r.settled and r.path == "relay"):
            relay.misses.append(_miss(r, describe_path(r)))
    direct.passed = not direct.misses
    relay.passed = not relay.misses
    direct.note = "lan (host-to-host candidates) counts as direct"

    fast = Verdict(f"first byte within {FIRST_BYTE_TARGET_S:.0f} s on LAN in every cell", True)
    for r in lan:
        if not r.connected:
            fast.misses.append(f"{_label(cell_of(r))}: no first byte (did not connect)")
        elif r.first_byte_s is None or r.first_byte_s > FIRST_BYTE_TARGET_S:
            seconds = "none" if r.first_byte_s is None else f"{r.first_byte_s:.2f} s"
            fast.misses.append(f"{_label(cell_of(r))}: first byte after {seconds}" + _why_slow(r))
    fast.passed = not fast.misses
    return [connect, direct, relay, fast]


def _why_slow(record: CellRecord) -> str:
    if cell_of(record).udp_blocked:
        return " (TURN over UDP tried for 2.5 s before TCP)"
    return ""


def invariants(records: Sequence[CellRecord]) -> list[Verdict]:
    """What ``make test`` asserts on LAN: every cell without UDP blocking connects; both sides
    symmetric ends on the relay; a side with endpoint-independent mapping ends direct (by plain
    checks, port prediction or a birthday search); a device whose router maps ports on request
    ends direct."""
    lan = [r for r in records if r.profile == "lan"]
    connect = Verdict("every LAN cell without UDP blocking connects", True)
    relay = Verdict("symmetric × symmetric ends on the relay", True)
    direct = Verdict("a cell with endpoint-independent mapping on one side ends direct", True)
    mapped = Verdict("a device behind a port-mapping router (PCP, NAT-PMP, UPnP-IGD) ends direct", True)
    ipv6 = Verdict("a cell where both sides have global IPv6 ends direct", True)
    for r in lan:
        cell = cell_of(r)
        if not cell.udp_blocked and not r.connected:
            connect.misses.append(f"{_label(cell)}: {first_line(r.error)}")
        if cell.both_apdm and r.path != "relay":
            relay.misses.append(f"{_label(cell)}: {describe_path(r)}")
        strict = cell.device is NatType.SYMMETRIC and cell.viewer is NatType.SYMMETRIC
        if strict and not r.settled:
            relay.misses.append(f"{_label(cell)}: path not final ({r.settle_note})")
        if cell.one_eim and r.path not in DIRECT_PATHS:
            direct.misses.append(f"{_label(cell)}: {describe_path(r)}")
        if cell.device_maps and not cell.udp_blocked and r.path not in DIRECT_PATHS:
            mapped.misses.append(f"{_label(cell)}: {describe_path(r)}")
        if cell.ipv6 and r.path not in DIRECT_PATHS:
            ipv6.misses.append(f"{_label(cell)}: {describe_path(r)}")
    for verdict in (connect, relay, direct, mapped, ipv6):
        verdict.passed = not verdict.misses
    return [connect, relay, direct, mapped, ipv6]


def describe_path(record: CellRecord) -> str:
    """``ended on relay``, ``did not connect: ...``, ``on relay, not final (...)``."""
    if not record.connected:
        return f"did not connect: {first_line(record.error)}"
    if not record.settled:
        return f"on {record.path}, not final ({record.settle_note})"
    return f"ended on {record.path}"


def first_line(text: str | None) -> str:
    """The last non-empty line of an error (the viewer's final message), cut to 200 characters."""
    if not text:
        return "no error recorded"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:200]


def table(records: Sequence[CellRecord], profile: str) -> str:
    """The Markdown table for ``profile``: rows device NAT, columns viewer NAT (only the rows
    and columns that have records, in the matrix order)."""
    found = {(r.device_nat, r.viewer_nat): r for r in records if r.profile == profile}
    rows = [t for t in SIDE_TYPES if any(d == t.value for d, _ in found)]
    cols = [t for t in SIDE_TYPES if any(v == t.value for _, v in found)]
    lines = [
        "| device ↓ / viewer → | " + " | ".join(c.value for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for row in rows:
        cells = [cell_text(found.get((row.value, col.value))) for col in cols]
        lines.append(f"| **{row.value}** | " + " | ".join(cells) + " |")
    hairpin = found.get((NatType.HAIRPIN.value, NatType.HAIRPIN.value))
    if hairpin is not None:
        lines += ["", f"Hairpin (device and viewer behind one NAT): **{cell_text(hairpin)}**"]
    for device, viewer in MAPPING_CELLS:
        record = found.get((device.value, viewer.value))
        if record is not None:
            lines += [
                "",
                f"Port mapping: device {device.value} (its router runs miniupnpd: PCP, NAT-PMP, "
                f"UPnP-IGD) × viewer {viewer.value}: **{cell_text(record)}**",
            ]
    for device, viewer in IPV6_CELLS:
        record = found.get((device.value + IPV6_SUFFIX, viewer.value + IPV6_SUFFIX))
        if record is not None:
            lines += [
                "",
                f"IPv6: device {device.value} × viewer {viewer.value}, both also with a global IPv6 "
                f"address behind a stateful firewall: **{cell_text(record)}**",
            ]
    return "\n".join(lines)


def relay_table(records: Sequence[CellRecord], profile: str) -> str:
    """Bytes the relay carried per LAN cell (kB clients sent to the TURN port, first run)."""
    found = {(r.device_nat, r.viewer_nat): r for r in records if r.profile == profile}
    cols = [t for t in SIDE_TYPES if any(v == t.value for _, v in found)]
    rows = [t for t in SIDE_TYPES if any(d == t.value for d, _ in found)]
    lines = [
        "| device ↓ / viewer → | " + " | ".join(c.value for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]

    def kb(record: CellRecord | None) -> str:
        if record is None or record.relay_in_bytes is None:
            return "-"
        return f"{record.relay_in_bytes / 1000:.1f}"

    for row in rows:
        lines.append(
            f"| **{row.value}** | " + " | ".join(kb(found.get((row.value, c.value))) for c in cols) + " |"
        )
    return "\n".join(lines)


def _verdict_lines(verdicts: Sequence[Verdict]) -> list[str]:
    lines: list[str] = []
    for v in verdicts:
        lines.append(f"- **{'PASS' if v.passed else 'FAIL'}**: {v.name}" + (f" ({v.note})" if v.note else ""))
        lines += [f"  - {miss}" for miss in v.misses]
    return lines


def ipv6_section() -> list[str]:
    """The doc's "IPv6" section (prose: how a session uses IPv6, rule 9, and the matrix's IPv6 cell)."""
    return [
        "## IPv6",
        "",
        "Most LTE carriers give a recorder a global IPv6 address besides a carrier-grade or symmetric "
        "IPv4 NAT. There is no NAT66 in front of it, only a stateful firewall that lets replies in and "
        "drops new inbound flows. A session gathers a host candidate on every interface address, IPv6 "
        "included. Each host socket also asks the broker's STUN over its own family "
        "(`session/direct.py`: `srflx_candidate`). The broker answers STUN, and presence, on its "
        "IPv6 address too (`stun_host6`) and hands that address out as `stun6` with each session "
        "grant; a device names it in `[broker] stun_host6`, or finds it as its broker name's AAAA "
        "address. In the matrix the viewer gets `stun6` from the lab broker; the matrix's daemon "
        "names only the broker's IPv4 address, so its IPv6 sockets have host candidates only. Behind "
        "a global address the server-reflexive candidate equals the host one anyway, and is not "
        "signalled twice. ICE pairs candidates of one family, so "
        "an IPv6 pair runs beside the IPv4 pairs.",
        "",
        "The path rule is `predict_path`'s rule 9 (`protocol/nat_behaviour.py`): when both sides have "
        "a global IPv6 address (`NatProfile.ipv6`), the path is **direct by ICE checks over IPv6**, "
        "whatever their IPv4 NATs do. The first check each side sends opens its own firewall for the "
        "other's checks, as two APDF filters open between two endpoint-independent NATs. Blocked UDP "
        "and one shared NAT still come first. A device reports whether it has global IPv6 and a "
        "port-mapping router (report item 11, `direct_paths`), so a viewer's `netcheck SERIAL` "
        "applies rule 9 to it too ([netcheck.md](netcheck.md) shows the IPv6 lab cell).",
        "",
        'The matrix\'s IPv6 cell is `symmetric+v6 × symmetric+v6` (the "IPv6:" line under the LAN '
        "table). Both sides sit behind symmetric IPv4 NATs, which alone stay on the relay, and also "
        'have global IPv6 from the lab\'s IPv6 carrier ([netlab.md](netlab.md), "IPv6"). Its hard '
        'invariant is "a cell where both sides have global IPv6 ends direct". '
        "`tests/test_matrix_ipv6.py` runs the cell on its own and checks that the device's log names "
        "the pair between the two global addresses. By hand: `python -m hil.matrix --cell "
        "symmetric+v6:symmetric+v6` (`+v6` on both sides or on neither).",
        "",
    ]


def lan_discovery_section() -> list[str]:
    """The doc's "LAN discovery" section (prose: the four datagrams, the default, path choice)."""
    return [
        "## LAN discovery",
        "",
        "A viewer on the recorder's own LAN finds it and opens the session with no broker at "
        "all (`protocol/lan_discovery.py`, `daemon/lan_responder.py`, `viewer/lan.py`). Four "
        "UDP datagrams on the device's `[lan] port` (5398 by default):",
        "",
        "1. **Query**, viewer to every IPv4 broadcast address of its networks (and "
        "`--lan-address`): a fresh nonce and a tag, a hash of the device's public key (pinned "
        "at pairing) with that nonce. Padded to 128 bytes, more than the reply it can get.",
        "2. **Announce**, device to viewer, only when the tag is its own: a device nonce, "
        "signed with the device key over both nonces.",
        "3. **Offer**, viewer to device: the session offer (host candidates, direct only, no "
        "relay) and the device nonce, signed with the viewer key. The device accepts it only "
        "from a paired viewer, on a nonce it issued in the last 10 s, once per nonce.",
        "4. **Answer**, device to viewer: the session answer (its host candidates), signed with"
        " the device key over the device nonce.",
        "",
        "Then the session is the usual one: ICE checks between host candidates, QUIC with the "
        "device certificate checked against the pinned key, the device checking the viewer's "
        "key in `viewers.json`. It ends on the `lan` path. What a stranger on the LAN can do: "
        "knowing the serial gets no reply (the tag needs the public key); a forged or replayed "
        "announcement or answer fails the signature over the viewer's fresh nonce or the "
        "device's; an offer needs a paired viewer's signature over a live device nonce. We "
        "chose this over mDNS/DNS-SD: an mDNS answer is not authenticated, so it would need "
        "this signed exchange anyway, it would advertise the recorder to the whole LAN, and it "
        "would add a dependency to the recorder's image for no gain.",
        "",
        "**Default on, both sides.** The recorder answers only a query made with its public "
        "key, which paired viewers and the broker hold, and says nothing else; the convenience "
        "(a LAN viewer works while the cloud or the uplink is down) is worth one listening UDP "
        "port. `[lan] discovery = false` closes it. The viewer searches the LAN while it asks "
        "the broker for the session: the broker's offer waits until the search is 0.25 s old "
        "(`LAN_GRACE_S`), so a recorder that is not on this LAN costs at most that; when the "
        "broker cannot be reached the search gets its whole 1.5 s (`--no-lan` skips the LAN).",
        "",
        "**Path choice** (`protocol/path_choice.py`): LAN discovery first, then the broker's "
        "session, whose ICE and relay give IPv6 direct, then IPv4 direct, then the relay; "
        "within a session the best ready path wins (`lan` > `direct6` > `direct` > `relay`). "
        "`--relay-only` skips the LAN. `tests/test_path_choice.py` shows each step of the "
        "order; `tests/test_lan_lab.py` (NAT lab, device and viewer on one LAN bridge) pairs "
        "through the broker, kills it, and still forwards.",
        "",
    ]


def port_mapping_section() -> list[str]:
    """The doc's "Port mapping" section (prose, and the mapping state diagram generated from
    ``protocol.port_mapping.TRANSITIONS``)."""
    return [
        "## Port mapping",
        "",
        "A recorder behind a home router asks the router to open a public port for each session's "
        "UDP socket (`[sessions] port_mapping`, on by default; `port_mapping_lifetime_s`). The "
        "router is the default route's gateway; a modem's PPP link has none, so nothing is asked "
        "there. Three protocols, first grant wins:",
        "",
        "1. **PCP** (RFC 6887): a 60-byte MAP request to the gateway's port 5351, retransmitted at "
        "3 s, 6 s, ... (RFC 6887's IRT/MRT with ±10 % jitter). A router that answers PCP with "
        '"unsupported version" speaks NAT-PMP, which is asked next.',
        "2. **NAT-PMP** (RFC 6886): an external-address request and a 12-byte map request together, "
        "retransmitted at 250 ms doubling.",
        "3. **UPnP-IGD**: asked when PCP and NAT-PMP stayed silent for 1 s or failed (not at once: a "
        "router speaking both keeps one entry for the same port, and releasing the slower grant "
        "would delete the faster one). SSDP `M-SEARCH`, the device description, then "
        "`GetExternalIPAddress` and `AddPortMapping` on its WANIPConnection service. The client is "
        "our own (`protocol/upnp_igd.py`): the `miniupnpc` module is a C extension to cross-compile "
        "for the recorder's image, and its calls block.",
        "",
        "The granted public address and port go to the viewer as one more server-reflexive "
        "candidate (its own foundation). The mapping forwards whatever arrives to the device's "
        "socket, so the viewer's checks get in from whichever port the viewer's own NAT picks, and "
        "the device's answers leave through the same entry, from the mapped port: that is why "
        "symmetric × symmetric, which has no direct path otherwise, ends direct when the device's "
        "router maps (the `symmetric_upnp` cell). The mapping is renewed at half the granted "
        "lifetime while the session lasts and deleted (lifetime 0, `DeletePortMapping`) when it "
        "ends. On the wire: 60 + 60 bytes of PCP per session and per renewal.",
        "",
        "In the lab, `symmetric_upnp` is the symmetric NAT with Debian's `miniupnpd` (nftables "
        "backend) on the router, whose WAN firewall lets its port forwards in (`ctstate DNAT`). "
        "miniupnpd refuses to map on a reserved address, documentation ranges included, so that "
        "router maps on a second WAN address, 100.63.0.2 (see [netlab.md](netlab.md)). "
        "`tests/test_port_mapping_lab.py` maps a port with each protocol against it, sends a "
        "datagram from the lab's internet to the public port, renews and deletes; "
        "`tests/test_matrix_port_mapping.py` runs the cell.",
        "",
        "One mapping's states (`protocol/port_mapping.py`, PCP and NAT-PMP; generated from its "
        "`TRANSITIONS`):",
        "",
        "```mermaid",
        mapping_state_diagram(),
        "```",
        "",
    ]


def markdown(records: Sequence[CellRecord], meta: dict[str, Any]) -> str:
    """The whole ``docs/connectivity.md``."""
    netem = bool(meta.get("netem"))
    wire = not netem and meta.get("delay") == "wire"  # records before the wire have no "delay"
    delayed = netem or wire
    profiles = [p for p in ("3g", "gprs") if any(r.profile == p for r in records)]
    subset = ", ".join(f"{d.value} × {v.value}" for d, v in PROFILE_SUBSET)
    out = [
        "# Connectivity matrix",
        "",
        "Generated by `make matrix` (`python -m hil.matrix --full`); do not edit by hand. Every cell "
        "runs the real `dvrlink-broker serve`, `dvrlinkd run` and `dvrlink forward` processes in the NAT "
        "lab (`hil/netlab`, see [netlab.md](netlab.md)); the code is in `hil/matrix/`, and "
        "[connectivity.json](connectivity.json) has every cell's record.",
        "",
        f"- date: {meta.get('date')}; kernel {meta.get('kernel')}; {meta.get('cpus')} CPUs; "
        "netem: "
        + (
            "yes"
            if netem
            else "no; the delay came from the lab's user-space wire"
            if wire
            else "no, so the link profiles apply rate and loss but no delay"
        ),
        f"- runs per cell: {meta.get('runs')} (time to first byte is their median); "
        f"matrix wall time {meta.get('runtime_s', 0) / 60:.1f} min",
        "",
        "A cell reads **path time**: the path the session ended on, as the forward's live status line "
        "shows it (`lan`: host-to-host candidates; `direct`: a punched path through the NATs; "
        "`relay`: the broker's TURN relay), and the time from starting `dvrlink forward` to the first "
        "byte of the device's service through the forward (so it includes the interpreter's start). "
        "`FAIL`: no session. `?`: the path was not final when the wait ended (ICE still checking).",
        "",
        "## LAN",
        "",
        table(records, "lan"),
        "",
    ]
    for profile in profiles:
        out += [
            f"## {profile.upper()}" + ("" if delayed else f" ({NO_NETEM})"),
            "",
            f"The subset {subset}, with the profile on the device's uplink (the recorder on a SIM) and "
            "the viewer on LAN: a carrier puts the recorder behind a carrier-grade NAT (EIM/APDF) or "
            "a symmetric one, and the viewer sits behind a full cone, a port-restricted router, or a "
            "symmetric NAT. The six cells cover a punch towards an open viewer, a punch between two "
            "filtering NATs, and the relay, on a slow link (lossy on GPRS)."
            + (
                ""
                if delayed
                else " This kernel has no netem: the profile limits the rate and drops packets but adds "
                "no delay, so these times are not what a real 3G/GPRS round trip gives."
            ),
            "",
            table(records, profile),
            "",
        ]
    out += ["## Targets (issue 4)", ""]
    out += _verdict_lines(targets(records))
    out += ["", "## Hard invariants (asserted by `make test`)", ""]
    out += _verdict_lines(invariants(records))
    out += [
        "",
        "## Bytes through the relay (LAN, kB clients sent to the TURN port during the first session)",
        "",
        "Read from iptables counters on the broker's TURN port in the lab's broker namespace (the "
        "broker's TURN core counts datagrams only and exposes no counters). Every session opens on "
        "the relay and moves to a direct path once ICE finds one, so direct cells show the QUIC "
        "handshake and TURN control (about 5 kB); the service sends one byte.",
        "",
        relay_table(records, "lan"),
        "",
        *port_mapping_section(),
        *ipv6_section(),
        *lan_discovery_section(),
        "## Notes",
        "",
        "- **Symmetric × port-restricted (or CGNAT).** The symmetric side gets a new port for "
        "each remote, so the port it uses towards the other side is not the one the broker saw, "
        "and the port-restricted side only admits the exact address and port it sent to. Plain "
        "ICE checks cannot meet there; two searches find the port (`protocol/port_prediction.py`, "
        "`session/birthday.py`). Each side maps its socket to the broker's three RFC 5780 "
        "addresses: equal ports mean endpoint-independent mapping, small steps a sequential NAT, "
        "anything else a random one, and the server-reflexive candidate says which "
        "(`mapping eim|sequential|random`). **Port prediction** (`sequential_symmetric`): the "
        "sequential side also offers the 8 ports after the last one it saw; the other side's "
        "checks to them open its filter, and one of them is the port of our check. **Birthday "
        "search** (`symmetric`): 1 s into ICE, the random side opens 256 sockets, each sending a "
        "check towards the other side, and the endpoint-independent side sends checks to 1,024 "
        "random ports of the random side's address (up to 3 rounds while nothing answers); a port "
        "in both sets is a path, 98 % of the time in the first round. Both sides mapping per "
        "remote (symmetric × symmetric, sequential or not) stay on the relay. **Not on a slow "
        "link:** each side advertises the round trip of its STUN Binding on the same candidate "
        "(`rtt <ms>`), and when either side's is 500 ms or more (`SLOW_LINK_RTT_MS`: GPRS, about "
        "600 ms here) no birthday search runs and the session stays on the relay. A round of "
        "probes is about 127 kB, 25 s of a 40 kbit/s uplink or 13 s of the 80 kbit/s downlink: "
        "it starved the relayed session until the viewer gave up, and on a SIM it costs more "
        "than a short relayed session. Port prediction (8 more candidates) still runs there.",
        "- **UDP blocked.** Only TCP to port 443 leaves. The device's presence falls back to TCP/TLS "
        "(`[presence] transport = auto`, after two unanswered registrations over UDP) and each blocked "
        "side allocates its relay over TCP; the relay then forwards between the two allocations as "
        "usual. In this lab the broker serves three things on port 443, each on its own address: TURN "
        "over TCP on its main address (`turn_tcp_port = 443`; the default 3479 is not reachable from "
        "such a network), presence over TCP/TLS on the second (`presence_tcp_host`) and the HTTPS API "
        "on a third the rig adds. A session starts its TURN allocation over UDP and, if that has not "
        "succeeded 0.3 s later, over TCP beside it (`TURN_HEAD_START_S` in session/connectivity.py); "
        "the first allocation wins.",
        "- **`lan` and `direct`.** A pair of host candidates is `lan` when the peer's address is "
        "private (RFC 1918, RFC 4193), link-local or loopback, else `direct` (session/direct.py): "
        "the lab's public addresses are documentation ranges, so a public device reads `direct`. "
        "Hairpin reads `lan` because both hosts sit on the NAT's LAN bridge and their host "
        "candidates reach each other; the hairpinned server-reflexive pair is not what ICE "
        "nominates there.",
        "",
    ]
    return "\n".join(out)


def document(records: Sequence[CellRecord], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: meta, targets, invariants and every record."""
    return {
        **meta,
        "no_netem_note": None if meta.get("netem") or meta.get("delay") == "wire" else NO_NETEM,
        "targets": [v.as_dict() for v in targets(records)],
        "invariants": [v.as_dict() for v in invariants(records)],
        "cells": [r.as_dict() for r in records],
    }


def load(path: Path) -> tuple[list[CellRecord], dict[str, Any]]:
    """Records and meta back from a ``connectivity.json`` (to render the Markdown again).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not such a document.
    """
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or not isinstance(document.get("cells"), list):
        raise ValueError(f"{path} is not a connectivity document (no cells list)")
    try:
        records = [CellRecord(**cell) for cell in document["cells"]]
    except TypeError as exc:
        raise ValueError(f"{path}: a cell record does not fit: {exc}") from None
    skip = {"cells", "targets", "invariants", "no_netem_note"}
    return records, {k: v for k, v in document.items() if k not in skip}


def write(records: Sequence[CellRecord], meta: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``connectivity.md`` and ``connectivity.json`` into ``folder``; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / "connectivity.md"
    js = folder / "connectivity.json"
    md.write_text(markdown(records, meta))
    js.write_text(json.dumps(document(records, meta), indent=1) + "\n")
    return md, js
