"""A viewer and a device session on a fake link with made-up time.

The link knows paths: a path is (viewer address as the device sees it, device address as the
viewer sends to it), e.g. a TURN relay path, then a direct one. Each datagram is checked for the
RFC 9443 first byte as it crosses.
"""

from __future__ import annotations

import datetime
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint
from dvrlink.protocol.session import (
    DeviceSession,
    SessionClosed,
    SessionConfig,
    SessionEvent,
    ViewerSession,
)
from dvrlink.protocol.session_tls import device_certificate, viewer_certificate

WALL_CLOCK = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
SERIAL = "DL-0001-0002"
VIEWER_RELAYED = ("198.51.100.7", 49152)  # the viewer as the device sees it through the relay
DEVICE_RELAYED = ("192.0.2.1", 3478)  # the relay as the viewer sends to it
VIEWER_DIRECT = ("203.0.113.9", 40000)
DEVICE_DIRECT = ("100.64.0.5", 50000)

Address = tuple[str, int]


def is_quic_first_byte(byte: int) -> bool:
    """RFC 9443: QUIC is 64-127 (short header) or 192-255 (long header)."""
    return 64 <= byte <= 127 or 192 <= byte <= 255


def is_dataplane_first_byte(byte: int) -> bool:
    """The data plane's datagrams start with 0x20-0x3F (apart from QUIC, STUN and TURN)."""
    return 0x20 <= byte <= 0x3F


@dataclass
class Keys:
    device: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    viewer: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def device_fp(self) -> str:
        return fingerprint(ed25519_public_bytes(self.device))

    @property
    def viewer_fp(self) -> str:
        return fingerprint(ed25519_public_bytes(self.viewer))


def make_device(
    key: Ed25519PrivateKey,
    authorised: Callable[[bytes], bool],
    config: SessionConfig | None = None,
    serial: str = SERIAL,
) -> DeviceSession:
    return DeviceSession(key, device_certificate(key, serial, WALL_CLOCK), authorised, config)


def make_viewer(key: Ed25519PrivateKey, pin: str, config: SessionConfig | None = None) -> ViewerSession:
    return ViewerSession(key, viewer_certificate(key, WALL_CLOCK), pin, config)


