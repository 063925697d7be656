"""Keys of the data plane: the HKDF schedule, sealing and opening, key generations, replay window.

- ``secret_0 = HKDF-SHA256(salt=b"dvrlink dataplane v1", ikm=viewer_random + device_random,
  info=b"secret", 32)``; generation n > 0: ``secret_n = HKDF-Expand(secret_{n-1}, b"next", 32)``.
- Per direction d (``b"viewer->device"`` or ``b"device->viewer"``) and generation n, phase
  ``p = n % 2`` as one byte: ``key = HKDF-Expand(secret_n, b"key " + d + p, 32)``,
  ``iv = HKDF-Expand(secret_n, b"iv " + d + p, 12)``.
- AEAD ChaCha20-Poly1305, one object per key made once (and, where the compiled module
  ``_dataplane_seal`` was built, one ``Opener`` that opens in C, keeping its OpenSSL context);
  nonce ``iv XOR packet_number`` (12 bytes
  big-endian, as TLS 1.3 and QUIC); the 11-byte header is the associated data.
- Replay window: 2048 packet numbers behind the highest authenticated one, a bitmap in one Python
  int (RFC 6479's idea; WireGuard keeps the same). ``check`` before opening, ``mark`` only after a
  successful open, so a forged packet never poisons the window.

The randoms come from the caller (the session layer reads ``os.urandom``); nothing here reads a
clock or the system's randomness.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

SALT = b"dvrlink dataplane v1"
VIEWER_TO_DEVICE = b"viewer->device"
DEVICE_TO_VIEWER = b"device->viewer"
KEY_SIZE = 32
IV_SIZE = 12
RANDOM_SIZE = 32
REPLAY_WINDOW = 2048

OK = 0
TOO_OLD = 1
DUPLICATE = 2
"""Results of ``ReplayWindow.check``."""


OpenPacket = Callable[[int, bytes | memoryview, bytes | memoryview], bytes | None]
"""``_dataplane_seal.Opener(key, iv).open``'s shape."""


class _Opener(Protocol):
    open: OpenPacket


def load_compiled() -> ModuleType | None:
    """``dvrlink.protocol._dataplane_seal`` (the compiled bulk sealer and opener), or None where
    it was not built: the data plane then seals and opens through ``cryptography`` (the same
    bytes, slower)."""
    try:
        return importlib.import_module("dvrlink.protocol._dataplane_seal")
    except ImportError:
        return None


_compiled = load_compiled()
_compiled_opener: Callable[[bytes, bytes], _Opener] | None = getattr(_compiled, "Opener", None)
"""The compiled module's ``Opener`` type, or None."""


def initial_secret(viewer_random: bytes, device_random: bytes) -> bytes:
    """``secret_0`` of a session. Raises ``ValueError`` unless both randoms are 32 bytes."""
    if len(viewer_random) != RANDOM_SIZE or len(device_random) != RANDOM_SIZE:
        raise ValueError(
            f"data plane randoms must be {RANDOM_SIZE} bytes each, got {len(viewer_random)} and "
            f"{len(device_random)}: pass what each end drew from os.urandom(32)"
        )
    return HKDF(hashes.SHA256(), KEY_SIZE, SALT, b"secret").derive(viewer_random + device_random)


def expand(secret: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand-SHA256 (RFC 5869 §2.3)."""
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def next_secret(secret: bytes) -> bytes:
    """``secret_{n+1}`` from ``secret_n``."""
    return expand(secret, b"next", KEY_SIZE)


def direction_key_iv(secret: bytes, direction: bytes, phase: int) -> tuple[bytes, bytes]:
    """(key, iv) of one direction for the generation whose secret is ``secret``."""
    suffix = direction + bytes((phase,))
    return expand(secret, b"key " + suffix, KEY_SIZE), expand(secret, b"iv " + suffix, IV_SIZE)


def nonce(iv: bytes, packet_number: int) -> bytes:
    """``iv XOR packet_number`` as 12 bytes big-endian."""
    return (int.from_bytes(iv, "big") ^ packet_number).to_bytes(IV_SIZE, "big")


class PacketKey:
    """Seal or open packets of one direction and one generation."""

    __slots__ = ("_open_compiled", "aead", "generation", "iv", "iv_bytes", "key", "phase")

    def __init__(self, secret: bytes, direction: bytes, generation: int, *, compiled: bool = True) -> None:
        """``compiled=False`` opens through ``cryptography`` even where the compiled module was
        built (the tests compare the two)."""
        self.generation = generation
        self.phase = generation & 1
        key, iv = direction_key_iv(secret, direction, self.phase)
        self.aead = ChaCha20Poly1305(key)
        self.key = key
        """The raw key, for the compiled bulk sealer (``_dataplane_seal``)."""
        self.iv = int.from_bytes(iv, "big")
        self.iv_bytes = iv
        opener = _compiled_opener if compiled else None
        self._open_compiled: OpenPacket | None = opener(key, iv).open if opener else None

    def seal(self, packet_number: int, header: bytes, plaintext: bytes | bytearray) -> bytes:
        """The ciphertext and tag of ``plaintext`` under packet number ``packet_number``."""
        return self.aead.encrypt((self.iv ^ packet_number).to_bytes(IV_SIZE, "big"), plaintext, header)

    def open(
        self, packet_number: int, header: bytes | memoryview, ciphertext: bytes | memoryview
    ) -> bytes | None:
        """The plaintext, or ``None`` if the tag does not verify."""
        open_compiled = self._open_compiled
        if open_compiled is not None:
            return open_compiled(packet_number, header, ciphertext)
        try:
            return self.aead.decrypt((self.iv ^ packet_number).to_bytes(IV_SIZE, "big"), ciphertext, header)
        except InvalidTag:
            return None


class KeyChain:
    """The generation secrets of a session, derived on demand and forgotten once passed."""

    __slots__ = ("_generation", "_secret")

    def __init__(self, secret_0: bytes) -> None:
        self._secret = secret_0
        self._generation = 0

    def secret(self, generation: int) -> bytes:
        """``secret_n``. Raises ``ValueError`` for a generation older than one asked before."""
        if generation < self._generation:
            raise ValueError(
                f"key generation {generation} was already passed (now at {self._generation}): "
                "each end keeps its own chain per direction"
            )
        while self._generation < generation:
            self._secret = next_secret(self._secret)
            self._generation += 1
        return self._secret


class ReplayWindow:
    """Which packet numbers of one direction were authenticated, 2048 behind the highest."""

    __slots__ = ("bits", "highest", "mask", "size")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.mask = (1 << size) - 1
        self.highest = -1
        self.bits = 0
        """Bit i: packet ``highest - i`` was seen."""

    def check(self, packet_number: int) -> int:
        """``OK``, ``TOO_OLD`` (behind the window) or ``DUPLICATE``; marks nothing."""
        distance = self.highest - packet_number
        if distance < 0:
            return OK
        if distance >= self.size:
            return TOO_OLD
        return DUPLICATE if (self.bits >> distance) & 1 else OK

    def mark(self, packet_number: int) -> None:
        """Record an authenticated packet (call only after a successful open and ``check``)."""
        distance = self.highest - packet_number
        if distance < 0:
            shift = -distance
            self.bits = ((self.bits << shift) | 1) & self.mask if shift < self.size else 1
            self.highest = packet_number
        else:
            self.bits |= 1 << distance
