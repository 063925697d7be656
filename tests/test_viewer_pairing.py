"""The viewer's pairing logic against ``PairingGuard`` playing the device.

The device side here does what the daemon does with an invite: judge the request with the
guard, then sign ``result_message`` and add the confirmation HMAC when paired.
"""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint
from dvrlink.protocol.pairing import (
    MAC_SIZE,
    PairingGuard,
    PairingUri,
    PairRequest,
    PairResult,
    PairStatus,
    format_code,
    result_message,
)
from dvrlink.viewer.api_types import DeviceIdentity, PairAnswer
from dvrlink.viewer.errors import EXIT_USAGE, ViewerError
from dvrlink.viewer.pairing import (
    PairingPlan,
    check_pair_answer,
    parse_pairing_target,
    plan_pairing,
)

SERIAL = "DL-0001-0002"
CODE = "ABCDEFGHIJKLMNOP"
NONCE = bytes(range(16))
NOW = 1_700_000_000.0


class Device:
    """The device end of pairing, as the daemon answers a pairing invite."""

    def __init__(self, seed: int = 7, code: str = CODE) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        self.public = ed25519_public_bytes(self.key)
        self.guard = PairingGuard(SERIAL, self.public, code)
        self.account_seen: list[str] = []

    def identity(self) -> DeviceIdentity:
        return DeviceIdentity(SERIAL, self.public, fingerprint(self.public), True)

    def answer(self, plan: PairingPlan, now: float = NOW) -> PairAnswer:
        """What the broker passes back: its word, and the device's result bytes."""
        request = PairRequest.decode(PairRequest(plan.viewer_key, plan.nonce, plan.proof, "alice").encode())
        status = self.guard.check(request, now)
        confirmation = self.guard.confirmation(request) if status is PairStatus.PAIRED else bytes(MAC_SIZE)
        signature = self.key.sign(result_message(SERIAL, request.viewer_key, request.nonce, status))
        result = PairResult(status, self.public, confirmation, signature)
        return PairAnswer(paired=status is PairStatus.PAIRED, result=result.encode())


VIEWER_KEY = ed25519_public_bytes(Ed25519PrivateKey.from_private_bytes(b"\x05" * 32))


def _plan(device: Device, code: str = CODE, fp: str | None = None, nonce: bytes = NONCE) -> PairingPlan:
    return plan_pairing(PairingUri(SERIAL, code, fp), device.identity(), VIEWER_KEY, nonce)


def test_right_code_pairs_and_the_result_checks_out() -> None:
    device = Device()
    plan = _plan(device, fp=fingerprint(device.public))
    result = check_pair_answer(plan, device.answer(plan))
    assert result.status is PairStatus.PAIRED
    assert result.device_key == device.public
    assert device.guard.failures == ()


def test_proof_binds_code_serial_both_keys_and_nonce() -> None:
    device = Device()
    base = _plan(device)
    assert len(base.proof) == 32
    assert base.nonce == NONCE and base.viewer_key == VIEWER_KEY and base.device_key == device.public
    others = {
        _plan(device, code="ABCDEFGHIJKLMNOQ").proof,
        _plan(device, nonce=bytes(16)).proof,
        plan_pairing(PairingUri(SERIAL, CODE, None), Device(seed=8).identity(), VIEWER_KEY, NONCE).proof,
        plan_pairing(PairingUri(SERIAL, CODE, None), device.identity(), b"\x01" * 32, NONCE).proof,
    }
    assert base.proof not in others
    assert len(others) == 4


def test_wrong_code_is_refused_by_the_device_and_reported() -> None:
    device = Device()
    plan = _plan(device, code="ABCDEFGHIJKLMNOQ")
    answer = device.answer(plan)
    assert not answer.paired
    with pytest.raises(ViewerError, match="refused the pairing code: check the code on the device label"):
        check_pair_answer(plan, answer)
    assert len(device.guard.failures) == 1


def test_after_five_wrong_codes_even_the_right_one_is_rate_limited() -> None:
    device = Device()
    for i in range(5):
        with pytest.raises(ViewerError, match="refused the pairing code"):
            bad = _plan(device, code="ABCDEFGHIJKLMNOQ")
            check_pair_answer(bad, device.answer(bad, NOW + i))
    plan = _plan(device)
    with pytest.raises(ViewerError, match="refuses pairing for now after too many wrong codes"):
        check_pair_answer(plan, device.answer(plan, NOW + 10))


