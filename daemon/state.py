"""The device's state directory: its key, its pairing secret, paired viewers, pairing failures.

Files (all mode 0600, written atomically):

- ``device_key.pem``: Ed25519 private key (PKCS#8 PEM), created on first start.
- ``pairing_secret``: the pairing code (16 base32 characters), created on first start.
- ``viewers.json``: viewers paired to this device, ``[{"public_key", "account", "paired_at"}]``.
- ``pairing_failures.json``: unix times of recent wrong pairing codes.
- ``console_pin_failures.json``: unix times of recent wrong installer PINs on the serial console
  (``daemon/console_link.py``), so a reboot does not give more tries.
- ``modem/apn_memory.json``, ``modem/ladder.json``, ``modem/accounting.json``: the cellular
  modem's APN memory, recovery ladder and data accounting (``daemon/modem_service.py``).
- ``dvrlinkd.lock``: locked (``flock``) by the running daemon, holds its pid; a second daemon on
  the same directory does not start (:class:`AlreadyRunning`).

:func:`check_state_files` reads every one of them at start, the same way for each, and
:data:`STATE_FILES` says per file what a corrupt one means:

- *stop*: the daemon does not start; the message names the file and what to do. The device key
  (its identity), the pairing secret (on the label) and ``viewers.json`` (the pairings) are
  never replaced or dropped behind the operator's back.
- *move aside*: the file is renamed ``<name>.corrupt-<UTC time>``, a warning says what starting
  clean costs, and the daemon starts. Only where losing the file is safe: the wrong-code times
  (the count restarts) and the modem's memories (slower first connect, counters from zero).

A file that exists but cannot be read (owner, mode) always stops the start: that is a set-up
mistake, not damage. Read-only commands (``dvrlinkd pairing-code``) never create anything.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.daemon.broker_nodes import NODE_FILE, BrokerNode, decode_node
from dvrlink.protocol.identity import (
    b64decode_key,
    b64encode_key,
    ed25519_private_from_pem,
    private_key_to_pem,
)
from dvrlink.protocol.pairing import generate_pairing_secret, normalize_code
from dvrlink.store.files import DirectoryLocked, atomic_write, lock_exclusive

DEVICE_KEY_FILE = "device_key.pem"
PAIRING_SECRET_FILE = "pairing_secret"  # noqa: S105 (a file name)
VIEWERS_FILE = "viewers.json"
PAIRING_FAILURES_FILE = "pairing_failures.json"
CONSOLE_PIN_FAILURES_FILE = "console_pin_failures.json"
LOCK_FILE = "dvrlinkd.lock"
SUPERVISOR_LOG_FILE = "supervisor_log.json"
"""The supervisor's reset log entries already raised as alarms (``daemon/supervisor_service.py``)."""
MODEM_DIR = "modem"
"""Where ``daemon/modem_service.py`` keeps the modem's files."""


class StateError(Exception):
    """A state file or the state directory cannot be used; the message names it and says what to do."""


