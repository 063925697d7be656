"""Run the SMS inbox (``sms_wake.py``) over an AT link, and keep its counter window in a file.

:class:`SmsInboxDriver` runs the inbox's commands on an :class:`~dvrlink.driver.at_link.AtLink` one
at a time, feeds it the link's URCs (the link's owner routes every ``AtEvent`` to
:meth:`SmsInboxDriver.at_event`), re-arms its one timer, and hands its events to ``on_event``
in order, synchronously: a :class:`~dvrlink.modem.sms_wake.WakeStateChanged` is handled (stored)
before the command event after it. :func:`load_wake_state` and :func:`save_wake_state` read and
write that state as a small JSON file, atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from dvrlink.driver.at_link import AtLink, PortError
from dvrlink.modem.sms_wake import InboxEvent, SmsInbox
from dvrlink.protocol.at_events import AtEvent, ModemRestarted, UrcReceived
from dvrlink.protocol.sms_wake import CounterState
from dvrlink.store.files import atomic_write

log = logging.getLogger(__name__)


class SmsInboxDriver:
    """Drives one :class:`SmsInbox` over ``link`` (see the module docstring)."""

    def __init__(self, link: AtLink, inbox: SmsInbox, on_event: Callable[[InboxEvent], None]) -> None:
        self._link = link
        self._inbox = inbox
        self._on_event = on_event
        self._poked = asyncio.Event()
        self.errors = 0
        """Event handlers that raised (logged; the inbox goes on)."""

    @property
    def inbox(self) -> SmsInbox:
        return self._inbox

    def send_sms(self, recipient: str, text: str) -> None:
        """Queue a reply (see ``SmsInbox.send_sms``) and run it as soon as the port is free.

        Raises ValueError when ``text`` does not fit one SMS or ``recipient`` is not a number.
        """
        self._inbox.send_sms(recipient, text)
        self._poked.set()

    def at_event(self, event: AtEvent) -> None:
        """Every event of the link's engine: ``+CMTI``/``+CMT`` go to the inbox; a modem restart
        sets it up again."""
        now = asyncio.get_running_loop().time()
        if isinstance(event, UrcReceived):
            self._inbox.urc(event, now)
        elif isinstance(event, ModemRestarted):
            self._inbox.start(now)
        else:
            return
        self._dispatch()
        self._poked.set()

    async def run(self) -> str:
        """Set the inbox up and serve it until the port closes; returns why it stopped.

        Cancel the task to stop earlier. Never raises for what the modem sends.
        """
        loop = asyncio.get_running_loop()
        # a port closed while the inbox waits (PPP taking the port, a reset) ends the wait at once,
        # not at the next sweep: the daemon then serves the port that comes back
        closed = asyncio.ensure_future(self._link.wait_closed())
        closed.add_done_callback(lambda _: self._poked.set())
        try:
            self._inbox.start(loop.time())
            while True:
                while (command := self._inbox.next_command()) is not None:
                    try:
                        outcome = await self._link.command(command.text, command.payload)
                    except PortError as exc:
                        return str(exc)
                    self._inbox.command_done(outcome, loop.time())
                    self._dispatch()
                if not self._link.is_open or closed.done():
                    return "the AT port closed"
                self._inbox.tick(loop.time())
                self._dispatch()
                if self._inbox.next_command() is not None:
                    continue
                deadline = self._inbox.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                self._poked.clear()
                if closed.done():
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), timeout)
        finally:
            closed.cancel()

    def _dispatch(self) -> None:
        while (event := self._inbox.next_event()) is not None:
            try:
                self._on_event(event)
            except Exception:
                self.errors += 1
                log.exception("SMS inbox on %s: event handler failed on %r", self._link.path, event)


def load_wake_state(path: Path) -> CounterState:
    """The counter window stored at ``path``; a fresh one when the file does not exist (nothing is
    created).

    Raises:
        ValueError: the file cannot be read as a window; the message names it and says what to do.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return CounterState()
    except OSError as exc:
        raise ValueError(f"cannot read the wake counter file {path}: {exc}; check its permissions") from exc
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        data = {}
    return CounterState.from_dict(data, str(path))


def save_wake_state(path: Path, state: CounterState) -> None:
    """Write ``state`` to ``path`` atomically (mode 0600).

    Raises OSError when the directory is not writable (the message names the file).
    """
    atomic_write(path, json.dumps(state.to_dict(), sort_keys=True).encode() + b"\n")
