"""``session.gso.GsoSender``: runs of datagrams leave in one ``sendmsg`` with ``UDP_SEGMENT``
and arrive as the same datagrams, in order, over real loopback sockets; where the kernel refuses
GSO (here: a socket with ``SO_NO_CHECK``, which Linux will not segment) every datagram still
arrives, each on its own, and the sender stops trying. ``GroReceiver`` reads such a run back as
one coalesced buffer and cuts it into the same datagrams, alone and under the batch reader.
Linux only (the daemon's platform)."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import pytest
from pytest_mock import MockerFixture

from dvrlink.compat import asyncio_compat
from dvrlink.session.gso import MAX_BYTES, MAX_SEGMENTS, GroReceiver, GsoSender, StampedReceiver, gro_receiver

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="UDP GSO is Linux's")

LOOPBACK = "127.0.0.1"
BOUND_S = 30.0
SO_NO_CHECK = getattr(socket, "SO_NO_CHECK", 11)


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), BOUND_S)

    asyncio.run(bounded())


def receive(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` datagrams from a blocking socket with a timeout (the sender already sent)."""
    sock.settimeout(BOUND_S)
    return [sock.recv(65536) for _ in range(count)]


def datagrams(sizes: list[int]) -> list[bytes]:
    return [bytes([index % 251]) * size for index, size in enumerate(sizes)]


async def endpoint() -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(LOOPBACK, 0))
    return transport


