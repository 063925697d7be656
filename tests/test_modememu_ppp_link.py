"""PPP calls through the emulator's PTY, end to end, with a client on the host side.

pppd cannot run here: it needs the kernel's PPP driver (``/dev/ppp``), which this machine lacks,
and exits with status 4 before it opens the port. The client is :mod:`hil.modememu.ppp_client`,
written apart from the server (its own FCS, stuffing and a scripted sequence; scapy's packets).

Without root the call's IP side is a datagram socket pair (the test plays the network). With root
it is a TUN device in a network namespace the test creates: the kernel there answers the ping
and a UDP echo server there answers the datagram, through PPP both ways; and, with the NAT lab's
tools, the TUN sits in the lab's carrier namespace and a datagram reaches the broker's namespace
through the carrier-grade NAT and is answered.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.inet import ICMP, IP, UDP

from hil import netlab
from hil.loopback import wait_for
from hil.matrix.netns import socket_in
from hil.modememu import ModemEmulator, SimCard
from hil.modememu.ppp_client import PppClient, PppClientError
from hil.modememu.ppp_link import PppDataPath, SocketPairCarrier, TunCarrier
from hil.modememu.ppp_server import (
    Authenticated,
    AuthenticationFailed,
    AuthMethod,
    LinkTerminated,
    NetworkOpened,
    PppServerConfig,
)
from hil.modememu.wire import RawPort
from hil.netlab.carrier import Carrier

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
APN = "internet.emu"
SIM = SimCard(apn_credentials=((APN, "recorder", "s3cret"),))
CONFIG = PppServerConfig(
    auth=(AuthMethod.CHAP_MD5, AuthMethod.PAP), dns=("192.0.2.53", "192.0.2.54"), restart_s=0.5
)


def udp(src: str, dst: str, payload: bytes) -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=40000, dport=7) / payload)


@pytest.fixture
def sockets() -> Iterator[SocketPairCarrier]:
    carrier = SocketPairCarrier()
    yield carrier
    carrier.close()


def start(path: PppDataPath, sim: SimCard = SIM) -> ModemEmulator:
    emu = ModemEmulator("simcom-sim800", sim, data_path=path)
    path.attach(emu)
    emu.start()
    return emu


def dial(port: RawPort, user: str = "recorder", password: str = "s3cret", **kw: object) -> PppClient:
    port.command("ATE0")
    client = PppClient(port, user, password, **kw)  # type: ignore[arg-type]
    client.dial("*99***1#", apn=APN)
    return client


def test_a_ppp_call_carries_ip_both_ways_and_ends_with_no_carrier(sockets: SocketPairCarrier) -> None:
    path = PppDataPath(CONFIG, sockets, credentials="sim")
    emu = start(path)
    try:
        with RawPort(emu.path) as port:
            client = dial(port)
            got = client.negotiate(WAIT)
            assert (got.address, got.dns, got.auth) == (
                "100.64.192.2",
                ("192.0.2.53", "192.0.2.54"),
                "chap-md5",
            )
            assert path.wait_for(Authenticated, WAIT) == Authenticated(AuthMethod.CHAP_MD5, "recorder")
            assert path.wait_for(NetworkOpened, WAIT).peer_address == got.address

            network = sockets.network
            assert network is not None
            network.settimeout(WAIT)
            out = udp(got.address, "198.51.100.7", b"+++ATH0\r and \x7e\x7d\x11 inside a frame")
            client.send_ip(out)
            assert network.recv(65535) == out
            back = udp("198.51.100.7", got.address, b"\x7e answer \x7d")
            network.send(back)
            assert client.receive_ip(WAIT) == back

            reply = client.echo(b"are you there")
            assert reply[0] == 10 and reply[8:] == b"are you there"

            client.terminate(WAIT)
            assert b"NO CARRIER" in client.wait_text(b"NO CARRIER", WAIT)
            path.wait_for_hang_up(1, WAIT)
            ended = path.wait_for(LinkTerminated, WAIT)
            assert ended.by_peer, ended
            port.buffer.clear()
            assert port.command("AT", 3.0).endswith(b"OK\r\n")  # command mode again
            counters = path.servers[-1].counters
            assert (counters.ip_in, counters.ip_out) == (1, 1), counters
            assert path.servers[-1].deframer.counters.bad_fcs == 0
    finally:
        emu.stop()
    assert path.errors == []


def test_a_wrong_password_from_the_sims_apn_settings_ends_the_call(sockets: SocketPairCarrier) -> None:
    path = PppDataPath(CONFIG, sockets, credentials="sim")
    emu = start(path)
    try:
        with RawPort(emu.path) as port:
            client = dial(port, password="guess", refuse=("chap-md5",))
            with pytest.raises(PppClientError, match="PAP refused"):
                client.negotiate(WAIT)
            failed = path.wait_for(AuthenticationFailed, WAIT)
            assert failed.method is AuthMethod.PAP and failed.username == "recorder"
            client.wait_text(b"NO CARRIER", WAIT)
            path.wait_for_hang_up(1, WAIT)
    finally:
        emu.stop()


def test_any_login_is_accepted_for_an_apn_the_sim_lists_no_credentials_for(
    sockets: SocketPairCarrier,
) -> None:
    path = PppDataPath(CONFIG, sockets, credentials="sim")
    emu = start(path, SimCard())
    try:
        with RawPort(emu.path) as port:
            client = dial(port, user="", password="", refuse=("chap-md5", "pap"))
            got = client.negotiate(WAIT)
            assert got.auth is None and got.address == "100.64.192.2"
    finally:
        emu.stop()


def test_the_network_dropping_the_call_gives_no_carrier_and_a_new_call_a_new_address(
    sockets: SocketPairCarrier,
) -> None:
    path = PppDataPath(CONFIG, sockets, credentials="sim")
    emu = start(path)
    try:
        with RawPort(emu.path) as port:
            first = dial(port).negotiate(WAIT)
            emu.drop_carrier()
            client = PppClient(port)
            client.wait_text(b"NO CARRIER", WAIT)
            path.wait_for_hang_up(1, WAIT)
            port.buffer.clear()
            second_client = dial(port)
            second = second_client.negotiate(WAIT)
            assert (first.address, second.address) == ("100.64.192.2", "100.64.192.6")
            assert len(path.servers) == 2
            dropped = path.servers[0]  # Down from Opened: Starting, no timer, nothing more to send
            assert dropped.lcp.state.value == "Starting" and dropped.get_timer() is None
            assert dropped.data_to_send() == b""
    finally:
        emu.stop()
    path.wait_for_hang_up(2, WAIT)


# ------------------------------------------------------------------------------- a real namespace

SKIP = None
if os.geteuid() != 0:
    SKIP = "needs root: a TUN device and a network namespace"
elif not os.path.exists("/dev/net/tun") or shutil.which("ip") is None:
    SKIP = "needs /dev/net/tun and iproute2"

ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7000))
s.settimeout(30)
print("ready", flush=True)
data, peer = s.recvfrom(2048)
s.sendto(b"echo:" + data, peer)
"""


