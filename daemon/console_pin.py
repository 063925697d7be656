"""The installer PIN's hash: what ``[console] pin_hash`` holds (the PIN itself never is stored).

Kept apart from the console so that reading the config, or ``dvrlinkd hash-pin``, does not load
the console's command machinery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

PIN_HASH_PREFIX = "scrypt"
PIN_SCRYPT_LOG2_N = 13
"""scrypt cost for new hashes: N = 2**13 with r = 8 takes 8 MB for a moment, fine on a 128 MB board."""


def hash_pin(pin: str, salt: bytes, log2_n: int = PIN_SCRYPT_LOG2_N) -> str:
    """The text ``[console] pin_hash`` holds for ``pin``: ``scrypt$ln=13,r=8,p=1$SALT$HASH``
    (base64, unpadded). ``salt`` comes from the caller's randomness (16 bytes).

    Raises:
        ValueError: the PIN is not 4 to 12 digits.
    """
    check_pin_text(pin)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=2**log2_n, r=8, p=1, maxmem=64 * 2**20, dklen=32)
    return f"{PIN_HASH_PREFIX}$ln={log2_n},r=8,p=1${_b64(salt)}${_b64(digest)}"


def check_pin_text(pin: str) -> str:
    """``pin`` if it is 4 to 12 digits.

    Raises:
        ValueError: it is not; the message says what a PIN is.
    """
    if not (pin.isascii() and pin.isdigit() and 4 <= len(pin) <= 12):
        raise ValueError("an installer PIN is 4 to 12 digits")
    return pin


@dataclass(frozen=True, slots=True)
class PinHash:
    """A parsed ``pin_hash``."""

    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def parse_pin_hash(text: str) -> PinHash:
    """Read a ``pin_hash`` value.

    Raises:
        ValueError: not the format ``dvrlinkd hash-pin`` prints.
    """
    match = re.fullmatch(
        r"scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)", text
    )
    if match is None:
        raise ValueError("not a PIN hash (scrypt$ln=..,r=..,p=..$SALT$HASH)")
    log2_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if not (10 <= log2_n <= 20 and 1 <= r <= 16 and 1 <= p <= 4):
        raise ValueError(f"scrypt parameters ln={log2_n}, r={r}, p={p} are out of range")
    try:
        salt, digest = _unb64(match.group(4)), _unb64(match.group(5))
    except (binascii.Error, ValueError):
        raise ValueError("the salt or hash is not base64") from None
    if len(salt) < 8 or len(digest) != 32:
        raise ValueError("the salt is shorter than 8 bytes or the hash is not 32 bytes")
    return PinHash(log2_n, r, p, salt, digest)


def verify_pin(pin: str, stored: PinHash) -> bool:
    """True if ``pin`` matches ``stored`` (compared in constant time)."""
    if not (pin.isascii() and pin.isdigit() and 1 <= len(pin) <= 32):
        return False
    digest = hashlib.scrypt(
        pin.encode(),
        salt=stored.salt,
        n=2**stored.log2_n,
        r=stored.r,
        p=stored.p,
        maxmem=256 * 2**20,
        dklen=32,
    )
    return hmac.compare_digest(digest, stored.digest)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
