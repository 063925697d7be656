"""What a device tells its broker about itself at a low rate: cellular signal and network, data
used, its learned keepalive. Carried in the plaintext of a KEEPALIVE (empty otherwise), so it costs
no datagram of its own and is retried, like the keepalive, until the broker acknowledges it.

The body is a list of items, each ``type (1) ‖ length (1) ‖ value``; a receiver skips types it
does not know, so later versions can add items. At most ``MAX_REPORT`` bytes.

| type | name | value |
|---|---|---|
| 1 | signal_dbm | signed 8-bit, dBm |
| 2 | rat | UTF-8: gsm, gprs, edge, umts, hspa, lte, nr, ... |
| 3 | data_used | unsigned 64-bit: bytes used in the current billing cycle |
| 4 | modem_state | UTF-8: the modem manager's state (online, searching, no-sim, ...) |
| 5 | operator | UTF-8: the network's name |
| 6 | keepalive_s | unsigned 32-bit: the keepalive interval the device uses |
| 7 | nat_lifetime_s | unsigned 32-bit: the NAT mapping lifetime it measured (0: not known) |
| 8 | presence_transport | UTF-8: udp or tcp |
| 9 | nat_type | UTF-8, at most 16 bytes: the NAT's behaviour as the device classified it |
| 10 | sms_wake_number | 0–8 bytes: the device sleeps in SMS-wake mode; its own number as BCD semi-octets |
| 11 | direct_paths | 1 byte of flags: direct paths besides its IPv4 NAT (0x01 `ipv6`, 0x02 `mapping`) |

``nat_type`` is RFC 4787's mapping/filtering pair from the RFC 5780 tests against the broker's
alternate address (``daemon/nat_type.py``): ``EIM/APDF``, ``APDM/APDF``, ``no NAT``,
``UDP blocked``, ... A broker that predates an item skips it (``decode`` skips unknown types), so
a newer device's report still reaches an older broker, without that item.

``direct_paths`` names what the device's sessions have besides the NAT of ``nat_type``
(``protocol/nat_behaviour.py``: :func:`~dvrlink.protocol.nat_behaviour.format_direct_paths`):
``ipv6``, a global IPv6 address (its IPv6 host candidate is its public address; path rule 9),
and ``mapping``, a router that offers port mapping (PCP, NAT-PMP or UPnP-IGD) which its sessions
ask (rule 8). In the report it is one byte of flags (the largest report stays within
``MAX_REPORT``); in JSON and ``DeviceReport`` the comma-separated names, ``""`` for neither. A
reader ignores flags and names it does not know.

``sms_wake_number`` says the device runs ``[presence] mode = sms-wake`` (docs/sms-wake.md): when
it is offline, the broker may wake it by SMS. The value is the device's own number (MSISDN, from
``AT+CNUM`` or its config), its E.164 digits packed two per byte as in 3GPP TS 23.040 9.1.2.3
(low nibble first, a final ``F`` filler), without the ``+``: at most 15 digits, 8 bytes. Empty:
the device does not know its number (many SIMs do not store it), and the operator sets it on the
broker (``dvrlink-broker device sms SERIAL --number``). A device in ``always`` mode sends no item.
Packing the digits keeps the largest report within ``MAX_REPORT``.

Items 16 and up are **controls** for the broker's presence core, not part of the report:

| type | name | value |
|---|---|---|
| 16 | probe_delay_ms | unsigned 32-bit: a NAT lifetime probe; answer after this long (see below) |
| 17 | interval_ms | unsigned 32-bit: the keepalive interval the device uses from now on |

A keepalive with ``probe_delay_ms`` comes from a second socket of the device (a mapping of its
own): the broker does not take its address as the device's, does not answer at once, and sends
the KEEPALIVE_ACK to that address after the delay. If the NAT still holds the idle mapping, the
device hears it. ``interval_ms`` lets the broker judge the device offline by the new interval.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

MAX_REPORT = 192
MAX_TEXT = 32
MAX_NAT_TYPE = 16
MAX_NUMBER_DIGITS = 15
"""E.164 digits of ``sms_wake_number`` at most (ITU-T E.164: 15)."""
"""Bytes of ``nat_type`` at most, so that every report still fits ``MAX_REPORT``."""
PROBE_DELAY = 16
INTERVAL = 17

_SIGNAL, _RAT, _DATA, _STATE, _OPERATOR, _KEEPALIVE, _NAT, _TRANSPORT, _NAT_TYPE, _SMS_WAKE = range(1, 11)
_PATHS = 11
_TEXT_ITEMS = {
    _RAT: "rat",
    _STATE: "modem_state",
    _OPERATOR: "operator",
    _TRANSPORT: "presence_transport",
    _NAT_TYPE: "nat_type",
}
_TEXT_LIMITS = {_NAT_TYPE: MAX_NAT_TYPE}
DIRECT_PATH_FLAGS = {"ipv6": 0x01, "mapping": 0x02}
"""The names of ``direct_paths`` and their bits in item 11."""
_U32_ITEMS = {_KEEPALIVE: "keepalive_s", _NAT: "nat_lifetime_s"}


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """A device's report; None fields are not sent (and were not reported)."""

    signal_dbm: int | None = None
    rat: str | None = None
    data_used: int | None = None
    modem_state: str | None = None
    operator: str | None = None
    keepalive_s: int | None = None
    nat_lifetime_s: int | None = None
    presence_transport: str | None = None
    nat_type: str | None = None
    """The NAT's behaviour as the device classified it (``EIM/APDF``, ``no NAT``, ...)."""
    sms_wake_number: str | None = None
    """Set when the device sleeps in SMS-wake mode: its own number as ``+`` and E.164 digits, or
    ``""`` when it does not know it. None: ``always`` mode (or a device that predates the item)."""
    direct_paths: str | None = None
    """Direct paths besides the IPv4 NAT (item 11): ``ipv6``, ``mapping``, comma-separated; ``""``:
    neither. None: not reported (a device that predates the item, or not found out yet)."""

    def encode(self) -> bytes:
        """Serialize; text is cut to ``MAX_TEXT`` bytes (on a character boundary) and numbers
        are clamped to their item's range, so any report fits ``MAX_REPORT``."""
        out = bytearray()
        if self.signal_dbm is not None:
            out += struct.pack(">BBb", _SIGNAL, 1, max(-128, min(127, self.signal_dbm)))
        if self.data_used is not None:
            out += struct.pack(">BBQ", _DATA, 8, max(0, min(2**64 - 1, self.data_used)))
        for item, name in _U32_ITEMS.items():
            value = getattr(self, name)
            if value is not None:
                out += struct.pack(">BBI", item, 4, max(0, min(2**32 - 1, value)))
        for item, name in _TEXT_ITEMS.items():
            value = getattr(self, name)
            if value is not None:
                limit = _TEXT_LIMITS.get(item, MAX_TEXT)
                raw = value.encode("utf-8")[:limit].decode("utf-8", "ignore").encode("utf-8")
                out += bytes([item, len(raw)]) + raw
        if self.sms_wake_number is not None:
            packed = pack_number(self.sms_wake_number)
            out += bytes([_SMS_WAKE, len(packed)]) + packed
        if self.direct_paths is not None:
            out += bytes([_PATHS, 1, _path_flags(self.direct_paths)])
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> DeviceReport:
        """Parse, skipping unknown item types.

        Raises:
            ValueError: longer than ``MAX_REPORT``, an item runs past the end, a known item has
                the wrong length, or text is not UTF-8.
        """
        if len(data) > MAX_REPORT:
            raise ValueError(f"report of {len(data)} bytes; at most {MAX_REPORT}")
        values: dict[str, Any] = {}
        for item, value in _items(data):
            if item == _SIGNAL:
                values["signal_dbm"] = _fixed(">b", value, item)
            elif item == _DATA:
                values["data_used"] = _fixed(">Q", value, item)
            elif item in _U32_ITEMS:
                values[_U32_ITEMS[item]] = _fixed(">I", value, item)
            elif item in _TEXT_ITEMS:
                try:
                    values[_TEXT_ITEMS[item]] = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(f"report item {item} is not UTF-8") from None
            elif item == _SMS_WAKE:
                values["sms_wake_number"] = unpack_number(value)
            elif item == _PATHS:
                flags = _fixed(">B", value, item)
                values["direct_paths"] = ",".join(n for n, bit in DIRECT_PATH_FLAGS.items() if flags & bit)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The reported fields only, for JSON."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceReport:
        """Inverse of ``as_dict``, ignoring unknown keys and values of the wrong type."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            numeric = f.name in ("signal_dbm", "data_used", "keepalive_s", "nat_lifetime_s")
            if (numeric and isinstance(value, int) and not isinstance(value, bool)) or (
                not numeric and isinstance(value, str)
            ):
                values[f.name] = value
        return cls(**values)


def _path_flags(names: str) -> int:
    """``direct_paths``' names as item 11's flags (names it does not know are left out)."""
    return sum(DIRECT_PATH_FLAGS.get(name.strip(), 0) for name in set(names.split(",")))


def pack_number(number: str) -> bytes:
    """``+`` and up to ``MAX_NUMBER_DIGITS`` digits as BCD semi-octets (low nibble first, ``F``
    filler); anything else (no number, a national number, too many digits) packs as empty: the
    device then reports its mode without a number, and the operator sets it on the broker."""
    digits = number[1:] if number.startswith("+") else ""
    if not digits or not digits.isascii() or not digits.isdigit() or len(digits) > MAX_NUMBER_DIGITS:
        return b""
    nibbles = [int(d) for d in digits] + ([0xF] if len(digits) % 2 else [])
    return bytes(nibbles[i] | nibbles[i + 1] << 4 for i in range(0, len(nibbles), 2))


def unpack_number(value: bytes) -> str:
    """The inverse of :func:`pack_number`: ``+`` and the digits, or ``""`` for an empty value.

    Raises:
        ValueError: more than 8 bytes, or a nibble that is not a digit (but a final ``F``).
    """
    if len(value) > (MAX_NUMBER_DIGITS + 1) // 2:
        raise ValueError(f"report item {_SMS_WAKE} has {len(value)} bytes; a number packs into at most 8")
    nibbles = [n for byte in value for n in (byte & 0x0F, byte >> 4)]
    if nibbles and nibbles[-1] == 0xF:
        nibbles.pop()
    if any(n > 9 for n in nibbles):
        raise ValueError(f"report item {_SMS_WAKE} holds a nibble that is not a digit")
    return "+" + "".join(map(str, nibbles)) if nibbles else ""


def encode_controls(*, probe_delay_ms: int | None = None, interval_ms: int | None = None) -> bytes:
    """Control items for a keepalive (after any report items)."""
    out = b""
    if probe_delay_ms is not None:
        out += struct.pack(">BBI", PROBE_DELAY, 4, max(0, min(2**32 - 1, probe_delay_ms)))
    if interval_ms is not None:
        out += struct.pack(">BBI", INTERVAL, 4, max(0, min(2**32 - 1, interval_ms)))
    return out


def read_controls(data: bytes) -> dict[int, int]:
    """The control items of a keepalive plaintext, by type; report items are skipped.

    Raises:
        ValueError: the items are malformed (as ``DeviceReport.decode`` would say).
    """
    controls: dict[int, int] = {}
    for item, value in _items(data):
        if item in (PROBE_DELAY, INTERVAL):
            controls[item] = _fixed(">I", value, item)
    return controls


def _items(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each item.

    Raises:
        ValueError: an item's header or value runs past the end.
    """
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise ValueError("report item header truncated")
        item, length = data[offset], data[offset + 1]
        value = data[offset + 2 : offset + 2 + length]
        if len(value) != length:
            raise ValueError(f"report item {item} runs past the end")
        offset += 2 + length
        yield item, value


def _fixed(fmt: str, value: bytes, item: int) -> int:
    if len(value) != struct.calcsize(fmt):
        raise ValueError(f"report item {item} has {len(value)} bytes, not {struct.calcsize(fmt)}")
    return int(struct.unpack(fmt, value)[0])
