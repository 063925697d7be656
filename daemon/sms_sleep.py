"""``[presence] mode = "sms-wake"``: the device sleeps between wake SMS (docs/sms-wake.md).

At start the device registers as in ``always`` mode and reports that it sleeps by SMS (report
item ``sms_wake_number``, with ``[sms_wake] own_number`` when set), so the broker knows to wake it.
After ``[presence] awake_idle_s`` without a session it sleeps: the presence client says GOODBYE
and goes idle, so no keepalive (and no other presence datagram) leaves the device; the broker
shows it offline. Then the modem is told the data session is not wanted
(``ModemService.want_data``): it takes the data link down and stays registered on the network,
without data-path probes, so not one IP byte leaves or reaches the device while it sleeps. The
wake SMS inbox (``daemon/sms_wake.py``) runs on the modem's AT port all the time, sharing it with
the modem manager (``ModemDriver.port_user``). An authenticated wake asks for the data session
again, and once the modem is online the presence client starts: it registers, serves the
session the broker holds for the viewer, and sleeps again once idle.

:class:`SleepPolicy` decides when to sleep (sans-I/O, time passed in); :class:`SmsSleeper` wires
it to the presence client, the inbox and the recorder's actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.daemon.config import DaemonConfig
from dvrlink.daemon.reporting import Reporter
from dvrlink.daemon.sms_wake import SmsWakeService, SmsWakeSettings
from dvrlink.driver.at_link import AtLink
from dvrlink.modem.sms_wake import RebootRequested, WakeRequested
from dvrlink.protocol.at_events import AtEvent
from dvrlink.protocol.presence_client import ClientState, PresenceClient

log = logging.getLogger(__name__)


class Wakefulness(enum.Enum):
    AWAKE = "awake"
    ASLEEP = "asleep"


class SleepPolicy:
    """When a device in ``sms-wake`` mode sleeps: ``idle_s`` after it woke or its last session
    ended, with no session open. Sans-I/O: call :meth:`handle_timer` at :meth:`get_timer`."""

    def __init__(self, idle_s: float, now: float) -> None:
        self._idle_s = idle_s
        self.state = Wakefulness.AWAKE
        self._idle_since: float | None = now
        self._sessions = 0

    def woken(self, now: float) -> bool:
        """A wake arrived; True when the device was asleep (it must register now)."""
        was_asleep = self.state is Wakefulness.ASLEEP
        self.state = Wakefulness.AWAKE
        if self._sessions == 0:
            self._idle_since = now
        return was_asleep

    def sessions_changed(self, count: int, now: float) -> None:
        """``count`` sessions are open now."""
        self._sessions = count
        if count:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now

    def get_timer(self) -> float | None:
        """When to call :meth:`handle_timer`, or None."""
        if self.state is Wakefulness.ASLEEP or self._idle_since is None:
            return None
        return self._idle_since + self._idle_s

    def handle_timer(self, now: float) -> bool:
        """True when the device should go to sleep now."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return False
        self.state = Wakefulness.ASLEEP
        self._idle_since = None
        return True


