"""The emulated modem's short messages: the SIM's message store and how 27.005 prints a message.

:class:`SmsStore` is the SIM store (``"SM"``): numbered slots from 1 up to its capacity, each with
a status (``REC UNREAD`` until read). :class:`IncomingSms` is a message the network delivers; the
model in ``model.py`` decides whether it is shown at once (``+CMT``), stored and indicated
(``+CMTI``), or held at the network because the store is full, from its ``+CNMI`` settings.
The lines come in PDU mode (``AT+CMGF=0``, the PDU from ``dvrlink.protocol.sms.encode_deliver``) or in
text mode (``AT+CMGF=1``; 8-bit data printed in hex, as 27.005 section 3.1 says).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dvrlink.protocol.sms import MessageStatus, encode_deliver

TEXT_STATUS_NAMES = {
    MessageStatus.RECEIVED_UNREAD: "REC UNREAD",
    MessageStatus.RECEIVED_READ: "REC READ",
    MessageStatus.STORED_UNSENT: "STO UNSENT",
    MessageStatus.STORED_SENT: "STO SENT",
    MessageStatus.ALL: "ALL",
}


@dataclass(frozen=True, slots=True)
class IncomingSms:
    """A message the network delivers: ``body`` is text (GSM 7-bit or UCS-2) or bytes (8-bit data)."""

    sender: str
    body: str | bytes
    timestamp: datetime

    def pdu(self) -> tuple[str, int]:
        """The SMS-DELIVER in hex (with an empty SMSC field) and its TPDU length.

        Raises ValueError when the body does not fit one SMS or the sender is not an address."""
        encoded = encode_deliver(self.sender, self.body, self.timestamp)
        return encoded.hex(), encoded.tpdu_length

    def text_body(self) -> str:
        """The body as text mode prints it: the text, or 8-bit data in hex."""
        return self.body.hex().upper() if isinstance(self.body, bytes) else self.body

    def text_timestamp(self) -> str:
        """``yy/MM/dd,hh:mm:ss±zz`` (the zone in quarter hours)."""
        offset = self.timestamp.utcoffset()
        quarters = int(offset.total_seconds() // 900) if offset is not None else 0
        return (
            self.timestamp.strftime("%y/%m/%d,%H:%M:%S")
            + f"{'-' if quarters < 0 else '+'}{abs(quarters):02d}"
        )

    def address_type(self) -> int:
        return 145 if self.sender.startswith("+") else 129


@dataclass(slots=True)
class StoredSms:
    """One slot of the store."""

    message: IncomingSms
    status: MessageStatus


class SmsStore:
    """The SIM's message store: slots 1..capacity (a full store takes no more)."""

    name = "SM"

    def __init__(self, capacity: int) -> None:
        if not 1 <= capacity <= 255:
            raise ValueError(f"SIM message store capacity {capacity} is out of range: use 1-255")
        self.capacity = capacity
        self.slots: dict[int, StoredSms] = {}

    @property
    def used(self) -> int:
        return len(self.slots)

    @property
    def full(self) -> bool:
        return self.used >= self.capacity

    def add(self, message: IncomingSms) -> int | None:
        """Store ``message`` in the lowest free slot; its index, or None when the store is full."""
        for index in range(1, self.capacity + 1):
            if index not in self.slots:
                self.slots[index] = StoredSms(message, MessageStatus.RECEIVED_UNREAD)
                return index
        return None

    def delete(self, index: int, flag: int = 0) -> None:
        """``AT+CMGD=<index>[,<delflag>]``: 0 the one slot; 1 all read; 2 read and sent; 3 read, sent
        and unsent; 4 all (27.005 section 3.5.4)."""
        if flag == 0:
            self.slots.pop(index, None)
            return
        keep = {
            1: {MessageStatus.RECEIVED_UNREAD, MessageStatus.STORED_SENT, MessageStatus.STORED_UNSENT},
            2: {MessageStatus.RECEIVED_UNREAD, MessageStatus.STORED_UNSENT},
            3: {MessageStatus.RECEIVED_UNREAD},
            4: set(),
        }[flag]
        self.slots = {i: slot for i, slot in self.slots.items() if slot.status in keep}

    def listed(self, status: MessageStatus) -> list[tuple[int, StoredSms]]:
        """The slots with ``status`` (``ALL``: every one), in index order."""
        return [
            (index, slot)
            for index, slot in sorted(self.slots.items())
            if status is MessageStatus.ALL or slot.status is status
        ]


def pdu_lines(prefix: str, index: int | None, stored: StoredSms) -> list[str]:
    """A ``+CMGR:`` (index None) or ``+CMGL:`` entry in PDU mode: header, then the PDU."""
    pdu, length = stored.message.pdu()
    head = f"{prefix}: " + (f"{index}," if index is not None else "") + f"{int(stored.status)},,{length}"
    return [head, pdu]


def text_lines(prefix: str, index: int | None, stored: StoredSms) -> list[str]:
    """A ``+CMGR:`` or ``+CMGL:`` entry in text mode: header with status, sender and time, then the body."""
    message = stored.message
    fields = [
        f'"{TEXT_STATUS_NAMES[stored.status]}"',
        f'"{message.sender}"',
        "",
        f'"{message.text_timestamp()}"',
    ]
    if index is not None:
        fields.insert(0, str(index))
    return [f"{prefix}: {','.join(fields)}", message.text_body()]


def cmt_lines(message: IncomingSms, text_mode: bool) -> tuple[str, str]:
    """The two lines of a ``+CMT`` URC."""
    if text_mode:
        return f'+CMT: "{message.sender}",,"{message.text_timestamp()}"', message.text_body()
    pdu, length = message.pdu()
    return f"+CMT: ,{length}", pdu
