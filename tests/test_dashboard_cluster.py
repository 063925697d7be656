"""The dashboard on a cluster: two broker nodes in one process on one real Redis, simulated
devices (real presence clients on UDP) registered at either node, and a viewer logged in at
node a. Presence on the pages (one MGET per page), live changes from the other node over the
fleet channel (and again after a Redis restart), the fleet counters summed over the nodes, and
the session path the viewer reports (``PATCH /v1/sessions/{id}``, sent by the viewer's own
``BrokerClient`` and ``PathReporter``).

Until the registry is shared (PostgreSQL), each node has its own SQLite registry: the tests give
node a the bindings, accounts and pairings a shared registry would hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_mock import MockerFixture
from redis import Redis as SyncRedis
from yarl import URL

from dvrlink.broker.cluster.fleet import (
    FLEET_CHANNEL,
    STATS_KEY,
    NodeStats,
    change_from_json,
    change_json,
    sum_stats,
)
from dvrlink.broker.cluster.node import presence_key
from dvrlink.broker.dashboard.feed import DashboardFeed, PresenceChanged
from dvrlink.broker.dashboard.routes import COOKIE
from dvrlink.protocol.identity import ed25519_public_bytes
from dvrlink.protocol.presence_client import ClientConfig, PresenceClient
from dvrlink.protocol.presence_events import InviteReceived, Registered
from dvrlink.protocol.presence_wire import INVITE_OK
from dvrlink.protocol.signalling import INVITE_KIND_SESSION, AnswerStatus, SessionAnswer, SessionOffer
from dvrlink.viewer.api_client import BrokerClient
from dvrlink.viewer.session_client import PathReporter
from tests.support.aio import run
from tests.support.broker import PASSWORD, Lab, SimulatedDevice
from tests.support.cluster import cluster_lab, node_cluster
from tests.support.dashboard import DashboardClient, next_presence
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until_async

ONLINE = '<dt>Online now</dt><dd data-field="online_count">{}</dd>'
D1 = "DL-DASH-0001"
D2 = "DL-DASH-0002"
D3 = "DL-DASH-0003"
STRANGER = "DL-DASH-0009"
DEVICE_CANDIDATE = "1 1 udp 2130706431 127.0.0.1 41000 typ host"
OFFER = {
    "ice_ufrag": "abcd",
    "ice_pwd": "a" * 22,
    "candidates": ["1 1 udp 2130706431 127.0.0.1 40000 typ host"],
    "viewer_public_key": "A" * 43 + "=",
    "end_of_candidates": True,
}


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path, redis: RedisServer, **settings: Any) -> AsyncIterator[tuple[Lab, Lab]]:
    """Nodes a (``node0``) and b (``node1``) sharing the fleet key, the TURN secret and Redis,
    each following the fleet channel."""
    async with cluster_lab(tmp_path, redis.url, 2, **settings) as nodes:
        for node in nodes:
            cluster = node_cluster(node)
            await wait_until_async(
                f"{cluster.node_id} to follow the fleet channel",
                lambda c=cluster: c.fleet.subscriptions >= 1,  # type: ignore[misc]
            )
        yield nodes[0], nodes[1]


def _holder(redis: RedisServer, serial: str) -> str | None:
    with SyncRedis.from_url(redis.url) as client:
        value = client.get(presence_key(serial))
    return None if value is None else bytes(value).decode()


async def _located(redis: RedisServer, serial: str, node: str | None) -> None:
    await wait_until_async(
        f"p:{serial} to name {node!r}",
        lambda: _holder(redis, serial) == node,
        seen=lambda: _holder(redis, serial),
    )


class SessionDevice(SimulatedDevice):
    """A simulated device that also accepts session offers; ``key``: another presence client of a
    device that exists (the same key, after a move to another node)."""

    def __init__(self, serial: str, broker_key: bytes, key: Ed25519PrivateKey | None = None) -> None:
        super().__init__(serial, broker_key)
        if key is not None:
            self.key = key
            self.public_key = ed25519_public_bytes(key)
            self.client = PresenceClient(
                ClientConfig(serial=serial, broker_public_key=broker_key, reply_timeout=1.0), key
            )

    def answer(self, invite: InviteReceived) -> None:
        if invite.kind != INVITE_KIND_SESSION:
            super().answer(invite)
            return
        assert SessionOffer.decode(invite.body).session_id
        answer = SessionAnswer(AnswerStatus.ACCEPTED, "wxyz", "b" * 22, (DEVICE_CANDIDATE,), "", True)
        self.client.reply_invite(invite.invite_id, INVITE_OK, answer.encode(), self.loop.time())


async def _device_at(node: Lab, serial: str, key: Ed25519PrivateKey | None = None) -> SimulatedDevice:
    device = SessionDevice(serial, node.broker.info.public_key, key)
    node.devices.append(device)
    await device.start(node.broker.info.udp_port)
    await device.next_event(Registered)
    return device


def _share(node: Lab, device: SimulatedDevice, *users: str) -> None:
    """Give ``node`` the binding of ``device`` and ``users``' pairings, as a shared registry would."""
    registry = node.broker.registry
    assert registry.check_binding(device.serial, device.public_key, time.time(), False) is not None
    for user in users:
        if registry.password_record(user) is None:
            registry.create_user(user, PASSWORD, time.time())
        registry.record_pairing(user, device.serial, os.urandom(32), time.time())


def _row(page: str, serial: str) -> str:
    start = page.index(f'<tr data-serial="{serial}">')
    return page[start:].split("</tr>", maxsplit=1)[0]


def test_pages_show_a_device_online_at_any_node_in_one_redis_round_trip(
    tmp_path: Path, redis: RedisServer, mocker: MockerFixture
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis) as (a, b):
            at_b = [await _device_at(b, D1), await _device_at(b, D2)]
            at_a = await _device_at(a, D3)
            for device in (*at_b, at_a):
                _share(a, device, "alice")
            await _located(redis, D1, "node1")
            await _located(redis, D2, "node1")
            await _located(redis, D3, "node0")
            locate = mocker.spy(node_cluster(a).fleet, "locate")
            browser = DashboardClient(a.broker)
            try:
                assert (await browser.login("alice", PASSWORD))[0] == 303
                locate.reset_mock()
                status, page, _resp = await browser.get("/dashboard/devices")
                assert status == 200
                for serial in (D1, D2, D3):
                    assert 'class="state online">online<' in _row(page, serial), _row(page, serial)
                assert locate.call_count == 1, "one Redis round trip for the whole list"
                assert sorted(locate.call_args.args[0]) == [D1, D2, D3]
                assert 'class="notice"' not in page

                status, page, _resp = await browser.get(f"/dashboard/devices/{D1}")
                assert status == 200 and 'class="state online">online<' in page
                assert 'broker node: <span data-field="node">node1</span>' in page
                status, page, _resp = await browser.get(f"/dashboard/devices/{D3}")
                assert 'broker node: <span data-field="node">node0</span>' in page

                at_b[1].close()  # goodbye at b: offline for a's pages too
                b.devices.remove(at_b[1])
                await _located(redis, D2, None)
                status, page, _resp = await browser.get("/dashboard/devices")
                assert 'class="state offline">offline<' in _row(page, D2), _row(page, D2)

                redis.stop()  # the page still renders, from node a's own knowledge, and says so
                status, page, _resp = await browser.get("/dashboard/devices")
                assert status == 200
                assert "Only this node's knowledge is shown" in page and "Redis" in page
                assert 'class="state online">online<' in _row(page, D3)
                assert 'class="state offline">offline<' in _row(page, D1), "a cannot know b's devices now"
                status, page, _resp = await browser.get(f"/dashboard/devices/{D3}")
                assert status == 200 and 'broker node: <span data-field="node">node0</span>' in page
                assert "Only this node's knowledge is shown" in page
            finally:
                await browser.close()

    run(main)


def _login_keys(redis: RedisServer) -> dict[str, tuple[bytes, int]]:
    """The dashboard logins in Redis: key -> (value, milliseconds to live)."""
    with SyncRedis.from_url(redis.url) as client:
        keys = [bytes(k).decode() for k in client.scan_iter(match="w:*")]
        return {k: (bytes(client.get(k) or b""), int(client.pttl(k))) for k in keys}


def test_a_login_made_at_one_node_works_at_the_other_and_a_logout_at_either_ends_it_on_both(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Two nodes behind one name (a load balancer): the browser's cookie names a login kept in
    Redis under the hash of its id, with the login's expiry."""

    async def main() -> None:
        async with fleet(tmp_path, redis) as (a, b):
            device = await _device_at(b, D1)
            for node in (a, b):
                _share(node, device, "alice")
            at_a, at_b = DashboardClient(a.broker), DashboardClient(b.broker)
            try:
                assert (await at_a.login("alice", PASSWORD))[0] == 303
                cookies = at_a.http.cookie_jar.filter_cookies(URL(at_a.origin))
                session_id = cookies[COOKIE].value
                stored = _login_keys(redis)
                key = "w:" + hashlib.sha256(session_id.encode()).hexdigest()
                assert list(stored) == [key], stored
                value, ttl_ms = stored[key]
                assert session_id.encode() not in value and session_id not in key
                ttl = a.broker.config.dashboard_session_ttl_s
                assert 0.9 * ttl * 1000 < ttl_ms <= ttl * 1000, ttl_ms
                assert json.loads(value)["u"] == "alice" and json.loads(value)["c"] == at_a.csrf

                # The same cookie at node b (another port of one host: cookies ignore ports).
                at_b.http.cookie_jar.update_cookies({COOKIE: session_id}, URL(at_b.origin))
                status, page, _resp = await at_b.get("/dashboard/devices")
                assert status == 200 and "alice" in page and D1 in page, page[:300]
                assert at_b.csrf == at_a.csrf, "one login, one CSRF token"
                async with at_b.http.get("/dashboard/events") as stream:
                    assert stream.status == 200
                    await next_presence(stream, D1, "online")

                # A logout at b ends the login at a too.
                status, _page, resp = await at_b.post("/dashboard/logout", {})
                assert status == 303 and resp.headers["Location"] == "/dashboard/login"
                assert _login_keys(redis) == {}
                status, _page, resp = await at_a.get("/dashboard/devices")
                assert status == 303 and resp.headers["Location"] == "/dashboard/login"

                # And the other way round, with a login made at b.
                assert (await at_b.login("alice", PASSWORD))[0] == 303
                session_id = at_b.http.cookie_jar.filter_cookies(URL(at_b.origin))[COOKIE].value
                at_a.http.cookie_jar.update_cookies({COOKIE: session_id}, URL(at_a.origin))
                status, _page, _resp = await at_a.get("/dashboard/devices")
                assert status == 200
                assert (await at_a.post("/dashboard/logout", {}))[0] == 303
                status, _page, _resp = await at_b.get("/dashboard/devices")
                assert status == 303

                # Redis down: a login made before keeps working at the node that saw it; no new
                # login can be made (the page says why), and a logout still ends it there.
                assert (await at_a.login("alice", PASSWORD))[0] == 303
                redis.stop()
                status, page, _resp = await at_a.get("/dashboard/devices")
                assert status == 200 and "Only this node's knowledge is shown" in page
                late = DashboardClient(a.broker)
                try:
                    status, page, resp = await late.login("alice", PASSWORD)
                    assert status == 503 and "Redis" in page and resp.headers["Retry-After"] == "5", page
                finally:
                    await late.close()
                assert (await at_a.post("/dashboard/logout", {}))[0] == 303
                status, _page, _resp = await at_a.get("/dashboard/devices")
                assert status == 303
            finally:
                await at_a.close()
                await at_b.close()

    run(main)


async def _stream_ends(stream: Any) -> None:
    async def drain() -> None:
        while await stream.content.readline():
            pass

    try:
        await asyncio.wait_for(drain(), 10.0)
    except TimeoutError:
        raise AssertionError("the stream did not end within 10 s after Redis restarted") from None


def test_live_changes_at_another_node_reach_the_viewer_and_resume_after_a_redis_restart(
    tmp_path: Path, redis: RedisServer
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis) as (a, b):
            device = await _device_at(b, D1)
            stranger = await _device_at(b, STRANGER)
            _share(a, device, "alice")
            _share(a, stranger, "bob")
            await _located(redis, D1, "node1")
            browser = DashboardClient(a.broker)
            loop = asyncio.get_running_loop()
            try:
                await browser.login("alice", PASSWORD)
                async with browser.http.get("/dashboard/events") as stream:
                    assert stream.status == 200
                    lines: list[str] = []
                    snapshot = await next_presence(stream, D1, "online", lines)
                    assert snapshot["node"] == "node1", snapshot
                    stranger.client.stop(loop.time())
                    stranger.flush()
                    device.client.stop(loop.time())  # GOODBYE at b
                    device.flush()
                    update = await next_presence(stream, D1, "offline", lines)
                    assert update["node"] == "" and "online_count" not in update, update
                    device.client.start(loop.time())  # back, at b
                    device.flush()
                    update = await next_presence(stream, D1, "online", lines)
                    assert update["node"] == "node1", update
                    assert not [line for line in lines if STRANGER in line], "bob's device leaked to alice"
                    assert node_cluster(a).fleet.received >= 3

                    subscribed = node_cluster(a).fleet.subscriptions
                    redis.restart()  # an empty Redis: a resubscribes, and its followers start over
                    await _stream_ends(stream)
                await wait_until_async(
                    "node a to subscribe again", lambda: node_cluster(a).fleet.subscriptions > subscribed
                )
                await wait_until_async(
                    "node b to subscribe again", lambda: node_cluster(b).fleet.subscriptions > subscribed
                )
                await _located(redis, D1, "node1")  # b rebuilt its presence keys
                # The logins lived in that Redis too (no persistence here): log in again.
                status, _page, resp = await browser.get("/dashboard/devices")
                assert status == 303 and resp.headers["Location"] == "/dashboard/login"
                assert (await browser.login("alice", PASSWORD))[0] == 303
                async with browser.http.get("/dashboard/events") as stream:
                    lines = []
                    await next_presence(stream, D1, "online", lines)
                    device.client.stop(loop.time())
                    device.flush()
                    await next_presence(stream, D1, "offline", lines)
            finally:
                await browser.close()

    run(main)


def test_a_late_offline_from_the_old_node_of_a_device_that_moved_shows_it_online_at_the_new_one(
    tmp_path: Path, redis: RedisServer
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis) as (a, b):
            old = await _device_at(b, D1)
            _share(a, old, "alice")
            sentinel_key = Ed25519PrivateKey.generate()
            registry = a.broker.registry
            assert (
                registry.check_binding(D3, ed25519_public_bytes(sentinel_key), time.time(), False) is not None
            )
            registry.record_pairing("alice", D3, os.urandom(32), time.time())
            await _located(redis, D1, "node1")
            browser = DashboardClient(a.broker)
            try:
                await browser.login("alice", PASSWORD)
                async with browser.http.get("/dashboard/events") as stream:
                    lines: list[str] = []
                    assert (await next_presence(stream, D1, "online", lines))["node"] == "node1"
                    await _device_at(a, D1, old.key)  # the device moved to a; b has not noticed
                    await _located(redis, D1, "node0")
                    mark = len(lines)
                    old.close()  # b's late GOODBYE: b publishes offline
                    b.devices.remove(old)
                    await wait_until_async(
                        "b's offline to reach a",
                        lambda: node_cluster(a).fleet.received >= 2,
                        seen=lambda: lines,
                    )
                    sentinel = await _device_at(a, D3, sentinel_key)  # a later change: all before it was sent
                    sentinel.close()
                    a.devices.remove(sentinel)
                    await next_presence(stream, D3, "online", lines)  # (its snapshot said offline)
                    await next_presence(stream, D3, "offline", lines)
                    updates = [json.loads(line[6:]) for line in lines[mark:] if line.startswith("data: ")]
                    of_d1 = [(u["state"], u["node"]) for u in updates if u["serial"] == D1]
                    assert of_d1 == [("online", "node0"), ("online", "node0")], (of_d1, lines)
            finally:
                await browser.close()

    run(main)


def test_the_feed_takes_other_nodes_changes_without_counting_their_registrations() -> None:
    async def main() -> None:
        feed = DashboardFeed(queue_size=2)
        follower = feed.subscribe(frozenset({D1}))
        feed.on_remote(PresenceChanged(D1, True, 100.0, "198.51.100.7:1", node="node1"))
        feed.on_remote(PresenceChanged(D2, True, 100.0, "198.51.100.7:2", node="node1"))
        assert feed.registrations_per_minute(101.0) == 0.0, "node1 counts its own registrations"
        assert follower.queue.get_nowait() == PresenceChanged(
            D1, True, 100.0, "198.51.100.7:1", None, "node1"
        )
        assert follower.queue.empty(), "another device's change"
        assert [c.node for c in feed.history(D1)] == ["node1"]
        feed.resync()  # the channel was lost: every follower starts over
        assert follower.queue.get_nowait() is None and feed.subscribers == 0

    run(main)


def _stats(redis: RedisServer) -> dict[str, NodeStats]:
    with SyncRedis.from_url(redis.url) as client:
        fields = client.hgetall(STATS_KEY)
    return {node: stats for node, _at, stats in (NodeStats.from_json(v) for v in fields.values())}


def test_the_fleet_page_sums_every_nodes_counters(tmp_path: Path, redis: RedisServer) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis, dashboard_operators=["olga"]) as (a, b):
            devices = [await _device_at(b, D1), await _device_at(b, D2), await _device_at(a, D3)]
            for device in devices:
                _share(a, device)
            a.broker.registry.create_user("olga", PASSWORD, time.time())
            await wait_until_async(
                "both nodes to write their counters",
                lambda: {n: s.online for n, s in _stats(redis).items()} == {"node0": 1, "node1": 2},
                seen=lambda: _stats(redis),
            )
            with SyncRedis.from_url(redis.url) as client:
                assert client.type(STATS_KEY) == b"hash"
                assert client.ttl(STATS_KEY) == -1, "the hash lives on; stale fields are dropped by readers"
            browser = DashboardClient(a.broker)
            try:
                await browser.login("olga", PASSWORD)
                status, page, _resp = await browser.get("/dashboard/fleet")
                assert status == 200
                assert "Counters of 2 nodes: node0, node1." in page, page
                assert ONLINE.format(3) in page
                assert "<dt>Devices bound</dt><dd>3</dd>" in page
                rate = page.split("<dt>Registrations per minute (last minute)</dt><dd>")[1].split("<")[0]
                assert float(rate) == 3.0, rate
                table = page.split('<table class="buckets">')[1]
                buckets = [
                    int(row.split("<td>", 1)[1].split("<")[0])
                    for row in table.split('<tr><th scope="row">')[1:]
                ]
                assert sum(buckets) == 3, buckets

                # a node that stops is no longer counted once its counters are stale
                stale = json.loads(NodeStats(7, 0.0, (7,), 0, ()).to_json("gone", 0))
                with SyncRedis.from_url(redis.url) as client:
                    client.hset(STATS_KEY, "gone", json.dumps(stale))
                status, page, _resp = await browser.get("/dashboard/fleet")
                assert ONLINE.format(3) in page and "gone" not in page
                assert "gone" not in _stats(redis), "the reader removed the stale field"

                redis.stop()
                status, page, _resp = await browser.get("/dashboard/fleet")
                assert status == 200 and "Redis cannot be reached" in page
                assert ONLINE.format(1) in page, "node a's own count"
            finally:
                await browser.close()

    run(main)


async def _next_count(stream: Any, count: int, lines: list[str]) -> None:
    """Read SSE messages until one carries ``online_count`` ``count``; bounded."""

    async def scan() -> None:
        while True:
            raw = await stream.content.readline()
            assert raw, f"the stream ended; seen: {lines}"
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if line.startswith("data: ") and json.loads(line[6:]).get("online_count") == count:
                return

    try:
        await asyncio.wait_for(scan(), 10.0)
    except TimeoutError:
        raise AssertionError(f"no online_count {count} within 10 s; seen: {lines}") from None


def test_the_fleet_pages_online_figure_follows_changes_at_every_node_live(
    tmp_path: Path, redis: RedisServer
) -> None:
    """An operator's stream at node a carries the fleet's online count with every change: node
    b's count rides on b's changes (``c``), node a's own is read at the change; a viewer's
    stream carries none."""

    async def main() -> None:
        async with fleet(tmp_path, redis, dashboard_operators=["olga"]) as (a, b):
            first = await _device_at(b, D1)
            for node in (a, b):
                _share(node, first, "alice")
            a.broker.registry.create_user("olga", PASSWORD, time.time())
            await _located(redis, D1, "node1")
            await wait_until_async(
                "node b to write its counters",
                lambda: {n: s.online for n, s in _stats(redis).items()}.get("node1") == 1,
                seen=lambda: _stats(redis),
            )
            operator, viewer = DashboardClient(a.broker), DashboardClient(a.broker)
            loop = asyncio.get_running_loop()
            try:
                await operator.login("olga", PASSWORD)
                await viewer.login("alice", PASSWORD)
                status, page, _resp = await operator.get("/dashboard/fleet")
                assert status == 200 and ONLINE.format(1) in page, page
                async with (
                    operator.http.get("/dashboard/events") as stream,
                    viewer.http.get("/dashboard/events") as viewer_stream,
                ):
                    lines: list[str] = []
                    await _next_count(stream, 1, lines)  # the counters event at the start
                    assert "event: counters" in lines
                    await _device_at(b, D2)  # at b: its count comes with its change
                    update = await next_presence(stream, D2, "online", lines)
                    assert update["online_count"] == 2 and update["node"] == "node1", update
                    await _device_at(a, D3)  # at a: a's own count
                    update = await next_presence(stream, D3, "online", lines)
                    assert update["online_count"] == 3, update
                    first.client.stop(loop.time())  # goodbye at b
                    first.flush()
                    update = await next_presence(stream, D1, "offline", lines)
                    assert update["online_count"] == 2, update
                    viewer_lines: list[str] = []
                    await next_presence(viewer_stream, D1, "offline", viewer_lines)
                    assert not [line for line in viewer_lines if "online_count" in line], viewer_lines
                    assert "event: counters" not in viewer_lines
            finally:
                await operator.close()
                await viewer.close()

    run(main)


