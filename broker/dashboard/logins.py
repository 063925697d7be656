"""Server-side dashboard logins: a random session id (the cookie) mapped to the account, its
CSRF token and its expiry. Time and randomness are arguments.

The cookie carries only the id; a store keeps SHA-256 of it, so a dump of the store does not
hand out live cookies. Two stores, one interface (:class:`LoginStore`):

- :class:`MemoryLogins` (a single broker): a bounded table in this process
  (:class:`LoginTable`, no I/O); when full, the login closest to expiry is forgotten first.
- ``broker/cluster/logins.py``'s ``RedisLogins`` (a cluster, ``redis_url`` set): every node reads
  the same keys, so a login made through one node works on every node behind a load balancer,
  and a logout on one ends it on all. The key expires with the login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

MAX_LOGINS = 10_000
ID_BYTES = 32


@dataclass(frozen=True, slots=True)
class Login:
    """One logged-in browser."""

    username: str
    csrf_token: str
    """Sent back with every state-changing form (a hidden field) and checked server-side."""
    expires_at: float


class LoginsUnavailable(Exception):
    """The login store cannot be reached (a cluster's Redis); the message says what to do."""


class LoginStore(Protocol):
    """Where dashboard logins live. Each method may raise :class:`LoginsUnavailable`."""

    async def create(self, username: str, now: float) -> tuple[str, Login]:
        """Log ``username`` in: the new session id (for the cookie) and its login."""

    async def get(self, session_id: str, now: float) -> Login | None:
        """The live login of ``session_id``, or None (unknown, expired or logged out)."""

    async def end(self, session_id: str) -> bool:
        """Log out; False if there was no such login."""


def _token(rng: Callable[[int], bytes]) -> str:
    return base64.urlsafe_b64encode(rng(ID_BYTES)).rstrip(b"=").decode("ascii")


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8")).digest()


def hashed_id(session_id: str) -> str:
    """SHA-256 of a session id in hex: the name a shared store keeps a login under."""
    return _key(session_id).hex()


def new_login(username: str, now: float, ttl_s: float, rng: Callable[[int], bytes]) -> tuple[str, Login]:
    """A fresh session id and its login (a new CSRF token), expiring ``ttl_s`` after ``now``."""
    return _token(rng), Login(username, _token(rng), now + ttl_s)


def login_json(login: Login) -> str:
    """The stored form of a login (in a shared store)."""
    return json.dumps(
        {"u": login.username, "c": login.csrf_token, "x": login.expires_at}, separators=(",", ":")
    )


def login_from_json(text: bytes | str) -> Login | None:
    """A login from its stored form; None if it is not one (never raises)."""
    try:
        doc = json.loads(text)
        username, csrf, expires = doc["u"], doc["c"], doc["x"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if not isinstance(username, str) or not isinstance(csrf, str) or not csrf:
        return None
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        return None
    return Login(username, csrf, float(expires))


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
        session_id, login = new_login(username, now, self._ttl, self._rng)
        self._logins[_key(session_id)] = login
        return session_id, login

    def keep(self, session_id: str, login: Login, now: float) -> None:
        """Keep ``login`` under ``session_id`` (a copy of a login from a shared store)."""
        key = _key(session_id)
        if key not in self._logins and len(self._logins) >= self._max:
            self._prune(now)
            while len(self._logins) >= self._max:
                del self._logins[min(self._logins, key=lambda k: self._logins[k].expires_at)]
        self._logins[key] = login

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


class MemoryLogins:
    """:class:`LoginStore` of a single broker: a :class:`LoginTable` in this process."""

    def __init__(self, table: LoginTable) -> None:
        self.table = table

    async def create(self, username: str, now: float) -> tuple[str, Login]:
        """See :class:`LoginStore`."""
        return self.table.create(username, now)

    async def get(self, session_id: str, now: float) -> Login | None:
        """See :class:`LoginStore`."""
        return self.table.get(session_id, now)

    async def end(self, session_id: str) -> bool:
        """See :class:`LoginStore`."""
        return self.table.end(session_id)
