"""Property tests: no input crashes the TURN core, none disturbs another client's allocation, and
no unauthenticated reply is much larger than its request."""

from __future__ import annotations

import copy
import struct

from aioice import stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.turn import PEER, REALM, UDP_TRANSPORT, Lab

from dvrlink.broker.turn_server import ToClient, ToPeer, Transport

ALICE = ("192.0.2.10", 5000)
MALLORY = ("192.0.2.66", 6666)
COOKIE = b"\x21\x12\xa4\x42"


def ready_lab() -> tuple[Lab, int]:
    """alice holds an allocation with a channel 0x4001 to PEER."""
    lab = Lab()
    alice = lab.client(ALICE)
    assert alice.allocate(lifetime=3600).message_class == stun.Class.RESPONSE
    reply = alice.authed(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": PEER})
    assert reply.message_class == stun.Class.RESPONSE
    allocation = lab.server.allocation_for(Transport.UDP, ALICE)
    assert allocation is not None
    lab.to_clients.clear()
    lab.to_peers.clear()
    lab.events()
    return lab, allocation


def valid_requests(lab: Lab) -> list[bytes]:
    """Signed requests from mallory (with a nonce she got), plus indications and ChannelData."""
    mallory = lab.client(MALLORY, name="mallory")
    mallory.allocate()
    out = []
    for method, attributes in (
        (stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": UDP_TRANSPORT, "LIFETIME": 600}),
        (stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": PEER}),
        (stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": PEER}),
        (stun.Method.REFRESH, {"LIFETIME": 0}),
    ):
        message = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        message.attributes.update(attributes)
        message.attributes.update({"USERNAME": mallory.username, "REALM": REALM, "NONCE": mallory.nonce})
        assert mallory.key is not None
        message.add_message_integrity(mallory.key)
        out.append(bytes(message))
    send = stun.Message(message_method=stun.Method.SEND, message_class=stun.Class.INDICATION)
    send.attributes.update({"XOR-PEER-ADDRESS": PEER, "DATA": b"payload"})
    out.append(bytes(send))
    out.append(bytes(stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)))
    out.append(struct.pack("!HH", 0x4001, 5) + b"hello\x00\x00\x00")
    lab.to_clients.clear()
    lab.to_peers.clear()
    lab.events()
    return out


LAB, _ = ready_lab()
TEMPLATES = valid_requests(LAB)

mutation = st.tuples(
    st.sampled_from(range(len(TEMPLATES))),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "cut", "insert", "set"]), st.integers(0, 400), st.integers(0, 255)
        ),
        min_size=1,
        max_size=4,
    ),
)


