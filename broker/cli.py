"""``dvrlink-broker``: run the broker, check its config, and administer its registry.

    dvrlink-broker serve --config broker.toml   (or --state-dir DIR; --udp-port/--https-port/--turn-port)
    dvrlink-broker --check-config --config broker.toml
    dvrlink-broker user add|passwd NAME [--password-stdin]
    dvrlink-broker user list | user delete NAME
    dvrlink-broker manifest load FILE                (CSV "serial,public_key_b64" lines, or a JSON object)
    dvrlink-broker device release SERIAL            (forget a binding: the next key to register binds it)
    dvrlink-broker device sms SERIAL [--number +E164 | --clear]  (the number wake SMS go to)
    dvrlink-broker show-key                          (the X25519 key devices pin)
    dvrlink-broker migrate                           (bring the registry's schema up to date)
    dvrlink-broker export FILE | import FILE [--replace]  (move a registry, e.g. SQLite to PostgreSQL)

Admin commands work on the registry (the file, or the PostgreSQL database of ``registry_url``)
directly, also while the broker runs. Only ``serve``, ``user add``, ``manifest load``,
``migrate`` and ``import`` create state (the directory, the registry); every other command
refuses a state directory or registry that is not there.
Exit status: 0 done, 1 failed, 2 usage error, 78 configuration error (also: a state directory,
registry or key that is missing, empty or from a newer version).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import getpass
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from dvrlink.broker.cluster.node import load_fleet_key
from dvrlink.broker.config import BrokerConfig, ConfigError, config_from_mapping, load_config
from dvrlink.broker.registry import (
    RegistryError,
    RegistryStore,
    RegistryUnusableError,
    UserExistsError,
    open_registry,
)
from dvrlink.broker.registry_transfer import import_export, read_export, write_export
from dvrlink.broker.state import (
    REGISTRY_FILE,
    MissingStateError,
    ensure_state_dir,
    read_static_public_key,
    require_state_dir,
)
from dvrlink.broker.tls import CertificatePaths, server_context
from dvrlink.protocol.identity import b64decode_key, b64encode_key, validate_serial, x25519_public_bytes
from dvrlink.protocol.sms_wake import normalise_number

EXIT_FAILED = 1
EXIT_CONFIG = 78
MIN_PASSWORD = 8
ADMIN_STATEMENT_TIMEOUT_S = 600.0  # export and import on PostgreSQL: whole tables at once
NO_AIOHTTP = (
    "dvrlink-broker: aiohttp is not installed, and the broker's HTTPS API needs it; install the "
    "broker extra: pip install 'dvrlink[broker]'"
)
EXPORT_HELP = """\
to move a single-node SQLite broker to PostgreSQL:
  dvrlink-broker export registry.jsonl --config broker.toml       (the SQLite one; stop the broker first)
  dvrlink-broker migrate --config broker.toml --registry-url postgresql://dvrlink@db:5432/dvrlink
  dvrlink-broker import registry.jsonl --config broker.toml --registry-url postgresql://dvrlink@db:5432/dvrlink
then set registry_url in broker.toml and start the brokers.
"""
MANIFEST_FORMAT = """\
file format: either CSV lines "serial,public_key_base64"
  # factory batch 7                (blank lines and # comments are skipped)
  serial,public_key                (an optional header)
  DL-0001,AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
