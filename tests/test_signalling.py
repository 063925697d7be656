"""Session offer/answer layouts."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvrlink.protocol.signalling import (
    AnswerStatus,
    PathPolicy,
    SessionAnswer,
    SessionOffer,
    TurnServer,
)

OFFER = SessionOffer(
    session_id=bytes(range(16)),
    viewer_key=bytes(32),
    policy=PathPolicy.RELAY_ONLY,
    ice_ufrag="abcd",
    ice_pwd="p" * 22,
    candidates=(
        "1 1 udp 2130706431 192.168.1.5 54321 typ host",
        "abcdef0123 1 udp 16777215 203.0.113.77 54321 typ relay raddr 198.51.100.1 rport 40000",
    ),
    turn=(TurnServer("broker.example.net", 3479, "udp", "1790000000:DL-0001-0002", "c2VjcmV0"),),
)


def test_offer_and_answer_round_trip() -> None:
    assert SessionOffer.decode(OFFER.encode()) == OFFER
    answer = SessionAnswer(AnswerStatus.ACCEPTED, "efgh", "q" * 22, OFFER.candidates)
    assert SessionAnswer.decode(answer.encode()) == answer


def test_offer_too_large_for_an_invite_is_refused() -> None:
    big = SessionOffer(**{**{f: getattr(OFFER, f) for f in OFFER.__slots__}, "candidates": ("x" * 200,) * 6})
    with pytest.raises(ValueError, match="at most"):
        big.encode()


@given(st.binary(max_size=600))
def test_garbage_is_a_value_error(data: bytes) -> None:
    for kind in (SessionOffer, SessionAnswer):
        with contextlib.suppress(ValueError):
            kind.decode(data)
