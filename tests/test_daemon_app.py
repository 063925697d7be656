"""dvrlinkd against a real PresenceServer on 127.0.0.1: registration, status file, READY, pairing, stop.

The broker side is the real presence core behind a small asyncio link in this file. The daemon
runs in-process (``run_daemon``) and once as a real process (signals, exit code).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.daemon.app import FAILING_AFTER_S, DeviceEvents, run_daemon
from dvrlink.daemon.config import DaemonConfig, load_config
from dvrlink.daemon.notify import Notifier
from dvrlink.daemon.pairing import InviteHandler
from dvrlink.daemon.state import DeviceState
from dvrlink.daemon.status import STATUS_FILE, StatusFile, read_status
from dvrlink.protocol.identity import ed25519_public_bytes
from dvrlink.protocol.pairing import PairRequest, PairResult, PairStatus, pair_proof
from dvrlink.protocol.presence_client import ClientState
from dvrlink.protocol.presence_events import (
    ConnectionLost,
    DeviceOffline,
    DeviceOnline,
    InviteAnswered,
    InviteReceived,
    KeepaliveAcknowledged,
    Registered,
    RegistrationRequested,
    ServerEvent,
)
from dvrlink.protocol.presence_server import PresenceServer, ServerConfig
from dvrlink.protocol.presence_wire import INVITE_KIND_PAIR, INVITE_OK, INVITE_UNSUPPORTED, RefuseReason
from dvrlink.protocol.supervisor_wire import Health

SERIAL = "DL-0001-0002"
WAIT = 10.0  # s, bound on every wait; each step takes milliseconds on loopback
DVRLINKD = Path(sys.executable).with_name("dvrlinkd")


class Broker(asyncio.DatagramProtocol):
    """The real presence core on a UDP socket; accepts (or refuses) every registration."""

    def __init__(self, refuse_with: str | None = None) -> None:
        self.server = PresenceServer(ServerConfig(), X25519PrivateKey.generate())
        self.events: asyncio.Queue[ServerEvent] = asyncio.Queue()
        self.refuse_with = refuse_with
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    @classmethod
    async def start(cls, refuse_with: str | None = None) -> tuple[Broker, int]:
        broker = cls(refuse_with)
        transport, _ = await broker.loop.create_datagram_endpoint(lambda: broker, local_addr=("127.0.0.1", 0))
        return broker, int(transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.server.receive_datagram(data, (str(addr[0]), int(addr[1])), self.loop.time())
        self.step()

    def step(self) -> None:
        now = self.loop.time()
        while (event := self.server.next_event()) is not None:
            if isinstance(event, RegistrationRequested):
                if self.refuse_with is None:
                    self.server.accept(event.handle, now)
                else:
                    self.server.refuse(event.handle, RefuseReason.BLOCKED, self.refuse_with, now)
            self.events.put_nowait(event)
        assert self.transport is not None
        for data, address in self.server.datagrams_to_send():
            self.transport.sendto(data, address)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        when = self.server.get_timer()
        if when is not None:
            self.timer_at = when
            self.timer = self.loop.call_at(when, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.server.handle_timer(max(self.loop.time(), self.timer_at))
        self.step()

    async def next_event(self, kind: type[ServerEvent]) -> Any:
        """The next event of ``kind`` (others are skipped)."""
        while True:
            event = await asyncio.wait_for(self.events.get(), WAIT)
            if isinstance(event, kind):
                return event

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.close()


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    with tempfile.TemporaryDirectory(prefix="dvrn") as folder:  # short: unix socket path limit
        path = str(Path(folder) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield sock, path
        finally:
            sock.close()


async def notifications_until(sock: socket.socket, wanted: str) -> list[str]:
    """Notifications received until one has the line ``wanted`` (bounded wait)."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    while True:
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), WAIT)
        seen.append(data.decode())
        if wanted in seen[-1].split("\n"):
            return seen


def write_config(tmp_path: Path, port: int, broker_key: bytes) -> Path:
    path = tmp_path / "dvrlinkd.toml"
    key = base64.b64encode(broker_key).decode()
    path.write_text(
        f'[device]\nserial = "{SERIAL}"\nstate_dir = "state"\nruntime_dir = "run"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {port}\npublic_key = "{key}"\n'
        '[log]\nlevel = "DEBUG"\n'
    )
    return path


