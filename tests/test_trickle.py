"""Trickle ICE pieces on their own: server-reflexive candidates come after ``prepare`` (never
waited for), the candidate-update layout, and the device's reply to a candidate invite (only
new candidates, held while there are none, end-of-candidates once).

The end-to-end trickle through the broker and the daemon is in ``test_daemon_sessions.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from aioice import stun
from aioice.candidate import Candidate
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.aio import run
from support.connectivity import LOOPBACK
from support.waiting import wait_until_async

from dvrlink.daemon.config import SessionsConfig
from dvrlink.daemon.services import ServicesConfig
from dvrlink.daemon.session_server import SessionServer, _Entry
from dvrlink.protocol.presence_events import InviteReceived
from dvrlink.protocol.presence_wire import INVITE_MALFORMED, INVITE_OK, MAX_INVITE_BODY
from dvrlink.protocol.signalling import (
    INVITE_GONE,
    INVITE_KIND_CANDIDATES,
    CandidateUpdate,
    PathPolicy,
    fit_candidates,
)
from dvrlink.session.connectivity import Connectivity

WAIT = 10.0
MAPPED = ("198.51.100.7", 41000)


class HeldStun(asyncio.DatagramProtocol):
    """A STUN server that holds every Binding request until ``release``, then answers each with
    ``MAPPED`` (as a NAT in front of the client would): a stand-in for a slow or blocked path."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.held: list[tuple[bytes, Any]] = []
        self.released = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.held.append((data, addr))
        if self.released:
            self.release()

    def release(self) -> None:
        self.released = True
        held, self.held = self.held, []
        for data, addr in held:
            request = stun.parse_message(data)
            response = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.RESPONSE,
                transaction_id=request.transaction_id,
            )
            response.attributes["XOR-MAPPED-ADDRESS"] = MAPPED
            assert self.transport is not None
            self.transport.sendto(bytes(response), addr)


def test_prepare_returns_before_server_reflexive_candidates_and_trickles_them() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(HeldStun, local_addr=(LOOPBACK, 0))
        address = transport.get_extra_info("sockname")[:2]
        try:
            conn = await Connectivity.prepare(
                True, address, [], PathPolicy.DIRECT_ONLY, host_addresses=[LOOPBACK]
            )
            try:
                # prepare did not wait for the STUN answer: only the host candidate so far.
                assert not conn.local_gathering_done
                before = [Candidate.from_sdp(c).type for c in conn.local_candidates()]
                assert before == ["host"]
                await wait_until_async(
                    "the STUN responder holding a request", lambda: bool(server.held), timeout=WAIT
                )
                server.release()
                while not conn.local_gathering_done:
                    await asyncio.wait_for(conn.wait_local_candidates(WAIT), WAIT)
                after = [Candidate.from_sdp(c) for c in conn.local_candidates()]
                srflx = [c for c in after if c.type == "srflx"]
                assert [(c.host, c.port) for c in srflx] == [MAPPED]
                assert srflx[0].related_address == LOOPBACK
            finally:
                await conn.close()
        finally:
            transport.close()

    run(main)


