"""The user-space wire's I/O: hold packets in an ``NFQUEUE`` and let them go after the link's delay.

For kernels without ``sch_netem`` (``CONFIG_NET_SCH_NETEM`` unset), :meth:`hil.netlab.Lab.set_profile`
starts one of these per delayed side in the internet router's namespace and sends the side's
packets to its queue with ``iptables -t mangle ... -j NFQUEUE``: the ``up`` direction from
``PREROUTING -i <router port>``, the ``down`` direction from ``FORWARD``/``OUTPUT -o <router
port>``. The kernel keeps each packet; this process reads its id and size over the
``nfnetlink_queue`` netlink protocol, asks :class:`hil.netlab.wire.Wire` when it is due and then
sends the verdict (accept, or drop for a loss or a full queue). The packets are never copied back,
so checksums, offloads, NAT and conntrack in the other namespaces see exactly what they would
without the wire.

The message layouts are the kernel's UAPI (``linux/netfilter/nfnetlink_queue.h``,
``linux/netfilter/nfnetlink.h``, ``linux/netlink.h``): facts, written here from those headers.

    python -m hil.netlab.wire_nfqueue --queue-num 1 --delay-ms 300 [--up-kbit 40] [--down-kbit 80]
        [--loss-percent 1] [--queue-packets 100] [--seed 1]

It prints ``ready`` on stdout once the queue is bound, and its counters on stderr when it stops
(SIGTERM or SIGINT; it lets the packets it still holds go first).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType

from hil.netlab.profiles import LinkProfile
from hil.netlab.wire import Direction, PacketDropped, Wire, WireEvent

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13
NF_DROP = 0
NF_ACCEPT = 1
NF_INET_PRE_ROUTING = 0
NLA_TYPE_MASK = 0x3FFF
COPY_RANGE = 64
"""Bytes of each packet copied to us: enough for the IP header, which has the packet's length."""
POLL_S = 0.2
"""Longest wait between checks for a stop signal."""

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")


class WireError(RuntimeError):
    """The queue could not be set up; the message says what the kernel answered and what to do."""


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    """One packet the kernel queued to us: its id, the netfilter hook it was queued from, and its
    size in bytes (IP length)."""

    packet_id: int
    hook: int
    size: int


def _attr(kind: int, data: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _message(msg_type: int, flags: int, seq: int, queue_num: int, attrs: bytes) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue_num) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def bind_message(queue_num: int, seq: int) -> bytes:
    """The CONFIG message binding this socket to queue ``queue_num``."""
    command = struct.pack("=BB", NFQNL_CFG_CMD_BIND, 0) + struct.pack(">H", socket.AF_UNSPEC)
    return _message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue_num, _attr(NFQA_CFG_CMD, command))


def params_message(queue_num: int, seq: int, maxlen: int) -> bytes:
    """The CONFIG message asking for the first :data:`COPY_RANGE` bytes of each packet and a kernel
    queue of at most ``maxlen`` packets."""
    attrs = _attr(NFQA_CFG_PARAMS, struct.pack(">IB", COPY_RANGE, NFQNL_COPY_PACKET) + b"\0\0\0")
    attrs += _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", maxlen))
    return _message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue_num, attrs)


def verdict_message(queue_num: int, packet_id: int, verdict: int) -> bytes:
    """The VERDICT message for one packet (``NF_ACCEPT`` or ``NF_DROP``)."""
    attrs = _attr(NFQA_VERDICT_HDR, struct.pack(">II", verdict, packet_id))
    return _message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, queue_num, attrs)


def _attrs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    at = 0
    while at + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, at)
        if length < _NLATTR.size or at + length > len(data):
            break
        found[kind & NLA_TYPE_MASK] = data[at + _NLATTR.size : at + length]
        at += (length + 3) & ~3
    return found


def _ip_length(payload: bytes) -> int | None:
    if len(payload) >= 4 and payload[0] >> 4 == 4:
        return int(struct.unpack_from(">H", payload, 2)[0])
    if len(payload) >= 6 and payload[0] >> 4 == 6:
        return 40 + int(struct.unpack_from(">H", payload, 4)[0])
    return None


def parse(data: bytes) -> Iterator[QueuedPacket | int | None]:
    """The messages in one netlink read: a :class:`QueuedPacket` per queued packet, an int per
    error or acknowledgement (0, or the negative errno the kernel answered), and None for each
    message it could not read (too short, unknown type). Never raises on bad bytes."""
    at = 0
    while at + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, at)
        if length < _NLMSGHDR.size or at + length > len(data):
            yield None
            return
        body = data[at + _NLMSGHDR.size : at + length]
        at += (length + 3) & ~3
        if kind == NLMSG_ERROR and len(body) >= 4:
            yield int(struct.unpack_from("=i", body)[0])
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET and len(body) >= 4:
            attrs = _attrs(body[4:])
            header = attrs.get(NFQA_PACKET_HDR, b"")
            if len(header) < 7:
                yield None
                continue
            packet_id, _proto, hook = struct.unpack_from(">IHB", header)
            payload = attrs.get(NFQA_PAYLOAD, b"")
            cap = attrs.get(NFQA_CAP_LEN, b"")
            size = _ip_length(payload)
            if size is None:
                size = int(struct.unpack(">I", cap)[0]) if len(cap) == 4 else len(payload)
            yield QueuedPacket(packet_id, hook, size)
        elif kind != NLMSG_DONE:
            yield None


