"""Sans-I/O tests of the presence cores: made-up time, a fake link, loss, reordering, replay."""

from __future__ import annotations

import pytest
from support.presence import Lab

from dvrlink.protocol.presence_client import ClientState
from dvrlink.protocol.presence_events import (
    ConnectionLost,
    DeviceMoved,
    DeviceOffline,
    DeviceOnline,
    InviteAnswered,
    InviteExpired,
    InviteReceived,
    KeepaliveAcknowledged,
    ReflexiveAddressChanged,
    Registered,
    RegistrationRefused,
    RegistrationRequested,
)
from dvrlink.protocol.presence_server import NotOnlineError
from dvrlink.protocol.presence_wire import (
    HEADER_STRUCT,
    SEALED_HEADER,
    MessageType,
    decode_address,
    encode_address,
    is_presence,
)

IPV4_UDP_HEADERS = 28


def of_type(events: list[object], kind: type) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def test_registers_and_keeps_alive() -> None:
    lab = Lab(interval=20.0)
    dev = lab.add_device("DL-0001-0001")
    lab.start_all()
    assert dev.client.state is ClientState.ONLINE
    registered = of_type(dev.events, Registered)
    assert len(registered) == 1
    assert registered[0].reflexive_address == dev.address
    assert lab.server.presence("DL-0001-0001").online
    lab.advance(20.0 * 5 + 1)
    acks = of_type(dev.events, KeepaliveAcknowledged)
    assert len(acks) == 5
    assert lab.server.stats["keepalives"] == 5
    assert dev.client.last_keepalive_at == pytest.approx(100.0)


def test_keepalive_round_trip_costs_at_most_120_bytes_on_the_wire() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    lab.start_all()
    lab.wire.clear()
    lab.advance(lab.interval + 0.5)
    sizes = [len(b) + IPV4_UDP_HEADERS for _, b, _ in lab.wire]
    assert len(sizes) == 2, lab.wire
    assert sum(sizes) <= 120, sizes
    assert dev.client.state is ClientState.ONLINE


def test_lost_hello_is_retransmitted_then_registration_succeeds() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    dropped = []

    def drop_first_hello(direction: str, data: bytes, device: object) -> bool:
        if data[0] == MessageType.HELLO and not dropped:
            dropped.append(data)
            return False
        return True

    lab.filter = drop_first_hello
    lab.start_all()
    assert dev.client.state is ClientState.COOKIE_WAIT
    lab.advance(2.5)
    assert dev.client.state is ClientState.ONLINE
    assert dropped


def test_total_loss_backs_off_and_recovers_when_the_path_heals() -> None:
    lab = Lab(interval=20.0)
    dev = lab.add_device("DL-0001-0001")
    lab.filter = lambda d, b, dev: False
    lab.start_all()
    lab.advance(30.0)
    assert dev.client.state in (ClientState.BACKOFF, ClientState.COOKIE_WAIT)
    hellos = [b for d, b, _ in lab.wire if b[0] == MessageType.HELLO]
    assert len(hellos) >= 4
    lab.filter = lambda d, b, dev: True
    lab.advance(30.0 + lab.interval + 7)  # backoff is capped at one interval
    assert dev.client.state is ClientState.ONLINE


def test_duplicated_and_reordered_handshake_datagrams_register_once() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    # duplicate every datagram in both directions
    original_receive = lab.server.receive_datagram

    def twice(data: bytes, address: tuple[str, int], now: float) -> None:
        original_receive(data, address, now)
        original_receive(data, address, now)

    lab.server.receive_datagram = twice  # type: ignore[method-assign]
    lab.start_all()
    assert dev.client.state is ClientState.ONLINE
    assert len(of_type(lab.server_events, RegistrationRequested)) == 1
    assert len(of_type(dev.events, Registered)) == 1


def test_late_keepalive_ack_after_retransmission_is_harmless() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    lab.start_all()
    held: list[bytes] = []

    def hold_first_ack(direction: str, data: bytes, device: object) -> bool:
        if direction == "down" and data[0] == MessageType.KEEPALIVE_ACK and not held:
            held.append(data)
            return False
        return True

    lab.filter = hold_first_ack
    lab.advance(lab.interval + 2.5)  # first keepalive lost on the way back, retry acknowledged
    assert len(of_type(dev.events, KeepaliveAcknowledged)) == 1
    dev.client.receive_datagram(held[0], lab.now)  # arrives late, out of order
    assert dev.client.state is ClientState.ONLINE
    assert len(of_type(dev.events, KeepaliveAcknowledged)) == 1


