"""Session signalling through the broker in-process on loopback, and its built-in TURN relay.

The device is a real ``PresenceClient`` on its own UDP socket (``SimulatedDevice`` from the API
tests) that answers session invites (kind 2) with a ``SessionAnswer``; the viewer is plain HTTPS
plus aioice's TURN client with the credentials the API hands out. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aioice.turn import create_turn_endpoint
from support.aio import run
from support.broker import STEP, Lab, SimulatedDevice, lab

from dvrlink.broker.sessions import SessionState, SessionTable, TooManySessionsError
from dvrlink.broker.state import load_or_create_turn_secret, read_info
from dvrlink.broker.turn_credentials import CredentialStatus, check_username, rest_password
from dvrlink.protocol.presence_events import InviteReceived, Registered
from dvrlink.protocol.presence_wire import INVITE_OK, INVITE_UNSUPPORTED
from dvrlink.protocol.signalling import (
    INVITE_KIND_SESSION,
    AnswerStatus,
    PathPolicy,
    SessionAnswer,
    SessionOffer,
)

VIEWER_CANDIDATES = [
    "1 1 udp 2130706431 127.0.0.1 50000 typ host",
    "2 1 udp 16777215 127.0.0.1 50002 typ relay raddr 127.0.0.1 rport 50000",
]
DEVICE_CANDIDATES = ("7 1 udp 2130706431 127.0.0.1 40000 typ host",)
DEVICE_UFRAG = "dev1"
DEVICE_PWD = "devicepassword0123456789"
LOOPBACK_TURN = {"turn_allow_loopback_peers": True}


class SessionDevice(SimulatedDevice):
    """Answers session invites with ``answer_with`` (None: never answers them)."""

    def __init__(self, serial: str, broker_key: bytes) -> None:
        super().__init__(serial, broker_key)
        self.answer_with: SessionAnswer | None = SessionAnswer(
            AnswerStatus.ACCEPTED, DEVICE_UFRAG, DEVICE_PWD, DEVICE_CANDIDATES
        )
        self.invite_status = INVITE_OK
        self.offers: list[SessionOffer] = []

    def answer(self, invite: InviteReceived) -> None:
        if invite.kind != INVITE_KIND_SESSION:
            super().answer(invite)
            return
        self.offers.append(SessionOffer.decode(invite.body))
        if self.answer_with is not None:
            body = self.answer_with.encode() if self.invite_status == INVITE_OK else b""
            self.client.reply_invite(invite.invite_id, self.invite_status, body, self.loop.time())


async def session_device(t: Lab, serial: str = "DL-0001") -> SessionDevice:
    device = SessionDevice(serial, t.broker.info.public_key)
    t.devices.append(device)
    await device.start(t.broker.info.udp_port)
    await device.next_event(Registered)
    return device


def pair(t: Lab, user: str, serial: str) -> bytes:
    viewer_key = os.urandom(32)
    t.broker.registry.record_pairing(user, serial, viewer_key, time.time())
    return viewer_key


def offer_body(viewer_key: bytes, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ice_ufrag": "view",
        "ice_pwd": "viewerpassword0123456789",
        "candidates": VIEWER_CANDIDATES,
        "viewer_public_key": base64.b64encode(viewer_key).decode(),
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def test_unpaired_viewer_gets_no_session_and_the_device_no_invite(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, **LOOPBACK_TURN) as t:
            alice = await t.login("alice")
            device = await session_device(t)
            status, body = await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-0001"})
            assert (status, body["error"]) == (403, "not_paired")
            assert "pair it first" in body["message"]
            status, body = await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-9999"})
            assert (status, body["error"]) == (404, "unknown_device")

            bob = await t.login("bob")
            pair(t, "bob", "DL-0001")  # bob's session is not alice's to offer on
            status, created = await t.call("POST", "/v1/sessions", bob, json={"serial": "DL-0001"})
            assert status == 201
            path = f"/v1/sessions/{created['session_id']}/offer"
            status, body = await t.call("POST", path, alice, json=offer_body(os.urandom(32)))
            assert (status, body["error"]) == (404, "unknown_session")
            assert await t.call("GET", "/v1/sessions", alice) == (200, {"sessions": []})
            assert device.invites == []
            status, body = await t.call("GET", "/v1/sessions")
            assert (status, body["error"]) == (401, "unauthorized")

    run(main)


def test_paired_viewer_gets_turn_credentials_and_the_device_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, **LOOPBACK_TURN) as t:
            alice = await t.login("alice")
            device = await session_device(t)
            viewer_key = pair(t, "alice", "DL-0001")
            info = t.broker.info
            secret = (tmp_path / "state" / "turn_secret").read_text().strip()
            assert (tmp_path / "state" / "turn_secret").stat().st_mode & 0o777 == 0o600

            request = {"serial": "DL-0001", "policy": "relay_only"}
            status, created = await t.call("POST", "/v1/sessions", alice, json=request)
            assert status == 201, created
            assert (created["serial"], created["policy"], created["state"]) == (
                "DL-0001",
                "relay_only",
                "created",
            )
            assert len(bytes.fromhex(created["session_id"])) == 16
            assert created["stun"] == {"host": "127.0.0.1", "port": info.udp_port}
            servers = {(s["host"], s["port"], s["transport"]) for s in created["turn"]}
            assert servers == {
                ("127.0.0.1", info.turn_udp_port, "udp"),
                ("127.0.0.1", info.turn_tcp_port, "tcp"),
            }
            for server in created["turn"]:
                check = check_username(server["username"], time.time())
                assert (check.status, check.name) == (CredentialStatus.VALID, "alice")
                assert 3500 < check.expires_at - time.time() <= 3600
                assert created["turn_expires_at"] == check.expires_at
                assert server["password"] == rest_password(secret, server["username"])

            path = f"/v1/sessions/{created['session_id']}/offer"
            status, answer = await t.call("POST", path, alice, json=offer_body(viewer_key))
            assert status == 200, answer
            assert answer == {
                "status": "accepted",
                "session_id": created["session_id"],
                "ice_ufrag": DEVICE_UFRAG,
                "ice_pwd": DEVICE_PWD,
                "candidates": list(DEVICE_CANDIDATES),
                "end_of_candidates": True,
            }
            [offer] = device.offers
            assert offer.session_id.hex() == created["session_id"]
            assert (offer.viewer_key, offer.policy) == (viewer_key, PathPolicy.RELAY_ONLY)
            assert (offer.ice_ufrag, offer.candidates) == ("view", tuple(VIEWER_CANDIDATES))
            assert {(s.host, s.port, s.transport) for s in offer.turn} == servers
            for server in offer.turn:  # the device gets credentials in its own name
                check = check_username(server.username, time.time())
                assert (check.status, check.name) == (CredentialStatus.VALID, "DL-0001")
                assert server.password == rest_password(secret, server.username)

            status, listing = await t.call("GET", "/v1/sessions", alice)
            assert status == 200
            [entry] = listing["sessions"]
            assert (entry["session_id"], entry["state"]) == (created["session_id"], "answered")
            assert abs(entry["created_at"] - time.time()) < 60
            status, body = await t.call("POST", path, alice, json=offer_body(viewer_key))
            assert (status, body["error"]) == (409, "session_used")
            assert len(device.offers) == 1

    run(main)


def test_offline_silent_refusing_and_old_devices(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, session_answer_timeout_s=1, **LOOPBACK_TURN) as t:
            alice = await t.login("alice")
            offline = SimulatedDevice("DL-0002", t.broker.info.public_key)
            t.broker.registry.load_manifest({"DL-0002": offline.public_key}, time.time())
            pair(t, "alice", "DL-0002")
            status, body = await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-0002"})
            assert (status, body["error"]) == (409, "device_offline")

            device = await session_device(t)
            viewer_key = pair(t, "alice", "DL-0001")

            async def offer() -> tuple[int, dict[str, Any]]:
                status, created = await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-0001"})
                assert status == 201
                path = f"/v1/sessions/{created['session_id']}/offer"
                return await t.call("POST", path, alice, json=offer_body(viewer_key))

            device.answer_with = None
            status, body = await offer()
            assert (status, body["error"]) == (504, "device_timeout")
            assert len(device.offers) == 1  # it reached the device, which kept quiet

            device.answer_with = SessionAnswer(AnswerStatus.REFUSED, "", "", (), "viewer key not authorised")
            status, body = await offer()
            assert (status, body["error"], body["status"]) == (403, "refused", "refused")
            assert body["device_message"] == "viewer key not authorised"
            assert body["message"] == "device DL-0001 refused the session: viewer key not authorised"
            device.answer_with = SessionAnswer(AnswerStatus.REFUSED, "", "", ())
            status, body = await offer()
            assert (status, body["error"], body["device_message"]) == (403, "refused", "")
            assert "pair this viewer again" in body["message"]

            device.answer_with = SessionAnswer(AnswerStatus.BUSY, "", "", ())
            status, body = await offer()
            assert (status, body["error"], body["status"]) == (403, "refused", "busy")

            device.answer_with = SessionAnswer(AnswerStatus.NO_RELAY, "", "", ())
            status, body = await offer()
            assert (status, body["error"]) == (502, "no_relay")

            device.invite_status = INVITE_UNSUPPORTED
            status, body = await offer()
            assert (status, body["error"]) == (502, "device_error")
            assert "update" in body["message"]

            status, listing = await t.call("GET", "/v1/sessions", alice)
            assert [s["state"] for s in listing["sessions"]] == ["failed"] * 6

    run(main)


def test_malformed_offers_get_400_and_reach_no_device(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, **LOOPBACK_TURN) as t:
            alice = await t.login("alice")
            device = await session_device(t)
            viewer_key = pair(t, "alice", "DL-0001")
            for bad_request in (
                {},
                {"serial": 7},
                {"serial": "DL-0001", "policy": "sideways"},
            ):
                status, body = await t.call("POST", "/v1/sessions", alice, json=bad_request)
                assert (status, body["error"]) == (400, "bad_request"), bad_request
            status, created = await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-0001"})
            assert status == 201
            path = f"/v1/sessions/{created['session_id']}/offer"

            def bad(**changes: Any) -> dict[str, Any]:
                return {"json": offer_body(viewer_key, **changes)}

            short_key = base64.b64encode(b"x" * 31).decode()
            long_candidate = VIEWER_CANDIDATES[0] + " x" * 200
            cases: list[tuple[dict[str, Any], str]] = [
                ({"data": b"not json"}, "bad_request"),
                ({"json": []}, "bad_request"),
                (bad(ice_ufrag=None), "bad_request"),
                (bad(ice_ufrag="ab"), "bad_request"),
                (bad(ice_ufrag="a b c d"), "bad_request"),
                (bad(ice_pwd="short"), "bad_request"),
                (bad(candidates="1 1 udp 1 1.2.3.4 5 typ host"), "bad_request"),
                (bad(candidates=[5]), "bad_request"),
                (bad(candidates=["not a candidate"]), "bad_request"),
                (bad(candidates=["1 x udp 1 1.2.3.4 5 typ host"]), "bad_request"),
                (bad(candidates=VIEWER_CANDIDATES * 20), "bad_request"),
                (bad(candidates=[long_candidate]), "bad_request"),
                (bad(viewer_public_key="!!"), "bad_request"),
                (bad(viewer_public_key=short_key), "bad_request"),
                (bad(candidates=[VIEWER_CANDIDATES[1] + " generation 0"] * 12), "offer_too_large"),
            ]
            for kwargs, error in cases:
                status, body = await t.call("POST", path, alice, **kwargs)
                assert (status, body["error"]) == (400, error), kwargs
                assert body["message"]
            for bad_id in ("zz", "00" * 16, created["session_id"] + "00"):
                status, body = await t.call(
                    "POST", f"/v1/sessions/{bad_id}/offer", alice, json=offer_body(viewer_key)
                )
                assert (status, body["error"]) == (404, "unknown_session")
            assert device.invites == []
            status, listing = await t.call("GET", "/v1/sessions", alice)
            assert [s["state"] for s in listing["sessions"]] == ["created"]  # still usable
            status, answer = await t.call("POST", path, alice, json=offer_body(viewer_key))
            assert (status, answer["status"]) == (200, "accepted")

    run(main)


def test_sessions_per_account_are_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, session_max_per_account=2, **LOOPBACK_TURN) as t:
            alice = await t.login("alice")
            await session_device(t)
            pair(t, "alice", "DL-0001")
            ids = []
            for _ in range(2):
                status, body = await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-0001"})
                assert status == 201, body
                ids.append(body["session_id"])
            status, body = await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-0001"})
            assert (status, body["error"]) == (429, "too_many_sessions")
            bob = await t.login("bob")
            pair(t, "bob", "DL-0001")
            assert (await t.call("POST", "/v1/sessions", bob, json={"serial": "DL-0001"}))[0] == 201
            status, body = await t.call("DELETE", f"/v1/sessions/{ids[0]}", bob)  # not bob's
            assert (status, body["error"]) == (404, "unknown_session"), body
            status, body = await t.call("DELETE", f"/v1/sessions/{ids[0]}", alice)  # alice closed it
            assert (status, body) == (200, {"session_id": ids[0], "ended": True})
            assert (await t.call("DELETE", f"/v1/sessions/{ids[0]}", alice))[0] == 404  # once
            status, listing = await t.call("GET", "/v1/sessions", alice)
            assert [s["session_id"] for s in listing["sessions"]] == ids[1:], listing
            assert (await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-0001"}))[0] == 201

    run(main)


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


def test_the_built_in_turn_relay_runs_with_the_broker(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, **LOOPBACK_TURN) as t:
            info = read_info(tmp_path / "state")
            assert info == t.broker.info
            assert info.turn_udp_port and info.turn_tcp_port and t.broker.turn is not None
            assert t.broker.turn.udp_address == ("127.0.0.1", info.turn_udp_port)
            alice = await t.login("alice")
            await session_device(t)
            pair(t, "alice", "DL-0001")
            status, created = await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-0001"})
            assert status == 201
            loop = asyncio.get_running_loop()
            peer_transport, peer = await loop.create_datagram_endpoint(Inbox, local_addr=("127.0.0.1", 0))
            try:
                peer_address = peer_transport.get_extra_info("sockname")[:2]
                for server in created["turn"]:
                    turn, _client = await asyncio.wait_for(
                        create_turn_endpoint(
                            Inbox,
                            (server["host"], server["port"]),
                            server["username"],
                            server["password"],
                            transport=server["transport"],
                        ),
                        STEP,
                    )
                    try:
                        relayed = turn.get_extra_info("sockname")
                        assert relayed[0] == "127.0.0.1"
                        turn.sendto(b"hello " + server["transport"].encode(), peer_address)
                        data = await asyncio.wait_for(peer.queue.get(), STEP)
                        assert data == b"hello " + server["transport"].encode()
                    finally:
                        turn.close()
            finally:
                peer_transport.close()
        assert not (tmp_path / "state" / "broker.json").exists()

    run(main)


def test_turn_can_be_off_or_external(tmp_path: Path) -> None:
    async def main() -> None:
        external = [{"host": "turn1.example.net", "port": 3478, "transport": "tcp"}]
        async with lab(tmp_path, turn_enabled=False, turn_servers=external) as t:
            assert t.broker.turn is None
            assert (t.broker.info.turn_udp_port, t.broker.info.turn_tcp_port) == (None, None)
            assert read_info(tmp_path / "state").turn_udp_port is None
            alice = await t.login("alice")
            await session_device(t)
            pair(t, "alice", "DL-0001")
            status, created = await t.call("POST", "/v1/sessions", alice, json={"serial": "DL-0001"})
            assert status == 201
            [server] = created["turn"]
            assert (server["host"], server["port"], server["transport"]) == ("turn1.example.net", 3478, "tcp")
            secret = (tmp_path / "state" / "turn_secret").read_text().strip()
            assert server["password"] == rest_password(secret, server["username"])

    run(main)


def test_session_table_expires_bounds_and_moves_by_the_table() -> None:
    table = SessionTable(ttl=600, max_per_account=2)
    first = table.create("alice", "DL-0001", PathPolicy.ALL, now=1000.0)
    second = table.create("alice", "DL-0002", PathPolicy.ALL, now=1100.0)
    with pytest.raises(TooManySessionsError):
        table.create("alice", "DL-0003", PathPolicy.ALL, now=1200.0)
    assert table.get("bob", first.session_id, 1200.0) is None  # not bob's
    assert table.for_account("alice", 1599.0) == [first, second]
    assert table.get("alice", first.session_id, 1600.0) is None  # expired
    assert table.for_account("alice", 1600.0) == [second]
    table.create("alice", "DL-0003", PathPolicy.ALL, now=1600.0)  # room again
    assert table.prune(1800.0) == 1 and len(table) == 1
    second.move(SessionState.OFFERED)
    second.move(SessionState.FAILED)
    with pytest.raises(ValueError, match="no move from failed to answered"):
        second.move(SessionState.ANSWERED)


def test_turn_secret_file_is_made_once_and_an_empty_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "turn_secret"
    secret = load_or_create_turn_secret(path)
    assert len(secret) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_turn_secret(path) == secret
    path.write_text(" shared-with-coturn \n")
    assert load_or_create_turn_secret(path) == "shared-with-coturn"
    path.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        load_or_create_turn_secret(path)
