"""Wake SMS: an authenticated command (wake, status by SMS, reboot) that fits one short message.

Sans-I/O: bytes or text in, typed results out; no clock, no files, no modem. The format, the key
derivation and the replay rules are in docs/sms-wake.md; in short:

- **Binary form** (8-bit data, one SMS of at most 140 octets)::

      0  2  magic  "DW"
      2  1  version (1)
      3  1  command (1 wake, 2 status by SMS, 3 reboot)
      4  8  counter, big-endian, > 0, strictly increasing per device
     12  1  length of args (0-64)
     13  n  args
   13+n 16  MAC: HMAC-SHA256(wake key, every byte before it), first 16 bytes

- **Text form** (GSM 7-bit, for gateways and modems that only send text): ``DW1:`` followed by the
  binary form in base32 (RFC 4648 alphabet, no padding, either case), at most 153 characters. Base32
  was chosen over base64 because gateways fold case and turn ``+`` into a space.
- **Key**: HKDF-SHA256 over X25519 between the broker's static (fleet) key and the device key
  taken as an X25519 key (the Ed25519 to Curve25519 map), bound to the serial and both public keys
  (:func:`device_wake_key`, :func:`broker_wake_key`). Both ends have what they need without any new
  message: the device holds its Ed25519 key and pins the fleet's static key; every broker node
  holds the fleet key and the device key the serial is bound to.
- **Counter window**: a counter above the highest seen is accepted; one up to ``window - 1`` below
  it is accepted once (SMS may arrive out of order); older ones are stale. The window is the state
  the caller persists (:class:`CounterState`), before acting on the command.

:class:`WakeVerifier` never raises on a message: every drop is a :class:`SmsDropped` with its
:class:`DropReason`, counted in ``stats``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

MAGIC = b"DW"
VERSION = 1
TEXT_PREFIX = "DW1:"
MAC_SIZE = 16
MAX_ARGS = 64
COUNTER_MAX = (1 << 64) - 1
_HEADER = struct.Struct(">2sBBQB")
HEADER_SIZE = _HEADER.size
MAX_BINARY = HEADER_SIZE + MAX_ARGS + MAC_SIZE
"""93 octets: one SMS holds 140 in 8-bit data."""
MAX_TEXT = len(TEXT_PREFIX) + (MAX_BINARY * 8 + 4) // 5
"""153 characters: one SMS holds 160 in the GSM 7-bit alphabet."""
KEY_SIZE = 32
WAKE_KEY_LABEL = b"dvrlink sms wake v1\x00"
DEFAULT_WINDOW = 64
MAX_WINDOW = 1024

# Curve25519 field prime, for the Ed25519 public key -> X25519 public key map (RFC 7748 section 4.1)
_P = (1 << 255) - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P


class WakeCommand(enum.IntEnum):
    """What a wake SMS asks the device to do."""

    WAKE = 1
    """Bring the data session up and register with the broker."""
    STATUS = 2
    """Answer the sender with a status SMS."""
    REBOOT = 3
    """Reboot the recorder."""


@dataclass(frozen=True, slots=True)
class WakeMessage:
    """One wake SMS before it is sealed with a MAC.

    Raises ValueError (from the constructor) for a counter outside 1..2**64-1 or args over 64 bytes.
    """

    command: WakeCommand
    counter: int
    args: bytes = b""

    def __post_init__(self) -> None:
        if not 0 < self.counter <= COUNTER_MAX:
            raise ValueError(f"wake counter {self.counter} is out of range: use 1 to 2**64-1")
        if len(self.args) > MAX_ARGS:
            raise ValueError(f"wake args are {len(self.args)} bytes; at most {MAX_ARGS} fit one SMS")


# -- keys ---------------------------------------------------------------------------------------


def ed25519_public_to_x25519(public_key: bytes) -> bytes:
    """The X25519 public key (Montgomery u) of an Ed25519 public key: u = (1 + y) / (1 - y) mod p.

    Raises:
        ValueError: not 32 bytes, or not a point on the curve (y = 1 or no x for y).
    """
    if len(public_key) != KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {KEY_SIZE} bytes, got {len(public_key)}")
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise ValueError("the Ed25519 public key is not a valid curve point")
    # x^2 = (y^2 - 1) / (d y^2 + 1) must have a square root for the point to be on the curve
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 and pow(x2, (_P - 1) // 2, _P) != 1:
        raise ValueError("the Ed25519 public key is not a valid curve point")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def ed25519_private_to_x25519(key: Ed25519PrivateKey) -> X25519PrivateKey:
    """The X25519 private key of an Ed25519 key: the first half of SHA-512 of its seed (RFC 8032
    section 5.1.5), which X25519 clamps as Ed25519 does. Its public key is
    ``ed25519_public_to_x25519`` of the Ed25519 public key."""
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def _hkdf(secret: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869), zero salt, one 32-byte output block."""
    prk = hmac.digest(bytes(32), secret, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def _wake_info(serial: str, device_public: bytes, broker_static_public: bytes) -> bytes:
    raw = serial.encode("ascii")
    return WAKE_KEY_LABEL + len(raw).to_bytes(1, "big") + raw + device_public + broker_static_public


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    if shared == bytes(32):
        raise ValueError("X25519 produced the all-zero secret (low-order point): the key is not usable")
    return shared


def device_wake_key(device_key: Ed25519PrivateKey, broker_static_public: bytes, serial: str) -> bytes:
    """The device's wake key: HKDF over X25519(device key as X25519, the fleet's static key).

    Raises:
        ValueError: ``broker_static_public`` is not a usable 32-byte X25519 key, or ``serial`` is
            not ASCII of at most 255 characters.
    """
    device_public = device_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = _exchange(ed25519_private_to_x25519(device_key), broker_static_public)
    return _hkdf(shared, _wake_info(_serial(serial), device_public, broker_static_public))


def broker_wake_key(broker_static: X25519PrivateKey, device_public: bytes, serial: str) -> bytes:
    """The same key as :func:`device_wake_key`, from the broker's side (its static key and the
    device's Ed25519 public key that the serial is bound to).

    Raises:
        ValueError: ``device_public`` is not a valid Ed25519 public key, or ``serial`` as above.
    """
    broker_public = broker_static.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = _exchange(broker_static, ed25519_public_to_x25519(device_public))
    return _hkdf(shared, _wake_info(_serial(serial), device_public, broker_public))


def _serial(serial: str) -> str:
    if not serial.isascii() or not 0 < len(serial) <= 255:
        raise ValueError(f"serial {serial!r} must be 1-255 ASCII characters")
    return serial


# -- the sender's counter ------------------------------------------------------------------------


def next_counter(last: int, now_ms: int) -> int:
    """The counter for the next wake SMS to one device: the Unix time in milliseconds, or ``last``
    + 1 when that is not above ``last`` (a clock that stepped back, or two in one millisecond).
    Broker nodes that share no counter store thus still send increasing counters.

    Raises ValueError when the counter space is used up (``last`` is 2**64 - 1).
    """
    if last >= COUNTER_MAX:
        raise ValueError("the wake counter of this device is used up: give the device a new wake key")
    return max(last + 1, min(now_ms, COUNTER_MAX))


# -- codec --------------------------------------------------------------------------------------


def _mac(key: bytes, signed: bytes) -> bytes:
    return hmac.digest(key, signed, "sha256")[:MAC_SIZE]


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"a wake key is {KEY_SIZE} bytes, got {len(key)}: derive it with device_wake_key")