class SmsSleeper:
    """Runs ``sms-wake`` for the daemon: the wake SMS inbox on the modem's AT port (it is the
    modem service's ``port_user``), the recorder's actions for each command, and the sleep policy
    over the presence client. ``flush`` sends what the client queued (the presence link's);
    ``reboot`` reboots the board; ``status_fields`` gives the status an SMS answer carries."""

    def __init__(
        self,
        config: DaemonConfig,
        device_key: Ed25519PrivateKey,
        client: PresenceClient,
        flush: Callable[[], None],
        *,
        reboot: Callable[[], None],
        status_fields: Callable[[], Sequence[tuple[str, str]]],
        on_change: Callable[[], None] | None = None,
        on_own_number: Callable[[str], None] | None = None,
    ) -> None:
        sms = config.sms_wake
        settings = SmsWakeSettings(
            allowed_senders=sms.allowed_senders,
            any_sender=sms.any_sender,
            country_code=sms.country_code or None,
            window=sms.window,
            sweep_interval_s=sms.sweep_interval_s,
            read_own_number=not sms.own_number,
        )
        self._loop = asyncio.get_running_loop()
        self._client = client
        self._flush = flush
        self._reboot = reboot
        self._status_fields = status_fields
        self._on_change = on_change
        self.service = SmsWakeService(
            settings,
            serial=config.device.serial,
            device_key=device_key,
            broker_static_public=config.broker.public_key,
            state_dir=config.device.state_dir,
            actions=self,
            on_own_number=on_own_number,
        )
        self.policy = SleepPolicy(config.presence.awake_idle_s, self._loop.time())
        self._timer: asyncio.TimerHandle | None = None
        self._serving: asyncio.Task[str] | None = None
        self._modem: ModemControl | None = None
        self._register_on_data = False
        """Woken: the presence client starts once the modem's data session is up."""
        self.wakes = 0
        """Wake SMS that woke the device (a wake while awake does not count)."""
        self._arm()

    def attach_modem(self, modem: ModemControl) -> None:
        """The modem service is up (it loads after presence settles): its data session follows
        the sleep from now on; call :meth:`modem_changed` whenever its status changes."""
        self._modem = modem
        if self.asleep:
            modem.want_data(False)

    def modem_changed(self) -> None:
        """The modem's status changed: a wake waiting for the data session registers once it is up."""
        if self._register_on_data and self._modem is not None and self._modem.data_up:
            self._register_on_data = False
            log.info("sms wake: the data session is up: registering with the broker")
            self._register()

    @property
    def asleep(self) -> bool:
        return self.policy.state is Wakefulness.ASLEEP

    # -- the modem's AT port (ModemDriver.port_user) -----------------------------------------------

    def port_opened(self, link: AtLink) -> None:
        """Serve the inbox on ``link`` until it closes (the modem driver opens it again later)."""
        if self._serving is not None and not self._serving.done():
            self._serving.cancel()
        self._serving = self._loop.create_task(self._serve(link), name="sms-wake inbox")

    def at_event(self, event: AtEvent) -> None:
        self.service.at_event(event)

    async def _serve(self, link: AtLink) -> str:
        reason = await self.service.serve(link)
        log.info("sms wake: the inbox stopped with the AT port (%s); it starts again when it reopens", reason)
        return reason

    # -- the recorder's actions (SmsWakeActions) --------------------------------------------------

    def wake(self, request: WakeRequested) -> None:
        now = self._loop.time()
        if self.policy.woken(now):
            self.wakes += 1
            modem = self._modem
            if modem is None or modem.data_up:
                log.info(
                    "sms wake: woken by %s (counter %d): registering with the broker",
                    request.sender,
                    request.counter,
                )
                self._register()
            else:
                log.info(
                    "sms wake: woken by %s (counter %d): bringing the data session up",
                    request.sender,
                    request.counter,
                )
                self._register_on_data = True
                modem.want_data(True)
            self._changed()
        self._arm()

    def _register(self) -> None:
        now = self._loop.time()
        if self._client.state is ClientState.IDLE:
            self._client.start(now)
        self._flush()

    def reboot(self, request: RebootRequested) -> None:
        log.warning("sms wake: reboot asked by %s (counter %d)", request.sender, request.counter)
        self._reboot()

    def status_fields(self) -> Sequence[tuple[str, str]]:
        return [("presence", self.policy.state.value), *self._status_fields()]

    # -- sessions and the idle timer ---------------------------------------------------------------

    def sessions_changed(self, count: int) -> None:
        """``count`` sessions are open now (the session server's count)."""
        self.policy.sessions_changed(count, self._loop.time())
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._serving is not None:
            self._serving.cancel()

    async def wait_closed(self) -> None:
        if self._serving is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.policy.get_timer()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.policy.handle_timer(self._loop.time()):
            log.info("sms wake: idle, going to sleep (no keepalives, data session down until a wake SMS)")
            self._register_on_data = False
            self._client.stop(self._loop.time())
            self._flush()  # the GOODBYE leaves before the data session goes down
            if self._modem is not None:
                self._modem.want_data(False)
            self._changed()
        self._arm()

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("sms wake: the status listener failed")


class ModemControl(Protocol):
    """What the sleeper needs of the modem service (``ModemService``)."""

    def want_data(self, wanted: bool) -> None: ...

    @property
    def data_up(self) -> bool: ...


class _Sessions(Protocol):
    on_change: Callable[[], None]

    @property
    def count(self) -> int: ...


class _Events(Protocol):
    def sessions_changed(self) -> None: ...

    def status_changed(self) -> None: ...


class _Tuning(Protocol):
    reporter: Reporter


def start_sms_sleep(
    config: DaemonConfig,
    device_key: Ed25519PrivateKey,
    client: PresenceClient,
    flush: Callable[[], None],
    sessions: _Sessions,
    events: _Events,
    tuning: _Tuning,
    reboot: Callable[[], None] | None,
) -> SmsSleeper:
    """Build the daemon's :class:`SmsSleeper`: the report says the device sleeps by SMS (and its
    number), the session count drives the sleep policy, an SMS status answer carries the
    report's fields. ``reboot`` None: a reboot command is refused in the log."""

    def no_reboot() -> None:
        log.error(
            "sms wake: a reboot was asked but this daemon has no reboot command; set [modem] reboot_command"
        )

    def status_fields() -> list[tuple[str, str]]:
        report = tuning.reporter.current.as_dict()
        names = ("modem_state", "rat", "signal_dbm", "operator", "data_used")
        return [(name, str(report[name])) for name in names if name in report]

    tuning.reporter.update(sms_wake_number=config.sms_wake.own_number)

    def own_number(number: str) -> None:  # read from the SIM (AT+CNUM): [sms_wake] own_number unset
        tuning.reporter.update(sms_wake_number=number)  # the report carries it from the next step

    sleeper = SmsSleeper(
        config,
        device_key,
        client,
        flush,
        reboot=reboot or no_reboot,
        status_fields=status_fields,
        on_change=events.status_changed,
        on_own_number=own_number,
    )

    def sessions_changed() -> None:
        events.sessions_changed()
        sleeper.sessions_changed(sessions.count)

    sessions.on_change = sessions_changed
    return sleeper
