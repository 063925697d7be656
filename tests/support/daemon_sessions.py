"""The real daemon (``run_daemon``) with ``[sessions]`` and ``[services]`` against the in-process
broker on 127.0.0.1, and a viewer driven by the test: it pairs through the broker API with the
device's code, asks for a session, gathers its own candidates, posts the offer and runs QUIC over
the paths it gets, the way ``dvrlink forward`` does. Readiness comes from the daemon's log lines.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.daemon.app import run_daemon
from dvrlink.daemon.config import DaemonConfig, load_config
from dvrlink.daemon.state import DeviceState
from dvrlink.protocol.identity import b64encode_key, ed25519_public_bytes, fingerprint
from dvrlink.protocol.pairing import PairResult, PairStatus, pair_proof
from dvrlink.protocol.session import ViewerSession
from dvrlink.protocol.session_streams import ForwardTarget
from dvrlink.protocol.session_tls import viewer_certificate
from dvrlink.protocol.signalling import PathPolicy, TurnServer
from dvrlink.session.connectivity import Connectivity
from dvrlink.session.runner import ViewerRunner
from support.broker import Lab, lab
from support.connectivity import payload, read_digest, sha, write_all

SERIAL = "DL-0007-0001"
LOOPBACK = "127.0.0.1"
WAIT = 15.0
POLICIES = {"all": PathPolicy.ALL, "relay_only": PathPolicy.RELAY_ONLY, "direct_only": PathPolicy.DIRECT_ONLY}


class LogWatch(logging.Handler):
    """Collects the daemon's log lines; ``wait_for`` waits (bounded) for one matching a pattern."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._loop.call_soon_threadsafe(self._changed.set)

    async def wait_for(self, pattern: str, after: int = 0, timeout: float = WAIT) -> str:
        """The first line from ``after`` on that matches ``pattern``, within ``timeout`` seconds;
        AssertionError with the last lines otherwise."""

        async def scan() -> str:
            seen = after
            while True:
                for line in self.lines[seen:]:
                    if re.search(pattern, line):
                        return line
                seen = len(self.lines)
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no log line {pattern!r} within {timeout:g} s:\n" + "\n".join(self.lines[-30:])
            ) from None


@dataclass
class Connections:
    """A local TCP service on the device's side: echoes, and counts connections."""

    accepted: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


@dataclass
class Rig:
    t: Lab
    config: DaemonConfig
    watch: LogWatch
    echo_port: int
    echo: Connections
    other_port: int
    other: Connections
    stop: asyncio.Event
    daemon: asyncio.Task[None]
    runners: list[ViewerRunner] = field(default_factory=list)
    serial: str = SERIAL
    """The device's serial, as in its config (``[device] serial``)."""

    async def stop_daemon(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.shield(self.daemon), WAIT)

    async def pair(self, username: str = "alice") -> tuple[dict[str, str], Ed25519PrivateKey, str]:
        """Pair a new viewer key through the broker API with the device's code: (auth, key, device pin)."""
        auth = await self.t.login(username)
        status, identity = await self.t.call("GET", f"/v1/devices/{self.serial}/identity", auth)
        assert status == 200, identity
        device_key = base64.b64decode(identity["public_key"])
        code = DeviceState(self.config.device.state_dir).pairing_secret()
        key = Ed25519PrivateKey.generate()
        viewer_public, nonce = ed25519_public_bytes(key), os.urandom(16)
        body = {
            "viewer_public_key": b64encode_key(viewer_public),
            "nonce": base64.b64encode(nonce).decode(),
            "proof": base64.b64encode(
                pair_proof(code, self.serial, device_key, viewer_public, nonce)
            ).decode(),
        }
        status, answer = await self.t.call("POST", f"/v1/devices/{self.serial}/pairings", auth, json=body)
        assert status == 200, answer
        assert PairResult.decode(base64.b64decode(answer["result"])).status is PairStatus.PAIRED
        return auth, key, fingerprint(device_key)

    async def offer(
        self, auth: dict[str, str], key: Ed25519PrivateKey, policy: str = "all"
    ) -> tuple[int, dict[str, Any], Connectivity, str]:
        """Ask for a session and post an offer: (status, answer body, our paths, session id)."""
        status, created = await self.t.call(
            "POST", "/v1/sessions", auth, json={"serial": self.serial, "policy": policy}
        )
        assert status == 201, created
        turn = [
            TurnServer(s["host"], s["port"], s["transport"], s["username"], s["password"])
            for s in created["turn"]
        ]
        stun = (created["stun"]["host"], created["stun"]["port"])
        conn = await Connectivity.prepare(True, stun, turn, POLICIES[policy], host_addresses=[LOOPBACK])
        body = {
            "ice_ufrag": conn.local_ufrag,
            "ice_pwd": conn.local_pwd,
            "candidates": conn.local_candidates(),
            "viewer_public_key": b64encode_key(ed25519_public_bytes(key)),
        }
        path = f"/v1/sessions/{created['session_id']}/offer"
        status, answer = await self.t.call("POST", path, auth, json=body)
        if status != 200:
            await conn.close()
        return status, answer, conn, created["session_id"]

    async def session(
        self, auth: dict[str, str], key: Ed25519PrivateKey, pin: str, policy: str = "all"
    ) -> tuple[ViewerRunner, str]:
        """A viewer session the device accepted (not yet established): (runner, session id)."""
        status, answer, conn, session_id = await self.offer(auth, key, policy)
        assert status == 200, answer
        now = datetime.datetime.now(datetime.UTC)
        runner = ViewerRunner(ViewerSession(key, viewer_certificate(key, now), pin), conn)
        self.runners.append(runner)
        await conn.start(answer["ice_ufrag"], answer["ice_pwd"], answer["candidates"])
        return runner, session_id


@asynccontextmanager
async def rig(tmp_path: Path, policy: str = "all", max_sessions: int = 8) -> AsyncIterator[Rig]:
    watch = LogWatch()
    logger = logging.getLogger("dvrlink")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    echo, other = Connections(), Connections()
    echo_server = await asyncio.start_server(echo.echo, LOOPBACK, 0)
    other_server = await asyncio.start_server(other.echo, LOOPBACK, 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    other_port = other_server.sockets[0].getsockname()[1]
    try:
        async with lab(tmp_path, turn_allow_loopback_peers=True) as t:
            config_file = tmp_path / "dvrlinkd.toml"
            config_file.write_text(
                f'[device]\nserial = "{SERIAL}"\nstate_dir = "{tmp_path / "device"}"\n'
                f'runtime_dir = "{tmp_path / "run"}"\n'
                f'[broker]\nhost = "{LOOPBACK}"\nport = {t.broker.info.udp_port}\n'
                f'public_key = "{b64encode_key(t.broker.info.public_key)}"\n'
                f'[services]\nforward = ["{LOOPBACK}:{echo_port}"]\n'
                f'[sessions]\nhost_addresses = ["{LOOPBACK}"]\npolicy = "{policy}"\n'
                f"max_sessions = {max_sessions}\n"
            )
            config = load_config(config_file)
            stop = asyncio.Event()
            daemon = asyncio.create_task(run_daemon(config, stop, {}))
            the_rig = Rig(t, config, watch, echo_port, echo, other_port, other, stop, daemon)
            try:
                await watch.wait_for(r"^registered: ")
                yield the_rig
            finally:
                for runner in the_rig.runners:
                    await runner.close()
                await the_rig.stop_daemon()
    finally:
        for server in (echo_server, other_server):
            server.close()
            await server.wait_closed()
        logger.removeHandler(watch)
        logger.setLevel(old_level)


async def echo_through(runner: ViewerRunner, port: int, size: int, seed: int) -> None:
    stream = await asyncio.wait_for(runner.open_stream(ForwardTarget(LOOPBACK, port)), WAIT)
    data = payload(size, seed)
    _, (digest, total) = await asyncio.wait_for(
        asyncio.gather(write_all(stream, data), read_digest(stream)), WAIT
    )
    assert (digest, total) == (sha(data), size)