or one JSON object {"DL-0001": "AAECAwQF...Hh8=", ...}.
Each key is base64 of a device's raw 32-byte Ed25519 public key.
A malformed file loads nothing; a serial bound to another key is reported as a conflict (exit 1).
"""


class CommandError(Exception):
    """A command failed in a way the user can fix; the message says how."""


def _version() -> str:
    try:
        return version("dvrlink")
    except PackageNotFoundError:  # pragma: no cover (run from a source tree without installing)
        return "unknown"


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
        epilog=(
            "Exit status: 0 done, 1 failed, 2 usage error, 78 configuration error (also a state "
            "directory, registry or key that is missing, empty or from a newer version)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dvrlink-broker {_version()}")
    parser.add_argument("--check-config", action="store_true", help="check the configuration and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        text: str,
        *,
        state: bool = True,
        epilog: str | None = None,
    ) -> argparse.ArgumentParser:
        return parent.add_parser(
            name,
            parents=[where] if state else [],
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command(sub, "serve", "run the broker until SIGTERM or SIGINT (creates its state at first start)")
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
    command(sub, "check-config", "check the configuration and exit")

    user = command(sub, "user", "viewer accounts: add, list, delete, passwd", state=False).add_subparsers(
        dest="user_command", metavar="ACTION"
    )
    add = command(user, "add", "create an account (creates the registry if there is none)")
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    command(user, "list", "list the accounts, with how many devices each has paired")
    delete = command(user, "delete", "delete an account, its tokens and its pairings")
    delete.add_argument("name")
    passwd = command(user, "passwd", "set a new password for an account (its viewers must log in again)")
    passwd.add_argument("name")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )

    manifest_text = "factory manifest: load serial to device key bindings"
    manifest = command(sub, "manifest", manifest_text, state=False).add_subparsers(
        dest="manifest_command", metavar="ACTION"
    )
    load = command(manifest, "load", "bind serials to keys from a manifest file", epilog=MANIFEST_FORMAT)
    load.add_argument("file", type=Path, help="the manifest (format below)")

    device = command(sub, "device", "device bindings: release a serial", state=False).add_subparsers(
        dest="device_command", metavar="ACTION"
    )
    release = command(device, "release", "forget a serial's key and pairings (device reset or replaced)")
    release.add_argument("serial")
    sms = command(
        device,
        "sms",
        "show or set the number a device's wake SMS go to (docs/sms-wake.md)",
        epilog="Without --number or --clear, prints the device's SMS wake state and changes nothing.",
    )
    sms.add_argument("serial")
    which = sms.add_mutually_exclusive_group()
    which.add_argument("--number", help="the device's number as +E.164 (wins over the one it reports)")
    which.add_argument("--clear", action="store_true", help="forget the operator's number")

    command(sub, "show-key", "print the broker's public X25519 key (base64) that devices pin")

    url_help = 'the registry: "" = SQLite in the state directory, or postgresql://user@host:port/db'
    p = command(sub, "migrate", "apply pending schema migrations to the registry (creates it if missing)")
    p.add_argument("--registry-url", default=None, help=url_help + " (instead of the file's)")
    p = command(
        sub,
        "export",
        "write the whole registry to a file (JSON lines, owner-only: it holds password hashes)",
        epilog=EXPORT_HELP,
    )
    p.add_argument("file", type=Path, help="the export file to write")
    p.add_argument("--registry-url", default=None, help=url_help + " (instead of the file's)")
    p = command(sub, "import", "load an export into the registry, all or nothing", epilog=EXPORT_HELP)
    p.add_argument("file", type=Path, help="a file written by `dvrlink-broker export`")
    p.add_argument("--registry-url", default=None, help=url_help + " (instead of the file's)")
    p.add_argument(
        "--replace", action="store_true", help="delete what the registry holds first (else it must be empty)"
    )
    return parser


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 128 * 1024


def _return_large_blocks_to_the_os() -> None:
    """Fix glibc's mmap threshold at its default (128 KiB) for the broker process.

    glibc raises the threshold to the size of the largest block freed, so after one password
    hash (scrypt, 16 MiB) every later large block (asyncio's 256 KiB TLS buffers, the next
    hashes) comes from the heap and stays in the process after it is freed: RSS climbed by
    ~34 MiB after the first logins and ~20 MiB more after a burst of connections. With the
    threshold fixed, those blocks are mapped and unmapped. A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _config(args: argparse.Namespace) -> BrokerConfig:
    overrides: dict[str, object] = {}
    state_dir = getattr(args, "state_dir", None)
    if state_dir is not None:
        overrides["state_dir"] = str(state_dir.resolve())
    registry_url = getattr(args, "registry_url", None)
    if registry_url is not None:
        overrides["registry_url"] = registry_url
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


