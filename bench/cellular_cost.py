"""Cellular cost of one idle, reachable device: bytes on the wire per day at keepalive intervals 25/60/120 s.

    python -m bench.cellular_cost [--quick]

The real cores (``PresenceClient`` and ``PresenceServer``) run in-process on a lossless fake link
with made-up time. The datagram sizes of a registration and of a keepalive round trip are taken
from what they actually send, plus 28 bytes of IPv4 + UDP header per datagram. Per day:

    keepalive round trip × 86400 / interval + one registration (assumed: one a day, e.g. after a
    reboot or an address change; a stable link needs none)

The same day is also simulated end to end (every datagram counted) as a cross-check; ``--quick``
simulates one hour and scales it up.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.common import BenchError, fmt_int, parse_args, run_main
from dvrlink.protocol.presence_client import ClientConfig, ClientState, PresenceClient
from dvrlink.protocol.presence_events import Address, RegistrationRequested
from dvrlink.protocol.presence_server import PresenceServer, ServerConfig
from dvrlink.protocol.presence_wire import MessageType

IPV4_UDP_HEADER = 28
DAY_S = 86_400.0
MONTH_DAYS = 30
MB = 1_000_000
INTERVALS_S = (25.0, 60.0, 120.0)
SERIAL = "DL-0001-0002"  # a typical 12-character serial; REGISTER grows by one byte per character
DEVICE_ADDRESS: Address = ("203.0.113.7", 41000)  # documentation range; nothing is sent
REGISTRATION_TYPES = (MessageType.HELLO, MessageType.COOKIE, MessageType.REGISTER, MessageType.REGISTERED)
KEEPALIVE_TYPES = (MessageType.KEEPALIVE, MessageType.KEEPALIVE_ACK)


@dataclass(slots=True)
class Wire:
    """Every datagram that crossed the fake link: counts and payload bytes per message type."""

    count: Counter[int]
    payload: Counter[int]
    sizes: dict[int, set[int]]

    def record(self, datagram: bytes) -> None:
        """Count one datagram."""
        kind = datagram[0]
        self.count[kind] += 1
        self.payload[kind] += len(datagram)
        self.sizes.setdefault(kind, set()).add(len(datagram))

    @property
    def wire_bytes(self) -> int:
        """Payload plus IPv4 + UDP headers of everything recorded."""
        return sum(self.payload.values()) + IPV4_UDP_HEADER * sum(self.count.values())

    def size(self, kind: int) -> int:
        """The one payload size seen for ``kind``.

        Raises:
            BenchError: none or several sizes were seen.
        """
        seen = self.sizes.get(kind, set())
        if len(seen) != 1:
            raise BenchError(f"expected one size for {MessageType(kind).name}, saw {sorted(seen)}")
        return next(iter(seen))


def simulate(interval: float, duration: float) -> Wire:
    """Run a device and a broker core for ``duration`` s of made-up time; record the link.

    Raises:
        BenchError: the device did not stay online, or registered more than once.
    """
    server = PresenceServer(ServerConfig(), X25519PrivateKey.from_private_bytes(bytes(range(32))))
    config = ClientConfig(serial=SERIAL, broker_public_key=server.public_key, keepalive_interval=interval)
    client = PresenceClient(config, Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64))))
    wire = Wire(Counter(), Counter(), {})
    now = 0.0

    def pump() -> None:
        for _ in range(100):
            moved = False
            for datagram in client.datagrams_to_send():
                moved = True
                wire.record(datagram)
                server.receive_datagram(datagram, DEVICE_ADDRESS, now)
            while (event := server.next_event()) is not None:
                if isinstance(event, RegistrationRequested):
                    server.accept(event.handle, now)
            for datagram, _address in server.datagrams_to_send():
                moved = True
                wire.record(datagram)
                client.receive_datagram(datagram, now)
            while client.next_event() is not None:
                pass
            if not moved:
                return
        raise BenchError("the fake link did not settle")

    client.start(now)
    pump()
    for _ in range(10 * int(duration) + 100):
        timers = [t for t in (client.get_timer(), server.get_timer()) if t is not None]
        if not timers or min(timers) > duration:
            break
        now = min(timers)
        client.handle_timer(now)
        server.handle_timer(now)
        pump()
    if client.state is not ClientState.ONLINE:
        raise BenchError(f"the simulated device is {client.state.value} at the end, not online")
    if wire.count[MessageType.REGISTER] != 1:
        times = wire.count[MessageType.REGISTER]
        raise BenchError(f"the simulated device registered {times} times, not once")
    return wire


def run(quick: bool) -> None:
    """The whole benchmark."""
    simulated = 3600.0 if quick else DAY_S
    print(
        f"cellular cost of one idle device: serial {SERIAL!r} ({len(SERIAL)} chars), IPv4, "
        f"+{IPV4_UDP_HEADER} B IPv4+UDP header per datagram; MB = 10^6 B, month = {MONTH_DAYS} days"
    )
    rows = []
    for interval in INTERVALS_S:
        wire = simulate(interval, simulated)
        rows.append((interval, wire))
    first = rows[0][1]
    sizes = {kind: first.size(kind) for kind in (*REGISTRATION_TYPES, *KEEPALIVE_TYPES)}
    print(
        "  datagram sizes, payload / on the wire: "
        + ", ".join(
            f"{MessageType(kind).name} {size}/{size + IPV4_UDP_HEADER} B" for kind, size in sizes.items()
        )
    )
    registration = sum(sizes[k] + IPV4_UDP_HEADER for k in REGISTRATION_TYPES)
    round_trip = sum(sizes[k] + IPV4_UDP_HEADER for k in KEEPALIVE_TYPES)
    print(
        f"  registration (HELLO, COOKIE, REGISTER, REGISTERED): {registration} B on the wire; "
        f"keepalive round trip: {round_trip} B"
    )
    print("  assumption: one registration per day; no loss, so no retransmissions")
    span = "simulated day" if not quick else "simulated hour x 24"
    print(f"  {'interval':>8}  {'keepalives/day':>14}  {'bytes/day':>10}  {'MB/month':>8}  {span:>22}")
    for interval, wire in rows:
        keepalives = DAY_S / interval
        per_day = round_trip * keepalives + registration
        measured = wire.wire_bytes
        if quick:  # scale the hour's keepalives to a day, keep the one registration
            measured = round((measured - registration) * DAY_S / simulated) + registration
        print(
            f"  {interval:>7.0f}s  {fmt_int(keepalives):>14}  {fmt_int(per_day):>10}  "
            f"{per_day * MONTH_DAYS / MB:>8.2f}  {fmt_int(measured):>12} B ({measured / per_day:.3f}x)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "cellular cost", argv)
    return run_main(lambda: run(args.quick))


if __name__ == "__main__":
    sys.exit(main())
