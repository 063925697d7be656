"""The floor under dvrlinkd's 4 Mbit/s figure: its system calls per write, with nothing around them.

    python -m bench.wakeup_floor [--quick] [--seconds N]

``bench.daemon_streaming`` streams 4 Mbit/s as one 10,000-byte TCP write every 20 ms, and
dvrlinkd (on core 1) answers each write with the same few system calls (strace of the direct
device -> viewer case): ``epoll_wait``, one TCP ``recv``, one ``sendmsg`` of the datagrams with
``UDP_SEGMENT``; then ``epoll_wait`` again for the viewer's ACK, a ``recvmsg`` of it and one
more that finds the socket empty. This benchmark runs that pattern and nothing else (no cipher,
no protocol, no state) as the device, on core 1, in three programs:

- ``c``: a C program (``bench/wakeup_floor.c``, built with the machine's ``cc``; skipped without
  one);
- ``python``: a bare ``select.epoll`` loop in CPython;
- ``asyncio``: the same on asyncio, as dvrlinkd is built (a ``Protocol`` for the TCP side, a
  reader callback for the UDP side).

Each runs with the viewer answering every read with a 35-byte datagram (as the data plane's
viewer ACKs each coalesced read at this rate) and without. The source and the viewer run in
this process on core 0, on loopback only. Printed per run: the device's CPU (its own
``/proc/self/schedstat`` from its first read to the source's end) in % of a core, and per write.
Issue 14's target for dvrlinkd on this machine is 0.8 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    GENERATOR_CORE,
    LOOPBACK,
    SERVER_CORE,
    BenchError,
    online_cores,
    pin_to_core,
    run_main,
)
from bench.daemon_streaming import CHUNK, paced_send

RATE_BITS = 4e6
SEGMENT = 1452
"""dvrlinkd's datagram size on a lan or direct path (path MTU discovery's ceiling)."""
ACK = bytes(35)
"""The size of the data plane's ACK at this rate."""
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_TIMESTAMPNS = 35
TARGET_PERCENT = 0.8
C_SOURCE = Path(__file__).with_name("wakeup_floor.c")
DEVICE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Floor:
    """One run: the device's writes, CPU and wall time over them, and whether GSO was taken."""

    program: str
    acks: bool
    writes: int
    cpu_ns: int
    wall_ns: int
    gso: bool

    @property
    def percent(self) -> float:
        return 100 * self.cpu_ns / self.wall_ns

    @property
    def us_per_write(self) -> float:
        return self.cpu_ns / 1000 / self.writes


def own_cpu_ns() -> int:
    """This thread's CPU time in ns (/proc/thread-self/schedstat)."""
    return int(Path("/proc/thread-self/schedstat").read_text().split()[0])


def _wall_ns() -> int:
    return time.monotonic_ns()


def gso_send(sock: socket.socket, data: bytes, peer: tuple[str, int], gso: list[bool]) -> None:
    """``data`` as datagrams of ``SEGMENT`` bytes: one GSO ``sendmsg``, or one each where the
    kernel refuses (``gso[0]`` then turns False)."""
    most = SEGMENT * min(64, 65507 // SEGMENT)  # one GSO send: at most 64 segments, 65,507 bytes
    if gso[0] and len(data) > most:  # a read that holds several writes (this process ran late)
        for at in range(0, len(data), most):
            gso_send(sock, data[at : at + most], peer, gso)
        return
    if gso[0]:
        try:
            sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, SEGMENT.to_bytes(2, sys.byteorder))], 0, peer)
            return
        except OSError:
            gso[0] = False
    for at in range(0, len(data), SEGMENT):
        with contextlib.suppress(BlockingIOError):  # a full socket buffer: the datagram is lost
            sock.sendto(data[at : at + SEGMENT], peer)


def drain_udp(sock: socket.socket) -> None:
    """Read until the socket is empty, with the receive stamp, as dvrlinkd does."""
    while True:
        try:
            sock.recvmsg(65536, 64)
        except BlockingIOError:
            return


