"""The broker's durable state: device bindings, accounts, tokens, pairings.

``RegistryStore`` is what the broker uses; ``open_registry`` opens the configured backend. This
module holds the queries both backends share (``RegistryQueries``) and the default backend,
``Registry``: one SQLite file in the state directory, described below. For several broker nodes
the same tables live in PostgreSQL (``registry_postgres.py``).

Every method that changes something commits before it returns, so an answer the broker gave
(a token, a binding, a pairing) survives ``kill -9``. The database runs in WAL mode with
``synchronous=NORMAL``: a committed transaction survives a crash of the process; only a power
cut may lose the last few (never corrupt the file). Admin commands open the same file while
the broker runs; WAL lets them read and write next to it.

The schema is a list of migration steps; ``PRAGMA user_version`` counts the steps applied.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dvrlink.protocol.identity import PUBLIC_KEY_SIZE, fingerprint, validate_serial
from dvrlink.protocol.presence_events import Address

BUSY_TIMEOUT_S = 5.0
EXPIRED_TOKEN_MEMORY_S = 7 * 86400.0  # expired tokens are kept this long to answer "token_expired"
PAIR_FAILURE_MEMORY_S = 7 * 86400.0  # pairing failures older than this are deleted
USERNAME_MAX = 64
DEVICE_NAME_MAX = 64  # characters of a device name (pairings.name)
SMS_COUNTER_MAX = (1 << 63) - 1  # wake SMS counters are kept in a signed 64-bit column

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the first schema
    (
        """CREATE TABLE devices (
            serial TEXT PRIMARY KEY,
            public_key BLOB NOT NULL CHECK (length(public_key) = 32),
            source TEXT NOT NULL CHECK (source IN ('first-use', 'manifest')),
            bound_at REAL NOT NULL,
            last_registered_at REAL,
            last_address TEXT
        ) WITHOUT ROWID""",
        """CREATE TABLE users (
            username TEXT PRIMARY KEY,
            password_hash BLOB NOT NULL,
            salt BLOB NOT NULL,
            scrypt_n INTEGER NOT NULL,
            scrypt_r INTEGER NOT NULL,
            scrypt_p INTEGER NOT NULL,
            created_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE tokens (
            token_hash BLOB PRIMARY KEY,
            username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX tokens_by_expiry ON tokens (expires_at)",
        """CREATE TABLE pairings (
            username TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
            serial TEXT NOT NULL REFERENCES devices (serial) ON DELETE CASCADE,
            viewer_key BLOB NOT NULL,
            paired_at REAL NOT NULL,
            PRIMARY KEY (username, serial)
        ) WITHOUT ROWID""",
        "CREATE INDEX pairings_by_serial ON pairings (serial)",
        "CREATE TABLE pair_failures (serial TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX pair_failures_by_serial ON pair_failures (serial, at)",
        """CREATE TABLE refusals (
            id INTEGER PRIMARY KEY,
            serial TEXT NOT NULL,
            public_key BLOB NOT NULL,
            address TEXT,
            at REAL NOT NULL,
            reason TEXT NOT NULL
        )""",
        "CREATE INDEX refusals_by_serial ON refusals (serial, at)",
    ),
    # 2: what each device last reported about itself (JSON of protocol.presence_report fields)
    (
        "ALTER TABLE devices ADD COLUMN report TEXT",
        "ALTER TABLE devices ADD COLUMN reported_at REAL",
    ),
    # 3: who sent each wrong pairing code (the limit is per account and device, with a cap per device)
    (
        "ALTER TABLE pair_failures ADD COLUMN username TEXT",
        "CREATE INDEX pair_failures_by_account ON pair_failures (serial, username, at)",
    ),
    # 4: a name each account gives its device (any text; the dashboard shows it escaped)
    ("ALTER TABLE pairings ADD COLUMN name TEXT CHECK (name IS NULL OR length(name) <= 64)",),
    # 5: SMS wake (docs/sms-wake.md): the number an operator set for a device, and the counter of
    # the last wake SMS the broker sent it (the device's own number comes in its report)
    (
        "ALTER TABLE devices ADD COLUMN sms_number TEXT",
        "ALTER TABLE devices ADD COLUMN sms_counter INTEGER",
    ),
)


class RegistryError(RuntimeError):
    """The registry file cannot be opened or migrated; the message names the file and what to do."""


class RegistryUnavailableError(RegistryError):
    """The registry's server (PostgreSQL) does not answer: the call did nothing and may be retried
    once the server is back; the message names the server and what to check. The next call
    reconnects."""


class RegistryUnusableError(RegistryError):
    """The registry file is missing where it must exist, empty, not a registry, or newer than this
    program: the broker must not start on it (exit 78); the message says what to do."""


class UserExistsError(ValueError):
    """``create_user`` was given a name that already has an account."""


class BindingVerdict(enum.Enum):
    """What :meth:`Registry.check_binding` decided about a registering (serial, key)."""

    BOUND_NOW = "bound-now"  # first use: the serial is now bound to this key
    MATCHES = "matches"  # the serial is bound to this key
    KEY_MISMATCH = "key-mismatch"  # the serial is bound to another key: refuse
    NOT_IN_MANIFEST = "not-in-manifest"  # manifest-only broker and the serial is not in it: refuse


