"""A mobile carrier for the NAT lab: a packet gateway that gives each data call a link and an address.

The modem emulator (``hil/modememu``) asks for a link when it accepts an ECM/NDIS call and gives
it back when the call ends. Each link is a veth pair: one end inside the subscriber's namespace,
named as the modem's network interface (``usb0``, ``wwan0``), the other end in the carrier
namespace. The carrier routes the subscriber pool towards the lab's NAT of one side, so with
``device_nat="cgnat"`` the subscriber sits behind carrier-grade NAT and the broker sees it from
that NAT's public address::

    <p>cell  usb0 100.64.128.2/30 ── pdp0 <p>carrier up0 100.64.127.2/30 ── pgw0 <side NAT> wan0 ── <p>inet

The carrier namespace only routes; the NAT it hangs off translates (its ``MASQUERADE -o wan0``
covers the pool too), so the subscriber's mapping and filtering are that NAT type's. Every call
gets the next /30 of 100.64.128.0/17 (the subscriber .2, the carrier .1), so a new call has a new
address, as a new PDP context has on a real network.

Names use the lab's prefix, so ``netlab.down(prefix)`` removes a carrier left behind. Needs root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import threading
from dataclasses import dataclass

from hil.netlab.lab import (
    PREFIX_PATTERN,
    Lab,
    NetlabError,
    add_namespace,
    add_veth,
    ip_batch,
    namespaces,
    run_command,
    set_sysctl,
)
from hil.netlab.nat import NatType

UPLINK_NET = ipaddress.IPv4Network("100.64.127.0/30")
"""The link between the side's NAT (``pgw0``, .1) and the carrier (``up0``, .2)."""
POOL = ipaddress.IPv4Network("100.64.128.0/17")
"""Subscriber addresses: one /30 per call."""
LEASE_S = 7200
NAT_TYPES = frozenset(
    {NatType.CGNAT, NatType.PORT_RESTRICTED_CONE, NatType.SYMMETRIC, NatType.SEQUENTIAL_SYMMETRIC}
)
"""Side NAT types whose rules translate the carrier's pool as they translate their own LAN."""


@dataclass(frozen=True, slots=True)
class Lease:
    """What the carrier hands out for one call (what a DHCP server on the modem would offer)."""

    interface: str
    """The subscriber's interface (the modem's network interface)."""
    address: str
    router: str
    prefix_len: int
    lease_s: int = LEASE_S

    @property
    def netmask(self) -> str:
        """The prefix as a dotted mask (udhcpc's ``subnet``)."""
        return str(ipaddress.IPv4Network(f"0.0.0.0/{self.prefix_len}").netmask)

    def as_udhcpc(self) -> dict[str, str]:
        """The lease under the names udhcpc gives its script (``ip``, ``subnet``, ``router``, ...)."""
        return {
            "interface": self.interface,
            "ip": self.address,
            "subnet": self.netmask,
            "mask": str(self.prefix_len),
            "router": self.router,
            "serverid": self.router,
            "lease": str(self.lease_s),
        }


@dataclass(frozen=True, slots=True)
class _Call:
    carrier_if: str
    lease: Lease


