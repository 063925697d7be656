"""The TURN relay on loopback with real sockets: aioice's own TURN client over UDP and TCP, TCP
stream framing, and coturn's turnutils_uclient as an interop peer."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from support.aio import run

from dvrlink.broker.turn_credentials import long_term_key, make_credentials
from dvrlink.broker.turn_link import TurnLink, TurnLinkConfig, start_turn_link
from dvrlink.broker.turn_server import AllocationCreated, AllocationDeleted, TurnConfig, TurnEvent

SECRET = "link-secret"
LOOPBACK = "127.0.0.1"
WAIT = 10.0


@asynccontextmanager
async def turn_relay(**overrides: Any) -> AsyncIterator[tuple[TurnLink, asyncio.Queue[TurnEvent]]]:
    events: asyncio.Queue[TurnEvent] = asyncio.Queue()
    config = TurnConfig(secret=SECRET, denied_peer_networks=(), **overrides)
    link_config = TurnLinkConfig(
        host=LOOPBACK, udp_port=0, tcp_port=0, relay_host=LOOPBACK, relay_port_min=0, relay_port_max=0
    )
    link = await start_turn_link(config, link_config, on_event=events.put_nowait)
    try:
        yield link, events
    finally:
        link.close()
        await link.wait_closed()


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the transport is gone (for a TURN endpoint: after its allocation was deleted)."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait((data, (addr[0], addr[1])))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def next_event(events: asyncio.Queue[TurnEvent], kind: type[TurnEvent]) -> TurnEvent:
    while True:
        event = await asyncio.wait_for(events.get(), WAIT)
        if isinstance(event, kind):
            return event


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_aioice_client_relays_both_ways(transport: str) -> None:
    async def main() -> None:
        async with turn_relay() as (link, events):
            loop = asyncio.get_running_loop()
            peer_transport, peer = await loop.create_datagram_endpoint(Inbox, local_addr=(LOOPBACK, 0))
            peer_address = peer_transport.get_extra_info("sockname")[:2]
            username, password = make_credentials(SECRET, "viewer-1", time.time(), 600)
            server = link.udp_address if transport == "udp" else link.tcp_address
            assert server is not None
            turn, client = await asyncio.wait_for(
                create_turn_endpoint(Inbox, server, username, password, transport=transport), WAIT
            )
            try:
                created = await next_event(events, AllocationCreated)
                assert isinstance(created, AllocationCreated)
                relayed = turn.get_extra_info("sockname")
                assert relayed == created.relayed
                for i in range(5):
                    payload = b"to-peer %d " % i + bytes(i * 300)
                    turn.sendto(payload, peer_address)
                    data, source = await asyncio.wait_for(peer.queue.get(), WAIT)
                    assert (data, source) == (payload, relayed)
                    answer = b"to-client %d " % i + bytes(i * 301)
                    peer_transport.sendto(answer, relayed)
                    data, source = await asyncio.wait_for(client.queue.get(), WAIT)
                    assert (data, source) == (answer, peer_address)
            finally:
                turn.close()
                peer_transport.close()
            deleted = await next_event(events, AllocationDeleted)
            assert isinstance(deleted, AllocationDeleted)
            assert deleted.reason in ("refresh", "disconnected")
            assert link.core.allocation_count == 0
            assert link.errors == 0

    run(main)


def test_wrong_password_is_refused_over_the_link() -> None:
    async def main() -> None:
        async with turn_relay() as (link, _):
            username, _password = make_credentials(SECRET, "viewer-1", time.time(), 600)
            with pytest.raises(Exception, match="401"):
                await asyncio.wait_for(
                    create_turn_endpoint(Inbox, link.udp_address, username, "wrong", transport="udp"), WAIT
                )
            assert link.core.allocation_count == 0

    run(main)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await asyncio.wait_for(reader.readexactly(4), WAIT)
    length = struct.unpack("!H", header[2:4])[0]
    return header + await asyncio.wait_for(reader.readexactly(16 + length), WAIT)


def test_tcp_stream_is_reassembled_across_reads_and_garbage_closes_it() -> None:
    async def main() -> None:
        async with turn_relay() as (link, _):
            tcp = link.tcp_address
            assert tcp is not None
            reader, writer = await asyncio.open_connection(*tcp)
            requests = [
                stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
                for _ in range(3)
            ]
            stream = b"".join(bytes(r) for r in requests)
            writer.write(stream[:1])  # one byte, then the rest in odd pieces
            await writer.drain()
            for start in range(1, len(stream), 7):
                writer.write(stream[start : start + 7])
                await writer.drain()
            local = writer.get_extra_info("sockname")
            for request in requests:
                reply = stun.parse_message(await read_frame(reader))
                assert reply.transaction_id == request.transaction_id
                assert reply.attributes["XOR-MAPPED-ADDRESS"] == (local[0], local[1])
            writer.write(b"\xff" * 8)  # neither STUN nor ChannelData
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
            writer.close()
            # the UDP side still answers
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                loop = asyncio.get_running_loop()
                await loop.sock_connect(sock, link.udp_address)
                await loop.sock_sendall(sock, bytes(requests[0]))
                answer = await asyncio.wait_for(loop.sock_recv(sock, 2048), WAIT)
                assert stun.parse_message(answer).transaction_id == requests[0].transaction_id
            finally:
                sock.close()

    run(main)


class RawClient:
    """A TURN client on a bare non-blocking UDP socket, so a test can send any frame it likes."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((LOOPBACK, 0))
        self.sock.connect(server)
        self.username, self.password = make_credentials(SECRET, "raw", time.time(), 600)
        self.key = b""
        self.nonce = b""

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def receive(self) -> bytes:
        return await asyncio.wait_for(self.loop.sock_recv(self.sock, 2048), WAIT)

    async def request(self, method: stun.Method, attributes: dict[str, Any]) -> stun.Message:
        message = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        message.attributes.update(attributes)
        if self.key:
            message.attributes.update({"USERNAME": self.username, "REALM": "dvrlink", "NONCE": self.nonce})
            message.add_message_integrity(self.key)
        await self.send(bytes(message))
        reply = stun.parse_message(await self.receive())
        assert reply.transaction_id == message.transaction_id
        return reply

    async def allocate(self) -> tuple[str, int]:
        challenge = await self.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 0x11000000})
        self.nonce = challenge.attributes["NONCE"]
        self.key = long_term_key(self.username, "dvrlink", self.password)
        reply = await self.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 0x11000000})
        assert reply.message_class == stun.Class.RESPONSE, reply
        relayed = reply.attributes["XOR-RELAYED-ADDRESS"]
        return (str(relayed[0]), int(relayed[1]))

    def close(self) -> None:
        self.sock.close()