@pytest.fixture
def carrier_ns() -> Iterator[str]:
    if SKIP is not None:
        pytest.skip(SKIP)
    prefix = netlab.new_prefix()
    ns = f"{prefix}carrier"
    netlab.lab.add_namespace(ns, prefix)
    try:
        yield ns
    finally:
        netlab.down(prefix)


def test_a_ppp_call_reaches_a_carrier_namespace_through_a_tun_device(carrier_ns: str) -> None:
    server = subprocess.Popen(
        ["ip", "netns", "exec", carrier_ns, sys.executable, "-c", ECHO_SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    path = PppDataPath(CONFIG, TunCarrier(carrier_ns), credentials="sim")
    emu = start(path)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with RawPort(emu.path) as port:
            client = dial(port)
            got = client.negotiate(WAIT)
            links = subprocess.run(["ip", "-n", carrier_ns, "-o", "addr", "show", "dev", "ppp0"],
                                   capture_output=True, text=True, check=True).stdout  # fmt: skip
            assert "inet 100.64.192.1 peer 100.64.192.2/32" in links, links

            ping = bytes(IP(src=got.address, dst="100.64.192.1") / ICMP(id=0x4242, seq=1) / b"ping+++")
            client.send_ip(ping)
            reply = IP(wait_for_ip(client, lambda p: ICMP in p))
            assert (
                reply[ICMP].type == 0
                and reply[ICMP].id == 0x4242
                and bytes(reply[ICMP].payload) == b"ping+++"
            )

            client.send_ip(
                bytes(IP(src=got.address, dst="100.64.192.1") / UDP(sport=5555, dport=7000) / b"hi")
            )
            answer = IP(wait_for_ip(client, lambda p: UDP in p))
            assert bytes(answer[UDP].payload) == b"echo:hi" and answer[UDP].dport == 5555

            client.terminate(WAIT)
            client.wait_text(b"NO CARRIER", WAIT)
            path.wait_for_hang_up(1, WAIT)
            wait_for("ppp0 gone from the carrier namespace", lambda: "ppp0" not in ns_links(carrier_ns), WAIT)
    finally:
        emu.stop()
        server.kill()
        server.wait(WAIT)
    assert path.errors == []


def wait_for_ip(client: PppClient, want: Callable[[IP], bool], timeout: float = WAIT) -> bytes:
    """The first IPv4 packet from the modem that ``want`` accepts (the kernel may send others)."""
    deadline = time.monotonic() + timeout
    seen = []
    while (remaining := deadline - time.monotonic()) > 0:
        packet = client.receive_ip(remaining)
        if want(IP(packet)):
            return packet
        seen.append(IP(packet).summary())
    raise TimeoutError(f"no matching IP packet within {timeout} s; saw {seen}")


def ns_links(ns: str) -> str:
    return subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=False).stdout


LAB_SKIP = netlab.unavailable_reason()


@pytest.mark.skipif(LAB_SKIP is not None, reason=LAB_SKIP or "")
def test_a_ppp_subscriber_reaches_the_broker_behind_the_labs_carrier_grade_nat() -> None:
    """The NAT lab's carrier: PPP -> TUN in <p>carrier -> CGN -> internet -> the broker's namespace,
    which sees the carrier's public address, and its answer comes back over PPP."""
    with netlab.topology("cgnat", "public") as lab:
        carrier = Carrier.for_lab(lab).build()
        path = PppDataPath(CONFIG, TunCarrier(carrier.ns), credentials="sim")
        emu = start(path)
        try:
            with socket_in(lab.broker_ns, socket.SOCK_DGRAM) as broker, RawPort(emu.path) as port:
                broker.bind((lab.broker_addrs[0], 9999))
                broker.settimeout(WAIT)
                client = dial(port)
                got = client.negotiate(WAIT)
                out = IP(src=got.address, dst=lab.broker_addrs[0]) / UDP(sport=5060, dport=9999) / b"register"
                client.send_ip(bytes(out))
                data, source = broker.recvfrom(2048)
                assert data == b"register" and source[0] == carrier.public_addr, source
                broker.sendto(b"welcome", source)
                answer = IP(wait_for_ip(client, lambda p: UDP in p))
                assert bytes(answer[UDP].payload) == b"welcome"
                assert (answer.src, answer.dst, answer[UDP].dport) == (lab.broker_addrs[0], got.address, 5060)
                emu.drop_carrier()
                client.wait_text(b"NO CARRIER", WAIT)
                path.wait_for_hang_up(1, WAIT)
        finally:
            emu.stop()
            carrier.close()
    assert path.errors == []
