"""`dvrlinkd pairing-code` and the command line's exit codes."""

from __future__ import annotations

import asyncio
import base64
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dvrlink.daemon.cli import EXIT_CONFIG, EXIT_RUNTIME, main
from dvrlink.daemon.state import DeviceState
from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint, normalize_fingerprint
from dvrlink.protocol.pairing import PairingUri, normalize_code

DVRLINKD = Path(sys.executable).with_name("dvrlinkd")
WAIT = 15.0  # s, bound on every wait; each step takes well under a second


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
        [str(DVRLINKD), "pairing-code", "--create", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    shown = fields(first.stdout)

    state = DeviceState(tmp_path / "state")  # created by the command
    secret = state.pairing_secret(create=False)
    fp = fingerprint(ed25519_public_bytes(state.device_key(create=False)))
    assert shown["serial"] == "DL-0001-0002"
    assert normalize_code(shown["pairing code"]) == secret
    assert shown["pairing code"].count("-") == 3
    assert normalize_fingerprint(shown["fingerprint"]) == fp
    assert len(shown["fingerprint"].split()) == 8  # grouped in fours

    uri = PairingUri.parse(first.stdout.split("pairing URI:", 1)[1].split()[0])
    assert uri == PairingUri("DL-0001-0002", secret, fp)

    second = subprocess.run(
        [str(DVRLINKD), "--config", str(config), "pairing-code"],  # --config before the command too
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout  # the same device keeps its code and key

    only = subprocess.run(
        [str(DVRLINKD), "pairing-code", "--uri", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert only.returncode == 0, only.stderr
    assert only.stdout.splitlines() == [uri.format()], only.stdout  # the URI alone, for scripts


def test_pairing_code_with_a_corrupt_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "device_key.pem").write_text("junk")
    assert main(["pairing-code", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "device_key.pem is not a readable PEM private key" in err
    assert "restore it from a backup" in err


def test_config_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("pairing-code", "run", "status", "check-config"):
        assert main([command, "--config", str(tmp_path / "missing.toml")]) == EXIT_CONFIG == 78, command
        assert "config file not found" in capsys.readouterr().err
    assert main(["--check-config", "--config", str(tmp_path / "missing.toml")]) == 78


# --- the command line (issue 10, friction) ------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    assert DVRLINKD.exists(), f"{DVRLINKD} missing: install the package with `make venv`"
    return subprocess.run([str(DVRLINKD), *args], capture_output=True, text=True, timeout=60, check=False)


def test_read_only_commands_with_a_config_outside_etc_create_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for args in (
        ("status", "--config", str(config)),
        ("--config", str(config), "status", "--json"),
        ("pairing-code", "--config", str(config)),
        ("--config", str(config), "pairing-code"),
    ):
        result = run_cli(*args)
        assert result.returncode == EXIT_RUNTIME, (args, result.returncode, result.stderr)
        assert str(tmp_path) in result.stderr, (args, result.stderr)  # the config's dirs, not /etc's
        assert "Traceback" not in result.stderr, result.stderr
    assert sorted(tmp_path.rglob("*")) == before, "a read-only command created files"
    assert "no device key yet" in result.stderr and "pairing-code --create" in result.stderr, result.stderr


def test_check_config_is_a_command_too(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    for args in (("check-config", "--config", str(config)), ("--config", str(config), "check-config")):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"config OK: {config}: serial DL-0001-0002"), result.stdout
    config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nprot = 1'))
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 78, result
    assert "unknown key prot in [broker]; did you mean port?" in result.stderr, result.stderr
    assert not (tmp_path / "state").exists()


def test_version_and_a_description_on_every_command() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dvrlinkd "), result.stdout
    assert result.stdout.split()[1][0].isdigit(), result.stdout
    top = run_cli("--help").stdout
    for command in ("run", "status", "pairing-code", "check-config"):
        line = next((line for line in top.splitlines() if line.strip().startswith(command + " ")), "")
        assert len(line.split()) > 2, f"no description for {command} in --help:\n{top}"
        page = run_cli(command, "--help")
        assert page.returncode == 0, page.stderr
        description = page.stdout.split("\n\n")[1].strip()
        assert description and not description.startswith("options"), (command, page.stdout)
    assert "78" in top  # the exit codes are documented


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


# --- one daemon per state directory (issue 10, defect 4) ---------------------------------------


def silent_broker_config(tmp_path: Path, port: int) -> Path:
    """A config whose broker swallows every datagram: the daemon keeps registering, and runs."""
    key = base64.b64encode(bytes(range(32))).decode()
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(
        f'[device]\nserial = "DL-0001-0002"\nstate_dir = "state"\nruntime_dir = "run"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {port}\npublic_key = "{key}"\n'
        '[presence]\ntransport = "udp"\nlearn_keepalive = false\n'
    )
    return path


async def read_until(stream: asyncio.StreamReader, wanted: str, bound_s: float) -> str:
    """stderr up to and including the first line that holds ``wanted`` (all of it on failure)."""
    seen: list[str] = []
    try:
        async with asyncio.timeout(bound_s):
            while line := (await stream.readline()).decode():
                seen.append(line)
                if wanted in line:
                    return "".join(seen)
    except TimeoutError:
        pass
    raise AssertionError(f"no line with {wanted!r} within {bound_s} s; saw:\n{''.join(seen)}")


async def stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), WAIT)
        except TimeoutError:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode


def test_second_daemon_on_one_state_dir_exits_naming_the_first(tmp_path: Path) -> None:
    assert DVRLINKD.exists(), f"{DVRLINKD} missing: install the package with `make venv`"

    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind(("127.0.0.1", 0))
            config = silent_broker_config(tmp_path, sink.getsockname()[1])
            run = (str(DVRLINKD), "run", "--config", str(config))
            first = await asyncio.create_subprocess_exec(*run, stderr=asyncio.subprocess.PIPE)
            second: asyncio.subprocess.Process | None = None
            try:
                assert first.stderr is not None
                await read_until(first.stderr, "starting:", WAIT)
                second = await asyncio.create_subprocess_exec(*run, stderr=asyncio.subprocess.PIPE)
                try:
                    _, err = await asyncio.wait_for(second.communicate(), WAIT)
                except TimeoutError:
                    raise AssertionError(
                        f"a second dvrlinkd on the same state directory still runs after {WAIT} s"
                    ) from None
                message = err.decode()
                assert second.returncode == EXIT_RUNTIME, (second.returncode, message)
                assert f"already running (pid {first.pid})" in message, message
                assert str(tmp_path / "state") in message, message
                assert first.returncode is None, "the first daemon must keep running"
            finally:
                if second is not None:
                    await stop(second)
                assert await stop(first) == 0
            # The lock goes with the process: a new daemon starts once the first has stopped.
            third = await asyncio.create_subprocess_exec(*run, stderr=asyncio.subprocess.PIPE)
            try:
                assert third.stderr is not None
                await read_until(third.stderr, "starting:", WAIT)
            finally:
                assert await stop(third) == 0

    asyncio.run(scenario())


# --- state files checked at start, one way for each (issue 10, defect 7) -----------------------


def test_truncated_viewers_file_stops_the_daemon_at_start(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        config = silent_broker_config(tmp_path, sink.getsockname()[1])
        state = DeviceState(tmp_path / "state")
        state.device_key()
        state.pairing_secret()
        state.add_viewer(b"\x01" * 32, "alice", 1.0)
        viewers = tmp_path / "state" / "viewers.json"
        truncated = viewers.read_bytes()[:40]
        viewers.write_bytes(truncated)
        try:
            result = subprocess.run(
                [str(DVRLINKD), "run", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=WAIT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"dvrlinkd started with a truncated {viewers} (still running after {WAIT} s); "
                f"stderr: {exc.stderr!r}"
            ) from None
    assert result.returncode == EXIT_RUNTIME, (result.returncode, result.stderr)
    assert f"{viewers} is not valid JSON" in result.stderr, result.stderr
    assert "restore it from a backup" in result.stderr, result.stderr
    assert viewers.read_bytes() == truncated  # pairings are never dropped silently


def test_corrupt_pairing_failures_are_moved_aside_and_the_daemon_starts(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind(("127.0.0.1", 0))
            config = silent_broker_config(tmp_path, sink.getsockname()[1])
            failures = tmp_path / "state" / "pairing_failures.json"
            failures.parent.mkdir()
            failures.write_text("[1767225600.0, 17672")
            daemon = await asyncio.create_subprocess_exec(
                str(DVRLINKD), "run", "--config", str(config), stderr=asyncio.subprocess.PIPE
            )
            try:
                assert daemon.stderr is not None
                log = await read_until(daemon.stderr, "starting:", WAIT)
            finally:
                assert await stop(daemon) == 0
        (aside,) = failures.parent.glob("pairing_failures.json.corrupt-*")
        assert aside.read_text() == "[1767225600.0, 17672"
        assert not failures.exists()
        assert f"{failures} is not valid JSON" in log, log
        assert f"moved it aside to {aside}" in log, log
        assert "count of recent wrong pairing codes restarts" in log, log

    asyncio.run(scenario())
