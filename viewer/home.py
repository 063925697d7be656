"""The viewer's home directory: the login, the viewer key and the device keys pinned at pairing.

Files, all mode 0600 and written atomically (a crash leaves the old file or the new one):

- ``viewer.json``: broker URL, CA file, user name, token and its expiry (unix seconds).
- ``viewer_key.pem``: the viewer's Ed25519 key (PKCS#8 PEM), created at the first login. Devices
  pin its public half at pairing, so losing it means pairing again.
- ``pins.json``: serial -> ``{"public_key": b64, "fingerprint": ..., "paired_at": unix s}``, the
  device keys this computer pinned when it paired them.

A malformed file is reported with its path and the next step; it is never replaced silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.protocol.identity import (
    b64decode_key,
    b64encode_key,
    ed25519_private_from_pem,
    fingerprint,
    private_key_to_pem,
    validate_serial,
)
from dvrlink.store.files import atomic_write
from dvrlink.viewer.errors import EXIT_CONFIG, ViewerError, toml_value

_T = TypeVar("_T")

HOME_ENV = "DVRLINK_HOME"
DEFAULT_HOME = Path("~/.config/dvrlink")
LOGIN_FILE = "viewer.json"
KEY_FILE = "viewer_key.pem"
PINS_FILE = "pins.json"


def resolve_home(option: str | None, environ: Mapping[str, str]) -> Path:
    """Return the home directory: ``--home``, else ``$DVRLINK_HOME``, else ``~/.config/dvrlink``.

    Never raises; the directory need not exist yet.
    """
    if option:
        return Path(option).expanduser()
    from_env = environ.get(HOME_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return DEFAULT_HOME.expanduser()


@dataclass(frozen=True, slots=True)
class Login:
    """What ``viewer.json`` holds after ``dvrlink login``."""

    broker: str  # base URL, e.g. https://broker.example:8443
    cacert: str | None  # CA file that signs the broker's certificate; None = the system store
    username: str
    token: str
    expires_at: float  # unix s
    other_brokers: tuple[str, ...] = ()
    """More base URLs of the same fleet (``dvrlink login --broker A --broker B``), tried in turn
    when ``broker`` cannot be reached."""

    @property
    def brokers(self) -> tuple[str, ...]:
        """Every broker URL of the login, the first one first."""
        return (self.broker, *self.other_brokers)


@dataclass(frozen=True, slots=True)
class Pin:
    """A device key pinned at pairing."""

    public_key: bytes  # raw Ed25519, 32 bytes
    fingerprint: str
    paired_at: float  # unix s


class ViewerHome:
    """Reads and writes the files in one home directory.

    Every method raises ``ViewerError`` for an unreadable or malformed file (exit code 78,
    EX_CONFIG) or one that cannot be written (exit code 1); the message names the file and what
    to do.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def login_path(self) -> Path:
        return self.path / LOGIN_FILE

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def pins_path(self) -> Path:
        return self.path / PINS_FILE

    # -- viewer.json ------------------------------------------------------------------------------

    def load_login(self) -> Login | None:
        """Return the stored login, or None if ``viewer.json`` does not exist.

        Raises:
            ViewerError: the file cannot be read or is malformed.
        """
        data = self._read_json(self.login_path, _LOGIN_FIX)
        if data is None:
            return None
        path = self.login_path
        if not isinstance(data, dict):
            raise _malformed(path, "it is not a JSON object", _LOGIN_FIX)
        broker = _field(data, "broker", str, path, _LOGIN_FIX)
        cacert = data.get("cacert")
        if cacert is not None and not isinstance(cacert, str):
            raise _malformed(path, 'field "cacert" is not a string or null', _LOGIN_FIX)
        username = _field(data, "username", str, path, _LOGIN_FIX)
        token = _field(data, "token", str, path, _LOGIN_FIX)
        expires_at = _number(data, "expires_at", path, _LOGIN_FIX)
        others = data.get("other_brokers", [])
        if not isinstance(others, list) or not all(isinstance(u, str) and u for u in others):
            raise _malformed(path, 'field "other_brokers" is not a list of URLs', _LOGIN_FIX)
        return Login(broker, cacert, username, token, expires_at, tuple(others))

    def save_login(self, login: Login) -> None:
        """Write ``viewer.json`` (mode 0600, atomically).

        Raises:
            ViewerError: the directory cannot be created or written, or the existing file is
                malformed (it is left alone so that its owner can look at it).
        """
        self.load_login()  # refuse to replace a malformed file silently
        body: dict[str, object] = {
            "broker": login.broker,
            "cacert": login.cacert,
            "username": login.username,
            "token": login.token,
            "expires_at": login.expires_at,
        }
        if login.other_brokers:
            body["other_brokers"] = list(login.other_brokers)
        self._write(self.login_path, _dump(body))

    def forget_login(self) -> Login | None:
        """Remove ``viewer.json`` (``dvrlink logout``); returns what it held, or None if there was
        no login. The viewer key and the pins stay.

        Raises:
            ViewerError: the file is malformed (left alone), or cannot be removed.
        """
        login = self.load_login()
        if login is None:
            return None
        try:
            self.login_path.unlink()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ViewerError(f"cannot remove {self.login_path}: {exc.strerror or exc}") from exc
        return login

    # -- viewer_key.pem ---------------------------------------------------------------------------

    def load_key(self) -> Ed25519PrivateKey | None:
        """Return the viewer key, or None if ``viewer_key.pem`` does not exist.

        Raises:
            ViewerError: the file cannot be read or is not an Ed25519 PEM key.
        """
        self._check_directory()
        try:
            data = self.key_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _unreadable(self.key_path, exc) from exc
        try:
            return ed25519_private_from_pem(data, str(self.key_path))
        except ValueError as exc:
            raise ViewerError(
                f"{self.key_path} is not a readable Ed25519 key ({_key_problem(exc)}): restore it "
                "from a backup, or remove it and run `dvrlink login` to make a new one "
                "(devices paired with the old key must then be paired again)",
                EXIT_CONFIG,
            ) from exc

    def load_or_create_key(self) -> tuple[Ed25519PrivateKey, bool]:
        """Return ``(key, created)``: the viewer key, made and stored (0600) if it was missing.

        Raises:
            ViewerError: the existing file is unreadable or malformed (never replaced), or the
                new file cannot be written.
        """
        key = self.load_key()
        if key is not None:
            return key, False
        key = Ed25519PrivateKey.generate()
        self._write(self.key_path, private_key_to_pem(key))
        return key, True

    # -- pins.json --------------------------------------------------------------------------------

    def load_pins(self) -> dict[str, Pin]:
        """Return the pinned device keys by serial (empty if ``pins.json`` does not exist).

        Raises:
            ViewerError: the file cannot be read or is malformed, including a fingerprint that
                does not match its key.
        """
        data = self._read_json(self.pins_path, _PINS_FIX)
        if data is None:
            return {}
        path = self.pins_path
        if not isinstance(data, dict):
            raise _malformed(path, "it is not a JSON object of serial -> pin", _PINS_FIX)
        pins: dict[str, Pin] = {}
        for serial, entry in data.items():
            try:
                validate_serial(serial)
            except ValueError as exc:
                raise _malformed(path, str(exc), _PINS_FIX) from exc
            if not isinstance(entry, dict):
                raise _malformed(path, f"the entry for {serial} is not a JSON object", _PINS_FIX)
            try:
                key = b64decode_key(
                    _field(entry, "public_key", str, path, _PINS_FIX), f"public_key of {serial}"
                )
            except ValueError as exc:
                raise _malformed(path, str(exc), _PINS_FIX) from exc
            fp = _field(entry, "fingerprint", str, path, _PINS_FIX)
            if fp != fingerprint(key):
                raise _malformed(
                    path, f"the fingerprint of {serial} does not match its public key", _PINS_FIX
                )
            pins[serial] = Pin(key, fp, _number(entry, "paired_at", path, _PINS_FIX))
        return pins

    def save_pin(self, serial: str, pin: Pin) -> None:
        """Add or replace the pin of ``serial`` in ``pins.json`` (mode 0600, atomically).

        Raises:
            ViewerError: the existing file is unreadable or malformed (it is left alone), or the
                new file cannot be written.
        """
        pins = self.load_pins()
        pins[serial] = pin
        self._write_pins(pins)

    def _write_pins(self, pins: Mapping[str, Pin]) -> None:
        body = {
            s: {
                "public_key": b64encode_key(p.public_key),
                "fingerprint": p.fingerprint,
                "paired_at": p.paired_at,
            }
            for s, p in sorted(pins.items())
        }
        self._write(self.pins_path, _dump(body))

    def remove_pin(self, serial: str) -> bool:
        """Forget the pin of ``serial`` (``dvrlink unpair``); False if there was none.

        Raises:
            ViewerError: the existing file is unreadable or malformed (it is left alone), or the
                new file cannot be written.
        """
        pins = self.load_pins()
        if pins.pop(serial, None) is None:
            return False
        self._write_pins(pins)
        return True

    # -- helpers ----------------------------------------------------------------------------------

    def _check_directory(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ViewerError(
                f"the dvrlink home {self.path} is not a directory: choose another with --home DIR "
                "or $DVRLINK_HOME",
                EXIT_CONFIG,
            )

    def _read_json(self, path: Path, fix: str) -> Any:
        self._check_directory()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            raise _malformed(path, "it is not UTF-8 text", fix) from exc
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise _malformed(path, f"not valid JSON: {exc}", fix) from exc

    def _write(self, path: Path, data: bytes) -> None:
        self._check_directory()
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(path, data, mode=0o600)
        except OSError as exc:
            raise ViewerError(
                f"cannot write {path}: {exc.strerror or exc}; check that {self.path} is a "
                "writable directory, or choose another with --home DIR"
            ) from exc


_LOGIN_FIX = "fix it, or remove it and run `dvrlink login --broker URL --user NAME` again"
_PINS_FIX = (
    "restore it from a backup or fix it by hand; removing it forgets the device keys pinned at "
    "pairing, and you must then pair your devices again"
)


def _dump(body: object) -> bytes:
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _malformed(path: Path, what: str, fix: str) -> ViewerError:
    return ViewerError(f"{path} is malformed ({what}): {fix}", EXIT_CONFIG)


def _unreadable(path: Path, exc: OSError) -> ViewerError:
    return ViewerError(f"cannot read {path}: {exc.strerror or exc}; check its permissions", EXIT_CONFIG)


def _key_problem(exc: ValueError) -> str:
    cause = exc.__cause__
    if cause is not None:  # the PEM parser's own words
        return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    return str(exc)


def _field(data: Mapping[str, Any], name: str, kind: type[_T], path: Path, fix: str) -> _T:
    value = data.get(name)
    if not isinstance(value, kind) or value == "":
        raise _malformed(path, f"field {toml_value(name)} is missing or not a {kind.__name__}", fix)
    return value


def _number(data: Mapping[str, Any], name: str, path: Path, fix: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _malformed(path, f"field {toml_value(name)} is missing or not a number", fix)
    return float(value)
