"""The TURN core (RFC 8656) with made-up time: allocations, permissions, channels, data both
ways, expiry, authentication failures, quotas."""

from __future__ import annotations

import struct

import pytest
from aioice import stun
from support.turn import PEER, PEER2, REALM, RELAY_IP, SECRET, T0, UDP_TRANSPORT, Client, FakeRelays, Lab

from dvrlink.broker.turn_credentials import (
    CredentialStatus,
    check_username,
    long_term_key,
    make_credentials,
    rest_password,
)
from dvrlink.broker.turn_server import (
    AllocationCreated,
    AllocationDeleted,
    ToClient,
    Transport,
    TurnConfig,
    TurnServer,
)

# -- credentials ----------------------------------------------------------------------------------


def test_rest_credentials_match_coturn_formula() -> None:
    username, password = make_credentials("north", "DL-0001", 1000.0, 600)
    assert username == "1600:DL-0001"
    # base64(HMAC-SHA1("north", "1600:DL-0001")), computed independently with openssl:
    #   printf %s 1600:DL-0001 | openssl dgst -sha1 -hmac north -binary | base64
    assert password == "nk33ctSwbII0UO5fVI5FDYHBbiA="
    assert rest_password("north", username) == password
    assert check_username(username, 1599.0).status is CredentialStatus.VALID
    assert check_username(username, 1599.0).name == "DL-0001"
    assert check_username(username, 1600.0).status is CredentialStatus.EXPIRED
    for bad in ("", "alice", ":alice", "12:", "x1:alice", "١٢:alice"):
        assert check_username(bad, 0).status is CredentialStatus.MALFORMED
    assert check_username("99:a:b", 0).name == "a:b"


def test_make_credentials_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="ttl"):
        make_credentials("s", "a", 0, 0)
    with pytest.raises(ValueError, match="name"):
        make_credentials("s", "", 0, 1)
    with pytest.raises(ValueError, match="shorter"):
        make_credentials("s", "x" * 600, 0, 1)


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="secret"):
        TurnConfig(secret="")
    with pytest.raises(ValueError, match="max_lifetime_s"):
        TurnConfig(secret="s", max_lifetime_s=10)
    with pytest.raises(ValueError, match="denied_peer_networks"):
        TurnConfig(secret="s", denied_peer_networks=("nope",))


# -- allocate ---------------------------------------------------------------------------------------


def test_allocate_challenges_then_succeeds() -> None:
    lab = Lab()
    alice = lab.client()
    challenge = alice.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": UDP_TRANSPORT})
    assert challenge.message_class == stun.Class.ERROR
    assert challenge.error_code == 401
    assert challenge.attributes["REALM"] == REALM
    assert "MESSAGE-INTEGRITY" not in challenge.attributes
    alice.realm = challenge.attributes["REALM"]
    alice.nonce = challenge.attributes["NONCE"]
    reply = alice.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": UDP_TRANSPORT, "LIFETIME": 1200})
    assert reply.message_class == stun.Class.RESPONSE
    alice.check_signed(reply)
    assert reply.attributes["XOR-RELAYED-ADDRESS"] == (RELAY_IP, 50001)
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == alice.address
    assert reply.attributes["LIFETIME"] == 1200
    (event,) = lab.events()
    assert isinstance(event, AllocationCreated)
    assert event.relayed == (RELAY_IP, 50001)
    assert lab.server.allocation_count == 1


def test_lifetime_is_clamped_to_default_and_max() -> None:
    lab = Lab()
    assert lab.client(("192.0.2.1", 1)).allocate(lifetime=5).attributes["LIFETIME"] == 600
    assert lab.client(("192.0.2.1", 2)).allocate(lifetime=99999).attributes["LIFETIME"] == 3600
    assert lab.client(("192.0.2.1", 3), name="bob").allocate().attributes["LIFETIME"] == 600


