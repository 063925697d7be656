"""Tables and reports with a fixed ``now``, and the checks on the broker's answer bodies."""

from __future__ import annotations

import base64
import dataclasses
import re
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint, format_fingerprint
from dvrlink.protocol.presence_report import DeviceReport
from dvrlink.viewer.api_types import (
    Device,
    parse_device,
    parse_devices,
    parse_identity,
    parse_pair_answer,
    parse_token,
)
from dvrlink.viewer.home import Pin
from dvrlink.viewer.render import (
    PinStatus,
    device_json,
    format_ago,
    format_time,
    mismatch_warnings,
    pin_status,
    render_devices,
    render_status,
)

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def _key(seed: int) -> bytes:
    return ed25519_public_bytes(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


FP1 = fingerprint(_key(1))
FP2 = fingerprint(_key(2))
FP3 = fingerprint(_key(3))

ONLINE = Device("DL-0001", True, NOW - 3, "203.0.113.7:40001", NOW - 7200, 25.0, FP1, NOW - 86400 * 3)
OFFLINE = Device("DL-0002", False, NOW - 600, None, NOW - 90000, 25.0, FP2, NOW - 86400)
NEVER = Device("GW-12", False, None, None, None, None, FP3, NOW - 60)


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (None, "never"),
        (0, "0s ago"),
        (3, "3s ago"),
        (59.9, "59s ago"),
        (60, "1m ago"),
        (3599, "59m ago"),
        (3600, "1h ago"),
        (86399, "23h ago"),
        (86400 * 3 + 5, "3d ago"),
        (-5, "0s ago"),  # broker clock slightly ahead
    ],
)
def test_format_ago(age: float | None, text: str) -> None:
    assert format_ago(None if age is None else NOW - age, NOW) == text


def test_format_time_is_utc_with_age() -> None:
    assert format_time(NOW - 3, NOW) == "2023-11-14 22:13:17 UTC (3s ago)"
    assert format_time(None, NOW) == "never"


def test_devices_table_with_fixed_now() -> None:
    pins = {
        "DL-0001": Pin(_key(1), FP1, NOW - 86400 * 3),  # same key: ok
        "DL-0002": Pin(_key(9), fingerprint(_key(9)), NOW),  # another key: MISMATCH
    }  # GW-12 has no pin on this computer
    table = render_devices([NEVER, OFFLINE, ONLINE], pins, NOW)
    assert table == (
        "SERIAL   ONLINE  LAST SEEN  ADDRESS            PINNED\n"
        "DL-0001  yes     3s ago     203.0.113.7:40001  ok\n"
        "DL-0002  no      10m ago    -                  MISMATCH\n"
        "GW-12    no      never      -                  -\n"
    )


def test_empty_devices_table_says_how_to_pair() -> None:
    assert "dvrlink pair SERIAL CODE" in render_devices([], {}, NOW)


def test_pin_status_and_mismatch_warnings() -> None:
    ok = Pin(_key(1), FP1, NOW)
    other = Pin(_key(9), fingerprint(_key(9)), NOW)
    assert pin_status(ONLINE, ok) is PinStatus.OK
    assert pin_status(ONLINE, other) is PinStatus.MISMATCH
    assert pin_status(ONLINE, None) is PinStatus.NOT_PINNED
    assert mismatch_warnings([ONLINE, OFFLINE], {"DL-0001": ok}) == []
    (warning,) = mismatch_warnings([ONLINE, OFFLINE], {"DL-0001": other})
    assert "DL-0001" in warning
    assert "another key than the one pinned at pairing" in warning
    assert format_fingerprint(FP1) in warning
    assert format_fingerprint(other.fingerprint) in warning


def test_status_report_with_fixed_now() -> None:
    report = render_status(ONLINE, Pin(_key(1), FP1, NOW), NOW)
    lines = dict(line.split(": ", 1) for line in report.splitlines())
    assert {k.strip(): v.strip() for k, v in lines.items()} == {
        "serial": "DL-0001",
        "online": "yes",
        "last seen": "2023-11-14 22:13:17 UTC (3s ago)",
        "address": "203.0.113.7:40001",
        "registered at": "2023-11-14 20:13:20 UTC (2h ago)",
        "keepalive interval": "25s",
        "paired at": "2023-11-11 22:13:20 UTC (3d ago)",
        "fingerprint": format_fingerprint(FP1),
        "pinned fingerprint": format_fingerprint(FP1),
    }
    never = render_status(NEVER, None, NOW)
    assert "last seen:          never" in never
    assert "keepalive interval: -" in never
    assert "not paired from this computer" in never
    mismatch = render_status(ONLINE, Pin(_key(9), fingerprint(_key(9)), NOW), NOW)
    assert "MISMATCH" in mismatch


def test_device_json_adds_pin_fields() -> None:
    body = device_json(OFFLINE, Pin(_key(2), FP2, NOW))
    assert body["pin_status"] == "ok"
    assert body["pinned_fingerprint"] == FP2
    assert body["last_seen"] == NOW - 600
    assert device_json(NEVER, None)["pin_status"] == "none"
    assert device_json(NEVER, Pin(_key(1), FP1, NOW))["pin_status"] == "mismatch"


