"""LAN discovery cores (``protocol.lan_discovery``): a viewer and a device core on a fake LAN with
made-up time, and the attacks a LAN stranger can try."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.protocol import lan_discovery as lan
from dvrlink.protocol.identity import ed25519_public_bytes

VIEWER_ADDR = ("192.168.1.3", 40000)
DEVICE_ADDR = ("192.168.1.2", lan.DEFAULT_PORT)


class Counter:
    """Deterministic 'random' bytes: each call a new value."""

    def __init__(self) -> None:
        self._n = itertools.count(1)

    def __call__(self, size: int) -> bytes:
        return next(self._n).to_bytes(size, "big")


@pytest.fixture
def keys() -> tuple[Ed25519PrivateKey, Ed25519PrivateKey]:
    return Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


def make_pair(
    device_key: Ed25519PrivateKey, viewer_key: Ed25519PrivateKey, now: float = 100.0
) -> tuple[lan.LanResponder, lan.LanSeeker]:
    paired = {ed25519_public_bytes(viewer_key)}
    responder = lan.LanResponder(device_key, paired.__contains__, Counter())
    seeker = lan.LanSeeker(ed25519_public_bytes(device_key), viewer_key, b"v" * 16, now)
    return responder, seeker


def deliver_to_device(
    seeker: lan.LanSeeker, responder: lan.LanResponder, now: float
) -> list[tuple[bytes, tuple[str, int] | None]]:
    out = seeker.datagrams_to_send()
    for data, _ in out:
        responder.receive_datagram(data, VIEWER_ADDR, now)
    return out


def deliver_to_viewer(responder: lan.LanResponder, seeker: lan.LanSeeker, now: float) -> list[bytes]:
    sent = []
    for data, dest in responder.datagrams_to_send():
        assert dest == VIEWER_ADDR
        seeker.receive_datagram(data, DEVICE_ADDR, now)
        sent.append(data)
    return sent


def test_query_announce_offer_answer(keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey]) -> None:
    device_key, viewer_key = keys
    responder, seeker = make_pair(device_key, viewer_key)
    queries = deliver_to_device(seeker, responder, 100.0)
    assert [len(q) for q, _ in queries] == [lan.QUERY_SIZE]
    assert queries[0][1] is None  # broadcast
    announces = deliver_to_viewer(responder, seeker, 100.01)
    assert len(announces) == 1 and len(announces[0]) < lan.QUERY_SIZE  # no amplification
    assert seeker.next_event() == lan.DeviceFound(DEVICE_ADDR)
    seeker.offer(b"offer body", 100.02)
    offers = deliver_to_device(seeker, responder, 100.02)
    assert offers[0][1] == DEVICE_ADDR
    event = responder.next_event()
    assert isinstance(event, lan.OfferReceived)
    assert event.body == b"offer body" and event.viewer_key == ed25519_public_bytes(viewer_key)
    assert event.source == VIEWER_ADDR
    responder.answer(event.device_nonce, b"answer body")
    deliver_to_viewer(responder, seeker, 100.5)
    assert seeker.next_event() == lan.AnswerReceived(b"answer body")
    assert seeker.state is lan.SeekState.ANSWERED
    assert seeker.get_timer() is None


def test_queries_and_offers_are_retransmitted_until_the_deadline(
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey],
) -> None:
    device_key, viewer_key = keys
    timing = lan.LanTiming()
    seeker = lan.LanSeeker(ed25519_public_bytes(device_key), viewer_key, b"v" * 16, 0.0, timing)
    sent = len(seeker.datagrams_to_send())
    while (timer := seeker.get_timer()) is not None:
        seeker.handle_timer(timer)
        sent += len(seeker.datagrams_to_send())
    assert sent == int(timing.discovery_timeout_s / timing.query_interval_s)
    event = seeker.next_event()
    assert isinstance(event, lan.LanGaveUp) and "no answer on the LAN within 1.5 s" in event.reason


def test_a_retransmitted_offer_gets_the_same_answer_and_opens_one_session(
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey],
) -> None:
    device_key, viewer_key = keys
    responder, seeker = make_pair(device_key, viewer_key)
    deliver_to_device(seeker, responder, 100.0)
    deliver_to_viewer(responder, seeker, 100.0)
    seeker.next_event()
    seeker.offer(b"offer", 100.0)
    offer = seeker.datagrams_to_send()[0][0]
    responder.receive_datagram(offer, VIEWER_ADDR, 100.0)
    event = responder.next_event()
    assert isinstance(event, lan.OfferReceived)
    responder.receive_datagram(offer, VIEWER_ADDR, 100.1)  # before the answer: nothing
    assert responder.next_event() is None and responder.datagrams_to_send() == []
    responder.answer(event.device_nonce, b"answer")
    first = responder.datagrams_to_send()
    responder.receive_datagram(offer, VIEWER_ADDR, 100.2)
    assert responder.datagrams_to_send() == first
    assert responder.next_event() is None


def test_a_stranger_who_knows_only_the_serial_gets_no_reply(
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey],
) -> None:
    device_key, viewer_key = keys
    responder, _ = make_pair(device_key, viewer_key)
    other = Ed25519PrivateKey.generate()
    stranger = lan.LanSeeker(ed25519_public_bytes(other), viewer_key, b"s" * 16, 0.0)
    for data, _ in stranger.datagrams_to_send():
        responder.receive_datagram(data, VIEWER_ADDR, 0.0)
    short = lan.Query(b"v" * 16, lan.query_tag(ed25519_public_bytes(device_key), b"v" * 16)).encode()[:100]
    responder.receive_datagram(short, VIEWER_ADDR, 0.0)  # under the padding rule
    responder.receive_datagram(b"\x00" * 300, VIEWER_ADDR, 0.0)
    assert responder.datagrams_to_send() == []
    assert responder.stats.not_for_us == 1 and responder.stats.malformed == 2


def test_an_impostor_device_is_not_believed(keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey]) -> None:
    device_key, viewer_key = keys
    impostor = lan.LanResponder(Ed25519PrivateKey.generate(), lambda _: True, Counter())
    seeker = lan.LanSeeker(ed25519_public_bytes(device_key), viewer_key, b"v" * 16, 0.0)
    query = seeker.datagrams_to_send()[0][0]
    # The impostor cannot make the tag check pass for the real key, so it forges an announce.
    forged = lan.Announce(b"v" * 16, b"d" * 16, impostor._key.sign(b"x")).encode()
    seeker.receive_datagram(forged, DEVICE_ADDR, 0.1)
    assert seeker.next_event() is None and seeker.stats.bad_signature == 1
    # An announce replayed from an earlier query (another viewer nonce) is refused too.
    responder, other_seeker = make_pair(device_key, viewer_key)
    responder.receive_datagram(query.replace(b"v" * 16, b"w" * 16, 1), VIEWER_ADDR, 0.1)
    assert responder.datagrams_to_send() == []  # the tag binds the nonce: no reply at all
    del other_seeker


def test_offers_need_a_fresh_nonce_a_valid_signature_and_a_paired_viewer(
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey],
) -> None:
    device_key, viewer_key = keys
    responder, seeker = make_pair(device_key, viewer_key)
    deliver_to_device(seeker, responder, 100.0)
    deliver_to_viewer(responder, seeker, 100.0)
    seeker.next_event()
    nonce = seeker._device_nonce
    device_public = ed25519_public_bytes(device_key)
    stranger = Ed25519PrivateKey.generate()
    stranger_public = ed25519_public_bytes(stranger)
    unpaired = lan.Offer(
        nonce,
        stranger_public,
        b"x",
        stranger.sign(lan.Offer.signed_part(device_public, nonce, stranger_public, b"x")),
    ).encode()
    responder.receive_datagram(unpaired, VIEWER_ADDR, 100.1)
    assert responder.stats.not_paired == 1
    viewer_public = ed25519_public_bytes(viewer_key)
    forged = lan.Offer(nonce, viewer_public, b"x", stranger.sign(b"x")).encode()
    responder.receive_datagram(forged, VIEWER_ADDR, 100.1)
    assert responder.stats.bad_signature == 1
    seeker.offer(b"late", 111.0)
    offer = seeker.datagrams_to_send()[0][0]
    responder.receive_datagram(offer, VIEWER_ADDR, 111.0)  # the nonce lived 10 s
    assert responder.stats.unknown_nonce == 1
    assert responder.next_event() is None and responder.datagrams_to_send() == []


def test_a_forged_answer_is_ignored(keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey]) -> None:
    device_key, viewer_key = keys
    responder, seeker = make_pair(device_key, viewer_key)
    deliver_to_device(seeker, responder, 100.0)
    deliver_to_viewer(responder, seeker, 100.0)
    seeker.next_event()
    seeker.offer(b"offer", 100.0)
    forged = lan.Answer(seeker._device_nonce, b"evil", Ed25519PrivateKey.generate().sign(b"evil")).encode()
    seeker.receive_datagram(forged, ("192.168.1.66", 1), 100.1)
    assert seeker.next_event() is None and seeker.stats.bad_signature == 1
    assert seeker.state is lan.SeekState.OFFERED


def test_pending_nonces_are_bounded_and_expire(keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey]) -> None:
    device_key, _ = keys
    timing = lan.LanTiming(max_pending=4)
    responder = lan.LanResponder(device_key, lambda _: True, Counter(), timing)
    public = ed25519_public_bytes(device_key)
    for index in range(10):
        nonce = index.to_bytes(16, "big")
        responder.receive_datagram(lan.Query(nonce, lan.query_tag(public, nonce)).encode(), VIEWER_ADDR, 0.0)
    assert len(responder._challenges) == 4
    assert responder.get_timer() == timing.nonce_lifetime_s
    responder.handle_timer(timing.nonce_lifetime_s)
    assert responder.get_timer() is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"DLAN",
        b"DLAN\x02\x03" + b"\x00" * 20,
        b"DLAN\x01\x03" + b"\x00" * 48 + b"\xff\xff" + b"\x00" * 64,
        b"DLAN\x01\x04" + b"\x00" * 16 + b"\x00\x05" + b"\x00" * 64,
        b"DLAN\x01\x09" + b"\x00" * 200,
    ],
)
def test_malformed_datagrams_are_dropped_and_counted(
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey], data: bytes
) -> None:
    responder, seeker = make_pair(*keys)
    responder.receive_datagram(data, VIEWER_ADDR, 100.0)
    seeker.receive_datagram(data, DEVICE_ADDR, 100.0)
    assert responder.stats.malformed == 1 and seeker.stats.malformed == 1
    with pytest.raises(ValueError, match=r"."):
        lan.decode(data)


def test_offering_before_the_device_is_found_is_a_local_error(
    keys: tuple[Ed25519PrivateKey, Ed25519PrivateKey],
) -> None:
    _, seeker = make_pair(*keys)
    with pytest.raises(ValueError, match="cannot offer while discovering"):
        seeker.offer(b"x", 100.0)
