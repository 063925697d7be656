"""Broker nodes of one fleet on loopback: the shared files (fleet key, TURN secret) and a node's
config file, for the cluster tests and benchmarks (``hil/redis_server.py`` runs their Redis)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.protocol.identity import private_key_to_pem
from hil.loopback import Broker, Daemon, broker_command, make_daemon, unused_tcp_port


def fleet_files(root: Path) -> tuple[Path, Path]:
    """A new fleet key (PEM, mode 0600) and TURN secret under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    key = root / "fleet_key.pem"
    key.write_bytes(private_key_to_pem(X25519PrivateKey.generate()))
    key.chmod(0o600)
    secret = root / "turn_secret"
    secret.write_text(os.urandom(24).hex() + "\n")
    secret.chmod(0o600)
    return key, secret


def node_config(root: Path, name: str, redis_url: str, fleet_key: Path, turn_secret: Path) -> Path:
    """Write ``root/name.toml`` for node ``name`` (state in ``root/name``, free ports on
    127.0.0.1, relays to loopback allowed, DEBUG log) and return its path."""
    state = root / name
    state.mkdir(parents=True, exist_ok=True)
    config = root / f"{name}.toml"
    lines = [
        f'state_dir = "{state}"',
        'udp_host = "127.0.0.1"',
        "udp_port = 0",
        "presence_tcp_port = 0",
        'https_host = "127.0.0.1"',
        "https_port = 0",
        "turn_udp_port = 0",
        "turn_tcp_port = 0",
        "turn_relay_port_min = 0",
        "turn_relay_port_max = 0",
        "turn_allow_loopback_peers = true",
        f'turn_secret_file = "{turn_secret}"',
        f'redis_url = "{redis_url}"',
        f'node_id = "{name}"',
        f'fleet_key_file = "{fleet_key}"',
        'log_level = "DEBUG"',
    ]
    config.write_text("\n".join(lines) + "\n")
    return config


def fleet_daemon(
    root: Path, serial: str, nodes: Sequence[Broker], keepalive_interval: float = 2.0, extra_toml: str = ""
) -> Daemon:
    """A daemon config under ``root/serial`` whose ``[broker] hosts`` lists every node of ``nodes``
    in order (it registers with the first that answers and moves on silence), pinning the fleet key.
    It stands for a recorder far from the viewer: LAN discovery is off, so the viewer on this host
    reaches it through the brokers (unless ``extra_toml`` has a ``[lan]`` table)."""
    if "[lan]" not in extra_toml:
        extra_toml += "\n[lan]\ndiscovery = false\n"
    daemon = make_daemon(root, serial, nodes[0], keepalive_interval=keepalive_interval, extra_toml=extra_toml)
    hosts = ", ".join(f'"127.0.0.1:{node.udp_port}"' for node in nodes)
    text = daemon.config.read_text()
    text = text.replace('host = "127.0.0.1"\n', f"hosts = [{hosts}]\n", 1)
    text = text.replace(f"port = {nodes[0].udp_port}\n", "", 1)
    daemon.config.write_text(text)
    return daemon


def node_in_use(daemon: Daemon) -> str | None:
    """The node (``127.0.0.1:PORT``) the daemon is registered with, from its status file; None
    while it is not online."""
    status = daemon.status()
    if not status or status.get("state") != "online":
        return None
    node = status.get("node")
    return str(node) if node else None


def fleet_configs(
    root: Path, redis_url: str, registry_url: str | None = None, names: Sequence[str] = ("a", "b", "c")
) -> dict[str, Path]:
    """Config files of the nodes ``names`` of one new fleet (``fleet_files`` under ``root/fleet``),
    on one Redis and, with ``registry_url``, one PostgreSQL registry."""
    key, secret = fleet_files(root / "fleet")
    configs = {}
    for name in names:
        config = node_config(root, name, redis_url, key, secret)
        if registry_url is not None:
            config.write_text(config.read_text() + f'registry_url = "{registry_url}"\n')
        configs[name] = config
    return configs


def add_fleet_user(config: Path, name: str, password: str) -> None:
    """A viewer account, made with the admin command of the node configured in ``config``."""
    subprocess.run(
        broker_command("user", "add", name, "--password-stdin", "--config", str(config)),
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=60,
    )


def serve_page(root: Path, page: bytes) -> tuple[subprocess.Popen[bytes], int]:
    """An HTTP server on a free loopback port serving ``page`` as /index.html (the recorder's web
    page behind a forward); stop it with ``terminate``."""
    site = root / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "index.html").write_bytes(page)
    port = unused_tcp_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def fetch_page(port: int) -> bytes:
    """/index.html through a forward's local ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=20) as reply:
        body: bytes = reply.read()
        return body
