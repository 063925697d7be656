"""Congestion control and pacing of the data plane: on a simulated bottleneck the queuing delay
settles near the 50 ms target, the queue does not overflow after the start, a small periodic
datagram sharing the bottleneck keeps a bounded delay; loss halves once per RTT; the pacer."""

from __future__ import annotations

import random
import statistics

import pytest
from support.dataplane_link import Link, Simulation, key_material, pair, take_stream_data

from dvrlink.protocol.dataplane import StreamData
from dvrlink.protocol.dataplane_congestion import BURST_PACKETS, PACING_GAIN, LedbatController, Pacer

RATE = 250_000.0
"""Bottleneck: 2 Mbit/s, a 3G-class uplink."""
QUEUE = 100_000
"""Bottleneck queue: 400 ms at that rate."""
BASE_RTT = 0.100
TARGET = 0.050
START_UP_S = 10.0


def test_bottleneck_queue_settles_near_target_and_a_periodic_datagram_is_not_starved() -> None:
    rng = random.Random(11)
    viewer, device = pair(key_material(rng))
    uplink = Link(rng, delay=BASE_RTT / 2, rate=RATE, queue_bytes=QUEUE)
    sim = Simulation(viewer, device, uplink, Link(rng, delay=BASE_RTT / 2))
    stream = viewer.open_stream()
    viewer.send(stream, rng.randbytes(30_000_000))
    probe_delays: list[tuple[float, float]] = []
    next_probe = [1.0]

    def step(s: Simulation) -> None:
        for event in device.events():
            if isinstance(event, StreamData):
                device.consumed(event.stream_id, len(event.data), s.now)
        if s.now >= next_probe[0]:
            # a 40-byte keepalive of another flow through the same bottleneck, once a second
            before = len(uplink.queue_delays)
            uplink.send(b"\x00" * 40, s.now)
            probe_delays.append(
                (s.now, uplink.queue_delays[-1][1] if len(uplink.queue_delays) > before else -1.0)
            )
            next_probe[0] += 1.0

    sim.on_step = step
    sim.run_until(lambda: sim.now > 60.0, max_steps=2_000_000)
    settled = [delay for when, delay in uplink.queue_delays if when > START_UP_S]
    median = statistics.median(settled)
    p95 = sorted(settled)[int(0.95 * len(settled))]
    assert 0.6 * TARGET <= median <= 1.4 * TARGET, f"median queuing delay {median * 1e3:.1f} ms, target 50 ms"
    late_overflows = [t for t in uplink.overflows if t > START_UP_S]
    assert len(late_overflows) <= 3, (
        f"{len(late_overflows)} datagrams overflowed the queue after start-up (first at "
        f"{late_overflows[:3]}), {len(uplink.overflows)} in all"
    )
    probes = [delay for when, delay in probe_delays if when > START_UP_S]
    assert probes and min(probes) >= 0.0, f"a keepalive was dropped at the bottleneck: {probe_delays}"
    worst = max(probes)
    assert worst <= 2 * TARGET, (
        f"keepalive queuing delay up to {worst * 1e3:.0f} ms (plus the {BASE_RTT * 1e3:.0f} ms base RTT); "
        f"median {statistics.median(probes) * 1e3:.0f} ms, target {TARGET * 1e3:.0f} ms"
    )
    goodput = (viewer.stats.bytes_sent) / sim.now
    assert goodput >= 0.7 * RATE, f"the sender used {goodput:.0f} B/s of a {RATE:.0f} B/s bottleneck"
    print(
        f"queuing delay median {median * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms; keepalive worst "
        f"{worst * 1e3:.1f} ms; overflows {len(uplink.overflows)} (after start-up {len(late_overflows)}); "
        f"rate {goodput:.0f} B/s"
    )


def test_loss_halves_the_window_once_per_rtt() -> None:
    controller = LedbatController(1200, TARGET)
    controller.cwnd = 48_000.0
    controller.on_lost(newest_lost_sent=1.00, now=1.10)
    assert controller.cwnd == 24_000.0
    controller.on_lost(newest_lost_sent=1.05, now=1.12)  # sent before the reduction: same event
    assert controller.cwnd == 24_000.0, "a second loss from the same flight halved the window again"
    controller.on_lost(newest_lost_sent=1.20, now=1.30)
    assert controller.cwnd == 12_000.0
    for now in (2.0, 3.0, 4.0, 5.0, 6.0, 7.0):
        controller.on_lost(newest_lost_sent=now, now=now + 0.1)
    assert controller.cwnd == 2400.0, f"the window fell below two packets: {controller.cwnd}"