def test_replayed_keepalive_and_ack_are_dropped() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    lab.start_all()
    lab.wire.clear()
    lab.advance(lab.interval + 0.5)
    up = next(b for d, b, _ in lab.wire if d == "up")
    down = next(b for d, b, _ in lab.wire if d == "down")
    before = lab.server.stats["keepalives"]
    dropped = lab.server.stats["dropped"]
    lab.server.receive_datagram(up, dev.address, lab.now)
    assert lab.server.stats["keepalives"] == before
    assert lab.server.stats["dropped"] == dropped + 1
    assert lab.server.datagrams_to_send() == []
    client_dropped = dev.client.stats["dropped"]
    dev.client.receive_datagram(down, lab.now)
    assert dev.client.stats["dropped"] == client_dropped + 1


def test_expired_cookie_is_refused_and_the_device_starts_over() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    holding = True

    def hold_register(direction: str, data: bytes, device: object) -> bool:
        if data[0] == MessageType.REGISTER and holding:
            lab.held.append((direction, data, dev))
            return False
        return True

    lab.filter = hold_register
    lab.start_all()
    assert dev.client.state is ClientState.REGISTER_WAIT
    lab.now = 200.0  # past the 120 s cookie lifetime
    lab.server.receive_datagram(lab.held[0][1], dev.address, lab.now)
    assert lab.server.next_event() is None
    assert lab.server.datagrams_to_send() == []
    holding = False
    lab.advance(260.0)
    assert dev.client.state is ClientState.ONLINE
    assert len(of_type(dev.events, Registered)) == 1


def test_cookie_from_another_address_is_refused() -> None:
    lab = Lab()
    lab.add_device("DL-0001-0001")

    def move_register(direction: str, data: bytes, device: object) -> bool:
        if data[0] == MessageType.REGISTER:
            lab.server.receive_datagram(data, ("192.0.2.66", 1234), lab.now)
            return False
        return True

    lab.filter = move_register
    lab.start_all()
    assert not of_type(lab.server_events, RegistrationRequested)


def test_broker_restart_is_noticed_at_the_next_keepalive() -> None:
    lab = Lab(interval=20.0)
    devs = [lab.add_device(f"DL-0001-{i:04d}", seed=i) for i in range(5)]
    lab.start_all()
    lab.advance(5.0)
    lab.restart_broker()
    lab.advance(5.0 + 2 * lab.interval)
    for dev in devs:
        assert dev.client.state is ClientState.ONLINE
        assert len(of_type(dev.events, Registered)) == 2
        assert any("restarted" in e.reason for e in of_type(dev.events, ConnectionLost))
    assert lab.server.online_count == 5


def test_broker_down_for_a_while_devices_back_within_two_intervals() -> None:
    lab = Lab(interval=20.0)
    devs = [lab.add_device(f"DL-0002-{i:04d}", seed=i) for i in range(5)]
    lab.start_all()
    lab.broker_up = False
    lab.advance(200.0)
    assert all(d.client.state is not ClientState.ONLINE for d in devs)
    lab.restart_broker()
    lab.broker_up = True
    back_at = lab.now
    lab.advance(back_at + 2 * lab.interval)
    assert all(d.client.state is ClientState.ONLINE for d in devs)


def test_broker_marks_a_silent_device_offline() -> None:
    lab = Lab(interval=20.0)
    dev = lab.add_device("DL-0001-0001")
    lab.start_all()
    lab.filter = lambda d, b, device: d == "down"
    lab.advance(20.0 * 2.5 + 2)
    offline = of_type(lab.server_events, DeviceOffline)
    assert [e.serial for e in offline] == ["DL-0001-0001"]
    assert not lab.server.presence("DL-0001-0001").online
    assert dev.client.state is not ClientState.ONLINE


def test_goodbye_marks_offline_at_once() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    lab.start_all()
    dev.client.stop(lab.now)
    lab.pump()
    assert not lab.server.presence("DL-0001-0001").online


def test_address_change_is_followed_and_the_device_re_registers() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    lab.start_all()
    dev.address = ("203.0.113.99", 50001)  # the NAT rebinds
    lab.advance(lab.interval + 0.5)
    assert of_type(lab.server_events, DeviceMoved)
    changed = of_type(dev.events, ReflexiveAddressChanged)
    assert changed and changed[0].new == dev.address
    assert dev.client.state is ClientState.ONLINE
    assert len(of_type(dev.events, Registered)) == 2
    assert lab.server.presence("DL-0001-0001").address == dev.address


