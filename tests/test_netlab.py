"""NAT lab (needs root): every NAT type is classified as what the lab claims it built.

The broker is the real ``dvrlink-broker serve`` process in the lab's broker namespace, with
``stun_alternate_host`` set (RFC 5780); the classifier is ``python -m hil.netlab classify`` run
inside the device namespace. One broker serves every NAT type: ``Lab.reconfigure`` rebuilds the
device and viewer sides between tests while the internet and the broker stay up.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import netlab
from hil.netlab.lab import REPO, namespaces

REASON = netlab.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

CLASSIFY_TIMEOUT = "2.0"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netlab.Lab]:
    with netlab.topology("public", "public") as built:
        netlab.start_lab_broker(built, tmp_path_factory.mktemp("broker"))
        yield built


def classify(lab: netlab.Lab, side: str = "device") -> dict[str, Any]:
    ns = lab.device_ns if side == "device" else lab.viewer_ns
    server = f"{lab.broker_addrs[0]}:3478"
    proc = lab.python(
        ns, ["-m", "hil.netlab", "classify", "--server", server, "--timeout", CLASSIFY_TIMEOUT, "--json"]
    )
    assert proc.returncode in (0, 1), proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.mark.parametrize("nat", list(netlab.NatType), ids=lambda n: n.value)
def test_each_nat_type_is_classified_as_built(lab: netlab.Lab, nat: netlab.NatType) -> None:
    lab.reconfigure(nat, nat if nat is netlab.NatType.HAIRPIN else netlab.NatType.PUBLIC)
    result = classify(lab)
    print(f"{nat.value:<22} -> {result['describe']}")
    assert result["name"] == nat.expected_classification, result["describe"]
    if nat is netlab.NatType.PUBLIC:
        assert result["mapped"][0] == lab.host_addr("device") and result["nat"] is False
    elif nat is not netlab.NatType.UDP_BLOCKED:
        assert result["mapped"][0] == lab.wan_addr("device")
        assert result["other_address"] == [lab.broker_addrs[1], 3480]
        assert result["hairpin"] is (nat is netlab.NatType.HAIRPIN)
    if nat is netlab.NatType.SYMMETRIC:
        assert result["mapping"] == "APDM" and result["port_delta"] is None
    if nat is netlab.NatType.SEQUENTIAL_SYMMETRIC:
        assert result["mapping"] == "APDM" and result["port_delta"] == 1
    if nat is netlab.NatType.CGNAT:
        assert len(lab.nat_namespaces("device")) == 2


def test_the_viewer_side_is_built_too(lab: netlab.Lab) -> None:
    lab.reconfigure("public", "restricted_cone")
    assert classify(lab, "viewer")["name"] == "restricted_cone"
    assert lab.wan_addr("viewer") != lab.wan_addr("device")


def test_udp_lifetime_is_per_nat_and_settable_at_run_time(lab: netlab.Lab) -> None:
    lab.reconfigure("port_restricted_cone", "restricted_cone")
    root = Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").read_text()
    for seconds in (30, 60, 120):
        lab.set_udp_timeout("device", seconds)
        assert lab.udp_timeouts("device") == (seconds, seconds)
    lab.set_udp_timeout("device", 45, stream_seconds=90)
    assert lab.udp_timeouts("device") == (45, 90)
    lab.set_udp_timeout("viewer", 30)  # the restricted cone's address filter follows
    rules = lab.run(lab.nat_ns("viewer"), ["iptables", "-S", "DL-ADF"]).stdout
    assert "--seconds 30" in rules
    lab.set_tcp_timeout("device", 1800)
    out = lab.run(
        lab.nat_ns("device"), ["sysctl", "-n", "net.netfilter.nf_conntrack_tcp_timeout_established"]
    )
    assert out.stdout.strip() == "1800"
    assert Path("/proc/sys/net/netfilter/nf_conntrack_udp_timeout").read_text() == root  # host untouched


def test_flush_conntrack_forgets_the_mappings(lab: netlab.Lab) -> None:
    lab.reconfigure("port_restricted_cone", "public")
    assert classify(lab)["name"] == "port_restricted_cone"
    assert lab.broker_addrs[0] in lab.conntrack("device")
    lab.flush_conntrack("device")
    assert lab.broker_addrs[0] not in lab.conntrack("device")


def test_block_udp_at_run_time(lab: netlab.Lab) -> None:
    lab.reconfigure("full_cone", "public")
    lab.block_udp("device", True)
    assert classify(lab)["name"] == "udp_blocked"
    lab.block_udp("device", False)
    assert classify(lab)["name"] == "full_cone"


def test_udp_blocked_still_lets_tcp_443_out(lab: netlab.Lab) -> None:
    lab.reconfigure("udp_blocked", "public")
    probe = (
        "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); s.close()"
    )
    assert lab.python(lab.device_ns, ["-c", probe, lab.broker_addrs[0], "443"]).returncode == 0
    assert lab.python(lab.device_ns, ["-c", probe, lab.broker_addrs[0], "3479"]).returncode != 0


def test_link_profiles_put_netem_on_the_uplink(lab: netlab.Lab) -> None:
    lab.reconfigure("port_restricted_cone", "public")
    lab.set_profile("device", "gprs")
    qdisc = lab.qdisc("device")
    down_link = lab.run(lab.inet_ns, ["tc", "qdisc", "show", "dev", "to-dev"]).stdout
    assert "rate 40Kbit" in qdisc and "rate 80Kbit" in down_link
    loss = lab.run(lab.nat_ns("device"), ["iptables", "-S", "DL-LOSS"]).stdout
    if lab.netem:
        assert "netem" in qdisc and "delay 300ms" in qdisc and "loss 1%" in qdisc
    else:  # this kernel lacks sch_netem: rate from tbf, loss from iptables, delay from the wire
        assert "tbf" in qdisc and loss.count("--probability 0.0099") == 2
        wired = lab.run(lab.inet_ns, ["iptables", "-t", "mangle", "-S"]).stdout
        assert wired.count("NFQUEUE --queue-num 1") == 3, wired
    lab.set_profile("device", "lan")
    assert "NFQUEUE" not in lab.run(lab.inet_ns, ["iptables", "-t", "mangle", "-S"]).stdout
    assert "netem" not in lab.qdisc("device") and "tbf" not in lab.qdisc("device")
    assert "--probability" not in lab.run(lab.nat_ns("device"), ["iptables", "-S", "DL-LOSS"]).stdout
    with pytest.raises(ValueError, match="use one of: lan, 3g, edge, gprs"):
        lab.set_profile("device", "5g")


ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9100))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
ROUND_TRIPS = """
import socket, statistics, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
times = []
for index in range(6):
    started = time.monotonic()
    s.sendto(str(index).encode(), (sys.argv[1], 9100))
    while s.recv(64) != str(index).encode():
        pass
    times.append(time.monotonic() - started)
