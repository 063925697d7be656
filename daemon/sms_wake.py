"""dvrlinkd's wake SMS service: the modem's SMS inbox, the counter file, and what each command does.

``daemon/sms_sleep.py`` wires it (``[presence] mode = "sms-wake"``): it builds one
:class:`SmsWakeService` from the device's identity and the pinned broker key; while the modem's
AT link is open, it runs :meth:`SmsWakeService.serve` on it and routes every event of that link
to :meth:`SmsWakeService.at_event`; it is the recorder's :class:`SmsWakeActions`.

Each accepted command is handled in this order: the counter window is written (atomically) to
the state file, then the command runs. A window that cannot be written means the command is not
run: a reboot that a replay could repeat after it is worse than a lost wake (the broker sends
another). A status request is answered by SMS with :func:`~dvrlink.protocol.sms_wake.status_reply`
of the actions' status fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.driver.at_link import AtLink
from dvrlink.modem.sms_wake import (
    InboxConfig,
    InboxEvent,
    InboxProblem,
    OwnNumberRead,
    RebootRequested,
    SmsDropped,
    SmsInbox,
    StatusRequested,
    WakeRequested,
    WakeStateChanged,
)
from dvrlink.modem.sms_wake_link import SmsInboxDriver, load_wake_state, save_wake_state
from dvrlink.protocol.at_events import AtEvent
from dvrlink.protocol.sms_wake import DEFAULT_WINDOW, WakeConfig, WakeVerifier, device_wake_key, status_reply

log = logging.getLogger(__name__)

STATE_FILE = "sms-wake.json"
"""The counter window's file in the state directory."""


@dataclass(frozen=True, slots=True)
class SmsWakeSettings:
    """The wake SMS settings (a ``[sms_wake]`` section when wired).

    ``allowed_senders``: the broker's SMS numbers, +E.164. ``any_sender``: accept any sender (the
    MAC still holds). ``country_code``: to read national sender numbers (``"49"``). ``window``:
    counters below the highest still accepted once. ``sweep_interval_s``: seconds between full
    reads of the SIM store besides the modem's indications. ``read_own_number``: read the SIM's
    own number (``AT+CNUM``) once, for a device whose ``own_number`` is not set.

    Raises ValueError (from the constructor) for a bad value; the message says what to write.
    """

    allowed_senders: tuple[str, ...] = ()
    any_sender: bool = False
    country_code: str | None = None
    window: int = DEFAULT_WINDOW
    sweep_interval_s: float = 600.0
    read_own_number: bool = False

    def __post_init__(self) -> None:
        self.verifier_config()
        self.inbox_config()

    def verifier_config(self) -> WakeConfig:
        return WakeConfig(frozenset(self.allowed_senders), self.any_sender, self.country_code, self.window)

    def inbox_config(self) -> InboxConfig:
        return InboxConfig(sweep_interval_s=self.sweep_interval_s, read_own_number=self.read_own_number)


class SmsWakeActions(Protocol):
    """What the recorder does for an authenticated command (``app.py`` supplies it)."""

    def wake(self, request: WakeRequested) -> None:
        """Bring the data session up and register with the broker."""

    def reboot(self, request: RebootRequested) -> None:
        """Reboot the recorder."""

    def status_fields(self) -> Sequence[tuple[str, str]]:
        """The status to answer with, as (name, value) pairs, most important first."""


class SmsWakeService:
    """Wake SMS for one device (see the module docstring).

    ``on_own_number`` gets the SIM's own number as +E.164 once ``AT+CNUM`` gave one
    (``settings.read_own_number``; a national number is completed with ``country_code``).

    Raises ValueError (from the constructor) when ``broker_static_public`` is not a usable key or
    the state file cannot be read (the message names it and says what to do).
    """

    def __init__(
        self,
        settings: SmsWakeSettings,
        *,
        serial: str,
        device_key: Ed25519PrivateKey,
        broker_static_public: bytes,
        state_dir: Path,
        actions: SmsWakeActions,
        on_own_number: Callable[[str], None] | None = None,
    ) -> None:
        self._serial = serial
        self._country_code = settings.country_code
        self._on_own_number = on_own_number
        self._actions = actions
        self._state_file = state_dir / STATE_FILE
        key = device_wake_key(device_key, broker_static_public, serial)
        verifier = WakeVerifier(key, settings.verifier_config(), load_wake_state(self._state_file))
        self.inbox = SmsInbox(verifier, settings.inbox_config())
        self._driver: SmsInboxDriver | None = None
        self._state_saved = True
        self.errors = 0
        """Commands not run because the window could not be stored, or whose action raised."""

    async def serve(self, link: AtLink) -> str:
        """Read wake SMS on ``link`` until it closes; returns why. Cancel the task to stop earlier."""
        driver = self._driver = SmsInboxDriver(link, self.inbox, self._on_event)
        try:
            return await driver.run()
        finally:
            if self._driver is driver:  # a serve of the reopened port may have started meanwhile
                self._driver = None

    def at_event(self, event: AtEvent) -> None:
        """Every event of the served link (its owner routes them here)."""
        if self._driver is not None:
            self._driver.at_event(event)

    def _own_number(self, event: OwnNumberRead) -> None:
        numbers = [n for n in (entry.e164(self._country_code) for entry in event.numbers) if n]
        if not numbers:
            seen = event.detail or (", ".join(e.number for e in event.numbers) or "no number stored")
            log.warning(
                "sms wake: the SIM gives no own number as +E.164 (AT+CNUM: %s): the broker cannot wake "
                "this recorder until it knows it; set [sms_wake] own_number (and country_code for a "
                "national number), or on the broker: dvrlink-broker device sms %s --number +...",
                seen,
                self._serial,
            )
            return
        log.info("sms wake: the SIM's own number is %s (AT+CNUM): reported to the broker", numbers[0])
        if self._on_own_number is not None:
            self._on_own_number(numbers[0])

    def _on_event(self, event: InboxEvent) -> None:
        if isinstance(event, WakeStateChanged):
            try:
                save_wake_state(self._state_file, event.state)
                self._state_saved = True
            except OSError as exc:
                self._state_saved = False
                log.error(
                    "sms wake: cannot store the counter window in %s (%s): the command is not run; "
                    "free space or fix the permissions of the state directory",
                    self._state_file,
                    exc,
                )
            return
        if isinstance(event, SmsDropped):
            log.warning(
                "sms wake: dropped an SMS from %s: %s (%s)", event.sender, event.reason.value, event.detail
            )
            return
        if isinstance(event, InboxProblem):
            log.warning("sms wake: %s", event.what)
            return
        if isinstance(event, OwnNumberRead):
            self._own_number(event)
            return
        if not isinstance(event, WakeRequested | StatusRequested | RebootRequested):
            log.debug("sms wake: %s", event)
            return
        if not self._state_saved:
            self.errors += 1
            return
        log.info("sms wake: %s from %s, counter %d", type(event).__name__, event.sender, event.counter)
        try:
            if isinstance(event, WakeRequested):
                self._actions.wake(event)
            elif isinstance(event, RebootRequested):
                self._actions.reboot(event)
            elif self._driver is not None:
                self._driver.send_sms(event.sender, status_reply(self._serial, self._actions.status_fields()))
        except Exception:
            self.errors += 1
            log.exception("sms wake: the %s action failed", type(event).__name__)
