"""``dvrlinkd``: the device daemon's command line.

    dvrlinkd [run] [--config FILE]                  run the daemon (until SIGTERM/SIGINT)
    dvrlinkd check-config [--config FILE]           check the config file and exit (or --check-config)
    dvrlinkd status [--config FILE] [--json]        show the running daemon's status
    dvrlinkd netcheck [--config FILE] [--json]      check the network: UDP, NAT, port mapping, latencies
    dvrlinkd pairing-code [--config FILE] [--create] print the pairing code, fingerprint and QR string
    dvrlinkd hash-pin                               read an installer PIN, print its [console] pin_hash line
    dvrlinkd synthetic CHANNEL ACTION [FORMAT]      script a synthetic camera of the running daemon
    dvrlinkd --version

The config file is --config (before or after the command), else $DVRLINKD_CONFIG, else
/etc/dvrlink/dvrlinkd.toml; ``status`` and ``pairing-code`` read the directories that file names.
They and ``netcheck`` are read-only: they never create a directory or a file
(``pairing-code --create`` makes the key and code before the first start, for the label).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dvrlink.daemon.app import run_daemon
from dvrlink.daemon.config import DEFAULT_CONFIG_PATH, DaemonConfig, describe, load_config
from dvrlink.daemon.console_pin import hash_pin
from dvrlink.daemon.errors import ConfigError
from dvrlink.daemon.state import DeviceState, StateError
from dvrlink.daemon.status import StatusUnavailable, format_status, read_status
from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint, format_fingerprint
from dvrlink.protocol.pairing import PairingUri, format_code

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78
"""EX_CONFIG (sysexits.h), as dvrlink-broker and dvrlink use; the service unit does not restart on it."""
EXIT_CODES = (
    "Exit status: 0 ok, 1 runtime error (already running, a bad state file; for status: not "
    "running; for pairing-code: no code yet), 2 usage error, 78 configuration error."
)
COMMANDS = {
    "run": "run the daemon until SIGTERM or SIGINT (the default command)",
    "check-config": "check the config file, print a one-line summary and exit",
    "status": "show the running daemon's state, broker, address, sessions and modem (read-only)",
    "netcheck": (
        "check the network as presence and sessions use it: UDP, the NAT's mapping and filtering "
        "(RFC 5780), hairpinning, PCP/NAT-PMP/UPnP (probe only), the learned NAT lifetime, the "
        "presence transport, and the round trip to each broker node (read-only)"
    ),
    "pairing-code": (
        "print the serial, pairing code, key fingerprint and pairing URI for the label (read-only; "
        "--create makes the key and code if the daemon has not yet)"
    ),
    "synthetic": (
        "script a synthetic camera of the running daemon: unplug, plug [FORMAT], no-lock, motion, "
        "still (for demos and tests)"
    ),
    "hash-pin": (
        "read an installer PIN for the serial console (prompted, or the first line of stdin) and "
        "print the [console] pin_hash line to paste into the config (needs no config file)"
    ),
}

log = logging.getLogger("dvrlink.daemon")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dvrlinkd`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "hash-pin":
        return _hash_pin()
    environ = os.environ
    config_path = Path(args.config or environ.get("DVRLINKD_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"dvrlinkd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    command = "check-config" if args.check_config else (args.command or "run")
    if command == "check-config":
        print(f"config OK: {describe(config)}")
        if config.capture:
            from dvrlink.daemon.capture_cli import check_capture, print_lines  # noqa: PLC0415

            if not print_lines(check_capture(config)):
                return EXIT_CONFIG
        if config.alarm_inputs or config.relays:
            from dvrlink.daemon.board_io_service import check_board_io, default_backend  # noqa: PLC0415
            from dvrlink.daemon.capture_cli import print_lines  # noqa: PLC0415

            if not print_lines(check_board_io(config.alarm_inputs, config.relays, default_backend())):
                return EXIT_CONFIG
        return EXIT_OK
    if command == "synthetic":
        from dvrlink.daemon.capture_cli import synthetic_command  # noqa: PLC0415

        return synthetic_command(config, args)
    if command == "status":
        return _status(config, as_json=args.json)
    if command == "netcheck":
        return _netcheck(config, as_json=args.json, timeout_s=args.timeout)
    if command == "pairing-code":
        return _pairing_code(config, create=args.create, uri_only=args.uri)
    return _run(config, environ)


def _version() -> str:
    # importlib.metadata pulls in the email package (about 1 MB resident): only for --version.
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("dvrlink")
    except PackageNotFoundError:  # run from a source tree without installing
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: looks the version up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"dvrlinkd {_version()}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    config_help = f"config file (default: $DVRLINKD_CONFIG or {DEFAULT_CONFIG_PATH})"
    parser = argparse.ArgumentParser(
        prog="dvrlinkd",
        description="dvrlink device daemon: keeps the device reachable through the broker by its serial.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    parser.add_argument("--config", metavar="FILE", help=config_help)
    parser.add_argument(
        "--check-config", action="store_true", help="check the config file, print a summary and exit"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Each command accepts --config too; SUPPRESS keeps a value given before the command.
    for name, text in COMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text, epilog=EXIT_CODES)
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
        if name in ("status", "netcheck"):
            sub.add_argument("--json", action="store_true", help=f"print the {name} report as JSON")
        if name == "netcheck":
            sub.add_argument(
                "--timeout",
                metavar="S",
                type=float,
                default=2.0,
                help="seconds each NAT test waits for its answer (default 2; 5 or more on GPRS)",
            )
        if name == "synthetic":
            from dvrlink.daemon.capture_cli import add_synthetic_arguments  # noqa: PLC0415

            add_synthetic_arguments(sub)
        if name == "pairing-code":
            sub.add_argument(
                "--create",
                action="store_true",
                help="make the device key and pairing code if missing (before the first start; run "
                "as root or as the daemon's user)",
            )
            sub.add_argument(
                "--uri",
                action="store_true",
                help='print only the pairing URI (for a QR code generator, or `dvrlink pair "$(...)"`)',
            )
    return parser


def _run(config: DaemonConfig, environ: Mapping[str, str]) -> int:
    # Under systemd the journal adds timestamps.
    stamp = "" if "JOURNAL_STREAM" in environ else "%(asctime)s "
    logging.basicConfig(level=config.log.level, format=stamp + "%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(config, environ))
    except StateError as exc:
        log.error("%s", exc)
        return EXIT_RUNTIME
    except OSError as exc:
        log.error("%s; check the paths in %s and the network, then restart", exc, config.source)
        return EXIT_RUNTIME
    return EXIT_OK


async def _serve(config: DaemonConfig, environ: Mapping[str, str]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: log.warning("SIGHUP: reloading is not supported yet; restart the service")
    )
    await run_daemon(config, stop, environ)


def _status(config: DaemonConfig, *, as_json: bool) -> int:
    try:
        status = read_status(config.device.runtime_dir)
    except StatusUnavailable as exc:
        if as_json:
            print(json.dumps({"running": False, "message": str(exc)}))
        print(f"dvrlinkd status: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if as_json:
        print(json.dumps({"running": True, **asdict(status)}, indent=1))
    else:
        print(format_status(status, time.time()))
    return EXIT_OK


def _netcheck(config: DaemonConfig, *, as_json: bool, timeout_s: float) -> int:
    if not 0 < timeout_s <= 30:
        print(
            f"dvrlinkd netcheck: --timeout {timeout_s:g} is out of range: give 0.5 to 30 seconds",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from dvrlink.daemon.netcheck import daemon_netcheck  # noqa: PLC0415 (only for this command)
    from dvrlink.protocol.netcheck import render_text  # noqa: PLC0415

    report = asyncio.run(daemon_netcheck(config, test_timeout_s=timeout_s))
    print(json.dumps(report.as_json(), indent=1) if as_json else render_text(report))
    return EXIT_OK


def _hash_pin() -> int:
    if sys.stdin.isatty():
        pin = getpass.getpass("installer PIN (4-12 digits): ")
        if getpass.getpass("the same PIN again: ") != pin:
            print("dvrlinkd hash-pin: the two PINs differ; nothing printed", file=sys.stderr)
            return EXIT_USAGE
    else:
        pin = sys.stdin.readline().strip()
    try:
        line = hash_pin(pin, os.urandom(16))
    except ValueError as exc:
        print(f"dvrlinkd hash-pin: {exc}; nothing printed", file=sys.stderr)
        return EXIT_USAGE
    print(f'pin_hash = "{line}"')
    return EXIT_OK


def _pairing_code(config: DaemonConfig, *, create: bool, uri_only: bool = False) -> int:
    state = DeviceState(config.device.state_dir)
    try:
        key = state.device_key(create=create)
        secret = state.pairing_secret(create=create)
    except StateError as exc:
        print(f"dvrlinkd pairing-code: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    fp = fingerprint(ed25519_public_bytes(key))
    serial = config.device.serial
    uri = PairingUri(serial, secret, fp).format()
    if uri_only:
        print(uri)
        return EXIT_OK
    print(f"serial:       {serial}")
    print(f"pairing code: {format_code(secret)}")
    print(f"fingerprint:  {format_fingerprint(fp)}")
    print(f"pairing URI:  {uri}")
    print("Anyone with the serial and this code can pair a viewer: show it only to the owner.")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
