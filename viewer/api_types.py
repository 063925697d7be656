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
from dvrlink.protocol.presence_report import DeviceReport
from dvrlink.protocol.signalling import TurnServer
from dvrlink.viewer.errors import toml_value


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
    report: DeviceReport | None = None
    """What the device last reported (signal, network, data used, keepalive), or None."""
    reported_at: float | None = None  # unix s


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
        raise ValueError(f"field {toml_value(name)} is missing or not a string")
    return value


def _bool(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name)
    if not isinstance(value, bool):
        raise ValueError(f"field {toml_value(name)} is missing or not true/false")
    return value


def _number(data: Mapping[str, Any], name: str, nullable: bool) -> float | None:
    if name not in data:
        raise ValueError(f"field {toml_value(name)} is missing")
    value = data[name]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"field {toml_value(name)} is not a number{' or null' if nullable else ''}")
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
        raise ValueError('field "reflexive_address" is not "IP:PORT" or null')
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
        report=_report(body),
        reported_at=_number(body, "reported_at", nullable=True) if "reported_at" in body else None,
    )


def _report(body: Mapping[str, Any]) -> DeviceReport | None:
    value = body.get("report")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError('field "report" is not an object or null')
    return DeviceReport.from_dict(value)


def parse_devices(data: Any) -> list[Device]:
    """Check a ``{"devices": [...]}`` answer. Raises ValueError naming the bad entry."""
    body = _object(data)
    items = body.get("devices")
    if not isinstance(items, list):
        raise ValueError('field "devices" is missing or not a list')
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
    key = b64decode_key(_string(body, "public_key"), 'field "public_key"')
    fp = _string(body, "fingerprint")
    if fp != fingerprint(key):
        raise ValueError('field "fingerprint" is not the fingerprint of "public_key"')
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
        raise ValueError(f'field "result" is not base64: {exc}') from exc
    return PairAnswer(paired, raw)


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """``POST /v1/sessions`` answer: the session id and the relays this viewer may use."""

    session_id: str  # 32 hex digits
    serial: str
    turn: tuple[TurnServer, ...]
    stun: tuple[str, int] | None
    expires_at: float  # unix s; the broker forgets the session then
    stun6: tuple[str, int] | None = None
    """The STUN service's IPv6 address (the broker's ``stun_host6``), for IPv6 server-reflexive
    candidates; None: none (or an older broker)."""


@dataclass(frozen=True, slots=True)
class OfferAnswer:
    """``POST /v1/sessions/{id}/offer`` answer: the device's ICE parameters and candidates."""

    session_id: str
    ice_ufrag: str
    ice_pwd: str
    candidates: tuple[str, ...]
    end_of_candidates: bool = True
    """False: the device trickles more (``BrokerClient.send_candidates`` returns them)."""


@dataclass(frozen=True, slots=True)
class CandidateBatch:
    """``POST /v1/sessions/{id}/candidates`` answer: the device's candidates found since its last."""

    candidates: tuple[str, ...]
    end_of_candidates: bool


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One entry of ``GET /v1/sessions``: how far the broker saw a session's signalling go."""

    session_id: str
    serial: str
    policy: str
    state: str  # created, offered, answered, failed
    created_at: float  # unix s
    expires_at: float  # unix s


def _session_id(body: Mapping[str, Any]) -> str:
    value = _string(body, "session_id")
    if len(value) != 32 or any(ch not in "0123456789abcdef" for ch in value):
        raise ValueError('field "session_id" is not 32 lower-case hex digits')
    return value


def _port(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"field {toml_value(name)} is not a port number")
    return value


def _candidates(body: Mapping[str, Any]) -> tuple[str, ...]:
    items = body.get("candidates")
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError('field "candidates" is missing or not a list of strings')
    return tuple(items)


@dataclass(frozen=True, slots=True)
class WakeStatus:
    """``GET /v1/devices/{serial}/wake``: how far a wake of a device by SMS got."""

    state: str
    """sending, sent, online, failed or timed_out."""
    elapsed_s: float
    hold_s: float
    via: str
    error: str

    @property
    def under_way(self) -> bool:
        return self.state in ("sending", "sent")

    def describe(self) -> str:
        """``waking the recorder by SMS… sent (modem 8-bit), 12 s of up to 90 s``."""
        how = f" ({self.via})" if self.via else ""
        return (
            f"waking the recorder by SMS… {self.state}{how}, "
            f"{self.elapsed_s:.0f} s of up to {self.hold_s:.0f} s"
        )


