"""How messages spell config values: as a TOML file does (``true``, ``"25"``, ``[1, 2]``).

Every program's config errors quote the offending value this way, so a person can search the file
for it; dvrlinkd, the broker and the viewer share it.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from datetime import date, datetime, time
from pathlib import PurePath


def toml_value(value: object) -> str:
    """``value`` as a TOML file spells it, for messages: ``true``, ``"25"``, ``["a", "b"]``,
    ``{host = "x"}``; never Python's ``True`` or ``'25'``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string uses the same escapes
    if isinstance(value, PurePath):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def toml_key(key: object) -> str:
    """A key as a file spells it: bare when it can be (``port``), else quoted."""
    text = str(key)
    bare = text and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in text)
    return text if bare else json.dumps(text, ensure_ascii=False)
