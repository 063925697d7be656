"""A fleet as it is meant to run: three ``dvrlink-broker`` processes sharing one PostgreSQL registry
(``registry_url``) and one Redis, a real ``dvrlinkd`` registered on node c only, and a real
``dvrlink`` viewer that logs in, pairs and forwards through node a: the serial is bound once,
the account exists once, and every step reaches the device through Redis. A second computer
logged in at node b pairs and pings it too. Then Redis restarts and the forward works again.

Needs the PostgreSQL registry (``tests/support/postgres.py``, ``registry_url``); skipped without it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dvrlink.broker.config import BrokerConfig
from hil.cluster import add_fleet_user, fetch_page, fleet_configs, serve_page
from hil.loopback import (
    Broker,
    Daemon,
    Viewer,
    loopback_services_toml,
    make_daemon,
    start_broker,
    start_forward,
    stop_all,
    wait_for,
)
from tests.support.redis_server import RedisServer

if "registry_url" not in {f.name for f in dataclasses.fields(BrokerConfig)}:
    pytest.skip("needs the PostgreSQL registry (registry_url)", allow_module_level=True)
postgres = pytest.importorskip("tests.support.postgres", reason="needs the PostgreSQL registry fixture")
postgres_server = postgres.postgres_server
postgres_url = postgres.postgres_url

pytestmark = [pytest.mark.integration]

SERIAL = "DL-FLEET-0001"
PAGE = b"<h1>recorder on node c, viewer on node a</h1>\n"


def test_three_nodes_on_one_registry_pair_and_forward_across_nodes(
    tmp_path: Path,
    redis: RedisServer,
    postgres_url: str,  # the imported fixture
) -> None:
    configs = fleet_configs(tmp_path, redis.url, postgres_url)
    started: list[Daemon | Broker] = []
    web, web_port = serve_page(tmp_path, PAGE)
    try:
        nodes = {name: start_broker(tmp_path / name, config=configs[name]) for name in configs}
        started.extend(nodes.values())
        add_fleet_user(configs["b"], "alice", "correct horse")
        daemon = make_daemon(tmp_path, SERIAL, nodes["c"], extra_toml=loopback_services_toml(web_port))
        daemon.start()
        started.append(daemon)
        wait_for(f"{SERIAL} online at c", daemon.online, 30)

        viewer = Viewer(tmp_path / "viewer-a")
        viewer.login(nodes["a"], "alice", "correct horse")
        viewer.run("pair", daemon.pairing_uri())
        forward = start_forward(viewer, SERIAL, web_port, "--relay-only")
        try:
            assert fetch_page(forward.local_port) == PAGE
        finally:
            assert forward.stop() == 0
        log_a = nodes["a"].log.read_text(errors="replace")
        assert f"for {SERIAL} routed to node c" in log_a, "node a's requests went through node c"

        other = Viewer(tmp_path / "viewer-b")
        other.login(nodes["b"], "alice", "correct horse")
        other.run("pair", daemon.pairing_uri())  # this computer's own viewer key, paired through b
        ping = other.run("ping", SERIAL, check=False)
        assert ping.returncode == 0, (ping.stdout, ping.stderr)

        redis.restart()
        wait_for("node a to reach the device after the Redis restart",
                 lambda: viewer.run("ping", SERIAL, check=False).returncode == 0, 30)  # fmt: skip
        forward = start_forward(viewer, SERIAL, web_port, "--relay-only")
        try:
            assert fetch_page(forward.local_port) == PAGE
        finally:
            assert forward.stop() == 0
    finally:
        stop_all(list(reversed(started)))
        web.terminate()
        web.wait(10)
