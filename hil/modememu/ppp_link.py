"""The emulator's PPP calls, for real: a PPP server behind ``ATD*99#`` and the IP packets it carries.

:class:`PppDataPath` is a :class:`~hil.modememu.model.DataPath`. After ``CONNECT`` it runs the
sans-I/O :class:`~hil.modememu.ppp_server.PppServer` on the bytes the host writes (LCP,
PAP/CHAP-MD5, IPCP), and moves the IPv4 packets between the host and a per-call IP link:

- :class:`TunCarrier` (root): a TUN device moved into a carrier namespace, with the network's
  address on it and a host route to the subscriber's, so what the host sends over PPP enters
  that namespace as if from a packet gateway, and what is routed to the subscriber's address
  there goes back over PPP. Each call gets the next /30 of :data:`PPP_POOL` (network .1, host .2).
- :class:`SocketPairCarrier` (no root): one end of a datagram socket pair per call; the test
  holds the other end (``carrier.network``) and reads and writes IPv4 packets on it.
- no carrier: the call negotiates and IP packets are counted and dropped.

Wire it to an emulator and attach the emulator, which gives the data path its timers, a way to
end the call (``NO CARRIER`` after an LCP Terminate or a failed login) and a reader for the TUN::

    ppp = PppDataPath(PppServerConfig(dns=("192.0.2.53",)), TunCarrier("dl-carrier"))
    with ModemEmulator("simcom-sim800", sim, data_path=ppp) as emu:
        ppp.attach(emu)
        ...  # the host (pppd, or a QEMU guest on emu.path) dials ATD*99#

Everything here runs on the emulator's thread with its lock held, except :meth:`PppDataPath.wait_for`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from hil.modememu.model import SimCard
from hil.modememu.ppp_server import (
    IpPacketReceived,
    LinkTerminated,
    PppEvent,
    PppServer,
    PppServerConfig,
)
from hil.netlab.lab import NetlabError, ip_batch, run_command

log = logging.getLogger(__name__)

PPP_POOL = ipaddress.IPv4Network("100.64.192.0/18")
"""Subscriber addresses of PPP calls: the upper half of the NAT lab carrier's pool
(``hil.netlab.carrier.POOL``, 100.64.128.0/17, which the lab's NAT routes to the carrier); its
ECM calls count up from the bottom, so the two meet only after 4096 ECM calls."""
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
READS_PER_WAKE = 64

E = TypeVar("E", bound=PppEvent)


@dataclass(frozen=True, slots=True)
class IpLink:
    """The network side of one call: ``fd`` reads and writes one IPv4 packet at a time."""

    fd: int
    local_address: str
    """The network's end (IPCP's local address)."""
    peer_address: str
    """What IPCP assigns the host."""
    name: str = ""
    """The interface in ``namespace`` (empty for a socket pair)."""
    namespace: str = ""


class IpLinks(Protocol):
    """Where a call's packets go: :class:`TunCarrier` or :class:`SocketPairCarrier`."""

    def connect(self) -> IpLink: ...

    def disconnect(self, link: IpLink) -> None: ...


class AddressPool:
    """One /30 per call, a new one each call as a new PDP context has: network .1, host .2."""

    def __init__(self, pool: ipaddress.IPv4Network = PPP_POOL) -> None:
        if pool.prefixlen > 30:
            raise ValueError(f"PPP address pool {pool} is smaller than one /30")
        self.pool = pool
        self.index = 0

    def next(self) -> tuple[str, str]:
        """(network address, host address) of the next call."""
        count = self.pool.num_addresses // 4
        base = int(self.pool.network_address) + 4 * (self.index % count)
        self.index += 1
        return str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))


class TunCarrier:
    """Each call's IP side as a TUN device in ``namespace`` (needs root and ``/dev/net/tun``).

    The device is made in this process's namespace under a kernel-chosen ``dlpppN`` name, moved
    into ``namespace`` at once and renamed ``<name_prefix><call>`` there, then given
    ``<network> peer <host>/32`` and brought up. It goes away when the call ends (its last file
    descriptor closes). Forwarding onwards (``net.ipv4.ip_forward`` and routes back to the pool)
    is the namespace's business: the NAT lab's carrier has both.
    """

    def __init__(
        self, namespace: str, pool: ipaddress.IPv4Network = PPP_POOL, name_prefix: str = "ppp"
    ) -> None:
        self.namespace = namespace
        self.pool = AddressPool(pool)
        self.name_prefix = name_prefix
        self._lock = threading.Lock()

    def connect(self) -> IpLink:
        """Raises OSError (no ``/dev/net/tun``, not root) or NetlabError (``ip`` failed)."""
        with self._lock:
            index = self.pool.index
            local, peer = self.pool.next()
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            request = struct.pack("16sH", b"dlppp%d", IFF_TUN | IFF_NO_PI)
            answer = fcntl.ioctl(fd, TUNSETIFF, request)
            made = answer[:16].rstrip(b"\0").decode()
            name = f"{self.name_prefix}{index}"[:15]
            run_command(["ip", "link", "set", made, "netns", self.namespace])
            setup = [f"link set {made} name {name}", f"addr add {local} peer {peer}/32 dev {name}"]
            ip_batch(self.namespace, [*setup, f"link set {name} up"])
        except BaseException:
            os.close(fd)
            raise
        return IpLink(fd, local, peer, name, self.namespace)

    def disconnect(self, link: IpLink) -> None:
        with contextlib.suppress(OSError):
            os.close(link.fd)


