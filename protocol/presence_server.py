"""Broker side of the presence protocol: cookies, registrations, keepalives, invites. Sans-I/O.

Feed it datagrams with their source address and the current time; take datagrams to send
(with destinations), events and the next timer deadline. It never raises on bad input from
the network, and it never answers an unauthenticated datagram with more bytes than it received,
except a valid STUN Binding request (see ``dvrlink.protocol.stun``; the ``stun`` hook can replace
that responder, e.g. with the RFC 5780 one of ``dvrlink.broker.stun_alternate``).

The application decides who may register: the core emits ``RegistrationRequested`` after the
cookie and the signature check out, and the application calls ``accept`` or ``refuse``.

A REGISTER cannot be replayed: the unique time stamp in its cookie, which the device signs,
orders a device's registrations; a repeat of the one that opened the session gets the same
REGISTERED (until the device uses the session), an older one is dropped (``stats["replayed"]``).
"""

from __future__ import annotations

import heapq
import hmac
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import construct as c
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.protocol.identity import ed25519_verify, x25519_public_bytes
from dvrlink.protocol.presence_crypto import (
    BROKER_TO_DEVICE,
    COOKIE_STAMP_SIZE,
    DEVICE_TO_BROKER,
    CookieJar,
    Sealer,
    derive_session_key,
    window_accepts,
    window_commit,
    x25519,
)
from dvrlink.protocol.presence_events import (
    Address,
    AlarmMessageReceived,
    DeviceMoved,
    DeviceOffline,
    DeviceOnline,
    DeviceReported,
    InviteAnswered,
    InviteExpired,
    RegistrationRequested,
    RegistrationUnconfirmed,
    ServerEvent,
)
from dvrlink.protocol.presence_report import INTERVAL, PROBE_DELAY, DeviceReport, read_controls
from dvrlink.protocol.presence_ticket import (
    Ticket,
    open_ticket,
    resume_mac,
    resumed_session_key,
    resumption_secret,
    seal_ticket,
    ticket_key,
    ticket_nonce,
)
from dvrlink.protocol.presence_wire import (
    ECHO_STRUCT,
    HEADER_STRUCT,
    INVITE_PLAIN,
    INVITE_REPLY_PLAIN,
    MAX_DATAGRAM,
    MAX_INVITE_BODY,
    REFUSED_PLAIN,
    REGISTER_SIGNING_LABEL,
    SEALED_HEADER_SIZE,
    VERSION,
    MessageType,
    PackedIps,
    RefuseReason,
    cookie_datagram,
    encode_address,
    hello_nonce,
    parse_register,
)
from dvrlink.protocol.stun import binding_response

StunHook = Callable[[bytes, Address], bytes | None]
"""Answers a STUN datagram from an address: the reply to send from the presence socket, ``b""`` if
it was answered elsewhere (another socket), or None if it is not a Binding request."""

PENDING_REGISTRATION_TTL = 30.0
INVITE_RETRANSMIT_MAX = 8.0
MAX_COUNTER = 0xFFFFFFFF
INTERVAL_MEMORY = 4096
"""Distinct keepalive intervals whose float objects the core shares between sessions."""


class NotOnlineError(LookupError):
    """``send_invite`` was called for a device that is not online."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Presence settings of the broker. Times are in seconds."""

    cookie_lifetime: float = 120.0
    min_keepalive_interval: float = 1.0
    max_keepalive_interval: float = 3600.0
    offline_after_intervals: float = 2.5
    invite_retransmit: float = 1.0
    refuse_retry_after: float = 300.0
    sweep_interval: float = 1.0
    max_probe_delay: float = 3600.0
    """Longest NAT lifetime probe a device may ask for (longer ones are answered at this delay)."""
    max_probes_per_device: int = 8
    """NAT lifetime probes one device may have waiting at once; more are dropped."""
    tickets: bool = True
    """Hand out resumption tickets (``presence_ticket``) when ``accept`` is given the wall time."""


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    """What the broker knows about a device's presence (times are core time)."""

    serial: str
    online: bool
    address: Address | None
    last_seen: float | None
    registered_at: float | None
    keepalive_interval: float | None


