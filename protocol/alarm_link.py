"""Reliable alarm delivery over presence: the device's sender and the broker's receiver. Sans-I/O.

The plaintexts are ``alarm_wire``'s; the presence cores seal and carry them in EVENT messages.

**Sender** (device, ``AlarmSender``, driven by ``PresenceClient``): a bounded queue of records in
seq order. While presence is online it sends one EVENT at a time from the head of the queue
(as many whole records as fit, or the next fragment of a record too large for one datagram),
and waits for the broker's cumulative ACK before the next one: stop-and-wait, so the broker
always sees records in order and a lost datagram costs one retransmission. Without an ACK the
same head goes out again after ``rto`` seconds, doubling up to ``rto_max``, for as long as
presence stays online; going offline pauses it, registering again resumes at once. When the
queue is full, the oldest record is dropped (``AlarmsDropped``). The queue's persistence is the
caller's (``dvrlink.daemon.alarms``): it writes a record before ``push``, and removes records
on ``AlarmsDelivered``/``AlarmsDropped``.

**Receiver** (broker, ``AlarmReceiver``): given the device's stored position (stream, highest
seq stored), it returns the records not seen before (dedup by seq within a stream), the new
position, and the ACK to send once they are stored. It reassembles fragments, one record per
device at a time. Malformed plaintexts are counted and dropped.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from dvrlink.protocol.alarm_wire import (
    MAX_PLAINTEXT,
    RECORDS_OVERHEAD,
    AckMessage,
    AlarmRecord,
    FragmentMessage,
    RecordsMessage,
    decode_event,
    encode_fragment,
    encode_records,
)
from dvrlink.protocol.presence_events import ClientEvent

MAX_SEQ = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SenderConfig:
    """Settings of ``AlarmSender``. Times are in seconds."""

    capacity: int = 1000
    """Records the queue holds; when full, the oldest is dropped."""
    rto_initial: float = 1.0
    """Wait for an ACK before the first retransmission."""
    rto_max: float = 30.0
    """Longest wait between retransmissions."""

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.rto_initial <= 0 or self.rto_max < self.rto_initial:
            raise ValueError("alarm queue: capacity >= 1, 0 < rto_initial <= rto_max")


@dataclass(frozen=True, slots=True)
class AlarmsDelivered(ClientEvent):
    """The broker stored every record up to ``through_seq``; ``count`` left the queue."""

    through_seq: int
    count: int


@dataclass(frozen=True, slots=True)
class AlarmsDropped(ClientEvent):
    """The queue was full: ``count`` oldest records up to ``through_seq`` were dropped unsent."""

    through_seq: int
    count: int


class AlarmSender:
    """The device's alarm queue and its retransmission (see the module docstring)."""

    def __init__(self, config: SenderConfig, stream: int, pending: Iterable[AlarmRecord] = ()) -> None:
        """``pending``: records restored from the persisted queue, in seq order.

        Raises:
            ValueError: ``stream`` is not a 32-bit number, or ``pending`` is not in seq order.
        """
        if not 0 <= stream <= MAX_SEQ:
            raise ValueError(f"alarm stream id {stream} is not a 32-bit number")
        self._config = config
        self._stream = stream
        self._queue: deque[AlarmRecord] = deque()
        self._events: deque[ClientEvent] = deque()
        self._online = False
        self._inflight = False
        self._sent_at = 0.0
        self._rto = config.rto_initial
        self._frag_offset = 0
        self._head_encoded: tuple[int, bytes] | None = None
        self._wants_send = False
        self.stats: dict[str, int] = {
            "sent": 0,
            "retransmitted": 0,
            "delivered": 0,
            "dropped": 0,
            "bad_acks": 0,
        }
        for record in pending:
            self.push(record, 0.0)

    @property
    def stream(self) -> int:
        """This queue's stream id."""
        return self._stream

    @property
    def pending(self) -> int:
        """Records waiting for the broker's acknowledgement."""
        return len(self._queue)

    def queued(self) -> tuple[AlarmRecord, ...]:
        """The queued records, oldest first."""
        return tuple(self._queue)

    @property
    def last_seq(self) -> int:
        """The newest record's seq, or 0 when the queue is empty."""
        return self._queue[-1].seq if self._queue else 0

    def push(self, record: AlarmRecord, now: float) -> None:
        """Queue ``record`` (persisted by the caller first); it goes out at once when online and
        nothing is in flight. A full queue drops its oldest record (``AlarmsDropped``).

        Raises:
            ValueError: ``record.seq`` is not above the newest queued seq, or not 1..2^32-1.
        """
        if not 0 < record.seq <= MAX_SEQ:
            raise ValueError(f"alarm seq {record.seq} is out of range 1..{MAX_SEQ}")
        if self._queue and record.seq <= self._queue[-1].seq:
            raise ValueError(f"alarm seq {record.seq} is not above the last queued {self._queue[-1].seq}")
        self._queue.append(record)
        if len(self._queue) > self._config.capacity:
            dropped = self._queue.popleft()
            self._head_changed()
            self.stats["dropped"] += 1
            self._events.append(AlarmsDropped(dropped.seq, 1))
        self._wants_send = True

    def link_up(self, now: float) -> None:
        """Presence registered: send from the head of the queue at once."""
        self._online = True
        self._inflight = False
        self._rto = self._config.rto_initial
        self._frag_offset = 0  # a new session: the broker says how much it holds in its ACK
        self._wants_send = True

    def link_down(self) -> None:
        """Presence lost its session: stop sending until ``link_up``."""
        self._online = False
        self._inflight = False

    def plaintexts_to_send(self, now: float) -> list[bytes]:
        """EVENT plaintexts to seal and send now (at most one: stop-and-wait)."""
        if not self._wants_send:
            return []
        self._wants_send = False
        if not self._online or self._inflight or not self._queue:
            return []
        plain = self._build()
        self._inflight = True
        self._sent_at = now
        self.stats["sent"] += 1
        return [plain]

    def receive_ack(self, plaintext: bytes, now: float) -> bool:
        """Handle an EVENT plaintext from the broker; False (counted) if it is not a valid ACK of
        this stream."""
        try:
            message = decode_event(plaintext)
        except ValueError:
            message = None
        if not isinstance(message, AckMessage) or message.stream != self._stream:
            self.stats["bad_acks"] += 1
            return False
        removed = 0
        while self._queue and self._queue[0].seq <= message.through_seq:
            self._queue.popleft()
            removed += 1
        if removed:
            self._head_changed()
            self.stats["delivered"] += removed
            self._events.append(AlarmsDelivered(message.through_seq, removed))
        if self._queue and self._queue[0].seq == message.through_seq + 1:
            self._frag_offset = min(message.next_offset, len(self._head()))
        else:
            self._frag_offset = 0
        self._inflight = False
        self._rto = self._config.rto_initial
        self._wants_send = True
        return True

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must be called (a retransmission), or None."""
        return self._sent_at + self._rto if self._online and self._inflight else None

    def handle_timer(self, now: float) -> None:
        """Retransmit the unacknowledged head; calling it early does nothing."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return
        self._inflight = False
        self._rto = min(self._rto * 2, self._config.rto_max)
        self.stats["retransmitted"] += 1
        self._wants_send = True

    def next_event(self) -> ClientEvent | None:
        """The next ``AlarmsDelivered``/``AlarmsDropped``, or None."""
        return self._events.popleft() if self._events else None

    # -- building ---------------------------------------------------------------------------

    def _head_changed(self) -> None:
        self._frag_offset = 0
        self._head_encoded = None

    def _head(self) -> bytes:
        head = self._queue[0]
        if self._head_encoded is None or self._head_encoded[0] != head.seq:
            self._head_encoded = (head.seq, head.encode())
        return self._head_encoded[1]

    def _build(self) -> bytes:
        head = self._head()
        if RECORDS_OVERHEAD + _varint_size(len(head)) + len(head) > MAX_PLAINTEXT:
            return encode_fragment(self._stream, self._queue[0].seq, head, self._frag_offset)
        batch = [self._queue[0]]
        size = RECORDS_OVERHEAD + _varint_size(len(head)) + len(head)
        prev = self._queue[0].time_ms
        for record in list(self._queue)[1:]:
            if record.seq != batch[-1].seq + 1:
                break
            body = len(record.encode(prev))
            size += _varint_size(body) + body
            if size > MAX_PLAINTEXT:
                break
            batch.append(record)
            prev = record.time_ms
        return encode_records(self._stream, batch)


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


