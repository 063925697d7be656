"""Link profiles: what a side's uplink (its WAN link to the lab internet) delays, limits and drops.

Delay is applied once in each direction, so the round trip to the broker gains twice ``delay_ms``.
``up`` is the host-to-internet direction (the NAT's ``wan0``), ``down`` the other way (the
internet router's port towards the NAT).

With ``sch_netem`` a profile is one ``tc netem`` qdisc per direction (:meth:`LinkProfile.netem_args`).
Without it (``CONFIG_NET_SCH_NETEM`` unset) the lab splits it: the rate is a ``tbf`` qdisc
(:meth:`LinkProfile.tbf_args`), the loss ``iptables -m statistic`` drops, and the delay the
user-space wire of :mod:`hil.netlab.wire_nfqueue` (its core, :class:`hil.netlab.wire.Wire`, takes
a profile as its configuration). See docs/netlab.md, "Link profiles".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One access link. ``None`` rates mean unlimited."""

    name: str
    delay_ms: int = 0
    """One-way delay, milliseconds (each direction)."""
    up_kbit: int | None = None
    """Uplink rate, kbit/s."""
    down_kbit: int | None = None
    """Downlink rate, kbit/s."""
    loss_percent: float = 0.0
    """Random loss in each direction, percent."""
    queue_packets: int = 100
    """Queue limit per direction, packets: netem's ``limit``, and the most the wire holds (a
    deep queue at 40 kbit/s would hold minutes of data)."""

    def netem_args(self, direction: str) -> list[str]:
        """``tc qdisc replace ... root netem`` arguments for ``direction`` (``up``/``down``);
        empty for a profile without any impairment."""
        rate = self.up_kbit if direction == "up" else self.down_kbit
        if not (self.delay_ms or rate or self.loss_percent):
            return []
        args = ["netem", "limit", str(self.queue_packets)]
        if self.delay_ms:
            args += ["delay", f"{self.delay_ms}ms"]
        if self.loss_percent:
            args += ["loss", f"{self.loss_percent}%"]
        if rate:
            args += ["rate", f"{rate}kbit"]
        return args

    def tbf_args(self, direction: str) -> list[str]:
        """``tc qdisc replace ... root tbf`` arguments (rate only) for kernels without netem;
        empty without a rate."""
        rate = self.up_kbit if direction == "up" else self.down_kbit
        if not rate:
            return []
        burst = max(1600, rate * 1000 // 8 // 50)  # 20 ms worth of bytes, at least one packet
        return ["tbf", "rate", f"{rate}kbit", "burst", str(burst), "limit", str(self.queue_packets * 1500)]


PROFILES: dict[str, LinkProfile] = {
    "lan": LinkProfile("lan"),
    # ~150 ms RTT, 1 Mbit/s up, 2 Mbit/s down (UMTS/HSPA as seen by a modem in a cabinet).
    "3g": LinkProfile("3g", delay_ms=75, up_kbit=1000, down_kbit=2000),
    # ~300 ms RTT, 200 kbit/s.
    "edge": LinkProfile("edge", delay_ms=150, up_kbit=200, down_kbit=200),
    # ~600 ms RTT, 40 kbit/s up, 80 kbit/s down, 1% loss each way.
    "gprs": LinkProfile("gprs", delay_ms=300, up_kbit=40, down_kbit=80, loss_percent=1.0),
}


def profile(name: str) -> LinkProfile:
    """The profile called ``name``.

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    try:
        return PROFILES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown link profile {name!r}; use one of: {', '.join(PROFILES)}") from None
