"""The broker API's answer bodies (contract v1) as checked, frozen values.

Pure parsing: each ``parse_*`` takes the decoded JSON and raises ``ValueError`` saying which
field is wrong; the client turns that into a "malformed answer" ``ViewerError``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dvrlink.protocol.identity import b64decode_key, fingerprint, validate_serial


@dataclass(frozen=True, slots=True)
class Token:
    """``POST /v1/tokens`` answer."""

    token: str
    expires_at: float  # unix s
    username: str


@dataclass(frozen=True, slots=True)
class Device:
    """A device paired to the caller's account, as the broker sees it."""

    serial: str
    online: bool
    last_seen: float | None  # unix s
    reflexive_address: str | None  # "ip:port" the broker sees
    registered_at: float | None  # unix s
    keepalive_interval: float | None  # s
    fingerprint: str
    paired_at: float  # unix s


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """``GET /v1/devices/{serial}/identity`` answer: the key the broker has bound to the serial."""

    serial: str
    public_key: bytes  # raw Ed25519, 32 bytes
    fingerprint: str
    online: bool


@dataclass(frozen=True, slots=True)
class PairAnswer:
    """``POST /v1/devices/{serial}/pairings`` answer that carries the device's result.

    ``paired`` is the broker's word (200 ``paired`` vs 403 ``wrong_code``); ``result`` holds the
    device's signed ``PairResult`` bytes, which the viewer checks itself.
    """

    paired: bool
    result: bytes


def _object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    return data


def _string(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {name!r} is missing or not a string")
    return value


def _bool(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name)
    if not isinstance(value, bool):
        raise ValueError(f"field {name!r} is missing or not true/false")
    return value


def _number(data: Mapping[str, Any], name: str, nullable: bool) -> float | None:
    if name not in data:
        raise ValueError(f"field {name!r} is missing")
    value = data[name]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"field {name!r} is not a number{' or null' if nullable else ''}")
    return float(value)


def _serial(data: Mapping[str, Any], expected: str | None) -> str:
    serial = _string(data, "serial")
    validate_serial(serial)
    if expected is not None and serial != expected:
        raise ValueError(f"it is about serial {serial}, not {expected}")
    return serial


def parse_token(data: Any) -> Token:
    """Check a token answer. Raises ValueError naming the bad field."""
    body = _object(data)
    expires_at = _number(body, "expires_at", nullable=False)
    assert expires_at is not None
    return Token(_string(body, "token"), expires_at, _string(body, "username"))


def parse_device(data: Any, expected_serial: str | None = None) -> Device:
    """Check a Device object. Raises ValueError naming the bad field."""
    body = _object(data)
    address = body.get("reflexive_address")
    if address is not None and (not isinstance(address, str) or ":" not in address):
        raise ValueError("field 'reflexive_address' is not 'ip:port' or null")
    paired_at = _number(body, "paired_at", nullable=False)
    assert paired_at is not None
    fp = _string(body, "fingerprint")
    return Device(
        serial=_serial(body, expected_serial),
        online=_bool(body, "online"),
        last_seen=_number(body, "last_seen", nullable=True),
        reflexive_address=address,
        registered_at=_number(body, "registered_at", nullable=True),
        keepalive_interval=_number(body, "keepalive_interval", nullable=True),
        fingerprint=fp,
        paired_at=paired_at,
    )


def parse_devices(data: Any) -> list[Device]:
    """Check a ``{"devices": [...]}`` answer. Raises ValueError naming the bad entry."""
    body = _object(data)
    items = body.get("devices")
    if not isinstance(items, list):
        raise ValueError("field 'devices' is missing or not a list")
    devices = []
    for index, item in enumerate(items):
        try:
            devices.append(parse_device(item))
        except ValueError as exc:
            raise ValueError(f"device #{index + 1}: {exc}") from exc
    return devices


def parse_identity(data: Any, expected_serial: str) -> DeviceIdentity:
    """Check an identity answer; the fingerprint must be that of the key.

    Raises:
        ValueError: a field is missing or wrong, or the fingerprint does not match the key.
    """
    body = _object(data)
    key = b64decode_key(_string(body, "public_key"), "field 'public_key'")
    fp = _string(body, "fingerprint")
    if fp != fingerprint(key):
        raise ValueError("field 'fingerprint' is not the fingerprint of 'public_key'")
    return DeviceIdentity(_serial(body, expected_serial), key, fp, _bool(body, "online"))


def parse_pair_answer(data: Any, paired: bool) -> PairAnswer:
    """Check a pairing answer (200 ``paired`` or 403 ``wrong_code``) and decode its ``result``.

    Raises:
        ValueError: ``result`` is missing or not base64.
    """
    body = _object(data)
    text = _string(body, "result")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"field 'result' is not base64: {exc}") from exc
    return PairAnswer(paired, raw)
