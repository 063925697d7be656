"""Certificates for session identities (the aioquic internals that read them: test_compat_aioquic.py)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID
from support.session import SERIAL, WALL_CLOCK

from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint
from dvrlink.protocol.session_tls import (
    certificate_ed25519_key,
    certificate_fingerprint,
    device_certificate,
    viewer_certificate,
)


def test_device_certificate_is_self_signed_for_the_device_key() -> None:
    key = Ed25519PrivateKey.generate()
    cert = device_certificate(key, SERIAL, WALL_CLOCK)
    assert isinstance(cert.public_key(), Ed25519PublicKey)
    assert certificate_ed25519_key(cert) == ed25519_public_bytes(key)
    assert certificate_fingerprint(cert) == fingerprint(ed25519_public_bytes(key))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SERIAL
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert cert.not_valid_before_utc <= WALL_CLOCK <= cert.not_valid_after_utc
    assert device_certificate(key, SERIAL, WALL_CLOCK) == cert  # pure


def test_viewer_certificate_names_its_fingerprint() -> None:
    key = Ed25519PrivateKey.generate()
    cert = viewer_certificate(key, WALL_CLOCK)
    fp = fingerprint(ed25519_public_bytes(key))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == fp


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        device_certificate(Ed25519PrivateKey.generate(), SERIAL, datetime.datetime(2025, 1, 1))


def test_non_ed25519_certificate_has_no_fingerprint() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(WALL_CLOCK)
        .not_valid_after(WALL_CLOCK + datetime.timedelta(days=1))
        .sign(key, algorithm=hashes.SHA256())
    )
    assert certificate_ed25519_key(cert) is None
    assert certificate_fingerprint(cert) is None
