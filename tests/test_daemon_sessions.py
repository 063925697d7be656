"""Sessions end to end on 127.0.0.1: the broker in-process (API, presence, TURN), the real daemon
(``run_daemon``) with ``[sessions]`` and ``[services]``, and a viewer driven by the test.

The viewer pairs through the broker API with the device's code, asks for a session, gathers its
own candidates, posts the offer, and runs QUIC over the paths it gets, the way ``dvrlink
forward`` does. Every wait is bounded; readiness comes from the daemon's log lines, not sleeps.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_mock import MockerFixture
from support.aio import run
from support.broker import Lab
from support.daemon_sessions import LOOPBACK, SERIAL, WAIT, echo_through, rig

from dvrlink.daemon.status import read_status
from dvrlink.protocol.identity import b64encode_key, ed25519_public_bytes, fingerprint
from dvrlink.protocol.session import ViewerSession
from dvrlink.protocol.session_streams import ForwardTarget, RpcTarget
from dvrlink.protocol.session_tls import viewer_certificate
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session.connectivity import LAN, RELAY, Connectivity
from dvrlink.session.runner import StreamResetError, ViewerRefusedError, ViewerRunner
from dvrlink.session.streams import ServiceErrorCode
from dvrlink.viewer.api_types import CandidateBatch, parse_candidate_batch
from dvrlink.viewer.errors import ViewerError
from dvrlink.viewer.forward import describe_reset
from dvrlink.viewer.session_client import SessionBroker, trickle


@pytest.mark.parametrize("policy", ["relay_only", "direct_only", "all"])
def test_a_paired_viewer_forwards_through_the_daemon(
    tmp_path: Path, policy: str, mocker: MockerFixture
) -> None:
    prepare = mocker.spy(Connectivity, "prepare")

    async def main() -> None:
        async with rig(tmp_path) as r:
            auth, key, pin = await r.pair()
            runner, session_id = await r.session(auth, key, pin, policy)
            await asyncio.wait_for(runner.established(), WAIT)
            await echo_through(runner, r.echo_port, 300_000, seed=1)
            assert r.echo.accepted == 1
            first = runner.path_changes[0]
            assert first == {"relay_only": RELAY, "direct_only": LAN, "all": RELAY}[policy]
            if policy != "all":
                assert runner.path_changes == [first]
            assert runner.connectivity.paths == (
                [RELAY] if policy == "relay_only" else runner.connectivity.paths
            )

            # The device lists the session with the viewer it authenticated.
            [listed] = read_status(r.config.device.runtime_dir).sessions
            assert (listed.id, listed.viewer) == (session_id, fingerprint(ed25519_public_bytes(key)))
            assert listed.path in ("relay", "lan", "direct")
            assert listed.plane == "data plane", "the forward did not ride the data plane"
            await r.watch.wait_for(rf"session {session_id[:8]}: viewer \S+ authenticated")
            # the recorder reads its ACKs one at a time: no UDP_GRO on its side
            device_side = [c for c in prepare.call_args_list if c.args[0] is False]
            assert device_side and all(c.kwargs.get("coalesced_reads") is False for c in device_side)

            # A second stream on the same session, with RPC beside it.
            ping = await runner.open_stream(RpcTarget("ping"))
            ping.write(b"are you there")
            ping.write_eof()
            assert await asyncio.wait_for(ping.read(), WAIT) == b"are you there"
            await echo_through(runner, r.echo_port, 10_000, seed=2)

            # The daemon stopping closes the session on the viewer's side too.
            await r.stop_daemon()
            reason = await asyncio.wait_for(runner.wait_closed(), WAIT)
            assert "shutting down" in reason

    run(main)


def test_the_device_refuses_a_viewer_it_never_authorised(tmp_path: Path) -> None:
    """A broker that invites a viewer the device never authorised: the device refuses it."""

    async def main() -> None:
        async with rig(tmp_path) as r:
            _, _, pin = await r.pair("alice")  # the device has one paired viewer
            auth = await r.t.login("mallory")
            mallory = Ed25519PrivateKey.generate()
            r.t.broker.registry.record_pairing("mallory", SERIAL, ed25519_public_bytes(mallory), time.time())
            # The broker believes the pairing and the device answers the offer...
            runner, session_id = await r.session(auth, mallory, pin, "relay_only")
            await r.watch.wait_for(rf"session {session_id[:8]}: viewer \S+ is not paired with this device")
            # ... but the handshake is where the device decides. (TLS 1.3: the viewer may see
            # "established" for a moment before the device has checked its certificate.)
            reason = await asyncio.wait_for(runner.wait_closed(), WAIT)
            assert "refused this viewer" in reason
            with pytest.raises(ViewerRefusedError, match="refused this viewer"):
                await runner.open_stream(ForwardTarget(LOOPBACK, r.echo_port))
            await r.watch.wait_for(rf"session {session_id[:8]}: ended before it was established")
            await r.watch.wait_for(rf"session {session_id[:8]}: released; 0 sessions open")
            assert r.echo.accepted == 0
            assert read_status(r.config.device.runtime_dir).sessions == ()

    run(main)


def test_a_port_not_allow_listed_is_refused_with_a_clear_reset(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path) as r:
            auth, key, pin = await r.pair()
            runner, _ = await r.session(auth, key, pin, "relay_only")
            target = ForwardTarget(LOOPBACK, r.other_port)
            stream = await asyncio.wait_for(runner.open_stream(target), WAIT)
            stream.write(b"GET / HTTP/1.0\r\n\r\n")
            with pytest.raises(StreamResetError) as refused:
                await asyncio.wait_for(stream.read(), WAIT)
            assert refused.value.code == ServiceErrorCode.NOT_ALLOWED
            message = describe_reset(refused.value.code, target)
            assert f'add "{LOOPBACK}:{r.other_port}" to [services] forward' in message
            assert r.other.accepted == 0  # never connected to
            await r.watch.wait_for(
                rf"forward to {LOOPBACK}:{r.other_port} refused: not in \[services\] forward"
            )
            # The session carries on: the allowed port still works.
            await echo_through(runner, r.echo_port, 5_000, seed=3)

    run(main)


def test_busy_device_and_device_path_policy(tmp_path: Path) -> None:
    async def main() -> None:
        async with rig(tmp_path, policy="relay_only", max_sessions=1) as r:
            auth, key, pin = await r.pair()
            # The viewer allows every path; the device's relay_only is stricter and wins.
            runner, session_id = await r.session(auth, key, pin, "all")
            await echo_through(runner, r.echo_port, 20_000, seed=4)
            assert runner.path_changes == [RELAY]

            status, body, _, _ = await r.offer(auth, key)
            assert (status, body["error"], body["status"]) == (403, "refused", "busy")
            assert "max_sessions" in body["device_message"]

            mark = len(r.watch.lines)
            await runner.close()
            await r.watch.wait_for(rf"session {session_id[:8]}: released; 0 sessions open", after=mark)
            status, body, _, _ = await r.offer(auth, key, "direct_only")
            assert (status, body["error"], body["status"]) == (403, "refused", "refused")
            assert (
                body["device_message"]
                == "the viewer asked for direct_only paths but the device allows relay_only only"
            )

    run(main)


class RigBroker:
    """The trickle half of ``BrokerClient`` over the in-process broker's API, for ``trickle``."""

    def __init__(self, t: Lab, auth: dict[str, str]) -> None:
        self.t, self.auth = t, auth
        self.sent: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []

    async def send_candidates(
        self,
        session_id: str,
        candidates: Sequence[str],
        end_of_candidates: bool,
        *,
        serial: str | None = None,
    ) -> CandidateBatch:
        body = {"candidates": list(candidates), "end_of_candidates": end_of_candidates}
        self.sent.append(body)
        status, answer = await self.t.call(
            "POST", f"/v1/sessions/{session_id}/candidates", self.auth, json=body
        )
        if status != 200:
            raise ViewerError(f"{status}: {answer}")
        self.answers.append(answer)
        return parse_candidate_batch(answer)