def test_window_shrinks_above_target_and_grows_below_it() -> None:
    controller = LedbatController(1200, TARGET)
    controller.slow_start = False
    controller.on_rtt_sample(0.100, now=0.0)
    start = controller.cwnd
    controller.on_acked(12_000, flight_before=12_000, newest_sent=0.5)
    assert controller.cwnd > start, "no growth with no queuing delay"
    controller.on_rtt_sample(0.200, now=1.0)  # 100 ms queued: twice the target
    grown = controller.cwnd
    controller.on_acked(12_000, flight_before=12_000, newest_sent=1.5)
    assert controller.cwnd < grown, f"the window grew to {controller.cwnd} with 100 ms of queuing delay"


def test_pacer_releases_nothing_early_and_says_when() -> None:
    pacer = Pacer(1200, now=0.0)
    pacer.update_rate(cwnd=12_000, smoothed_rtt=0.1)  # 150,000 B/s
    sent = 0
    while pacer.can_send(1200, 0.0) and sent < 100:
        pacer.on_sent(1200)
        sent += 1
    assert sent == BURST_PACKETS, f"a burst of {sent} packets, expected {BURST_PACKETS}"
    release = pacer.next_release(1200)
    assert abs(release - 1200 / 150_000) < 1e-9, release
    assert not pacer.can_send(1200, release - 1e-4), "the pacer released a packet before its time"
    assert pacer.can_send(1200, release), "the pacer did not release at the time it named"


@pytest.mark.parametrize(
    ("rate", "at_least", "at_most"), [(1_700_000.0, 4, 6), (5_000.0, 1, 1), (150_000.0, 1, 1)]
)
def test_a_blocked_sender_is_woken_for_a_batch_not_per_packet(
    rate: float, at_least: int, at_most: int
) -> None:
    """Once the burst is spent, the release the pacer names lets several packets go at 13.6
    Mbit/s (4 ms of accrual), one at cellular rates (where one packet takes longer than that)."""
    pacer = Pacer(1452, now=0.0)
    pacer.update_rate(cwnd=rate / PACING_GAIN, smoothed_rtt=1.0)
    while pacer.can_send(1452, 0.0):
        pacer.on_sent(1452)
    release = pacer.next_release(1452)
    assert release > 0.0, "the pacer named no wait with its burst spent"
    allowed = pacer.packets_allowed(1452, release)
    assert at_least <= allowed <= at_most, f"{allowed} packets at {release * 1e3:.2f} ms, rate {rate:.0f} B/s"


def test_connection_timer_includes_the_pacer_release() -> None:
    rng = random.Random(12)
    viewer, device = pair(key_material(rng))
    sim = Simulation(viewer, device, Link(rng, delay=0.05), Link(rng, delay=0.05))
    stream = viewer.open_stream()
    viewer.send(stream, rng.randbytes(3_000_000))
    checked = [0]
    named: list[float | None] = [None]
    sent_before = [0]

    def step(s: Simulation) -> None:
        for event in device.events():
            if isinstance(event, StreamData):
                device.consumed(event.stream_id, len(event.data), s.now)
        # the simulation flushed both cores at s.now just before this hook
        if named[0] is not None and named[0] == s.now and viewer.stats.packets_sent > sent_before[0]:
            checked[0] += 1
        timer = viewer.next_timer()
        if viewer.send_buffered(stream) and timer is not None and timer > s.now:
            assert viewer.datagrams_to_send(s.now) == [], "data went out before the timer it named"
        named[0] = timer
        sent_before[0] = viewer.stats.packets_sent

    sim.on_step = step
    sim.run_until(lambda: sim.now > 3.0, max_steps=200_000)
    assert checked[0] > 10, f"only {checked[0]} paced releases seen"


def test_the_receivers_ack_delay_does_not_count_as_queuing() -> None:
    """A slow stream (one packet every 200 ms) is acknowledged only at the receiver's ACK
    deadline, 25 ms after each packet; after a burst that measured the path without that delay,
    LEDBAT must still see no queue: its samples are the RTT less the ack delay the ACK
    reports (without that it saw about 25 ms of 'queuing', half its target)."""
    rng = random.Random(5)
    viewer, device = pair(key_material(rng))
    sim = Simulation(viewer, device, Link(rng, delay=0.020), Link(rng, delay=0.020))
    stream = viewer.open_stream()
    viewer.send(stream, rng.randbytes(200_000))  # a burst: ACKs every 2nd packet, no delay
    received: dict[int, bytearray] = {}

    def taken() -> int:
        take_stream_data(device, received, set(), sim.now)
        return len(received.get(stream, b""))

    sim.run_until(lambda: taken() >= 200_000)
    delays: list[float] = []
    for _ in range(20):
        until = sim.now + 0.200
        viewer.send(stream, rng.randbytes(500))
        sim.run_until(lambda until=until: sim.now >= until)
        delays.append(viewer.stats.queuing_delay)
    assert taken() == 200_000 + 20 * 500
    assert max(delays[5:]) < 0.005, f"queuing delay seen on an empty path: {[round(d, 4) for d in delays]}"
