"""Resumption tickets (protocol/presence_ticket.py), sans-I/O: a device the fleet knows registers
again after a broker restart or on another node without a signature or X25519, and a ticket can
be neither replayed, forged, carried to another serial, nor used past its lifetime."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_mock import MockerFixture
from support.presence import Device, Lab, of_type

import dvrlink.protocol.presence_server as server_module
from dvrlink.protocol import presence_ticket
from dvrlink.protocol.presence_client import ClientState
from dvrlink.protocol.presence_events import DeviceOnline, Registered, RegistrationRefused
from dvrlink.protocol.presence_ticket import (
    Ticket,
    open_ticket,
    seal_ticket,
    ticket_key,
)
from dvrlink.protocol.presence_wire import (
    COOKIE,
    HELLO,
    REGISTER,
    REGISTER_BODY,
    REGISTER_RESUME,
    MessageType,
    RefuseReason,
    cookie_datagram,
    hello_nonce,
    is_resumed_register,
    packed_ip,
    parse_register,
)

SERIAL = "DL-0016-0001"
WALL = 1_800_000_000.0
INTERVAL = 20.0


def online_lab(**lab_args: float) -> tuple[Lab, Device]:
    lab = Lab(interval=INTERVAL)
    lab.wall = WALL
    for name, value in lab_args.items():
        setattr(lab, name, value)
    device = lab.add_device(SERIAL)
    lab.start_all()
    assert device.client.state is ClientState.ONLINE
    registered = of_type(device.events, Registered)
    assert [r.resumed for r in registered] == [False], "the first registration is a full one"
    return lab, device


def registers(lab: Lab) -> list[bytes]:
    return [d for way, d, _ in lab.wire if way == "up" and d[0] == MessageType.REGISTER]


def until_online_again(lab: Lab, device: Device, before: int) -> Registered:
    lab.advance(lab.now + 3 * INTERVAL)
    registered = of_type(device.events, Registered)
    assert len(registered) > before, f"the device did not register again: {device.events[-5:]}"
    assert device.client.state is ClientState.ONLINE
    last = registered[-1]
    assert isinstance(last, Registered)
    return last


def test_after_a_broker_restart_the_device_resumes_without_asymmetric_crypto(mocker: MockerFixture) -> None:
    lab, device = online_lab()
    verify = mocker.spy(server_module, "ed25519_verify")
    x25519 = mocker.spy(server_module, "x25519")
    lab.restart_broker()
    again = until_online_again(lab, device, 1)
    assert again.resumed, f"the device registered in full: {device.events[-4:]}"
    assert lab.server.stats["resumed"] == 1 and lab.server.stats["bad_tickets"] == 0
    assert verify.call_count == 0 and x25519.call_count == 0, "a resumed registration verified a signature"
    assert is_resumed_register(registers(lab)[-1])
    assert device.client.stats["resumed"] == 1
    # the resumed session carries keepalives and hands out a fresh ticket, resumed again next time
    lab.restart_broker()
    third = until_online_again(lab, device, 2)
    assert third.resumed and lab.server.stats["resumed"] == 1  # a new core: its own count


def test_another_node_of_the_fleet_takes_the_ticket_a_node_outside_it_does_not() -> None:
    lab, device = online_lab()
    lab.restart_broker()  # another node with the fleet key: the same as a restart to the device
    assert until_online_again(lab, device, 1).resumed
    stranger = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    lab.restart_broker(static=stranger)
    lab.advance(lab.now + 2 * INTERVAL)
    assert lab.server.stats["bad_tickets"] >= 1, "a node outside the fleet opened the fleet's ticket"
    assert lab.server.stats["resumed"] == 0
    assert device.client.state is not ClientState.ONLINE
    # unanswered, the device drops the ticket: its next REGISTER is a signed one (which this node's
    # REGISTERED then fails to open: the device pins the fleet key)
    lab.advance(lab.now + 3 * INTERVAL)
    assert not is_resumed_register(registers(lab)[-1])


def test_a_resumed_register_cannot_be_replayed() -> None:
    lab, device = online_lab()
    lab.restart_broker()
    assert until_online_again(lab, device, 1).resumed
    resumed = registers(lab)[-1]
    online = len(of_type(lab.server_events, DeviceOnline))
    replayed = lab.server.stats["replayed"]
    lab.server.receive_datagram(resumed, device.address, lab.now)
    lab.pump()
    assert lab.server.stats["replayed"] >= replayed, lab.server.stats
    assert len(of_type(lab.server_events, DeviceOnline)) == online, "the replay opened a session"
    dropped = lab.server.stats["dropped"]
    lab.server.receive_datagram(resumed, ("198.51.100.9", 5000), lab.now)  # from elsewhere: cookie fails
    assert lab.server.stats["dropped"] == dropped + 1
    assert device.client.state is ClientState.ONLINE


@pytest.mark.parametrize("where", ["mac", "ticket"])
def test_a_forged_resume_is_dropped(where: str) -> None:
    lab, device = online_lab()
    lab.restart_broker()

    def corrupt(direction: str, datagram: bytes, dev: Device) -> bool:
        if direction == "up" and datagram[0] == MessageType.REGISTER and is_resumed_register(datagram):
            index = len(datagram) - 1 if where == "mac" else len(datagram) - 40
            forged = bytearray(datagram)
            forged[index] ^= 0x01
            lab.server.receive_datagram(bytes(forged), dev.address, lab.now)
            return False
        return True

    lab.filter = corrupt
    lab.advance(lab.now + 2 * INTERVAL)
    assert lab.server.stats["bad_tickets"] >= 1 and lab.server.stats["resumed"] == 0
    lab.filter = lambda d, b, dev: True
    # the device drops the ticket nobody answered and registers in full
    again = until_online_again(lab, device, 1)
    assert not again.resumed


def test_a_ticket_does_not_carry_to_another_serial() -> None:
    key = ticket_key(X25519PrivateKey.from_private_bytes(bytes(range(32))))
    sealed = seal_ticket(key, Ticket(SERIAL, bytes(32), bytes(range(32)), int(WALL)), bytes(12))
    opened = open_ticket(key, sealed)
    assert opened == Ticket(SERIAL, bytes(32), bytes(range(32)), int(WALL))
    assert open_ticket(ticket_key(X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))), sealed) is None
    assert open_ticket(key, sealed[:-1]) is None and open_ticket(key, b"") is None
    # in the protocol: device B presents device A's ticket (and knows its secret): refused
    lab, device = online_lab()
    ticket = device.client._ticket  # the test plays a device that stole it
    assert ticket is not None
    other = lab.add_device("DL-0016-0002", seed=9)
    other.client._ticket = ticket
    lab.restart_broker()
    other.client.start(lab.now)
    lab.pump()
    assert lab.server.stats["bad_tickets"] == 1 and lab.server.stats["resumed"] <= 1


def test_an_expired_ticket_is_refused_and_the_device_registers_in_full_at_once() -> None:
    lab, device = online_lab(ticket_lifetime=100.0)
    lab.advance(lab.now + 6 * INTERVAL)  # the ticket is 120 s old
    lab.restart_broker()
    before = len(of_type(device.events, Registered))
    lab.advance(lab.now + 3 * INTERVAL)
    refused = of_type(device.events, RegistrationRefused)
    assert [r.reason for r in refused] == [RefuseReason.TICKET_EXPIRED], device.events[-6:]
    registered = of_type(device.events, Registered)[before:]
    assert [r.resumed for r in registered] == [False], "after TICKET_EXPIRED the device goes in full"
    assert device.client.state is ClientState.ONLINE
    assert registered[0].keepalive_interval == INTERVAL


def test_a_lost_registered_is_answered_again_with_the_same_ticket() -> None:
    lab, device = online_lab()
    lab.restart_broker()
    dropped: list[bytes] = []

    def lose_first_registered(direction: str, datagram: bytes, dev: Device) -> bool:
        if direction == "down" and datagram[0] == MessageType.REGISTERED and not dropped:
            dropped.append(datagram)
            return False
        return True

    lab.filter = lose_first_registered
    again = until_online_again(lab, device, 1)
    assert dropped and again.resumed
    answers = [d for way, d, _ in lab.wire if way == "down" and d[0] == MessageType.REGISTERED]
    assert answers[-1] == dropped[0], "the repeated REGISTER got another answer (another ticket)"
    lab.restart_broker()
    assert until_online_again(lab, device, 2).resumed


def test_no_wall_time_no_ticket() -> None:
    lab = Lab(interval=INTERVAL)  # wall None: the application gives no time, the broker no ticket
    device = lab.add_device(SERIAL)
    lab.start_all()
    lab.restart_broker()
    assert not until_online_again(lab, device, 1).resumed
    assert device.client._ticket is None


@settings(max_examples=200, deadline=None)
@given(
    cookie=st.binary(min_size=20, max_size=20),
    nonce=st.binary(min_size=16, max_size=16),
    keys=st.binary(min_size=64, max_size=64),
    keepalive_ms=st.integers(0, 2**32 - 1),
    serial=st.from_regex(r"[A-Z0-9][A-Z0-9-]{2,31}", fullmatch=True),
    tail=st.one_of(st.binary(min_size=64, max_size=64), st.binary(min_size=65, max_size=300)),
    mac=st.binary(min_size=32, max_size=32),
)
def test_the_hand_parsers_read_what_the_construct_declarations_build(
    cookie: bytes, nonce: bytes, keys: bytes, keepalive_ms: int, serial: str, tail: bytes, mac: bytes
) -> None:
    """The registration path parses REGISTER and HELLO and builds COOKIE by hand (a registration
    storm is where the broker's time goes); the ``construct`` declarations stay the spec."""
    fields = {
        "version": 1,
        "cookie": cookie,
        "nonce": nonce,
        "device_key": keys[:32],
        "ephemeral_key": keys[32:],
        "keepalive_ms": keepalive_ms,
        "serial": serial,
    }
    body = REGISTER_BODY.build(fields)
    if len(tail) == 64:
        datagram = body + tail
        spec = REGISTER.parse(datagram)
        parsed = parse_register(datagram)
        assert not parsed.resumed and parsed.signature == spec.signature and parsed.body == spec.body.data
    else:
        datagram = REGISTER_RESUME.build({"body": {"value": fields}, "ticket": {"value": tail}, "mac": mac})
        spec = REGISTER_RESUME.parse(datagram)
        parsed = parse_register(datagram)
        assert parsed.resumed and parsed.ticket == spec.ticket.value and parsed.mac == spec.mac
        assert parsed.signed_part == spec.body.data + spec.ticket.data
    assert (parsed.cookie, parsed.nonce, parsed.device_key, parsed.ephemeral_key) == (
        cookie,
        nonce,
        keys[:32],
        keys[32:],
    )
    assert (parsed.keepalive_ms, parsed.serial, parsed.version) == (keepalive_ms, serial, 1)
    with pytest.raises(ValueError):
        parse_register(datagram[:-1])
    with pytest.raises(ValueError):
        parse_register(datagram + b"\x00")
    hello = HELLO.build({"version": 1, "nonce": nonce, "padding": bytes(30)})
    assert hello_nonce(hello) == HELLO.parse(hello).nonce == nonce
    assert hello_nonce(hello[:-1]) is None
    assert cookie_datagram(nonce, cookie) == COOKIE.build({"version": 1, "nonce": nonce, "cookie": cookie})


@settings(max_examples=300, deadline=None)
@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){2,4}", fullmatch=True),
        st.text(max_size=20),
    )
)
def test_packed_ip_agrees_with_ipaddress(host: str) -> None:
    try:
        expected: bytes | None = ipaddress.ip_address(host.split("%", 1)[0]).packed
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ValueError):
            packed_ip(host)
    else:
        assert packed_ip(host) == expected


@settings(max_examples=100, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    info=st.binary(max_size=200),
    salt=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_the_tickets_hkdf_is_rfc_5869(secret: bytes, info: bytes, salt: bytes | None) -> None:
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)
    assert presence_ticket._hkdf(secret, info, salt) == expected
