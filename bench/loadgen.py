"""A UDP load generator for the broker's presence port: simulated devices, keepalives, STUN.

One process, one thread, non-blocking sockets under epoll. Devices speak the presence wire format
directly (layouts from ``dvrlink.protocol.presence_wire``, crypto from
``dvrlink.protocol.presence_crypto``) because a full ``PresenceClient`` per device would make
the generator slower than the broker it measures. ``check_register_layout`` proves at start that
the hand-packed REGISTER equals the ``construct`` declaration.

Every loop here is bounded by a count and by a deadline, and stops by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import math
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from aioice import stun
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from bench.common import CoreLoad, CoreMeter, CpuMeter
from dvrlink.protocol.identity import ed25519_public_bytes, x25519_public_bytes
from dvrlink.protocol.presence_crypto import (
    BROKER_TO_DEVICE,
    DEVICE_TO_BROKER,
    Sealer,
    derive_session_key,
    x25519,
)
from dvrlink.protocol.presence_events import Address
from dvrlink.protocol.presence_ticket import resume_mac, resumed_session_key, resumption_secret
from dvrlink.protocol.presence_wire import (
    COOKIE_SIZE,
    EPHEMERAL_HEADER_SIZE,
    HEADER_STRUCT,
    HELLO_SIZE,
    NONCE_SIZE,
    REGISTER_BODY,
    REGISTER_SIGNING_LABEL,
    SEALED_HEADER_SIZE,
    VERSION,
    MessageType,
    decode_address,
    split_registered,
)

SOCKET_BUFFER_BYTES = 1 << 20
RECV_SIZE = 2048
COOKIE_DATAGRAM_SIZE = 2 + NONCE_SIZE + COOKIE_SIZE
STUN_MAGIC = b"\x21\x12\xa4\x42"
STUN_BINDING_REQUEST = struct.Struct(">HHI12s")
STUN_SUCCESS = b"\x01\x01"
SAMPLE_EVERY = 97  # open one reply in this many (a prime, so it does not follow the slot order)
LOST_AFTER_S = 1.0  # an unanswered request frees its window place after this long
SWEEP_EVERY_S = 0.25


def source_ips(count: int) -> list[str]:
    """``count`` distinct loopback addresses 127.0.x.y (x from 1, y in 1..250)."""
    return [f"127.0.{1 + k // 250}.{1 + k % 250}" for k in range(count)]


def _seed(label: bytes, index: int) -> bytes:
    return hashlib.sha256(label + index.to_bytes(8, "big")).digest()


@dataclass(slots=True)
class SimDevice:
    """One simulated device: identity, its registration and its session."""

    index: int
    serial: str
    nonce: bytes
    key: Ed25519PrivateKey | None = None
    public: bytes = b""
    ephemeral: X25519PrivateKey | None = None
    ephemeral_public: bytes = b""
    slot: int = -1
    registered: bytes = b""  # the REGISTERED datagram, opened after the timed phase
    session_id: int = 0
    sealer: Sealer | None = None
    next_counter: int = 1
    ticket: bytes = b""
    """The broker's last resumption ticket (``presence_ticket``): the next REGISTER resumes."""
    ticket_secret: bytes = b""
    cookie: bytes = b""
    """The cookie of the last REGISTER (a resumed session's key is bound to it)."""
    resumed: bool = False
    """The last REGISTER was a resumed one."""

    def make_keys(self) -> None:
        """Derive the device and ephemeral keys from the index (fast and reproducible)."""
        if self.key is None:
            self.key = Ed25519PrivateKey.from_private_bytes(_seed(b"bench device key", self.index))
            self.public = ed25519_public_bytes(self.key)
            self.ephemeral = X25519PrivateKey.from_private_bytes(_seed(b"bench ephemeral", self.index))
            self.ephemeral_public = x25519_public_bytes(self.ephemeral)


def hello_datagram(nonce: bytes) -> bytes:
    """A HELLO for ``nonce``, padded to its fixed size."""
    head = bytes([MessageType.HELLO, VERSION]) + nonce
    return head + bytes(HELLO_SIZE - len(head))


def register_body(device: SimDevice, cookie: bytes, keepalive_ms: int) -> bytes:
    """The signed part of a REGISTER, packed by hand (see ``check_register_layout``)."""
    serial = device.serial.encode("ascii")
    return b"".join(
        (
            bytes([MessageType.REGISTER, VERSION]),
            cookie,
            device.nonce,
            device.public,
            device.ephemeral_public,
            keepalive_ms.to_bytes(4, "big"),
            bytes([len(serial)]),
            serial,
        )
    )