def _device_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "serial": "DL-0001",
        "online": True,
        "last_seen": NOW - 3,
        "reflexive_address": "203.0.113.7:40001",
        "registered_at": NOW - 7200,
        "keepalive_interval": 25,
        "fingerprint": FP1,
        "paired_at": NOW - 86400 * 3,
    }
    body.update(changes)
    return body


def test_parse_device_accepts_the_contract_shape() -> None:
    assert parse_device(_device_body()) == ONLINE
    never = parse_device(
        _device_body(last_seen=None, reflexive_address=None, registered_at=None, keepalive_interval=None)
    )
    assert never == replace(
        ONLINE, last_seen=None, reflexive_address=None, registered_at=None, keepalive_interval=None
    )
    assert parse_devices({"devices": [_device_body()]}) == [ONLINE]


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ([], "not a JSON object"),
        (_device_body(online="yes"), '"online"'),
        (_device_body(last_seen="x"), '"last_seen"'),
        (_device_body(paired_at=None), '"paired_at"'),
        (_device_body(reflexive_address=5), '"reflexive_address"'),
        (_device_body(serial="bad serial"), "not valid"),
        (_device_body(serial="DL-0009"), "not DL-0001"),
        ({k: v for k, v in _device_body().items() if k != "last_seen"}, '"last_seen" is missing'),
    ],
)
def test_parse_device_rejects_bad_fields(body: Any, what: str) -> None:
    with pytest.raises(ValueError, match=what):
        parse_device(body, "DL-0001")


def test_parse_devices_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match="device #2"):
        parse_devices({"devices": [_device_body(), _device_body(online=None)]})
    with pytest.raises(ValueError, match='"devices"'):
        parse_devices({"items": []})


def test_parse_identity_checks_fingerprint_against_key() -> None:
    key_b64 = base64.b64encode(_key(1)).decode()
    body = {"serial": "DL-0001", "public_key": key_b64, "fingerprint": FP1, "online": True}
    identity = parse_identity(body, "DL-0001")
    assert identity.public_key == _key(1)
    with pytest.raises(ValueError, match="not the fingerprint"):
        parse_identity(body | {"fingerprint": FP2}, "DL-0001")
    with pytest.raises(ValueError, match="32 bytes"):
        parse_identity(body | {"public_key": base64.b64encode(b"x").decode()}, "DL-0001")
    with pytest.raises(ValueError, match="not DL-0002"):
        parse_identity(body, "DL-0002")


def test_parse_token_and_pair_answer() -> None:
    token = parse_token({"token": "t", "expires_at": 5, "username": "alice"})
    assert (token.token, token.expires_at, token.username) == ("t", 5.0, "alice")
    with pytest.raises(ValueError, match='"expires_at"'):
        parse_token({"token": "t", "username": "alice"})
    answer = parse_pair_answer({"status": "paired", "result": base64.b64encode(b"abc").decode()}, True)
    assert (answer.paired, answer.result) == (True, b"abc")
    with pytest.raises(ValueError, match="not base64"):
        parse_pair_answer({"result": "&&&"}, True)


def test_devices_table_shows_reports_when_any_device_reported() -> None:
    cellular = dataclasses.replace(
        ONLINE,
        report=DeviceReport(
            signal_dbm=-87,
            rat="lte",
            operator="Telekom.de",
            data_used=12_345_678,
            keepalive_s=105,
            nat_lifetime_s=150,
            presence_transport="udp",
        ),
    )
    wired = dataclasses.replace(OFFLINE, report=DeviceReport(keepalive_s=25, presence_transport="udp"))
    table = render_devices([cellular, wired, NEVER], {}, NOW)
    lines = table.splitlines()
    assert lines[0].split() == [
        "SERIAL", "ONLINE", "LAST", "SEEN", "ADDRESS", "PINNED", "SIGNAL", "NETWORK", "DATA", "KEEPALIVE",
    ]  # fmt: skip
    cells = [re.split(r"\s{2,}", line) for line in lines[1:]]
    assert cells[0][-4:] == ["-87 dBm", "lte Telekom.de", "12.3 MB", "105 s udp (NAT 150 s)"]
    assert cells[1][-4:] == ["-", "-", "-", "25 s udp"]
    assert cells[2][-4:] == ["-", "-", "-", "-"]


def test_parse_device_reads_the_report() -> None:
    body = _device_body(report={"signal_dbm": -90, "rat": "edge", "unknown": 1}, reported_at=NOW - 60)
    device = parse_device(body)
    assert device.report == DeviceReport(signal_dbm=-90, rat="edge")
    assert device.reported_at == NOW - 60
    assert parse_device(_device_body()).report is None
    with pytest.raises(ValueError, match="report"):
        parse_device(_device_body(report=[1, 2]))
    assert device_json(device, None)["report"] == {"signal_dbm": -90, "rat": "edge"}
