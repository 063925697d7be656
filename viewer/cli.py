"""``dvrlink``: log in to a broker, pair devices, list them and show their status; open sessions
to them: ``forward`` local ports, ``ping``, and list ``sessions``.

Exit codes: 0 success, 1 runtime error (one or two lines on stderr), 2 bad usage, 78 (EX_CONFIG,
as dvrlinkd and dvrlink-broker) a file in the home directory that cannot be used. Results go to
stdout, warnings and errors to stderr; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import getpass
import importlib.metadata
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from dvrlink.protocol.console_wire import split_host_port
from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint, format_fingerprint
from dvrlink.protocol.lan_discovery import DEFAULT_PORT as LAN_DEFAULT_PORT
from dvrlink.protocol.netcheck import render_text
from dvrlink.protocol.pairing import PairingUri
from dvrlink.protocol.path_choice import Source, plan_sources
from dvrlink.protocol.signalling import PathPolicy
from dvrlink.session.runner import ViewerRunner
from dvrlink.store.files import atomic_write
from dvrlink.viewer.api_client import (
    INSECURE_HTTP_FLAG,
    LOGIN_EXPIRED,
    NOT_LOGGED_IN,
    BrokerClient,
    check_broker_url,
    cleartext_warning,
    is_plain_http,
)
from dvrlink.viewer.api_types import SessionInfo, WakeStatus
from dvrlink.viewer.console_client import DEFAULT_BAUD, DEFAULT_TIMEOUT_S, ConsoleClient
from dvrlink.viewer.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, ViewerError, toml_value
from dvrlink.viewer.events import render_alarm
from dvrlink.viewer.forward import (
    ConnectionAccepted,
    ConnectionClosed,
    Forwarder,
    ForwardEvent,
    ForwardRefused,
    ForwardSpec,
    ForwardStats,
    device_channels,
    device_info,
    device_relay,
    device_snapshot,
    live_warm,
    parse_forward_spec,
    ping,
    refused_forwards,
    unpair_self,
)
from dvrlink.viewer.home import Login, ViewerHome, resolve_home
from dvrlink.viewer.lan import LAN_GRACE_S, LanSignalling, find_on_lan
from dvrlink.viewer.live import choose, pick_profile, player_command, stream_url
from dvrlink.viewer.netcheck import viewer_netcheck
from dvrlink.viewer.pairing import normalize_serial, pair_device, parse_pairing_target
from dvrlink.viewer.render import (
    PinStatus,
    device_json,
    format_ago,
    format_time,
    mismatch_warning,
    mismatch_warnings,
    pin_status,
    render_channels,
    render_devices,
    render_relays,
    render_status,
)
from dvrlink.viewer.session_client import NOT_RECOGNISED, PIN_MISMATCH, open_session, path_name

PROG = "dvrlink"
log = logging.getLogger(__name__)
STATUS_INTERVAL_S = 1.0
"""How often ``dvrlink forward`` refreshes its status line."""
SILENT_SHOWN_S = 1.0
"""The status line says "no answer for N s" once the device has been silent this long (it is
probed every second or so while silent, so a live one answers well within it)."""
FIRST = asyncio.FIRST_COMPLETED


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
    common.add_argument(
        INSECURE_HTTP_FLAG,
        dest="insecure_http",
        action="store_true",
        default=argparse.SUPPRESS,
        help="lab use only: allow a plain http:// broker URL (the password and token then cross "
        "the network in clear; a warning is printed each time)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reach recorders and gateways by serial number through a dvrlink broker.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = sub.add_parser(
        "login",
        parents=[common],
        help="log in to a broker and store the token",
        description="Log in to a broker over https and store its token in the home directory "
        "(viewer.json, mode 0600); the first login also creates this computer's viewer key.",
    )
    login.add_argument(
        "--broker",
        metavar="URL",
        action="append",
        help="broker URL, https://HOST[:PORT] (default: the stored ones); give it again for more nodes "
        "of the same fleet, tried in turn when one cannot be reached",
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
    pair.add_argument(
        "target", metavar="SERIAL|URI", nargs="?", help="device serial, or a dvrlink://pair?... URI"
    )
    pair.add_argument("code", metavar="CODE", nargs="?", help="pairing code from the device label")
    pair.add_argument(
        "--port",
        metavar="DEVICE",
        help="read the serial, code and key fingerprint from the recorder's serial console instead "
        "(a USB-UART adapter such as /dev/ttyUSB0, or a socket:// URL)",
    )
    _console_options(pair)

    provision = sub.add_parser(
        "provision",
        parents=[common],
        help="show a recorder's status and set its broker and APN over its serial console",
        description="Talk to a recorder's serial console through a USB-UART cable: show its status "
        "and, with --broker or --apn, save those settings on it (checked first, written atomically, "
        "applied at once). Needs no login.",
    )
    provision.add_argument(
        "--port",
        metavar="DEVICE",
        required=True,
        help="the serial device, e.g. /dev/ttyUSB0 (or a socket:// URL)",
    )
    _console_options(provision)
    provision.add_argument(
        "--broker", metavar="HOST[:PORT]", help="the broker's presence host and UDP port ([IPV6]:PORT)"
    )
    provision.add_argument(
        "--broker-key",
        metavar="KEY",
        help="the broker's public key (base64), as dvrlink-broker show-key prints it",
    )
    provision.add_argument("--apn", metavar="NAME", help='the cellular APN; "auto" for automatic')
    provision.add_argument("--json", action="store_true", help="print JSON instead of text")

    sub.add_parser(
        "logout",
        parents=[common],
        help="forget the stored login token (the viewer key and pins stay)",
        description="Remove the stored broker login (viewer.json). The viewer key and the device "
        "keys pinned at pairing stay, so `dvrlink login` again is all it takes to come back.",
    )

    devices = sub.add_parser(
        "devices",
        parents=[common],
        help="list the devices paired to your account",
        description="List the devices paired to your account: online or not, when last seen, their "
        "address, and whether their key matches the one pinned here at pairing.",
    )
    devices.add_argument("--json", action="store_true", help="print JSON instead of a table")

    status = sub.add_parser(
        "status",
        parents=[common],
        help="show one device's details",
        description="Show what the broker knows of one paired device (presence, address, keepalive, "
        "NAT, its last report) and the key pinned here.",
    )
    status.add_argument("serial", metavar="SERIAL")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")

    events = sub.add_parser(
        "events",
        parents=[common],
        help="show a device's alarms (signal lost, motion, ...); --follow for new ones",
        description="Print a device's recent alarms, one line each: time, serial, kind (SignalLost, "
        "MotionStart, ...), channel and detail. With --follow, go on printing new ones as the "
        "device raises them, until interrupted (Ctrl-C).",
    )
    events.add_argument("serial", metavar="SERIAL")
    events.add_argument("-f", "--follow", action="store_true", help="print new alarms as they come")
    events.add_argument(
        "-n",
        dest="count",
        metavar="N",
        type=int,
        default=20,
        help="recent alarms to print first (default 20)",
    )
    events.add_argument(
        "--after", metavar="ID", type=int, help="print the alarms after this id instead of the recent ones"
    )

    session = argparse.ArgumentParser(add_help=False)
    paths = session.add_mutually_exclusive_group()
    paths.add_argument(
        "--relay-only", action="store_true", help="use only the broker's TURN relay (no direct path)"
    )
    paths.add_argument(
        "--direct-only", action="store_true", help="use only a direct path (fails if none is found)"
    )
    session.add_argument(
        "--lan",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="look for the device on this computer's LAN first and connect with no broker "
        "(default: on; --no-lan always goes through the broker)",
    )
    session.add_argument(
        "--lan-port",
        type=int,
        default=LAN_DEFAULT_PORT,
        metavar="PORT",
        help=f"the device's LAN discovery port, its [lan] port (default {LAN_DEFAULT_PORT})",
    )
    session.add_argument(
        "--lan-address",
        metavar="IP",
        action="append",
        default=[],
        help="advanced: also send the LAN query to this address (the device's own, or another "
        "broadcast address; repeatable)",
    )
    session.add_argument(
        "--host-address",
        metavar="IP",
        action="append",
        help="advanced: offer ICE host candidates only on this local address (repeatable; "
        "default: every address but loopback)",
    )

    forward = sub.add_parser(
        "forward",
        parents=[common, session],
        help="forward local TCP ports to ports on or behind a device",
        description="Forward local TCP ports through an end-to-end encrypted session: "
        "`dvrlink forward SERIAL 8554:554` listens on 127.0.0.1:8554 and connects each client to "
        "port 554 of the device. SPEC is [BIND:]LOCAL:REMOTE or [BIND:]LOCAL:HOST:REMOTE "
        "(HOST as the device sees it; IPv6 in brackets). Runs until Ctrl-C.",
    )
    forward.add_argument("serial", metavar="SERIAL")
    forward.add_argument("spec", metavar="SPEC", nargs="?", help="a forward, e.g. 8554:554")
    forward.add_argument(
        "-L",
        dest="more_specs",
        metavar="SPEC",
        action="append",
        default=[],
        help="another forward (repeatable)",
    )

    ping = sub.add_parser(
        "ping",
        parents=[common, session],
        help="measure the round trip to a device through a session",
        description="Open an end-to-end session to a device and time echo requests through it, "
        "like ping(8): the round trip a forward's bytes take.",
    )
    ping.add_argument("serial", metavar="SERIAL")
    ping.add_argument("-c", dest="count", metavar="N", type=int, default=4, help="pings to send (default 4)")

    channels = sub.add_parser(
        "channels",
        parents=[common, session],
        help="list a recorder's cameras: each channel's signal, format and motion",
        description="Open a session to a device and list its capture channels: whether a camera "
        "is connected (signal locked, no video, no lock), the format it was detected in, and motion.",
    )
    channels.add_argument("serial", metavar="SERIAL")
    channels.add_argument("--json", action="store_true", help="print the device's reply as JSON")

    relay = sub.add_parser(
        "relay",
        parents=[common, session],
        help="list a recorder's alarm inputs and relays, or switch a relay on, off or for a pulse",
        description="Open a session to a device and list its alarm inputs (active or not) and relays "
        "(on or off); with NAME and an action, switch that relay first: on, off, or pulse SECONDS "
        "(on, then off after that long).",
    )
    relay.add_argument("serial", metavar="SERIAL")
    relay.add_argument("name", metavar="NAME", nargs="?", help="the relay to switch (its [[relay]] name)")
    relay.add_argument("action", nargs="?", choices=("on", "off", "pulse"), help="what to do with it")
    relay.add_argument("seconds", nargs="?", type=float, metavar="SECONDS", help="for pulse: how long")
    relay.add_argument("--json", action="store_true", help="print the device's reply as JSON")

    view = sub.add_parser(
        "view",
        parents=[common, session],
        help="watch a channel of a recorder live (ffplay or VLC), or print its local RTSP URL",
        description="Open a session to a device and play one of its camera channels: the device "
        "serves it as RTSP, and a local port carries it through the session. The sub-stream (low "
        "bit rate) is chosen on the relay and for a recorder on a cellular uplink, the main stream "
        "elsewhere, unless --main or --sub says.",
    )
    view.add_argument("serial", metavar="SERIAL")
    view.add_argument("--channel", type=int, default=0, metavar="N", help="the channel (default 0)")
    view.add_argument("--device", metavar="NAME", help="the capture device (default: the first)")
    quality = view.add_mutually_exclusive_group()
    quality.add_argument("--sub", dest="profile", action="store_const", const="sub", help="the sub-stream")
    quality.add_argument("--main", dest="profile", action="store_const", const="main", help="the main stream")
    view.add_argument(
        "--print-url",
        action="store_true",
        help="print the rtsp://127.0.0.1:... URL and keep it open until Ctrl-C, instead of starting a player",
    )
    view.add_argument(
        "--player", choices=("ffplay", "vlc"), default="ffplay", help="the player (default ffplay)"
    )

    snapshot = sub.add_parser(
        "snapshot",
        parents=[common, session],
        help="save a JPEG of a recorder's channel now, or the one an alarm carried (--event)",
        description="Open a session to a device and save a JPEG of one of its camera channels, as "
        "it is now. With --event ID, save the snapshot that alarm carried instead (from the broker, "
        "no session; `dvrlink events` shows which alarms have one).",
    )
    snapshot.add_argument("serial", metavar="SERIAL")
    snapshot.add_argument("--channel", type=int, default=0, metavar="N", help="the channel (default 0)")
    snapshot.add_argument("--device", metavar="NAME", help="the capture device (default: the first)")
    snapshot.add_argument(
        "--width", type=int, default=640, metavar="PIXELS", help="the picture's width (160-1920, default 640)"
    )
    snapshot.add_argument("--event", type=int, metavar="ID", help="the snapshot this alarm carried")
    snapshot.add_argument(
        "-o",
        dest="output",
        metavar="FILE",
        help="where to save it (default SERIAL-DEVICE-chN-TIME.jpg here; - for standard output)",
    )

    sub.add_parser(
        "sessions",
        parents=[common],
        help="list your sessions the broker remembers",
        description="List the sessions of your account that the broker still remembers, oldest "
        "first (it sees their signalling only, never their contents).",
    )

    netcheck = sub.add_parser(
        "netcheck",
        parents=[common],
        help="report what this network allows: UDP, NAT behaviour, port mapping, latencies, the path",
        description="Check this network the way sessions will use it: UDP reachability, the NAT's "
        "mapping and filtering per address family (RFC 5780 against the broker's STUN service), "
        "hairpinning, whether the gateway answers PCP/NAT-PMP or UPnP (nothing is mapped), the round "
        "trip to each broker node and relay, whether only TCP gets out, and with SERIAL the path a "
        "session to that device should end on, and why. Read-only: nothing is stored here or at the "
        "broker.",
    )
    netcheck.add_argument("serial", metavar="SERIAL", nargs="?", help="a paired device: predict the path")
    netcheck.add_argument("--json", action="store_true", help="print JSON (schema: docs/netcheck.md)")
    netcheck.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=2.0,
        help="seconds each NAT test waits for its answer (default 2; 5 or more on GPRS)",
    )
    netcheck.add_argument("--gateway", metavar="IP", help=argparse.SUPPRESS)

    unpair = sub.add_parser(
        "unpair",
        parents=[common, session],
        help="unpair a device: it forgets this viewer, the broker forgets the pairing",
        description="Unpair a device: open a session and ask the device itself to forget this "
        "viewer's key, then remove the pairing at the broker and the pinned key here. If the "
        "device cannot be reached, only the broker and local parts are done (and it says so).",
    )
    unpair.add_argument("serial", metavar="SERIAL")
    return parser


def _console_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baud", metavar="N", type=int, default=DEFAULT_BAUD, help=f"serial speed (default {DEFAULT_BAUD})"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the console is locked: ask for the installer PIN (or read it from the first line of stdin)",
    )
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:g})",
    )


def _version() -> str:
    try:
        return importlib.metadata.version("dvrlink")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


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
    if command == "events":
        return await _events(args, home)
    if command == "forward":
        return await _forward(args, home)
    if command == "ping":
        return await _ping(args, home)
    if command == "channels":
        return await _channels(args, home)
    if command == "view":
        return await _view(args, home)
    if command == "snapshot":
        return await _snapshot(args, home)
    if command == "relay":
        return await _relay(args, home)
    if command == "sessions":
        return await _sessions(args, home)
    if command == "logout":
        return _logout(home)
    if command == "unpair":
        return await _unpair(args, home)
    if command == "netcheck":
        return await _netcheck(args, home)
    if command == "provision":
        return _provision(args)
    raise ViewerError(f"unknown command {toml_value(command)}: see `dvrlink --help`", EXIT_USAGE)


def _require_login(home: ViewerHome, now: float) -> Login:
    login = home.load_login()
    if login is None:
        raise ViewerError(NOT_LOGGED_IN)
    if login.expires_at <= now:
        raise ViewerError(LOGIN_EXPIRED)
    return login


def _broker_client(
    args: argparse.Namespace,
    url: str,
    cacert: str | None,
    token: str | None = None,
    *,
    warn: bool = True,
    other_urls: Sequence[str] = (),
) -> BrokerClient:
    """A client for ``url`` (and ``other_urls``, more nodes of its fleet, tried in turn when
    one cannot be reached); plain http only with ``--insecure-http``, and then with a warning
    (unless ``warn`` is False: a second client of the same command).

    Raises:
        ViewerError: (exit code 2) http without the flag; or an unusable CA file.
    """
    insecure = bool(getattr(args, "insecure_http", False))
    client = BrokerClient(url, other_urls=other_urls, cacert=cacert, token=token, allow_http=insecure)
    if warn and is_plain_http(client.broker_url):
        _warn(cleartext_warning(client.broker_url))
    return client


def _client(args: argparse.Namespace, login: Login, *, warn: bool = True) -> BrokerClient:
    return _broker_client(
        args, login.broker, login.cacert, login.token, warn=warn, other_urls=login.other_brokers
    )


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


async def _netcheck(args: argparse.Namespace, home: ViewerHome) -> int:
    login = _require_login(home, time.time())
    serial = normalize_serial(args.serial) if args.serial else None
    if not 0 < args.timeout <= 30:
        raise ViewerError(f"--timeout {args.timeout:g} is out of range: give 0.5 to 30 seconds", EXIT_USAGE)
    client = _client(args, login)
    nodes = [_broker_client(args, url, login.cacert, warn=False) for url in login.brokers]

    def progress(text: str) -> None:
        if not args.json:
            print(f"{PROG} netcheck: {text}...", file=sys.stderr)

    report = await viewer_netcheck(
        client, nodes, serial, test_timeout_s=args.timeout, gateway=args.gateway, progress=progress
    )
    print(json.dumps(report.as_json(), indent=1) if args.json else render_text(report))
    return EXIT_OK


async def _login(args: argparse.Namespace, home: ViewerHome) -> int:
    stored = home.load_login()  # a malformed viewer.json stops here, before any prompt
    key = home.load_key()  # likewise a malformed viewer key
    broker_args: list[str] = list(args.broker or (stored.brokers if stored else ()))
    user: str | None = args.user or (stored.username if stored else None)
    if not broker_args or not user:
        raise ViewerError(
            "no stored login to reuse: run `dvrlink login --broker URL --user NAME`", EXIT_USAGE
        )
    allow_http = bool(getattr(args, "insecure_http", False))
    brokers = [check_broker_url(arg, allow_http=allow_http) for arg in broker_args]
    if len(set(brokers)) != len(brokers):
        raise ViewerError(f"--broker {toml_value(brokers)} names a broker twice: give each once", EXIT_USAGE)
    broker = brokers[0]
    if args.cacert:
        cacert: str | None = str(Path(args.cacert).expanduser().resolve())
    elif stored is not None and broker in stored.brokers:
        cacert = stored.cacert
    else:
        cacert = None
    # Checks the CA file before the password prompt.
    client = _broker_client(args, broker, cacert, other_urls=brokers[1:])
    password = _read_password(args, user, broker)
    async with client:
        token = await client.login(user, password)
        answered = client.broker_url
    # The node that answered first from now on; the others stay, in their order, as fallbacks.
    broker = answered
    others = tuple(url for url in brokers if url != answered)
    created = False
    if key is None:
        key, created = home.load_or_create_key()
    home.save_login(Login(broker, cacert, token.username, token.token, token.expires_at, others))
    now = time.time()
    print(
        f"logged in to {broker} as {token.username} (token valid until {format_time(token.expires_at, now)})"
    )
    if created:
        fp = format_fingerprint(fingerprint(ed25519_public_bytes(key)))
        print(f"created the viewer key {home.key_path} (fingerprint {fp})")
    return EXIT_OK


async def _pair(args: argparse.Namespace, home: ViewerHome) -> int:
    if args.port is not None:
        if args.target is not None or args.code is not None:
            raise ViewerError("give either --port or SERIAL CODE (or a URI), not both", EXIT_USAGE)
    elif args.target is None:
        raise ViewerError(
            "nothing to pair: give SERIAL CODE, the dvrlink://pair?... URI, or --port DEVICE", EXIT_USAGE
        )
    target = parse_pairing_target(str(args.target), args.code) if args.port is None else None
    now = time.time()
    login = _require_login(home, now)
    key = home.load_key()
    if key is None:
        raise ViewerError(f"no viewer key in {home.path}: run `dvrlink login` first (it creates one)")
    pins = home.load_pins()  # a malformed pins.json stops here, before the device is asked
    if target is None:
        pin = _read_pin() if args.pin else None
        target = await asyncio.to_thread(_console_pairing_target, args, pin)
        print(f"read the pairing code of {target.serial} from {args.port}", flush=True)
    async with _client(args, login) as client:
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


# -- the recorder's serial console ------------------------------------------------------------------


def _read_pin() -> str:
    if sys.stdin.isatty():
        try:
            pin = getpass.getpass("installer PIN: ")
        except EOFError:
            pin = ""
    else:
        pin = sys.stdin.readline().strip()
    if not pin:
        raise ViewerError("no installer PIN given: type it at the prompt, or pipe it on stdin", EXIT_USAGE)
    return pin


def _open_console(args: argparse.Namespace, client: ConsoleClient, pin: str | None) -> dict[str, Any]:
    """Greet the recorder and unlock its console; returns ``hello``'s result."""
    hello = client.hello()
    if hello.get("locked"):
        if pin is None:
            raise ViewerError(
                f"the console of {client.serial_number or 'the recorder'} on {args.port} is locked: run "
                "again with --pin and give the installer PIN"
            )
        client.unlock(pin)
    return hello


