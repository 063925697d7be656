"""Resumption tickets: a device the fleet already knows registers again without asymmetric crypto.

A full registration costs the broker an Ed25519 verification and three X25519 operations (about
0.75 ms of a core). After a broker restart or a node move, every device of the fleet registers at
once, so the broker hands each device a ticket in its REGISTERED:

- the **ticket** is sealed (ChaCha20-Poly1305, random 12-byte nonce) under a key derived from the
  broker's static X25519 key, which every node of a fleet shares (the fleet key, docs/cluster.md);
  it holds the serial, the device key, when it was issued (Unix seconds) and a resumption secret;
- the **resumption secret** is derived from the session key of the registration that issued the
  ticket: only the device and the fleet know it.

A resumed REGISTER carries the ticket and, instead of the Ed25519 signature, an HMAC-SHA256 under
the resumption secret over every byte before it (the body with the broker's fresh cookie, then the
ticket). The broker opens the ticket, checks the serial and key match the body and verifies the
MAC; the session key is then HKDF over the resumption secret, bound to the device's nonce, the
cookie and 32 random bytes of the broker's (sent where a full REGISTERED carries the broker's
ephemeral key). Replays are refused as for a full REGISTER: the cookie is bound to the source
address and the moment, and a device's registrations are ordered by their cookies' time stamps.

A resumed session has no forward secrecy of its own (as TLS 1.3's PSK-only resumption): its key
follows from the ticket's secret. The ticket's lifetime bounds that (the broker refuses older ones
with ``TICKET_EXPIRED``, and the device then registers in full), and every registration, resumed or
full, hands out a fresh ticket with a fresh secret.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from dvrlink.protocol.presence_wire import KEY_SIZE

TICKET_NONCE_SIZE = 12
TICKET_TAG_SIZE = 16
SECRET_SIZE = 32
MAC_SIZE = 32
RESUME_LABEL = b"dvrlink resume v1\x00"
TICKET_VERSION = 1
_FIXED = struct.Struct(">BI")  # version, issued_at (Unix seconds)
MAX_TICKET = TICKET_NONCE_SIZE + _FIXED.size + KEY_SIZE + SECRET_SIZE + 1 + 32 + TICKET_TAG_SIZE
"""The largest ticket (130 bytes): a serial is at most 32 characters."""


def _hkdf(secret: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869) for one 32-byte output: extract, then one expand block, each one
    C-level ``hmac.digest``. Equal to ``cryptography``'s ``HKDF(SHA256(), 32, salt, info)`` (a
    test checks) at an eighth of its cost, which a registration storm pays twice per device."""
    prk = hmac.digest(salt or bytes(32), secret, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def ticket_key(static_key: X25519PrivateKey) -> bytes:
    """The fleet's ticket key, derived from the broker's static key (the same on every node)."""
    raw = static_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return _hkdf(raw, b"dvrlink ticket key v1")


def resumption_secret(session_key: bytes) -> bytes:
    """The secret a ticket carries: derived from the session key of the registration that issued it."""
    return _hkdf(session_key, b"dvrlink resumption v1")


def resumed_session_key(
    secret: bytes, nonce: bytes, cookie: bytes, serial: str, device_key: bytes, broker_random: bytes
) -> bytes:
    """The session key of a resumed registration."""
    info = b"".join(
        [b"dvrlink presence resumed v1", len(serial).to_bytes(1, "big"), serial.encode("ascii"), device_key]
    )
    return _hkdf(secret, info + cookie + broker_random, salt=nonce)


def resume_mac(secret: bytes, signed: bytes) -> bytes:
    """The MAC a resumed REGISTER carries over ``signed`` (its body, then the ticket)."""
    return hmac.digest(secret, RESUME_LABEL + signed, "sha256")


def ticket_nonce(key: bytes, session_key: bytes) -> bytes:
    """The nonce a ticket is sealed with, derived from the session key of the registration that
    issues it (unique per registration, as a random one would be): a broker that answers a
    repeated REGISTER seals the same ticket again, byte for byte, from the session key and the
    issue time alone, instead of keeping the sealed ticket until the device uses its session."""
    return hmac.digest(key, b"dvrlink ticket nonce v1\x00" + session_key, "sha256")[:TICKET_NONCE_SIZE]


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a ticket holds (sealed; the device cannot read it, only return it)."""

    serial: str
    device_key: bytes
    secret: bytes
    issued_at: int
    """Unix seconds."""


def seal_ticket(key: bytes, ticket: Ticket, nonce: bytes) -> bytes:
    """``nonce ‖ ChaCha20-Poly1305(key, nonce, plaintext)``; ``nonce``: 12 random bytes."""
    if len(nonce) != TICKET_NONCE_SIZE:
        raise ValueError(f"a ticket nonce is {TICKET_NONCE_SIZE} bytes")
    serial = ticket.serial.encode("ascii")
    plain = (
        _FIXED.pack(TICKET_VERSION, ticket.issued_at & 0xFFFFFFFF)
        + ticket.device_key
        + ticket.secret
        + bytes([len(serial)])
        + serial
    )
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plain, None)


def open_ticket(key: bytes, data: bytes) -> Ticket | None:
    """The ticket sealed in ``data``, or None: not sealed under ``key`` (another fleet, or
    forged), corrupt, or of another version. Never raises."""
    if not TICKET_NONCE_SIZE + _FIXED.size + TICKET_TAG_SIZE < len(data) <= MAX_TICKET:
        return None
    nonce = data[:TICKET_NONCE_SIZE]
    try:
        plain = ChaCha20Poly1305(key).decrypt(nonce, data[TICKET_NONCE_SIZE:], None)
    except InvalidTag:
        return None
    version, issued_at = _FIXED.unpack_from(plain)
    rest = plain[_FIXED.size :]
    if version != TICKET_VERSION or len(rest) < KEY_SIZE + SECRET_SIZE + 1:
        return None
    device_key, secret = rest[:KEY_SIZE], rest[KEY_SIZE : KEY_SIZE + SECRET_SIZE]
    length = rest[KEY_SIZE + SECRET_SIZE]
    serial = rest[KEY_SIZE + SECRET_SIZE + 1 :]
    if len(serial) != length:
        return None
    try:
        text = serial.decode("ascii")
    except UnicodeDecodeError:
        return None
    return Ticket(text, device_key, secret, issued_at)