def loopback_receiver() -> socket.socket:
    """A UDP socket on loopback with room for a burst (use it with ``with``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    return sock


def test_runs_of_equal_datagrams_leave_in_one_call_each_and_arrive_in_order(mocker: MockerFixture) -> None:
    async def main() -> None:
        transport = await endpoint()
        with loopback_receiver() as receiver:
            sender = GsoSender(transport)
            runs = mocker.spy(sender, "_send_run")
            # 70 full ones (more than a run may hold) and a short last one, then a lone small one
            sizes = [1200] * 70 + [300, 80]
            sent = datagrams(sizes)
            handed = sender.send(sent, receiver.getsockname())
            got = receive(receiver, len(sent))
            transport.close()
        assert [len(d) for d in got] == sizes, [len(d) for d in got]
        assert got == sent, "a datagram arrived changed or out of order"
        assert sender.enabled, "GSO was refused on loopback"
        lengths = [len(call.args[0]) for call in runs.call_args_list]
        per_run = min(MAX_SEGMENTS, MAX_BYTES // 1200)
        assert lengths == [per_run, 70 - per_run + 1], lengths  # the 300-byte one ends run 2
        assert sender.sendmsg_calls == 2, sender.sendmsg_calls
        assert handed == sum(sizes), f"send counted {handed} bytes for {sum(sizes)}"

    run(main)


def test_a_lone_datagram_goes_on_the_socket_itself_not_through_asyncio(mocker: MockerFixture) -> None:
    """Each ACK is a lone datagram: ``send`` of one (a tuple or a list) puts it on the socket
    (asyncio's ``sendto`` costs more than the system call on a slow core), and it arrives."""

    async def main() -> None:
        transport = await endpoint()
        with loopback_receiver() as receiver:
            sender = GsoSender(transport)
            through_asyncio = mocker.spy(transport, "sendto")
            sender.send((b"ack-1",), receiver.getsockname())
            handed = sender.send([b"ack-22"], receiver.getsockname())
            got = receive(receiver, 2)
            transport.close()
        assert got == [b"ack-1", b"ack-22"]
        assert handed == 6
        assert through_asyncio.call_count == 0, f"{through_asyncio.call_count} went through asyncio's sendto"

    run(main)


def test_a_refused_gso_send_falls_back_to_one_datagram_at_a_time(mocker: MockerFixture) -> None:
    async def main() -> None:
        transport = await endpoint()
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
            receiver.bind((LOOPBACK, 0))
            sender = GsoSender(transport)
            sendto = mocker.spy(transport, "sendto")
            first, second = datagrams([1000] * 5), datagrams([900] * 4)
            sender.send(first, receiver.getsockname())
            assert not sender.enabled, "the kernel segmented a SO_NO_CHECK socket's run"
            sender.send(second, receiver.getsockname())
            got = receive(receiver, 9)
            transport.close()
        assert got == first + second, [len(d) for d in got]
        assert sender.sendmsg_calls == 0, sender.sendmsg_calls
        # one sendto each on the socket itself: asyncio's transport only queues when it is full
        assert sendto.call_count == 0, f"{sendto.call_count} datagrams went through asyncio's sendto"

    run(main)


def test_a_gro_socket_reads_a_coalesced_run_back_as_the_same_datagrams() -> None:
    async def main() -> None:
        transport = await endpoint()
        with loopback_receiver() as sock:
            receiver = GroReceiver(sock)
            sender = GsoSender(transport)
            # two runs (the second ends short), then a datagram alone
            sizes = [1200] * 30 + [1000] * 9 + [333] + [77]
            sent = datagrams(sizes)
            sender.send(sent, sock.getsockname())
            sock.settimeout(BOUND_S)
            got: list[bytes] = []
            buffers = 0
            while len(got) < len(sent):
                chunk, addr = receiver.read()
                assert addr == transport.get_extra_info("sockname"), addr
                got += chunk
                buffers += 1
            transport.close()
        assert got == sent, [len(d) for d in got]
        assert receiver.reads == 2 and buffers == 3, (receiver.reads, buffers)

    run(main)


def wait_for_arrival_stamps(receiver: StampedReceiver, sock: socket.socket, sender: socket.socket) -> None:
    """Return once the kernel stamps datagrams when they arrive. The first socket that asks for
    stamps turns them on for the whole kernel through deferred work (a static key): until that
    has run, a datagram is stamped when it is read. Probes: a datagram left 20 ms in the socket
    must carry a stamp from before the wait (at most 100 probes)."""
    for _ in range(100):
        sent = time.monotonic()
        sender.sendto(b"probe", sock.getsockname())
        time.sleep(0.02)  # the stimulus: the probe waits in the socket
        receiver.read()
        if receiver.arrival is not None and receiver.arrival < sent + 0.01:
            return
    raise AssertionError(f"datagrams were still stamped when read after 100 probes (last {receiver.arrival})")


def test_a_stamped_socket_tells_when_each_datagram_arrived_not_when_it_was_read() -> None:
    """The first datagram sits in the socket for 0.3 s before it is read, as an ACK does while a
    recorder is busy sending: its arrival is when it was sent (loopback delivers at once), on
    the monotonic clock, not when it was read."""
    with loopback_receiver() as sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver = StampedReceiver(sock, 2048)
        sock.settimeout(BOUND_S)
        wait_for_arrival_stamps(receiver, sock, sender)
        before_first = time.monotonic()
        sender.sendto(b"first", sock.getsockname())
        after_first = time.monotonic()
        time.sleep(0.3)  # the stimulus: a read that comes late
        before_second = time.monotonic()
        sender.sendto(b"second", sock.getsockname())
        sock.settimeout(BOUND_S)
        first, first_addr = receiver.read()
        first_arrival = receiver.arrival
        second, _ = receiver.read()
        second_arrival = receiver.arrival
        read_at = time.monotonic()
        sender_addr = sender.getsockname()
    assert (first, second) == ([b"first"], [b"second"])
    assert first_addr[1] == sender_addr[1]
    assert first_arrival is not None and second_arrival is not None, "no SO_TIMESTAMPNS stamp came"
    slack = 0.05  # the wall and monotonic clocks are read a moment apart
    assert before_first - slack <= first_arrival <= after_first + slack, (
        before_first,
        first_arrival,
        after_first,
    )
    assert second_arrival >= before_second - slack, (second_arrival, before_second)
    waited = read_at - first_arrival
    assert waited >= 0.3 - slack, f"the first datagram's stamp is its read: it waited {waited} s"


class Collect(asyncio.DatagramProtocol):
    """Keeps what the batch reader hands on, and how many datagrams each wake-up brought; sets
    ``enough`` once ``want`` arrived."""

    def __init__(self, want: int) -> None:
        self.got: list[bytes] = []
        self.per_wake_up: list[int] = []
        self.want = want
        self.enough = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.got.append(data)

    def wake_up_done(self) -> None:
        self.per_wake_up.append(len(self.got) - sum(self.per_wake_up))
        if len(self.got) >= self.want:
            self.enough.set()


async def gro_endpoint(collect: Collect) -> tuple[asyncio.DatagramTransport, GroReceiver]:
    """A loopback endpoint for ``collect`` with UDP GRO set."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: collect, local_addr=(LOOPBACK, 0))
    receiver = gro_receiver(transport)
    assert receiver is not None, "no UDP GRO here"
    return transport, receiver


def test_the_batch_reader_hands_on_each_datagram_of_a_coalesced_read_in_order() -> None:
    """The daemon's path: ``batch_datagram_reads`` with a ``GroReceiver``, from a GSO sender."""

    async def main() -> None:
        sent = datagrams([1300] * 45 + [50])
        collect = Collect(len(sent))
        transport, receiver = await gro_endpoint(collect)
        reads: list[int] = []

        def read() -> tuple[list[bytes], object]:
            datagrams, addr = receiver.read()
            reads.append(len(datagrams))
            return datagrams, addr

        assert asyncio_compat.batch_datagram_reads(
            transport, collect, 64, 65536, after=collect.wake_up_done, read_many=read
        )
        sender_transport = await endpoint()
        GsoSender(sender_transport).send(sent, transport.get_extra_info("sockname"))
        await asyncio.wait_for(collect.enough.wait(), BOUND_S)
        transport.close()
        sender_transport.close()
        assert collect.got == sent, [len(d) for d in collect.got]
        assert receiver.reads >= 1 and len(reads) < len(sent), reads

    run(main)


def test_a_wake_up_stops_reading_coalesced_runs_once_it_has_a_batch_of_datagrams() -> None:
    """``batch`` counts datagrams, not reads: a coalesced read can bring 44, and a wake-up that
    took 64 reads of them would hold the session's answer (its ACKs, its window updates) back
    for thousands of datagrams."""

    async def main() -> None:
        collect = Collect(60)
        transport, receiver = await gro_endpoint(collect)
        assert asyncio_compat.batch_datagram_reads(
            transport, collect, 30, 65536, after=collect.wake_up_done, read_many=receiver.read
        )
        sender_transport = await endpoint()
        sender = GsoSender(sender_transport)
        sent = [datagrams([700 + run] * 20) for run in range(3)]
        for run in sent:  # all three queue before the loop's next wake-up
            sender.send(run, transport.get_extra_info("sockname"))
        await asyncio.wait_for(collect.enough.wait(), BOUND_S)
        transport.close()
        sender_transport.close()
        assert collect.got == sent[0] + sent[1] + sent[2], [len(d) for d in collect.got]
        assert collect.per_wake_up[0] == 40, collect.per_wake_up  # two reads: 20 < 30, then 40 >= 30

    run(main)
