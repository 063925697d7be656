"""The viewer's side of sessions: the broker client's session calls, ``open_session`` and the
``dvrlink forward`` / ``ping`` / ``sessions`` commands.

A stand-in broker (aiohttp in a thread, 127.0.0.1, port 0) answers the session routes. Special
serials produce the contract's error answers; for ``SERIAL`` it plays the device in-process the
way the daemon will: a controlled ``Connectivity`` through the loopback TURN relay of
``support.connectivity``, a ``DeviceRunner`` and the real ``SessionServices``, forwarding to
an echo server. The viewer runs in the test's thread (its own loop) or as the installed
``dvrlink`` script. No sleeps; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_mock import MockerFixture
from support.connectivity import Lab, lab
from support.session import make_device
from support.waiting import wait_until_async

from dvrlink.daemon.services import DeviceInfo, ServicesConfig, SessionServices
from dvrlink.protocol.identity import b64decode_key, ed25519_public_bytes, fingerprint
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session.allow_list import parse_allowed_target
from dvrlink.session.connectivity import Connectivity
from dvrlink.session.runner import DeviceRunner
from dvrlink.viewer import cli as cli_module
from dvrlink.viewer.api_client import BrokerClient, cleartext_warning
from dvrlink.viewer.cli import (
    build_parser,
    format_bytes,
    format_rtt,
    forward_line,
    forward_specs,
    main,
    render_sessions,
    session_policy,
    status_line,
)
from dvrlink.viewer.errors import EXIT_USAGE, ViewerError
from dvrlink.viewer.forward import ForwardSpec, ForwardStats, ping
from dvrlink.viewer.home import Login, Pin, ViewerHome
from dvrlink.viewer.session_client import ViewerRunner, open_session

T = TypeVar("T")
SERIAL = "DL-0001-0002"
TOKEN = "tok-good"
LOOPBACK = "127.0.0.1"
BOUND = 30.0  # s, the longest any step waits
VIEWER_BIN = Path(sys.executable).parent / "dvrlink"
POLICY_BY_NAME = {
    "all": PathPolicy.ALL,
    "relay_only": PathPolicy.RELAY_ONLY,
    "direct_only": PathPolicy.DIRECT_ONLY,
}


# -- the stand-in broker and device -----------------------------------------------------------------


class FakeSessionBroker:
    """The session routes of contract v1; ``SERIAL`` is a real in-process device."""

    def __init__(self) -> None:
        self.device_key = Ed25519PrivateKey.generate()
        self.presented_key = self.device_key  # another key: the device is an impostor
        self.authorised = True  # does the device accept any viewer key it is offered?
        self.drop_candidates = False  # answer without candidates: no path can be found
        self.sessions: dict[str, dict[str, Any]] = {}
        self.offers: list[dict[str, Any]] = []
        self.paths: list[tuple[str, str]] = []
        """(session id, path) of each PATCH /v1/sessions/{id}, in order."""
        self.echo_port = 0
        self.lab: Lab | None = None
        self.stack: AsyncExitStack | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/sessions", self.create)
        app.router.add_get("/v1/sessions", self.list)
        app.router.add_post("/v1/sessions/{session_id}/offer", self.offer)
        app.router.add_patch("/v1/sessions/{session_id}", self.report_path)
        return app

    async def report_path(self, request: web.Request) -> web.Response:
        refused = self.refused(request)
        if refused is not None:
            return refused
        session_id = request.match_info["session_id"]
        body = await request.json()
        if session_id not in self.sessions or set(body) != {"path"}:
            return self.error(404, "unknown_session", "no such session")
        self.paths.append((session_id, body["path"]))
        return web.json_response({"session_id": session_id, "path": body["path"]})

    @staticmethod
    def error(http: int, code: str, message: str, headers: Any = None, **extra: Any) -> web.Response:
        body = {"error": code, "message": message, **extra}
        return web.json_response(body, status=http, headers=headers)

    def refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.error(401, "unauthorized", "no valid token")
        return None

    async def create(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request)) is not None:
            return refused
        body = await request.json()
        serial = body["serial"]
        if serial == "NOTPAIRED-1":
            return self.error(403, "not_paired", "not paired")
        if serial == "OFFLINE-1":
            return self.error(409, "device_offline", "offline")
        if serial == "FULL-1":
            return self.error(429, "too_many_sessions", "too many", headers={"Retry-After": "60"})
        assert self.lab is not None
        session_id = os.urandom(16).hex()
        now = time.time()
        record = {
            "session_id": session_id,
            "serial": serial,
            "policy": body.get("policy", "all"),
            "state": "created",
            "created_at": now,
            "expires_at": now + 600,
        }
        self.sessions[session_id] = record
        turn = [
            {
                "host": t.host,
                "port": t.port,
                "transport": t.transport,
                "username": t.username,
                "password": t.password,
            }
            for t in self.lab.turn_servers("alice")
        ]
        stun = {"host": self.lab.stun[0], "port": self.lab.stun[1]}
        return web.json_response(
            {**record, "turn": turn, "turn_expires_at": now + 600, "stun": stun}, status=201
        )

    async def list(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request)) is not None:
            return refused
        return web.json_response({"sessions": list(self.sessions.values())})

    async def offer(self, request: web.Request) -> web.Response:
        if (refused := self.refused(request)) is not None:
            return refused
        record = self.sessions.get(request.match_info["session_id"])
        if record is None:
            return self.error(404, "unknown_session", "no such session")
        body = await request.json()
        self.offers.append(body)
        serial = record["serial"]
        special = {
            "SLOW-1": lambda: self.error(504, "device_timeout", "no answer"),
            "REFUSE-1": lambda: self.error(
                403, "refused", "refused", status="refused", device_message="viewer not authorised"
            ),
            "REFUSE-2": lambda: self.error(403, "refused", "refused", status="refused", device_message=""),
            "BUSY-1": lambda: self.error(
                403,
                "refused",
                "busy",
                headers={"Retry-After": "5"},
                status="busy",
                device_message="4 sessions",
            ),
            "NORELAY-1": lambda: self.error(
                502, "no_relay", "no relay", status="no_relay", device_message="401"
            ),
            "BROKEN-1": lambda: self.error(502, "device_error", "malformed session answer"),
        }
        if serial in special:
            record["state"] = "failed"
            return special[serial]()
        answer = await self.device_answer(body, POLICY_BY_NAME[record["policy"]])
        record["state"] = "answered"
        return web.json_response({"status": "accepted", "session_id": record["session_id"], **answer})

    async def device_answer(self, offer: dict[str, Any], policy: PathPolicy) -> dict[str, Any]:
        assert self.lab is not None and self.stack is not None
        viewer_key = b64decode_key(offer["viewer_public_key"], "viewer key")
        conn = await Connectivity.prepare(
            False, self.lab.stun, self.lab.turn_servers(SERIAL), policy, host_addresses=[LOOPBACK]
        )
        services = SessionServices(
            ServicesConfig(forward_allow=(parse_allowed_target(f"{LOOPBACK}:{self.echo_port}"),)),
            lambda: DeviceInfo(SERIAL, "test", 1.0, 1),
        )
        core = make_device(self.presented_key, lambda raw: self.authorised and raw == viewer_key)
        runner = DeviceRunner(core, conn, on_stream=services.serve)
        self.stack.push_async_callback(services.aclose)
        self.stack.push_async_callback(runner.close)
        await conn.start(offer["ice_ufrag"], offer["ice_pwd"], offer["candidates"])
        candidates = [] if self.drop_candidates else conn.local_candidates()
        return {"ice_ufrag": conn.local_ufrag, "ice_pwd": conn.local_pwd, "candidates": candidates}


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class ServerThread:
    """The stand-in broker, its TURN lab and an echo server, in a thread with its own loop."""

    def __init__(self, broker: FakeSessionBroker) -> None:
        self.broker = broker
        self.port = 0
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="fake-session-broker", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(BOUND), "the test server did not start"
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(BOUND)
        assert not self._thread.is_alive(), "the test server did not stop"
        if self._failure is not None:
            raise self._failure

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        echo = await asyncio.start_server(_echo, LOOPBACK, 0)
        self.broker.echo_port = echo.sockets[0].getsockname()[1]
        async with lab() as the_lab, AsyncExitStack() as stack:
            self.broker.lab = the_lab
            self.broker.stack = stack
            runner = web.AppRunner(self.broker.app(), access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            site = web.TCPSite(runner, LOOPBACK, 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()
        echo.close()
        await echo.wait_closed()


@pytest.fixture
def fake() -> FakeSessionBroker:
    return FakeSessionBroker()


@pytest.fixture
def url(fake: FakeSessionBroker) -> Iterator[str]:
    with ServerThread(fake) as server:
        yield f"http://{LOOPBACK}:{server.port}"


@pytest.fixture
def home(tmp_path: Path, url: str, fake: FakeSessionBroker) -> ViewerHome:
    home = ViewerHome(tmp_path / "home")
    home.save_login(Login(url, None, "alice", TOKEN, time.time() + 3600))
    home.load_or_create_key()
    public = ed25519_public_bytes(fake.device_key)
    home.save_pin(SERIAL, Pin(public, fingerprint(public), time.time()))
    return home


def _run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        result = await asyncio.wait_for(coro, BOUND)
        current = asyncio.current_task()
        for _ in range(10):  # tasks cancelled during teardown finish within a few iterations
            if not [t for t in asyncio.all_tasks() if t is not current and not t.done()]:
                break
            await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        assert not left, f"tasks left behind: {left}"
        return result

    return asyncio.run(bounded())


def _client(url: str) -> BrokerClient:
    return BrokerClient(url, token=TOKEN, allow_http=True)


def _failure(action: Callable[[], Awaitable[Any]]) -> str:
    with pytest.raises(ViewerError) as err:
        _run(action())
    assert err.value.exit_code == 1
    assert "\n" not in err.value.message
    return err.value.message


# -- the broker client ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serial", "expected"),
    [
        ("NOTPAIRED-1", "you have not paired NOTPAIRED-1: run `dvrlink pair NOTPAIRED-1 CODE`"),
        ("OFFLINE-1", "device OFFLINE-1 is offline: check its power and network, then retry"),
        ("FULL-1", "refuses more sessions for your account (the limit is reached): stop another"),
        ("SLOW-1", "device SLOW-1 did not answer the broker in time"),
        (
            "REFUSE-1",
            "device REFUSE-1 refused the session: viewer not authorised",
        ),
        (
            "REFUSE-2",
            "device REFUSE-2 refused the session: it accepts only viewers it paired with; if this "
            "computer was paired with it, pair again: `dvrlink pair REFUSE-2 CODE`",
        ),
        ("BUSY-1", "device BUSY-1 is busy (it says: 4 sessions): close another session to it"),
        ("NORELAY-1", "device NORELAY-1 could not reach the broker's TURN relay (it says: 401)"),
        ("BROKEN-1", "device BROKEN-1 gave the broker an answer it could not use (malformed session answer)"),
    ],
)
def test_session_errors_say_what_to_do(url: str, serial: str, expected: str) -> None:
    async def go() -> None:
        async with _client(url) as client:
            grant = await client.create_session(serial, PathPolicy.ALL)
            await client.send_offer(grant.session_id, "ufrag", "p" * 22, [], b"\x01" * 32, serial=serial)

    assert expected in _failure(go)


def test_unknown_session_and_listing(url: str, fake: FakeSessionBroker) -> None:
    async def offer_unknown() -> None:
        async with _client(url) as client:
            await client.send_offer("0" * 32, "ufrag", "p" * 22, [], b"\x01" * 32)

    assert "no longer knows this session" in _failure(offer_unknown)

    async def create_and_list() -> tuple[Any, list[Any]]:
        async with _client(url) as client:
            grant = await client.create_session("SLOW-1", PathPolicy.RELAY_ONLY)
            return grant, await client.list_sessions()

    grant, listed = _run(create_and_list())
    assert len(grant.session_id) == 32 and grant.turn and grant.stun is not None
    assert [(s.session_id, s.serial, s.policy, s.state) for s in listed] == [
        (grant.session_id, "SLOW-1", "relay_only", "created")
    ]
    table = render_sessions(listed, time.time())
    assert table.splitlines()[0].split() == ["SESSION", "SERIAL", "POLICY", "STATE", "CREATED"]
    assert grant.session_id in table and "0s ago" in table


# -- open_session ---------------------------------------------------------------------------------


def _open(
    url: str, home: ViewerHome, serial: str = SERIAL, policy: PathPolicy = PathPolicy.RELAY_ONLY
) -> str:
    async def go() -> None:
        async with _client(url) as client:
            runner = await open_session(
                client, home, serial, PathPolicy.RELAY_ONLY, [LOOPBACK], timeout_s=10.0
            )
        await runner.close()

    return _failure(go)


def test_not_pinned_asks_to_pair_before_asking_the_broker(
    url: str, home: ViewerHome, fake: FakeSessionBroker
) -> None:
    message = _open(url, home, "DL-9999-9999")
    assert message.startswith("DL-9999-9999 is not paired from this computer")
    assert message.endswith("pair first with `dvrlink pair DL-9999-9999 CODE`")
    assert fake.sessions == {}


def test_session_over_the_relay_pings_and_forwards(
    url: str, home: ViewerHome, fake: FakeSessionBroker
) -> None:
    async def go() -> None:
        async with _client(url) as client:
            runner = await open_session(client, home, SERIAL, PathPolicy.RELAY_ONLY, [LOOPBACK])
        try:
            assert runner.path is not None and runner.path[0] == "relay"
            assert len(await ping(runner, count=2)) == 2
        finally:
            await runner.close()

    _run(go())
    (offer,) = fake.offers
    key = b64decode_key(offer["viewer_public_key"], "viewer key")
    own = home.load_key()
    assert own is not None and key == ed25519_public_bytes(own)
    assert any(" typ relay" in c for c in offer["candidates"])


def test_the_viewer_tells_the_broker_the_path_its_session_runs_on(
    url: str, home: ViewerHome, fake: FakeSessionBroker
) -> None:
    async def report(session_id: str, path: str) -> None:
        async with _client(url) as client:  # a client of its own, as `dvrlink forward` does
            await client.report_path(session_id, path)

    async def go() -> None:
        async with _client(url) as client:
            runner = await open_session(
                client, home, SERIAL, PathPolicy.RELAY_ONLY, [LOOPBACK], report_path=report
            )
        try:
            await wait_until_async("the path reported", lambda: fake.paths, seen=lambda: fake.paths)
            assert fake.paths == [(next(iter(fake.sessions)), "relay")]
        finally:
            await runner.close()

    _run(go())


def test_no_path(url: str, home: ViewerHome, fake: FakeSessionBroker) -> None:
    fake.drop_candidates = True
    message = _open(url, home)
    assert message.startswith(f"no working path to {SERIAL}: no path to the peer: ")
    assert "the peer offered no relay candidate" in message


def test_pin_mismatch(url: str, home: ViewerHome, fake: FakeSessionBroker) -> None:
    fake.presented_key = Ed25519PrivateKey.generate()
    message = _open(url, home)
    assert message.startswith(
        "the device's key does not match the one pinned at pairing: do not trust this session; "
        "re-pair only if the device was replaced"
    )


def test_device_does_not_recognise_the_viewer(url: str, home: ViewerHome, fake: FakeSessionBroker) -> None:
    fake.authorised = False
    message = _open(url, home)
    assert message.startswith("the device does not recognise this viewer: pair again: `dvrlink pair")


# -- the command ----------------------------------------------------------------------------------


def test_forward_arguments() -> None:
    parser = build_parser()
    args = parser.parse_args(["forward", SERIAL, "8554:554", "-L", "0.0.0.0:8080:80", "--relay-only"])
    assert session_policy(args) is PathPolicy.RELAY_ONLY
    assert forward_specs(args) == [
        ForwardSpec("127.0.0.1", 8554, "127.0.0.1", 554),
        ForwardSpec("0.0.0.0", 8080, "127.0.0.1", 80),
    ]
    args = parser.parse_args(["forward", SERIAL, "-L", "1:2", "--host-address", "127.0.0.1", "--direct-only"])
    assert session_policy(args) is PathPolicy.DIRECT_ONLY and args.host_address == ["127.0.0.1"]
    assert [s.local_port for s in forward_specs(args)] == [1]
    assert session_policy(parser.parse_args(["ping", SERIAL, "-c", "2"])) is PathPolicy.ALL
    with pytest.raises(ViewerError) as err:
        forward_specs(parser.parse_args(["forward", SERIAL]))
    assert err.value.exit_code == EXIT_USAGE and "no forward given" in err.value.message
    with pytest.raises(ViewerError) as err:
        forward_specs(parser.parse_args(["forward", SERIAL, "8554"]))
    assert err.value.exit_code == EXIT_USAGE and 'bad forward "8554"' in err.value.message


@pytest.mark.parametrize(
    "argv",
    [
        ["forward", SERIAL, "1:2", "--relay-only", "--direct-only"],
        ["ping", SERIAL, "-c", "many"],
        ["forward"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert "usage: dvrlink" in capsys.readouterr().err


def test_ping_and_sessions_commands(url: str, home: ViewerHome, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--home", str(home.path), "--insecure-http"]  # the stand-in broker speaks plain http
    code = main([*base, "ping", SERIAL.lower(), "-c", "2", "--relay-only", "--host-address", LOOPBACK])
    out, err = capsys.readouterr()
    assert code == 0 and err == f"dvrlink: {cleartext_warning(url)}\n", err
    lines = out.splitlines()
    assert lines[0] == f"session to {SERIAL} via relay"
    assert lines[1].startswith(f"ping {SERIAL}: seq=1 time=") and lines[1].endswith(" ms path=relay")
    assert lines[3].startswith(f"2 pings to {SERIAL}: min/avg/max ")
    assert main([*base, "sessions"]) == 0
    out, _ = capsys.readouterr()
    assert "relay_only  answered" in out
    assert main([*base, "ping", "OFFLINE-1"]) == 1
    assert "pair first with `dvrlink pair OFFLINE-1 CODE`" in capsys.readouterr().err


def test_the_client_that_opened_a_session_lives_until_the_session_closes(
    url: str, home: ViewerHome, mocker: MockerFixture
) -> None:
    """Candidates found after the session is up still trickle through the broker client that
    opened it (a device's server-reflexive or port-mapped candidate can come a round trip
    late), so that client closes with the session, not when the session is up (which cut the
    trickle off mid-request: the session then never went direct)."""
    opened = mocker.spy(cli_module, "open_session")
    closes = mocker.spy(BrokerClient, "close")
    original = ViewerRunner.close
    open_at_close: list[bool] = []

    async def close(self: ViewerRunner, reason: str = "closed by the user") -> None:
        client = opened.call_args.args[0]
        open_at_close.append(not any(call.args[0] is client for call in closes.call_args_list))
        await original(self, reason)

    mocker.patch.object(ViewerRunner, "close", close)
    base = ["--home", str(home.path), "--insecure-http"]
    assert main([*base, "ping", SERIAL, "-c", "1", "--relay-only", "--host-address", LOOPBACK]) == 0
    assert open_at_close and open_at_close[0], "the client that opened the session closed before it"
    client = opened.call_args.args[0]
    assert any(call.args[0] is client for call in closes.call_args_list), "and it closes with the session"


@pytest.mark.skipif(not VIEWER_BIN.exists(), reason="the dvrlink script is not installed (run `make venv`)")
def test_forward_command_until_sigint(url: str, home: ViewerHome, fake: FakeSessionBroker) -> None:
    async def go() -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            VIEWER_BIN, "--home", str(home.path), "--insecure-http",
            "forward", SERIAL, f"0:{fake.echo_port}", "--relay-only", "--host-address", LOOPBACK,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        try:
            warning = await asyncio.wait_for(proc.stderr.readline(), BOUND)
            assert warning.decode() == f"dvrlink: {cleartext_warning(url)}\n"
            allowed = (await asyncio.wait_for(proc.stdout.readline(), BOUND)).decode()
            assert allowed.startswith("forwarding 127.0.0.1:") and allowed.endswith(
                f" -> {SERIAL}:{fake.echo_port} via relay\n"
            )
            port = int(allowed.split()[1].rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            writer.write(b"hello through the relay")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), BOUND) == b"hello through the relay"
            writer.close()
            proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), BOUND)
            return code, (await proc.stdout.read()).decode(), (await proc.stderr.read()).decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    code, out, err = _run(go())
    assert (code, err) == (0, "")
    opened, closed = out.splitlines()  # no TTY: one status line per change
    assert opened.startswith("connection from 127.0.0.1:") and opened.endswith(
        f" opened, to {SERIAL}:{fake.echo_port} (1 open)"
    )
    assert closed.endswith(" closed: 23 B out, 23 B in (0 open)"), closed


def test_forward_to_a_port_the_device_does_not_allow_stops_before_listening(
    url: str, home: ViewerHome, fake: FakeSessionBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--home", str(home.path), "--insecure-http", "forward", SERIAL, f"0:{fake.echo_port}"]
    code = main([*argv, "-L", "0:9", "--relay-only", "--host-address", LOOPBACK])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (
        'dvrlink: the device refuses port 9 on 127.0.0.1: add "127.0.0.1:9" to [services] forward in '
        f"dvrlinkd.toml on the device (it allows 127.0.0.1:{fake.echo_port})"
    )


def test_status_formatting() -> None:
    assert [format_bytes(n) for n in (0, 999, 1500, 3_200_000, 1_100_000_000)] == [
        "0 B",
        "999 B",
        "1.5 kB",
        "3.2 MB",
        "1.1 GB",
    ]
    assert (format_rtt(None), format_rtt(0.0123)) == ("-", "12.3 ms")
    spec = ForwardSpec("127.0.0.1", 8554, "127.0.0.1", 554)
    assert forward_line(spec, ("127.0.0.1", 8554), SERIAL) == f"127.0.0.1:8554 -> {SERIAL}:554"
    other = ForwardSpec("::1", 0, "192.168.1.64", 80)
    assert forward_line(other, ("::1", 4000), SERIAL) == f"[::1]:4000 -> {SERIAL} -> 192.168.1.64:80"


def test_the_status_line_says_when_the_device_stops_answering() -> None:
    runner = types.SimpleNamespace(path=("relay", 0), rtt=0.0022, silent_s=2.34)
    line = status_line(runner, [ForwardStats()])  # type: ignore[arg-type]  # a stand-in runner
    assert line.startswith("path relay  rtt 2.2 ms  no answer for 2.3 s  in 0 B"), line
    runner.silent_s = 0.2  # a probe is answered within the second: nothing to say
    assert "no answer" not in status_line(runner, [ForwardStats()])  # type: ignore[arg-type]
