"""The SMS PDU encoder in dvrlink.protocol.sms (what carries a wake SMS in PDU mode), checked by
its own decoder and a published septet-packing example."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvrlink.protocol.sms import (
    Alphabet,
    Deliver,
    Submit,
    decode_pdu,
    encode_deliver,
    encode_submit,
    gsm7_decode,
    gsm7_encode,
    pack_septets,
    unpack_septets,
)

STAMP = datetime(2026, 12, 7, 8, 30, 5, tzinfo=timezone(timedelta(hours=-4, minutes=-30)))
GSM7_CHARS = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCXYZÄÖÑÜ§¿abcxyzäöñüà^{}\\[~]|€"
)


def test_septet_packing_matches_the_textbook_example() -> None:
    # 23.038's packing, as every PDU tutorial shows it: "hellohello" is E8329BFD4697D9EC37
    septets = gsm7_encode("hellohello")
    assert septets is not None
    assert pack_septets(septets).hex().upper() == "E8329BFD4697D9EC37"


@settings(max_examples=300)
@given(st.text(alphabet=GSM7_CHARS, max_size=80), st.integers(0, 6))
def test_gsm7_round_trip(text: str, fill: int) -> None:
    septets = gsm7_encode(text)
    assert septets is not None
    assert gsm7_decode(unpack_septets(pack_septets(septets, fill), len(septets), fill)) == text


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(alphabet=GSM7_CHARS, max_size=70),
        st.text(max_size=70).filter(lambda t: "\x00" not in t and all(ord(c) < 0x10000 for c in t)),
        st.binary(max_size=140),
    ),
    st.sampled_from(["+491701234567", "0301234567", "DVRLINK", "+1", "Bank 24"]),
)
def test_deliver_round_trip(body: str | bytes, sender: str) -> None:
    encoded = encode_deliver(sender, body, STAMP)
    assert encoded.tpdu_length == len(encoded.pdu) - 1
    pdu = decode_pdu(encoded.hex())
    assert isinstance(pdu, Deliver), pdu
    assert pdu.sender.number == sender and pdu.timestamp == STAMP
    if isinstance(body, bytes):
        assert pdu.coding.alphabet is Alphabet.DATA8 and pdu.user_data.data == body
    else:
        assert pdu.text == body


def test_submit_round_trip_with_validity() -> None:
    encoded = encode_submit("+491701234567", "status: online", reference=7, validity_minutes=10)
    pdu = decode_pdu(encoded.pdu)
    assert isinstance(pdu, Submit)
    assert (pdu.recipient.number, pdu.text, pdu.message_reference) == ("+491701234567", "status: online", 7)
    assert pdu.validity == timedelta(minutes=10)
    week = decode_pdu(encode_submit("+491701234567", b"\x01", validity_minutes=7 * 1440).pdu)
    assert isinstance(week, Submit) and week.validity == timedelta(days=7)


@pytest.mark.parametrize(
    ("body", "match"),
    [("x" * 161, "160"), ("€" * 81, "160"), ("✓" * 71, "70"), (bytes(141), "140")],
)
def test_a_body_that_does_not_fit_one_sms_is_refused(body: str | bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_deliver("+491701234567", body, STAMP)


def test_a_sender_that_is_no_address_is_refused() -> None:
    with pytest.raises(ValueError, match="neither a number"):
        encode_deliver("a very long sender name", "x", STAMP)