def encode_binary(message: WakeMessage, key: bytes) -> bytes:
    """The 8-bit data form of ``message`` sealed with ``key`` (at most 93 octets).

    Raises ValueError if ``key`` is not 32 bytes.
    """
    _check_key(key)
    signed = _HEADER.pack(MAGIC, VERSION, int(message.command), message.counter, len(message.args))
    signed += message.args
    return signed + _mac(key, signed)


def encode_text(message: WakeMessage, key: bytes) -> str:
    """The GSM 7-bit text form: ``DW1:`` and the binary form in base32 (at most 153 characters).

    Raises ValueError if ``key`` is not 32 bytes.
    """
    return TEXT_PREFIX + base64.b32encode(encode_binary(message, key)).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class SealedWake:
    """A wake SMS as read, before its MAC is checked: ``signed`` is what the MAC covers."""

    version: int
    command: int
    counter: int
    args: bytes
    signed: bytes
    mac: bytes


class FormatProblem(enum.Enum):
    """Why a payload is not a wake SMS."""

    NOT_WAKE = "not a wake SMS (no DW magic or DW1: prefix)"
    BAD_TEXT = "the text form is not base32"
    TRUNCATED = "shorter than its fields say"
    TRAILING = "bytes after the MAC"
    VERSION = "an unknown format version"
    ARGS = "args longer than 64 bytes"


