"""Security of the data plane's datagrams: replay, the window, forgery, tags, reordering, and what
the path (a relay) sees."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.dataplane_link import key_material, pair

from dvrlink.protocol import dataplane_keys
from dvrlink.protocol.dataplane import (
    FLOW_CONTROL_ERROR,
    PROTOCOL_ERROR,
    DatagramReceived,
    DataplaneClosed,
    DataplaneConfig,
    DataplaneConnection,
    KeyMaterial,
    StreamData,
)
from dvrlink.protocol.dataplane_keys import DEVICE_TO_VIEWER, VIEWER_TO_DEVICE, PacketKey, initial_secret
from dvrlink.protocol.dataplane_wire import HEADER, MAX_PACKET_NUMBER, OVERHEAD, encode_varint


@pytest.fixture(autouse=True, params=["compiled", "python"])
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs twice: packets opened by the compiled ``Opener`` (skipped where the
    module was not built) and by ``cryptography`` alone."""
    mode: str = request.param
    if mode == "compiled" and dataplane_keys._compiled_opener is None:
        pytest.skip("the compiled module is not built here")
    if mode == "python":
        monkeypatch.setattr(dataplane_keys, "_compiled_opener", None)
    return mode


def datagrams(count: int) -> tuple[DataplaneConnection, DataplaneConnection, list[bytes]]:
    """(viewer, device, ``count`` sealed DATAGRAM packets from the viewer, numbers 0 .. count-1)."""
    viewer, device = pair()
    for index in range(count):
        viewer.send_datagram(1, index.to_bytes(4, "big"))
    sent = viewer.datagrams_to_send(0.0)
    assert len(sent) == count, f"expected {count} datagrams, got {len(sent)}"
    return viewer, device, sent


def received_payloads(device: DataplaneConnection) -> list[int]:
    return [int.from_bytes(e.data, "big") for e in device.events() if isinstance(e, DatagramReceived)]


def test_a_replayed_packet_is_dropped_as_duplicate() -> None:
    _, device, sent = datagrams(3)
    for datagram in [sent[0], sent[1], sent[0], sent[2], sent[1]]:
        device.receive_datagram(datagram, 0.1)
    assert received_payloads(device) == [0, 1, 2]
    assert device.stats.dropped["duplicate"] == 2, device.stats.dropped


def test_a_packet_behind_the_window_is_too_old_and_reordering_within_it_is_accepted() -> None:
    _, device, sent = datagrams(2100)
    device.receive_datagram(sent[2099], 0.1)
    for index in range(2098, 2098 - 300, -1):  # 300 packets in reverse order, all inside the window
        device.receive_datagram(sent[index], 0.1)
    device.receive_datagram(sent[10], 0.1)  # 2089 behind the highest
    payloads = received_payloads(device)
    assert payloads == [2099, *range(2098, 1798, -1)], f"{len(payloads)} accepted"
    assert device.stats.dropped["too_old"] == 1, device.stats.dropped


def test_a_forged_packet_does_not_mark_the_window() -> None:
    _, device, sent = datagrams(3)
    flipped = bytearray(sent[1])
    flipped[OVERHEAD - 16 + 2] ^= 0x01  # a ciphertext bit
    forged_tag = bytearray(sent[2])
    forged_tag[-1] ^= 0x80  # the AEAD tag
    device.receive_datagram(bytes(flipped), 0.1)
    device.receive_datagram(bytes(forged_tag), 0.1)
    assert device.stats.dropped["auth"] == 2, device.stats.dropped
    assert received_payloads(device) == []
    for datagram in sent:
        device.receive_datagram(datagram, 0.2)
    assert received_payloads(device) == [0, 1, 2], "the genuine packets did not open after the forgeries"
    assert device.stats.dropped["duplicate"] == 0, device.stats.dropped