def _open_registry(config: BrokerConfig, *, create: bool = False, patient: bool = False) -> RegistryStore:
    """The registry; only with ``create`` are a missing state directory and registry made
    (a PostgreSQL registry needs no state directory, only its database).

    Raises:
        MissingStateError: without ``create``, the state directory does not exist.
        RegistryUnusableError: the registry is missing (without ``create``), empty, or newer.
        RegistryUnavailableError: the PostgreSQL server does not answer.

    ``patient`` is for commands that read or write every row (export, import): their
    PostgreSQL statements may take minutes on a large fleet, not the broker's 1.5 s.
    """
    if not config.registry_url and create:
        ensure_state_dir(config.state_dir)
    elif not config.registry_url:
        require_state_dir(config.state_dir)
    registry = open_registry(
        config.registry_url,
        config.state_dir / REGISTRY_FILE,
        create=create,
        statement_timeout_s=ADMIN_STATEMENT_TIMEOUT_S if patient else None,
    )
    if registry.created:
        print(f"dvrlink-broker: created a new registry {registry.location}", file=sys.stderr)
    return registry


def _migrate(config: BrokerConfig) -> None:
    registry = _open_registry(config, create=True)
    try:
        before, after = registry.migrated_from, registry.schema_version
    finally:
        registry.close()
    if before == after:
        print(f"registry {registry.location}: schema version {after}, up to date")
    else:
        print(f"registry {registry.location}: migrated from schema version {before} to {after}")


def _export(config: BrokerConfig, path: Path) -> None:
    registry = _open_registry(config, patient=True)
    try:
        counts = write_export(registry, path, time.time())
    finally:
        registry.close()
    listed = ", ".join(f"{n} {table}" for table, n in counts.items())
    print(f"exported {registry.location} to {path}: {listed} (keep it private: it holds password hashes)")


def _import(config: BrokerConfig, path: Path, replace: bool) -> None:
    registry = _open_registry(config, create=True, patient=True)
    try:
        export = read_export(path, registry.schema_version)
        import_export(registry, export, replace=replace)
    finally:
        registry.close()
    listed = ", ".join(f"{n} {table}" for table, n in export.counts().items())
    print(f"imported {path} (exported from {export.source}) into {registry.location}: {listed}")


