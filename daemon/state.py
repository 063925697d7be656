"""The device's state directory: its key, its pairing secret, paired viewers, pairing failures.

Files (all mode 0600, written atomically):

- ``device_key.pem``: Ed25519 private key (PKCS#8 PEM), created on first start.
- ``pairing_secret``: the pairing code (16 base32 characters), created on first start.
- ``viewers.json``: viewers paired to this device, ``[{"public_key", "account", "paired_at"}]``.
- ``pairing_failures.json``: unix times of recent wrong pairing codes.

A file that exists but cannot be read is an error that names it and says what to do; it is
never replaced, since replacing the key would change the device's identity.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.daemon.files import atomic_write
from dvrlink.protocol.identity import (
    b64decode_key,
    b64encode_key,
    ed25519_private_from_pem,
    private_key_to_pem,
)
from dvrlink.protocol.pairing import generate_pairing_secret, normalize_code

DEVICE_KEY_FILE = "device_key.pem"
PAIRING_SECRET_FILE = "pairing_secret"  # noqa: S105 (a file name)
VIEWERS_FILE = "viewers.json"
PAIRING_FAILURES_FILE = "pairing_failures.json"


class StateError(Exception):
    """A state file or the state directory cannot be used; the message names it and says what to do."""


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

    def device_key(self) -> Ed25519PrivateKey:
        """Load the device key, creating it (and the state directory) on first use.

        Raises:
            StateError: the key file exists but is not an Ed25519 PEM key, or the directory
                or file cannot be read or written.
        """
        path = self.state_dir / DEVICE_KEY_FILE
        with self._creation_lock():
            if not path.exists():
                key = Ed25519PrivateKey.generate()
                self._write(path, private_key_to_pem(key))
                return key
            data = self._read(path)
        try:
            return ed25519_private_from_pem(data, str(path))
        except ValueError as exc:
            raise StateError(str(exc)) from None

    def pairing_secret(self) -> str:
        """Load the pairing secret, creating it on first use.

        Raises:
            StateError: the file exists but does not hold a pairing code, or cannot be read or
                written.
        """
        path = self.state_dir / PAIRING_SECRET_FILE
        with self._creation_lock():
            if not path.exists():
                secret = generate_pairing_secret(self._rng)
                self._write(path, secret.encode("ascii") + b"\n")
                return secret
            data = self._read(path)
        try:
            return normalize_code(data.decode("ascii", errors="replace").strip())
        except ValueError:
            raise StateError(
                f"{path} does not hold a pairing code (16 characters of A-Z and 2-7); restore it "
                "from a backup, or remove it to make a new code (print it with `dvrlinkd pairing-code` "
                "and update the device label)"
            ) from None

    # --- viewers -----------------------------------------------------------------------------

    def viewers(self) -> list[Viewer]:
        """The paired viewers (empty when the file does not exist yet).

        Raises:
            StateError: the file is unreadable or malformed; it is left as it is.
        """
        path = self.state_dir / VIEWERS_FILE
        items = self._load_json(path, [])
        shape = 'a list of {"public_key": base64, "account": text, "paired_at": unix time}'
        if not isinstance(items, list):
            raise self._malformed(path, shape)
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
                raise self._malformed(path, shape) from None
        return viewers

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

    # --- pairing failures --------------------------------------------------------------------

    def pairing_failures(self) -> list[float]:
        """Unix times of recorded wrong pairing codes (empty when the file does not exist yet).

        Raises:
            StateError: the file is unreadable or malformed; it is left as it is.
        """
        path = self.state_dir / PAIRING_FAILURES_FILE
        items = self._load_json(path, [])
        try:
            if not isinstance(items, list):
                raise TypeError
            return [_as_time(t) for t in items]
        except (TypeError, ValueError):
            raise self._malformed(path, "a list of unix times") from None

    def save_pairing_failures(self, failures: Sequence[float]) -> None:
        """Replace the recorded wrong-code times.

        Raises:
            StateError: the file cannot be written.
        """
        self._write(self.state_dir / PAIRING_FAILURES_FILE, _json_bytes(list(failures)))

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

    def _load_json(self, path: Path, missing: object) -> object:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return missing
        except OSError as exc:
            raise StateError(f"cannot read {path} ({exc.strerror}); check its owner and mode") from None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateError(
                f"{path} is not valid JSON ({exc}); repair it or restore it from a backup "
                "(the daemon leaves it untouched)"
            ) from None

    @staticmethod
    def _malformed(path: Path, shape: str) -> StateError:
        return StateError(
            f"{path} is valid JSON but not {shape}; repair it or restore it from a backup "
            "(the daemon leaves it untouched)"
        )


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
