"""The NAT types of the lab and the iptables rules that build each one.

Every NAT is a network namespace with a WAN interface ``wan0`` and a LAN interface ``lan0`` (the
hairpin NAT has a LAN bridge ``lan0`` with two hosts). Rules are loaded with one
``iptables-restore`` per namespace. Each rule is explained in ``docs/netlab.md`` and next to it
here. Terms (RFC 4787): mapping EIM/ADM/APDM, filtering EIF/ADF/APDF.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dvrlink.protocol.nat_behaviour import Filtering, Mapping, NatProfile

BLOCK_CHAIN = "DL-BLOCK"
"""Filter chain jumped to first from FORWARD; ``Lab.block_udp`` fills and empties it."""
LOSS_CHAIN = "DL-LOSS"
"""Filter chain for random loss when the kernel has no netem (see ``Lab.set_profile``)."""
ADF_CHAIN = "DL-ADF"
"""Restricted cone: the chain holding the address-filter rule (rewritten when timeouts change)."""
ADF_LIST = "dl_adf"
"""Restricted cone: the xt_recent list of addresses the inside has sent to."""
SEQUENTIAL_BASE_PORT = 20000
SEQUENTIAL_PORTS = 100
HAIRPIN_DEVICE_PORTS = (20000, 29999)
HAIRPIN_VIEWER_PORTS = (30000, 39999)
UPNP_PORTS = (5351, 5000)
"""miniupnpd's NAT-PMP/PCP port and its HTTP port (device description and SOAP control)."""


def upnp_public_addr(index: int) -> str:
    """The public address a port-mapping router of side ``index`` (0 device, 1 viewer) maps on.

    miniupnpd refuses to map on a private or reserved address, and its list of reserved blocks
    includes the documentation ranges the rest of the lab uses (198.51.100.0/24 and friends), so
    the router gets a second WAN address outside them: 100.63.<index>.2 (just below the
    carrier-grade 100.64.0.0/10). The lab is a closed set of namespaces; nothing leaves it.
    """
    return f"100.63.{index}.2"


MINIUPNPD_TABLES = """table inet filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
        jump miniupnpd
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
"""
"""The nftables chains Debian's miniupnpd (nftables backend) fills: its defaults, table ``inet
filter`` (beside iptables-nft's ``ip filter`` and ``ip nat``, which stay as they are). Its
packaging makes them with ``nft_init.sh``; the lab makes them itself. A forward accepted here
still meets the lab's WAN firewall in ``ip filter``, which lets ``ctstate DNAT`` through."""
MINIUPNPD_NAT_CHAIN = "prerouting_miniupnpd"
"""Where miniupnpd puts one DNAT rule per mapping (``nft list chain inet filter ...``)."""


class NatType(enum.Enum):
    """What sits between a host (device or viewer) and the lab's internet."""

    PUBLIC = "public"
    """No NAT: a plain router, the host has a public address."""
    FULL_CONE = "full_cone"
    """EIM/EIF: SNAT to the WAN address plus a static DNAT of everything inbound to the host."""
    RESTRICTED_CONE = "restricted_cone"
    """EIM/ADF: full cone plus a filter that admits new inbound flows only from addresses the
    inside has sent to (xt_recent)."""
    PORT_RESTRICTED_CONE = "port_restricted_cone"
    """EIM/APDF: MASQUERADE plus a WAN firewall dropping ``ctstate NEW``."""
    SYMMETRIC = "symmetric"
    """APDM/APDF: ``MASQUERADE --random-fully`` plus the same firewall."""
    CGNAT = "cgnat"
    """Two port-restricted layers, 100.64.0.0/10 between them (EIM/APDF overall)."""
    HAIRPIN = "hairpin"
    """Device and viewer behind one port-restricted NAT that hairpins (both sides must use it)."""
    UDP_BLOCKED = "udp_blocked"
    """Port-restricted NAT that forwards only TCP to port 443 out."""
    SYMMETRIC_UPNP = "symmetric_upnp"
    """Symmetric, and the router maps ports on request: ``miniupnpd`` answers UPnP-IGD, NAT-PMP and
    PCP on the LAN side, and its port forwards pass the WAN firewall (``ctstate DNAT``)."""
    SEQUENTIAL_SYMMETRIC = "sequential_symmetric"
    """APDM/APDF with sequential ports: each new mapping takes the next port (round robin over
    ``SEQUENTIAL_PORTS`` SNAT rules picked by ``-m statistic --mode nth``)."""

    @classmethod
    def parse(cls, text: str) -> NatType:
        """The type named ``text`` (``-`` and ``_`` both work).

        Raises:
            ValueError: unknown name; the message lists the known ones.
        """
        try:
            return cls(text.replace("-", "_"))
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown NAT type {text!r}; use one of: {names}") from None

    @property
    def profile(self) -> NatProfile:
        """The behaviour this type's rules build, as the path rules take it
        (``protocol/nat_behaviour.py``: the one classifier netcheck and the matrix share)."""
        eim, eif = Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT
        apdm, apdf = Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT
        return {
            NatType.PUBLIC: NatProfile(nat=False, mapping=eim, filtering=eif),
            NatType.FULL_CONE: NatProfile(mapping=eim, filtering=eif),
            NatType.RESTRICTED_CONE: NatProfile(mapping=eim, filtering=Filtering.ADDRESS_DEPENDENT),
            NatType.PORT_RESTRICTED_CONE: NatProfile(mapping=eim, filtering=apdf),
            NatType.CGNAT: NatProfile(mapping=eim, filtering=apdf),
            NatType.HAIRPIN: NatProfile(mapping=eim, filtering=apdf),
            NatType.SYMMETRIC: NatProfile(mapping=apdm, filtering=apdf),
            NatType.SEQUENTIAL_SYMMETRIC: NatProfile(mapping=apdm, filtering=apdf, sequential=True),
            NatType.SYMMETRIC_UPNP: NatProfile(mapping=apdm, filtering=apdf, maps_ports=True),
            NatType.UDP_BLOCKED: NatProfile(udp=False),
        }[self]

    @property
    def expected_classification(self) -> str:
        """What the RFC 5780 classifier reports for this type (``NatBehaviour.name``). A router's
        port mapping is no behaviour those tests see: ``symmetric_upnp`` classifies as symmetric."""
        return self.profile.name


