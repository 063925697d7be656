"""SMS: the replies and URCs of 3GPP TS 27.005, a TS 23.040 PDU decoder and encoder. No I/O.

What they read (the lines as the AT engine hands them on: a command's ``CommandCompleted.lines``,
or a ``UrcReceived``'s line and body):

- ``+CMGL`` (list) and ``+CMGR`` (read), in PDU mode (``+CMGL: <index>,<stat>,[<alpha>],<length>``
  then the PDU in hex; a few modems put the PDU on the header line after a blank) and in text mode
  (``+CMGL: <index>,"REC UNREAD","<sender>",[<alpha>],"<yy/MM/dd,hh:mm:ss±zz>"`` then the body,
  whose lines are joined with ``\\n``; a stored status report is one line of fields and no body):
  :func:`parse_cmgl`, :func:`parse_cmgr`.
- ``+CPMS=?`` (the storages each of mem1/mem2/mem3 supports) and ``+CPMS?`` (the storages in use
  with their used/total counts: ``StorageUse.full`` tells a full SIM store): :func:`parse_cpms_test`,
  :func:`parse_cpms_query`; the reply to ``+CPMS=`` (counts only): :func:`parse_cpms_set`.
- ``+CSCS=?`` (character sets): :func:`parse_cscs_test`, with :func:`canonical_charset`.
- The URCs ``+CMTI``/``+CDSI`` (stored at index), ``+CMT`` and ``+CDS`` (the message or status
  report itself, PDU or text mode): :func:`parse_storage_indication`, :func:`parse_cmt`,
  :func:`parse_cds`.
- :func:`decode_pdu`: SMS-DELIVER, SMS-STATUS-REPORT and SMS-SUBMIT (the form in which messages
  we stored or sent sit in storage), with the SMSC address in front as 27.005 gives it. Addresses
  (international, national, alphanumeric), protocol identifier, data coding (GSM 7-bit default
  alphabet with its extension table, 8-bit data, UCS-2; message class), service centre time
  stamp with its time zone, the user data header and its concatenation element (8- and 16-bit
  reference).

- :func:`encode_deliver` (what a network hands a phone: the modem emulator's messages) and
  :func:`encode_submit` (what ``AT+CMGS`` takes in PDU mode): GSM 7-bit text, UCS-2 text or 8-bit
  data, one SMS each.

Bad input from the modem never raises: a line that cannot be read comes back as ``Unparsed``
(the line and why), a PDU that cannot be decoded as ``PduError`` (why, and where). Only a
caller's misuse (a wrong argument type) can raise.

Why no library: of the SMS PDU decoders on the package index, the maintained one
(``smspdudecoder``) has no SMS-STATUS-REPORT, needs ``bitstring`` (and through it the C extension
``bitarray``) and ``pytz``, returns untyped dictionaries and raises ``ValueError`` or
``AssertionError`` on bad PDUs; the others (``smspdu``, ``pdusms``, ``messaging``) are
unmaintained, and ``python-gsmmodem-new`` is a whole modem driver. A GSM 03.38 codec package
(``gsm0338``) would cover only the 128-character table below. The decoder is a few hundred lines
written against the specifications, so the device image takes no new dependency for it.
``construct`` was not used either: the PDU's fields are nibble-swapped and variable, and a plain
reader gives each truncation its own reason.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

# -- GSM 7-bit default alphabet (3GPP TS 23.038 section 6.2.1) -----------------------------------

_GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
_GSM7_ESCAPE = 0x1B
# 23.038 section 6.2.1.1, the default alphabet extension table
_GSM7_EXTENSION = {
    0x0A: "\x0c",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
# 23.040 section 9.1.2.3: semi-octet values above 9 in address fields
_BCD_EXTRA = {0xA: "*", 0xB: "#", 0xC: "a", 0xD: "b", 0xE: "c"}


def gsm7_decode(septets: Sequence[int]) -> str:
    """Septet values (0-127) as text, escapes resolved through the extension table.

    An escape before a code the extension table lacks gives the default table's character
    (23.038 section 6.2.1.1); an escape at the end, or before another escape, gives a space.
    """
    out: list[str] = []
    escaped = False
    for septet in septets:
        value = septet & 0x7F
        if escaped:
            escaped = False
            if value == _GSM7_ESCAPE:
                out.append(" ")
            else:
                out.append(_GSM7_EXTENSION.get(value, _GSM7_BASIC[value]))
        elif value == _GSM7_ESCAPE:
            escaped = True
        else:
            out.append(_GSM7_BASIC[value])
    if escaped:
        out.append(" ")
    return "".join(out)


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """``count`` septets packed little-endian in ``data`` after ``fill_bits`` padding bits.

    Raises ``ValueError`` when ``data`` is too short for them (callers check first).
    """
    if fill_bits + 7 * count > 8 * len(data):
        raise ValueError(f"{count} septets need {(fill_bits + 7 * count + 7) // 8} octets, have {len(data)}")
    bits = int.from_bytes(data, "little") >> fill_bits
    return [(bits >> (7 * i)) & 0x7F for i in range(count)]


# -- PDU types -----------------------------------------------------------------------------------


class Alphabet(enum.Enum):
    """The character set of the user data (23.038 section 4)."""

    GSM7 = "GSM 7-bit"
    DATA8 = "8-bit data"
    UCS2 = "UCS-2"


@dataclass(frozen=True, slots=True)
class Address:
    """An SMSC, originator or recipient address. ``number`` has a ``+`` when international."""

    number: str
    type_of_address: int
    """The type-of-address octet: bit 7 set, type of number in bits 6-4, numbering plan in 3-0."""

    @property
    def type_of_number(self) -> int:
        """0 unknown, 1 international, 2 national, 3 network specific, 5 alphanumeric (23.040 9.1.2.5)."""
        return (self.type_of_address >> 4) & 0x7

    @property
    def international(self) -> bool:
        return self.type_of_number == 1

    @property
    def alphanumeric(self) -> bool:
        return self.type_of_number == 5


@dataclass(frozen=True, slots=True)
class DataCoding:
    """The data coding scheme octet (23.038 section 4) as read."""

    value: int
    alphabet: Alphabet
    message_class: int | None
    """0 (flash), 1 (ME), 2 (SIM), 3 (TE), or None when the scheme gives no class."""
    compressed: bool


@dataclass(frozen=True, slots=True)
class InformationElement:
    """One element of the user data header: its identifier and its data."""

    identifier: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Concatenation:
    """Part ``sequence`` of ``total`` of the message ``reference`` (23.040 9.2.3.24.1 and .8)."""

    reference: int
    total: int
    sequence: int
    reference_bits: int
    """8 (element 0x00) or 16 (element 0x08)."""


@dataclass(frozen=True, slots=True)
class UserData:
    """The user data: its header elements, the text (None for 8-bit data or compressed text) and the
    payload octets after the header (the 8-bit data; for text, the encoded octets)."""

    header: tuple[InformationElement, ...]
    text: str | None
    data: bytes
    concatenation: Concatenation | None


class _Message:
    """What a message with user data offers beside its fields (Deliver, Submit)."""

    __slots__ = ()
    user_data: UserData
    coding: DataCoding

    @property
    def text(self) -> str | None:
        return self.user_data.text

    @property
    def concatenation(self) -> Concatenation | None:
        return self.user_data.concatenation

    @property
    def message_class(self) -> int | None:
        return self.coding.message_class


@dataclass(frozen=True, slots=True)
class Deliver(_Message):
    """An SMS-DELIVER: a message received from ``sender``."""

    smsc: Address | None
    sender: Address
    protocol_id: int
    coding: DataCoding
    timestamp: datetime | None
    """The service centre time stamp, with its time zone; None when it is not a valid date."""
    user_data: UserData
    more_messages: bool
    reply_path: bool
    status_report_indication: bool


@dataclass(frozen=True, slots=True)
class Submit(_Message):
    """An SMS-SUBMIT: a message we stored or sent, to ``recipient``."""

    smsc: Address | None
    message_reference: int
    recipient: Address
    protocol_id: int
    coding: DataCoding
    validity: timedelta | datetime | None
    """Relative (a duration) or absolute (a date); None when absent or in the enhanced format."""
    user_data: UserData
    status_report_requested: bool
    reject_duplicates: bool


@dataclass(frozen=True, slots=True)
class StatusReport:
    """An SMS-STATUS-REPORT: what became of the message ``message_reference`` sent to ``recipient``."""

    smsc: Address | None
    message_reference: int
    recipient: Address
    timestamp: datetime | None
    """When the service centre received the message (None when not a valid date)."""
    discharge_time: datetime | None
    status: int
    """TP-ST (23.040 9.2.3.15): below 0x20 done, 0x20-0x3F still trying, above that given up."""
    protocol_id: int | None = None
    coding: DataCoding | None = None
    user_data: UserData | None = None

    @property
    def delivered(self) -> bool:
        """The message reached the recipient (0x00), or was replaced (0x01, 0x02 are also done)."""
        return self.status < 0x20

    @property
    def final(self) -> bool:
        """The service centre is no longer trying (delivered or given up)."""
        return not 0x20 <= self.status < 0x40

    @property
    def text(self) -> str | None:
        return None if self.user_data is None else self.user_data.text


@dataclass(frozen=True, slots=True)
class PduError:
    """A PDU that could not be decoded, and why (the part, the octet offset, what was there)."""

    reason: str


Pdu = Deliver | Submit | StatusReport


class _Truncated(Exception):
    """Internal: a read past the end; turned into a ``PduError``."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int, what: str) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            raise _Truncated(
                f"truncated in the {what}: needs {count} octet(s) at offset {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def octet(self, what: str) -> int:
        return self.take(1, what)[0]

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _semi_octets(data: bytes) -> str:
    digits: list[str] = []
    for octet in data:
        for nibble in (octet & 0xF, octet >> 4):
            if nibble == 0xF:
                return "".join(digits)
            digits.append(str(nibble) if nibble < 10 else _BCD_EXTRA[nibble])
    return "".join(digits)


