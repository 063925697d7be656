"""Broker configuration: one frozen dataclass, loaded from TOML and checked once at start.

Example ``broker.toml`` (every key is optional except ``state_dir``; relative paths are taken
from the directory that holds the file)::

    state_dir = "/var/lib/dvrlink-broker"   # registry, keys, self-signed certificate, broker.json
    udp_host = "0.0.0.0"                    # presence and STUN
    udp_port = 3478                         # 0 = pick a free port (see broker.json)
    https_host = "0.0.0.0"                  # viewer API
    https_port = 8443                       # 0 = pick a free port
    # tls_cert = "/etc/dvrlink/broker.crt"  # both or neither; default: self-signed in state_dir
    # tls_key = "/etc/dvrlink/broker.key"
    server_names = ["broker.example.net"]   # added to the self-signed certificate
    token_lifetime_s = 2592000              # 30 days
    manifest_only = false                   # true: only serials from the factory manifest register
    pairing_max_failures = 5                # wrong pairing codes per device and window ...
    pairing_window_s = 3600                 # ... before the broker stops forwarding attempts
    invite_ttl_s = 15                       # how long a pairing request waits for the device
    login_max_failures = 10                 # wrong passwords per username and address ...
    login_window_s = 300                    # ... before logins are refused for a while
    log_level = "INFO"
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A configuration file or value is unusable; the message names the file, the key, what was
    seen and what to do."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything ``dvrlink-broker serve`` needs; build it with :func:`load_config`."""

    state_dir: Path
    """Directory for the registry (SQLite), the broker's keys, the certificate and broker.json."""
    udp_host: str = "0.0.0.0"
    """IP literal to bind the presence/STUN UDP socket to."""
    udp_port: int = 3478
    """UDP port; 0 picks a free port (written to broker.json)."""
    https_host: str = "0.0.0.0"
    """IP literal to bind the HTTPS viewer API to."""
    https_port: int = 8443
    """TCP port; 0 picks a free port (written to broker.json)."""
    tls_cert: Path | None = None
    """PEM certificate chain for the API; None = self-signed certificate in state_dir."""
    tls_key: Path | None = None
    """PEM private key for ``tls_cert``; given together with it."""
    server_names: tuple[str, ...] = ()
    """DNS names or IP literals added to the self-signed certificate's subjectAltName."""
    token_lifetime_s: float = 30 * 86400.0
    """Seconds an API token stays valid."""
    manifest_only: bool = False
    """False: a serial is bound to the key of its first registration. True: only serials loaded
    from the factory manifest may register."""
    pairing_max_failures: int = 5
    """Wrong pairing codes per device within ``pairing_window_s`` before attempts are refused."""
    pairing_window_s: float = 3600.0
    """Seconds of the sliding window for ``pairing_max_failures``."""
    invite_ttl_s: float = 15.0
    """Seconds a pairing request waits for the device's answer before 504."""
    login_max_failures: int = 10
    """Wrong passwords per (username, client address) within ``login_window_s`` before 429."""
    login_window_s: float = 300.0
    """Seconds of the sliding window for ``login_max_failures``."""
    log_level: str = "INFO"
    """One of DEBUG, INFO, WARNING, ERROR, CRITICAL."""

    @property
    def log_level_number(self) -> int:
        """The ``logging`` level number of ``log_level``."""
        return int(logging.getLevelName(self.log_level))


_FIELDS = {f.name: f for f in dataclasses.fields(BrokerConfig)}
_INT_LIMITS = {
    "udp_port": (0, 65535),
    "https_port": (0, 65535),
    "pairing_max_failures": (1, 1_000_000),
    "login_max_failures": (1, 1_000_000),
}
_DURATION_LIMITS = {
    "token_lifetime_s": (60.0, 10 * 365 * 86400.0),
    "pairing_window_s": (1.0, 30 * 86400.0),
    "invite_ttl_s": (1.0, 300.0),
    "login_window_s": (1.0, 86400.0),
}