def _console_client(args: argparse.Namespace) -> ConsoleClient:
    if args.baud <= 0 or args.timeout <= 0:
        raise ViewerError("--baud and --timeout must be above 0", EXIT_USAGE)
    return ConsoleClient(args.port, args.baud, timeout_s=args.timeout)


def _console_pairing_target(args: argparse.Namespace, pin: str | None) -> PairingUri:
    with _console_client(args) as client:
        _open_console(args, client, pin)
        return client.pairing_target()


def provision_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings ``dvrlink provision`` asks for, by ``console_wire.SETTING_KEYS`` name.

    Raises:
        ViewerError: (exit code 2) a malformed ``--broker``.
    """
    settings: dict[str, Any] = {}
    if args.broker is not None:
        try:
            host, port = split_host_port(args.broker.strip())
        except ValueError as exc:
            raise ViewerError(str(exc), EXIT_USAGE) from None
        settings["broker_host"] = host
        if port is not None:
            settings["broker_port"] = port
    if args.broker_key is not None:
        settings["broker_public_key"] = args.broker_key.strip()
    if args.apn is not None:
        settings["apn"] = "" if args.apn.strip().lower() == "auto" else args.apn.strip()
    return settings


def _provision(args: argparse.Namespace) -> int:
    settings = provision_settings(args)
    pin = _read_pin() if args.pin else None
    with _console_client(args) as client:
        _open_console(args, client, pin)
        saved = client.set(settings) if settings else None
        status = client.status()
    if args.json:
        print(json.dumps({"saved": saved, "status": status}, indent=2))
        return EXIT_OK
    if saved is not None:
        changed = saved.get("changed") or {}
        where = f"{client.serial_number} ({saved.get('file', 'its config')})"
        if changed:
            what = ", ".join(f"{k} = {toml_value(v)}" for k, v in changed.items())
            print(f"saved on {where}: {what}; the recorder applies it now")
        else:
            print(f"nothing to change on {where}: it already holds these values")
        for note in saved.get("notes") or []:
            print(f"note: {note}")
    width = max((len(k) for k in status), default=0) + 2
    for key, value in status.items():
        shown = "-" if value is None else value
        print(f"{(key.replace('_', ' ') + ':').ljust(width)}{shown}")
    return EXIT_OK


async def _devices(args: argparse.Namespace, home: ViewerHome) -> int:
    now = time.time()
    login = _require_login(home, now)
    pins = home.load_pins()
    async with _client(args, login) as client:
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
    async with _client(args, login) as client:
        device = await client.device(serial)
    pin = pins.get(device.serial)
    if args.json:
        print(json.dumps(device_json(device, pin), indent=2))
    else:
        sys.stdout.write(render_status(device, pin, now))
    if pin is not None and pin_status(device, pin) is PinStatus.MISMATCH:
        _warn(mismatch_warning(device, pin))
    return EXIT_OK


# -- sessions ---------------------------------------------------------------------------------------


def session_policy(args: argparse.Namespace) -> PathPolicy:
    """The path policy the ``--relay-only`` / ``--direct-only`` flags ask for."""
    if args.relay_only:
        return PathPolicy.RELAY_ONLY
    if args.direct_only:
        return PathPolicy.DIRECT_ONLY
    return PathPolicy.ALL


def forward_specs(args: argparse.Namespace) -> list[ForwardSpec]:
    """The forwards of ``dvrlink forward`` (SPEC, then each -L) in order.

    Raises:
        ViewerError: (exit code 2) none given, or one is malformed.
    """
    texts = ([args.spec] if args.spec else []) + list(args.more_specs)
    if not texts:
        raise ViewerError(
            f"no forward given: run `dvrlink forward {args.serial} LOCAL:REMOTE`, e.g. 8554:554", EXIT_USAGE
        )
    try:
        return [parse_forward_spec(text) for text in texts]
    except ValueError as exc:
        raise ViewerError(str(exc), EXIT_USAGE) from exc


async def _events(args: argparse.Namespace, home: ViewerHome) -> int:
    serial = _serial_arg(args.serial)
    if not 0 <= args.count <= 1000:
        raise ViewerError(f"-n {args.count}: give 0 to 1000", EXIT_USAGE)
    login = _require_login(home, time.time())
    async with _client(args, login) as client:
        after = args.after
        if args.count or after is not None:
            recent = await client.events(serial, after=after, limit=max(args.count, 1))
            for alarm in recent[-args.count :] if after is None else recent:
                print(render_alarm(alarm), flush=True)
            if recent:
                after = recent[-1].id
        if not args.follow:
            return EXIT_OK
        if after is None:  # -n 0: only new ones, but none missed from here on
            latest = await client.events(serial, limit=1)
            after = latest[-1].id if latest else 0
        async for alarm in client.follow_events(
            serial, after=after, on_reconnect=lambda why: _warn(f"alarm stream of {serial} lost: {why}")
        ):
            print(render_alarm(alarm), flush=True)
    return EXIT_OK


def _serial_arg(text: str) -> str:
    try:
        return normalize_serial(text)
    except ValueError as exc:
        raise ViewerError(str(exc), EXIT_USAGE) from exc


async def _open(args: argparse.Namespace, home: ViewerHome, serial: str) -> ViewerRunner:
    """A session to ``serial`` from the best source of ``path_choice.plan_sources`` that gives
    one: the LAN (no broker, ``--lan``), else the broker (direct paths and the relay).

    The LAN search and the broker's grant run side by side, so a device that is not on this LAN
    costs at most ``LAN_GRACE_S`` more: the broker's offer waits until the search is that old
    (a device on the LAN answers within milliseconds). A device found on the LAN takes over from
    the broker at any time before the offer, and when the broker fails (down, unreachable) the
    search gets its whole ``LanTiming.discovery_timeout_s``.
    """
    search = _lan_search(args, home, serial)
    if search is None:
        return await _open_via_broker(args, home, serial)
    loop = asyncio.get_running_loop()
    grace_until = loop.time() + LAN_GRACE_S

    async def lan_first() -> None:
        left = grace_until - loop.time()
        if left > 0 and not search.done():
            await asyncio.wait({search}, timeout=left)
        if search.done() and search.result() is not None:
            raise _FoundOnLan

    broker = loop.create_task(_open_via_broker(args, home, serial, before_offer=lan_first))
    ours = False  # we cancelled the broker's way because the LAN answered first
    used = False
    try:
        await asyncio.wait({broker, search}, return_when=FIRST)
        if not broker.done() and search.result() is not None:
            broker.cancel()
            ours = True
        try:
            runner = await broker
        except _FoundOnLan:
            pass
        except asyncio.CancelledError:
            if not ours:
                raise
        except ViewerError as exc:
            if await search is None:
                raise
            log.info("the broker's way failed (%s); the device answered on the LAN", exc)
        else:
            return runner
        found = await search
        assert found is not None
        used = True  # _open_on_lan closes it when it fails
        lan = await _open_on_lan(args, serial, found, home)
        return lan if lan is not None else await _open_via_broker(args, home, serial)
    finally:
        if not broker.done():
            broker.cancel()
            with contextlib.suppress(BaseException):
                await broker
        if not search.done():
            search.cancel()
            with contextlib.suppress(BaseException):
                await search
        elif not used and not search.cancelled() and (unused := search.result()) is not None:
            await unused.close()  # the broker's way won


class _FoundOnLan(Exception):
    """The device answered on the LAN before the broker's offer went out."""


