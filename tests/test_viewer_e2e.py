"""``dvrlink`` end to end: the real broker process, the real viewer command, a device on loopback.

The broker runs as ``dvrlink-broker serve --state-dir TMP --udp-port 0 --https-port 0``; the test
learns its ports and certificate from ``TMP/broker.json``. The device is the real presence core
(``PresenceClient``) on a UDP socket in the test, answering pairing invites with
``PairingGuard`` the way the daemon does. Each viewer step runs the installed ``dvrlink`` script.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.protocol.identity import b64decode_key, ed25519_public_bytes, fingerprint, format_fingerprint
from dvrlink.protocol.pairing import (
    MAC_SIZE,
    PairingGuard,
    PairingUri,
    PairRequest,
    PairResult,
    PairStatus,
    result_message,
)
from dvrlink.protocol.presence_client import ClientConfig, PresenceClient
from dvrlink.protocol.presence_events import InviteReceived, Registered
from dvrlink.protocol.presence_wire import INVITE_KIND_PAIR, INVITE_MALFORMED, INVITE_OK, INVITE_UNSUPPORTED

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
BROKER_BIN = BIN / "dvrlink-broker"
VIEWER_BIN = BIN / "dvrlink"
BOUND = 30.0  # s, the longest any step may take (the machine is shared)
SERIAL = "DL-E2E-0001"
CODE = "QRSTUVWXYZ234567"
PASSWORD = "correct horse battery"


@dataclass(frozen=True)
class BrokerProcess:
    url: str
    cacert: Path
    udp_port: int
    public_key: bytes
    log: list[str]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    if not BROKER_BIN.exists() or not VIEWER_BIN.exists():
        pytest.skip("the dvrlink-broker and dvrlink scripts are not installed (run `make venv`)")
    state = tmp_path / "broker"
    add = subprocess.run(
        [BROKER_BIN, "user", "add", "alice", "--state-dir", state, "--password-stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )
    assert add.returncode == 0, add.stderr
    proc = subprocess.Popen(
        [
            BROKER_BIN,
            "serve",
            "--state-dir",
            state,
            "--udp-port",
            "0",
            "--https-port",
            "0",
            "--turn-port",
            "0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # keeps the pipe from filling; notes when the broker is ready
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line.rstrip())
            if "dvrlink-broker ready" in line:
                ready.set()
        ready.set()  # the broker exited: stop waiting

    reader = threading.Thread(target=drain, name="broker-stderr", daemon=True)
    reader.start()
    try:
        assert ready.wait(BOUND) and proc.poll() is None, "broker did not start:\n" + "\n".join(log)
        info = json.loads((state / "broker.json").read_text())
        yield BrokerProcess(
            url=f"https://127.0.0.1:{info['https_port']}",
            cacert=Path(info["cert"]),
            udp_port=int(info["udp_port"]),
            public_key=b64decode_key(info["public_key"], "broker public key"),
            log=log,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(BOUND)
        reader.join(BOUND)
        assert not reader.is_alive()


class Device(asyncio.DatagramProtocol):
    """A device on loopback: the presence core on a UDP socket, answering pairing invites."""

    def __init__(self, broker: BrokerProcess, seed: int = 3) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        self.public = ed25519_public_bytes(self.key)
        self.core = PresenceClient(ClientConfig(SERIAL, broker.public_key), self.key)
        self.guard = PairingGuard(SERIAL, self.public, CODE)
        self.address = ("127.0.0.1", broker.udp_port)
        self.registered = asyncio.Event()
        self.pairings: list[PairStatus] = []
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        await self._loop.create_datagram_endpoint(lambda: self, remote_addr=self.address)
        self.core.start(self._loop.time())
        self._step()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.core.receive_datagram(data, self._loop.time())
        self._step()

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP unreachable; the core retries
        pass

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self._loop.time())
        self._step()

    def _step(self) -> None:
        while (event := self.core.next_event()) is not None:
            if isinstance(event, Registered):
                self.registered.set()
            elif isinstance(event, InviteReceived):
                self._answer(event)
        assert self._transport is not None
        for datagram in self.core.datagrams_to_send():
            self._transport.sendto(datagram)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.core.get_timer()
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _answer(self, invite: InviteReceived) -> None:
        now = self._loop.time()
        if invite.kind != INVITE_KIND_PAIR:
            self.core.reply_invite(invite.invite_id, INVITE_UNSUPPORTED, b"", now)
            return
        try:
            request = PairRequest.decode(invite.body)
        except ValueError:
            self.core.reply_invite(invite.invite_id, INVITE_MALFORMED, b"", now)
            return
        status = self.guard.check(request, now)
        self.pairings.append(status)
        paired = status is PairStatus.PAIRED
        result = PairResult(
            status,
            self.public,
            self.guard.confirmation(request) if paired else bytes(MAC_SIZE),
            self.key.sign(result_message(SERIAL, request.viewer_key, request.nonce, status)),
        )
        self.core.reply_invite(invite.invite_id, INVITE_OK, result.encode(), now)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


async def _viewer(home: Path, *args: str, stdin: str = "") -> Run:
    env = {k: v for k, v in os.environ.items() if k != "DVRLINK_HOME"}
    proc = await asyncio.create_subprocess_exec(
        VIEWER_BIN,
        "--home",
        str(home),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), BOUND)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    text_err = err.decode()
    assert "Traceback" not in text_err, text_err
    return Run(proc.returncode, out.decode(), text_err)


def test_login_pair_and_list_against_the_real_broker(broker: BrokerProcess, tmp_path: Path) -> None:
    home = tmp_path / "viewer"

    async def scenario() -> None:
        device = Device(broker)
        await device.start()
        try:
            await asyncio.wait_for(device.registered.wait(), BOUND)
            await steps(device)
        finally:
            device.close()

    async def steps(device: Device) -> None:
        login = ("login", "--broker", broker.url, "--user", "alice", "--password-stdin")
        untrusted = await _viewer(home, *login, stdin=PASSWORD + "\n")
        assert untrusted.code == 1
        assert untrusted.err.rstrip().endswith("pass --cacert FILE to dvrlink login")

        wrong = await _viewer(home, *login, "--cacert", str(broker.cacert), stdin="not the password\n")
        assert wrong.code == 1 and "refused the password of user alice" in wrong.err

        ok = await _viewer(home, *login, "--cacert", str(broker.cacert), stdin=PASSWORD + "\n")
        assert ok.code == 0, ok.err
        assert f"logged in to {broker.url} as alice" in ok.out

        empty = await _viewer(home, "devices")
        assert empty.code == 0 and "no devices are paired" in empty.out

        not_paired = await _viewer(home, "status", SERIAL)
        assert not_paired.code == 1
        assert f"you have not paired {SERIAL}: run `dvrlink pair {SERIAL} CODE`" in not_paired.err

        unknown = await _viewer(home, "pair", "DL-NOPE-9", CODE)
        assert unknown.code == 1 and "does not know device DL-NOPE-9" in unknown.err

        other_label = PairingUri(SERIAL, CODE, fingerprint(b"\x05" * 32)).format()
        forged = await _viewer(home, "pair", other_label)
        assert forged.code == 1
        assert "the broker gave a key that does not match the device label: do not pair" in forged.err
        assert device.pairings == []  # the proof never left the viewer

        bad_code = await _viewer(home, "pair", SERIAL, "ABCDEFGHIJKLMNOP")
        assert bad_code.code == 1, bad_code.err
        assert "refused the pairing code" in bad_code.err
        assert device.pairings == [PairStatus.WRONG_CODE]

        label = PairingUri(SERIAL, CODE, fingerprint(device.public)).format()
        paired = await _viewer(home, "pair", label)
        assert paired.code == 0, paired.err
        assert (
            paired.out == f"paired {SERIAL} (fingerprint {format_fingerprint(fingerprint(device.public))})\n"
        )
        assert device.pairings[-1] is PairStatus.PAIRED

        listed = await _viewer(home, "devices")
        assert listed.code == 0, listed.err
        header, row = listed.out.splitlines()
        assert header.split()[0] == "SERIAL"
        cells = row.split()
        assert cells[:2] == [SERIAL, "yes"]
        assert cells[4].startswith("127.0.0.1:") and cells[-1] == "ok"

        status = await _viewer(home, "status", SERIAL, "--json")
        assert status.code == 0, status.err
        body = json.loads(status.out)
        assert body["online"] is True
        assert body["fingerprint"] == fingerprint(device.public)
        assert body["pin_status"] == "ok"
        assert body["keepalive_interval"] is not None

    asyncio.run(asyncio.wait_for(scenario(), 6 * BOUND))