def register_datagram(device: SimDevice, cookie: bytes, keepalive_ms: int) -> bytes:
    """REGISTER = body ‖ Ed25519 signature over label ‖ body; with a ticket, the resumed kind:
    body ‖ ticket (length-prefixed) ‖ HMAC under the ticket's secret."""
    assert device.key is not None
    body = register_body(device, cookie, keepalive_ms)
    device.cookie = cookie
    device.resumed = bool(device.ticket)
    if device.ticket:
        signed = body + len(device.ticket).to_bytes(2, "big") + device.ticket
        return signed + resume_mac(device.ticket_secret, signed)
    return body + device.key.sign(REGISTER_SIGNING_LABEL + body)


def check_register_layout() -> None:
    """Check that ``register_body`` packs exactly what the ``construct`` declaration builds.

    Raises:
        AssertionError: the layouts differ (the wire format changed; update ``register_body``).
    """
    device = SimDevice(0, "BENCH-0000000", bytes(range(NONCE_SIZE)))
    device.make_keys()
    cookie = bytes(range(100, 100 + COOKIE_SIZE))
    built = REGISTER_BODY.build(
        {
            "version": VERSION,
            "cookie": cookie,
            "nonce": device.nonce,
            "device_key": device.public,
            "ephemeral_key": device.ephemeral_public,
            "keepalive_ms": 3_600_000,
            "serial": device.serial,
        }
    )
    assert bytes(built) == register_body(device, cookie, 3_600_000), "REGISTER layout changed"


def stun_binding_request(transaction_id: bytes) -> bytes:
    """A 20-byte STUN Binding request (no attributes)."""
    return STUN_BINDING_REQUEST.pack(0x0001, 0, 0x2112A442, transaction_id)


@dataclass(frozen=True, slots=True)
class RegistrationReport:
    """Outcome of a registration phase."""

    attempted: int
    registered: int
    refused: int
    failed: int
    retransmissions: int
    seconds: float
    timed_out: bool

    @property
    def rate(self) -> float:
        """Completed registrations per second."""
        return self.registered / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class PumpReport:
    """Outcome of a request/answer run with a bounded window."""

    sent: int
    answered: int  # valid answers in the measured window
    answered_total: int
    invalid: int  # datagrams that answered nothing we sent
    lost: int
    seconds: float  # measured window
    samples_ok: int
    samples_bad: int
    exhausted: bool  # the precomputed requests ran out before the time did
    server_cpu: float  # fraction of one core the server used in the measured window (-1: not watched)
    generator_cpu: float  # the same for this process
    cores: dict[int, CoreLoad]  # load of each core in the measured window

    @property
    def rate(self) -> float:
        """Valid answers per second in the measured window."""
        return self.answered / self.seconds if self.seconds > 0 else 0.0


