"""The broker's SMS gateway (issue 17): the report item that says a device sleeps by SMS, the
registry's number and counter (SQLite and PostgreSQL), ``[sms_gateway]`` config, the HTTP
provider backend against a real loopback HTTP server, the modem backend on the emulator's PTY
(PDU and text-only), and the waker that claims counters and holds requests."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pytest_mock import MockerFixture
from support.aio import run
from support.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)
from support.waiting import wait_until_async

from dvrlink.broker.cli import main as broker_cli
from dvrlink.broker.config import ConfigError, SmsGatewayConfig, config_from_mapping
from dvrlink.broker.registry import MIGRATIONS, Registry, RegistryStore, ScryptParams
from dvrlink.broker.registry_postgres import PG_MIGRATIONS, PostgresRegistry
from dvrlink.broker.sms.gateway import OutgoingWake, SmsSendError
from dvrlink.broker.sms.http_provider import HttpSmsGateway, fill_body, fill_url
from dvrlink.broker.sms.modem import ModemSmsGateway
from dvrlink.broker.sms.wake import Waker, WakeState, WakeUnavailable, sleeps_by_sms, wake_number
from dvrlink.protocol.identity import ed25519_public_bytes, x25519_public_bytes
from dvrlink.protocol.presence_events import DeviceOnline
from dvrlink.protocol.presence_report import MAX_REPORT, DeviceReport, pack_number, unpack_number
from dvrlink.protocol.sms_wake import (
    WakeCommand,
    WakeConfig,
    WakeMessage,
    WakeRequested,
    WakeVerifier,
    device_wake_key,
    encode_binary,
    encode_text,
)
from hil.modememu import ModemEmulator, SimCard, get_profile

SERIAL = "DL-0042-0001"
NUMBER = "+491701234567"
BROKER_NUMBER = "+491609876543"
CHEAP = ScryptParams(n=2**4, r=1, p=1)
T0 = 1_700_000_000.0


# -- the report item ------------------------------------------------------------------------------


def test_the_report_says_sms_wake_with_the_number_packed_as_semi_octets() -> None:
    packed = pack_number(NUMBER)
    assert packed == bytes.fromhex("947110325476")  # 49 17 01 23 45 67, low nibble first
    assert pack_number("+4930123") == bytes.fromhex("940321F3")  # odd: a final F filler
    assert len(packed) == 6 and unpack_number(packed) == NUMBER
    assert unpack_number(pack_number("+123456789012345")) == "+123456789012345"  # 15 digits, 8 bytes
    for not_e164 in ("", "01701234567", "+1234567890123456", "+49 170", "+４９"):
        assert pack_number(not_e164) == b"", not_e164
    report = DeviceReport(rat="lte", sms_wake_number=NUMBER)
    assert DeviceReport.decode(report.encode()) == report
    assert DeviceReport.from_dict(report.as_dict()) == report
    unknown = DeviceReport(sms_wake_number="")  # sleeps by SMS, does not know its number
    assert unknown.encode() == bytes([10, 0]) and DeviceReport.decode(unknown.encode()) == unknown
    assert DeviceReport(rat="lte").encode() == DeviceReport.decode(DeviceReport(rat="lte").encode()).encode()
    assert DeviceReport.decode(DeviceReport(rat="lte").encode()).sms_wake_number is None


def test_the_largest_report_with_the_number_still_fits() -> None:
    big = DeviceReport(
        signal_dbm=-50,
        rat="r" * 99,
        data_used=2**64 - 1,
        modem_state="s" * 99,
        operator="o" * 99,
        keepalive_s=1,
        nat_lifetime_s=1,
        presence_transport="t" * 99,
        nat_type="n" * 99,
        sms_wake_number="+123456789012345",
    )
    data = big.encode()
    assert len(data) <= MAX_REPORT, len(data)
    assert DeviceReport.decode(data).sms_wake_number == "+123456789012345"


@pytest.mark.parametrize("value", [bytes(9), bytes([0x1A]), bytes([0xF1, 0x22])])
def test_a_malformed_number_item_is_a_value_error(value: bytes) -> None:
    with pytest.raises(ValueError, match="report item 10"):
        DeviceReport.decode(bytes([10, len(value)]) + value)


# -- the registry ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryStore]:
    if request.param == "sqlite":
        reg: RegistryStore = Registry(tmp_path / "registry.sqlite3", password_params=CHEAP)
    else:
        reg = PostgresRegistry(request.getfixturevalue("postgres_url"), password_params=CHEAP)
    try:
        yield reg
    finally:
        reg.close()


def test_the_registry_keeps_the_number_and_hands_out_increasing_counters(registry: RegistryStore) -> None:
    key = bytes(range(32))
    assert registry.schema_version == len(MIGRATIONS) == len(PG_MIGRATIONS)
    assert registry.set_sms_number(SERIAL, NUMBER) is False  # not bound
    assert registry.claim_wake_counter(SERIAL, 5) is None
    registry.check_binding(SERIAL, key, T0, manifest_only=False)
    assert registry.set_sms_number(SERIAL, NUMBER) is True
    now_ms = int(T0 * 1000)
    first = registry.claim_wake_counter(SERIAL, now_ms)
    assert first == now_ms
    assert registry.claim_wake_counter(SERIAL, now_ms) == now_ms + 1  # same millisecond
    assert registry.claim_wake_counter(SERIAL, now_ms - 60_000) == now_ms + 2  # clock stepped back
    assert registry.claim_wake_counter(SERIAL, now_ms + 10) == now_ms + 10
    device = registry.device(SERIAL)
    assert device is not None and (device.sms_number, device.sms_counter) == (NUMBER, now_ms + 10)
    exported = registry.export_rows()["devices"][0]
    assert exported[-2:] == (NUMBER, now_ms + 10)
    assert registry.set_sms_number(SERIAL, None) is True
    device = registry.device(SERIAL)
    assert device is not None and device.sms_number is None and device.sms_counter == now_ms + 10


def test_an_older_sqlite_registry_is_migrated_to_the_sms_columns(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    Registry(path, migrations=MIGRATIONS[:4], password_params=CHEAP).close()
    reg = Registry(path, password_params=CHEAP)
    try:
        assert (reg.migrated_from, reg.schema_version) == (4, 5)
        reg.check_binding(SERIAL, bytes(32), T0, manifest_only=False)
        assert reg.claim_wake_counter(SERIAL, 7) == 7
    finally:
        reg.close()


# -- config ---------------------------------------------------------------------------------------


def test_the_gateway_config_is_checked_once_with_errors_that_say_what_to_write(tmp_path: Path) -> None:
    def load(table: dict[str, object]) -> SmsGatewayConfig | None:
        return config_from_mapping(
            {"state_dir": str(tmp_path), "sms_gateway": table}, "broker.toml", tmp_path
        ).sms_gateway

    modem = load({"backend": "modem", "modem_port": "/dev/ttyUSB2"})
    assert modem == SmsGatewayConfig("modem", modem_port="/dev/ttyUSB2")
    http = load(
        {
            "backend": "http",
            "url": "https://sms.example.net/send?to={to}",
            "method": "put",
            "body": '{"text": "{text}"}',
            "auth_header": "Authorization",
            "auth_value_file": "token",
            "headers": {"Accept": "application/json"},
            "wake_hold_s": 60,
        }
    )
    assert http is not None and http.method == "PUT" and http.auth_value_file == tmp_path / "token"
    assert http.headers == (("Accept", "application/json"),) and http.wake_hold_s == 60.0
    bad = [
        ({"backend": "pigeon"}, 'backend = "modem" or "http"'),
        ({"backend": "modem"}, "needs modem_port"),
        ({"backend": "http", "url": "ftp://x/{text}"}, "http(s) URL template"),
        ({"backend": "http", "url": "https://x/"}, "neither url nor body holds {text}"),
        ({"backend": "http", "url": "https://x/{text}", "auth_header": "X-Key"}, "go together"),
        ({"backend": "http", "url": "https://x/{text}", "method": "PATCH"}, "use one of GET, POST, PUT"),
        ({"backend": "modem", "modem_port": "/dev/x", "wake_hold_s": 1}, "from 5 to 600"),
        ({"backend": "modem", "modem_port": "/dev/x", "sender": "0170"}, "+E.164"),
        ({"backend": "modem", "modem_port": "/dev/x", "colour": "red"}, "unknown key 'colour'"),
    ]
    for table, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load(table)


def test_the_example_config_documents_the_gateway() -> None:
    example = Path(__file__).resolve().parent.parent / "broker" / "dvrlink-broker.example.toml"
    text = example.read_text()
    assert "[sms_gateway]" in text and "wake_hold_s" in text and "auth_value_file" in text


# -- the HTTP provider backend --------------------------------------------------------------------


@dataclass
class FakeProvider:
    """A real HTTP server on loopback that records each request; answers ``status``."""

    status: int = 200
    requests: list[dict[str, object]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "method": request.method,
                "path_qs": request.path_qs,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        return web.Response(status=self.status, text="queued" if self.status < 300 else "no credit left")


@pytest.fixture
def provider_config(tmp_path: Path) -> Iterator[tuple[Path, dict[str, object]]]:
    token = tmp_path / "sms_token"
    token.write_text("Bearer s3cret\n")
    yield tmp_path, {"auth_value_file": str(token), "auth_header": "Authorization"}


async def _provider(status: int = 200) -> tuple[FakeProvider, web.AppRunner]:
    fake = FakeProvider(status)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sockets = runner.addresses
    fake.url = f"http://127.0.0.1:{sockets[0][1]}"
    return fake, runner


def _wake(key: bytes = bytes(range(32)), counter: int = 1) -> OutgoingWake:
    message = WakeMessage(WakeCommand.WAKE, counter)
    return OutgoingWake(NUMBER, encode_binary(message, key), encode_text(message, key))


def test_templates_are_filled_and_escaped_for_where_they_go() -> None:
    values = {"to": "+49 170", "text": 'DW1:"A\\', "from": ""}
    assert fill_url("https://x/s?to={to}&m={text}", values) == "https://x/s?to=%2B49%20170&m=DW1%3A%22A%5C"
    assert json.loads(fill_body('{"to": "{to}", "m": "{text}"}', values, "application/json")) == {
        "to": "+49 170",
        "m": 'DW1:"A\\',
    }
    assert fill_body("to={to}", values, "application/x-www-form-urlencoded; charset=utf-8") == "to=%2B49+170"
    assert fill_body("{to} {text}", values, "text/plain") == '+49 170 DW1:"A\\'


def test_the_http_backend_posts_the_text_form_with_its_auth_to_a_real_server(
    provider_config: tuple[Path, dict[str, object]],
) -> None:
    base, auth = provider_config

    async def main() -> None:
        fake, runner = await _provider()
        try:
            config = config_from_mapping(
                {
                    "state_dir": str(base),
                    "sms_gateway": {
                        "backend": "http",
                        "url": fake.url + "/v1/messages?to={to}",
                        "body": '{"to": "{to}", "text": "{text}", "from": "{from}"}',
                        "sender": BROKER_NUMBER,
                        "headers": {"X-Tenant": "fleet-1"},
                        **auth,
                    },
                },
                "test",
                base,
            ).sms_gateway
            assert config is not None
            gateway = HttpSmsGateway(config)
            await gateway.start()
            try:
                wake = _wake()
                receipt = await gateway.send(wake)
            finally:
                await gateway.close()
        finally:
            await runner.cleanup()
        assert (receipt.backend, receipt.form, receipt.reference) == ("http", "text", "HTTP 200")
        (request,) = fake.requests
        assert request["method"] == "POST" and request["query"] == {"to": NUMBER}
        headers = request["headers"]
        assert isinstance(headers, dict)
        assert headers["Authorization"] == "Bearer s3cret" and headers["X-Tenant"] == "fleet-1"
        assert headers["Content-Type"] == "application/json"
        body = request["body"]
        assert isinstance(body, bytes)
        assert json.loads(body) == {"to": NUMBER, "text": wake.text, "from": BROKER_NUMBER}

    run(main)


def test_the_http_backend_with_basic_auth_and_get_and_a_refusal(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("hunter2")

    async def main() -> None:
        fake, runner = await _provider(status=402)
        try:
            config = SmsGatewayConfig(
                "http",
                url=fake.url + "/send?to={to}&msg={text}",
                method="GET",
                basic_user="fleet",
                basic_password_file=password,
            )
            gateway = HttpSmsGateway(config)
            try:
                with pytest.raises(SmsSendError) as caught:
                    await gateway.send(_wake())
            finally:
                await gateway.close()
        finally:
            await runner.cleanup()
        message = str(caught.value)
        assert "answered 402" in message and "no credit left" in message and "credit" in message
        assert "hunter2" not in message and "msg=" not in message  # no secrets, no wake in errors
        (request,) = fake.requests
        headers = request["headers"]
        assert isinstance(headers, dict)
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"fleet:hunter2").decode()
        query = request["query"]
        assert isinstance(query, dict) and query["to"] == NUMBER and query["msg"].startswith("DW1:")

    run(main)


def test_an_unreachable_provider_and_a_missing_secret_are_send_errors(tmp_path: Path) -> None:
    async def main() -> None:
        fake, runner = await _provider()
        url = fake.url
        await runner.cleanup()  # nobody listens there now
        gateway = HttpSmsGateway(SmsGatewayConfig("http", url=url + "/{text}", timeout_s=5))
        try:
            with pytest.raises(SmsSendError, match="cannot be reached"):
                await gateway.send(_wake())
        finally:
            await gateway.close()
        missing = HttpSmsGateway(
            SmsGatewayConfig("http", url=url + "/{text}", auth_header="X", auth_value_file=tmp_path / "nope")
        )
        with pytest.raises(SmsSendError, match="cannot read auth_value_file"):
            await missing.start()
        await missing.close()

    run(main)


# -- the modem backend ----------------------------------------------------------------------------


def _device_side(device_key: Ed25519PrivateKey, fleet: X25519PrivateKey) -> WakeVerifier:
    key = device_wake_key(device_key, x25519_public_bytes(fleet), SERIAL)
    return WakeVerifier(key, WakeConfig(allowed_senders=frozenset({BROKER_NUMBER})))


@pytest.mark.parametrize("text_only", [False, True], ids=["pdu-8bit", "text-only-modem"])
def test_the_modem_backend_sends_a_wake_the_device_accepts(text_only: bool, mocker: MockerFixture) -> None:
    device_key, fleet = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    profile = get_profile("quectel-ec25")
    if text_only:
        profile = replace(profile, sms_text_only=True)

    async def main() -> None:
        with ModemEmulator(profile, SimCard()) as emu:
            from dvrlink.protocol.sms_wake import broker_wake_key

            key = broker_wake_key(fleet, ed25519_public_bytes(device_key), SERIAL)
            gateway = ModemSmsGateway(emu.path, validity_minutes=10)
            await gateway.start()
            try:
                assert gateway.text_mode is text_only
                receipt = await gateway.send(_wake(key, counter=41))
            finally:
                await gateway.close()
            (sent,) = emu.sent_sms()
        assert sent.recipient == NUMBER
        assert receipt.form == ("text" if text_only else "8-bit") and receipt.reference == str(sent.reference)
        assert isinstance(sent.body, str if text_only else bytes)
        verifier = _device_side(device_key, fleet)
        receive = mocker.spy(verifier, "receive")
        event = verifier.receive(BROKER_NUMBER, sent.body)
        assert isinstance(event, WakeRequested) and event.counter == 41
        assert receive.call_count == 1
        assert type(verifier.receive(BROKER_NUMBER, sent.body)).__name__ == "SmsDropped"
        assert verifier.stats["replayed"] == 1 and verifier.stats["accepted"] == 1

    run(main)


def test_the_modem_backend_names_the_port_it_cannot_open(tmp_path: Path) -> None:
    async def main() -> None:
        gateway = ModemSmsGateway(str(tmp_path / "ttyUSB9"))
        with pytest.raises(SmsSendError, match="ttyUSB9"):
            await gateway.send(_wake())
        await gateway.close()

    run(main)


# -- the waker ------------------------------------------------------------------------------------


def test_the_waker_claims_a_counter_sends_once_for_joined_requests_and_ends_the_wait_on_registration(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    device_key, fleet = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    reg = Registry(tmp_path / "registry.sqlite3", password_params=CHEAP)
    reg.check_binding(SERIAL, ed25519_public_bytes(device_key), T0, manifest_only=False)

    async def main() -> None:
        fake, runner = await _provider()
        online = False

        async def is_online(serial: str) -> bool:
            return online

        gateway = HttpSmsGateway(SmsGatewayConfig("http", url=fake.url + "/s?to={to}&m={text}"))
        config = SmsGatewayConfig("http", url="unused", wake_hold_s=30, resend_after_s=20)
        clock = [T0]
        waker = Waker(config, gateway, reg, fleet, lambda: clock[0], is_online)
        send = mocker.spy(gateway, "send")
        try:
            device = reg.device(SERIAL)
            assert device is not None
            with pytest.raises(WakeUnavailable, match="does not sleep by SMS"):
                waker.wake(device)
            reg.record_report(SERIAL, DeviceReport(sms_wake_number="").as_dict(), T0)
            device = reg.device(SERIAL)
            assert device is not None and sleeps_by_sms(device) and wake_number(device) is None
            with pytest.raises(WakeUnavailable, match="device sms DL-0042-0001 --number"):
                waker.wake(device)
            reg.record_report(SERIAL, DeviceReport(sms_wake_number=NUMBER).as_dict(), T0)
            device = reg.device(SERIAL)
            assert device is not None
            first = waker.wake(device)
            clock[0] += 5
            assert waker.wake(device) is first  # a second request joins the wake under way
            waiter = asyncio.create_task(waker.wait_online(SERIAL))
            await wait_until_async(
                "the wake at the provider", lambda: len(fake.requests) == 1, seen=lambda: fake.requests
            )
            waker.on_event(DeviceOnline(SERIAL, ("198.51.100.7", 4000)))
            done = await asyncio.wait_for(waiter, 10)
            assert done.state is WakeState.ONLINE and done.via == "http text"
            assert done.as_json(clock[0])["elapsed_s"] == 5.0
            clock[0] += 30
            second = waker.wake(device)  # a new request after the wake ended sends again
            assert second.counter > first.counter
            await wait_until_async(
                "the second wake",
                lambda: waker.progress(SERIAL) != second,
                seen=lambda: waker.progress(SERIAL),
            )
            assert len(fake.requests) == 2
            clock[0] += 31  # past the hold: the wait ends as timed out
            assert (await waker.wait_online(SERIAL)).state is WakeState.TIMED_OUT
        finally:
            await waker.close()
            await gateway.close()
            await runner.cleanup()
        assert send.call_count == 2
        sent = [
            urllib.parse.parse_qs(urllib.parse.urlsplit(str(r["path_qs"])).query)["m"][0]
            for r in fake.requests
        ]
        verifier = _device_side(device_key, fleet)
        assert [type(verifier.receive(BROKER_NUMBER, m)).__name__ for m in sent] == [
            "WakeRequested",
            "WakeRequested",
        ]

    try:
        run(main)
    finally:
        reg.close()


def test_the_device_sms_command_sets_shows_and_clears_the_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = Registry(tmp_path / "registry.sqlite3", password_params=CHEAP)
    reg.check_binding(SERIAL, bytes(32), T0, manifest_only=False)
    reg.close()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        status = broker_cli(["device", "sms", "--state-dir", str(tmp_path), *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, out, err)

    shown = cli(SERIAL)
    assert shown.returncode == 0 and "sms-wake no" in shown.stdout, shown
    done = cli(SERIAL, "--number", "0049 170 1234567")
    assert done.returncode == 0 and f"wake number {NUMBER} (operator: {NUMBER}" in done.stdout, done
    refused = cli(SERIAL, "--number", "call me")
    assert refused.returncode == 1 and "+E.164" in refused.stderr, refused
    unknown = cli("DL-0000-0000", "--number", NUMBER)
    assert unknown.returncode == 1 and "not bound" in unknown.stderr, unknown
    cleared = cli(SERIAL, "--clear")
    assert cleared.returncode == 0 and "operator: -" in cleared.stdout, cleared