def device_python(tcp_port: int, udp_port: int) -> tuple[int, int, int, bool]:
    """The bare epoll loop; returns (writes, cpu ns, wall ns, gso)."""
    tcp = socket.create_connection((LOOPBACK, tcp_port))
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    peer = (LOOPBACK, udp_port)
    poll = select.epoll()
    poll.register(tcp.fileno(), select.EPOLLIN)
    poll.register(udp.fileno(), select.EPOLLIN)
    tcp_fd = tcp.fileno()
    gso = [True]
    writes = cpu0 = wall0 = 0
    while True:
        ready = poll.poll(30.0)
        if not ready:
            raise BenchError("the python device heard nothing from the source for 30 s")
        for fd, _ in ready:
            if fd == tcp_fd:
                data = tcp.recv(262144)
                if not data:
                    return writes, own_cpu_ns() - cpu0, _wall_ns() - wall0, gso[0]
                if not writes:
                    cpu0, wall0 = own_cpu_ns(), _wall_ns()
                gso_send(udp, data, peer, gso)
                writes += 1
            else:
                drain_udp(udp)


class _Forward(asyncio.Protocol):
    """asyncio's TCP side: each read goes out at once, in the callback that read it."""

    def __init__(self, udp: socket.socket, peer: tuple[str, int], done: asyncio.Future[None]) -> None:
        self.udp = udp
        self.peer = peer
        self.done = done
        self.gso = [True]
        self.writes = 0
        self.cpu0 = 0
        self.wall0 = 0

    def data_received(self, data: bytes) -> None:
        if not self.writes:
            self.cpu0, self.wall0 = own_cpu_ns(), _wall_ns()
        gso_send(self.udp, data, self.peer, self.gso)
        self.writes += 1

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(None)
        return False


async def _device_asyncio(tcp_port: int, udp_port: int) -> tuple[int, int, int, bool]:
    loop = asyncio.get_running_loop()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    done: asyncio.Future[None] = loop.create_future()
    transport, forward = await loop.create_connection(
        lambda: _Forward(udp, (LOOPBACK, udp_port), done), LOOPBACK, tcp_port
    )
    loop.add_reader(udp.fileno(), drain_udp, udp)
    try:
        await asyncio.wait_for(done, DEVICE_TIMEOUT_S * 10)
    finally:
        loop.remove_reader(udp.fileno())
        transport.close()
    return forward.writes, own_cpu_ns() - forward.cpu0, _wall_ns() - forward.wall0, forward.gso[0]


def serve_device(program: str, tcp_port: int, udp_port: int) -> None:
    """The ``--device`` mode: one device run, its line on stdout (as the C program prints it)."""
    pin_to_core(SERVER_CORE)
    if program == "python":
        writes, cpu, wall, gso = device_python(tcp_port, udp_port)
    else:
        writes, cpu, wall, gso = asyncio.run(_device_asyncio(tcp_port, udp_port))
    print(f"writes {writes} cpu_ns {cpu} wall_ns {wall} gso {int(gso)}", flush=True)