class _Session:
    """One registered device; kept small: the broker holds one per online device."""

    __slots__ = (
        "address",
        "address_bytes",
        "interval",
        "last_seen",
        "online",
        "origin",
        "probes",
        "registered_at",
        "replay_bitmap",
        "replay_highest",
        "sealer",
        "send_counter",
        "serial",
        "session_id",
    )

    def __init__(
        self,
        serial: str,
        session_id: int,
        sealer: Sealer,
        address: Address,
        interval: float,
        now: float,
        origin: bytes,
        address_bytes: bytes,
    ) -> None:
        self.serial = serial
        self.session_id = session_id
        self.sealer = sealer
        self.address = address
        self.address_bytes = address_bytes
        self.interval = interval
        self.last_seen = now
        self.registered_at = now
        self.online = True
        self.replay_highest = -1  # the replay window (presence_crypto.window_accepts)
        self.replay_bitmap = 0
        self.send_counter = 0
        self.probes = 0
        self.origin = origin
        """What orders this device's registrations (see ``_origin``): the cookie stamp of the
        REGISTER that opened the session and its key's first bytes, then the broker's ephemeral
        key until the device first uses the session (to answer a repeated REGISTER)."""

    @property
    def unused(self) -> bool:
        """True until the device has sent an authenticated message in this session."""
        return len(self.origin) > _ORIGIN_SIZE

    def used(self) -> None:
        """The device has the session: forget what answering a repeated REGISTER needs."""
        if len(self.origin) > _ORIGIN_SIZE:
            self.origin = self.origin[:_ORIGIN_SIZE]


@dataclass(slots=True)
class _Pending:
    """A registration that passed the checks and waits for the application's verdict."""

    serial: str
    public_key: bytes
    nonce: bytes
    ephemeral: bytes
    address: Address
    interval: float
    deadline: float
    cookie_us: int
    cookie: bytes
    resume_secret: bytes | None
    """A resumed registration's ticket secret (None: a full one, by signature)."""


@dataclass(slots=True)
class _Invite:
    invite_id: int
    serial: str
    session_id: int
    kind: int
    body: bytes
    deadline: float
    next_send: float
    rto: float


