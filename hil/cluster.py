"""Broker nodes of one fleet on loopback: the shared files (fleet key, TURN secret) and a node's
config file, for the cluster tests and benchmarks (``hil/redis_server.py`` runs their Redis)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.protocol.identity import private_key_to_pem
from hil.loopback import Broker, Daemon, make_daemon


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
    in order (it registers with the first that answers and moves on silence), pinning the fleet key."""
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
