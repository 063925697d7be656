"""dvrlinkd config: a good file, each kind of bad file, and --check-config as a real process."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from support.daemon_config import KEY, KEY_B64, MINIMAL, load_text, run_dvrlinkd, write

from dvrlink.daemon.config import load_config
from dvrlink.daemon.errors import ConfigError
from dvrlink.protocol.port_prediction import SearchBudget

EXAMPLE = Path(__file__).resolve().parent.parent / "daemon" / "dvrlinkd.example.toml"

GOOD = f"""
[device]
serial = "DL-0001-0002"
state_dir = "state"
runtime_dir = "/run/dvrlink-test"

[broker]
host = "broker.example.net"
port = 3479
public_key = "{KEY_B64}"

[presence]
keepalive_interval_s = 20
reply_timeout_s = 2.5
retries = 3

[pairing]
max_failures = 4
window_s = 600

[log]
level = "debug"
"""


def test_good_file(tmp_path: Path) -> None:
    config = load_text(tmp_path, GOOD)
    assert config.device.serial == "DL-0001-0002"
    assert config.device.state_dir == tmp_path / "state"  # relative to the config file
    assert config.device.runtime_dir == Path("/run/dvrlink-test")
    assert (config.broker.host, config.broker.port, config.broker.public_key) == (
        "broker.example.net",
        3479,
        KEY,
    )
    assert config.broker.address == "broker.example.net:3479"
    assert config.presence.keepalive_interval_s == 20.0
    assert isinstance(config.presence.keepalive_interval_s, float)
    assert config.presence.reply_timeout_s == 2.5
    assert config.presence.retries == 3
    assert (config.pairing.max_failures, config.pairing.window_s) == (4, 600.0)
    assert config.log.level == "DEBUG"
    assert config.source == tmp_path / "dvrlinkd.toml"


def test_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)
    assert config.device.state_dir == Path("/var/lib/dvrlink")
    assert config.device.runtime_dir == Path("/run/dvrlink")
    assert config.broker.port == 3478
    assert config.presence.keepalive_interval_s == 25.0
    assert config.presence.reply_timeout_s == 3.0
    assert config.presence.retries == 2
    assert config.pairing.max_failures == 10
    assert config.pairing.window_s == 3600.0
    assert config.log.level == "INFO"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)
    with pytest.raises(AttributeError):
        config.broker.port = 1  # type: ignore[misc]


def test_example_file_is_complete_but_needs_the_broker_key(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    with pytest.raises(ConfigError, match="placeholder"):
        load_text(tmp_path, text)
    config = load_text(tmp_path, text.replace("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", KEY_B64))
    assert config.device.serial == "DL-0001-0002"
    assert config.broker.port == 3478


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # typo in a key: named, with a suggestion
        ('serial = "DL', 'serail = "DL', r"unknown key serail in \[device\]; did you mean serial\?"),
        ("retries = 3", "retry = 3", r"unknown key retry in \[presence\]; did you mean retries\?"),
        ("[log]", "[logging]", r"unknown section \[logging\]; did you mean \[log\]\?"),
        # bad values: file, key, what was seen, what to do
        (
            f'public_key = "{KEY_B64}"',
            'public_key = "not base64!"',
            r"\[broker\] public_key = \"not base64!\".*base64",
        ),
        (
            f'public_key = "{KEY_B64}"',
            f'public_key = "{base64.b64encode(bytes(16)).decode()}"',
            r"\[broker\] public_key = .*32 bytes, got 16",
        ),
        ('serial = "DL-0001-0002"', 'serial = "dl 1"', r"\[device\] serial = \"dl 1\".*label"),
        (
            "port = 3479",
            "port = 70000",
            r"\[broker\] port = 70000: out of range; use a value from 1 to 65535",
        ),
        ("port = 3479", 'port = "3479"', r"\[broker\] port = \"3479\": expected a whole number"),
        ("retries = 3", "retries = true", r"\[presence\] retries = true: expected a whole number"),
        ("keepalive_interval_s = 20", "keepalive_interval_s = 0", r"keepalive_interval_s = 0: out of range"),
        ('level = "debug"', 'level = "loud"', r"\[log\] level = \"loud\": expected one of DEBUG"),
        ('host = "broker.example.net"', 'host = "https://broker"', r"\[broker\] host = .*without scheme"),
        (
            "reply_timeout_s = 2.5",
            "reply_timeout_s = 10",
            r"reply_timeout_s = 10 with retries = 3 waits 40 s",
        ),
        ("[device]", "[[device]]", r"device must be a section"),
    ],
)
def test_bad_values(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError, match=expected) as info:
        load_text(tmp_path, GOOD.replace(old, new, 1))
    assert str(tmp_path / "dvrlinkd.toml") in str(info.value)


def test_missing_required_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[broker\] public_key is missing; add it"):
        load_text(tmp_path, MINIMAL.replace(f'public_key = "{KEY_B64}"', ""))
    with pytest.raises(ConfigError, match=r"\[device\] serial is missing"):
        load_text(tmp_path, MINIMAL.replace("[device]\nserial", "[device]\n#serial"))


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML \(.*line 3"):
        load_text(tmp_path, "[device]\nserial = 'x'\nthis is not toml\n")
    with pytest.raises(ConfigError, match=r"config file not found; create it from dvrlinkd.example.toml"):
        load_config(tmp_path / "nope.toml")


def test_check_config_process(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    ok = run_dvrlinkd("--check-config", "--config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"config OK: {good}: serial DL-0001-0002, broker broker.example.net:3479")

    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace(f'public_key = "{KEY_B64}"', 'public_key = "xyz"'))
    result = run_dvrlinkd("--check-config", "--config", str(bad))
    assert result.returncode == 78
    assert result.stdout == ""
    assert f'{bad}: [broker] public_key = "xyz"' in result.stderr
    assert "dvrlink-broker prints it" in result.stderr  # says what to do


def test_check_config_uses_environment_variable(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    result = run_dvrlinkd("--check-config", env={"DVRLINKD_CONFIG": str(good), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    missing = run_dvrlinkd("--check-config", "--config", str(tmp_path / "none.toml"))
    assert missing.returncode == 78
    assert "config file not found" in missing.stderr


def test_port_search_is_light_on_a_metered_link_unless_set(tmp_path: Path) -> None:
    assert load_text(tmp_path, MINIMAL).sessions.port_search is SearchBudget.FULL
    modem = MINIMAL + "[modem]\nenabled = true\n"
    assert load_text(tmp_path, modem).sessions.port_search is SearchBudget.LIGHT
    chosen = modem + '[sessions]\nport_search = "Full"\n'
    assert load_text(tmp_path, chosen).sessions.port_search is SearchBudget.FULL
    off = MINIMAL + '[sessions]\nport_search = "off"\n'
    assert load_text(tmp_path, off).sessions.port_search is SearchBudget.OFF
    with pytest.raises(ConfigError, match=r'\[sessions\] port_search = "always": expected one of auto, full'):
        load_text(tmp_path, MINIMAL + '[sessions]\nport_search = "always"\n')


# --- values shown as the file spells them (issue 10, friction) -----------------------------------


@pytest.mark.parametrize(
    ("section", "line", "shown"),
    [
        ("[presence]", "learn_keepalive = 1", "[presence] learn_keepalive = 1: expected true or false"),
        ("[presence]", 'learn_keepalive = "yes"', '[presence] learn_keepalive = "yes": expected true'),
        ("[presence]", "keepalive_interval_s = true", "[presence] keepalive_interval_s = true: expected a"),
        ("[presence]", "retries = false", "[presence] retries = false: expected a whole number"),
        ("[presence]", 'transport = "quic"', '[presence] transport = "quic": expected one of udp, tcp, auto'),
        ("[log]", 'level = "25"', '[log] level = "25": expected one of'),
        ("[modem]", 'enabled = "true"', '[modem] enabled = "true": expected true or false'),
        ("[modem]", 'dhcp_command = ["udhcpc"]', '[modem] dhcp_command = ["udhcpc"]: pass the interface'),
        ("[modem]", 'pin = "12ab"', '[modem] pin = "****": a SIM PIN'),
        (
            "[sessions]",
            'host_addresses = ["10.0.0.1", "x"]',
            '[sessions] host_addresses = ["10.0.0.1", "x"]: "x" is not an IP address',
        ),
        ("[sessions]", "host_addresses = [1.5]", "[sessions] host_addresses = [1.5]: 1.5 is not an IP"),
        ("[sessions]", "policy = {a = true}", "[sessions] policy = {a = true}: expected one of all"),
    ],
)
def test_values_are_shown_as_the_file_spells_them(
    tmp_path: Path, section: str, line: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"{MINIMAL}{section}\n{line}\n")
    message = str(info.value)
    assert shown in message, message
    for python_spelling in ("'", "True", "False"):
        assert python_spelling not in message, message


def test_a_section_given_as_a_value_is_shown_as_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, 'log = "DEBUG"\n' + MINIMAL)
    assert 'log must be a section [log], got "DEBUG"' in str(info.value), info.value


def test_the_board_supervisor_is_off_unless_named(tmp_path: Path) -> None:
    assert load_text(tmp_path, MINIMAL).board.supervisor == ""
    board = load_text(
        tmp_path,
        MINIMAL
        + '[board]\nsupervisor = "/dev/ttyS2"\nsupervisor_timeout_s = 90\nsupervisor_modem = "SIM800"\n'
        + "supervisor_power_cut = true\nlow_supply_v = 10.5\n",
    ).board
    assert (board.supervisor, board.supervisor_timeout_s) == ("/dev/ttyS2", 90)
    assert board.supervisor_modem == "sim800"
    assert board.supervisor_power_cut and board.low_supply_v == 10.5 and board.supervisor_heartbeat_s == 10.0


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('supervisor = "ttyS2"', r"\[board\] supervisor = \"ttyS2\": expected the UART device path"),
        ("supervisor_timeout_s = 5", r"supervisor_timeout_s = 5: the supervisor takes 10-3600 s"),
        (
            "supervisor_timeout_s = 20\nsupervisor_heartbeat_s = 10",
            r"supervisor_heartbeat_s = 10.*at most a third of supervisor_timeout_s \(20 s\)",
        ),
        ('supervisor_modem = "sim7600"', r"expected one of auto, sim800, quectel-ec2x-uc20"),
        ("supervisor_baud = 1000000", r"supervisor_baud = 1000000: expected one of"),
        ("watchdog = 1", r"unknown key watchdog in \[board\]"),
    ],
)
def test_a_bad_board_section_says_what_to_fix(tmp_path: Path, lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_text(tmp_path, MINIMAL + "[board]\n" + lines + "\n")


def test_a_modem_the_supervisor_has_no_timing_for_must_name_one(tmp_path: Path) -> None:
    text = MINIMAL + '[modem]\nenabled = true\nprofile = "huawei-e173"\n[board]\nsupervisor = "/dev/ttyS2"\n'
    with pytest.raises(ConfigError, match=r"no power-cycle timing for \[modem\] profile huawei-e173; set"):
        load_text(tmp_path, text)
    fixed = load_text(tmp_path, text + 'supervisor_modem = "quectel-ec2x-uc20"\n')
    assert fixed.board.supervisor_modem == "quectel-ec2x-uc20"