class PresenceServer:
    """The broker's presence state machine (see module docstring)."""

    def __init__(
        self,
        config: ServerConfig,
        static_key: X25519PrivateKey,
        rng: Callable[[int], bytes] = os.urandom,
        stun: StunHook = binding_response,
    ) -> None:
        self._config = config
        self._stun = stun
        self._static = static_key
        self._static_public = x25519_public_bytes(static_key)
        self._rng = rng
        self._pack = PackedIps()
        self._intervals: dict[float, float] = {}
        self._cookies = CookieJar(rng(32), config.cookie_lifetime, self._pack)
        self._ticket_key = ticket_key(static_key)
        self._by_sid: dict[int, _Session] = {}
        self._by_serial: dict[str, _Session] = {}
        self._by_connection: dict[Address, int] = {}
        """Session id by connection address (a host with a ``%`` suffix: a TCP link's stream)."""
        self._pending: dict[int, _Pending] = {}
        self._pending_by_nonce: dict[bytes, int] = {}
        self._next_handle = 1
        self._invites: dict[int, _Invite] = {}
        self._probe_heap: list[tuple[float, int, int, Address, int]] = []
        self._probe_seq = 0
        self._invite_heap: list[tuple[float, int]] = []
        self._next_invite = int.from_bytes(rng(4), "big") & 0x7FFFFFFF
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[ServerEvent] = deque()
        self._next_sweep: float | None = None
        self.stats: dict[str, int] = {
            "datagrams": 0,
            "dropped": 0,
            "stun": 0,
            "keepalives": 0,
            "registrations": 0,
            "refused": 0,
            "reports": 0,
            "bad_reports": 0,
            "probes": 0,
            "probes_dropped": 0,
            "replayed": 0,
            "alarm_messages": 0,
            "resumed": 0,
            "bad_tickets": 0,
        }

    # -- sans-I/O interface -------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        """The broker's static X25519 public key, to pin in device configs."""
        return self._static_public

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """(datagram, destination) pairs, oldest first; the list is drained."""
        out, self._outbox = self._outbox, []
        return out

    def queue_datagram(self, data: bytes, address: Address) -> None:
        """Queue a datagram to send from the presence socket (the RFC 5780 responder answers a
        CHANGE-REQUEST that arrived on another socket this way); the link sends it on its next
        pass (call its ``flush``)."""
        self._outbox.append((data, address))

    def next_event(self) -> ServerEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next (absolute time), or None."""
        times = []
        if self._next_sweep is not None:
            times.append(self._next_sweep)
        if self._invite_heap:
            times.append(self._invite_heap[0][0])
        if self._probe_heap:
            times.append(self._probe_heap[0][0])
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Retransmit and expire invites, mark silent devices offline, drop stale registrations."""
        while self._invite_heap and self._invite_heap[0][0] <= now:
            _, invite_id = heapq.heappop(self._invite_heap)
            invite = self._invites.get(invite_id)
            if invite is None:
                continue
            if now >= invite.deadline:
                del self._invites[invite_id]
                self._events.append(InviteExpired(invite_id, invite.serial))
                continue
            self._transmit_invite(invite, now)
        if self._probe_heap and self._probe_heap[0][0] <= now:
            self._answer_probes(now)
        if self._next_sweep is not None and now >= self._next_sweep:
            self._sweep(now)

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        """Handle one datagram from ``address``; bad ones are dropped and counted."""
        self.stats["datagrams"] += 1
        if not data or (len(data) > MAX_DATAGRAM and data[0] >= 4):  # STUN may carry PADDING
            self.stats["dropped"] += 1
            return
        first = data[0]
        try:
            if first == MessageType.KEEPALIVE:
                handled = self._on_keepalive(data, address, now)
            elif first < 4:
                handled = self._on_stun(data, address)
            elif first == MessageType.HELLO:
                handled = self._on_hello(data, address, now)
            elif first == MessageType.REGISTER:
                handled = self._on_register(data, address, now)
            elif first in (MessageType.INVITE_REPLY, MessageType.GOODBYE, MessageType.EVENT):
                handled = self._on_sealed(data, address, now)
            else:
                handled = False
        except (c.ConstructError, ValueError, UnicodeDecodeError, IndexError):
            handled = False
        if not handled:
            self.stats["dropped"] += 1

    def accept(self, handle: int, now: float, wall: float | None = None) -> None:
        """Accept a ``RegistrationRequested``: create the session and answer REGISTERED.

        ``wall``: the Unix time now; with it (and ``ServerConfig.tickets``) the REGISTERED carries
        a resumption ticket issued at that time.

        Raises:
            KeyError: ``handle`` is unknown or expired.
        """
        pending = self._take_pending(handle)
        old = self._by_serial.get(pending.serial)
        if old is not None and not _newer(pending.public_key, pending.cookie_us, old):
            # Another registration of this device won while this one waited: it is stale.
            self.stats["replayed"] += 1
            return
        broker_ephemeral, key = self._handshake(pending)
        sealer = Sealer(key)
        ticket = b""  # until used, the session keeps what seals its ticket again (see _registered)
        if wall is not None and self._config.tickets:
            ticket = (int(wall) & 0xFFFFFFFF).to_bytes(4, "big") + pending.public_key
        session_id = self._new_session_id()
        if old is not None:
            self._by_sid.pop(old.session_id, None)
            self._unindex(old)
            if old.online and old.unused:
                self._events.append(
                    RegistrationUnconfirmed(pending.serial, pending.address, now - old.registered_at)
                )
        session = _Session(
            pending.serial,
            session_id,
            sealer,
            pending.address,
            pending.interval,
            now,
            _origin(pending.cookie_us, pending.public_key) + broker_ephemeral + ticket,
            encode_address(pending.address, self._pack),
        )
        self._by_sid[session_id] = session
        self._by_serial[pending.serial] = session
        self._index(session)
        session.send_counter = 1
        self._outbox.append((self._registered(session), pending.address))
        self.stats["registrations"] += 1
        self._events.append(DeviceOnline(pending.serial, pending.address))
        if self._next_sweep is None:
            self._next_sweep = now + self._config.sweep_interval

    def refuse(
        self, handle: int, reason: RefuseReason, message: str, now: float, retry_after: float | None = None
    ) -> None:
        """Refuse a ``RegistrationRequested`` with an authenticated REFUSED; the device waits
        ``retry_after`` seconds (default ``ServerConfig.refuse_retry_after``) before it tries again.

        Raises:
            KeyError: ``handle`` is unknown or expired.
        """
        pending = self._take_pending(handle)
        broker_ephemeral, key = self._handshake(pending)
        sealer = Sealer(key)
        header = HEADER_STRUCT.pack(MessageType.REFUSED, VERSION, 0, 1) + broker_ephemeral
        text = message.encode("utf-8")[:300].decode("utf-8", "ignore")
        plain = REFUSED_PLAIN.build(
            {
                "reason": int(reason),
                "retry_after_s": int(self._config.refuse_retry_after if retry_after is None else retry_after),
                "message": text,
            }
        )
        self._outbox.append((sealer.seal(BROKER_TO_DEVICE, 1, header, bytes(plain)), pending.address))
        self.stats["refused"] += 1

    def send_invite(self, serial: str, kind: int, body: bytes, now: float, ttl: float = 30.0) -> int:
        """Push an invite to an online device; retransmitted until answered or ``ttl`` passes.

        Returns the invite id that ``InviteAnswered``/``InviteExpired`` will carry.

        Raises:
            NotOnlineError: the device is not online.
            ValueError: ``body`` is larger than the protocol allows or ``kind`` is not 0-255.
        """
        if len(body) > MAX_INVITE_BODY or not 0 <= kind <= 0xFF:
            raise ValueError(f"invite body too large ({len(body)} bytes) or bad kind {kind}")
        session = self._by_serial.get(serial)
        if session is None or not session.online:
            raise NotOnlineError(f"device {serial} is not online")
        self._next_invite = (self._next_invite + 1) & 0xFFFFFFFF
        invite = _Invite(
            self._next_invite,
            serial,
            session.session_id,
            kind,
            body,
            now + ttl,
            now,
            self._config.invite_retransmit,
        )
        self._invites[invite.invite_id] = invite
        self._transmit_invite(invite, now)
        return invite.invite_id

    def send_alarm_ack(self, serial: str, plaintext: bytes, now: float) -> bool:
        """Send an EVENT (an ``alarm_wire`` ACK plaintext) to ``serial``'s current session; False
        if it is not online (the device sends its alarms again once registered)."""
        session = self._by_serial.get(serial)
        if session is None or not session.online or session.send_counter >= MAX_COUNTER:
            return False
        session.send_counter += 1
        out = session.send_counter
        header = HEADER_STRUCT.pack(MessageType.EVENT, VERSION, session.session_id, out)
        self._outbox.append((session.sealer.seal(BROKER_TO_DEVICE, out, header, plaintext), session.address))
        return True

    def connection_closed(self, address: Address, now: float) -> None:
        """The connection at ``address`` (a stream address of the TCP link) closed. A device whose
        session was reached there cannot be reached until it registers again: it goes offline at
        once (``DeviceOffline``), instead of after its keepalive intervals of silence."""
        session = self._by_sid.get(self._by_connection.pop(address, 0))
        if session is not None and session.address == address:
            self._go_offline(session, "its presence connection closed")

    def disconnect(self, serial: str, device_key: bytes, reason: str) -> bool:
        """End ``serial``'s session if it is online and was opened with ``device_key``: it goes
        offline at once (``DeviceOffline`` with ``reason``), and its next keepalive is answered
        UNKNOWN_SESSION, so the device registers again. The application uses it when a check it
        made after ``accept`` (a ticket's binding, verified in a batch) fails. False when there
        was no such session (the device registered again with another key, or is offline)."""
        session = self._by_serial.get(serial)
        if session is None or not session.online:
            return False
        if device_key[:_KEY_PREFIX] != session.origin[_STAMP_SIZE:_ORIGIN_SIZE]:
            return False
        self._go_offline(session, reason)
        return True

    def presence(self, serial: str) -> PresenceInfo | None:
        """Presence of ``serial``, or None if it has not registered since the broker started."""
        session = self._by_serial.get(serial)
        if session is None:
            return None
        return PresenceInfo(
            serial,
            session.online,
            session.address,
            session.last_seen,
            session.registered_at,
            session.interval,
        )

    def online_serials(self) -> list[str]:
        """Serials of every online device."""
        return [s.serial for s in self._by_sid.values()]

    @property
    def online_count(self) -> int:
        """Number of online devices."""
        return len(self._by_sid)

    # -- handlers -----------------------------------------------------------------------------

    def _on_stun(self, data: bytes, address: Address) -> bool:
        reply = self._stun(data, address)
        if reply is None:
            return False
        self.stats["stun"] += 1
        if reply:
            self._outbox.append((reply, address))
        return True

    def _on_hello(self, data: bytes, address: Address, now: float) -> bool:
        nonce = hello_nonce(data)
        if nonce is None:
            return False
        self._outbox.append((cookie_datagram(nonce, self._cookies.make(address, nonce, now)), address))
        return True

    def _on_register(self, data: bytes, address: Address, now: float) -> bool:
        body = parse_register(data)
        if body.version != VERSION:
            return False
        nonce = body.nonce
        if nonce in self._pending_by_nonce:
            return True  # a retransmission while the application decides
        if not self._cookies.verify(body.cookie, address, nonce, now):
            return False
        ticket: Ticket | None = None
        if body.resumed:
            ticket = open_ticket(self._ticket_key, body.ticket)
            if (
                ticket is None
                or ticket.serial != body.serial
                or ticket.device_key != body.device_key
                or not hmac.compare_digest(resume_mac(ticket.secret, body.signed_part), body.mac)
            ):
                self.stats["bad_tickets"] += 1
                return False
        elif not ed25519_verify(body.device_key, body.signature, REGISTER_SIGNING_LABEL + body.body):
            return False
        serial = body.serial
        cookie_us = CookieJar.stamp(body.cookie)
        current = self._by_serial.get(serial)
        device_key = body.device_key
        if current is not None and not _newer(device_key, cookie_us, current):
            if cookie_us == _stamp(current) and current.online and current.unused:
                # The device repeats its REGISTER: REGISTERED was lost. Same answer, same session.
                self._outbox.append((self._registered(current), current.address))
                return True
            self.stats["replayed"] += 1
            return False
        interval = self._interval(body.keepalive_ms)
        handle = self._next_handle
        self._next_handle += 1
        self._pending[handle] = _Pending(
            serial,
            device_key,
            nonce,
            body.ephemeral_key,
            address,
            interval,
            now + PENDING_REGISTRATION_TTL,
            cookie_us,
            body.cookie,
            ticket.secret if ticket is not None else None,
        )
        self._pending_by_nonce[nonce] = handle
        if self._next_sweep is None:
            self._next_sweep = now + self._config.sweep_interval
        if ticket is not None:
            self.stats["resumed"] += 1
        issued = float(ticket.issued_at) if ticket is not None else None
        self._events.append(RegistrationRequested(handle, serial, device_key, address, interval, issued))
        return True

    def _on_keepalive(self, data: bytes, address: Address, now: float) -> bool:
        if len(data) < SEALED_HEADER_SIZE:
            return False
        _type, version, session_id, counter = HEADER_STRUCT.unpack_from(data)
        session = self._by_sid.get(session_id)
        if session is None:
            if version != VERSION:
                return False
            # Smaller than the request (6 < 26 bytes): tells a device the broker restarted.
            self._outbox.append((bytes([MessageType.UNKNOWN_SESSION, VERSION]) + data[2:6], address))
            return True
        if not window_accepts(session.replay_highest, session.replay_bitmap, counter):
            return False
        header = data[:SEALED_HEADER_SIZE]
        cipher = session.sealer.cipher()
        plain = session.sealer.open(DEVICE_TO_BROKER, counter, header, data[SEALED_HEADER_SIZE:], cipher)
        if plain is None:
            return False
        session.replay_highest, session.replay_bitmap = window_commit(
            session.replay_highest, session.replay_bitmap, counter
        )
        session.used()  # the device has the session: a repeated REGISTER is a replay now
        if plain:
            try:
                controls = read_controls(plain)
                report = DeviceReport.decode(plain)
            except ValueError:
                self.stats["bad_reports"] += 1  # still a live device: acknowledged below
                controls, report = {}, DeviceReport()
            probe = controls.get(PROBE_DELAY)
            if probe is not None:
                # From the device's probe socket: alive, but not its address; answer later.
                session.last_seen = now
                self._schedule_probe(session, address, counter, probe / 1000, now)
                return True
            interval = controls.get(INTERVAL)
            if interval is not None:
                session.interval = self._interval(interval)
            if report != DeviceReport():
                self._events.append(DeviceReported(session.serial, report))
                self.stats["reports"] += 1
        self._touch(session, address, now)
        session.send_counter += 1
        out = session.send_counter
        ack_header = HEADER_STRUCT.pack(MessageType.KEEPALIVE_ACK, VERSION, session_id, out)
        plain = ECHO_STRUCT.pack(counter & 0xFFFF) + session.address_bytes
        self._outbox.append((session.sealer.seal(BROKER_TO_DEVICE, out, ack_header, plain, cipher), address))
        self.stats["keepalives"] += 1
        return True

    def _schedule_probe(
        self, session: _Session, address: Address, counter: int, delay: float, now: float
    ) -> None:
        if session.probes >= self._config.max_probes_per_device:
            self.stats["probes_dropped"] += 1
            return
        session.probes += 1
        self._probe_seq += 1
        due = now + min(max(delay, 0.0), self._config.max_probe_delay)
        heapq.heappush(
            self._probe_heap, (due, self._probe_seq, session.session_id, address, counter & 0xFFFF)
        )
        self.stats["probes"] += 1

    def _answer_probes(self, now: float) -> None:
        while self._probe_heap and self._probe_heap[0][0] <= now:
            _, _, session_id, address, echo = heapq.heappop(self._probe_heap)
            session = self._by_sid.get(session_id)
            if session is None:
                continue
            session.probes -= 1
            session.send_counter += 1
            out = session.send_counter
            header = HEADER_STRUCT.pack(MessageType.KEEPALIVE_ACK, VERSION, session_id, out)
            plain = ECHO_STRUCT.pack(echo) + encode_address(address, self._pack)
            self._outbox.append((session.sealer.seal(BROKER_TO_DEVICE, out, header, plain), address))

    def _on_sealed(self, data: bytes, address: Address, now: float) -> bool:
        if len(data) < SEALED_HEADER_SIZE:
            return False
        mtype, version, session_id, counter = HEADER_STRUCT.unpack_from(data)
        session = self._by_sid.get(session_id)
        if (
            session is None
            or version != VERSION
            or not window_accepts(session.replay_highest, session.replay_bitmap, counter)
        ):
            return False
        plain = session.sealer.open(
            DEVICE_TO_BROKER, counter, data[:SEALED_HEADER_SIZE], data[SEALED_HEADER_SIZE:]
        )
        if plain is None:
            return False
        session.replay_highest, session.replay_bitmap = window_commit(
            session.replay_highest, session.replay_bitmap, counter
        )
        session.used()
        if mtype == MessageType.GOODBYE:
            self._go_offline(session, "device said goodbye")
            return True
        self._touch(session, address, now)
        if mtype == MessageType.EVENT:
            self.stats["alarm_messages"] += 1
            self._events.append(AlarmMessageReceived(session.serial, plain))
            return True
        msg = INVITE_REPLY_PLAIN.parse(plain)
        invite = self._invites.pop(msg.invite_id, None)
        if invite is not None and invite.serial == session.serial:
            self._events.append(InviteAnswered(invite.invite_id, invite.serial, msg.status, bytes(msg.body)))
        elif invite is not None:
            self._invites[invite.invite_id] = invite
        return True

    # -- helpers ------------------------------------------------------------------------------

    def _touch(self, session: _Session, address: Address, now: float) -> None:
        session.last_seen = now
        if address != session.address:
            old = session.address
            self._unindex(session)
            session.address = address
            session.address_bytes = encode_address(address, self._pack)
            self._index(session)
            self._events.append(DeviceMoved(session.serial, old, address))

    def _index(self, session: _Session) -> None:
        if "%" in session.address[0]:
            self._by_connection[session.address] = session.session_id

    def _unindex(self, session: _Session) -> None:
        if self._by_connection.get(session.address) == session.session_id:
            del self._by_connection[session.address]

    def _take_pending(self, handle: int) -> _Pending:
        pending = self._pending.pop(handle)
        self._pending_by_nonce.pop(pending.nonce, None)
        return pending

    def _handshake(self, pending: _Pending) -> tuple[bytes, bytes]:
        """(what the reply carries in clear after its header, the session key): the broker's
        ephemeral X25519 key, or for a resumed registration 32 random bytes (no X25519)."""
        if pending.resume_secret is not None:
            broker_random = self._rng(32)
            key = resumed_session_key(
                pending.resume_secret,
                pending.nonce,
                pending.cookie,
                pending.serial,
                pending.public_key,
                broker_random,
            )
            return broker_random, key
        ephemeral = X25519PrivateKey.from_private_bytes(self._rng(32))
        ephemeral_public = x25519_public_bytes(ephemeral)
        key = derive_session_key(
            x25519(self._static, pending.ephemeral),
            x25519(ephemeral, pending.ephemeral),
            pending.nonce,
            pending.serial,
            pending.public_key,
            pending.ephemeral,
            ephemeral_public,
            self._static_public,
        )
        return ephemeral_public, key

    def _registered(self, session: _Session) -> bytes:
        """The session's REGISTERED, built again byte for byte from what an unused session keeps
        (the AEAD is deterministic for the same key, counter and plaintext, and so is the ticket:
        its nonce is derived from the session key, see ``presence_ticket.ticket_nonce``)."""
        broker_ephemeral = session.origin[_ORIGIN_SIZE : _ORIGIN_SIZE + 32]
        kept = session.origin[_ORIGIN_SIZE + 32 :]
        ticket = b""
        if kept:
            key = session.sealer.key
            issued = Ticket(session.serial, kept[4:], resumption_secret(key), int.from_bytes(kept[:4], "big"))
            ticket = seal_ticket(self._ticket_key, issued, ticket_nonce(self._ticket_key, key))
        header = HEADER_STRUCT.pack(MessageType.REGISTERED, VERSION, session.session_id, 1) + broker_ephemeral
        # REGISTERED_PLAIN, packed by hand: it is on the registration path
        plain = round(session.interval * 1000).to_bytes(4, "big") + session.address_bytes + ticket
        return session.sealer.seal(BROKER_TO_DEVICE, 1, header, plain)

    def _interval(self, milliseconds: int) -> float:
        """A device's keepalive interval in seconds, within the configured bounds. Most devices
        share a few intervals: the same float object is handed out for each (24 bytes a session
        less), from a memory of at most ``INTERVAL_MEMORY`` values."""
        config = self._config
        value = min(max(milliseconds / 1000, config.min_keepalive_interval), config.max_keepalive_interval)
        shared = self._intervals.get(value)
        if shared is None:
            if len(self._intervals) >= INTERVAL_MEMORY:
                self._intervals.clear()
            shared = self._intervals[value] = value
        return shared

    def _new_session_id(self) -> int:
        while True:
            session_id = int.from_bytes(self._rng(4), "big")
            if session_id and session_id not in self._by_sid:
                return session_id

    def _transmit_invite(self, invite: _Invite, now: float) -> None:
        session = self._by_sid.get(invite.session_id)
        if session is None:
            # The device re-registered or went offline; the invite follows the serial.
            current = self._by_serial.get(invite.serial)
            if current is None or not current.online:
                heapq.heappush(self._invite_heap, (invite.deadline, invite.invite_id))
                return
            session = current
            invite.session_id = current.session_id
        if session.send_counter >= MAX_COUNTER:
            return
        session.send_counter += 1
        out = session.send_counter
        header = HEADER_STRUCT.pack(MessageType.INVITE, VERSION, session.session_id, out)
        plain = INVITE_PLAIN.build({"invite_id": invite.invite_id, "kind": invite.kind, "body": invite.body})
        self._outbox.append(
            (session.sealer.seal(BROKER_TO_DEVICE, out, header, bytes(plain)), session.address)
        )
        invite.next_send = min(now + invite.rto, invite.deadline)
        invite.rto = min(invite.rto * 2, INVITE_RETRANSMIT_MAX)
        heapq.heappush(self._invite_heap, (invite.next_send, invite.invite_id))

    def _go_offline(self, session: _Session, reason: str) -> None:
        if self._by_sid.pop(session.session_id, None) is not None:
            self._unindex(session)
            session.online = False
            session.used()
            self._events.append(DeviceOffline(session.serial, reason))

    def _sweep(self, now: float) -> None:
        factor = self._config.offline_after_intervals
        silent = [s for s in self._by_sid.values() if now - s.last_seen > s.interval * factor]
        for session in silent:
            self._go_offline(session, f"no keepalive for {now - session.last_seen:.0f} s")
        stale = [h for h, p in self._pending.items() if p.deadline <= now]
        for handle in stale:
            self._take_pending(handle)
        busy = self._by_sid or self._pending
        self._next_sweep = now + self._config.sweep_interval if busy else None


