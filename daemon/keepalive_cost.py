"""What keeping a device reachable costs on the wire, per day, over UDP and over TCP/TLS; the
presence transport ``auto`` picks the cheaper.

Bytes of one keepalive round trip, IPv4 (what a metered SIM is billed for, headers included):

- UDP: KEEPALIVE 26 B + ACK 35 B of presence, plus 28 B of IPv4 and UDP headers each way:
  **117 B** (a test asserts it on the wire).
- TCP/TLS: each presence message gets a 2-byte length and goes in one TLS 1.3 record (5 B
  header, 1 B content type, 16 B tag): 50 B up and 59 B down; each segment carries 52 B of IPv4
  and TCP headers (timestamps on); the broker's answer comes at once and carries the ACK of the
  keepalive, but the device's ACK of the answer goes alone (52 B): **265 B**. The NAT lab
  measures it with conntrack's byte counters.

Carriers keep idle TCP mappings far longer (minutes to an hour) than UDP ones (often 30-180 s), so
TCP can win even at more than twice the bytes per keepalive.
"""

from __future__ import annotations

from dataclasses import dataclass

UDP_KEEPALIVE_BYTES = 117
TCP_KEEPALIVE_BYTES = 265
SECONDS_PER_DAY = 86400.0
DAYS_PER_MONTH = 30.0
MARGIN = 0.8
"""TCP is chosen only when it costs at most this fraction of UDP (no flapping over small gains)."""


def daily_bytes(interval_s: float, bytes_per_keepalive: int) -> float:
    """Bytes a day for one keepalive round trip every ``interval_s`` seconds."""
    return SECONDS_PER_DAY / interval_s * bytes_per_keepalive


@dataclass(frozen=True, slots=True)
class Costs:
    """Daily wire bytes of presence over each transport, and the cheaper one."""

    udp_interval_s: float
    tcp_interval_s: float
    udp_per_day: float
    tcp_per_day: float

    @property
    def cheaper(self) -> str:
        """``tcp`` if it costs at most ``MARGIN`` of UDP, else ``udp``."""
        return "tcp" if self.tcp_per_day <= MARGIN * self.udp_per_day else "udp"

    def describe(self) -> str:
        """One line for the log: both costs a day and a month."""
        return (
            f"UDP every {self.udp_interval_s:g} s costs {self.udp_per_day / 1e3:.1f} kB/day "
            f"({self.udp_per_day * DAYS_PER_MONTH / 1e6:.2f} MB/month), TCP every {self.tcp_interval_s:g} s "
            f"{self.tcp_per_day / 1e3:.1f} kB/day ({self.tcp_per_day * DAYS_PER_MONTH / 1e6:.2f} MB/month)"
        )


def compare(udp_interval_s: float, tcp_interval_s: float) -> Costs:
    """The daily costs of keeping alive at these intervals."""
    return Costs(
        udp_interval_s,
        tcp_interval_s,
        daily_bytes(udp_interval_s, UDP_KEEPALIVE_BYTES),
        daily_bytes(tcp_interval_s, TCP_KEEPALIVE_BYTES),
    )
