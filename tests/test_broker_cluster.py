"""Broker nodes on one real Redis, in one process: presence location, invites routed across nodes
(ping, pairing, a whole session signalled on different nodes), shared failure counters, the fleet
key, Redis restarts, and the Redis memory per online device.

Until the registry is shared (PostgreSQL), each node has its own SQLite registry: the tests bind
the device and create the account on the node the viewer talks to, as a shared registry would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from dvrlink.broker.cluster.directory import MIN_TTL_S, LocationBook, PresenceDirectory, key_ttl
from dvrlink.broker.cluster.node import load_fleet_key, node_channel, presence_key
from dvrlink.broker.config import ConfigError, config_from_mapping
from dvrlink.protocol.identity import ed25519_public_bytes, x25519_public_bytes
from dvrlink.protocol.pairing import PairingGuard
from dvrlink.protocol.presence_client import ClientConfig, ClientState, PresenceClient
from dvrlink.protocol.presence_events import HandshakeUnanswered, InviteReceived, Registered
from dvrlink.protocol.presence_wire import INVITE_OK
from dvrlink.protocol.signalling import (
    INVITE_KIND_CANDIDATES,
    INVITE_KIND_SESSION,
    AnswerStatus,
    CandidateUpdate,
    SessionAnswer,
    SessionOffer,
)
from tests.support.aio import run
from tests.support.broker import CODE, Lab, SimulatedDevice, lab, pairing_body
from tests.support.cluster import cluster_lab, node_cluster
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until_async

SERIAL = "DL-CLUSTER-0001"
HOST_CANDIDATE = "1 1 udp 2130706431 127.0.0.1 40000 typ host"
DEVICE_CANDIDATE = "1 1 udp 2130706431 127.0.0.1 41000 typ host"
OFFER = {
    "ice_ufrag": "abcd",
    "ice_pwd": "a" * 22,
    "candidates": [HOST_CANDIDATE],
    "viewer_public_key": "A" * 43 + "=",
    "end_of_candidates": False,
}


class SessionDevice(SimulatedDevice):
    """A simulated device that also accepts session offers and candidate updates; ``key`` makes
    another presence client of a device that exists (the same key, e.g. after a move)."""

    def __init__(self, serial: str, broker_key: bytes, key: Ed25519PrivateKey | None = None) -> None:
        super().__init__(serial, broker_key)
        if key is not None:
            self.key = key
            self.public_key = ed25519_public_bytes(key)
            self.guard = PairingGuard(serial, self.public_key, CODE)
            self.client = PresenceClient(
                ClientConfig(serial=serial, broker_public_key=broker_key, reply_timeout=1.0), key
            )

    def answer(self, invite: InviteReceived) -> None:
        now = self.loop.time()
        if invite.kind == INVITE_KIND_SESSION:
            offer = SessionOffer.decode(invite.body)
            answer = SessionAnswer(AnswerStatus.ACCEPTED, "wxyz", "b" * 22, (DEVICE_CANDIDATE,), "", False)
            assert offer.session_id
            self.client.reply_invite(invite.invite_id, INVITE_OK, answer.encode(), now)
        elif invite.kind == INVITE_KIND_CANDIDATES:
            update = CandidateUpdate.decode(invite.body)
            reply = CandidateUpdate(update.session_id, (DEVICE_CANDIDATE,), True)
            self.client.reply_invite(invite.invite_id, INVITE_OK, reply.encode(), now)
        else:
            super().answer(invite)


@contextlib.asynccontextmanager
async def fleet(
    tmp_path: Path, redis: RedisServer, count: int = 2, **settings: Any
) -> AsyncIterator[list[Lab]]:
    async with cluster_lab(tmp_path, redis.url, count, **settings) as nodes:
        yield nodes


async def _device_at(node: Lab, serial: str = SERIAL, device: SessionDevice | None = None) -> SessionDevice:
    if device is None:
        device = SessionDevice(serial, node.broker.info.public_key)
    node.devices.append(device)
    await device.start(node.broker.info.udp_port)
    await device.next_event(Registered)
    return device


def _holder(redis: RedisServer, serial: str) -> str | None:
    """The node ``p:<serial>`` names now (a blocking GET on loopback, for wait conditions)."""
    with SyncRedis.from_url(redis.url) as client:
        value = client.get(presence_key(serial))
    return None if value is None else bytes(value).decode()


def _listeners(redis: RedisServer, node: str) -> int:
    """How many connections are subscribed to ``node``'s invite channel now."""
    with SyncRedis.from_url(redis.url) as client:
        counts = client.pubsub_numsub(node_channel(node))
    return int(counts[0][1]) if counts else 0


