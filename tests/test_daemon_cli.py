"""`dvrlinkd pairing-code` and the command line's exit codes."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from dvrlink.daemon.cli import main
from dvrlink.daemon.state import DeviceState
from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint, normalize_fingerprint
from dvrlink.protocol.pairing import PairingUri, normalize_code

DVRLINKD = Path(sys.executable).with_name("dvrlinkd")


def write_config(tmp_path: Path) -> Path:
    key = base64.b64encode(bytes(range(32))).decode()
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(
        f'[device]\nserial = "DL-0001-0002"\nstate_dir = "state"\nruntime_dir = "run"\n'
        f'[broker]\nhost = "127.0.0.1"\npublic_key = "{key}"\n'
    )
    return path


def fields(output: str) -> dict[str, str]:
    return {name: value.strip() for name, _, value in (line.partition(":") for line in output.splitlines())}


def test_pairing_code_process_output_parses_back(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert DVRLINKD.exists(), f"{DVRLINKD} missing: install the package with `make venv`"
    first = subprocess.run(
        [str(DVRLINKD), "pairing-code", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    shown = fields(first.stdout)

    state = DeviceState(tmp_path / "state")  # created by the command
    secret = state.pairing_secret()
    fp = fingerprint(ed25519_public_bytes(state.device_key()))
    assert shown["serial"] == "DL-0001-0002"
    assert normalize_code(shown["pairing code"]) == secret
    assert shown["pairing code"].count("-") == 3
    assert normalize_fingerprint(shown["fingerprint"]) == fp
    assert len(shown["fingerprint"].split()) == 8  # grouped in fours

    uri = PairingUri.parse(first.stdout.split("pairing URI:", 1)[1].split()[0])
    assert uri == PairingUri("DL-0001-0002", secret, fp)

    second = subprocess.run(
        [str(DVRLINKD), "pairing-code", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.stdout == first.stdout  # the same device keeps its code and key


def test_pairing_code_with_a_corrupt_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "device_key.pem").write_text("junk")
    assert main(["pairing-code", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "device_key.pem is not a readable PEM private key" in err
    assert "restore it from a backup" in err


def test_config_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pairing-code", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "missing.toml")]) == 2


def test_daemon_stays_light() -> None:
    # The device image ships construct, cryptography and aioice; never the HTTP stack.
    code = (
        "import sys, dvrlink.daemon.cli\n"
        "print(sorted(m for m in ('aiohttp', 'yarl', 'multidict') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