def build_c(directory: Path) -> Path | str:
    """Compile the C device; its path, or why not."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return "no C compiler (cc or gcc) on this machine"
    binary = directory / "wakeup_floor"
    done = subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(C_SOURCE)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return f"{compiler} could not build {C_SOURCE.name}: {done.stderr.strip()[-300:]}"
    return binary


def run_one(program: str, command: list[str], acks: bool, seconds: float) -> Floor:
    """Start the device, stream to it, echo ACKs if asked; its figures."""
    listener = socket.create_server((LOOPBACK, 0))
    viewer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    viewer.bind((LOOPBACK, 0))
    with contextlib.suppress(OSError):  # as the viewer reads: a GSO run in one read, where the kernel can
        viewer.setsockopt(SOL_UDP, UDP_GRO, 1)
    viewer.settimeout(0.5)
    ports = [str(listener.getsockname()[1]), str(viewer.getsockname()[1])]
    pin = (
        ["taskset", "-c", str(SERVER_CORE)]
        if SERVER_CORE in online_cores() and shutil.which("taskset")
        else []
    )
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                _, _, _, address = viewer.recvmsg(65536, 64)
            except TimeoutError:
                continue
            if acks:
                viewer.sendto(ACK, address)

    with subprocess.Popen(pin + command + ports, stdout=subprocess.PIPE, text=True) as device:
        listener.settimeout(DEVICE_TIMEOUT_S)
        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            conn, _ = listener.accept()
            with conn:
                paced_send(conn, RATE_BITS, seconds, stop)
                conn.shutdown(socket.SHUT_WR)
                out, _ = device.communicate(timeout=DEVICE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            device.kill()
            raise BenchError(f"the {program} device did not finish: {exc}") from exc
        finally:
            stop.set()
            thread.join(5)
            listener.close()
            viewer.close()
    fields = out.split()
    if device.returncode != 0 or len(fields) != 8 or fields[0] != "writes":
        raise BenchError(f"the {program} device exited {device.returncode} and printed {out!r}")
    writes, cpu, wall, gso = (int(fields[i]) for i in (1, 3, 5, 7))
    if writes < 2:
        raise BenchError(f"the {program} device saw {writes} writes; the source sent {int(seconds / 0.02)}")
    return Floor(program, acks, writes, cpu, wall, bool(gso))


def run(seconds: float) -> None:
    """The whole benchmark."""
    pin_to_core(GENERATOR_CORE)
    print(
        f"the device side of a {RATE_BITS / 1e6:g} Mbit/s stream ({CHUNK:,} B every "
        f"{CHUNK * 8 / RATE_BITS * 1000:g} ms) with nothing but its system calls, {seconds:g} s per run; "
        f"device on core {SERVER_CORE}, source and viewer on core {GENERATOR_CORE}"
    )
    with tempfile.TemporaryDirectory(prefix="dvrlink-floor-") as tmp:
        built = build_c(Path(tmp))
        programs: list[tuple[str, list[str]]] = []
        if isinstance(built, Path):
            programs.append(("c", [str(built), str(SEGMENT)]))
        else:
            print(f"  c: skipped ({built})")
        device = [sys.executable, "-m", "bench.wakeup_floor", "--device"]
        programs += [("python", [*device, "python"]), ("asyncio", [*device, "asyncio"])]
        floors: list[Floor] = []
        for name, command in programs:
            for acks in (True, False):
                floor = run_one(name, command, acks, seconds)
                floors.append(floor)
                print(
                    f"  {name:<8} {'an ACK per write' if acks else 'no ACKs':<16}: "
                    f"{floor.percent:.2f} % of a core, "
                    f"{floor.us_per_write:.0f} µs per write ({floor.writes} writes, "
                    f"{'GSO' if floor.gso else 'one datagram per send: GSO refused'})"
                )
    under = [
        f"{f.program} ({'ACKs' if f.acks else 'no ACKs'})" for f in floors if f.percent <= TARGET_PERCENT
    ]
    print(
        f"  issue 14's target for dvrlinkd here: {TARGET_PERCENT} % of a core; at or under it: "
        f"{', '.join(under) if under else 'none of these'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description="dvrlinkd's system calls per write, with nothing around them"
    )
    parser.add_argument("--quick", action="store_true", help="3 s per run instead of 20 s")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per run (2-120)")
    parser.add_argument("--device", choices=("python", "asyncio"), help=argparse.SUPPRESS)
    parser.add_argument("ports", nargs="*", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is not None:
        if len(args.ports) != 2:
            parser.error("--device takes the TCP and UDP ports")
        serve_device(args.device, args.ports[0], args.ports[1])
        return 0
    if not 2 <= args.seconds <= 120:
        parser.error("--seconds must be 2-120")
    return run_main(lambda: run(3.0 if args.quick else args.seconds))


if __name__ == "__main__":
    sys.exit(main())
