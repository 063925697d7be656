"""Presence cryptography: session key derivation, sealing with counters, replay window, cookies.

- Registration: the device sends an ephemeral X25519 key; the broker answers with its own. The
  session key is HKDF-SHA256 over X25519(broker static, device ephemeral) ‖ X25519(broker
  ephemeral, device ephemeral): only the holder of the pinned static key can derive it, and a
  later leak of that key does not open recorded sessions.
- Sealing: ChaCha20-Poly1305, one key per session, a 12-byte nonce made of the direction (4 bytes)
  and the sender's counter (8 bytes), the clear header as associated data.
- Cookies: stateless, ``time_us (7) ‖ HMAC(secret, time_us ‖ address ‖ nonce)[:13]``. The
  broker's time stamp also orders registrations: a REGISTER whose cookie is not newer than the
  one that opened the serial's current session is a replay (see ``presence_server``).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dvrlink.protocol.presence_events import Address
from dvrlink.protocol.presence_wire import COOKIE_SIZE, packed_ip

DEVICE_TO_BROKER = 0
BROKER_TO_DEVICE = 1
_NONCE = struct.Struct(">IQ")
HKDF_INFO = b"dvrlink presence v1"
REPLAY_WINDOW = 64
COOKIE_STAMP_SIZE = 7
COOKIE_STAMP_MAX = (1 << (8 * COOKIE_STAMP_SIZE)) - 1


def derive_session_key(
    static_shared: bytes,
    ephemeral_shared: bytes,
    nonce: bytes,
    serial: str,
    device_key: bytes,
    device_ephemeral: bytes,
    broker_ephemeral: bytes,
    broker_static: bytes,
) -> bytes:
    """HKDF-SHA256 of both X25519 results, bound to every public value of the handshake."""
    info = b"".join(
        [
            HKDF_INFO,
            len(serial).to_bytes(1, "big"),
            serial.encode("ascii"),
            device_key,
            device_ephemeral,
            broker_ephemeral,
            broker_static,
        ]
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=info).derive(
        static_shared + ephemeral_shared
    )


def x25519(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519 shared secret.

    Raises:
        ValueError: ``public`` is not a valid 32-byte key or the result is all zeros.
    """
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    if shared == bytes(32):
        raise ValueError("X25519 produced the all-zero secret (low-order point)")
    return shared


