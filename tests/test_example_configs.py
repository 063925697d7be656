"""The example configs list every key with its default, and load: tied to the config schemas.

Each program's example (``daemon/dvrlinkd.example.toml``, ``broker/dvrlink-broker.example.toml``)
must name every field of every config section, commented (``# key = value``) or not, and at
least one of its lines for a key must hold the default: loading that line alone gives the same
config as leaving the key out. A field the file cannot set is listed below with the reason, and
the loader must refuse it as a key. So a new key cannot be left out of an example again.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvrlink.broker.config import BrokerConfig as BrokerServerConfig
from dvrlink.broker.config import ConfigError as BrokerConfigError
from dvrlink.broker.config import config_from_mapping
from dvrlink.broker.config import load_config as load_broker_config
from dvrlink.daemon.config import DaemonConfig, load_config, parse_config
from dvrlink.daemon.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DAEMON_EXAMPLE = ROOT / "daemon" / "dvrlinkd.example.toml"
BROKER_EXAMPLE = ROOT / "broker" / "dvrlink-broker.example.toml"
PLACEHOLDER = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
KEY_B64 = base64.b64encode(bytes(range(1, 33))).decode()
DAEMON_MINIMAL = {
    "device": {"serial": "DL-0001-0002"},
    "broker": {"host": "127.0.0.1", "public_key": KEY_B64},
}

SPELLED_AS = {("services", "forward_allow"): "forward"}
"""Fields the file spells otherwise."""
ARRAYS = ("capture", "alarm_inputs", "relays")
"""Sections written as arrays of tables ([[capture]], [[alarm_input]], [[relay]]): the example
shows commented tables, which ``test_daemon_example_capture_table_loads`` and
``test_daemon_example_board_tables_load`` check."""
NOT_KEYS = {("services", "max_rpc_request_bytes"): "a protocol bound, not a setting"}
"""Fields the file cannot set, and why (the loader must refuse each as a key)."""


@dataclasses.dataclass(frozen=True)
class Line:
    section: str
    key: str
    value: object
    commented: bool
    number: int


def example_lines(path: Path) -> Iterator[Line]:
    """Every ``key = value`` line of a TOML example, commented (``# key = value``) or not.

    A commented value may run over several commented lines (``# turn_servers = [`` ... ``# ]``).
    """
    lines = path.read_text().splitlines()
    section = ""
    i = 0
    while i < len(lines):
        text = lines[i]
        header = re.fullmatch(r"\[([a-z_]+)\]\s*", text)
        if header:
            section = header.group(1)
        match = re.fullmatch(r"(# ?)?([a-z][a-z0-9_]*) = (.+)", text)
        if match:
            commented, key, value_text = bool(match.group(1)), match.group(2), match.group(3)
            start = i
            while True:
                try:
                    value = tomllib.loads(f"v = {value_text}")["v"]
                    break
                except tomllib.TOMLDecodeError:
                    i += 1
                    if not commented or i >= len(lines) or not lines[i].startswith("#"):
                        raise AssertionError(f"{path}:{start + 1}: not a TOML value: {text}") from None
                    value_text += "\n" + lines[i].lstrip("#")
            yield Line(section, key, value, commented, start + 1)
        i += 1


def daemon_fields() -> Iterator[tuple[str, dataclasses.Field[object]]]:
    """(section, field) for every field of every section of the daemon's config."""
    hints = typing.get_type_hints(DaemonConfig)
    for section in dataclasses.fields(DaemonConfig):
        if section.name in ("source", *ARRAYS):
            continue
        for f in dataclasses.fields(hints[section.name]):
            yield section.name, f


def daemon_load(document: dict[str, dict[str, object]]) -> DaemonConfig:
    return parse_config(document, Path("/etc/dvrlink/dvrlinkd.toml"))


def with_key(section: str, key: str, value: object) -> dict[str, dict[str, object]]:
    document = {name: dict(table) for name, table in DAEMON_MINIMAL.items()}
    document.setdefault(section, {})[key] = value
    return document


def test_daemon_example_lists_every_key_with_its_default() -> None:
    lines = list(example_lines(DAEMON_EXAMPLE))
    baseline = daemon_load(with_key("log", "level", "INFO"))
    problems: list[str] = []
    for section, f in daemon_fields():
        if (section, f.name) in NOT_KEYS:
            with pytest.raises(ConfigError, match="unknown key"):
                daemon_load(with_key(section, f.name, 1))
            continue
        key = SPELLED_AS.get((section, f.name), f.name)
        found = [line for line in lines if (line.section, line.key) == (section, key)]
        if not found:
            problems.append(f"[{section}] {key} is not in the example")
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required:
            if all(line.commented for line in found):
                problems.append(f"[{section}] {key} is required but only commented in the example")
            continue
        defaults = []
        for line in found:
            try:
                loaded = daemon_load(with_key(section, key, line.value))
            except ConfigError as exc:
                problems.append(
                    f"line {line.number}: [{section}] {key} = {line.value!r} does not load: {exc}"
                )
                continue
            defaults.append(getattr(loaded, section) == getattr(baseline, section))
        if defaults and not any(defaults):
            problems.append(f"[{section}] {key}: no line of the example shows the default {f.default!r}")
    assert not problems, "\n".join(problems)


def test_daemon_example_capture_table_loads(tmp_path: Path) -> None:
    text = DAEMON_EXAMPLE.read_text().replace(PLACEHOLDER, KEY_B64)
    head, _, table = text.partition("# [[capture]]\n")
    assert table, "the example shows a commented [[capture]] table"
    uncommented = "[[capture]]\n" + "".join(line.removeprefix("#   ") + "\n" for line in table.splitlines())
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(head + uncommented)
    (capture,) = load_config(path).capture
    assert (capture.name, capture.backend, capture.watched()) == ("front", "synthetic", (0, 1, 2, 3))
    assert capture.watch_settings.lost_after_s == 0.3 and capture.video_format.value == "ahd-1080p25"


def test_daemon_example_board_tables_load(tmp_path: Path) -> None:
    text = DAEMON_EXAMPLE.read_text().replace(PLACEHOLDER, KEY_B64)
    head, _, rest = text.partition("# [[alarm_input]]\n")
    assert rest, "the example shows a commented [[alarm_input]] table"
    table = rest.split("\n\n", 1)[0]
    lines = ["[[alarm_input]]"] + [
        line.removeprefix("# ").removeprefix("  ") if line.startswith("# [[") else line.removeprefix("#   ")
        for line in table.splitlines()
    ]
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(head + "\n".join(lines) + "\n")
    config = load_config(path)
    (door,) = config.alarm_inputs
    (siren,) = config.relays
    assert (door.name, door.chip, door.line, door.debounce_s) == ("door", "/dev/gpiochip0", 3, 0.05)
    assert (siren.name, siren.line, siren.default_on) == ("siren", 4, False)


def test_daemon_example_loads(tmp_path: Path) -> None:
    text = DAEMON_EXAMPLE.read_text()
    assert text.count(PLACEHOLDER) == 1
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(text.replace(PLACEHOLDER, KEY_B64))
    config = load_config(path)
    assert config.device.serial == "DL-0001-0002"


def test_daemon_example_uncommented_is_the_default_config(tmp_path: Path) -> None:
    """Every commented key line shows a default: uncommented all at once, the file loads (no key
    twice) and gives the same config as the required keys alone."""
    text = DAEMON_EXAMPLE.read_text().replace(PLACEHOLDER, KEY_B64)
    uncommented = re.sub(r"^# ?([a-z][a-z0-9_]* = .*)$", r"\1", text, flags=re.MULTILINE)
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(uncommented)
    config = load_config(path)
    required_only = tmp_path / "required.toml"
    path_lines = [
        "[device]",
        f'serial = "{config.device.serial}"',
        "[broker]",
        f'host = "{config.broker.host}"',
        f'public_key = "{KEY_B64}"',
    ]
    required_only.write_text("\n".join(path_lines) + "\n")
    assert dataclasses.replace(config, source=required_only) == load_config(required_only)


def test_broker_example_lists_every_key_with_its_default() -> None:
    lines = list(example_lines(BROKER_EXAMPLE))
    minimal = {"state_dir": "/var/lib/dvrlink-broker"}
    baseline = config_from_mapping(minimal, source="example")
    problems: list[str] = []
    for f in dataclasses.fields(BrokerServerConfig):
        found = [line for line in lines if line.key == f.name and line.section == ""]
        if not found:
            problems.append(f"{f.name} is not in the example")
            continue
        if f.default is dataclasses.MISSING:
            if all(line.commented for line in found):
                problems.append(f"{f.name} is required but only commented in the example")
            continue
        if f.default is None:
            # TOML has no null: such a key can only be shown commented, with an example value.
            if not all(line.commented for line in found):
                problems.append(f"{f.name} defaults to none, so its example line must be commented")
            continue
        defaults = []
        for line in found:
            try:
                loaded = config_from_mapping({**minimal, f.name: line.value}, source="example")
            except BrokerConfigError as exc:
                problems.append(f"line {line.number}: {f.name} = {line.value!r} does not load: {exc}")
                continue
            defaults.append(getattr(loaded, f.name) == getattr(baseline, f.name))
        if defaults and not any(defaults):
            problems.append(f"{f.name}: no line of the example shows the default {f.default!r}")
    assert not problems, "\n".join(problems)


def test_broker_example_loads(tmp_path: Path) -> None:
    config = load_broker_config(BROKER_EXAMPLE)
    assert config.state_dir == Path("/var/lib/dvrlink-broker")