def test_allocate_retransmission_gets_the_same_answer_and_a_new_one_gets_437() -> None:
    lab = Lab()
    alice = lab.client()
    challenge = alice.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": UDP_TRANSPORT})
    alice.realm, alice.nonce = challenge.attributes["REALM"], challenge.attributes["NONCE"]
    alice.key = long_term_key(alice.username, REALM, alice.password)
    message = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
    message.attributes["REQUESTED-TRANSPORT"] = UDP_TRANSPORT
    request = _resign(alice, message)
    (first,) = alice.send_raw(request)
    assert stun.parse_message(first).message_class == stun.Class.RESPONSE
    assert alice.send_raw(request) == [first]
    assert lab.server.allocation_count == 1
    # a new transaction on the same 5-tuple: 437, signed
    reply = alice.allocate()
    assert reply.error_code == 437
    alice.check_signed(reply)


def _sign_raw(body: bytes, key: bytes) -> bytes:
    """Fix the length of a hand-built message and append MESSAGE-INTEGRITY."""
    body = stun.set_body_length(body, len(body) - 20)
    integrity = stun.message_integrity(body, key)
    return stun.set_body_length(body, len(body) - 20 + 24) + struct.pack("!HH", 0x0008, 20) + integrity


def _resign(client: Client, message: stun.Message) -> bytes:
    assert client.key is not None
    message.attributes["USERNAME"] = client.username
    message.attributes["REALM"] = client.realm
    message.attributes["NONCE"] = client.nonce
    message.add_message_integrity(client.key)
    return bytes(message)


def test_allocate_errors() -> None:
    lab = Lab()
    alice = lab.client()
    alice.allocate()  # learns the nonce; now the same 5-tuple has an allocation
    fresh = lab.client(("192.0.2.20", 1))
    fresh.realm, fresh.nonce = alice.realm, None
    reply = fresh.authed(stun.Method.ALLOCATE, {})
    assert reply.error_code == 400
    fresh.check_signed(reply)
    assert fresh.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 0x06000000}).error_code == 442
    assert (
        fresh.request(
            stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": UDP_TRANSPORT, "SOFTWARE": "x", "PRIORITY": 1}
        ).message_class
        == stun.Class.RESPONSE
    )


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    lab = Lab()
    alice = lab.client()
    alice.allocate(lifetime=600)
    message = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
    message.attributes.update({"USERNAME": alice.username, "REALM": REALM, "NONCE": alice.nonce})
    body = bytes(message)
    # DONT-FRAGMENT (0x001A) is not supported; 0x0031 is nothing
    body += struct.pack("!HH", 0x001A, 0) + struct.pack("!HHI", 0x0031, 4, 7)
    assert alice.key is not None
    (reply_bytes,) = alice.send_raw(_sign_raw(body, alice.key))
    reply = stun.parse_message(reply_bytes)
    assert reply.error_code == 420
    alice.check_signed(reply)
    assert struct.pack("!HHHH", 0x000A, 4, 0x001A, 0x0031) in reply_bytes


def raw_allocate(client: Client, extra: bytes) -> stun.Message:
    message = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
    message.attributes.update({"REQUESTED-TRANSPORT": UDP_TRANSPORT, "USERNAME": client.username})
    message.attributes.update({"REALM": REALM, "NONCE": client.nonce})
    assert client.key is not None
    (reply,) = client.send_raw(_sign_raw(bytes(message) + extra, client.key))
    return stun.parse_message(reply)


def test_even_port_reservation_token_and_address_family() -> None:
    lab = Lab()
    clients = [lab.client(("192.0.2.30", port), name=f"u{port}") for port in range(1, 7)]
    for client in clients:
        challenge = client.request(stun.Method.REFRESH)  # 401 with this client's nonce
        client.realm, client.nonce = challenge.attributes["REALM"], challenge.attributes["NONCE"]
        client.key = long_term_key(client.username, REALM, client.password)
    even = raw_allocate(clients[0], struct.pack("!HHB3x", 0x0018, 1, 0x00))
    assert even.message_class == stun.Class.RESPONSE
    assert even.attributes["XOR-RELAYED-ADDRESS"][1] % 2 == 0
    reserved = raw_allocate(clients[1], struct.pack("!HHB3x", 0x0018, 1, 0x80))  # the R bit: a pair
    assert reserved.message_class == stun.Class.RESPONSE, reserved  # (test_turn_reservation.py)
    assert raw_allocate(clients[2], struct.pack("!HHQ", 0x0022, 8, 1)).error_code == 508  # no such token
    ipv6 = struct.pack("!HHB3x", 0x0017, 4, 0x02)
    assert raw_allocate(clients[3], ipv6).error_code == 440
    ipv4 = struct.pack("!HHB3x", 0x0017, 4, 0x01)
    assert raw_allocate(clients[4], ipv4).message_class == stun.Class.RESPONSE
    both = struct.pack("!HHQ", 0x0022, 8, 1) + ipv4
    assert raw_allocate(clients[5], both).error_code == 400