def test_hot_paths_drop_unbound_channels_and_unpermitted_peers() -> None:
    async def main() -> None:
        async with turn_relay() as (link, _):
            loop = asyncio.get_running_loop()
            peer_transport, peer = await loop.create_datagram_endpoint(Inbox, local_addr=(LOOPBACK, 0))
            stranger_transport, _ = await loop.create_datagram_endpoint(Inbox, local_addr=("127.0.0.2", 0))
            side_transport, _ = await loop.create_datagram_endpoint(Inbox, local_addr=(LOOPBACK, 0))
            peer_address = peer_transport.get_extra_info("sockname")[:2]
            client = RawClient(link.udp_address)
            try:
                relayed = await client.allocate()
                reply = await client.request(
                    stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": peer_address}
                )
                assert reply.message_class == stun.Class.RESPONSE, reply
                # client -> peer: a channel that is not bound is dropped, the bound one relays; more
                # frames than one wake-up reads arrive all and in order
                await client.send(struct.pack("!HH", 0x4002, 7) + b"unbound\x00")
                frames = [b"frame %03d" % i for i in range(150)]
                for frame in frames:
                    await client.send(struct.pack("!HH", 0x4001, len(frame)) + frame)
                for frame in frames:
                    data, source = await asyncio.wait_for(peer.queue.get(), WAIT)
                    assert (data, source) == (frame, relayed)
                # peer -> client: an IP without a permission is dropped; the bound peer comes as
                # ChannelData, another port of its IP as a Data indication
                stranger_transport.sendto(b"intruder", relayed)
                peer_transport.sendto(b"answer", relayed)
                side_transport.sendto(b"aside", relayed)
                assert await client.receive() == struct.pack("!HH", 0x4001, 6) + b"answer"
                indication = stun.parse_message(await client.receive())
                assert indication.message_method == stun.Method.DATA
                assert indication.attributes["DATA"] == b"aside"
                assert indication.attributes["XOR-PEER-ADDRESS"] == side_transport.get_extra_info("sockname")
                stats = link.core.stats
                assert (stats["dropped"], stats["peer_dropped"]) == (1, 1)
                assert (stats["to_peer"], stats["from_peer"]) == (150, 2)
                assert link.errors == 0
            finally:
                client.close()
                for transport in (peer_transport, stranger_transport, side_transport):
                    transport.close()

    run(main)


