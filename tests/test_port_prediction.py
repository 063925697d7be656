"""Port prediction and the birthday search: the pure rules (``protocol/port_prediction.py``) and
the search's sockets and checks (``session/birthday.py``) against real aioice connections on
loopback. Whether they punch real NATs is asserted by the connectivity matrix
(``tests/test_matrix.py``: (sequential) symmetric × port-restricted and CGNAT end direct)."""

from __future__ import annotations

import asyncio
import random

import pytest
from aioice import Connection
from aioice.candidate import Candidate
from hypothesis import given
from hypothesis import strategies as st
from support.aio import run
from support.connectivity import LOOPBACK, WAIT

from dvrlink.protocol.port_prediction import (
    BIRTHDAY_PROBES,
    BIRTHDAY_SOCKETS,
    MAX_STRIDE,
    WINDOW,
    BirthdayRole,
    Mapping,
    SearchBudget,
    birthday_role,
    birthday_success,
    classify,
    mapping_of,
    predict,
    probe_ports,
    with_mapping,
)
from dvrlink.session import birthday
from dvrlink.session.direct import gather_host, host_protocols, nominated_protocol

SRFLX = "3464297112 1 udp 1694498815 198.51.100.2 20003 typ srflx raddr 192.168.1.2 rport 40000"


@given(st.integers(1024, 60000), st.integers(-MAX_STRIDE, MAX_STRIDE).filter(bool), st.integers(2, 4))
def test_a_sequence_is_continued_from_its_last_port(start: int, stride: int, count: int) -> None:
    mapped = [start + stride * i for i in range(count)]
    prediction = predict(mapped)
    assert prediction.mapping is Mapping.SEQUENTIAL and prediction.stride == stride
    expected = [mapped[-1] + stride * i for i in range(1, WINDOW + 1)]
    assert list(prediction.ports) == [p for p in expected if 1024 <= p <= 65535]
    assert not set(prediction.ports) & set(mapped)


def test_the_last_small_step_wins_over_an_earlier_jump() -> None:
    # The NAT's range wrapped (or another host took ports) between the first two flows.
    assert predict([20099, 20000, 20001]).ports[:2] == (20002, 20003)
    assert predict([20000, 20001, 30000]).mapping is Mapping.SEQUENTIAL  # an earlier small step
    assert predict([41000, 3000, 17000]) == predict([41000, 3000, 17000])
    assert predict([41000, 3000, 17000]).ports == ()


def test_classify() -> None:
    assert classify([5000]) is None
    assert classify([5000, 5000, 5000]) is Mapping.EIM
    assert classify([5000, 5002, 5004]) is Mapping.SEQUENTIAL
    assert classify([5000, 41000, 17000]) is Mapping.RANDOM
    with pytest.raises(ValueError, match="at least 1"):
        predict([1, 2], window=0)


def test_ports_past_the_range_are_not_offered() -> None:
    assert predict([65533, 65534]).ports == (65535,)
    assert predict([1026, 1025]).ports == (1024,)


def test_roles() -> None:
    assert birthday_role(Mapping.RANDOM, Mapping.EIM) is BirthdayRole.OPEN
    assert birthday_role(Mapping.EIM, Mapping.RANDOM) is BirthdayRole.PROBE
    for local, remote in [
        (Mapping.RANDOM, Mapping.RANDOM),
        (Mapping.EIM, Mapping.EIM),
        (Mapping.SEQUENTIAL, Mapping.EIM),  # prediction's job
        (Mapping.RANDOM, Mapping.SEQUENTIAL),
        (None, Mapping.RANDOM),
        (Mapping.EIM, None),
    ]:
        assert birthday_role(local, remote) is None


def test_the_mapping_attribute_travels_on_the_candidate_and_aioice_ignores_it() -> None:
    marked = with_mapping(SRFLX, Mapping.RANDOM)
    assert marked.endswith(" mapping random")
    assert mapping_of(marked) is Mapping.RANDOM
    assert mapping_of(SRFLX) is None
    assert mapping_of(SRFLX + " mapping sideways") is None
    assert mapping_of(SRFLX + " mapping") is None  # no value
    parsed = Candidate.from_sdp(marked)
    assert (parsed.host, parsed.port, parsed.type) == ("198.51.100.2", 20003, "srflx")
    assert parsed.to_sdp() == Candidate.from_sdp(SRFLX).to_sdp()


