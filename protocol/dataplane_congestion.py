"""Congestion control and pacing of the data plane: LEDBAT-like (RFC 6817), delay-based, so a
cellular uplink's queue does not fill and the presence keepalives that share it are not starved.

- ``cwnd`` in bytes: initial 10 packets, minimum 2.
- ``base_delay``: the minimum RTT over the last 2 minutes, kept as 12 minimum filters of 10 s.
  ``queuing_delay = latest_rtt - base_delay`` (both ends are ours; no one-way time stamps).
- Per ACK: ``cwnd += GAIN * off_target * bytes_acked * max_datagram / cwnd`` with
  ``off_target = (target - queuing_delay) / target``; never above ``2 * flight + 10`` packets, so
  an application-limited sender does not grow a window it does not use.
- Start-up: the window doubles per RTT (slow start, as NewReno) until the queuing delay reaches
  half the target or a packet is lost; LEDBAT's one packet per RTT alone would take minutes to
  reach the rate of a LAN path. This is an addition to the letter of RFC 6817 (LEDBAT++ has the
  same start-up for the same reason).
- Loss: ``cwnd = max(cwnd / 2, minimum)`` once per RTT (RFC 9002 §7.3.2's recovery period: a loss
  of a packet sent before the last reduction does not reduce again).

The pacer is a token bucket: a burst of up to 10 packets, then ``1.25 * cwnd / smoothed_rtt``
bytes per second (RFC 9002 §7.7; the spec's ``smoothed_rtt / cwnd * 1.25`` per byte read as
this, since pacing slower than cwnd per RTT would idle the window), capped by an optional rate
limit the driver sets. At rates above 10 packets per millisecond the burst is one millisecond's
worth and the pacer wakes at most once per millisecond: a Python driver cannot wake every 10 µs,
and a batch per wake-up is what UDP GSO sends in one call.
"""

from __future__ import annotations

GAIN = 1.0
INITIAL_WINDOW_PACKETS = 10
MINIMUM_WINDOW_PACKETS = 2
BASE_DELAY_BUCKET_S = 10.0
BASE_DELAY_BUCKETS = 12
PACING_GAIN = 1.25
BURST_PACKETS = 10
WAKE_GRANULARITY_S = 0.001
BATCH_WAIT_S = 0.004
"""A sender the pacer holds back waits up to this long, or for ``BURST_PACKETS``, to release
several packets per wake-up instead of one (``Pacer.next_release``)."""
TOLERANCE = 0.01
"""Bytes of float rounding the pacer forgives, so a release time it named does release."""


class LedbatController:
    """The congestion window, from RTT samples, acknowledgements and losses."""

    __slots__ = (
        "base_history",
        "cwnd",
        "max_datagram",
        "minimum",
        "queuing_delay",
        "recovery_start",
        "slow_start",
        "target",
    )

    def __init__(self, max_datagram: int, target_delay: float) -> None:
        self.max_datagram = max_datagram
        self.target = target_delay
        self.cwnd = float(INITIAL_WINDOW_PACKETS * max_datagram)
        self.minimum = float(MINIMUM_WINDOW_PACKETS * max_datagram)
        self.base_history: list[list[float]] = []
        """[bucket start, minimum RTT in it], oldest first."""
        self.recovery_start = -1.0
        self.slow_start = True
        self.queuing_delay = 0.0

    def set_max_datagram(self, size: int) -> None:
        """The datagram size changed (path MTU discovery): the window's floor and its growth
        per acknowledgement follow it; the window itself stays."""
        self.max_datagram = size
        self.minimum = float(MINIMUM_WINDOW_PACKETS * size)
        self.cwnd = max(self.cwnd, self.minimum)

    def base_delay(self) -> float:
        """The minimum RTT over the kept buckets, or 0 before any sample."""
        return min((bucket[1] for bucket in self.base_history), default=0.0)

    def on_rtt_sample(self, rtt: float, now: float) -> None:
        history = self.base_history
        if history and now - history[-1][0] < BASE_DELAY_BUCKET_S:
            history[-1][1] = min(history[-1][1], rtt)
        else:
            history.append([now, rtt])
            if len(history) > BASE_DELAY_BUCKETS:
                del history[0]
        base = history[0][1]
        for bucket in history:
            base = min(base, bucket[1])
        self.queuing_delay = rtt - base

    def on_acked(self, bytes_acked: int, flight_before: int, newest_sent: float) -> None:
        """Grow or shrink the window for ``bytes_acked`` newly acknowledged bytes, of which the
        newest was sent at ``newest_sent``; ``flight_before``: bytes in flight before the ACK."""
        if newest_sent <= self.recovery_start:
            return
        target = self.target
        queuing = self.queuing_delay
        cwnd = self.cwnd
        if self.slow_start:
            if queuing >= target / 2:
                self.slow_start = False
            else:
                cwnd += bytes_acked
        if not self.slow_start:
            off_target = (target - queuing) / target
            cwnd += GAIN * off_target * bytes_acked * self.max_datagram / cwnd
        ceiling = 2 * flight_before + INITIAL_WINDOW_PACKETS * self.max_datagram
        if cwnd > self.cwnd and cwnd > ceiling:
            cwnd = max(self.cwnd, float(ceiling))
        self.cwnd = max(cwnd, self.minimum)

    def on_lost(self, newest_lost_sent: float, now: float) -> None:
        """A packet sent at ``newest_lost_sent`` was declared lost: halve once per RTT."""
        if newest_lost_sent <= self.recovery_start:
            return
        self.recovery_start = now
        self.slow_start = False
        self.cwnd = max(self.cwnd / 2, self.minimum)