class Carrier:
    """The carrier namespace ``<prefix>carrier`` hung off ``uplink_ns`` (a NAT of the lab).

    Build it with :meth:`for_lab` or :meth:`for_prefix`, then :meth:`build`; :meth:`close` removes
    it and every subscriber namespace it made. :meth:`connect` and :meth:`disconnect` are
    thread-safe (the emulator calls them from its thread).
    """

    def __init__(self, prefix: str, uplink_ns: str, public_addr: str) -> None:
        """Raises ValueError: ``prefix`` is not a lab prefix."""
        if not PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError(f"{prefix!r} is not a lab prefix; use dl- or dlt<6 hex digits>-")
        self.prefix = prefix
        self.uplink_ns = uplink_ns
        self.public_addr = public_addr
        """The address the internet (the broker) sees subscribers from."""
        self._lock = threading.Lock()
        self._owned: list[str] = []
        self._calls: dict[tuple[str, str], _Call] = {}
        self._next = 0

    @property
    def ns(self) -> str:
        """The carrier's namespace."""
        return f"{self.prefix}carrier"

    @classmethod
    def for_lab(cls, lab: Lab, side: str = "device") -> Carrier:
        """A carrier behind the outermost NAT of ``lab``'s ``side`` (not built yet).

        Raises:
            ValueError: the side's NAT type would not translate the carrier's pool (public,
                cone types with a static DNAT, hairpin, udp_blocked); use cgnat.
        """
        nat = lab.side(side).nat
        if nat not in NAT_TYPES:
            names = ", ".join(sorted(t.value for t in NAT_TYPES))
            raise ValueError(
                f"a carrier cannot hang off a {nat.value} side; build the lab with one of: {names}"
            )
        return cls(lab.prefix, lab.nat_ns(side), lab.wan_addr(side))

    @classmethod
    def for_prefix(cls, prefix: str) -> Carrier:
        """A carrier behind the device side of the lab ``prefix`` built by hand (``python -m
        hil.netlab up cgnat``): its carrier-grade NAT, else its NAT (not built yet).

        Raises:
            NetlabError: no such lab; the message says how to build one.
            ValueError: ``prefix`` is not a lab prefix.
        """
        present = set(namespaces())
        uplink = next((ns for ns in (f"{prefix}dev-cgn", f"{prefix}dev-nat") if ns in present), None)
        if uplink is None:
            raise NetlabError(
                f"no lab with prefix {prefix!r} (namespace {prefix}dev-cgn or {prefix}dev-nat): "
                f"build one first, e.g. python -m hil.netlab up cgnat --broker"
            )
        out = run_command(["ip", "-n", uplink, "-4", "-o", "addr", "show", "dev", "wan0"])
        public = out.split()[3].split("/")[0] if len(out.split()) > 3 else "?"
        return cls(prefix, uplink, public)

    def build(self) -> Carrier:
        """Create the carrier namespace and its link to the NAT, with routes both ways.

        Raises:
            NetlabError: a command failed (the message has its output); what was built is removed.
        """
        nat_end, carrier_end = (str(a) for a in UPLINK_NET.hosts())
        try:
            self._add_ns(self.ns)
            add_veth(self.uplink_ns, "pgw0", self.ns, "up0")
            prefix = UPLINK_NET.prefixlen
            ip_batch(self.uplink_ns, [f"addr add {nat_end}/{prefix} dev pgw0", "link set pgw0 up",
                                      f"route add {POOL} via {carrier_end} dev pgw0"])  # fmt: skip
            ip_batch(self.ns, [f"addr add {carrier_end}/{prefix} dev up0", "link set up0 up",
                               f"route add default via {nat_end}"])  # fmt: skip
            set_sysctl(self.ns, {"net.ipv4.ip_forward": 1})
        except BaseException:
            self.close()
            raise
        return self

    def add_subscriber_ns(self, name: str = "cell") -> str:
        """A new, empty namespace ``<prefix><name>`` (loopback only): a host whose one way out is
        the modem. Removed by :meth:`close`.

        Raises:
            NetlabError: it exists already, or ``ip`` failed.
        """
        ns = f"{self.prefix}{name}"
        self._add_ns(ns)
        return ns

    def connect(self, device_ns: str, interface: str) -> Lease:
        """Bring up the call's link: a veth ``interface`` in ``device_ns`` (down and without an
        address: the host's DHCP client configures it) whose peer in the carrier namespace holds the
        router address. Returns the lease; a call already up on that interface keeps its lease.

        Raises:
            NetlabError: ``ip`` failed (no such namespace, the interface name is taken, ...).
        """
        with self._lock:
            call = self._calls.get((device_ns, interface))
            if call is not None:
                return call.lease
            index = self._next
            self._next += 1
            offset = 4 * (index % (POOL.num_addresses // 4))
            subnet = ipaddress.IPv4Network((int(POOL.network_address) + offset, 30))
            router, address = (str(a) for a in subnet.hosts())
            carrier_if = f"pdp{index}"
            add_veth(device_ns, interface, self.ns, carrier_if)
            try:
                ip_batch(self.ns, [f"addr add {router}/30 dev {carrier_if}", f"link set {carrier_if} up"])
            except NetlabError:
                run_command(["ip", "-n", self.ns, "link", "del", carrier_if], check=False)
                raise
            lease = Lease(interface, address, router, 30)
            self._calls[(device_ns, interface)] = _Call(carrier_if, lease)
            return lease

    def disconnect(self, device_ns: str, interface: str) -> bool:
        """Take the call's link away (both veth ends go); False when no call was up there."""
        with self._lock:
            call = self._calls.pop((device_ns, interface), None)
            if call is None:
                return False
            run_command(["ip", "-n", self.ns, "link", "del", call.carrier_if], check=False)
            return True

    def calls(self) -> dict[tuple[str, str], Lease]:
        """The calls up now: (namespace, interface) -> lease."""
        with self._lock:
            return {key: call.lease for key, call in self._calls.items()}

    def describe(self) -> str:
        """One line: where the carrier hangs and what the broker sees."""
        return (
            f"carrier {self.ns} behind {self.uplink_ns} (public {self.public_addr}); "
            f"subscriber pool {POOL}, one /30 per call"
        )

    def close(self) -> None:
        """Remove the carrier namespace (its links go with it) and the subscriber namespaces it
        made, killing processes left inside them. Idempotent."""
        with self._lock:
            self._calls.clear()
            present = set(namespaces())
            for ns in reversed(self._owned):
                if ns not in present:
                    continue
                for pid in run_command(["ip", "netns", "pids", ns], check=False).split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                run_command(["ip", "netns", "del", ns], check=False)
            self._owned.clear()

    def __enter__(self) -> Carrier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_ns(self, ns: str) -> None:
        add_namespace(ns, self.prefix)
        self._owned.append(ns)
