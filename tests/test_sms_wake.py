"""The wake SMS format, its keys and its verifier (sans-I/O): round trips, sizes, every drop."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dvrlink.protocol.identity import ed25519_public_bytes, x25519_public_bytes
from dvrlink.protocol.sms_wake import (
    MAC_SIZE,
    MAX_ARGS,
    MAX_BINARY,
    MAX_TEXT,
    CounterState,
    DropReason,
    FormatError,
    FormatProblem,
    RebootRequested,
    SealedWake,
    SmsDropped,
    StatusRequested,
    WakeCommand,
    WakeConfig,
    WakeMessage,
    WakeRequested,
    WakeVerifier,
    broker_wake_key,
    decode,
    device_wake_key,
    ed25519_private_to_x25519,
    ed25519_public_to_x25519,
    encode_binary,
    encode_text,
    next_counter,
    normalise_number,
    status_reply,
)

SERIAL = "DL-0001-0002"
BROKER_NUMBER = "+491701234567"
KEY = bytes(range(32))
CONFIG = WakeConfig(allowed_senders=frozenset({BROKER_NUMBER}))


def verifier(state: CounterState | None = None, window: int = 64) -> WakeVerifier:
    return WakeVerifier(KEY, WakeConfig(allowed_senders=frozenset({BROKER_NUMBER}), window=window), state)


def wake(counter: int, command: WakeCommand = WakeCommand.WAKE, args: bytes = b"", key: bytes = KEY) -> bytes:
    return encode_binary(WakeMessage(command, counter, args), key)


# -- keys ---------------------------------------------------------------------------------------


def test_device_and_broker_derive_the_same_wake_key() -> None:
    device = Ed25519PrivateKey.generate()
    broker = X25519PrivateKey.generate()
    on_device = device_wake_key(device, x25519_public_bytes(broker), SERIAL)
    on_broker = broker_wake_key(broker, ed25519_public_bytes(device), SERIAL)
    assert on_device == on_broker and len(on_device) == 32
    # bound to the serial and to the broker's key
    assert broker_wake_key(broker, ed25519_public_bytes(device), "DL-0001-0003") != on_device
    other = X25519PrivateKey.generate()
    assert device_wake_key(device, x25519_public_bytes(other), SERIAL) != on_device


def test_the_ed25519_to_x25519_map_matches_the_private_key_map() -> None:
    for _ in range(20):
        device = Ed25519PrivateKey.generate()
        converted = ed25519_public_to_x25519(ed25519_public_bytes(device))
        assert converted == x25519_public_bytes(ed25519_private_to_x25519(device))


@pytest.mark.parametrize(
    "public", [bytes(31), (1).to_bytes(32, "little"), ((1 << 255) - 19).to_bytes(32, "little")]
)
def test_an_invalid_device_key_is_refused_with_a_reason(public: bytes) -> None:
    with pytest.raises(ValueError, match="Ed25519 public key"):
        broker_wake_key(X25519PrivateKey.generate(), public, SERIAL)


# -- codec --------------------------------------------------------------------------------------


def test_the_largest_message_fits_one_sms_in_both_forms() -> None:
    message = WakeMessage(WakeCommand.REBOOT, (1 << 64) - 1, bytes(MAX_ARGS))
    binary, text = encode_binary(message, KEY), encode_text(message, KEY)
    assert len(binary) == MAX_BINARY <= 140
    assert len(text) == MAX_TEXT <= 160
    assert text.startswith("DW1:") and set(text[4:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def test_a_wake_without_args_is_29_octets() -> None:
    assert len(wake(1)) == 13 + MAC_SIZE


def test_the_layout_is_as_documented() -> None:
    data = wake(0x0102030405060708, WakeCommand.STATUS, b"ab")
    assert data[:13] == b"DW\x01\x02" + bytes.fromhex("0102030405060708") + b"\x02"
    assert data[13:15] == b"ab" and len(data) == 15 + MAC_SIZE


def test_the_text_form_reads_in_lower_case_and_with_padding() -> None:
    text = encode_text(WakeMessage(WakeCommand.WAKE, 7, b"x"), KEY)
    for variant in (text.lower(), text + "===", "  " + text + "\n"):
        sealed = decode(variant)
        assert isinstance(sealed, SealedWake) and sealed.counter == 7 and sealed.args == b"x"


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"", FormatProblem.NOT_WAKE),
        (b"hello", FormatProblem.NOT_WAKE),
        ("Your bill is ready", FormatProblem.NOT_WAKE),
        ("DW1:not base32!", FormatProblem.BAD_TEXT),
        ("DW1:A", FormatProblem.BAD_TEXT),
        (b"DW\x01\x01", FormatProblem.TRUNCATED),
        (b"DW\x02" + bytes(10), FormatProblem.VERSION),
        (b"DW\x01\x01" + bytes(8) + b"\x41" + bytes(100), FormatProblem.ARGS),
        (b"DW\x01\x01" + bytes(8) + b"\x00" + bytes(MAC_SIZE - 1), FormatProblem.TRUNCATED),
        (b"DW\x01\x01" + bytes(8) + b"\x00" + bytes(MAC_SIZE + 1), FormatProblem.TRAILING),
    ],
)
def test_malformed_payloads_say_why(payload: bytes | str, problem: FormatProblem) -> None:
    result = decode(payload)
    assert isinstance(result, FormatError) and result.problem is problem, result


def test_a_message_out_of_range_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="counter"):
        WakeMessage(WakeCommand.WAKE, 0)
    with pytest.raises(ValueError, match="args"):
        WakeMessage(WakeCommand.WAKE, 1, bytes(MAX_ARGS + 1))
    with pytest.raises(ValueError, match="32 bytes"):
        encode_binary(WakeMessage(WakeCommand.WAKE, 1), b"short")


messages = st.builds(
    WakeMessage,
    st.sampled_from(list(WakeCommand)),
    st.integers(1, (1 << 64) - 1),
    st.binary(max_size=MAX_ARGS),
)


@settings(max_examples=300)
@given(messages, st.binary(min_size=32, max_size=32))
def test_round_trip_in_both_forms(message: WakeMessage, key: bytes) -> None:
    for payload in (encode_binary(message, key), encode_text(message, key)):
        sealed = decode(payload)
        assert isinstance(sealed, SealedWake)
        assert (sealed.command, sealed.counter, sealed.args) == (
            int(message.command),
            message.counter,
            message.args,
        )
        result = WakeVerifier(key, CONFIG).receive(BROKER_NUMBER, payload)
        assert not isinstance(result, SmsDropped), result
        assert (result.counter, result.args) == (message.counter, message.args)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_any_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decode(data), SealedWake | FormatError)
    assert isinstance(decode(b"DW\x01" + data), SealedWake | FormatError)
    result = verifier().receive(BROKER_NUMBER, b"DW\x01" + data)
    assert isinstance(result, SmsDropped)


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_any_text_never_raises(text: str) -> None:
    assert isinstance(decode(text), SealedWake | FormatError)
    assert isinstance(decode("DW1:" + text), SealedWake | FormatError)
    assert isinstance(verifier().receive(text, "DW1:" + text), SmsDropped)
    assert normalise_number(text) is None or normalise_number(text, "49") is not None


@settings(max_examples=200)
@given(messages, st.integers(0, MAX_BINARY + 20), st.integers(0, 255))
def test_a_flipped_or_cut_octet_is_dropped(message: WakeMessage, where: int, xor: int) -> None:
    data = bytearray(wake(message.counter, message.command, message.args))
    if where < len(data) and xor:
        data[where] ^= xor
    else:
        del data[where % len(data) :]
    result = verifier().receive(BROKER_NUMBER, bytes(data))
    assert isinstance(result, SmsDropped)


# -- verifier -----------------------------------------------------------------------------------


def test_each_command_gives_its_event() -> None:
    check = verifier()
    assert check.receive(BROKER_NUMBER, wake(1)) == WakeRequested(BROKER_NUMBER, 1, b"")
    assert check.receive(BROKER_NUMBER, wake(2, WakeCommand.STATUS)) == StatusRequested(BROKER_NUMBER, 2, b"")
    assert check.receive(BROKER_NUMBER, wake(3, WakeCommand.REBOOT, b"r")) == RebootRequested(
        BROKER_NUMBER, 3, b"r"
    )
    assert check.stats["accepted"] == 3


def reason(result: object) -> DropReason:
    assert isinstance(result, SmsDropped), result
    return result.reason


def test_a_replay_is_dropped_and_counted() -> None:
    check = verifier()
    assert isinstance(check.receive(BROKER_NUMBER, wake(10)), WakeRequested)
    assert reason(check.receive(BROKER_NUMBER, wake(10))) is DropReason.REPLAYED
    assert check.stats["replayed"] == 1


def test_out_of_order_counters_in_the_window_are_accepted_once() -> None:
    check = verifier(window=8)
    assert isinstance(check.receive(BROKER_NUMBER, wake(10)), WakeRequested)
    assert isinstance(check.receive(BROKER_NUMBER, wake(5)), WakeRequested)
    assert reason(check.receive(BROKER_NUMBER, wake(5))) is DropReason.REPLAYED
    assert isinstance(check.receive(BROKER_NUMBER, wake(3)), WakeRequested)  # 10 - 7: the window's edge
    assert reason(check.receive(BROKER_NUMBER, wake(2))) is DropReason.STALE
    assert isinstance(check.receive(BROKER_NUMBER, wake(12)), WakeRequested)
    assert reason(check.receive(BROKER_NUMBER, wake(3))) is DropReason.STALE  # 12 - 9
    assert reason(check.receive(BROKER_NUMBER, wake(5))) is DropReason.REPLAYED
    assert isinstance(check.receive(BROKER_NUMBER, wake(11)), WakeRequested)
    assert check.stats == {
        "accepted": 5,
        "not_wake": 0,
        "malformed": 0,
        "unknown_sender": 0,
        "bad_mac": 0,
        "replayed": 2,
        "stale": 2,
        "unknown_command": 0,
    }


def test_the_state_survives_a_restart() -> None:
    check = verifier()
    for counter in (4, 2, 9):
        assert not isinstance(check.receive(BROKER_NUMBER, wake(counter)), SmsDropped)
    stored = CounterState.from_dict(check.state.to_dict(), "state file")
    restarted = verifier(stored)
    for counter in (4, 2, 9):
        assert reason(restarted.receive(BROKER_NUMBER, wake(counter))) is DropReason.REPLAYED
    assert isinstance(restarted.receive(BROKER_NUMBER, wake(3)), WakeRequested)


@pytest.mark.parametrize(
    "data", [{}, {"highest": "1", "below": 0}, {"highest": -1, "below": 0}, {"highest": True, "below": 0}]
)
def test_a_bad_state_file_says_what_to_do(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"wake-state\.json.*remove it"):
        CounterState.from_dict(data, "wake-state.json")


def test_a_state_from_a_larger_window_is_refused() -> None:
    with pytest.raises(ValueError, match="larger window"):
        verifier(CounterState(100, 1 << 40), window=8)


def test_a_forged_mac_is_dropped_and_does_not_move_the_window() -> None:
    check = verifier()
    forged = bytearray(wake(50))
    forged[-1] ^= 1
    assert reason(check.receive(BROKER_NUMBER, bytes(forged))) is DropReason.BAD_MAC
    assert reason(check.receive(BROKER_NUMBER, wake(51, key=bytes(32)))) is DropReason.BAD_MAC
    assert check.state == CounterState() and check.stats["bad_mac"] == 2
    assert isinstance(check.receive(BROKER_NUMBER, wake(50)), WakeRequested)


@pytest.mark.parametrize("sender", ["+491709999999", "DVRLINK", "", "12345", "+49170123456"])
def test_an_unknown_sender_is_dropped_before_anything_else(sender: str) -> None:
    check = verifier()
    assert reason(check.receive(sender, wake(1))) is DropReason.UNKNOWN_SENDER
    assert check.state == CounterState()


@pytest.mark.parametrize("sender", ["+491701234567", "00491701234567", "+49 170 123-4567", '"+491701234567"'])
def test_the_sender_is_compared_as_e164(sender: str) -> None:
    assert isinstance(verifier().receive(sender, wake(1)), WakeRequested)


def test_national_numbers_need_the_country_code() -> None:
    assert normalise_number("01701234567") is None
    assert normalise_number("01701234567", "49") == BROKER_NUMBER
    assert normalise_number("491701234567", "49") == BROKER_NUMBER
    config = WakeConfig(allowed_senders=frozenset({BROKER_NUMBER}), country_code="49")
    assert isinstance(WakeVerifier(KEY, config).receive("01701234567", wake(1)), WakeRequested)


def test_any_sender_still_needs_the_mac() -> None:
    check = WakeVerifier(KEY, WakeConfig(any_sender=True))
    assert isinstance(check.receive("DVRLINK", wake(1)), WakeRequested)
    assert reason(check.receive("DVRLINK", wake(2, key=bytes(32)))) is DropReason.BAD_MAC


def test_an_unknown_authenticated_command_spends_its_counter() -> None:
    signed = b"DW\x01\x09" + (5).to_bytes(8, "big") + b"\x00"
    import hmac

    data = signed + hmac.digest(KEY, signed, "sha256")[:MAC_SIZE]
    check = verifier()
    assert reason(check.receive(BROKER_NUMBER, data)) is DropReason.UNKNOWN_COMMAND
    assert check.state.highest == 5


def test_ordinary_sms_are_not_wake() -> None:
    check = verifier()
    assert reason(check.receive(BROKER_NUMBER, "Your balance is 5 EUR")) is DropReason.NOT_WAKE
    assert reason(check.receive(BROKER_NUMBER, base64.b64encode(wake(1)).decode())) is DropReason.NOT_WAKE


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "no allowed sender"),
        ({"allowed_senders": frozenset({"01701234567"})}, r"\+E\.164"),
        ({"any_sender": True, "window": 0}, "window"),
        ({"any_sender": True, "country_code": "+49"}, "country code"),
    ],
)
def test_bad_config_is_refused_with_the_fix(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WakeConfig(**kwargs)  # type: ignore[arg-type]


def test_a_status_reply_fits_one_sms_and_is_printable_ascii() -> None:
    assert status_reply("DL-1", [("reg", "home"), ("csq", "20")]) == "dvrlink DL-1 reg=home csq=20"
    long = status_reply("DL-1", [(f"k{i}", "v" * 9) for i in range(30)])
    assert len(long) <= 160 and long.endswith(" ...") and "k0=vvvvvvvvv" in long
    assert status_reply("DL-1", [("op", "Télé\nkom")]) == "dvrlink DL-1 op=T?l??kom"


def test_the_senders_counter_follows_the_clock_and_never_goes_back() -> None:
    assert next_counter(0, 1_765_000_000_000) == 1_765_000_000_000
    assert next_counter(1_765_000_000_000, 1_765_000_000_000) == 1_765_000_000_001
    assert next_counter(1_765_000_000_500, 1_765_000_000_000) == 1_765_000_000_501  # the clock stepped back
    with pytest.raises(ValueError, match="used up"):
        next_counter((1 << 64) - 1, 0)
