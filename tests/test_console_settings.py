"""Settings from the console into the config file, the ``[console]`` section itself, and the
wrong-PIN record the console keeps in the state directory.

A value the daemon would refuse changes nothing (byte for byte); a good one is written with
``atomic_write`` and only its line changes; ``[console]`` errors exit 78; ``dvrlinkd hash-pin``
prints a hash, never the PIN.
"""

from __future__ import annotations

import base64
import errno
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from dvrlink.daemon import console_settings
from dvrlink.daemon.cli import main as dvrlinkd_main
from dvrlink.daemon.config import load_config
from dvrlink.daemon.console import Console, ConsoleOptions, SettingChanges
from dvrlink.daemon.console_link import ConsoleService
from dvrlink.daemon.console_pin import parse_pin_hash, verify_pin
from dvrlink.daemon.console_settings import SettingsRefused, save_settings, set_key
from dvrlink.daemon.state import DeviceState

KEY = base64.b64encode(bytes(range(1, 33))).decode()
OTHER_KEY = base64.b64encode(bytes(range(2, 34))).decode()
CONFIG = f"""\
# the installer's file
[device]
serial = "DL-0001-0002"  # from the label
state_dir = "state"

[broker]
# the cloud
host = "broker-a.example.net"
port = 3478
public_key = "{KEY}"

[log]
level = "INFO"
"""
DVRLINKD = Path(sys.executable).parent / "dvrlinkd"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(CONFIG)
    path.chmod(0o640)
    return path


def test_a_good_change_is_written_atomically_and_only_its_lines_change(
    config_file: Path, mocker: MockerFixture
) -> None:
    spy = mocker.spy(console_settings, "atomic_write")
    saved = save_settings(
        config_file,
        SettingChanges(broker_host="192.0.2.9", broker_port=3479, broker_public_key=OTHER_KEY, apn="iot"),
    )
    assert saved.changed == {
        "broker_host": "192.0.2.9",
        "broker_port": 3479,
        "broker_public_key": OTHER_KEY,
        "apn": "iot",
    }
    assert spy.call_count == 1 and spy.call_args.kwargs["mode"] == 0o640
    text = config_file.read_text()
    assert (
        text
        == CONFIG.replace('host = "broker-a.example.net"', 'host = "192.0.2.9"')
        .replace("port = 3478", "port = 3479")
        .replace(KEY, OTHER_KEY)
        + '\n[modem]\napn = "iot"\n'
    ), text
    loaded = load_config(config_file)
    assert (loaded.broker.host, loaded.broker.port, loaded.modem.apn) == ("192.0.2.9", 3479, "iot")
    assert loaded == saved.config
    assert config_file.stat().st_mode & 0o777 == 0o640


def test_same_values_write_nothing(config_file: Path, mocker: MockerFixture) -> None:
    spy = mocker.spy(console_settings, "atomic_write")
    saved = save_settings(config_file, SettingChanges(broker_host="broker-a.example.net"))
    assert saved.changed == {} and spy.call_count == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (SettingChanges(broker_host="two words"), "[broker] host"),
        (SettingChanges(broker_host="http://x"), "without scheme"),
        (SettingChanges(broker_port=0), "[broker] port = 0: out of range"),
        (SettingChanges(broker_public_key="short"), "[broker] public_key"),
        (SettingChanges(broker_public_key="A" * 43 + "="), "placeholder"),
        (SettingChanges(apn='bad"apn'), "[modem] apn"),
        (SettingChanges(apn="line\nbreak"), "[modem] apn"),
    ],
)
def test_an_invalid_value_changes_nothing(
    config_file: Path, mocker: MockerFixture, changes: SettingChanges, message: str
) -> None:
    spy = mocker.spy(console_settings, "atomic_write")
    before = config_file.read_bytes()
    with pytest.raises(SettingsRefused) as err:
        save_settings(config_file, changes)
    assert err.value.code == "bad_value" and message in err.value.message, err.value.message
    assert config_file.read_bytes() == before and spy.call_count == 0


