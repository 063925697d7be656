"""``[services]`` in dvrlinkd.toml and ``-L`` forward specs: good values, and bad ones with messages
that name the value and say what to write."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from dvrlink.daemon.errors import ConfigError
from dvrlink.daemon.services import ServicesConfig, parse_services
from dvrlink.session.allow_list import AllowedTarget, parse_allowed_target
from dvrlink.viewer.forward import ForwardSpec, parse_forward_spec

SOURCE = Path("/etc/dvrlink/dvrlinkd.toml")


def services_from(text: str) -> ServicesConfig:
    return parse_services(tomllib.loads(text), SOURCE)


def test_defaults_allow_nothing() -> None:
    config = services_from("")
    assert config == ServicesConfig()
    assert config.forward_allow == ()
    assert config.connect_timeout_s == 5.0
    assert config.max_streams_per_session == 32
    assert not config.allows("127.0.0.1", 554)


def test_good_section() -> None:
    config = services_from(
        """
[services]
forward = ["127.0.0.1:554", "127.0.0.1:80", "192.168.1.64:8000", "[::1]:8080", "Recorder.LAN:37777", 443]
connect_timeout_s = 2
max_streams_per_session = 8
"""
    )
    assert config.forward_allow == (
        AllowedTarget("127.0.0.1", 554),
        AllowedTarget("127.0.0.1", 80),
        AllowedTarget("192.168.1.64", 8000),
        AllowedTarget("::1", 8080),
        AllowedTarget("recorder.lan", 37777),
        AllowedTarget("127.0.0.1", 443),
    )
    assert [str(t) for t in config.forward_allow][3] == "[::1]:8080"
    assert config.connect_timeout_s == 2.0
    assert config.max_streams_per_session == 8


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('forward = "127.0.0.1:554"', 'forward = "127.0.0.1:554": expected a list; write it as forward = ['),
        ('forward = ["127.0.0.1"]', 'forward entry "127.0.0.1": expected HOST:PORT'),
        ('forward = ["127.0.0.1:0"]', 'port "0" must be a number from 1 to 65535'),
        ('forward = ["127.0.0.1:rtsp"]', 'port "rtsp" must be a number from 1 to 65535'),
        ('forward = ["::1:554"]', "IPv6 in brackets: [::1]:554"),
        ('forward = ["[::1]554"]', "an IPv6 target is written [ADDRESS]:PORT"),
        ('forward = ["0.0.0.0:554"]', "write 127.0.0.1 for the device itself"),
        ('forward = ["bad_host!:80"]', '"bad_host!" is not an IP address or host name'),
        ("forward = [1.5]", 'expected a string "HOST:PORT" or a port number'),
        ('forward = ["127.0.0.1:554", 554]', "lists 127.0.0.1:554 twice (as 554); remove one"),
        ("connect_timeout_s = 0", "connect_timeout_s = 0: expected seconds from 0.1 to 120"),
        ('connect_timeout_s = "5"', 'connect_timeout_s = "5": expected seconds'),
        (
            "max_streams_per_session = 0",
            "max_streams_per_session = 0: expected a whole number from 1 to 1024",
        ),
        ("max_streams_per_session = true", "max_streams_per_session = true"),
        ("forwards = []", "unknown key forwards in [services]; did you mean forward?"),
    ],
)
def test_bad_values(section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        services_from(f"[services]\n{section}\n")
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: [services]") or message.startswith(f"{SOURCE}: unknown key")
    assert expected in message


def test_services_must_be_a_section() -> None:
    with pytest.raises(ConfigError, match=r"services must be a section \[services\]"):
        services_from('services = "all"')


def test_parse_allowed_target_alone() -> None:
    assert parse_allowed_target("  10.0.0.5:8000 ") == AllowedTarget("10.0.0.5", 8000)
    assert parse_allowed_target("[2001:DB8::1]:80") == AllowedTarget("2001:db8::1", 80)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_allowed_target("")


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("8554:554", ForwardSpec("127.0.0.1", 8554, "127.0.0.1", 554)),
        ("0:80", ForwardSpec("127.0.0.1", 0, "127.0.0.1", 80)),
        ("0.0.0.0:8080:80", ForwardSpec("0.0.0.0", 8080, "127.0.0.1", 80)),
        ("localhost:8080:80", ForwardSpec("localhost", 8080, "127.0.0.1", 80)),
        ("8000:192.168.1.64:8000", ForwardSpec("127.0.0.1", 8000, "192.168.1.64", 8000)),
        ("0.0.0.0:8000:192.168.1.64:8000", ForwardSpec("0.0.0.0", 8000, "192.168.1.64", 8000)),
        ("[::1]:8554:554", ForwardSpec("::1", 8554, "127.0.0.1", 554)),
        ("[::]:8554:[fe80::2]:554", ForwardSpec("::", 8554, "fe80::2", 554)),
        ("8554:[::1]:554", ForwardSpec("127.0.0.1", 8554, "::1", 554)),
    ],
)
def test_forward_specs(text: str, spec: ForwardSpec) -> None:
    assert parse_forward_spec(text) == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("554", "expected [BIND:]LOCAL:REMOTE or [BIND:]LOCAL:HOST:REMOTE"),
        ("", "expected [BIND:]LOCAL:REMOTE"),
        ("a:b:c:d:e", "expected [BIND:]LOCAL:REMOTE"),
        ("8554:rtsp", 'remote port "rtsp" must be a number from 1 to 65535'),
        ("8554:0", 'remote port "0" must be a number from 1 to 65535'),
        ("70000:554", 'local port "70000" must be a number from 0 to 65535'),
        ("-1:554", 'local port "-1"'),
        (":8554:554", 'bind address "" must be a host name or IP address'),
        ("8554::554", 'device-side host "" must be a host name or IP address'),
        ("[::1:8554:554", "an opening '[' has no closing ']'"),
        ("[::1]8554:554", "a ']' must be followed by ':'"),
        ("8554:554 ", None),
    ],
)
def test_bad_forward_specs(text: str, expected: str | None) -> None:
    if expected is None:  # surrounding blanks are fine
        assert parse_forward_spec(text).remote_port == 554
        return
    with pytest.raises(ValueError) as info:
        parse_forward_spec(text)
    message = str(info.value)
    assert message.startswith(f"bad forward {json.dumps(text)}: ")
    assert expected in message
    assert "e.g. 8554:554" in message
