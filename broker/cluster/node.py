"""A broker node's place in its fleet: its id, the Redis key and channel names, the fleet key.

Redis layout (every name short, since presence keys are per online device):

=================  ==========================  ========================================
key                value                       expiry
=================  ==========================  ========================================
``p:<serial>``     node id holding presence    2 keepalive intervals (refreshed at half)
``n:<node id>``    heartbeat (Unix ms)         ``NODE_TTL_MS``, renewed every second
``s:<session>``    session record (JSON)       the session's remaining ``session_ttl_s``
``l:<user>|<ip>``  sorted set of failure times ``login_window_s``
``r:<node id>``    pub/sub channel: invites to that node and outcomes back to it
``e:presence``     pub/sub channel: every node's online/offline changes (dashboards)
``m``              hash: node id -> counters   fields rewritten every 2 s, stale after
                   of its dashboard (JSON)     10 s (``cluster/fleet.py``)
``w:<sha256 hex>`` a dashboard login (JSON:    the login's ``dashboard_session_ttl_s``
                   user, CSRF token, expiry)   (``cluster/logins.py``)
=================  ==========================  ========================================
"""

from __future__ import annotations

import socket
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.protocol.identity import x25519_private_from_pem

PRESENCE_PREFIX = "p:"
NODE_PREFIX = "n:"
CHANNEL_PREFIX = "r:"
SESSION_PREFIX = "s:"
LOGIN_PREFIX = "l:"
DASHBOARD_LOGIN_PREFIX = "w:"
NODE_TTL_MS = 10_000
"""A node's heartbeat key lives this long without renewal."""
NODE_ID_MAX = 64


def presence_key(serial: str) -> str:
    """The Redis key naming the node that holds ``serial``'s presence session."""
    return PRESENCE_PREFIX + serial


def node_key(node_id: str) -> str:
    """The Redis key of a node's heartbeat."""
    return NODE_PREFIX + node_id


def node_channel(node_id: str) -> str:
    """The pub/sub channel a node listens on for routed invites and their outcomes."""
    return CHANNEL_PREFIX + node_id


def session_key(session_hex: str) -> str:
    """The Redis key of a session record."""
    return SESSION_PREFIX + session_hex


def default_node_id(udp_port: int) -> str:
    """The node id when the configuration gives none: host name and bound presence port, unique
    on one host and stable across restarts with a fixed port."""
    return f"{socket.gethostname()}:{udp_port}"[:NODE_ID_MAX]


def load_fleet_key(path: Path) -> X25519PrivateKey:
    """The fleet's static X25519 key, which every node of the fleet serves and devices pin.

    It is never made here: a node that made its own would split the fleet silently.

    Raises:
        ValueError: the file is missing, unreadable or not an X25519 PEM key (the message says
            how to provide it).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(
            f"fleet_key_file {path} does not exist; copy the fleet's key there (e.g. broker_key.pem from "
            "the state_dir of the fleet's first node, mode 0600): every node must serve the key devices pin"
        ) from None
    except OSError as exc:
        raise ValueError(
            f"cannot read fleet_key_file {path}: {exc.strerror}; check its owner and mode (0600)"
        ) from exc
    return x25519_private_from_pem(data, str(path))