def _lan_search(
    args: argparse.Namespace, home: ViewerHome, serial: str
) -> asyncio.Task[LanSignalling | None] | None:
    """The LAN search as a task, or None when it does not apply: ``--no-lan``, ``--relay-only``,
    or no pin or viewer key here (the broker's way then says what to do)."""
    if Source.LAN_DISCOVERY not in plan_sources(session_policy(args), lan=args.lan):
        return None
    if not 1 <= args.lan_port <= 65535:
        raise ViewerError(f"--lan-port {args.lan_port}: give 1 to 65535", EXIT_USAGE)
    pin = home.load_pins().get(serial)
    key = home.load_key()
    if pin is None or key is None:
        return None
    return asyncio.get_running_loop().create_task(
        find_on_lan(pin.public_key, key, port=args.lan_port, extra_targets=args.lan_address),
        name=f"LAN search for {serial}",
    )


async def _open_on_lan(
    args: argparse.Namespace, serial: str, signalling: LanSignalling, home: ViewerHome
) -> ViewerRunner | None:
    """The session with the device found on the LAN; None (said on stderr) if it failed in a
    way the broker may do better.

    Raises:
        ViewerError: the device's key is not the pinned one, or it does not know this viewer.
    """
    try:
        runner = await open_session(signalling, home, serial, PathPolicy.DIRECT_ONLY, args.host_address)
    except ViewerError as exc:
        await signalling.close()
        address = signalling.device_address
        _warn(f"{serial} answered on the LAN ({address[0] if address else '?'}) but no session opened: {exc}")
        if exc.message.startswith((PIN_MISMATCH, NOT_RECOGNISED)):
            raise
        _warn("trying through the broker")
        return None
    except BaseException:
        await signalling.close()
        raise
    runner.after_close.append(signalling.close)
    return runner


