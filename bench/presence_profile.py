"""Where the broker's presence core spends time and memory, in-process with made-up traffic.

    python -m bench.presence_profile [--quick]

No sockets: datagrams are built as in ``bench.presence_load`` and fed straight to a
``PresenceServer`` on this core, so the figures are the core's own cost, without asyncio and the
kernel. It prints:

- CPU per keepalive and per registration, with the cProfile functions that take the time, and
  what building the per-keepalive ``ChaCha20Poly1305`` cipher costs;
- the registry's SQLite cost per registration (``check_binding`` + ``record_registration``);
- memory per online session: VmRSS growth, the part on Python's heap (tracemalloc) with its
  largest lines, and the rest outside it.
"""

from __future__ import annotations

import cProfile
import gc
import io
import multiprocessing
import os
import pstats
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.common import GENERATOR_CORE, BenchError, fmt_int, parse_args, pin_to_core, rss_bytes, run_main
from bench.loadgen import (
    SimDevice,
    hello_datagram,
    open_session,
    register_datagram,
    seal_keepalives,
    source_ips,
)
from dvrlink.broker.registry import Registry
from dvrlink.protocol.presence_crypto import Sealer
from dvrlink.protocol.presence_events import Address, RegistrationRequested
from dvrlink.protocol.presence_server import PresenceServer, ServerConfig
from dvrlink.protocol.presence_wire import COOKIE, HELLO, REGISTER, REGISTERED_PLAIN, VERSION, encode_address

KEEPALIVE_MS = 3_600_000
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes of one profiling run."""

    sessions: int
    keepalives: int
    registrations: int
    top: int


FULL = Plan(20_000, 200_000, 3_000, 12)
QUICK = Plan(500, 5_000, 200, 8)


class Fleet:
    """A broker core and devices registered to it in-process (made-up addresses, no sockets)."""

    def __init__(self, first_index: int = 0) -> None:
        self.core = PresenceServer(ServerConfig(), X25519PrivateKey.from_private_bytes(bytes(range(32))))
        self.devices: list[SimDevice] = []
        self.addresses: list[Address] = []
        self._next = first_index

    def make_devices(self, count: int) -> list[SimDevice]:
        """New devices with their keys made (outside any measurement)."""
        out = []
        ips = source_ips(250)
        for _ in range(count):
            i = self._next
            self._next += 1
            device = SimDevice(i, f"BENCH-{i:07d}", i.to_bytes(16, "big"))
            device.make_keys()
            device.slot = len(self.addresses)
            out.append(device)
            self.addresses.append((ips[i % 250], 20000 + i % 40000))
        return out

    def hello(self, devices: Sequence[SimDevice], now: float) -> list[bytes]:
        """HELLO → COOKIE for each device; returns the cookies."""
        core = self.core
        cookies = []
        for device in devices:
            core.receive_datagram(hello_datagram(device.nonce), self.addresses[device.slot], now)
            ((cookie, _),) = core.datagrams_to_send()
            cookies.append(cookie[18:])
        return cookies

    def complete(self, devices: Sequence[SimDevice], registers: Sequence[bytes], now: float) -> None:
        """REGISTER → RegistrationRequested → accept → REGISTERED, for each device."""
        core = self.core
        for device, register in zip(devices, registers, strict=True):
            core.receive_datagram(register, self.addresses[device.slot], now)
            event = core.next_event()
            assert isinstance(event, RegistrationRequested), event
            core.accept(event.handle, now)
            while core.next_event() is not None:
                pass
            ((registered, _),) = core.datagrams_to_send()
            device.registered = registered
            self.devices.append(device)

    def register(self, devices: Sequence[SimDevice], now: float) -> None:
        """The whole registration of each device."""
        cookies = self.hello(devices, now)
        registers = [register_datagram(d, c, KEEPALIVE_MS) for d, c in zip(devices, cookies, strict=True)]
        self.complete(devices, registers, now)


def per_call_report(profile: cProfile.Profile, calls: int, top: int) -> str:
    """The ``top`` functions by own time, in µs per operation (profiler overhead included)."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (filename, line, name), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(filename).name}:{line}({name})" if line else name
        rows.append((tottime, cumtime, ncalls, where))
    rows.sort(reverse=True)
    lines = [f"      {'own µs/op':>9} {'cum µs/op':>9} {'calls/op':>8}  function (under cProfile)"]
    for tottime, cumtime, ncalls, where in rows[:top]:
        lines.append(
            f"      {tottime / calls * 1e6:9.2f} {cumtime / calls * 1e6:9.2f} {ncalls / calls:8.2f}  {where}"
        )
    return "\n".join(lines)


