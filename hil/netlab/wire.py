"""The user-space wire's core: what to pass on when, for kernels without ``sch_netem``.

A sans-I/O object. Packets come in with :meth:`Wire.receive` (an id, a direction, a size and
``now``); the wire answers at once with :class:`PacketDropped` (random loss, or the direction's
queue is full) or holds the packet, and :meth:`Wire.handle_timer` later hands out
:class:`PacketReleased` for each packet whose time has come. :meth:`Wire.get_timer` says when that
is. The I/O part (``hil/netlab/wire_nfqueue.py``) turns these into kernel verdicts.

Per direction (``up``: host to internet, ``down``: the other way), like ``tc netem``:

- ``rate``: a packet is serialised after the one before it, ``size * 8 / rate`` seconds, so a
  burst queues; with no rate it leaves at once;
- ``delay``: it is released ``delay_ms`` after its serialisation ends;
- ``queue_packets``: at most this many packets wait per direction (serialising or delayed, as
  netem's ``limit`` counts them); more are dropped (tail drop);
- ``loss_percent``: each packet is dropped with this probability, drawn from the ``random.Random``
  given (seed it for runs that repeat).

Release times within a direction never go down, so each direction is a FIFO and packets stay in
order, as on a real link. Memory is bounded by ``2 * queue_packets`` entries.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from hil.netlab.profiles import LinkProfile

Direction = Literal["up", "down"]
DIRECTIONS: tuple[Direction, Direction] = ("up", "down")


@dataclass(frozen=True, slots=True)
class WireEvent:
    """Base of the wire's events."""

    packet_id: int
    direction: Direction


@dataclass(frozen=True, slots=True)
class PacketReleased(WireEvent):
    """The packet's delay is over: pass it on."""

    held_s: float
    """How long the wire held it."""


@dataclass(frozen=True, slots=True)
class PacketDropped(WireEvent):
    """The packet is lost: ``reason`` is ``loss`` (the profile's random loss) or ``queue-full``."""

    reason: str


@dataclass(slots=True)
class WireCounters:
    """What the wire did, per reason (for the log line at exit and for tests)."""

    received: int = 0
    released: int = 0
    lost: int = 0
    queue_full: int = 0


@dataclass(slots=True)
class _Lane:
    rate_bps: float | None
    waiting: deque[tuple[float, float, int]] = field(default_factory=deque)
    """(release time, arrival time, packet id), release times non-decreasing."""
    free_at: float = 0.0
    """When the serialiser finishes the last packet taken."""


class Wire:
    """Delay, rate and loss of one access link, both directions (see the module docstring).

    ``profile`` gives the figures (``delay_ms``, ``up_kbit``, ``down_kbit``, ``loss_percent``,
    ``queue_packets``); ``rng`` draws the losses.
    """

    def __init__(self, profile: LinkProfile, rng: random.Random) -> None:
        if profile.queue_packets < 1:
            raise ValueError(f"profile {profile.name}: queue_packets must be at least 1")
        self.profile = profile
        self.delay_s = profile.delay_ms / 1000.0
        self.rng = rng
        self.counters = WireCounters()
        self._lanes: dict[Direction, _Lane] = {
            "up": _Lane(profile.up_kbit * 1000.0 if profile.up_kbit else None),
            "down": _Lane(profile.down_kbit * 1000.0 if profile.down_kbit else None),
        }

    def receive(self, packet_id: int, direction: Direction, size: int, now: float) -> list[WireEvent]:
        """Take packet ``packet_id`` of ``size`` bytes going ``direction`` at ``now``.

        Returns a :class:`PacketDropped` if it is lost, else nothing (it waits for
        :meth:`handle_timer`; with no delay and no rate that is ``now`` itself).

        Raises:
            ValueError: ``direction`` is not ``up`` or ``down`` (a caller's mistake).
        """
        lane = self._lanes.get(direction)
        if lane is None:
            raise ValueError(f"direction {direction!r}: use up or down")
        self.counters.received += 1
        if self.profile.loss_percent and self.rng.random() * 100.0 < self.profile.loss_percent:
            self.counters.lost += 1
            return [PacketDropped(packet_id, direction, "loss")]
        if len(lane.waiting) >= self.profile.queue_packets:
            self.counters.queue_full += 1
            return [PacketDropped(packet_id, direction, "queue-full")]
        start = max(now, lane.free_at)
        sent = start + (max(size, 0) * 8 / lane.rate_bps if lane.rate_bps else 0.0)
        lane.free_at = sent
        lane.waiting.append((sent + self.delay_s, now, packet_id))
        return []

    def get_timer(self) -> float | None:
        """When the next packet is due, or None with nothing held."""
        heads = [lane.waiting[0][0] for lane in self._lanes.values() if lane.waiting]
        return min(heads) if heads else None

    def handle_timer(self, now: float) -> list[WireEvent]:
        """Every packet due by ``now``, in due order (ties: up first), as :class:`PacketReleased`."""
        due: list[tuple[float, int, PacketReleased]] = []
        for order, direction in enumerate(DIRECTIONS):
            lane = self._lanes[direction]
            while lane.waiting and lane.waiting[0][0] <= now:
                release, arrived, packet_id = lane.waiting.popleft()
                due.append((release, order, PacketReleased(packet_id, direction, now - arrived)))
        due.sort(key=lambda item: (item[0], item[1]))
        self.counters.released += len(due)
        return [event for _, _, event in due]

    def held(self, direction: Direction) -> int:
        """How many packets wait in ``direction``."""
        return len(self._lanes[direction].waiting)