def load_config(path: Path, overrides: Mapping[str, object] | None = None) -> BrokerConfig:
    """Read and check a TOML configuration file; ``overrides`` (from the command line) win.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML, or a key is unknown, of the
            wrong type or out of range; the message names the file and the key.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such configuration file; create it (state_dir is the only required key) "
            "or run with --state-dir DIR"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot read the configuration file ({exc}); check its permissions"
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from exc
    merged: dict[str, object] = dict(data)
    merged.update(overrides or {})
    return config_from_mapping(merged, source=str(path), base_dir=path.parent)


def config_from_mapping(
    data: Mapping[str, object], source: str, base_dir: Path | None = None
) -> BrokerConfig:
    """Check ``data`` (keys as in the TOML file) and build a :class:`BrokerConfig`.

    ``source`` names where the values came from in error messages; relative paths are taken
    from ``base_dir`` (default: the current directory).

    Raises:
        ConfigError: a key is unknown, missing, of the wrong type or out of range.
    """
    base = base_dir if base_dir is not None else Path.cwd()
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        known = ", ".join(_FIELDS)
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; remove it or use one of: {known}")
    if "state_dir" not in data:
        raise ConfigError(
            f"{source}: key 'state_dir' is missing; set it to a writable directory for the registry "
            'and keys, e.g. state_dir = "/var/lib/dvrlink-broker"'
        )
    values: dict[str, object] = {}
    for name, raw in data.items():
        values[name] = _check(name, raw, source, base)
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        raise ConfigError(
            f"{source}: 'tls_cert' and 'tls_key' go together; set both, or neither to use a "
            "self-signed certificate in state_dir"
        )
    return BrokerConfig(**values)  # type: ignore[arg-type]


def _check(name: str, raw: object, source: str, base: Path) -> object:
    where = f"{source}: key {name!r}"
    if name in ("state_dir", "tls_cert", "tls_key"):
        if not isinstance(raw, str | Path) or not str(raw):
            raise ConfigError(f"{where} must be a path string, got {raw!r}")
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (base / p)
    if name in ("udp_host", "https_host"):
        if not isinstance(raw, str):
            raise ConfigError(f'{where} must be an IP literal string such as "0.0.0.0" or "::", got {raw!r}')
        try:
            ipaddress.ip_address(raw)
        except ValueError:
            raise ConfigError(
                f'{where} is {raw!r}, not an IP address; use "0.0.0.0" for all IPv4 interfaces, '
                '"::" for all IPv6 ones, or one local address'
            ) from None
        return raw
    if name in _INT_LIMITS:
        lo, hi = _INT_LIMITS[name]
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{where} must be an integer from {lo} to {hi}, got {raw!r}")
        if not lo <= raw <= hi:
            raise ConfigError(f"{where} is {raw}, out of range; use an integer from {lo} to {hi}")
        return raw
    if name in _DURATION_LIMITS:
        lo_f, hi_f = _DURATION_LIMITS[name]
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(f"{where} must be a number of seconds from {lo_f:g} to {hi_f:g}, got {raw!r}")
        if not lo_f <= raw <= hi_f:
            raise ConfigError(f"{where} is {raw} s, out of range; use {lo_f:g} to {hi_f:g} seconds")
        return float(raw)
    if name == "manifest_only":
        if not isinstance(raw, bool):
            raise ConfigError(f"{where} must be true or false, got {raw!r}")
        return raw
    if name == "server_names":
        if not isinstance(raw, list | tuple) or not all(isinstance(n, str) and n for n in raw):
            raise ConfigError(
                f"{where} must be a list of host names or IP literals, "
                f'e.g. ["broker.example.net"], got {raw!r}'
            )
        return tuple(raw)
    if name == "log_level":
        if not isinstance(raw, str) or raw.upper() not in LOG_LEVELS:
            raise ConfigError(f"{where} is {raw!r}; use one of {', '.join(LOG_LEVELS)}")
        return raw.upper()
    raise AssertionError(f"no check for configuration key {name}")  # pragma: no cover
