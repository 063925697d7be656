"""Device side of the presence protocol: register, keep alive, answer invites. Sans-I/O.

Feed it datagrams from the broker and the current time; take datagrams to send, events and the
next timer deadline. It never raises on bad input from the network: malformed, forged or
replayed datagrams are counted in ``stats`` and dropped. States and transitions are in
``TRANSITIONS``; docs/protocol.md has the diagram.
"""

from __future__ import annotations

import enum
import os
import random
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import construct as c
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.protocol.alarm_link import AlarmSender
from dvrlink.protocol.alarm_wire import AlarmRecord
from dvrlink.protocol.identity import ed25519_public_bytes, validate_serial, x25519_public_bytes
from dvrlink.protocol.presence_crypto import (
    BROKER_TO_DEVICE,
    DEVICE_TO_BROKER,
    ReplayWindow,
    Sealer,
    derive_session_key,
    x25519,
)
from dvrlink.protocol.presence_events import (
    Address,
    ClientEvent,
    ConnectionLost,
    HandshakeUnanswered,
    InviteReceived,
    KeepaliveAcknowledged,
    ReflexiveAddressChanged,
    Registered,
    RegistrationRefused,
)
from dvrlink.protocol.presence_report import DeviceReport, encode_controls
from dvrlink.protocol.presence_ticket import (
    resume_mac,
    resumed_session_key,
    resumption_secret,
)
from dvrlink.protocol.presence_wire import (
    COOKIE,
    ECHO_STRUCT,
    EPHEMERAL_HEADER_SIZE,
    HEADER_STRUCT,
    HELLO_SIZE,
    INVITE_PLAIN,
    INVITE_REPLY_PLAIN,
    KEY_SIZE,
    MAX_INVITE_BODY,
    NONCE_SIZE,
    REFUSED_PLAIN,
    REGISTER_BODY,
    REGISTER_SIGNING_LABEL,
    REGISTERED_PLAIN,
    SEALED_HEADER_SIZE,
    UNKNOWN_SESSION,
    VERSION,
    MessageType,
    RefuseReason,
    decode_address,
    split_registered,
)

REPLIED_INVITES_KEPT = 32
MAX_COUNTER = 0xFFFFFFFF


class ClientState(enum.Enum):
    """Where the device is in its relation with the broker."""

    IDLE = "idle"
    COOKIE_WAIT = "cookie-wait"
    REGISTER_WAIT = "register-wait"
    ONLINE = "online"
    BACKOFF = "backoff"


