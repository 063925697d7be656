"""What one 1200-byte datagram costs from Python, alone and in batches: the numbers for the data
plane's driver design (issue 14).

    python -m bench.udp_batching [--quick] [--count N]

Over loopback (127.0.0.1) only, with bounded counts. It prints µs per 1200-byte datagram for:

a. one ``sendto`` per datagram;
b. ``sendmsg`` with UDP GSO: one buffer of k segments and a ``SOL_UDP``/``UDP_SEGMENT`` cmsg with
   the segment size, for k = 8, 16 and 44 (44 x 1200 B stays under the 64 KB a UDP send may carry);
c. receiving: one ``recv_into`` per datagram, against ``UDP_GRO`` on the socket with ``recvmsg``
   reading coalesced buffers and the ``gso_size`` cmsg. Loopback has no GRO engine, so the receive
   side coalesces only what a GSO sender sent as one buffer: both senders are tried, and the
   segments per read are printed;
d. ``ChaCha20Poly1305.encrypt`` of 1173 bytes (a 1200-byte datagram less an 11-byte header and the
   16-byte tag) through cryptography.

The kernel's support is probed first (a GSO send to a socket of our own; ``UDP_GRO`` set and read
back); where it is missing the benchmark says so and skips those rows. Timed sends go in chunks
that fit the receiver's buffer, which is drained between chunks outside the timing, so no row
measures the kernel dropping datagrams. The module needs only the standard library and
cryptography, so it can run as a file under another interpreter (the QEMU guest's python3).
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

try:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
except ImportError:  # the row says so; the socket rows still run
    ChaCha20Poly1305 = None  # type: ignore[assignment,misc]

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
"""Linux's socket option (include/uapi/linux/udp.h) and cmsg type for UDP GSO, since 4.18."""
UDP_GRO = getattr(socket, "UDP_GRO", 104)
"""Linux's socket option for UDP GRO on a socket, since 5.0; the cmsg carries the gso_size."""
SO_RCVBUFFORCE = 33
"""Linux: SO_RCVBUF beyond net.core.rmem_max, for CAP_NET_ADMIN (root)."""
DATAGRAM = 1200
PLAINTEXT = 1173
GSO_BATCHES = (8, 16, 44)
CHUNK = 352
"""Datagrams per timed chunk: a multiple of every GSO batch size (8, 16, 44), and well within a
4 MB receive buffer (each 1200-byte datagram takes about 2.3 KB of it on loopback)."""
RCVBUF = 4 << 20
ROUNDS = 3
"""Each row is measured this many times and the best is printed (the machine may be busy)."""


@dataclass(frozen=True, slots=True, order=True)
class Cost:
    """µs per datagram: CPU time of the measuring thread (system time included, so the kernel's
    work done in the call counts; loopback delivery finished later in a softirq thread does not),
    and wall time, which other processes on a busy machine stretch. Ordered by CPU."""

    cpu_us: float
    wall_us: float

    def __str__(self) -> str:
        return f"{self.cpu_us:.2f} µs CPU ({self.wall_us:.2f} µs wall)"


@dataclass(slots=True)
class Stopwatch:
    """CPU (this thread) and wall seconds, summed over the stretches between start and stop."""

    cpu: float = 0.0
    wall: float = 0.0
    cpu0: float = 0.0
    wall0: float = 0.0

    def start(self) -> None:
        self.cpu0, self.wall0 = time.thread_time(), time.perf_counter()

    def stop(self) -> None:
        self.cpu += time.thread_time() - self.cpu0
        self.wall += time.perf_counter() - self.wall0

    def per(self, count: int) -> Cost:
        """The totals per one of ``count`` datagrams, in µs."""
        return Cost(self.cpu / count * 1e6, self.wall / count * 1e6)


@dataclass(frozen=True, slots=True)
class Support:
    """What the kernel offers, as probed."""

    gso: bool
    gso_note: str
    gro: bool
    gro_note: str


