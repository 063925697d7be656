"""The broker's TURN relay (RFC 8656), sans-I/O, on aioice's STUN codec.

Clients reach the server over UDP or TCP (the link splits TCP streams into STUN messages and
ChannelData frames and feeds each one here); a client is known by its transport and address, the
"5-tuple" of the RFC. Peers reach an allocation through its relay socket, which the application
owns: the core asks a :class:`RelayPorts` for one when an allocation is created (and gives it
back when the allocation goes), and the link hands what arrives on it to
:meth:`TurnServer.receive_from_peer`.

Inputs::

    receive_datagram(data, client_address, now, transport)   # from a client
    receive_from_peer(allocation_id, data, peer_address, now) # on a relay socket
    client_disconnected(transport, client_address, now)       # a TCP client went away
    handle_timer(now)                                         # at get_timer()

The relay's hot paths have two variants that return the datagram to forward instead of queuing
it, so a link can send it at once without the outbox, the event queue or a timer check:
:meth:`TurnServer.receive_udp` (a client datagram on the UDP listener; a relayed ChannelData frame
comes back as ``(allocation_id, payload, peer)``) and :meth:`TurnServer.relay_from_peer` (a peer
datagram; the frame for a UDP client comes back as ``(frame, client)``). Both decide exactly as
the general inputs do (same permission, channel and lifetime checks, same counters) and never
create events or move timers; whatever they do not return goes to the outbox as usual.

Outputs: :meth:`datagrams_to_send` gives ``(bytes, destination, via)`` where ``via`` is
``ToClient(transport)`` (the listening socket, or the TCP connection of ``destination``) or
``ToPeer(allocation_id)`` (that allocation's relay socket); :meth:`next_event` gives
:class:`TurnEvent` s.

``now`` is unix time in seconds (REST credentials carry a unix expiry); timers use the same clock.

Scope: UDP relaying of IPv4 peers. EVEN-PORT gets an even port; with the R bit the next port is
held for ``reservation_lifetime_s`` under a RESERVATION-TOKEN that a later Allocate of the same
REST name may claim (RFC 8656 sections 7.2, 14.6 and 14.9; RTP/RTCP pairs). IPv6 relays get 440,
DONT-FRAGMENT 420.

Quota: ``max_allocations_per_user`` counts a name's allocations and open reservations. When a
client goes over it (486), the allocations and reservations that name holds from the same client
IP are released with the refusal: a client that aborts on 486 (as coturn's ``turnutils_uclient``
does) leaves nothing behind to block its next run until the allocations expire. Allocations of
the same name from other IPs (the account's other hosts) are kept.

Authentication is the long-term mechanism of RFC 8489 section 9.2 with REST usernames (see
``turn_credentials``): a request without MESSAGE-INTEGRITY gets 401 with REALM and a NONCE; the
nonce is stateless (expiry and a MAC over the client's address) and stale after
``nonce_lifetime_s`` (438). Bad input from the network never raises: malformed STUN or
ChannelData is dropped. Unauthenticated replies are a bare error code with at most REALM and
NONCE, so a 401 exceeds its request by at most ``44 + len(realm)`` bytes and every other
unauthenticated error is smaller than its request.
"""

from __future__ import annotations

import enum
import heapq
import hmac
import ipaddress
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aioice import stun

from dvrlink.broker.turn_credentials import (
    CredentialStatus,
    check_username,
    long_term_key,
    rest_password,
)
from dvrlink.protocol.stun import StunRateLimiter, binding_response

Address = tuple[str, int]

MAGIC_COOKIE = b"\x21\x12\xa4\x42"
HEADER_LENGTH = 20
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF
UDP_PROTOCOL = 17
FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

ATTR_MESSAGE_INTEGRITY = 0x0008
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_XOR_PEER_ADDRESS = 0x0012
ATTR_REQUESTED_ADDRESS_FAMILY = 0x0017
ATTR_EVEN_PORT = 0x0018
ATTR_RESERVATION_TOKEN = 0x0022
ATTR_FINGERPRINT = 0x8028
COMPREHENSION_OPTIONAL = 0x8000

CHANNEL_MAX_RFC5766 = 0x7FFE
EVEN_PORT_RESERVE = 0x80

# Comprehension-required attributes this server understands: what aioice decodes, plus the
# TURN ones it reads raw. DONT-FRAGMENT is not supported, so an Allocate with it gets 420
# (RFC 8656 section 14).
KNOWN_REQUIRED_ATTRIBUTES = frozenset(
    {t for t in stun.ATTRIBUTES_BY_TYPE if t < COMPREHENSION_OPTIONAL}
    | {ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_EVEN_PORT, ATTR_RESERVATION_TOKEN}
)

# Peers a relay must not reach unless the operator says so: "this network", loopback,
# link-local, multicast and broadcast. Tests on loopback pass ``denied_peer_networks=()``.
DEFAULT_DENIED_PEER_NETWORKS = (
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/3",
    "::/128",
    "::1/128",
    "fe80::/10",
    "ff00::/8",
)

_PARSE_ERRORS = (ValueError, struct.error, IndexError, KeyError, TypeError)

_CHANNEL_HEADER = struct.Struct("!HH")
_DATA_INDICATION_HEADER = struct.Struct("!HHI12s")
_DATA_INDICATION_TYPE = stun.Method.DATA | stun.Class.INDICATION
_ATTR_HEADER = struct.Struct("!HH")
_ATTR_DATA = 0x0013
_COOKIE = 0x2112A442
_TRANSACTION_ID_POOL = 12 * 256  # random bytes drawn at once for Data indication transaction ids