def test_label_fingerprint_that_differs_from_the_brokers_key_is_refused() -> None:
    device = Device()
    label_fp = fingerprint(Device(seed=8).public)  # the label belongs to another key
    with pytest.raises(ViewerError) as err:
        _plan(device, fp=label_fp)
    assert err.value.message.startswith(
        "the broker gave a key that does not match the device label: do not pair; report it"
    )


def _tamper(answer: PairAnswer, **changes: object) -> PairAnswer:
    result = dataclasses.replace(PairResult.decode(answer.result), **changes)  # type: ignore[arg-type]
    return PairAnswer(answer.paired, result.encode())


def test_tampered_signature_is_refused() -> None:
    device = Device()
    plan = _plan(device)
    answer = device.answer(plan)
    result = PairResult.decode(answer.result)
    bad_sig = bytes([result.signature[0] ^ 1]) + result.signature[1:]
    with pytest.raises(ViewerError, match="the answer was not signed by the device"):
        check_pair_answer(plan, _tamper(answer, signature=bad_sig))


def test_wrong_code_turned_into_paired_by_the_broker_is_refused() -> None:
    device = Device()
    plan = _plan(device, code="ABCDEFGHIJKLMNOQ")
    answer = device.answer(plan)  # the device said WRONG_CODE
    forged = _tamper(answer, status=PairStatus.PAIRED)
    with pytest.raises(ViewerError, match="the answer was not signed by the device"):
        check_pair_answer(plan, PairAnswer(True, forged.result))


def test_result_with_a_bad_confirmation_is_refused() -> None:
    device = Device()
    plan = _plan(device)
    answer = device.answer(plan)
    with pytest.raises(ViewerError, match="proof of the pairing code"):
        check_pair_answer(plan, _tamper(answer, confirmation=bytes(MAC_SIZE)))


def test_result_signed_by_another_key_is_refused() -> None:
    device = Device()
    impostor = Device(seed=9)  # knows the code too, but holds another key
    plan = _plan(device)
    forged = impostor.answer(_plan(impostor))  # same viewer key and nonce, valid for its own key
    assert PairResult.decode(forged.result).verify(CODE, SERIAL, VIEWER_KEY, NONCE)
    with pytest.raises(ViewerError, match="carries another key than the one the broker gave"):
        check_pair_answer(plan, forged)


def test_replayed_result_for_another_nonce_is_refused() -> None:
    device = Device()
    old_plan = _plan(device, nonce=bytes(16))
    old_answer = device.answer(old_plan)
    plan = _plan(device)
    with pytest.raises(ViewerError, match="the answer was not signed by the device"):
        check_pair_answer(plan, old_answer)


def test_truncated_result_is_refused() -> None:
    device = Device()
    plan = _plan(device)
    answer = device.answer(plan)
    with pytest.raises(ViewerError, match="malformed result"):
        check_pair_answer(plan, PairAnswer(True, answer.result[:-1]))


def test_broker_saying_wrong_code_over_a_signed_paired_result_is_reported() -> None:
    device = Device()
    plan = _plan(device)
    answer = device.answer(plan)
    with pytest.raises(ViewerError, match="may not have recorded the pairing"):
        check_pair_answer(plan, PairAnswer(False, answer.result))


def test_pairing_targets() -> None:
    device = Device()
    fp = fingerprint(device.public)
    uri = PairingUri(SERIAL, CODE, fp).format()
    assert parse_pairing_target(uri, None) == PairingUri(SERIAL, CODE, fp)
    assert parse_pairing_target("dl-0001-0002", format_code(CODE).lower()) == PairingUri(SERIAL, CODE, None)
    cases = [
        (uri, CODE, "not both"),
        (SERIAL, None, "no pairing code for DL-0001-0002"),
        (SERIAL, "ABC", "pairing code 'ABC' is not valid"),
        ("a b", CODE, "serial 'A B' is not valid"),
        ("dvrlink://pair?serial=DL-0001-0002", None, "lacks the code field"),
        ("dvrlink://pair?serial=DL-0001-0002&code=ABCDEFGHIJKLMNOP&fp=xyz", None, "fingerprint 'xyz'"),
    ]
    for target, code, what in cases:
        with pytest.raises(ViewerError, match=what) as err:
            parse_pairing_target(target, code)
        assert err.value.exit_code == EXIT_USAGE