def test_header_checks_drop_by_reason() -> None:
    _, device, sent = datagrams(1)
    wrong_tag = bytearray(sent[0])
    wrong_tag[1] ^= 0xFF
    reserved = bytearray(sent[0])
    reserved[0] |= 0x01
    quic_like = bytearray(sent[0])
    quic_like[0] = 0x40
    phase_flipped = bytearray(sent[0])
    phase_flipped[0] ^= 0x10  # the header is authenticated: a flipped phase cannot open
    for datagram in (bytes(wrong_tag), bytes(reserved), bytes(quic_like), sent[0][:26], bytes(phase_flipped)):
        device.receive_datagram(datagram, 0.1)
    dropped = device.stats.dropped
    assert (dropped["tag"], dropped["reserved_bits"], dropped["not_dataplane"], dropped["short"]) == (
        1,
        1,
        1,
        1,
    ), dropped
    assert dropped["key_phase"] + dropped["auth"] == 1, dropped
    device.receive_datagram(sent[0], 0.2)
    assert received_payloads(device) == [0]


def test_a_packet_for_the_other_receiver_fails_its_tag() -> None:
    keys = key_material()
    viewer, device = pair(keys)
    other = DataplaneConnection(
        device.config,
        KeyMaterial(keys.viewer_random, keys.device_random, keys.viewer_tag, os.urandom(4)),
        0.0,
    )
    viewer.send_datagram(1, b"x")
    (datagram,) = viewer.datagrams_to_send(0.0)
    other.receive_datagram(datagram, 0.1)
    assert other.stats.dropped["tag"] == 1, other.stats.dropped


def test_the_path_sees_no_plaintext_and_sessions_never_share_ciphertext() -> None:
    marker = b"PLAINTEXT-MARKER-" * 4
    captures = []
    for _ in range(2):
        viewer, _ = pair()  # fresh randoms per session
        stream = viewer.open_stream()
        viewer.send(stream, marker * 500)
        sent = viewer.datagrams_to_send(0.0)
        assert sent, "nothing was sent"
        assert not any(b"PLAINTEXT-MARKER" in datagram for datagram in sent), "plaintext on the wire"
        captures.append([datagram[OVERHEAD - 16 :] for datagram in sent])
    shared = set(captures[0]) & set(captures[1])
    assert not shared, f"{len(shared)} identical ciphertexts across two sessions with the same content"
    assert captures[0][0][:64] != captures[1][0][:64]


def test_frames_that_do_not_parse_after_an_open_close_with_a_protocol_error() -> None:
    keys = key_material()
    _, device = pair(keys)
    key = PacketKey(initial_secret(keys.viewer_random, keys.device_random), VIEWER_TO_DEVICE, 0)
    header = HEADER.pack(0x20, keys.device_tag, 0, 0)
    device.receive_datagram(header + key.seal(0, header, b"\x3f\x00\x00"), 0.1)
    assert device.stats.dropped["malformed"] == 1, device.stats.dropped
    closed = [e for e in device.events() if isinstance(e, DataplaneClosed)]
    assert closed and closed[0].code == PROTOCOL_ERROR and not closed[0].by_peer, closed
    assert len(device.datagrams_to_send(0.2)) == 1, "the CLOSE was not sent"
    assert device.closed


def test_stream_data_is_not_delivered_from_a_forged_packet() -> None:
    viewer, device = pair()
    stream = viewer.open_stream()
    viewer.send(stream, b"genuine", end_stream=True)
    (datagram,) = viewer.datagrams_to_send(0.0)
    forged = bytearray(datagram)
    forged[-20] ^= 0x04
    device.receive_datagram(bytes(forged), 0.1)
    assert device.events() == []
    device.receive_datagram(datagram, 0.1)
    data = [e for e in device.events() if isinstance(e, StreamData)]
    assert [(e.data, e.ended) for e in data] == [(b"genuine", True)], data


def sealed_from_viewer(keys: KeyMaterial, number: int, payload: bytes) -> bytes:
    """A packet as the viewer would seal it (the peer's own frames, written by hand)."""
    key = PacketKey(initial_secret(keys.viewer_random, keys.device_random), VIEWER_TO_DEVICE, 0)
    header = HEADER.pack(0x20, keys.device_tag, number >> 32, number & 0xFFFFFFFF)
    return header + key.seal(number, header, payload)


def closed_with(conn: DataplaneConnection) -> list[DataplaneClosed]:
    return [e for e in conn.events() if isinstance(e, DataplaneClosed)]


def test_a_stream_id_the_viewer_may_not_use_is_a_protocol_error() -> None:
    keys = key_material()
    _, device = pair(keys)
    device.receive_datagram(sealed_from_viewer(keys, 0, b"\x0b\x01\x00\x01x"), 0.1)  # stream 1: odd
    closed = closed_with(device)
    assert [c.code for c in closed] == [PROTOCOL_ERROR], closed
    assert "stream id 1" in closed[0].reason, closed[0].reason


