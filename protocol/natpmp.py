"""NAT-PMP (RFC 6886) external-address and UDP mapping requests and responses, and NAT-PMP's
retransmission schedule. Sans-I/O. ``NatPmpWire`` plugs into ``protocol.port_mapping.MappingCore``.

Layouts (RFC 6886 3.2, 3.3; big-endian)::

    address request  (2 bytes):  version=0 | opcode=0
    address response (12 bytes): version=0 | opcode=128 | result(2) | epoch(4) | external IPv4(4)
    map request      (12 bytes): version=0 | opcode=1 (UDP) | reserved(2) | internal port(2)
                                 | suggested external port(2) | lifetime(4)
    map response     (16 bytes): version=0 | opcode=129 | result(2) | epoch(4) | internal port(2)
                                 | external port(2) | lifetime(4)

A map response has no address, so every request goes out together with an address request and
the core hears of a grant once both answers are in. The address request and the numbers live in
``protocol/port_mapping_wire.py``, which netcheck's gateway probe shares.
"""

from __future__ import annotations

import ipaddress
import struct

from dvrlink.protocol.port_mapping import Granted, MappingProtocol, Refused, Reply
from dvrlink.protocol.port_mapping_wire import NATPMP_VERSION as VERSION
from dvrlink.protocol.port_mapping_wire import OP_ADDRESS, OP_MAP_UDP, PORT, RESPONSE_BIT, address_request

__all__ = [
    "INITIAL_RT_S",
    "MAX_ATTEMPTS",
    "OP_ADDRESS",
    "OP_MAP_UDP",
    "PORT",
    "RESPONSE_BIT",
    "RESULTS",
    "TRANSIENT",
    "VERSION",
    "NatPmpWire",
    "address_request",
    "map_request",
]

INITIAL_RT_S = 0.25
"""RFC 6886 3.1: the first retransmission after 250 ms, then doubling."""
MAX_ATTEMPTS = 9
"""RFC 6886 3.1: up to 9 transmissions (the last wait 64 s)."""

_ADDRESS_RESPONSE = struct.Struct("!BBHI4s")
_MAP_REQUEST = struct.Struct("!BBHHHI")
_MAP_RESPONSE = struct.Struct("!BBHIHHI")

RESULTS: dict[int, str] = {
    0: "SUCCESS",
    1: "UNSUPPORTED_VERSION",
    2: "NOT_AUTHORIZED",
    3: "NETWORK_FAILURE",
    4: "OUT_OF_RESOURCES",
    5: "UNSUPPORTED_OPCODE",
}
TRANSIENT = frozenset({3, 4})


def map_request(internal_port: int, suggested_port: int, lifetime_s: int) -> bytes:
    """A 12-byte UDP map request (lifetime 0 deletes).

    Raises:
        ValueError: a port or the lifetime is out of range.
    """
    if not 0 < internal_port <= 0xFFFF or not 0 <= suggested_port <= 0xFFFF:
        raise ValueError(
            f"ports must be 1..65535 (internal) and 0..65535, got {internal_port}, {suggested_port}"
        )
    if not 0 <= lifetime_s <= 0xFFFFFFFF:
        raise ValueError(f"lifetime must be 0..{0xFFFFFFFF} s, got {lifetime_s}")
    return _MAP_REQUEST.pack(VERSION, OP_MAP_UDP, 0, internal_port, suggested_port, lifetime_s)


class NatPmpWire:
    """NAT-PMP mapping of one internal UDP port, for ``MappingCore``."""

    protocol = MappingProtocol.NATPMP

    def __init__(
        self,
        internal_port: int,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        initial_rt_s: float = INITIAL_RT_S,
        suggested_port: int | None = None,
    ) -> None:
        self.internal_port = internal_port
        self.max_attempts = max_attempts
        self.initial_rt_s = initial_rt_s
        self.suggested_port = internal_port if suggested_port is None else suggested_port
        self.external_ip: str | None = None
        """The router's external address, once it answered."""
        self._map: tuple[int, int, int] | None = None
        """(external port, lifetime, epoch) of a map answer waiting for the address answer."""
        self._deleting = False

    def requests(self, lifetime_s: int) -> list[bytes]:
        """An address request and a map request (a deletion needs no address)."""
        self._deleting = lifetime_s == 0
        self._map = None
        suggested = 0 if self._deleting else self.suggested_port
        request = map_request(self.internal_port, suggested, lifetime_s)
        return [request] if self._deleting else [address_request(), request]

    def parse(self, data: bytes) -> Reply | None:
        """The answer to our request once complete, or None (partial, or not ours).

        Raises:
            ValueError: not a NAT-PMP response (the core counts it as ignored).
        """
        if len(data) < 4 or data[0] != VERSION or not data[1] & RESPONSE_BIT:
            raise ValueError("not a NAT-PMP response")
        opcode = data[1] & 0x7F
        result = int.from_bytes(data[2:4], "big")
        if result != 0:
            if opcode not in (OP_ADDRESS, OP_MAP_UDP):
                return None
            name = RESULTS.get(result, f"result {result}")
            return Refused(result, name, 0, transient=result in TRANSIENT, other_version=result == 1)
        if opcode == OP_ADDRESS and len(data) >= _ADDRESS_RESPONSE.size:
            *_, epoch, packed = _ADDRESS_RESPONSE.unpack_from(data)
            self.external_ip = str(ipaddress.IPv4Address(packed))
        elif opcode == OP_MAP_UDP and len(data) >= _MAP_RESPONSE.size:
            _, _, _, epoch, internal, external, lifetime = _MAP_RESPONSE.unpack_from(data)
            if internal != self.internal_port:
                return None
            if self._deleting:
                return Granted(("0.0.0.0", 0), 0, epoch)
            self._map = (external, lifetime, epoch)
            self.suggested_port = external  # renewals ask for the port granted
        else:
            raise ValueError(f"NAT-PMP opcode {opcode} answer of {len(data)} bytes")
        if self._map is None or self.external_ip is None:
            return None
        external, lifetime, epoch = self._map
        return Granted((self.external_ip, external), lifetime, epoch)

    def next_delay(self, previous: float | None) -> float:
        """RFC 6886 3.1: 250 ms, doubling."""
        return self.initial_rt_s if previous is None else 2 * previous