def test_second_key_for_a_bound_serial_is_refused_and_the_original_stays() -> None:
    lab = Lab()
    good = lab.add_device("DL-0001-0001", seed=1)
    lab.start_all()
    thief = lab.add_device("DL-0001-0001", seed=2, address=("192.0.2.7", 5555))
    thief.client.start(lab.now)
    lab.pump()
    refused = of_type(thief.events, RegistrationRefused)
    assert refused and "another key" in refused[0].message
    assert thief.client.state is ClientState.BACKOFF
    lab.advance(3 * lab.interval)
    assert good.client.state is ClientState.ONLINE
    assert lab.server.presence("DL-0001-0001").address == good.address


def test_forged_registered_from_a_broker_without_the_pinned_key_is_ignored() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from dvrlink.protocol.presence_server import PresenceServer, ServerConfig

    impostor = PresenceServer(ServerConfig(), X25519PrivateKey.generate())
    dev.client.start(0.0)
    for datagram in dev.client.datagrams_to_send():
        impostor.receive_datagram(datagram, dev.address, 0.0)
    for datagram, _ in impostor.datagrams_to_send():
        dev.client.receive_datagram(datagram, 0.0)
    for datagram in dev.client.datagrams_to_send():
        impostor.receive_datagram(datagram, dev.address, 0.0)
    request = impostor.next_event()
    assert isinstance(request, RegistrationRequested)
    impostor.accept(request.handle, 0.0)
    assert isinstance(impostor.next_event(), DeviceOnline)
    for datagram, _ in impostor.datagrams_to_send():
        dev.client.receive_datagram(datagram, 0.0)
    assert dev.client.state is ClientState.REGISTER_WAIT
    assert dev.client.stats["dropped"] == 1


def test_invite_is_answered_once_even_when_the_reply_is_lost() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    lab.start_all()
    lost = []

    def lose_first_reply(direction: str, data: bytes, device: object) -> bool:
        if direction == "up" and data[0] == MessageType.INVITE_REPLY and not lost:
            lost.append(data)
            return False
        return True

    lab.filter = lose_first_reply
    invite_id = lab.server.send_invite("DL-0001-0001", 1, b"hello", lab.now)
    lab.pump()
    received = of_type(dev.events, InviteReceived)
    assert [(e.invite_id, e.body) for e in received] == [(invite_id, b"hello")]
    dev.client.reply_invite(invite_id, 0, b"answer", lab.now)
    lab.pump()
    assert not of_type(lab.server_events, InviteAnswered)
    lab.advance(lab.now + 1.5)  # the broker retransmits; the device repeats its cached reply
    answered = of_type(lab.server_events, InviteAnswered)
    assert [(e.invite_id, e.body) for e in answered] == [(invite_id, b"answer")]
    assert len(of_type(dev.events, InviteReceived)) == 1


def test_unanswered_invite_expires() -> None:
    lab = Lab()
    lab.add_device("DL-0001-0001")
    lab.start_all()
    invite_id = lab.server.send_invite("DL-0001-0001", 1, b"x", lab.now, ttl=10.0)
    lab.advance(lab.now + 11.0)
    assert [e.invite_id for e in of_type(lab.server_events, InviteExpired)] == [invite_id]


def test_invite_to_an_offline_device_raises() -> None:
    lab = Lab()
    with pytest.raises(NotOnlineError):
        lab.server.send_invite("DL-9999-9999", 1, b"x", 0.0)


def test_header_struct_matches_construct_layout() -> None:
    built = SEALED_HEADER.build({"type": 9, "version": 1, "session_id": 0xDEADBEEF, "counter": 77})
    assert built == HEADER_STRUCT.pack(9, 1, 0xDEADBEEF, 77)


def test_message_types_stay_out_of_stun_and_quic_ranges() -> None:
    for mtype in MessageType:
        assert is_presence(mtype)
        assert not 0 <= mtype <= 3
        assert not 64 <= mtype <= 191


@pytest.mark.parametrize("address", [("192.0.2.1", 1), ("2001:db8::1", 65535), ("10.1.2.3", 0)])
def test_address_round_trip(address: tuple[str, int]) -> None:
    assert decode_address(encode_address(address)) == address


def test_protocol_doc_shows_the_state_machine_of_the_code() -> None:
    from pathlib import Path

    from dvrlink.protocol.presence_client import state_diagram

    doc = Path(__file__).parent.parent.joinpath("docs", "protocol.md").read_text()
    assert state_diagram() in doc, "regenerate the diagram in docs/protocol.md"
