"""Servers under test, started as pinned child processes: dvrlink-broker and coturn."""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    LOOPBACK,
    SERVER_CORE,
    BenchError,
    child_process,
    free_udp_port,
    log_tail,
    venv_script,
    wait_until,
)
from dvrlink.protocol.identity import b64decode_key

BROKER_START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class BrokerProcess:
    """A running dvrlink-broker, as its broker.json describes it."""

    pid: int
    udp: tuple[str, int]
    https_port: int
    public_key: bytes
    cert: Path
    state_dir: Path
    log: Path

    def online_count(self, timeout: float = 10.0) -> int | None:
        """``online`` from GET /v1/health, or None if the API did not answer."""
        context = ssl.create_default_context(cafile=str(self.cert))
        url = f"https://{LOOPBACK}:{self.https_port}/v1/health"
        try:
            with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
                return int(json.load(response)["online"])
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            return None


def write_broker_config(
    state_dir: Path, log_level: str = "INFO", udp_port: int = 0, reuse_port: bool = False
) -> Path:
    """A broker.toml that binds both sockets to loopback on free ports (the presence port:
    ``udp_port``, shared with ``SO_REUSEPORT`` when ``reuse_port``)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir.parent / f"{state_dir.name}.toml"
    path.write_text(
        f'state_dir = "{state_dir}"\n'
        f'udp_host = "{LOOPBACK}"\n'
        f"udp_port = {udp_port}\n"
        f"udp_reuse_port = {'true' if reuse_port else 'false'}\n"
        f'https_host = "{LOOPBACK}"\n'
        "https_port = 0\n"
        "turn_udp_port = 0\n"
        "turn_tcp_port = 0\n"
        "stun_rate_per_s = 0\n"  # the STUN benchmark measures the responder, not the rate limit
        f'log_level = "{log_level}"\n'
    )
    return path


@contextlib.contextmanager
def broker_process(
    work_dir: Path,
    core: int | None = SERVER_CORE,
    name: str = "broker",
    udp_port: int = 0,
    reuse_port: bool = False,
) -> Iterator[BrokerProcess]:
    """Start ``dvrlink-broker serve`` (pinned to ``core``) and wait for its broker.json. ``name``
    names its state folder and log (several brokers in one ``work_dir``); ``udp_port`` and
    ``reuse_port``: see ``write_broker_config``.

    Raises:
        BenchError: the broker is not installed, exits, or writes no broker.json in time.
    """
    state_dir = work_dir / f"{name}-state"
    config = write_broker_config(state_dir, udp_port=udp_port, reuse_port=reuse_port)
    log = work_dir / f"{name}.log"
    info_path = state_dir / "broker.json"
    argv = [venv_script("dvrlink-broker"), "serve", "--config", str(config)]
    with child_process(argv, log, core=core) as proc:

        def ready() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"dvrlink-broker exited with status {proc.returncode}:\n{log_tail(log)}")
            return info_path.exists()

        wait_until(ready, BROKER_START_TIMEOUT_S, f"{info_path} (dvrlink-broker start)")
        info = json.loads(info_path.read_text())
        yield BrokerProcess(
            pid=int(info["pid"]),
            udp=(LOOPBACK, int(info["udp_port"])),
            https_port=int(info["https_port"]),
            public_key=b64decode_key(info["public_key"], "public_key in broker.json"),
            cert=Path(info["cert"]),
            state_dir=state_dir,
            log=log,
        )


@dataclass(frozen=True, slots=True)
class CoturnProcess:
    """A running coturn STUN server."""

    pid: int
    udp: tuple[str, int]


def coturn_available() -> bool:
    """True if ``turnserver`` is on PATH."""
    return shutil.which("turnserver") is not None


@contextlib.contextmanager
def coturn_process(work_dir: Path, core: int | None = SERVER_CORE) -> Iterator[CoturnProcess]:
    """Start coturn as a STUN-only server on a free loopback port, one relay thread, no config file.

    ``-c /dev/null`` because the packaged config file disables features; TCP, TLS and DTLS
    listeners are off so only the UDP STUN path is measured.

    Raises:
        BenchError: coturn is not installed or does not start.
    """
    if not coturn_available():
        raise BenchError("turnserver (coturn) is not installed; install the Debian package coturn")
    port = free_udp_port()
    log = work_dir / "turnserver.out"
    argv = [
        "turnserver",
        "-c",
        "/dev/null",
        "-n",
        "--listening-ip",
        LOOPBACK,
        "--listening-port",
        str(port),
        "--stun-only",
        "--no-cli",
        "--relay-threads",
        "1",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--userdb",
        str(work_dir / "turndb"),
        "--pidfile",
        str(work_dir / "turnserver.pid"),
        "--log-file",
        str(work_dir / "turnserver.log"),
        "--simple-log",
    ]
    with child_process(argv, log, core=core) as proc:
        yield CoturnProcess(proc.pid, (LOOPBACK, port))
        if proc.poll() is not None:
            raise BenchError(f"turnserver exited with status {proc.returncode}:\n{log_tail(log)}")
