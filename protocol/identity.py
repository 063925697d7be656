"""Device and viewer identities: Ed25519 keys, fingerprints and serial numbers.

Pure functions and small value types; nothing here touches files or sockets.
"""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SERIAL_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9-]{2,31}$")


def validate_serial(serial: str) -> str:
    """Return ``serial`` if it is a valid device serial.

    Raises:
        ValueError: the serial is not 3-32 characters of A-Z, 0-9 and '-' starting with a
            letter or digit; the message says what was seen.
    """
    if not SERIAL_PATTERN.match(serial):
        raise ValueError(
            f"serial {serial!r} is not valid: use 3-32 characters of A-Z, 0-9 and '-', "
            "starting with a letter or digit (for example DL-0001-0002)"
        )
    return serial


def fingerprint(public_key: bytes) -> str:
    """Return the human-comparable fingerprint of a raw 32-byte public key.

    It is the first 20 bytes of SHA-256 in lowercase base32 (32 characters, 160 bits).

    Raises:
        ValueError: ``public_key`` is not 32 bytes.
    """
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"a public key is {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    digest = hashlib.sha256(public_key).digest()[:20]
    return base64.b32encode(digest).decode("ascii").lower()


def format_fingerprint(fp: str) -> str:
    """Group a fingerprint in fours for reading aloud: ``abcd efgh ...``."""
    return " ".join(fp[i : i + 4] for i in range(0, len(fp), 4))


def normalize_fingerprint(text: str) -> str:
    """Return a fingerprint typed by a person with spaces, dashes and case removed.

    Raises:
        ValueError: the result is not 32 base32 characters.
    """
    fp = re.sub(r"[\s-]", "", text).lower()
    if len(fp) != 32 or not re.fullmatch(r"[a-z2-7]{32}", fp):
        raise ValueError(
            f"fingerprint {text!r} is not valid: expected 32 characters of a-z and 2-7, "
            "as printed by `dvrlinkd pairing-code`"
        )
    return fp


def ed25519_public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """Raw 32-byte public key of an Ed25519 key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def x25519_public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """Raw 32-byte public key of an X25519 key."""
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Return True if ``signature`` is a valid Ed25519 signature of ``message``; never raises."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def private_key_to_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    """Serialize a private key as unencrypted PKCS#8 PEM (the state file is mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ed25519_private_from_pem(data: bytes, source: str) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from PKCS#8 PEM.

    Raises:
        ValueError: the data is not an Ed25519 PEM key; the message names ``source`` and what to do.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{source} is not a readable PEM private key ({exc}); restore it from a backup, "
            "or remove it to create a new identity (the device must then be re-bound by an operator)"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{source} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def x25519_private_from_pem(data: bytes, source: str) -> X25519PrivateKey:
    """Load an X25519 private key from PKCS#8 PEM.

    Raises:
        ValueError: the data is not an X25519 PEM key; the message names ``source``.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source} is not a readable PEM private key ({exc})") from exc
    if not isinstance(key, X25519PrivateKey):
        raise ValueError(f"{source} holds a {type(key).__name__}, not an X25519 key")
    return key


def b64encode_key(raw: bytes) -> str:
    """Standard base64 of a raw key, as written in config files."""
    return base64.b64encode(raw).decode("ascii")


def b64decode_key(text: str, what: str) -> bytes:
    """Decode a base64 32-byte key from a config file or API body.

    Raises:
        ValueError: not base64 or not 32 bytes; the message names ``what``.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what} is not valid base64: {exc}") from exc
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"{what} must decode to {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    return raw
