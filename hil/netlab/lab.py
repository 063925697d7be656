"""Build, change and tear down NAT topologies in network namespaces (needs root).

Layout (addresses are documentation ranges; nothing leaves the namespaces)::

    <p>broker  eth0 203.0.113.10 + .11 (RFC 5780 alternate) ─┐
    <p>turn    eth0 192.0.2.10 (optional, for coturn) ───────┤
                                                   <p>inet (router: to-broker, to-turn, to-dev, to-view)
    <p>dev ── lan0 <p>dev-nat wan0 198.51.100.2 ────────────┤  (cgnat: <p>dev-nat ── <p>dev-cgn)
    <p>view ─ lan0 <p>view-nat wan0 198.51.100.66 ──────────┘

Device side: WAN 198.51.100.0/26, LAN 192.168.1.0/24 (public: 198.51.100.128/26, CGN link
100.64.1.0/24). Viewer side: WAN 198.51.100.64/26, LAN 192.168.2.0/24 (public:
198.51.100.192/26, CGN link 100.64.2.0/24). Hairpin: one NAT ``<p>nat`` whose LAN bridge holds
the device (192.168.1.2) and the viewer (192.168.1.3).

Every name starts with the lab's prefix (``dl-`` by hand, ``dlt<random>-`` in tests), so parallel
or crashed runs never collide and :func:`down` finds leftovers by prefix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.netlab.nat import (
    ADF_CHAIN,
    BLOCK_CHAIN,
    HAIRPIN_DEVICE_PORTS,
    HAIRPIN_VIEWER_PORTS,
    LOSS_CHAIN,
    MINIUPNPD_NAT_CHAIN,
    MINIUPNPD_TABLES,
    UPNP_PORTS,
    NatSite,
    NatType,
    adf_rule,
    rules,
    rules6,
    upnp_public_addr,
)
from hil.netlab.profiles import LinkProfile, profile

REPO = Path(__file__).resolve().parents[2]
INET6_BROKER_GW = "2001:db8:203::1"
HAND_PREFIX = "dl-"
PREFIX_PATTERN = re.compile(r"^dl(t[0-9a-f]{6})?-")
SIDES = ("device", "viewer")
BROKER_ADDRS = ("203.0.113.10", "203.0.113.11")
BROKER_ADDRS6 = ("2001:db8:203::10", "2001:db8:203::11")
"""The broker's IPv6 addresses (documentation prefix 2001:db8::/32): every lab is dual-stack on the
internet side, so the broker's STUN and presence answer on both families when bound to ``::``."""
TURN_ADDR = "192.0.2.10"
SKIP_MESSAGE = "needs root and iptables: run as root, e.g. in CI"
TOOLS = ("ip", "iptables", "iptables-restore", "ip6tables-restore", "conntrack", "tc", "sysctl")
log = logging.getLogger(__name__)
WIRE_START_S = 10.0
"""How long a user-space wire may take to bind its queue."""
MINIUPNPD = "/usr/sbin/miniupnpd"
MINIUPNPD_START_S = 10.0
"""How long miniupnpd may take to listen on its ports."""


class NetlabError(RuntimeError):
    """A lab command failed; the message has the command and its output."""


def unavailable_reason() -> str | None:
    """Why the lab cannot run here (for ``pytest.skip``), or None if it can."""
    if os.geteuid() != 0:
        return f"{SKIP_MESSAGE} (not root)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"{SKIP_MESSAGE} (missing: {', '.join(missing)}; Debian packages iproute2, iptables, conntrack)"
        )
    return None


