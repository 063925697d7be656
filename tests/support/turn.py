"""Helpers for the TURN core tests: a fake relay-port allocator and a scripted client that
speaks through aioice's STUN codec, with made-up unix time."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from aioice import stun

from dvrlink.broker.turn_credentials import long_term_key, make_credentials
from dvrlink.broker.turn_server import (
    Address,
    ToClient,
    ToPeer,
    Transport,
    TurnConfig,
    TurnServer,
    Via,
)

SECRET = "test-secret"
REALM = "dvrlink"
T0 = 1_700_000_000.0
RELAY_IP = "198.51.100.7"
PEER = ("203.0.113.5", 40000)
PEER2 = ("203.0.113.6", 40001)
UDP_TRANSPORT = 0x11000000


class FakeRelays:
    """Hands out 198.51.100.7:50000+id up to ``capacity`` open ports at once."""

    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self.open_ids: set[int] = set()
        self.closed: list[int] = []
        self.held: dict[int, int] = {}
        self.released: list[int] = []

    def open(self, allocation_id: int, even: bool) -> Address | None:
        if len(self.open_ids) >= self.capacity:
            return None
        self.open_ids.add(allocation_id)
        return (RELAY_IP, 60000 + 2 * allocation_id if even else 50000 + allocation_id)

    def close(self, allocation_id: int) -> None:
        self.open_ids.discard(allocation_id)
        self.closed.append(allocation_id)

    def open_pair(self, allocation_id: int, reservation_id: int) -> Address | None:
        """An even port for ``allocation_id``; the next one held for ``reservation_id``."""
        if len(self.open_ids) + len(self.held) + 2 > self.capacity:
            return None
        self.open_ids.add(allocation_id)
        port = 60000 + 2 * allocation_id
        self.held[reservation_id] = port + 1
        return (RELAY_IP, port)

    def claim(self, reservation_id: int, allocation_id: int) -> Address | None:
        port = self.held.pop(reservation_id, None)
        if port is None:
            return None
        self.open_ids.add(allocation_id)
        return (RELAY_IP, port)

    def release(self, reservation_id: int) -> None:
        self.held.pop(reservation_id, None)
        self.released.append(reservation_id)


def counter_rng() -> Any:
    state = [0]

    def rng(n: int) -> bytes:
        state[0] += 1
        return (state[0].to_bytes(4, "big") * (n // 4 + 1))[:n]

    return rng


@dataclass
class Lab:
    config: TurnConfig = field(default_factory=lambda: TurnConfig(secret=SECRET, realm=REALM))
    relays: FakeRelays = field(default_factory=FakeRelays)
    now: float = T0
    server: TurnServer = field(init=False)
    to_peers: list[tuple[bytes, Address, int]] = field(default_factory=list)
    to_clients: list[tuple[bytes, Address, Transport]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = TurnServer(self.config, self.relays, counter_rng())

    def drain(self) -> None:
        for data, destination, via in self.server.datagrams_to_send():
            route(self, data, destination, via)

    def advance(self, to: float) -> None:
        self.now = to
        deadline = self.server.get_timer()
        while deadline is not None and deadline <= to:
            self.server.handle_timer(deadline)
            deadline = self.server.get_timer()
        self.server.handle_timer(to)
        self.drain()

    def client(
        self,
        address: Address = ("192.0.2.10", 5000),
        name: str = "alice",
        transport: Transport = Transport.UDP,
    ) -> Client:
        username, password = make_credentials(SECRET, name, self.now, 86400)
        return Client(self, address, transport, username, password)

    def from_peer(self, allocation_id: int, data: bytes, peer: Address = PEER) -> None:
        self.server.receive_from_peer(allocation_id, data, peer, self.now)
        self.drain()

    def events(self) -> list[Any]:
        out = []
        while (event := self.server.next_event()) is not None:
            out.append(event)
        return out


def route(lab: Lab, data: bytes, destination: Address, via: Via) -> None:
    if isinstance(via, ToPeer):
        lab.to_peers.append((data, destination, via.allocation_id))
    else:
        assert isinstance(via, ToClient)
        lab.to_clients.append((data, destination, via.transport))


@dataclass
class Client:
    lab: Lab
    address: Address
    transport: Transport
    username: str
    password: str
    realm: str | None = None
    nonce: bytes | None = None
    key: bytes | None = None

    def send_raw(self, data: bytes) -> list[bytes]:
        lab = self.lab
        lab.to_clients.clear()
        lab.server.receive_datagram(data, self.address, lab.now, self.transport)
        lab.drain()
        replies = [d for d, dest, t in lab.to_clients if dest == self.address and t is self.transport]
        lab.to_clients.clear()
        return replies

    def request(
        self, method: stun.Method, attributes: dict[str, Any] | None = None, *, sign: bool = True
    ) -> stun.Message:
        """Send one request (authenticating when credentials are known); the parsed reply."""
        message = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        message.attributes.update(attributes or {})
        if sign and self.nonce is not None:
            assert self.realm is not None
            message.attributes["USERNAME"] = self.username
            message.attributes["REALM"] = self.realm
            message.attributes["NONCE"] = self.nonce
            self.key = long_term_key(self.username, self.realm, self.password)
            message.add_message_integrity(self.key)
        replies = self.send_raw(bytes(message))
        assert len(replies) == 1, replies
        reply = stun.parse_message(replies[0])
        assert reply.transaction_id == message.transaction_id
        return reply

    def authed(self, method: stun.Method, attributes: dict[str, Any] | None = None) -> stun.Message:
        """A request with the 401/438 dance, like a real client."""
        reply = self.request(method, attributes)
        if (
            reply.message_class == stun.Class.ERROR
            and reply.error_code in (401, 438)
            and (self.nonce is None or reply.error_code == 438)
        ):
            self.realm = reply.attributes["REALM"]
            self.nonce = reply.attributes["NONCE"]
            reply = self.request(method, attributes)
        return reply

    def allocate(self, lifetime: int | None = None) -> stun.Message:
        attributes: dict[str, Any] = {"REQUESTED-TRANSPORT": UDP_TRANSPORT}
        if lifetime is not None:
            attributes["LIFETIME"] = lifetime
        return self.authed(stun.Method.ALLOCATE, attributes)

    def channel_data(self, channel: int, payload: bytes) -> list[bytes]:
        frame = struct.pack("!HH", channel, len(payload)) + payload
        if self.transport is Transport.TCP:
            frame += bytes(-len(frame) % 4)
        return self.send_raw(frame)

    def send_indication(self, peer: Address, payload: bytes) -> list[bytes]:
        message = stun.Message(message_method=stun.Method.SEND, message_class=stun.Class.INDICATION)
        message.attributes["XOR-PEER-ADDRESS"] = peer
        message.attributes["DATA"] = payload
        return self.send_raw(bytes(message))

    def check_signed(self, reply: stun.Message) -> None:
        assert self.key is not None
        assert reply.check_message_integrity(self.key)
