"""The data plane's sans-I/O core on its own: CPU per packet on each side, beside the cipher alone.

Two ``DataplaneConnection`` cores are wired back to back in this process through a simulated link
(made-up clock, 5 ms each way), moving 200 MB on one stream (``--quick``: 5 MB), first over a
lossless link, then with 1 % random loss and 5 % of datagrams reordered. Only the calls into each
core are timed (CPU time of this process: ``time.process_time``), so the link's bookkeeping is
left out. Printed per run: µs per packet for the sender and the receiver, MB of stream data per
core-second for each side, and the same for ChaCha20-Poly1305 sealing 1173 bytes alone (the
payload of a 1200-byte datagram), with the ratio of the core to the cipher.

    python -m bench.dataplane_core [--quick]
"""

from __future__ import annotations

import hashlib
import heapq
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench.common import parse_args, run_main
from dvrlink.protocol.dataplane import (
    DataplaneConfig,
    DataplaneConnection,
    KeyMaterial,
    StreamData,
)

PAYLOAD = 1173
ONE_WAY_S = 0.005
SEND_HIGH_WATER = 4 << 20
CHUNK = 1 << 20


@dataclass
class Run:
    name: str
    stream_bytes: int
    sender_s: float
    receiver_s: float
    sender_packets: int
    receiver_packets: int
    lost: int
    simulated_s: float


class Path:
    """One direction: delay, loss and reordering on a made-up clock."""

    def __init__(self, rng: random.Random, loss: float, reorder: float) -> None:
        self.rng = rng
        self.loss = loss
        self.reorder = reorder
        self.queue: list[tuple[float, int, bytes]] = []
        self.serial = 0

    def send(self, datagrams: list[bytes], now: float) -> None:
        rng = self.rng
        for datagram in datagrams:
            if self.loss and rng.random() < self.loss:
                continue
            arrival = now + ONE_WAY_S
            if self.reorder and rng.random() < self.reorder:
                arrival += rng.random() * 0.003
            self.serial += 1
            heapq.heappush(self.queue, (arrival, self.serial, datagram))

    def due(self, now: float) -> list[bytes]:
        out = []
        queue = self.queue
        while queue and queue[0][0] <= now:
            out.append(heapq.heappop(queue)[2])
        return out


def transfer(name: str, total: int, loss: float, reorder: float, seed: int) -> Run:
    rng = random.Random(seed)
    keys = KeyMaterial(os.urandom(32), os.urandom(32), os.urandom(4), os.urandom(4))
    now = 0.0
    sender = DataplaneConnection(DataplaneConfig("viewer"), keys, now)
    receiver = DataplaneConnection(DataplaneConfig("device"), keys, now)
    forward = Path(rng, loss, reorder)
    backward = Path(rng, loss, 0.0)
    block = rng.randbytes(CHUNK)
    stream = sender.open_stream()
    queued = 0
    delivered = 0
    ended = False
    digest_sent = hashlib.sha256()
    digest_received = hashlib.sha256()
    sender_cpu = 0.0
    receiver_cpu = 0.0
    clock = time.process_time
    steps = 0
    sender_timer: float | None = None
    receiver_timer: float | None = None
    while not ended:
        steps += 1
        if steps > 50_000_000:
            raise RuntimeError(f"{name}: no end after {steps} steps at t={now:.3f} s; {sender.stats}")
        # the driver tops up the send buffer (not timed: it stands for reading a TCP socket)
        while queued < total and sender.send_buffered(stream) < SEND_HIGH_WATER:
            piece = block[: min(CHUNK, total - queued)]
            digest_sent.update(piece)
            queued += len(piece)
            sender.send(stream, piece, end_stream=queued >= total)
        incoming = forward.due(now)
        acks = backward.due(now)
        start = clock()
        for datagram in acks:
            sender.receive_datagram(datagram, now)
        # as a driver does: the timer it armed last time says whether handle_timer is due
        if sender_timer is not None and sender_timer <= now:
            sender.handle_timer(now)
        out = sender.datagrams_to_send(now)
        sender_timer = sender.next_timer()
        middle = clock()
        for datagram in incoming:
            receiver.receive_datagram(datagram, now)
        events = receiver.events()
        for event in events:
            if isinstance(event, StreamData):
                receiver.consumed(event.stream_id, len(event.data), now)
        if receiver_timer is not None and receiver_timer <= now:
            receiver.handle_timer(now)
        back = receiver.datagrams_to_send(now)
        receiver_timer = receiver.next_timer()
        end = clock()
        sender_cpu += middle - start
        receiver_cpu += end - middle
        for event in events:
            if isinstance(event, StreamData):
                digest_received.update(event.data)
                delivered += len(event.data)
                ended = ended or event.ended
        forward.send(out, now)
        backward.send(back, now)
        times = [t for t in (sender_timer, receiver_timer) if t is not None]
        if forward.queue:
            times.append(forward.queue[0][0])
        if backward.queue:
            times.append(backward.queue[0][0])
        if not times:
            raise RuntimeError(f"{name}: stalled at t={now:.3f} s; {sender.stats}")
        now = max(now, min(times))
    if delivered != total or digest_sent.digest() != digest_received.digest():
        raise RuntimeError(f"{name}: {delivered} of {total} bytes arrived, or not the same bytes")
    return Run(
        name,
        total,
        sender_cpu,
        receiver_cpu,
        sender.stats.packets_sent,
        receiver.stats.packets_received,
        sender.stats.packets_lost,
        now,
    )


