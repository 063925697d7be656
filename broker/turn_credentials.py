"""Time-limited TURN credentials in the REST form coturn calls ``use-auth-secret``.

The broker hands a viewer or a device a pair ::

    username = "<expiry, unix seconds>:<name>"
    password = base64(HMAC-SHA1(secret, username))

and any TURN server that knows ``secret`` (ours, or a coturn fleet with ``static-auth-secret``)
can check it without a database. ``name`` is whatever the broker wants to count quotas by (an
account or a serial); it may itself contain colons, the expiry is the part before the first one.

The TURN long-term credential key (RFC 8489 section 9.2.2) is ``MD5(username ":" realm ":"
password)``; :func:`long_term_key` computes it.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from dataclasses import dataclass

MAX_USERNAME_BYTES = 509  # RFC 8489 section 14.3: USERNAME is shorter than 513 bytes


class CredentialStatus(enum.Enum):
    """The verdict on a REST username."""

    VALID = "valid"
    EXPIRED = "expired"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class CredentialCheck:
    """What :func:`check_username` found: the status, and for a valid or expired username the
    expiry (unix seconds) and the name after the colon."""

    status: CredentialStatus
    name: str = ""
    expires_at: int = 0


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def rest_password(secret: str | bytes, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``, the password that goes with ``username``."""
    digest = hmac.new(_secret_bytes(secret), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def make_credentials(secret: str | bytes, name: str, now: float, ttl: float) -> tuple[str, str]:
    """A (username, password) pair for ``name`` valid until ``now + ttl`` (unix seconds).

    Raises:
        ValueError: ``ttl`` is not positive, ``name`` is empty, or the username would be too long
            for a STUN USERNAME attribute.
    """
    if ttl <= 0:
        raise ValueError(f"TURN credential ttl must be positive, got {ttl}")
    if not name:
        raise ValueError("TURN credential name is empty; pass an account name or a serial")
    username = f"{int(now + ttl)}:{name}"
    if len(username.encode("utf-8")) > MAX_USERNAME_BYTES:
        raise ValueError(
            f"TURN username for {name[:32]!r}... is {len(username.encode('utf-8'))} bytes, "
            f"more than {MAX_USERNAME_BYTES}; use a shorter name"
        )
    return username, rest_password(secret, username)


def check_username(username: str, now: float) -> CredentialCheck:
    """Parse a REST username and check its expiry against ``now`` (unix seconds).

    Never raises: a username without ``<digits>:<name>`` is MALFORMED, one whose expiry is not
    after ``now`` is EXPIRED.
    """
    expiry_text, colon, name = username.partition(":")
    if not colon or not name or not expiry_text.isascii() or not expiry_text.isdigit():
        return CredentialCheck(CredentialStatus.MALFORMED)
    if len(expiry_text) > 12:  # beyond year 33658: not a timestamp
        return CredentialCheck(CredentialStatus.MALFORMED)
    expires_at = int(expiry_text)
    if expires_at <= now:
        return CredentialCheck(CredentialStatus.EXPIRED, name, expires_at)
    return CredentialCheck(CredentialStatus.VALID, name, expires_at)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """The RFC 8489 long-term credential key, ``MD5(username ":" realm ":" password)``.

    MD5 is what the protocol prescribes for MESSAGE-INTEGRITY keys, not a security choice here.
    """
    text = f"{username}:{realm}:{password}".encode()
    return hashlib.md5(text, usedforsecurity=False).digest()
