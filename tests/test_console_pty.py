"""The real console (``ConsoleLink`` + ``ConsoleService`` + the core) on a PTY, driven by the
real laptop client and ``dvrlink provision``/``pair`` through a PTY cable (tests/support/console.py).

The recorder's side runs on this test's event loop; the laptop's blocking client runs in a worker
thread. Only the board's reboot is stubbed. A fake recorder on a PTY plays the parts a real one
cannot: a cable pulled after the write, and a recorder of another protocol version.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
import sys
import termios
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
from cryptography.hazmat.primitives import serialization
from pytest_mock import MockerFixture
from support.aio import run
from support.console import PtyCable
from support.waiting import wait_until_async

from dvrlink.daemon import console_link
from dvrlink.daemon.app import LiveConfig
from dvrlink.daemon.config import load_config
from dvrlink.daemon.console import Console, ConsoleOptions
from dvrlink.daemon.console_link import ConsoleLink, ConsoleService
from dvrlink.daemon.console_pin import hash_pin, parse_pin_hash, verify_pin
from dvrlink.daemon.state import DeviceState
from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint
from dvrlink.protocol.pairing import PairingUri
from dvrlink.viewer import cli as viewer_cli
from dvrlink.viewer.console_client import ConsoleClient
from dvrlink.viewer.errors import ViewerError

SERIAL = "DL-0001-0002"
KEY = base64.b64encode(bytes(range(1, 33))).decode()
OTHER_KEY = base64.b64encode(bytes(range(2, 34))).decode()
PIN = "482916"
WAIT = 30.0
CONFIG = f"""\
[device]
serial = "{SERIAL}"
state_dir = "state"
runtime_dir = "run"

[broker]
host = "broker-a.example.net"
public_key = "{KEY}"
"""


@dataclass
class Recorder:
    """The device's end: config file, state, the live config and the console on the cable."""

    config_file: Path
    state: DeviceState
    live: LiveConfig
    cable: PtyCable
    reboot: Mock


@asynccontextmanager
async def recorder(
    tmp_path: Path, mocker: MockerFixture, *, console_toml: str = "", reboot: Mock | None = None
) -> AsyncIterator[Recorder]:
    config_file = tmp_path / "dvrlinkd.toml"
    config_file.write_text(CONFIG + console_toml)
    config = load_config(config_file)
    state = DeviceState(config.device.state_dir)
    key = state.device_key()
    state.pairing_secret()
    live = LiveConfig(config)
    mocker.spy(live, "apply")
    reboot = reboot or Mock(name="reboot")
    check_pin = None
    if config.console.pin_hash:
        stored = parse_pin_hash(config.console.pin_hash)
        check_pin = lambda pin: verify_pin(pin, stored)  # noqa: E731
    with PtyCable() as cable:
        options = ConsoleOptions(serial=SERIAL, pin_required=check_pin is not None)
        service = ConsoleService(
            lambda: live.config, state, fingerprint(ed25519_public_bytes(key)), live.apply, reboot
        )
        link = ConsoleLink(cable.device_path, 115200, Console(options, check_pin), service, reopen_s=0.2)
        task = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(link.opened.wait(), WAIT)
            yield Recorder(config_file, state, live, cable, reboot)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def laptop(function: Callable[[], Any]) -> Any:
    """Run the laptop's blocking client in a worker thread."""
    return await asyncio.to_thread(function)


def provision(capsys: pytest.CaptureFixture[str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    """``dvrlink provision ARGS`` in this process (call it through ``laptop``)."""
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = viewer_cli.main(["provision", *args])
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    return code, out, err


def test_provision_shows_status_and_saves_and_applies_settings(
    tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        async with recorder(tmp_path, mocker) as rec:
            port = rec.cable.laptop_path
            code, out, err = await laptop(lambda: provision(capsys, "--port", port))
            assert code == 0, err
            shown = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
            assert shown["serial"].strip() == SERIAL and shown["state"].strip() == "starting", out
            assert "broker-a.example.net:3478" in out and "apn:" in out and "automatic" in out, out
            assert rec.live.apply.call_count == 0  # type: ignore[attr-defined]

            args = (
                "--port",
                port,
                "--broker",
                "192.0.2.7:3479",
                "--broker-key",
                OTHER_KEY,
                "--apn",
                "iot.example",
            )
            code, out, err = await laptop(lambda: provision(capsys, *args))
            assert code == 0, err
            assert f"saved on {SERIAL}" in out and 'apn = "iot.example"' in out, out
            assert "the modem is off" in out, out
            assert "192.0.2.7:3479" in out and "iot.example" in out, out  # the status shows them in force

            loaded = load_config(rec.config_file)
            assert (loaded.broker.host, loaded.broker.port, loaded.modem.apn) == (
                "192.0.2.7",
                3479,
                "iot.example",
            )
            assert rec.live.apply.call_count == 1  # type: ignore[attr-defined]
            applied = rec.live.apply.call_args.args[0]  # type: ignore[attr-defined]
            assert applied == loaded and rec.live.config == loaded

            code, out, err = await laptop(
                lambda: provision(capsys, "--port", port, "--apn", "auto", "--json")
            )
            assert code == 0, err
            doc = json.loads(out)
            assert doc["saved"]["changed"] == {"apn": ""} and doc["status"]["apn"] == "automatic", doc
            assert load_config(rec.config_file).modem.apn == ""

    run(main)


def test_an_invalid_value_is_refused_and_changes_nothing(
    tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        async with recorder(tmp_path, mocker) as rec:
            before = rec.config_file.read_bytes()
            port = rec.cable.laptop_path
            for args, seen in (
                (("--broker", "bad host"), "[broker] host"),
                (("--broker-key", "c2hvcnQ="), "[broker] public_key"),
                (("--apn", 'a"b'), "[modem] apn"),
            ):
                code, out, err = await laptop(lambda a=args: provision(capsys, "--port", port, *a))
                assert code == 1, (args, out, err)
                assert "the recorder refused set" in err and seen in err, err
            code, _, err = await laptop(lambda: provision(capsys, "--port", port, "--broker", "h:0"))
            assert code == 2 and "the port must be 1 to 65535" in err, err  # caught on the laptop
            assert rec.config_file.read_bytes() == before
            assert rec.live.apply.call_count == 0  # type: ignore[attr-defined]

    run(main)


def test_wrong_baud_rate_says_so_and_the_recorder_goes_on(
    tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> None:
        async with recorder(tmp_path, mocker) as rec:
            before = rec.config_file.read_bytes()
            port = rec.cable.laptop_path
            args = ("--port", port, "--baud", "9600", "--timeout", "2", "--apn", "iot")
            code, out, err = await laptop(lambda: provision(capsys, *args))
            assert code == 1, (out, err)
            assert "no answer in machine mode at 9600 baud: check the baud rate and cable" in err, err
            assert "bytes that are not text" in err, err
            # The recorder said why on its side, in text a person at the right speed reads.
            await asyncio.to_thread(rec.cable.wait_for_device_output, b"unreadable input")
            assert rec.config_file.read_bytes() == before
            code, out, err = await laptop(lambda: provision(capsys, "--port", port))
            assert code == 0 and "broker-a.example.net" in out, err

    run(main)


def test_a_line_cut_off_mid_write_changes_nothing(
    tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cable is pulled halfway through a ``set`` line: the recorder never sees its end, so
    nothing is written; the next session (which first clears the half line) works."""

    async def main() -> None:
        async with recorder(tmp_path, mocker) as rec:
            before = rec.config_file.read_bytes()
            line = json.dumps({"v": 1, "id": 1, "cmd": "set", "settings": {"apn": "half"}}).encode()
            rec.cable.inject(line[: len(line) // 2])
            assert rec.config_file.read_bytes() == before
            port = rec.cable.laptop_path
            code, _, err = await laptop(lambda: provision(capsys, "--port", port, "--apn", "whole"))
            assert code == 0, err
            assert load_config(rec.config_file).modem.apn == "whole"
            assert rec.live.apply.call_count == 1  # type: ignore[attr-defined]

    run(main)


class FakeRecorder:
    """Plays a recorder on the device end of a cable: answers each request with ``answer``
    (None: stays silent, as a recorder whose cable was pulled after the request)."""

    def __init__(self, cable: PtyCable, answer: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        self.fd = os.open(cable.device_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        attrs = termios.tcgetattr(self.fd)
        attrs[4] = attrs[5] = termios.B115200  # the same speed as the laptop's end
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        self.answer = answer
        self.requests: list[dict[str, Any]] = []
        self._buffer = b""
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        self._buffer += os.read(self.fd, 4096)
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            start = raw.find(b"{")
            if start < 0:
                continue
            request = json.loads(raw[start:])
            self.requests.append(request)
            reply = self.answer(request)
            if reply is not None:
                os.write(self.fd, json.dumps(reply).encode() + b"\r\n")

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


def _hello(request: dict[str, Any], version: int = 1) -> dict[str, Any]:
    result = {"serial": SERIAL, "versions": [version], "locked": False}
    return {"v": version, "id": request["id"], "ok": True, "result": result}


def test_a_write_without_a_reply_is_reported_as_not_confirmed() -> None:
    async def main() -> None:
        with PtyCable() as cable:
            fake = FakeRecorder(cable, lambda r: _hello(r) if r["cmd"] == "hello" else None)
            try:

                def client() -> str:
                    with ConsoleClient(cable.laptop_path, timeout_s=1.0) as console:
                        console.hello()
                        try:
                            console.set({"apn": "iot"})
                        except ViewerError as exc:
                            return exc.message
                    return "no error"

                message = await laptop(client)
            finally:
                fake.close()
            assert message.startswith("the write was not confirmed: no reply from the recorder"), message
            assert "never half" in message and f"dvrlink provision --port {cable.laptop_path}" in message
            assert [r["cmd"] for r in fake.requests] == ["hello", "set"]

    run(main)


@pytest.mark.parametrize(
    ("answer", "seen"),
    [
        (lambda r: _hello(r, version=2), "speaks console protocol version 2; this dvrlink speaks 1"),
        (
            lambda r: {
                "v": 3,
                "id": r["id"],
                "ok": False,
                "error": {"code": "unsupported_version", "message": "no", "supported": [2, 3]},
            },
            "speaks console protocol version 2, 3; this dvrlink speaks 1: update dvrlink",
        ),
    ],
)
def test_a_recorder_of_another_protocol_version_gets_a_clear_message(
    capsys: pytest.CaptureFixture[str], answer: Callable[[dict[str, Any]], dict[str, Any]], seen: str
) -> None:
    async def main() -> None:
        with PtyCable() as cable:
            fake = FakeRecorder(cable, answer)
            try:
                code, out, err = await laptop(
                    lambda: provision(capsys, "--port", cable.laptop_path, "--timeout", "3")
                )
            finally:
                fake.close()
            assert code == 1 and seen in err, (code, out, err)

    run(main)


def test_the_pin_locks_the_console_and_wrong_pins_are_refused(
    tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    pin_hash = hash_pin(PIN, os.urandom(16))
    toml = f'\n[console]\nport = "/dev/null"\npin_hash = "{pin_hash}"\n'

    async def main() -> None:
        async with recorder(tmp_path, mocker, console_toml=toml) as rec:
            port = rec.cable.laptop_path
            code, out, err = await laptop(lambda: provision(capsys, "--port", port))
            assert code == 1 and "is locked: run again with --pin" in err, err
            code, out, err = await laptop(
                lambda: provision(capsys, "--port", port, "--pin", stdin="000000\n")
            )
            assert code == 1 and "wrong PIN (4 tries left" in err, err
            code, out, err = await laptop(
                lambda: provision(capsys, "--port", port, "--pin", "--apn", "iot", stdin=PIN + "\n")
            )
            assert code == 0 and 'apn = "iot"' in out, err
            assert PIN.encode() in rec.cable.to_device  # it was sent ...
            assert PIN.encode() not in rec.cable.device_output(), "the recorder echoed the PIN"

    run(main)


def test_no_private_key_is_ever_printed(
    tmp_path: Path, mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command in both modes, plus noise: nothing the recorder wrote holds its key."""

    async def main() -> None:
        async with recorder(tmp_path, mocker) as rec:
            key = rec.state.device_key(create=False)
            raw = key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            pem_body = b"".join(pem.splitlines()[1:-1])
            port = rec.cable.laptop_path
            for line in (
                b"help",
                b"status",
                b"pairing-code",
                b"set apn iot",
                b"\xff\xfe garbage",
                b"nonsense",
            ):
                rec.cable.inject(line + b"\r")
            await asyncio.to_thread(rec.cable.wait_for_device_output, b"unknown command 'nonsense'")
            code, _, err = await laptop(
                lambda: provision(capsys, "--port", port, "--broker", "192.0.2.1", "--json")
            )
            assert code == 0, err
            uri = await laptop(lambda: _pairing_target(port))
            assert uri.fingerprint == fingerprint(ed25519_public_bytes(key))
            rec.cable.inject(b"reset-pairing confirm\r")
            output = await asyncio.to_thread(rec.cable.wait_for_device_output, b"forgot 0 paired viewers")
            secrets = {
                "PEM": pem_body,
                "PEM header": b"PRIVATE KEY",
                "raw hex": binascii.hexlify(raw),
                "raw base64": base64.b64encode(raw).rstrip(b"="),
                "raw base32": base64.b32encode(raw).rstrip(b"="),
                "raw": raw,
            }
            leaked = [
                name
                for name, secret in secrets.items()
                if secret in output or secret.lower() in output.lower()
            ]
            assert leaked == [], f"the console wrote the private key ({leaked})"
            assert b"pairing code:" in output and b"forgot 0 paired viewers" in output

    run(main)


def _pairing_target(port: str) -> PairingUri:
    with ConsoleClient(port) as console:
        console.hello()
        return console.pairing_target()


def test_pairing_code_matches_the_state_and_reset_pairing_forgets_viewers(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    async def main() -> None:
        async with recorder(tmp_path, mocker) as rec:
            rec.state.add_viewer(bytes(32), "alice", 1.0)
            uri = await laptop(lambda: _pairing_target(rec.cable.laptop_path))
            assert (uri.serial, uri.code) == (SERIAL, rec.state.pairing_secret(create=False))
            rec.cable.inject(b"reset-pairing confirm\r")
            await asyncio.to_thread(rec.cable.wait_for_device_output, b"forgot 1 paired viewer;")
            assert rec.state.viewers() == []
            assert rec.live.apply.call_count == 1  # type: ignore[attr-defined]

    run(main)


def test_reboot_calls_only_the_injected_reboot_once_after_the_reply(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    async def main() -> None:
        async with recorder(tmp_path, mocker) as rec:
            rec.cable.inject(b"reboot\r")
            await asyncio.to_thread(rec.cable.wait_for_device_output, b"rebooting now")
            await wait_until_async("the reboot call", lambda: rec.reboot.call_count)
            assert rec.reboot.call_count == 1
            rec.cable.inject(b"status\r")
            await asyncio.to_thread(rec.cable.wait_for_device_output, b"paired viewers")
            assert rec.reboot.call_count == 1

    run(main)


def test_a_missing_port_is_retried_and_served_once_it_appears(
    tmp_path: Path, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        config_file = tmp_path / "dvrlinkd.toml"
        config_file.write_text(CONFIG)
        config = load_config(config_file)
        state = DeviceState(config.device.state_dir)
        live = LiveConfig(config)
        service = ConsoleService(lambda: live.config, state, "f" * 16, live.apply, Mock())
        with PtyCable() as cable:
            link = ConsoleLink(
                str(tmp_path / "ttyS9"),
                115200,
                Console(ConsoleOptions(serial=SERIAL)),
                service,
                reopen_s=0.05,
            )
            serve = mocker.spy(link, "_serve")
            opens = mocker.spy(console_link.serial, "Serial")
            task = asyncio.create_task(link.run())
            await wait_until_async(
                "three failed opens",
                lambda: opens.call_count >= 3,
                timeout=WAIT,
                seen=lambda: opens.call_count,
            )
            assert serve.call_count == 0 and not task.done()
            errors = [r for r in caplog.records if "cannot open" in r.getMessage()]
            assert len(errors) == 1, "the same problem is logged once, not at every retry"
            assert str(tmp_path / "ttyS9") in errors[0].getMessage()
            os.symlink(cable.device_path, tmp_path / "ttyS9")
            await asyncio.wait_for(link.opened.wait(), WAIT)
            rec_out = await asyncio.to_thread(cable.wait_for_device_output, SERIAL.encode())
            assert b"Type help" in rec_out
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(main)


def test_viewer_usage_and_port_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(tmp_path / "home")]
    assert viewer_cli.main([*home, "pair"]) == 2
    assert (
        "nothing to pair: give SERIAL CODE, the dvrlink://pair?... URI, or --port DEVICE"
        in capsys.readouterr().err
    )
    assert viewer_cli.main([*home, "pair", SERIAL, "ABCDEFGHIJKLMNOP", "--port", "/dev/ttyUSB0"]) == 2
    assert "give either --port or SERIAL CODE" in capsys.readouterr().err
    assert viewer_cli.main([*home, "provision"]) == 2  # --port is required
    capsys.readouterr()
    missing = str(tmp_path / "ttyUSB7")
    assert viewer_cli.main([*home, "provision", "--port", missing]) == 1
    err = capsys.readouterr().err
    assert f"cannot open the serial port {missing}" in err and "USB-UART cable" in err, err
    assert not (tmp_path / "home").exists(), "provision needs no login and writes nothing in the home"
