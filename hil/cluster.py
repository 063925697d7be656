"""Broker nodes of one fleet on loopback: the shared files (fleet key, TURN secret) and a node's
config file, for the cluster tests and benchmarks (``hil/redis_server.py`` runs their Redis)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.protocol.identity import private_key_to_pem


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
