"""Broker configuration: defaults, overrides, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvrlink.broker.config import (
    BrokerConfig,
    ConfigError,
    ExternalTurnServer,
    config_from_mapping,
    load_config,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def test_minimal_file_gets_every_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'state_dir = "state"\n'))
    assert config == BrokerConfig(state_dir=tmp_path / "state")
    assert (config.udp_port, config.https_port) == (3478, 8443)
    assert config.token_lifetime_s == 30 * 86400
    assert (config.pairing_max_failures, config.pairing_window_s, config.invite_ttl_s) == (3, 3600, 15)
    assert (config.pairing_device_max_failures, config.pairing_device_window_s) == (10, 86400)
    assert (config.http_body_timeout_s, config.http_max_connections_per_address) == (10, 64)
    assert not config.manifest_only
    assert config.log_level_number == 20


def test_full_file_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
state_dir = "/srv/broker"
udp_host = "127.0.0.1"
udp_port = 0
https_host = "::1"
https_port = 9443
tls_cert = "cert.pem"
tls_key = "/etc/key.pem"
server_names = ["broker.example.net", "192.0.2.1"]
token_lifetime_s = 3600
manifest_only = true
pairing_max_failures = 3
pairing_window_s = 600.5
invite_ttl_s = 5
login_max_failures = 4
login_window_s = 60
log_level = "debug"
""",
    )
    config = load_config(path, {"https_port": 0})
    assert config.state_dir == Path("/srv/broker")
    assert config.tls_cert == tmp_path / "cert.pem"
    assert config.tls_key == Path("/etc/key.pem")
    assert config.server_names == ("broker.example.net", "192.0.2.1")
    assert (config.udp_port, config.https_port, config.https_host) == (0, 0, "::1")
    assert config.manifest_only
    assert config.invite_ttl_s == 5.0
    assert isinstance(config.invite_ttl_s, float)
    assert config.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'state_dir = "s"\nudp_port = 70000\n',
            r"key 'udp_port' is 70000, out of range; use an integer from 0 to 65535",
        ),
        ('state_dir = "s"\nudp_port = "3478"\n', r"key 'udp_port' must be an integer"),
        ('state_dir = "s"\nhttps_port = true\n', r"key 'https_port' must be an integer"),
        (
            'state_dir = "s"\nudp_host = "example.net"\n',
            r"key 'udp_host' is 'example.net', not an IP address",
        ),
        ('state_dir = "s"\nmanifest_only = "yes"\n', r"key 'manifest_only' must be true or false"),
        ('state_dir = "s"\ninvite_ttl_s = 0\n', r"key 'invite_ttl_s' is 0 s, out of range"),
        ('state_dir = "s"\nserver_names = "a.example"\n', r"key 'server_names' must be a list"),
        ('state_dir = "s"\nlog_level = "LOUD"\n', r"key 'log_level' is 'LOUD'; use one of DEBUG"),
        ('state_dir = "s"\ntls_cert = "c.pem"\n', r"'tls_cert' and 'tls_key' go together"),
        ('state_dir = "s"\nudp_prot = 1\n', r"unknown key 'udp_prot'; remove it or use one of"),
        ("udp_port = 1\n", r"key 'state_dir' is missing"),
        ("state_dir = \n", r"not valid TOML"),
    ],
)
def test_errors_name_the_file_the_key_and_the_fix(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert str(info.value).startswith(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.toml")


def test_mapping_without_a_file_uses_the_source_name(tmp_path: Path) -> None:
    config = config_from_mapping({"state_dir": str(tmp_path), "udp_port": 0}, source="command line")
    assert config.state_dir == tmp_path
    with pytest.raises(ConfigError, match=r"^command line: key 'https_port'"):
        config_from_mapping({"state_dir": str(tmp_path), "https_port": -1}, source="command line")


def test_the_example_file_is_valid_and_shows_the_defaults() -> None:
    example = Path(__file__).parent.parent / "broker" / "dvrlink-broker.example.toml"
    config = load_config(example)
    assert config == BrokerConfig(state_dir=Path("/var/lib/dvrlink-broker"))


def test_turn_keys_defaults_and_checks(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'state_dir = "state"\n'))
    assert config.turn_enabled and (config.turn_udp_port, config.turn_tcp_port) == (3479, 3479)
    assert config.turn_secret_path == tmp_path / "state" / "turn_secret"
    assert config.turn_relay_bind_host == "0.0.0.0"
    assert (config.turn_credential_ttl_s, config.turn_allow_loopback_peers) == (3600.0, False)
    config = load_config(
        write(
            tmp_path,
            'state_dir = "state"\nudp_host = "127.0.0.1"\nturn_secret_file = "secret"\n'
            "turn_relay_port_min = 0\nturn_relay_port_max = 0\n"
            'turn_servers = [{host = "turn1.example.net", transport = "tcp"},\n'
            '  {host = "192.0.2.9", port = 5349}]\n',
        )
    )
    assert config.turn_secret_path == tmp_path / "secret"
    assert config.turn_relay_bind_host == "127.0.0.1"
    assert config.turn_servers == (
        ExternalTurnServer("turn1.example.net", 3478, "tcp"),
        ExternalTurnServer("192.0.2.9", 5349, "udp"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("turn_udp_port = 65536\n", r"key 'turn_udp_port' is 65536, out of range"),
        ("turn_relay_port_min = 6000\nturn_relay_port_max = 5000\n", r"6000\.\.5000; use 1 <= min <= max"),
        ('turn_relay_host = "relay.example"\n', r"key 'turn_relay_host' is 'relay.example', not an IP"),
        ('turn_relay_host = "0.0.0.0"\nturn_relay_public_host = "::1"\n', r"differ in IP version"),
        ('turn_realm = ""\n', r"key 'turn_realm' must be 1 to 127 bytes"),
        ("turn_enabled = 1\n", r"key 'turn_enabled' must be true or false"),
        ("turn_credential_ttl_s = 5\n", r"key 'turn_credential_ttl_s' is 5 s, out of range"),
        ('turn_servers = "turn.example"\n', r"key 'turn_servers' must be a list of tables"),
        ('turn_servers = [{host = "a b"}]\n', r"turn_servers'\[0\]: host must be a host name"),
        ('turn_servers = [{host = "t.example", port = 0}]\n', r"port must be an integer from 1 to 65535"),
        ('turn_servers = [{host = "t.example", transport = "tls"}]\n', r'transport must be "udp" or "tcp"'),
        ('turn_servers = [{host = "t.example", secret = "x"}]\n', r"unknown key 'secret'"),
    ],
)
def test_bad_turn_keys_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, 'state_dir = "s"\n' + text))