print(statistics.median(times[1:]) * 1000)
"""


def test_profiles_delay_the_round_trip_with_or_without_netem(lab: netlab.Lab) -> None:
    """The round trip device -> broker grows by twice the profile's one-way delay (netem, or the
    user-space wire on a kernel without it), and is back to a LAN's when the profile is."""
    lab.reconfigure("port_restricted_cone", "public")
    echo = lab.popen(lab.broker_ns, [sys.executable, "-c", ECHO], stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"

    def round_trip_ms() -> float:
        done = lab.python(lab.device_ns, ["-c", ROUND_TRIPS, lab.broker_addrs[0]], timeout=30)
        assert done.returncode == 0, f"no echo from the broker's namespace: {done.stderr[-400:]}"
        return float(done.stdout)

    seen: list[tuple[str, float]] = []
    try:
        for name in ("lan", "3g", "edge", "lan"):
            lab.set_profile("device", name)
            seen.append((name, round_trip_ms()))
            extra = 2 * netlab.PROFILES[name].delay_ms
            assert extra <= seen[-1][1] <= extra + 80, f"{name}: median round trip {seen[-1][1]:.1f} ms"
    finally:
        echo.kill()
        echo.wait(10)
    in_router = lab.run(lab.inet_ns, ["ip", "netns", "pids", lab.inet_ns]).stdout.split()
    commands = []
    for pid in in_router:  # one of them is the listing's own short-lived process
        with contextlib.suppress(FileNotFoundError):
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes())
    assert not [c for c in commands if b"wire_nfqueue" in c], "a wire still runs after set_profile lan"
    print("median round trips:", ", ".join(f"{name} {ms:.1f} ms" for name, ms in seen))