async def _located(redis: RedisServer, serial: str, node: str | None) -> None:
    await wait_until_async(
        f"p:{serial} to name {node!r}",
        lambda: _holder(redis, serial) == node,
        seen=lambda: _holder(redis, serial),
    )


# --- the presence location core, no I/O -------------------------------------------------------


def test_the_location_book_claims_refreshes_at_half_the_ttl_and_releases() -> None:
    intervals: dict[str, float] = {"A": 10.0, "B": 0.5}
    book = LocationBook(intervals.get)
    book.online("A")
    book.online("B")
    assert book.get_timer() == 0.0
    writes = book.take_writes(100.0)
    assert sorted(writes.claims) == [("A", 20_000), ("B", round(MIN_TTL_S * 1000))]
    assert not writes.refreshes and not writes.releases
    assert book.get_timer() == 100.0 + MIN_TTL_S / 2  # B: the shortest key is due first
    assert not book.take_writes(100.5), "nothing is due before half the ttl"
    assert book.take_writes(101.0).refreshes == [("B", 2000)]
    book.offline("A")
    writes = book.take_writes(130.0)
    assert writes.releases == ["A"]
    assert [s for s, _ in writes.refreshes] == ["B"]
    del intervals["B"]  # the core no longer has it online: no refresh, no key kept
    assert not book.take_writes(200.0).refreshes
    assert len(book) == 0


def test_the_location_book_rewrites_every_held_device_after_a_rebuild() -> None:
    book = LocationBook(lambda serial: 20.0)
    for n in range(5):
        book.online(f"S{n}")
    book.take_writes(0.0)
    assert not book.take_writes(1.0)
    assert book.rebuild() == 5
    assert sorted(s for s, _ in book.take_writes(1.0).refreshes) == [f"S{n}" for n in range(5)]
    book.lost("S0")  # another node holds it
    assert book.rebuild() == 4
    assert key_ttl(20.0) == 40.0


# --- nodes on one Redis --------------------------------------------------------------------------


def test_a_device_location_names_its_node_and_only_that_node_releases_it(
    tmp_path: Path, redis: RedisServer
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis) as (b, c):
            client = Redis.from_url(redis.url)
            try:
                device = await _device_at(c)
                await _located(redis, SERIAL, "node1")
                info = c.broker.server.presence(SERIAL)
                assert info is not None and info.keepalive_interval is not None
                ttl_ms = await client.pttl(presence_key(SERIAL))
                assert 0 < ttl_ms <= key_ttl(info.keepalive_interval) * 1000, f"ttl {ttl_ms} ms"
                # The device moves to b; c sees its GOODBYE later and must not delete b's key.
                await _device_at(b, device=SessionDevice(SERIAL, b.broker.info.public_key, device.key))
                await _located(redis, SERIAL, "node0")
                sent = node_cluster(c).directory.writes_sent
                device.close()
                c.devices.remove(device)
                await wait_until_async(
                    "c to send its release", lambda: node_cluster(c).directory.writes_sent > sent
                )
                await _located(redis, SERIAL, "node0")
                # And the holder's own goodbye deletes the key.
                b.devices[-1].close()
                b.devices.clear()
                await _located(redis, SERIAL, None)
            finally:
                await client.aclose()

    run(main)


async def _viewer_on(node: Lab, device: SimulatedDevice) -> dict[str, str]:
    """Log in on ``node`` after giving it what a shared registry would hold: the device's binding."""
    verdict = node.broker.registry.check_binding(device.serial, device.public_key, time.time(), False)
    assert verdict is not None
    return await node.login()


def test_ping_and_pairing_on_one_node_reach_a_device_on_another(tmp_path: Path, redis: RedisServer) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis) as (b, c):
            device = await _device_at(c)
            auth = await _viewer_on(b, device)
            await _located(redis, SERIAL, "node1")
            body, _ = pairing_body(device)
            status, answer = await b.call("POST", f"/v1/devices/{SERIAL}/pairings", auth, json=body)
            assert (status, answer.get("status")) == (200, "paired"), answer
            status, answer = await b.call("POST", f"/v1/devices/{SERIAL}/ping", auth)
            assert status == 200 and answer["rtt_ms"] >= 0, answer
            assert node_cluster(b).router.routed_out == 2 and node_cluster(c).router.routed_in == 2
            assert len(device.invites) == 2
            status, listed = await b.call("GET", "/v1/devices", auth)
            assert status == 200 and [(d["serial"], d["online"]) for d in listed["devices"]] == [
                (SERIAL, True)
            ]
            status, one = await b.call("GET", f"/v1/devices/{SERIAL}", auth)
            assert status == 200 and one["online"] is True, one
            device.close()
            c.devices.remove(device)
            await _located(redis, SERIAL, None)
            status, one = await b.call("GET", f"/v1/devices/{SERIAL}", auth)
            assert status == 200 and one["online"] is False, one

    run(main)


