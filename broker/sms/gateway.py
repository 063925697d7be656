"""The SMS gateway interface: what the broker's wake logic asks of a backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class SmsSendError(RuntimeError):
    """A wake SMS could not be handed to the network; the message names the backend, what it saw
    and what to check. The wake logic logs it and tells the waiting viewer."""


@dataclass(frozen=True, slots=True)
class OutgoingWake:
    """One wake SMS in both of its forms (``protocol/sms_wake.py``); a backend sends one of them."""

    recipient: str
    """The device's number, +E.164."""
    binary: bytes
    """The 8-bit form (data coding scheme 0x04), for PDU mode."""
    text: str
    """The text form (``DW1:`` and base32): GSM 7-bit safe, for text mode and HTTP providers."""


@dataclass(frozen=True, slots=True)
class SmsReceipt:
    """What the backend learnt when the network (or provider) took the message."""

    backend: str
    """"modem" or "http"."""
    form: str
    """"8-bit" or "text": which form went out."""
    reference: str
    """The network's message reference (``+CMGS: <mr>``) or the provider's answer status."""


class SmsGateway(Protocol):
    """Sends wake SMS. One object per broker process; calls may overlap (a backend serialises
    what must be serialised, such as one modem's AT port)."""

    name: str

    async def start(self) -> None:
        """Open what the backend holds open (the modem's port; an HTTP client).

        Raises:
            SmsSendError: the backend cannot be used at all (the port is missing or held); the
                broker logs it and keeps running, and each wake tries again.
        """

    async def send(self, wake: OutgoingWake) -> SmsReceipt:
        """Send one wake SMS.

        Raises:
            SmsSendError: the network or provider did not take it.
        """

    async def close(self) -> None:
        """Release what ``start`` opened."""
