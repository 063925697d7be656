"""The broker's alarm history: one SQLite file (``alarms.sqlite3``) in the state directory.

A file of its own rather than tables in the registry: alarms are frequent, bulky (snapshots)
and disposable, while the registry holds bindings and accounts that must never be lost; apart,
a burst of alarms never holds the registry's write lock, and the history can be deleted
without touching a binding. The same conventions as ``registry.py``: WAL, ``synchronous =
NORMAL``, explicit ``BEGIN IMMEDIATE`` transactions, a schema version in ``user_version``.

Per device it keeps its stream position (the highest seq stored, for dedup) and at most
``max_per_device`` alarms (the oldest go first). Each stored alarm gets an ``id``, increasing
over the whole broker and never reused, which the API's ``after`` and SSE's ``Last-Event-ID``
use (a device's own seq restarts when its queue is wiped).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvrlink.protocol.alarm_link import StreamPosition
from dvrlink.protocol.alarm_wire import AlarmRecord, kind_name

ALARMS_FILE = "alarms.sqlite3"
SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE positions (
        serial TEXT PRIMARY KEY,
        stream INTEGER NOT NULL,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE alarms (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        serial TEXT NOT NULL,
        stream INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        received_at REAL NOT NULL,
        kind INTEGER NOT NULL,
        channel INTEGER,
        detail TEXT NOT NULL,
        snapshot BLOB
    )""",
    "CREATE INDEX alarms_by_serial ON alarms (serial, id)",
    """CREATE TABLE webhooks (
        username TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        secret BLOB NOT NULL,
        created_at REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE webhook_outbox (
        username TEXT NOT NULL,
        alarm_id INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (username, alarm_id)
    ) WITHOUT ROWID""",
)


class AlarmStoreError(RuntimeError):
    """The alarm history cannot be opened; the message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class Webhook:
    """An account's alarm webhook."""

    username: str
    url: str
    secret: bytes
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredAlarm:
    """An alarm as the broker keeps it."""

    id: int
    serial: str
    seq: int
    time_ms: int
    received_at: float
    kind: int
    channel: int | None
    detail: str
    snapshot_size: int

    def to_json(self) -> dict[str, Any]:
        """The API's JSON form (``Alarm`` in the OpenAPI document)."""
        return {
            "id": self.id,
            "serial": self.serial,
            "seq": self.seq,
            "time": self.time_ms / 1000,
            "received_at": round(self.received_at, 3),
            "kind": kind_name(self.kind),
            "kind_code": self.kind,
            "channel": self.channel,
            "detail": self.detail,
            "snapshot_size": self.snapshot_size or None,
        }


_COLUMNS = "id, serial, seq, time_ms, received_at, kind, channel, detail, coalesce(length(snapshot), 0)"


def _row(row: Sequence[Any]) -> StoredAlarm:
    return StoredAlarm(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8])


