"""Pairing: the code on the recorder's label, the proof a viewer sends, and the device's verdict.

The owner reads a pairing code (80 random bits) from the device. The viewer proves knowledge of
it with an HMAC bound to the serial, both public keys and a nonce; the broker relays that proof
in an invite and never sees the code. The device answers with a confirmation HMAC (so a broker
cannot fake a "paired" answer) and an Ed25519 signature (so the viewer can pin the key).

Sans-I/O: ``PairingGuard`` takes ``now`` and keeps the failure history in memory; the daemon
persists ``PairingGuard.failures`` itself.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import construct as c

from dvrlink.protocol.identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    ed25519_verify,
    normalize_fingerprint,
    validate_serial,
)

SECRET_CHARS = 16  # base32 characters: 80 bits
NONCE_SIZE = 16
MAC_SIZE = 32
URI_PREFIX = "dvrlink://pair?"
MAX_FAILURES_PER_WINDOW = 5
FAILURE_WINDOW_S = 3600.0


class PairStatus(enum.IntEnum):
    """The device's verdict on a pairing request."""

    PAIRED = 0
    WRONG_CODE = 1
    RATE_LIMITED = 2
    BAD_REQUEST = 3


def generate_pairing_secret(rng: Callable[[int], bytes]) -> str:
    """Return a new pairing secret: 16 base32 characters (80 bits) from ``rng``."""
    return base64.b32encode(rng(10)).decode("ascii")


def normalize_code(code: str) -> str:
    """Return a pairing code typed by a person as its 16 canonical characters.

    Raises:
        ValueError: the code is not 16 characters of A-Z and 2-7 once dashes and spaces are removed.
    """
    text = re.sub(r"[\s-]", "", code).upper()
    if not re.fullmatch(r"[A-Z2-7]{16}", text):
        raise ValueError(
            f"pairing code {code!r} is not valid: expected 16 characters of A-Z and 2-7 "
            "(dashes optional), as printed by `dvrlinkd pairing-code` or on the device label"
        )
    return text


def format_code(secret: str) -> str:
    """Group a pairing secret as ``ABCD-EFGH-IJKL-MNOP`` for labels."""
    s = normalize_code(secret)
    return "-".join(s[i : i + 4] for i in range(0, SECRET_CHARS, 4))


@dataclass(frozen=True, slots=True)
class PairingUri:
    """What a QR code on the device carries."""

    serial: str
    code: str
    fingerprint: str | None

    def format(self) -> str:
        """Return ``dvrlink://pair?serial=..&code=..&fp=..``."""
        query = {"serial": self.serial, "code": normalize_code(self.code)}
        if self.fingerprint:
            query["fp"] = self.fingerprint
        return URI_PREFIX + urllib.parse.urlencode(query)

    @classmethod
    def parse(cls, text: str) -> PairingUri:
        """Parse a pairing URI.

        Raises:
            ValueError: not a dvrlink pairing URI, or a field is invalid; the message says which.
        """
        if not text.startswith(URI_PREFIX):
            raise ValueError(f"{text!r} is not a pairing URI: it should start with {URI_PREFIX}")
        query = urllib.parse.parse_qs(text[len(URI_PREFIX) :], strict_parsing=False)
        try:
            serial = query["serial"][0]
            code = query["code"][0]
        except KeyError as exc:
            raise ValueError(f"pairing URI {text!r} lacks the {exc.args[0]} field") from exc
        fp = query.get("fp", [None])[0]
        return cls(
            serial=validate_serial(serial),
            code=normalize_code(code),
            fingerprint=normalize_fingerprint(fp) if fp else None,
        )


def _mac(secret: str, label: bytes, parts: Sequence[bytes]) -> bytes:
    mac = hmac.new(normalize_code(secret).encode("ascii"), digestmod=hashlib.sha256)
    mac.update(label)
    for part in parts:
        mac.update(len(part).to_bytes(2, "big"))
        mac.update(part)
    return mac.digest()


