"""The birthday search on a slow link: each side advertises the round trip of its STUN Binding
(``rtt <ms>`` on its server-reflexive candidate, beside ``mapping``) and no search runs when
either side's is at or above ``SLOW_LINK_RTT_MS`` (``protocol/port_prediction.py``:
``slow_link``), so that its hundreds of checks do not starve the relayed session on GPRS.

The pure rule and the attribute first; then ``Connectivity`` on loopback against a STUN server
that speaks RFC 5780 (three addresses, answering each with a different mapped port, as a NAT that
maps each remote to a random port would) and, for the slow link, answers late. Whether a GPRS
recorder then connects is asserted by the connectivity matrix (``hil/matrix``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from aioice import stun
from aioice.candidate import Candidate
from pytest_mock import MockerFixture
from support.aio import run
from support.connectivity import LOOPBACK, WAIT
from support.waiting import wait_until_async

from dvrlink.protocol.port_prediction import (
    BIRTHDAY_PROBES,
    BIRTHDAY_SOCKETS,
    CHECK_BYTES,
    MAX_RTT_MS,
    SLOW_LINK_RTT_MS,
    BirthdayRole,
    Mapping,
    SlowLink,
    attribute_of,
    mapping_of,
    rtt_of,
    search_cost,
    slow_link,
    with_mapping,
    with_rtt,
)
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session import birthday
from dvrlink.session.connectivity import Connectivity

SRFLX = "3464297112 1 udp 1694498815 198.51.100.2 20003 typ srflx raddr 192.168.1.2 rport 40000"
ALTERNATE = "127.0.0.2"
"""The STUN server's second address (all of 127/8 is loopback on Linux)."""
MAPPED_PORTS = (40001, 20002, 10003)
"""What the three addresses answer as our mapped port: steps far above 8, a random mapping."""


# -- the rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "remote", "expected"),
    [
        (None, None, None),  # nothing measured: no change
        (40, None, None),  # an old peer (no rtt attribute) and a fast link here
        (None, 80, None),
        (150, 160, None),  # 3G
        (300, 20, None),  # EDGE
        (499, 499, None),
        (500, None, SlowLink(True, 500, 500)),  # at the threshold
        (640, None, SlowLink(True, 640, 500)),  # GPRS here, an old peer
        (20, 640, SlowLink(False, 640, 500)),  # GPRS there
        (None, 700, SlowLink(False, 700, 500)),
        (900, 640, SlowLink(True, 900, 500)),  # both slow: the slower one is named
        (640, 900, SlowLink(False, 900, 500)),
    ],
)
def test_a_slow_round_trip_on_either_side_rules_the_search_out(
    local: int | None, remote: int | None, expected: SlowLink | None
) -> None:
    assert slow_link(local, remote) == expected


def test_the_threshold_is_a_parameter_and_the_default_sits_between_edge_and_gprs() -> None:
    assert 300 < SLOW_LINK_RTT_MS <= 600
    assert slow_link(200, None, threshold_ms=150) == SlowLink(True, 200, 150)
    assert slow_link(200, None, threshold_ms=250) is None


def test_the_cost_of_each_part() -> None:
    assert search_cost(BirthdayRole.OPEN) == (BIRTHDAY_SOCKETS, BIRTHDAY_SOCKETS * CHECK_BYTES)
    assert search_cost(BirthdayRole.PROBE) == (BIRTHDAY_PROBES, BIRTHDAY_PROBES * CHECK_BYTES)
    # About 32 kB to open and 127 kB per round of probes: 6 and 25 s of a 40 kbit/s uplink.
    assert 30_000 < search_cost(BirthdayRole.OPEN)[1] < 33_000
    assert 120_000 < search_cost(BirthdayRole.PROBE)[1] < 130_000


# -- the attribute ----------------------------------------------------------------------------------


