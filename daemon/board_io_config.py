"""``[[alarm_input]]`` and ``[[relay]]``: the board's GPIO alarm inputs and relays in dvrlinkd's
config (docs/hal.md, "Board I/O").

Each table is one line::

    [[alarm_input]]
    name = "door"               # in alarms ("door: active"), the status and `dvrlink relay`
    chip = "/dev/gpiochip0"     # a path, or the chip's label as gpiodetect prints it ("pl061")
    line = 3                    # the offset, or the line's name as gpioinfo prints it
    active_low = false          # true: active when the line is low (a contact to ground)
    bias = "as-is"              # as-is, disabled, pull-up or pull-down
    debounce_s = 0.05           # a level must hold this long to count

    [[relay]]
    name = "siren"
    chip = "/dev/gpiochip0"
    line = 4
    active_low = false          # true: the relay is energised by a low line
    default = "off"             # its state at start and at exit: off or on
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from dvrlink.daemon.errors import ConfigError
from dvrlink.hal.gpio import AlarmInputConfig, Bias, RelayConfig
from dvrlink.store.toml_text import toml_key, toml_value

INPUT_KEYS = ("name", "chip", "line", "active_low", "bias", "debounce_s")
RELAY_KEYS = ("name", "chip", "line", "active_low", "default")
MAX_LINES = 64
"""At most this many tables of each kind."""


def parse_board_io(
    document: Mapping[str, object], source: Path
) -> tuple[tuple[AlarmInputConfig, ...], tuple[RelayConfig, ...]]:
    """The ``[[alarm_input]]`` and ``[[relay]]`` tables of a parsed dvrlinkd TOML document.

    Raises:
        ConfigError: not an array of tables, an unknown or missing key, a bad value, a name used
            twice, or one line used twice; the message names the file, the table, the key, what
            was seen and what to write.
    """
    inputs = tuple(
        _input(table, index, source)
        for index, table in enumerate(_tables(document, "alarm_input", source), 1)
    )
    relays = tuple(
        _relay(table, index, source) for index, table in enumerate(_tables(document, "relay", source), 1)
    )
    names: dict[str, str] = {}
    lines: dict[tuple[str, int | str], str] = {}
    tables: tuple[tuple[str, tuple[AlarmInputConfig | RelayConfig, ...]], ...] = (
        ("alarm_input", inputs),
        ("relay", relays),
    )
    for kind, items in tables:
        for index, item in enumerate(items, 1):
            where = f"{source}: [[{kind}]] #{index}"
            if item.name in names:
                raise ConfigError(
                    f"{where}: the name {item.name!r} is used twice (also {names[item.name]}); "
                    "give each input and relay its own name"
                )
            names[item.name] = f"[[{kind}]] {item.name}"
            key = (item.chip, item.line)
            if key in lines:
                raise ConfigError(
                    f"{where}: line {item.line} of {item.chip} is also {lines[key]}; one line can be "
                    "one input or one relay"
                )
            lines[key] = f"[[{kind}]] {item.name}"
    return inputs, relays


def _tables(document: Mapping[str, object], kind: str, source: Path) -> list[Mapping[str, object]]:
    raw = document.get(kind, [])
    if isinstance(raw, dict):
        raise ConfigError(
            f"{source}: {kind} must be written [[{kind}]] (double brackets: one table per line), not [{kind}]"
        )
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(f"{source}: {kind} = {toml_value(raw)}: write each one as a [[{kind}]] table")
    if len(raw) > MAX_LINES:
        raise ConfigError(f"{source}: {len(raw)} [[{kind}]] tables; at most {MAX_LINES} are supported")
    return raw


class _Table:
    def __init__(
        self, table: Mapping[str, object], kind: str, index: int, source: Path, keys: tuple[str, ...]
    ):
        self.table = table
        self.where = f"{source}: [[{kind}]] #{index}"
        for key in table:
            if key not in keys:
                close = difflib.get_close_matches(str(key), keys, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ConfigError(
                    f"{self.where}: unknown key {toml_key(key)}; {hint}known keys: {', '.join(keys)}"
                )
        for key in ("name", "chip", "line"):
            if key not in table:
                example = {"name": 'name = "door"', "chip": 'chip = "/dev/gpiochip0"', "line": "line = 3"}
                raise ConfigError(f"{self.where}: {key} is missing; add it, e.g. {example[key]}")

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key} = {toml_value(self.table[key])}: {problem}")

    def string(self, key: str, default: str = "") -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "expected text in double quotes")
        return value.strip()

    def line(self) -> int | str:
        value = self.table["line"]
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 511:
            raise self.error(
                "line", 'expected the line\'s offset (0-511) or its name in quotes, e.g. "DOOR_IN"'
            )
        return value

    def boolean(self, key: str) -> bool:
        value = self.table.get(key, False)
        if not isinstance(value, bool):
            raise self.error(key, "expected true or false")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str) or value.strip().lower() not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}")
        return value.strip().lower()


def _input(raw: Mapping[str, object], index: int, source: Path) -> AlarmInputConfig:
    table = _Table(raw, "alarm_input", index, source, INPUT_KEYS)
    debounce = raw.get("debounce_s", 0.05)
    if isinstance(debounce, bool) or not isinstance(debounce, (int, float)) or not 0 <= debounce <= 60:
        raise table.error("debounce_s", "expected seconds from 0 to 60")
    bias = Bias(table.choice("bias", tuple(b.value for b in Bias), Bias.AS_IS.value))
    try:
        return AlarmInputConfig(
            name=table.string("name"),
            chip=table.string("chip"),
            line=table.line(),
            active_low=table.boolean("active_low"),
            bias=bias,
            debounce_s=float(debounce),
        )
    except ValueError as exc:
        raise ConfigError(f"{table.where}: {exc}") from None


def _relay(raw: Mapping[str, object], index: int, source: Path) -> RelayConfig:
    table = _Table(raw, "relay", index, source, RELAY_KEYS)
    try:
        return RelayConfig(
            name=table.string("name"),
            chip=table.string("chip"),
            line=table.line(),
            active_low=table.boolean("active_low"),
            default_on=table.choice("default", ("off", "on"), "off") == "on",
        )
    except ValueError as exc:
        raise ConfigError(f"{table.where}: {exc}") from None