@dataclass
class Link:
    device: DeviceSession
    viewer: ViewerSession
    now: float = 1000.0
    # device-side address of the viewer -> viewer-side address of the device, per live path
    paths: dict[Address, Address] = field(default_factory=lambda: {VIEWER_RELAYED: DEVICE_RELAYED})
    viewer_source: Address = VIEWER_RELAYED
    device_events: list[SessionEvent] = field(default_factory=list)
    viewer_events: list[SessionEvent] = field(default_factory=list)
    wire: list[tuple[str, bytes, Address]] = field(default_factory=list)
    dropped: int = 0
    closed_at: dict[str, float] = field(default_factory=dict)
    """Made-up time at which each side ("device", "viewer") emitted ``SessionClosed``."""
    delay: float = 0.0
    """One-way delay of every path, in seconds."""
    coalesce: bool = False
    """Hand the datagrams due together from one sender on one path to ``receive_datagrams`` in
    one call (a coalesced read), instead of one ``receive_datagram`` each."""
    # (deliver at, sequence, sender, data, (source, destination)); the device's source is not modelled
    in_flight: list[tuple[float, int, str, bytes, tuple[Address, Address]]] = field(default_factory=list)

    def start(self) -> None:
        self.viewer.connect(self.paths[self.viewer_source], self.now)

    def exchange(self) -> bool:
        """Send what both sides have now, deliver what is due; True if anything moved."""
        moved = False
        for data, dst in self.viewer.datagrams_to_send(self.now):
            moved = True
            assert is_quic_first_byte(data[0]) or is_dataplane_first_byte(data[0]), data[:1]
            self.wire.append(("viewer", data, dst))
            sent = (self.viewer_source, dst)
            heapq.heappush(self.in_flight, (self.now + self.delay, len(self.wire), "viewer", data, sent))
        for data, dst in self.device.datagrams_to_send(self.now):
            moved = True
            assert is_quic_first_byte(data[0]) or is_dataplane_first_byte(data[0]), data[:1]
            self.wire.append(("device", data, dst))
            heapq.heappush(
                self.in_flight, (self.now + self.delay, len(self.wire), "device", data, (dst, dst))
            )
        due: list[tuple[str, bytes, tuple[Address, Address]]] = []
        while self.in_flight and self.in_flight[0][0] <= self.now:
            _, _, sender, data, route = heapq.heappop(self.in_flight)
            due.append((sender, data, route))
        start = 0
        while start < len(due):
            moved = True
            sender, _, (src, dst) = due[start]
            end = start + 1
            if self.coalesce:
                while end < len(due) and due[end][0] == sender and due[end][2] == (src, dst):
                    end += 1
            run = [data for _, data, _ in due[start:end]]
            if sender == "viewer" and self.paths.get(src) == dst:
                self._hand(self.device, run, src)
            elif sender == "device" and dst in self.paths:
                self._hand(self.viewer, run, self.paths[dst])
            else:
                self.dropped += len(run)  # no such path (any more)
            start = end
        self.collect()
        return moved

    def _hand(self, side: DeviceSession | ViewerSession, run: list[bytes], src: Address) -> None:
        if self.coalesce:
            side.receive_datagrams(run, src, self.now)
        else:
            for data in run:
                side.receive_datagram(data, src, self.now)

    def collect(self) -> None:
        while (event := self.device.next_event()) is not None:
            self.device_events.append(event)
            if isinstance(event, SessionClosed):
                self.closed_at.setdefault("device", self.now)
        while (event := self.viewer.next_event()) is not None:
            self.viewer_events.append(event)
            if isinstance(event, SessionClosed):
                self.closed_at.setdefault("viewer", self.now)

    def tick(self) -> None:
        """Advance made-up time to the earliest timer and run it."""
        timers = [t for t in (self.device.get_timer(), self.viewer.get_timer()) if t is not None]
        if self.in_flight:
            timers.append(self.in_flight[0][0])
        assert timers, "both sides are idle with no timer: the link stalled"
        self.now = max(self.now, min(timers))
        self.device.handle_timer(self.now)
        self.viewer.handle_timer(self.now)
        self.collect()

    def run(self, until: Callable[[], bool], limit: int = 20_000) -> None:
        for _ in range(limit):
            if until():
                return
            if not self.exchange():
                self.tick()
        raise AssertionError(f"condition not reached after {limit} steps (t={self.now})")

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            if self.exchange():
                continue
            if self.device.get_timer() is None and self.viewer.get_timer() is None and not self.in_flight:
                return  # both sides are finished
            self.tick()

    def switch_path(self, viewer_source: Address, device_address: Address, keep_old: bool) -> None:
        """The viewer moves to a new ICE pair; the old path keeps working or is gone."""
        if not keep_old:
            self.paths = {}
        self.paths[viewer_source] = device_address
        self.viewer_source = viewer_source
        self.viewer.switch_path(device_address, self.now)


def established_link(
    keys: Keys | None = None, config: SessionConfig | None = None, delay: float = 0.0
) -> Link:
    keys = keys or Keys()
    viewer_key = ed25519_public_bytes(keys.viewer)
    link = Link(
        device=make_device(keys.device, lambda raw: raw == viewer_key, config),
        viewer=make_viewer(keys.viewer, keys.device_fp, config),
        delay=delay,
    )
    link.start()
    link.run(lambda: link.device.peer_fingerprint is not None and link.viewer.peer_fingerprint is not None)
    return link


def dataplane_link(keys: Keys | None = None, config: SessionConfig | None = None, delay: float = 0.0) -> Link:
    """An established link whose data plane is up at both ends (the hellos crossed)."""
    link = established_link(keys, config, delay)
    link.run(lambda: link.viewer.dataplane is not None and link.device.dataplane is not None)
    return link