class Pacer:
    """A token bucket in bytes: a burst of ``BURST_PACKETS`` (or of ``WAKE_GRANULARITY_S`` at the
    pacing rate, if that is more), then the pacing rate."""

    __slots__ = ("burst", "last", "minimum_burst", "rate", "rate_cap", "tokens")

    def __init__(self, max_datagram: int, now: float) -> None:
        self.minimum_burst = float(BURST_PACKETS * max_datagram)
        self.burst = self.minimum_burst
        self.tokens = self.burst
        self.last = now
        self.rate = 0.0
        """Bytes per second; 0: not yet known (no limit until the first RTT sample)."""
        self.rate_cap: float | None = None

    def set_max_datagram(self, size: int) -> None:
        """The datagram size changed: the smallest burst is ``BURST_PACKETS`` of the new size."""
        self.minimum_burst = float(BURST_PACKETS * size)
        self.burst = max(self.burst, self.minimum_burst)

    def update_rate(self, cwnd: float, smoothed_rtt: float) -> None:
        rate = PACING_GAIN * cwnd / max(smoothed_rtt, 1e-6)
        cap = self.rate_cap
        if cap is not None and rate > cap:
            rate = cap
        self.rate = rate
        burst = rate * WAKE_GRANULARITY_S
        self.burst = burst if burst > self.minimum_burst else self.minimum_burst

    def can_send(self, size: int, now: float) -> bool:
        """Whether a packet of ``size`` bytes may go at ``now`` (refills the bucket)."""
        rate = self.rate
        if rate <= 0.0:
            return True
        tokens = self.tokens + (now - self.last) * rate
        self.last = now
        burst = self.burst
        self.tokens = tokens if tokens < burst else burst
        return self.tokens >= size - TOLERANCE

    def packets_allowed(self, size: int, now: float) -> int:
        """How many packets of ``size`` bytes may go at ``now``, one after the other: what
        ``can_send`` then ``on_sent`` per packet would let through (refills the bucket)."""
        if not self.can_send(size, now):
            return 0
        if self.rate <= 0.0:
            return 1 << 30
        return int((self.tokens - size + TOLERANCE) // size) + 1

    def on_sent(self, size: int) -> None:
        if self.rate > 0.0:
            self.tokens -= size

    def next_release(self, size: int) -> float:
        """When a packet of ``size`` bytes may go (``last`` if it may already).

        The pacer wakes its sender for a batch, not for each packet: when ``BURST_PACKETS`` have
        accrued, or what accrues in ``BATCH_WAIT_S``, and at most once per
        ``WAKE_GRANULARITY_S``. Each wake-up costs a recorder's CPU about as much as the
        packets it sends (docs/protocol.md), and a batch suits UDP GSO. At 13 Mbit/s a wake-up
        then sends about five packets rather than one; at the rates of a cellular uplink, where
        one packet takes longer than ``BATCH_WAIT_S`` to accrue, the pacer waits for one."""
        tokens = self.tokens
        rate = self.rate
        if size - tokens <= 0 or rate <= 0.0:
            return self.last
        wanted = max(size, min(BURST_PACKETS * size, rate * BATCH_WAIT_S, self.burst))
        wait = (wanted - tokens) / rate
        return self.last + (wait if wait > WAKE_GRANULARITY_S else WAKE_GRANULARITY_S)
