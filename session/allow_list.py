"""The forward allow-list: which ``host:port`` targets a device forwards to, compared the same way
on both ends (the device decides; the viewer warns before it asks).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dvrlink.store.toml_text import toml_value

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class AllowedTarget:
    """One ``host:port`` the device forwards to; ``host`` is normalised (see ``parse_allowed_target``)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _normalize_host(host: str) -> str:
    """An IP literal in its canonical form, or a lower-case DNS name.

    Raises:
        ValueError: not an IP address or host name, or an unspecified address (0.0.0.0, ::).
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        name = text.lower().rstrip(".")
        if not name or len(name) > 253 or not all(_HOST_LABEL.match(p) for p in name.split(".")):
            raise ValueError(f"{toml_value(host)} is not an IP address or host name") from None
        return name
    if ip.is_unspecified:
        raise ValueError(
            f"{toml_value(host)} is the unspecified address; write 127.0.0.1 for the device itself"
        )
    return str(ip)


def parse_allowed_target(value: object) -> AllowedTarget:
    """Parse one ``forward`` entry: ``"HOST:PORT"``, ``"[IPV6]:PORT"``, or a bare port (127.0.0.1).

    Raises:
        ValueError: malformed; the message says what was wrong (without naming the file).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        host, port_text = "127.0.0.1", str(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            host, port_text = "127.0.0.1", text
        elif text.startswith("["):
            end = text.find("]")
            if end < 0 or text[end + 1 : end + 2] != ":":
                raise ValueError("an IPv6 target is written [ADDRESS]:PORT")
            host, port_text = text[1:end], text[end + 2 :]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or ":" in host:
                raise ValueError("expected HOST:PORT (IPv6 in brackets: [::1]:554)")
    else:
        raise ValueError('expected a string "HOST:PORT" or a port number')
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {toml_value(port_text)} must be a number from 1 to 65535")
    return AllowedTarget(_normalize_host(host), int(port_text))


def allows(allowed: Sequence[AllowedTarget], host: str, port: int) -> bool:
    """True if ``host:port`` is in ``allowed`` (host compared after normalising)."""
    try:
        wanted = AllowedTarget(_normalize_host(host), port)
    except ValueError:
        return False
    return wanted in allowed
