"""Server-side dashboard logins: a random session id (the cookie) mapped to the account, its
CSRF token and its expiry. No I/O; time and randomness are arguments.

The cookie carries only the id; the table keeps SHA-256 of it, so a memory dump of the table
does not hand out live cookies. Entries expire; the table is bounded, and when full the login
closest to expiry is forgotten first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

MAX_LOGINS = 10_000
ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class Login:
    """One logged-in browser."""

    username: str
    csrf_token: str
    """Sent back with every state-changing form (a hidden field) and checked server-side."""
    expires_at: float


def _token(rng: Callable[[int], bytes]) -> str:
    return base64.urlsafe_b64encode(rng(ID_BYTES)).rstrip(b"=").decode("ascii")


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8")).digest()


def csrf_matches(expected: str, given: str) -> bool:
    """Compare CSRF tokens in constant time; an empty one never matches."""
    return bool(expected) and hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


class LoginTable:
    """Live dashboard logins."""

    def __init__(
        self, ttl_s: float, max_logins: int = MAX_LOGINS, rng: Callable[[int], bytes] = os.urandom
    ) -> None:
        self._ttl = ttl_s
        self._max = max_logins
        self._rng = rng
        self._logins: dict[bytes, Login] = {}

    def __len__(self) -> int:
        return len(self._logins)

    def create(self, username: str, now: float) -> tuple[str, Login]:
        """Log ``username`` in: the new session id (for the cookie) and its login."""
        if len(self._logins) >= self._max:
            self._prune(now)
        while len(self._logins) >= self._max:
            del self._logins[min(self._logins, key=lambda k: self._logins[k].expires_at)]
        session_id = _token(self._rng)
        login = Login(username, _token(self._rng), now + self._ttl)
        self._logins[_key(session_id)] = login
        return session_id, login

    def get(self, session_id: str, now: float) -> Login | None:
        """The live login of ``session_id``, or None (unknown or expired: then forgotten)."""
        key = _key(session_id)
        login = self._logins.get(key)
        if login is None:
            return None
        if now >= login.expires_at:
            del self._logins[key]
            return None
        return login

    def end(self, session_id: str) -> bool:
        """Log out; False if there was no such login."""
        return self._logins.pop(_key(session_id), None) is not None

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._logins.items() if now >= v.expires_at]:
            del self._logins[key]