def test_registers_reports_ready_pairs_and_stops(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, notify_path = notify_socket

    async def scenario() -> None:
        broker, port = await Broker.start()
        config: DaemonConfig = load_config(write_config(tmp_path, port, broker.server.public_key))
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(config, stop, {"NOTIFY_SOCKET": notify_path}))
        try:
            online = await broker.next_event(DeviceOnline)
            assert online.serial == SERIAL

            notes = await notifications_until(sock, "READY=1")
            assert notes[0] == "STATUS=registering with 127.0.0.1:" + str(port)
            assert notes[-1].startswith(f"READY=1\nSTATUS=online via 127.0.0.1:{port} as 127.0.0.1:")

            # READY is sent after the status file is written for the registration.
            status = read_status(tmp_path / "run")
            assert status.state == "online"
            assert status.serial == SERIAL
            assert status.broker == f"127.0.0.1:{port}"
            assert status.reflexive_address == f"{online.address[0]}:{online.address[1]}"
            assert status.session_id is not None
            assert status.registered_at is not None
            assert status.last_keepalive == status.registered_at
            assert status.pid == os.getpid()

            # Pairing through the broker's invite, as the HTTP API will do it.
            state = DeviceState(tmp_path / "state")
            device_key = ed25519_public_bytes(state.device_key())
            viewer, nonce = b"\x11" * 32, b"\x22" * 16
            proof = pair_proof(state.pairing_secret(), SERIAL, device_key, viewer, nonce)
            body = PairRequest(viewer, nonce, proof, "alice").encode()
            invite_id = broker.server.send_invite(
                SERIAL, INVITE_KIND_PAIR, body, asyncio.get_running_loop().time()
            )
            broker.step()
            answer = await broker.next_event(InviteAnswered)
            assert (answer.invite_id, answer.status) == (invite_id, INVITE_OK)
            result = PairResult.decode(answer.body)
            assert result.status is PairStatus.PAIRED
            assert result.verify(state.pairing_secret(), SERIAL, viewer, nonce)
            assert [v.account for v in state.viewers()] == ["alice"]

            stop.set()
            await asyncio.wait_for(daemon, WAIT)
            offline = await broker.next_event(DeviceOffline)  # the daemon said goodbye
            assert offline.serial == SERIAL
            await notifications_until(sock, "STOPPING=1")
            assert not (tmp_path / "run" / STATUS_FILE).exists()
        finally:
            stop.set()
            await asyncio.wait_for(daemon, WAIT)
            broker.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left behind

    asyncio.run(scenario())


def test_refused_registration_is_reported_and_not_ready(
    tmp_path: Path, notify_socket: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, notify_path = notify_socket

    async def scenario() -> None:
        broker, port = await Broker.start(refuse_with="serial DL-0001-0002 is blocked: call support")
        config = load_config(write_config(tmp_path, port, broker.server.public_key))
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(config, stop, {"NOTIFY_SOCKET": notify_path}))
        try:
            await broker.next_event(RegistrationRequested)
            notes = await notifications_until(
                sock, "STATUS=refused by the broker: serial DL-0001-0002 is blocked: call support"
            )
            assert not any("READY=1" in note for note in notes)
            status = read_status(tmp_path / "run")
            assert status.state == "backoff"
            assert status.session_id is None
            assert status.message == "refused by the broker: serial DL-0001-0002 is blocked: call support"
        finally:
            stop.set()
            await asyncio.wait_for(daemon, WAIT)
            broker.close()

    asyncio.run(scenario())
    refusals = [
        r for r in caplog.records if r.levelname == "ERROR" and "refused the registration" in r.getMessage()
    ]
    assert refusals and "call support" in refusals[0].getMessage()


@pytest.mark.integration
def test_daemon_process_ready_status_and_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, notify_path = notify_socket
    assert DVRLINKD.exists(), f"{DVRLINKD} missing: install the package with `make venv`"

    async def scenario() -> None:
        broker, port = await Broker.start()
        config = write_config(tmp_path, port, broker.server.public_key)
        env = {**os.environ, "NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "60000000"}
        process = await asyncio.create_subprocess_exec(
            str(DVRLINKD), "run", "--config", str(config), env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            notes = await notifications_until(sock, "READY=1")
            assert "WATCHDOG=1" in notes  # pinged at start-up when systemd asks for a watchdog
            status = await asyncio.create_subprocess_exec(
                str(DVRLINKD), "status", "--json", "--config", str(config), stdout=asyncio.subprocess.PIPE
            )
            out, _ = await asyncio.wait_for(status.communicate(), WAIT * 3)
            document = json.loads(out)
            assert (document["running"], document["state"], document["pid"]) == (True, "online", process.pid)

            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), WAIT * 3)
            assert process.returncode == 0, err.decode()
            await notifications_until(sock, "STOPPING=1")
            assert b"registered: online via" in err
            await broker.next_event(DeviceOffline)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            broker.close()

    asyncio.run(scenario())