def test_a_file_that_does_not_load_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(CONFIG.replace('level = "INFO"', 'level = "LOUD"'))
    before = path.read_bytes()
    with pytest.raises(SettingsRefused, match=r"\[log\] level"):
        save_settings(path, SettingChanges(apn="iot"))
    assert path.read_bytes() == before


def test_a_failed_write_leaves_the_file_as_it_was(config_file: Path, mocker: MockerFixture) -> None:
    """The disk fails under the write (as a power cut would stop it): the old file stays whole,
    and no temporary file is left behind."""
    before = config_file.read_bytes()
    mocker.patch("dvrlink.store.files.os.fsync", side_effect=OSError(errno.EIO, "Input/output error"))
    with pytest.raises(SettingsRefused) as err:
        save_settings(config_file, SettingChanges(apn="iot"))
    assert err.value.code == "write_failed" and "nothing was changed" in err.value.message, err.value.message
    assert str(config_file) in err.value.message
    assert config_file.read_bytes() == before
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["dvrlinkd.toml"], (
        "a temporary file was left"
    )


def test_a_key_in_a_form_the_editor_does_not_change_is_refused_not_mangled(tmp_path: Path) -> None:
    path = tmp_path / "dvrlinkd.toml"
    path.write_text('modem = { apn = "old" }\n' + CONFIG)  # [modem] as an inline table
    before = path.read_bytes()
    with pytest.raises(SettingsRefused) as err:
        save_settings(path, SettingChanges(apn="new"))
    assert err.value.code == "write_failed" and "by hand" in err.value.message, err.value.message
    assert path.read_bytes() == before


def test_set_key_cases() -> None:
    text = "[a]\nx = 1 # old\n# y = 2\n[b]\ny = 3\n"
    assert set_key(text, "a", "x", "5") == "[a]\nx = 5\n# y = 2\n[b]\ny = 3\n"
    assert (
        set_key(text, "a", "y", "7") == "[a]\ny = 7\nx = 1 # old\n# y = 2\n[b]\ny = 3\n"
    )  # not the commented one
    assert set_key(text, "c", "z", '"q"') == text + '\n[c]\nz = "q"\n'
    assert set_key("[a]\r\nx = 1\r\n", "a", "x", "2") == "[a]\r\nx = 2\r\n"
    assert set_key("[a]\nx = 1", "b", "y", "2") == "[a]\nx = 1\n\n[b]\ny = 2\n"


# --- [console] in the config --------------------------------------------------------------------


