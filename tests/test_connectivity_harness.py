"""The loopback lab of ``support.connectivity`` sets up and tears down: a device gathers its host
and relay candidates against the lab's STUN responder and TURN relay.
"""

from __future__ import annotations

import asyncio

from support.aio import run
from support.connectivity import LOOPBACK, WAIT, candidate_types, lab

from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session.connectivity import Connectivity


def test_lab_sets_up_and_tears_down() -> None:
    async def main() -> None:
        async with lab() as the_lab:
            conn = await Connectivity.prepare(
                True, the_lab.stun, the_lab.turn_servers("a"), PathPolicy.ALL, host_addresses=[LOOPBACK]
            )
            try:
                while not conn.local_gathering_done:  # the srflx query is trickled, not waited for
                    await asyncio.wait_for(conn.wait_local_candidates(WAIT), WAIT)
                types = candidate_types(conn.local_candidates())
                assert types == ["host", "relay"]  # the srflx equals its base on loopback: left out
                assert conn.relayed_address is not None
                assert the_lab.responder.answered == 1
            finally:
                await conn.close()

    run(main)