@dataclass(frozen=True, slots=True)
class NatSite:
    """Addresses one NAT namespace needs for its rules."""

    wan_ip: str
    inner_hosts: tuple[str, ...]
    """The LAN hosts behind it (one, or the device and viewer for hairpin)."""
    lan_net: str
    """The LAN prefix, e.g. 192.168.1.0/24."""


def _filter(body: list[str], chains: tuple[str, ...] = ()) -> list[str]:
    head = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    head += [f":{chain} - [0:0]" for chain in (BLOCK_CHAIN, LOSS_CHAIN, *chains)]
    # block_udp: FORWARD jumps to DL-BLOCK first (empty = nothing blocked); DL-LOSS is empty
    # unless a lossy profile is on and the kernel has no netem.
    return [*head, f"-A FORWARD -j {BLOCK_CHAIN}", f"-A FORWARD -j {LOSS_CHAIN}", *body, "COMMIT"]


def _drop_new_from_wan() -> list[str]:
    # The WAN firewall of every real router: nothing new gets in from outside. Dropping in INPUT
    # too keeps a peer's early punch packet from leaving a conntrack entry on the NAT's own
    # address, which would make conntrack pick another port for the host's later outbound flow.
    return [
        "-A INPUT -i wan0 -m conntrack --ctstate NEW -j DROP",
        "-A FORWARD -i wan0 -m conntrack --ctstate NEW -j DROP",
    ]


def adf_rule(seconds: int) -> str:
    """The restricted cone's address filter: a new inbound flow passes if its source address was
    a destination of the inside within ``seconds``."""
    return (
        f"-A {ADF_CHAIN} -m conntrack --ctstate NEW -m recent --name {ADF_LIST} --rsource --rcheck "
        f"--seconds {seconds} -j ACCEPT"
    )