async def _pair(node: Lab, device: SimulatedDevice) -> dict[str, str]:
    auth = await _viewer_on(node, device)
    body, _ = pairing_body(device)
    status, answer = await node.call("POST", f"/v1/devices/{device.serial}/pairings", auth, json=body)
    assert status == 200, answer
    return auth


def test_a_session_created_on_one_node_continues_on_another_while_the_device_is_on_a_third(
    tmp_path: Path, redis: RedisServer
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis, count=3) as (a, b, c):
            device = await _device_at(c)
            await _located(redis, SERIAL, "node2")
            auth_a = await _pair(a, device)
            # The same account on b (a shared registry would hold it once); its token is b's.
            auth_b = await _viewer_on(b, device)
            b.broker.registry.record_pairing("alice", SERIAL, os.urandom(32), time.time())
            status, created = await a.call("POST", "/v1/sessions", auth_a, json={"serial": SERIAL})
            assert status == 201, created
            session = created["session_id"]
            assert created["turn"], "TURN credentials for the viewer"
            status, answer = await b.call("POST", f"/v1/sessions/{session}/offer", auth_b, json=OFFER)
            assert status == 200 and answer["status"] == "accepted", answer
            assert answer["candidates"] == [DEVICE_CANDIDATE]
            status, again = await a.call("POST", f"/v1/sessions/{session}/offer", auth_a, json=OFFER)
            assert (status, again["error"]) == (409, "session_used"), "node a sees b's offer"
            update = {"candidates": [HOST_CANDIDATE], "end_of_candidates": True}
            status, more = await a.call("POST", f"/v1/sessions/{session}/candidates", auth_a, json=update)
            assert status == 200 and more == {"candidates": [DEVICE_CANDIDATE], "end_of_candidates": True}, (
                more
            )
            status, ended = await b.call("DELETE", f"/v1/sessions/{session}", auth_b)
            assert status == 200 and ended["ended"] is True, ended
            status, gone = await a.call("POST", f"/v1/sessions/{session}/candidates", auth_a, json=update)
            assert (status, gone["error"]) == (404, "unknown_session"), "a sees b's DELETE"
            kinds = [i.kind for i in device.invites]
            assert kinds.count(INVITE_KIND_SESSION) == 1 and kinds.count(INVITE_KIND_CANDIDATES) == 1, kinds

    run(main)


def test_a_device_on_a_node_that_is_gone_is_offline_for_the_viewer(
    tmp_path: Path, redis: RedisServer
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis) as (b, c):
            device = await _device_at(c)
            await _located(redis, SERIAL, "node1")  # written on the directory's next tick
            auth = await _pair(b, device)
            await node_cluster(c).close()  # node c's Redis side stops: no one listens on r:node1
            c.broker.cluster = None
            status, answer = await b.call("POST", f"/v1/devices/{SERIAL}/ping", auth)
            assert (status, answer["error"]) == (409, "device_offline"), answer

    run(main)


def test_failed_logins_and_wrong_pairing_codes_count_across_nodes(tmp_path: Path, redis: RedisServer) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis, login_max_failures=4, pairing_max_failures=2) as (b, c):
            for node in (b, c):
                node.broker.registry.create_user("mallory", "right password 123", time.time())
            statuses = []
            for attempt in range(5):
                node = (b, c)[attempt % 2]
                status, _ = await node.call(
                    "POST", "/v1/tokens", json={"username": "mallory", "password": f"guess {attempt}"}
                )
                statuses.append(status)
            assert statuses == [401, 401, 401, 401, 429], (
                f"4 wrong passwords over 2 nodes, then 429: {statuses}"
            )

            device = await _device_at(c)
            auth_b = await _viewer_on(b, device)
            auth_c = await _viewer_on(c, device)
            codes = []
            for attempt, (node, auth) in enumerate([(b, auth_b), (c, auth_c), (b, auth_b)]):
                body, _ = pairing_body(device, code="WRONGCODE" + "X" * 7)
                status, answer = await node.call("POST", f"/v1/devices/{SERIAL}/pairings", auth, json=body)
                codes.append((attempt, status, answer["error"]))
            assert [c[1:] for c in codes] == [
                (403, "wrong_code"),
                (403, "wrong_code"),
                (429, "rate_limited"),
            ], codes

    run(main)