class AlarmStore:
    """The alarm history (see the module docstring). Not thread-safe."""

    def __init__(self, path: Path, max_per_device: int = 1000) -> None:
        """Open (or create) the history at ``path``.

        Raises:
            AlarmStoreError: the file cannot be opened, is not an alarm history, or is newer.
        """
        self.path = Path(path)
        self._max = max_per_device
        try:
            self._db = sqlite3.connect(
                f"file:{urllib.parse.quote(str(self.path))}?mode=rwc",
                uri=True,
                timeout=5.0,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise AlarmStoreError(
                f"cannot open {self.path}: {exc}; check permissions of the state directory"
            ) from exc
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._transaction() as db:
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                if version == 0:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version > SCHEMA_VERSION:
                    raise AlarmStoreError(
                        f"{self.path} has schema version {version}, newer than this broker knows "
                        f"({SCHEMA_VERSION}); run the newer dvrlink-broker, or move the file away (the "
                        "alarm history is then lost, nothing else)"
                    )
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise AlarmStoreError(
                f"{self.path} is not a usable alarm history ({exc}); move it away to start an empty "
                "one (only the alarm history is lost)"
            ) from exc
        except AlarmStoreError:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def position(self, serial: str) -> StreamPosition | None:
        """How far ``serial``'s alarms are stored, or None."""
        row = self._db.execute("SELECT stream, seq FROM positions WHERE serial = ?", (serial,)).fetchone()
        return None if row is None else StreamPosition(int(row[0]), int(row[1]))

    def store(
        self, serial: str, records: Sequence[AlarmRecord], position: StreamPosition, now: float
    ) -> list[StoredAlarm]:
        """Keep ``records`` and the new ``position`` in one transaction, trimming the device's
        history to its bound; returns the stored alarms (with their ids).

        Raises:
            sqlite3.Error: the database failed (nothing is stored; the device sends them again).
        """
        stored: list[StoredAlarm] = []
        with self._transaction() as db:
            for r in records:
                cur = db.execute(
                    "INSERT INTO alarms (serial, stream, seq, time_ms, received_at, kind, channel, detail, "
                    "snapshot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (serial, position.stream, r.seq, r.time_ms, now, r.kind, r.channel, r.detail, r.snapshot),
                )
                size = len(r.snapshot) if r.snapshot is not None else 0
                row_id = int(cur.lastrowid or 0)
                stored.append(
                    StoredAlarm(row_id, serial, r.seq, r.time_ms, now, r.kind, r.channel, r.detail, size)
                )
            db.execute(
                "INSERT INTO positions (serial, stream, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (serial) DO UPDATE SET stream = excluded.stream, seq = excluded.seq",
                (serial, position.stream, position.seq),
            )
            if records:
                db.execute(
                    "DELETE FROM alarms WHERE serial = ? AND id <= (SELECT id FROM alarms WHERE serial = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (serial, serial, self._max),
                )
        return stored

    def history(self, serial: str, after: int = 0, limit: int = 100) -> list[StoredAlarm]:
        """``serial``'s alarms with an id above ``after``, oldest first, at most ``limit``."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM alarms WHERE serial = ? AND id > ? ORDER BY id LIMIT ?",  # noqa: S608
            (serial, after, limit),
        ).fetchall()
        return [_row(row) for row in rows]

    def latest(self, serial: str, count: int) -> list[StoredAlarm]:
        """``serial``'s last ``count`` alarms, oldest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM alarms WHERE serial = ? ORDER BY id DESC LIMIT ?",  # noqa: S608
            (serial, count),
        ).fetchall()
        return [_row(row) for row in reversed(rows)]

    def count_since(self, serial: str, kind: int, since_ms: int) -> int:
        """How many of ``serial``'s stored alarms of ``kind`` happened at ``since_ms`` or later
        (the device's time of each)."""
        row = self._db.execute(
            "SELECT count(*) FROM alarms WHERE serial = ? AND kind = ? AND time_ms >= ?",
            (serial, kind, since_ms),
        ).fetchone()
        return int(row[0])

    def snapshot(self, serial: str, alarm_id: int) -> bytes | None:
        """The JPEG of alarm ``alarm_id`` of ``serial``, or None (no such alarm, or none taken)."""
        row = self._db.execute(
            "SELECT snapshot FROM alarms WHERE serial = ? AND id = ?", (serial, alarm_id)
        ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def alarm(self, alarm_id: int) -> StoredAlarm | None:
        """Alarm ``alarm_id``, or None (never stored, or trimmed)."""
        row = self._db.execute(f"SELECT {_COLUMNS} FROM alarms WHERE id = ?", (alarm_id,)).fetchone()  # noqa: S608
        return None if row is None else _row(row)

    # -- webhooks -----------------------------------------------------------------------------

    def set_webhook(self, username: str, url: str, secret: bytes, now: float) -> None:
        """Set (or replace) ``username``'s webhook."""
        self._db.execute(
            "INSERT INTO webhooks (username, url, secret, created_at) VALUES (?, ?, ?, ?) ON CONFLICT "
            "(username) DO UPDATE SET url = excluded.url, secret = excluded.secret, "
            "created_at = excluded.created_at",
            (username, url, secret, now),
        )

    def webhook(self, username: str) -> Webhook | None:
        """``username``'s webhook, or None."""
        row = self._db.execute(
            "SELECT username, url, secret, created_at FROM webhooks WHERE username = ?", (username,)
        ).fetchone()
        return None if row is None else Webhook(row[0], row[1], bytes(row[2]), row[3])

    def delete_webhook(self, username: str) -> bool:
        """Remove ``username``'s webhook and what waits for it; False if there was none."""
        with self._transaction() as db:
            db.execute("DELETE FROM webhook_outbox WHERE username = ?", (username,))
            return db.execute("DELETE FROM webhooks WHERE username = ?", (username,)).rowcount > 0

    def enqueue_deliveries(self, usernames: Sequence[str], alarm_id: int) -> list[str]:
        """Queue alarm ``alarm_id`` for the webhooks of ``usernames``; returns those that have one."""
        with self._transaction() as db:
            queued = []
            for username in usernames:
                if db.execute("SELECT 1 FROM webhooks WHERE username = ?", (username,)).fetchone():
                    db.execute(
                        "INSERT OR IGNORE INTO webhook_outbox (username, alarm_id) VALUES (?, ?)",
                        (username, alarm_id),
                    )
                    queued.append(username)
        return queued

    def pending_deliveries(self, username: str, limit: int = 100) -> list[tuple[int, int]]:
        """(alarm id, attempts so far) waiting for ``username``'s webhook, oldest alarm first."""
        rows = self._db.execute(
            "SELECT alarm_id, attempts FROM webhook_outbox WHERE username = ? ORDER BY alarm_id LIMIT ?",
            (username, limit),
        ).fetchall()
        return [(int(r[0]), int(r[1])) for r in rows]

    def delivery_users(self) -> list[str]:
        """Accounts with deliveries waiting (to resume them at start)."""
        return [str(r[0]) for r in self._db.execute("SELECT DISTINCT username FROM webhook_outbox")]

    def delivery_attempted(self, username: str, alarm_id: int) -> None:
        """Count one failed attempt."""
        self._db.execute(
            "UPDATE webhook_outbox SET attempts = attempts + 1 WHERE username = ? AND alarm_id = ?",
            (username, alarm_id),
        )

    def delivery_done(self, username: str, alarm_id: int) -> None:
        """Delivered (or given up): forget it."""
        self._db.execute(
            "DELETE FROM webhook_outbox WHERE username = ? AND alarm_id = ?", (username, alarm_id)
        )
