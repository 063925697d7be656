"""When and how the broker wakes a sleeping device by SMS, and what the API shows of each wake.

A device sleeps in ``sms-wake`` mode when its last report carries ``sms_wake_number`` (item 10
of ``protocol/presence_report.py``), or when an operator set its number
(``dvrlink-broker device sms SERIAL --number +E164``); the operator's number wins over the
reported one. A session request for such a device while it is offline calls :meth:`Waker.wake`:
it claims the next counter in the registry (stored before the SMS goes out, so no counter is
ever sent twice), builds the wake SMS under the device's wake key (the fleet's static key and the
device's bound public key: ``broker_wake_key``) and hands it to the gateway. Requests that come
while a wake is under way join it; one after ``resend_after_s`` sends a new SMS. :meth:`wait_online`
holds a request until the device registers (a ``DeviceOnline`` event at this node, or the
presence view, which on a cluster also sees other nodes) or ``wake_hold_s`` has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.broker.config import SmsGatewayConfig
from dvrlink.broker.registry import DeviceRecord, RegistryStore
from dvrlink.broker.sms.gateway import OutgoingWake, SmsGateway, SmsSendError
from dvrlink.protocol.presence_events import DeviceOnline, ServerEvent
from dvrlink.protocol.sms_wake import WakeCommand, WakeMessage, broker_wake_key, encode_binary, encode_text

log = logging.getLogger(__name__)

ONLINE_CHECK_S = 1.0
"""How often a held request also asks the presence view (another node of a cluster may hold the
device); a registration at this node ends the wait at once."""


class WakeState(enum.Enum):
    """Where one wake is."""

    SENDING = "sending"
    """The SMS is being handed to the gateway."""
    SENT = "sent"
    """The network or provider took it; waiting for the device to register."""
    ONLINE = "online"
    """The device registered."""
    FAILED = "failed"
    """The SMS could not be sent (``error`` says why)."""
    TIMED_OUT = "timed_out"
    """Sent, but the device did not register within ``wake_hold_s``."""


@dataclass(frozen=True, slots=True)
class WakeProgress:
    """One wake of one device, as ``GET /v1/devices/{serial}/wake`` shows it. Times are Unix s."""

    serial: str
    state: WakeState
    started_at: float
    counter: int
    hold_s: float
    sent_at: float | None = None
    online_at: float | None = None
    via: str = ""
    """The gateway backend and the form it sent (``modem 8-bit``, ``http text``)."""
    error: str = ""

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "state": self.state.value,
            "started_at": self.started_at,
            "elapsed_s": round(max(0.0, (self.online_at or now) - self.started_at), 3),
            "hold_s": self.hold_s,
            "sms_sent_at": self.sent_at,
            "online_at": self.online_at,
            "via": self.via,
            "error": self.error,
        }


class WakeUnavailable(Exception):
    """This device cannot be woken by SMS; the message says why and what to set."""


def wake_number(device: DeviceRecord) -> str | None:
    """The number to wake ``device`` at: the operator's, else the one it reported; None when it is
    not in ``sms-wake`` mode or no number is known."""
    if device.sms_number:
        return device.sms_number
    reported = (device.report or {}).get("sms_wake_number")
    return reported if isinstance(reported, str) and reported else None


def sleeps_by_sms(device: DeviceRecord) -> bool:
    """True when ``device`` said it sleeps in ``sms-wake`` mode, or an operator set its number."""
    return bool(device.sms_number) or isinstance((device.report or {}).get("sms_wake_number"), str)


class Waker:
    """Sends wake SMS and tracks each device's latest wake (one event loop). It owns ``gateway``
    (:meth:`close` closes it)."""

    def __init__(
        self,
        config: SmsGatewayConfig,
        gateway: SmsGateway,
        registry: RegistryStore,
        static_key: X25519PrivateKey,
        clock: Callable[[], float],
        is_online: Callable[[str], Awaitable[bool]],
    ) -> None:
        self._config = config
        self._gateway = gateway
        self._registry = registry
        self._static_key = static_key
        self._clock = clock
        self._is_online = is_online
        self._wakes: dict[str, WakeProgress] = {}
        self._online: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def hold_s(self) -> float:
        return self._config.wake_hold_s

    def progress(self, serial: str) -> WakeProgress | None:
        """The latest wake of ``serial`` since the broker started, or None."""
        return self._wakes.get(serial)

    def wake(self, device: DeviceRecord) -> WakeProgress:
        """Start a wake of ``device`` (or join the one under way) and return its progress.

        Raises:
            WakeUnavailable: the device is not in ``sms-wake`` mode, its number is not known, or
                its counter cannot be claimed.
        """
        serial = device.serial
        now = self._clock()
        current = self._wakes.get(serial)
        if (
            current is not None
            and current.state in (WakeState.SENDING, WakeState.SENT)
            and now - current.started_at < self._config.resend_after_s
        ):
            return current
        if not sleeps_by_sms(device):
            raise WakeUnavailable(
                f"device {serial} is offline and does not sleep by SMS; power it and check its network"
            )
        number = wake_number(device)
        if number is None:
            raise WakeUnavailable(
                f"device {serial} sleeps by SMS but its number is not known; an operator sets it with "
                f"`dvrlink-broker device sms {serial} --number +E164`"
            )
        try:
            counter = self._registry.claim_wake_counter(serial, int(now * 1000))
        except ValueError as exc:
            raise WakeUnavailable(f"device {serial}: {exc}") from None
        if counter is None:
            raise WakeUnavailable(f"device {serial} is not bound any more")
        key = broker_wake_key(self._static_key, device.public_key, serial)
        message = WakeMessage(WakeCommand.WAKE, counter)
        outgoing = OutgoingWake(number, encode_binary(message, key), encode_text(message, key))
        progress = WakeProgress(serial, WakeState.SENDING, now, counter, self._config.wake_hold_s)
        self._wakes[serial] = progress
        self._online.setdefault(serial, asyncio.Event()).clear()
        task = asyncio.create_task(self._send(progress, outgoing), name=f"wake SMS to {serial}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("waking %s by SMS to %s (counter %d)", serial, number, counter)
        return progress

    async def wait_online(self, serial: str) -> WakeProgress:
        """Wait until ``serial`` registers, its wake fails, or ``wake_hold_s`` from the wake's
        start has passed; return the wake's progress then (``ONLINE``, ``FAILED`` or
        ``TIMED_OUT``).

        Raises:
            KeyError: no wake of ``serial`` was started.
        """
        progress = self._wakes[serial]
        event = self._online.setdefault(serial, asyncio.Event())
        deadline = progress.started_at + progress.hold_s
        while True:
            progress = self._wakes[serial]
            if progress.state in (WakeState.ONLINE, WakeState.FAILED):
                return progress
            if await self._is_online(serial):
                return self._mark_online(serial)
            left = deadline - self._clock()
            if left <= 0:
                timed_out = replace(progress, state=WakeState.TIMED_OUT)
                if self._wakes.get(serial) is progress:
                    self._wakes[serial] = timed_out
                return timed_out
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, ONLINE_CHECK_S))

    def on_event(self, event: ServerEvent) -> None:
        """Take the presence core's events: a ``DeviceOnline`` ends the wait of its device."""
        if isinstance(event, DeviceOnline) and event.serial in self._wakes:
            self._mark_online(event.serial)

    async def close(self) -> None:
        """Cancel the sends under way and close the gateway."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._gateway.close()

    def _mark_online(self, serial: str) -> WakeProgress:
        progress = self._wakes[serial]
        if progress.state in (WakeState.SENDING, WakeState.SENT, WakeState.TIMED_OUT):
            now = self._clock()
            progress = replace(progress, state=WakeState.ONLINE, online_at=now)
            self._wakes[serial] = progress
            log.info("%s registered %.1f s after its wake started", serial, now - progress.started_at)
        event = self._online.get(serial)
        if event is not None:
            event.set()
        return progress

    async def _send(self, progress: WakeProgress, outgoing: OutgoingWake) -> None:
        serial = progress.serial
        try:
            receipt = await self._gateway.send(outgoing)
        except SmsSendError as exc:
            log.warning("wake of %s: %s", serial, exc)
            self._update(progress, state=WakeState.FAILED, error=str(exc))
        except Exception as exc:  # a backend bug must not leave the viewer waiting for nothing
            log.exception("wake of %s: the SMS gateway failed", serial)
            self._update(progress, state=WakeState.FAILED, error=f"the SMS gateway failed: {exc!r}")
        else:
            self._update(
                progress, state=WakeState.SENT, sent_at=self._clock(), via=f"{receipt.backend} {receipt.form}"
            )
        event = self._online.get(serial)
        if event is not None and self._wakes.get(serial, progress).state is WakeState.FAILED:
            event.set()

    def _update(self, progress: WakeProgress, **changes: Any) -> None:
        """Apply ``changes`` to the device's current wake if it is still ``progress``'s (a device
        that registered meanwhile stays ``ONLINE``, keeping what the send learnt)."""
        current = self._wakes.get(progress.serial)
        if current is None or current.started_at != progress.started_at:
            return
        if current.state is WakeState.ONLINE:
            changes.pop("state", None)
        self._wakes[progress.serial] = replace(current, **changes)