def test_data_beyond_the_granted_window_is_a_flow_control_error() -> None:
    keys = key_material()
    _, device = pair(keys, stream_window=1000)
    frame = b"\x0a\x00" + encode_varint(990) + b"\x14" + b"y" * 20  # ends at 1010 > 1000
    device.receive_datagram(sealed_from_viewer(keys, 0, frame), 0.1)
    closed = closed_with(device)
    assert [c.code for c in closed] == [FLOW_CONTROL_ERROR], closed


def test_the_device_naming_a_stream_the_viewer_never_opened_is_a_protocol_error() -> None:
    keys = key_material()
    viewer, _ = pair(keys)
    viewer.open_stream()  # stream 0 only
    key = PacketKey(initial_secret(keys.viewer_random, keys.device_random), DEVICE_TO_VIEWER, 0)
    header = HEADER.pack(0x20, keys.viewer_tag, 0, 0)
    viewer.receive_datagram(header + key.seal(0, header, b"\x09\x08\x00hi"), 0.1)
    closed = closed_with(viewer)
    assert [c.code for c in closed] == [PROTOCOL_ERROR], closed


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=120), st.booleans())
def test_garbage_datagrams_never_raise(body: bytes, with_tag: bool) -> None:
    keys = KeyMaterial(bytes(32), bytes(range(32)), b"vvvv", b"dddd")
    device = DataplaneConnection(DataplaneConfig("device"), keys, 0.0)
    datagram = (b"\x20dddd" + body) if with_tag else body
    device.receive_datagram(datagram, 0.1)
    assert sum(device.stats.dropped.values()) == 1, device.stats.dropped


def test_an_ack_for_a_packet_never_sent_is_a_protocol_error() -> None:
    keys = key_material()
    _, device = pair(keys)
    ack = b"\x02" + encode_varint(1 << 40) + b"\x00\x00" + encode_varint(1 << 40)  # acks 0 .. 2**40
    device.receive_datagram(sealed_from_viewer(keys, 0, ack), 0.1)
    closed = closed_with(device)
    assert [c.code for c in closed] == [PROTOCOL_ERROR], closed
    assert "never sent" in closed[0].reason


def test_a_stream_id_far_ahead_is_a_protocol_error() -> None:
    keys = key_material()
    _, device = pair(keys)
    frame = b"\x09" + encode_varint(4 * 10**9) + b"\x00x"
    device.receive_datagram(sealed_from_viewer(keys, 0, frame), 0.1)
    closed = closed_with(device)
    assert [c.code for c in closed] == [PROTOCOL_ERROR], closed


def test_packet_numbers_are_never_reused_the_connection_closes_at_the_last_one() -> None:
    """A nonce is the IV xor the packet number, so a number used twice under one key would
    break ChaCha20-Poly1305. At the top of the 48-bit space the connection sends the last number
    and closes (INTERNAL_ERROR, 'packet numbers exhausted'); no number beyond it is ever sealed.
    (White-box: the counter is set near the end; 2^48 packets do not fit in a test.)"""
    viewer, device = pair()
    viewer._next_pn = MAX_PACKET_NUMBER - 3
    device._window.mark(MAX_PACKET_NUMBER - 4)  # the receiver has seen the packets before
    stream = viewer.open_stream()
    viewer.send(stream, os.urandom(20_000))
    sent = viewer.datagrams_to_send(0.0) + viewer.datagrams_to_send(0.1)
    numbers = [(high << 32) | low for _, _, high, low in (HEADER.unpack_from(d) for d in sent)]
    assert numbers == list(range(MAX_PACKET_NUMBER - 3, MAX_PACKET_NUMBER + 1)), numbers
    closed = [e for e in viewer.events() if isinstance(e, DataplaneClosed)]
    assert closed and closed[0].reason == "packet numbers exhausted", closed
    assert viewer.closed and viewer.datagrams_to_send(0.2) == []
    for datagram in sent:
        device.receive_datagram(datagram, 0.0)
    assert device.stats.dropped["auth"] == 0 and device.stats.packets_received == len(sent)
