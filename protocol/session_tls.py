"""TLS 1.3 identities for viewer ⇄ device sessions: certificates, pin checks, client authentication.

The device is the QUIC server. It presents a self-signed X.509 certificate for its own Ed25519
device key (``device_certificate``); aioquic's TLS signs CertificateVerify with Ed25519
(signature scheme ``ed25519``, 0x0807) when the private key is an ``Ed25519PrivateKey``, so the
certificate carries exactly the key the viewer pinned at pairing. Nothing else in the certificate
is trusted: no CA, no name, no validity window. The viewer runs with ``verify_mode=CERT_NONE`` and
replaces chain validation by the pin: the fingerprint (``identity.fingerprint``) of the raw
Ed25519 key in the server certificate must equal the pinned one. aioquic has no verification
hook, so ``ViewerSession`` reads the peer certificate from the TLS state right after each
datagram it feeds in, and closes before it transmits again: the viewer's certificate and Finished
(queued by the same call) are then never sent, only CONNECTION_CLOSE is, and no application data
is accepted or sent. The TLS CertificateVerify check (done by aioquic before that point) proves
the server holds the private key of the certificate, so pinning the key is enough.

Client authentication uses TLS client certificates (RFC 8446 §4.3.2 CertificateRequest), not an
application-level proof:

- aioquic's client answers a CertificateRequest with its certificate and an Ed25519
  CertificateVerify over the handshake transcript; its server checks that signature against the
  client certificate's key. That binds the viewer key to this very handshake (no relay or replay
  of a proof), costs no extra round trip, and needs no protocol of our own. aioquic has no TLS
  exporter, so an application-level proof would have had to invent its own channel binding.
- aioquic's server only sends a CertificateRequest when a flag of its TLS context is set (not
  exposed by ``QuicConfiguration``); ``aioquic_compat.request_client_certificate`` sets it right
  after aioquic creates the TLS context. The device then decides itself, from the raw key in the
  client certificate, whether the viewer is authorised (the broker has no say).

The aioquic internals this needs (the CertificateRequest flag, the peer's certificate) are read
and set in ``dvrlink.compat.aioquic_compat`` (``request_client_certificate``,
``peer_certificate``), which raises rather than guessing when an aioquic upgrade moved them;
``tests/test_compat_aioquic.py`` guards them. This module only builds and reads certificates.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint

ALPN = "dvrlink/1"
CERTIFICATE_LIFETIME = datetime.timedelta(days=3650)
"""Only informative: no side checks validity dates, since the key is what is pinned."""
CLOCK_SKEW = datetime.timedelta(days=1)


def _self_signed(key: Ed25519PrivateKey, common_name: str, now: datetime.datetime) -> x509.Certificate:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (for example datetime.now(timezone.utc))")
    public = ed25519_public_bytes(key)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    # Deterministic serial number: the key and the time, so the function stays pure.
    digest = hashlib.sha256(public + now.isoformat().encode()).digest()
    serial_number = int.from_bytes(digest[:16], "big") >> 1 or 1
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial_number)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, algorithm=None)
    )


def device_certificate(
    device_key: Ed25519PrivateKey, serial: str, now: datetime.datetime
) -> x509.Certificate:
    """Return a self-signed certificate for the device key, with the serial as common name.

    ``now`` is wall-clock time (timezone-aware); the same inputs give the same certificate.

    Raises:
        ValueError: ``now`` is naive, or ``serial`` cannot be a common name (1-64 characters).
    """
    return _self_signed(device_key, serial, now)


def viewer_certificate(viewer_key: Ed25519PrivateKey, now: datetime.datetime) -> x509.Certificate:
    """Return a self-signed client certificate for the viewer key (common name: its fingerprint).

    Raises:
        ValueError: ``now`` is naive.
    """
    return _self_signed(viewer_key, fingerprint(ed25519_public_bytes(viewer_key)), now)


def certificate_ed25519_key(cert: x509.Certificate) -> bytes | None:
    """Return the raw 32-byte Ed25519 public key of ``cert``, or None for any other key type."""
    try:
        key = cert.public_key()
    except ValueError:
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return ed25519_public_bytes(key)


def certificate_fingerprint(cert: x509.Certificate) -> str | None:
    """Return ``identity.fingerprint`` of the certificate's Ed25519 key, or None if it has none."""
    raw = certificate_ed25519_key(cert)
    return None if raw is None else fingerprint(raw)