class TokenProblem(enum.Enum):
    """Why :meth:`Registry.token_user` did not return a username."""

    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """Cost of password hashing (RFC 7914): ``n`` CPU/memory cost, ``r`` block size, ``p`` lanes.

    The default takes about 16 MiB and tens of milliseconds; the parameters are stored per user,
    so raising them later only affects new passwords.
    """

    n: int = 2**14
    r: int = 8
    p: int = 1


@dataclass(frozen=True, slots=True)
class PasswordRecord:
    """A stored password hash with its salt and cost."""

    password_hash: bytes
    salt: bytes
    params: ScryptParams


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A row of ``devices``: one bound serial."""

    serial: str
    public_key: bytes
    source: str  # "first-use" or "manifest"
    bound_at: float
    last_registered_at: float | None
    last_address: str | None
    report: dict[str, Any] | None = None
    """The device's last report (``DeviceReport.as_dict()``), or None."""
    reported_at: float | None = None
    sms_number: str | None = None
    """The +E.164 number an operator set for SMS wake (``device sms``), or None."""
    sms_counter: int | None = None
    """The counter of the last wake SMS sent to the device, or None (none sent yet)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """An account as ``dvrlink-broker user list`` shows it."""

    username: str
    created_at: float
    paired_devices: int


@dataclass(frozen=True, slots=True)
class PairingRecord:
    """A row of ``pairings``: ``username`` may see and open ``serial``."""

    username: str
    serial: str
    viewer_key: bytes
    paired_at: float
    name: str | None = None
    """What the account calls the device (at most ``DEVICE_NAME_MAX`` characters), or None."""


@dataclass(frozen=True, slots=True)
class RefusalRecord:
    """A row of the ``refusals`` audit log."""

    serial: str
    public_key: bytes
    address: str | None
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class ManifestConflict:
    """A manifest entry whose serial is already bound to another key (left as it was)."""

    serial: str
    bound_key: bytes
    manifest_key: bytes
    source: str

    def describe(self) -> str:
        """One line for the operator."""
        return (
            f"{self.serial}: bound ({self.source}) to key {fingerprint(self.bound_key)}, manifest says "
            f"{fingerprint(self.manifest_key)}; left unchanged (check the manifest, or the device "
            "that registered first under this serial)"
        )


@dataclass(frozen=True, slots=True)
class ManifestReport:
    """Outcome of :meth:`Registry.load_manifest`."""

    added: tuple[str, ...]  # new serials
    confirmed: tuple[str, ...]  # bound on first use to the same key; now marked as manifest
    unchanged: tuple[str, ...]  # already in the manifest with the same key
    conflicts: tuple[ManifestConflict, ...]


def format_address(address: Address) -> str:
    """``ip:port``, or ``[ip]:port`` for IPv6."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def validate_username(username: str) -> str:
    """Return ``username`` if it is a valid account name.

    Raises:
        ValueError: not 1-64 characters of letters, digits and ``.``, ``_``, ``-``, ``@``.
    """
    ok = 0 < len(username) <= USERNAME_MAX and all(
        ch.isascii() and (ch.isalnum() or ch in "._-@") for ch in username
    )
    if not ok:
        raise ValueError(
            f"username {username!r} is not valid: use 1-{USERNAME_MAX} characters of letters, digits "
            "and . _ - @"
        )
    return username


def hash_password(password: str, salt: bytes, params: ScryptParams) -> bytes:
    """scrypt of ``password`` (UTF-8) with ``salt``; 32 bytes."""
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=256 * params.n * params.r * params.p + (1 << 20),
        dklen=32,
    )


def verify_password(record: PasswordRecord | None, password: str) -> bool:
    """True if ``password`` matches ``record``. With no record it spends the same work and
    returns False, so timing does not tell which usernames exist. CPU-heavy: the API runs it
    in a worker thread."""
    if record is None:
        hash_password(password, b"\0" * 16, ScryptParams())
        return False
    candidate = hash_password(password, record.salt, record.params)
    return hmac.compare_digest(candidate, record.password_hash)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def token_hash(token: str) -> bytes:
    """What the registry stores for a token: its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).digest()


TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    # in an order that inserts parents before the rows that refer to them
    "devices": (
        "serial",
        "public_key",
        "source",
        "bound_at",
        "last_registered_at",
        "last_address",
        "report",
        "reported_at",
        "sms_number",
        "sms_counter",
    ),
    "users": ("username", "password_hash", "salt", "scrypt_n", "scrypt_r", "scrypt_p", "created_at"),
    "tokens": ("token_hash", "username", "issued_at", "expires_at"),
    "pairings": ("username", "serial", "viewer_key", "paired_at", "name"),
    "pair_failures": ("serial", "at", "username"),
    "refusals": ("id", "serial", "public_key", "address", "at", "reason"),
}
"""Every table of the schema with its columns: what ``export_rows``/``import_rows`` move."""

TABLE_ORDER: dict[str, str] = {
    "devices": "serial",
    "users": "username",
    "tokens": "token_hash",
    "pairings": "username, serial",
    "pair_failures": "serial, at, coalesce(username, '')",  # NULLs sort alike in both engines
    "refusals": "id",
}


class Cursor(Protocol):
    """The part of a DB-API cursor the queries use (``sqlite3.Cursor``, ``psycopg.Cursor``)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...


