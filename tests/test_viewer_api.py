"""The broker client and the ``dvrlink`` command against a small real aiohttp server.

The server runs in a thread on 127.0.0.1, port 0, and answers the contract's shapes: special
serials produce its error answers, and one real device (``PairingGuard`` plus an Ed25519 key)
answers pairing requests as the daemon would. ``main()`` runs in the test's thread.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import ipaddress
import json
import socket
import ssl
import stat
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from dvrlink.protocol.identity import (
    b64decode_key,
    b64encode_key,
    ed25519_public_bytes,
    fingerprint,
    format_fingerprint,
)
from dvrlink.protocol.pairing import (
    MAC_SIZE,
    PairingGuard,
    PairingUri,
    PairRequest,
    PairResult,
    PairStatus,
    format_code,
    result_message,
)
from dvrlink.viewer.api_client import BrokerClient
from dvrlink.viewer.cli import main
from dvrlink.viewer.errors import ViewerError
from dvrlink.viewer.home import Login, Pin, ViewerHome

T = TypeVar("T")
SERIAL = "DL-0001-0002"
CODE = "ABCDEFGHIJKLMNOP"
GOOD_TOKEN = "tok-good"
OLD_TOKEN = "tok-old"
BOUND = 10.0  # s, the longest any test waits for anything


# -- the stand-in broker --------------------------------------------------------------------------


class FakeBroker:
    """Contract v1 answers; one real device; special serials for the error answers."""

    def __init__(self) -> None:
        self.device_key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
        self.device_public = ed25519_public_bytes(self.device_key)
        self.reported_key = self.device_public  # what identity and device list claim
        self.guard = PairingGuard(SERIAL, self.device_public, CODE)
        self.paired: dict[str, float] = {}
        self.pair_requests = 0
        self.tamper_results = False
        self.requests: list[str] = []
        self.release: asyncio.Event | None = None  # set at shutdown; HANG-1 waits on it

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/tokens", self.tokens)
        app.router.add_get("/v1/devices", self.devices)
        app.router.add_get("/v1/devices/{serial}", self.device)
        app.router.add_get("/v1/devices/{serial}/identity", self.identity)
        app.router.add_post("/v1/devices/{serial}/pairings", self.pairings)
        return app

    @staticmethod
    def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
        return web.json_response({"error": code, "message": message, **extra}, status=status)

    def auth(self, request: web.Request) -> web.Response | None:
        self.requests.append(f"{request.method} {request.path}")
        header = request.headers.get("Authorization", "")
        if header == f"Bearer {GOOD_TOKEN}":
            return None
        if header == f"Bearer {OLD_TOKEN}":
            return self.error(401, "token_expired", "the token expired")
        return self.error(401, "unauthorized", "no valid token")

    def device_body(self, serial: str) -> dict[str, Any]:
        now = time.time()
        return {
            "serial": serial,
            "online": True,
            "last_seen": now - 3,
            "reflexive_address": "203.0.113.7:40001",
            "registered_at": now - 7200,
            "keepalive_interval": 25,
            "fingerprint": fingerprint(self.reported_key),
            "paired_at": self.paired[serial],
        }

    async def tokens(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.path}")
        body = await request.json()
        if body.get("username") == "limited":
            return web.json_response(
                {"error": "rate_limited", "message": "slow down"}, status=429, headers={"Retry-After": "120"}
            )
        if body.get("password") != "pw":
            return self.error(401, "bad_credentials", "wrong user name or password")
        return web.json_response(
            {"token": GOOD_TOKEN, "expires_at": time.time() + 3600, "username": body["username"]}
        )

    async def devices(self, request: web.Request) -> web.Response:
        if (refused := self.auth(request)) is not None:
            return refused
        return web.json_response({"devices": [self.device_body(s) for s in sorted(self.paired)]})

    async def device(self, request: web.Request) -> web.StreamResponse:
        if (refused := self.auth(request)) is not None:
            return refused
        serial = request.match_info["serial"]
        special: dict[str, Callable[[], web.StreamResponse]] = {
            "UNKNOWN-1": lambda: self.error(404, "unknown_device", "never seen"),
            "GARBAGE-1": lambda: web.Response(text="<html>hello</html>", content_type="text/html"),
            "HALF-1": lambda: web.json_response({"serial": "HALF-1"}),
            "CRASH-1": lambda: self.error(500, "internal", "database is locked"),
            "PROXY-1": lambda: web.Response(status=502, text="Bad Gateway"),
            "MOVED-1": lambda: web.Response(status=302, headers={"Location": "https://elsewhere.test/"}),
            "HUGE-1": lambda: web.json_response({"pad": "x" * (2 << 20)}),
        }
        if serial in special:
            return special[serial]()
        if serial == "HANG-1":
            assert self.release is not None
            await self.release.wait()
            return self.error(503, "shutting_down", "bye")
        if serial not in self.paired:
            return self.error(403, "not_paired", "not paired to this account")
        return web.json_response(self.device_body(serial))

    async def identity(self, request: web.Request) -> web.Response:
        if (refused := self.auth(request)) is not None:
            return refused
        serial = request.match_info["serial"]
        if serial == "UNKNOWN-1":
            return self.error(404, "unknown_device", "never seen")
        key = self.reported_key if serial == SERIAL else b"\x01" * 32
        return web.json_response(
            {
                "serial": serial,
                "public_key": b64encode_key(key),
                "fingerprint": fingerprint(key),
                "online": True,
            }
        )

    async def pairings(self, request: web.Request) -> web.Response:
        if (refused := self.auth(request)) is not None:
            return refused
        serial = request.match_info["serial"]
        self.pair_requests += 1
        if serial == "OFFLINE-1":
            return self.error(409, "device_offline", "offline", last_seen=time.time() - 300)
        if serial == "SLOW-1":
            return self.error(504, "device_timeout", "no answer")
        if serial == "LIMITED-1":
            return web.json_response(
                {"error": "rate_limited", "message": "too many wrong codes"},
                status=429,
                headers={"Retry-After": "90"},
            )
        if serial == "BROKEN-1":
            return self.error(502, "device_error", "invite status 1")
        if serial == "BADREQ-1":
            return self.error(400, "bad_request", "nonce must be 16 bytes")
        body = await request.json()
        pair_request = PairRequest(
            b64decode_key(body["viewer_public_key"], "viewer key"),
            base64.b64decode(body["nonce"]),
            base64.b64decode(body["proof"]),
            "alice",
        )
        status = self.guard.check(pair_request, time.time())
        paired = status is PairStatus.PAIRED
        result = PairResult(
            status,
            self.device_public,
            self.guard.confirmation(pair_request) if paired else bytes(MAC_SIZE),
            self.device_key.sign(result_message(serial, pair_request.viewer_key, pair_request.nonce, status)),
        )
        raw = bytearray(result.encode())
        if self.tamper_results:
            raw[-1] ^= 1  # a byte of the signature
        encoded = base64.b64encode(bytes(raw)).decode()
        if paired:
            self.paired[serial] = time.time()
            return web.json_response({"status": "paired", "result": encoded})
        return self.error(403, "wrong_code", "the device refused the code", result=encoded)


class ServerThread:
    """Runs an aiohttp app on 127.0.0.1:0 in its own thread and event loop."""

    def __init__(self, broker: FakeBroker, ssl_context: ssl.SSLContext | None = None) -> None:
        self.broker = broker
        self.ssl_context = ssl_context
        self.port = 0
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="fake-broker", daemon=True)

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

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.broker.release = asyncio.Event()
        runner = web.AppRunner(self.broker.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            self.broker.release.set()
            await runner.cleanup()


@pytest.fixture
def fake() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def url(fake: FakeBroker) -> Iterator[str]:
    with ServerThread(fake) as server:
        yield f"http://127.0.0.1:{server.port}"


def _self_signed(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA-style self-signed certificate for 127.0.0.1, and a server context using it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test broker")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "broker-cert.pem"
    key_path = tmp_path / "broker-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return cert_path, context


def _run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, BOUND)

    return asyncio.run(bounded())


def _call(url: str, action: Callable[[BrokerClient], Awaitable[T]], **options: Any) -> T:
    async def go() -> T:
        async with BrokerClient(url, **({"token": GOOD_TOKEN, "allow_http": True} | options)) as client:
            return await action(client)

    return _run(go())


def _failure(url: str, action: Callable[[BrokerClient], Awaitable[Any]], **options: Any) -> str:
    with pytest.raises(ViewerError) as err:
        _call(url, action, **options)
    assert err.value.exit_code == 1
    assert "\n" not in err.value.message
    return err.value.message


# -- client: success and error mapping ----------------------------------------------------------


def test_login_and_device_queries(url: str, fake: FakeBroker) -> None:
    token = _call(url, lambda c: c.login("alice", "pw"), token=None)
    assert (token.token, token.username) == (GOOD_TOKEN, "alice")
    assert token.expires_at > time.time()
    assert _call(url, lambda c: c.devices()) == []
    identity = _call(url, lambda c: c.identity(SERIAL))
    assert identity.public_key == fake.device_public
    fake.paired[SERIAL] = 1_700_000_000.0
    (device,) = _call(url, lambda c: c.devices())
    assert device.serial == SERIAL and device.online and device.reflexive_address == "203.0.113.7:40001"
    single = _call(url, lambda c: c.device(SERIAL))
    assert (single.serial, single.fingerprint, single.paired_at) == (
        SERIAL,
        device.fingerprint,
        1_700_000_000.0,
    )


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (
            lambda c: c.device("NOT-PAIRED"),
            "you have not paired NOT-PAIRED: run `dvrlink pair NOT-PAIRED CODE`",
        ),
        (
            lambda c: c.device("UNKNOWN-1"),
            "does not know device UNKNOWN-1: check the serial on the device label",
        ),
        (lambda c: c.identity("UNKNOWN-1"), "does not know device UNKNOWN-1"),
        (lambda c: c.device("GARBAGE-1"), "sent a malformed answer to GET /v1/devices/GARBAGE-1 (not JSON)"),
        (lambda c: c.device("HALF-1"), "sent a malformed answer to GET /v1/devices/HALF-1 (field"),
        (
            lambda c: c.device("CRASH-1"),
            "answered HTTP 500 to GET /v1/devices/CRASH-1 (internal: database is locked)",
        ),
        (lambda c: c.device("PROXY-1"), "answered HTTP 502 to GET /v1/devices/PROXY-1 (no dvrlink error"),
        (lambda c: c.device("MOVED-1"), "redirects GET /v1/devices/MOVED-1 to https://elsewhere.test/"),
        (lambda c: c.device("HUGE-1"), "sent more than 1048576 bytes"),
        (
            lambda c: c.pair("OFFLINE-1", b"\x02" * 32, b"\x03" * 16, b"\x04" * 32),
            "device OFFLINE-1 is offline (last seen 5m ago): check its power and network, then retry",
        ),
        (
            lambda c: c.pair("SLOW-1", b"\x02" * 32, b"\x03" * 16, b"\x04" * 32),
            "device SLOW-1 did not answer the broker in time",
        ),
        (
            lambda c: c.pair("LIMITED-1", b"\x02" * 32, b"\x03" * 16, b"\x04" * 32),
            "the broker refuses pairing with device LIMITED-1 for now (too many wrong codes): "
            "wait 2 min, then retry with the code on the device label",
        ),
        (
            lambda c: c.pair("BROKEN-1", b"\x02" * 32, b"\x03" * 16, b"\x04" * 32),
            "device BROKEN-1 gave the broker an answer it could not use (invite status 1): check",
        ),
        (
            lambda c: c.pair("BADREQ-1", b"\x02" * 32, b"\x03" * 16, b"\x04" * 32),
            "rejected POST /v1/devices/BADREQ-1/pairings as malformed (nonce must be 16 bytes)",
        ),
    ],
)
def test_error_answers_become_messages_that_say_what_to_do(
    url: str, action: Callable[[BrokerClient], Awaitable[Any]], expected: str
) -> None:
    assert expected in _failure(url, action)


def test_wrong_code_comes_back_with_the_devices_result(url: str) -> None:
    answer = _call(url, lambda c: c.pair(SERIAL, b"\x02" * 32, b"\x03" * 16, b"\x04" * 32))
    assert not answer.paired
    assert PairResult.decode(answer.result).status is PairStatus.WRONG_CODE


def test_token_errors(url: str) -> None:
    assert (
        _failure(url, lambda c: c.devices(), token=OLD_TOKEN) == "your login has expired: run `dvrlink login`"
    )
    assert "did not accept your login token: run `dvrlink login`" in _failure(
        url, lambda c: c.devices(), token="forged"
    )
    assert "run `dvrlink login --broker URL --user NAME` first" in _failure(
        url, lambda c: c.devices(), token=None
    )


def test_login_errors(url: str) -> None:
    message = _failure(url, lambda c: c.login("alice", "nope"), token=None)
    assert "refused the password of user alice" in message
    message = _failure(url, lambda c: c.login("limited", "pw"), token=None)
    assert "refusing requests for now (too many tries): wait 3 min and retry" in message


def test_no_answer_in_time_is_reported_as_unreachable(url: str) -> None:
    message = _failure(url, lambda c: c.device("HANG-1"), timeout=0.3)
    assert message == (
        f"cannot reach the broker at {url} (no answer within 0.3 s): check the address and your "
        "network, or whether the broker is running"
    )


def test_closed_port_is_reported_as_unreachable() -> None:
    with socket.socket() as blocker:  # bound, never listening: connections are refused
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        message = _failure(f"https://127.0.0.1:{port}", lambda c: c.devices())
    assert message == (
        f"cannot reach the broker at https://127.0.0.1:{port} (connection refused): check the "
        "address and your network, or whether the broker is running"
    )


def test_untrusted_certificate_says_to_pass_cacert(tmp_path: Path, fake: FakeBroker) -> None:
    cert_path, context = _self_signed(tmp_path)
    with ServerThread(fake, context) as server:
        tls_url = f"https://127.0.0.1:{server.port}"
        message = _failure(tls_url, lambda c: c.devices())
        assert "the broker's certificate is not trusted" in message
        assert message.endswith("pass --cacert FILE to dvrlink login")
        assert _call(tls_url, lambda c: c.devices(), cacert=str(cert_path)) == []
        plain = _failure(tls_url.replace("https", "http"), lambda c: c.devices())
        assert "malformed answer" in plain or "HTTP 400" in plain or "cannot reach" in plain


def test_tls_to_a_plain_port_is_explained(url: str) -> None:
    message = _failure(url.replace("http://", "https://"), lambda c: c.devices())
    assert "TLS with the broker at https://127.0.0.1" in message
    assert "check that the URL points at the broker's HTTPS port" in message


def test_bad_ca_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ViewerError, match=f"CA file {bad} holds no usable PEM certificate"):
        BrokerClient("https://127.0.0.1:1", cacert=str(bad))
    with pytest.raises(ViewerError, match="does not exist: pass --cacert"):
        BrokerClient("https://127.0.0.1:1", cacert=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("https://broker.example:8443/", True),
        ("http://127.0.0.1:8080", False),  # a password or token would cross in clear
        ("http://localhost:8080", False),
        ("http://broker.example", False),
        ("ftp://broker.example", False),
        ("broker.example", False),
        ("https://broker.example/?x=1", False),
    ],
)
def test_broker_url_rules(text: str, ok: bool) -> None:
    if ok:
        assert not BrokerClient(text).broker_url.endswith("/")
    else:
        with pytest.raises(ViewerError) as err:
            BrokerClient(text)
        assert err.value.exit_code == 2


# -- the dvrlink command ------------------------------------------------------------------------


class Cli:
    """Runs ``main()`` with a home directory and captures its output."""

    def __init__(
        self, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.home = home
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: str = "", insecure: bool = True) -> tuple[int, str, str]:
        """Run ``dvrlink --home HOME [--insecure-http] ARGS``; the stand-in broker speaks plain
        http, so its warning (checked here, on every command that reached it) is left out of
        the stderr returned."""
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        flags = ["--insecure-http"] if insecure else []
        code = main(["--home", str(self.home), *flags, *args])
        out, err = self.capsys.readouterr()
        lines = err.splitlines(keepends=True)
        err = "".join(line for line in lines if not line.startswith("dvrlink: warning: --insecure-http: "))
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) <= 2 or code == 0, err
        return code, out, err


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.delenv("DVRLINK_HOME", raising=False)
    return Cli(tmp_path / "home", capsys, monkeypatch)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_login_pair_devices_status(cli: Cli, url: str, fake: FakeBroker) -> None:
    code, out, err = cli("login", "--broker", url, "--user", "alice", "--password-stdin", stdin="pw\n")
    assert (code, err) == (0, "")
    assert f"logged in to {url} as alice" in out
    assert "created the viewer key" in out
    home = ViewerHome(cli.home)
    assert _mode(home.login_path) == 0o600 and _mode(home.key_path) == 0o600
    login = home.load_login()
    assert login is not None and login.token == GOOD_TOKEN

    code, out, _ = cli("devices")
    assert code == 0 and "no devices are paired" in out

    uri = PairingUri(SERIAL, CODE, fingerprint(fake.device_public)).format()
    code, out, err = cli("pair", uri)
    assert (code, err) == (0, "")
    assert out == f"paired {SERIAL} (fingerprint {format_fingerprint(fingerprint(fake.device_public))})\n"
    pin = home.load_pins()[SERIAL]
    assert pin.public_key == fake.device_public
    assert _mode(home.pins_path) == 0o600

    code, out, err = cli("devices")
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split() == ["SERIAL", "ONLINE", "LAST", "SEEN", "ADDRESS", "PINNED"]
    cells = row.split()
    assert cells[:2] == [SERIAL, "yes"] and cells[3:] == ["ago", "203.0.113.7:40001", "ok"]
    assert cells[2] in ("2s", "3s", "4s")  # the stand-in says 3 s before its own clock reading

    code, out, _ = cli("status", SERIAL.lower())
    assert code == 0
    assert f"pinned fingerprint: {format_fingerprint(pin.fingerprint)}" in out
    assert "keepalive interval: 25s" in out

    # The broker now reports another key for the device than the one pinned at pairing.
    fake.reported_key = b"\x09" * 32
    code, out, err = cli("devices")
    assert code == 0
    assert out.splitlines()[1].split()[-1] == "MISMATCH"
    assert "the broker reports another key than the one pinned at pairing" in err
    code, out, err = cli("status", SERIAL, "--json")
    assert code == 0
    body = json.loads(out)
    assert body["pin_status"] == "mismatch"
    assert body["pinned_fingerprint"] == pin.fingerprint
    assert "another key" in err

    code, out, _ = cli("devices", "--json")
    assert json.loads(out)["devices"][0]["serial"] == SERIAL


def _logged_in(cli: Cli, url: str, expires_at: float | None = None) -> ViewerHome:
    home = ViewerHome(cli.home)
    home.load_or_create_key()
    home.save_login(Login(url, None, "alice", GOOD_TOKEN, expires_at or time.time() + 3600))
    return home


def test_pair_with_serial_and_dashed_code(cli: Cli, url: str, fake: FakeBroker) -> None:
    home = _logged_in(cli, url)
    code, out, _ = cli("pair", SERIAL, format_code(CODE))
    assert code == 0 and out.startswith(f"paired {SERIAL} ")
    assert SERIAL in home.load_pins()


def test_pair_refuses_a_key_that_does_not_match_the_label(cli: Cli, url: str, fake: FakeBroker) -> None:
    home = _logged_in(cli, url)
    fake.reported_key = b"\x09" * 32  # the broker hands out another key
    uri = PairingUri(SERIAL, CODE, fingerprint(fake.device_public)).format()
    code, out, err = cli("pair", uri)
    assert code == 1 and out == ""
    assert err.startswith(
        "dvrlink: the broker gave a key that does not match the device label: do not pair; report it"
    )
    assert fake.pair_requests == 0  # the proof was never sent
    assert not home.pins_path.exists()


def test_pair_refuses_a_tampered_result(cli: Cli, url: str, fake: FakeBroker) -> None:
    home = _logged_in(cli, url)
    fake.tamper_results = True
    code, _, err = cli("pair", SERIAL, CODE)
    assert code == 1
    assert err.startswith("dvrlink: the answer was not signed by the device")
    assert not home.pins_path.exists()


def test_pair_with_a_wrong_code(cli: Cli, url: str, fake: FakeBroker) -> None:
    home = _logged_in(cli, url)
    code, _, err = cli("pair", SERIAL, "ABCDEFGHIJKLMNOQ")
    assert code == 1
    assert "refused the pairing code: check the code on the device label" in err
    assert fake.guard.failures and not home.pins_path.exists()


def test_pair_with_an_offline_device(cli: Cli, url: str) -> None:
    _logged_in(cli, url)
    code, _, err = cli("pair", "OFFLINE-1", CODE)
    assert code == 1
    assert err == (
        "dvrlink: device OFFLINE-1 is offline (last seen 5m ago): check its power and network, then retry\n"
    )


def test_commands_need_a_login(cli: Cli, url: str, fake: FakeBroker) -> None:
    code, _, err = cli("devices")
    assert (code, err) == (
        1,
        "dvrlink: you are not logged in: run `dvrlink login --broker URL --user NAME` first\n",
    )
    _logged_in(cli, url, expires_at=time.time() - 1)
    code, _, err = cli("status", SERIAL)
    assert (code, err) == (1, "dvrlink: your login has expired: run `dvrlink login`\n")
    assert fake.requests == []  # known locally, the broker was not asked


def test_login_reuses_stored_broker_and_user(cli: Cli, url: str) -> None:
    _logged_in(cli, url, expires_at=time.time() - 1)
    code, out, _ = cli("login", "--password-stdin", stdin="pw\n")
    assert code == 0 and f"logged in to {url} as alice" in out
    assert "created the viewer key" not in out


def test_login_with_a_bad_password_stores_nothing(cli: Cli, url: str) -> None:
    code, _, err = cli("login", "--broker", url, "--user", "alice", "--password-stdin", stdin="bad\n")
    assert code == 1 and "refused the password of user alice" in err
    assert not (cli.home / "viewer.json").exists()


def test_login_over_tls_stores_the_ca_file(cli: Cli, tmp_path: Path, fake: FakeBroker) -> None:
    cert_path, context = _self_signed(tmp_path)
    with ServerThread(fake, context) as server:
        tls_url = f"https://127.0.0.1:{server.port}"
        args = ("login", "--broker", tls_url, "--user", "alice", "--password-stdin")
        code, _, err = cli(*args, stdin="pw\n")
        assert code == 1 and err.rstrip().endswith("pass --cacert FILE to dvrlink login")
        code, _, err = cli(*args, "--cacert", str(cert_path), stdin="pw\n")
        assert (code, err) == (0, "")
        login = ViewerHome(cli.home).load_login()
        assert login is not None and login.cacert == str(cert_path.resolve())
        code, out, _ = cli("devices")
        assert code == 0 and "no devices are paired" in out


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli("pair", SERIAL)[0] == 2
    assert cli("pair", SERIAL, "short")[0] == 2
    assert cli("status", "bad serial!")[0] == 2
    assert cli("frobnicate")[0] == 2
    assert cli("login", "--password-stdin")[0] == 2  # nothing stored to reuse
    assert cli("login", "--broker", "http://broker.example", "--user", "a", insecure=False)[0] == 2
    assert cli("--help")[0] == 0


def test_malformed_home_file_is_reported_not_overwritten(cli: Cli, url: str) -> None:
    cli.home.mkdir()
    (cli.home / "viewer.json").write_text("{oops")
    code, _, err = cli("login", "--broker", url, "--user", "alice", "--password-stdin", stdin="pw\n")
    assert code == 78  # EX_CONFIG, as the other two programs
    assert str(cli.home / "viewer.json") in err and "is malformed" in err
    assert (cli.home / "viewer.json").read_text() == "{oops"


def test_pairing_again_with_a_new_device_key_warns_and_replaces_the_pin(
    cli: Cli, url: str, fake: FakeBroker
) -> None:
    home = _logged_in(cli, url)
    old_key = b"\x09" * 32
    home.save_pin(SERIAL, Pin(old_key, fingerprint(old_key), 1_600_000_000.0))
    code, out, err = cli("pair", SERIAL, CODE)
    assert code == 0 and out.startswith(f"paired {SERIAL} ")
    assert f"{SERIAL} now has another key than the one pinned on 2020-09-13" in err
    assert format_fingerprint(fingerprint(old_key)) in err
    assert home.load_pins()[SERIAL].public_key == fake.device_public