def _read_password(name: str, from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CommandError(
                "stdin is not a terminal, so the password cannot be asked for; pass it on stdin with "
                f"--password-stdin, e.g. printf '%s\\n' \"$PASSWORD\" | dvrlink-broker user ... {name} "
                "--password-stdin"
            )
        try:
            password = getpass.getpass(f"password for {name}: ")
            again = getpass.getpass("again: ")
        except EOFError:
            raise CommandError("no password given (end of input); nothing was changed") from None
        if again != password:
            raise CommandError("the two passwords differ; run the command again")
    if len(password) < MIN_PASSWORD:
        raise CommandError(f"the password is shorter than {MIN_PASSWORD} characters; choose a longer one")
    return password


def _user_add(config: BrokerConfig, name: str, from_stdin: bool) -> None:
    password = _read_password(name, from_stdin)
    registry = _open_registry(config, create=True)
    try:
        registry.create_user(name, password, time.time())
    except (ValueError, UserExistsError) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        registry.close()
    print(f"user {name} created")


def _user_list(config: BrokerConfig) -> None:
    registry = _open_registry(config)
    try:
        users = registry.users()
    finally:
        registry.close()
    for user in users:
        created = datetime.datetime.fromtimestamp(user.created_at, datetime.UTC).strftime("%Y-%m-%d")
        print(f"{user.username}  created {created}  {user.paired_devices} paired devices")
    if not users:
        print("dvrlink-broker: no accounts; create one with `dvrlink-broker user add NAME`", file=sys.stderr)


def _user_delete(config: BrokerConfig, name: str) -> None:
    registry = _open_registry(config)
    try:
        deleted = registry.delete_user(name)
    finally:
        registry.close()
    if not deleted:
        raise CommandError(f"no account {name!r}; see `dvrlink-broker user list`")
    print(f"user {name} deleted, with its tokens and pairings")


def _user_passwd(config: BrokerConfig, name: str, from_stdin: bool) -> None:
    registry = _open_registry(config)
    try:
        if registry.password_record(name) is None:
            raise CommandError(f"no account {name!r}; see `dvrlink-broker user list`, or `user add` it")
        changed = registry.set_password(name, _read_password(name, from_stdin))
    finally:
        registry.close()
    if not changed:
        raise CommandError(f"account {name!r} was deleted meanwhile; nothing was changed")
    print(f"password of {name} changed; its viewers must log in again")


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
    registry = _open_registry(config, create=True)
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


def _device_sms(config: BrokerConfig, serial: str, number: str | None, clear: bool) -> int:
    from dvrlink.broker.sms.wake import sleeps_by_sms, wake_number  # noqa: PLC0415 (only this command)

    if number is not None:
        normalised = normalise_number(number)
        if normalised is None:
            raise CommandError(
                f"--number {number!r} is not a phone number; write it as +E.164, e.g. +491701234567"
            )
        number = normalised
    registry = _open_registry(config)
    try:
        if (number is not None or clear) and not registry.set_sms_number(serial, number):
            raise CommandError(
                f"serial {serial} is not bound; it must register (or be in the manifest) first"
            )
        device = registry.device(serial)
    finally:
        registry.close()
    if device is None:
        raise CommandError(f"serial {serial} is not bound; it must register (or be in the manifest) first")
    reported = (device.report or {}).get("sms_wake_number")
    reported_text = reported if isinstance(reported, str) and reported else "-"
    print(
        f"{serial}: sms-wake {'yes' if sleeps_by_sms(device) else 'no'}, wake number "
        f"{wake_number(device) or '(none)'} (operator: {device.sms_number or '-'}, reported: "
        f"{reported_text}), last counter {device.sms_counter or '-'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dvrlink-broker``; returns the exit status."""
    if importlib.util.find_spec("aiohttp") is None:
        print(NO_AIOHTTP, file=sys.stderr)
        return EXIT_FAILED
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
            from dvrlink.broker.app import serve  # noqa: PLC0415 (aiohttp is checked above)

            logging.basicConfig(
                level=config.log_level_number, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
            )
            _return_large_blocks_to_the_os()
            asyncio.run(serve(config))
            return 0
        if command == "user" and args.user_command == "add":
            _user_add(config, args.name, args.password_stdin)
            return 0
        if command == "user" and args.user_command == "list":
            _user_list(config)
            return 0
        if command == "user" and args.user_command == "delete":
            _user_delete(config, args.name)
            return 0
        if command == "user" and args.user_command == "passwd":
            _user_passwd(config, args.name, args.password_stdin)
            return 0
        if command == "manifest" and args.manifest_command == "load":
            return _manifest_load(config, args.file)
        if command == "device" and args.device_command == "release":
            return _device_release(config, args.serial)
        if command == "device" and args.device_command == "sms":
            return _device_sms(config, args.serial, args.number, args.clear)
        if command == "migrate":
            _migrate(config)
            return 0
        if command == "export":
            _export(config, args.file)
            return 0
        if command == "import":
            _import(config, args.file, args.replace)
            return 0
        if command == "show-key":
            if config.fleet_key_file is not None:  # the key every node of the fleet serves
                print(b64encode_key(x25519_public_bytes(load_fleet_key(config.fleet_key_file))))
            else:
                print(b64encode_key(read_static_public_key(config.state_dir)))
            return 0
    except (MissingStateError, RegistryUnusableError) as exc:
        print(f"dvrlink-broker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (CommandError, RegistryError, OSError, ValueError, RuntimeError) as exc:
        print(f"dvrlink-broker: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    parser.print_usage(sys.stderr)
    print(f"dvrlink-broker: {command}: give an action (see --help)", file=sys.stderr)
    return 2
