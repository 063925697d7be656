"""RFC 5780 server core: which address answers, and what the answer says."""

from __future__ import annotations

import pytest
from aioice import stun
from hypothesis import given
from hypothesis import strategies as st

from dvrlink.protocol.stun_behaviour import (
    CHANGE_IP,
    CHANGE_PORT,
    Origin,
    Rfc5780Addresses,
    answer_binding,
    parse_binding_request,
)

ADDRESSES = Rfc5780Addresses("203.0.113.10", 3478, "203.0.113.11", 3480)
CLIENT = ("198.51.100.2", 40001)


def request(change: int | None = None, fingerprint: bool = True) -> tuple[bytes, bytes]:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    if change is not None:
        message.attributes["CHANGE-REQUEST"] = change
    if fingerprint:
        message.add_fingerprint()
    return bytes(message), message.transaction_id


@pytest.mark.parametrize("received_on", list(Origin))
@pytest.mark.parametrize(
    ("change", "flip_ip", "flip_port"),
    [(None, False, False), (0, False, False), (CHANGE_IP, True, False), (CHANGE_PORT, False, True),
     (CHANGE_IP | CHANGE_PORT, True, True)],
)  # fmt: skip
def test_the_answer_comes_from_the_changed_address_and_names_it(
    received_on: Origin, change: int | None, flip_ip: bool, flip_port: bool
) -> None:
    data, transaction_id = request(change)
    reply = answer_binding(data, CLIENT, received_on, ADDRESSES)
    assert reply is not None
    expected = Origin.of(received_on.alternate_ip != flip_ip, received_on.alternate_port != flip_port)
    assert reply.origin is expected
    assert reply.destination == CLIENT
    response = stun.parse_message(reply.data)
    assert response.message_class == stun.Class.RESPONSE and response.transaction_id == transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    if change is None:  # not an RFC 5780 client: no RFC 5780 attributes (a small reply)
        assert "OTHER-ADDRESS" not in response.attributes and "RESPONSE-ORIGIN" not in response.attributes
        return
    assert response.attributes["RESPONSE-ORIGIN"] == ADDRESSES.address(expected)
    # OTHER-ADDRESS differs from the receiving address in both IP and port.
    other = response.attributes["OTHER-ADDRESS"]
    here = ADDRESSES.address(received_on)
    assert other[0] != here[0] and other[1] != here[1]
    assert other == ADDRESSES.address(received_on.changed(True, True))
    assert "FINGERPRINT" in response.attributes


def test_the_four_addresses() -> None:
    assert ADDRESSES.all() == {
        Origin.PRIMARY: ("203.0.113.10", 3478),
        Origin.ALTERNATE_PORT: ("203.0.113.10", 3480),
        Origin.ALTERNATE_IP: ("203.0.113.11", 3478),
        Origin.ALTERNATE_BOTH: ("203.0.113.11", 3480),
    }


def test_no_fingerprint_unless_asked() -> None:
    data, _ = request(fingerprint=False)
    reply = answer_binding(data, CLIENT, Origin.PRIMARY, ADDRESSES)
    assert reply is not None and "FINGERPRINT" not in stun.parse_message(reply.data).attributes


def test_the_answer_is_bounded() -> None:
    data, _ = request(CHANGE_IP, fingerprint=False)
    reply = answer_binding(data, CLIENT, Origin.PRIMARY, ADDRESSES)
    assert reply is not None and len(reply.data) <= 56


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x00\x04" + b"\x00" * 16,  # length past the end
        bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)),  # not a request
        bytes(stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)),  # not a Binding
        request()[0][:-4],  # truncated
    ],
    # named, not by their bytes: the messages carry random transaction IDs, and parallel test
    # workers must collect the same names
    ids=["empty", "length-past-the-end", "a-response", "not-a-binding", "truncated"],
)
def test_anything_but_a_binding_request_is_dropped(data: bytes) -> None:
    assert answer_binding(data, CLIENT, Origin.PRIMARY, ADDRESSES) is None
    assert parse_binding_request(data) is None


def test_a_source_of_another_family_is_dropped() -> None:
    data, _ = request()
    assert answer_binding(data, ("2001:db8::1", 5), Origin.PRIMARY, ADDRESSES) is None


@given(st.binary(max_size=120))
def test_random_bytes_never_raise(data: bytes) -> None:
    answer_binding(data, CLIENT, Origin.ALTERNATE_BOTH, ADDRESSES)
    answer_binding(b"\x00\x01" + len(data).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + bytes(12) + data,
                   CLIENT, Origin.PRIMARY, ADDRESSES)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("203.0.113.10", 3478, "203.0.113.10", 3480), "two different IP addresses"),
        (("203.0.113.10", 3478, "2001:db8::1", 3480), "two different IP addresses"),
        (("0.0.0.0", 3478, "203.0.113.11", 3480), "not a wildcard"),
        (("203.0.113.10", 3478, "203.0.113.11", 3478), "use two ports"),
        (("203.0.113.10", 0, "203.0.113.11", 3480), "1..65535"),
    ],
)
def test_unusable_addresses_are_refused_with_the_fix(args: tuple[str, int, str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Rfc5780Addresses(*args)
