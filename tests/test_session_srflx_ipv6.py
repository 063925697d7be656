"""Server-reflexive candidates over IPv6 from the broker's IPv6 STUN address (``stun6``; issue 17,
part 2): an IPv6 host socket asks it when the STUN server it was given is an IPv4 literal.

- Loopback: STUN on 127.0.0.1 and on ``::1`` (the broker's STUN service, ``start_stun_service``);
  ``Connectivity.prepare`` gathers a srflx candidate on each family, and signals neither (each
  equals its base, RFC 8445 5.1.3), while the host candidates go out once each.
- The NAT lab (root): a device with a global IPv6 address behind the lab carrier's stateful
  firewall, against the real ``dvrlink-broker`` with ``stun_host6`` and ``stun_alternate_host6``.
  Its IPv6 srflx candidate is its global address (no NAT66) and is gathered, not signalled twice;
  its IPv4 one is the NAT's public address and is signalled.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dvrlink.broker.stun_alternate import start_stun_service
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session.connectivity import Connectivity, StunServers
from hil import netlab
from tests.support.ipv6 import has_ipv6_loopback

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main, timeout)

    return asyncio.run(bounded())


GATHER = """
import asyncio, json, sys
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session.connectivity import Connectivity

async def main(hosts, stun, stun6):
    conn = await Connectivity.prepare(
        True, stun, [], PathPolicy.DIRECT_ONLY, host_addresses=hosts, stun_server6=stun6
    )
    try:
        for _ in range(40):  # each wait returns on a new candidate; bounded
            if conn.local_gathering_done:
                break
            await conn.wait_local_candidates(20)
        return {"srflx": conn.server_reflexive, "candidates": conn.local_candidates(),
                "done": conn.local_gathering_done}
    finally:
        await conn.close()

hosts, stun, stun6 = json.loads(sys.argv[1])
found = asyncio.run(asyncio.wait_for(main(hosts, tuple(stun), tuple(stun6) if stun6 else None), 60))
print(json.dumps(found))
"""
"""Gathers in a fresh process (the lab runs it in the device's namespace): argv[1] is the JSON
of [host addresses, STUN (host, port), IPv6 STUN (host, port) or null]; prints what it found."""


def gather(hosts: list[str], stun: tuple[str, int], stun6: tuple[str, int] | None) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        conn = await Connectivity.prepare(
            True, stun, [], PathPolicy.DIRECT_ONLY, host_addresses=hosts, stun_server6=stun6
        )
        try:
            for _ in range(40):  # each wait returns on a new candidate; bounded
                if conn.local_gathering_done:
                    break
                await conn.wait_local_candidates(20)
            return {
                "srflx": [list(s) for s in conn.server_reflexive],
                "candidates": conn.local_candidates(),
                "done": conn.local_gathering_done,
            }
        finally:
            await conn.close()

    return run(main())


def _kinds(candidates: list[str], host: str) -> list[str]:
    """The types of the signalled candidates on ``host`` (``typ host``, ``typ srflx``, ...)."""
    return [c.split(" typ ")[1].split()[0] for c in candidates if c.split()[4] == host]


def test_stun_servers_pick_by_the_host_sockets_family() -> None:
    both = StunServers(("198.51.100.1", 3478), ("2001:db8::1", 3478))
    assert both.for_host("192.168.1.2") == ("198.51.100.1", 3478)
    assert both.for_host("2001:db8:1::2") == ("2001:db8::1", 3478)
    v4_only = StunServers(("broker.example.net", 3478))
    assert v4_only.for_host("2001:db8:1::2") == ("broker.example.net", 3478)  # its AAAA, if any
    assert not StunServers(None).any and StunServers(None, ("::1", 1)).any


@pytest.mark.skipif(not has_ipv6_loopback(), reason="needs IPv6 on loopback (::1)")
def test_an_ipv6_host_socket_asks_the_ipv6_stun_address() -> None:
    async def servers() -> tuple[Any, Any]:
        return await start_stun_service("127.0.0.1", 0, None, 0), await start_stun_service("::1", 0, None, 0)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        v4, v6 = await servers()
        try:
            hosts = ["127.0.0.1", "::1"]
            with_v6 = await asyncio.to_thread(gather, hosts, v4.address, v6.address)
            without = await asyncio.to_thread(gather, hosts, v4.address, None)
            return with_v6, without
        finally:
            v4.close()
            v6.close()

    with_v6, without = run(main(), timeout=60)
    assert with_v6["done"], with_v6
    srflx = {tuple(s[:1] + s[2:3]) for s in with_v6["srflx"]}
    assert srflx == {("127.0.0.1", "127.0.0.1"), ("::1", "::1")}, with_v6
    for host, port, base, base_port in with_v6["srflx"]:
        assert (host, port) == (base, base_port)  # no NAT on loopback: srflx equals its base
    # Each equals its base, so neither is signalled: one host candidate per address.
    assert _kinds(with_v6["candidates"], "::1") == ["host"], with_v6["candidates"]
    assert _kinds(with_v6["candidates"], "127.0.0.1") == ["host"], with_v6["candidates"]
    # Without the IPv6 address, the IPv6 socket cannot reach an IPv4 literal: no srflx for it.
    assert [s[0] for s in without["srflx"]] == ["127.0.0.1"], without


REASON = netlab.unavailable_reason()


@pytest.mark.integration
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_in_the_dual_stack_lab_the_device_gathers_its_ipv6_srflx(tmp_path: Path) -> None:
    with netlab.topology(device_nat="symmetric", viewer_nat="public", ipv6=True) as lab:
        six, alternate6 = lab.broker_addrs6
        broker = netlab.start_lab_broker(
            lab, tmp_path / "broker", stun_host6=six, stun_alternate_host6=alternate6
        )
        assert "stun6/udp" in broker.info["listening"], broker.info
        host4, host6, wan = lab.host_addr("device"), lab.host_addr6("device"), lab.wan_addr("device")
        assert host6 is not None
        argv = json.dumps([[host4, host6], list(broker.primary), [six, broker.primary[1]]])
        done = lab.python(lab.device_ns, ["-c", GATHER, argv], timeout=120)
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout)
    srflx = found["srflx"]
    by_base = {base: (host, port, base_port) for host, port, base, base_port in srflx}
    assert set(by_base) == {host4, host6}, srflx
    # IPv6: the carrier routes the device's global address without NAT, so the srflx candidate
    # is the host address itself, gathered once and not signalled beside the host candidate.
    v6_host, v6_port, v6_base_port = by_base[host6]
    assert (v6_host, v6_port) == (host6, v6_base_port), srflx
    assert _kinds(found["candidates"], host6) == ["host"], found["candidates"]
    # IPv4 (symmetric NAT): the srflx is the NAT's public address, and is signalled.
    assert by_base[host4][0] == wan, srflx
    assert "srflx" in _kinds(found["candidates"], wan), found["candidates"]
    assert len([s for s in srflx if s[2] == host6]) == 1, srflx