class LoadGenerator:
    """UDP sockets on distinct loopback addresses, and the devices that use them."""

    def __init__(self, sockets: int) -> None:
        self.socks: list[socket.socket] = []
        self.addresses: list[Address] = []
        self._epoll = select.epoll()
        self._by_fd: dict[int, int] = {}
        try:
            for k, ip in enumerate(source_ips(sockets)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.socks.append(sock)
                sock.setblocking(False)
                for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
                sock.bind((ip, 0))
                host, port = sock.getsockname()
                self.addresses.append((str(host), int(port)))
                self._epoll.register(sock.fileno(), select.EPOLLIN)
                self._by_fd[sock.fileno()] = k
        except OSError:
            self.close()
            raise
        self.devices: list[SimDevice] = []

    def close(self) -> None:
        """Close every socket."""
        for sock in self.socks:
            sock.close()
        self._epoll.close()

    def __enter__(self) -> LoadGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_devices(self, count: int, prefix: str = "BENCH-") -> range:
        """Create ``count`` more devices (keys are made lazily); returns their indexes."""
        start = len(self.devices)
        for i in range(start, start + count):
            self.devices.append(SimDevice(i, f"{prefix}{i:07d}", _seed(b"bench nonce", i)[:NONCE_SIZE]))
        return range(start, start + count)

    # -- receiving --------------------------------------------------------------------------------

    def _ready(self, timeout: float) -> list[int]:
        return [self._by_fd[fd] for fd, _ in self._epoll.poll(timeout)]

    def drain(self, quiet_for: float = 0.2, limit_s: float = 5.0) -> int:
        """Read and drop whatever arrives until nothing came for ``quiet_for`` s; returns the count."""
        count = 0
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            ready = self._ready(quiet_for)
            if not ready:
                break
            for k in ready:
                count += self._drop_all(self.socks[k])
        return count

    @staticmethod
    def _drop_all(sock: socket.socket) -> int:
        count = 0
        for _ in range(100_000):
            try:
                sock.recv(RECV_SIZE)
            except BlockingIOError:
                break
            count += 1
        return count

    # -- registration -----------------------------------------------------------------------------

    def register(
        self,
        indexes: Sequence[int],
        server: Address,
        keepalive_ms: int,
        limit_s: float,
        reply_timeout: float = 3.0,
        max_tries: int = 4,
    ) -> RegistrationReport:
        """Register the devices at ``indexes``, one registration in flight per socket.

        Each socket carries one device at a time through HELLO → COOKIE → REGISTER →
        REGISTERED, so a REGISTERED (which names no device in clear) belongs to the socket's
        device. The REGISTERED datagrams are kept and opened by ``open_sessions`` afterwards, so
        the timed phase holds only what a device must do online (sign with the cookie).
        """
        nslots = len(self.socks)
        slot_dev = [-1] * nslots
        slot_phase = [0] * nslots  # 0: HELLO sent, 1: REGISTER sent
        slot_deadline = [0.0] * nslots
        slot_tries = [0] * nslots
        slot_datagram = [b""] * nslots
        idle = list(range(nslots - 1, -1, -1))
        todo = iter(indexes)
        remaining = len(indexes)
        registered = refused = failed = retransmissions = 0
        devices = self.devices
        socks = self.socks
        start = time.perf_counter()
        deadline = start + limit_s
        next_sweep = start + SWEEP_EVERY_S
        timed_out = False

        def release(k: int) -> None:
            slot_dev[k] = -1
            idle.append(k)

        while registered + refused + failed < len(indexes):
            now = time.perf_counter()
            if now >= deadline:
                timed_out = True
                break
            while idle and remaining:
                k = idle.pop()
                device = devices[next(todo)]
                remaining -= 1
                device.make_keys()
                datagram = hello_datagram(device.nonce)
                slot_dev[k] = device.index
                slot_phase[k] = 0
                slot_tries[k] = 1
                slot_deadline[k] = now + reply_timeout
                slot_datagram[k] = datagram
                socks[k].sendto(datagram, server)
            for k in self._ready(0.05):
                sock = socks[k]
                for _ in range(10_000):
                    try:
                        data = sock.recv(RECV_SIZE)
                    except BlockingIOError:
                        break
                    index = slot_dev[k]
                    if index < 0 or len(data) < 2:
                        continue
                    device = devices[index]
                    kind = data[0]
                    if kind == MessageType.COOKIE and slot_phase[k] == 0:
                        if len(data) != COOKIE_DATAGRAM_SIZE or data[2:18] != device.nonce:
                            continue
                        datagram = register_datagram(device, data[18:], keepalive_ms)
                        slot_phase[k] = 1
                        slot_tries[k] = 1
                        slot_deadline[k] = time.perf_counter() + reply_timeout
                        slot_datagram[k] = datagram
                        sock.sendto(datagram, server)
                    elif kind == MessageType.REGISTERED and slot_phase[k] == 1:
                        device.registered = data
                        device.slot = k
                        registered += 1
                        release(k)
                    elif kind == MessageType.REFUSED and slot_phase[k] == 1:
                        refused += 1
                        release(k)
            if now >= next_sweep:
                next_sweep = now + SWEEP_EVERY_S
                for k in range(nslots):
                    if slot_dev[k] >= 0 and now >= slot_deadline[k]:
                        if slot_tries[k] >= max_tries:
                            failed += 1
                            release(k)
                            continue
                        slot_tries[k] += 1
                        slot_deadline[k] = now + reply_timeout
                        retransmissions += 1
                        socks[k].sendto(slot_datagram[k], server)
        seconds = time.perf_counter() - start
        return RegistrationReport(
            len(indexes), registered, refused, failed, retransmissions, seconds, timed_out
        )

    def open_sessions(self, indexes: Sequence[int], broker_public: bytes) -> tuple[int, int]:
        """Derive the session keys from the kept REGISTERED datagrams; returns (opened, bad)."""
        opened = bad = 0
        for index in indexes:
            device = self.devices[index]
            if device.registered:
                if open_session(device, broker_public):
                    opened += 1
                else:
                    bad += 1
        return opened, bad

    # -- request/answer runs ----------------------------------------------------------------------

    def pump(
        self,
        server: Address,
        requests: Sequence[bytes],
        slots: Sequence[int],
        keys: Sequence[Hashable],
        answer_key: Callable[[bytes], Hashable | None],
        duration: float,
        warmup: float,
        window: int,
        server_pid: int | Sequence[int] | None = None,
    ) -> PumpReport:
        """Send ``requests[j]`` from socket ``slots[j]`` with at most ``window`` unanswered.

        ``answer_key`` maps an answer to the key of the request it answers, or None if it is not
        a valid answer. Answers are counted after ``warmup`` s for ``duration`` s; an
        unanswered request frees its place after ``LOST_AFTER_S``. Stops at the deadline or when
        the requests run out and every answer came (or was given up). The CPU of this process
        and of ``server_pid`` (summed over several server processes) is measured over the same
        window.
        """
        pids = [] if server_pid is None else [server_pid] if isinstance(server_pid, int) else list(server_pid)
        server_meters = [CpuMeter(pid) for pid in pids]
        own_meter = CpuMeter(os.getpid())
        core_meter = CoreMeter()
        measuring = False
        socks = self.socks
        inflight: dict[Hashable, float] = {}
        total = len(requests)
        j = answered = answered_total = invalid = lost = 0
        start = time.perf_counter()
        measure_from = start + warmup
        end = measure_from + duration
        next_sweep = start + SWEEP_EVERY_S
        last_answer = start
        exhausted = False
        ready = self._ready
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if not measuring and now >= measure_from:
                measuring = True
                core_meter.start()
                own_meter.start()
                for meter in server_meters:
                    meter.start()
            if j >= total and not inflight:
                exhausted = True
                break
            free = window - len(inflight)
            while free > 0 and j < total:
                try:
                    socks[slots[j]].sendto(requests[j], server)
                except BlockingIOError:
                    break
                inflight[keys[j]] = now
                j += 1
                free -= 1
            for k in ready(0.01):
                sock = socks[k]
                for _ in range(10_000):
                    try:
                        data = sock.recv(RECV_SIZE)
                    except BlockingIOError:
                        break
                    key = answer_key(data)
                    if key is None:
                        invalid += 1
                        continue
                    inflight.pop(key, None)
                    answered_total += 1
                    if now >= measure_from:
                        answered += 1
                        last_answer = now
            if now >= next_sweep:
                next_sweep = now + SWEEP_EVERY_S
                stale = [key for key, at in inflight.items() if now - at > LOST_AFTER_S]
                for key in stale:
                    del inflight[key]
                lost += len(stale)
        own_cpu = own_meter.fraction() if measuring else -1.0
        server_cpu = sum(m.fraction() for m in server_meters) if measuring and server_meters else -1.0
        cores = core_meter.loads() if measuring else {}
        stop = last_answer if exhausted else min(time.perf_counter(), end)
        seconds = max(stop - measure_from, 0.0)
        return PumpReport(
            j, answered, answered_total, invalid, lost, seconds, 0, 0, exhausted, server_cpu, own_cpu, cores
        )

    # -- keepalives -------------------------------------------------------------------------------

    def keepalive_run(
        self,
        indexes: Sequence[int],
        server: Address,
        duration: float,
        warmup: float,
        window: int,
        max_rate: float,
        server_pid: int | Sequence[int] | None = None,
    ) -> PumpReport:
        """Pre-seal keepalives round-robin over the devices, then send them as fast as answered.

        Every answer must be a KEEPALIVE_ACK of a known session; one in ``SAMPLE_EVERY`` is
        opened and its echo and reflexive address checked.
        """
        online = [self.devices[i] for i in indexes if self.devices[i].sealer is not None]
        if not online:
            raise ValueError("no device has a session; register and open_sessions first")
        count = int(max_rate * (duration + warmup))
        n = len(online)
        window = min(window, n)  # one keepalive in flight per device: the session id is the key
        requests, slots, keys = seal_keepalives(online, count)
        by_session = {d.session_id: d for d in online}
        addresses = self.addresses
        seen = 0
        samples = [0, 0]  # ok, bad
        ack = MessageType.KEEPALIVE_ACK

        def answer_key(data: bytes) -> int | None:
            nonlocal seen
            if len(data) < SEALED_HEADER_SIZE + 2 or data[0] != ack:
                return None
            session_id = int.from_bytes(data[2:6], "big")
            device = by_session.get(session_id)
            if device is None:
                return None
            seen += 1
            if seen % SAMPLE_EVERY == 0:
                samples[_check_ack(device, data, addresses[device.slot])] += 1
            return session_id

        report = self.pump(server, requests, slots, keys, answer_key, duration, warmup, window, server_pid)
        return _with_samples(report, samples[0], samples[1])

    def wait_stun(self, server: Address, timeout: float) -> bool:
        """Send a Binding request every 0.2 s until one is answered; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            transaction = b"WAIT" + attempt.to_bytes(8, "big")
            self.socks[0].sendto(stun_binding_request(transaction), server)
            until = time.monotonic() + 0.2
            while (left := until - time.monotonic()) > 0:
                if not self._ready(left):
                    break
                for k in range(len(self.socks)):
                    for _ in range(1000):
                        try:
                            data = self.socks[k].recv(RECV_SIZE)
                        except BlockingIOError:
                            break
                        if data[:2] == STUN_SUCCESS and data[8:20] == transaction:
                            return True
        return False

    # -- STUN -------------------------------------------------------------------------------------

    def stun_run(
        self,
        server: Address,
        duration: float,
        warmup: float,
        window: int,
        max_rate: float,
        server_pid: int | Sequence[int] | None = None,
    ) -> PumpReport:
        """Send STUN Binding requests round-robin over the sockets, as fast as answered.

        Every answer must be a Binding success with a transaction id we sent; one in
        ``SAMPLE_EVERY`` is parsed and its XOR-MAPPED-ADDRESS checked.
        """
        count = int(max_rate * (duration + warmup))
        nslots = len(self.socks)
        keys = [b"DVRB" + j.to_bytes(8, "big") for j in range(count)]
        requests = [stun_binding_request(key) for key in keys]
        slots = [j % nslots for j in range(count)]
        addresses = self.addresses
        seen = 0
        samples = [0, 0]

        def answer_key(data: bytes) -> bytes | None:
            nonlocal seen
            if len(data) < 20 or data[:2] != STUN_SUCCESS or data[4:8] != STUN_MAGIC:
                return None
            key = data[8:20]
            seen += 1
            if seen % SAMPLE_EVERY == 0:
                j = int.from_bytes(key[4:], "big")
                samples[_check_stun(data, addresses[j % nslots])] += 1
            return key

        report = self.pump(server, requests, slots, keys, answer_key, duration, warmup, window, server_pid)
        return _with_samples(report, samples[0], samples[1])


def seal_keepalives(devices: Sequence[SimDevice], count: int) -> tuple[list[bytes], list[int], list[int]]:
    """``count`` sealed KEEPALIVEs round-robin over ``devices`` (counters rise per device).

    Returns (datagrams, socket slot of each, session id of each); advances the devices' counters
    past every counter used.
    """
    requests: list[bytes] = []
    slots: list[int] = []
    keys: list[int] = []
    n = len(devices)
    pack = HEADER_STRUCT.pack
    for j in range(count):
        device = devices[j % n]
        sealer = device.sealer
        assert sealer is not None
        counter = device.next_counter + j // n
        header = pack(MessageType.KEEPALIVE, VERSION, device.session_id, counter)
        requests.append(sealer.seal(DEVICE_TO_BROKER, counter, header, b""))
        slots.append(device.slot)
        keys.append(device.session_id)
    per_device = math.ceil(count / n)
    for device in devices:
        device.next_counter += per_device
    return requests, slots, keys


def open_session(device: SimDevice, broker_public: bytes) -> bool:
    """Derive the session key from the device's kept REGISTERED and open it; False if it does not open."""
    data = device.registered
    assert device.ephemeral is not None
    device.registered = b""
    _type, _version, session_id, counter = HEADER_STRUCT.unpack_from(data)
    broker_ephemeral = data[SEALED_HEADER_SIZE:EPHEMERAL_HEADER_SIZE]
    if device.resumed:
        key = resumed_session_key(
            device.ticket_secret, device.nonce, device.cookie, device.serial, device.public, broker_ephemeral
        )
    else:
        key = derive_session_key(
            x25519(device.ephemeral, broker_public),
            x25519(device.ephemeral, broker_ephemeral),
            device.nonce,
            device.serial,
            device.public,
            device.ephemeral_public,
            broker_ephemeral,
            broker_public,
        )
    sealer = Sealer(key)
    head, sealed = data[:EPHEMERAL_HEADER_SIZE], data[EPHEMERAL_HEADER_SIZE:]
    plain = sealer.open(BROKER_TO_DEVICE, counter, head, sealed)
    if plain is None:
        return False
    try:
        _address, ticket = split_registered(plain[4:])
    except ValueError:
        return False
    device.ticket, device.ticket_secret = (ticket, resumption_secret(key)) if ticket else (b"", b"")
    device.sealer = sealer
    device.session_id = session_id
    device.next_counter = 1
    return True


def _check_ack(device: SimDevice, data: bytes, address: Address) -> int:
    """0 if the KEEPALIVE_ACK opens with the device's key and names its address, else 1."""
    assert device.sealer is not None
    counter = int.from_bytes(data[6:10], "big")
    plain = device.sealer.open(
        BROKER_TO_DEVICE, counter, data[:SEALED_HEADER_SIZE], data[SEALED_HEADER_SIZE:]
    )
    if plain is None or len(plain) < 3:
        return 1
    try:
        return 0 if decode_address(plain[2:]) == address else 1
    except ValueError:
        return 1


def _check_stun(data: bytes, address: Address) -> int:
    """0 if the Binding success carries ``address`` as XOR-MAPPED-ADDRESS, else 1."""
    try:
        message = stun.parse_message(data)
    except (ValueError, KeyError, IndexError):
        return 1
    mapped = message.attributes.get("XOR-MAPPED-ADDRESS")
    return 0 if mapped is not None and (mapped[0], mapped[1]) == address else 1


def _with_samples(report: PumpReport, ok: int, bad: int) -> PumpReport:
    return dataclasses.replace(report, samples_ok=ok, samples_bad=bad)


# -- a device runtime: keepalives at an interval, silence, and moving to the next node --------------

ONLINE, WAITING, REGISTERING, BACKOFF = range(4)
"""States of a device in a ``DeviceRuntime``: online (keepalives), waiting for a free socket to
register from, registering (HELLO or REGISTER in flight), backing off after a REFUSED."""
REFUSED_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class RuntimeTimers:
    """The daemon's presence timers (``protocol/presence_client.py``), in seconds."""

    keepalive_interval: float
    reply_timeout: float = 3.0
    retries: int = 2

    @property
    def keepalive_reply_timeout(self) -> float:
        """As ``PresenceClient.keepalive_reply_timeout``: every try of a keepalive ends within half
        an interval, so a silent node is given up 1.5 intervals after its last answer at most."""
        return min(self.reply_timeout, self.keepalive_interval / (2 * (self.retries + 1)))


@dataclass(frozen=True, slots=True)
class RuntimeReport:
    """Counts of one ``DeviceRuntime.run``."""

    seconds: float
    keepalives_sent: int
    keepalives_answered: int
    bad_answers: int  # KEEPALIVE_ACKs or REGISTEREDs that did not open
    registrations: int  # REGISTERED received and opened
    resumed: int  # of those, resumed by ticket
    refused: int
    silences: int  # a node gave no keepalive answer after every try: the device moved on
    unknown_sessions: int  # UNKNOWN_SESSION answers (the node restarted): register again there
    registration_timeouts: int  # no answer to a registration after every try: moved on
    stopped_early: bool  # the ``done`` condition held before the time limit


class DeviceRuntime:
    """The devices of a ``LoadGenerator`` living as the daemon does, against a list of nodes.

    Each online device sends a sealed KEEPALIVE every ``keepalive_interval`` (from its own
    socket), and sends it again after ``keepalive_reply_timeout`` while unanswered. After
    ``retries`` retransmissions without an answer the node is silent: the device moves to the next
    node of the list (wrapping) and registers there, by ticket when it holds one, as
    ``daemon/broker_nodes.py`` does. An UNKNOWN_SESSION (the node restarted and forgot it) makes it
    register again at the same node at once; a registration unanswered after every try moves it
    on; a REFUSED drops its ticket and retries in full after ``REFUSED_RETRY_S``.

    Registration runs one device per socket at a time (a REGISTERED names no device in clear),
    as ``LoadGenerator.register`` does. All nodes share one static (fleet) key.

    ``lost_at[i]`` is when device i last lost its node (silence or UNKNOWN_SESSION, -1: never)
    and ``back_at[i]`` when it was last registered again (-1: not since); times are
    ``time.monotonic()``.
    """

    def __init__(
        self,
        gen: LoadGenerator,
        nodes: Sequence[Address],
        broker_public: bytes,
        timers: RuntimeTimers,
        keepalive_ms: int | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a device runtime needs at least one node")
        self.gen = gen
        self.nodes = list(nodes)
        self.broker_public = broker_public
        self.timers = timers
        self.keepalive_ms = (
            keepalive_ms if keepalive_ms is not None else round(timers.keepalive_interval * 1000)
        )
        n = len(gen.devices)
        self.node = [0] * n
        self.state = [-1] * n  # -1: not run by this runtime
        self.due = [math.inf] * n
        self.tries = [0] * n
        self.awaiting = [0] * n  # counter of the keepalive in flight (0: none)
        self.first_sent = [0.0] * n  # when the first try of that keepalive went out
        self.lost_at = [-1.0] * n
        self.back_at = [-1.0] * n
        self.moves = [0] * n
        self._heap: list[tuple[float, int]] = []
        self._waiting: list[int] = []
        self._by_session: dict[tuple[Address, int], int] = {}
        nslots = len(gen.socks)
        self._slot_dev = [-1] * nslots
        self._slot_phase = [0] * nslots
        self._slot_datagram = [b""] * nslots
        self._idle = list(range(nslots - 1, -1, -1))
        self._counts = dict.fromkeys(
            (
                "keepalives_sent",
                "keepalives_answered",
                "bad_answers",
                "registrations",
                "resumed",
                "refused",
                "silences",
                "unknown_sessions",
                "registration_timeouts",
            ),
            0,
        )

    # -- set-up -----------------------------------------------------------------------------------

    def adopt(self, indexes: Sequence[int], node_of: Callable[[int], int], now: float) -> int:
        """Take over devices already online (``open_sessions`` done) at node ``node_of(i)``; their
        first keepalives are spread evenly over one interval. Returns how many were adopted."""
        interval = self.timers.keepalive_interval
        online = [i for i in indexes if self.gen.devices[i].sealer is not None]
        for rank, i in enumerate(online):
            self.node[i] = node_of(i)
            self.state[i] = ONLINE
            self.awaiting[i] = 0
            self._by_session[(self.nodes[self.node[i]], self.gen.devices[i].session_id)] = i
            self._schedule(i, now + interval * (rank + 0.5) / len(online))
        return len(online)

    def online(self) -> int:
        """How many devices are online now."""
        return sum(1 for s in self.state if s == ONLINE)

    def online_per_node(self) -> list[int]:
        """How many online devices each node holds now."""
        counts = [0] * len(self.nodes)
        for i, s in enumerate(self.state):
            if s == ONLINE:
                counts[self.node[i]] += 1
        return counts

    def replace_node(self, index: int, address: Address) -> None:
        """A node came back at another address (a restart on a new port)."""
        self.nodes[index] = address

    # -- the loop ---------------------------------------------------------------------------------

    def run(
        self, limit_s: float, done: Callable[[], bool] | None = None, check_every_s: float = 0.05
    ) -> RuntimeReport:
        """Run the devices for ``limit_s`` seconds, or until ``done()`` (asked every
        ``check_every_s``) holds."""
        before = dict(self._counts)
        start = time.monotonic()
        deadline = start + limit_s
        next_check = start
        stopped_early = False
        heap = self._heap
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if done is not None and now >= next_check:
                next_check = now + check_every_s
                if done():
                    stopped_early = True
                    break
            for _ in range(10_000):
                if not heap or heap[0][0] > now:
                    break
                at, i = heapq.heappop(heap)
                if at == self.due[i]:
                    self.due[i] = math.inf
                    self._timer(i, now)
            self._start_registrations(now)
            wait = 0.01 if not heap else min(max(heap[0][0] - time.monotonic(), 0.0), 0.01)
            for k in self.gen._ready(wait):
                self._receive(k)
        counts = {key: value - before[key] for key, value in self._counts.items()}
        return RuntimeReport(seconds=time.monotonic() - start, stopped_early=stopped_early, **counts)

    # -- timers -----------------------------------------------------------------------------------

    def _schedule(self, i: int, at: float) -> None:
        self.due[i] = at
        heapq.heappush(self._heap, (at, i))

    def _timer(self, i: int, now: float) -> None:
        state = self.state[i]
        if state == ONLINE:
            self._keepalive_timer(i, now)
        elif state == REGISTERING:
            self._registration_timer(i, now)
        elif state == BACKOFF:
            self._wait_for_socket(i)

    def _keepalive_timer(self, i: int, now: float) -> None:
        timers = self.timers
        if self.awaiting[i] == 0:
            self.tries[i] = 1
            self.first_sent[i] = now
        elif self.tries[i] <= timers.retries:
            self.tries[i] += 1
        else:
            self._counts["silences"] += 1
            self._lose(i, now, move=True)
            return
        device = self.gen.devices[i]
        sealer = device.sealer
        assert sealer is not None
        counter = device.next_counter
        device.next_counter += 1
        header = HEADER_STRUCT.pack(MessageType.KEEPALIVE, VERSION, device.session_id, counter)
        datagram = sealer.seal(DEVICE_TO_BROKER, counter, header, b"")
        self.awaiting[i] = counter
        self._send(device.slot, datagram, self.nodes[self.node[i]])
        self._counts["keepalives_sent"] += 1
        self._schedule(i, now + timers.keepalive_reply_timeout)

    def _registration_timer(self, i: int, now: float) -> None:
        k = self.gen.devices[i].slot
        if self.tries[i] <= self.timers.retries:
            self.tries[i] += 1
            self._send(k, self._slot_datagram[k], self.nodes[self.node[i]])
            self._schedule(i, now + self.timers.reply_timeout)
            return
        self._counts["registration_timeouts"] += 1
        self._release(k)
        self._move_on(i)
        self._wait_for_socket(i)

    def _lose(self, i: int, now: float, *, move: bool) -> None:
        device = self.gen.devices[i]
        self._by_session.pop((self.nodes[self.node[i]], device.session_id), None)
        device.sealer = None
        self.awaiting[i] = 0
        if self.lost_at[i] < 0 or self.back_at[i] >= 0:
            self.lost_at[i] = now
            self.back_at[i] = -1.0
        if move:
            self._move_on(i)
        self._wait_for_socket(i)

    def _move_on(self, i: int) -> None:
        self.node[i] = (self.node[i] + 1) % len(self.nodes)
        self.moves[i] += 1

    def _wait_for_socket(self, i: int) -> None:
        self.state[i] = WAITING
        self._waiting.append(i)

    def _start_registrations(self, now: float) -> None:
        waiting = self._waiting
        devices = self.gen.devices
        taken = 0
        while self._idle and taken < len(waiting):
            i = waiting[taken]
            taken += 1
            if self.state[i] != WAITING:
                continue
            k = self._idle.pop()
            device = devices[i]
            device.make_keys()
            device.slot = k
            self._slot_dev[k] = i
            self._slot_phase[k] = 0
            self._slot_datagram[k] = hello_datagram(device.nonce)
            self.state[i] = REGISTERING
            self.tries[i] = 1
            self._send(k, self._slot_datagram[k], self.nodes[self.node[i]])
            self._schedule(i, now + self.timers.reply_timeout)
        del waiting[:taken]

    def _release(self, k: int) -> None:
        self._slot_dev[k] = -1
        self._idle.append(k)

    def _send(self, k: int, datagram: bytes, to: Address) -> None:
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):  # lost: the timers resend
            self.gen.socks[k].sendto(datagram, to)

    # -- receiving --------------------------------------------------------------------------------

    def _receive(self, k: int) -> None:
        sock = self.gen.socks[k]
        for _ in range(10_000):
            try:
                data, source = sock.recvfrom(RECV_SIZE)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                continue  # an ICMP error from a node that is down
            if len(data) < 2:
                continue
            kind = data[0]
            address: Address = (str(source[0]), int(source[1]))
            if kind == MessageType.KEEPALIVE_ACK:
                self._on_ack(data, address)
            elif kind == MessageType.UNKNOWN_SESSION and len(data) == 6:
                i = self._by_session.get((address, int.from_bytes(data[2:6], "big")), -1)
                if i >= 0 and self.state[i] == ONLINE:
                    self._counts["unknown_sessions"] += 1
                    self._lose(i, time.monotonic(), move=False)
            elif kind in (MessageType.COOKIE, MessageType.REGISTERED, MessageType.REFUSED):
                self._on_registration(k, kind, data, address)

    def _on_ack(self, data: bytes, address: Address) -> None:
        if len(data) < SEALED_HEADER_SIZE:
            return
        i = self._by_session.get((address, int.from_bytes(data[2:6], "big")), -1)
        if i < 0 or self.state[i] != ONLINE or self.awaiting[i] == 0:
            return
        device = self.gen.devices[i]
        assert device.sealer is not None
        counter = int.from_bytes(data[6:10], "big")
        plain = device.sealer.open(
            BROKER_TO_DEVICE, counter, data[:SEALED_HEADER_SIZE], data[SEALED_HEADER_SIZE:]
        )
        if plain is None or len(plain) < 2:
            self._counts["bad_answers"] += 1
            return
        if int.from_bytes(plain[:2], "big") != self.awaiting[i] & 0xFFFF:
            return  # the late answer to an earlier try: the daemon ignores it too
        self._counts["keepalives_answered"] += 1
        self.awaiting[i] = 0
        now = time.monotonic()
        due = self.first_sent[i] + self.timers.keepalive_interval  # as the daemon: from the first try
        self._schedule(i, due if due > now else now + self.timers.keepalive_interval)

    def _on_registration(self, k: int, kind: int, data: bytes, address: Address) -> None:
        i = self._slot_dev[k]
        if i < 0 or self.state[i] != REGISTERING or address != self.nodes[self.node[i]]:
            return
        device = self.gen.devices[i]
        now = time.monotonic()
        if kind == MessageType.COOKIE:
            if self._slot_phase[k] != 0 or len(data) != COOKIE_DATAGRAM_SIZE or data[2:18] != device.nonce:
                return
            self._slot_phase[k] = 1
            self._slot_datagram[k] = register_datagram(device, data[18:], self.keepalive_ms)
            self.tries[i] = 1
            self._send(k, self._slot_datagram[k], address)
            self._schedule(i, now + self.timers.reply_timeout)
            return
        if self._slot_phase[k] != 1:
            return
        self._release(k)
        if kind == MessageType.REFUSED:
            self._counts["refused"] += 1
            device.ticket = device.ticket_secret = b""
            self.state[i] = BACKOFF
            self._schedule(i, now + REFUSED_RETRY_S)
            return
        device.registered = data
        if not open_session(device, self.broker_public):
            self._counts["bad_answers"] += 1
            device.ticket = device.ticket_secret = b""
            self._wait_for_socket(i)
            return
        self._counts["registrations"] += 1
        if device.resumed:
            self._counts["resumed"] += 1
        self.state[i] = ONLINE
        self.awaiting[i] = 0
        self.back_at[i] = now
        self._by_session[(address, device.session_id)] = i
        self._schedule(i, now + self.timers.keepalive_interval)