def cipher_alone(count: int) -> tuple[float, float]:
    """(µs per seal, µs per open) of ChaCha20-Poly1305 on ``PAYLOAD`` bytes with an 11-byte AAD."""
    aead = ChaCha20Poly1305(os.urandom(32))
    payload = os.urandom(PAYLOAD)
    header = os.urandom(11)
    nonces = [n.to_bytes(12, "big") for n in range(count)]
    start = time.process_time()
    sealed = [aead.encrypt(nonce, payload, header) for nonce in nonces]
    middle = time.process_time()
    for nonce, data in zip(nonces, sealed, strict=True):
        aead.decrypt(nonce, data, header)
    end = time.process_time()
    return (middle - start) / count * 1e6, (end - middle) / count * 1e6


def report(run: Run, seal_us: float, open_us: float) -> None:
    megabytes = run.stream_bytes / 1e6
    sender_us = run.sender_s / run.sender_packets * 1e6
    receiver_us = run.receiver_s / run.receiver_packets * 1e6
    print(f"{run.name}: {megabytes:.0f} MB, {run.sender_packets:,} packets sent, {run.lost:,} declared lost")
    print(f"  sender:   {sender_us:.1f} µs per packet, {megabytes / run.sender_s:.1f} MB per core-second")
    print(f"  receiver: {receiver_us:.1f} µs per packet, {megabytes / run.receiver_s:.1f} MB per core-second")
    print(
        f"  both ends: {megabytes / (run.sender_s + run.receiver_s):.1f} MB per core-second; "
        f"core/cipher: sender {sender_us / seal_us:.1f}x seal, receiver {receiver_us / open_us:.1f}x open"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("the data plane core's CPU per packet, beside the cipher alone", argv)
    total = 5_000_000 if args.quick else 200_000_000

    def body() -> None:
        seal_us, open_us = cipher_alone(20_000 if args.quick else 200_000)
        print(
            f"cipher alone: ChaCha20-Poly1305 on {PAYLOAD} B: seal {seal_us:.2f} µs "
            f"({PAYLOAD / seal_us:.0f} MB per core-second), open {open_us:.2f} µs"
        )
        for name, loss, reorder, seed in (
            ("lossless", 0.0, 0.0, 1),
            ("1% loss, 5% reordered", 0.01, 0.05, 2),
        ):
            report(transfer(name, total, loss, reorder, seed), seal_us, open_us)

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