def test_turn_credentials_from_one_node_allocate_on_another_nodes_relay(
    tmp_path: Path, redis: RedisServer
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis, turn_allow_loopback_peers=True) as (b, c):
            device = await _device_at(c)
            await _located(redis, SERIAL, "node1")  # written on the directory's next tick
            auth = await _pair(b, device)
            status, created = await b.call("POST", "/v1/sessions", auth, json={"serial": SERIAL})
            assert status == 201, created
            grant = next(t for t in created["turn"] if t["transport"] == "udp")
            assert c.broker.turn is not None
            relayed = await allocate(
                ("127.0.0.1", c.broker.turn.udp_address[1]), grant["username"], grant["password"]
            )
            assert relayed[0] == "127.0.0.1" and relayed[1] > 0, relayed

    run(main)


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


async def allocate(server: tuple[str, int], username: str, password: str) -> tuple[str, int]:
    """Allocate on a TURN server with REST credentials and relay one datagram; the relayed address."""
    loop = asyncio.get_running_loop()
    peer_transport, peer = await loop.create_datagram_endpoint(_Inbox, local_addr=("127.0.0.1", 0))
    try:
        turn, _ = await asyncio.wait_for(
            create_turn_endpoint(_Inbox, server, username, password, transport="udp"), 10
        )
        try:
            relayed = turn.get_extra_info("sockname")
            turn.sendto(b"via the other node", peer_transport.get_extra_info("sockname")[:2])
            assert await asyncio.wait_for(peer.queue.get(), 10) == b"via the other node"
            return str(relayed[0]), int(relayed[1])
        finally:
            turn.close()
    finally:
        peer_transport.close()


def test_a_device_pinned_to_the_fleet_key_refuses_a_node_outside_the_fleet(
    tmp_path: Path, redis: RedisServer
) -> None:
    async def main() -> None:
        async with (
            fleet(tmp_path, redis) as (b, _c),
            lab(tmp_path / "outsider", presence_tcp_port=0) as outsider,
        ):
            fleet_key = x25519_public_bytes(load_fleet_key(tmp_path / "fleet_key.pem"))
            assert b.broker.info.public_key == fleet_key
            assert outsider.broker.info.public_key != fleet_key, "the outsider serves its own key"
            device = SessionDevice(SERIAL, fleet_key)
            outsider.devices.append(device)
            await device.start(outsider.broker.info.udp_port)
            unanswered = await device.next_event(HandshakeUnanswered)
            assert device.client.state is not ClientState.ONLINE, unanswered
            assert not [e for e in _drain(device) if isinstance(e, Registered)], "no registration completed"
            # The same device registers with a fleet node.
            await _device_at(b, device=SessionDevice(SERIAL, fleet_key, device.key))

    run(main)


def _drain(device: SimulatedDevice) -> list[object]:
    events: list[object] = []
    while not device.events.empty():
        events.append(device.events.get_nowait())
    return events


def test_after_a_redis_restart_each_node_rewrites_its_devices_and_same_node_sessions_work_meanwhile(
    tmp_path: Path, redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis) as (b, c):
            device = await _device_at(c)
            await _located(redis, SERIAL, "node1")  # written on the directory's next tick
            auth_b = await _pair(b, device)
            auth_c = await _pair(c, device)
            await _located(redis, SERIAL, "node1")
            rebuilds = node_cluster(c).rebuilds
            redis.restart()  # empty, as after a crash without persistence
            await wait_until_async("c to notice and rewrite", lambda: node_cluster(c).rebuilds > rebuilds)
            await _located(redis, SERIAL, "node1")
            assert (
                c.broker.registry.device(SERIAL) is not None and b.broker.registry.device(SERIAL) is not None
            )
            status, answer = await b.call("POST", f"/v1/devices/{SERIAL}/ping", auth_b)
            assert status == 200, answer

            redis.stop()
            await wait_until_async("c to see Redis gone", lambda: not node_cluster(c).connected)
            status, answer = await c.call("POST", f"/v1/devices/{SERIAL}/ping", auth_c)
            assert status == 200, f"same-node ping while Redis is down: {answer}"
            status, created = await c.call("POST", "/v1/sessions", auth_c, json={"serial": SERIAL})
            assert status == 201, created
            status, answer = await c.call(
                "POST", f"/v1/sessions/{created['session_id']}/offer", auth_c, json=OFFER
            )
            assert status == 200 and answer["status"] == "accepted", answer
            status, answer = await b.call("POST", f"/v1/devices/{SERIAL}/ping", auth_b)
            assert (status, answer["error"]) == (409, "device_offline"), answer
            wrong = {"username": "alice", "password": "not the password"}
            status, answer = await c.call("POST", "/v1/tokens", json=wrong)
            assert (status, answer["error"]) == (401, "bad_credentials"), f"counted per node: {answer}"
            await c.login()  # a right password still logs in
            assert "login failures are counted per node until Redis is back" in caplog.text

            redis.start()
            await _located(redis, SERIAL, "node1")
            # c subscribes to its channel again on its own back-off (up to 2 s); until then an
            # invite routed to it reaches nobody and is refused as offline, as it should be.
            await wait_until_async(
                "c to listen on its channel again",
                lambda: _listeners(redis, "node1") > 0,
                seen=lambda: _listeners(redis, "node1"),
            )
            status, answer = await b.call("POST", f"/v1/devices/{SERIAL}/ping", auth_b)
            assert status == 200, answer

    run(main)


