"""Loss recovery of the data plane: sent packets, ACK generation and processing, RTT, loss, PTO.

A simplified RFC 9002:
- Every packet that carries an ack-eliciting frame is recorded (``SentPacket``, a slotted object)
  in a dict keyed by packet number, which stays in sending order. Acknowledged packets are popped
  by walking the ACK's ranges from the oldest outstanding number, so an ACK costs the packets it
  newly acknowledges, not the whole flight.
- RTT: latest, smoothed, rttvar and min as RFC 9002 §5, the peer's ack delay subtracted (capped
  at ``max_ack_delay``) when that leaves at least min_rtt. A sample ends when the ACK reached
  this host where the reader knows (the kernel's receive stamp), not when it was processed.
- Loss: a packet is lost when one sent 3 or more numbers later is acknowledged, or it was sent
  more than 9/8 * max(smoothed, latest) RTT before the newest acknowledged one.
- PTO: ``smoothed + max(4 * rttvar, 1 ms) + max_ack_delay``, doubled per consecutive PTO; the
  connection then sends one or two probes. Initial RTT 333 ms until the first sample.

``AckTracker`` is the receiving half: the received numbers as ranges, and when to send an ACK:
after every 2nd ack-eliciting packet, at once for a packet out of order, or ``max_ack_delay``
after the first unacknowledged one. At high rates it acknowledges every 10th: when the packets
since the last ACK came faster than ``ACK_EVERY_HIGH`` per quarter RTT (the receiver's RTT, or
100 ms before it has one), the threshold goes to 10; when they come slower, back to 2. Ten
packets of 1200 bytes per quarter RTT is about 4 Mbit/s at 100 ms: below that every 2nd packet
is acknowledged, above it every 10th (the device's receive work is then one ACK per 10 packets).
"""

from __future__ import annotations

INITIAL_RTT = 0.333
PACKET_THRESHOLD = 3
MAX_PACKET_THRESHOLD = 20
MAX_TIME_THRESHOLD = 2.0
RECENTLY_LOST = 16
"""Packets declared lost that are remembered (for at most 2 smoothed RTTs), to notice when one is
acknowledged after all. Every ACK is checked against them, so the list stays short."""
TIME_THRESHOLD = 9 / 8
GRANULARITY = 0.001
ACK_EVERY = 2
ACK_EVERY_HIGH = 10
MAX_ACK_RANGES = 32
"""Ranges the receiver remembers."""
MAX_REPORTED_RANGES = 8
"""Ranges an ACK frame reports, the highest first. A receiver that sends only ACKs never learns
that its ACKs arrived (ACK-only packets are not acknowledged), so without a limit every ACK would
repeat every old gap; a gap matters to the sender only until it has declared the packets below it
lost, one ACK after it first saw it. Eight ranges survive several lost ACKs."""
DEFAULT_RECEIVER_RTT = 0.100


Retransmittable = tuple[int, int, int, bool] | bytes
"""What a sent packet must re-send if lost: a stream range (stream id, start, end, FIN) or an
encoded control frame."""


class SentPacket:
    """One ack-eliciting packet in flight: what to re-send if it is lost."""

    __slots__ = ("ack_largest", "frames", "packet_number", "size", "time_sent")

    def __init__(
        self, packet_number: int, time_sent: float, size: int, frames: list[Retransmittable], ack_largest: int
    ) -> None:
        self.packet_number = packet_number
        self.time_sent = time_sent
        self.size = size
        self.frames = frames
        """Retransmittable items, read by the connection (stream ranges, control frames)."""
        self.ack_largest = ack_largest
        """The largest number the ACK frame in this packet reported, or -1."""


class RttEstimator:
    """RFC 9002 §5."""

    __slots__ = ("has_sample", "latest", "latest_adjusted", "min_rtt", "smoothed", "variance")

    def __init__(self) -> None:
        self.has_sample = False
        self.latest = INITIAL_RTT
        self.latest_adjusted = INITIAL_RTT
        """The latest sample less the peer's ack delay (as the smoothed RTT takes it): the
        time the path and its queues took, without the receiver's deliberate wait."""
        self.smoothed = INITIAL_RTT
        self.variance = INITIAL_RTT / 2
        self.min_rtt = INITIAL_RTT

    def update(self, sample: float, ack_delay: float) -> None:
        """Take one sample (seconds); ``ack_delay`` already capped by the caller."""
        self.latest = sample
        if not self.has_sample:
            self.has_sample = True
            self.min_rtt = sample
            self.smoothed = sample
            self.variance = sample / 2
            self.latest_adjusted = sample
            return
        self.min_rtt = min(self.min_rtt, sample)
        adjusted = sample - ack_delay if sample - ack_delay >= self.min_rtt else sample
        # never below the minimum: a delay reported to the microsecond, a sample a hair short
        self.latest_adjusted = max(self.min_rtt, sample - ack_delay)
        self.variance = 0.75 * self.variance + 0.25 * abs(self.smoothed - adjusted)
        self.smoothed = 0.875 * self.smoothed + 0.125 * adjusted