_STAMP_SIZE = COOKIE_STAMP_SIZE
_KEY_PREFIX = 8
_ORIGIN_SIZE = _STAMP_SIZE + _KEY_PREFIX


def _origin(cookie_us: int, device_key: bytes) -> bytes:
    """Cookie stamp (7 bytes) ‖ the device key's first 8 bytes: 15 bytes per session.

    Cookie stamps are unique, so a stamp names one HELLO and thus one REGISTER: the same stamp
    is a repeat of the REGISTER that opened the session, an older one a replay. The key prefix
    tells the device's own registrations from another key's (which the application judges)."""
    return cookie_us.to_bytes(_STAMP_SIZE, "big") + device_key[:_KEY_PREFIX]


def _stamp(session: _Session) -> int:
    return int.from_bytes(session.origin[:_STAMP_SIZE], "big")


def _newer(device_key: bytes, cookie_us: int, session: _Session) -> bool:
    """True unless a registration by the session's own key is the one that opened ``session``
    or an older one (by its cookie's time stamp): such a REGISTER is a repeat or a replay, and
    never replaces the session. Another key is for the application to judge."""
    if device_key[:_KEY_PREFIX] != session.origin[_STAMP_SIZE:_ORIGIN_SIZE]:
        return True
    return cookie_us > _stamp(session)
