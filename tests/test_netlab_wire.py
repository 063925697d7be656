"""The NAT lab's user-space wire (delay without ``sch_netem``): its sans-I/O core on made-up
time, and the nfnetlink_queue messages it reads and writes. The wire on a real link is tested in
tests/test_netlab.py (round trips through the lab)."""

from __future__ import annotations

import random
import socket
import struct

import pytest

from hil.netlab.profiles import LinkProfile, profile
from hil.netlab.wire import PacketDropped, PacketReleased, Wire
from hil.netlab.wire_nfqueue import (
    NF_ACCEPT,
    NF_DROP,
    NFNL_SUBSYS_QUEUE,
    NFQNL_MSG_PACKET,
    QueuedPacket,
    direction_of,
    parse,
    verdict_message,
)


def wire(link: LinkProfile, seed: int = 1) -> Wire:
    return Wire(link, random.Random(seed))


def test_each_packet_is_held_for_the_delay_and_order_is_kept() -> None:
    w = wire(LinkProfile("t", delay_ms=300))
    assert w.get_timer() is None
    assert w.receive(1, "up", 100, now=10.0) == []
    assert w.receive(2, "down", 100, now=10.1) == []
    assert w.receive(3, "up", 100, now=10.2) == []
    assert w.get_timer() == pytest.approx(10.3)
    assert w.handle_timer(10.29) == []
    (released,) = w.handle_timer(10.3)
    assert isinstance(released, PacketReleased) and (released.packet_id, released.direction) == (1, "up")
    assert released.held_s == pytest.approx(0.3)
    later = w.handle_timer(11.0)
    assert [(e.packet_id, e.direction) for e in later] == [(2, "down"), (3, "up")]
    assert w.get_timer() is None and w.counters.released == 3


def test_rate_serialises_a_burst_and_the_delay_comes_on_top() -> None:
    w = wire(LinkProfile("t", delay_ms=100, up_kbit=80, down_kbit=None))
    for packet_id in range(3):  # 1000 bytes at 80 kbit/s: 0.1 s each
        assert w.receive(packet_id, "up", 1000, now=0.0) == []
    assert w.receive(9, "down", 1000, now=0.0) == []  # no down rate: only the delay
    times = []
    while (due := w.get_timer()) is not None:
        times += [(e.packet_id, round(due, 6)) for e in w.handle_timer(due)]
    assert times == [(9, 0.1), (0, 0.2), (1, 0.3), (2, 0.4)]


def test_an_idle_link_does_not_save_up_credit() -> None:
    w = wire(LinkProfile("t", up_kbit=8))  # 1000 bytes take 1 s
    w.receive(1, "up", 1000, now=0.0)
    w.receive(2, "up", 1000, now=100.0)
    assert w.get_timer() == pytest.approx(1.0)
    w.handle_timer(1.0)
    assert w.get_timer() == pytest.approx(101.0)


def test_a_full_queue_drops_at_the_tail_per_direction() -> None:
    w = wire(LinkProfile("t", delay_ms=50, queue_packets=2))
    assert w.receive(1, "up", 60, 0.0) == [] and w.receive(2, "up", 60, 0.0) == []
    assert w.receive(3, "up", 60, 0.0) == [PacketDropped(3, "up", "queue-full")]
    assert w.receive(4, "down", 60, 0.0) == []  # the other direction has its own queue
    assert w.held("up") == 2 and w.held("down") == 1
    w.handle_timer(0.05)
    assert w.receive(5, "up", 60, 0.05) == []
    assert w.counters.queue_full == 1


def test_loss_follows_the_profile_and_the_seed() -> None:
    gprs = profile("gprs")

    def losses(seed: int) -> list[bool]:
        w = wire(gprs, seed)
        lost = []
        for i in range(20_000):  # one packet a second: the queue never fills
            lost.append(w.receive(i, "up", 60, i * 1.0) == [PacketDropped(i, "up", "loss")])
            w.handle_timer(i * 1.0 + 0.5)
        assert w.counters.lost == sum(lost) and w.counters.queue_full == 0
        return lost

    lost = losses(7)
    assert 130 <= sum(lost) <= 270  # 1 % of 20 000, within 5 standard deviations
    assert losses(7) == lost and losses(8) != lost


def test_memory_is_bounded_by_the_queue_whatever_arrives() -> None:
    w = wire(LinkProfile("t", delay_ms=1000, up_kbit=1, queue_packets=100))
    for i in range(10_000):
        w.receive(i, "up", 65535, now=0.0)
    assert w.held("up") == 100 and w.counters.queue_full == 9_900


def test_misuse_raises() -> None:
    w = wire(LinkProfile("t"))
    with pytest.raises(ValueError, match="use up or down"):
        w.receive(1, "sideways", 10, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue_packets must be at least 1"):
        wire(LinkProfile("t", queue_packets=0))


def queued_message(packet_id: int, hook: int, payload: bytes, cap_len: int | None = None) -> bytes:
    def attr(kind: int, data: bytes) -> bytes:
        raw = struct.pack("=HH", 4 + len(data), kind) + data
        return raw + b"\0" * (-len(raw) % 4)

    body = struct.pack("=BB", socket.AF_INET, 0) + struct.pack(">H", 1)
    body += attr(1, struct.pack(">IHB", packet_id, 0x0800, hook) + b"\0")
    body += attr(10, payload)
    if cap_len is not None:
        body += attr(13, struct.pack(">I", cap_len))
    kind = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_queued_packets_are_read_with_their_ip_length() -> None:
    ipv4 = bytes([0x45, 0]) + struct.pack(">H", 1400) + bytes(60)
    ipv6 = bytes([0x60, 0, 0, 0]) + struct.pack(">H", 1000) + bytes(58)
    data = queued_message(5, 0, ipv4) + queued_message(6, 2, ipv6) + queued_message(7, 3, b"?", 900)
    assert list(parse(data)) == [QueuedPacket(5, 0, 1400), QueuedPacket(6, 2, 1040), QueuedPacket(7, 3, 900)]
    assert [direction_of(hook) for hook in (0, 2, 3)] == ["up", "down", "down"]


def test_errors_and_acks_are_read_as_numbers() -> None:
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + bytes(16)
    busy = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -16) + bytes(16)
    assert list(parse(ack + busy)) == [0, -16]


def test_odd_bytes_never_raise() -> None:
    rng = random.Random(3)
    good = queued_message(1, 0, bytes([0x45, 0, 0, 84]) + bytes(60))
    for _ in range(3000):
        raw = bytearray(good if rng.random() < 0.5 else rng.randbytes(rng.randrange(0, 120)))
        for _ in range(rng.randrange(0, 6)):
            if raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        for item in parse(bytes(raw[: rng.randrange(len(raw) + 1)])):
            assert item is None or isinstance(item, int | QueuedPacket)


def test_verdicts_name_the_packet_and_the_queue() -> None:
    for verdict in (NF_ACCEPT, NF_DROP):
        message = verdict_message(3, 0xDEADBEEF, verdict)
        length, kind, flags, _, _ = struct.unpack_from("=IHHII", message)
        assert length == len(message) == 32 and kind == (3 << 8) | 1 and flags == 1
        assert struct.unpack_from(">H", message, 18)[0] == 3
        assert struct.unpack_from("=HH", message, 20) == (12, 2)
        assert struct.unpack_from(">II", message, 24) == (verdict, 0xDEADBEEF)
