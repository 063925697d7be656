"""The port mapping driver (``session.port_mapping``) on loopback: which protocol it asks when, with
small routers made of real sockets (a router that speaks only NAT-PMP, one that listens on nothing)."""

from __future__ import annotations

import asyncio
import random
import struct
from pathlib import Path
from typing import cast

import pytest

from dvrlink.protocol import natpmp, pcp
from dvrlink.protocol.port_mapping import MappingProtocol, PortMappingConfig
from dvrlink.session.port_mapping import UPNP_HEAD_START_S, PortMapping, default_gateway

EXTERNAL = bytes([100, 63, 0, 2])


def loopback_router() -> str:
    """A loopback address of its own for each test's router (the whole 127/8 is local)."""
    return f"127.{random.randrange(64, 250)}.{random.randrange(1, 250)}.1"


class NatPmpOnlyRouter(asyncio.DatagramProtocol):
    """Answers PCP with NAT-PMP's "unsupported version" (RFC 6887 9) and NAT-PMP properly."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.requests: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.requests.append(data)
        if data[0] == pcp.VERSION:
            self.transport.sendto(bytes([0, 0x80 | data[1], 0, 1]) + bytes(4), addr)
        elif data == natpmp.address_request():
            self.transport.sendto(struct.pack("!BBHI4s", 0, 128, 0, 77, EXTERNAL), addr)
        else:
            _, op, _, internal, suggested, lifetime = struct.unpack("!BBHHHI", data)
            answer = struct.pack("!BBHIHHI", 0, 128 + op, 0, 77, internal, suggested, lifetime)
            self.transport.sendto(answer, addr)


def test_a_natpmp_router_asked_in_pcp_is_asked_again_in_natpmp() -> None:
    asyncio.run(_a_natpmp_router_asked_in_pcp_is_asked_again_in_natpmp())


async def _a_natpmp_router_asked_in_pcp_is_asked_again_in_natpmp() -> None:
    gateway = loopback_router()
    loop = asyncio.get_running_loop()
    transport, router = await loop.create_datagram_endpoint(
        NatPmpOnlyRouter, local_addr=(gateway, natpmp.PORT)
    )
    try:
        config = PortMappingConfig(protocols=(MappingProtocol.PCP, MappingProtocol.NATPMP), gateway=gateway)
        mapping = await PortMapping.open(40001, config)
        assert await mapping.wait_mapped(10.0) == ("100.63.0.2", 40001)
        assert mapping.protocol is MappingProtocol.NATPMP
        assert mapping.stats.failures == ["pcp refused: UNSUPP_VERSION (the router speaks NAT-PMP) (1)"]
        assert await mapping.close() is True
        assert mapping.external is None
        versions = [r[0] for r in router.requests]
        assert versions[0] == pcp.VERSION and set(versions[1:]) == {natpmp.VERSION}
        assert struct.unpack("!BBHHHI", router.requests[-1])[5] == 0, "close sent lifetime 0"
    finally:
        transport.close()


def test_silence_on_pcp_gives_upnp_its_turn_at_once_when_nothing_listens() -> None:
    asyncio.run(_silence_on_pcp_gives_upnp_its_turn_at_once_when_nothing_listens())


async def _silence_on_pcp_gives_upnp_its_turn_at_once_when_nothing_listens() -> None:
    # Nothing listens on the router's 5351 or 1900: the kernel answers "port unreachable", PCP
    # fails at once, and UPnP starts without waiting out its head start.
    gateway = loopback_router()
    config = PortMappingConfig(
        protocols=(MappingProtocol.PCP, MappingProtocol.UPNP), gateway=gateway, upnp_timeout_s=0.3
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    mapping = await PortMapping.open(40002, config)
    assert await mapping.wait_mapped(10.0) is None
    failures = mapping.stats.failures
    assert len(failures) == 2 and failures[0].startswith("pcp: the router refused port 5351"), failures
    assert failures[1] == "upnp: no UPnP gateway answered an M-SEARCH within 0.3 s"
    assert loop.time() - started < UPNP_HEAD_START_S + 0.3, "UPnP waited out its head start"
    assert await mapping.close() is False


def test_no_gateway_or_no_protocol_asks_nothing() -> None:
    asyncio.run(_no_gateway_or_no_protocol_asks_nothing())


async def _no_gateway_or_no_protocol_asks_nothing() -> None:
    none = await PortMapping.open(40003, PortMappingConfig(protocols=(), gateway="192.0.2.1"))
    assert await none.wait_mapped(0.1) is None
    assert none.stats.failures == ["no port mapping: no protocol configured"]
    elsewhere = await PortMapping.open(40003, PortMappingConfig(gateway="127.0.0.1"), internal_ip="192.0.2.7")
    assert await elsewhere.wait_mapped(0.1) is None
    assert "192.0.2.7 is not on the way to the gateway 127.0.0.1" in elsewhere.stats.failures[0]
    with pytest.raises(ValueError, match=r"ports are 1\.\.65535"):
        await PortMapping.open(0, PortMappingConfig())


def test_default_gateway_is_read_from_the_route_table(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    assert default_gateway(table) == "192.168.1.1"
    table.write_text("Iface\tDestination\tGateway\nppp0\t00000000\t00000000\n")  # PPP: no gateway
    assert default_gateway(table) is None
    assert default_gateway(tmp_path / "missing") is None