def rules(nat: NatType, site: NatSite, adf_seconds: int = 180) -> str:
    """The ``iptables-restore`` input that makes a namespace behave as ``nat``.

    Raises:
        ValueError: the site does not fit the type (e.g. hairpin without two hosts).
    """
    wan, host = site.wan_ip, site.inner_hosts[0]
    nat_table: list[str] = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    nat_table.append(":POSTROUTING ACCEPT [0:0]")
    filt: list[str]
    if nat is NatType.PUBLIC:
        return "\n".join(_filter([])) + "\n"
    if nat in (NatType.FULL_CONE, NatType.RESTRICTED_CONE):
        nat_table += [
            # EIM: SNAT keeps the host's source port when it is free and reuses a source's
            # existing mapping for every new destination, so one inner port = one outer port.
            f"-A POSTROUTING -o wan0 -j SNAT --to-source {wan}",
            # EIF: whatever arrives at the WAN address goes to the one inner host, same port.
            f"-A PREROUTING -i wan0 -j DNAT --to-destination {host}",
        ]
        filt = []
        chains: tuple[str, ...] = ()
        if nat is NatType.RESTRICTED_CONE:
            chains = (ADF_CHAIN,)
            filt = [
                # Remember each address the inside sends to (IP only: xt_recent has no ports).
                f"-A FORWARD -i lan0 -o wan0 -m recent --name {ADF_LIST} --rdest --set",
                "-A FORWARD -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                # ADF: a new inbound flow passes only from a remembered address ...
                f"-A FORWARD -i wan0 -j {ADF_CHAIN}",
                adf_rule(adf_seconds),
                # ... everything else from outside is dropped.
                "-A FORWARD -i wan0 -j DROP",
            ]
        return "\n".join([*nat_table, "COMMIT", *_filter(filt, chains)]) + "\n"
    if nat in (NatType.PORT_RESTRICTED_CONE, NatType.CGNAT):
        # EIM (see above) with APDF from conntrack: only replies to a flow the inside opened
        # (same remote address and port) match ESTABLISHED; NEW ones are dropped.
        nat_table.append("-A POSTROUTING -o wan0 -j MASQUERADE")
        return "\n".join([*nat_table, "COMMIT", *_filter(_drop_new_from_wan())]) + "\n"
    if nat in (NatType.SYMMETRIC, NatType.SYMMETRIC_UPNP):
        # APDM: every new flow (remote address and port) gets a random outer port.
        nat_table.append("-A POSTROUTING -o wan0 -j MASQUERADE --random-fully")
        filt = _drop_new_from_wan()
        if nat is NatType.SYMMETRIC_UPNP:
            # A port forward miniupnpd made (its DNAT) is let in, as a router's firewall does
            # for the forwards it holds; everything else new from outside is still dropped.
            filt = ["-A FORWARD -i wan0 -m conntrack --ctstate DNAT -j ACCEPT", *filt]
        return "\n".join([*nat_table, "COMMIT", *_filter(filt)]) + "\n"
    if nat is NatType.SEQUENTIAL_SYMMETRIC:
        # APDM with predictable ports: the nat table sees only the first packet of each flow, and
        # rule k (taken by every (N-k)-th packet that reaches it, i.e. round robin) maps that flow
        # to port BASE+k. A one-port SNAT range skips the kernel's "reuse this source's mapping",
        # so each new remote endpoint takes the next port.
        for k in range(SEQUENTIAL_PORTS):
            nat_table.append(
                f"-A POSTROUTING -o wan0 -p udp -m statistic --mode nth --every {SEQUENTIAL_PORTS - k} "
                f"--packet 0 -j SNAT --to-source {wan}:{SEQUENTIAL_BASE_PORT + k}"
            )
        nat_table.append("-A POSTROUTING -o wan0 -j MASQUERADE --random-fully")  # TCP and the rest
        return "\n".join([*nat_table, "COMMIT", *_filter(_drop_new_from_wan())]) + "\n"
    if nat is NatType.UDP_BLOCKED:
        nat_table.append("-A POSTROUTING -o wan0 -j MASQUERADE")
        filt = [
            *_drop_new_from_wan(),
            # Out: only TCP to port 443 (HTTPS, TLS presence, TURN over TLS/TCP) leaves.
            "-A FORWARD -i lan0 -o wan0 -p tcp --dport 443 -j ACCEPT",
            "-A FORWARD -i lan0 -o wan0 -j DROP",
        ]
        return "\n".join([*nat_table, "COMMIT", *_filter(filt)]) + "\n"
    if nat is NatType.HAIRPIN:
        if len(site.inner_hosts) != 2:
            raise ValueError("a hairpin NAT has the device and the viewer behind it")
        device, viewer = site.inner_hosts
        for (low, high), inner in ((HAIRPIN_DEVICE_PORTS, device), (HAIRPIN_VIEWER_PORTS, viewer)):
            for proto in ("udp", "tcp"):
                # Hairpin in: a LAN host sending to the WAN address reaches the host that owns
                # that port range (the hosts' ephemeral port ranges are set apart, and
                # MASQUERADE keeps ports, so an outer port names its inner host).
                nat_table.append(
                    f"-A PREROUTING -i lan0 -d {wan} -p {proto} --dport {low}:{high} "
                    f"-j DNAT --to-destination {inner}"
                )
        nat_table += [
            "-A POSTROUTING -o wan0 -j MASQUERADE",
            # Hairpin out: the looped packet leaves with the sender's public address, so the
            # receiver sees the same address as the broker does (and replies go via the NAT).
            f"-A POSTROUTING -o lan0 -s {site.lan_net} -m conntrack --ctstate DNAT -j SNAT --to-source {wan}",
        ]
        return "\n".join([*nat_table, "COMMIT", *_filter(_drop_new_from_wan())]) + "\n"
    raise AssertionError(f"no rules for {nat}")  # pragma: no cover


def rules6() -> str:
    """The ``ip6tables-restore`` input of an IPv6 carrier's gateway (``Lab.ipv6``): a stateful
    firewall and no NAT, as LTE carriers and home routers give IPv6. Outbound passes; inbound
    passes only as a reply (conntrack ESTABLISHED or RELATED: ICMPv6 errors such as Packet Too
    Big); every new inbound flow is dropped, so a peer reaches the host only once the host has
    sent to it (the IPv6 form of APDF filtering, without a mapping). ICMPv6 to the gateway itself
    (neighbour discovery) is left alone."""
    return "\n".join(
        [
            "*filter",
            ":INPUT ACCEPT [0:0]",
            ":FORWARD ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            "-A FORWARD -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A FORWARD -i wan0 -j DROP",
            "COMMIT",
            "",
        ]
    )