def test_quota_per_user_and_global_capacity() -> None:
    lab = Lab(config=TurnConfig(secret=SECRET, max_allocations_per_user=2, max_allocations=3))
    for port in (1, 2):
        assert lab.client(("192.0.2.1", port)).allocate().message_class == stun.Class.RESPONSE
    # From another host: alice's allocations at 192.0.2.1 are kept (see test_turn_reservation.py).
    third = lab.client(("192.0.2.2", 3)).allocate()
    assert third.error_code == 486
    assert lab.client(("192.0.2.1", 4), name="bob").allocate().message_class == stun.Class.RESPONSE
    assert lab.client(("192.0.2.1", 5), name="carol").allocate().error_code == 508
    # deleting one of alice's frees her quota
    first = lab.client(("192.0.2.1", 1))
    first.allocate()  # 437 but learns the nonce
    assert first.request(stun.Method.REFRESH, {"LIFETIME": 0}).attributes["LIFETIME"] == 0
    assert lab.client(("192.0.2.1", 6)).allocate().message_class == stun.Class.RESPONSE


def test_no_relay_port_is_508() -> None:
    lab = Lab(relays=FakeRelays(capacity=0))
    assert lab.client().allocate().error_code == 508


# -- authentication failures ------------------------------------------------------------------------


def test_wrong_password_gets_401_and_no_allocation() -> None:
    lab = Lab()
    alice = lab.client()
    alice.password = rest_password("another-secret", alice.username)
    reply = alice.allocate()
    assert reply.error_code == 401
    assert "MESSAGE-INTEGRITY" not in reply.attributes
    assert lab.server.allocation_count == 0
    assert lab.server.stats["auth_failed"] == 1


def test_expired_rest_credential_gets_401() -> None:
    lab = Lab()
    username, password = make_credentials(SECRET, "alice", T0 - 3600, 60)
    alice = lab.client()
    alice.username, alice.password = username, password
    assert alice.allocate().error_code == 401
    assert lab.server.allocation_count == 0


def test_wrong_realm_and_missing_attributes() -> None:
    lab = Lab()
    alice = lab.client()
    alice.allocate()
    alice.realm = "elsewhere"
    assert alice.request(stun.Method.REFRESH).error_code == 401
    message = stun.Message(message_method=stun.Method.REFRESH, message_class=stun.Class.REQUEST)
    message.add_message_integrity(b"k" * 16)
    (reply,) = alice.send_raw(bytes(message))
    assert stun.parse_message(reply).error_code == 400


def test_stale_nonce_gets_438_then_works_with_the_new_one() -> None:
    lab = Lab()
    alice = lab.client()
    alice.allocate(lifetime=3600)
    lab.advance(T0 + 700)  # nonce lifetime 600
    stale = alice.request(stun.Method.REFRESH)
    assert stale.error_code == 438
    assert stale.attributes["NONCE"] != alice.nonce
    reply = alice.authed(stun.Method.REFRESH)
    assert reply.message_class == stun.Class.RESPONSE


def test_nonce_from_another_client_is_not_accepted() -> None:
    lab = Lab()
    alice = lab.client()
    alice.allocate()
    mallory = lab.client(("192.0.2.66", 6666), name="mallory")
    mallory.realm, mallory.nonce = alice.realm, alice.nonce
    assert mallory.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": UDP_TRANSPORT}).error_code == 438


def test_another_user_on_the_same_5_tuple_gets_441() -> None:
    lab = Lab()
    alice = lab.client()
    alice.allocate()
    bob = lab.client(name="bob")
    bob.realm, bob.nonce = alice.realm, alice.nonce
    reply = bob.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": PEER})
    assert reply.error_code == 441
    bob.check_signed(reply)