# Every transition the client makes, with its cause. ``_enter`` refuses anything else.
TRANSITIONS: dict[tuple[ClientState, ClientState], str] = {
    (ClientState.IDLE, ClientState.COOKIE_WAIT): "start: HELLO sent",
    (ClientState.COOKIE_WAIT, ClientState.REGISTER_WAIT): "COOKIE received: REGISTER sent",
    (ClientState.COOKIE_WAIT, ClientState.BACKOFF): "no COOKIE after all retries",
    (ClientState.COOKIE_WAIT, ClientState.COOKIE_WAIT): "network changed: new HELLO",
    (ClientState.REGISTER_WAIT, ClientState.ONLINE): "REGISTERED received",
    (ClientState.REGISTER_WAIT, ClientState.BACKOFF): "REFUSED, or no answer after all retries",
    (ClientState.REGISTER_WAIT, ClientState.COOKIE_WAIT): "network changed: new HELLO",
    (ClientState.ONLINE, ClientState.COOKIE_WAIT): (
        "keepalive lost, UNKNOWN_SESSION, reflexive address or network changed"
    ),
    (ClientState.BACKOFF, ClientState.COOKIE_WAIT): "backoff over, or network changed",
    (ClientState.ONLINE, ClientState.IDLE): "stop: GOODBYE sent",
    (ClientState.COOKIE_WAIT, ClientState.IDLE): "stop",
    (ClientState.REGISTER_WAIT, ClientState.IDLE): "stop",
    (ClientState.BACKOFF, ClientState.IDLE): "stop",
}


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Presence settings of one device. Times are in seconds."""

    serial: str
    broker_public_key: bytes
    keepalive_interval: float = 25.0
    reply_timeout: float = 3.0
    retries: int = 2
    backoff_initial: float = 1.0
    backoff_max: float | None = None

    def __post_init__(self) -> None:
        validate_serial(self.serial)
        if len(self.broker_public_key) != KEY_SIZE:
            raise ValueError(f"broker public key must be {KEY_SIZE} bytes")
        if not 0.05 <= self.keepalive_interval <= 3600:
            raise ValueError(
                f"keepalive interval {self.keepalive_interval} s is out of range: use 0.05-3600 s"
            )
        if self.reply_timeout <= 0 or self.retries < 0 or self.backoff_initial <= 0:
            raise ValueError("reply_timeout and backoff_initial must be > 0, retries >= 0")


class PresenceClient:
    """The device's presence state machine (see module docstring)."""

    def __init__(
        self,
        config: ClientConfig,
        device_key: Ed25519PrivateKey,
        rng: Callable[[int], bytes] = os.urandom,
        jitter: Callable[[], float] = random.random,
        alarms: AlarmSender | None = None,
    ) -> None:
        """``alarms``: the device's alarm queue, sent in EVENT messages while online (its
        ``AlarmsDelivered``/``AlarmsDropped`` come out of ``next_event``)."""
        self._config = config
        self._alarms = alarms
        self._device_key = device_key
        self._device_public = ed25519_public_bytes(device_key)
        self._rng = rng
        self._jitter = jitter
        self._state = ClientState.IDLE
        self._outbox: list[bytes] = []
        self._events: deque[ClientEvent] = deque()
        self._timer: float | None = None
        self._tries = 0
        self._failures = 0
        # registration attempt
        self._nonce = b""
        self._ephemeral: X25519PrivateKey | None = None
        self._register_datagram = b""
        self._stage_started = 0.0
        self._unverified = 0
        """Replies to this attempt's REGISTER that did not open with the pinned broker key."""
        self._cookie = b""
        self._ticket: tuple[bytes, bytes] | None = None
        """The broker's last resumption ticket and its secret (``presence_ticket``): the next
        registration resumes with it, without a signature or X25519."""
        self._resuming = False
        """This attempt's REGISTER is a resumed one."""
        # session
        self._session_id: int | None = None
        self._sealer: Sealer | None = None
        self._send_counter = 0
        self._replay = ReplayWindow()
        self._reflexive: Address | None = None
        self._interval = config.keepalive_interval
        self._awaiting_echo: int | None = None
        self._keepalive_sent_at = 0.0
        self._first_send_at = 0.0
        self._last_ack_at: float | None = None
        self._registered_at: float | None = None
        self._rtt: float | None = None
        self._pending_invites: set[int] = set()
        self._replied: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._report: bytes | None = None
        self._report_sent: bytes | None = None
        self._new_interval: float | None = None
        self._preferred_interval = config.keepalive_interval
        """What REGISTER asks for: the configured interval, or the one set and acknowledged since."""
        self._interval_sent: float | None = None
        self._now = 0.0
        """The time of the last input or timer (when queued alarms are stamped as sent)."""
        self.stats: dict[str, int] = {"dropped": 0, "sent": 0, "received": 0, "reports": 0, "resumed": 0}

    # -- public properties --------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """Current state."""
        return self._state

    @property
    def session_id(self) -> int | None:
        """Session id given by the broker while online."""
        return self._session_id if self._state is ClientState.ONLINE else None

    @property
    def reflexive_address(self) -> Address | None:
        """The device's address as the broker last saw it."""
        return self._reflexive

    @property
    def last_keepalive_at(self) -> float | None:
        """Time of the last acknowledged keepalive or registration."""
        return self._last_ack_at

    @property
    def registered_at(self) -> float | None:
        """Time the current session was registered."""
        return self._registered_at

    @property
    def rtt(self) -> float | None:
        """Last measured round-trip time to the broker."""
        return self._rtt

    @property
    def keepalive_interval(self) -> float:
        """Interval granted by the broker (or the configured one before registration)."""
        return self._interval

    # -- sans-I/O interface -------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin registering.

        Raises:
            RuntimeError: already started.
        """
        if self._state is not ClientState.IDLE:
            raise RuntimeError("PresenceClient.start() called twice")
        self._send_hello(now)

    def network_changed(self, now: float, reason: str = "local network changed") -> None:
        """The local address or uplink changed, or the link under the session went (``reason``
        says which, for the ``ConnectionLost`` of an online session): register again at once."""
        if self._state is ClientState.IDLE:
            return
        if self._state is ClientState.ONLINE:
            self._events.append(ConnectionLost(reason))
        self._send_hello(now)

    def stop(self, now: float) -> None:
        """Say GOODBYE so the broker shows the device offline at once; the client goes idle."""
        if self._state is ClientState.ONLINE:
            self._outbox.append(self._seal(MessageType.GOODBYE, b""))
        self._reset_session()
        if self._state is not ClientState.IDLE:
            self._enter(ClientState.IDLE)
        self._timer = None

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams for the broker address, oldest first; the list is drained."""
        self._pump_alarms()
        out, self._outbox = self._outbox, []
        self.stats["sent"] += len(out)
        return out

    def next_event(self) -> ClientEvent | None:
        """The next event, or None."""
        if self._events:
            return self._events.popleft()
        return self._alarms.next_event() if self._alarms is not None else None

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called next (absolute time), or None."""
        alarm_timer = self._alarms.get_timer() if self._alarms is not None else None
        if alarm_timer is None or (self._timer is not None and self._timer < alarm_timer):
            return self._timer
        return alarm_timer

    def handle_timer(self, now: float) -> None:
        """Act on an expired timer; calling it early does nothing."""
        self._now = now
        if self._alarms is not None:
            self._alarms.handle_timer(now)
        if self._timer is None or now < self._timer:
            return
        state = self._state
        if state is ClientState.COOKIE_WAIT:
            if self._tries <= self._config.retries:
                self._tries += 1
                self._outbox.append(self._hello_datagram())
                self._timer = now + self._config.reply_timeout
            else:
                self._unanswered("hello", now)
                self._backoff(now, 0.0)
        elif state is ClientState.REGISTER_WAIT:
            if self._tries <= self._config.retries:
                self._tries += 1
                self._outbox.append(self._register_datagram)
                self._timer = now + self._config.reply_timeout
            else:
                self._unanswered("register", now)
                if self._resuming:
                    self._ticket = None  # a node outside the ticket's fleet stays silent: go in full
                self._backoff(now, 0.0)
        elif state is ClientState.BACKOFF:
            self._send_hello(now)
        elif state is ClientState.ONLINE:
            self._keepalive_timer(now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Handle one datagram from the broker; bad ones are dropped and counted."""
        self._now = now
        self.stats["received"] += 1
        try:
            handled = self._dispatch(data, now)
        except (c.ConstructError, ValueError, UnicodeDecodeError):
            handled = False
        if not handled:
            self.stats["dropped"] += 1

    def send_alarm(self, record: AlarmRecord, now: float) -> None:
        """Queue ``record`` (already persisted) for the broker; it goes out with the next
        ``datagrams_to_send`` when online, else once registered.

        Raises:
            RuntimeError: the client was made without an alarm queue.
            ValueError: as ``AlarmSender.push``.
        """
        if self._alarms is None:
            raise RuntimeError("PresenceClient made without alarms= cannot send alarms")
        self._now = now
        self._alarms.push(record, now)

    def reply_invite(self, invite_id: int, status: int, body: bytes, now: float) -> None:
        """Answer an ``InviteReceived``. The reply is sent again if the broker repeats the invite.

        Raises:
            ValueError: ``body`` is larger than the protocol allows or status is not 0-255.
        """
        if len(body) > MAX_INVITE_BODY or not 0 <= status <= 0xFF:
            raise ValueError(f"invite reply too large ({len(body)} bytes) or bad status {status}")
        self._pending_invites.discard(invite_id)
        self._replied[invite_id] = (status, body)
        while len(self._replied) > REPLIED_INVITES_KEPT:
            self._replied.popitem(last=False)
        self._send_invite_reply(invite_id, status, body)

    def report(self, report: DeviceReport, now: float, *, send_now: bool = False) -> None:
        """Have ``report`` ride on the next keepalive (retried with it until acknowledged); a
        newer report replaces one not yet acknowledged. ``send_now``: send that keepalive now
        rather than at its time (for a change the operator should see at once; costs one round
        trip on a cellular link)."""
        self._report = report.encode()
        if send_now and self._state is ClientState.ONLINE and self._awaiting_echo is None:
            self._keepalive_timer(now)

    def set_keepalive_interval(self, interval: float, now: float) -> None:
        """Use ``interval`` seconds between keepalives from now on (a learned NAT lifetime). The
        next keepalive tells the broker, which then judges this device offline by it; the
        client switches once the broker has acknowledged that keepalive (until then, and after
        a re-registration, the old interval holds, so the broker never expects more often than
        it gets).

        Raises:
            ValueError: ``interval`` is outside 0.05-3600 s.
        """
        if not 0.05 <= interval <= 3600:
            raise ValueError(f"keepalive interval {interval} s is out of range: use 0.05-3600 s")
        self._new_interval = interval

    def probe_datagram(self, delay: float) -> tuple[bytes, int] | None:
        """A NAT lifetime probe to send from a second socket: a keepalive asking the broker to
        answer ``delay`` seconds later, to that socket's address. Returns (datagram, echo) —
        ``probe_reply`` gives the echo of the answer — or None while not registered."""
        if self._state is not ClientState.ONLINE or self._send_counter >= MAX_COUNTER - 16:
            return None
        datagram = self._seal(MessageType.KEEPALIVE, encode_controls(probe_delay_ms=round(delay * 1000)))
        return datagram, self._send_counter & 0xFFFF

    def probe_reply(self, data: bytes) -> int | None:
        """The echo of a probe's answer received on a probe socket, or None if ``data`` is not
        an authentic KEEPALIVE_ACK of the current session. It does not count as a keepalive."""
        try:
            opened = self._open_sealed(data)
            if opened is None or opened[0] != MessageType.KEEPALIVE_ACK:
                return None
            (echo,) = ECHO_STRUCT.unpack_from(opened[1])
        except (ValueError, struct.error):
            return None
        return int(echo)

    @property
    def report_pending(self) -> bool:
        """True while a report waits for the broker's acknowledgement."""
        return self._report is not None

    # -- registration -------------------------------------------------------------------------

    def _enter(self, state: ClientState) -> None:
        if (self._state, state) not in TRANSITIONS:
            raise AssertionError(f"no transition {self._state} -> {state}")
        self._state = state

    def _hello_datagram(self) -> bytes:
        head = bytes([MessageType.HELLO, VERSION]) + self._nonce
        return head + bytes(HELLO_SIZE - len(head))

    def _send_hello(self, now: float) -> None:
        self._enter(ClientState.COOKIE_WAIT)
        self._reset_session()
        self._nonce = self._rng(NONCE_SIZE)
        self._tries = 1
        self._stage_started = now
        self._unverified = 0
        self._outbox.append(self._hello_datagram())
        self._timer = now + self._config.reply_timeout

    def _reset_session(self) -> None:
        if self._alarms is not None:
            self._alarms.link_down()
        self._session_id = None
        self._sealer = None
        self._awaiting_echo = None
        self._pending_invites.clear()
        self._replied.clear()

    def _unanswered(self, stage: str, now: float) -> None:
        waited = now - self._stage_started
        self._events.append(HandshakeUnanswered(stage, self._tries, waited, self._unverified))

    def _backoff(self, now: float, at_least: float) -> None:
        self._enter(ClientState.BACKOFF)
        cap = self._config.backoff_max or self._config.keepalive_interval
        delay = min(cap, self._config.backoff_initial * (2**self._failures))
        self._failures = min(self._failures + 1, 30)
        delay *= 0.5 + 0.5 * self._jitter()
        self._timer = now + max(delay, at_least)

    def _on_cookie(self, data: bytes, now: float) -> bool:
        if self._state is not ClientState.COOKIE_WAIT:
            return False
        msg = COOKIE.parse(data)
        if msg.version != VERSION or msg.nonce != self._nonce:
            return False
        self._cookie = bytes(msg.cookie)
        self._resuming = self._ticket is not None
        self._ephemeral = None if self._resuming else X25519PrivateKey.from_private_bytes(self._rng(32))
        body = REGISTER_BODY.build(
            {
                "version": VERSION,
                "cookie": msg.cookie,
                "nonce": self._nonce,
                "device_key": self._device_public,
                "ephemeral_key": bytes(KEY_SIZE)
                if self._ephemeral is None
                else x25519_public_bytes(self._ephemeral),
                "keepalive_ms": round(self._preferred_interval * 1000),
                "serial": self._config.serial,
            }
        )
        if self._ticket is not None:
            ticket, secret = self._ticket
            signed = bytes(body) + len(ticket).to_bytes(2, "big") + ticket
            self._register_datagram = signed + resume_mac(secret, signed)
        else:
            signature = self._device_key.sign(REGISTER_SIGNING_LABEL + body)
            self._register_datagram = bytes(body) + signature
        self._enter(ClientState.REGISTER_WAIT)
        self._tries = 1
        self._first_send_at = self._stage_started = now
        self._outbox.append(self._register_datagram)
        self._timer = now + self._config.reply_timeout
        return True

    def _handshake_sealer(self, data: bytes) -> tuple[bytes, int, int, bytes] | None:
        """Derive the session key from a REGISTERED/REFUSED and open it: (key, session id,
        counter, plaintext)."""
        if self._state is not ClientState.REGISTER_WAIT:
            return None
        if len(data) < EPHEMERAL_HEADER_SIZE:
            return None
        _type, version, session_id, counter = HEADER_STRUCT.unpack_from(data)
        if version != VERSION:
            return None
        broker_ephemeral = data[SEALED_HEADER_SIZE:EPHEMERAL_HEADER_SIZE]
        if self._resuming:
            if self._ticket is None:
                return None
            key = resumed_session_key(
                self._ticket[1],
                self._nonce,
                self._cookie,
                self._config.serial,
                self._device_public,
                broker_ephemeral,
            )
            return self._open_handshake(key, data, session_id, counter)
        if self._ephemeral is None:
            return None
        key = derive_session_key(
            x25519(self._ephemeral, self._config.broker_public_key),
            x25519(self._ephemeral, broker_ephemeral),
            self._nonce,
            self._config.serial,
            self._device_public,
            x25519_public_bytes(self._ephemeral),
            broker_ephemeral,
            self._config.broker_public_key,
        )
        return self._open_handshake(key, data, session_id, counter)

    def _open_handshake(
        self, key: bytes, data: bytes, session_id: int, counter: int
    ) -> tuple[bytes, int, int, bytes] | None:
        head = data[:EPHEMERAL_HEADER_SIZE]
        plain = Sealer(key).open(BROKER_TO_DEVICE, counter, head, data[EPHEMERAL_HEADER_SIZE:])
        if plain is None:
            self._unverified += 1  # not from a holder of the pinned key (or corrupt)
            return None
        return key, session_id, counter, plain

    def _on_registered(self, data: bytes, now: float) -> bool:
        opened = self._handshake_sealer(data)
        if opened is None:
            return False
        key, session_id, counter, plain = opened
        msg = REGISTERED_PLAIN.parse(plain)
        address_bytes, ticket = split_registered(msg.address)
        address = decode_address(address_bytes)
        resumed = self._resuming
        self._ticket = (ticket, resumption_secret(key)) if ticket else None
        if resumed:
            self.stats["resumed"] += 1
        self._sealer = Sealer(key)
        self._session_id = session_id
        self._replay = ReplayWindow()
        self._replay.commit(counter)
        self._send_counter = 0
        self._interval = max(0.05, msg.keepalive_ms / 1000)
        self._reflexive = address
        self._registered_at = now
        self._last_ack_at = now
        self._failures = 0
        self._rtt = now - self._first_send_at if self._tries == 1 else self._rtt
        self._enter(ClientState.ONLINE)
        self._awaiting_echo = None
        self._timer = now + self._interval
        self._events.append(Registered(session_id, address, self._interval, resumed))
        if self._alarms is not None:
            self._alarms.link_up(now)
        return True

    def _on_refused(self, data: bytes, now: float) -> bool:
        opened = self._handshake_sealer(data)
        if opened is None:
            return False
        msg = REFUSED_PLAIN.parse(opened[3])
        self._events.append(RegistrationRefused(msg.reason, msg.message, float(msg.retry_after_s)))
        if self._resuming:
            self._ticket = None  # whatever the reason, the next registration goes in full
            if msg.reason == RefuseReason.TICKET_EXPIRED:
                self._send_hello(now)
                return True
        self._backoff(now, float(msg.retry_after_s))
        return True

    # -- online -------------------------------------------------------------------------------

    def _seal(self, mtype: MessageType, plaintext: bytes) -> bytes:
        assert self._sealer is not None and self._session_id is not None
        self._send_counter += 1
        header = HEADER_STRUCT.pack(mtype, VERSION, self._session_id, self._send_counter)
        return self._sealer.seal(DEVICE_TO_BROKER, self._send_counter, header, plaintext)

    def _keepalive_timer(self, now: float) -> None:
        if self._send_counter >= MAX_COUNTER - 16:
            self._lose(now, "counter space used up")
            return
        if self._awaiting_echo is None:
            self._tries = 1
            self._first_send_at = now
        elif self._tries <= self._config.retries:
            self._tries += 1
        else:
            waited = now - self._first_send_at
            self._lose(now, f"no keepalive reply after {self._tries} tries in {waited:.1f} s", silence=True)
            return
        report = self._report
        self._report_sent = report
        self._interval_sent = self._new_interval
        controls = b""
        if self._new_interval is not None:
            controls = encode_controls(interval_ms=round(self._new_interval * 1000))
        self._outbox.append(self._seal(MessageType.KEEPALIVE, (report or b"") + controls))
        self._awaiting_echo = self._send_counter & 0xFFFF
        self._keepalive_sent_at = now
        self._timer = now + self.keepalive_reply_timeout

    @property
    def keepalive_reply_timeout(self) -> float:
        """Seconds to wait for a keepalive's reply before sending it again: ``reply_timeout``, but
        at most what lets all tries end within half an interval. A broker that falls silent is
        then given up at most 1.5 keepalive intervals after its last answer, which leaves half an
        interval to register with another node: the move completes within two intervals."""
        budget = self._interval / (2 * (self._config.retries + 1))
        return min(self._config.reply_timeout, budget)

    def _lose(self, now: float, reason: str, *, silence: bool = False) -> None:
        self._events.append(ConnectionLost(reason, silence))
        self._send_hello(now)

    def _open_sealed(self, data: bytes) -> tuple[int, bytes] | None:
        """Authenticate a sealed message of the current session: (type, plaintext) or None."""
        if self._state is not ClientState.ONLINE or self._sealer is None:
            return None
        if len(data) < SEALED_HEADER_SIZE:
            return None
        mtype, version, session_id, counter = HEADER_STRUCT.unpack_from(data)
        if version != VERSION or session_id != self._session_id or not self._replay.check(counter):
            return None
        plain = self._sealer.open(
            BROKER_TO_DEVICE, counter, data[:SEALED_HEADER_SIZE], data[SEALED_HEADER_SIZE:]
        )
        if plain is None:
            return None
        self._replay.commit(counter)
        return mtype, plain

    def _on_keepalive_ack(self, plain: bytes, now: float) -> bool:
        (echo,) = ECHO_STRUCT.unpack_from(plain)
        address = decode_address(plain[ECHO_STRUCT.size :])
        if echo != self._awaiting_echo:
            return True  # a late ack of an earlier try: authentic but not the one awaited
        if self._tries == 1:
            self._rtt = now - self._first_send_at
        if self._report_sent is not None and self._report is self._report_sent:
            self._report = None
            self.stats["reports"] += 1
        self._report_sent = None
        if self._interval_sent is not None:
            self._interval = self._preferred_interval = self._interval_sent
            if self._new_interval == self._interval_sent:
                self._new_interval = None
            self._interval_sent = None
        self._awaiting_echo = None
        self._last_ack_at = now
        self._timer = self._first_send_at + self._interval
        if self._timer <= now:
            self._timer = now + self._interval
        if address != self._reflexive:
            old = self._reflexive
            self._reflexive = address
            if old is not None:
                self._events.append(ReflexiveAddressChanged(old, address))
                self._send_hello(now)
                return True
        self._events.append(KeepaliveAcknowledged(address, self._rtt or 0.0))
        return True

    def _on_invite(self, plain: bytes) -> bool:
        msg = INVITE_PLAIN.parse(plain)
        invite_id = msg.invite_id
        if invite_id in self._replied:
            status, body = self._replied[invite_id]
            self._send_invite_reply(invite_id, status, body)
        elif invite_id not in self._pending_invites:
            self._pending_invites.add(invite_id)
            self._events.append(InviteReceived(invite_id, msg.kind, bytes(msg.body)))
        return True

    def _send_invite_reply(self, invite_id: int, status: int, body: bytes) -> None:
        if self._state is not ClientState.ONLINE:
            return
        plain = INVITE_REPLY_PLAIN.build({"invite_id": invite_id, "status": status, "body": body})
        self._outbox.append(self._seal(MessageType.INVITE_REPLY, bytes(plain)))

    def _on_unknown_session(self, data: bytes, now: float) -> bool:
        msg = UNKNOWN_SESSION.parse(data)
        if self._state is not ClientState.ONLINE or msg.session_id != self._session_id:
            return False
        self._lose(now, "the broker answered UNKNOWN_SESSION: it no longer knows this session (restarted?)")
        return True

    def _dispatch(self, data: bytes, now: float) -> bool:
        if len(data) < 2:
            return False
        mtype = data[0]
        if mtype == MessageType.COOKIE:
            return self._on_cookie(data, now)
        if mtype == MessageType.REGISTERED:
            return self._on_registered(data, now)
        if mtype == MessageType.REFUSED:
            return self._on_refused(data, now)
        if mtype == MessageType.UNKNOWN_SESSION:
            return self._on_unknown_session(data, now)
        opened = self._open_sealed(data)
        if opened is None:
            return False
        sealed_type, plain = opened
        if sealed_type == MessageType.KEEPALIVE_ACK:
            return self._on_keepalive_ack(plain, now)
        if sealed_type == MessageType.INVITE:
            return self._on_invite(plain)
        if sealed_type == MessageType.EVENT and self._alarms is not None:
            return self._alarms.receive_ack(plain, now)
        return False

    def _pump_alarms(self) -> None:
        """Seal what the alarm queue wants to send (nothing unless online)."""
        if self._alarms is None or self._state is not ClientState.ONLINE:
            return
        if self._send_counter >= MAX_COUNTER - 16:
            return
        for plain in self._alarms.plaintexts_to_send(self._now):
            self._outbox.append(self._seal(MessageType.EVENT, plain))


def state_diagram() -> str:
    """The client state machine as a Mermaid diagram, generated from ``TRANSITIONS``."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    for (src, dst), cause in TRANSITIONS.items():
        lines.append(f"    {src.value} --> {dst.value}: {cause}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(state_diagram())