def test_a_silent_stun_server_does_not_hold_up_the_session() -> None:
    """UDP to the STUN server blocked: ``prepare`` still returns at once with the host candidate,
    and ``close`` stops the pending STUN transaction."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(HeldStun, local_addr=(LOOPBACK, 0))
        address = transport.get_extra_info("sockname")[:2]
        try:
            conn = await Connectivity.prepare(
                False, address, [], PathPolicy.DIRECT_ONLY, host_addresses=[LOOPBACK]
            )
            assert not conn.local_gathering_done
            assert len(conn.local_candidates()) == 1
            await wait_until_async(
                "the STUN responder holding a request", lambda: bool(server.held), timeout=WAIT
            )
            assert not conn.local_gathering_done
            await conn.close()
            assert conn.closed
        finally:
            transport.close()

    run(main)


# -- layout ----------------------------------------------------------------------------------


def test_candidate_update_round_trip_and_limits() -> None:
    update = CandidateUpdate(bytes(range(16)), ("1 1 udp 2130706431 192.168.1.5 54321 typ host",), True)
    assert CandidateUpdate.decode(update.encode()) == update
    assert CandidateUpdate.decode(CandidateUpdate(bytes(16), ()).encode()).end_of_candidates is False
    with pytest.raises(ValueError, match="malformed"):
        CandidateUpdate.decode(update.encode()[:-1])
    with pytest.raises(ValueError, match="at most"):
        CandidateUpdate(bytes(16), ("x" * 200,) * 6).encode()
    many = [f"{i} 1 udp 2130706431 10.0.{i}.1 5000 typ host" for i in range(80)]
    kept = fit_candidates(many, MAX_INVITE_BODY - 17)
    assert 0 < len(kept) < len(many) and list(kept) == many[: len(kept)]
    assert len(CandidateUpdate(bytes(16), kept).encode()) <= MAX_INVITE_BODY
    assert fit_candidates(["y" * 300, "short"], 100) == ("short",)


# -- the device's reply ------------------------------------------------------------------------


@dataclass
class FakeConn:
    """What ``SessionServer`` uses of a ``Connectivity`` while trickling."""

    local: list[str]
    done: bool = False
    remote: list[str] = field(default_factory=list)
    remote_end: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def local_candidates(self) -> list[str]:
        return list(self.local)

    @property
    def local_gathering_done(self) -> bool:
        return self.done

    async def wait_local_candidates(self, timeout: float) -> None:
        if self.done:
            return
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    async def add_remote_candidates(self, candidates: Any, *, end: bool = False) -> None:
        if self.remote_end:
            raise RuntimeError("after end")
        self.remote += list(candidates)
        self.remote_end = end


@dataclass
class Replies:
    got: list[tuple[int, int, bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def reply_invite(self, invite_id: int, status: int, body: bytes, now: float) -> None:
        self.got.append((invite_id, status, body))
        self.arrived.set()

    async def next(self) -> tuple[int, int, bytes]:
        await asyncio.wait_for(self.arrived.wait(), WAIT)
        self.arrived.clear()
        return self.got[-1]


HOST = "1 1 udp 2130706431 192.168.1.5 54321 typ host"
SRFLX = "2 1 udp 1694498815 203.0.113.9 61000 typ srflx raddr 192.168.1.5 rport 54321"
VIEWER = "3 1 udp 2130706431 192.168.1.77 40000 typ host"
SID = bytes(range(16))


def test_device_replies_with_new_candidates_only_held_until_one_comes() -> None:
    async def main() -> None:
        replies = Replies()
        server = SessionServer(
            "DL-0001-0002",
            Ed25519PrivateKey.generate(),
            viewers=cast(Any, None),
            config=SessionsConfig(),
            services=ServicesConfig(),
            stun_server=(LOOPBACK, 9),
            presence=replies,
            core_clock=asyncio.get_running_loop().time,
        )
        conn = FakeConn([HOST])
        entry = _Entry(
            SID.hex(), "session test", replies, conn=cast(Connectivity, conn), started=True, sent={HOST}
        )
        server._sessions[SID.hex()] = entry

        def invite(invite_id: int, body: bytes) -> None:
            server.handle(InviteReceived(invite_id, INVITE_KIND_CANDIDATES, body), 0.0)

        # The viewer's candidate is added; with nothing new here the reply waits...
        invite(1, CandidateUpdate(SID, (VIEWER,)).encode())
        for _ in range(20):
            await asyncio.sleep(0)
        assert replies.got == [] and conn.remote == [VIEWER]
        # ... until the server-reflexive candidate is gathered, and carries only it.
        conn.local.append(SRFLX)
        conn.done = True
        conn.changed.set()
        invite_id, status, body = await replies.next()
        assert (invite_id, status) == (1, INVITE_OK)
        assert CandidateUpdate.decode(body) == CandidateUpdate(SID, (SRFLX,), True)
        # Nothing new and gathering over: an immediate, empty end-of-candidates reply; the
        # viewer's end is taken once, a repeat is harmless.
        invite(2, CandidateUpdate(SID, (), True).encode())
        assert CandidateUpdate.decode((await replies.next())[2]) == CandidateUpdate(SID, (), True)
        invite(3, CandidateUpdate(SID, (), True).encode())
        assert CandidateUpdate.decode((await replies.next())[2]) == CandidateUpdate(SID, (), True)
        assert conn.remote_end and conn.remote == [VIEWER]
        # Unknown session and garbage: answered at once, without a task.
        invite(4, CandidateUpdate(bytes(16), ()).encode())
        invite(5, b"\x00garbage")
        assert replies.got[-2:] == [(4, INVITE_GONE, b""), (5, INVITE_MALFORMED, b"")]

    run(main)