def test_unauthenticated_replies_are_small() -> None:
    lab = Lab()
    alice = lab.client()
    message = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
    request = bytes(message)  # 20 bytes: the smallest request
    (reply,) = alice.send_raw(request)
    assert len(reply) <= len(request) + 44 + len(REALM)


# -- refresh and delete ---------------------------------------------------------------------------


def test_refresh_extends_and_zero_deletes() -> None:
    lab = Lab()
    alice = lab.client()
    alice.allocate()
    lab.events()
    lab.advance(T0 + 500)
    reply = alice.authed(stun.Method.REFRESH, {"LIFETIME": 900})
    assert reply.attributes["LIFETIME"] == 900
    alice.check_signed(reply)
    lab.advance(T0 + 1300)
    assert lab.server.allocation_count == 1
    reply = alice.authed(stun.Method.REFRESH, {"LIFETIME": 0})
    assert reply.attributes["LIFETIME"] == 0
    assert lab.server.allocation_count == 0
    assert lab.relays.closed == [1]
    (event,) = lab.events()
    assert isinstance(event, AllocationDeleted)
    assert event.reason == "refresh"
    assert alice.authed(stun.Method.REFRESH).error_code == 437


def test_allocation_expires_at_its_lifetime() -> None:
    lab = Lab()
    alice = lab.client()
    alice.allocate()
    lab.events()
    assert lab.server.get_timer() == T0 + 600
    lab.advance(T0 + 599)
    assert lab.server.allocation_count == 1
    lab.advance(T0 + 600)
    assert lab.server.allocation_count == 0
    assert [type(e) for e in lab.events()] == [AllocationDeleted]
    assert lab.server.get_timer() is None


# -- permissions, channels, data --------------------------------------------------------------------


def allocated(lab: Lab) -> tuple[Client, int]:
    alice = lab.client()
    assert alice.allocate(lifetime=3600).message_class == stun.Class.RESPONSE
    allocation_id = lab.server.allocation_for(Transport.UDP, alice.address)
    assert allocation_id is not None
    return alice, allocation_id


def test_send_and_data_indications_need_a_permission() -> None:
    lab = Lab()
    alice, allocation = allocated(lab)
    assert alice.send_indication(PEER, b"early") == []
    assert lab.to_peers == []
    lab.from_peer(allocation, b"unsolicited")
    assert lab.to_clients == []
    assert lab.server.stats["peer_dropped"] == 1
    reply = alice.authed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": PEER})
    assert reply.message_class == stun.Class.RESPONSE
    assert alice.send_indication(PEER, b"hello") == []
    assert lab.to_peers == [(b"hello", PEER, allocation)]
    # any port of a permitted IP may answer; it arrives as a Data indication
    lab.from_peer(allocation, b"world", (PEER[0], 9999))
    (data, destination, _) = lab.to_clients[-1]
    assert destination == alice.address
    indication = stun.parse_message(data)
    assert indication.message_method == stun.Method.DATA
    assert indication.message_class == stun.Class.INDICATION
    assert indication.attributes["DATA"] == b"world"
    assert indication.attributes["XOR-PEER-ADDRESS"] == (PEER[0], 9999)
    # another IP is still dropped
    lab.to_clients.clear()
    lab.from_peer(allocation, b"other", PEER2)
    assert lab.to_clients == []


def test_create_permission_takes_several_peers() -> None:
    lab = Lab()
    alice, allocation = allocated(lab)
    message = stun.Message(message_method=stun.Method.CREATE_PERMISSION, message_class=stun.Class.REQUEST)
    message.attributes.update({"XOR-PEER-ADDRESS": PEER, "USERNAME": alice.username, "REALM": REALM})
    message.attributes["NONCE"] = alice.nonce
    second = stun.pack_xor_address(PEER2, message.transaction_id)
    body = bytes(message) + struct.pack("!HH", 0x0012, len(second)) + second
    assert alice.key is not None
    reply = alice.send_raw(_sign_raw(body, alice.key))
    assert stun.parse_message(reply[0]).message_class == stun.Class.RESPONSE
    lab.from_peer(allocation, b"a", PEER)
    lab.from_peer(allocation, b"b", PEER2)
    assert len(lab.to_clients) == 2


