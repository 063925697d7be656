"""Broker nodes of one fleet in this process, for the cluster tests: each a ``lab`` broker
(``tests/support/broker.py``) on one Redis, sharing the fleet key and the TURN secret
(``hil/cluster.py``'s ``fleet_files``, in ``tmp_path``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dvrlink.broker.cluster.runtime import Cluster
from hil.cluster import fleet_files
from tests.support.broker import Lab, lab
from tests.support.waiting import wait_until_async


def node_cluster(node: Lab) -> Cluster:
    """The node's Redis side (it has one: ``cluster_lab`` sets ``redis_url``)."""
    assert node.broker.cluster is not None
    return node.broker.cluster


@contextlib.asynccontextmanager
async def cluster_lab(
    tmp_path: Path, redis_url: str, count: int = 2, **settings: Any
) -> AsyncIterator[list[Lab]]:
    """``count`` nodes (ids ``node0``, ``node1``, …, state in ``tmp_path/nodeN``), each connected to
    Redis before this yields; ``settings`` go to every node's config."""
    key, secret = fleet_files(tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for index in range(count):
            node = await stack.enter_async_context(
                lab(
                    tmp_path / f"node{index}",
                    redis_url=redis_url,
                    node_id=f"node{index}",
                    fleet_key_file=str(key),
                    turn_secret_file=str(secret),
                    presence_tcp_port=0,
                    **settings,
                )
            )
            nodes.append(node)
        for node in nodes:
            cluster = node_cluster(node)
            await wait_until_async(f"{cluster.node_id} to reach Redis", lambda c=cluster: c.connected)  # type: ignore[misc]
        yield nodes
