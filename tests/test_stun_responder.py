"""The STUN Binding responders, sans-I/O: classic RFC 3489 requests, 420 for unknown attributes,
PADDING, RESPONSE-PORT, RFC 5780 attributes only for clients that signal it, the reply sizes, and
the per-source rate limit."""

from __future__ import annotations

import struct

import pytest
from aioice import stun
from hypothesis import given
from hypothesis import strategies as st
from support.turn import SECRET, Lab

from dvrlink.broker.turn_server import TurnConfig
from dvrlink.protocol.stun import StunRateLimiter, binding_response
from dvrlink.protocol.stun_behaviour import CHANGE_IP, CHANGE_PORT, Origin, Rfc5780Addresses, answer_binding

ADDRESSES = Rfc5780Addresses("203.0.113.10", 3478, "203.0.113.11", 3480)
CLIENT = ("198.51.100.2", 40001)
CLASSIC_ID = bytes(range(16))  # 128 bits, no magic cookie


def attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


CHANGE_BOTH = attribute(0x0003, struct.pack("!I", CHANGE_IP | CHANGE_PORT))


def raw_request(*attributes: bytes, transaction_id: bytes = b"\x21\x12\xa4\x42" + bytes(range(12))) -> bytes:
    body = b"".join(attributes)
    return struct.pack("!HH", 0x0001, len(body)) + transaction_id + body


