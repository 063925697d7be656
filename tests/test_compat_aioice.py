"""Guards of ``dvrlink.compat.aioice_compat``: every aioice private name dvrlink uses, on real
aioice objects over loopback. If one fails after an aioice upgrade, its message names the version
and the name that moved; adapt the compat module, or keep aioice inside the range pyproject.toml
pins."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from importlib import metadata

import aioice
import pytest
from aioice.turn import TurnClientUdpProtocol, TurnTransport

from dvrlink.compat import InternalsMoved, aioice_compat

LOOPBACK = "127.0.0.1"
BOUND_S = 30.0
"""Generous bound on each test's asyncio work (the machine may be busy)."""
VERSION = metadata.version("aioice")


def moved_message(name: str) -> str:
    return rf"aioice {re.escape(VERSION)} has no {re.escape(name)}"


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), BOUND_S)

    asyncio.run(bounded())


async def connected_pair() -> tuple[aioice.Connection, aioice.Connection]:
    """Two aioice connections with host candidates on loopback, their ICE checks done."""
    a, b = aioice.Connection(ice_controlling=True), aioice.Connection(ice_controlling=False)
    for ice in (a, b):
        await aioice_compat.gather_host_candidates(ice, [LOOPBACK])
    for ice, peer in ((a, b), (b, a)):
        ice.remote_username, ice.remote_password = peer.local_username, peer.local_password
        for candidate in peer.local_candidates:
            await ice.add_remote_candidate(candidate)
        await ice.add_remote_candidate(None)
    await asyncio.gather(a.connect(), b.connect())
    return a, b


def test_host_candidates_are_gathered_without_stun_and_only_once() -> None:
    """``_local_candidates``, ``_local_candidates_start``, ``_local_candidates_end``."""

    async def main() -> None:
        ice = aioice.Connection(ice_controlling=True)
        try:
            await aioice_compat.gather_host_candidates(ice, [LOOPBACK])
            first = ice.local_candidates
            assert [(c.host, c.type) for c in first] == [(LOOPBACK, "host")], first
            await aioice_compat.gather_host_candidates(ice, [LOOPBACK])
            assert ice.local_candidates == first, "a second gathering added candidates"
            sockets = aioice_compat.ice_sockets(ice)
            assert [p.local_candidate for p in sockets] == first, "``_protocols``: one socket per candidate"
        finally:
            await ice.close()

    run(main)


def test_the_nominated_pair_is_none_before_the_checks_then_the_loopback_pair() -> None:
    """``_nominated``: what the session labels and sends on."""

    async def main() -> None:
        a = aioice.Connection(ice_controlling=True)
        assert aioice_compat.nominated_pair(a) is None
        await a.close()
        a, b = await connected_pair()
        try:
            for ice in (a, b):
                pair = aioice_compat.nominated_pair(ice)
                assert pair is not None, f"no nominated pair after connect: {ice}"
                assert pair.local_candidate in ice.local_candidates
                assert pair.remote_candidate.host == LOOPBACK
                assert pair.protocol in aioice_compat.ice_sockets(ice)
        finally:
            await asyncio.gather(a.close(), b.close())

    run(main)


def test_the_tie_breaker_is_the_connections_64_bit_value() -> None:
    """``_tie_breaker`` (RFC 8445 §7.1.1: a 64-bit random number, fixed for the connection)."""
    ice = aioice.Connection(ice_controlling=True)
    value = aioice_compat.tie_breaker(ice)
    assert 0 <= value < 1 << 64 and aioice_compat.tie_breaker(ice) == value
    other = aioice.Connection(ice_controlling=True)
    assert aioice_compat.tie_breaker(other) != value, "two connections drew the same tie-breaker"


def test_channel_data_goes_out_at_once_on_a_bound_channel() -> None:
    """``TurnTransport.__inner_protocol`` and the TURN client's ``_send``, ``peer_to_channel``,
    ``channel_refresh_at``: a bound channel sends ChannelData (RFC 8656 §12.4) synchronously;
    an unbound or stale one leaves it to ``TurnTransport.sendto``."""

    async def main() -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind((LOOPBACK, 0))
        server.settimeout(BOUND_S)
        loop = asyncio.get_running_loop()
        address = server.getsockname()
        _, inner = await loop.create_datagram_endpoint(
            lambda: TurnClientUdpProtocol(address, "user", "pass", lifetime=600, channel_refresh_time=500),
            remote_addr=address,
        )
        turn = TurnTransport(inner)
        peer = ("192.0.2.7", 40000)
        try:
            assert aioice_compat.turn_client(turn) is inner
            assert not aioice_compat.send_channel_data(turn, b"early", peer), "sent on an unbound channel"
            inner.peer_to_channel[peer] = 0x4001
            inner.channel_refresh_at[0x4001] = time.time() - 1
            stale = aioice_compat.send_channel_data(turn, b"stale", peer)
            assert not stale, "sent on a channel due a refresh"
            inner.channel_refresh_at[0x4001] = time.time() + 60
            assert aioice_compat.send_channel_data(turn, b"hello", peer)
            data = await loop.run_in_executor(None, server.recv, 100)
            assert data == struct.pack("!HH", 0x4001, 5) + b"hello", data
        finally:
            inner.transport.close()
            server.close()

    run(main)


@pytest.mark.parametrize("name", ["_local_candidates", "_local_candidates_start", "_local_candidates_end"])
def test_missing_gathering_names_fail_loudly(name: str) -> None:
    async def main() -> None:
        ice = aioice.Connection(ice_controlling=True)
        delattr(ice, name)
        with pytest.raises(InternalsMoved, match=moved_message(f"Connection.{name}")):
            await aioice_compat.gather_host_candidates(ice, [LOOPBACK])

    run(main)


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("_protocols", aioice_compat.ice_sockets),
        ("_nominated", aioice_compat.nominated_pair),
        ("_tie_breaker", aioice_compat.tie_breaker),
    ],
)
def test_missing_connection_names_fail_loudly(name: str, read: Callable[[aioice.Connection], object]) -> None:
    ice = aioice.Connection(ice_controlling=True)
    delattr(ice, name)
    with pytest.raises(InternalsMoved, match=moved_message(f"Connection.{name}")):
        read(ice)


@pytest.mark.parametrize("name", ["_TurnTransport__inner_protocol", "_send", "peer_to_channel", "transport"])
def test_missing_turn_names_fail_loudly(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = TurnClientUdpProtocol((LOOPBACK, 3478), "user", "pass", lifetime=600, channel_refresh_time=500)
    inner.transport = asyncio.DatagramTransport()  # what connection_made would give it
    turn = TurnTransport(inner)
    where = "TurnClientMixin"
    if name == "_TurnTransport__inner_protocol":
        delattr(turn, name)
        where = "TurnTransport"
    elif name == "_send":
        monkeypatch.delattr(TurnClientUdpProtocol, name)
    else:
        delattr(inner, name)
    with pytest.raises(InternalsMoved, match=moved_message(f"{where}.{name}")):
        aioice_compat.send_channel_data(turn, b"x", ("192.0.2.7", 40000))
