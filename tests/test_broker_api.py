"""The broker in-process on loopback: HTTPS API, and real presence devices over UDP.

The broker runs with the real ``PresenceServer``; each simulated device is a real
``PresenceClient`` on its own UDP socket, answering pairing invites with a ``PairingGuard``
the way the daemon does. Every wait is bounded (``asyncio.wait_for``), none is a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from support.aio import run
from support.broker import CODE, PASSWORD, SimulatedDevice, lab, pairing_body
from support.waiting import wait_until_async

from dvrlink.broker.openapi import openapi_document
from dvrlink.broker.state import read_info
from dvrlink.protocol.identity import b64encode_key, fingerprint
from dvrlink.protocol.pairing import (
    PairingGuard,
    PairRequest,
    PairResult,
    PairStatus,
)
from dvrlink.protocol.presence_events import (
    InviteReceived,
    Registered,
    RegistrationRefused,
)
from dvrlink.protocol.presence_wire import INVITE_KIND_PING, RefuseReason


def test_routes_and_openapi_document_match(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            status, doc = await t.call("GET", "/openapi.json")
            assert status == 200
            assert doc == openapi_document()
            assert doc["openapi"].startswith("3.1")
            app = t.broker.app  # the aiohttp application that is serving
            routes = {
                (r.method.lower(), r.resource.canonical)
                for r in app.router.routes()
                if r.resource and not r.resource.canonical.startswith("/dashboard/")
            }  # the dashboard's HTML pages are not the JSON API (docs/dashboard.md lists them)
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

            def noted() -> bool:  # the broker notes registrations in the registry in batches
                row = t.broker.registry.device("DL-0001")
                return row is not None and row.last_address is not None

            await wait_until_async("the registration noted in the registry", noted)

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