def test_permission_expires_after_300_s() -> None:
    lab = Lab()
    alice, allocation = allocated(lab)
    alice.authed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": PEER})
    lab.advance(T0 + 299)
    lab.from_peer(allocation, b"x")
    assert len(lab.to_clients) == 1
    lab.advance(T0 + 300)
    lab.from_peer(allocation, b"y")
    assert len(lab.to_clients) == 1
    assert alice.send_indication(PEER, b"z") == []
    assert lab.to_peers == []


def test_forbidden_peer_gets_403_and_family_mismatch_443() -> None:
    lab = Lab()
    alice, _ = allocated(lab)
    reply = alice.authed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": ("127.0.0.1", 80)})
    assert reply.error_code == 403
    reply = alice.authed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": ("2001:db8::1", 80)})
    assert reply.error_code == 443
    assert alice.authed(stun.Method.CREATE_PERMISSION).error_code == 400


def test_channel_bind_and_channel_data_both_ways() -> None:
    lab = Lab()
    alice, allocation = allocated(lab)
    reply = alice.authed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": PEER})
    assert reply.message_class == stun.Class.RESPONSE
    alice.check_signed(reply)
    assert alice.channel_data(0x4001, b"to peer") == []
    assert lab.to_peers == [(b"to peer", PEER, allocation)]
    lab.from_peer(allocation, b"back")
    assert lab.to_clients[-1][0] == struct.pack("!HH", 0x4001, 4) + b"back"
    # another port of the same IP has the permission but no channel: Data indication
    lab.from_peer(allocation, b"side", (PEER[0], 1))
    assert stun.parse_message(lab.to_clients[-1][0]).message_method == stun.Method.DATA
    # unbound channel: dropped
    assert alice.channel_data(0x4002, b"nobody") == []
    assert len(lab.to_peers) == 1


def test_channel_bind_rules() -> None:
    lab = Lab()
    alice, _ = allocated(lab)
    bind = alice.authed
    assert (
        bind(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x3FFF, "XOR-PEER-ADDRESS": PEER}).error_code == 400
    )
    assert (
        bind(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x7FFF, "XOR-PEER-ADDRESS": PEER}).error_code == 400
    )
    assert bind(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4000}).error_code == 400
    ok = bind(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": PEER})
    assert ok.message_class == stun.Class.RESPONSE
    # the same binding again is a refresh
    again = bind(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": PEER})
    assert again.message_class == stun.Class.RESPONSE
    # channel to another peer, or peer to another channel: 400
    assert (
        bind(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": PEER2}).error_code
        == 400
    )
    assert (
        bind(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": PEER}).error_code == 400
    )
    assert (
        bind(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4FFF, "XOR-PEER-ADDRESS": PEER2}).error_code
        is None
    )


def test_channel_expires_after_600_s_and_can_be_rebound() -> None:
    lab = Lab()
    alice, _ = allocated(lab)
    alice.authed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": PEER})
    lab.advance(T0 + 299)
    alice.authed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": PEER})
    lab.advance(T0 + 599)
    assert alice.channel_data(0x4001, b"a") == []
    assert len(lab.to_peers) == 1
    lab.advance(T0 + 600)
    alice.channel_data(0x4001, b"b")
    assert len(lab.to_peers) == 1
    reply = alice.authed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": PEER2})
    assert reply.message_class == stun.Class.RESPONSE


def test_tcp_client_gets_padded_channel_data() -> None:
    lab = Lab()
    alice = lab.client(transport=Transport.TCP)
    alice.allocate()
    allocation = lab.server.allocation_for(Transport.TCP, alice.address)
    assert allocation is not None
    alice.authed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": PEER})
    assert alice.channel_data(0x4001, b"abcde") == []
    assert lab.to_peers[-1][0] == b"abcde"
    lab.from_peer(allocation, b"xyz")
    frame, _, transport = lab.to_clients[-1]
    assert transport is Transport.TCP
    assert frame == struct.pack("!HH", 0x4001, 3) + b"xyz" + b"\x00"
    # the same address over UDP is another 5-tuple
    assert lab.server.allocation_for(Transport.UDP, alice.address) is None
    lab.server.client_disconnected(Transport.TCP, alice.address, lab.now)
    assert lab.server.allocation_count == 0


def test_binding_request_is_answered() -> None:
    lab = Lab()
    alice = lab.client()
    reply = alice.request(stun.Method.BINDING, sign=False)
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == alice.address


def test_long_term_key_formula() -> None:
    import hashlib

    assert long_term_key("u", "r", "p") == hashlib.md5(b"u:r:p").digest()


def test_rfc5766_channel_numbers_are_optional() -> None:
    lab = Lab()
    alice, allocation = allocated(lab)
    reply = alice.authed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x7FFE, "XOR-PEER-ADDRESS": PEER})
    assert reply.message_class == stun.Class.RESPONSE
    alice.channel_data(0x7FFE, b"old style")
    assert lab.to_peers == [(b"old style", PEER, allocation)]
    strict = Lab(config=TurnConfig(secret=SECRET, rfc5766_channel_numbers=False))
    bob, _ = allocated(strict)
    reply = bob.authed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x5000, "XOR-PEER-ADDRESS": PEER})
    assert reply.error_code == 400
    assert bob.channel_data(0x5000, b"x") == []
    assert strict.to_peers == []


