"""A simulated path for two data plane cores: seeded loss, duplication, reordering and delay, an
optional bottleneck (rate and queue), and a simulated clock. No real time anywhere."""

from __future__ import annotations

import heapq
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from dvrlink.protocol.dataplane import DataplaneConfig, DataplaneConnection, KeyMaterial, StreamData


@dataclass
class Link:
    """One direction of the path."""

    rng: random.Random
    delay: float = 0.010
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    """Share of datagrams held back by up to ``reorder_by`` seconds more."""
    reorder_by: float = 0.005
    rate: float | None = None
    """Bottleneck rate in bytes/s (None: no bottleneck)."""
    queue_bytes: int = 0
    """Bottleneck queue; datagrams that do not fit are dropped."""
    drop: Callable[[bytes], bool] | None = None
    """Also drop what this returns True for (tests that aim at one packet)."""
    in_flight: list[tuple[float, int, bytes]] = field(default_factory=list)
    busy_until: float = 0.0
    serial: int = 0
    sent: int = 0
    overflows: list[float] = field(default_factory=list)
    """Times at which a datagram found the bottleneck's queue full."""
    max_queue: int = 0
    queue_delays: list[tuple[float, float]] = field(default_factory=list)
    """(time, queuing delay at the bottleneck) per datagram."""

    def send(self, datagram: bytes, now: float) -> None:
        self.sent += 1
        if self.drop is not None and self.drop(datagram):
            return
        if self.loss and self.rng.random() < self.loss:
            return
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        depart = now
        if self.rate is not None:
            start = max(now, self.busy_until)
            queued = (start - now) * self.rate
            if queued + len(datagram) > self.queue_bytes:
                self.overflows.append(now)
                return
            self.max_queue = max(self.max_queue, int(queued + len(datagram)))
            self.queue_delays.append((now, start - now))
            depart = start + len(datagram) / self.rate
            self.busy_until = depart
        for _ in range(copies):
            arrival = depart + self.delay
            if self.reorder and self.rng.random() < self.reorder:
                arrival += self.rng.random() * self.reorder_by
            self.serial += 1
            heapq.heappush(self.in_flight, (arrival, self.serial, datagram))

    def next_arrival(self) -> float | None:
        return self.in_flight[0][0] if self.in_flight else None

    def arrivals(self, now: float) -> list[bytes]:
        out = []
        while self.in_flight and self.in_flight[0][0] <= now:
            out.append(heapq.heappop(self.in_flight)[2])
        return out


def take_stream_data(
    conn: DataplaneConnection, received: dict[int, bytearray], ended: set[int], now: float
) -> None:
    """Take ``conn``'s events: each stream's bytes appended to ``received`` and consumed at
    ``now`` (so its window moves on), the streams that ended added to ``ended``."""
    for event in conn.events():
        if isinstance(event, StreamData):
            received.setdefault(event.stream_id, bytearray()).extend(event.data)
            conn.consumed(event.stream_id, len(event.data), now)
            if event.ended:
                ended.add(event.stream_id)


def run_until_ended(sim: Simulation, receiver: DataplaneConnection, stream: int, max_steps: int) -> bytes:
    """Run ``sim`` until ``stream`` ended at ``receiver`` (taking and consuming its data as it
    arrives); returns the stream's bytes."""
    received: dict[int, bytearray] = {}
    ended: set[int] = set()

    def done() -> bool:
        take_stream_data(receiver, received, ended, sim.now)
        return stream in ended

    sim.run_until(done, max_steps=max_steps)
    return bytes(received.get(stream, b""))


def key_material(rng: random.Random | None = None) -> KeyMaterial:
    """Fresh key material (``os.urandom``), or from a seeded RNG for a repeatable run."""
    draw = rng.randbytes if rng is not None else os.urandom
    return KeyMaterial(draw(32), draw(32), draw(4), draw(4))


def pair(
    keys: KeyMaterial | None = None, now: float = 0.0, **config: object
) -> tuple[DataplaneConnection, DataplaneConnection]:
    """(viewer, device) cores with the same key material."""
    keys = keys or key_material()
    viewer = DataplaneConnection(DataplaneConfig("viewer", **config), keys, now)  # type: ignore[arg-type]
    device = DataplaneConnection(DataplaneConfig("device", **config), keys, now)  # type: ignore[arg-type]
    return viewer, device


@dataclass
class Simulation:
    """Two cores and two links, stepped on a simulated clock."""

    a: DataplaneConnection
    b: DataplaneConnection
    ab: Link
    ba: Link
    now: float = 0.0
    steps: int = 0
    on_step: Callable[[Simulation], None] | None = None
    sent_a: list[bytes] = field(default_factory=list)
    """Every datagram ``a`` sent (when ``record`` is set)."""
    record: bool = False

    def flush(self) -> None:
        for datagram in self.a.datagrams_to_send(self.now):
            if self.record:
                self.sent_a.append(datagram)
            self.ab.send(datagram, self.now)
        for datagram in self.b.datagrams_to_send(self.now):
            self.ba.send(datagram, self.now)

    def step(self) -> bool:
        """Advance to the next thing that happens; False when nothing ever will."""
        self.flush()
        if self.on_step is not None:
            self.on_step(self)
        times = [
            t
            for t in (
                self.a.next_timer(),
                self.b.next_timer(),
                self.ab.next_arrival(),
                self.ba.next_arrival(),
            )
            if t is not None
        ]
        if not times:
            return False
        self.now = max(self.now, min(times))
        self.steps += 1
        for datagram in self.ab.arrivals(self.now):
            self.b.receive_datagram(datagram, self.now)
        for datagram in self.ba.arrivals(self.now):
            self.a.receive_datagram(datagram, self.now)
        for conn in (self.a, self.b):
            timer = conn.next_timer()
            if timer is not None and timer <= self.now:
                conn.handle_timer(self.now)
        return True

    def run_until(
        self, done: Callable[[], bool], max_steps: int = 2_000_000, max_time: float = 3600.0
    ) -> None:
        """Step until ``done()``; fails the test with what it saw if the bounds run out first."""
        start = self.steps
        while not done():
            if self.steps - start > max_steps or self.now > max_time:
                raise AssertionError(
                    f"simulation did not finish: {self.steps - start} steps, t={self.now:.3f} s; "
                    f"a: {self.a.stats}; b: {self.b.stats}"
                )
            if not self.step():
                raise AssertionError(
                    f"simulation stalled at t={self.now:.3f} s; a: {self.a.stats}; b: {self.b.stats}"
                )
