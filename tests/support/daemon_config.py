"""dvrlinkd config files for tests: a minimal valid file, writing and loading one, and
``dvrlinkd`` run as a real process.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from dvrlink.daemon.config import DaemonConfig, load_config

KEY = bytes(range(1, 33))
KEY_B64 = base64.b64encode(KEY).decode()
DVRLINKD = Path(sys.executable).with_name("dvrlinkd")
MINIMAL = f"""
[device]
serial = "DL-0001-0002"
[broker]
host = "127.0.0.1"
public_key = "{KEY_B64}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> DaemonConfig:
    return load_config(write(tmp_path, text))


def run_dvrlinkd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert DVRLINKD.exists(), f"{DVRLINKD} missing: install the package with `make venv`"
    return subprocess.run(
        [str(DVRLINKD), *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )
