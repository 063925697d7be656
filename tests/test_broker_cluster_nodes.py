"""Two real ``dvrlink-broker`` processes on one real Redis, with a real ``dvrlinkd`` and a real
``dvrlink forward``: the device is registered on node C, the viewer's broker is node B, and bytes
move through the forward. Then Redis restarts and the forward works again once node C has
re-written the device's location; then node C is killed and B says at once that the device is
offline.

Until the registry is shared (PostgreSQL), each node has its own SQLite registry, so the device
first registers on B (B binds its serial and the viewer pairs there), then moves to C (the daemon
restarted with C's port, as a broker list's failover would do); a shared registry makes that
first step unnecessary.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dvrlink.protocol.pairing import PairingUri
from hil.cluster import fetch_page, fleet_files, node_config, serve_page
from hil.loopback import (
    Broker,
    Daemon,
    Viewer,
    add_user,
    loopback_services_toml,
    make_daemon,
    start_broker,
    start_forward,
    stop_all,
    wait_for,
)
from tests.support.redis_server import RedisServer

pytestmark = [pytest.mark.integration]

SERIAL = "DL-NODES-0001"
PAGE = b"<h1>recorder behind node C</h1>\n"


def test_a_forward_through_node_b_reaches_a_daemon_registered_on_node_c(
    tmp_path: Path, redis: RedisServer
) -> None:
    fleet_key, secret = fleet_files(tmp_path / "fleet")
    started: list[Daemon | Broker] = []
    web, web_port = serve_page(tmp_path, PAGE)
    try:
        node_b = start_broker(tmp_path / "b", config=node_config(tmp_path, "b", redis.url, fleet_key, secret))
        started.append(node_b)
        node_c = start_broker(tmp_path / "c", config=node_config(tmp_path, "c", redis.url, fleet_key, secret))
        started.append(node_c)
        assert node_b.public_key == node_c.public_key, "one fleet key on every node"
        add_user(node_b.state_dir, "alice", "correct horse")

        # First registration on B: B's registry binds the serial and the viewer pairs there.
        daemon = make_daemon(tmp_path, SERIAL, node_b, extra_toml=loopback_services_toml(web_port))
        daemon.start()
        started.append(daemon)
        wait_for(f"{SERIAL} online at b", daemon.online, 30)
        viewer = Viewer(tmp_path / "viewer")
        viewer.login(node_b, "alice", "correct horse")
        viewer.run("pair", SERIAL, PairingUri.parse(daemon.pairing_uri()).code)
        daemon.stop()

        # The device moves to C; the viewer keeps talking to B.
        moved = make_daemon(tmp_path, SERIAL, node_c, extra_toml=loopback_services_toml(web_port))
        assert moved.config == daemon.config
        moved.start()
        started.append(moved)
        wait_for(f"{SERIAL} online at c", moved.online, 30)
        wait_for("b to route to c", lambda: viewer.run("ping", SERIAL, check=False).returncode == 0, 30)

        forward = start_forward(viewer, SERIAL, web_port, "--relay-only")
        try:
            assert fetch_page(forward.local_port) == PAGE
        finally:
            assert forward.stop() == 0
        routed = f"for {SERIAL} routed to node c"
        assert routed in node_b.log.read_text(errors="replace"), f"node b's log has no {routed!r}"
        assert f"for {SERIAL} from node b" in node_c.log.read_text(errors="replace")

        # Redis restarts empty: node C writes the location again and B finds the device.
        redis.restart()
        wait_for(
            "the forward to work again after the Redis restart",
            lambda: viewer.run("ping", SERIAL, check=False).returncode == 0,
            30,
        )
        forward = start_forward(viewer, SERIAL, web_port, "--relay-only")
        try:
            assert fetch_page(forward.local_port) == PAGE
        finally:
            assert forward.stop() == 0

        # Node C dies: B answers "offline" at once (nobody listens on C's channel any more).
        node_c.stop(signal.SIGKILL)
        started.remove(node_c)
        ping = viewer.run("ping", SERIAL, check=False, timeout=30)
        assert ping.returncode != 0 and "offline" in ping.stderr, (ping.stdout, ping.stderr)
        assert "located at node c, which is not listening" in node_b.log.read_text(errors="replace")
    finally:
        stop_all(list(reversed(started)))
        web.terminate()
        web.wait(10)