class AlreadyRunning(StateError):
    """Another dvrlinkd holds the state directory's lock; ``pid`` is its process id (None: unknown)."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        shown = pid if pid is not None else "unknown"
        super().__init__(
            f"dvrlinkd is already running (pid {shown}) with the state directory {state_dir}; stop it "
            "first (`systemctl stop dvrlinkd`), or give this one its own [device] state_dir"
        )
        self.pid = pid


class NotCreated(StateError):
    """A read-only command found no device key or pairing secret yet."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """A viewer key paired to this device."""

    public_key: bytes
    """Raw Ed25519 public key, 32 bytes."""
    account: str
    """Broker account that paired it."""
    paired_at: float
    """Unix time of the pairing."""


class DeviceState:
    """Reads and writes the files in one state directory.

    ``rng`` makes the pairing secret (``os.urandom`` in the daemon).
    """

    def __init__(self, state_dir: Path, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.state_dir = Path(state_dir)
        self._rng = rng

    # --- device key and pairing secret -----------------------------------------------------

    def device_key(self, *, create: bool = True) -> Ed25519PrivateKey:
        """Load the device key; with ``create``, make it (and the state directory) on first use.

        Raises:
            NotCreated: ``create`` is false and there is no key yet (nothing is created).
            StateError: the key file exists but is not an Ed25519 PEM key, or the directory
                or file cannot be read or written.
        """
        path = self.state_dir / DEVICE_KEY_FILE
        if not create:
            return parse_device_key(path, self._read_existing(path, "device key"))
        with self._creation_lock():
            if not path.exists():
                key = Ed25519PrivateKey.generate()
                self._write(path, private_key_to_pem(key))
                return key
            data = self._read(path)
        return parse_device_key(path, data)

    def pairing_secret(self, *, create: bool = True) -> str:
        """Load the pairing secret; with ``create``, make it on first use.

        Raises:
            NotCreated: ``create`` is false and there is no secret yet (nothing is created).
            StateError: the file exists but does not hold a pairing code, or cannot be read or
                written.
        """
        path = self.state_dir / PAIRING_SECRET_FILE
        if not create:
            return parse_pairing_secret(path, self._read_existing(path, "pairing code"))
        with self._creation_lock():
            if not path.exists():
                secret = generate_pairing_secret(self._rng)
                self._write(path, secret.encode("ascii") + b"\n")
                return secret
            data = self._read(path)
        return parse_pairing_secret(path, data)

    # --- the running daemon's lock -----------------------------------------------------------

    @contextmanager
    def running_lock(self) -> Iterator[None]:
        """Hold ``dvrlinkd.lock`` (with this pid in it) while the block runs; made with the
        directory if missing. The kernel drops the lock when the process ends, however it ends.

        Raises:
            AlreadyRunning: another process holds it; the message names its pid.
            StateError: the directory or the lock file cannot be made or opened.
        """
        self._ensure_dir()
        try:
            fd = lock_exclusive(self.state_dir / LOCK_FILE)
        except DirectoryLocked as exc:
            raise AlreadyRunning(self.state_dir, exc.pid) from None
        except OSError as exc:
            raise StateError(
                f"cannot open the lock file {self.state_dir / LOCK_FILE} ({exc.strerror}); make the "
                "state directory writable for the daemon's user"
            ) from None
        try:
            yield
        finally:
            os.close(fd)

    # --- viewers -----------------------------------------------------------------------------

    def viewers(self) -> list[Viewer]:
        """The paired viewers (empty when the file does not exist yet).

        Raises:
            StateError: the file is unreadable or malformed; it is left as it is.
        """
        path = self.state_dir / VIEWERS_FILE
        data = self._read_json_file(path)
        return [] if data is None else parse_viewers(path, data)

    def add_viewer(self, public_key: bytes, account: str, paired_at: float) -> bool:
        """Record a paired viewer; returns False (and changes nothing) if the key is already there.

        Raises:
            StateError: the file is malformed or cannot be written.
        """
        viewers = self.viewers()
        if any(v.public_key == public_key for v in viewers):
            return False
        viewers.append(Viewer(public_key, account, paired_at))
        items = [
            {"public_key": b64encode_key(v.public_key), "account": v.account, "paired_at": v.paired_at}
            for v in viewers
        ]
        self._write(self.state_dir / VIEWERS_FILE, _json_bytes(items))
        return True

    def remove_viewer(self, public_key: bytes) -> bool:
        """Forget a paired viewer (``dvrlink unpair``); returns False (and changes nothing) if
        the key is not there.

        Raises:
            StateError: the file is malformed or cannot be written.
        """
        viewers = self.viewers()
        kept = [v for v in viewers if v.public_key != public_key]
        if len(kept) == len(viewers):
            return False
        items = [
            {"public_key": b64encode_key(v.public_key), "account": v.account, "paired_at": v.paired_at}
            for v in kept
        ]
        self._write(self.state_dir / VIEWERS_FILE, _json_bytes(items))
        return True

    # --- pairing failures --------------------------------------------------------------------

    def pairing_failures(self) -> list[float]:
        """Unix times of recorded wrong pairing codes (empty when the file does not exist yet).

        Raises:
            StateError: the file is unreadable or malformed; it is left as it is.
        """
        path = self.state_dir / PAIRING_FAILURES_FILE
        data = self._read_json_file(path)
        return [] if data is None else parse_pairing_failures(path, data)

    def save_pairing_failures(self, failures: Sequence[float]) -> None:
        """Replace the recorded wrong-code times.

        Raises:
            StateError: the file cannot be written.
        """
        self._write(self.state_dir / PAIRING_FAILURES_FILE, _json_bytes(list(failures)))

    # --- wrong installer PINs on the serial console --------------------------------------------

    def console_pin_failures(self) -> list[float]:
        """Unix times of recorded wrong installer PINs (empty when there is no file yet).

        Raises:
            StateError: the file is unreadable or malformed; it is left as it is.
        """
        path = self.state_dir / CONSOLE_PIN_FAILURES_FILE
        data = self._read_json_file(path)
        return [] if data is None else parse_pairing_failures(path, data)

    def save_console_pin_failures(self, failures: Sequence[float]) -> None:
        """Replace the recorded wrong-PIN times.

        Raises:
            StateError: the file cannot be written.
        """
        self._write(self.state_dir / CONSOLE_PIN_FAILURES_FILE, _json_bytes(list(failures)))

    # --- helpers -----------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the state directory {self.state_dir} ({exc.strerror}); create it "
                "writable for the daemon's user, or set [device] state_dir"
            ) from None

    @contextmanager
    def _creation_lock(self) -> Iterator[None]:
        """Serialise load-or-create between the daemon and ``dvrlinkd pairing-code``."""
        self._ensure_dir()
        try:
            fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)  # flock works on a directory
        except OSError as exc:
            raise StateError(
                f"cannot open the state directory {self.state_dir} ({exc.strerror}); run as the "
                "daemon's user or make the directory readable for it"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StateError(
                f"cannot read {path} ({exc.strerror}); check that it belongs to the daemon's user "
                "and is readable (mode 0600)"
            ) from None

    def _write(self, path: Path, data: bytes) -> None:
        self._ensure_dir()
        try:
            atomic_write(path, data, mode=0o600)
            _match_directory_owner(path)
        except OSError as exc:
            raise StateError(str(exc)) from None

    def _read_existing(self, path: Path, what: str) -> bytes:
        """For read-only commands: the file's bytes; nothing is created when it is missing."""
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotCreated(
                f"no {what} yet: {path} does not exist. The daemon makes it on its first start; to "
                "make it now (for the label, before the first start) run `dvrlinkd pairing-code "
                "--create` as root or as the daemon's user. If the daemon has run before, check "
                "[device] state_dir in the config"
            ) from None
        except OSError as exc:
            raise StateError(
                f"cannot read {path} ({exc.strerror}); run as root or as the daemon's user"
            ) from None

    @staticmethod
    def _read_json_file(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path} ({exc.strerror}); check its owner and mode") from None


