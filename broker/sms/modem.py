"""Wake SMS through a modem on the broker host, over the AT engine and link the recorder uses.

One :class:`~dvrlink.driver.at_link.AtLink` owns the port; sends are serialised by a lock. The
port is opened at start and again at the next send after it failed (a modem unplugged and
back). Set-up, once per opening: ``AT+CMEE=1`` (numeric errors), then ``AT+CMGF=0`` (PDU mode).
A modem that refuses PDU mode, or ``modem_text_only``, is used in text mode: ``AT+CMGF=1`` and
``AT+CSCS="IRA"``. In PDU mode the wake goes as 8-bit data in an SMS-SUBMIT with a validity
period (``encode_submit``); in text mode its text form goes with ``AT+CMGS="<number>"``.
"""

from __future__ import annotations

import asyncio
import logging
import re

from dvrlink.broker.sms.gateway import OutgoingWake, SmsReceipt, SmsSendError
from dvrlink.driver.at_link import AtLink, CommandOutcome, PortError
from dvrlink.protocol.at_engine import AtEngine
from dvrlink.protocol.at_events import CommandCompleted, CommandFailed, CommandTimedOut
from dvrlink.protocol.sms import encode_submit

log = logging.getLogger(__name__)

_CMGS = re.compile(r"\+CMGS:\s*(\d{1,3})\b")


class ModemSmsGateway:
    """The ``modem`` backend of :class:`~dvrlink.broker.sms.gateway.SmsGateway`."""

    name = "modem"

    def __init__(
        self, port: str, *, baudrate: int = 115200, text_only: bool = False, validity_minutes: int = 10
    ) -> None:
        self._port = port
        self._baudrate = baudrate
        self._text_only = text_only
        self._validity_minutes = validity_minutes
        self._link: AtLink | None = None
        self._text_mode = text_only
        self._lock = asyncio.Lock()

    @property
    def text_mode(self) -> bool:
        """True when the modem is used in text mode (configured, or it refused PDU mode)."""
        return self._text_mode

    async def start(self) -> None:
        """Open the port and set the modem up (see the module docstring).

        Raises:
            SmsSendError: the port cannot be opened or the modem does not answer.
        """
        async with self._lock:
            await self._ensure_open()

    async def send(self, wake: OutgoingWake) -> SmsReceipt:
        """Send ``wake``: 8-bit in PDU mode, its text form in text mode.

        Raises:
            SmsSendError: the port is gone, or the modem answered ``AT+CMGS`` with an error
                (``+CMS ERROR``) or not at all; the message names the port and the reply.
        """
        async with self._lock:
            link = await self._ensure_open()
            if self._text_mode:
                command, payload, form = f'AT+CMGS="{wake.recipient}"', wake.text, "text"
            else:
                try:
                    pdu = encode_submit(wake.recipient, wake.binary, validity_minutes=self._validity_minutes)
                except ValueError as exc:
                    raise SmsSendError(f"cannot address a wake SMS to {wake.recipient}: {exc}") from None
                command, payload, form = f"AT+CMGS={pdu.tpdu_length}", pdu.hex(), "8-bit"
            outcome = await self._command(link, command, payload)
            if not isinstance(outcome, CommandCompleted):
                raise SmsSendError(
                    f"the modem on {self._port} did not send the wake SMS to {wake.recipient} "
                    f"({_describe(outcome)}): check the SIM's credit and the modem's registration "
                    "(AT+CREG?), and that the number can receive SMS"
                )
            reference = next((m.group(1) for line in outcome.lines if (m := _CMGS.search(line))), "")
            log.info(
                "wake SMS to %s sent by the modem on %s (%s, reference %s)",
                wake.recipient,
                self._port,
                form,
                reference or "?",
            )
            return SmsReceipt(self.name, form, reference)

    async def close(self) -> None:
        """Close the port."""
        async with self._lock:
            if self._link is not None:
                self._link.close("SMS gateway stopped")
                self._link = None

    async def _ensure_open(self) -> AtLink:
        if self._link is not None and self._link.is_open:
            return self._link
        link = AtLink(self._port, AtEngine(), baudrate=self._baudrate)
        try:
            await link.open()
        except PortError as exc:
            raise SmsSendError(f"SMS gateway: {exc}") from None
        try:
            for command in ("AT", "AT+CMEE=1"):
                outcome = await self._command(link, command)
                if isinstance(outcome, CommandTimedOut) or not isinstance(
                    outcome, CommandCompleted | CommandFailed
                ):
                    raise SmsSendError(
                        f"the modem on {self._port} does not answer {command} ({_describe(outcome)}): "
                        "check that this is its AT port and that no other process uses it"
                    )
            self._text_mode = self._text_only
            if not self._text_mode:
                pdu_mode = await self._command(link, "AT+CMGF=0")
                if not isinstance(pdu_mode, CommandCompleted):
                    log.info(
                        "the modem on %s refuses PDU mode (%s): sending in text mode",
                        self._port,
                        _describe(pdu_mode),
                    )
                    self._text_mode = True
            if self._text_mode:
                for command in ("AT+CMGF=1", 'AT+CSCS="IRA"'):
                    outcome = await self._command(link, command)
                    if not isinstance(outcome, CommandCompleted):
                        raise SmsSendError(
                            f"the modem on {self._port} refuses {command} ({_describe(outcome)}): it cannot "
                            "send SMS in text mode either; use another modem or the http backend"
                        )
        except BaseException:
            link.close("SMS gateway set-up failed")
            raise
        self._link = link
        return link

    async def _command(self, link: AtLink, command: str, payload: str | None = None) -> CommandOutcome:
        try:
            return await link.command(command, payload)
        except PortError as exc:
            self._link = None
            raise SmsSendError(f"SMS gateway: {exc}") from None


def _describe(outcome: CommandOutcome) -> str:
    if isinstance(outcome, CommandCompleted | CommandFailed):
        return outcome.result.line
    if isinstance(outcome, CommandTimedOut):
        return f"no reply in {outcome.timeout:g} s"
    return outcome.reason
