"""The dvrlinkd.toml a rig hands the guest: the image's own config with this rig's values set.

The image's config (the Buildroot board overlay's ``/etc/dvrlink/dvrlinkd.toml``, else the
example the dvrlink package installs) is kept line for line; only the keys given are replaced in
their sections, or added under the section's header when the file lacks them.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from hil.qemu.build import BOARD_DIR, REPO

Value = str | int | bool


def image_config_path() -> Path:
    """Where the image's /etc/dvrlink/dvrlinkd.toml comes from in this tree."""
    board = BOARD_DIR / "rootfs-overlay/etc/dvrlink/dvrlinkd.toml"
    return board if board.is_file() else REPO / "daemon/dvrlinkd.example.toml"


def _toml_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def with_values(text: str, values: Mapping[str, Mapping[str, Value]]) -> str:
    """``text`` (TOML) with ``values[section][key]`` set; other lines stay as they are.

    Raises:
        ValueError: a section is missing from ``text``, or the result does not read back as the
        values given (the message names the key).
    """
    lines = text.splitlines()
    section = ""
    pending = {s: dict(keys) for s, keys in values.items()}
    headers: dict[str, int] = {}
    for i, line in enumerate(lines):
        if header := re.match(r"^\s*\[([^]\[]+)\]\s*(#.*)?$", line):
            section = header.group(1).strip()
            headers[section] = i
            continue
        assignment = re.match(r"^\s*([A-Za-z0-9_-]+)\s*=", line)
        if assignment and section in pending and assignment.group(1) in pending[section]:
            name = assignment.group(1)
            lines[i] = f"{name} = {_toml_value(pending[section].pop(name))}"
    for name, left in pending.items():
        if not left:
            continue
        if name not in headers:
            raise ValueError(f"the config has no [{name}] section to set {', '.join(left)} in")
        at = headers[name] + 1
        lines[at:at] = [f"{k} = {_toml_value(v)}" for k, v in left.items()]
        headers = {s: (n + len(left) if n >= at else n) for s, n in headers.items()}
    result = "\n".join(lines) + "\n"
    parsed = tomllib.loads(result)
    for name, keys in values.items():
        for key, value in keys.items():
            if parsed.get(name, {}).get(key) != value:
                raise ValueError(f"[{name}] {key} did not read back as {value!r} after setting it")
    return result
