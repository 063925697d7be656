"""Files in the broker's state directory: the static presence key and ``broker.json``.

``broker.json`` is written once the sockets are bound, so scripts and tests learn the actual
ports (the config may say 0), the key devices must pin, and which certificate to trust::

    {"udp_port": 3478, "https_port": 8443, "public_key": "<base64 X25519>", "pid": 1234,
     "cert": "/var/lib/dvrlink-broker/tls_cert.pem", "turn_udp_port": 3479, "turn_tcp_port": 3479,
     "listening": {"presence+stun/udp": "0.0.0.0:3478", "presence/tcp": "0.0.0.0:443",
                   "https": "0.0.0.0:8443", "turn/udp": "0.0.0.0:3479", "turn/tcp": "0.0.0.0:3479"}}

(the TURN ports are null when the built-in relay is off; ``listening`` names every socket the
broker accepts on, including the RFC 5780 alternates). The TURN REST secret lives in
``turn_secret`` (mode 0600) unless the configuration names another file.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.protocol.identity import (
    b64decode_key,
    b64encode_key,
    private_key_to_pem,
    x25519_private_from_pem,
    x25519_public_bytes,
)
from dvrlink.store.files import atomic_write

KEY_FILE = "broker_key.pem"
INFO_FILE = "broker.json"
REGISTRY_FILE = "registry.sqlite3"


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """What a running broker publishes in ``broker.json``."""

    udp_port: int
    https_port: int
    public_key: bytes  # raw X25519 static key devices pin
    pid: int
    cert: Path  # the certificate a viewer should trust for the API
    turn_udp_port: int | None = None  # built-in TURN relay, None when it is off
    turn_tcp_port: int | None = None
    listening: tuple[tuple[str, str], ...] = ()
    """(what, "host:port") of every listening socket, in the order they were bound."""

    def to_json(self) -> bytes:
        """The file's content."""
        doc = {
            "udp_port": self.udp_port,
            "https_port": self.https_port,
            "public_key": b64encode_key(self.public_key),
            "pid": self.pid,
            "cert": str(self.cert),
            "turn_udp_port": self.turn_udp_port,
            "turn_tcp_port": self.turn_tcp_port,
            "listening": dict(self.listening),
        }
        return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


class MissingStateError(Exception):
    """A command that only reads the broker's state found none where it looked (a mistyped
    ``--state-dir``, or a broker that never ran); the message names the path and what to do."""


def require_state_dir(state_dir: Path) -> None:
    """Check that ``state_dir`` exists, creating nothing.

    Raises:
        MissingStateError: it does not exist (or is not a directory).
    """
    if not state_dir.is_dir():
        raise MissingStateError(
            f"state directory {state_dir} does not exist: check --state-dir (or state_dir in the "
            "configuration); `dvrlink-broker serve` creates it at its first start"
        )


def read_static_public_key(state_dir: Path) -> bytes:
    """Raw public half of the broker's static key, read from ``state_dir``; nothing is created.

    Raises:
        MissingStateError: the directory or the key file does not exist.
        ValueError: the file is not an X25519 PEM key (the message names it).
        OSError: the file cannot be read.
    """
    require_state_dir(state_dir)
    path = state_dir / KEY_FILE
    if not path.exists():
        raise MissingStateError(
            f"no broker key {path}: the broker makes it at its first start (`dvrlink-broker serve`); "
            "check --state-dir, or restore the file from a backup (devices pin its public key)"
        )
    return x25519_public_bytes(load_or_create_static_key(state_dir))


def ensure_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` (mode 0700) if it is missing.

    Raises:
        OSError: it cannot be created; the message names it.
    """
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot create state directory {state_dir}: {exc.strerror}; create it or fix state_dir",
        ) from exc


def load_or_create_static_key(state_dir: Path) -> X25519PrivateKey:
    """The broker's static X25519 key from ``state_dir/broker_key.pem``, made (mode 0600) if missing.

    Two processes that start at once end up with the same key: the file is created with a
    hard link, which fails if another process got there first, and then that file is read.

    Raises:
        ValueError: the file exists but is not an X25519 PEM key (the message names it).
        OSError: ``state_dir`` is not writable.
    """
    path = state_dir / KEY_FILE
    if not path.exists():
        _create_exclusive(path, private_key_to_pem(X25519PrivateKey.generate()))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot read {path}: {exc.strerror}; check its owner and mode (0600)"
        ) from exc
    try:
        return x25519_private_from_pem(data, str(path))
    except ValueError as exc:
        raise ValueError(
            f"{exc}; restore it from a backup (devices pin its public key), or move it away to make a new "
            "one and reconfigure every device with `dvrlink-broker show-key`"
        ) from exc


def _create_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) with ``data`` unless it exists; a concurrent creator wins."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.new"
    atomic_write(tmp, data, mode=0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_or_create_turn_secret(path: Path) -> str:
    """The TURN REST secret in ``path`` (surrounding whitespace dropped); a random one is written
    (mode 0600, atomically) if the file is missing.

    Raises:
        OSError: the file cannot be read or created; the message names it.
        ValueError: the file is empty or not UTF-8 text.
    """
    try:
        if not path.exists():
            _create_exclusive(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"))
        data = path.read_bytes()
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot read or create TURN secret {path}: {exc.strerror}; check its folder and mode"
        ) from exc
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        secret = ""
    if not secret:
        raise ValueError(
            f"TURN secret file {path} is empty or not UTF-8 text; put the shared secret in it "
            "(coturn: static-auth-secret), or remove it to have a random one made"
        )
    return secret


def _optional_port(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"not a port: {value!r}")
    return value


def static_public_key(state_dir: Path) -> bytes:
    """Raw public half of the broker's static key (made if missing, see ``load_or_create_static_key``)."""
    return x25519_public_bytes(load_or_create_static_key(state_dir))


def write_info(state_dir: Path, info: BrokerInfo) -> None:
    """Write ``broker.json`` atomically (mode 0644)."""
    atomic_write(state_dir / INFO_FILE, info.to_json(), mode=0o644)


def remove_info(state_dir: Path, pid: int) -> None:
    """Remove ``broker.json`` if it was written by ``pid`` (at clean shutdown or before start)."""
    path = state_dir / INFO_FILE
    try:
        current = read_info(state_dir)
    except (OSError, ValueError):
        return
    if current.pid == pid:
        path.unlink(missing_ok=True)


def read_info(state_dir: Path) -> BrokerInfo:
    """Read a running broker's ``broker.json``.

    Raises:
        FileNotFoundError: the broker has not finished starting (or is not running).
        ValueError: the file is not what a broker writes.
    """
    path = state_dir / INFO_FILE
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
        return BrokerInfo(
            udp_port=int(doc["udp_port"]),
            https_port=int(doc["https_port"]),
            public_key=b64decode_key(str(doc["public_key"]), f"{path}: public_key"),
            pid=int(doc["pid"]),
            cert=Path(doc["cert"]),
            turn_udp_port=_optional_port(doc.get("turn_udp_port")),
            turn_tcp_port=_optional_port(doc.get("turn_tcp_port")),
            listening=tuple((str(k), str(v)) for k, v in dict(doc.get("listening", {})).items()),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a broker info file ({exc!r})") from exc