def upnp_unavailable_reason() -> str | None:
    """Why a ``symmetric_upnp`` side cannot be built here (for ``pytest.skip``), or None."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    if not os.access(MINIUPNPD, os.X_OK) or shutil.which("nft") is None:
        return "needs miniupnpd (nftables backend) and nft: apt-get install miniupnpd nftables"
    return None


def new_prefix() -> str:
    """A fresh prefix for a test lab: ``dlt`` + 6 hex digits + ``-``."""
    return f"dlt{secrets.token_hex(3)}-"


def run_command(argv: Sequence[str], input_text: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, timeout=30, check=False
    )
    if check and proc.returncode != 0:
        raise NetlabError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stdout


def namespaces() -> list[str]:
    """Every network namespace name on the host."""
    out = run_command(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def add_namespace(ns: str, prefix: str) -> None:
    """Create namespace ``ns`` (a lab's, named with ``prefix``) with its loopback up.

    Raises:
        NetlabError: it exists already (the message says how to remove the lab it belongs to).
    """
    if ns in namespaces():
        raise NetlabError(
            f"namespace {ns} exists already; remove it with: python -m hil.netlab down --prefix {prefix}"
        )
    run_command(["ip", "netns", "add", ns])
    ip_batch(ns, ["link set lo up"])


def lab_prefixes() -> list[str]:
    """Prefixes of the labs whose namespaces exist (by hand and leftovers of test runs)."""
    found = {m.group(0) for name in namespaces() if (m := PREFIX_PATTERN.match(name))}
    return sorted(found)


def down(prefix: str) -> list[str]:
    """Remove every namespace named ``prefix*`` after killing the processes inside (ones a lab
    started: brokers, daemons, classifiers). Returns the removed names.

    Raises:
        ValueError: ``prefix`` is not a lab prefix (``dl-`` or ``dlt<6 hex>-``).
    """
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(f"{prefix!r} is not a lab prefix; use dl- or dlt<6 hex digits>-")
    names = [name for name in namespaces() if name.startswith(prefix)]
    for name in names:
        pids = [int(p) for p in run_command(["ip", "netns", "pids", name], check=False).split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for name in names:
        run_command(["ip", "netns", "del", name], check=False)
    return names


@dataclass(frozen=True, slots=True)
class _RunningWire:
    proc: subprocess.Popen[str]
    rules: list[list[str]]
    """The router's mangle rules that feed its queue (``iptables -t mangle -A`` arguments)."""


@dataclass
class Side:
    """One side (device or viewer): a host namespace behind one or more gateway namespaces."""

    name: str
    nat: NatType
    host_ns: str
    host_addr: str
    gateways: tuple[str, ...]
    """Gateway (NAT or router) namespaces from the host outwards; the last one has the WAN."""
    wan_addr: str
    router_if: str
    """The internet router's interface towards this side."""
    profile: LinkProfile
    upnp_addr: str | None = None
    """Where a ``symmetric_upnp`` router maps ports (its second WAN address), else None."""
    host_addr6: str | None = None
    """The host's global IPv6 address (an IPv6 lab, ``Lab.ipv6``), else None."""


@dataclass
class Lab:
    """A built topology. Make one with :func:`topology` (or :meth:`build`); :meth:`close` removes it.

    Sides are named ``"device"`` and ``"viewer"``.
    """

    prefix: str
    device_nat: NatType
    viewer_nat: NatType
    profile_name: str = "lan"
    udp_timeout: int | None = None
    udp_stream_timeout: int | None = None
    tcp_timeout: int | None = None
    with_turn: bool = False
    ipv6: bool = False
    """Each side's gateway is also an IPv6 carrier: it routes a global /64 to the host (which then
    has IPv4 behind the side's NAT and a global IPv6 address) through a stateful firewall
    (``nat.rules6``: replies in, new inbound flows dropped). Not for hairpin or cgnat sides."""
    sides: dict[str, Side] = field(default_factory=dict)
    netem: bool | None = None
    """Whether the kernel has ``sch_netem`` (found at build). Without it, profiles get their rate
    from ``tbf``, their loss from ``-m statistic`` drops and their delay from a user-space wire
    (:mod:`hil.netlab.wire_nfqueue`) in the internet router's namespace."""
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    _wires: dict[str, _RunningWire] = field(default_factory=dict)
    _owned: list[str] = field(default_factory=list)

    # -- names and addresses -----------------------------------------------------------------------

    @property
    def inet_ns(self) -> str:
        """The internet router's namespace."""
        return f"{self.prefix}inet"

    @property
    def broker_ns(self) -> str:
        """The broker's namespace."""
        return f"{self.prefix}broker"

    @property
    def broker_addrs(self) -> tuple[str, str]:
        """The broker's primary and alternate (RFC 5780) addresses."""
        return BROKER_ADDRS

    @property
    def turn_ns(self) -> str | None:
        """The namespace for coturn (with ``with_turn``), else None."""
        return f"{self.prefix}turn" if self.with_turn else None

    @property
    def turn_addr(self) -> str | None:
        """coturn's address (with ``with_turn``), else None."""
        return TURN_ADDR if self.with_turn else None

    @property
    def device_ns(self) -> str:
        """The device host's namespace."""
        return self.sides["device"].host_ns

    @property
    def viewer_ns(self) -> str:
        """The viewer host's namespace."""
        return self.sides["viewer"].host_ns

    def side(self, name: str) -> Side:
        """The side called ``name``.

        Raises:
            ValueError: not ``device`` or ``viewer``.
        """
        if name not in self.sides:
            raise ValueError(f"unknown side {name!r}; use device or viewer")
        return self.sides[name]

    @property
    def broker_addrs6(self) -> tuple[str, str]:
        """The broker's IPv6 addresses (primary and alternate)."""
        return BROKER_ADDRS6

    def host_addr(self, side: str) -> str:
        """The host's own address on its LAN."""
        return self.side(side).host_addr

    def host_addr6(self, side: str) -> str | None:
        """The host's global IPv6 address in an IPv6 lab, else None."""
        return self.side(side).host_addr6

    def wan_addr(self, side: str) -> str:
        """The public address of the side's outermost gateway."""
        return self.side(side).wan_addr

    def nat_ns(self, side: str) -> str:
        """The side's outermost gateway namespace (the NAT facing the internet)."""
        return self.side(side).gateways[-1]

    def nat_namespaces(self, side: str) -> tuple[str, ...]:
        """Every gateway namespace of the side, from the host outwards (two for cgnat)."""
        return self.side(side).gateways

    # -- running things inside -----------------------------------------------------------------------

    def command(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``ns`` (``ip netns exec``)."""
        return ["ip", "netns", "exec", ns, *argv]

    def run(
        self, ns: str, argv: Sequence[str], check: bool = True, timeout: float = 60.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``ns`` and wait (text output captured unless ``stdout``/``stderr`` given).

        Raises:
            subprocess.CalledProcessError: it failed and ``check`` is true.
            subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
        """
        kwargs.setdefault("capture_output", "stdout" not in kwargs and "stderr" not in kwargs)
        return subprocess.run(self.command(ns, argv), check=check, timeout=timeout, text=True, **kwargs)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``ns``; the lab kills it at :meth:`close` if it still runs."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.command(ns, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, ns: str, args: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run this Python with ``args`` in ``ns``, from the repository (so ``-m hil...`` works)."""
        return self.run(ns, [sys.executable, *args], timeout=timeout, cwd=REPO, check=False)

    # -- changing things at run time ----------------------------------------------------------------

    def set_udp_timeout(self, side: str, seconds: int, stream_seconds: int | None = None) -> None:
        """Set the UDP mapping lifetime of every NAT layer of ``side``: ``nf_conntrack_udp_timeout``
        (flows without a reply yet, or short ones) and ``_stream`` (replied flows older than a few
        seconds; keepalive flows), both ``seconds`` unless ``stream_seconds`` is given. Existing
        mappings keep their current deadline until their next packet."""
        stream = stream_seconds if stream_seconds is not None else seconds
        for ns in self.nat_namespaces(side):
            set_sysctl(
                ns,
                {
                    "net.netfilter.nf_conntrack_udp_timeout": seconds,
                    "net.netfilter.nf_conntrack_udp_timeout_stream": stream,
                },
            )
            if self.side(side).nat is NatType.RESTRICTED_CONE:
                self._set_adf(ns, max(seconds, stream))

    def set_tcp_timeout(self, side: str, seconds: int) -> None:
        """Set ``nf_conntrack_tcp_timeout_established`` on every NAT layer of ``side``."""
        for ns in self.nat_namespaces(side):
            set_sysctl(ns, {"net.netfilter.nf_conntrack_tcp_timeout_established": seconds})

    def udp_timeouts(self, side: str) -> tuple[int, int]:
        """(udp_timeout, udp_timeout_stream) of the side's outermost NAT."""
        ns = self.nat_ns(side)
        out = run_command(
            ["ip", "netns", "exec", ns, "sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout",
             "net.netfilter.nf_conntrack_udp_timeout_stream"]
        )  # fmt: skip
        first, second = out.split()
        return int(first), int(second)

    def flush_conntrack(self, side: str) -> None:
        """Forget every mapping of the side's NATs (``conntrack -F``), as a NAT rebinding does.
        Port-preserving NATs (the cone types) map the next packet to the same port again."""
        for ns in self.nat_namespaces(side):
            run_command(["ip", "netns", "exec", ns, "conntrack", "-F"], check=False)  # exits 1 if empty

    def conntrack(self, side: str) -> str:
        """``conntrack -L`` of the side's outermost NAT."""
        return run_command(["ip", "netns", "exec", self.nat_ns(side), "conntrack", "-L"], check=False)

    def block_udp(self, side: str, on: bool = True) -> None:
        """Drop (``on``) or pass again all UDP through the side's outermost gateway."""
        ns = self.nat_ns(side)
        _iptables(ns, ["-F", BLOCK_CHAIN])
        if on:
            _iptables(ns, ["-A", BLOCK_CHAIN, "-p", "udp", "-j", "DROP"])

    def allow_udp(self, side: str, on: bool = True) -> None:
        """Let UDP out through the side's outermost gateway (``on``) even where its NAT type drops
        it, so a ``udp_blocked`` side behaves as a port-restricted cone until ``allow_udp(side,
        False)``; replies come back as conntrack allows. Replaces any ``block_udp``."""
        ns = self.nat_ns(side)
        _iptables(ns, ["-F", BLOCK_CHAIN])
        if on:
            _iptables(ns, ["-A", BLOCK_CHAIN, "-i", "lan0", "-o", "wan0", "-p", "udp", "-j", "ACCEPT"])

    def set_profile(self, side: str, name: str) -> None:
        """Put link profile ``name`` (lan, 3g, edge, gprs) on the side's uplink, both directions.

        Raises:
            ValueError: unknown profile.
        """
        chosen = profile(name)
        s = self.side(side)
        s.profile = chosen
        self._stop_wire(side)
        for ns, dev, direction in ((s.gateways[-1], "wan0", "up"), (self.inet_ns, s.router_if, "down")):
            args = chosen.netem_args(direction) if self.netem else chosen.tbf_args(direction)
            if args:
                run_command(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *args])
            else:
                run_command(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
        if not self.netem:
            _iptables(s.gateways[-1], ["-F", LOSS_CHAIN])
            if chosen.loss_percent:
                probability = f"{chosen.loss_percent / 100:.4f}"
                for flag in ("-i", "-o"):  # each direction
                    _iptables(
                        s.gateways[-1],
                        ["-A", LOSS_CHAIN, flag, "wan0", "-m", "statistic", "--mode", "random",
                         "--probability", probability, "-j", "DROP"],
                    )  # fmt: skip
            if chosen.delay_ms:
                self._start_wire(side, chosen)

    def _start_wire(self, side: str, chosen: LinkProfile) -> None:
        """Delay the side's packets in a user-space wire: the router queues what comes in from the
        side (``PREROUTING -i``) and what it sends to it (``FORWARD``/``OUTPUT -o``) to the wire's
        NFQUEUE. Rate (tbf) and loss (iptables) stay where they are."""
        s = self.side(side)
        queue_num = 1 + SIDES.index(side)
        proc = self.popen(
            self.inet_ns,
            [sys.executable, "-m", "hil.netlab.wire_nfqueue", "--queue-num", str(queue_num),
             "--delay-ms", str(chosen.delay_ms), "--queue-packets", str(chosen.queue_packets)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], WIRE_START_S)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise NetlabError(
                f"the wire for the {side} side's {chosen.name} delay did not start within {WIRE_START_S:g} s "
                f"(it printed {line.strip()!r}; stderr: {err.strip()[-400:]}): check that the kernel has "
                f"NETFILTER_NETLINK_QUEUE and that no other process holds NFQUEUE {queue_num}"
            )
        target = ["-j", "NFQUEUE", "--queue-num", str(queue_num)]
        specs = [
            ["PREROUTING", "-i", s.router_if, *target],
            ["FORWARD", "-o", s.router_if, *target],
            ["OUTPUT", "-o", s.router_if, *target],
        ]
        running = _RunningWire(proc, specs)
        self._wires[side] = running
        for spec in specs:
            _iptables(self.inet_ns, ["-t", "mangle", "-A", *spec])

    def _stop_wire(self, side: str) -> None:
        running = self._wires.pop(side, None)
        if running is None:
            return
        for spec in running.rules:
            delete = ["ip", "netns", "exec", self.inet_ns, "iptables", "-t", "mangle", "-D", *spec]
            run_command(delete, check=False)
        if running.proc.poll() is None:
            running.proc.terminate()  # it lets the packets it holds go, then unbinds
        try:
            _, err = running.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            running.proc.kill()
            _, err = running.proc.communicate(timeout=10)
        log.info("%s side: %s", side, (err or "").strip() or f"the wire ended ({running.proc.returncode})")
        if running.proc in self._procs:
            self._procs.remove(running.proc)

    def qdisc(self, side: str) -> str:
        """``tc qdisc show`` of the side's uplink (NAT side)."""
        return run_command(["tc", "-n", self.nat_ns(side), "qdisc", "show", "dev", "wan0"])

    def reconfigure(self, device_nat: NatType | str, viewer_nat: NatType | str, ipv6: bool = False) -> None:
        """Rebuild both sides with other NAT types (with ``ipv6``: each side's gateway also an IPv6
        carrier, see :attr:`ipv6`); the internet, broker and their processes stay. Processes
        started inside the old side namespaces are killed.

        Raises:
            ValueError: an unknown NAT type, hairpin on one side only, or IPv6 with hairpin or cgnat.
        """
        device, viewer = _nat(device_nat), _nat(viewer_nat)
        _check_pair(device, viewer, ipv6)
        self._remove_sides()
        self.device_nat, self.viewer_nat, self.ipv6 = device, viewer, ipv6
        self._build_sides()

    # -- lifecycle -----------------------------------------------------------------------------------

    def build(self) -> Lab:
        """Create every namespace, link, address, route, rule and qdisc.

        Raises:
            NetlabError: a command failed (the message has its output); what was built is removed.
        """
        _check_pair(self.device_nat, self.viewer_nat, self.ipv6)
        try:
            for ns in (self.inet_ns, self.broker_ns, *([self.turn_ns] if self.turn_ns else [])):
                self._add_ns(ns)
            set_sysctl(self.inet_ns, {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1})
            if self.netem is None:
                probe = ["tc", "-n", self.inet_ns, "qdisc", "add", "dev", "lo", "root", "netem"]
                self.netem = (
                    subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0
                )
                run_command(["tc", "-n", self.inet_ns, "qdisc", "del", "dev", "lo", "root"], check=False)
            add_veth(self.inet_ns, "to-broker", self.broker_ns, "eth0")
            ip_batch(self.inet_ns, ["addr add 203.0.113.1/24 dev to-broker", "link set to-broker up"])
            ip_batch(
                self.broker_ns,
                [f"addr add {a}/24 dev eth0" for a in BROKER_ADDRS]
                + ["link set eth0 up", "route add default via 203.0.113.1"],
            )
            # Dual-stack: the broker has IPv6 addresses too ("nodad": usable at once, no
            # duplicate address detection on a link the lab made).
            ip_batch(self.inet_ns, [f"addr add {INET6_BROKER_GW}/64 dev to-broker nodad"])
            ip_batch(
                self.broker_ns,
                [f"addr add {a}/64 dev eth0 nodad" for a in BROKER_ADDRS6]
                + [f"route add default via {INET6_BROKER_GW}"],
            )
            if self.turn_ns:
                add_veth(self.inet_ns, "to-turn", self.turn_ns, "eth0")
                ip_batch(self.inet_ns, ["addr add 192.0.2.1/24 dev to-turn", "link set to-turn up"])
                ip_batch(self.turn_ns, [f"addr add {TURN_ADDR}/24 dev eth0", "link set eth0 up",
                                      "route add default via 192.0.2.1"])  # fmt: skip
            self._build_sides()
        except BaseException:
            self.close()
            raise
        return self

    def release_processes(self) -> None:
        """Let the processes started so far outlive :meth:`close` (for ``up --broker``)."""
        self._procs.clear()

    def close(self) -> None:
        """Kill the processes the lab started and remove every namespace it made. Idempotent."""
        self._wires.clear()
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._procs.clear()
        down_names = [ns for ns in self._owned if ns in set(namespaces())]
        for ns in down_names:
            for pid in run_command(["ip", "netns", "pids", ns], check=False).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run_command(["ip", "netns", "del", ns], check=False)
        self._owned.clear()
        self.sides.clear()

    def describe(self) -> str:
        """What ``up`` prints: namespaces, addresses, and how to run a command inside."""
        lines = [
            f"lab {self.prefix} (device {self.device_nat.value}, viewer {self.viewer_nat.value}"
            + (", both with IPv6)" if self.ipv6 else ")"),
            f"  internet router  {self.inet_ns}",
            f"  broker           {self.broker_ns}  {BROKER_ADDRS[0]} (alternate {BROKER_ADDRS[1]}), "
            f"{BROKER_ADDRS6[0]} (alternate {BROKER_ADDRS6[1]})",
        ]
        if self.turn_ns:
            lines.append(f"  coturn           {self.turn_ns}  {TURN_ADDR}")
        for s in self.sides.values():
            lines.append(
                f"  {s.name:<8} {s.nat.value:<21} host {s.host_ns} {s.host_addr}  "
                f"via {' -> '.join(s.gateways)} (public {s.wan_addr}, profile {s.profile.name})"
            )
            if s.host_addr6 is not None:
                lines.append(
                    f"           IPv6 {s.host_addr6} (global, behind {s.gateways[-1]}'s stateful firewall)"
                )
            if s.upnp_addr is not None:
                lines.append(
                    f"           its router runs miniupnpd (UPnP-IGD, NAT-PMP, PCP), mapping on "
                    f"{s.upnp_addr}, log {self.miniupnpd_log(s.gateways[-1])}"
                )
        if not self.netem:
            lines.append(
                "  note: this kernel has no netem (CONFIG_NET_SCH_NETEM): profiles limit rate (tbf), "
                "drop packets (iptables) and get their delay from a user-space wire (NFQUEUE) "
                f"in {self.inet_ns}"
            )
        lines += [
            "run a command inside:   ip netns exec " + self.device_ns + " <command>",
            f"classify the device NAT: ip netns exec {self.device_ns} {sys.executable} -m hil.netlab "
            f"classify --server {BROKER_ADDRS[0]}:3478   (needs the broker: up ... --broker)",
            f"remove it:               python -m hil.netlab down --prefix {self.prefix}",
        ]
        return "\n".join(lines)

    # -- internals -------------------------------------------------------------------------------------

    def _add_ns(self, ns: str) -> None:
        add_namespace(ns, self.prefix)
        self._owned.append(ns)

    def _remove_sides(self) -> None:
        for side in list(self._wires):
            self._stop_wire(side)
        gone = {ns for s in self.sides.values() for ns in (s.host_ns, *s.gateways)}
        # A deleted namespace is destroyed in the background, and its veths with it; delete the
        # router's ends now so the names are free for the new sides.
        for router_if in {s.router_if for s in self.sides.values()}:
            run_command(["ip", "-n", self.inet_ns, "link", "del", router_if], check=False)
        for ns in gone:
            for pid in run_command(["ip", "netns", "pids", ns], check=False).split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run_command(["ip", "netns", "del", ns], check=False)
        self._owned = [ns for ns in self._owned if ns not in gone]
        # The router's side of each veth went with its peer; drop the routes to public hosts.
        for net in ("198.51.100.128/26", "198.51.100.192/26", *(lan6(i) for i in range(len(SIDES)))):
            run_command(["ip", "-n", self.inet_ns, "route", "del", net], check=False)
        self.sides.clear()

    def _build_sides(self) -> None:
        link = profile(self.profile_name)
        if self.device_nat is NatType.HAIRPIN:
            self._build_hairpin(link)
        else:
            for index, name in enumerate(SIDES):
                nat = self.device_nat if name == "device" else self.viewer_nat
                self._build_side(index, name, nat, link)
        for name in SIDES:
            s = self.sides[name]
            if name == "viewer" and s.router_if == self.sides["device"].router_if:
                continue  # hairpin: one uplink
            self.set_profile(name, link.name)
            if self.udp_timeout is not None or self.udp_stream_timeout is not None:
                self.set_udp_timeout(
                    name, self.udp_timeout or 30, self.udp_stream_timeout or self.udp_timeout or 120
                )
            if self.tcp_timeout is not None:
                self.set_tcp_timeout(name, self.tcp_timeout)

    def _build_side(self, index: int, name: str, nat: NatType, link: LinkProfile) -> None:
        short = "dev" if name == "device" else "view"
        host = f"{self.prefix}{short}"
        gw = f"{self.prefix}{short}-nat"
        router_if = f"to-{short}"
        base = 64 * index
        wan = f"198.51.100.{base + 2}"
        for ns in (host, gw):
            self._add_ns(ns)
        gateways = [gw]
        outer = gw
        if nat is NatType.CGNAT:
            outer = f"{self.prefix}{short}-cgn"
            self._add_ns(outer)
            gateways.append(outer)
        add_veth(self.inet_ns, router_if, outer, "wan0")
        ip_batch(
            self.inet_ns, [f"addr add 198.51.100.{base + 1}/26 dev {router_if}", f"link set {router_if} up"]
        )
        ip_batch(
            outer,
            [
                f"addr add {wan}/26 dev wan0",
                "link set wan0 up",
                f"route add default via 198.51.100.{base + 1}",
            ],
        )
        add_veth(gw, "lan0", host, "eth0")
        if nat is NatType.PUBLIC:
            public_net = f"198.51.100.{base + 128}"
            gw_lan, host_addr, prefix_len = f"198.51.100.{base + 129}", f"198.51.100.{base + 130}", 26
            run_command(["ip", "-n", self.inet_ns, "route", "replace", f"{public_net}/26", "via", wan])
        else:
            gw_lan, host_addr, prefix_len = f"192.168.{index + 1}.1", f"192.168.{index + 1}.2", 24
        ip_batch(gw, [f"addr add {gw_lan}/{prefix_len} dev lan0", "link set lan0 up"])
        ip_batch(
            host,
            [
                f"addr add {host_addr}/{prefix_len} dev eth0",
                "link set eth0 up",
                f"route add default via {gw_lan}",
            ],
        )
        if nat is NatType.CGNAT:
            carrier_lan, home_wan = f"100.64.{index + 1}.1", f"100.64.{index + 1}.2"
            add_veth(gw, "wan0", outer, "lan0")
            ip_batch(
                gw,
                [
                    f"addr add {home_wan}/24 dev wan0",
                    "link set wan0 up",
                    f"route add default via {carrier_lan}",
                ],
            )
            ip_batch(outer, [f"addr add {carrier_lan}/24 dev lan0", "link set lan0 up"])
            self._configure_nat(
                gw, NatType.PORT_RESTRICTED_CONE, NatSite(home_wan, (host_addr,), f"192.168.{index + 1}.0/24")
            )
            self._configure_nat(
                outer, NatType.PORT_RESTRICTED_CONE, NatSite(wan, (home_wan,), f"100.64.{index + 1}.0/24")
            )
        else:
            self._configure_nat(gw, nat, NatSite(wan, (host_addr,), f"192.168.{index + 1}.0/24"))
        host_addr6 = self._build_ipv6(index, gw, host, router_if) if self.ipv6 else None
        upnp_addr = None
        if nat is NatType.SYMMETRIC_UPNP:
            upnp_addr = upnp_public_addr(index)
            run_command(["ip", "-n", self.inet_ns, "route", "replace", f"{upnp_addr}/32", "via", wan])
            self._start_miniupnpd(gw, upnp_addr, index)
        self.sides[name] = Side(
            name, nat, host, host_addr, tuple(gateways), wan, router_if, link, upnp_addr, host_addr6
        )

    def _build_ipv6(self, index: int, gw: str, host: str, router_if: str) -> str:
        """Make side ``index``'s gateway ``gw`` an IPv6 carrier: its WAN link and the host's LAN get
        global /64s, the internet routes the LAN's /64 to it, and ``nat.rules6`` makes it a
        stateful firewall. No NAT66: the host's address is its public one. Returns that address."""
        wan_net, lan_net = wan6(index), lan6(index)
        router, gw_wan = wan_net.replace("::/64", "::1"), wan_net.replace("::/64", "::2")
        gw_lan, host_addr6 = lan_net.replace("::/64", "::1"), lan_net.replace("::/64", "::2")
        set_sysctl(gw, {"net.ipv6.conf.all.forwarding": 1})
        ip_batch(
            self.inet_ns,
            [f"addr add {router}/64 dev {router_if} nodad", f"route replace {lan_net} via {gw_wan}"],
        )
        ip_batch(gw, [f"addr add {gw_wan}/64 dev wan0 nodad", f"addr add {gw_lan}/64 dev lan0 nodad",
                      f"route add default via {router}"])  # fmt: skip
        ip_batch(host, [f"addr add {host_addr6}/64 dev eth0 nodad", f"route add default via {gw_lan}"])
        run_command(["ip", "netns", "exec", gw, "ip6tables-restore"], input_text=rules6())
        return host_addr6

    def _start_miniupnpd(self, gw: str, public: str, index: int) -> None:
        """miniupnpd on ``gw``: UPnP-IGD (HTTP port 5000), NAT-PMP and PCP (5351) on the LAN,
        mapping on ``public`` (added to wan0 beside the NAT's own address; see
        ``nat.upnp_public_addr``)."""
        reason = upnp_unavailable_reason()
        if reason is not None:
            raise NetlabError(f"a symmetric_upnp side {reason}")
        ip_batch(gw, [f"addr add {public}/32 dev wan0"])
        run_command(["ip", "netns", "exec", gw, "nft", "-f", "-"], input_text=MINIUPNPD_TABLES)
        log_path = self.miniupnpd_log(gw)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Its own pid file: miniupnpd refuses to start while the one in the file runs, and
        # several labs (or a crashed one's leftover file) must not stop each other.
        pid_file = log_path.with_suffix(".pid")
        pid_file.unlink(missing_ok=True)
        argv = [
            MINIUPNPD, "-d",  # in the foreground, logging to stderr
            "-f", "/dev/null",  # no config file: everything on the command line
            "-i", "wan0", "-a", "lan0", "-o", public, "-p", str(UPNP_PORTS[1]),
            "-N",  # NAT-PMP and PCP besides UPnP-IGD
            "-U", "-u", f"6c616221-0000-4000-8000-00000000000{index}", "-t", "60", "-P", str(pid_file),
        ]  # fmt: skip
        # Detached (``setsid -f``): it belongs to the namespace, not to the process that built
        # the side, and goes with the namespace (``_remove_sides`` and ``close`` kill every
        # process inside), like the NAT's own rules.
        with log_path.open("ab") as out:
            self.run(gw, ["setsid", "-f", *argv], stdout=out, stderr=subprocess.STDOUT, timeout=30)
        wait_until(
            f"miniupnpd listening on UDP {UPNP_PORTS[0]} and TCP {UPNP_PORTS[1]} in {gw} (log: {log_path})",
            lambda: _listening(gw, UPNP_PORTS[0], "udp") and _listening(gw, UPNP_PORTS[1], "tcp"),
            MINIUPNPD_START_S,
        )

    def miniupnpd_log(self, gw: str) -> Path:
        """The log of the miniupnpd running in gateway namespace ``gw``."""
        return Path(tempfile.gettempdir()) / f"{gw}-miniupnpd.log"

    def upnp_mappings(self, side: str) -> str:
        """The DNAT rules miniupnpd holds on the side's router (``nft list chain``): one line per
        mapped port, empty when it maps nothing."""
        out = run_command(
            [
                "ip",
                "netns",
                "exec",
                self.nat_ns(side),
                "nft",
                "list",
                "chain",
                "inet",
                "filter",
                MINIUPNPD_NAT_CHAIN,
            ]
        )
        return "\n".join(line.strip() for line in out.splitlines() if "dnat" in line)

    def _build_hairpin(self, link: LinkProfile) -> None:
        gw = f"{self.prefix}nat"
        hosts = {"device": f"{self.prefix}dev", "viewer": f"{self.prefix}view"}
        for ns in (gw, *hosts.values()):
            self._add_ns(ns)
        wan = "198.51.100.2"
        add_veth(self.inet_ns, "to-dev", gw, "wan0")
        ip_batch(self.inet_ns, ["addr add 198.51.100.1/26 dev to-dev", "link set to-dev up"])
        ip_batch(
            gw,
            [
                f"addr add {wan}/26 dev wan0",
                "link set wan0 up",
                "route add default via 198.51.100.1",
                "link add lan0 type bridge",
                "addr add 192.168.1.1/24 dev lan0",
                "link set lan0 up",
            ],
        )
        addrs = {"device": "192.168.1.2", "viewer": "192.168.1.3"}
        ranges = {"device": HAIRPIN_DEVICE_PORTS, "viewer": HAIRPIN_VIEWER_PORTS}
        for name, host in hosts.items():
            port = f"lan-{name[:4]}"
            add_veth(gw, port, host, "eth0")
            ip_batch(gw, [f"link set {port} master lan0", f"link set {port} up"])
            ip_batch(
                host,
                [
                    f"addr add {addrs[name]}/24 dev eth0",
                    "link set eth0 up",
                    "route add default via 192.168.1.1",
                ],
            )
            low, high = ranges[name]
            # Each host's ephemeral ports are set apart, so an outer port names its inner host.
            set_sysctl(host, {"net.ipv4.ip_local_port_range": f"{low} {high}"})
        # br_netfilter (per namespace) would bridge the hairpinned packet straight back out of
        # the port it came in on, where the bridge drops it: route it instead.
        set_sysctl(gw, {f"net.bridge.bridge-nf-call-{t}": 0 for t in ("iptables", "ip6tables", "arptables")})
        self._configure_nat(
            gw, NatType.HAIRPIN, NatSite(wan, (addrs["device"], addrs["viewer"]), "192.168.1.0/24")
        )
        for name, host in hosts.items():
            self.sides[name] = Side(name, NatType.HAIRPIN, host, addrs[name], (gw,), wan, "to-dev", link)

    def _configure_nat(self, ns: str, nat: NatType, site: NatSite) -> None:
        set_sysctl(ns, {"net.ipv4.ip_forward": 1})
        seconds = max(self.udp_timeout or 30, self.udp_stream_timeout or 120)
        run_command(
            ["ip", "netns", "exec", ns, "iptables-restore"], input_text=rules(nat, site, adf_seconds=seconds)
        )

    def _set_adf(self, ns: str, seconds: int) -> None:
        _iptables(ns, ["-F", ADF_CHAIN])
        _iptables(ns, adf_rule(seconds).split())


def _listening(ns: str, port: int, proto: str) -> bool:
    out = run_command(["ip", "netns", "exec", ns, "ss", "-ln", "--" + proto], check=False)
    return any(f":{port} " in line for line in out.splitlines())


def _nat(value: NatType | str) -> NatType:
    return value if isinstance(value, NatType) else NatType.parse(value)


def _check_pair(device: NatType, viewer: NatType, ipv6: bool = False) -> None:
    if (device is NatType.HAIRPIN) != (viewer is NatType.HAIRPIN):
        raise ValueError("hairpin puts the device and the viewer behind one NAT: give hairpin for both sides")
    unsupported = [t.value for t in (device, viewer) if t in (NatType.HAIRPIN, NatType.CGNAT)]
    if ipv6 and unsupported:
        raise ValueError(
            f"an IPv6 lab gives each side's one gateway a global /64; {', '.join(unsupported)} has more "
            "than one gateway or shares one: build it without ipv6"
        )


def wan6(index: int) -> str:
    """The IPv6 link between the internet router and side ``index``'s gateway (0 device, 1 viewer)."""
    return f"2001:db8:{index + 1}00::/64"


def lan6(index: int) -> str:
    """The global /64 an IPv6 carrier routes to side ``index``'s host."""
    return f"2001:db8:{index + 1}01::/64"


def add_veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    # Created directly inside the namespaces: the host's own interface names are never touched.
    run_command(
        ["ip", "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b]
    )


def ip_batch(ns: str, lines: Sequence[str]) -> None:
    run_command(["ip", "-n", ns, "-batch", "-"], input_text="\n".join(lines) + "\n")


def set_sysctl(ns: str, values: dict[str, object]) -> None:
    run_command(["ip", "netns", "exec", ns, "sysctl", "-qw", *(f"{k}={v}" for k, v in values.items())])


def _iptables(ns: str, args: Sequence[str]) -> None:
    run_command(["ip", "netns", "exec", ns, "iptables", *args])


@contextlib.contextmanager
def topology(
    device_nat: NatType | str = NatType.PUBLIC,
    viewer_nat: NatType | str = NatType.PUBLIC,
    profile: str = "lan",
    udp_timeout: int | None = None,
    udp_stream_timeout: int | None = None,
    tcp_timeout: int | None = None,
    with_turn: bool = False,
    prefix: str | None = None,
    ipv6: bool = False,
) -> Iterator[Lab]:
    """Build a lab, yield it, and remove it afterwards (also on errors).

    ``udp_timeout`` sets both UDP conntrack timeouts unless ``udp_stream_timeout`` is given;
    None keeps the kernel's (30 s and 120 s). ``ipv6``: each side also gets a global IPv6 address
    behind a stateful firewall (:attr:`Lab.ipv6`).

    Raises:
        ValueError: an unknown NAT type or profile, hairpin on one side only, or ``ipv6`` with
            hairpin or cgnat.
        NetlabError: building failed (not root, a tool missing, a name taken ...).
    """
    lab = Lab(
        prefix or new_prefix(),
        _nat(device_nat),
        _nat(viewer_nat),
        profile,
        udp_timeout,
        udp_stream_timeout,
        tcp_timeout,
        with_turn,
        ipv6=ipv6,
    )
    lab.build()
    try:
        yield lab
    finally:
        lab.close()


def wait_until(what: str, condition: Any, timeout: float, poll: float = 0.05) -> Any:
    """The first truthy ``condition()`` within ``timeout`` seconds.

    Raises:
        TimeoutError: it stayed false; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)