def mutate(template: bytes, steps: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(template)
    for op, where, value in steps:
        position = where % max(1, len(data))
        if op == "flip" and data:
            data[position] ^= 1 << (value % 8)
        elif op == "cut":
            del data[position:]
        elif op == "insert":
            data[position:position] = bytes([value]) * (1 + value % 8)
        elif op == "set" and data:
            data[position] = value
    return bytes(data)


stun_like = st.builds(
    lambda t, length, rest: struct.pack("!HH", t, length) + COOKIE + rest,
    st.integers(0, 0x3FFF),
    st.integers(0, 300),
    st.binary(max_size=300),
)
datagrams = st.one_of(
    st.binary(max_size=600),
    stun_like,
    mutation.map(lambda m: mutate(TEMPLATES[m[0]], m[1])),
)


def test_templates_are_accepted_unmutated() -> None:
    lab, _ = ready_lab()
    for template in TEMPLATES[:4]:
        lab.server.receive_datagram(template, MALLORY, lab.now)
        (reply, _, _) = lab.server.datagrams_to_send()[0]
        assert stun.parse_message(reply).message_class == stun.Class.RESPONSE, stun.parse_message(reply)


def alice_still_served(lab: Lab, allocation: int) -> None:
    lab.to_peers.clear()
    lab.to_clients.clear()
    lab.server.receive_datagram(struct.pack("!HH", 0x4001, 2) + b"ok", ALICE, lab.now)
    lab.drain()
    assert lab.to_peers == [(b"ok", PEER, allocation)]
    lab.from_peer(allocation, b"back")
    assert lab.to_clients == [(struct.pack("!HH", 0x4001, 4) + b"back", ALICE, Transport.UDP)]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=st.lists(
        st.tuples(datagrams, st.sampled_from([Transport.UDP, Transport.TCP])),
        min_size=1,
        max_size=8,
    )
)
def test_garbage_and_mutated_requests_never_raise_nor_disturb_alice(
    inputs: list[tuple[bytes, Transport]],
) -> None:
    lab, allocation = ready_lab()
    lab.server.receive_datagram(TEMPLATES[0], MALLORY, lab.now)  # mallory may hold one too
    for data, transport in inputs:
        lab.server.receive_datagram(data, MALLORY, lab.now, transport)
        for reply, destination, via in lab.server.datagrams_to_send():
            if isinstance(via, ToClient):
                assert destination == MALLORY
                parsed = stun.parse_message(reply)
                if (
                    "MESSAGE-INTEGRITY" not in parsed.attributes
                    and parsed.message_method != stun.Method.BINDING
                ):
                    assert len(reply) <= len(data) + 44 + len(REALM), (data, reply)
            else:
                assert via.allocation_id != allocation
    lab.server.handle_timer(lab.now + 1)
    lab.now += 1
    assert lab.server.allocation_for(Transport.UDP, ALICE) == allocation
    alice_still_served(lab, allocation)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    packets=st.lists(
        st.tuples(
            st.binary(max_size=300),
            st.sampled_from([PEER, ("203.0.113.99", 1), ("::1", 5), ("127.0.0.1%lo", 3)]),
            st.integers(0, 5),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_peer_datagrams_never_raise_and_unpermitted_ones_are_dropped(
    packets: list[tuple[bytes, tuple[str, int], int]],
) -> None:
    lab, allocation = ready_lab()
    for data, peer, target in packets:
        lab.server.receive_from_peer(target, data, peer, lab.now)
        for _, destination, _via in lab.server.datagrams_to_send():
            assert destination == ALICE
            assert peer[0] == PEER[0] and target == allocation
    alice_still_served(lab, allocation)


# -- the link's hot paths decide exactly as the general inputs ------------------------------------------

channel_like = st.builds(
    lambda number, payload, skew, padding: (
        struct.pack("!HH", number, max(0, len(payload) + skew)) + payload + bytes(padding)
    ),
    st.sampled_from([0x4000, 0x4001, 0x4002, 0x4FFF, 0x5000, 0x7FFF]) | st.integers(0x4000, 0x7FFF),
    st.binary(max_size=24),
    st.just(0) | st.integers(-3, 3),
    st.integers(0, 3),
)
# around the lifetimes of ready_lab: permission 300 s, channel 600 s, allocation 3600 s
later = st.sampled_from([0, 1, 299, 300, 301, 599, 600, 601, 3599, 3600]) | st.integers(0, 4000)


def without_transaction_id(frame: bytes) -> bytes:
    """A Data indication's transaction id is random: compare the rest."""
    return frame[:8] + frame[20:] if frame and frame[0] < 0x40 else frame


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=st.lists(
        st.tuples(st.one_of(channel_like, datagrams), st.sampled_from([ALICE, MALLORY]), later),
        min_size=1,
        max_size=8,
    )
)
def test_receive_udp_relays_and_drops_as_receive_datagram_does(
    inputs: list[tuple[bytes, tuple[str, int], int]],
) -> None:
    fast, allocation = ready_lab()
    general = copy.deepcopy(fast)
    for data, source, offset in inputs:
        now = fast.now + offset
        routed = fast.server.receive_udp(data, source, now)
        general.server.receive_datagram(data, source, now, Transport.UDP)
        expected = general.server.datagrams_to_send()
        queued = fast.server.datagrams_to_send()
        if routed is not None:
            assert routed[0] == allocation and source == ALICE
            assert expected == [(routed[1], routed[2], ToPeer(allocation))]
            assert queued == []
        else:
            assert [(without_transaction_id(d), a, v) for d, a, v in queued] == [
                (without_transaction_id(d), a, v) for d, a, v in expected
            ]
        assert fast.server.stats == general.server.stats
    assert fast.server.allocation_for(Transport.UDP, ALICE) == allocation


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    packets=st.lists(
        st.tuples(
            st.binary(max_size=64),
            st.sampled_from(
                [PEER, (PEER[0], 1), ("203.0.113.99", 1), ("::1", 5), (f"{PEER[0]}%lo", PEER[1])]
            ),
            st.integers(0, 3),
            later,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_relay_from_peer_forwards_and_drops_as_receive_from_peer_does(
    packets: list[tuple[bytes, tuple[str, int], int, int]],
) -> None:
    fast, allocation = ready_lab()
    general = copy.deepcopy(fast)
    for data, peer, target, offset in packets:
        now = fast.now + offset
        routed = fast.server.relay_from_peer(target, data, peer, now)
        general.server.receive_from_peer(target, data, peer, now)
        expected = general.server.datagrams_to_send()
        assert fast.server.datagrams_to_send() == []  # alice is on UDP: nothing is queued
        if routed is None:
            assert expected == []
        else:
            assert target == allocation and peer[0].startswith(PEER[0])
            assert [(without_transaction_id(d), a, v) for d, a, v in expected] == [
                (without_transaction_id(routed[0]), routed[1], ToClient(Transport.UDP))
            ]
        assert fast.server.stats == general.server.stats