def test_the_rtt_attribute_travels_beside_the_mapping_and_aioice_ignores_it() -> None:
    marked = with_rtt(with_mapping(SRFLX, Mapping.RANDOM), 640.4)
    assert marked.endswith(" mapping random rtt 640")
    assert (rtt_of(marked), mapping_of(marked)) == (640, Mapping.RANDOM)
    assert rtt_of(with_rtt(SRFLX, 0.3)) == 0
    assert rtt_of(with_rtt(SRFLX, 10**9)) == MAX_RTT_MS
    parsed = Candidate.from_sdp(marked)
    assert (parsed.host, parsed.port, parsed.type) == ("198.51.100.2", 20003, "srflx")
    assert parsed.to_sdp() == Candidate.from_sdp(SRFLX).to_sdp()
    with pytest.raises(ValueError, match="negative"):
        with_rtt(SRFLX, -1)


@pytest.mark.parametrize(
    "tail",
    [
        "",  # an old peer
        " rtt",  # no value
        " rtt fast",
        " rtt -5",
        " rtt 6.5",
        " rtt ６４０",  # full-width digits are digits to str.isdigit, not to us
        f" rtt {MAX_RTT_MS + 1}",
    ],
)
def test_a_missing_or_malformed_rtt_reads_as_unknown(tail: str) -> None:
    assert rtt_of(with_mapping(SRFLX, Mapping.EIM) + tail) is None


def test_unknown_attributes_are_tolerated_in_any_order() -> None:
    sdp = SRFLX + " generation 0 colour blue rtt 75 mapping sequential"
    assert (rtt_of(sdp), mapping_of(sdp), attribute_of(sdp, "colour")) == (75, Mapping.SEQUENTIAL, "blue")
    assert attribute_of(sdp, "flavour") is None
    # A name in a value's place is not read as a name: pairs are taken two by two.
    assert rtt_of(SRFLX + " note rtt") is None
    assert Candidate.from_sdp(sdp).port == 20003


# -- the session ------------------------------------------------------------------------------------


class Rfc5780Server(asyncio.DatagramProtocol):
    """One address of a STUN server that speaks RFC 5780, answering ``delay`` seconds late with
    ``mapped_port`` as the requester's port (a NAT's choice for this remote) and, from the
    primary address, the server's ``other`` address."""

    def __init__(self, mapped_port: int, other: tuple[str, int] | None, delay: float) -> None:
        self.mapped_port = mapped_port
        self.other = other
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None
        self.answered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            request = stun.parse_message(data)
        except ValueError:
            return
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = (addr[0], self.mapped_port)
        if self.other is not None:
            response.attributes["OTHER-ADDRESS"] = self.other
        asyncio.get_running_loop().call_later(self.delay, self._send, bytes(response), addr)

    def _send(self, data: bytes, addr: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.answered += 1
            self.transport.sendto(data, addr)


@asynccontextmanager
async def rfc5780_server(delay: float) -> AsyncIterator[tuple[str, int]]:
    """The three addresses a client probes (primary, alternate port, alternate address); yields
    the primary one."""
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    try:
        alt_port, _ = await loop.create_datagram_endpoint(
            lambda: Rfc5780Server(MAPPED_PORTS[1], None, delay), local_addr=(LOOPBACK, 0)
        )
        transports.append(alt_port)
        primary_port = 0
        for _ in range(5):  # the primary port must also be free on the alternate address
            primary, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(LOOPBACK, 0)
            )
            primary_port = primary.get_extra_info("sockname")[1]
            primary.close()
            try:
                alt_address, _ = await loop.create_datagram_endpoint(
                    lambda: Rfc5780Server(MAPPED_PORTS[2], None, delay), local_addr=(ALTERNATE, primary_port)
                )
            except OSError:
                continue
            transports.append(alt_address)
            break
        other = (ALTERNATE, alt_port.get_extra_info("sockname")[1])
        main, _ = await loop.create_datagram_endpoint(
            lambda: Rfc5780Server(MAPPED_PORTS[0], other, delay), local_addr=(LOOPBACK, primary_port)
        )
        transports.append(main)
        yield LOOPBACK, primary_port
    finally:
        for transport in transports:
            transport.close()


