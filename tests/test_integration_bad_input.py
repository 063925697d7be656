"""Bad input against the real broker process: random, truncated, fuzzed (scapy) and oversize datagrams.

Each bad datagram is followed by a STUN Binding probe on the same socket. The broker handles a
socket's datagrams in order, so every reply that arrives before the probe's answer is a reply to
the bad datagram, and its size can be checked without waiting on a clock.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from scapy.contrib.stun import STUN
from scapy.fields import ByteField, IntField, StrLenField
from scapy.packet import Packet, fuzz, raw

from dvrlink.protocol.presence_wire import MessageType
from hil.loopback import Broker, Daemon, make_daemon, start_broker, stop_all, wait_for

pytestmark = [pytest.mark.integration]


class PresenceFrame(Packet):
    """Scapy description of a sealed presence header, for fuzzing."""

    name = "dvrlink presence"
    fields_desc = [
        ByteField("type", MessageType.KEEPALIVE),
        ByteField("version", 1),
        IntField("session_id", 0),
        IntField("counter", 1),
        StrLenField("rest", b"", length_from=lambda p: 16),
    ]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Broker, Daemon]]:
    started: list[Daemon | Broker] = []
    state = tmp_path / "broker"
    config = tmp_path / "broker.toml"
    config.write_text(  # no STUN rate limit: every bad datagram is followed by a STUN probe
        f'state_dir = "{state}"\nudp_host = "127.0.0.1"\nudp_port = 0\nhttps_host = "127.0.0.1"\n'
        "https_port = 0\npresence_tcp_port = 0\nturn_udp_port = 0\nturn_tcp_port = 0\n"
        "turn_allow_loopback_peers = true\nstun_rate_per_s = 0\n"
    )
    try:
        broker = start_broker(state, config=config)
        started.append(broker)
        daemon = make_daemon(tmp_path, "DL-BAD-0001", broker, keepalive_interval=1.0, reply_timeout=0.3)
        daemon.start()
        started.append(daemon)
        wait_for("daemon online", daemon.online, 30)
        yield broker, daemon
    finally:
        stop_all(list(reversed(started)))


def probe(tid: bytes) -> bytes:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=tid)
    return bytes(message)


def replies_to(sock: socket.socket, port: int, datagram: bytes, tid: bytes) -> list[bytes]:
    """Send ``datagram`` then a probe; return what came back before the probe's answer."""
    sock.sendto(datagram, ("127.0.0.1", port))
    sock.sendto(probe(tid), ("127.0.0.1", port))
    replies = []
    while True:
        data = sock.recv(70000)  # the socket timeout bounds the wait
        if data[:2] == b"\x01\x01" and data[8:20] == tid:
            return replies
        replies.append(data)


def crafted_datagrams(count: int) -> Iterator[bytes]:
    rnd = random.Random(20261121)
    for i in range(count):
        kind = i % 6
        if kind == 0:
            yield rnd.randbytes(rnd.randint(1, 1500))
        elif kind == 1:
            yield raw(fuzz(PresenceFrame()))
        elif kind == 2:
            yield raw(fuzz(STUN()))
        elif kind == 3:  # truncated presence frames of every type
            t = rnd.choice(list(MessageType))
            yield bytes([t, 1]) + rnd.randbytes(rnd.randint(0, 60))
        elif kind == 4:  # a valid-looking HELLO with a wrong version, or a short one
            yield bytes([MessageType.HELLO, rnd.choice([0, 2, 255])]) + bytes(rnd.randint(0, 60))
        else:  # oversize
            yield bytes([rnd.choice(list(MessageType)), 1]) + rnd.randbytes(rnd.choice([1300, 9000, 65000]))


def test_bad_datagrams_get_no_larger_reply_and_the_broker_keeps_serving(rig: tuple[Broker, Daemon]) -> None:
    broker, daemon = rig
    before = daemon.status() or {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(5.0)
        answered = 0
        for n, datagram in enumerate(crafted_datagrams(1200)):
            for reply in replies_to(sock, broker.udp_port, datagram, n.to_bytes(12, "big")):
                answered += 1
                valid_stun = datagram[:2] == b"\x00\x01"  # a Binding, RFC 3489 ones (no cookie) too
                if not valid_stun:
                    assert len(reply) <= len(datagram), (datagram.hex(), reply.hex())
    assert broker.proc.poll() is None, "the broker died"
    # The good device kept its registration and its keepalives throughout.
    after = daemon.status() or {}
    assert after.get("state") == "online"
    assert after.get("registered_at") == before.get("registered_at")
    wait_for(
        "a keepalive after the flood",
        lambda: (daemon.status() or {}).get("last_keepalive", 0) > after.get("last_keepalive", 0),
        10,
    )
    assert broker.health()["online"] == 1
    print(f"1200 bad datagrams, {answered} answered (none larger than its request)")


@pytest.mark.skipif(
    shutil.which("turnutils_stunclient") is None, reason="needs coturn's turnutils_stunclient"
)
def test_standard_stun_client_gets_its_mapped_address(rig: tuple[Broker, Daemon]) -> None:
    broker, _ = rig
    out = subprocess.run(
        ["turnutils_stunclient", "-p", str(broker.udp_port), "-L", "127.0.0.7", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "UDP reflexive addr: 127.0.0.7:" in out, out
    port = int(out.split("UDP reflexive addr: 127.0.0.7:")[1].split()[0])
    assert 1024 <= port <= 65535


def test_stun_binding_reports_the_exact_source_port(rig: tuple[Broker, Daemon]) -> None:
    broker, _ = rig
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.9", 0))
        sock.settimeout(5.0)
        sock.sendto(probe(b"x" * 12), ("127.0.0.1", broker.udp_port))
        reply = stun.parse_message(sock.recv(2048))
        assert reply.attributes["XOR-MAPPED-ADDRESS"] == ("127.0.0.9", sock.getsockname()[1])
