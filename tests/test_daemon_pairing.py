"""The device's invite handler: pairing decisions, their side effects and their replies."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.daemon.config import PairingConfig
from dvrlink.daemon.pairing import InviteHandler
from dvrlink.daemon.state import DeviceState
from dvrlink.protocol.identity import ed25519_public_bytes
from dvrlink.protocol.pairing import PairRequest, PairResult, PairStatus, pair_proof
from dvrlink.protocol.presence_events import InviteReceived
from dvrlink.protocol.presence_wire import (
    INVITE_KIND_PAIR,
    INVITE_KIND_PING,
    INVITE_MALFORMED,
    INVITE_OK,
    INVITE_UNSUPPORTED,
)

SERIAL = "DL-0001-0002"
SECRET = "ABCDEFGHIJKLMNOP"
WRONG = "QRSTUVWXYZ234567"


@dataclass
class Replies:
    sent: list[tuple[int, int, bytes, float]] = field(default_factory=list)

    def reply_invite(self, invite_id: int, status: int, body: bytes, now: float) -> None:
        self.sent.append((invite_id, status, body, now))


@dataclass
class Clock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Device:
    def __init__(self, state_dir: Path, clock: Clock) -> None:
        self.state = DeviceState(state_dir)
        self.key = self.state.device_key()
        self.public = ed25519_public_bytes(self.key)
        self.handler = InviteHandler(
            SERIAL,
            self.key,
            SECRET,
            self.state,
            PairingConfig(max_failures=5, window_s=3600),
            wall_clock=clock,
        )
        self.replies = Replies()
        self.next_id = 100

    def pair(self, code: str, viewer: bytes = b"\x07" * 32, account: str = "alice") -> PairResult:
        nonce = self.next_id.to_bytes(16, "big")
        request = PairRequest(viewer, nonce, pair_proof(code, SERIAL, self.public, viewer, nonce), account)
        self.next_id += 1
        self.handler.handle(
            InviteReceived(self.next_id, INVITE_KIND_PAIR, request.encode()), self.replies, 5.0
        )
        invite_id, status, body, now = self.replies.sent[-1]
        assert (invite_id, status, now) == (self.next_id, INVITE_OK, 5.0)
        result = PairResult.decode(body)
        assert result.device_key == self.public
        assert result.verify(SECRET, SERIAL, viewer, nonce), "the device's answer must verify"
        return result


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def device(tmp_path: Path, clock: Clock) -> Device:
    return Device(tmp_path, clock)


def test_right_code_pairs_and_records_viewer(device: Device, clock: Clock) -> None:
    result = device.pair(SECRET)
    assert result.status is PairStatus.PAIRED
    assert result.confirmation != bytes(32)
    viewers = device.state.viewers()
    assert [(v.public_key, v.account, v.paired_at) for v in viewers] == [(b"\x07" * 32, "alice", clock.now)]
    assert device.pair(SECRET).status is PairStatus.PAIRED  # again: still one record
    assert len(device.state.viewers()) == 1


def test_wrong_code(device: Device) -> None:
    result = device.pair(WRONG)
    assert result.status is PairStatus.WRONG_CODE
    assert result.confirmation == bytes(32)
    assert device.state.viewers() == []
    assert len(device.state.pairing_failures()) == 1


def test_sixth_try_refused_even_with_right_code(device: Device, clock: Clock) -> None:
    for _ in range(5):
        assert device.pair(WRONG).status is PairStatus.WRONG_CODE
        clock.now += 1
    assert device.pair(SECRET).status is PairStatus.RATE_LIMITED
    assert device.state.viewers() == []
    clock.now += 3600  # the oldest failures have left the window
    assert device.pair(SECRET).status is PairStatus.PAIRED


def test_rate_limit_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    first = Device(tmp_path, clock)
    for _ in range(5):
        first.pair(WRONG)
    restarted = Device(tmp_path, clock)
    assert restarted.pair(SECRET).status is PairStatus.RATE_LIMITED


def test_malformed_body_and_unknown_kind(device: Device) -> None:
    device.handler.handle(InviteReceived(7, INVITE_KIND_PAIR, b"\x00" * 10), device.replies, 1.0)
    device.handler.handle(InviteReceived(8, 99, b""), device.replies, 2.0)
    assert device.replies.sent == [(7, INVITE_MALFORMED, b"", 1.0), (8, INVITE_UNSUPPORTED, b"", 2.0)]
    assert device.state.pairing_failures() == []


def test_a_ping_is_answered_at_once_and_changes_nothing(device: Device) -> None:
    device.handler.handle(InviteReceived(9, INVITE_KIND_PING, b""), device.replies, 3.0)
    assert device.replies.sent == [(9, INVITE_OK, b"", 3.0)]
    assert device.state.pairing_failures() == []


def test_logs_outcome_but_never_code_or_proof(device: Device, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    device.pair(SECRET)
    device.pair(WRONG)
    text = caplog.text
    assert "PAIRED" in text
    assert "WRONG_CODE" in text
    assert "alice" in text
    assert SECRET not in text
    assert WRONG not in text
    nonce = (100).to_bytes(16, "big")
    proof = pair_proof(SECRET, SERIAL, device.public, b"\x07" * 32, nonce)
    assert proof.hex() not in text


def test_viewer_not_recordable_is_not_told_paired(device: Device, tmp_path: Path) -> None:
    (tmp_path / "viewers.json").write_text("{broken")
    nonce = bytes(16)
    viewer = b"\x09" * 32
    request = PairRequest(viewer, nonce, pair_proof(SECRET, SERIAL, device.public, viewer, nonce), "bob")
    device.handler.handle(InviteReceived(1, INVITE_KIND_PAIR, request.encode()), device.replies, 1.0)
    assert device.replies.sent == []
    assert (tmp_path / "viewers.json").read_text() == "{broken"


def test_works_with_a_fresh_key(tmp_path: Path) -> None:
    # Independent of the state: the handler signs with the key it is given.
    key = Ed25519PrivateKey.generate()
    handler = InviteHandler(SERIAL, key, SECRET, DeviceState(tmp_path), PairingConfig())
    replies = Replies()
    viewer, nonce = b"\x05" * 32, b"\x06" * 16
    proof = pair_proof(SECRET, SERIAL, ed25519_public_bytes(key), viewer, nonce)
    handler.handle(
        InviteReceived(3, INVITE_KIND_PAIR, PairRequest(viewer, nonce, proof, "c").encode()), replies, 0.0
    )
    result = PairResult.decode(replies.sent[0][2])
    assert result.status is PairStatus.PAIRED
    assert result.verify(SECRET, SERIAL, viewer, nonce)
