"""bench.data_plane's arithmetic and openssl parsing, and bench.udp_batching's GSO/GRO plumbing
against this kernel over loopback (no timing is judged)."""

from __future__ import annotations

import socket

import pytest

from bench import data_plane, udp_batching
from bench.common import BenchError

OPENSSL_3_OUTPUT = """\
You have chosen to measure elapsed time instead of user CPU time.
Doing ChaCha20-Poly1305 for 1s on 1024 size blocks: 2118551 ChaCha20-Poly1305's in 1.01s
version: 3.0.19
The 'numbers' are in 1000s of bytes per second processed.
type           1024 bytes
ChaCha20-Poly1305  2172039.17k
"""
"""openssl speed -elapsed -seconds 1 -evp chacha20-poly1305 -bytes 1024, OpenSSL 3.0.19 (x86-64)."""


def test_openssl_speed_output_gives_blocks_and_rate() -> None:
    assert data_plane.parse_openssl_speed(OPENSSL_3_OUTPUT) == (2118551, 2172039170.0)


def test_openssl_speed_output_without_a_figure_says_so() -> None:
    with pytest.raises(BenchError, match=r"no ChaCha20-Poly1305 figure .*unknown cipher"):
        data_plane.parse_openssl_speed("speed: unknown cipher chacha20-poly1305\n")


def test_the_a7_estimate_follows_the_issue_formula() -> None:
    # Issue 14's trial ran at 1/270 of the cipher: on a core that seals 100 MB/s, 4 Mbit/s
    # (500,000 B/s) would take 500,000 / (100e6 / 270) = 1.35 cores.
    assert data_plane.a7_cpu_share(1 / 270, 100e6) == pytest.approx(1.35)
    assert data_plane.a7_cpu_share(1 / 25, 69.6e6) == pytest.approx(500_000 / (69.6e6 / 25))
    assert 60e6 < data_plane.A7_CHACHA20_POLY1305_BYTES_S < 80e6, "the published per-byte costs moved"


def test_ratios_print_as_one_in_n() -> None:
    assert data_plane.one_in(1 / 270) == "1/270"
    assert data_plane.one_in(0.0) == "0"


def test_a_gso_send_arrives_as_its_segments() -> None:
    support = udp_batching.probe()
    if not support.gso:
        pytest.skip(f"this kernel has no UDP GSO: {support.gso_note}")
    receiver, sender = udp_batching.pair()
    try:
        sender.sendmsg([bytes(range(256)) * 10], udp_batching.gso_cmsg(1000))  # 2560 B: 1000+1000+560
        receiver.settimeout(10)
        sizes = [len(receiver.recv(65536)) for _ in range(3)]
    finally:
        receiver.close()
        sender.close()
    assert sizes == [1000, 1000, 560], sizes


def test_a_gro_socket_reads_a_gso_send_coalesced_and_counts_its_datagrams() -> None:
    support = udp_batching.probe()
    if not (support.gso and support.gro):
        pytest.skip(f"this kernel lacks GSO or GRO: {support.gso_note}; {support.gro_note}")
    _cost, per_read = udp_batching.timed_receive(udp_batching.CHUNK, gro=True, gso_batch=44)
    assert per_read == 44.0, f"{per_read} datagrams per coalesced read, expected 44"
    _cost, per_read = udp_batching.timed_receive(udp_batching.CHUNK, gro=False, gso_batch=44)
    assert per_read == 1.0, f"a socket without UDP_GRO read {per_read} datagrams per read"


def test_timed_send_notices_datagrams_that_never_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    def send_to_nowhere(sender: socket.socket, n: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as elsewhere:
            elsewhere.bind(("127.0.0.1", 0))
            for _ in range(n):
                sender.sendto(bytes(udp_batching.DATAGRAM), elsewhere.getsockname())

    monkeypatch.setattr(udp_batching, "CHUNK", 8)
    with pytest.raises(OSError, match=r"^0 of 9600 bytes sent over loopback arrived"):
        udp_batching.timed_send(8, send_to_nowhere)