def test_redis_holds_at_most_200_bytes_per_online_device(tmp_path: Path, redis: RedisServer) -> None:
    count = 10_000

    async def main() -> None:
        client = Redis.from_url(redis.url)
        try:
            before = int((await client.info("memory"))["used_memory"])
            directory = PresenceDirectory(
                client, "broker-a.example.net:3478", lambda serial: 25.0, time.monotonic
            )
            for n in range(count):
                directory.book.online(f"DL-{n:04d}-{n * 7 % 10_000:04d}")
            await directory.flush()
            assert await client.dbsize() == count
            after = int((await client.info("memory"))["used_memory"])
            sample = await client.memory_usage(presence_key("DL-0042-0294"))
            per_device = (after - before) / count
            print(
                f"\nRedis memory per online device: {per_device:.0f} B (INFO used_memory over {count} keys), "
                f"MEMORY USAGE of one key {sample} B"
            )
            assert per_device <= 200, f"{per_device:.0f} B per device"
        finally:
            await client.aclose()

    run(main)


def test_cluster_settings_are_checked_and_a_missing_fleet_key_says_what_to_do(tmp_path: Path) -> None:
    base = {"state_dir": str(tmp_path)}
    config = config_from_mapping(base, source="t")
    assert (config.redis_url, config.node_id, config.fleet_key_file) == ("", "", None)
    with pytest.raises(ConfigError, match="redis://"):
        config_from_mapping({**base, "redis_url": "http://x"}, source="t")
    with pytest.raises(ConfigError, match="node_id"):
        config_from_mapping({**base, "node_id": "a b"}, source="t")
    config = config_from_mapping({**base, "fleet_key_file": "fleet.pem"}, source="t", base_dir=tmp_path)
    assert config.fleet_key_file == tmp_path / "fleet.pem"
    with pytest.raises(ValueError, match="copy the fleet's key"):
        load_fleet_key(tmp_path / "fleet.pem")


def test_malformed_messages_on_a_node_channel_are_dropped_and_it_keeps_serving(
    tmp_path: Path, redis: RedisServer
) -> None:
    async def main() -> None:
        async with fleet(tmp_path, redis) as (b, c):
            device = await _device_at(c)
            await _located(redis, SERIAL, "node1")  # written on the directory's next tick
            auth = await _pair(b, device)
            client = Redis.from_url(redis.url)
            try:
                for junk in (b"", b"\xff\xfe", b"[]", b'{"t": "invite"}', b'{"t": "outcome", "id": "x"}',
                             b'{"t": "invite", "id": 1, "from": "b", "serial": 5, "kind": 4, "body": "!!", '
                             b'"ttl": 1}', b"[" * 90_000, b"[" * 200_000, b'{"t": "other"}'):  # fmt: skip
                    assert await client.publish("r:node1", junk) == 1
            finally:
                await client.aclose()
            status, answer = await b.call("POST", f"/v1/devices/{SERIAL}/ping", auth)
            assert status == 200, answer
            assert len(device.invites) == 2, "pairing and the ping: nothing from the junk"

    run(main)


def test_the_location_book_spreads_a_storm_over_flushes() -> None:
    book = LocationBook(lambda serial: 25.0)
    for n in range(25):
        book.online(f"S{n:02d}")
    book.offline("gone")
    sizes = []
    while book.get_timer() == 0.0:
        sizes.append(len(book.take_writes(0.0, limit=10)))
    assert sizes == [10, 10, 6], "26 writes, 10 at a time"
    assert len(book) == 25
