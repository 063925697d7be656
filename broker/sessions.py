"""The broker's memory of session signalling: which account asked for which device, and how far
the offer/answer exchange got. No I/O; time is an argument (unix seconds).

A session is ``created`` by ``POST /v1/sessions``, ``offered`` while its offer waits for the
device, then ``answered`` or ``failed``. It is forgotten when the viewer ends it (``DELETE
/v1/sessions/{id}``, as it closes the session) or ``ttl`` seconds after creation; an account
holds at most ``max_per_account`` sessions at once. The QUIC session that follows runs
between viewer and device; the broker never learns whether it is still up.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from dvrlink.protocol.signalling import SESSION_ID_SIZE, PathPolicy


class SessionState(enum.Enum):
    """How far the signalling of a session got."""

    CREATED = "created"
    OFFERED = "offered"
    ANSWERED = "answered"
    FAILED = "failed"


# The only moves a session makes: offer once, then one outcome.
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.CREATED: frozenset({SessionState.OFFERED}),
    SessionState.OFFERED: frozenset({SessionState.ANSWERED, SessionState.FAILED}),
    SessionState.ANSWERED: frozenset(),
    SessionState.FAILED: frozenset(),
}


SESSION_PATHS = ("lan", "direct", "relay")
"""The paths a viewer reports a session runs on (``PATCH /v1/sessions/{id}``)."""
ALLOWED_PATHS: dict[PathPolicy, frozenset[str]] = {
    PathPolicy.ALL: frozenset(SESSION_PATHS),
    PathPolicy.RELAY_ONLY: frozenset({"relay"}),
    PathPolicy.DIRECT_ONLY: frozenset({"lan", "direct"}),
}
"""The paths a session's policy lets it run on."""

MAX_UPDATES = 64
"""Candidate updates one session may send (a viewer needs a handful; the rest is abuse)."""


class TooManySessionsError(Exception):
    """The account already holds ``max_per_account`` live sessions."""


@dataclass(slots=True)
class SessionRecord:
    """One session's signalling state."""

    session_id: bytes
    account: str
    serial: str
    policy: PathPolicy
    created_at: float
    expires_at: float
    state: SessionState = SessionState.CREATED
    updates: int = 0
    """Candidate updates (trickle requests) relayed so far; bounded by ``MAX_UPDATES``."""
    path: str | None = None
    """The path the viewer last reported (``SESSION_PATHS``); None until it reports."""

    def move(self, state: SessionState) -> None:
        """Advance to ``state``.

        Raises:
            ValueError: the move is not in ``TRANSITIONS`` (a bug in the caller).
        """
        if state not in TRANSITIONS[self.state]:
            raise ValueError(
                f"session {self.session_id.hex()}: no move from {self.state.value} to {state.value}"
            )
        self.state = state


ENDED: Literal["ended"] = "ended"
"""What a shared store answers for a session its viewer ended (on any node)."""


class SharedStoreUnavailable(Exception):
    """A cluster's shared session store cannot be reached; the node goes on with its own copy."""


class SharedSessionStore(Protocol):
    """Where the nodes of a cluster keep session records, so that any node can continue a
    session (``broker/cluster/sessions.py``); a single broker has none."""

    async def save(self, record: SessionRecord) -> None:
        """Store ``record`` for its remaining lifetime (errors are logged, not raised)."""
        ...

    async def load(self, session_id: bytes) -> SessionRecord | Literal["ended"] | None:
        """The stored record, ``ENDED``, or None (never stored, or expired).

        Raises:
            SharedStoreUnavailable: the store cannot be reached.
        """
        ...

    async def end(self, record: SessionRecord) -> None:
        """Mark the session ended for every node (errors are logged, not raised)."""
        ...


class SessionTable:
    """Live sessions per account, pruned as time goes by."""

    def __init__(self, ttl: float, max_per_account: int, rng: Callable[[int], bytes] = os.urandom) -> None:
        self._ttl = ttl
        self._max = max_per_account
        self._rng = rng
        self._by_id: dict[bytes, SessionRecord] = {}
        self._adopted: set[bytes] = set()
        """Sessions another node created (``adopt``)."""
        self._by_account: dict[str, dict[bytes, SessionRecord]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, account: str, serial: str, policy: PathPolicy, now: float) -> SessionRecord:
        """A new session of ``account`` with ``serial``.

        Raises:
            TooManySessionsError: the account holds ``max_per_account`` live sessions.
        """
        live = self.for_account(account, now)
        if len(live) >= self._max:
            raise TooManySessionsError(account)
        session_id = self._rng(SESSION_ID_SIZE)
        while session_id in self._by_id:  # pragma: no cover (random 128 bits)
            session_id = self._rng(SESSION_ID_SIZE)
        record = SessionRecord(session_id, account, serial, policy, now, now + self._ttl)
        self._by_id[session_id] = record
        self._by_account.setdefault(account, {})[session_id] = record
        return record

    def get(self, account: str, session_id: bytes, now: float) -> SessionRecord | None:
        """The live session ``session_id`` if it belongs to ``account``, else None."""
        record = self._by_id.get(session_id)
        if record is None or record.account != account:
            return None
        if record.expires_at <= now:
            self._forget(record)
            return None
        return record

    def for_account(self, account: str, now: float) -> list[SessionRecord]:
        """The live sessions of ``account``, oldest first."""
        records = self._by_account.get(account)
        if not records:
            return []
        for record in [r for r in records.values() if r.expires_at <= now]:
            self._forget(record)
        return sorted(self._by_account.get(account, {}).values(), key=lambda r: r.created_at)

    def live(self, now: float) -> list[SessionRecord]:
        """Every live session, oldest first (expired ones are forgotten)."""
        self.prune(now)
        return sorted(self._by_id.values(), key=lambda r: r.created_at)

    def created_here(self, now: float) -> list[SessionRecord]:
        """The live sessions this table created (not adopted from another node), oldest first: a
        cluster's counters add these up, so a session another node continued counts once."""
        return [r for r in self.live(now) if r.session_id not in self._adopted]

    def adopt(self, record: SessionRecord) -> SessionRecord:
        """Keep ``record`` (read from a cluster's shared store), replacing this table's copy of
        the same session; a record over the account's limit is kept too (another node let it in)."""
        old = self._by_id.get(record.session_id)
        created_elsewhere = old is None or record.session_id in self._adopted
        if old is not None:
            self._forget(old)
        if created_elsewhere:
            self._adopted.add(record.session_id)
        self._by_id[record.session_id] = record
        self._by_account.setdefault(record.account, {})[record.session_id] = record
        return record

    def end(self, record: SessionRecord) -> None:
        """Forget ``record``: its viewer closed the session."""
        self._forget(record)

    def prune(self, now: float) -> int:
        """Forget every expired session; returns how many."""
        expired = [r for r in self._by_id.values() if r.expires_at <= now]
        for record in expired:
            self._forget(record)
        return len(expired)

    def _forget(self, record: SessionRecord) -> None:
        self._by_id.pop(record.session_id, None)
        self._adopted.discard(record.session_id)
        records = self._by_account.get(record.account)
        if records is not None:
            records.pop(record.session_id, None)
            if not records:
                del self._by_account[record.account]