def parse_wake_status(data: Any) -> WakeStatus:
    """Check a ``GET /v1/devices/{serial}/wake`` answer. Raises ValueError naming the bad field."""
    body = _object(data)
    elapsed = _number(body, "elapsed_s", nullable=False)
    hold = _number(body, "hold_s", nullable=False)
    assert elapsed is not None and hold is not None
    via, error = body.get("via", ""), body.get("error", "")
    return WakeStatus(
        _string(body, "state"),
        elapsed,
        hold,
        via if isinstance(via, str) else "",
        error if isinstance(error, str) else "",
    )


def parse_session_grant(data: Any) -> SessionGrant:
    """Check a ``POST /v1/sessions`` answer. Raises ValueError naming the bad field."""
    body = _object(data)
    turn_items = body.get("turn")
    if not isinstance(turn_items, list):
        raise ValueError('field "turn" is missing or not a list')
    turn = []
    for index, item in enumerate(turn_items):
        try:
            entry = _object(item)
            transport = _string(entry, "transport")
            if transport not in ("udp", "tcp"):
                raise ValueError(f'field "transport" is {toml_value(transport)}, not "udp" or "tcp"')
            turn.append(
                TurnServer(
                    _string(entry, "host"),
                    _port(entry.get("port"), "port"),
                    transport,
                    _string(entry, "username"),
                    _string(entry, "password"),
                )
            )
        except ValueError as exc:
            raise ValueError(f"turn[{index}]: {exc}") from exc
    stun = _stun(body, "stun")
    expires_at = _number(body, "expires_at", nullable=False)
    assert expires_at is not None
    return SessionGrant(
        _session_id(body), _serial(body, None), tuple(turn), stun, expires_at, _stun(body, "stun6")
    )


def _stun(body: Mapping[str, Any], name: str) -> tuple[str, int] | None:
    """The ``{"host", "port"}`` object ``name`` (``stun``, ``stun6``), or None when it is null or
    absent (an older broker has no ``stun6``). Raises ValueError naming the bad field."""
    item = body.get(name)
    if item is None:
        return None
    entry = _object(item)
    return (_string(entry, "host"), _port(entry.get("port"), f"{name}.port"))


def parse_offer_answer(data: Any) -> OfferAnswer:
    """Check an accepted offer answer. Raises ValueError naming the bad field."""
    body = _object(data)
    if body.get("status") != "accepted":
        raise ValueError(f'field "status" is {toml_value(body.get("status"))}, not "accepted"')
    return OfferAnswer(
        _session_id(body),
        _string(body, "ice_ufrag"),
        _string(body, "ice_pwd"),
        _candidates(body),
        _flag(body, "end_of_candidates", default=True),
    )


def parse_candidate_batch(data: Any) -> CandidateBatch:
    """Check a candidate update answer. Raises ValueError naming the bad field."""
    body = _object(data)
    return CandidateBatch(_candidates(body), _flag(body, "end_of_candidates", default=False))


def _flag(body: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"field {toml_value(name)} is {toml_value(value)}, not true or false")
    return value


def parse_sessions(data: Any) -> list[SessionInfo]:
    """Check a ``{"sessions": [...]}`` answer. Raises ValueError naming the bad entry."""
    body = _object(data)
    items = body.get("sessions")
    if not isinstance(items, list):
        raise ValueError('field "sessions" is missing or not a list')
    out = []
    for index, item in enumerate(items):
        try:
            entry = _object(item)
            created = _number(entry, "created_at", nullable=False)
            expires = _number(entry, "expires_at", nullable=False)
            assert created is not None and expires is not None
            out.append(
                SessionInfo(
                    _session_id(entry),
                    _serial(entry, None),
                    _string(entry, "policy"),
                    _string(entry, "state"),
                    created,
                    expires,
                )
            )
        except ValueError as exc:
            raise ValueError(f"session #{index + 1}: {exc}") from exc
    return out


@dataclass(frozen=True, slots=True)
class RelayList:
    """``GET /v1/relays`` answer: the relays (host, port, transport), UDP first, and the STUN
    service (host, port) or None."""

    turn: tuple[tuple[str, int, str], ...]
    stun: tuple[str, int] | None
    stun6: tuple[str, int] | None = None
    """The STUN service's IPv6 address (``stun_host6``); None: none, or an older broker."""


def parse_relay_list(data: Any) -> RelayList:
    """Check a ``GET /v1/relays`` answer. Raises ValueError naming the bad field."""
    body = _object(data)
    items = body.get("turn")
    if not isinstance(items, list):
        raise ValueError('field "turn" is missing or not a list')
    turn = []
    for index, item in enumerate(items):
        entry = _object(item)
        transport = _string(entry, "transport")
        if transport not in ("udp", "tcp"):
            raise ValueError(f"turn[{index}].transport is {transport!r}, not udp or tcp")
        turn.append((_string(entry, "host"), _port(entry.get("port"), f"turn[{index}].port"), transport))
    return RelayList(tuple(turn), _stun(body, "stun"), _stun(body, "stun6"))
