"""Loss recovery of the data plane, unit by unit: RTT (RFC 9002 §5), loss by packet and time
threshold, adaptive thresholds after a spurious loss, PTO backoff, and the receiver's ranges."""

from __future__ import annotations

import pytest

from dvrlink.protocol.dataplane_recovery import (
    INITIAL_RTT,
    PACKET_THRESHOLD,
    AckTracker,
    Recovery,
    RttEstimator,
    SentPacket,
)


def sent(recovery: Recovery, numbers: range, when: float = 0.0) -> None:
    for number in numbers:
        recovery.on_sent(SentPacket(number, when, 1200, [], -1))


def test_rtt_follows_rfc9002() -> None:
    rtt = RttEstimator()
    assert rtt.smoothed == INITIAL_RTT and not rtt.has_sample
    rtt.update(0.100, ack_delay=0.010)
    assert (rtt.smoothed, rtt.variance, rtt.min_rtt) == (0.100, 0.050, 0.100), "first sample: no ack delay"
    rtt.update(0.140, ack_delay=0.020)  # adjusted 0.120
    assert rtt.smoothed == pytest.approx(0.875 * 0.100 + 0.125 * 0.120)
    assert rtt.variance == pytest.approx(0.75 * 0.050 + 0.25 * 0.020)
    rtt.update(0.105, ack_delay=0.020)  # 0.085 would be below min_rtt: the delay is not subtracted
    assert rtt.min_rtt == 0.100
    assert rtt.latest == 0.105


def test_an_rtt_sample_ends_when_the_ack_arrived_where_the_reader_knows() -> None:
    """An ACK that waited 60 ms in the socket while the sender was busy: the sample is the 20 ms
    the path took. An arrival outside [sent, now] (a wall-clock step under the kernel's stamp)
    is not trusted: the sample then ends at ``now``, as without a stamp."""
    recovery = Recovery(max_ack_delay=0.025)
    sent(recovery, range(3), when=1.0)
    recovery.on_ack(((0, 0),), 0, now=1.080, arrived=1.020)
    assert recovery.rtt.latest == pytest.approx(0.020)
    recovery.on_ack(((1, 1),), 0, now=1.100, arrived=0.5)
    assert recovery.rtt.latest == pytest.approx(0.100), "an arrival before the sending"
    recovery.on_ack(((2, 2),), 0, now=1.110, arrived=1.2)
    assert recovery.rtt.latest == pytest.approx(0.110), "an arrival after now"


def test_loss_by_packet_threshold_and_by_time() -> None:
    recovery = Recovery(max_ack_delay=0.025)
    sent(recovery, range(10), when=0.0)
    acked, lost = recovery.on_ack(((4, 4),), 0, now=0.05)
    assert [p.packet_number for p in acked] == [4]
    assert [p.packet_number for p in lost] == [0, 1], "packets 3 or more below the largest acked"
    assert recovery.loss_time is not None, "packets 2 and 3 should wait for the time threshold"
    lost_later, probe = recovery.on_timeout(recovery.loss_time)
    assert [p.packet_number for p in lost_later] == [2, 3] and not probe
    assert recovery.bytes_in_flight == 5 * 1200


def test_a_spurious_loss_raises_the_thresholds() -> None:
    recovery = Recovery(max_ack_delay=0.025)
    sent(recovery, range(20), when=0.0)
    _, lost = recovery.on_ack(((6, 10),), 0, now=0.01)
    assert 0 in {p.packet_number for p in lost}
    assert recovery.packet_threshold == PACKET_THRESHOLD
    recovery.on_ack(((6, 11), (0, 4)), 0, now=0.02)  # 0 arrives after all: it was reordered by 10
    assert recovery.spurious_losses >= 1
    assert recovery.packet_threshold == 11, recovery.packet_threshold
    assert recovery.time_threshold > 9 / 8


def test_pto_doubles_per_consecutive_timeout() -> None:
    recovery = Recovery(max_ack_delay=0.025)
    sent(recovery, range(1), when=1.0)
    first = recovery.timer()
    assert first == pytest.approx(1.0 + INITIAL_RTT + 4 * INITIAL_RTT / 2 + 0.025)
    assert recovery.on_timeout(first) == ([], True)
    second = recovery.timer()
    assert second is not None and second - 1.0 == pytest.approx(2 * (first - 1.0))


def test_ack_tracker_merges_ranges_and_asks_for_an_immediate_ack_on_a_gap() -> None:
    tracker = AckTracker(max_ack_delay=0.025)
    for number in (0, 1, 2, 5, 6, 4, 3, 9):
        tracker.on_packet(number, ack_eliciting=True, now=0.0)
    assert tracker.ranges == [[0, 6], [9, 9]], tracker.ranges
    assert tracker.due(0.0), "a packet after a gap asks for an ACK at once"
    ranges, delay = tracker.build(0.0, None)
    assert ranges == [(9, 9), (0, 6)] and delay == 0
    tracker.on_packet(10, ack_eliciting=True, now=1.0)
    assert not tracker.due(1.0) and tracker.timer() == pytest.approx(1.025)
    assert tracker.due(1.025)
