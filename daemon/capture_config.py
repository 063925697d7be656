"""``[[capture]]``: the board's capture devices in dvrlinkd's config (docs/hal.md).

Each ``[[capture]]`` table is one device::

    [[capture]]
    name = "front"              # optional; default: the backend and its place, e.g. synthetic1
    backend = "synthetic"       # see dvrlink.hal.config.BACKENDS
    channels = 4
    watch = [0, 1, 2, 3]        # optional; default: every channel
    format = "ahd-1080p25"      # synthetic: the cameras' format
    control = ""                # synthetic: its control file; default runtime_dir/capture-NAME.ctl
    bus = "/dev/i2c-1"          # decoder chips (nvp6158, tw2866): the I2C bus
    address = 0x30              # decoder chips: the 7-bit address (NVP6158 0x30-0x33, TW2866 0x28-0x2B)
    devices = ["/dev/video0"]   # v4l2: the nodes, one per channel (channels defaults to their count)
    poll_interval_s = 0.2       # how often the device is read
    lost_after_s = 0.3          # a signal gone this long is SignalLost
    restored_after_s = 0.5      # a signal back this long is SignalRestored
    motion_hold_s = 2.0         # no motion this long is MotionStop
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from dvrlink.daemon.errors import ConfigError
from dvrlink.hal.config import BACKENDS, CaptureConfig
from dvrlink.hal.model import VideoFormat
from dvrlink.hal.watch import WatchConfig
from dvrlink.store.toml_text import toml_key, toml_value

KEYS = (
    "name",
    "backend",
    "channels",
    "watch",
    "format",
    "control",
    "bus",
    "address",
    "devices",
    "poll_interval_s",
    "lost_after_s",
    "restored_after_s",
    "motion_hold_s",
)
NEEDS = {"bus": ("nvp6158", "tw2866"), "address": ("nvp6158", "tw2866"), "devices": ("v4l2",)}
"""Keys a backend must have."""
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_DEVICES = 16


def parse_capture(document: Mapping[str, object], source: Path) -> tuple[CaptureConfig, ...]:
    """The ``[[capture]]`` tables of a parsed dvrlinkd TOML document (none: no capture).

    Raises:
        ConfigError: not an array of tables, an unknown key or backend, a bad value, a missing
            key the backend needs, or a name used twice; the message names the file, the table,
            the key, what was seen and what to write.
    """
    raw = document.get("capture", [])
    if isinstance(raw, dict):
        raise ConfigError(
            f"{source}: capture must be written [[capture]] (double brackets: one table per device), "
            "not [capture]"
        )
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(f"{source}: capture = {toml_value(raw)}: write each device as a [[capture]] table")
    if len(raw) > MAX_DEVICES:
        raise ConfigError(f"{source}: {len(raw)} [[capture]] tables; at most {MAX_DEVICES} are supported")
    devices: list[CaptureConfig] = []
    for index, table in enumerate(raw, 1):
        device = _parse_one(table, index, source)
        if any(d.name == device.name for d in devices):
            raise ConfigError(
                f"{source}: [[capture]] #{index}: the name {device.name!r} is used twice; give each "
                "device its own name"
            )
        devices.append(device)
    return tuple(devices)


def _parse_one(table: Mapping[str, object], index: int, source: Path) -> CaptureConfig:
    where = f"{source}: [[capture]] #{index}"
    for key in table:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"{where}: unknown key {toml_key(key)}; {hint}known keys: {', '.join(KEYS)}")

    def error(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where}: {key} = {toml_value(table[key])}: {problem}")

    backend = table.get("backend")
    if backend is None:
        raise ConfigError(
            f'{where}: backend is missing; add backend = "{BACKENDS[0]}" (one of {", ".join(BACKENDS)})'
        )
    if not isinstance(backend, str) or backend.strip().lower() not in BACKENDS:
        raise error("backend", f"expected one of {', '.join(BACKENDS)}")
    backend = backend.strip().lower()
    for key, backends in NEEDS.items():
        if backend in backends and key not in table:
            raise ConfigError(f"{where}: backend {backend} needs {key}; add it (see docs/hal.md)")
        if key in table and backend not in backends:
            raise error(key, f"only {' and '.join(backends)} take {key}; remove it for {backend}")

    name = table.get("name", f"{backend}{index}")
    if not isinstance(name, str) or not NAME.match(name):
        raise error(
            "name", "expected 1-32 lower-case letters, digits, - or _, starting with a letter or digit"
        )

    devices = table.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, str) and d.strip() for d in devices):
        raise error("devices", 'expected a list of video nodes, one per channel, e.g. ["/dev/video0"]')
    if "devices" in table and not 1 <= len(devices) <= 64:
        raise error("devices", "list 1 to 64 video nodes, one per channel")
    channels = _integer(table, "channels", len(devices) or 4, 1, 64, error)
    if devices and channels != len(devices):
        raise error(
            "channels", f"a V4L2 device has one channel per node: {len(devices)} here; remove channels"
        )
    watch_raw = table.get("watch", [])
    if not isinstance(watch_raw, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c < channels for c in watch_raw
    ):
        raise error("watch", f"expected a list of channel numbers from 0 to {channels - 1}, e.g. [0, 1]")
    if len(set(watch_raw)) != len(watch_raw):
        raise error("watch", "a channel is listed twice; list each once")

    fmt_raw = table.get("format", VideoFormat.AHD_1080P25.value)
    try:
        video_format = VideoFormat.parse(fmt_raw) if isinstance(fmt_raw, str) else None
    except ValueError as exc:
        raise error("format", str(exc)) from None
    if video_format is None or video_format is VideoFormat.UNKNOWN:
        raise ConfigError(f'{where}: format must name a video format, e.g. "ahd-1080p25" or "cvbs-pal"')

    strings: dict[str, str] = {}
    for key in ("control", "bus"):
        value = table.get(key, "")
        if not isinstance(value, str) or (key != "control" and key in table and not value.strip()):
            raise error(key, "expected a path in double quotes")
        strings[key] = value.strip()
    if strings["control"] and backend != "synthetic":
        raise error("control", "only the synthetic backend has a control file; remove it")
    control = strings["control"]
    if control and not Path(control).is_absolute():
        control = str(source.parent.absolute() / control)
    address = _integer(table, "address", 0, 0x03, 0x77, error) if "address" in table else 0

    try:
        watch = WatchConfig(
            poll_interval_s=_seconds(table, "poll_interval_s", 0.2, 0.01, 60.0, error),
            lost_after_s=_seconds(table, "lost_after_s", 0.3, 0.0, 60.0, error),
            restored_after_s=_seconds(table, "restored_after_s", 0.5, 0.0, 60.0, error),
            motion_hold_s=_seconds(table, "motion_hold_s", 2.0, 0.0, 3600.0, error),
        )
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return CaptureConfig(
        name=name,
        backend=backend,
        channels=channels,
        watch=tuple(watch_raw),
        video_format=video_format,
        control=control,
        bus=strings["bus"],
        address=address,
        devices=tuple(d.strip() for d in devices),
        watch_settings=watch,
    )


def _integer(table: Mapping[str, object], key: str, default: int, low: int, high: int, error: _Error) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(key, f"expected a whole number from {low} to {high}")
    return value


def _seconds(
    table: Mapping[str, object], key: str, default: float, low: float, high: float, error: _Error
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise error(key, f"expected seconds from {low:g} to {high:g}")
    return float(value)


class _Error(Protocol):
    def __call__(self, key: str, problem: str) -> ConfigError: ...
