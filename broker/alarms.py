"""What the broker does with alarms from devices: dedup, store, acknowledge, fan out.

``AlarmService`` takes the presence core's ``AlarmMessageReceived`` events. For each, the
device's stored position goes to the ``AlarmReceiver`` core (``protocol/alarm_link.py``), the
new alarms and the new position are stored in one transaction (``AlarmStore``), and only then
is the ACK sent: an alarm the device sees acknowledged is on disk. A database failure sends no
ACK, so the device sends the alarms again. Malformed plaintexts are counted and dropped.

Stored alarms go to every live subscriber of the device (the API's SSE stream) and to the
listeners (webhooks). A subscriber that falls ``queue_size`` alarms behind is ended (its queue
gets ``None``) rather than letting the broker buffer without bound: it reconnects with
``Last-Event-ID`` and reads the rest from the history.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from typing import Protocol

from dvrlink.broker.alarm_store import AlarmStore, StoredAlarm
from dvrlink.protocol.alarm_link import AlarmReceiver
from dvrlink.protocol.presence_events import AlarmMessageReceived, ServerEvent

log = logging.getLogger(__name__)


class AckCore(Protocol):
    """The call the service makes on the presence core (``PresenceServer``)."""

    def send_alarm_ack(self, serial: str, plaintext: bytes, now: float) -> bool: ...


class Subscription:
    """One follower of a device's alarms: read ``queue`` until it yields None (ended)."""

    def __init__(self, serial: str, size: int) -> None:
        self.serial = serial
        self.queue: asyncio.Queue[StoredAlarm | None] = asyncio.Queue(size + 1)
        self._size = size
        self.ended = False

    def offer(self, alarm: StoredAlarm) -> None:
        """Queue ``alarm``; end the subscription if it is ``size`` behind."""
        if self.ended:
            return
        if self.queue.qsize() >= self._size:
            self.end()
            return
        self.queue.put_nowait(alarm)

    def end(self) -> None:
        """No more alarms: the reader sees None next."""
        if not self.ended:
            self.ended = True
            self.queue.put_nowait(None)


class AlarmService:
    """See the module docstring. ``core_clock`` is the presence core's clock, ``wall_clock``
    unix seconds (for ``received_at``)."""

    def __init__(
        self,
        core: AckCore,
        store: AlarmStore,
        core_clock: Callable[[], float],
        wall_clock: Callable[[], float],
        queue_size: int = 256,
    ) -> None:
        self._core = core
        self.store = store
        self._core_clock = core_clock
        self._wall_clock = wall_clock
        self._queue_size = queue_size
        self.receiver = AlarmReceiver()
        self._subscribers: dict[str, set[Subscription]] = {}
        self.listeners: list[Callable[[StoredAlarm], None]] = []
        """Called with each newly stored alarm (the webhook dispatcher)."""
        self.stats: dict[str, int] = {"stored": 0, "store_errors": 0}

    @property
    def malformed(self) -> int:
        """EVENT plaintexts dropped as malformed."""
        return self.receiver.stats["malformed"]

    def on_event(self, event: ServerEvent) -> None:
        """Handle ``AlarmMessageReceived``; other events are ignored."""
        if not isinstance(event, AlarmMessageReceived):
            return
        serial = event.serial
        try:
            position = self.store.position(serial)
            accepted = self.receiver.receive(serial, event.plaintext, position)
            if accepted is None:
                log.debug("dropped a malformed alarm message from %s (%d so far)", serial, self.malformed)
                return
            stored = (
                self.store.store(serial, accepted.records, accepted.position, self._wall_clock())
                if accepted.records or accepted.position != position
                else []
            )
        except sqlite3.Error as exc:
            self.stats["store_errors"] += 1
            log.error(
                "cannot store alarms of %s in %s (%s); not acknowledged, the device sends them again",
                serial,
                self.store.path,
                exc,
            )
            return
        self._core.send_alarm_ack(serial, accepted.ack, self._core_clock())
        self.stats["stored"] += len(stored)
        for alarm in stored:
            log.info("alarm from %s: #%d seq %d kind %d", serial, alarm.id, alarm.seq, alarm.kind)
            for subscription in list(self._subscribers.get(serial, ())):
                subscription.offer(alarm)
            for listener in self.listeners:
                listener(alarm)

    def subscribe(self, serial: str) -> Subscription:
        """Follow ``serial``'s alarms from now on; call ``unsubscribe`` when done."""
        subscription = Subscription(serial, self._queue_size)
        self._subscribers.setdefault(serial, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop following (idempotent)."""
        followers = self._subscribers.get(subscription.serial)
        if followers is not None:
            followers.discard(subscription)
            if not followers:
                del self._subscribers[subscription.serial]

    @property
    def subscribers(self) -> int:
        """Live subscriptions."""
        return sum(len(s) for s in self._subscribers.values())

    def close(self) -> None:
        """End every subscription (at shutdown, so open streams finish)."""
        for followers in list(self._subscribers.values()):
            for subscription in list(followers):
                subscription.end()
