"""Settings from the serial console into the config file: checked first, written atomically.

``save_settings`` reads the config file, checks the whole file as it would be with the changes
(the same ``parse_config`` the daemon starts with), edits only the lines of the changed keys
(comments and layout stay), checks the edited text once more, and replaces the file with
``atomic_write``: a power cut or a pulled cable leaves the old file or the new one, never half.
A value the daemon would refuse changes nothing.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from dvrlink.daemon.config import DaemonConfig, parse_config
from dvrlink.daemon.console import SettingChanges
from dvrlink.daemon.errors import ConfigError
from dvrlink.store.files import atomic_write
from dvrlink.store.toml_text import toml_value

PLACES = {
    "broker_host": ("broker", "host"),
    "broker_port": ("broker", "port"),
    "broker_public_key": ("broker", "public_key"),
    "apn": ("modem", "apn"),
}
"""Where each console setting lives in the config file: (section, key)."""


class SettingsRefused(Exception):
    """The settings were not saved; ``code`` is ``bad_value`` (the value would not load) or
    ``write_failed`` (the file could not be read or replaced). The file is unchanged."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Saved:
    """Settings saved to ``file``: the new config, and each key whose value changed."""

    file: Path
    config: DaemonConfig
    changed: dict[str, object]


def save_settings(source: Path, changes: SettingChanges) -> Saved:
    """Check ``changes`` against the file at ``source`` and write them into it atomically.

    Raises:
        SettingsRefused: a value the config would refuse (``bad_value``, the config's own
            message), or the file cannot be read, edited safely or written (``write_failed``).
    """
    try:
        raw = source.read_bytes()
        text = raw.decode("utf-8")
        document = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsRefused("write_failed", f"cannot read {source} ({exc}); fix the file by hand") from None
    wanted = changes.as_dict()
    if "apn" in wanted and not isinstance(wanted["apn"], str):
        raise SettingsRefused("bad_value", "the APN must be text")
    updated = {name: dict(table) if isinstance(table, dict) else table for name, table in document.items()}
    changed: dict[str, object] = {}
    for name, value in wanted.items():
        section, key = PLACES[name]
        table = updated.setdefault(section, {})
        if not isinstance(table, dict):
            raise SettingsRefused(
                "write_failed", f"{source}: {section} is not a section; fix the file by hand"
            )
        if table.get(key) != value:
            changed[name] = value
        table[key] = value
    try:
        config = parse_config(updated, source)
    except ConfigError as exc:
        raise SettingsRefused("bad_value", str(exc)) from None
    if not changed:
        return Saved(source, config, {})
    new_text = text
    for name, value in changed.items():
        section, key = PLACES[name]
        new_text = set_key(new_text, section, key, toml_value(value))
    try:
        check = parse_config(tomllib.loads(new_text), source)
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise SettingsRefused(
            "write_failed", f"cannot edit {source} safely ({exc}); set the values there by hand"
        ) from None
    if check != config:
        raise SettingsRefused(
            "write_failed",
            f"cannot edit {source} safely (the key is written in a form this editor does not change); "
            "set the values there by hand",
        )
    try:
        mode = source.stat().st_mode & 0o777
        atomic_write(source, new_text.encode("utf-8"), mode=mode)
    except OSError as exc:
        raise SettingsRefused("write_failed", f"{exc}; nothing was changed") from None
    return Saved(source, config, changed)


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?$")


def set_key(text: str, section: str, key: str, value: str) -> str:
    """``text`` (a TOML file) with ``key = value`` in ``[section]``: the key's line replaced when
    it is there (uncommented), else the line added under the section header, else the section
    added at the end. ``value`` is already TOML (``toml_value``)."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    key_line = re.compile(rf"^\s*{re.escape(key)}\s*=")
    current: str | None = None
    header_at: int | None = None
    for index, line in enumerate(lines):
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            if current == section:
                header_at = index
            continue
        if current == section and key_line.match(line):
            lines[index] = f"{key} = {value}{newline}"
            return "".join(lines)
    if header_at is not None:
        lines.insert(header_at + 1, f"{key} = {value}{newline}")
        return "".join(lines)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += newline
    lines.append(f"{newline}[{section}]{newline}{key} = {value}{newline}")
    return "".join(lines)
