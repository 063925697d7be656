"""TURN port pairs (EVEN-PORT with the R bit, RESERVATION-TOKEN; RFC 8656 sections 7.2, 14.6 and
14.9) and the per-name quota when a client goes over it, on the sans-I/O core with made-up time."""

from __future__ import annotations

import struct
from typing import Any

from aioice import stun
from support.turn import PEER, REALM, SECRET, UDP_TRANSPORT, Client, Lab

from dvrlink.broker.turn_credentials import long_term_key
from dvrlink.broker.turn_server import AllocationDeleted, TurnConfig

EVEN_PORT_RESERVE = struct.pack("!HHB3x", 0x0018, 1, 0x80)


def token_attribute(token: bytes) -> bytes:
    return struct.pack("!HH", 0x0022, 8) + token


def signed(data: bytes, key: bytes) -> bytes:
    """``data`` with raw attributes appended, length fixed, then MESSAGE-INTEGRITY."""
    data = stun.set_body_length(data, len(data) - 20)
    integrity = stun.message_integrity(data, key)
    return stun.set_body_length(data, len(data) - 20 + 24) + struct.pack("!HH", 0x0008, 20) + integrity


def allocate_raw(client: Client, extra: bytes) -> tuple[stun.Message, bytes]:
    """An authenticated Allocate with ``extra`` raw attributes; the reply and its bytes."""
    if client.nonce is None:
        challenge = client.request(stun.Method.REFRESH)  # 401: learns the realm and nonce
        client.realm, client.nonce = challenge.attributes["REALM"], challenge.attributes["NONCE"]
        client.key = long_term_key(client.username, REALM, client.password)
    message = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
    attributes: dict[str, Any] = {"REQUESTED-TRANSPORT": UDP_TRANSPORT, "USERNAME": client.username}
    attributes.update({"REALM": REALM, "NONCE": client.nonce})
    message.attributes.update(attributes)
    assert client.key is not None
    (reply,) = client.send_raw(signed(bytes(message) + extra, client.key))
    return stun.parse_message(reply), reply


def reservation_token(reply: bytes) -> bytes | None:
    pos = 20
    while pos < len(reply):
        kind, length = struct.unpack_from("!HH", reply, pos)
        if kind == 0x0022:
            return reply[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)
    return None


def test_even_port_with_r_reserves_the_next_port_for_its_token() -> None:
    lab = Lab()
    rtp = lab.client(("192.0.2.40", 5000))
    response, data = allocate_raw(rtp, EVEN_PORT_RESERVE)
    assert response.message_class == stun.Class.RESPONSE, f"EVEN-PORT with R got {response}"
    rtp.check_signed(response)
    relayed = response.attributes["XOR-RELAYED-ADDRESS"]
    assert relayed[1] % 2 == 0, relayed
    token = reservation_token(data)
    assert token is not None and len(token) == 8, data.hex()
    # The RTCP allocation claims the reserved port, P + 1.
    rtcp = lab.client(("192.0.2.40", 5001))
    response, _ = allocate_raw(rtcp, token_attribute(token))
    assert response.message_class == stun.Class.RESPONSE, response
    assert response.attributes["XOR-RELAYED-ADDRESS"] == (relayed[0], relayed[1] + 1)
    assert lab.relays.held == {}
    # A token is good once.
    again = lab.client(("192.0.2.40", 5002))
    assert allocate_raw(again, token_attribute(token))[0].error_code == 508


def test_an_unclaimed_reservation_expires_and_frees_its_port_and_quota() -> None:
    lab = Lab(config=TurnConfig(secret=SECRET, realm=REALM, max_allocations_per_user=2))
    rtp = lab.client(("192.0.2.41", 5000))
    response, data = allocate_raw(rtp, EVEN_PORT_RESERVE)
    token = reservation_token(data)
    assert response.message_class == stun.Class.RESPONSE, response
    assert token is not None and len(lab.relays.held) == 1
    # The reservation counts against the name's quota (2) until it is claimed or expires.
    elsewhere = lab.client(("192.0.2.99", 5000))
    assert elsewhere.allocate().error_code == 486
    deadline = lab.server.get_timer()
    assert deadline is not None and deadline <= lab.now + 30
    lab.advance(lab.now + 31)
    assert lab.relays.held == {} and lab.relays.released, "the reserved port was not released"
    late = lab.client(("192.0.2.41", 5002))
    assert allocate_raw(late, token_attribute(token))[0].error_code == 508
    assert elsewhere.allocate().message_class == stun.Class.RESPONSE  # the quota is free again


def test_a_token_belongs_to_its_name_and_excludes_even_port() -> None:
    lab = Lab()
    response, data = allocate_raw(lab.client(("192.0.2.42", 5000)), EVEN_PORT_RESERVE)
    token = reservation_token(data)
    assert response.message_class == stun.Class.RESPONSE and token is not None, response
    mallory = lab.client(("192.0.2.43", 5000), name="mallory")
    assert allocate_raw(mallory, token_attribute(token))[0].error_code == 508
    both = lab.client(("192.0.2.42", 5001))
    assert allocate_raw(both, token_attribute(token) + EVEN_PORT_RESERVE)[0].error_code == 400
    # Still claimable by its owner.
    owner = lab.client(("192.0.2.42", 5002))
    assert allocate_raw(owner, token_attribute(token))[0].message_class == stun.Class.RESPONSE


def test_going_over_quota_releases_what_that_client_ip_holds() -> None:
    # What turnutils_uclient -c -m 10 -y does with a quota of 10: 20 allocations, 486 on the 11th,
    # and it exits. Its allocations (some with permissions) must not block its next run.
    lab = Lab(config=TurnConfig(secret=SECRET, realm=REALM, max_allocations_per_user=10))
    in_use = lab.client(("198.51.100.9", 7000))  # another host of the same name: kept
    assert in_use.allocate().message_class == stun.Class.RESPONSE
    assert in_use.authed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": PEER}).error_code is None
    first_run = [lab.client(("192.0.2.50", 6000 + i)) for i in range(10)]
    replies = []
    for client in first_run:
        replies.append(client.allocate())
        if replies[-1].error_code is None:
            client.authed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": PEER})
    assert [r.error_code for r in replies] == [None] * 9 + [486], [r.error_code for r in replies]
    lab.events()
    assert lab.server.allocation_count == 1, (
        f"{lab.server.allocation_count} allocations left after the client went over its quota"
    )
    second_run = [lab.client(("192.0.2.50", 6100 + i)) for i in range(9)]
    assert all(c.allocate().message_class == stun.Class.RESPONSE for c in second_run)
    deleted = [e for e in lab.events() if isinstance(e, AllocationDeleted)]
    assert deleted == []


def test_the_over_quota_release_reports_its_reason() -> None:
    lab = Lab(config=TurnConfig(secret=SECRET, realm=REALM, max_allocations_per_user=1))
    assert lab.client(("192.0.2.60", 1)).allocate().message_class == stun.Class.RESPONSE
    lab.events()
    assert lab.client(("192.0.2.60", 2)).allocate().error_code == 486
    assert [e.reason for e in lab.events() if isinstance(e, AllocationDeleted)] == ["over-quota"]
