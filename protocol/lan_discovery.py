"""LAN discovery and signalling without a broker: a viewer finds a paired device on its LAN and
swaps session offer and answer with it directly (sans-I/O; the sockets are in
``daemon/lan_responder.py`` and ``viewer/lan.py``).

Four datagrams, on one UDP port of the device (``[lan] port``)::

    viewer -> broadcast  QUERY     nonce_v, tag = H(device key, nonce_v), zero padding to 128 bytes
    device -> viewer     ANNOUNCE  nonce_v, nonce_d, Ed25519 signature (device key)
    viewer -> device     OFFER     nonce_d, viewer key, SessionOffer, Ed25519 signature (viewer key)
    device -> viewer     ANSWER    nonce_d, SessionAnswer, Ed25519 signature (device key)

Why these properties:

- **Only a paired viewer can find the device.** A query names the device by ``tag``, a hash of
  the device's public key and the viewer's fresh nonce, not by its serial: a stranger on the LAN
  who knows the serial (it is on the label) gets no reply, and a listener learns nothing about
  which device is sought. The public key is known to the broker and to the viewers that paired.
- **No LAN stranger can impersonate the device.** The announcement and the answer are signed by
  the device key the viewer pinned at pairing, over the viewer's fresh nonce (announce) or the
  device's nonce (answer), so an old one cannot be replayed. The QUIC handshake that follows
  checks the same pinned key again.
- **No LAN stranger can make the device open a session.** An offer must carry a nonce the device
  issued in the last ``nonce_lifetime_s`` and be signed by a viewer key the device has paired;
  each nonce opens one session (a retransmitted offer gets the same answer again).
- **No amplification.** A query must be ``QUERY_SIZE`` bytes, more than the announcement it gets;
  offers are authenticated before anything is answered.

The device's core is ``LanResponder``, the viewer's ``LanSeeker``. Both take ``now`` (seconds,
any monotonic clock) and randomness from their caller, and neither raises for bad bytes from the
network: those are dropped and counted (``LanStats``).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.protocol.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    ed25519_public_bytes,
    ed25519_verify,
)

MAGIC = b"DLAN"
VERSION = 1
NONCE_SIZE = 16
TAG_SIZE = 16
QUERY_SIZE = 128
"""Every query is exactly this long (zero padding): longer than the announcement it may get."""
MAX_BODY = 1024
"""The largest offer or answer body (an invite body's limit, ``presence_wire.MAX_INVITE_BODY``)."""
DEFAULT_PORT = 5398
"""The device's LAN discovery port (UDP) unless ``[lan] port`` says otherwise."""

_HEADER = struct.Struct("!4sBB")
_LENGTH = struct.Struct("!H")


class Kind(enum.IntEnum):
    QUERY = 1
    ANNOUNCE = 2
    OFFER = 3
    ANSWER = 4


_CONTEXT = {
    Kind.QUERY: b"dvrlink lan query v1",
    Kind.ANNOUNCE: b"dvrlink lan announce v1",
    Kind.OFFER: b"dvrlink lan offer v1",
    Kind.ANSWER: b"dvrlink lan answer v1",
}


def query_tag(device_public_key: bytes, viewer_nonce: bytes) -> bytes:
    """The tag a query names the device by: only who knows its public key can make it."""
    return hashlib.sha256(_CONTEXT[Kind.QUERY] + device_public_key + viewer_nonce).digest()[:TAG_SIZE]


# -- wire ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    viewer_nonce: bytes
    tag: bytes

    def encode(self) -> bytes:
        out = _HEADER.pack(MAGIC, VERSION, Kind.QUERY) + self.viewer_nonce + self.tag
        return out + bytes(QUERY_SIZE - len(out))


@dataclass(frozen=True, slots=True)
class Announce:
    viewer_nonce: bytes
    device_nonce: bytes
    signature: bytes

    @staticmethod
    def signed_part(device_public_key: bytes, viewer_nonce: bytes, device_nonce: bytes) -> bytes:
        return _CONTEXT[Kind.ANNOUNCE] + device_public_key + viewer_nonce + device_nonce

    def encode(self) -> bytes:
        return (
            _HEADER.pack(MAGIC, VERSION, Kind.ANNOUNCE)
            + self.viewer_nonce
            + self.device_nonce
            + self.signature
        )


@dataclass(frozen=True, slots=True)
class Offer:
    device_nonce: bytes
    viewer_key: bytes
    body: bytes
    signature: bytes

    @staticmethod
    def signed_part(device_public_key: bytes, device_nonce: bytes, viewer_key: bytes, body: bytes) -> bytes:
        return _CONTEXT[Kind.OFFER] + device_public_key + device_nonce + viewer_key + body

    def encode(self) -> bytes:
        return (
            _HEADER.pack(MAGIC, VERSION, Kind.OFFER)
            + self.device_nonce
            + self.viewer_key
            + _LENGTH.pack(len(self.body))
            + self.body
            + self.signature
        )


@dataclass(frozen=True, slots=True)
class Answer:
    device_nonce: bytes
    body: bytes
    signature: bytes

    @staticmethod
    def signed_part(device_public_key: bytes, device_nonce: bytes, viewer_key: bytes, body: bytes) -> bytes:
        return _CONTEXT[Kind.ANSWER] + device_public_key + device_nonce + viewer_key + body

    def encode(self) -> bytes:
        return (
            _HEADER.pack(MAGIC, VERSION, Kind.ANSWER)
            + self.device_nonce
            + _LENGTH.pack(len(self.body))
            + self.body
            + self.signature
        )


Message = Query | Announce | Offer | Answer


def decode(data: bytes) -> Message:
    """Parse one datagram.

    Raises:
        ValueError: not a LAN discovery datagram of this version, or malformed (the message says
            which); callers drop it.
    """
    if len(data) < _HEADER.size:
        raise ValueError(f"{len(data)} bytes: shorter than the header")
    magic, version, kind = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a dvrlink LAN datagram (magic)")
    if version != VERSION:
        raise ValueError(f"LAN protocol version {version}, this side speaks {VERSION}")
    rest = data[_HEADER.size :]
    if kind == Kind.QUERY:
        if len(data) != QUERY_SIZE:
            raise ValueError(f"query of {len(data)} bytes, not {QUERY_SIZE}")
        return Query(rest[:NONCE_SIZE], rest[NONCE_SIZE : NONCE_SIZE + TAG_SIZE])
    if kind == Kind.ANNOUNCE:
        if len(rest) != 2 * NONCE_SIZE + SIGNATURE_SIZE:
            raise ValueError(f"announcement of {len(data)} bytes")
        return Announce(rest[:NONCE_SIZE], rest[NONCE_SIZE : 2 * NONCE_SIZE], rest[2 * NONCE_SIZE :])
    if kind == Kind.OFFER:
        fixed = NONCE_SIZE + PUBLIC_KEY_SIZE
        body = _body(rest, fixed, "offer")
        return Offer(rest[:NONCE_SIZE], rest[NONCE_SIZE:fixed], body, rest[-SIGNATURE_SIZE:])
    if kind == Kind.ANSWER:
        body = _body(rest, NONCE_SIZE, "answer")
        return Answer(rest[:NONCE_SIZE], body, rest[-SIGNATURE_SIZE:])
    raise ValueError(f"unknown LAN datagram kind {kind}")


def _body(rest: bytes, fixed: int, what: str) -> bytes:
    if len(rest) < fixed + _LENGTH.size + SIGNATURE_SIZE:
        raise ValueError(f"{what} too short")
    (length,) = _LENGTH.unpack_from(rest, fixed)
    start = fixed + _LENGTH.size
    if length > MAX_BODY or len(rest) != start + length + SIGNATURE_SIZE:
        raise ValueError(f"{what} body of {length} bytes does not match the datagram ({len(rest)} bytes)")
    return rest[start : start + length]


# -- timing ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LanTiming:
    """Timers and bounds of both cores."""

    nonce_lifetime_s: float = 10.0
    """How long a device nonce may be offered on after its announcement (and an answer resent)."""
    max_pending: int = 64
    """Device nonces held at once; the oldest goes first when more are issued."""
    query_interval_s: float = 0.1
    """Seconds between a viewer's query retransmissions."""
    discovery_timeout_s: float = 1.5
    """How long a viewer looks for the device before it takes the broker's way."""
    offer_interval_s: float = 0.5
    """Seconds between a viewer's offer retransmissions."""
    answer_timeout_s: float = 10.0
    """How long a viewer waits for the answer to its offer (the device gathers its candidates)."""


@dataclass(slots=True)
class LanStats:
    """Datagrams dropped, by reason (for the logs)."""

    malformed: int = 0
    not_for_us: int = 0
    unknown_nonce: int = 0
    bad_signature: int = 0
    not_paired: int = 0
    duplicate: int = 0


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LanEvent:
    """Base of both cores' events."""


@dataclass(frozen=True, slots=True)
class OfferReceived(LanEvent):
    """(Device) a paired viewer offers a session; answer with ``LanResponder.answer``."""

    device_nonce: bytes
    viewer_key: bytes
    body: bytes
    source: tuple[str, int]


@dataclass(frozen=True, slots=True)
class DeviceFound(LanEvent):
    """(Viewer) the device announced itself from ``source``; send the offer (``LanSeeker.offer``)."""

    source: tuple[str, int]


@dataclass(frozen=True, slots=True)
class AnswerReceived(LanEvent):
    """(Viewer) the device's answer to the offer (a ``SessionAnswer``)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class LanGaveUp(LanEvent):
    """(Viewer) no device, or no answer, in time; ``reason`` says which."""

    reason: str


# -- device ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Challenge:
    source: tuple[str, int]
    expires: float
    offer: bytes | None = None
    answer: bytes | None = None


class LanResponder:
    """The device's core: answers queries for its key, checks offers, sends answers.

    ``is_paired(viewer_key)`` is the device's verdict on a viewer key (its ``viewers.json``);
    ``random_bytes(n)`` gives ``n`` random bytes (``os.urandom``).
    """

    def __init__(
        self,
        device_key: Ed25519PrivateKey,
        is_paired: Callable[[bytes], bool],
        random_bytes: Callable[[int], bytes],
        timing: LanTiming = LanTiming(),
    ) -> None:
        self._key = device_key
        self._public = ed25519_public_bytes(device_key)
        self._is_paired = is_paired
        self._random = random_bytes
        self._timing = timing
        self._challenges: OrderedDict[bytes, _Challenge] = OrderedDict()
        self._out: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._events: deque[LanEvent] = deque()
        self.stats = LanStats()

    def receive_datagram(self, data: bytes, source: tuple[str, int], now: float) -> None:
        """Take one datagram from ``source``; replies go to ``datagrams_to_send``, offers to
        ``next_event``. Never raises: bad ones are dropped and counted in ``stats``."""
        self.handle_timer(now)
        try:
            message = decode(data)
        except ValueError:
            self.stats.malformed += 1
            return
        if isinstance(message, Query):
            self._query(message, source, now)
        elif isinstance(message, Offer):
            self._offer(message, source)
        else:
            self.stats.not_for_us += 1

    def answer(self, device_nonce: bytes, body: bytes) -> None:
        """Send ``body`` (an encoded ``SessionAnswer``) to the viewer that offered on
        ``device_nonce``; it is sent again for each retransmitted offer while the nonce lives.

        Raises:
            ValueError: ``body`` is longer than ``MAX_BODY``, or the nonce is unknown or was
                answered already (a bug in the caller).
        """
        if len(body) > MAX_BODY:
            raise ValueError(f"answer body of {len(body)} bytes exceeds {MAX_BODY}")
        challenge = self._challenges.get(device_nonce)
        if challenge is None or challenge.offer is None or challenge.answer is not None:
            raise ValueError("no offer waits for an answer on this nonce")
        viewer_key = challenge.offer[:PUBLIC_KEY_SIZE]
        signature = self._key.sign(Answer.signed_part(self._public, device_nonce, viewer_key, body))
        challenge.answer = Answer(device_nonce, body, signature).encode()
        self._out.append((challenge.answer, challenge.source))

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        """Datagrams to send, with their destination, in order."""
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self) -> LanEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When the oldest nonce expires (call ``handle_timer`` then), or None."""
        for challenge in self._challenges.values():
            return challenge.expires
        return None

    def handle_timer(self, now: float) -> None:
        """Forget expired nonces."""
        while self._challenges:
            nonce, challenge = next(iter(self._challenges.items()))
            if challenge.expires > now:
                break
            del self._challenges[nonce]

    def _query(self, query: Query, source: tuple[str, int], now: float) -> None:
        if query.tag != query_tag(self._public, query.viewer_nonce):
            self.stats.not_for_us += 1
            return
        device_nonce = self._random(NONCE_SIZE)
        while len(self._challenges) >= self._timing.max_pending:
            self._challenges.popitem(last=False)
        self._challenges[device_nonce] = _Challenge(source, now + self._timing.nonce_lifetime_s)
        signature = self._key.sign(Announce.signed_part(self._public, query.viewer_nonce, device_nonce))
        self._out.append((Announce(query.viewer_nonce, device_nonce, signature).encode(), source))

    def _offer(self, offer: Offer, source: tuple[str, int]) -> None:
        challenge = self._challenges.get(offer.device_nonce)
        if challenge is None:
            self.stats.unknown_nonce += 1
            return
        signed = offer.viewer_key + offer.body
        if challenge.offer is not None:
            if challenge.offer != signed:
                self.stats.duplicate += 1  # another offer on a used nonce: the first one stands
                return
            if challenge.answer is not None:
                self._out.append((challenge.answer, challenge.source))
            return
        message = Offer.signed_part(self._public, offer.device_nonce, offer.viewer_key, offer.body)
        if not ed25519_verify(offer.viewer_key, offer.signature, message):
            self.stats.bad_signature += 1
            return
        if not self._is_paired(offer.viewer_key):
            self.stats.not_paired += 1
            return
        challenge.offer = signed
        challenge.source = source
        self._events.append(OfferReceived(offer.device_nonce, offer.viewer_key, offer.body, source))


# -- viewer ----------------------------------------------------------------------------------------


class SeekState(enum.Enum):
    DISCOVERING = "discovering"
    FOUND = "found"
    OFFERED = "offered"
    ANSWERED = "answered"
    GAVE_UP = "gave up"


TRANSITIONS: dict[SeekState, frozenset[SeekState]] = {
    SeekState.DISCOVERING: frozenset({SeekState.FOUND, SeekState.GAVE_UP}),
    SeekState.FOUND: frozenset({SeekState.OFFERED}),
    SeekState.OFFERED: frozenset({SeekState.ANSWERED, SeekState.GAVE_UP}),
    SeekState.ANSWERED: frozenset(),
    SeekState.GAVE_UP: frozenset(),
}
"""The viewer's states and where each may go."""


class LanSeeker:
    """The viewer's core for one device: queries until it is found, then offers until answered.

    ``device_public_key`` is the raw key pinned at pairing; ``viewer_nonce`` a fresh random nonce
    (``os.urandom(NONCE_SIZE)``); ``now`` the start time.

    The first query is queued at once; ``handle_timer`` queues retransmissions. Datagrams from
    ``datagrams_to_send`` come with their destination: None means every broadcast target (a
    query), else the device's address (an offer).
    """

    def __init__(
        self,
        device_public_key: bytes,
        viewer_key: Ed25519PrivateKey,
        viewer_nonce: bytes,
        now: float,
        timing: LanTiming = LanTiming(),
    ) -> None:
        if len(viewer_nonce) != NONCE_SIZE:
            raise ValueError(f"viewer nonce of {len(viewer_nonce)} bytes, give {NONCE_SIZE}")
        self._device = device_public_key
        self._key = viewer_key
        self._viewer_public = ed25519_public_bytes(viewer_key)
        self._nonce = viewer_nonce
        self._timing = timing
        self._state = SeekState.DISCOVERING
        self._deadline = now + timing.discovery_timeout_s
        self._next_send = now
        self._device_nonce = b""
        self._offer = b""
        self._out: deque[tuple[bytes, tuple[str, int] | None]] = deque()
        self.device_address: tuple[str, int] | None = None
        self._events: deque[LanEvent] = deque()
        self.stats = LanStats()
        self.handle_timer(now)  # the first query

    @property
    def state(self) -> SeekState:
        return self._state

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int] | None]]:
        """Datagrams to send, with their destination (None: every broadcast target)."""
        out = list(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        """The next retransmission or the deadline, or None when done."""
        if self._state in (SeekState.DISCOVERING, SeekState.OFFERED):
            return min(self._next_send, self._deadline)
        return None

    def handle_timer(self, now: float) -> None:
        """Retransmit the query or the offer when due; give up past the deadline (``LanGaveUp``)."""
        if now >= self._deadline:
            if self._state is SeekState.DISCOVERING:
                self._move(SeekState.GAVE_UP)
                self._events.append(
                    LanGaveUp(f"no answer on the LAN within {self._timing.discovery_timeout_s:g} s")
                )
            elif self._state is SeekState.OFFERED:
                self._move(SeekState.GAVE_UP)
                self._events.append(
                    LanGaveUp(
                        "the device found on the LAN did not answer within "
                        f"{self._timing.answer_timeout_s:g} s"
                    )
                )
            return
        if now < self._next_send:
            return
        if self._state is SeekState.DISCOVERING:
            self._next_send = now + self._timing.query_interval_s
            self._out.append((Query(self._nonce, query_tag(self._device, self._nonce)).encode(), None))
        elif self._state is SeekState.OFFERED:
            self._next_send = now + self._timing.offer_interval_s
            self._out.append((self._offer, self.device_address))

    def offer(self, body: bytes, now: float) -> None:
        """Offer ``body`` (an encoded ``SessionOffer``) to the device found.

        Raises:
            ValueError: no device found yet, an offer was made already, or ``body`` is too long.
        """
        if self._state is not SeekState.FOUND:
            raise ValueError(f"cannot offer while {self._state.value}")
        if len(body) > MAX_BODY:
            raise ValueError(f"offer body of {len(body)} bytes exceeds {MAX_BODY}")
        signature = self._key.sign(
            Offer.signed_part(self._device, self._device_nonce, self._viewer_public, body)
        )
        self._offer = Offer(self._device_nonce, self._viewer_public, body, signature).encode()
        self._move(SeekState.OFFERED)
        self._deadline = now + self._timing.answer_timeout_s
        self._next_send = now
        self.handle_timer(now)

    def receive_datagram(self, data: bytes, source: tuple[str, int], now: float) -> None:
        """Take one datagram; never raises (bad ones are dropped and counted in ``stats``)."""
        self.handle_timer(now)
        try:
            message = decode(data)
        except ValueError:
            self.stats.malformed += 1
            return
        if isinstance(message, Announce) and self._state is SeekState.DISCOVERING:
            if message.viewer_nonce != self._nonce:
                self.stats.unknown_nonce += 1
                return
            signed = Announce.signed_part(self._device, self._nonce, message.device_nonce)
            if not ed25519_verify(self._device, message.signature, signed):
                self.stats.bad_signature += 1
                return
            self._device_nonce = message.device_nonce
            self.device_address = source
            self._move(SeekState.FOUND)
            self._events.append(DeviceFound(source))
        elif isinstance(message, Answer) and self._state is SeekState.OFFERED:
            if message.device_nonce != self._device_nonce:
                self.stats.unknown_nonce += 1
                return
            signed = Answer.signed_part(self._device, self._device_nonce, self._viewer_public, message.body)
            if not ed25519_verify(self._device, message.signature, signed):
                self.stats.bad_signature += 1
                return
            self._move(SeekState.ANSWERED)
            self._events.append(AnswerReceived(message.body))
        else:
            self.stats.not_for_us += 1

    def next_event(self) -> LanEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def _move(self, to: SeekState) -> None:
        if to not in TRANSITIONS[self._state]:
            raise AssertionError(f"LAN seeker: {self._state.value} -> {to.value} is not in TRANSITIONS")
        self._state = to