# -- the link's hot paths: receive_udp and relay_from_peer ------------------------------------------


def bound(lab: Lab, transport: Transport = Transport.UDP) -> tuple[Client, int]:
    """alice (over ``transport``) with an allocation and channel 0x4001 bound to PEER."""
    alice = lab.client(transport=transport)
    assert alice.allocate(lifetime=3600).message_class == stun.Class.RESPONSE
    allocation = lab.server.allocation_for(transport, alice.address)
    assert allocation is not None
    reply = alice.authed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": PEER})
    assert reply.message_class == stun.Class.RESPONSE
    lab.drain()
    lab.events()
    lab.to_clients.clear()
    lab.to_peers.clear()
    return alice, allocation


def test_receive_udp_returns_bound_channel_data_and_queues_nothing() -> None:
    lab = Lab()
    alice, allocation = bound(lab)
    before = dict(lab.server.stats)
    frame = struct.pack("!HH", 0x4001, 5) + b"hello" + b"\x00\x00\x00"  # padding is allowed
    assert lab.server.receive_udp(frame, alice.address, lab.now) == (allocation, b"hello", PEER)
    assert lab.server.datagrams_to_send() == []
    assert lab.server.next_event() is None
    assert lab.server.stats["to_peer"] == before["to_peer"] + 1
    assert lab.server.stats["datagrams"] == before["datagrams"] + 1


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack("!HH", 0x4002, 2) + b"no",  # channel number not bound
        struct.pack("!HH", 0x4001, 9) + b"short",  # length beyond the datagram
        struct.pack("!HH", 0x7FFF, 2) + b"no",  # outside every channel range
        b"\x40\x01\x00",  # shorter than a ChannelData header
    ],
)
def test_receive_udp_drops_what_receive_datagram_drops(frame: bytes) -> None:
    lab = Lab()
    alice, _ = bound(lab)
    dropped = lab.server.stats["dropped"]
    assert lab.server.receive_udp(frame, alice.address, lab.now) is None
    assert lab.server.datagrams_to_send() == []
    assert lab.server.stats["dropped"] == dropped + 1


def test_receive_udp_drops_channel_data_from_another_address_or_after_expiry() -> None:
    lab = Lab()
    alice, _ = bound(lab)
    frame = struct.pack("!HH", 0x4001, 2) + b"hi"
    assert lab.server.receive_udp(frame, ("192.0.2.99", alice.address[1]), lab.now) is None
    assert lab.server.receive_udp(frame, alice.address, T0 + 600) is None  # channel lifetime 600 s
    assert lab.server.datagrams_to_send() == []
    assert lab.server.stats["dropped"] == 2


def test_receive_udp_passes_stun_to_the_general_path() -> None:
    lab = Lab()
    alice, _ = bound(lab)
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    assert lab.server.receive_udp(bytes(request), alice.address, lab.now) is None
    lab.drain()
    (reply, destination, transport) = lab.to_clients[0]
    assert (destination, transport) == (alice.address, Transport.UDP)
    assert stun.parse_message(reply).transaction_id == request.transaction_id
    # a Send indication takes the general path too, and is relayed from the outbox
    alice.send_indication(PEER, b"via outbox")
    assert lab.to_peers[-1][0] == b"via outbox"