def _console_config(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(CONFIG + "[console]\n" + section)
    return path


def test_console_section_loads(tmp_path: Path) -> None:
    pin_hash = "scrypt$ln=13,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "B" * 43
    config = load_config(
        _console_config(tmp_path, f'port = "/dev/ttyS1"\nbaud = 9600\npin_hash = "{pin_hash}"\n')
    )
    assert (config.console.port, config.console.baud, config.console.pin_hash) == (
        "/dev/ttyS1",
        9600,
        pin_hash,
    )
    assert pin_hash not in repr(config), "the PIN hash is kept out of reprs and logs"


@pytest.mark.parametrize(
    ("section", "seen"),
    [
        ('port = "ttyS1"\n', "expected an absolute device path"),
        ("baud = 12345\n", "expected one of 1200, 2400"),
        ('pin_hash = "1234"\n', "make it with `dvrlinkd hash-pin`"),
        ("pin_max_failures = 0\n", "out of range"),
        ("idle_lock_s = 1\n", "out of range"),
        ('pin = "1234"\n', "unknown key pin in [console]"),
    ],
)
def test_console_section_errors_exit_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, seen: str
) -> None:
    path = _console_config(tmp_path, section)
    assert dvrlinkd_main(["check-config", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert seen in err and "[console]" in err, err
    assert '"1234"' not in err or "unknown key" in err, "a PIN-like value was echoed"


@pytest.mark.skipif(not DVRLINKD.exists(), reason="the dvrlinkd script is not installed")
def test_hash_pin_prints_a_hash_that_checks_and_never_the_pin(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(DVRLINKD), "hash-pin"], input="918273\n", capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert "918273" not in run.stdout + run.stderr
    line = run.stdout.strip()
    assert line.startswith('pin_hash = "scrypt$'), line
    stored = parse_pin_hash(line.split('"')[1])
    assert verify_pin("918273", stored) and not verify_pin("918274", stored)
    config = load_config(_console_config(tmp_path, f'port = "/dev/ttyS1"\n{line}\n'))
    assert config.console.pin_hash == line.split('"')[1]
    bad = subprocess.run(
        [str(DVRLINKD), "hash-pin"], input="12\n", capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2 and "4 to 12 digits" in bad.stderr, bad


# --- wrong installer PINs survive a reboot ------------------------------------------------------


class Clocks:
    """The loop's clock restarts at 0 on each boot; wall time goes on."""

    def __init__(self, wall: float) -> None:
        self.mono = 0.0
        self.wall = wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def reboot(self, took_s: float) -> None:
        self.wall += took_s
        self.mono = 0.0


def _boot(state_dir: Path, clocks: Clocks) -> tuple[Console, ConsoleService]:
    state = DeviceState(state_dir)
    config = load_config(_write(state_dir.parent))
    service = ConsoleService(
        lambda: config,
        state,
        "f" * 16,
        lambda c: None,
        lambda: None,
        clock=lambda: clocks.mono,
        wall_clock=lambda: clocks.wall,
    )
    options = ConsoleOptions(serial="DL-0001-0002", pin_required=True, pin_max_failures=3, pin_window_s=300.0)
    console = Console(options, lambda pin: pin == "4711", pin_failures=service.saved_pin_failures(300.0))
    return console, service


def _write(folder: Path) -> Path:
    path = folder / "dvrlinkd.toml"
    path.write_text(CONFIG)
    return path


def _unlock(console: Console, service: ConsoleService, pin: str, clocks: Clocks) -> bytes:
    console.receive_data(f"unlock {pin}\r".encode(), clocks.mono)
    while (event := console.next_event()) is not None:
        service.handle(console, event)
    return console.data_to_send()


def test_wrong_pins_are_kept_over_a_reboot_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clocks = Clocks(wall=1_767_225_600.0)
    state_dir = tmp_path / "state"
    console, service = _boot(state_dir, clocks)
    for _ in range(3):
        clocks.advance(10)
        assert b"wrong PIN" in _unlock(console, service, "0000", clocks)
    assert len(DeviceState(state_dir).console_pin_failures()) == 3
    clocks.reboot(took_s=60)  # power-cycle the board to get fresh tries
    console, service = _boot(state_dir, clocks)
    clocks.advance(5)
    out = _unlock(console, service, "4711", clocks)
    assert b"too many wrong PINs" in out and console.locked, out
    clocks.advance(300)  # the first wrong PIN has left the window
    out = _unlock(console, service, "4711", clocks)
    assert b"unlocked" in out and not console.locked, out
    assert DeviceState(state_dir).console_pin_failures() == []
    assert "0000" not in caplog.text and "4711" not in caplog.text
    assert "wrong installer PIN" in caplog.text


def test_a_failing_command_is_answered_and_the_console_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(ConsoleService):
        def status(self) -> dict[str, object]:
            raise RuntimeError("a bug")

    config = load_config(_write(tmp_path))
    service = Broken(lambda: config, DeviceState(tmp_path / "state"), "f" * 16, lambda c: None, lambda: None)
    console = Console(ConsoleOptions(serial="DL-0001-0002"))
    for line in (b"status\r", b'{"v":1,"id":5,"cmd":"status"}\n', b"help\r"):
        console.receive_data(line, 1.0)
        while (event := console.next_event()) is not None:
            service.handle(console, event)
    out = console.data_to_send()
    assert out.count(b"internal error (RuntimeError): see the log") == 2, out
    assert b'"id":5,"ok":false' in out and b"commands:" in out
    assert "console: ShowStatus failed" in caplog.text