# -- configuration, I/O boundary, events ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """TURN relay settings. Times are in seconds.

    Raises (on construction):
        ValueError: a value is out of range; the message names the field.
    """

    secret: str
    """The REST secret shared with whoever issues credentials (coturn ``static-auth-secret``)."""
    realm: str = "dvrlink"
    """REALM sent in 401/438 and used in the long-term key; short keeps 401 replies small."""
    default_lifetime_s: int = 600
    """Allocation lifetime when the client asks for less or nothing (RFC 8656: 600)."""
    max_lifetime_s: int = 3600
    """Longest allocation lifetime granted by Allocate or Refresh (RFC 8656: 3600)."""
    permission_lifetime_s: int = 300
    """Permission lifetime (RFC 8656: 300, fixed by the protocol)."""
    channel_lifetime_s: int = 600
    """Channel binding lifetime (RFC 8656: 600, fixed by the protocol)."""
    nonce_lifetime_s: int = 600
    """How long a NONCE stays valid before a request gets 438 Stale Nonce."""
    max_allocations_per_user: int = 10
    """Allocations at once per REST name (the part of the username after the colon); 486 above."""
    max_allocations: int = 10000
    """Allocations at once on this server; 508 above."""
    max_permissions_per_allocation: int = 256
    """Peer IP addresses one allocation may hold permissions for; 508 above."""
    denied_peer_networks: tuple[str, ...] = DEFAULT_DENIED_PEER_NETWORKS
    """CIDR networks no permission or channel may point at (403)."""
    rfc5766_channel_numbers: bool = True
    """Also accept channel numbers 0x5000-0x7FFE, the RFC 5766 range that coturn and its
    ``turnutils_uclient`` still use; False: only RFC 8656's 0x4000-0x4FFF."""
    reservation_lifetime_s: int = 30
    """How long a port reserved by EVEN-PORT with the R bit waits for its RESERVATION-TOKEN."""
    stun_rate_per_s: float = 50.0
    """STUN Binding requests answered per second per client IP, after ``stun_rate_burst``;
    0 = no limit."""
    stun_rate_burst: int = 100
    """STUN Binding requests one client IP may send at once."""

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("TurnConfig.secret is empty; set the REST secret shared with the broker API")
        if not self.realm or len(self.realm.encode("utf-8")) > 127:
            raise ValueError(f"TurnConfig.realm must be 1..127 bytes, got {self.realm!r}")
        for name in (
            "default_lifetime_s",
            "max_lifetime_s",
            "permission_lifetime_s",
            "channel_lifetime_s",
            "nonce_lifetime_s",
            "max_allocations_per_user",
            "max_allocations",
            "max_permissions_per_allocation",
            "reservation_lifetime_s",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"TurnConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_lifetime_s < self.default_lifetime_s:
            raise ValueError(
                f"TurnConfig.max_lifetime_s ({self.max_lifetime_s}) is below default_lifetime_s "
                f"({self.default_lifetime_s}); raise it"
            )
        if self.stun_rate_per_s < 0 or self.stun_rate_burst < 1:
            raise ValueError(
                f"TurnConfig.stun_rate_per_s ({self.stun_rate_per_s}) must be >= 0 and stun_rate_burst "
                f"({self.stun_rate_burst}) >= 1"
            )
        for network in self.denied_peer_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"TurnConfig.denied_peer_networks: {network!r} is not a network") from exc


class RelayPorts(Protocol):
    """Where relay sockets come from (the link opens real UDP sockets; tests use a fake)."""

    def open(self, allocation_id: int, even: bool) -> Address | None:
        """Open a relay socket for ``allocation_id`` (on an even port if ``even``); its public
        (ip, port), or None if none is free."""
        ...

    def close(self, allocation_id: int) -> None:
        """Close the relay socket of ``allocation_id``; no more ``receive_from_peer`` for it."""
        ...

    def open_pair(self, allocation_id: int, reservation_id: int) -> Address | None:
        """Open a relay socket for ``allocation_id`` on an even port P and hold P + 1 for
        ``reservation_id`` (nothing is relayed on it yet); the (ip, P), or None if no pair is free."""
        ...

    def claim(self, reservation_id: int, allocation_id: int) -> Address | None:
        """The port held for ``reservation_id`` becomes the relay socket of ``allocation_id``;
        its (ip, port), or None if it is no longer held."""
        ...

    def release(self, reservation_id: int) -> None:
        """Close the port held for ``reservation_id`` (unclaimed in time, or at shutdown)."""
        ...


class Transport(enum.Enum):
    """How a client reaches the server."""

    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class ToClient:
    """Send to the client at the destination over this transport (listening socket or TCP stream)."""

    transport: Transport


@dataclass(frozen=True, slots=True)
class ToPeer:
    """Send to the peer at the destination from this allocation's relay socket."""

    allocation_id: int


Via = ToClient | ToPeer
TO_UDP_CLIENT = ToClient(Transport.UDP)
TO_TCP_CLIENT = ToClient(Transport.TCP)


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """Base of everything the TURN core reports."""


@dataclass(frozen=True, slots=True)
class AllocationCreated(TurnEvent):
    allocation_id: int
    username: str
    transport: Transport
    client: Address
    relayed: Address
    lifetime_s: int


@dataclass(frozen=True, slots=True)
class AllocationDeleted(TurnEvent):
    allocation_id: int
    username: str
    reason: str
    """``refresh`` (the client deleted it), ``expired``, ``disconnected``, ``over-quota`` (released
    when a client at the same IP went over the name's quota) or ``shutdown``."""


# -- state ------------------------------------------------------------------------------------------


class _Channel:
    __slots__ = ("expires", "peer")

    def __init__(self, peer: Address, expires: float) -> None:
        self.peer = peer
        self.expires = expires