@dataclass
class StubClient:
    state: ClientState = ClientState.COOKIE_WAIT
    session_id: int | None = None
    reflexive_address: tuple[str, int] | None = None
    rtt: float | None = None
    keepalive_interval: float = 25.0
    replies: list[tuple[int, int, bytes, float]] = field(default_factory=list)

    def reply_invite(self, invite_id: int, status: int, body: bytes, now: float) -> None:
        self.replies.append((invite_id, status, body, now))


def test_device_events(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, notify_path = notify_socket
    sock.settimeout(WAIT)
    config = load_config(write_config(tmp_path, 3478, bytes(range(32))))
    state = DeviceState(config.device.state_dir)
    invites = InviteHandler(SERIAL, state.device_key(), state.pairing_secret(), state, config.pairing)
    client = StubClient()
    status_file = StatusFile(config.device.runtime_dir)
    events = DeviceEvents(
        config, client, Notifier({"NOTIFY_SOCKET": notify_path}), status_file, invites, lambda: 42.0
    )

    events.after_step()
    assert read_status(config.device.runtime_dir).state == "cookie-wait"
    status_file.remove()
    events.after_step()  # same state: not rewritten
    assert not status_file.path.exists()

    client.state, client.session_id, client.reflexive_address = ClientState.ONLINE, 7, ("198.51.100.1", 4000)
    events.on_event(Registered(7, ("198.51.100.1", 4000), 25.0))
    assert (
        sock.recv(4096).decode()
        == "READY=1\nSTATUS=online via 127.0.0.1:3478 as 198.51.100.1:4000, session 0x00000007"
    )
    first = read_status(config.device.runtime_dir)
    assert (first.state, first.session_id, first.reflexive_address) == ("online", 7, "198.51.100.1:4000")

    client.rtt = 0.05
    events.on_event(KeepaliveAcknowledged(("198.51.100.1", 4000), 0.05))
    after_ack = read_status(config.device.runtime_dir)
    assert after_ack.rtt == 0.05
    assert after_ack.last_keepalive is not None and first.last_keepalive is not None
    assert after_ack.last_keepalive >= first.last_keepalive

    client.state, client.session_id = ClientState.COOKIE_WAIT, None
    events.on_event(ConnectionLost("no keepalive reply after 3 tries"))
    assert sock.recv(4096).decode() == (
        "STATUS=connection lost: no keepalive reply after 3 tries; registering again with 127.0.0.1:3478"
    )
    lost = read_status(config.device.runtime_dir)
    assert (lost.state, lost.session_id, lost.message) == (
        "cookie-wait",
        None,
        "connection lost: no keepalive reply after 3 tries",
    )

    client.state = ClientState.ONLINE
    events.on_event(Registered(8, ("198.51.100.1", 4001), 25.0))
    assert sock.recv(4096).decode().startswith("STATUS=online via")  # READY only once

    events.on_event(InviteReceived(5, 200, b""))
    assert client.replies == [(5, INVITE_UNSUPPORTED, b"", 42.0)]  # the core's clock, not wall time


def test_the_supervisors_heartbeat_says_how_the_daemon_is(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, 3478, bytes(range(32))))
    state = DeviceState(config.device.state_dir)
    invites = InviteHandler(SERIAL, state.device_key(), state.pairing_secret(), state, config.pairing)
    client, clock = StubClient(), [100.0]
    events = DeviceEvents(
        config, client, Notifier({}), StatusFile(config.device.runtime_dir), invites, lambda: clock[0]
    )
    assert events.health() is Health.DEGRADED, "not registered yet"
    client.state = ClientState.ONLINE
    assert events.health() is Health.OK
    client.state, clock[0] = ClientState.BACKOFF, 100.0 + FAILING_AFTER_S - 1
    assert events.health() is Health.DEGRADED
    clock[0] += 1
    assert events.health() is Health.FAILING, "an hour without a registration"
    events.supervisor_heartbeat()  # no supervisor loaded: nothing to do
    with pytest.raises(RuntimeError, match="the supervisor is not loaded yet"):
        asyncio.run(events.supervisor_power_cycle("quectel-ec25"))