def attributes_of(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 20
    while pos < len(data):
        kind, length = struct.unpack_from("!HH", data, pos)
        out[kind] = data[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)
    return out


def test_a_classic_rfc3489_binding_gets_mapped_address() -> None:
    # What stun-client 0.97 sends: no magic cookie, a 128-bit transaction ID, CHANGE-REQUEST 0.
    data = raw_request(attribute(0x0003, bytes(4)), transaction_id=CLASSIC_ID)
    reply = binding_response(data, CLIENT)
    assert reply is not None, "a classic RFC 3489 Binding was dropped"
    assert reply[:2] == b"\x01\x01" and reply[4:20] == CLASSIC_ID, reply.hex()
    mapped = attributes_of(reply)[0x0001]
    assert mapped == b"\x00\x01" + struct.pack("!H", CLIENT[1]) + bytes([198, 51, 100, 2]), reply.hex()
    assert 0x0020 not in attributes_of(reply)  # no XOR-MAPPED-ADDRESS for an RFC 3489 client


def test_a_classic_binding_with_the_alternate_gets_the_rfc3489_addresses() -> None:
    data = raw_request(CHANGE_BOTH, transaction_id=CLASSIC_ID)
    reply = answer_binding(data, CLIENT, Origin.PRIMARY, ADDRESSES)
    assert reply is not None and reply.origin is Origin.ALTERNATE_BOTH
    assert reply.data[4:20] == CLASSIC_ID
    found = attributes_of(reply.data)
    assert set(found) == {0x0001, 0x0004, 0x0005}, found  # MAPPED, SOURCE, CHANGED-ADDRESS


@pytest.mark.parametrize("kind", [0x0002, 0x7F00, 0x0030])  # RESPONSE-ADDRESS, unassigned ones
def test_an_unknown_comprehension_required_attribute_gets_420(kind: int) -> None:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    data = raw_request(attribute(kind, bytes(8)), transaction_id=b"\x21\x12\xa4\x42" + message.transaction_id)
    for reply in (binding_response(data, CLIENT), answer(data)):
        assert reply is not None
        response = stun.parse_message(reply)
        assert response.message_class == stun.Class.ERROR, response
        assert response.error_code == 420, response
        assert attributes_of(reply)[0x000A] == struct.pack("!H", kind), reply.hex()
        assert len(reply) <= len(data) + 4


def answer(data: bytes) -> bytes | None:
    reply = answer_binding(data, CLIENT, Origin.PRIMARY, ADDRESSES)
    return None if reply is None else reply.data


def test_an_unknown_comprehension_optional_attribute_is_ignored() -> None:
    data = raw_request(attribute(0xC001, b"x"))
    reply = binding_response(data, CLIENT)
    assert reply is not None and stun.parse_message(reply).message_class == stun.Class.RESPONSE


def test_padding_is_understood_and_not_echoed() -> None:
    data = raw_request(CHANGE_BOTH, attribute(0x0026, bytes(1500)))
    reply = answer_binding(data, CLIENT, Origin.PRIMARY, ADDRESSES)
    assert reply is not None and stun.parse_message(reply.data).message_class == stun.Class.RESPONSE
    assert len(reply.data) == 56 and reply.origin is Origin.ALTERNATE_BOTH


def test_response_port_sends_the_answer_to_that_port() -> None:
    data = raw_request(
        CHANGE_BOTH,
        attribute(0x0027, struct.pack("!HH", 40555, 0)),
    )
    reply = answer_binding(data, CLIENT, Origin.PRIMARY, ADDRESSES)
    assert reply is not None
    assert reply.destination == (CLIENT[0], 40555), f"answered to {reply.destination}, not port 40555"
    assert reply.origin is Origin.ALTERNATE_BOTH
    assert stun.parse_message(reply.data).attributes["XOR-MAPPED-ADDRESS"] == CLIENT


def test_a_plain_responder_refuses_a_change_or_response_port_with_420() -> None:
    for attributes in (
        (attribute(0x0003, struct.pack("!I", CHANGE_PORT)),),
        (attribute(0x0027, struct.pack("!HH", 40555, 0)),),
    ):
        reply = binding_response(raw_request(*attributes), CLIENT)
        assert reply is not None and stun.parse_message(reply).error_code == 420, attributes
    # CHANGE-REQUEST 0 asks for no change: a plain responder can honour it.
    reply = binding_response(raw_request(attribute(0x0003, bytes(4))), CLIENT)
    assert reply is not None and stun.parse_message(reply).attributes["XOR-MAPPED-ADDRESS"] == CLIENT


def test_rfc5780_attributes_only_for_a_client_that_signals_it() -> None:
    plain = raw_request()
    reply = answer_binding(plain, CLIENT, Origin.PRIMARY, ADDRESSES)
    assert reply is not None
    assert len(reply.data) == 32, f"a 20 B Binding got {len(reply.data)} B: {stun.parse_message(reply.data)}"
    signalled = raw_request(attribute(0x0003, bytes(4)))
    reply = answer_binding(signalled, CLIENT, Origin.PRIMARY, ADDRESSES)
    assert reply is not None and len(reply.data) == 56
    found = stun.parse_message(reply.data).attributes
    assert found["OTHER-ADDRESS"] == ADDRESSES.address(Origin.ALTERNATE_BOTH)
    assert found["RESPONSE-ORIGIN"] == ADDRESSES.address(Origin.PRIMARY)


@given(st.binary(max_size=200))
def test_random_bodies_never_raise(body: bytes) -> None:
    data = raw_request() + body
    data = data[:2] + struct.pack("!H", len(data) - 20) + data[4:]
    binding_response(data, CLIENT)
    answer_binding(data, CLIENT, Origin.ALTERNATE_PORT, ADDRESSES)
    binding_response(data[:2] + data[2:4] + CLASSIC_ID + data[20:], CLIENT)


def test_the_rate_limiter_holds_one_source_to_its_burst_then_its_rate() -> None:
    limiter = StunRateLimiter(rate_per_s=10.0, burst=20)
    answered = sum(limiter.allow("192.0.2.1", 100.0) for _ in range(1000))
    assert answered == 20, answered
    assert limiter.allow("192.0.2.2", 100.0), "another source was limited too"
    # One second later: 10 more.
    assert sum(limiter.allow("192.0.2.1", 101.0) for _ in range(1000)) == 10
    assert limiter.refused == 980 + 990


def test_the_rate_limiter_memory_is_bounded() -> None:
    limiter = StunRateLimiter(rate_per_s=1.0, burst=1, max_sources=100)
    for i in range(10_000):
        limiter.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", float(i))
    assert len(limiter) == 100


def test_the_rate_limiter_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        StunRateLimiter(rate_per_s=0.0, burst=1)


def test_the_turn_port_refuses_a_change_request_with_420() -> None:
    lab = Lab()
    client = lab.client()
    replies = client.send_raw(raw_request(CHANGE_BOTH))
    assert len(replies) == 1, replies
    response = stun.parse_message(replies[0])
    assert response.message_class == stun.Class.ERROR and response.error_code == 420, response
    assert attributes_of(replies[0])[0x000A] == b"\x00\x03", replies[0].hex()
    # No change asked: answered, from the TURN port itself.
    replies = client.send_raw(raw_request(attribute(0x0003, bytes(4))))
    assert stun.parse_message(replies[0]).attributes["XOR-MAPPED-ADDRESS"] == client.address


def test_the_turn_port_answers_classic_bindings_and_limits_each_source() -> None:
    lab = Lab(config=TurnConfig(secret=SECRET, stun_rate_per_s=1.0, stun_rate_burst=5))
    client = lab.client()
    replies = client.send_raw(raw_request(attribute(0x0003, bytes(4)), transaction_id=CLASSIC_ID))
    assert len(replies) == 1 and replies[0][4:20] == CLASSIC_ID, replies
    answered = sum(len(client.send_raw(raw_request())) for _ in range(100))
    assert answered == 4, f"{answered} of 100 Bindings at one instant were answered"
    assert lab.server.stats["binding_limited"] == 96
    lab.now += 2.0  # two seconds later: two more
    assert sum(len(client.send_raw(raw_request())) for _ in range(10)) == 2