def test_link_config_checks() -> None:
    with pytest.raises(ValueError, match="relay_public_host"):
        TurnLinkConfig(relay_host="0.0.0.0")
    with pytest.raises(ValueError, match="not an IP literal"):
        TurnLinkConfig(host="localhost", relay_host=LOOPBACK)
    with pytest.raises(ValueError, match="relay ports"):
        TurnLinkConfig(relay_host=LOOPBACK, relay_port_min=5000, relay_port_max=4000)
    assert TurnLinkConfig(relay_host="0.0.0.0", relay_public_host="192.0.2.1").relay_public_host


def test_relay_ports_come_from_the_configured_range() -> None:
    async def main() -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((LOOPBACK, 0))
        base = probe.getsockname()[1]
        probe.close()
        low, high = (base, base + 15) if base < 65000 else (base - 15, base)
        link = await start_turn_link(
            TurnConfig(secret=SECRET, denied_peer_networks=()),
            TurnLinkConfig(
                host=LOOPBACK,
                udp_port=0,
                tcp_port=None,
                relay_host=LOOPBACK,
                relay_port_min=low,
                relay_port_max=high,
            ),
        )
        try:
            assert link.tcp_address is None
            username, password = make_credentials(SECRET, "viewer-2", time.time(), 600)
            turn, client = await asyncio.wait_for(
                create_turn_endpoint(Inbox, link.udp_address, username, password), WAIT
            )
            try:
                assert low <= turn.get_extra_info("sockname")[1] <= high
            finally:
                turn.close()
                # the client deletes its allocation before its transport is gone
                await asyncio.wait_for(client.closed, WAIT)
        finally:
            link.close()
            await link.wait_closed()

    run(main)


# -- coturn interop ------------------------------------------------------------------------------------

UCLIENT = shutil.which("turnutils_uclient")
PEER_TOOL = shutil.which("turnutils_peer")
needs_coturn = pytest.mark.skipif(
    UCLIENT is None or PEER_TOOL is None,
    reason="coturn's turnutils_uclient and turnutils_peer are missing: install the Debian package "
    "coturn (make system-packages as root)",
)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


async def wait_until_udp_echo(port: int) -> None:
    """turnutils_peer echoes datagrams; wait (bounded) until it does."""
    loop = asyncio.get_running_loop()
    transport, inbox = await loop.create_datagram_endpoint(Inbox, remote_addr=(LOOPBACK, port))
    try:
        deadline = loop.time() + WAIT
        while loop.time() < deadline:
            transport.sendto(b"ping")
            try:
                await asyncio.wait_for(inbox.queue.get(), 0.1)
                return
            except TimeoutError:
                continue
        raise AssertionError(f"turnutils_peer did not start echoing on {LOOPBACK}:{port}")
    finally:
        transport.close()


@pytest.mark.integration
@pytest.mark.slow
@needs_coturn
def test_coturn_uclient_relays_through_our_server() -> None:
    async def main() -> None:
        async with turn_relay() as (link, _):
            peer_port = free_udp_port()
            assert PEER_TOOL is not None and UCLIENT is not None
            peer = await asyncio.create_subprocess_exec(
                PEER_TOOL,
                "-L",
                LOOPBACK,
                "-p",
                str(peer_port),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await wait_until_udp_echo(peer_port)
                tcp = link.tcp_address
                assert tcp is not None
                variants = {
                    "udp channels": ["-p", str(link.udp_address[1])],
                    "udp send indications": ["-s", "-p", str(link.udp_address[1])],
                    "tcp channels": ["-t", "-p", str(tcp[1])],
                }
                runs = [
                    asyncio.create_subprocess_exec(
                        UCLIENT,
                        *flags,
                        "-c",  # no RTCP allocation pair
                        "-n",
                        "30",
                        "-l",
                        "170",
                        "-m",
                        "1",
                        "-e",
                        LOOPBACK,
                        "-r",
                        str(peer_port),
                        "-u",
                        "uclient",
                        "-W",  # REST credentials from the shared secret, like use-auth-secret
                        SECRET,
                        LOOPBACK,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.STDOUT,
                    )
                    for flags in variants.values()
                ]
                processes = [await r for r in runs]
                outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in processes)), 45)
                for name, process, (out, _) in zip(variants, processes, outputs, strict=True):
                    text = out.decode(errors="replace")
                    assert process.returncode == 0, (name, text)
                    match = re.search(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", text, re.MULTILINE)
                    assert match, (name, text)
                    assert match.group(1) == match.group(2) == "30", (name, text)
                    assert "Total lost packets 0 (0.000000%)" in text, (name, text)
            finally:
                peer.kill()
                await peer.wait()
            assert link.core.stats["to_peer"] >= 90
            assert link.core.stats["from_peer"] >= 90
            assert link.errors == 0

    run(main, 90)
