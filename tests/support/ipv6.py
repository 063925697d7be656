"""Whether this machine has IPv6 on loopback, for tests that need ``::1``."""

from __future__ import annotations

import socket


def has_ipv6_loopback() -> bool:
    """True when a UDP socket can bind ``::1`` here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True