BINDING_QUERY_BATCH = 500
"""Serials per query of ``binding_keys`` (well under SQLite's limit of host parameters)."""


def _device_record(row: Sequence[Any]) -> DeviceRecord:
    """A ``devices`` row (serial, public_key, source, bound_at, last_registered_at, last_address,
    report, reported_at, sms_number, sms_counter) as a record; a report that is not a JSON object
    reads as None."""
    report = None
    if row[6] is not None:
        try:
            loaded = json.loads(row[6])
        except ValueError:
            loaded = None
        report = loaded if isinstance(loaded, dict) else None
    counter = None if row[9] is None else int(row[9])
    return DeviceRecord(
        row[0], bytes(row[1]), row[2], row[3], row[4], row[5], report, row[7], row[8], counter
    )


class RegistryQueries:
    """The registry's queries, written once for both backends in the SQL they share.

    A backend supplies ``_execute`` (``?`` placeholders; returns a DB-API cursor), ``_transaction``
    (one atomic unit, committed on exit) and ``_integrity_errors`` (its constraint violations).
    Times (``now``, ``since``) are Unix seconds.
    """

    _password_params: ScryptParams
    _integrity_errors: tuple[type[Exception], ...]
    location: str
    """Where the registry lives, for messages: a file path, or a URL without its password."""

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def _execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run ``sql`` once per row of parameters (the backend's ``executemany``: one statement
        prepared once; on PostgreSQL, pipelined instead of one round trip per row)."""
        raise NotImplementedError

    def _after_import(self) -> None:
        """Called inside the import's transaction after the rows went in (PostgreSQL moves the
        ``refusals`` id sequence past the imported ids)."""

    def _transaction(self) -> AbstractContextManager[object]:
        raise NotImplementedError

    # -- devices -----------------------------------------------------------------------------

    def check_binding(
        self, serial: str, public_key: bytes, now: float, manifest_only: bool
    ) -> BindingVerdict:
        """Judge a registration of ``serial`` with ``public_key``; on first use, bind it.

        With ``manifest_only`` only serials loaded by :meth:`load_manifest` are accepted (a
        serial bound on first use earlier does not count).
        """
        row = self._execute("SELECT public_key, source FROM devices WHERE serial = ?", (serial,)).fetchone()
        if row is None:
            if manifest_only:
                return BindingVerdict.NOT_IN_MANIFEST
            cur = self._execute(
                "INSERT INTO devices (serial, public_key, source, bound_at) VALUES (?, ?, 'first-use', ?) "
                "ON CONFLICT (serial) DO NOTHING",
                (serial, public_key, now),
            )
            if cur.rowcount == 1:
                return BindingVerdict.BOUND_NOW
            row = self._execute(
                "SELECT public_key, source FROM devices WHERE serial = ?", (serial,)
            ).fetchone()
        bound_key, source = bytes(row[0]), str(row[1])
        if manifest_only and source != "manifest":
            return BindingVerdict.NOT_IN_MANIFEST
        if hmac.compare_digest(bound_key, public_key):
            return BindingVerdict.MATCHES
        return BindingVerdict.KEY_MISMATCH

    def binding_keys(self, serials: Sequence[str]) -> dict[str, tuple[bytes, str]]:
        """The bound key and its source ('first-use' or 'manifest') of each of ``serials`` that
        has a binding, in one query per ``BINDING_QUERY_BATCH`` serials: how the broker checks,
        after the fact, the registrations it let in by their resumption tickets."""
        found: dict[str, tuple[bytes, str]] = {}
        for start in range(0, len(serials), BINDING_QUERY_BATCH):
            chunk = serials[start : start + BINDING_QUERY_BATCH]
            marks = ", ".join("?" * len(chunk))
            rows = self._execute(
                f"SELECT serial, public_key, source FROM devices WHERE serial IN ({marks})",  # noqa: S608 (only placeholders)
                chunk,
            )
            for serial, key, source in rows:
                found[str(serial)] = (bytes(key), str(source))
        return found

    def record_registration(self, serial: str, address: Address, now: float) -> None:
        """Note that ``serial`` registered from ``address`` at ``now`` (no-op for unknown serials)."""
        self._execute(
            "UPDATE devices SET last_registered_at = ?, last_address = ? WHERE serial = ?",
            (now, format_address(address), serial),
        )

    def record_registrations(self, entries: Sequence[tuple[str, Address, float]]) -> None:
        """``record_registration`` for each (serial, address, now), in one transaction: a
        registration storm costs one commit per batch, not one per device."""
        with self._transaction():
            self._execute_many(
                "UPDATE devices SET last_registered_at = ?, last_address = ? WHERE serial = ?",
                [(now, format_address(address), serial) for serial, address, now in entries],
            )

    def record_refusal(
        self, serial: str, public_key: bytes, address: Address | None, now: float, reason: str
    ) -> None:
        """Append a refused registration to the audit log."""
        self._execute(
            "INSERT INTO refusals (serial, public_key, address, at, reason) VALUES (?, ?, ?, ?, ?)",
            (serial, public_key, format_address(address) if address else None, now, reason),
        )

    def refusals(self, serial: str | None = None, limit: int = 100) -> list[RefusalRecord]:
        """The newest refusals (of ``serial``, or of all serials), newest first."""
        if serial is None:
            rows = self._execute(
                "SELECT serial, public_key, address, at, reason FROM refusals ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        else:
            rows = self._execute(
                "SELECT serial, public_key, address, at, reason FROM refusals WHERE serial = ? "
                "ORDER BY id DESC LIMIT ?",
                (serial, limit),
            )
        return [RefusalRecord(r[0], bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    def device(self, serial: str) -> DeviceRecord | None:
        """The binding of ``serial``, or None if it never registered and is not in the manifest."""
        row = self._execute(
            "SELECT serial, public_key, source, bound_at, last_registered_at, last_address, report, "
            "reported_at, sms_number, sms_counter FROM devices WHERE serial = ?",
            (serial,),
        ).fetchone()
        return None if row is None else _device_record(row)

    def devices(self) -> list[DeviceRecord]:
        """Every bound device, by serial (the operators' view of the fleet)."""
        rows = self._execute(
            "SELECT serial, public_key, source, bound_at, last_registered_at, last_address, report, "
            "reported_at, sms_number, sms_counter FROM devices ORDER BY serial"
        )
        return [_device_record(row) for row in rows]

    def record_report(self, serial: str, report: Mapping[str, Any], now: float) -> None:
        """Keep the last report of a bound ``serial`` (``DeviceReport.as_dict()``)."""
        with self._transaction():
            self._execute(
                "UPDATE devices SET report = ?, reported_at = ? WHERE serial = ?",
                (json.dumps(dict(report), sort_keys=True), now, serial),
            )

    def set_sms_number(self, serial: str, number: str | None) -> bool:
        """Set (or with None, clear) the +E.164 number the broker sends ``serial``'s wake SMS to.

        The caller normalises the number. Returns False if the serial is not bound.
        """
        with self._transaction():
            cur = self._execute("UPDATE devices SET sms_number = ? WHERE serial = ?", (number, serial))
            return cur.rowcount == 1

    def claim_wake_counter(self, serial: str, now_ms: int) -> int | None:
        """The counter for the next wake SMS to ``serial``, stored before it is returned: the Unix
        time in milliseconds, or the last counter + 1 when that is not above it
        (``protocol.sms_wake.next_counter``), in one statement so two requests (or two broker
        nodes on one PostgreSQL registry) never get the same counter.

        Returns None if the serial is not bound.

        Raises:
            ValueError: the device's counter space is used up (see ``next_counter``).
        """
        now_ms = max(1, min(now_ms, SMS_COUNTER_MAX))
        with self._transaction():
            row = self._execute(
                "UPDATE devices SET sms_counter = CASE WHEN sms_counter IS NULL OR sms_counter < ? "
                "THEN ? ELSE sms_counter + 1 END "
                "WHERE serial = ? AND (sms_counter IS NULL OR sms_counter < ?) RETURNING sms_counter",
                (now_ms, now_ms, serial, SMS_COUNTER_MAX),
            ).fetchone()
            if row is None:
                if self._execute("SELECT 1 FROM devices WHERE serial = ?", (serial,)).fetchone() is None:
                    return None
                raise ValueError(
                    f"the wake counter of {serial} is used up: give the device a new key (release and "
                    "register it again)"
                )
            return int(row[0])

    def release_device(self, serial: str) -> bool:
        """Forget the binding of ``serial`` (and its pairings), so the next registering key binds it.

        For a device that was reset or replaced. Returns False if the serial was not bound.
        """
        with self._transaction():
            self._execute("DELETE FROM pair_failures WHERE serial = ?", (serial,))
            return self._execute("DELETE FROM devices WHERE serial = ?", (serial,)).rowcount == 1

    def load_manifest(self, entries: Mapping[str, bytes], now: float) -> ManifestReport:
        """Bind the serials of a factory manifest (serial -> raw Ed25519 public key).

        An existing binding to another key is reported in ``conflicts`` and left unchanged;
        a first-use binding to the same key is marked as coming from the manifest. All entries
        are applied in one transaction.

        Raises:
            ValueError: a serial is invalid or a key is not 32 bytes (nothing is applied); the
                message names the entry.
        """
        for serial, key in entries.items():
            validate_serial(serial)
            if len(key) != PUBLIC_KEY_SIZE:
                raise ValueError(
                    f"manifest entry {serial}: public key is {len(key)} bytes, expected {PUBLIC_KEY_SIZE}"
                )
        added: list[str] = []
        confirmed: list[str] = []
        unchanged: list[str] = []
        conflicts: list[ManifestConflict] = []
        with self._transaction():
            for serial, key in entries.items():
                row = self._execute(
                    "SELECT public_key, source FROM devices WHERE serial = ?", (serial,)
                ).fetchone()
                if row is None:
                    self._execute(
                        "INSERT INTO devices (serial, public_key, source, bound_at) "
                        "VALUES (?, ?, 'manifest', ?)",
                        (serial, key, now),
                    )
                    added.append(serial)
                elif bytes(row[0]) != key:
                    conflicts.append(ManifestConflict(serial, bytes(row[0]), key, row[1]))
                elif row[1] == "manifest":
                    unchanged.append(serial)
                else:
                    self._execute("UPDATE devices SET source = 'manifest' WHERE serial = ?", (serial,))
                    confirmed.append(serial)
        return ManifestReport(tuple(added), tuple(confirmed), tuple(unchanged), tuple(conflicts))

    # -- users and tokens ----------------------------------------------------------------------

    def create_user(self, username: str, password: str, now: float) -> None:
        """Create an account.

        Raises:
            ValueError: the username is not valid or the password is empty.
            UserExistsError: the username is taken.
        """
        validate_username(username)
        if not password:
            raise ValueError("the password is empty; choose one of at least 8 characters")
        salt = secrets.token_bytes(16)
        params = self._password_params
        digest = hash_password(password, salt, params)
        try:
            self._execute(
                "INSERT INTO users (username, password_hash, salt, scrypt_n, scrypt_r, scrypt_p, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (username, digest, salt, params.n, params.r, params.p, now),
            )
        except self._integrity_errors:
            raise UserExistsError(
                f"user {username!r} exists; choose another name (passwords are not changed by 'user add')"
            ) from None

    def password_record(self, username: str) -> PasswordRecord | None:
        """The stored hash of ``username``, or None if there is no such account."""
        row = self._execute(
            "SELECT password_hash, salt, scrypt_n, scrypt_r, scrypt_p FROM users WHERE username = ?",
            (username,),
        ).fetchone()
        if row is None:
            return None
        return PasswordRecord(bytes(row[0]), bytes(row[1]), ScryptParams(row[2], row[3], row[4]))

    def users(self) -> list[UserRecord]:
        """Every account, by name, with its number of paired devices."""
        rows = self._execute(
            "SELECT u.username, u.created_at, "
            "(SELECT count(*) FROM pairings p WHERE p.username = u.username) "
            "FROM users u ORDER BY u.username"
        )
        return [UserRecord(r[0], r[1], r[2]) for r in rows]

    def delete_user(self, username: str) -> bool:
        """Delete an account with its tokens and pairings; False if there is no such account."""
        with self._transaction():
            return self._execute("DELETE FROM users WHERE username = ?", (username,)).rowcount == 1

    def set_password(self, username: str, password: str) -> bool:
        """Replace the password of ``username`` and revoke its tokens (every viewer logs in again);
        False if there is no such account.

        Raises:
            ValueError: the password is empty.
        """
        if not password:
            raise ValueError("the password is empty; choose one of at least 8 characters")
        salt = secrets.token_bytes(16)
        params = self._password_params
        digest = hash_password(password, salt, params)
        with self._transaction():
            changed = self._execute(
                "UPDATE users SET password_hash = ?, salt = ?, scrypt_n = ?, scrypt_r = ?, scrypt_p = ? "
                "WHERE username = ?",
                (digest, salt, params.n, params.r, params.p, username),
            ).rowcount
            self._execute("DELETE FROM tokens WHERE username = ?", (username,))
        return changed == 1

    def authenticate(self, username: str, password: str) -> bool:
        """True if ``password`` is the password of ``username`` (CPU-heavy, see ``verify_password``)."""
        return verify_password(self.password_record(username), password)

    def issue_token(self, username: str, now: float, lifetime: float) -> str:
        """Create a bearer token for ``username`` valid until ``now + lifetime``; only its hash is stored.

        Raises:
            LookupError: there is no such user.
        """
        token = secrets.token_urlsafe(32)
        with self._transaction():
            self._execute("DELETE FROM tokens WHERE expires_at < ?", (now - EXPIRED_TOKEN_MEMORY_S,))
            try:
                self._execute(
                    "INSERT INTO tokens (token_hash, username, issued_at, expires_at) VALUES (?, ?, ?, ?)",
                    (token_hash(token), username, now, now + lifetime),
                )
            except self._integrity_errors:
                raise LookupError(f"no user {username!r}; create it with `dvrlink-broker user add`") from None
        return token

    def token_user(self, token: str, now: float) -> str | TokenProblem:
        """The username a token belongs to, or why it is not valid (expired or unknown)."""
        row = self._execute(
            "SELECT username, expires_at FROM tokens WHERE token_hash = ?", (token_hash(token),)
        ).fetchone()
        if row is None:
            return TokenProblem.UNKNOWN
        if now >= row[1]:
            return TokenProblem.EXPIRED
        return str(row[0])

    # -- pairings ------------------------------------------------------------------------------

    def record_pairing(self, username: str, serial: str, viewer_key: bytes, now: float) -> None:
        """Record that ``username`` paired ``serial`` with ``viewer_key`` (pairing again replaces
        the key and time, and keeps the device's name)."""
        self._execute(
            "INSERT INTO pairings (username, serial, viewer_key, paired_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (username, serial) DO UPDATE SET viewer_key = excluded.viewer_key, "
            "paired_at = excluded.paired_at",
            (username, serial, viewer_key, now),
        )

    def remove_pairing(self, username: str, serial: str) -> bool:
        """Forget the pairing of ``serial`` to ``username`` (``dvrlink unpair``); False if there
        was none. The device keeps its own list of viewers: the viewer asks it separately."""
        cursor = self._execute("DELETE FROM pairings WHERE username = ? AND serial = ?", (username, serial))
        return cursor.rowcount > 0

    def pairings_for(self, username: str) -> list[PairingRecord]:
        """All devices paired to ``username``, by serial."""
        rows = self._execute(
            "SELECT username, serial, viewer_key, paired_at, name FROM pairings WHERE username = ? "
            "ORDER BY serial",
            (username,),
        )
        return [PairingRecord(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def paired_users(self, serial: str) -> list[str]:
        """The accounts ``serial`` is paired to, by name."""
        rows = self._execute("SELECT username FROM pairings WHERE serial = ? ORDER BY username", (serial,))
        return [str(r[0]) for r in rows]

    def pairing(self, username: str, serial: str) -> PairingRecord | None:
        """The pairing of ``serial`` to ``username``, if any."""
        row = self._execute(
            "SELECT username, serial, viewer_key, paired_at, name FROM pairings "
            "WHERE username = ? AND serial = ?",
            (username, serial),
        ).fetchone()
        return None if row is None else PairingRecord(row[0], row[1], bytes(row[2]), row[3], row[4])

    def set_device_name(self, username: str, serial: str, name: str | None) -> bool:
        """Name the device ``serial`` for ``username`` (any text; None or "" removes the name).
        The name belongs to the pairing: pairing again keeps it, unpairing forgets it. Returns
        False if ``username`` has not paired ``serial``.

        Raises:
            ValueError: the name is longer than ``DEVICE_NAME_MAX`` characters.
        """
        if name is not None and len(name) > DEVICE_NAME_MAX:
            raise ValueError(f"the device name is {len(name)} characters long; use at most {DEVICE_NAME_MAX}")
        cursor = self._execute(
            "UPDATE pairings SET name = ? WHERE username = ? AND serial = ?",
            (name or None, username, serial),
        )
        return cursor.rowcount > 0

    def record_pair_failure(self, serial: str, now: float, username: str | None = None) -> None:
        """Count a wrong pairing code the device reported for ``username``'s attempt (old entries
        are pruned)."""
        with self._transaction():
            self._execute(
                "DELETE FROM pair_failures WHERE serial = ? AND at < ?", (serial, now - PAIR_FAILURE_MEMORY_S)
            )
            self._execute(
                "INSERT INTO pair_failures (serial, at, username) VALUES (?, ?, ?)", (serial, now, username)
            )

    def pair_failures_since(self, serial: str, since: float, username: str | None = None) -> int:
        """Number of wrong pairing codes for ``serial`` at or after ``since``: from every account,
        or with ``username`` from that account only."""
        if username is None:
            row = self._execute(
                "SELECT count(*) FROM pair_failures WHERE serial = ? AND at >= ?", (serial, since)
            ).fetchone()
        else:
            row = self._execute(
                "SELECT count(*) FROM pair_failures WHERE serial = ? AND username = ? AND at >= ?",
                (serial, username, since),
            ).fetchone()
        return int(row[0])

    # -- moving the whole registry -------------------------------------------------------------

    def export_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table (``TABLE_COLUMNS`` order), read in one transaction so the
        copy is consistent while the broker runs."""
        tables: dict[str, list[tuple[Any, ...]]] = {}
        with self._transaction():
            for table, columns in TABLE_COLUMNS.items():
                rows = self._execute(
                    f"SELECT {', '.join(columns)} FROM {table} ORDER BY {TABLE_ORDER[table]}"  # noqa: S608 (names from TABLE_COLUMNS)
                )
                tables[table] = [
                    tuple(bytes(v) if isinstance(v, bytes | memoryview) else v for v in row) for row in rows
                ]
        return tables

    def row_counts(self) -> dict[str, int]:
        """Number of rows per table."""
        return {
            table: int(self._execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
            for table in TABLE_COLUMNS
        }

    def import_rows(self, tables: Mapping[str, Sequence[Sequence[Any]]], *, replace: bool = False) -> None:
        """Insert ``tables`` (as ``export_rows`` returns them) in one transaction: all or nothing.

        Raises:
            RegistryError: the registry is not empty and ``replace`` is false (nothing was
                changed), or a row does not fit the schema (nothing was changed); the message
                says which.
        """
        unknown = set(tables) - set(TABLE_COLUMNS)
        if unknown:
            raise RegistryError(f"unknown tables {sorted(unknown)}; export with the same or an older broker")
        with self._transaction():
            if not replace:
                held = {t: n for t, n in self.row_counts().items() if n}
                if held:
                    raise RegistryError(
                        f"{self.location} is not empty ({', '.join(f'{n} {t}' for t, n in held.items())}); "
                        "import into an empty registry, or pass --replace to delete these rows first"
                    )
            else:
                for table in reversed(TABLE_COLUMNS):
                    self._execute(f"DELETE FROM {table}")  # noqa: S608 (names from TABLE_COLUMNS)
            for table, columns in TABLE_COLUMNS.items():
                marks = ", ".join("?" for _ in columns)
                sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608
                for number, row in enumerate(tables.get(table, ()), start=1):
                    if len(row) != len(columns):
                        raise RegistryError(
                            f"{table} row {number} has {len(row)} values, expected {len(columns)} "
                            f"({', '.join(columns)}); nothing was imported"
                        )
                    try:
                        self._execute(sql, tuple(row))
                    except self._integrity_errors as exc:
                        raise RegistryError(
                            f"{table} row {number} does not fit the schema ({exc}); nothing was imported"
                        ) from exc
            self._after_import()


class Registry(RegistryQueries):
    """The broker's SQLite registry. Not thread-safe: use one object per thread.

    Times (``now``, ``since``) are Unix seconds.
    """

    def __init__(
        self,
        path: Path,
        *,
        create: bool = True,
        migrations: Sequence[Sequence[str]] = MIGRATIONS,
        password_params: ScryptParams | None = None,
    ) -> None:
        """Open the registry at ``path``, migrating it to this program's schema.

        Only a missing file is a new registry: with ``create`` one is made (complete, then
        moved into place, so a crash never leaves an empty file behind) and ``created`` is
        True. A file that exists is never initialised over: an empty file or one without the
        schema is refused, since taking it for a new registry would drop every binding.

        Raises:
            RegistryUnusableError: the file is missing (and ``create`` is false), empty, not a
                registry, or written by a newer broker; the message says what to do.
            RegistryError: the file cannot be opened (permissions, a missing directory).
        """
        self.path = Path(path)
        self.location = str(self.path)
        self._password_params = password_params or ScryptParams()
        self._integrity_errors = (sqlite3.IntegrityError,)
        self.created = False
        self.migrated_from = len(migrations)
        if not self.path.parent.is_dir():
            raise RegistryError(
                f"cannot open {self.path}: directory {self.path.parent} does not exist; create it "
                "or point state_dir at an existing directory"
            )
        if not self.path.exists():
            if not create:
                raise RegistryUnusableError(
                    f"no registry {self.path}: check state_dir (or --state-dir); the broker makes a new "
                    "registry at its first start, or restore this file from a backup"
                )
            self.created = self._create_new(migrations)
            if self.created:
                self.migrated_from = 0
        self._db = self._connect(self.path)
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            self._check_existing(len(migrations))
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RegistryError(
                    f"{self.path}: SQLite refused WAL mode (got {mode}); put state_dir on a local file system"
                )
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(migrations)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise RegistryUnusableError(
                f"{self.path} is not a usable registry ({exc}); restore it from a backup, or move it "
                "away to start with an empty registry (every device binding and account is then lost)"
            ) from exc
        except RegistryError:
            self._db.close()
            raise

    def _connect(self, path: Path) -> sqlite3.Connection:
        """Open an existing file (never creating it: ``mode=rw``)."""
        try:
            return sqlite3.connect(
                f"file:{urllib.parse.quote(str(path))}?mode=rw",
                uri=True,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise RegistryError(
                f"cannot open {path}: {exc}; check permissions of the state directory and the file"
            ) from exc

    def _create_new(self, migrations: Sequence[Sequence[str]]) -> bool:
        """Build a complete registry beside ``path`` and link it into place; False if another
        process made ``path`` first (then that one is used)."""
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.new"
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        try:
            # Password and token hashes live here: owner-only (SQLite gives -wal/-shm the same mode).
            os.close(os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            db = self._connect(tmp)
            try:
                db.execute("PRAGMA journal_mode = WAL")
                with _transaction(db):
                    for step in migrations:
                        for statement in step:
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {len(migrations)}")
            finally:
                db.close()  # the last connection: the WAL is checkpointed into the file
            try:
                os.link(tmp, self.path)
                made = True
            except FileExistsError:
                made = False
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise RegistryError(
                f"cannot create {self.path}: {exc.strerror}; check permissions of the state directory"
            ) from exc
        except sqlite3.Error as exc:
            raise RegistryError(
                f"cannot create {self.path}: {exc}; check free space in the state directory"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)
        return made

    def _check_existing(self, known: int) -> None:
        """Refuse a file that exists but is not a registry this program may open."""
        version = self.schema_version
        if version == 0:
            size = self.path.stat().st_size
            tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            raise RegistryUnusableError(
                f"{self.path} exists but holds no registry ({size} bytes, {tables} tables, no schema "
                "version): it may be a failed copy or was written on a full disk. Restore it from a "
                "backup; only if there is none, move it away so the broker makes a new, empty registry "
                "(every device binding and account is then lost)"
            )
        if version > known:
            raise RegistryUnusableError(
                f"{self.path} has schema version {version}, newer than this broker knows ({known}); "
                "run the newer dvrlink-broker, or restore a backup made by this version"
            )

    # -- plumbing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (everything is already committed)."""
        self._db.close()

    @property
    def schema_version(self) -> int:
        """Number of migration steps applied (``PRAGMA user_version``)."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return _transaction(self._db)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, params)

    def _execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def _migrate(self, migrations: Sequence[Sequence[str]]) -> None:
        target = len(migrations)
        if self.schema_version == target:
            return
        with self._transaction() as db:
            current = self.schema_version  # again, under the write lock
            self.migrated_from = current
            if current > target:
                raise RegistryError(
                    f"{self.path} has schema version {current}, newer than this broker knows ({target}); "
                    "run the newer dvrlink-broker, or restore a backup made by this version"
                )
            for step in migrations[current:]:
                for statement in step:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {int(target)}")


class RegistryStore(Protocol):
    """What the broker and its admin commands use of a registry, whichever backend holds it:
    :class:`Registry` (SQLite, the default) or ``registry_postgres.PostgresRegistry``.

    Any call may raise :class:`RegistryUnavailableError` when the backend is a server that does
    not answer; the call then did nothing and may be retried. Times are Unix seconds.
    """

    location: str
    created: bool
    """True if opening it made a new, empty registry."""
    migrated_from: int
    """The schema version found when it was opened (0 for a new one)."""

    @property
    def schema_version(self) -> int: ...
    def close(self) -> None: ...
    def check_binding(
        self, serial: str, public_key: bytes, now: float, manifest_only: bool
    ) -> BindingVerdict: ...
    def binding_keys(self, serials: Sequence[str]) -> dict[str, tuple[bytes, str]]: ...
    def record_registration(self, serial: str, address: Address, now: float) -> None: ...
    def record_registrations(self, entries: Sequence[tuple[str, Address, float]]) -> None: ...
    def record_refusal(
        self, serial: str, public_key: bytes, address: Address | None, now: float, reason: str
    ) -> None: ...
    def refusals(self, serial: str | None = None, limit: int = 100) -> list[RefusalRecord]: ...
    def device(self, serial: str) -> DeviceRecord | None: ...
    def devices(self) -> list[DeviceRecord]: ...
    def record_report(self, serial: str, report: Mapping[str, Any], now: float) -> None: ...
    def set_sms_number(self, serial: str, number: str | None) -> bool: ...
    def claim_wake_counter(self, serial: str, now_ms: int) -> int | None: ...
    def release_device(self, serial: str) -> bool: ...
    def load_manifest(self, entries: Mapping[str, bytes], now: float) -> ManifestReport: ...
    def create_user(self, username: str, password: str, now: float) -> None: ...
    def password_record(self, username: str) -> PasswordRecord | None: ...
    def users(self) -> list[UserRecord]: ...
    def delete_user(self, username: str) -> bool: ...
    def set_password(self, username: str, password: str) -> bool: ...
    def authenticate(self, username: str, password: str) -> bool: ...
    def issue_token(self, username: str, now: float, lifetime: float) -> str: ...
    def token_user(self, token: str, now: float) -> str | TokenProblem: ...
    def record_pairing(self, username: str, serial: str, viewer_key: bytes, now: float) -> None: ...
    def remove_pairing(self, username: str, serial: str) -> bool: ...
    def pairings_for(self, username: str) -> list[PairingRecord]: ...
    def paired_users(self, serial: str) -> list[str]: ...
    def pairing(self, username: str, serial: str) -> PairingRecord | None: ...
    def set_device_name(self, username: str, serial: str, name: str | None) -> bool: ...
    def record_pair_failure(self, serial: str, now: float, username: str | None = None) -> None: ...
    def pair_failures_since(self, serial: str, since: float, username: str | None = None) -> int: ...
    def export_rows(self) -> dict[str, list[tuple[Any, ...]]]: ...
    def row_counts(self) -> dict[str, int]: ...
    def import_rows(
        self, tables: Mapping[str, Sequence[Sequence[Any]]], *, replace: bool = False
    ) -> None: ...


def open_registry(
    registry_url: str,
    sqlite_path: Path,
    *,
    create: bool = True,
    password_params: ScryptParams | None = None,
    statement_timeout_s: float | None = None,
) -> RegistryStore:
    """Open the configured registry: SQLite at ``sqlite_path`` when ``registry_url`` is empty,
    else the PostgreSQL database it names (``postgresql://user@host:port/db``). Both are
    migrated to this program's schema on opening. ``statement_timeout_s`` replaces the short
    limit PostgreSQL statements get in the broker (admin commands that read or write every
    row pass a long one; 0 = none).

    Raises:
        RegistryUnusableError: as :class:`Registry`, or the database holds no registry (and
            ``create`` is false) or a newer one.
        RegistryUnavailableError: the PostgreSQL server does not answer.
        RegistryError: the registry cannot be opened; the message says what to do.
    """
    if not registry_url:
        return Registry(sqlite_path, create=create, password_params=password_params)
    from dvrlink.broker.registry_postgres import PostgresRegistry  # noqa: PLC0415 (SQLite needs no psycopg)

    if statement_timeout_s is None:
        return PostgresRegistry(registry_url, create=create, password_params=password_params)
    return PostgresRegistry(
        registry_url, create=create, password_params=password_params, statement_timeout_s=statement_timeout_s
    )