class Recovery:
    """The sender's half: packets in flight, ACK processing, loss detection and the PTO timer."""

    __slots__ = (
        "bytes_in_flight",
        "largest_acked",
        "last_ack_eliciting_time",
        "loss_time",
        "lost_packets",
        "max_ack_delay",
        "packet_threshold",
        "pto_count",
        "recently_lost",
        "rtt",
        "sent",
        "spurious_losses",
        "time_threshold",
    )

    def __init__(self, max_ack_delay: float) -> None:
        self.sent: dict[int, SentPacket] = {}
        self.bytes_in_flight = 0
        self.largest_acked = -1
        self.last_ack_eliciting_time = 0.0
        self.loss_time: float | None = None
        self.pto_count = 0
        self.max_ack_delay = max_ack_delay
        self.rtt = RttEstimator()
        self.lost_packets = 0
        self.packet_threshold = PACKET_THRESHOLD
        """Grows when a packet declared lost is acknowledged after all (reordering, not loss),
        to the reordering distance seen plus one, as RFC 9002 §6.1.1 allows."""
        self.recently_lost: dict[int, tuple[int, float]] = {}
        """Packet number -> (the largest acknowledged, the time) when it was declared lost."""
        self.spurious_losses = 0
        self.time_threshold = TIME_THRESHOLD
        """Also grows on a spurious loss (by 1/8 RTT, up to 2 RTT)."""

    def on_sent(self, packet: SentPacket) -> None:
        self.sent[packet.packet_number] = packet
        self.bytes_in_flight += packet.size
        self.last_ack_eliciting_time = packet.time_sent

    def on_ack(
        self, ranges: tuple[tuple[int, int], ...], ack_delay_us: int, now: float, arrived: float | None = None
    ) -> tuple[list[SentPacket], list[SentPacket]]:
        """Process an ACK frame's ranges (highest first): (newly acknowledged, lost) packets.
        The RTT sample ends at ``arrived``, when the ACK reached this host, where known and
        between the packet's sending and ``now`` (a wall-clock step can put a kernel stamp
        outside), and at ``now`` otherwise.

        Numbers that were never sent, or are already acknowledged, are ignored.
        """
        if self.recently_lost:
            self._check_spurious(ranges, now)
        sent = self.sent
        acked: list[SentPacket] = []
        if not sent:
            return acked, []
        oldest = next(iter(sent))
        pop = sent.pop
        for low, high in reversed(ranges):
            if high < oldest:
                continue
            for number in range(max(low, oldest), high + 1):
                packet = pop(number, None)
                if packet is not None:
                    acked.append(packet)
        if not acked:
            return acked, []
        largest = ranges[0][1]
        newest = acked[-1]
        if largest > self.largest_acked:
            self.largest_acked = largest
            if newest.packet_number == largest:
                delay = min(ack_delay_us / 1e6, self.max_ack_delay)
                sent_at = newest.time_sent
                end = arrived if arrived is not None and sent_at <= arrived <= now else now
                self.rtt.update(end - sent_at, delay)
        in_flight = self.bytes_in_flight
        for packet in acked:
            in_flight -= packet.size
        self.bytes_in_flight = in_flight
        self.pto_count = 0
        return acked, self.detect_lost(now)

    def detect_lost(self, now: float) -> list[SentPacket]:
        """Packets below the largest acknowledged that count as lost now (removed from flight);
        sets ``loss_time`` for the first that will."""
        self.loss_time = None
        lost: list[SentPacket] = []
        largest = self.largest_acked
        rtt = self.rtt
        threshold = self.packet_threshold
        delay = max(self.time_threshold * max(rtt.smoothed, rtt.latest), GRANULARITY)
        for number, packet in self.sent.items():
            if number > largest:
                break
            when = packet.time_sent + delay
            if largest - number >= threshold or when <= now:
                lost.append(packet)
            elif self.loss_time is None or when < self.loss_time:
                self.loss_time = when
        recently = self.recently_lost
        for packet in lost:
            del self.sent[packet.packet_number]
            self.bytes_in_flight -= packet.size
            recently[packet.packet_number] = (largest, now)
        while len(recently) > RECENTLY_LOST:
            del recently[next(iter(recently))]
        self.lost_packets += len(lost)
        return lost

    def _check_spurious(self, ranges: tuple[tuple[int, int], ...], now: float) -> None:
        recently = self.recently_lost
        horizon = now - 2 * self.rtt.smoothed
        while recently:
            oldest = next(iter(recently))
            if recently[oldest][1] >= horizon:
                break
            del recently[oldest]
        lowest = ranges[-1][0]
        found = [n for n in recently if n >= lowest and any(low <= n <= high for low, high in ranges)]
        for number in found:
            distance = recently.pop(number)[0] - number
            self.spurious_losses += 1
            self.time_threshold = min(self.time_threshold + 0.125, MAX_TIME_THRESHOLD)
            if distance + 1 > self.packet_threshold:
                self.packet_threshold = min(distance + 1, MAX_PACKET_THRESHOLD)

    def pto_interval(self) -> float:
        rtt = self.rtt
        return rtt.smoothed + max(4 * rtt.variance, GRANULARITY) + self.max_ack_delay

    def timer(self) -> float | None:
        """When ``on_timeout`` should run: the loss time, else the PTO, else never."""
        if self.loss_time is not None:
            return self.loss_time
        if not self.sent:
            return None
        return self.last_ack_eliciting_time + self.pto_interval() * (1 << min(self.pto_count, 16))

    def on_timeout(self, now: float) -> tuple[list[SentPacket], bool]:
        """(lost packets, whether to send probes). Call when ``timer()`` has passed."""
        if self.loss_time is not None and now >= self.loss_time:
            return self.detect_lost(now), False
        deadline = self.timer()
        if deadline is not None and now >= deadline:
            self.pto_count += 1
            return [], True
        return [], False

    def discard_all(self) -> list[SentPacket]:
        """Forget every packet in flight (on close)."""
        packets = list(self.sent.values())
        self.sent.clear()
        self.bytes_in_flight = 0
        self.loss_time = None
        return packets


