"""``dvrlink``: log in to a broker, pair devices, list them and show their status.

Exit codes: 0 success, 1 runtime error (one or two lines on stderr), 2 bad usage. Results go to
stdout, warnings and errors to stderr; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint, format_fingerprint
from dvrlink.viewer.api_client import LOGIN_EXPIRED, NOT_LOGGED_IN, BrokerClient, check_broker_url
from dvrlink.viewer.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, ViewerError
from dvrlink.viewer.home import Login, ViewerHome, resolve_home
from dvrlink.viewer.pairing import normalize_serial, pair_device, parse_pairing_target
from dvrlink.viewer.render import (
    PinStatus,
    device_json,
    format_time,
    mismatch_warning,
    mismatch_warnings,
    pin_status,
    render_devices,
    render_status,
)

PROG = "dvrlink"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--home`` is accepted before or after the subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--home",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="home directory for the login, viewer key and pins "
        "(default: $DVRLINK_HOME, else ~/.config/dvrlink)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reach recorders and gateways by serial number through a dvrlink broker.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = sub.add_parser("login", parents=[common], help="log in to a broker and store the token")
    login.add_argument(
        "--broker", metavar="URL", help="broker URL, https://HOST[:PORT] (default: the stored one)"
    )
    login.add_argument("--user", metavar="NAME", help="account name (default: the stored one)")
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    login.add_argument(
        "--cacert", metavar="FILE", help="CA file that signs the broker's certificate (default: system store)"
    )

    pair = sub.add_parser(
        "pair",
        parents=[common],
        help="pair a device with the code on its label",
        description="Pair a device: `dvrlink pair SERIAL CODE`, or `dvrlink pair 'dvrlink://pair?...'` "
        "with the URI from the device's QR code (it also checks the device's key fingerprint).",
    )
    pair.add_argument("target", metavar="SERIAL|URI", help="device serial, or a dvrlink://pair?... URI")
    pair.add_argument("code", metavar="CODE", nargs="?", help="pairing code from the device label")

    devices = sub.add_parser("devices", parents=[common], help="list the devices paired to your account")
    devices.add_argument("--json", action="store_true", help="print JSON instead of a table")

    status = sub.add_parser("status", parents=[common], help="show one device's details")
    status.add_argument("serial", metavar="SERIAL")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dvrlink`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage (code 2) or help (code 0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    home = ViewerHome(resolve_home(getattr(args, "home", None), os.environ))
    try:
        return asyncio.run(_run(args, home))
    except ViewerError as exc:
        _error(exc.message)
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except OSError as exc:
        _error(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
        return EXIT_RUNTIME
    except Exception as exc:  # a bug: still one line, no traceback
        _error(f"internal error ({type(exc).__name__}: {exc}): please report it")
        return EXIT_RUNTIME


def _error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


async def _run(args: argparse.Namespace, home: ViewerHome) -> int:
    command: str = args.command
    if command == "login":
        return await _login(args, home)
    if command == "pair":
        return await _pair(args, home)
    if command == "devices":
        return await _devices(args, home)
    if command == "status":
        return await _status(args, home)
    raise ViewerError(f"unknown command {command!r}: see `dvrlink --help`", EXIT_USAGE)


def _require_login(home: ViewerHome, now: float) -> Login:
    login = home.load_login()
    if login is None:
        raise ViewerError(NOT_LOGGED_IN)
    if login.expires_at <= now:
        raise ViewerError(LOGIN_EXPIRED)
    return login


def _client(login: Login) -> BrokerClient:
    return BrokerClient(login.broker, cacert=login.cacert, token=login.token)


def _read_password(args: argparse.Namespace, user: str, broker: str) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass(f"password for {user} at {broker}: ")
        except EOFError as exc:
            raise ViewerError(
                "no password given: type it at the prompt, or pipe it with --password-stdin", EXIT_USAGE
            ) from exc
    if not password:
        raise ViewerError(
            "the password is empty: type it at the prompt, or pipe it with --password-stdin", EXIT_USAGE
        )
    return password


async def _login(args: argparse.Namespace, home: ViewerHome) -> int:
    stored = home.load_login()  # a malformed viewer.json stops here, before any prompt
    key = home.load_key()  # likewise a malformed viewer key
    broker_arg: str | None = args.broker or (stored.broker if stored else None)
    user: str | None = args.user or (stored.username if stored else None)
    if not broker_arg or not user:
        raise ViewerError(
            "no stored login to reuse: run `dvrlink login --broker URL --user NAME`", EXIT_USAGE
        )
    broker = check_broker_url(broker_arg)
    if args.cacert:
        cacert: str | None = str(Path(args.cacert).expanduser().resolve())
    elif stored is not None and stored.broker == broker:
        cacert = stored.cacert
    else:
        cacert = None
    client = BrokerClient(broker, cacert=cacert)  # checks the CA file before the password prompt
    password = _read_password(args, user, broker)
    async with client:
        token = await client.login(user, password)
    created = False
    if key is None:
        key, created = home.load_or_create_key()
    home.save_login(Login(broker, cacert, token.username, token.token, token.expires_at))
    now = time.time()
    print(
        f"logged in to {broker} as {token.username} (token valid until {format_time(token.expires_at, now)})"
    )
    if created:
        fp = format_fingerprint(fingerprint(ed25519_public_bytes(key)))
        print(f"created the viewer key {home.key_path} (fingerprint {fp})")
    return EXIT_OK


async def _pair(args: argparse.Namespace, home: ViewerHome) -> int:
    target = parse_pairing_target(args.target, args.code)
    now = time.time()
    login = _require_login(home, now)
    key = home.load_key()
    if key is None:
        raise ViewerError(f"no viewer key in {home.path}: run `dvrlink login` first (it creates one)")
    pins = home.load_pins()  # a malformed pins.json stops here, before the device is asked
    async with _client(login) as client:
        paired = await pair_device(
            client, target, ed25519_public_bytes(key), pins.get(target.serial), os.urandom, now
        )
    if paired.replaced is not None:
        old = paired.replaced
        _warn(
            f"warning: {paired.serial} now has another key than the one pinned on "
            f"{format_time(old.paired_at, now)} (old {format_fingerprint(old.fingerprint)}); "
            "the device signed the new one with your pairing code, so the pin is replaced"
        )
    home.save_pin(paired.serial, paired.pin)
    print(f"paired {paired.serial} (fingerprint {format_fingerprint(paired.pin.fingerprint)})")
    return EXIT_OK


async def _devices(args: argparse.Namespace, home: ViewerHome) -> int:
    now = time.time()
    login = _require_login(home, now)
    pins = home.load_pins()
    async with _client(login) as client:
        devices = await client.devices()
    if args.json:
        body = [device_json(d, pins.get(d.serial)) for d in sorted(devices, key=lambda d: d.serial)]
        print(json.dumps({"devices": body}, indent=2))
    else:
        sys.stdout.write(render_devices(devices, pins, now))
    for warning in mismatch_warnings(devices, pins):
        _warn(warning)
    return EXIT_OK


async def _status(args: argparse.Namespace, home: ViewerHome) -> int:
    try:
        serial = normalize_serial(args.serial)
    except ValueError as exc:
        raise ViewerError(str(exc), EXIT_USAGE) from exc
    now = time.time()
    login = _require_login(home, now)
    pins = home.load_pins()
    async with _client(login) as client:
        device = await client.device(serial)
    pin = pins.get(device.serial)
    if args.json:
        print(json.dumps(device_json(device, pin), indent=2))
    else:
        sys.stdout.write(render_status(device, pin, now))
    if pin is not None and pin_status(device, pin) is PinStatus.MISMATCH:
        _warn(mismatch_warning(device, pin))
    return EXIT_OK