async def _open_via_broker(
    args: argparse.Namespace,
    home: ViewerHome,
    serial: str,
    *,
    before_offer: Callable[[], Awaitable[None]] | None = None,
) -> ViewerRunner:
    login = _require_login(home, time.time())
    progress = WakeProgressOutput(sys.stderr.isatty())
    client = await _client(args, login).__aenter__()
    try:
        runner = await open_session(
            client,
            home,
            serial,
            session_policy(args),
            args.host_address,
            end=functools.partial(_end_session, args, login),
            report_path=functools.partial(_report_path, args, login),
            on_wake=progress.show,
            before_offer=before_offer,
        )
    except BaseException:
        await client.close()
        raise
    finally:
        progress.done()
    # The session is up on the relay before every candidate is known: a device's server-reflexive
    # or port-mapped candidate can come a round trip later, and it still trickles through this
    # client. Closing the client here cut that trickle off mid-request ("it closed the
    # connection without an answer"), and such a session never went direct; it closes with the
    # session instead.
    runner.after_close.append(client.close)
    return runner


class WakeProgressOutput:
    """The progress of a wake by SMS on stderr: rewritten in place on a terminal; otherwise a line
    when the state changes and every ``PLAIN_EVERY_S`` seconds."""

    PLAIN_EVERY_S = 10.0

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._last: tuple[str, str] | None = None
        self._last_elapsed = 0.0

    def show(self, wake: WakeStatus) -> None:
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{PROG}: {wake.describe()}")
            sys.stderr.flush()
            self._last = (wake.state, wake.via)
            return
        key = (wake.state, wake.via)
        if key != self._last or wake.elapsed_s - self._last_elapsed >= self.PLAIN_EVERY_S:
            self._last, self._last_elapsed = key, wake.elapsed_s
            print(f"{PROG}: {wake.describe()}", file=sys.stderr, flush=True)

    def done(self) -> None:
        """End a progress line left on the terminal."""
        if self.tty and self._last is not None:
            sys.stderr.write("\n")
            sys.stderr.flush()