def test_probe_ports_are_distinct_and_in_range() -> None:
    ports = probe_ports(3 * BIRTHDAY_PROBES, random.Random(7))
    assert len(set(ports)) == len(ports) == 3 * BIRTHDAY_PROBES
    assert all(1024 <= p <= 65535 for p in ports)
    with pytest.raises(ValueError, match="distinct ports"):
        probe_ports(11, random.Random(1), 100, 109)


def test_the_success_odds_match_a_simulation() -> None:
    """The closed form against 2,000 simulated searches over a small span (bounded, seeded)."""
    rng = random.Random(5780)
    span, sockets, probes, trials = 2000, 40, 60, 2000
    hits = 0
    for _ in range(trials):
        opened = set(rng.sample(range(span), sockets))
        hits += any(port in opened for port in rng.sample(range(span), probes))
    expected = birthday_success(sockets, probes, span)
    assert abs(hits / trials - expected) < 0.04, (hits / trials, expected)
    # The figures the docs give: 98 % for one round, about 50 % with Tailscale's 174 probes.
    assert 0.98 < birthday_success(BIRTHDAY_SOCKETS, BIRTHDAY_PROBES) < 0.99
    assert 0.49 < birthday_success(BIRTHDAY_SOCKETS, 174) < 0.51
    assert birthday_success(0, 10) == 0.0 and birthday_success(10, 10, 15) == 1.0


def test_search_sockets_become_the_nominated_pair() -> None:
    """Neither side has a candidate of the other: only the search's checks can make a pair. The
    controlled side opens sockets towards the controlling one, whose probes and triggered checks
    answer; ICE nominates one of the search's sockets, and a socket that is not in the search is
    never used. Without valid checks (credentials, role) aioice would answer 400/401 and nothing
    would complete."""

    async def main() -> None:
        opener = Connection(ice_controlling=False)
        prober = Connection(ice_controlling=True)
        try:
            for ice in (opener, prober):
                await gather_host(ice, [LOOPBACK])
            opener.remote_username, opener.remote_password = prober.local_username, prober.local_password
            prober.remote_username, prober.remote_password = opener.local_username, opener.local_password
            prober_socket = host_protocols(prober)[0]
            target = (LOOPBACK, prober_socket.local_candidate.port)
            connects = [asyncio.ensure_future(ice.connect()) for ice in (opener, prober)]
            sockets: list[object] = []
            base = host_protocols(opener)[0].local_candidate
            await birthday.open_sockets(opener, base, target, 8, sockets)
            assert len(sockets) == 8
            # The prober aims at two of them among ports nobody listens on.
            ports = [s.local_candidate.port for s in sockets[2:4]]  # type: ignore[attr-defined]
            sent = await birthday.probe_ports(prober, prober_socket, LOOPBACK, [*ports, 9, 11])
            assert sent == 4
            await asyncio.wait_for(asyncio.gather(*connects), WAIT)
            assert nominated_protocol(opener) in sockets
            assert nominated_protocol(prober) is prober_socket
            await birthday.close_sockets(sockets, keep=nominated_protocol(opener))
            assert sum(not s.transport.is_closing() for s in sockets) == 1  # type: ignore[attr-defined]
            await birthday.close_sockets(sockets)
        finally:
            await opener.close()
            await prober.close()

    run(main)


def test_no_check_before_the_peer_credentials_are_known() -> None:
    async def main() -> None:
        ice = Connection(ice_controlling=True)
        await gather_host(ice, [LOOPBACK])
        assert birthday.check_request(ice) is None
        assert await birthday.probe_ports(ice, host_protocols(ice)[0], LOOPBACK, [9]) == 0
        ice.remote_username, ice.remote_password = "peer", "p" * 22
        request = birthday.check_request(ice)
        assert request is not None and b"peer:" in request
        await ice.close()

    run(main)


def test_a_light_budget_only_opens_and_off_does_nothing() -> None:
    light, off = SearchBudget.LIGHT, SearchBudget.OFF
    assert birthday_role(Mapping.RANDOM, Mapping.EIM, light) is BirthdayRole.OPEN
    assert birthday_role(Mapping.EIM, Mapping.RANDOM, light) is None
    assert birthday_role(Mapping.RANDOM, Mapping.EIM, off) is None