def _address_value(raw: bytes, toa: int, digits: int | None) -> str:
    ton = (toa >> 4) & 0x7
    if ton == 5:
        septets = (len(raw) * 8) // 7 if digits is None else (digits * 4) // 7
        return gsm7_decode(unpack_septets(raw, septets)).rstrip("@")
    number = _semi_octets(raw)
    if digits is not None:
        number = number[:digits]
    return f"+{number}" if ton == 1 and number else number


def _smsc(reader: _Reader) -> Address | None:
    length = reader.octet("SMSC length")
    if length == 0:
        return None
    toa = reader.octet("SMSC type of address")
    raw = reader.take(length - 1, "SMSC address")
    return Address(_address_value(raw, toa, None), toa)


def _address(reader: _Reader, what: str) -> Address:
    digits = reader.octet(f"{what} length")
    toa = reader.octet(f"{what} type of address")
    raw = reader.take((digits + 1) // 2, f"{what} address")
    return Address(_address_value(raw, toa, digits), toa)


def _bcd(octet: int) -> int | None:
    low, high = octet & 0xF, octet >> 4
    if low > 9 or high > 9:
        return None
    return low * 10 + high


def _timestamp(raw: bytes) -> datetime | None:
    """23.040 9.2.3.11: seven swapped semi-octet pairs; the zone in quarter hours, sign in bit 3."""
    fields = [_bcd(octet) for octet in raw[:6]]
    zone_octet = raw[6]
    zone_low, zone_high = zone_octet & 0x7, zone_octet >> 4
    if any(value is None for value in fields) or zone_high > 9:
        return None
    year, month, day, hour, minute, second = (value or 0 for value in fields)
    quarters = zone_low * 10 + zone_high
    if zone_octet & 0x8:
        quarters = -quarters
    if not -96 < quarters < 96:
        return None
    try:
        return datetime(
            2000 + year, month, day, hour, minute, second, tzinfo=timezone(timedelta(minutes=15 * quarters))
        )
    except ValueError:
        return None


def _coding(dcs: int) -> DataCoding:
    """23.038 section 4; reserved groups are read as GSM 7-bit, as the section says to."""
    group = dcs >> 4
    if group < 0x8:  # general data coding (0x) and automatic deletion (01xx)
        bits = (dcs >> 2) & 0x3
        alphabet = {1: Alphabet.DATA8, 2: Alphabet.UCS2}.get(bits, Alphabet.GSM7)
        message_class = dcs & 0x3 if dcs & 0x10 else None
        return DataCoding(dcs, alphabet, message_class, bool(dcs & 0x20))
    if group == 0xE:  # message waiting indication, store, UCS-2
        return DataCoding(dcs, Alphabet.UCS2, None, False)
    if group == 0xF:  # data coding / message class
        alphabet = Alphabet.DATA8 if dcs & 0x4 else Alphabet.GSM7
        return DataCoding(dcs, alphabet, dcs & 0x3, False)
    return DataCoding(dcs, Alphabet.GSM7, None, False)


def _header(raw: bytes) -> tuple[tuple[InformationElement, ...], Concatenation | None]:
    elements: list[InformationElement] = []
    concatenation: Concatenation | None = None
    pos = 0
    while pos < len(raw):
        if pos + 2 > len(raw):
            raise _Truncated(f"user data header ends inside an element at header offset {pos}")
        identifier, length = raw[pos], raw[pos + 1]
        data = raw[pos + 2 : pos + 2 + length]
        if len(data) < length:
            raise _Truncated(
                f"user data header element 0x{identifier:02X} needs {length} octets, has {len(data)}"
            )
        elements.append(InformationElement(identifier, data))
        pos += 2 + length
        # 23.040 9.2.3.24.1/.8: an element with a zero total or a part number out of range is ignored
        if identifier == 0x00 and length == 3 and data[1] and 0 < data[2] <= data[1]:
            concatenation = Concatenation(data[0], data[1], data[2], 8)
        elif identifier == 0x08 and length == 4 and data[2] and 0 < data[3] <= data[2]:
            concatenation = Concatenation(int.from_bytes(data[:2], "big"), data[2], data[3], 16)
    return tuple(elements), concatenation


def _user_data(reader: _Reader, coding: DataCoding, has_header: bool) -> UserData:
    length = reader.octet("user data length")
    in_septets = coding.alphabet is Alphabet.GSM7 and not coding.compressed
    octets = (length * 7 + 7) // 8 if in_septets else length
    raw = reader.take(octets, f"user data ({length} {'septets' if in_septets else 'octets'})")
    header: tuple[InformationElement, ...] = ()
    concatenation = None
    body_start = 0
    if has_header:
        if not raw:
            raise _Truncated("user data header announced but the user data is empty")
        header_length = raw[0]
        if 1 + header_length > len(raw):
            raise _Truncated(
                f"user data header of {header_length} octets overruns the {len(raw)}-octet user data"
            )
        header, concatenation = _header(raw[1 : 1 + header_length])
        body_start = 1 + header_length
    payload = raw[body_start:]
    if coding.compressed or coding.alphabet is Alphabet.DATA8:
        return UserData(header, None, payload, concatenation)
    if coding.alphabet is Alphabet.UCS2:
        return UserData(header, payload.decode("utf-16-be", "replace"), payload, concatenation)
    header_septets = (body_start * 8 + 6) // 7
    fill = header_septets * 7 - body_start * 8
    septets = unpack_septets(raw[body_start:], max(0, length - header_septets), fill) if fill >= 0 else []
    return UserData(header, gsm7_decode(septets), payload, concatenation)


def _validity(reader: _Reader, form: int) -> timedelta | datetime | None:
    if form == 0:
        return None
    if form == 2:  # relative, 23.040 9.2.3.12.1
        value = reader.octet("validity period")
        if value <= 143:
            return timedelta(minutes=(value + 1) * 5)
        if value <= 167:
            return timedelta(hours=12, minutes=(value - 143) * 30)
        if value <= 196:
            return timedelta(days=value - 166)
        return timedelta(weeks=value - 192)
    raw = reader.take(7, "validity period")
    return _timestamp(raw) if form == 3 else None


def _deliver(reader: _Reader, smsc: Address | None, first: int) -> Deliver:
    sender = _address(reader, "originator")
    protocol_id = reader.octet("protocol identifier")
    coding = _coding(reader.octet("data coding scheme"))
    timestamp = _timestamp(reader.take(7, "service centre time stamp"))
    user_data = _user_data(reader, coding, bool(first & 0x40))
    return Deliver(
        smsc=smsc,
        sender=sender,
        protocol_id=protocol_id,
        coding=coding,
        timestamp=timestamp,
        user_data=user_data,
        more_messages=not first & 0x04,
        reply_path=bool(first & 0x80),
        status_report_indication=bool(first & 0x20),
    )


def _submit(reader: _Reader, smsc: Address | None, first: int) -> Submit:
    reference = reader.octet("message reference")
    recipient = _address(reader, "recipient")
    protocol_id = reader.octet("protocol identifier")
    coding = _coding(reader.octet("data coding scheme"))
    validity = _validity(reader, (first >> 3) & 0x3)
    user_data = _user_data(reader, coding, bool(first & 0x40))
    return Submit(
        smsc=smsc,
        message_reference=reference,
        recipient=recipient,
        protocol_id=protocol_id,
        coding=coding,
        validity=validity,
        user_data=user_data,
        status_report_requested=bool(first & 0x20),
        reject_duplicates=bool(first & 0x04),
    )


def _status_report(reader: _Reader, smsc: Address | None, first: int) -> StatusReport:
    reference = reader.octet("message reference")
    recipient = _address(reader, "recipient")
    timestamp = _timestamp(reader.take(7, "service centre time stamp"))
    discharge = _timestamp(reader.take(7, "discharge time"))
    status = reader.octet("status")
    protocol_id: int | None = None
    coding: DataCoding | None = None
    user_data: UserData | None = None
    if reader.left:  # 23.040 9.2.3.27: the parameter indicator and what it announces
        indicator = reader.octet("parameter indicator")
        extension = indicator
        while extension & 0x80 and reader.left:
            extension = reader.octet("parameter indicator extension")
        if indicator & 0x01:
            protocol_id = reader.octet("protocol identifier")
        if indicator & 0x02:
            coding = _coding(reader.octet("data coding scheme"))
        if indicator & 0x04:
            user_data = _user_data(reader, coding or _coding(0), bool(first & 0x40))
    return StatusReport(
        smsc=smsc,
        message_reference=reference,
        recipient=recipient,
        timestamp=timestamp,
        discharge_time=discharge,
        status=status,
        protocol_id=protocol_id,
        coding=coding,
        user_data=user_data,
    )


def decode_pdu(pdu: str | bytes, *, with_smsc: bool = True) -> Pdu | PduError:
    """Decode an SMS PDU as 27.005 gives it in PDU mode (hex text, or the octets).

    ``with_smsc``: the PDU starts with the SMSC address field (as in ``+CMGR``, ``+CMGL``, ``+CMT``
    and ``+CDS``); a length octet of 0 means none. The message type comes from TP-MTI as seen
    from the phone: 0 SMS-DELIVER, 1 SMS-SUBMIT, 2 SMS-STATUS-REPORT. Never raises on the content:
    a PDU that is not hex, is truncated, or has a reserved type comes back as ``PduError``.
    Octets after the user data are ignored. Raises ``TypeError`` for an argument of another type.
    """
    if isinstance(pdu, str):
        text = pdu.strip()
        if len(text) % 2:
            return PduError(f"odd number of hex digits ({len(text)}): the PDU line is cut or garbled")
        try:
            data = bytes.fromhex(text)
        except ValueError:
            return PduError(f"not hex: {text[:40]!r}")
    elif isinstance(pdu, bytes | bytearray | memoryview):
        data = bytes(pdu)
    else:
        raise TypeError(f"decode_pdu takes hex text or bytes, not {type(pdu).__name__}")
    if not data:
        return PduError("empty PDU")
    reader = _Reader(data)
    try:
        smsc = _smsc(reader) if with_smsc else None
        first = reader.octet("first octet")
        kind = first & 0x3
        if kind == 0:
            return _deliver(reader, smsc, first)
        if kind == 1:
            return _submit(reader, smsc, first)
        if kind == 2:
            return _status_report(reader, smsc, first)
        return PduError(f"reserved message type 3 in first octet 0x{first:02X} at offset {reader.pos - 1}")
    except _Truncated as exc:
        return PduError(f"SMS PDU of {len(data)} octets is {exc}")
    except ValueError as exc:  # septet unpacking past the end: guarded above, kept as a backstop
        return PduError(f"SMS PDU of {len(data)} octets: {exc}")


# -- PDU encoding (SMS-DELIVER, SMS-SUBMIT) ------------------------------------------------------

_GSM7_BASIC_INDEX = {char: code for code, char in enumerate(_GSM7_BASIC) if code != _GSM7_ESCAPE}
_GSM7_EXTENSION_INDEX = {char: code for code, char in _GSM7_EXTENSION.items()}
MAX_SEPTETS = 160
MAX_OCTETS = 140


def gsm7_encode(text: str) -> list[int] | None:
    """``text`` as septets of the default alphabet (extension characters as escape pairs), or None
    when a character is in neither table (the text then needs UCS-2)."""
    septets: list[int] = []
    for char in text:
        code = _GSM7_BASIC_INDEX.get(char)
        if code is not None:
            septets.append(code)
            continue
        extension = _GSM7_EXTENSION_INDEX.get(char)
        if extension is None:
            return None
        septets += [_GSM7_ESCAPE, extension]
    return septets


def pack_septets(septets: Sequence[int], fill_bits: int = 0) -> bytes:
    """Septets packed little-endian after ``fill_bits`` padding bits (the inverse of ``unpack_septets``)."""
    bits = 0
    for i, septet in enumerate(septets):
        bits |= (septet & 0x7F) << (fill_bits + 7 * i)
    return bits.to_bytes((fill_bits + 7 * len(septets) + 7) // 8, "little")


def _encode_address(number: str, what: str, *, smsc: bool = False) -> bytes:
    """An address field: international (``+`` then digits), national (digits) or alphanumeric."""
    digits = number[1:] if number.startswith("+") else number
    if digits and all(char in "0123456789*#abc" for char in digits):
        toa = 0x91 if number.startswith("+") else 0x81
        padded = digits + ("F" if len(digits) % 2 else "")
        lookup = {"*": "A", "#": "B", "a": "C", "b": "D", "c": "E"}
        nibbles = [lookup.get(char, char) for char in padded]
        raw = bytes(int(nibbles[i + 1] + nibbles[i], 16) for i in range(0, len(nibbles), 2))
        length = len(raw) + 1 if smsc else len(digits)
        return bytes([length, toa]) + raw
    septets = gsm7_encode(number)
    if smsc or not number or septets is None or len(septets) > 11:
        raise ValueError(
            f"{what} {number!r} is neither a number (+ and digits) nor up to 11 GSM 7-bit characters"
        )
    raw = pack_septets(septets)
    return bytes([(len(septets) * 7 + 3) // 4, 0xD0]) + raw  # length in useful semi-octets


def _encode_timestamp(when: datetime) -> bytes:
    offset = when.utcoffset() or timedelta(0)
    quarters = int(offset.total_seconds() // 900)
    values = (when.year % 100, when.month, when.day, when.hour, when.minute, when.second)
    zone = abs(quarters)
    zone_octet = ((zone % 10) << 4) | (zone // 10) | (0x08 if quarters < 0 else 0)
    return bytes(((value % 10) << 4) | (value // 10) for value in values) + bytes([zone_octet])


def _encode_user_data(body: str | bytes) -> tuple[int, bytes]:
    """The data coding scheme and the user data (with its length octet) of ``body``: GSM 7-bit
    text, UCS-2 text when a character is not in the GSM alphabet, or 8-bit data for bytes."""
    if isinstance(body, bytes):
        if len(body) > MAX_OCTETS:
            raise ValueError(f"8-bit data of {len(body)} octets does not fit one SMS ({MAX_OCTETS})")
        return 0x04, bytes([len(body)]) + body
    septets = gsm7_encode(body)
    if septets is not None:
        if len(septets) > MAX_SEPTETS:
            raise ValueError(f"text of {len(septets)} septets does not fit one SMS ({MAX_SEPTETS})")
        return 0x00, bytes([len(septets)]) + pack_septets(septets)
    raw = body.encode("utf-16-be")
    if len(raw) > MAX_OCTETS:
        raise ValueError(f"UCS-2 text of {len(raw) // 2} characters does not fit one SMS (70)")
    return 0x08, bytes([len(raw)]) + raw


@dataclass(frozen=True, slots=True)
class EncodedPdu:
    """A PDU as 27.005 PDU mode takes and gives it: ``pdu`` starts with the SMSC field;
    ``tpdu_length`` is the length ``+CMGS``/``+CMGR``/``+CMT`` count (without that field)."""

    pdu: bytes
    tpdu_length: int

    def hex(self) -> str:
        return self.pdu.hex().upper()


def _smsc_field(smsc: str | None) -> bytes:
    return b"\x00" if smsc is None else _encode_address(smsc, "SMSC address", smsc=True)


def encode_deliver(
    sender: str, body: str | bytes, timestamp: datetime, *, smsc: str | None = None, protocol_id: int = 0
) -> EncodedPdu:
    """An SMS-DELIVER from ``sender`` (what a network hands a phone; an emulated modem's store).

    ``body``: text (GSM 7-bit, or UCS-2 when it needs it) or bytes (8-bit data). ``timestamp``
    needs a time zone (UTC when it has none). Raises ValueError when the body does not fit one
    SMS or the sender is not an address (the message says which).
    """
    coding, user_data = _encode_user_data(body)
    stamp = timestamp if timestamp.tzinfo is not None else timestamp.replace(tzinfo=UTC)
    tpdu = (
        bytes([0x04])  # SMS-DELIVER, no more messages to send
        + _encode_address(sender, "sender")
        + bytes([protocol_id, coding])
        + _encode_timestamp(stamp)
        + user_data
    )
    return EncodedPdu(_smsc_field(smsc) + tpdu, len(tpdu))


def encode_submit(
    recipient: str, body: str | bytes, *, reference: int = 0, validity_minutes: int | None = None
) -> EncodedPdu:
    """An SMS-SUBMIT to ``recipient`` for ``AT+CMGS`` in PDU mode (the SMSC field empty: the SIM's).

    ``validity_minutes``: a relative validity period (5 minutes to 12 hours in 5-minute steps, up to
    63 weeks beyond); None: none. Raises ValueError as :func:`encode_deliver`, or for a reference
    outside 0-255.
    """
    if not 0 <= reference <= 255:
        raise ValueError(f"message reference {reference} is out of range 0-255")
    coding, user_data = _encode_user_data(body)
    validity = b""
    first = 0x01
    if validity_minutes is not None:
        first |= 0x10  # relative validity period present (23.040 9.2.3.3)
        minutes = max(5, validity_minutes)
        if minutes <= 720:
            value = (minutes + 4) // 5 - 1
        elif minutes <= 1440:
            value = 143 + (minutes - 720 + 29) // 30
        elif minutes <= 30 * 1440:
            value = 166 + (minutes + 1439) // 1440
        else:
            value = min(255, 192 + (minutes + 10079) // 10080)
        validity = bytes([value])
    tpdu = (
        bytes([first, reference])
        + _encode_address(recipient, "recipient")
        + bytes([0, coding])
        + validity
        + user_data
    )
    return EncodedPdu(b"\x00" + tpdu, len(tpdu))


# -- AT replies and URCs (3GPP TS 27.005) ---------------------------------------------------------


class MessageStatus(enum.IntEnum):
    """``<stat>`` of 27.005 section 3.1, with its text-mode names in ``TEXT_STATUS``."""

    RECEIVED_UNREAD = 0
    RECEIVED_READ = 1
    STORED_UNSENT = 2
    STORED_SENT = 3
    ALL = 4


TEXT_STATUS: dict[str, MessageStatus] = {
    "REC UNREAD": MessageStatus.RECEIVED_UNREAD,
    "REC READ": MessageStatus.RECEIVED_READ,
    "STO UNSENT": MessageStatus.STORED_UNSENT,
    "STO SENT": MessageStatus.STORED_SENT,
    "ALL": MessageStatus.ALL,
}

KNOWN_STORAGES: frozenset[str] = frozenset({"SM", "ME", "MT", "BM", "SR", "TA"})
"""27.005 section 3.2.2: SIM, phone, either, broadcast, status reports, terminal adaptor."""


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A reply or URC line that could not be read, and why."""

    line: str
    reason: str


@dataclass(frozen=True, slots=True)
class PduMessage:
    """A PDU-mode message: a ``+CMGL``/``+CMGR`` entry (``index`` None for ``+CMGR``) or a ``+CMT``/
    ``+CDS`` URC (``status`` None). ``length`` is the TPDU's in octets, without the SMSC field."""

    index: int | None
    status: MessageStatus | None
    alpha: str | None
    length: int
    pdu: str

    def decode(self) -> Pdu | PduError:
        """The PDU decoded (see :func:`decode_pdu`)."""
        return decode_pdu(self.pdu)


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A text-mode message: a ``+CMGL``/``+CMGR`` entry or a ``+CMT`` URC (``status`` None).

    ``address`` is the sender of a received message or the recipient of a stored one.
    ``timestamp`` is the service centre's, None when absent or not a valid date. ``body`` is as
    the modem printed it, in the ``+CSCS`` character set (hex for ``UCS2``).
    """

    index: int | None
    status: MessageStatus | None
    address: str
    alpha: str | None
    timestamp: datetime | None
    body: str


@dataclass(frozen=True, slots=True)
class TextStatusReport:
    """A text-mode status report: a ``+CDS`` URC, or a stored one in ``+CMGL``/``+CMGR``.

    ``report_status`` is TP-ST (see ``StatusReport.status``).
    """

    index: int | None
    status: MessageStatus | None
    first_octet: int
    message_reference: int
    recipient: str
    type_of_address: int | None
    timestamp: datetime | None
    discharge_time: datetime | None
    report_status: int


@dataclass(frozen=True, slots=True)
class StorageUse:
    """One storage in ``+CPMS?``: its name and how many messages it holds of how many."""

    name: str
    used: int
    total: int

    @property
    def full(self) -> bool:
        """No room for one more message: new ones are rejected or left at the network."""
        return self.total > 0 and self.used >= self.total


@dataclass(frozen=True, slots=True)
class StorageSupport:
    """``+CPMS=?``: the storages each memory can be set to (read/delete, write/send, receive)."""

    mem1: tuple[str, ...]
    mem2: tuple[str, ...]
    mem3: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StorageState:
    """``+CPMS?``: the storages in use, mem1 first; ``full`` tells whether one has no room left."""

    memories: tuple[StorageUse, ...]

    @property
    def mem1(self) -> StorageUse:
        return self.memories[0]

    @property
    def mem2(self) -> StorageUse | None:
        return self.memories[1] if len(self.memories) > 1 else None

    @property
    def mem3(self) -> StorageUse | None:
        return self.memories[2] if len(self.memories) > 2 else None

    @property
    def full(self) -> bool:
        """The receive storage (mem3, or mem1 when only one is given) has no room left."""
        return self.memories[-1].full


@dataclass(frozen=True, slots=True)
class StorageIndication:
    """``+CMTI`` (a message) or ``+CDSI`` (a status report) was stored at ``index`` in ``storage``."""

    kind: str
    storage: str
    index: int


_TIMESTAMP = re.compile(r"^(\d{2})/(\d{2})/(\d{2}),\s*(\d{2}):(\d{2}):(\d{2})\s*(?:([+-])\s*(\d{1,2}))?$")
_DIGITS = re.compile(r"[0-9]+\Z")
_INLINE_PDU = re.compile(r"^(\d+)\s+([0-9A-Fa-f]+)$")


def _split(text: str) -> list[str] | None:
    """Comma-separated fields outside quotes and parentheses, stripped; None if a quote is open."""
    fields: list[str] = []
    current: list[str] = []
    quoted = False
    depth = 0
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif char == "," and not quoted and depth <= 0:
            fields.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if quoted or depth:
        return None
    fields.append("".join(current).strip())
    return fields


def _unquote(field: str) -> str:
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1]
    return field


def _quoted(field: str) -> bool:
    return len(field) >= 2 and field[0] == field[-1] == '"'


def _int(field: str) -> int | None:
    field = _unquote(field).strip()
    return int(field) if _DIGITS.match(field) is not None and len(field) <= 9 else None


def _after_prefix(line: str, prefix: str) -> str | None:
    if not line.upper().startswith(prefix.upper()):
        return None
    return line[len(prefix) :].strip()


def parse_text_timestamp(text: str) -> datetime | None:
    """A text-mode time stamp, ``yy/MM/dd,hh:mm:ss±zz`` (zone in quarter hours, 27.005 and 23.040).

    None when it is not one or not a valid date; without a zone it is taken as UTC.
    """
    match = _TIMESTAMP.match(_unquote(text.strip()))
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    quarters = int(match.group(8) or 0) * (-1 if match.group(7) == "-" else 1)
    try:
        return datetime(
            2000 + year, month, day, hour, minute, second, tzinfo=timezone(timedelta(minutes=15 * quarters))
        )
    except ValueError:
        return None


def _status(field: str) -> MessageStatus | None:
    if _quoted(field) or _DIGITS.match(field) is None:
        return TEXT_STATUS.get(_unquote(field).strip().upper())
    value = _int(field)
    return MessageStatus(value) if value is not None and value <= 4 else None


def _text_report(
    line: str, fields: list[str], index: int | None, status: MessageStatus | None
) -> TextStatusReport | Unparsed:
    # <fo>,<mr>,[<ra>],[<tora>],<scts>,<dt>,<st> (27.005 sections 3.4.1 and 4.1)
    if len(fields) < 7:
        return Unparsed(line, f"a text-mode status report has 7 fields, this has {len(fields)}")
    first, reference, report_status = _int(fields[0]), _int(fields[1]), _int(fields[6])
    if first is None or reference is None or report_status is None:
        return Unparsed(line, "first octet, message reference and status must be numbers")
    return TextStatusReport(
        index=index,
        status=status,
        first_octet=first,
        message_reference=reference,
        recipient=_unquote(fields[2]),
        type_of_address=_int(fields[3]),
        timestamp=parse_text_timestamp(fields[4]),
        discharge_time=parse_text_timestamp(fields[5]),
        report_status=report_status,
    )


Entry = PduMessage | TextMessage | TextStatusReport | Unparsed


def _entry(header: str, prefix: str, body: list[str], indexed: bool) -> Entry:
    rest = _after_prefix(header, prefix)
    fields = None if rest is None else _split(rest)
    if fields is None:
        return Unparsed(header, f"not a {prefix} header (unbalanced quotes, or another prefix)")
    index: int | None = None
    if indexed:
        index = _int(fields[0])
        if index is None:
            return Unparsed(header, f"the index {fields[0]!r} is not a number")
        fields = fields[1:]
    if not fields:
        return Unparsed(header, "no <stat> field")
    status = _status(fields[0])
    if status is None:
        return Unparsed(header, f"unknown message status {fields[0]!r}")
    if not _quoted(fields[0]):  # PDU mode: <stat>,[<alpha>],<length>
        last = fields[-1]
        inline = _INLINE_PDU.match(last)
        if inline is not None:
            length, pdu = int(inline.group(1)), inline.group(2)
        else:
            if len(fields) < 2 or _int(last) is None:
                return Unparsed(header, f"the PDU length {last!r} is not a number")
            if not body:
                return Unparsed(header, "no PDU line after the header")
            length, pdu = _int(last) or 0, body[0].strip()
        alpha = (_unquote(fields[1]) or None) if len(fields) > 2 else None
        return PduMessage(index, status, alpha, length, pdu)
    if len(fields) > 1 and _DIGITS.match(fields[1]) is not None:
        return _text_report(header, fields[1:], index, status)
    if len(fields) < 2:
        return Unparsed(header, "no address field")
    timestamp = next(
        (stamp for field in fields[2:] if (stamp := parse_text_timestamp(field)) is not None), None
    )
    alpha = (_unquote(fields[2]) or None) if len(fields) > 2 else None
    return TextMessage(index, status, _unquote(fields[1]), alpha, timestamp, "\n".join(body))


def parse_cmgl(lines: Sequence[str]) -> tuple[Entry, ...]:
    """The entries of a ``+CMGL`` reply, in order; each a message, a report or ``Unparsed``.

    ``lines`` are the command's information lines: each ``+CMGL:`` header followed by its body
    line(s) (one PDU line; text lines; none for a text-mode status report).
    """
    entries: list[Entry] = []
    header: str | None = None
    body: list[str] = []
    for line in lines:
        if line.upper().startswith("+CMGL:"):
            if header is not None:
                entries.append(_entry(header, "+CMGL:", body, indexed=True))
            header, body = line, []
        elif header is None:
            entries.append(Unparsed(line, "a line before the first +CMGL: header"))
        else:
            body.append(line)
    if header is not None:
        entries.append(_entry(header, "+CMGL:", body, indexed=True))
    return tuple(entries)


def parse_cmgr(lines: Sequence[str]) -> Entry:
    """The message of a ``+CMGR`` reply: its header line, then the body line(s)."""
    if not lines:
        return Unparsed("", "empty +CMGR reply: nothing stored at that index")
    return _entry(lines[0], "+CMGR:", list(lines[1:]), indexed=False)


def parse_cmt(line: str, body: str | None) -> PduMessage | TextMessage | Unparsed:
    """A ``+CMT`` URC: PDU mode ``+CMT: [<alpha>],<length>``, text mode ``+CMT: <oa>,[<alpha>],<scts>...``,
    with its body line (the ``UrcReceived.body``)."""
    rest = _after_prefix(line, "+CMT:")
    fields = None if rest is None else _split(rest)
    if fields is None:
        return Unparsed(line, "not a +CMT line")
    if body is None:
        return Unparsed(line, "+CMT without its body line")
    length = _int(fields[-1]) if not _quoted(fields[-1]) else None
    if length is not None and len(fields) <= 2:
        alpha = (_unquote(fields[0]) or None) if len(fields) == 2 else None
        return PduMessage(None, None, alpha, length, body.strip())
    alpha = (_unquote(fields[1]) or None) if len(fields) > 1 else None
    timestamp = next(
        (stamp for field in fields[1:] if (stamp := parse_text_timestamp(field)) is not None), None
    )
    return TextMessage(None, None, _unquote(fields[0]), alpha, timestamp, body)


def parse_cds(line: str, body: str | None) -> PduMessage | TextStatusReport | Unparsed:
    """A ``+CDS`` URC: PDU mode ``+CDS: <length>`` with the PDU as ``body``, or text mode
    ``+CDS: <fo>,<mr>,[<ra>],[<tora>],<scts>,<dt>,<st>`` on one line."""
    rest = _after_prefix(line, "+CDS:")
    fields = None if rest is None else _split(rest)
    if fields is None:
        return Unparsed(line, "not a +CDS line")
    if len(fields) == 1:
        length = _int(fields[0])
        if length is None:
            return Unparsed(line, f"the PDU length {fields[0]!r} is not a number")
        if body is None:
            return Unparsed(line, "+CDS without its PDU line")
        return PduMessage(None, None, None, length, body.strip())
    return _text_report(line, fields, None, None)


def parse_storage_indication(line: str) -> StorageIndication | Unparsed:
    """``+CMTI: "SM",3`` or ``+CDSI: "SR",1``."""
    for prefix in ("+CMTI:", "+CDSI:"):
        rest = _after_prefix(line, prefix)
        if rest is None:
            continue
        fields = _split(rest)
        if fields is None or len(fields) != 2:
            return Unparsed(line, f"{prefix} has two fields: storage and index")
        index = _int(fields[1])
        if index is None:
            return Unparsed(line, f"the index {fields[1]!r} is not a number")
        return StorageIndication(prefix[:-1], _unquote(fields[0]).strip().upper(), index)
    return Unparsed(line, "not a +CMTI or +CDSI line")


def _names(field: str) -> tuple[str, ...] | None:
    """``("ME","MT")``, ``"ME"``, ``()`` or an empty field as a tuple of upper-case names."""
    field = field.strip()
    if field.startswith("(") and field.endswith(")"):
        field = field[1:-1]
    parts = _split(field)
    if parts is None:
        return None
    names = tuple(_unquote(part).strip().upper() for part in parts)
    return tuple(name for name in names if name)


def parse_cpms_test(line: str) -> StorageSupport | Unparsed:
    """``+CPMS: ("ME","MT","SM"),("ME","MT","SM"),("SM")``: the storages of mem1, mem2 and mem3.

    A bare name stands for a one-name list; an empty list or field for none (as some modems answer).
    """
    rest = _after_prefix(line, "+CPMS:")
    fields = None if rest is None else _split(rest)
    if fields is None or len(fields) != 3:
        return Unparsed(line, "+CPMS=? has three lists: mem1, mem2, mem3")
    groups = [_names(field) for field in fields]
    mem1, mem2, mem3 = groups
    if mem1 is None or mem2 is None or mem3 is None:
        return Unparsed(line, "unbalanced quotes in a storage list")
    return StorageSupport(mem1, mem2, mem3)


def parse_cpms_query(line: str) -> StorageState | Unparsed:
    """``+CPMS: "SM",3,30,"SM",3,30,"SM",3,30``: each memory's name, used and total."""
    rest = _after_prefix(line, "+CPMS:")
    fields = None if rest is None else _split(rest)
    if fields is None or not fields or len(fields) % 3 or len(fields) > 9:
        return Unparsed(line, "+CPMS? gives one to three groups of storage, used, total")
    memories: list[StorageUse] = []
    for i in range(0, len(fields), 3):
        name, used, total = _unquote(fields[i]).strip().upper(), _int(fields[i + 1]), _int(fields[i + 2])
        if not name or used is None or total is None:
            return Unparsed(line, f"group {i // 3 + 1} is not storage, used, total")
        memories.append(StorageUse(name, used, total))
    return StorageState(tuple(memories))


def parse_cpms_set(line: str) -> tuple[tuple[int, int], ...] | Unparsed:
    """The reply to ``AT+CPMS="SM",...``: ``+CPMS: 3,30,3,30,3,30`` as (used, total) per memory."""
    rest = _after_prefix(line, "+CPMS:")
    fields = None if rest is None else _split(rest)
    if fields is None or not fields or len(fields) % 2 or len(fields) > 6:
        return Unparsed(line, "+CPMS= gives one to three pairs of used, total")
    numbers = [_int(field) for field in fields]
    if any(number is None for number in numbers):
        return Unparsed(line, "+CPMS= counts must be numbers")
    values = [number or 0 for number in numbers]
    return tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))


def parse_cscs_test(line: str) -> tuple[str, ...] | Unparsed:
    """``+CSCS: ("IRA","GSM","UCS2")`` (or a single quoted name) as the names the modem gives."""
    rest = _after_prefix(line, "+CSCS:")
    if rest is None:
        return Unparsed(line, "not a +CSCS line")
    names = _names(rest)
    if names is None or not names:
        return Unparsed(line, "no character set named")
    return names


_CHARSET_ALIASES = {
    "ASCII": "IRA",
    "UTF-8": "UTF8",
    "ISO8859-1": "8859-1",
    "ISO-8859-1": "8859-1",
    "UCS-2": "UCS2",
}


def canonical_charset(name: str) -> str:
    """27.007 section 5.5's name for a character set a modem spells otherwise (``ASCII`` is ``IRA``)."""
    upper = name.strip().upper()
    return _CHARSET_ALIASES.get(upper, upper)