async def _end_session(args: argparse.Namespace, login: Login, session_id: str) -> None:
    """Tell the broker a closed session is over, so it does not count against the account."""
    async with _client(args, login, warn=False) as client:
        await client.end_session(session_id)


async def _report_path(args: argparse.Namespace, login: Login, session_id: str, path: str) -> None:
    """Tell the broker which path a session runs on now (its dashboard shows it)."""
    async with _client(args, login, warn=False) as client:
        await client.report_path(session_id, path)


def format_bytes(count: int) -> str:
    """``"512 B"``, ``"1.5 kB"``, ``"3.2 MB"``, ``"1.1 GB"`` (powers of 1000)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_rtt(rtt: float | None) -> str:
    """``"12.3 ms"``, or ``"-"`` before the first sample."""
    return "-" if rtt is None else f"{rtt * 1000:.1f} ms"


def status_line(runner: ViewerRunner, stats: Sequence[ForwardStats]) -> str:
    """The live status of a forward: path, RTT, forwarded bytes and connections."""
    received = sum(s.bytes_in for s in stats)
    sent = sum(s.bytes_out for s in stats)
    open_now = sum(s.connections_open for s in stats)
    total = sum(s.connections_total for s in stats)
    silent = runner.silent_s
    quiet = f"  no answer for {silent:.1f} s" if silent >= SILENT_SHOWN_S else ""
    return (
        f"path {path_name(runner)}  rtt {format_rtt(runner.rtt)}{quiet}  in {format_bytes(received)}  "
        f"out {format_bytes(sent)}  connections {open_now} open, {total} total"
    )


class _StatusOutput:
    """A status line rewritten in place on a terminal; plain lines (on path change) otherwise."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._shown = False

    def clear(self) -> None:
        if self.tty and self._shown:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
            self._shown = False

    def show(self, line: str) -> None:
        if self.tty:
            sys.stdout.write("\r\x1b[K" + line)
            self._shown = True
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def message(self, text: str) -> None:
        self.clear()
        _warn(text)


