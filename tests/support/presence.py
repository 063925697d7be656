"""A device core and a broker core joined by a fake link with made-up time."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.broker.config import BrokerConfig, config_from_mapping
from dvrlink.protocol.presence_client import ClientConfig, PresenceClient
from dvrlink.protocol.presence_events import (
    Address,
    ClientEvent,
    RegistrationRequested,
    ServerEvent,
)
from dvrlink.protocol.presence_server import PresenceServer, ServerConfig
from dvrlink.protocol.presence_wire import RefuseReason

BROKER: Address = ("198.51.100.1", 3478)


def of_type(events: list[object], kind: type) -> list[object]:
    """The events of one kind, in order."""
    return [e for e in events if isinstance(e, kind)]


def loopback_broker_config(state_dir: Path, **extra: object) -> BrokerConfig:
    """A broker on 127.0.0.1 with free ports and no TURN relay, for in-process presence tests."""
    values: dict[str, object] = {
        "state_dir": str(state_dir),
        "udp_host": "127.0.0.1",
        "udp_port": 0,
        "presence_tcp_port": 0,
        "https_host": "127.0.0.1",
        "https_port": 0,
        "turn_enabled": False,
        **extra,
    }
    return config_from_mapping(values, source="test")


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    counter = itertools.count()

    def rng(n: int) -> bytes:
        import hashlib

        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{seed}:{next(counter)}".encode()).digest()
        return out[:n]

    return rng


@dataclass
class Device:
    client: PresenceClient
    address: Address
    key: Ed25519PrivateKey
    events: list[ClientEvent] = field(default_factory=list)


class Lab:
    """Delivers datagrams between devices and a broker; a filter may drop or keep them."""

    def __init__(self, interval: float = 20.0, server_config: ServerConfig | None = None) -> None:
        self.now = 0.0
        self.interval = interval
        self.static = X25519PrivateKey.from_private_bytes(bytes(range(32)))
        self.server_config = server_config or ServerConfig()
        self.server = PresenceServer(self.server_config, self.static, rng=seeded_rng(1))
        self.server_events: list[ServerEvent] = []
        self.devices: list[Device] = []
        self.bindings: dict[str, bytes] = {}
        self.auto_accept = True
        self.broker_up = True
        # A filter gets (direction, datagram, device) and returns False to drop.
        self.filter: Callable[[str, bytes, Device], bool] = lambda d, b, dev: True
        self.wire: list[tuple[str, bytes, Device]] = []
        self.held: list[tuple[str, bytes, Device]] = []
        self.on_server_event: Callable[[ServerEvent], None] | None = None
        """Called with each server event after it is recorded (e.g. to answer alarms)."""
        self.strays: list[tuple[bytes, Address, float]] = []
        """Broker datagrams to addresses of no device (e.g. a probe socket), with the time sent."""
        self.wall: float | None = None
        """The Unix time at lab time 0: set, the broker hands out resumption tickets."""
        self.ticket_lifetime: float | None = None
        """Set, a resumed registration whose ticket is older is refused with TICKET_EXPIRED."""

    def add_device(
        self, serial: str, seed: int = 7, address: Address | None = None, broker_key: bytes | None = None
    ) -> Device:
        """A device pinning ``broker_key`` (default: the broker's own key)."""
        key = Ed25519PrivateKey.from_private_bytes(seeded_rng(seed)(32))
        config = ClientConfig(
            serial=serial,
            broker_public_key=broker_key or self.server.public_key,
            keepalive_interval=self.interval,
            reply_timeout=2.0,
            retries=2,
        )
        jitter_values = itertools.cycle([0.3, 0.9, 0.6])
        client = PresenceClient(config, key, rng=seeded_rng(seed + 100), jitter=lambda: next(jitter_values))
        device = Device(client, address or ("203.0.113.5", 40000 + len(self.devices)), key)
        self.devices.append(device)
        return device

    def restart_broker(self, static: X25519PrivateKey | None = None) -> None:
        """A new broker core (a restart, or another node: ``static`` its key, default the fleet's)."""
        self.server = PresenceServer(
            self.server_config, static or self.static, rng=seeded_rng(int(self.now) + 99)
        )

    def pump(self) -> None:
        """Move datagrams and events until nothing moves."""
        for _ in range(1000):
            moved = False
            for device in self.devices:
                for datagram in device.client.datagrams_to_send():
                    moved = True
                    self.wire.append(("up", datagram, device))
                    if self.broker_up and self.filter("up", datagram, device):
                        self.server.receive_datagram(datagram, device.address, self.now)
                while (event := device.client.next_event()) is not None:
                    device.events.append(event)
            while (sevent := self.server.next_event()) is not None:
                moved = True
                self.server_events.append(sevent)
                if isinstance(sevent, RegistrationRequested) and self.auto_accept:
                    self.decide(sevent)
                if self.on_server_event is not None:
                    self.on_server_event(sevent)
            for datagram, address in self.server.datagrams_to_send():
                moved = True
                matched = False
                for device in self.devices:
                    if device.address == address:
                        matched = True
                        self.wire.append(("down", datagram, device))
                        if self.filter("down", datagram, device):
                            device.client.receive_datagram(datagram, self.now)
                if not matched:
                    self.strays.append((datagram, address, self.now))
            if not moved:
                return
        raise AssertionError("the link did not settle")

    def decide(self, request: RegistrationRequested) -> None:
        bound = self.bindings.setdefault(request.serial, request.public_key)
        wall = None if self.wall is None else self.wall + self.now
        issued = request.ticket_issued_at
        lifetime = self.ticket_lifetime
        if wall is not None and issued is not None and lifetime is not None and wall - issued > lifetime:
            self.server.refuse(request.handle, RefuseReason.TICKET_EXPIRED, "ticket expired", self.now)
            return
        if bound == request.public_key:
            self.server.accept(request.handle, self.now, wall=wall)
        else:
            self.server.refuse(
                request.handle, RefuseReason.KEY_MISMATCH, "serial bound to another key", self.now
            )

    def advance(self, until: float) -> None:
        """Run timers in order up to ``until``."""
        for _ in range(100000):
            timers = [d.client.get_timer() for d in self.devices] + [self.server.get_timer()]
            due = [t for t in timers if t is not None and t <= until]
            if not due:
                break
            self.now = max(self.now, min(due))
            for device in self.devices:
                device.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
            self.pump()
        else:
            raise AssertionError("timers did not settle")
        self.now = until
        self.pump()

    def start_all(self) -> None:
        for device in self.devices:
            device.client.start(self.now)
        self.pump()


def spoof_udp(source: Address, destination: Address, payload: bytes) -> None:
    """Send ``payload`` to ``destination`` as if from ``source`` (an IPv4 raw socket: needs root).

    The kernel adds the IP header with the socket's bound address; the UDP checksum is 0 (none),
    which IPv4 allows.
    """
    import socket
    import struct

    header = struct.pack(">HHHH", source[1], destination[1], 8 + len(payload), 0)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
        raw.bind((source[0], 0))
        raw.sendto(header + payload, (destination[0], 0))


class Program:
    """A child process whose stderr lines are collected; ``wait_for_line`` waits for a pattern."""

    def __init__(self, proc: asyncio.subprocess.Process, bound: float) -> None:
        self.proc = proc
        self.bound = bound
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, *args: str, bound: float = 30.0, env: dict[str, str] | None = None) -> Program:
        proc = await asyncio.create_subprocess_exec(*args, stderr=asyncio.subprocess.PIPE, env=env)
        return cls(proc, bound)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace"))
            self._changed.set()
        self._changed.set()

    async def wait_for_line(self, pattern: str, bound: float | None = None) -> str:
        """The first line (already seen or to come) matching ``pattern``; fails after ``bound`` s."""

        async def scan() -> str:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if re.search(pattern, line):
                        return line
                seen = len(self.lines)
                if self._reader.done():
                    raise AssertionError(f"exited before {pattern!r}:\n" + "".join(self.lines))
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), bound or self.bound)
        except TimeoutError:
            raise AssertionError(
                f"no line matching {pattern!r} within {bound or self.bound} s:\n" + "".join(self.lines)
            ) from None

    async def stop(self) -> int:
        """SIGTERM, then the exit code (SIGKILL if it does not exit within the bound)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), self.bound)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            await self._reader
        return code
