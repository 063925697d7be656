"""The broker in-process on loopback: HTTPS API, and real presence devices over UDP.

The broker runs with the real ``PresenceServer``; each simulated device is a real
``PresenceClient`` on its own UDP socket, answering pairing invites with a ``PairingGuard``
the way the daemon does. Every wait is bounded (``asyncio.wait_for``), none is a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.broker.app import RunningBroker, start_broker
from dvrlink.broker.config import config_from_mapping
from dvrlink.broker.openapi import openapi_document
from dvrlink.broker.state import read_info
from dvrlink.broker.tls import client_context
from dvrlink.protocol.identity import b64encode_key, ed25519_public_bytes, fingerprint
from dvrlink.protocol.pairing import (
    MAC_SIZE,
    PairingGuard,
    PairRequest,
    PairResult,
    PairStatus,
    pair_proof,
    result_message,
)
from dvrlink.protocol.presence_client import ClientConfig, PresenceClient
from dvrlink.protocol.presence_events import (
    ClientEvent,
    InviteReceived,
    Registered,
    RegistrationRefused,
)
from dvrlink.protocol.presence_server import RefuseReason
from dvrlink.protocol.presence_wire import INVITE_KIND_PAIR, INVITE_KIND_PING, INVITE_OK, INVITE_UNSUPPORTED

CODE = "ABCDEFGHIJKLMNOP"
PASSWORD = "correct horse battery"
STEP = 10.0  # bound on any single wait in these tests

E = TypeVar("E", bound=ClientEvent)


def run(main: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout)

    asyncio.run(bounded())


class SimulatedDevice(asyncio.DatagramProtocol):
    """A presence client on a UDP socket; answers pairing invites like the daemon."""

    def __init__(self, serial: str, broker_key: bytes, answer_invites: bool = True) -> None:
        self.serial = serial
        self.key = Ed25519PrivateKey.generate()
        self.public_key = ed25519_public_bytes(self.key)
        self.client = PresenceClient(
            ClientConfig(serial=serial, broker_public_key=broker_key, reply_timeout=1.0), self.key
        )
        self.guard = PairingGuard(serial, self.public_key, CODE)
        self.answer_invites = answer_invites
        self.invites: list[InviteReceived] = []
        self.events: asyncio.Queue[ClientEvent] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def start(self, port: int) -> None:
        transport, _ = await self.loop.create_datagram_endpoint(lambda: self, remote_addr=("127.0.0.1", port))
        self.transport = transport
        self.client.start(self.loop.time())
        self.flush()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.client.receive_datagram(data, self.loop.time())
        self.flush()

    def flush(self) -> None:
        while (event := self.client.next_event()) is not None:
            if isinstance(event, InviteReceived):
                self.invites.append(event)
                if self.answer_invites:
                    self.answer(event)
            self.events.put_nowait(event)
        assert self.transport is not None
        for data in self.client.datagrams_to_send():
            self.transport.sendto(data)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        deadline = self.client.get_timer()
        if deadline is not None:
            self.timer = self.loop.call_at(deadline, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.client.handle_timer(self.loop.time())
        self.flush()

    def answer(self, invite: InviteReceived) -> None:
        if invite.kind == INVITE_KIND_PING:
            self.client.reply_invite(invite.invite_id, INVITE_OK, b"", self.loop.time())
            return
        if invite.kind != INVITE_KIND_PAIR:
            self.client.reply_invite(invite.invite_id, INVITE_UNSUPPORTED, b"", self.loop.time())
            return
        request = PairRequest.decode(invite.body)
        status = self.guard.check(request, time.time())
        confirmation = self.guard.confirmation(request) if status is PairStatus.PAIRED else bytes(MAC_SIZE)
        signature = self.key.sign(result_message(self.serial, request.viewer_key, request.nonce, status))
        result = PairResult(status, self.public_key, confirmation, signature)
        self.client.reply_invite(invite.invite_id, INVITE_OK, result.encode(), self.loop.time())

    async def next_event(self, kind: type[E]) -> E:
        while True:
            event = await asyncio.wait_for(self.events.get(), STEP)
            if isinstance(event, kind):
                return event

    def close(self) -> None:
        self.client.stop(self.loop.time())
        if self.transport is not None:
            for data in self.client.datagrams_to_send():
                self.transport.sendto(data)
            self.transport.close()
        if self.timer is not None:
            self.timer.cancel()


@dataclass
class Lab:
    broker: RunningBroker
    http: aiohttp.ClientSession
    devices: list[SimulatedDevice] = field(default_factory=list)

    async def device(
        self, serial: str, answer_invites: bool = True, register: bool = True
    ) -> SimulatedDevice:
        device = SimulatedDevice(serial, self.broker.info.public_key, answer_invites)
        self.devices.append(device)
        await device.start(self.broker.info.udp_port)
        if register:
            await device.next_event(Registered)
        return device

    async def login(self, username: str = "alice") -> dict[str, str]:
        if self.broker.registry.password_record(username) is None:
            self.broker.registry.create_user(username, PASSWORD, time.time())
        async with self.http.post("/v1/tokens", json={"username": username, "password": PASSWORD}) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert body["username"] == username
        assert body["expires_at"] > time.time() + 86400
        return {"Authorization": f"Bearer {body['token']}"}

    async def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        async with self.http.request(method, path, headers=headers, **kwargs) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()


@contextlib.asynccontextmanager
async def lab(tmp_path: Path, **settings: Any) -> AsyncIterator[Lab]:
    values: dict[str, object] = {
        "state_dir": str(tmp_path / "state"),
        "udp_host": "127.0.0.1",
        "udp_port": 0,
        "https_host": "127.0.0.1",
        "https_port": 0,
        "turn_udp_port": 0,
        "turn_tcp_port": 0,
        "turn_relay_port_min": 0,
        "turn_relay_port_max": 0,
        **settings,
    }
    broker = await start_broker(config_from_mapping(values, source="test"))
    connector = aiohttp.TCPConnector(ssl=client_context(broker.info.cert))
    http = aiohttp.ClientSession(f"https://localhost:{broker.info.https_port}", connector=connector)
    the_lab = Lab(broker, http)
    try:
        yield the_lab
    finally:
        for device in the_lab.devices:
            device.close()
        await http.close()
        await broker.close()


def pairing_body(device: SimulatedDevice, code: str = CODE) -> tuple[dict[str, str], bytes]:
    viewer_key = os.urandom(32)
    nonce = os.urandom(16)
    proof = pair_proof(code, device.serial, device.public_key, viewer_key, nonce)
    body = {
        "viewer_public_key": b64encode_key(viewer_key),
        "nonce": base64.b64encode(nonce).decode(),
        "proof": base64.b64encode(proof).decode(),
    }
    return body, viewer_key


def test_routes_and_openapi_document_match(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            status, doc = await t.call("GET", "/openapi.json")
            assert status == 200
            assert doc == openapi_document()
            assert doc["openapi"].startswith("3.1")
            app = t.broker.app  # the aiohttp application that is serving
            routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.resource}
            documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
            assert routes == documented
            for path, ops in doc["paths"].items():
                for op in ops.values():
                    for ref in _refs(op):
                        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], path
            status, health = await t.call("GET", "/v1/health")
            assert (status, health) == (200, {"status": "ok", "online": 0})

    run(main)


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_broker_json_names_the_actual_ports_and_key(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            info = read_info(tmp_path / "state")
            assert info == t.broker.info
            assert info.udp_port > 0 and info.https_port > 0
            assert info.pid == os.getpid()
            assert (tmp_path / "state" / "broker_key.pem").stat().st_mode & 0o777 == 0o600
        assert not (tmp_path / "state" / "broker.json").exists()

    run(main)


def test_authentication(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            headers = await t.login()
            assert await t.call("GET", "/v1/devices", headers) == (200, {"devices": []})

            status, body = await t.call("POST", "/v1/tokens", json={"username": "alice", "password": "nope"})
            assert (status, body["error"]) == (401, "bad_credentials")
            status, body = await t.call("POST", "/v1/tokens", json={"username": "nobody", "password": "nope"})
            assert (status, body["error"]) == (401, "bad_credentials")

            status, body = await t.call("GET", "/v1/devices")
            assert (status, body["error"]) == (401, "unauthorized")
            assert "Authorization: Bearer" in body["message"]
            status, body = await t.call("GET", "/v1/devices", {"Authorization": "Bearer forged"})
            assert (status, body["error"]) == (401, "unauthorized")
            status, body = await t.call("GET", "/v1/devices", {"Authorization": "Basic YWxpY2U6eA=="})
            assert (status, body["error"]) == (401, "unauthorized")

            old = t.broker.registry.issue_token("alice", time.time() - 7200, 3600)
            status, body = await t.call("GET", "/v1/devices", {"Authorization": f"Bearer {old}"})
            assert (status, body["error"]) == (401, "token_expired")

    run(main)


def test_login_rate_limit_per_username_and_address(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, login_max_failures=3, login_window_s=300) as t:
            await t.login("alice")
            for _ in range(3):
                status, _body = await t.call(
                    "POST", "/v1/tokens", json={"username": "alice", "password": "x"}
                )
                assert status == 401
            async with t.http.post("/v1/tokens", json={"username": "alice", "password": PASSWORD}) as resp:
                assert resp.status == 429
                assert (await resp.json())["error"] == "rate_limited"
                assert int(resp.headers["Retry-After"]) > 0
            await t.login("bob")  # another username is not affected

    run(main)


def test_bad_bodies_get_errors_and_the_broker_keeps_serving(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            headers = await t.login()
            await t.device("DL-0001")
            path = "/v1/devices/DL-0001/pairings"
            good = {"viewer_public_key": b64encode_key(bytes(32)), "nonce": "AA" * 11, "proof": ""}
            cases: list[tuple[dict[str, Any], str]] = [
                ({"data": b"not json {"}, "bad_request"),
                ({"data": b"\xff\xfe"}, "bad_request"),
                ({"json": [1, 2, 3]}, "bad_request"),
                ({"json": {}}, "bad_request"),
                ({"json": {**good, "viewer_public_key": "!!!"}}, "bad_request"),
                ({"json": {**good, "viewer_public_key": b64encode_key(bytes(31) + b"\0\0")}}, "bad_request"),
                ({"json": {**good, "nonce": 5}}, "bad_request"),
                ({"data": b"[" * 50_000}, "bad_request"),
            ]
            for kwargs, error in cases:
                status, body = await t.call("POST", path, headers, **kwargs)
                assert (status, body["error"]) == (400, error), kwargs
                assert body["message"]
            status, body = await t.call("POST", path, headers, data=b" " * 70_000)
            assert (status, body["error"]) == (413, "body_too_large")
            status, body = await t.call("POST", "/v1/tokens", data=b"{}")
            assert (status, body["error"]) == (400, "bad_request")
            status, body = await t.call("GET", "/v1/nothing-here")
            assert (status, body["error"]) == (404, "not_found")
            status, body = await t.call("DELETE", "/v1/devices")
            assert (status, body["error"]) == (405, "method_not_allowed")
            assert (await t.call("GET", "/v1/health"))[0] == 200
            assert t.devices[0].invites == []

    run(main)


def test_unknown_device_and_not_paired(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            headers = await t.login()
            device = await t.device("DL-0001")
            body, _ = pairing_body(device)
            for method, path, kwargs in [
                ("GET", "/v1/devices/DL-9999", {}),
                ("GET", "/v1/devices/DL-9999/identity", {}),
                ("POST", "/v1/devices/DL-9999/pairings", {"json": body}),
                ("GET", "/v1/devices/not%20a%20serial", {}),
            ]:
                status, answer = await t.call(method, path, headers, **kwargs)
                assert (status, answer["error"]) == (404, "unknown_device"), path

            status, answer = await t.call("GET", "/v1/devices/DL-0001", headers)
            assert (status, answer["error"]) == (403, "not_paired")
            status, identity = await t.call("GET", "/v1/devices/DL-0001/identity", headers)
            assert status == 200
            assert identity == {
                "serial": "DL-0001",
                "public_key": b64encode_key(device.public_key),
                "fingerprint": fingerprint(device.public_key),
                "online": True,
            }

    run(main)


def test_pairing_through_a_registered_device(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            alice = await t.login("alice")
            device = await t.device("DL-0001")

            body, _ = pairing_body(device, code="ZZZZZZZZZZZZZZZZ")
            status, answer = await t.call("POST", "/v1/devices/DL-0001/pairings", alice, json=body)
            assert (status, answer["error"]) == (403, "wrong_code")
            result = PairResult.decode(base64.b64decode(answer["result"]))
            assert result.status is PairStatus.WRONG_CODE
            assert t.broker.registry.pair_failures_since("DL-0001", time.time() - 60) == 1

            body, viewer_key = pairing_body(device)
            status, answer = await t.call("POST", "/v1/devices/DL-0001/pairings", alice, json=body)
            assert (status, answer["status"]) == (200, "paired")
            result = PairResult.decode(base64.b64decode(answer["result"]))
            nonce = base64.b64decode(body["nonce"])
            assert result.verify(CODE, "DL-0001", viewer_key, nonce)
            pairing = t.broker.registry.pairing("alice", "DL-0001")
            assert pairing is not None and pairing.viewer_key == viewer_key
            request = PairRequest.decode(device.invites[-1].body)
            assert request.account == "alice"

            status, listing = await t.call("GET", "/v1/devices", alice)
            assert status == 200
            [entry] = listing["devices"]
            assert entry["serial"] == "DL-0001"
            assert entry["online"] is True
            assert entry["fingerprint"] == fingerprint(device.public_key)
            assert entry["reflexive_address"].startswith("127.0.0.1:")
            assert entry["keepalive_interval"] == 25.0
            assert abs(entry["last_seen"] - time.time()) < 60
            assert abs(entry["registered_at"] - time.time()) < 60
            assert entry["paired_at"] == pairing.paired_at
            assert await t.call("GET", "/v1/devices/DL-0001", alice) == (200, entry)

            bob = await t.login("bob")
            assert await t.call("GET", "/v1/devices", bob) == (200, {"devices": []})
            status, answer = await t.call("GET", "/v1/devices/DL-0001", bob)
            assert (status, answer["error"]) == (403, "not_paired")
            device_row = t.broker.registry.device("DL-0001")
            assert device_row is not None and device_row.last_address is not None

    run(main)


def test_broker_refuses_pairing_after_too_many_wrong_codes_without_forwarding(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, pairing_max_failures=2) as t:
            alice = await t.login()
            device = await t.device("DL-0001")
            for _ in range(2):
                body, _ = pairing_body(device, code="ZZZZZZZZZZZZZZZZ")
                status, answer = await t.call("POST", "/v1/devices/DL-0001/pairings", alice, json=body)
                assert (status, answer["error"]) == (403, "wrong_code")
            body, _ = pairing_body(device)
            async with t.http.post("/v1/devices/DL-0001/pairings", headers=alice, json=body) as resp:
                assert resp.status == 429
                assert (await resp.json())["error"] == "rate_limited"
                assert "Retry-After" in resp.headers
            assert len(device.invites) == 2

    run(main)


def test_an_attacker_account_cannot_lock_the_owner_out_of_pairing(tmp_path: Path) -> None:
    """Wrong codes are limited per account and device: an account that knows the serial spends its
    own tries, not the owner's (and not the device's own limit either)."""

    async def main() -> None:
        async with lab(tmp_path) as t:  # defaults
            mallory = await t.login("mallory")
            alice = await t.login("alice")
            device = await t.device("DL-0001")
            outcomes = []
            for _ in range(10):  # bounded: until the broker stops forwarding mallory's tries
                body, _ = pairing_body(device, code="ZZZZZZZZZZZZZZZZ")
                status, answer = await t.call("POST", "/v1/devices/DL-0001/pairings", mallory, json=body)
                outcomes.append((status, answer["error"]))
                if status == 429:
                    break
            limit = t.broker.config.pairing_max_failures
            assert outcomes == [(403, "wrong_code")] * limit + [(429, "rate_limited")], outcomes
            assert len(device.invites) == limit < 5  # below the device's own limit
            body, viewer_key = pairing_body(device)
            status, answer = await t.call("POST", "/v1/devices/DL-0001/pairings", alice, json=body)
            assert (status, answer.get("status")) == (200, "paired"), answer
            pairing = t.broker.registry.pairing("alice", "DL-0001")
            assert pairing is not None and pairing.viewer_key == viewer_key
            body, _ = pairing_body(device)  # mallory stays limited, even with the right code
            status, answer = await t.call("POST", "/v1/devices/DL-0001/pairings", mallory, json=body)
            assert (status, answer["error"]) == (429, "rate_limited"), answer

    run(main)


def test_a_slower_cap_per_device_holds_over_many_accounts(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, pairing_max_failures=2, pairing_device_max_failures=3) as t:
            device = await t.device("DL-0001")
            wrong: list[tuple[int, str]] = []
            for name in ("m1", "m2", "m3"):
                headers = await t.login(name)
                for _ in range(3):
                    body, _ = pairing_body(device, code="ZZZZZZZZZZZZZZZZ")
                    status, answer = await t.call("POST", "/v1/devices/DL-0001/pairings", headers, json=body)
                    wrong.append((status, answer["error"]))
            assert (
                wrong
                == [(403, "wrong_code")] * 2
                + [(429, "rate_limited")]
                + [(403, "wrong_code")]
                + [(429, "rate_limited")] * 5
            ), wrong
            assert len(device.invites) == 3
            status, answer = await t.call(
                "POST", "/v1/devices/DL-0001/pairings", await t.login("alice"), json=pairing_body(device)[0]
            )
            assert (status, answer["error"]) == (429, "rate_limited")
            assert "all accounts" in answer["message"], answer

    run(main)


def test_device_side_rate_limit_is_passed_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            alice = await t.login()
            device = await t.device("DL-0001")
            device.guard = PairingGuard("DL-0001", device.public_key, CODE, failures=[time.time()] * 5)
            body, _ = pairing_body(device)
            status, answer = await t.call("POST", "/v1/devices/DL-0001/pairings", alice, json=body)
            assert (status, answer["error"]) == (429, "rate_limited")
            assert PairResult.decode(base64.b64decode(answer["result"])).status is PairStatus.RATE_LIMITED

    run(main)


def test_offline_and_silent_devices(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, invite_ttl_s=1) as t:
            alice = await t.login()
            known = SimulatedDevice("DL-0002", t.broker.info.public_key)
            t.broker.registry.load_manifest({"DL-0002": known.public_key}, time.time())
            body, _ = pairing_body(known)
            status, answer = await t.call("POST", "/v1/devices/DL-0002/pairings", alice, json=body)
            assert (status, answer["error"]) == (409, "device_offline")

            silent = await t.device("DL-0001", answer_invites=False)
            body, _ = pairing_body(silent)
            first = asyncio.ensure_future(t.call("POST", "/v1/devices/DL-0001/pairings", alice, json=body))
            await silent.next_event(InviteReceived)  # the first attempt reached the device
            status, answer = await t.call("POST", "/v1/devices/DL-0001/pairings", alice, json=body)
            assert (status, answer["error"]) == (429, "rate_limited")  # one attempt per device at a time
            assert "in progress" in answer["message"]
            status, answer = await first
            assert (status, answer["error"]) == (504, "device_timeout")
            assert silent.invites, "the invite reached the device"
            assert t.broker.registry.pairing("alice", "DL-0001") is None

    run(main)


def test_serial_hijack_is_refused_logged_and_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            owner = await t.device("DL-0001")
            thief = await t.device("DL-0001", register=False)
            refused = await thief.next_event(RegistrationRefused)
            assert refused.reason == RefuseReason.KEY_MISMATCH
            assert "bound to another device key" in refused.message
            [row] = t.broker.registry.refusals("DL-0001")
            assert (row.public_key, row.reason) == (thief.public_key, "key-mismatch")
            bound = t.broker.registry.device("DL-0001")
            assert bound is not None and bound.public_key == owner.public_key
            assert t.broker.server.presence("DL-0001").online  # type: ignore[union-attr]

    caplog.set_level(logging.WARNING, logger="dvrlink.broker")
    run(main)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DL-0001" in w and "127.0.0.1:" in w and "key-mismatch" in w for w in warnings), warnings


def test_manifest_only_broker_refuses_unknown_serials(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, manifest_only=True) as t:
            stranger = await t.device("DL-0005", register=False)
            refused = await stranger.next_event(RegistrationRefused)
            assert refused.reason == RefuseReason.NOT_IN_MANIFEST
            assert "manifest" in refused.message
            assert t.broker.registry.device("DL-0005") is None
            listed = SimulatedDevice("DL-0006", t.broker.info.public_key)
            t.broker.registry.load_manifest({"DL-0006": listed.public_key}, time.time())
            t.devices.append(listed)
            await listed.start(t.broker.info.udp_port)
            await listed.next_event(Registered)
            assert (await t.call("GET", "/v1/health")) == (200, {"status": "ok", "online": 1})

    run(main)


def test_a_failed_start_releases_everything(tmp_path: Path) -> None:
    async def main() -> None:
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind(("127.0.0.1", 0))
        try:
            port = taken.getsockname()[1]
            with pytest.raises(OSError, match=f"cannot bind UDP 127.0.0.1:{port}"):
                async with lab(tmp_path, udp_port=port):
                    pass
        finally:
            taken.close()
        assert not (tmp_path / "state" / "broker.json").exists()
        async with lab(tmp_path) as t:  # the state directory is free again
            assert (await t.call("GET", "/v1/health"))[0] == 200

    run(main)


def test_ping_reaches_a_paired_device_through_presence(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path, invite_ttl_s=1.0) as t:
            alice = await t.login("alice")
            device = await t.device("DL-0001")
            status, answer = await t.call("POST", "/v1/devices/DL-0001/ping", alice)
            assert (status, answer["error"]) == (403, "not_paired")
            body, _ = pairing_body(device)
            status, _ = await t.call("POST", "/v1/devices/DL-0001/pairings", alice, json=body)
            assert status == 200
            status, answer = await t.call("POST", "/v1/devices/DL-0001/ping", alice)
            assert status == 200 and answer["serial"] == "DL-0001" and answer["rtt_ms"] >= 0, answer
            assert device.invites[-1].kind == INVITE_KIND_PING
            device.answer_invites = False  # registered, but its answers never come
            status, answer = await t.call("POST", "/v1/devices/DL-0001/ping", alice)
            assert (status, answer["error"]) == (504, "device_timeout"), answer
            status, answer = await t.call("POST", "/v1/devices/DL-9999/ping", alice)
            assert status == 404

    run(main)