def test_node_counters_and_changes_read_back_strictly() -> None:
    one = NodeStats(2, 1.5, (1, 1, 0, 0, 0), 3, (("relay", 2), ("unknown", 1)))
    node, at, back = NodeStats.from_json(one.to_json("node0", 1234))
    assert (node, at, back) == ("node0", 1234, one)
    total = sum_stats((one, NodeStats(1, 0.5, (0, 0, 1, 0, 0), 1, (("lan", 1),))))
    assert total == NodeStats(3, 2.0, (1, 1, 1, 0, 0), 4, (("lan", 1), ("relay", 2), ("unknown", 1)))
    for bad in ("{}", "[]", '{"node":"x","at":1,"online":"many"}', "not json"):
        with pytest.raises(ValueError, match="bad node counters"):
            NodeStats.from_json(bad)
    change = change_from_json('{"n":"node1","s":"S","o":1,"t":5.0,"a":"1.2.3.4:5"}')
    assert change == PresenceChanged("S", True, 5.0, "1.2.3.4:5", None, "node1")
    change = change_from_json('{"n":"node1","s":"S","o":0,"t":5.0,"r":"goodbye","c":7}')
    assert change == PresenceChanged("S", False, 5.0, None, "goodbye", "node1", 7)
    assert change_from_json(change_json("node1", change)) == change
    for bad in (
        '{"n":"x","s":"S","o":2,"t":1}',
        '{"n":"x","s":1,"o":1,"t":1}',
        '{"n":"x"}',
        "x" * 5000,
        '{"n":"x","s":"S","o":1,"t":1,"c":-1}',
        '{"n":"x","s":"S","o":1,"t":1,"c":true}',
    ):
        with pytest.raises(ValueError):
            change_from_json(bad)
    assert FLEET_CHANNEL == "e:presence"