async def search_outcome(
    mocker: MockerFixture, delay: float, peer_tail: str
) -> tuple[Connectivity, Any, Any]:
    """A ``Connectivity`` whose STUN answers come ``delay`` seconds late, started towards a peer
    whose server-reflexive candidate says ``mapping eim`` and ``peer_tail``; returns it (still
    open: the caller closes it), with spies on its search and on the search's socket opening."""
    started = mocker.spy(Connectivity, "_birthday")
    opened = mocker.spy(birthday, "open_sockets")
    async with rfc5780_server(delay) as server:
        conn = await Connectivity.prepare(
            False, server, [], PathPolicy.DIRECT_ONLY, host_addresses=[LOOPBACK]
        )
        try:
            # The peer: one socket that swallows our checks.
            peer, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(LOOPBACK, 0)
            )
            port = peer.get_extra_info("sockname")[1]
            srflx = f"1 1 udp 1694498815 {LOOPBACK} {port} typ srflx raddr 10.9.9.9 rport {port} mapping eim"
            await conn.start("peer", "p" * 22, [srflx + peer_tail])
            conn.allow_search()  # as if the session were established on the relay
            await wait_until_async("gathering over", lambda: conn.local_gathering_done, timeout=WAIT)
            peer.close()
        except BaseException:
            await conn.close()
            raise
    return conn, started, opened


def test_on_a_fast_link_the_search_opens_its_sockets(mocker: MockerFixture) -> None:
    """The control: with quick STUN answers and a peer that advertises no round trip (an old
    one), the random side opens its sockets; so the spies see a search when there is one."""

    async def main() -> None:
        conn, started, opened = await search_outcome(mocker, 0.0, "")
        try:
            sdp = next(c for c in conn.local_candidates() if " typ srflx" in c)
            assert mapping_of(sdp) is Mapping.RANDOM
            rtt = rtt_of(sdp)
            assert rtt is not None and rtt < SLOW_LINK_RTT_MS, sdp
            assert conn.search_skipped is None
            await wait_until_async("the search's sockets", lambda: opened.call_count, timeout=WAIT)
            assert started.call_count == 1
        finally:
            await conn.close()

    run(main)


@pytest.mark.parametrize(
    ("delay", "peer_tail", "ours"),
    [
        (0.6, "", True),  # our STUN round trip is slow (GPRS here), the peer is an old one
        (0.6, " rtt 30", True),
        (0.0, " rtt 640", False),  # the peer's advertised round trip is slow (GPRS there)
    ],
)
def test_on_a_slow_link_no_search_socket_is_opened(
    mocker: MockerFixture, caplog: pytest.LogCaptureFixture, delay: float, peer_tail: str, ours: bool
) -> None:
    async def main() -> None:
        with caplog.at_level("INFO", logger="dvrlink.session.connectivity"):
            conn, started, opened = await search_outcome(mocker, delay, peer_tail)
        try:
            sdp = next(c for c in conn.local_candidates() if " typ srflx" in c)
            assert mapping_of(sdp) is Mapping.RANDOM
            rtt = rtt_of(sdp)
            assert rtt is not None and (rtt >= SLOW_LINK_RTT_MS) is ours, sdp
            skipped = conn.search_skipped
            assert skipped is not None and skipped.ours is ours, skipped
            assert skipped.rtt_ms == (rtt if ours else 640)
            # The decision is made when both mappings are known, before the search's delay: no
            # search was started and none ever opens a socket.
            assert started.call_count == 0 and opened.call_count == 0
            lines = [r.getMessage() for r in caplog.records if "birthday search skipped" in r.getMessage()]
            assert len(lines) == 1, lines
            assert f"{skipped.rtt_ms} ms >= {SLOW_LINK_RTT_MS} ms" in lines[0]
            assert f"open {BIRTHDAY_SOCKETS} sockets" in lines[0] and "staying on the relay" in lines[0]
        finally:
            await conn.close()
        assert opened.call_count == 0

    run(main)