@dataclass(frozen=True, slots=True)
class FormatError:
    """A payload that could not be read as a wake SMS, and why."""

    problem: FormatProblem
    detail: str


_BASE32 = re.compile(r"[A-Za-z2-7]*")


def _from_text(text: str) -> bytes | FormatError:
    body = text.strip()
    if body[: len(TEXT_PREFIX)].upper() != TEXT_PREFIX:
        return FormatError(FormatProblem.NOT_WAKE, f"text starts {body[:8]!r}")
    digits = body[len(TEXT_PREFIX) :].strip().rstrip("=")
    if len(digits) > MAX_TEXT or _BASE32.fullmatch(digits) is None:
        return FormatError(FormatProblem.BAD_TEXT, f"{len(digits)} characters, not all of A-Z and 2-7")
    padded = digits.upper() + "=" * (-len(digits) % 8)
    try:
        return base64.b32decode(padded)
    except (binascii.Error, ValueError) as exc:
        return FormatError(FormatProblem.BAD_TEXT, str(exc))


def decode(payload: bytes | str) -> SealedWake | FormatError:
    """Read a wake SMS in either form (``str``: the text form; ``bytes``: the 8-bit form), without
    checking its MAC. Never raises on the content: a payload that is not one is a ``FormatError``.
    Raises TypeError for an argument of another type."""
    if isinstance(payload, str):
        data = _from_text(payload)
        if isinstance(data, FormatError):
            return data
    elif isinstance(payload, bytes | bytearray | memoryview):
        data = bytes(payload)
    else:
        raise TypeError(f"decode takes the text form (str) or the 8-bit form (bytes), not {type(payload)}")
    if data[:2] != MAGIC:
        return FormatError(FormatProblem.NOT_WAKE, f"starts with {data[:2].hex() or 'nothing'}")
    if len(data) < HEADER_SIZE:
        return FormatError(FormatProblem.TRUNCATED, f"{len(data)} octets, the header is {HEADER_SIZE}")
    _, version, command, counter, args_length = _HEADER.unpack_from(data)
    if version != VERSION:
        return FormatError(FormatProblem.VERSION, f"version {version}, this reader knows {VERSION}")
    if args_length > MAX_ARGS:
        return FormatError(FormatProblem.ARGS, f"{args_length} octets of args")
    end = HEADER_SIZE + args_length + MAC_SIZE
    if len(data) < end:
        return FormatError(FormatProblem.TRUNCATED, f"{len(data)} octets, the fields need {end}")
    if len(data) > end:
        return FormatError(FormatProblem.TRAILING, f"{len(data) - end} octets after the MAC")
    signed = data[: end - MAC_SIZE]
    return SealedWake(
        version, command, counter, data[HEADER_SIZE : end - MAC_SIZE], signed, data[end - MAC_SIZE :]
    )


# -- status replies -----------------------------------------------------------------------------

MAX_REPLY = 160
_PRINTABLE = re.compile(r"[^ -~]")


def status_reply(serial: str, fields: Sequence[tuple[str, str]]) -> str:
    """The text of the answer to a status request: ``dvrlink <serial> key=value ...`` in printable
    ASCII (which both GSM 7-bit and text mode carry), cut to one SMS (160 characters, the fields
    that do not fit left out whole and the cut marked with ``...``)."""
    text = _PRINTABLE.sub("?", f"dvrlink {serial}")[:MAX_REPLY]
    for key, value in fields:
        item = " " + _PRINTABLE.sub("?", f"{key}={value}")
        if len(text) + len(item) > MAX_REPLY:
            return text[: MAX_REPLY - 4] + " ..." if len(text) > MAX_REPLY - 4 else text + " ..."
        text += item
    return text


# -- sender numbers -----------------------------------------------------------------------------

_NUMBER_NOISE = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"\+[1-9][0-9]{5,14}")


def normalise_number(text: str, country_code: str | None = None) -> str | None:
    """A phone number as +E.164, or None when it is not one (an alphanumeric sender, a short code).

    ``+49 170 1234567``, ``0049-170-1234567`` give ``+491701234567``; a national number
    (``01701234567``) only with ``country_code`` (``"49"``): its leading 0 (trunk prefix) is
    replaced by it. Never raises.
    """
    number = _NUMBER_NOISE.sub("", text.strip().strip('"'))
    if number.startswith("00"):
        number = "+" + number[2:]
    elif not number.startswith("+") and country_code is not None and number.startswith("0"):
        number = f"+{country_code}{number[1:]}"
    elif not number.startswith("+") and country_code is not None and number.startswith(country_code):
        number = "+" + number  # an international number the modem printed without its "+" (type 145)
    return number if _E164.fullmatch(number) else None