def direction_of(hook: int) -> Direction:
    """``up`` for packets queued at PREROUTING (arriving from the side), else ``down``."""
    return "up" if hook == NF_INET_PRE_ROUTING else "down"


class NfqueueWire:
    """One bound queue and the :class:`Wire` that decides its packets' verdicts."""

    def __init__(self, queue_num: int, wire: Wire) -> None:
        self.queue_num = queue_num
        self.wire = wire
        self.unreadable = 0
        """Netlink messages that could not be read (counted, skipped)."""
        self.overruns = 0
        """Times the kernel said our socket buffer overflowed (those packets it dropped)."""
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            self.sock.bind((0, 0))
            self._configure(bind_message(queue_num, 1), "bind")
            maxlen = 2 * wire.profile.queue_packets + 64
            self._configure(params_message(queue_num, 2, maxlen), "set copy mode and length of")
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)

    def _configure(self, message: bytes, what: str) -> None:
        self.sock.send(message)
        self.sock.settimeout(5.0)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise WireError(
                f"no answer from nfnetlink_queue to {what} queue {self.queue_num} in 5 s: "
                "is the kernel built with NETFILTER_NETLINK_QUEUE?"
            ) from None
        for item in parse(data):
            if isinstance(item, int) and item != 0:
                raise WireError(
                    f"could not {what} NFQUEUE {self.queue_num}: {errno.errorcode.get(-item, item)} "
                    "(is another process bound to it? is the kernel built with NETFILTER_NETLINK_QUEUE?)"
                )

    def read(self, now: float) -> None:
        """Take every queued packet the socket holds; drops are answered at once."""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            for item in parse(data):
                if isinstance(item, QueuedPacket):
                    self._answer(self.wire.receive(item.packet_id, direction_of(item.hook), item.size, now))
                elif item is None:
                    self.unreadable += 1

    def release(self, now: float) -> None:
        """Let every packet that is due by ``now`` go."""
        self._answer(self.wire.handle_timer(now))

    def _answer(self, events: list[WireEvent]) -> None:
        for event in events:
            verdict = NF_DROP if isinstance(event, PacketDropped) else NF_ACCEPT
            try:
                self.sock.send(verdict_message(self.queue_num, event.packet_id, verdict))
            except OSError:  # the socket buffer is full: the kernel drops the packet at unbind
                self.overruns += 1

    def run(self, stopped: list[bool]) -> None:
        """Serve until ``stopped[0]`` turns true, then let the held packets go."""
        while not stopped[0]:
            timer = self.wire.get_timer()
            now = time.monotonic()
            wait = POLL_S if timer is None else min(POLL_S, max(0.0, timer - now))
            try:
                readable, _, _ = select.select([self.sock], [], [], wait)
            except InterruptedError:
                continue
            if readable:
                self.read(time.monotonic())
            self.release(time.monotonic())
        self.release(float("inf"))

    def close(self) -> None:
        """Unbind (the kernel drops what is still queued) and close the socket."""
        unbind = struct.pack("=BB", NFQNL_CFG_CMD_UNBIND, 0) + struct.pack(">H", socket.AF_UNSPEC)
        with contextlib.suppress(OSError):
            self.sock.send(
                _message(NFQNL_MSG_CONFIG, NLM_F_REQUEST, 3, self.queue_num, _attr(NFQA_CFG_CMD, unbind))
            )
        self.sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: serve one queue until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="delay, rate-limit and drop the packets of one NFQUEUE")
    parser.add_argument("--queue-num", type=int, required=True, help="the NFQUEUE number (0-65535)")
    parser.add_argument("--delay-ms", type=int, default=0, help="one-way delay per direction, ms")
    parser.add_argument("--up-kbit", type=int, default=None, help="up rate (PREROUTING), kbit/s")
    parser.add_argument("--down-kbit", type=int, default=None, help="down rate, kbit/s")
    parser.add_argument("--loss-percent", type=float, default=0.0, help="random loss per direction")
    parser.add_argument("--queue-packets", type=int, default=100, help="packets held at most per direction")
    parser.add_argument("--seed", type=int, default=None, help="seed for the losses")
    args = parser.parse_args(argv)
    if not 0 <= args.queue_num <= 65535 or args.delay_ms < 0 or args.queue_packets < 1:
        parser.error("--queue-num must be 0-65535, --delay-ms at least 0, --queue-packets at least 1")
    link = LinkProfile(
        f"queue-{args.queue_num}", args.delay_ms, args.up_kbit, args.down_kbit, args.loss_percent,
        args.queue_packets,
    )  # fmt: skip
    stopped = [False]

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopped[0] = True

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(OSError):  # a link's timing should not wait behind a busy machine's jobs
        os.nice(-10)
    signal.signal(signal.SIGINT, stop)
    try:
        queue = NfqueueWire(args.queue_num, Wire(link, random.Random(args.seed)))
    except (WireError, OSError) as exc:
        print(f"wire: {exc}", file=sys.stderr)
        return 1
    print("ready", flush=True)
    try:
        queue.run(stopped)
    finally:
        queue.close()
        c = queue.wire.counters
        print(
            f"wire queue {args.queue_num}: {c.received} packets, {c.released} passed, {c.lost} lost, "
            f"{c.queue_full} dropped on a full queue, {queue.overruns} overruns, "
            f"{queue.unreadable} unreadable",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