async def _forward(args: argparse.Namespace, home: ViewerHome) -> int:
    serial = _serial_arg(args.serial)
    specs = forward_specs(args)
    runner = await _open(args, home, serial)
    out = _StatusOutput(sys.stdout.isatty())
    forwarders: list[Forwarder] = []
    refused_peers: set[str] = set()

    def open_now() -> int:
        return sum(f.stats.connections_open for f in forwarders)

    def on_event(spec: ForwardSpec, event: ForwardEvent) -> None:
        if isinstance(event, ForwardRefused):
            refused_peers.add(event.peer)
            out.message(event.message)
        elif isinstance(event, ConnectionAccepted) and not out.tty:
            target = forward_target(spec, serial)
            out.show(f"connection from {event.peer} opened, to {target} ({open_now()} open)")
        elif isinstance(event, ConnectionClosed):
            if event.error is None:
                what = f"{format_bytes(event.bytes_out)} out, {format_bytes(event.bytes_in)} in"
            else:
                what = event.error
            line = f"connection from {event.peer} closed: {what} ({open_now()} open)"
            if not out.tty:
                out.show(line)
            elif event.error is not None and event.peer not in refused_peers:
                out.message(line)
            refused_peers.discard(event.peer)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    try:
        await _check_allowed(runner, specs)
        for spec in specs:
            forwarders.append(Forwarder(runner, spec, functools.partial(on_event, spec)))
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
        bound = [await forwarder.start() for forwarder in forwarders]
        for spec, address in zip(specs, bound, strict=True):  # all listen now: scripts may go on
            print(f"forwarding {forward_line(spec, address, serial)} via {path_name(runner)}", flush=True)
        reason = await _watch(runner, [f.stats for f in forwarders], stop, out)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        for forwarder in forwarders:
            await forwarder.aclose()
        await runner.close()
        out.clear()
    if reason is None:
        return EXIT_OK
    _error(f"the session to {serial} closed: {reason}")
    return EXIT_RUNTIME


