"""The UDP side of the data plane's fast path: a run of datagrams to one address in one
``sendmsg`` (UDP generic segmentation offload, ``UDP_SEGMENT``, Linux 4.18 and later), their
arrival as one buffer per read where the kernel coalesced them (``GroReceiver``, ``UDP_GRO``,
Linux 5.0 and later), and the don't-fragment setting that path MTU probes need
(``probe_path_mtu``).

A pump of the data plane hands over the datagrams of a video frame or a window's worth of a
forward at once, nearly all of them full-sized. The kernel cuts one buffer into equal segments
(the last may be shorter), so one system call does the work of up to ``MAX_SEGMENTS``
``sendto`` calls. ``bench.udp_batching`` measured 0.99 µs per datagram with ``sendto`` against
0.33 µs in runs of 16-44 on x86-64, and 66 against 11-16 µs in the armhf guest.

Where the kernel or the interface refuses (``EIO`` where the device cannot checksum the
segments, ``EINVAL``/``ENOPROTOOPT`` on an old kernel), the sender says so once in the log
and sends each datagram on its own from then on.

On the receiving side a socket with ``UDP_GRO`` set gets a GSO sender's run (over loopback, or
merged by the network card's GRO) as one buffer and its segment size in a control message;
``GroReceiver`` cuts it back into the datagrams. ``bench.udp_batching`` measured 0.07 µs per
datagram read that way against 0.44 µs with one ``recv`` each (6.2 against 38.9 µs in the armhf
guest). A datagram that was not coalesced arrives alone, as before.

A socket read one datagram at a time (a recorder's: it mostly sends, and reads ACKs) can carry
each datagram's arrival time instead (``StampedReceiver``, ``SO_TIMESTAMPNS``): the kernel stamps
it when it arrives, so an ACK that waited in the socket while this process was busy sending
still gives the data plane the path's round trip, not the path's plus the process's backlog
(``DataplaneConnection.receive_datagram``'s ``arrived``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence

from dvrlink.compat import asyncio_compat

SOL_UDP = 17
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
"""``linux/udp.h``; Python names it only from 3.12 on some builds."""
UDP_GRO = getattr(socket, "UDP_GRO", 104)
"""``linux/udp.h``: deliver coalesced datagrams with their segment size."""
GRO_BUFFER = 65_535
"""The largest buffer a coalesced read returns (one IP packet's worth)."""
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
"""Room for the segment size (an ``int``) that comes with a coalesced buffer."""
MAX_SEGMENTS = 64
"""The kernel's ``UDP_MAX_SEGMENTS``."""
MAX_BYTES = 65_000
"""Below the 65,507 bytes of one UDP payload, which the whole run must fit."""
REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
"""What a kernel or device without GSO answers."""

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""``asm-generic/socket.h``'s ``SO_TIMESTAMPNS_OLD`` (the same number on x86 and Arm); Python
names it only on some builds."""
SO_TIMESTAMPNS_NEW = 64
"""What a 32-bit C library built with 64-bit ``time_t`` asks for instead (a 16-byte stamp)."""
STAMP_CMSG_SPACE = socket.CMSG_SPACE(16)
"""Room for a ``struct timespec`` of either width."""
_STAMP_KINDS = (SO_TIMESTAMPNS, SO_TIMESTAMPNS_NEW)
_WIDE = struct.Struct("=qq")
_NARROW = struct.Struct("=ll")

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)
"""``linux/in.h`` / ``linux/in6.h``: set DF, ignore the kernel's path MTU cache."""

log = logging.getLogger(__name__)


def probe_path_mtu(transport: asyncio.BaseTransport) -> bool:
    """Have ``transport``'s UDP socket send every datagram with DF set and never fragment it
    (``IP_PMTUDISC_PROBE``), so that a data plane probe larger than the path is lost rather
    than cut in two: the probe then finds what the path carries. Where the option is missing
    (not Linux), False: the data plane then keeps its base size (the session asks nothing
    larger of such a socket). Never raises."""
    sock = transport.get_extra_info("socket")
    if sock is None or sys.platform != "linux":
        return False
    six = sock.family == socket.AF_INET6
    try:
        sock.setsockopt(
            socket.IPPROTO_IPV6 if six else socket.IPPROTO_IP,
            IPV6_MTU_DISCOVER if six else IP_MTU_DISCOVER,
            PMTUDISC_PROBE,
        )
    except OSError as exc:
        log.info("no don't-fragment on %s (%s): the data plane keeps its base datagram size", sock, exc)
        return False
    return True


class GsoSender:
    """Sends runs of datagrams on one asyncio datagram transport; see the module docstring."""

    def __init__(self, transport: asyncio.DatagramTransport) -> None:
        self.transport = transport
        """The transport this sends on (a new one needs a new sender)."""
        self._sock = asyncio_compat.datagram_socket(transport) if sys.platform == "linux" else None
        self._queued: Callable[[], int] = getattr(transport, "get_write_buffer_size", lambda: 0)
        """Bytes asyncio's transport holds back (the socket was full); typeshed's
        ``DatagramTransport`` does not declare the method its selector transport has."""
        self.enabled = self._sock is not None
        """False once GSO was refused (or where there is none): every datagram goes alone."""
        self.sendmsg_calls = 0
        """``sendmsg`` calls that carried a run (for tests and benchmarks)."""

    def send(self, datagrams: Sequence[bytes], addr: tuple[str, int]) -> int:
        """Send ``datagrams`` to ``addr`` in order: runs of equal size (and a shorter last one)
        in one call each, the rest alone; returns their bytes (for the caller's counters).
        Never raises: a datagram network is lossy."""
        count = len(datagrams)
        if count < 2 or not self.enabled or self._queued():
            return self._send_each(datagrams, addr)
        total = 0
        start = 0
        while start < count:
            size = len(datagrams[start])
            end = start + 1
            limit = min(count, start + MAX_SEGMENTS, start + MAX_BYTES // max(size, 1))
            while end < limit and len(datagrams[end]) == size:
                end += 1
            if end < limit and len(datagrams[end]) < size:
                end += 1  # a shorter segment may end the run
            if end - start == 1 or not self._send_run(datagrams[start:end], size, addr):
                self._send_each(datagrams[start:end], addr)
            total += size * (end - start - 1) + len(datagrams[end - 1])
            start = end
        return total

    def _send_each(self, datagrams: Sequence[bytes], addr: tuple[str, int]) -> int:
        """One ``sendto`` per datagram, on the socket itself while asyncio's transport holds
        nothing back: its ``sendto`` adds checks and calls that cost more than the system call
        on a slow core (the path of every ACK, and of every datagram where a network card
        without checksum offload makes the kernel refuse GSO). When the socket is full, the
        rest go through the transport, which queues them in order and waits for room."""
        transport = self.transport
        sock = self._sock
        total = 0
        if sock is None or self._queued():
            # a queue in asyncio's transport (the socket was full) must drain first, in order
            for data in datagrams:
                transport.sendto(data, addr)
                total += len(data)
            return total
        sendto = sock.sendto
        for index, data in enumerate(datagrams):
            try:
                total += sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                for rest in datagrams[index:]:
                    transport.sendto(rest, addr)
                    total += len(rest)
                return total
            except OSError as exc:
                log.debug("sendto %s failed: %s", addr, exc)  # lost, as a datagram may be; recovery resends
                total += len(data)
        return total

    def _send_run(self, run: Sequence[bytes], size: int, addr: tuple[str, int]) -> bool:
        sock = self._sock
        if sock is None or not self.enabled:
            return False
        try:
            sock.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, addr)
        except (BlockingIOError, InterruptedError):
            return False  # asyncio's transport queues them and waits for room
        except OSError as exc:
            if exc.errno in REFUSED:
                self.enabled = False
                log.info("UDP GSO refused on this socket (%s): sending datagrams one by one", exc)
                return False
            log.debug("sendmsg of %d datagrams to %s failed: %s", len(run), addr, exc)
            return True  # as sendto's errors: lost datagrams, which recovery resends
        self.sendmsg_calls += 1
        return True


class GroReceiver:
    """Reads one UDP socket with ``UDP_GRO`` set: each ``read`` returns the datagrams of one
    buffer (a coalesced run cut at its segment size, or one datagram) and the sender's address.
    See the module docstring."""

    __slots__ = ("_recvmsg", "reads")

    def __init__(self, sock: socket.socket) -> None:
        """Set ``UDP_GRO`` on ``sock``.

        Raises:
            OSError: the kernel has no UDP GRO (before Linux 5.0) or the socket is not UDP; read
                the socket one datagram at a time instead.
        """
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        self._recvmsg = sock.recvmsg
        self.reads = 0
        """Reads that returned a coalesced buffer of more than one datagram (for tests)."""

    def read(self) -> tuple[list[bytes], object]:
        """The next buffer's datagrams and sender; raises what ``recvmsg`` raises
        (``BlockingIOError`` when nothing is waiting)."""
        data, ancillary, _flags, addr = self._recvmsg(GRO_BUFFER, GRO_CMSG_SPACE)
        for level, kind, value in ancillary:
            if level == SOL_UDP and kind == UDP_GRO and len(value) >= 2:
                size = int.from_bytes(value[:4] if len(value) >= 4 else value[:2], sys.byteorder)
                if 0 < size < len(data):
                    self.reads += 1
                    return [data[start : start + size] for start in range(0, len(data), size)], addr
        return [data], addr


class StampedReceiver:
    """Reads one UDP socket one datagram at a time with the kernel's arrival stamp
    (``SO_TIMESTAMPNS``): after each ``read``, ``arrival`` is when that datagram reached the
    socket, on ``time.monotonic``'s clock (the event loop's), or None where it came without a
    stamp. See the module docstring."""

    __slots__ = ("_recvmsg", "_size", "arrival")

    def __init__(self, sock: socket.socket, size: int) -> None:
        """Ask the kernel to stamp ``sock``'s datagrams; ``size``: the largest datagram read.

        Raises:
            OSError: the socket or the platform has no ``SO_TIMESTAMPNS``; read the socket
                without stamps instead.
        """
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._recvmsg = sock.recvmsg
        self._size = size
        self.arrival: float | None = None

    def read(self) -> tuple[list[bytes], object]:
        """The next datagram (alone in the list) and its sender, setting ``arrival``; raises
        what ``recvmsg`` raises (``BlockingIOError`` when nothing is waiting)."""
        data, ancillary, _flags, addr = self._recvmsg(self._size, STAMP_CMSG_SPACE)
        arrival = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind in _STAMP_KINDS:
                if len(value) >= 16:
                    seconds, nanoseconds = _WIDE.unpack_from(value)
                elif len(value) >= 8:
                    seconds, nanoseconds = _NARROW.unpack_from(value)
                else:
                    break
                # the stamp is on the wall clock: its age, taken from the monotonic clock now
                arrival = time.monotonic() - (time.time() - (seconds + nanoseconds * 1e-9))
        self.arrival = arrival
        return [data], addr


def _linux_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """The socket of ``transport`` to set Linux socket options on, or None off Linux or where
    the loop keeps no socket object."""
    if sys.platform != "linux":
        return None
    return asyncio_compat.datagram_socket(transport)


def stamped_receiver(transport: asyncio.BaseTransport, size: int) -> StampedReceiver | None:
    """A ``StampedReceiver`` on ``transport``'s socket, or None where the loop, the platform or
    the kernel has no stamps (the socket is then read without them). Never raises."""
    sock = _linux_socket(transport)
    if sock is None:
        return None
    try:
        return StampedReceiver(sock, size)
    except OSError as exc:
        log.info("no receive stamps on %s (%s): RTT samples end when a datagram is read", sock, exc)
        return None


def gro_receiver(transport: asyncio.BaseTransport) -> GroReceiver | None:
    """A ``GroReceiver`` on ``transport``'s socket, or None where the loop, the platform or the
    kernel has none (the socket is then read one datagram at a time). Never raises."""
    sock = _linux_socket(transport)
    if sock is None:
        return None
    try:
        return GroReceiver(sock)
    except OSError as exc:
        log.info("no UDP GRO on %s (%s): datagrams are read one at a time", sock, exc)
        return None
