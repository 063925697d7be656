"""Property tests: no datagram crashes a core, and the broker never amplifies garbage."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.presence import Lab

from dvrlink.protocol.presence_client import ClientState
from dvrlink.protocol.presence_wire import MAX_DATAGRAM, MessageType

SOURCE = ("192.0.2.200", 4444)

# Datagrams that look like ours: a presence type byte and version 1, then anything.
presence_like = st.builds(
    lambda t, rest: bytes([t, 1]) + rest,
    st.sampled_from([int(m) for m in MessageType]),
    st.binary(max_size=300),
)
anything = st.one_of(st.binary(max_size=1500), presence_like)


def online_lab() -> Lab:
    lab = Lab()
    lab.add_device("DL-0001-0001")
    lab.start_all()
    return lab


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datagrams=st.lists(anything, min_size=1, max_size=8))
def test_broker_core_never_raises_nor_amplifies(datagrams: list[bytes]) -> None:
    lab = online_lab()
    for data in datagrams:
        lab.server.receive_datagram(data, SOURCE, lab.now)
        for reply, address in lab.server.datagrams_to_send():
            assert address == SOURCE
            is_stun = data[:1] in (b"\x00", b"\x01") and data[4:8] == b"\x21\x12\xa4\x42"
            if not is_stun:
                assert len(reply) <= len(data), (data, reply)
    # the good device is still served
    lab.advance(lab.now + lab.interval + 1)
    assert lab.devices[0].client.state is ClientState.ONLINE
    assert lab.server.presence("DL-0001-0001").online


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datagrams=st.lists(anything, min_size=1, max_size=8))
def test_device_core_never_raises_on_garbage(datagrams: list[bytes]) -> None:
    lab = online_lab()
    device = lab.devices[0]
    for data in datagrams:
        device.client.receive_datagram(data, lab.now)
    assert device.client.state is ClientState.ONLINE
    lab.advance(lab.now + lab.interval + 1)
    assert device.client.state is ClientState.ONLINE


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0, max_value=200), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_a_sealed_keepalive_is_rejected(position: int, bit: int) -> None:
    lab = online_lab()
    lab.wire.clear()
    lab.filter = lambda d, b, dev: d != "up"
    lab.advance(lab.now + lab.interval + 0.1)
    keepalive = next(b for d, b, _ in lab.wire if d == "up")
    position %= len(keepalive)
    corrupted = bytearray(keepalive)
    corrupted[position] ^= 1 << bit
    before = lab.server.stats["keepalives"]
    lab.server.receive_datagram(bytes(corrupted), lab.devices[0].address, lab.now)
    assert lab.server.stats["keepalives"] == before


def test_oversize_datagram_is_dropped() -> None:
    lab = online_lab()
    lab.server.receive_datagram(bytes([MessageType.HELLO, 1]) + bytes(MAX_DATAGRAM), SOURCE, lab.now)
    assert lab.server.datagrams_to_send() == []
    assert lab.server.stats["dropped"] == 1
