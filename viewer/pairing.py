"""The viewer's side of pairing: build the proof, then check the device's signed answer.

``plan_pairing`` and ``check_pair_answer`` are pure (the nonce comes in), so tests run them
against ``dvrlink.protocol.pairing.PairingGuard`` playing the device. ``pair_device`` wires them
to the broker client and the home directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dvrlink.protocol.identity import fingerprint, format_fingerprint, validate_serial
from dvrlink.protocol.pairing import (
    NONCE_SIZE,
    PairingUri,
    PairResult,
    PairStatus,
    normalize_code,
    pair_proof,
)
from dvrlink.viewer.api_client import BrokerClient
from dvrlink.viewer.api_types import DeviceIdentity, PairAnswer
from dvrlink.viewer.errors import EXIT_USAGE, ViewerError
from dvrlink.viewer.home import Pin

NOT_THE_DEVICE = "the answer was not signed by the device"


def normalize_serial(text: str) -> str:
    """Return a serial typed by a person, upper-cased (serials have no lower-case letters).

    Raises:
        ValueError: not a valid serial once upper-cased; the message says what a serial looks like.
    """
    return validate_serial(text.strip().upper())


def parse_pairing_target(target: str, code: str | None) -> PairingUri:
    """Read ``SERIAL CODE`` or a ``dvrlink://pair?serial=..&code=..&fp=..`` URI.

    The URI's own parser is strict; a typed serial is upper-cased first.

    Raises:
        ViewerError: (exit code 2) a bad serial, code, fingerprint or URI, or a code given both
            in the URI and on the command line, or no code at all.
    """
    try:
        if target.startswith("dvrlink://"):
            if code is not None:
                raise ViewerError(
                    "give either a pairing URI or SERIAL CODE, not both: the URI already holds the code",
                    EXIT_USAGE,
                )
            return PairingUri.parse(target)
        serial = normalize_serial(target)
        if code is None:
            raise ViewerError(
                f"no pairing code for {serial}: run `dvrlink pair {serial} CODE` with the code on the "
                "device label, or pass the dvrlink://pair?... URI from its QR code",
                EXIT_USAGE,
            )
        return PairingUri(serial=serial, code=normalize_code(code), fingerprint=None)
    except ValueError as exc:
        raise ViewerError(str(exc), EXIT_USAGE) from exc


@dataclass(frozen=True, slots=True)
class PairingPlan:
    """Everything one pairing attempt sends, and what its answer must match."""

    serial: str
    code: str
    device_key: bytes  # from the broker's identity answer (checked against the label's fingerprint)
    viewer_key: bytes
    nonce: bytes
    proof: bytes


def plan_pairing(
    target: PairingUri, identity: DeviceIdentity, viewer_key: bytes, nonce: bytes
) -> PairingPlan:
    """Build the proof for ``target`` against the device key the broker gave.

    Raises:
        ViewerError: the label's fingerprint (when the URI has one) differs from the key the
            broker gave, or the nonce is not 16 bytes (a programming error is still reported).
    """
    if len(nonce) != NONCE_SIZE:
        raise ViewerError(f"internal error: a pairing nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
    device_fp = fingerprint(identity.public_key)
    if target.fingerprint is not None and target.fingerprint != device_fp:
        raise ViewerError(
            f"the broker gave a key that does not match the device label: do not pair; report it "
            f"(label {format_fingerprint(target.fingerprint)}, broker {format_fingerprint(device_fp)})"
        )
    proof = pair_proof(target.code, target.serial, identity.public_key, viewer_key, nonce)
    return PairingPlan(target.serial, target.code, identity.public_key, viewer_key, nonce, proof)


def check_pair_answer(plan: PairingPlan, answer: PairAnswer) -> PairResult:
    """Check the device's signed result; return it only if the device really paired us.

    Raises:
        ViewerError: the result is malformed, carries another key than the device's, is not
            signed by the device (or, when paired, lacks the device's proof of the code), the
            device refused (wrong code, rate limited, bad request), or the broker's word
            contradicts the device's.
    """
    serial = plan.serial
    try:
        result = PairResult.decode(answer.result)
    except ValueError as exc:
        raise ViewerError(
            f"{NOT_THE_DEVICE} {serial}: the broker passed on a malformed result ({exc}); "
            "do not trust this pairing; retry, and report it if it happens again"
        ) from exc
    if result.device_key != plan.device_key:
        raise ViewerError(
            f"{NOT_THE_DEVICE} {serial}: it carries another key than the one the broker gave for "
            "it; do not pair; report it"
        )
    if not result.verify(plan.code, serial, plan.viewer_key, plan.nonce):
        raise ViewerError(
            f"{NOT_THE_DEVICE} {serial} (its signature or its proof of the pairing code does not "
            "check out): do not trust this broker; report it"
        )
    if result.status is PairStatus.WRONG_CODE:
        raise ViewerError(
            f"device {serial} refused the pairing code: check the code on the device label and retry "
            "(after 5 wrong codes within an hour, the device refuses pairing for up to an hour)"
        )
    if result.status is PairStatus.RATE_LIMITED:
        raise ViewerError(
            f"device {serial} refuses pairing for now after too many wrong codes: wait up to an hour, "
            "then retry with the code on the device label"
        )
    if result.status is PairStatus.BAD_REQUEST:
        raise ViewerError(
            f"device {serial} found the pairing request malformed: this dvrlink may not match the "
            "device's version; update it, or report the problem"
        )
    if not answer.paired:
        raise ViewerError(
            f"the broker said the code was wrong, but device {serial} signed that it paired: the "
            "broker may not have recorded the pairing; retry, and report it if it happens again"
        )
    return result


@dataclass(frozen=True, slots=True)
class Paired:
    """A successful pairing: the pin to store, and the pin it replaces (if the key changed)."""

    serial: str
    pin: Pin
    replaced: Pin | None


async def pair_device(
    client: BrokerClient,
    target: PairingUri,
    viewer_key: bytes,
    old_pin: Pin | None,
    rng: Callable[[int], bytes],
    now: float,
) -> Paired:
    """Fetch the device key, send the proof, check the answer; the caller stores the pin.

    Raises:
        ViewerError: any failure of the broker, the device or the checks above.
    """
    identity = await client.identity(target.serial)
    plan = plan_pairing(target, identity, viewer_key, rng(NONCE_SIZE))
    answer = await client.pair(plan.serial, plan.viewer_key, plan.nonce, plan.proof)
    result = check_pair_answer(plan, answer)
    pin = Pin(public_key=result.device_key, fingerprint=fingerprint(result.device_key), paired_at=now)
    replaced = old_pin if old_pin is not None and old_pin.public_key != pin.public_key else None
    return Paired(target.serial, pin, replaced)