def test_the_viewer_reports_the_session_path_and_the_pages_show_it(
    tmp_path: Path, redis: RedisServer
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis, dashboard_operators=["olga"]) as (a, b):
            device = await _device_at(b, D1)
            _share(a, device, "alice")
            _share(b, device, "alice")
            a.broker.registry.create_user("olga", PASSWORD, time.time())
            await _located(redis, D1, "node1")
            auth = await a.login("alice")
            status, created = await a.call("POST", "/v1/sessions", auth, json={"serial": D1})
            assert status == 201, created
            assert created["path"] is None
            session = created["session_id"]
            url = f"/v1/sessions/{session}"
            status, early = await a.call("PATCH", url, auth, json={"path": "relay"})
            assert (status, early["error"]) == (409, "session_not_answered"), early
            status, answer = await a.call("POST", f"{url}/offer", auth, json=OFFER)
            assert status == 200 and answer["status"] == "accepted", answer

            for bad in ({"path": "wifi"}, {"path": "relay", "extra": 1}, {}, {"path": None}):
                status, refused = await a.call("PATCH", url, auth, json=bad)
                assert (status, refused["error"]) == (400, "bad_request"), (bad, refused)
            status, refused = await a.call("PATCH", "/v1/sessions/" + "0" * 32, auth, json={"path": "lan"})
            assert (status, refused["error"]) == (404, "unknown_session")
            bob = await a.login("bob")
            status, refused = await a.call("PATCH", url, bob, json={"path": "lan"})
            assert status == 404, "another account's session is unknown to bob"
            status, relayed = await a.call(
                "POST", "/v1/sessions", auth, json={"serial": D1, "policy": "relay_only"}
            )
            assert status == 201, relayed
            relayed_url = f"/v1/sessions/{relayed['session_id']}"
            status, answer = await a.call("POST", f"{relayed_url}/offer", auth, json=OFFER)
            assert status == 200, answer
            status, refused = await a.call("PATCH", relayed_url, auth, json={"path": "direct"})
            assert (status, refused["error"]) == (400, "bad_request") and "relay_only" in refused["message"]
            status, _ended = await a.call("DELETE", relayed_url, auth)
            assert status == 200

            # the viewer's own client and reporter, as `dvrlink forward` runs them
            token = auth["Authorization"].removeprefix("Bearer ")
            base = f"https://localhost:{a.broker.info.https_port}"
            async with BrokerClient(base, cacert=str(a.broker.info.cert), token=token) as client:
                reporter = PathReporter(session, client.report_path)
                reporter.start()
                try:
                    reporter.changed(("relay", 0))
                    await wait_until_async("the relay path reported", lambda: reporter.reported == ["relay"])
                    operator = DashboardClient(a.broker)
                    viewer = DashboardClient(a.broker)
                    try:
                        await operator.login("olga", PASSWORD)
                        await viewer.login("alice", PASSWORD)
                        _status, page, _resp = await viewer.get("/dashboard/devices")
                        assert ">1 open: 1 relay<" in _row(page, D1), _row(page, D1)
                        await node_cluster(a).fleet.write_stats()
                        _status, page, _resp = await operator.get("/dashboard/fleet")
                        assert "<dt>Relay share of sessions</dt><dd>100 %</dd>" in page
                        assert "<dt>Sessions by path</dt><dd>1 relay</dd>" in page

                        reporter.changed(("lan", 0))  # moved to the LAN: folded into one report
                        reporter.changed(("direct", 0))
                        await wait_until_async(
                            "the direct path reported", lambda: reporter.reported[-1:] == ["direct"]
                        )
                        _status, page, _resp = await viewer.get(f"/dashboard/devices/{D1}")
                        assert "<dd>1 open: 1 direct</dd>" in page
                        await node_cluster(a).fleet.write_stats()
                        _status, page, _resp = await operator.get("/dashboard/fleet")
                        assert "<dt>Relay share of sessions</dt><dd>0 %</dd>" in page
                    finally:
                        await operator.close()
                        await viewer.close()
                finally:
                    await reporter.stop()

            # node b continues the session from the shared record, path included
            auth_b = await b.login("alice")
            status, moved = await b.call("PATCH", url, auth_b, json={"path": "relay"})
            assert status == 200 and moved["path"] == "relay", moved
            with SyncRedis.from_url(redis.url) as client:
                stored = json.loads(client.get(f"s:{session}") or b"{}")
            assert stored["w"] == "relay", stored
            # ... and the fleet counts the session once, at the node that created it
            await node_cluster(b).fleet.write_stats()
            await node_cluster(a).fleet.write_stats()
            total = sum_stats(_stats(redis).values())
            assert total.sessions == 1, _stats(redis)

    run(main)