class _Allocation:
    __slots__ = (
        "allocate_response",
        "allocate_tid",
        "channel_by_peer",
        "channels",
        "client",
        "expires",
        "id",
        "name",
        "permissions",
        "relayed",
        "scheduled",
        "to_peer",
        "transport",
        "username",
    )

    def __init__(
        self,
        allocation_id: int,
        transport: Transport,
        client: Address,
        username: str,
        name: str,
        relayed: Address,
        expires: float,
    ) -> None:
        self.id = allocation_id
        self.transport = transport
        self.client = client
        self.username = username
        self.name = name
        self.relayed = relayed
        self.expires = expires
        self.permissions: dict[str, float] = {}
        self.channels: dict[int, _Channel] = {}
        self.channel_by_peer: dict[Address, int] = {}
        self.allocate_tid = b""
        self.allocate_response = b""
        self.scheduled: float | None = None
        self.to_peer = ToPeer(allocation_id)

    def next_deadline(self) -> float:
        deadline = self.expires
        if self.permissions:
            deadline = min(deadline, *self.permissions.values())
        for channel in self.channels.values():
            deadline = min(deadline, channel.expires)
        return deadline

    def purge(self, now: float) -> None:
        for ip in [ip for ip, expires in self.permissions.items() if expires <= now]:
            del self.permissions[ip]
        for number in [n for n, c in self.channels.items() if c.expires <= now]:
            channel = self.channels.pop(number)
            self.channel_by_peer.pop(channel.peer, None)


@dataclass(frozen=True, slots=True)
class _Reservation:
    """A port held by EVEN-PORT with the R bit, for the Allocate that brings its token."""

    id: int
    token: bytes
    name: str
    client_host: str
    expires: float


@dataclass(frozen=True, slots=True)
class _Auth:
    username: str
    name: str
    key: bytes


class _Rejected(Exception):
    """An authenticated request fails with this error code (internal control flow)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _raw_attributes(data: bytes) -> list[tuple[int, bytes]] | None:
    """(type, value) of each attribute up to MESSAGE-INTEGRITY (inclusive), or None when an
    attribute runs past the end. aioice keeps one value per name; CreatePermission needs all of
    its XOR-PEER-ADDRESS attributes, and 420 needs the types aioice does not know."""
    out: list[tuple[int, bytes]] = []
    pos = HEADER_LENGTH
    end = len(data)
    while pos < end:
        if end - pos < 4:
            return None
        kind, length = struct.unpack_from("!HH", data, pos)
        value_end = pos + 4 + length
        if value_end > end:
            return None
        out.append((kind, data[pos + 4 : value_end]))
        if kind == ATTR_MESSAGE_INTEGRITY:
            break
        pos = value_end + (-length % 4)
    return out


def _family(host: str) -> int:
    return FAMILY_IPV6 if ":" in host else FAMILY_IPV4


def _signed(data: bytes, key: bytes) -> bytes:
    """``data`` (a STUN message whose last attributes were appended raw) padded, with its length
    fixed, then MESSAGE-INTEGRITY and FINGERPRINT added with aioice's functions."""
    data += bytes(-len(data) % 4)
    data = stun.set_body_length(data, len(data) - HEADER_LENGTH)
    integrity = stun.message_integrity(data, key)
    data = stun.set_body_length(data, len(data) - HEADER_LENGTH + stun.INTEGRITY_LENGTH)
    data += struct.pack("!HH", ATTR_MESSAGE_INTEGRITY, len(integrity)) + integrity
    fingerprint = stun.message_fingerprint(data)
    data = stun.set_body_length(data, len(data) - HEADER_LENGTH + stun.FINGERPRINT_LENGTH)
    return data + struct.pack("!HHI", ATTR_FINGERPRINT, 4, fingerprint)


# -- the core -----------------------------------------------------------------------------------------