class SocketPairCarrier:
    """A stand-in for :class:`TunCarrier` without root: each call's IP side is a datagram socket
    pair. ``network`` is the far end of the current call's pair (None between calls): read the
    packets the host sent from it, write the network's answers to it."""

    def __init__(self, pool: ipaddress.IPv4Network = PPP_POOL) -> None:
        self.pool = AddressPool(pool)
        self.network: socket.socket | None = None
        self._near: dict[int, socket.socket] = {}
        self._lock = threading.Lock()

    def connect(self) -> IpLink:
        near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        near.setblocking(False)
        with self._lock:
            local, peer = self.pool.next()
            self._near[near.fileno()] = near
            self.network = far
        return IpLink(near.fileno(), local, peer)

    def disconnect(self, link: IpLink) -> None:
        with self._lock:
            near = self._near.pop(link.fd, None)
        if near is not None:
            near.close()

    def close(self) -> None:
        """Close every socket (the far ends too)."""
        with self._lock:
            for near in self._near.values():
                near.close()
            self._near.clear()
            if self.network is not None:
                self.network.close()
                self.network = None


class ModemHooks(Protocol):
    """What the data path needs of :class:`~hil.modememu.emulator.ModemEmulator`."""

    @property
    def sim(self) -> SimCard | None: ...

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None: ...

    def add_reader(self, fd: int, fn: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...

    def drop_carrier(self) -> None: ...


@dataclass(slots=True)
class _Call:
    generation: int
    server: PppServer
    send: Callable[[bytes], None]
    link: IpLink | None
    armed: float | None = None


class PppDataPath:
    """PPP calls of one emulated modem, answered by :class:`PppServer`.

    ``credentials``: ``"config"`` takes ``config.credentials`` (None: any); ``"sim"`` takes the
    SIM's ``apn_credentials`` for the dialled APN, or ``config.credentials`` when the SIM lists
    none for it. ``carrier``: where each call's IP packets go (None: counted and dropped).

    ``events`` lists every :class:`PppEvent` of every call except the IP packets; ``errors`` what
    went wrong (no TUN, a write that failed), since the emulator's thread must not raise.
    """

    def __init__(
        self,
        config: PppServerConfig | None = None,
        carrier: IpLinks | None = None,
        *,
        credentials: str = "config",
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if credentials not in ("config", "sim"):
            raise ValueError(f"PPP credentials source {credentials!r} is not 'config' or 'sim'")
        self.config = config or PppServerConfig()
        self.carrier = carrier
        self.credentials = credentials
        self._rng = rng
        self._clock = clock
        self._modem: ModemHooks | None = None
        self._pool = AddressPool()
        self._generation = 0
        self._call: _Call | None = None
        self._changed = threading.Condition()
        self.events: list[PppEvent] = []
        self.errors: list[str] = []
        self.servers: list[PppServer] = []
        """The server of every call, in order (the last is the current or latest call)."""
        self.calls_ended = 0

    def attach(self, modem: ModemHooks) -> None:
        """Bind to the emulator whose data path this is (before the first call)."""
        self._modem = modem

    # ----------------------------------------------------------------------------- DataPath

    def connected(self, apn: str, mode: str, send: Callable[[bytes], None]) -> None:
        """``CONNECT`` was sent: start the PPP server (ECM calls are not this path's)."""
        if mode != "ppp":
            log.warning("ECM call on APN %r: the PPP data path carries PPP calls only", apn)
            return
        if self._modem is None:
            self._error(f"PPP call on APN {apn!r}: the data path is not attached to its emulator (no timers)")
        self._generation += 1
        link: IpLink | None = None
        if self.carrier is not None:
            try:
                link = self.carrier.connect()
            except (OSError, NetlabError) as exc:
                self._error(f"PPP call on APN {apn!r}: no IP link: {exc}")
        local, peer = (link.local_address, link.peer_address) if link else self._pool.next()
        server = PppServer(self._config_for(apn), local, peer, self._rng)
        call = _Call(self._generation, server, send, link)
        self._call = call
        self.servers.append(server)
        if link is not None and self._modem is not None:
            self._modem.add_reader(link.fd, lambda: self._readable(call))
        log.info("PPP call on APN %r: host %s, network %s", apn, peer, local)
        server.start(self._clock())
        self._pump(call)

    def received(self, data: bytes) -> None:
        """Bytes the host wrote in data mode."""
        call = self._call
        if call is None:
            return
        call.server.receive_data(data, self._clock())
        self._pump(call)

    def disconnected(self) -> None:
        """The call ended (``NO CARRIER``, hang-up, reset...): stop the server, drop the IP link."""
        call, self._call = self._call, None
        if call is None:
            return
        call.server.lower_down(self._clock())
        if call.link is not None:
            if self._modem is not None:
                self._modem.remove_reader(call.link.fd)
            if self.carrier is not None:
                self.carrier.disconnect(call.link)
        with self._changed:
            self.calls_ended += 1
            self._changed.notify_all()

    # ------------------------------------------------------------------------------ waiting

    def wait_for(self, kind: type[E], timeout: float = 10.0, *, after: int = 0) -> E:
        """The first event of type ``kind`` at index ``after`` or later in :attr:`events`.

        Raises TimeoutError naming the events seen when none comes within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self.events[after:]:
                    if isinstance(event, kind):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [type(e).__name__ for e in self.events[after:]]
                    raise TimeoutError(
                        f"no PPP {kind.__name__} within {timeout} s; events: {seen}; errors: {self.errors}"
                    )
                self._changed.wait(remaining)

    def wait_for_hang_up(self, count: int = 1, timeout: float = 10.0) -> None:
        """Until ``count`` calls have ended. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.calls_ended < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.calls_ended} PPP calls ended within {timeout} s, not {count}")
                self._changed.wait(remaining)

    # ---------------------------------------------------------------------------- internals

    def _config_for(self, apn: str) -> PppServerConfig:
        if self.credentials != "sim" or self._modem is None:
            return self.config
        sim = self._modem.sim
        entries = sim.apn_credentials if sim is not None else ()
        listed = tuple((user, password) for name, user, password in entries if name == apn)
        return dataclasses.replace(self.config, credentials=listed) if listed else self.config

    def _error(self, text: str) -> None:
        log.error("%s", text)
        with self._changed:
            self.errors.append(text)
            self._changed.notify_all()

    def _readable(self, call: _Call) -> None:
        if call is not self._call or call.link is None:
            return
        now = self._clock()
        for _ in range(READS_PER_WAKE):
            try:
                packet = os.read(call.link.fd, 65535)
            except BlockingIOError:
                break
            except OSError as exc:
                self._error(f"PPP call: reading the IP link {call.link.name or call.link.fd} failed: {exc}")
                break
            if packet[:1] and packet[0] >> 4 == 4:
                call.server.send_ip(packet, now)
            else:
                call.server.counters.ip_dropped += 1  # IPv6 (router solicitations) or empty
        self._pump(call)

    def _pump(self, call: _Call) -> None:
        out = call.server.data_to_send()
        if out:
            call.send(out)
        new: list[PppEvent] = []
        while (event := call.server.next_event()) is not None:
            if isinstance(event, IpPacketReceived):
                self._to_network(call, event.packet)
                continue
            new.append(event)
            if isinstance(event, LinkTerminated):
                log.info("PPP link ended: %s", event.reason)
                if self._modem is not None:
                    self._modem.call_later(0, lambda: self._hang_up(call))
        if new:
            with self._changed:
                self.events.extend(new)
                self._changed.notify_all()
        self._arm(call)

    def _to_network(self, call: _Call, packet: bytes) -> None:
        if call.link is None:
            call.server.counters.ip_dropped += 1
            return
        try:
            os.write(call.link.fd, packet)
        except OSError as exc:
            call.server.counters.ip_dropped += 1
            if len(self.errors) < 100:
                where = call.link.name or call.link.fd
                self._error(f"PPP call: writing to the IP link {where} failed: {exc}")

    def _arm(self, call: _Call) -> None:
        due = call.server.get_timer()
        if due is None or self._modem is None or (call.armed is not None and call.armed <= due):
            return
        call.armed = due
        self._modem.call_later(max(0.0, due - self._clock()), lambda: self._fire(call, due))

    def _fire(self, call: _Call, due: float) -> None:
        if call is not self._call:
            return
        if call.armed == due:
            call.armed = None
        call.server.handle_timer(self._clock())
        self._pump(call)

    def _hang_up(self, call: _Call) -> None:
        if call is self._call and self._modem is not None:
            self._modem.drop_carrier()  # NO CARRIER; disconnected() follows from the model