def test_trickle_ice_both_ways_through_the_broker(tmp_path: Path) -> None:
    """The viewer offers no candidate at all and trickles its host candidate afterwards; the
    broker relays it to the device (invite kind 3) and the device's reply back; the direct path
    is found, and a session the device closed answers 410."""

    async def main() -> None:
        async with rig(tmp_path) as r:
            auth, key, pin = await r.pair()
            status, created = await r.t.call(
                "POST", "/v1/sessions", auth, json={"serial": SERIAL, "policy": "direct_only"}
            )
            assert status == 201, created
            session_id = created["session_id"]
            trickle_path = f"/v1/sessions/{session_id}/candidates"
            status, early = await r.t.call("POST", trickle_path, auth, json={"candidates": []})
            assert (status, early["error"]) == (409, "session_not_answered"), early

            stun = (created["stun"]["host"], created["stun"]["port"])
            conn = await Connectivity.prepare(
                True, stun, [], PathPolicy.DIRECT_ONLY, host_addresses=[LOOPBACK]
            )
            [host] = [c for c in conn.local_candidates() if " typ host" in c]
            body = {
                "ice_ufrag": conn.local_ufrag,
                "ice_pwd": conn.local_pwd,
                "candidates": [],
                "viewer_public_key": b64encode_key(ed25519_public_bytes(key)),
                "end_of_candidates": False,
            }
            status, answer = await r.t.call("POST", f"/v1/sessions/{session_id}/offer", auth, json=body)
            assert status == 200, answer
            await r.watch.wait_for(rf"session {session_id[:8]}: offer .* 0 candidates \(more to come\)")
            now = datetime.datetime.now(datetime.UTC)
            runner = ViewerRunner(ViewerSession(key, viewer_certificate(key, now), pin), conn)
            r.runners.append(runner)
            await conn.start(
                answer["ice_ufrag"],
                answer["ice_pwd"],
                answer["candidates"],
                end_of_candidates=answer["end_of_candidates"],
            )
            broker = RigBroker(r.t, auth)
            await asyncio.wait_for(
                trickle(
                    cast(SessionBroker, broker),
                    session_id,
                    conn,
                    sent=set(),
                    sent_end=False,
                    received_end=answer["end_of_candidates"],
                    serial=SERIAL,
                ),
                WAIT,
            )
            # Our host candidate went out once, with end-of-candidates (at once, or in a later update).
            assert [c for b in broker.sent for c in b["candidates"]] == [host]
            assert broker.sent[-1]["end_of_candidates"] is True
            await r.watch.wait_for(rf"session {session_id[:8]}: 1 trickled candidates from the viewer")
            # The device's end-of-candidates came back, in the answer or a reply.
            assert answer["end_of_candidates"] or broker.answers[-1]["end_of_candidates"] is True

            await asyncio.wait_for(runner.established(), WAIT)
            await echo_through(runner, r.echo_port, 100_000, seed=7)
            assert runner.path_changes == [LAN]

            await runner.close()
            await r.watch.wait_for(rf"session {session_id[:8]}: released")
            status, gone = await r.t.call("POST", trickle_path, auth, json={"candidates": []})
            assert (status, gone["error"]) == (410, "session_gone"), gone

    run(main)
