"""Server-reflexive candidates over both families, against the real broker bound to ``::`` (it
takes IPv4 too): each host socket asks over its own family, and a STUN server that has no address
of that family gets nothing sent."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aioice
import pytest

from dvrlink.session.direct import gather_host, host_protocols, resolve_for, srflx_candidate
from hil.loopback import Broker, start_broker
from tests.support.ipv6 import has_ipv6_loopback

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], timeout: float) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main, timeout)

    return asyncio.run(bounded())


pytestmark = pytest.mark.skipif(not has_ipv6_loopback(), reason="needs IPv6 on loopback (::1)")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    state = tmp_path_factory.mktemp("broker")
    config = state / "broker.toml"
    config.write_text(
        "\n".join(
            [
                f'state_dir = "{state}"',
                'udp_host = "::"',
                "udp_port = 0",
                'https_host = "127.0.0.1"',
                "https_port = 0",
                "turn_udp_port = 0",
                "turn_tcp_port = 0",
                "presence_tcp_port = 0",
                "",
            ]
        )
    )
    started = start_broker(state, config=config)
    try:
        yield started
    finally:
        started.stop()


def gathered(broker: Broker, hosts: list[str], stun_host: str) -> dict[str, object]:
    """Each host socket's srflx answer: ``{base host: (candidate host, port, base port) or None}``."""

    async def main() -> dict[str, object]:
        ice = aioice.Connection(ice_controlling=True)
        try:
            await gather_host(ice, hosts)
            found: dict[str, object] = {}
            for protocol in host_protocols(ice):
                base = protocol.local_candidate
                answer = await srflx_candidate(protocol, (stun_host, broker.udp_port))
                found[base.host] = None if answer is None else (answer[0].host, answer[0].port, base.port)
            return found
        finally:
            await ice.close()

    return run(main(), timeout=20)


def test_a_dual_stack_name_gets_both_families_from_one_broker_socket(broker: Broker) -> None:
    found = gathered(broker, ["127.0.0.1", "::1"], "localhost")
    if found.get("::1") is None and "::1" in found:
        pytest.skip("localhost has no IPv6 address on this machine")
    v4, v6 = found["127.0.0.1"], found["::1"]
    assert isinstance(v4, tuple) and v4[0] == "127.0.0.1" and v4[1] == v4[2], found
    assert isinstance(v6, tuple) and v6[0] == "::1" and v6[1] == v6[2], found


def test_each_family_asks_over_its_own_and_a_literal_of_the_other_sends_nothing(broker: Broker) -> None:
    only_v4 = gathered(broker, ["127.0.0.1", "::1"], "127.0.0.1")
    v4 = only_v4["127.0.0.1"]
    assert only_v4["::1"] is None and isinstance(v4, tuple) and v4[:2] == ("127.0.0.1", v4[2]), only_v4
    only_v6 = gathered(broker, ["127.0.0.1", "::1"], "::1")
    v6 = only_v6["::1"]
    assert only_v6["127.0.0.1"] is None and isinstance(v6, tuple) and v6[:2] == ("::1", v6[2]), only_v6


def test_resolve_for_picks_the_family_and_never_raises() -> None:
    async def main() -> list[str | None]:
        return [
            await resolve_for("127.0.0.1", socket.AF_INET),
            await resolve_for("127.0.0.1", socket.AF_INET6),
            await resolve_for("2001:db8::1", socket.AF_INET6),
            await resolve_for("2001:db8::1", socket.AF_INET),
            await resolve_for("no-such-host.invalid", socket.AF_INET),
        ]

    assert run(main(), timeout=20) == ["127.0.0.1", None, "2001:db8::1", None, None]