async def _check_allowed(runner: ViewerRunner, specs: Sequence[ForwardSpec]) -> None:
    """Ask the device (``info``) which forwards it allows; refuse the others before listening.

    Raises:
        ViewerError: a forward the device does not allow (the message says what to add where).
    """
    try:
        info = await device_info(runner)
    except ViewerError as exc:  # the device decides at each connection instead
        _warn(f"warning: cannot ask the device which forwards it allows ({exc}); going on")
        return
    refusals = refused_forwards(specs, info)
    if refusals:
        raise ViewerError("; ".join(refusals))


def forward_target(spec: ForwardSpec, serial: str) -> str:
    """``DL-XXXX-XXXX:554``, or ``DL-XXXX-XXXX -> 192.168.1.64:80`` for another host."""
    if spec.remote_host in ("127.0.0.1", "localhost"):
        return f"{serial}:{spec.remote_port}"
    return f"{serial} -> {_bracket(spec.remote_host)}:{spec.remote_port}"


def forward_line(spec: ForwardSpec, bound: tuple[str, int], serial: str) -> str:
    """``127.0.0.1:8554 -> DL-XXXX-XXXX:554`` (or ``... -> DL-XXXX-XXXX -> 192.168.1.64:80`` when the
    target is another host the device reaches)."""
    return f"{_bracket(bound[0])}:{bound[1]} -> {forward_target(spec, serial)}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _watch(
    runner: ViewerRunner, stats: Sequence[ForwardStats], stop: asyncio.Event, out: _StatusOutput
) -> str | None:
    """Show the status until ``stop`` is set (returns None) or the session closes (its reason)."""
    closed = asyncio.ensure_future(runner.wait_closed())
    stopped = asyncio.ensure_future(stop.wait())
    last_path = path_name(runner)
    last_quiet = False
    try:
        while True:
            done, _ = await asyncio.wait({closed, stopped}, timeout=STATUS_INTERVAL_S, return_when=FIRST)
            if closed in done:
                out.clear()
                return closed.result()
            if stopped in done:
                return None
            path = path_name(runner)
            quiet = runner.silent_s >= SILENT_SHOWN_S
            if out.tty or path != last_path or quiet != last_quiet:  # without a TTY: on change only
                out.show(status_line(runner, stats))
            last_path, last_quiet = path, quiet
    finally:
        for task in (closed, stopped):
            task.cancel()
        await asyncio.gather(closed, stopped, return_exceptions=True)


async def _ping(args: argparse.Namespace, home: ViewerHome) -> int:
    serial = _serial_arg(args.serial)
    if args.count < 1:
        raise ViewerError(f"-c {args.count}: give at least 1 ping", EXIT_USAGE)
    runner = await _open(args, home, serial)
    rtts: list[float] = []
    try:
        print(f"session to {serial} via {path_name(runner)}", flush=True)
        for seq in range(1, args.count + 1):
            (rtt,) = await ping(runner, count=1)
            rtts.append(rtt)
            print(f"ping {serial}: seq={seq} time={rtt * 1000:.1f} ms path={path_name(runner)}", flush=True)
    finally:
        await runner.close()
    low, high = min(rtts), max(rtts)
    mean = sum(rtts) / len(rtts)
    print(
        f"{len(rtts)} pings to {serial}: min/avg/max {low * 1000:.1f}/{mean * 1000:.1f}/{high * 1000:.1f} ms"
    )
    return EXIT_OK


async def _channels(args: argparse.Namespace, home: ViewerHome) -> int:
    serial = _serial_arg(args.serial)
    runner = await _open(args, home, serial)
    try:
        devices = await device_channels(runner)
    finally:
        await runner.close()
    if args.json:
        print(json.dumps({"serial": serial, "devices": devices}, indent=2))
    else:
        sys.stdout.write(render_channels(serial, devices))
    return EXIT_OK


async def _relay(args: argparse.Namespace, home: ViewerHome) -> int:
    serial = _serial_arg(args.serial)
    request: dict[str, object] = {}
    if args.name is not None:
        if args.action is None:
            raise ViewerError(f"say what to do with relay {args.name}: on, off or pulse SECONDS", EXIT_USAGE)
        if (args.action == "pulse") != (args.seconds is not None):
            raise ViewerError("only pulse takes SECONDS, and pulse needs them, e.g. pulse 5", EXIT_USAGE)
        request = {"relay": args.name, "action": args.action}
        if args.seconds is not None:
            request["seconds"] = args.seconds
    runner = await _open(args, home, serial)
    try:
        board = await device_relay(runner, request)
    finally:
        await runner.close()
    if args.json:
        print(json.dumps({"serial": serial, **board}, indent=2))
    else:
        sys.stdout.write(render_relays(serial, board))
    return EXIT_OK


