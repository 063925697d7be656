"""``dvrlink-broker``: run the broker, check its config, and administer its registry.

    dvrlink-broker serve --config broker.toml   (or --state-dir DIR; --udp-port/--https-port/--turn-port)
    dvrlink-broker --check-config --config broker.toml
    dvrlink-broker user add NAME [--password-stdin]
    dvrlink-broker manifest load FILE                (CSV "serial,public_key_b64" lines, or a JSON object)
    dvrlink-broker device release SERIAL            (forget a binding: the next key to register binds it)
    dvrlink-broker show-key                          (the X25519 key devices pin)

Admin commands work on the registry file directly, also while the broker runs.
Exit status: 0 done, 1 failed, 2 usage error, 78 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dvrlink.broker.app import serve
from dvrlink.broker.config import BrokerConfig, ConfigError, config_from_mapping, load_config
from dvrlink.broker.registry import Registry, RegistryError, UserExistsError
from dvrlink.broker.state import REGISTRY_FILE, ensure_state_dir, static_public_key
from dvrlink.broker.tls import CertificatePaths, server_context
from dvrlink.protocol.identity import b64decode_key, b64encode_key, validate_serial

EXIT_FAILED = 1
EXIT_CONFIG = 78
MIN_PASSWORD = 8


class CommandError(Exception):
    """A command failed in a way the user can fix; the message says how."""


def _parser() -> argparse.ArgumentParser:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="broker TOML configuration file"
    )
    where.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="state directory (instead of, or over, the file's)",
    )
    parser = argparse.ArgumentParser(
        prog="dvrlink-broker",
        parents=[where],
        description="dvrlink broker: device registry, presence, and the viewer API.",
        epilog="Exit status: 0 done, 1 failed, 2 usage error, 78 configuration error.",
    )
    parser.add_argument("--check-config", action="store_true", help="check the configuration and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", parents=[where], help="run the broker")
    p.add_argument("--udp-port", type=int, default=None, help="presence/STUN UDP port (0 = free port)")
    p.add_argument("--https-port", type=int, default=None, help="viewer API port (0 = free port)")
    p.add_argument(
        "--presence-tcp-port",
        type=int,
        default=None,
        help="presence over TCP/TLS port, for devices where UDP is blocked (0 = free port; default 443)",
    )
    p.add_argument(
        "--turn-port", type=int, default=None, help="built-in TURN relay UDP and TCP port (0 = free ports)"
    )
    p.add_argument(
        "--turn-allow-loopback-peers",
        action="store_true",
        default=None,
        help="let relays reach loopback and link-local peers (loopback tests and demos only)",
    )
    sub.add_parser("check-config", parents=[where], help="check the configuration and exit")

    user = sub.add_parser("user", help="manage viewer accounts").add_subparsers(
        dest="user_command", metavar="ACTION"
    )
    add = user.add_parser("add", parents=[where], help="create an account")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )

    manifest = sub.add_parser("manifest", help="factory manifest").add_subparsers(
        dest="manifest_command", metavar="ACTION"
    )
    load = manifest.add_parser("load", parents=[where], help="bind serials to keys from a manifest file")
    load.add_argument("file", type=Path)

    device = sub.add_parser("device", help="device bindings").add_subparsers(
        dest="device_command", metavar="ACTION"
    )
    release = device.add_parser(
        "release", parents=[where], help="forget a serial's key and pairings (device reset or replaced)"
    )
    release.add_argument("serial")

    sub.add_parser(
        "show-key", parents=[where], help="print the broker's public X25519 key (base64) for devices"
    )
    return parser


def _config(args: argparse.Namespace) -> BrokerConfig:
    overrides: dict[str, object] = {}
    state_dir = getattr(args, "state_dir", None)
    if state_dir is not None:
        overrides["state_dir"] = str(state_dir.resolve())
    for name in ("udp_port", "https_port", "presence_tcp_port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    turn_port = getattr(args, "turn_port", None)
    if turn_port is not None:
        overrides["turn_udp_port"] = overrides["turn_tcp_port"] = turn_port
    if getattr(args, "turn_allow_loopback_peers", None):
        overrides["turn_allow_loopback_peers"] = True
    config_file = getattr(args, "config", None)
    if config_file is not None:
        return load_config(config_file, overrides)
    if state_dir is None:
        raise ConfigError("no configuration: give --config FILE or --state-dir DIR")
    return config_from_mapping(overrides, source="command line")


def _open_registry(config: BrokerConfig) -> Registry:
    ensure_state_dir(config.state_dir)
    return Registry(config.state_dir / REGISTRY_FILE)


def _read_password(name: str, from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise CommandError("the two passwords differ; run the command again")
    if len(password) < MIN_PASSWORD:
        raise CommandError(f"the password is shorter than {MIN_PASSWORD} characters; choose a longer one")
    return password


def _user_add(config: BrokerConfig, name: str, from_stdin: bool) -> None:
    password = _read_password(name, from_stdin)
    registry = _open_registry(config)
    try:
        registry.create_user(name, password, time.time())
    except (ValueError, UserExistsError) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        registry.close()
    print(f"user {name} created")


def parse_manifest(text: str, source: str) -> dict[str, bytes]:
    """Parse a manifest: a JSON object ``{serial: base64 key}``, or CSV lines ``serial,base64 key``
    (blank lines, ``#`` comments and a ``serial,public_key`` header are skipped).

    Raises:
        ValueError: a line or entry is malformed; the message names ``source`` and the line.
    """
    entries: dict[str, bytes] = {}
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from exc
        items = [(str(k), v, f"{source}: entry {k!r}") for k, v in doc.items()]
    else:
        items = []
        for number, raw_line in enumerate(text.splitlines(), start=1):
            line = raw_line.strip()
            if not line or line.startswith("#") or line.replace(" ", "").lower() == "serial,public_key":
                continue
            fields = [f.strip() for f in line.split(",")]
            if len(fields) != 2:
                raise ValueError(f"{source}:{number}: expected 'serial,public_key_base64', got {line!r}")
            items.append((fields[0], fields[1], f"{source}:{number}"))
    for serial, key, where in items:
        if not isinstance(key, str):
            raise ValueError(f"{where}: the key must be a base64 string")
        try:
            validate_serial(serial)
            raw = b64decode_key(key, f"public key of {serial}")
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        if serial in entries and entries[serial] != raw:
            raise ValueError(f"{where}: serial {serial} appears twice with different keys")
        entries[serial] = raw
    return entries


def _manifest_load(config: BrokerConfig, path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read manifest {path}: {exc}") from exc
    try:
        entries = parse_manifest(text, str(path))
    except ValueError as exc:
        raise CommandError(f"{exc}; nothing was loaded") from exc
    registry = _open_registry(config)
    try:
        report = registry.load_manifest(entries, time.time())
    finally:
        registry.close()
    print(
        f"manifest {path}: {len(report.added)} added, {len(report.confirmed)} confirmed (bound on first use "
        f"to the same key), {len(report.unchanged)} unchanged, {len(report.conflicts)} conflicts"
    )
    for conflict in report.conflicts:
        print(f"conflict: {conflict.describe()}", file=sys.stderr)
    return EXIT_FAILED if report.conflicts else 0


def _device_release(config: BrokerConfig, serial: str) -> int:
    registry = _open_registry(config)
    try:
        released = registry.release_device(serial)
    finally:
        registry.close()
    if not released:
        print(f"dvrlink-broker: serial {serial} is not bound; nothing to release", file=sys.stderr)
        return EXIT_FAILED
    print(f"serial {serial} released: the next device to register under it binds it; its pairings are gone")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dvrlink-broker``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    command = "check-config" if args.check_config else args.command
    if command is None:
        parser.print_usage(sys.stderr)
        print("dvrlink-broker: give a command, e.g. serve --state-dir DIR", file=sys.stderr)
        return 2
    try:
        config = _config(args)
        if command == "check-config" and config.tls_cert is not None and config.tls_key is not None:
            server_context(CertificatePaths(config.tls_cert, config.tls_key))
    except (ConfigError, ValueError) as exc:
        print(f"dvrlink-broker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if command == "check-config":
            print(
                f"configuration OK: state_dir={config.state_dir} udp={config.udp_host}:{config.udp_port} "
                f"https={config.https_host}:{config.https_port} "
                + (
                    f"turn={config.udp_host}:{config.turn_udp_port}/udp,{config.turn_tcp_port}/tcp"
                    if config.turn_enabled
                    else "turn=off"
                )
            )
            return 0
        if command == "serve":
            logging.basicConfig(
                level=config.log_level_number, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
            )
            asyncio.run(serve(config))
            return 0
        if command == "user" and args.user_command == "add":
            _user_add(config, args.name, args.password_stdin)
            return 0
        if command == "manifest" and args.manifest_command == "load":
            return _manifest_load(config, args.file)
        if command == "device" and args.device_command == "release":
            return _device_release(config, args.serial)
        if command == "show-key":
            ensure_state_dir(config.state_dir)
            print(b64encode_key(static_public_key(config.state_dir)))
            return 0
    except (CommandError, RegistryError, OSError, ValueError, RuntimeError) as exc:
        print(f"dvrlink-broker: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    parser.print_usage(sys.stderr)
    print(f"dvrlink-broker: {command}: give an action (see --help)", file=sys.stderr)
    return 2
