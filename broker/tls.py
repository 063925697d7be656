"""TLS for the viewer API: a self-signed certificate in the state directory, and the SSL context.

The self-signed certificate is its own trust anchor: viewers pass it as ``--cacert``. It is made
once (EC P-256, ten years) and kept; it is made again only when a configured server name is
missing from it, which the log says, because viewers must then fetch the new file.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dvrlink.store.files import atomic_write

CERT_FILE = "tls_cert.pem"
KEY_FILE = "tls_key.pem"
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
VALIDITY = datetime.timedelta(days=3650)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CertificatePaths:
    """Where the API's certificate chain and key are."""

    cert: Path
    key: Path


def subject_alt_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """``names`` as subjectAltName entries: IP literals as IPAddress, the rest as DNSName."""
    result: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in (*DEFAULT_NAMES, *names):
        if name in seen:
            continue
        seen.add(name)
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def make_self_signed(names: Sequence[str], now: datetime.datetime) -> tuple[bytes, bytes]:
    """A new self-signed certificate and key (PEM) for ``localhost``, 127.0.0.1, ::1 and ``names``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dvrlink-broker")])
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _covers(cert_path: Path, names: Sequence[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    present = set(san)
    return all(entry in present for entry in subject_alt_names(names))


def ensure_self_signed(state_dir: Path, names: Sequence[str], now: datetime.datetime) -> CertificatePaths:
    """Return the self-signed certificate in ``state_dir``, making it if it is missing or lacks a name.

    The key file is written first (mode 0600), then the certificate, each atomically.

    Raises:
        OSError: ``state_dir`` is not writable; the message names the path.
    """
    paths = CertificatePaths(state_dir / CERT_FILE, state_dir / KEY_FILE)
    if paths.cert.exists() and paths.key.exists() and _covers(paths.cert, names):
        return paths
    if paths.cert.exists():
        log.warning(
            "making a new TLS certificate %s for %s; viewers must trust the new file",
            paths.cert,
            ", ".join((*DEFAULT_NAMES, *names)),
        )
    cert_pem, key_pem = make_self_signed(names, now)
    atomic_write(paths.key, key_pem, mode=0o600)
    atomic_write(paths.cert, cert_pem, mode=0o644)
    return paths


def server_context(paths: CertificatePaths) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) for the API.

    Raises:
        ValueError: the certificate or key cannot be loaded; the message names the files.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(paths.cert, paths.key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"cannot load TLS certificate {paths.cert} with key {paths.key} ({exc}); check that both are "
            "PEM files and belong together, or remove tls_cert/tls_key to use a self-signed certificate"
        ) from exc
    return ctx


def client_context(cafile: Path) -> ssl.SSLContext:
    """A client context that trusts only ``cafile`` (used by tests and tools talking to the API)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