def time_per_op(run: Callable[[], object], ops: int) -> float:
    """Seconds per operation of ``run`` (which does ``ops`` operations)."""
    gc.collect()
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / ops


def keepalive_loop(fleet: Fleet, datagrams: list[bytes], slots: list[int]) -> Callable[[], None]:
    """A closure that feeds every datagram to the core and drains its answers."""
    core = fleet.core
    addresses = fleet.addresses

    def run() -> None:
        receive = core.receive_datagram
        drain = core.datagrams_to_send
        now = 10.0
        for datagram, slot in zip(datagrams, slots, strict=True):
            receive(datagram, addresses[slot], now)
            drain()

    return run


def keepalive_cost(plan: Plan) -> tuple[float, cProfile.Profile, int]:
    """Seconds per keepalive through a core with ``plan.sessions`` sessions, and a profile of a second pass.

    Raises:
        BenchError: the core did not answer every keepalive.
    """
    fleet = Fleet()
    fleet.register(fleet.make_devices(plan.sessions), 1.0)
    for device in fleet.devices:
        open_session(device, fleet.core.public_key)
    datagrams, slots, _ = seal_keepalives(fleet.devices, plan.keepalives)
    per_op = time_per_op(keepalive_loop(fleet, datagrams, slots), len(datagrams))
    if fleet.core.stats["keepalives"] != len(datagrams):
        raise BenchError(f"the core answered {fleet.core.stats['keepalives']} of {len(datagrams)} keepalives")
    datagrams, slots, _ = seal_keepalives(fleet.devices, plan.keepalives // 4)
    profile = cProfile.Profile()
    profile.runcall(keepalive_loop(fleet, datagrams, slots))
    return per_op, profile, len(datagrams)


@dataclass(frozen=True, slots=True)
class RegistrationFigures:
    """Seconds per registration step in the core (the device's own work excluded)."""

    hello: float
    register: float
    profile: cProfile.Profile
    profiled: int


def registration_cost(plan: Plan) -> RegistrationFigures:
    """Time HELLO→COOKIE and REGISTER→accept→REGISTERED separately; profile the second."""
    fleet = Fleet(first_index=5_000_000)
    devices = fleet.make_devices(plan.registrations)
    half = len(devices) // 2
    cookies: list[bytes] = []
    hello = time_per_op(lambda: cookies.extend(fleet.hello(devices, 1.0)), len(devices))
    registers = [register_datagram(d, c, KEEPALIVE_MS) for d, c in zip(devices, cookies, strict=True)]
    register = time_per_op(lambda: fleet.complete(devices[:half], registers[:half], 1.0), half)
    profile = cProfile.Profile()
    profile.runcall(fleet.complete, devices[half:], registers[half:], 1.0)
    return RegistrationFigures(hello, register, profile, len(devices) - half)


def construct_costs(repeat: int) -> list[tuple[str, float]]:
    """Seconds per call of the ``construct`` layouts on the registration path (no profiler)."""
    fleet = Fleet(first_index=9_000_000)
    (device,) = fleet.make_devices(1)
    (cookie,) = fleet.hello([device], 1.0)
    register = register_datagram(device, cookie, KEEPALIVE_MS)
    hello = hello_datagram(device.nonce)
    address = encode_address(fleet.addresses[0])
    calls: list[tuple[str, Callable[[], object]]] = [
        ("HELLO.parse", lambda: HELLO.parse(hello)),
        ("COOKIE.build", lambda: COOKIE.build({"version": VERSION, "nonce": device.nonce, "cookie": cookie})),
        ("REGISTER.parse", lambda: REGISTER.parse(register)),
        ("REGISTERED_PLAIN.build", lambda: REGISTERED_PLAIN.build({"keepalive_ms": 1, "address": address})),
    ]
    out = []
    for name, call in calls:

        def loop(call: Callable[[], object] = call) -> None:
            for _ in range(repeat):
                call()

        out.append((name, time_per_op(loop, repeat)))
    return out


def cipher_cost(repeat: int) -> float:
    """Seconds per ``Sealer.cipher()``: the ``ChaCha20Poly1305`` the core builds for each keepalive."""
    sealer = Sealer(os.urandom(32))

    def loop() -> None:
        for _ in range(repeat):
            sealer.cipher()

    return time_per_op(loop, repeat)


def registry_cost(plan: Plan) -> float:
    """Seconds per registration spent in the registry (bind on first use, then note the address)."""
    with tempfile.TemporaryDirectory(prefix="dvrlink-profile-") as tmp:
        registry = Registry(Path(tmp) / "registry.sqlite3")
        try:
            keys = [os.urandom(32) for _ in range(plan.registrations)]
            start = time.perf_counter()
            for i, key in enumerate(keys):
                serial = f"BENCH-{i:07d}"
                registry.check_binding(serial, key, 1.0, manifest_only=False)
                registry.record_registration(serial, ("127.0.0.1", 40000), 1.0)
            return (time.perf_counter() - start) / len(keys)
        finally:
            registry.close()


# -- memory: every probe runs in a fresh process, so no probe reuses another's freed heap --------


def probe_sessions(sessions: int, traced: bool) -> tuple[float, float, list[tuple[str, float]]]:
    """In this (fresh) process: register ``sessions`` devices to a new core.

    Returns (VmRSS growth per session, Python-heap growth per session, top lines of that heap
    growth as (file:line, bytes per session)); the heap figures are 0 unless ``traced``.

    Raises:
        BenchError: not every device came online.
    """
    pin_to_core(GENERATOR_CORE)
    fleet = Fleet()
    devices = fleet.make_devices(sessions + 1)
    fleet.register(devices[:1], 1.0)  # first use: imports, caches
    cookies = fleet.hello(devices[1:], 1.0)  # cookies are stateless: the broker keeps nothing
    registers = [register_datagram(d, c, KEEPALIVE_MS) for d, c in zip(devices[1:], cookies, strict=True)]
    gc.collect()
    rss0 = rss_bytes(os.getpid())
    if traced:
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
    fleet.complete(devices[1:], registers, 1.0)
    for device in devices:
        device.registered = b""  # the simulated device's copy, not the broker's
    del registers
    gc.collect()
    top: list[tuple[str, float]] = []
    heap = 0.0
    if traced:
        diff = tracemalloc.take_snapshot().compare_to(before, "lineno")
        tracemalloc.stop()
        heap = sum(d.size_diff for d in diff) / sessions
        for stat in diff[:10]:
            frame = stat.traceback[0]
            top.append((f"{Path(frame.filename).name}:{frame.lineno}", stat.size_diff / sessions))
    rss = (rss_bytes(os.getpid()) - rss0) / sessions
    if fleet.core.online_count != sessions + 1:
        raise BenchError(f"{fleet.core.online_count} sessions online, expected {sessions + 1}")
    return rss, heap, top


def in_fresh_process(function: Callable[..., T], *args: object) -> T:
    """Run ``function(*args)`` in a new interpreter and return its result."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def run(plan: Plan) -> None:
    """The whole profile."""
    pin_to_core(GENERATOR_CORE)
    print(f"presence core profile, in-process, made-up traffic ({fmt_int(plan.sessions)} sessions)")

    print("  memory per online session (each figure from a fresh process):")
    rss, _, _ = in_fresh_process(probe_sessions, plan.sessions, False)
    _, heap, top = in_fresh_process(probe_sessions, plan.sessions, True)
    print(f"    VmRSS growth: {fmt_int(rss)} B per session")
    print(f"    of which on Python's heap (tracemalloc): {fmt_int(heap)} B; largest lines:")
    for where, size in top:
        print(f"      {size:8.1f} B  {where}")
    print(f"    the rest (allocator overhead, memory outside Python's heap): {fmt_int(rss - heap)} B")

    print("  keepalive, core only (receive_datagram + datagrams_to_send):")
    per_ka, profile, profiled = keepalive_cost(plan)
    print(f"    {per_ka * 1e6:.2f} µs per keepalive -> {fmt_int(1 / per_ka)} per core-second (core alone)")
    print(per_call_report(profile, profiled, plan.top))
    cipher = cipher_cost(max(2_000, plan.keepalives // 10))
    print(f"    of which Sealer.cipher(), the ChaCha20Poly1305 built per keepalive: {cipher * 1e6:.2f} µs")

    print("  registration, core only:")
    reg = registration_cost(plan)
    total = reg.hello + reg.register
    print(
        f"    HELLO -> COOKIE {reg.hello * 1e6:.0f} µs, REGISTER -> accept -> REGISTERED "
        f"{reg.register * 1e6:.0f} µs: {total * 1e6:.0f} µs -> {fmt_int(1 / total)} per core-second"
    )
    print(per_call_report(reg.profile, reg.profiled, plan.top))
    print("    construct layouts on that path, without the profiler:")
    for name, cost in construct_costs(max(200, plan.registrations)):
        print(f"      {cost * 1e6:7.1f} µs  {name}")
    per_db = registry_cost(plan)
    print(f"    registry (SQLite check_binding + record_registration, WAL): {per_db * 1e6:.0f} µs")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "presence profile", argv)
    return run_main(lambda: run(QUICK if args.quick else FULL))


if __name__ == "__main__":
    sys.exit(main())