class TurnServer:
    """The TURN relay state machine (see module docstring)."""

    def __init__(
        self,
        config: TurnConfig,
        relay_ports: RelayPorts,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._config = config
        self._relays = relay_ports
        self._rng = rng
        self._nonce_key = rng(32)
        self._denied = tuple(ipaddress.ip_network(n, strict=False) for n in config.denied_peer_networks)
        self._channel_max = CHANNEL_MAX_RFC5766 if config.rfc5766_channel_numbers else CHANNEL_MAX
        self._stun_limiter = (
            StunRateLimiter(config.stun_rate_per_s, config.stun_rate_burst)
            if config.stun_rate_per_s
            else None
        )
        self._by_client: dict[tuple[Transport, Address], _Allocation] = {}
        self._udp_clients: dict[Address, _Allocation] = {}  # the UDP part of _by_client, by address
        self._tid_pool = b""
        self._tid_offset = 0
        self._by_id: dict[int, _Allocation] = {}
        self._per_name: dict[str, int] = {}
        self._next_id = 1
        self._reservations: dict[bytes, _Reservation] = {}  # by token, oldest first (one lifetime)
        self._next_reservation = 1
        self._heap: list[tuple[float, int]] = []
        self._outbox: list[tuple[bytes, Address, Via]] = []
        self._events: deque[TurnEvent] = deque()
        self.stats: dict[str, int] = {
            "datagrams": 0,
            "dropped": 0,
            "binding": 0,
            "binding_limited": 0,
            "unauthenticated": 0,
            "auth_failed": 0,
            "stale_nonce": 0,
            "rejected": 0,
            "allocations": 0,
            "to_peer": 0,
            "from_peer": 0,
            "peer_dropped": 0,
        }

    # -- inputs ---------------------------------------------------------------------------------------

    def receive_datagram(
        self, data: bytes, address: Address, now: float, transport: Transport = Transport.UDP
    ) -> None:
        """A STUN message or ChannelData frame from the client at ``address``. Never raises on
        bad bytes: they are dropped (and counted in ``stats["dropped"]``)."""
        self.stats["datagrams"] += 1
        if len(data) < 4:
            self.stats["dropped"] += 1
            return
        first = data[0]
        if first < 0x40:
            self._client_stun(data, (transport, address), now)
        elif first < 0x80:
            self._client_channel_data(data, (transport, address), now)
        else:
            self.stats["dropped"] += 1

    def receive_udp(self, data: bytes, address: Address, now: float) -> tuple[int, bytes, Address] | None:
        """A datagram from the UDP client at ``address``; the link's hot path.

        The same as ``receive_datagram(data, address, now, Transport.UDP)``, except that a
        ChannelData frame on a bound channel is not queued: it comes back as
        ``(allocation_id, payload, peer)`` for the caller to send from that allocation's relay
        socket. Anything else (STUN, frames to drop) goes through :meth:`receive_datagram` and
        gives None. Never raises on bad bytes; a relayed frame creates no event and moves no timer.
        """
        if len(data) >= 4 and 0x40 <= data[0] < 0x80:
            allocation = self._udp_clients.get(address)
            if allocation is not None and allocation.expires > now:
                channel = allocation.channels.get((data[0] << 8) | data[1])
                if channel is not None and channel.expires > now:
                    end = 4 + ((data[2] << 8) | data[3])
                    if end <= len(data):
                        stats = self.stats
                        stats["datagrams"] += 1
                        stats["to_peer"] += 1
                        return allocation.id, data[4:end], channel.peer
        self.receive_datagram(data, address, now, Transport.UDP)
        return None

    def receive_from_peer(self, allocation_id: int, data: bytes, peer: Address, now: float) -> None:
        """A datagram from ``peer`` arrived on the relay socket of ``allocation_id``; it goes to
        the client if a permission covers the peer's IP, and is dropped otherwise."""
        allocation = self._by_id.get(allocation_id)
        if allocation is None:
            self.stats["peer_dropped"] += 1
            return
        frame = self._frame_from_peer(allocation, data, peer, now)
        if frame is not None:
            via = TO_UDP_CLIENT if allocation.transport is Transport.UDP else TO_TCP_CLIENT
            self._outbox.append((frame, allocation.client, via))

    def relay_from_peer(
        self, allocation_id: int, data: bytes, peer: Address, now: float
    ) -> tuple[bytes, Address] | None:
        """A datagram from ``peer`` on the relay socket of ``allocation_id``; the link's hot path.

        The same as :meth:`receive_from_peer`, except that the frame (ChannelData or a Data
        indication) for a client on UDP is not queued: it comes back as ``(frame, client)`` for
        the caller to send from the client UDP listener. Frames for TCP clients are queued as
        usual; None then, and when the datagram is dropped.
        """
        allocation = self._by_id.get(allocation_id)
        if allocation is None:
            self.stats["peer_dropped"] += 1
            return None
        frame = self._frame_from_peer(allocation, data, peer, now)
        if frame is None:
            return None
        if allocation.transport is Transport.UDP:
            return frame, allocation.client
        self._outbox.append((frame, allocation.client, TO_TCP_CLIENT))
        return None

    def _frame_from_peer(
        self, allocation: _Allocation, data: bytes, peer: Address, now: float
    ) -> bytes | None:
        """What the client gets for ``data`` from ``peer``, or None (dropped, and counted)."""
        host = peer[0]
        if "%" in host:
            host = host.split("%", 1)[0]
            peer = (host, peer[1])
        if allocation.expires <= now:
            self.stats["peer_dropped"] += 1
            return None
        permission = allocation.permissions.get(host)
        if permission is None or permission <= now:
            self.stats["peer_dropped"] += 1
            return None
        self.stats["from_peer"] += 1
        number = allocation.channel_by_peer.get(peer)
        if number is not None and allocation.channels[number].expires > now:
            frame = _CHANNEL_HEADER.pack(number, len(data)) + data
            if allocation.transport is Transport.TCP and len(data) % 4:
                frame += bytes(-len(data) % 4)
            return frame
        return self._data_indication(data, peer)

    def _data_indication(self, data: bytes, peer: Address) -> bytes:
        """A Data indication (XOR-PEER-ADDRESS, then DATA), laid out as aioice's ``Message``
        serialises it, without building one per datagram."""
        transaction_id = self._transaction_id()
        address = stun.pack_xor_address(peer, transaction_id)
        padding = -len(data) % 4
        return b"".join(
            (
                _DATA_INDICATION_HEADER.pack(
                    _DATA_INDICATION_TYPE,
                    8 + len(address) + len(data) + padding,
                    _COOKIE,
                    transaction_id,
                ),
                _ATTR_HEADER.pack(ATTR_XOR_PEER_ADDRESS, len(address)),
                address,
                _ATTR_HEADER.pack(_ATTR_DATA, len(data)),
                data,
                bytes(padding),
            )
        )

    def _transaction_id(self) -> bytes:
        """12 random bytes from ``rng``, drawn in blocks so a Data indication costs no system call."""
        offset = self._tid_offset
        if offset + 12 > len(self._tid_pool):
            self._tid_pool = self._rng(_TRANSACTION_ID_POOL)
            offset = 0
        self._tid_offset = offset + 12
        return self._tid_pool[offset : offset + 12]

    def client_disconnected(self, transport: Transport, address: Address, now: float) -> None:
        """The client's TCP connection closed: its allocation goes (RFC 8656 section 3.1)."""
        allocation = self._by_client.get((transport, address))
        if allocation is not None:
            self._delete(allocation, "disconnected")

    def handle_timer(self, now: float) -> None:
        """Expire port reservations, permissions, channels and allocations due at ``now``."""
        reservations = self._reservations
        while reservations:
            reservation = next(iter(reservations.values()))
            if reservation.expires > now:
                break
            self._drop_reservation(reservation)
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, allocation_id = heapq.heappop(heap)
            allocation = self._by_id.get(allocation_id)
            if allocation is None or allocation.scheduled != deadline:
                continue
            allocation.scheduled = None
            if allocation.expires <= now:
                self._delete(allocation, "expired")
                continue
            allocation.purge(now)
            self._schedule(allocation, allocation.next_deadline())

    def close(self) -> None:
        """Delete every allocation and reservation (closing their relay ports), e.g. at shutdown."""
        for allocation in list(self._by_id.values()):
            self._delete(allocation, "shutdown")
        for reservation in list(self._reservations.values()):
            self._drop_reservation(reservation)

    # -- outputs ----------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address, Via]]:
        """What to send since the last call: (bytes, destination, via)."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> TurnEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due, or None."""
        reservations = self._reservations
        first = next(iter(reservations.values())).expires if reservations else None
        heap = self._heap
        while heap:
            deadline, allocation_id = heap[0]
            allocation = self._by_id.get(allocation_id)
            if allocation is not None and allocation.scheduled == deadline:
                return deadline if first is None else min(first, deadline)
            heapq.heappop(heap)
        return first

    # -- introspection ------------------------------------------------------------------------------

    @property
    def allocation_count(self) -> int:
        return len(self._by_id)

    def allocation_for(self, transport: Transport, address: Address) -> int | None:
        """The allocation id of the client at (transport, address), or None."""
        allocation = self._by_client.get((transport, address))
        return None if allocation is None else allocation.id

    def relayed_address(self, allocation_id: int) -> Address | None:
        """The relayed transport address of an allocation, or None."""
        allocation = self._by_id.get(allocation_id)
        return None if allocation is None else allocation.relayed

    # -- client side: ChannelData -------------------------------------------------------------------

    def _client_channel_data(self, data: bytes, client: tuple[Transport, Address], now: float) -> None:
        # receive_udp has an inlined copy of these checks for UDP clients; keep the two in step.
        number, length = _CHANNEL_HEADER.unpack_from(data)
        allocation = self._by_client.get(client)
        if (
            allocation is None
            or allocation.expires <= now
            or number > self._channel_max
            or 4 + length > len(data)
        ):
            self.stats["dropped"] += 1
            return
        channel = allocation.channels.get(number)
        if channel is None or channel.expires <= now:
            self.stats["dropped"] += 1
            return
        self.stats["to_peer"] += 1
        self._outbox.append((data[4 : 4 + length], channel.peer, allocation.to_peer))

    # -- client side: STUN ----------------------------------------------------------------------------

    def _client_stun(self, data: bytes, client: tuple[Transport, Address], now: float) -> None:
        if data[:2] == b"\x00\x01":  # a Binding request, RFC 3489 ones (no magic cookie) too
            self._binding(data, client, now)
            return
        if (
            len(data) < HEADER_LENGTH
            or data[4:8] != MAGIC_COOKIE
            or len(data) % 4
            or HEADER_LENGTH + int.from_bytes(data[2:4], "big") != len(data)
        ):
            self.stats["dropped"] += 1
            return
        raw = _raw_attributes(data)
        try:
            message = stun.parse_message(data)
        except _PARSE_ERRORS:
            message = None
        if raw is None or message is None:
            self.stats["dropped"] += 1
            return
        method = message.message_method
        kind = message.message_class
        if method == stun.Method.SEND and kind == stun.Class.INDICATION:
            self._send_indication(message, raw, client, now)
            return
        if kind != stun.Class.REQUEST or method not in _REQUEST_HANDLERS:
            self.stats["dropped"] += 1
            return
        auth = self._authenticate(message, client, now)
        if auth is None:
            return
        try:
            unknown = [t for t, _ in raw if t < COMPREHENSION_OPTIONAL and t not in KNOWN_REQUIRED_ATTRIBUTES]
            if unknown:
                self._reply_unknown_attributes(message, unknown, client, auth.key)
                return
            handler = _REQUEST_HANDLERS[method]
            attributes = handler(self, message, raw, auth, client, now)
        except _Rejected as rejected:
            self.stats["rejected"] += 1
            self._reply_error(message, rejected.code, rejected.reason, client, auth.key)
            return
        if attributes is not None:
            self._reply_success(message, attributes, client, auth.key)

    def _binding(self, data: bytes, client: tuple[Transport, Address], now: float) -> None:
        """A plain STUN responder (``dvrlink.protocol.stun``): this port has no alternate address,
        so CHANGE-REQUEST with a flag set and RESPONSE-PORT get 420."""
        reply = binding_response(data, client[1])
        if reply is None:
            self.stats["dropped"] += 1
            return
        limiter = self._stun_limiter
        if limiter is not None and not limiter.allow(client[1][0], now):
            self.stats["binding_limited"] += 1
            return
        self.stats["binding"] += 1
        self._outbox.append((reply, client[1], ToClient(client[0])))

    def _send_indication(
        self,
        message: stun.Message,
        raw: list[tuple[int, bytes]],
        client: tuple[Transport, Address],
        now: float,
    ) -> None:
        allocation = self._by_client.get(client)
        peer = message.attributes.get("XOR-PEER-ADDRESS")
        payload = message.attributes.get("DATA")
        if (
            allocation is None
            or peer is None
            or payload is None
            or any(t < COMPREHENSION_OPTIONAL and t not in KNOWN_REQUIRED_ATTRIBUTES for t, _ in raw)
        ):
            self.stats["dropped"] += 1
            return
        permission = allocation.permissions.get(peer[0])
        if permission is None or permission <= now:
            self.stats["dropped"] += 1
            return
        self.stats["to_peer"] += 1
        self._outbox.append((payload, peer, allocation.to_peer))

    # -- authentication (RFC 8489 section 9.2.4) --------------------------------------------------

    def _authenticate(
        self, message: stun.Message, client: tuple[Transport, Address], now: float
    ) -> _Auth | None:
        attributes = message.attributes
        if "MESSAGE-INTEGRITY" not in attributes:
            self.stats["unauthenticated"] += 1
            self._reply_challenge(message, 401, client, now)
            return None
        username = attributes.get("USERNAME")
        realm = attributes.get("REALM")
        nonce = attributes.get("NONCE")
        if not username or not realm or not nonce:
            self.stats["auth_failed"] += 1
            self._reply_bare(message, 400, client)
            return None
        if not self._nonce_valid(nonce, client, now):
            self.stats["stale_nonce"] += 1
            self._reply_challenge(message, 438, client, now)
            return None
        check = check_username(username, now)
        if check.status is not CredentialStatus.VALID or realm != self._config.realm:
            self.stats["auth_failed"] += 1
            self._reply_challenge(message, 401, client, now)
            return None
        key = long_term_key(username, self._config.realm, rest_password(self._config.secret, username))
        if not message.check_message_integrity(key):
            self.stats["auth_failed"] += 1
            self._reply_challenge(message, 401, client, now)
            return None
        return _Auth(username, check.name, key)

    def _nonce(self, client: tuple[Transport, Address], now: float) -> bytes:
        expiry = f"{int(now + self._config.nonce_lifetime_s) & 0xFFFFFFFF:08x}"
        return (expiry + self._nonce_mac(expiry, client)).encode("ascii")

    def _nonce_mac(self, expiry: str, client: tuple[Transport, Address]) -> str:
        text = f"{expiry}|{client[0].value}|{client[1][0]}|{client[1][1]}".encode()
        return hmac.new(self._nonce_key, text, "sha256").hexdigest()[:16]

    def _nonce_valid(self, nonce: bytes, client: tuple[Transport, Address], now: float) -> bool:
        if len(nonce) != 24:
            return False
        try:
            text = nonce.decode("ascii")
            expiry = int(text[:8], 16)
        except ValueError:
            return False
        if expiry <= now:
            return False
        return hmac.compare_digest(text[8:], self._nonce_mac(text[:8], client))

    # -- replies ------------------------------------------------------------------------------------

    def _response(self, request: stun.Message, kind: stun.Class) -> stun.Message:
        return stun.Message(
            message_method=request.message_method,
            message_class=kind,
            transaction_id=request.transaction_id,
        )

    def _send_to_client(self, data: bytes, client: tuple[Transport, Address]) -> None:
        self._outbox.append((data, client[1], ToClient(client[0])))

    def _reply_bare(self, request: stun.Message, code: int, client: tuple[Transport, Address]) -> None:
        response = self._response(request, stun.Class.ERROR)
        response.attributes["ERROR-CODE"] = (code, "")
        self._send_to_client(bytes(response), client)

    def _reply_challenge(
        self, request: stun.Message, code: int, client: tuple[Transport, Address], now: float
    ) -> None:
        response = self._response(request, stun.Class.ERROR)
        response.attributes["ERROR-CODE"] = (code, "")
        response.attributes["REALM"] = self._config.realm
        response.attributes["NONCE"] = self._nonce(client, now)
        self._send_to_client(bytes(response), client)

    def _reply_error(
        self, request: stun.Message, code: int, reason: str, client: tuple[Transport, Address], key: bytes
    ) -> None:
        response = self._response(request, stun.Class.ERROR)
        response.attributes["ERROR-CODE"] = (code, reason)
        response.add_message_integrity(key)
        self._send_to_client(bytes(response), client)

    def _reply_success(
        self,
        request: stun.Message,
        attributes: dict[str, Any],
        client: tuple[Transport, Address],
        key: bytes,
        extra: bytes = b"",
    ) -> bytes:
        """Send a signed success response; ``extra`` is raw attributes aioice cannot encode
        (RESERVATION-TOKEN), placed before MESSAGE-INTEGRITY."""
        response = self._response(request, stun.Class.RESPONSE)
        response.attributes.update(attributes)
        if extra:
            data = _signed(bytes(response) + extra, key)
        else:
            response.add_message_integrity(key)
            data = bytes(response)
        self._send_to_client(data, client)
        return data

    def _reply_unknown_attributes(
        self,
        request: stun.Message,
        unknown: list[int],
        client: tuple[Transport, Address],
        key: bytes,
    ) -> None:
        # aioice has no UNKNOWN-ATTRIBUTES entry, so this one attribute is appended raw and the
        # message is then signed with aioice's integrity and fingerprint functions.
        self.stats["rejected"] += 1
        response = self._response(request, stun.Class.ERROR)
        response.attributes["ERROR-CODE"] = (420, "Unknown Attribute")
        value = b"".join(struct.pack("!H", t) for t in dict.fromkeys(unknown))
        data = bytes(response) + struct.pack("!HH", ATTR_UNKNOWN_ATTRIBUTES, len(value)) + value
        self._send_to_client(_signed(data, key), client)

    # -- requests (each returns the success attributes, or raises _Rejected) ----------------------

    def _existing(self, auth: _Auth, client: tuple[Transport, Address]) -> _Allocation:
        allocation = self._by_client.get(client)
        if allocation is None:
            raise _Rejected(437, "Allocation Mismatch: no allocation for this 5-tuple")
        if allocation.username != auth.username:
            raise _Rejected(441, "Wrong Credentials: the allocation belongs to another username")
        return allocation

    def _lifetime(self, requested: int | None) -> int:
        config = self._config
        if requested is None:
            return config.default_lifetime_s
        return max(config.default_lifetime_s, min(requested, config.max_lifetime_s))

    def _allocate(
        self,
        message: stun.Message,
        raw: list[tuple[int, bytes]],
        auth: _Auth,
        client: tuple[Transport, Address],
        now: float,
    ) -> dict[str, Any] | None:
        existing = self._by_client.get(client)
        if existing is not None:
            if existing.allocate_tid == message.transaction_id and existing.username == auth.username:
                self._send_to_client(existing.allocate_response, client)  # a retransmission
                return None
            raise _Rejected(437, "Allocation Mismatch: this 5-tuple already has an allocation")
        requested_transport = message.attributes.get("REQUESTED-TRANSPORT")
        if requested_transport is None:
            raise _Rejected(400, "Bad Request: REQUESTED-TRANSPORT is missing")
        if requested_transport >> 24 != UDP_PROTOCOL:
            raise _Rejected(442, "Unsupported Transport Protocol: only UDP relaying")
        types = {t: v for t, v in raw}
        even_port = types.get(ATTR_EVEN_PORT)
        token = types.get(ATTR_RESERVATION_TOKEN)
        family = types.get(ATTR_REQUESTED_ADDRESS_FAMILY)
        if token is not None and (family is not None or even_port is not None):
            raise _Rejected(400, "Bad Request: RESERVATION-TOKEN with EVEN-PORT or an address family")
        if even_port is not None and len(even_port) != 1:
            raise _Rejected(400, "Bad Request: EVEN-PORT")
        if token is not None and len(token) != 8:
            raise _Rejected(400, "Bad Request: RESERVATION-TOKEN")
        if family is not None:
            if len(family) != 4 or family[0] not in (FAMILY_IPV4, FAMILY_IPV6):
                raise _Rejected(400, "Bad Request: REQUESTED-ADDRESS-FAMILY")
            if family[0] != FAMILY_IPV4:
                raise _Rejected(440, "Address Family not Supported: IPv4 relays only")
        config = self._config
        reserve = even_port is not None and bool(even_port[0] & EVEN_PORT_RESERVE)
        reservation = None
        if token is not None:
            reservation = self._reservations.get(token)
            if reservation is None or reservation.name != auth.name or reservation.expires <= now:
                raise _Rejected(508, "Insufficient Capacity: no such reservation (expired or used)")
        else:
            needed = 2 if reserve else 1  # a reservation holds a port of the name's quota too
            if self._per_name.get(auth.name, 0) + needed > config.max_allocations_per_user:
                self._release_over_quota(auth.name, client[1][0])
                raise _Rejected(486, "Allocation Quota Reached")
            if len(self._by_id) + len(self._reservations) + needed > config.max_allocations:
                raise _Rejected(508, "Insufficient Capacity: server allocation limit")
        allocation_id = self._next_id
        extra = b""
        if reservation is not None:
            del self._reservations[reservation.token]
            self._per_name[auth.name] = self._per_name.get(auth.name, 1) - 1  # counted again below
            relayed = self._relays.claim(reservation.id, allocation_id)
            if relayed is None:
                raise _Rejected(508, "Insufficient Capacity: the reserved port is gone")
        elif reserve:
            reservation_id = self._next_reservation
            relayed = self._relays.open_pair(allocation_id, reservation_id)
            if relayed is None:
                raise _Rejected(508, "Insufficient Capacity: no relay port pair free")
            self._next_reservation += 1
            new_token = self._rng(8)
            while new_token in self._reservations:
                new_token = self._rng(8)
            self._reservations[new_token] = _Reservation(
                reservation_id, new_token, auth.name, client[1][0], now + config.reservation_lifetime_s
            )
            self._per_name[auth.name] = self._per_name.get(auth.name, 0) + 1
            extra = struct.pack("!HH", ATTR_RESERVATION_TOKEN, 8) + new_token
        else:
            relayed = self._relays.open(allocation_id, even_port is not None)
            if relayed is None:
                raise _Rejected(508, "Insufficient Capacity: no relay port free")
        self._next_id += 1
        lifetime = self._lifetime(message.attributes.get("LIFETIME"))
        allocation = _Allocation(
            allocation_id, client[0], client[1], auth.username, auth.name, relayed, now + lifetime
        )
        self._by_client[client] = allocation
        if client[0] is Transport.UDP:
            self._udp_clients[client[1]] = allocation
        self._by_id[allocation_id] = allocation
        self._per_name[auth.name] = self._per_name.get(auth.name, 0) + 1
        self.stats["allocations"] += 1
        self._schedule(allocation, allocation.expires)
        allocation.allocate_tid = message.transaction_id
        allocation.allocate_response = self._reply_success(
            message,
            {
                "XOR-RELAYED-ADDRESS": relayed,
                "LIFETIME": lifetime,
                "XOR-MAPPED-ADDRESS": (client[1][0].split("%", 1)[0], client[1][1]),
            },
            client,
            auth.key,
            extra,
        )
        self._events.append(
            AllocationCreated(allocation_id, auth.username, client[0], client[1], relayed, lifetime)
        )
        return None

    def _refresh(
        self,
        message: stun.Message,
        raw: list[tuple[int, bytes]],
        auth: _Auth,
        client: tuple[Transport, Address],
        now: float,
    ) -> dict[str, Any] | None:
        allocation = self._existing(auth, client)
        family = dict(raw).get(ATTR_REQUESTED_ADDRESS_FAMILY)
        if family is not None and (len(family) != 4 or family[0] != FAMILY_IPV4):
            raise _Rejected(443, "Peer Address Family Mismatch")
        requested = message.attributes.get("LIFETIME")
        if requested == 0:
            self._delete(allocation, "refresh")
            return {"LIFETIME": 0}
        lifetime = self._lifetime(requested)
        allocation.expires = now + lifetime
        self._schedule(allocation, allocation.expires)
        return {"LIFETIME": lifetime}

    def _check_peer(self, allocation: _Allocation, peer: Address) -> None:
        if _family(peer[0]) != _family(allocation.relayed[0]):
            raise _Rejected(443, "Peer Address Family Mismatch")
        address = ipaddress.ip_address(peer[0])
        if any(address in network for network in self._denied):
            raise _Rejected(403, "Forbidden: relaying to this peer address is not allowed")

    def _make_room(self, allocation: _Allocation, hosts: set[str], now: float) -> None:
        new = hosts - allocation.permissions.keys()
        if new and len(allocation.permissions) + len(new) > self._config.max_permissions_per_allocation:
            allocation.purge(now)
            if len(allocation.permissions) + len(new) > self._config.max_permissions_per_allocation:
                raise _Rejected(508, "Insufficient Capacity: too many permissions")

    def _create_permission(
        self,
        message: stun.Message,
        raw: list[tuple[int, bytes]],
        auth: _Auth,
        client: tuple[Transport, Address],
        now: float,
    ) -> dict[str, Any] | None:
        allocation = self._existing(auth, client)
        peers: list[Address] = []
        for kind, value in raw:
            if kind == ATTR_XOR_PEER_ADDRESS:
                try:
                    peers.append(stun.unpack_xor_address(value, message.transaction_id))
                except _PARSE_ERRORS as exc:
                    raise _Rejected(400, "Bad Request: XOR-PEER-ADDRESS") from exc
        if not peers:
            raise _Rejected(400, "Bad Request: XOR-PEER-ADDRESS is missing")
        for peer in peers:
            self._check_peer(allocation, peer)
        hosts = {peer[0] for peer in peers}
        self._make_room(allocation, hosts, now)
        expires = now + self._config.permission_lifetime_s
        for host in hosts:
            allocation.permissions[host] = expires
        self._schedule(allocation, expires)
        return {}

    def _channel_bind(
        self,
        message: stun.Message,
        raw: list[tuple[int, bytes]],
        auth: _Auth,
        client: tuple[Transport, Address],
        now: float,
    ) -> dict[str, Any] | None:
        allocation = self._existing(auth, client)
        number = message.attributes.get("CHANNEL-NUMBER")
        peer = message.attributes.get("XOR-PEER-ADDRESS")
        if number is None or peer is None:
            raise _Rejected(400, "Bad Request: CHANNEL-NUMBER and XOR-PEER-ADDRESS are required")
        if not CHANNEL_MIN <= number <= self._channel_max:
            raise _Rejected(400, f"Bad Request: channel number outside 0x4000-0x{self._channel_max:X}")
        allocation.purge(now)
        bound = allocation.channels.get(number)
        if bound is not None and bound.peer != peer:
            raise _Rejected(400, "Bad Request: channel is bound to another peer")
        other = allocation.channel_by_peer.get(peer)
        if other is not None and other != number:
            raise _Rejected(400, "Bad Request: peer is bound to another channel")
        self._check_peer(allocation, peer)
        self._make_room(allocation, {peer[0]}, now)
        channel_expires = now + self._config.channel_lifetime_s
        if bound is None:
            allocation.channels[number] = _Channel(peer, channel_expires)
            allocation.channel_by_peer[peer] = number
        else:
            bound.expires = channel_expires
        permission_expires = now + self._config.permission_lifetime_s
        allocation.permissions[peer[0]] = permission_expires
        self._schedule(allocation, permission_expires)
        return {}

    # -- bookkeeping ----------------------------------------------------------------------------------

    def _schedule(self, allocation: _Allocation, deadline: float) -> None:
        if allocation.scheduled is None or deadline < allocation.scheduled:
            allocation.scheduled = deadline
            heapq.heappush(self._heap, (deadline, allocation.id))

    def _uncount(self, name: str) -> None:
        left = self._per_name.get(name, 1) - 1
        if left > 0:
            self._per_name[name] = left
        else:
            self._per_name.pop(name, None)

    def _drop_reservation(self, reservation: _Reservation) -> None:
        if self._reservations.pop(reservation.token, None) is not None:
            self._uncount(reservation.name)
            self._relays.release(reservation.id)

    def _release_over_quota(self, name: str, host: str) -> None:
        """Free what ``name`` holds from the client IP ``host``: its allocations and port
        reservations (see the module docstring)."""
        for allocation in [a for a in self._by_id.values() if a.name == name and a.client[0] == host]:
            self._delete(allocation, "over-quota")
        for reservation in list(self._reservations.values()):
            if reservation.name == name and reservation.client_host == host:
                self._drop_reservation(reservation)

    def _delete(self, allocation: _Allocation, reason: str) -> None:
        if self._by_id.pop(allocation.id, None) is None:
            return
        self._by_client.pop((allocation.transport, allocation.client), None)
        if allocation.transport is Transport.UDP:
            self._udp_clients.pop(allocation.client, None)
        self._uncount(allocation.name)
        allocation.scheduled = None
        self._relays.close(allocation.id)
        self._events.append(AllocationDeleted(allocation.id, allocation.username, reason))


_Handler = Callable[
    [TurnServer, stun.Message, list[tuple[int, bytes]], _Auth, tuple[Transport, Address], float],
    dict[str, Any] | None,
]
_REQUEST_HANDLERS: dict[int, _Handler] = {
    stun.Method.ALLOCATE: TurnServer._allocate,
    stun.Method.REFRESH: TurnServer._refresh,
    stun.Method.CREATE_PERMISSION: TurnServer._create_permission,
    stun.Method.CHANNEL_BIND: TurnServer._channel_bind,
}
