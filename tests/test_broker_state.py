"""Broker state files: the static key, broker.json, the self-signed certificate."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509

from dvrlink.broker.state import (
    BrokerInfo,
    load_or_create_static_key,
    read_info,
    remove_info,
    static_public_key,
    write_info,
)
from dvrlink.broker.tls import CertificatePaths, ensure_self_signed, server_context
from dvrlink.protocol.identity import x25519_public_bytes

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_static_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    key = load_or_create_static_key(tmp_path)
    path = tmp_path / "broker_key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert x25519_public_bytes(load_or_create_static_key(tmp_path)) == x25519_public_bytes(key)
    assert static_public_key(tmp_path) == x25519_public_bytes(key)
    assert [p.name for p in tmp_path.iterdir()] == ["broker_key.pem"]  # no temporary files left


def test_a_damaged_key_file_is_reported_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "broker_key.pem").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"broker_key\.pem.*restore it from a backup"):
        load_or_create_static_key(tmp_path)
    assert (tmp_path / "broker_key.pem").read_bytes() == b"garbage"


def test_broker_info_round_trip_and_removal_by_owner_only(tmp_path: Path) -> None:
    info = BrokerInfo(3478, 8443, bytes(range(32)), os.getpid(), tmp_path / "tls_cert.pem")
    write_info(tmp_path, info)
    assert read_info(tmp_path) == info
    remove_info(tmp_path, info.pid + 1)
    assert (tmp_path / "broker.json").exists()
    remove_info(tmp_path, info.pid)
    assert not (tmp_path / "broker.json").exists()
    with pytest.raises(FileNotFoundError):
        read_info(tmp_path)
    (tmp_path / "broker.json").write_text('{"udp_port": 1}')
    with pytest.raises(ValueError, match="not a broker info file"):
        read_info(tmp_path)


def test_self_signed_certificate_names_and_reuse(tmp_path: Path) -> None:
    paths = ensure_self_signed(tmp_path, ["broker.example.net", "192.0.2.7"], NOW)
    assert paths.key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "broker.example.net"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("192.0.2.7"),
    }
    server_context(paths)  # cert and key belong together
    first = paths.cert.read_bytes()
    assert ensure_self_signed(tmp_path, ["broker.example.net"], NOW).cert.read_bytes() == first  # kept
    ensure_self_signed(tmp_path, ["other.example.net"], NOW)  # a new name: made again
    assert paths.cert.read_bytes() != first


def test_unloadable_certificate_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mine = ensure_self_signed(tmp_path / "a", [], NOW)
    other = ensure_self_signed(tmp_path / "b", [], NOW)
    with pytest.raises(ValueError, match="belong together"):
        server_context(CertificatePaths(mine.cert, other.key))