# --- one parser per state file: bytes in, value out, StateError naming the file --------------

_KEEP = "repair it or restore it from a backup (the daemon leaves it untouched)"


def parse_device_key(path: Path, data: bytes) -> Ed25519PrivateKey:
    """The device key in ``data`` (read from ``path``). Raises StateError."""
    try:
        return ed25519_private_from_pem(data, str(path))
    except ValueError as exc:
        raise StateError(str(exc)) from None


def parse_pairing_secret(path: Path, data: bytes) -> str:
    """The pairing code in ``data``. Raises StateError."""
    try:
        return normalize_code(data.decode("ascii", errors="replace").strip())
    except ValueError:
        raise StateError(
            f"{path} does not hold a pairing code (16 characters of A-Z and 2-7); restore it "
            "from a backup, or remove it to make a new code (print it with `dvrlinkd pairing-code` "
            "and update the device label)"
        ) from None


def parse_viewers(path: Path, data: bytes) -> list[Viewer]:
    """The paired viewers in ``data``. Raises StateError."""
    restore = f"{_KEEP}; removing it unpairs every viewer (each must pair again with `dvrlink pair`)"
    items = _parse_json(path, data, restore)
    shape = 'a list of {"public_key": base64, "account": text, "paired_at": unix time}'
    if not isinstance(items, list):
        raise _malformed(path, shape, restore)
    viewers = []
    for item in items:
        try:
            viewers.append(
                Viewer(
                    public_key=b64decode_key(item["public_key"], "public_key"),
                    account=_as_str(item["account"]),
                    paired_at=_as_time(item["paired_at"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            raise _malformed(path, shape, restore) from None
    return viewers


def parse_pairing_failures(path: Path, data: bytes) -> list[float]:
    """The wrong-code times in ``data``. Raises StateError."""
    items = _parse_json(path, data, _KEEP)
    try:
        if not isinstance(items, list):
            raise TypeError
        return [_as_time(t) for t in items]
    except (TypeError, ValueError):
        raise _malformed(path, "a list of unix times", _KEEP) from None


def _parse_modem_file(path: Path, data: bytes) -> object:
    """The modem's files, checked by their own parsers (imported only when such a file exists)."""
    from dvrlink.modem.accounting import AccountingConfig, DataAccounting  # noqa: PLC0415
    from dvrlink.modem.apn import ApnMemory  # noqa: PLC0415
    from dvrlink.modem.ladder import LadderState  # noqa: PLC0415

    try:
        if path.name == "apn_memory.json":
            return ApnMemory.from_bytes(data)
        if path.name == "ladder.json":
            return LadderState.from_bytes(data)
        DataAccounting(AccountingConfig()).load_bytes(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"{path} is not a saved state ({exc})") from None
    return None


def parse_supervisor_log(path: Path, data: bytes) -> list[tuple[int, int, int, int]]:
    """The supervisor's reset log as last seen: ``{"entries": [[cause, unix, uptime_s, detail], ...]}``,
    newest first.

    Raises:
        StateError: not that shape.
    """
    todo = "it is written again at the next read of the supervisor's log"
    obj = _parse_json(path, data, todo)
    entries = obj.get("entries") if isinstance(obj, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, list) and len(e) == 4 and all(type(v) is int and v >= 0 for v in e) for e in entries
    ):
        raise _malformed(path, "a list of supervisor log entries", todo)
    return [(e[0], e[1], e[2], e[3]) for e in entries]


def _parse_json(path: Path, data: bytes, todo: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"{path} is not valid JSON ({exc}); {todo}") from None


def _malformed(path: Path, shape: str, todo: str) -> StateError:
    return StateError(f"{path} is valid JSON but not {shape}; {todo}")


def parse_broker_node(path: Path, data: bytes) -> BrokerNode:
    """The broker node that answered last (``broker_nodes.NodeMemory``). Raises StateError."""
    try:
        return decode_node(data)
    except ValueError as exc:
        raise StateError(f"{path}: {exc}; remove it (the daemon writes it again)") from None


# --- the check at start ----------------------------------------------------------------------


class OnCorrupt(enum.Enum):
    """What a state file that does not parse means at start."""

    STOP = "stop"
    """The daemon does not start; the message names the file and what to do."""
    MOVE_ASIDE = "move aside"
    """The file is renamed ``<name>.corrupt-<UTC time>`` and the daemon starts without it."""


@dataclass(frozen=True, slots=True)
class StateFile:
    """One file of the state directory and how the start-up check treats it."""

    name: str
    """Path relative to the state directory."""
    parse: Callable[[Path, bytes], object]
    """Raises StateError when the bytes are not this file's content."""
    on_corrupt: OnCorrupt
    if_lost: str
    """What starting without it costs (in the warning when it is moved aside)."""


STATE_FILES: tuple[StateFile, ...] = (
    StateFile(DEVICE_KEY_FILE, parse_device_key, OnCorrupt.STOP, "a new device identity"),
    StateFile(PAIRING_SECRET_FILE, parse_pairing_secret, OnCorrupt.STOP, "a new code on the label"),
    StateFile(VIEWERS_FILE, parse_viewers, OnCorrupt.STOP, "every viewer must pair again"),
    StateFile(
        PAIRING_FAILURES_FILE,
        parse_pairing_failures,
        OnCorrupt.MOVE_ASIDE,
        "the count of recent wrong pairing codes restarts from zero",
    ),
    StateFile(
        CONSOLE_PIN_FAILURES_FILE,
        parse_pairing_failures,
        OnCorrupt.MOVE_ASIDE,
        "the count of recent wrong installer PINs on the serial console restarts from zero",
    ),
    StateFile(
        NODE_FILE,
        parse_broker_node,
        OnCorrupt.MOVE_ASIDE,
        "the first registration goes to the top of [broker] hosts, not to the node that answered last",
    ),
    StateFile(
        SUPERVISOR_LOG_FILE,
        parse_supervisor_log,
        OnCorrupt.MOVE_ASIDE,
        "the supervisor's reset log entries already reported are forgotten: the broker gets them again",
    ),
    StateFile(
        f"{MODEM_DIR}/apn_memory.json",
        _parse_modem_file,
        OnCorrupt.MOVE_ASIDE,
        "the APN that worked last is forgotten; the first connect tries the provider database again",
    ),
    StateFile(
        f"{MODEM_DIR}/ladder.json",
        _parse_modem_file,
        OnCorrupt.MOVE_ASIDE,
        "the modem recovery ladder starts at its first step, with no reboots counted",
    ),
    StateFile(
        f"{MODEM_DIR}/accounting.json",
        _parse_modem_file,
        OnCorrupt.MOVE_ASIDE,
        "cellular data is counted from zero for this billing cycle, so the cap is reached later",
    ),
)
"""Every file the daemon keeps in its state directory, in the order they are checked."""


@dataclass(frozen=True, slots=True)
class MovedAside:
    """A corrupt state file was renamed at start (past tense: the rename is done)."""

    path: Path
    aside: Path
    problem: str
    """What was wrong, as the file's parser said."""
    if_lost: str
    """What starting without it costs."""


def check_state_files(
    state_dir: Path, now: float, files: Sequence[StateFile] = STATE_FILES
) -> tuple[MovedAside, ...]:
    """Read and parse every state file in ``state_dir`` that exists; ``now`` is unix time (for
    the names of files moved aside). A missing file is fine (first start).

    Nothing is changed unless every file that must stop the start is good: then the corrupt
    files that may be lost are renamed ``<name>.corrupt-<UTC time>``, and returned.

    Raises:
        StateError: a file marked ``STOP`` does not parse, or any file cannot be read; the
            message names each such file and what to do.
    """
    state_dir = Path(state_dir)
    stops: list[str] = []
    corrupt: list[tuple[StateFile, Path, str]] = []
    for spec in files:
        path = state_dir / spec.name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            stops.append(
                f"cannot read {path} ({exc.strerror}); make it readable for the daemon's user (mode 0600)"
            )
            continue
        try:
            spec.parse(path, data)
        except StateError as exc:
            if spec.on_corrupt is OnCorrupt.STOP:
                stops.append(str(exc))
            else:
                corrupt.append((spec, path, str(exc)))
    if stops:
        raise StateError("; and ".join(stops) if len(stops) > 1 else stops[0])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    moved = []
    for spec, path, problem in corrupt:
        aside = _free_name(path.with_name(f"{path.name}.corrupt-{stamp}"))
        try:
            os.replace(path, aside)
        except OSError as exc:
            raise StateError(
                f"{problem}; and it cannot be moved aside to {aside} ({exc.strerror}): make the "
                "state directory writable for the daemon's user, or remove the file"
            ) from None
        moved.append(MovedAside(path, aside, problem, spec.if_lost))
    return tuple(moved)


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... when a file of that name exists (bounded)."""
    for n in range(1, 100):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        if not candidate.exists():
            return candidate
    return path


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _as_time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError
    return float(value)


def _json_bytes(value: object) -> bytes:
    return (json.dumps(value, indent=1) + "\n").encode("utf-8")


def _match_directory_owner(path: Path) -> None:
    """When root writes into a directory owned by the daemon's user, give the file to that user.

    So ``dvrlinkd pairing-code`` run as root before the first start does not leave files the
    daemon cannot read.
    """
    if os.geteuid() != 0:
        return
    st = path.parent.stat()
    if st.st_uid != 0:
        os.chown(path, st.st_uid, st.st_gid)
