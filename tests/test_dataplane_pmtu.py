"""Path MTU discovery on the data plane (``DataplaneConnection.set_path``, RFC 8899's way):
padded PING probes find the largest size the path carries, from the path's ceiling down; a
lost probe neither retransmits anything nor counts as congestion; a path that shrinks under
large datagrams sends the connection back to the base size; a new path starts over.
Two cores through ``support.dataplane_link``'s simulated link, which here drops datagrams above
an MTU that each test sets (and may change mid-transfer)."""

from __future__ import annotations

import random

import pytest
from pytest_mock import MockerFixture
from support.dataplane_link import Link, Simulation, key_material, pair, take_stream_data

from dvrlink.protocol.dataplane import MTU_PROBE_LOSSES, MTU_STEPS
from dvrlink.protocol.dataplane_congestion import LedbatController

BASE = 1200
CEILING = 1452


class Rig:
    """A viewer sending one stream to a device over a link with an adjustable MTU."""

    def __init__(self, mtu: int, size: int = 2_000_000, seed: int = 3) -> None:
        rng = random.Random(seed)
        self.mtu = mtu
        self.sizes: list[int] = []
        """The size of every datagram the viewer sent."""
        self.viewer, self.device = pair(key_material(rng))
        self.sim = Simulation(
            self.viewer, self.device, Link(rng, drop=self._viewer_drop), Link(rng, drop=self._device_drop)
        )
        self.stream = self.viewer.open_stream()
        self.data = rng.randbytes(size)
        self.received: dict[int, bytearray] = {}
        self.ended_streams: set[int] = set()

    def _viewer_drop(self, datagram: bytes) -> bool:
        self.sizes.append(len(datagram))
        return len(datagram) > self.mtu

    def _device_drop(self, datagram: bytes) -> bool:
        return len(datagram) > self.mtu

    def send(self, data: bytes, end: bool) -> None:
        self.viewer.send(self.stream, data, end_stream=end)

    @property
    def got(self) -> bytes:
        return bytes(self.received.get(self.stream, b""))

    @property
    def ended(self) -> bool:
        return self.stream in self.ended_streams

    def has_received(self, count: int) -> bool:
        take_stream_data(self.device, self.received, self.ended_streams, self.sim.now)
        return len(self.received.get(self.stream, b"")) >= count or self.ended

    def run_until_received(self, count: int) -> None:
        self.sim.run_until(lambda: self.has_received(count), max_steps=600_000)


def expected_lost(mtu: int) -> int:
    return MTU_PROBE_LOSSES * sum(1 for size in (CEILING, *MTU_STEPS) if size > mtu)


@pytest.mark.parametrize(
    ("mtu", "found"), [(1500, CEILING), (CEILING, CEILING), (1420, 1400), (1350, 1280), (1250, BASE)]
)
def test_probes_find_the_largest_size_the_path_carries_without_calling_it_congestion(
    mtu: int, found: int, mocker: MockerFixture
) -> None:
    rig = Rig(mtu)
    rig.viewer.set_path(CEILING, 0.0)
    congestion = mocker.spy(LedbatController, "on_lost")  # slotted: spied on the class
    rig.send(rig.data, end=True)
    rig.run_until_received(len(rig.data))
    assert rig.ended and bytes(rig.got) == rig.data
    assert rig.viewer.max_datagram == found, f"settled at {rig.viewer.max_datagram} B on a {mtu} B path"
    assert rig.viewer.stats.max_datagram == found
    if found > BASE:
        assert rig.sizes.count(found) > 100, f"only {rig.sizes.count(found)} datagrams of {found} B"
    assert rig.viewer.stats.mtu_probes_lost == expected_lost(mtu), rig.viewer.stats.mtu_probes_lost
    halved = [call for call in congestion.call_args_list if call.args[0] is rig.viewer._cc]
    assert not halved, f"lost probes halved the window {len(halved)} times"
    assert rig.viewer.stats.packets_lost == expected_lost(mtu), "a lost probe counted as more than itself"


def test_without_a_larger_ceiling_nothing_is_probed() -> None:
    rig = Rig(1500, size=200_000)
    rig.viewer.set_path(BASE, 0.0)  # the relay: its ceiling is the base
    rig.send(rig.data, end=True)
    rig.run_until_received(len(rig.data))
    assert max(rig.sizes) == BASE and rig.viewer.max_datagram == BASE, max(rig.sizes)


def test_a_path_that_shrinks_under_large_datagrams_sends_the_connection_back_to_the_base() -> None:
    rig = Rig(1500, size=3_000_000)
    rig.viewer.set_path(CEILING, 0.0)
    rig.send(rig.data[:1_000_000], end=False)
    rig.run_until_received(1_000_000)
    assert rig.viewer.max_datagram == CEILING
    rig.mtu = 1300  # a tunnel appears on the route: the large datagrams vanish
    rig.send(rig.data[1_000_000:], end=True)
    rig.run_until_received(len(rig.data))
    assert rig.ended and bytes(rig.got) == rig.data, f"{len(rig.got)} of {len(rig.data)} B arrived"
    assert rig.viewer.max_datagram == BASE, f"still sending {rig.viewer.max_datagram} B datagrams"
    after = rig.sizes[-200:]
    assert max(after) <= BASE, f"datagrams of {max(after)} B after the fallback"


def test_a_new_path_starts_at_the_base_and_probes_again() -> None:
    rig = Rig(1500, size=4_000_000)
    rig.viewer.set_path(CEILING, 0.0)
    rig.send(rig.data[:400_000], end=False)
    rig.run_until_received(400_000)
    assert rig.viewer.max_datagram == CEILING
    rig.viewer.set_path(CEILING, rig.sim.now)  # the session moved to another path
    assert rig.viewer.max_datagram == BASE
    rig.mtu = 1420
    rig.send(rig.data[400_000:], end=True)
    rig.run_until_received(len(rig.data))
    assert bytes(rig.got) == rig.data
    assert rig.viewer.max_datagram == 1400, rig.viewer.max_datagram