# -- verifier -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CounterState:
    """The replay window the caller persists: the highest counter accepted, and which of the
    ``window - 1`` counters below it were accepted too (bit i set: ``highest - 1 - i``)."""

    highest: int = 0
    below: int = 0

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready form (``from_dict`` reads it back)."""
        return {"highest": self.highest, "below": self.below}

    @classmethod
    def from_dict(cls, data: Mapping[str, object], source: str) -> CounterState:
        """Read what ``to_dict`` wrote.

        Raises:
            ValueError: a field is missing or out of range; the message names ``source`` and says
                what to do.
        """
        highest, below = data.get("highest"), data.get("below")
        if (
            not isinstance(highest, int)
            or not isinstance(below, int)
            or isinstance(highest, bool)
            or isinstance(below, bool)
            or not 0 <= highest <= COUNTER_MAX
            or not 0 <= below < 1 << MAX_WINDOW
        ):
            raise ValueError(
                f"{source} does not hold a wake counter window (highest, below as numbers): restore it "
                "from a backup, or remove it; then raise the broker's counter above any it sent before "
                "(an old wake SMS could otherwise be replayed once)"
            )
        return cls(highest, below)


@dataclass(frozen=True, slots=True)
class WakeConfig:
    """How the device checks wake SMS.

    ``allowed_senders``: the numbers that may send them, as +E.164 (checked here; an empty set
    with ``any_sender`` False lets nobody in, which ``__post_init__`` refuses). ``any_sender``: skip
    the sender check (the MAC still holds), for gateways whose sender number changes.
    ``country_code``: the country calling code used to read national sender numbers (``"49"``).
    ``window``: how many counters below the highest are still accepted once (1: none; at most 1024).

    Raises ValueError (from the constructor) for a setting out of range; the message says which.
    """

    allowed_senders: frozenset[str] = frozenset()
    any_sender: bool = False
    country_code: str | None = None
    window: int = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if not 1 <= self.window <= MAX_WINDOW:
            raise ValueError(f"wake window {self.window} is out of range: use 1-{MAX_WINDOW} counters")
        if self.country_code is not None and not re.fullmatch(r"[1-9][0-9]{0,2}", self.country_code):
            raise ValueError(f"country code {self.country_code!r} must be 1-3 digits without + (e.g. 49)")
        for number in self.allowed_senders:
            if _E164.fullmatch(number) is None:
                raise ValueError(f"allowed sender {number!r} is not +E.164: write it as +491701234567")
        if not self.allowed_senders and not self.any_sender:
            raise ValueError(
                "no allowed sender numbers: list the broker's SMS numbers (+E.164), or set any_sender"
            )


class WakeEvent:
    """Base of what the verifier (and the device's SMS reader) report."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class WakeRequested(WakeEvent):
    """An authenticated wake: bring the data session up and register."""

    sender: str
    counter: int
    args: bytes


@dataclass(frozen=True, slots=True)
class StatusRequested(WakeEvent):
    """An authenticated status request: answer ``sender`` with a status SMS."""

    sender: str
    counter: int
    args: bytes


@dataclass(frozen=True, slots=True)
class RebootRequested(WakeEvent):
    """An authenticated reboot request."""

    sender: str
    counter: int
    args: bytes


CommandEvent = WakeRequested | StatusRequested | RebootRequested


class DropReason(enum.Enum):
    """Why a received SMS was not acted on."""

    NOT_WAKE = "not a wake SMS"
    MALFORMED = "a wake SMS that cannot be read"
    UNKNOWN_SENDER = "from a number not allowed"
    BAD_MAC = "the MAC does not match (forged, or another device's key)"
    REPLAYED = "its counter was accepted before"
    STALE = "its counter is older than the window"
    UNKNOWN_COMMAND = "an authenticated command this device does not know"


@dataclass(frozen=True, slots=True)
class SmsDropped(WakeEvent):
    """A message that was dropped and counted; ``detail`` says what was seen."""

    sender: str
    reason: DropReason
    detail: str


_COMMAND_EVENTS: dict[WakeCommand, type[WakeRequested | StatusRequested | RebootRequested]] = {
    WakeCommand.WAKE: WakeRequested,
    WakeCommand.STATUS: StatusRequested,
    WakeCommand.REBOOT: RebootRequested,
}


class WakeVerifier:
    """Checks wake SMS for one device: sender, format, MAC, then the counter window, in that order.

    ``key`` is the device's wake key (:func:`device_wake_key`); ``state`` the window last persisted.
    After each accepted command :attr:`state` has moved: store it (atomically) before acting.

    Raises ValueError (from the constructor) if ``key`` is not 32 bytes or ``state`` does not fit
    ``config.window``.
    """

    def __init__(self, key: bytes, config: WakeConfig, state: CounterState | None = None) -> None:
        _check_key(key)
        self._key = key
        self._config = config
        self._state = state or CounterState()
        if self._state.below >> (config.window - 1):
            raise ValueError(
                f"the stored wake window has bits beyond {config.window - 1}: it was written with a larger "
                "window; keep the old window setting, or reset the state file"
            )
        self.stats: dict[str, int] = {"accepted": 0} | {reason.name.lower(): 0 for reason in DropReason}

    @property
    def state(self) -> CounterState:
        """The window to persist."""
        return self._state

    @property
    def config(self) -> WakeConfig:
        return self._config

    def receive(self, sender: str, payload: bytes | str) -> CommandEvent | SmsDropped:
        """Check one received SMS: ``sender`` as the modem gave it, ``payload`` its text (``str``)
        or its 8-bit data (``bytes``). Never raises on either; a drop is counted in ``stats``."""
        try:
            return self._receive(sender, payload)
        except Exception as exc:  # a backstop: bad input must never stop the reader
            return self._drop(sender, DropReason.MALFORMED, f"unexpected {type(exc).__name__}: {exc}")

    def _receive(self, sender: str, payload: bytes | str) -> CommandEvent | SmsDropped:
        number = normalise_number(sender, self._config.country_code)
        if not self._config.any_sender and (number is None or number not in self._config.allowed_senders):
            return self._drop(
                sender, DropReason.UNKNOWN_SENDER, f"sender {sender!r} is not in the allow-list"
            )
        sealed = decode(payload)
        if isinstance(sealed, FormatError):
            reason = DropReason.NOT_WAKE if sealed.problem is FormatProblem.NOT_WAKE else DropReason.MALFORMED
            return self._drop(sender, reason, f"{sealed.problem.value}: {sealed.detail}")
        if not hmac.compare_digest(_mac(self._key, sealed.signed), sealed.mac):
            return self._drop(sender, DropReason.BAD_MAC, f"counter {sealed.counter}")
        verdict = self._window(sealed.counter)
        if verdict is not None:
            return self._drop(sender, verdict, f"counter {sealed.counter}, highest {self._state.highest}")
        try:
            command = WakeCommand(sealed.command)
        except ValueError:
            self._commit(sealed.counter)  # authenticated: its counter is spent all the same
            return self._drop(sender, DropReason.UNKNOWN_COMMAND, f"command {sealed.command}")
        self._commit(sealed.counter)
        self.stats["accepted"] += 1
        return _COMMAND_EVENTS[command](number or sender, sealed.counter, sealed.args)

    def _window(self, counter: int) -> DropReason | None:
        highest = self._state.highest
        if counter == 0:
            return DropReason.STALE  # never sent: counters start at 1
        if counter > highest:
            return None
        if counter == highest:
            return DropReason.REPLAYED
        offset = highest - 1 - counter
        if offset >= self._config.window - 1:
            return DropReason.STALE
        return DropReason.REPLAYED if self._state.below >> offset & 1 else None

    def _commit(self, counter: int) -> None:
        highest, below = self._state.highest, self._state.below
        mask = (1 << (self._config.window - 1)) - 1
        if counter > highest:
            shift = counter - highest
            below = ((below << shift) | (1 << (shift - 1))) & mask if shift < self._config.window else 0
            highest = counter
        else:
            below |= 1 << (highest - 1 - counter)
        self._state = CounterState(highest, below & mask)

    def _drop(self, sender: str, reason: DropReason, detail: str) -> SmsDropped:
        self.stats[reason.name.lower()] += 1
        return SmsDropped(sender, reason, detail)