def test_names_are_prefixed_and_everything_is_removed() -> None:
    with netlab.topology("cgnat", "symmetric", profile="3g", udp_timeout=60, with_turn=True) as lab:
        mine = [n for n in namespaces() if n.startswith(lab.prefix)]
        assert len(mine) == 8 and lab.turn_ns in mine
        assert lab.udp_timeouts("device") == (60, 60)
        assert "rate 1Mbit" in lab.qdisc("viewer")
        listen = (
            "import socket,sys; s=socket.create_server((sys.argv[1], 9000)); "
            "print('ready', flush=True); s.accept()[0].close()"
        )
        server = lab.popen(lab.broker_ns, [sys.executable, "-c", listen, lab.broker_addrs[1]],
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        connect = "import socket,sys; socket.create_connection((sys.argv[1], 9000), timeout=5).close()"
        assert lab.python(lab.turn_ns or "", ["-c", connect, lab.broker_addrs[1]]).returncode == 0
        sleeper = lab.popen(lab.device_ns, ["sleep", "60"])
    assert sleeper.poll() is not None
    assert not [n for n in namespaces() if n.startswith(lab.prefix)]


def test_down_removes_a_crashed_lab_by_prefix() -> None:
    lab = netlab.Lab(netlab.new_prefix(), netlab.NatType.SYMMETRIC, netlab.NatType.PUBLIC).build()
    lab.release_processes()
    assert lab.prefix in netlab.lab_prefixes()
    removed = netlab.down(lab.prefix)
    assert len(removed) == 6 and lab.prefix not in netlab.lab_prefixes()
    with pytest.raises(ValueError, match="not a lab prefix"):
        netlab.down("eth")


def test_the_cli_brings_a_lab_up_lists_it_and_takes_it_down() -> None:
    prefix = netlab.new_prefix()
    cli = [sys.executable, "-m", "hil.netlab"]
    try:
        up = subprocess.run([*cli, "up", "hairpin", "--prefix", prefix, "--profile", "edge"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert f"ip netns exec {prefix}dev" in up.stdout and "hairpin" in up.stdout
        listed = subprocess.run(
            [*cli, "list"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
        )
        assert f"{prefix}nat" in listed.stdout
    finally:
        subprocess.run(
            [*cli, "down", "--prefix", prefix], cwd=REPO, capture_output=True, timeout=60, check=False
        )
    assert prefix not in netlab.lab_prefixes()


UDP_PEER = """
import json, socket, sys
host, port, to_host, to_port, wait = sys.argv[1:6]
port, to_port, wait = int(port), int(to_port), float(wait)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((host, port))
print("ready", flush=True)
if to_port:
    s.sendto(b"hello", (to_host, to_port))
s.settimeout(wait)
try:
    data, source = s.recvfrom(100)
    print(json.dumps({"data": data.decode(), "from": source[0]}), flush=True)
except TimeoutError:
    print(json.dumps({"data": None}), flush=True)
"""
"""One UDP socket on [host]:port: sends one datagram to [to_host]:to_port (unless 0), then prints what
arrives within ``wait`` seconds."""


def udp_peer(lab: netlab.Lab, ns: str, here: tuple[str, int], to: tuple[str, int], wait: float) -> Any:
    """Start :data:`UDP_PEER` in ``ns``; returns its process once its socket is bound."""
    proc = lab.popen(
        ns,
        [sys.executable, "-c", UDP_PEER, here[0], str(here[1]), to[0], str(to[1]), str(wait)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def received(proc: Any) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=30)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_an_ipv6_carrier_gives_global_addresses_behind_stateful_firewalls(lab: netlab.Lab) -> None:
    lab.reconfigure("symmetric", "symmetric", ipv6=True)
    try:
        device, viewer = lab.host_addr6("device"), lab.host_addr6("viewer")
        assert device is not None and viewer is not None and device != viewer
        dev_port, view_port = 40001, 40002
        # The broker answers over IPv6, and sees the device's own address: no NAT66.
        echo = udp_peer(lab, lab.broker_ns, (lab.broker_addrs6[0], 3490), ("::", 0), 15)
        udp_peer(lab, lab.device_ns, (device, dev_port), (lab.broker_addrs6[0], 3490), 0.1).wait(30)
        assert received(echo) == {"data": "hello", "from": device}
        # A new inbound flow is dropped by the viewer's firewall (nothing arrives in 2 s; the
        # same datagram gets through below once the viewer has sent to the device) ...
        listener = udp_peer(lab, lab.viewer_ns, (viewer, view_port), ("::", 0), 2)
        udp_peer(lab, lab.device_ns, (device, dev_port), (viewer, view_port), 0.1).wait(30)
        assert received(listener) == {"data": None}, "the viewer's firewall let a new inbound flow in"
        # ... while the viewer's datagram back is a reply to the device's flow, so it gets in ...
        listener = udp_peer(lab, lab.device_ns, (device, dev_port), ("::", 0), 15)
        udp_peer(lab, lab.viewer_ns, (viewer, view_port), (device, dev_port), 0.1).wait(30)
        assert received(listener) == {"data": "hello", "from": viewer}
        # ... and now the device's gets through too, both ways open as two ICE checks open them.
        listener = udp_peer(lab, lab.viewer_ns, (viewer, view_port), ("::", 0), 15)
        udp_peer(lab, lab.device_ns, (device, dev_port), (viewer, view_port), 0.1).wait(30)
        assert received(listener) == {"data": "hello", "from": device}
        # IPv4 still goes through the side's NAT.
        assert classify(lab)["name"] == "symmetric"
    finally:
        lab.reconfigure("public", "public")
    assert lab.host_addr6("device") is None


def test_bad_requests_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="build it without ipv6"):
        netlab.Lab(netlab.new_prefix(), netlab.NatType.CGNAT, netlab.NatType.PUBLIC, ipv6=True).build()
    with pytest.raises(ValueError, match="give hairpin for both sides"):
        netlab.Lab(netlab.new_prefix(), netlab.NatType.HAIRPIN, netlab.NatType.PUBLIC).build()
    with pytest.raises(ValueError, match="use one of: public, full_cone"):
        netlab.NatType.parse("cone")
