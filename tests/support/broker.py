"""The broker in-process on loopback (HTTPS API, presence, TURN) and simulated devices: real
PresenceClient cores on their own UDP sockets, answering pairing invites with a
PairingGuard the way the daemon does. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.broker.app import RunningBroker, start_broker
from dvrlink.broker.config import config_from_mapping
from dvrlink.broker.tls import client_context
from dvrlink.protocol.alarm_link import AlarmSender
from dvrlink.protocol.identity import b64encode_key, ed25519_public_bytes
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
)
from dvrlink.protocol.presence_wire import INVITE_KIND_PAIR, INVITE_KIND_PING, INVITE_OK, INVITE_UNSUPPORTED

CODE = "ABCDEFGHIJKLMNOP"
PASSWORD = "correct horse battery"
STEP = 10.0  # bound on any single wait in these tests

E = TypeVar("E", bound=ClientEvent)


class SimulatedDevice(asyncio.DatagramProtocol):
    """A presence client on a UDP socket; answers pairing invites like the daemon."""

    def __init__(
        self, serial: str, broker_key: bytes, answer_invites: bool = True, alarms: AlarmSender | None = None
    ) -> None:
        self.serial = serial
        self.key = Ed25519PrivateKey.generate()
        self.public_key = ed25519_public_bytes(self.key)
        self.client = PresenceClient(
            ClientConfig(serial=serial, broker_public_key=broker_key, reply_timeout=1.0),
            self.key,
            alarms=alarms,
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
        self,
        serial: str,
        answer_invites: bool = True,
        register: bool = True,
        alarms: AlarmSender | None = None,
    ) -> SimulatedDevice:
        device = SimulatedDevice(serial, self.broker.info.public_key, answer_invites, alarms)
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