class AckTracker:
    """The receiver's half: received packet numbers as ranges, and when an ACK is due."""

    __slots__ = (
        "deadline",
        "immediate",
        "largest_time",
        "last_ack_time",
        "max_ack_delay",
        "pending",
        "ranges",
        "requested",
        "threshold",
    )

    def __init__(self, max_ack_delay: float) -> None:
        self.ranges: list[list[int]] = []
        """Inclusive [low, high], ascending, disjoint and not adjacent."""
        self.largest_time = 0.0
        self.pending = 0
        self.threshold = ACK_EVERY
        self.immediate = False
        self.deadline: float | None = None
        self.last_ack_time = 0.0
        self.max_ack_delay = max_ack_delay
        self.requested: int | None = None
        """The ACK threshold the peer asked for (``ACK_FREQUENCY``), or None: the rate rule."""

    def on_packet(self, number: int, ack_eliciting: bool, now: float) -> None:
        """Record an authenticated packet (the replay window has already refused duplicates)."""
        ranges = self.ranges
        in_order = True
        if ranges and ranges[-1][1] + 1 == number:
            ranges[-1][1] = number
            self.largest_time = now
        elif not ranges or number > ranges[-1][1]:
            if ranges:
                in_order = False
            ranges.append([number, number])
            self.largest_time = now
            if len(ranges) > MAX_ACK_RANGES:
                del ranges[0]
        else:
            in_order = False
            self._insert(number)
        if not ack_eliciting:
            return
        self.pending += 1
        if not in_order:
            self.immediate = True
        elif self.pending == 1:
            self.deadline = now + self.max_ack_delay

    def _insert(self, number: int) -> None:
        ranges = self.ranges
        for index in range(len(ranges) - 1, -1, -1):
            low, high = ranges[index]
            if number > high:
                if number == high + 1:
                    ranges[index][1] = number
                    following = ranges[index + 1]
                    if following[0] == number + 1:
                        ranges[index][1] = following[1]
                        del ranges[index + 1]
                else:
                    following = ranges[index + 1]
                    if following[0] == number + 1:
                        following[0] = number
                    else:
                        ranges.insert(index + 1, [number, number])
                return
            if number >= low:
                return
        if ranges[0][0] == number + 1:
            ranges[0][0] = number
        else:
            ranges.insert(0, [number, number])
        if len(ranges) > MAX_ACK_RANGES:
            del ranges[0]

    def due(self, now: float) -> bool:
        """Whether an ACK should go out now."""
        if self.pending == 0:
            return False
        return (
            self.immediate
            or self.pending >= self.threshold
            or (self.deadline is not None and now >= self.deadline)
        )

    def timer(self) -> float | None:
        return self.deadline if self.pending else None

    def build(self, now: float, receiver_rtt: float | None) -> tuple[list[tuple[int, int]], int]:
        """The ranges to report (highest first) and the ack delay in µs; resets the pending
        count. Call only when ``ranges`` is not empty."""
        pending = self.pending
        if self.requested is not None:
            self.threshold = self.requested
        elif pending >= 2:
            quarter = (receiver_rtt or DEFAULT_RECEIVER_RTT) / 4
            elapsed = now - self.last_ack_time
            fast = elapsed * ACK_EVERY_HIGH < quarter * pending
            self.threshold = ACK_EVERY_HIGH if fast else ACK_EVERY
        self.pending = 0
        self.immediate = False
        self.deadline = None
        self.last_ack_time = now
        reported = [(low, high) for low, high in reversed(self.ranges[-MAX_REPORTED_RANGES:])]
        return reported, max(0, int((now - self.largest_time) * 1e6))

    def forget_below(self, number: int) -> None:
        """The peer has seen an ACK that reported up to ``number``: stop reporting ranges that end
        below it (keep the newest range in any case)."""
        ranges = self.ranges
        drop = 0
        while drop < len(ranges) - 1 and ranges[drop][1] < number:
            drop += 1
        if drop:
            del ranges[:drop]