class Sealer:
    """Seals and opens the messages of one session.

    It keeps only the 32-byte key and builds the cipher per use (about 1 µs): a cipher object
    holds about 2 KB outside Python's heap, too much for a broker with 100,000 sessions. A caller
    that opens and seals in one step passes the same ``cipher()`` to both.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    @property
    def key(self) -> bytes:
        """The session key (the broker derives a resumption ticket's secret from it)."""
        return self._key

    def cipher(self) -> ChaCha20Poly1305:
        """A cipher object for this session's key, for several operations in a row."""
        return ChaCha20Poly1305(self._key)

    def seal(
        self,
        direction: int,
        counter: int,
        header: bytes,
        plaintext: bytes,
        cipher: ChaCha20Poly1305 | None = None,
    ) -> bytes:
        """Return ``header ‖ ciphertext ‖ tag``."""
        aead = cipher or ChaCha20Poly1305(self._key)
        return header + aead.encrypt(_NONCE.pack(direction, counter), plaintext, header)

    def open(
        self,
        direction: int,
        counter: int,
        header: bytes,
        sealed: bytes,
        cipher: ChaCha20Poly1305 | None = None,
    ) -> bytes | None:
        """Return the plaintext, or None if the tag does not verify (forged, corrupt or wrong key)."""
        aead = cipher or ChaCha20Poly1305(self._key)
        try:
            return aead.decrypt(_NONCE.pack(direction, counter), sealed, header)
        except InvalidTag:
            return None


class ReplayWindow:
    """Sliding-window replay check over 32-bit counters (RFC 6479 style, 64 entries).

    Call ``check`` before trusting a counter and ``commit`` only after its tag verified, so a
    forged packet cannot move the window.
    """

    __slots__ = ("_bitmap", "_highest")

    def __init__(self) -> None:
        self._highest = -1
        self._bitmap = 0

    def check(self, counter: int) -> bool:
        """True if ``counter`` was not seen and is not too old."""
        return window_accepts(self._highest, self._bitmap, counter)

    def commit(self, counter: int) -> None:
        """Mark ``counter`` as seen."""
        self._highest, self._bitmap = window_commit(self._highest, self._bitmap, counter)


def window_accepts(highest: int, bitmap: int, counter: int) -> bool:
    """``ReplayWindow.check`` on a window kept as two numbers (``highest`` seen, -1 for none, and
    the ``bitmap`` of the ``REPLAY_WINDOW`` counters below it): the broker keeps them in its
    session object, 32 bytes a session less than a window object of their own."""
    if counter > highest:
        return True
    offset = highest - counter
    if offset >= REPLAY_WINDOW:
        return False
    return not (bitmap >> offset) & 1


def window_commit(highest: int, bitmap: int, counter: int) -> tuple[int, int]:
    """``ReplayWindow.commit`` on a window kept as two numbers: the new (highest, bitmap)."""
    if counter > highest:
        shift = counter - highest
        return counter, ((bitmap << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
    return highest, bitmap | 1 << (highest - counter)


class CookieJar:
    """Stateless cookies that bind a HELLO nonce to a source address for ``lifetime`` seconds.

    A cookie starts with the time it was made, in microseconds of the broker's clock (7 bytes:
    it does not wrap). Stamps are unique: a cookie made in the same microsecond as the one
    before gets the next one. So the broker can order the registrations of a device strictly.
    The jar keeps that one number, nothing per source.
    """

    __slots__ = ("_last", "_lifetime", "_pack", "_secret")

    def __init__(self, secret: bytes, lifetime: float, pack: Callable[[str], bytes] = packed_ip) -> None:
        """``pack``: packs a source IP (``packed_ip``, or a broker's ``PackedIps``)."""
        self._secret = secret
        self._lifetime = round(lifetime * 1_000_000)
        self._last = -1
        self._pack = pack

    def _mac(self, stamp: int, address: Address, nonce: bytes) -> bytes:
        ip = self._pack(address[0])
        msg = stamp.to_bytes(COOKIE_STAMP_SIZE, "big") + ip + address[1].to_bytes(2, "big") + nonce
        # hmac.digest: the one-shot C path, without an HMAC object per cookie
        return hmac.digest(self._secret, msg, "sha256")[: COOKIE_SIZE - COOKIE_STAMP_SIZE]

    def make(self, address: Address, nonce: bytes, now: float) -> bytes:
        """A cookie for ``nonce`` from ``address`` at time ``now`` (seconds, >= 0)."""
        stamp = max(int(now * 1_000_000), self._last + 1) & COOKIE_STAMP_MAX
        self._last = stamp
        return stamp.to_bytes(COOKIE_STAMP_SIZE, "big") + self._mac(stamp, address, nonce)

    @staticmethod
    def stamp(cookie: bytes) -> int:
        """When a cookie was made, in microseconds of the broker's clock (not verified: call
        ``verify`` first)."""
        return int.from_bytes(cookie[:COOKIE_STAMP_SIZE], "big")

    def verify(self, cookie: bytes, address: Address, nonce: bytes, now: float) -> bool:
        """True if the cookie was made by this jar for this address and nonce and has not expired."""
        if len(cookie) != COOKIE_SIZE:
            return False
        stamp = self.stamp(cookie)
        if stamp > self._last or int(now * 1_000_000) - stamp > self._lifetime:
            return False
        return hmac.compare_digest(cookie[COOKIE_STAMP_SIZE:], self._mac(stamp, address, nonce))
