"""A loopback lab for the connectivity layer and the session runners: the broker's TURN relay
in-process, a STUN responder, and a viewer and a device that exchange their parameters directly
(no broker). Real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from dvrlink.broker.turn_credentials import make_credentials
from dvrlink.broker.turn_link import TurnLink, TurnLinkConfig, start_turn_link
from dvrlink.broker.turn_server import ToPeer, TurnConfig
from dvrlink.protocol.signalling import PathPolicy, TurnServer
from dvrlink.protocol.stun import binding_response
from dvrlink.session.connectivity import Connectivity
from dvrlink.session.runner import DeviceRunner, StreamCallback, ViewerRunner
from support.session import Keys, make_device, make_viewer

SECRET = "connectivity-secret"
LOOPBACK = "127.0.0.1"
WAIT = 10.0
CHUNK = 64 * 1024


class StunResponder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = binding_response(data, (addr[0], addr[1]))
        if reply is not None and self.transport is not None:
            self.answered += 1
            self.transport.sendto(reply, addr)


@dataclass
class Relayed:
    """What the TURN relay forwarded to peers: bytes, datagrams, and any hit of a watched marker."""

    marker: bytes | None = None
    datagrams: int = 0
    bytes: int = 0
    marker_hits: int = 0


@dataclass
class Lab:
    stun: tuple[str, int]
    turn: TurnLink | None
    responder: StunResponder
    relayed: Relayed = field(default_factory=Relayed)

    def turn_servers(
        self, name: str, transport: str = "udp", password: str | None = None
    ) -> list[TurnServer]:
        if self.turn is None:
            return []
        username, good = make_credentials(SECRET, name, time.time(), 600)
        address = self.turn.udp_address if transport == "udp" else self.turn.tcp_address
        assert address is not None
        return [TurnServer(address[0], address[1], transport, username, password or good)]


@asynccontextmanager
async def lab(with_turn: bool = True, marker: bytes | None = None) -> AsyncIterator[Lab]:
    loop = asyncio.get_running_loop()
    stun_transport, responder = await loop.create_datagram_endpoint(StunResponder, local_addr=(LOOPBACK, 0))
    stun_address = stun_transport.get_extra_info("sockname")[:2]
    turn: TurnLink | None = None
    relayed = Relayed(marker=marker)
    if with_turn:
        turn = await start_turn_link(
            TurnConfig(secret=SECRET, denied_peer_networks=()),
            TurnLinkConfig(
                host=LOOPBACK, udp_port=0, tcp_port=0, relay_host=LOOPBACK, relay_port_min=0, relay_port_max=0
            ),
        )
        core = turn.core

        def saw(data: bytes) -> None:
            relayed.datagrams += 1
            relayed.bytes += len(data)
            if marker is not None and marker in data:
                relayed.marker_hits += 1

        # Relayed data leaves the core two ways: queued (TCP clients, Send indications) and
        # handed straight back to the link by the UDP hot path (ChannelData on a bound channel).
        original = core.datagrams_to_send

        def watched() -> list[Any]:
            out = original()
            for data, _, via in out:
                if isinstance(via, ToPeer):
                    saw(data)
            return out

        fast = core.receive_udp

        def watched_fast(data: bytes, address: Any, now: float) -> Any:
            result = fast(data, address, now)
            if result is not None:
                saw(result[1])
            return result

        core.datagrams_to_send = watched  # type: ignore[method-assign]
        core.receive_udp = watched_fast  # type: ignore[method-assign]
    try:
        yield Lab((str(stun_address[0]), int(stun_address[1])), turn, responder, relayed)
    finally:
        if turn is not None:
            turn.close()
            await turn.wait_closed()
        stun_transport.close()


@dataclass
class Session:
    keys: Keys
    viewer: ViewerRunner
    device: DeviceRunner

    async def close(self) -> None:
        await self.viewer.close()
        await self.device.close()


@asynccontextmanager
async def session(
    the_lab: Lab,
    policy: PathPolicy,
    *,
    on_stream: StreamCallback | None = None,
    authorised: bool = True,
    pin: str | None = None,
    turn_transport: str = "udp",
    trickle_direct: bool = False,
    device_reads_as_dvrlinkd: bool = False,
) -> AsyncIterator[Session]:
    """A viewer and a device session over two ``Connectivity``; the device starts first.

    ``trickle_direct``: each side first gets only the other's relay candidate; the test hands
    over the rest with ``trade_direct_candidates``. ``device_reads_as_dvrlinkd``: the device
    reads its ICE sockets as dvrlinkd does (one stamped datagram per read, no UDP GRO).
    """
    keys = Keys()
    device_conn = await Connectivity.prepare(
        False, the_lab.stun, the_lab.turn_servers("DL-0001-0002", turn_transport), policy,
        host_addresses=[LOOPBACK], coalesced_reads=not device_reads_as_dvrlinkd,
    )  # fmt: skip
    viewer_conn = await Connectivity.prepare(
        True,
        the_lab.stun,
        the_lab.turn_servers("account-1", turn_transport),
        policy,
        host_addresses=[LOOPBACK],
    )
    device = DeviceRunner(make_device(keys.device, lambda raw: authorised), device_conn, on_stream=on_stream)
    viewer = ViewerRunner(make_viewer(keys.viewer, pin or keys.device_fp), viewer_conn)
    the_session = Session(keys, viewer, device)
    try:
        viewer_candidates = viewer_conn.local_candidates()
        device_candidates = device_conn.local_candidates()
        if trickle_direct:
            await device_conn.start(
                viewer_conn.local_ufrag,
                viewer_conn.local_pwd,
                relays(viewer_candidates),
                end_of_candidates=False,
            )
            await viewer_conn.start(
                device_conn.local_ufrag,
                device_conn.local_pwd,
                relays(device_candidates),
                end_of_candidates=False,
            )
        else:
            await device_conn.start(viewer_conn.local_ufrag, viewer_conn.local_pwd, viewer_candidates)
            await viewer_conn.start(device_conn.local_ufrag, device_conn.local_pwd, device_candidates)
        yield the_session
    finally:
        await the_session.close()


def relays(candidates: Sequence[str]) -> list[str]:
    return [c for c in candidates if " typ relay" in c]


async def trade_direct_candidates(s: Session) -> None:
    """Trickle each side's host and server-reflexive candidates to the other, then end them."""
    viewer_conn, device_conn = s.viewer.connectivity, s.device.connectivity
    viewer_direct = [c for c in viewer_conn.local_candidates() if c not in relays([c])]
    device_direct = [c for c in device_conn.local_candidates() if c not in relays([c])]
    await device_conn.add_remote_candidates(viewer_direct, end=True)
    await viewer_conn.add_remote_candidates(device_direct, end=True)


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def write_all(stream: Any, data: bytes, midway: Callable[[], Awaitable[None]] | None = None) -> None:
    """Write ``data`` in chunks with drain, calling ``midway`` once at half, then FIN."""
    half = len(data) // 2
    called = midway is None
    for offset in range(0, len(data), CHUNK):
        stream.write(data[offset : offset + CHUNK])
        await stream.drain()
        if not called and offset + CHUNK >= half:
            called = True
            assert midway is not None
            await midway()
    stream.write_eof()


async def read_digest(stream: Any) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    while chunk := await stream.read(CHUNK):
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def candidate_types(candidates: Sequence[str]) -> list[str]:
    return [c.split(" typ ")[1].split()[0] for c in candidates]