def pair() -> tuple[socket.socket, socket.socket]:
    """A bound receiver (large buffer, non-blocking) and a sender connected to it, on loopback."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    try:
        receiver.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return receiver, sender


def drain(receiver: socket.socket, buffer: bytearray) -> int:
    """Read everything queued on ``receiver``; returns the bytes read."""
    total = 0
    while True:
        try:
            total += receiver.recv_into(buffer)
        except BlockingIOError:
            return total


def gso_cmsg(size: int) -> list[tuple[int, int, bytes]]:
    """The ancillary data that makes one send carry segments of ``size`` bytes."""
    return [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]


def probe() -> Support:
    """Try a GSO send of 2 segments and UDP_GRO on a socket; never raises."""
    receiver, sender = pair()
    buffer = bytearray(65536)
    try:
        try:
            sender.sendmsg([bytes(2 * DATAGRAM)], gso_cmsg(DATAGRAM))
            deadline = time.monotonic() + 2.0
            sizes: list[int] = []
            while len(sizes) < 2 and time.monotonic() < deadline:
                try:
                    sizes.append(receiver.recv_into(buffer))
                except BlockingIOError:
                    time.sleep(0.001)
            gso = sizes == [DATAGRAM, DATAGRAM]
            gso_note = "UDP_SEGMENT works" if gso else f"a 2-segment GSO send arrived as {sizes}"
        except OSError as exc:
            gso, gso_note = False, f"UDP_SEGMENT refused: {exc}"
        try:
            receiver.setsockopt(SOL_UDP, UDP_GRO, 1)
            gro = receiver.getsockopt(SOL_UDP, UDP_GRO) == 1
            gro_note = "UDP_GRO set" if gro else "UDP_GRO did not stick"
        except OSError as exc:
            gro, gro_note = False, f"UDP_GRO refused: {exc}"
    finally:
        receiver.close()
        sender.close()
    return Support(gso, gso_note, gro, gro_note)


def best(measure: Callable[[], Cost]) -> Cost:
    """The lowest of ``ROUNDS`` runs of ``measure``."""
    return min(measure() for _ in range(ROUNDS))


def timed_send(count: int, send_chunk: Callable[[socket.socket, int], None]) -> Cost:
    """µs per datagram to send ``count`` datagrams in chunks of ``CHUNK`` with ``send_chunk``.

    Raises:
        OSError: not every byte sent arrived (the receiver's buffer overflowed).
    """
    receiver, sender = pair()
    buffer = bytearray(65536)
    watch = Stopwatch()
    chunks = max(1, count // CHUNK)
    delivered = 0
    try:
        for _ in range(chunks):
            watch.start()
            send_chunk(sender, CHUNK)
            watch.stop()
            delivered += drain(receiver, buffer)
        expected = chunks * CHUNK * DATAGRAM
        deadline = time.monotonic() + 5.0  # the kernel may still hold a few in its backlog
        while delivered < expected and time.monotonic() < deadline:
            select.select([receiver], [], [], 0.1)
            delivered += drain(receiver, buffer)
    finally:
        receiver.close()
        sender.close()
    if delivered != expected:
        raise OSError(f"{delivered} of {expected} bytes sent over loopback arrived within 5 s")
    return watch.per(chunks * CHUNK)


def send_each(sender: socket.socket, n: int) -> None:
    """``n`` datagrams, one ``send`` each (connected ``sendto``)."""
    payload = bytes(DATAGRAM)
    send = sender.send
    for _ in range(n):
        send(payload)


def send_gso(k: int) -> Callable[[socket.socket, int], None]:
    """``n`` datagrams as ``n / k`` GSO sends of ``k`` segments."""
    payload = [bytes(k * DATAGRAM)]
    cmsg = gso_cmsg(DATAGRAM)

    def send_chunk(sender: socket.socket, n: int) -> None:
        sendmsg = sender.sendmsg
        for _ in range(n // k):
            sendmsg(payload, cmsg)

    return send_chunk


def timed_receive(count: int, gro: bool, gso_batch: int) -> tuple[Cost, float]:
    """(µs per datagram, datagrams per read) to read ``count`` datagrams queued in chunks.

    The sender (not timed) sends singly (``gso_batch`` 1) or in GSO buffers of ``gso_batch``
    segments. The reader uses ``recv_into`` per read, or with ``gro`` ``recvmsg_into`` and the
    UDP_GRO cmsg, counting ``nbytes // gso_size`` datagrams per coalesced read.
    """
    receiver, sender = pair()
    if gro:
        receiver.setsockopt(SOL_UDP, UDP_GRO, 1)
    fill = send_each if gso_batch == 1 else send_gso(gso_batch)
    buffer = bytearray(65536)
    buffers = [buffer]
    space = socket.CMSG_SPACE(4)
    watch, reads, got = Stopwatch(), 0, 0
    try:
        for _ in range(max(1, count // CHUNK)):
            fill(sender, CHUNK)
            watch.start()
            if gro:
                recvmsg_into = receiver.recvmsg_into
                while True:
                    try:
                        nbytes, ancdata, _flags, _addr = recvmsg_into(buffers, space)
                    except BlockingIOError:
                        break
                    reads += 1
                    size = nbytes
                    for level, kind, data in ancdata:
                        if level == SOL_UDP and kind == UDP_GRO:
                            size = int.from_bytes(data[:4], sys.byteorder) or nbytes
                    got += -(-nbytes // size)
            else:
                recv_into = receiver.recv_into
                while True:
                    try:
                        recv_into(buffer)
                    except BlockingIOError:
                        break
                    reads += 1
                    got += 1
            watch.stop()
    finally:
        receiver.close()
        sender.close()
    if got == 0:
        raise OSError(f"no datagram arrived on {receiver.getsockname()} in the receive row")
    return watch.per(got), got / max(1, reads)


def aead_us(count: int) -> Cost | None:
    """µs per ``ChaCha20Poly1305.encrypt`` of ``PLAINTEXT`` bytes; None without cryptography."""
    if ChaCha20Poly1305 is None:
        return None
    aead = ChaCha20Poly1305(os.urandom(32))
    message = os.urandom(PLAINTEXT)
    header = os.urandom(11)
    encrypt = aead.encrypt
    nonce = bytes(12)
    watch = Stopwatch()
    watch.start()
    for _ in range(count):
        encrypt(nonce, message, header)
    watch.stop()
    return watch.per(count)


def run(count: int) -> None:
    """Probe, measure, print."""
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"udp_batching: {count} datagrams of {DATAGRAM} B per row over loopback, best of {ROUNDS}; "
        f"{started}\n"
        f"  {platform.system()} {platform.release()} {platform.machine()}, Python {platform.python_version()}"
    )
    support = probe()
    print(f"  kernel: GSO {'yes' if support.gso else 'NO'} ({support.gso_note}); "
          f"GRO {'yes' if support.gro else 'NO'} ({support.gro_note})")  # fmt: skip
    single = best(lambda: timed_send(count, send_each))
    print(f"  a. send, one sendto per datagram: {single} per datagram")
    for k in GSO_BATCHES:
        if support.gso:
            us = best(lambda: timed_send(count, send_gso(k)))  # noqa: B023 (called at once)
            print(f"  b. sendmsg UDP_SEGMENT, {k} segments per send: {us} per datagram "
                  f"({single.cpu_us / us.cpu_us:.1f}x less CPU than a)")  # fmt: skip
        else:
            print(f"  b. sendmsg UDP_SEGMENT, {k} segments per send: not measured (no GSO)")
    plain, _ = min(timed_receive(count, gro=False, gso_batch=1) for _ in range(ROUNDS))
    print(f"  c. receive, one recv_into per datagram: {plain} per datagram")
    if support.gro:
        for batch, sender_kind in ((1, "one sendto per datagram"), (44, "GSO sends of 44")):
            if batch > 1 and not support.gso:
                continue
            us, per_read = min(timed_receive(count, gro=True, gso_batch=batch) for _ in range(ROUNDS))
            print(f"  c. receive, UDP_GRO + recvmsg_into, sender {sender_kind}: {us} per "
                  f"datagram, {per_read:.1f} datagrams per read")  # fmt: skip
    else:
        print("  c. receive with UDP_GRO: not measured (no GRO)")
    runs = [aead_us(count) for _ in range(ROUNDS)]
    sealed = min((cost for cost in runs if cost is not None), default=None)
    if sealed is None:
        print(f"  d. ChaCha20Poly1305.encrypt of {PLAINTEXT} B: cryptography is not installed")
    else:
        print(f"  d. ChaCha20Poly1305.encrypt of {PLAINTEXT} B (cryptography): {sealed} per datagram")


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, checked."""

    count: int


def parse(argv: Sequence[str] | None) -> Options:
    """``--quick`` (2,112 datagrams per row) or ``--count N`` (default 21,120)."""
    parser = argparse.ArgumentParser(description="µs per 1200-byte datagram: sendto, GSO, GRO, AEAD")
    parser.add_argument("--quick", action="store_true", help="2,112 datagrams per row")
    parser.add_argument("--count", type=int, default=None, help="datagrams per row (352-1,000,000)")
    args = parser.parse_args(argv)
    count = args.count if args.count is not None else (6 * CHUNK if args.quick else 60 * CHUNK)
    if not CHUNK <= count <= 1_000_000:
        parser.error(f"--count must be {CHUNK}-1,000,000")
    return Options(count)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    options = parse(argv)
    try:
        run(options.count)
    except OSError as exc:
        print(f"error: a loopback UDP socket failed: {exc}; check that 127.0.0.1 is up", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