def pair_proof(secret: str, serial: str, device_key: bytes, viewer_key: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256 the viewer sends to prove it holds the pairing code."""
    return _mac(secret, b"dvrlink pair request v1", [serial.encode(), device_key, viewer_key, nonce])


def pair_confirmation(secret: str, serial: str, device_key: bytes, viewer_key: bytes, nonce: bytes) -> bytes:
    """HMAC-SHA256 the device returns to prove it, too, holds the code."""
    return _mac(secret, b"dvrlink pair confirm v1", [serial.encode(), device_key, viewer_key, nonce])


def result_message(serial: str, viewer_key: bytes, nonce: bytes, status: PairStatus) -> bytes:
    """The bytes the device signs with its Ed25519 key in a ``PairResult``."""
    return b"dvrlink pair result v1|" + serial.encode() + b"|" + viewer_key + nonce + bytes([status])


_PAIR_REQUEST = c.Struct(
    "viewer_key" / c.Bytes(PUBLIC_KEY_SIZE),
    "nonce" / c.Bytes(NONCE_SIZE),
    "proof" / c.Bytes(MAC_SIZE),
    "account" / c.PascalString(c.Int8ub, "utf8"),
    c.Terminated,
)
_PAIR_RESULT = c.Struct(
    "status" / c.Int8ub,
    "device_key" / c.Bytes(PUBLIC_KEY_SIZE),
    "confirmation" / c.Bytes(MAC_SIZE),
    "signature" / c.Bytes(SIGNATURE_SIZE),
    c.Terminated,
)


@dataclass(frozen=True, slots=True)
class PairRequest:
    """Invite body of kind ``INVITE_KIND_PAIR``: broker → device."""

    viewer_key: bytes
    nonce: bytes
    proof: bytes
    account: str

    def encode(self) -> bytes:
        """Serialize. Raises ValueError if a field has the wrong size."""
        try:
            return bytes(_PAIR_REQUEST.build(self._asdict()))
        except c.ConstructError as exc:
            raise ValueError(f"cannot encode pair request: {exc}") from exc

    def _asdict(self) -> dict[str, object]:
        return {
            "viewer_key": self.viewer_key,
            "nonce": self.nonce,
            "proof": self.proof,
            "account": self.account,
        }

    @classmethod
    def decode(cls, data: bytes) -> PairRequest:
        """Parse. Raises ValueError on malformed bytes."""
        try:
            v = _PAIR_REQUEST.parse(data)
        except (c.ConstructError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed pair request: {exc}") from exc
        return cls(bytes(v.viewer_key), bytes(v.nonce), bytes(v.proof), str(v.account))


@dataclass(frozen=True, slots=True)
class PairResult:
    """Invite reply body of kind ``INVITE_KIND_PAIR``: device → broker → viewer."""

    status: PairStatus
    device_key: bytes
    confirmation: bytes
    signature: bytes

    def encode(self) -> bytes:
        """Serialize. Raises ValueError if a field has the wrong size."""
        try:
            return bytes(
                _PAIR_RESULT.build(
                    {
                        "status": int(self.status),
                        "device_key": self.device_key,
                        "confirmation": self.confirmation,
                        "signature": self.signature,
                    }
                )
            )
        except c.ConstructError as exc:
            raise ValueError(f"cannot encode pair result: {exc}") from exc

    @classmethod
    def decode(cls, data: bytes) -> PairResult:
        """Parse. Raises ValueError on malformed bytes or an unknown status."""
        try:
            v = _PAIR_RESULT.parse(data)
            status = PairStatus(v.status)
        except (c.ConstructError, ValueError) as exc:
            raise ValueError(f"malformed pair result: {exc}") from exc
        return cls(status, bytes(v.device_key), bytes(v.confirmation), bytes(v.signature))

    def verify(self, secret: str, serial: str, viewer_key: bytes, nonce: bytes) -> bool:
        """Viewer side: True if the device signed this result and (when paired) knows the code."""
        if not ed25519_verify(
            self.device_key, self.signature, result_message(serial, viewer_key, nonce, self.status)
        ):
            return False
        if self.status is not PairStatus.PAIRED:
            return True
        expected = pair_confirmation(secret, serial, self.device_key, viewer_key, nonce)
        return hmac.compare_digest(expected, self.confirmation)


class PairingGuard:
    """Device side: checks pairing proofs and limits wrong tries per sliding window.

    The 6th wrong try within ``window_s`` is refused, and so is any try (even with the right
    code) until the oldest failure leaves the window.
    """

    def __init__(
        self,
        serial: str,
        device_key: bytes,
        secret: str,
        failures: Sequence[float] = (),
        max_failures: int = MAX_FAILURES_PER_WINDOW,
        window_s: float = FAILURE_WINDOW_S,
    ) -> None:
        self._serial = serial
        self._device_key = device_key
        self._secret = normalize_code(secret)
        self._max = max_failures
        self._window = window_s
        self._failures: list[float] = sorted(failures)

    @property
    def failures(self) -> tuple[float, ...]:
        """Times of wrong tries still inside the window (for the daemon to persist)."""
        return tuple(self._failures)

    def check(self, request: PairRequest, now: float) -> PairStatus:
        """Judge ``request`` at time ``now``; records a failure on a wrong code."""
        self._failures = [t for t in self._failures if now - t < self._window]
        if len(self._failures) >= self._max:
            return PairStatus.RATE_LIMITED
        if len(request.viewer_key) != PUBLIC_KEY_SIZE or len(request.nonce) != NONCE_SIZE:
            return PairStatus.BAD_REQUEST
        expected = pair_proof(self._secret, self._serial, self._device_key, request.viewer_key, request.nonce)
        if hmac.compare_digest(expected, request.proof):
            return PairStatus.PAIRED
        self._failures.append(now)
        return PairStatus.WRONG_CODE

    def confirmation(self, request: PairRequest) -> bytes:
        """The confirmation HMAC for a successful ``request``."""
        return pair_confirmation(
            self._secret, self._serial, self._device_key, request.viewer_key, request.nonce
        )