def test_receive_udp_ignores_tcp_allocations_of_the_same_address() -> None:
    lab = Lab()
    alice, _ = bound(lab, Transport.TCP)
    frame = struct.pack("!HH", 0x4001, 4) + b"data"
    assert lab.server.receive_udp(frame, alice.address, lab.now) is None
    assert lab.server.datagrams_to_send() == []


def test_relay_from_peer_checks_the_permission_and_frames_for_udp_clients() -> None:
    lab = Lab()
    alice, allocation = bound(lab)
    server = lab.server
    assert server.relay_from_peer(allocation, b"back", PEER, lab.now) == (
        struct.pack("!HH", 0x4001, 4) + b"back",
        alice.address,
    )
    # no permission for this IP: dropped
    assert server.relay_from_peer(allocation, b"x", PEER2, lab.now) is None
    # unknown allocation: dropped
    assert server.relay_from_peer(allocation + 100, b"x", PEER, lab.now) is None
    assert server.stats["peer_dropped"] == 2
    # permitted IP, no channel for this port: a Data indication
    routed = server.relay_from_peer(allocation, b"side", (PEER[0], 1), lab.now)
    assert routed is not None and routed[1] == alice.address
    indication = stun.parse_message(routed[0])
    assert (indication.message_method, indication.message_class) == (stun.Method.DATA, stun.Class.INDICATION)
    assert indication.attributes["XOR-PEER-ADDRESS"] == (PEER[0], 1)
    assert indication.attributes["DATA"] == b"side"
    # permission gone (300 s), channel still bound: dropped
    assert server.relay_from_peer(allocation, b"late", PEER, T0 + 300) is None
    assert server.datagrams_to_send() == []
    assert server.next_event() is None


def test_relay_from_peer_queues_frames_for_tcp_clients() -> None:
    lab = Lab()
    alice, allocation = bound(lab, Transport.TCP)
    assert lab.server.relay_from_peer(allocation, b"xyz", PEER, lab.now) is None
    assert lab.server.datagrams_to_send() == [
        (struct.pack("!HH", 0x4001, 3) + b"xyz\x00", alice.address, ToClient(Transport.TCP))
    ]


@pytest.mark.parametrize("payload", [b"", b"a", b"abcd", b"odd length!", bytes(1200)])
@pytest.mark.parametrize("peer", [("203.0.113.5", 9), ("2001:db8::5", 443)])
def test_data_indication_is_what_aioice_builds(payload: bytes, peer: tuple[str, int]) -> None:
    lab = Lab()
    data = lab.server._data_indication(payload, peer)
    indication = stun.parse_message(data)
    expected = stun.Message(
        message_method=stun.Method.DATA,
        message_class=stun.Class.INDICATION,
        transaction_id=indication.transaction_id,
    )
    expected.attributes["XOR-PEER-ADDRESS"] = peer
    expected.attributes["DATA"] = payload
    assert data == bytes(expected)


def test_data_indication_transaction_ids_differ() -> None:
    lab = Lab(relays=FakeRelays())
    lab.server = TurnServer(lab.config, lab.relays)  # os.urandom, as in service
    ids = {lab.server._data_indication(b"x", PEER)[8:20] for _ in range(1000)}
    assert len(ids) == 1000


def test_channel_data_after_the_allocation_expired_is_dropped_before_the_timer_runs() -> None:
    lab = Lab()
    alice, allocation = bound(lab)  # allocation until T0 + 3600
    lab.now = T0 + 3500
    alice.authed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": PEER})
    lab.to_peers.clear()
    frame = struct.pack("!HH", 0x4001, 2) + b"hi"
    assert lab.server.receive_udp(frame, alice.address, T0 + 3599) == (allocation, b"hi", PEER)
    # the channel would last until T0 + 4100, but the allocation is over (its timer not yet run)
    assert lab.server.receive_udp(frame, alice.address, T0 + 3600) is None
    lab.server.receive_datagram(frame, alice.address, T0 + 3600)
    assert lab.server.datagrams_to_send() == []
    assert lab.server.relay_from_peer(allocation, b"late", PEER, T0 + 3600) is None