async def _view(args: argparse.Namespace, home: ViewerHome) -> int:
    serial = _serial_arg(args.serial)
    runner = await _open(args, home, serial)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    forwarder: Forwarder | None = None
    player: asyncio.subprocess.Process | None = None
    try:
        info = await device_info(runner)
        port = info.get("live_port")
        if not isinstance(port, int) or not port:
            raise ViewerError(
                f"{serial} serves no live view (a dvrlinkd without capture devices, or [live] port = 0)"
            )
        cellular = info.get("cellular") is True
        # The encoder starts while the channels are listed and the forward is set up.
        profile = pick_profile(args.profile, path_name(runner), cellular)
        devices, _ = await asyncio.gather(
            device_channels(runner), live_warm(runner, args.device or "", args.channel, profile)
        )
        choice = choose(devices, args.device, args.channel, args.profile, path_name(runner), cellular)
        forwarder = Forwarder(runner, ForwardSpec("127.0.0.1", 0, "127.0.0.1", port))
        _, local = await forwarder.start()
        url = stream_url(local, choice)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
        uplink = ", cellular uplink" if info.get("cellular") is True else ""
        what = (
            f"{serial} {choice.device} channel {choice.channel} ({choice.profile}) "
            f"via {path_name(runner)}{uplink}"
        )
        if args.print_url:
            print(url, flush=True)
            print(f"# {what}; Ctrl-C to stop", file=sys.stderr, flush=True)
            reason = await _watch(runner, [forwarder.stats], stop, _StatusOutput(False))
            if reason is not None:
                raise ViewerError(f"the session to {serial} closed: {reason}")
            return EXIT_OK
        command = player_command(args.player, url, what)
        try:
            player = await asyncio.create_subprocess_exec(*command)
        except OSError as exc:
            raise ViewerError(
                f"cannot start {command[0]} ({exc.strerror}): install it, or use --print-url"
            ) from exc
        print(f"playing {what} in {args.player}", flush=True)
        waiting = asyncio.ensure_future(player.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        return EXIT_OK
    finally:
        if player is not None and player.returncode is None:
            player.terminate()
            await player.wait()
        for sig in handled:
            loop.remove_signal_handler(sig)
        if forwarder is not None:
            await forwarder.aclose()
        await runner.close()


async def _snapshot(args: argparse.Namespace, home: ViewerHome) -> int:
    serial = _serial_arg(args.serial)
    if not 160 <= args.width <= 1920:
        raise ViewerError(f"--width {args.width}: give 160 to 1920 pixels", EXIT_USAGE)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.event is not None:
        login = _require_login(home, time.time())
        async with _client(args, login) as client:
            jpeg = await client.event_snapshot(serial, args.event)
        default = f"{serial}-event{args.event}.jpg"
    else:
        runner = await _open(args, home, serial)
        try:
            choice = choose(await device_channels(runner), args.device, args.channel, "main", "")
            jpeg = await device_snapshot(runner, choice.device, choice.channel, args.width)
        finally:
            await runner.close()
        default = f"{serial}-{choice.device}-ch{choice.channel}-{stamp}.jpg"
    if args.output == "-":
        sys.stdout.buffer.write(jpeg)
        sys.stdout.buffer.flush()
        return EXIT_OK
    path = Path(args.output or default)
    try:
        atomic_write(path, jpeg, 0o644)
    except OSError as exc:
        raise ViewerError(f"cannot write {path} ({exc.strerror}): give another file with -o") from exc
    print(f"{path}: {len(jpeg)} bytes", flush=True)
    return EXIT_OK


def render_sessions(sessions: Sequence[SessionInfo], now: float) -> str:
    """The ``dvrlink sessions`` table (oldest first), ending in a newline."""
    if not sessions:
        return "no sessions: the broker remembers none for your account\n"
    rows = [("SESSION", "SERIAL", "POLICY", "STATE", "CREATED")]
    for entry in sorted(sessions, key=lambda s: s.created_at):
        rows.append(
            (entry.session_id, entry.serial, entry.policy, entry.state, format_ago(entry.created_at, now))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


async def _sessions(args: argparse.Namespace, home: ViewerHome) -> int:
    now = time.time()
    login = _require_login(home, now)
    async with _client(args, login) as client:
        sessions = await client.list_sessions()
    sys.stdout.write(render_sessions(sessions, now))
    return EXIT_OK


def _logout(home: ViewerHome) -> int:
    login = home.forget_login()
    if login is None:
        print(f"not logged in (no {home.login_path}): nothing to do")
        return EXIT_OK
    print(
        f"logged out of {login.broker} as {login.username}: the token is forgotten here "
        f"({home.login_path} removed; the viewer key and pins stay)"
    )
    return EXIT_OK


async def _unpair(args: argparse.Namespace, home: ViewerHome) -> int:
    serial = _serial_arg(args.serial)
    login = _require_login(home, time.time())
    pins = home.load_pins()  # a malformed pins.json stops here, before anything changes
    device_problem: str | None = None
    revoked = False
    async with _client(args, login) as client:
        if serial not in pins:
            device_problem = (
                f"no key of {serial} is pinned on this computer, so no session to it can be opened"
            )
        else:
            try:
                runner = await open_session(
                    client, home, serial, session_policy(args), args.host_address, end=client.end_session
                )
            except ViewerError as exc:
                device_problem = exc.message
            else:
                try:
                    revoked = await unpair_self(runner)
                except ViewerError as exc:
                    device_problem = exc.message
                finally:
                    await runner.close()
        at_broker = await client.unpair(serial)
    unpinned = home.remove_pin(serial)
    if device_problem is None:
        print(f"{serial} revoked this viewer" if revoked else f"{serial} had already forgotten this viewer")
    else:
        _warn(
            f"warning: {serial} could not be told ({device_problem}); it still holds this viewer's "
            "key: pair and unpair again once it is online, or remove the key from viewers.json on it"
        )
    print(
        f"the broker {'forgot' if at_broker else 'had no'} pairing of {serial} for {login.username}; "
        f"{'removed' if unpinned else 'there was no'} pinned key for it here"
    )
    return EXIT_OK