# -- receiver --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """How far the broker has stored a device's alarms: every seq up to ``seq`` of ``stream``."""

    stream: int
    seq: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """The outcome of one EVENT from a device: store ``records`` and ``position`` together,
    then send ``ack`` (an EVENT plaintext) to the device."""

    records: tuple[AlarmRecord, ...]
    position: StreamPosition
    ack: bytes


@dataclass(slots=True)
class _Partial:
    stream: int
    seq: int
    total: int
    data: bytearray


class AlarmReceiver:
    """The broker's side (see the module docstring). Holds at most ``max_partials`` records in
    reassembly (one per device; the oldest is forgotten first, and its device resends it)."""

    def __init__(self, max_partials: int = 1024) -> None:
        self._max_partials = max_partials
        self._partials: OrderedDict[str, _Partial] = OrderedDict()
        self.stats: dict[str, int] = {
            "messages": 0,
            "records": 0,
            "duplicates": 0,
            "fragments": 0,
            "malformed": 0,
        }

    def receive(self, serial: str, plaintext: bytes, position: StreamPosition | None) -> Accepted | None:
        """Handle an EVENT plaintext from ``serial``, whose stored position is ``position`` (None:
        none stored yet). None if the plaintext is malformed (counted in ``stats``)."""
        self.stats["messages"] += 1
        try:
            message = decode_event(plaintext)
        except ValueError:
            message = None
        if isinstance(message, RecordsMessage):
            return self._records(serial, message, position)
        if isinstance(message, FragmentMessage):
            return self._fragment(serial, message, position)
        self.stats["malformed"] += 1
        return None

    def _records(self, serial: str, message: RecordsMessage, position: StreamPosition | None) -> Accepted:
        base = position.seq if position is not None and position.stream == message.stream else 0
        fresh = tuple(r for r in message.records if r.seq > base)
        self.stats["records"] += len(fresh)
        self.stats["duplicates"] += len(message.records) - len(fresh)
        through = max(base, message.records[-1].seq)
        partial = self._partials.get(serial)
        if partial is not None and (partial.stream != message.stream or partial.seq <= through):
            del self._partials[serial]
        new_position = StreamPosition(message.stream, through)
        return Accepted(fresh, new_position, AckMessage(message.stream, through).encode())

    def _fragment(self, serial: str, message: FragmentMessage, position: StreamPosition | None) -> Accepted:
        self.stats["fragments"] += 1
        stream, seq = message.stream, message.seq
        base = position.seq if position is not None and position.stream == stream else 0
        kept = StreamPosition(stream, base) if position is None or position.stream != stream else position
        if seq <= base:
            self.stats["duplicates"] += 1
            return Accepted((), kept, AckMessage(stream, base).encode())
        partial = self._partials.get(serial)
        if partial is None or (partial.stream, partial.seq, partial.total) != (stream, seq, message.total):
            partial = None
            self._partials.pop(serial, None)
            if message.offset == 0:
                partial = _Partial(stream, seq, message.total, bytearray())
                self._partials[serial] = partial
                while len(self._partials) > self._max_partials:
                    self._partials.popitem(last=False)
        have = 0 if partial is None else len(partial.data)
        if partial is not None and message.offset == have:
            partial.data += message.chunk
            have = len(partial.data)
        if partial is not None and have == partial.total:
            del self._partials[serial]
            try:
                record = AlarmRecord.decode(seq, bytes(partial.data))
            except ValueError:
                self.stats["malformed"] += 1
                # It never parses: skip it, so the device does not send it forever.
                return Accepted((), StreamPosition(stream, seq), AckMessage(stream, seq).encode())
            self.stats["records"] += 1
            return Accepted((record,), StreamPosition(stream, seq), AckMessage(stream, seq).encode())
        # Everything below ``seq`` left the device's queue (delivered, or dropped when full).
        return Accepted((), kept, AckMessage(stream, seq - 1, have).encode())
