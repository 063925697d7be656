"""The port-mapping discovery bytes that more than one module sends: NAT-PMP's address request
and numbers (RFC 6886), and SSDP's search for an Internet Gateway Device (UPnP Device
Architecture 1.1, section 1.3.2). Sans-I/O, and standard library only, below the XML: the idle
daemon imports it through ``netcheck`` (``tests/test_daemon_lazy_imports.py``), while
``protocol/upnp_igd.py`` (which needs ``xml.etree``) loads only when a session maps a port.

Users: ``protocol/natpmp.py`` and ``protocol/upnp_igd.py`` (the mapping clients) and
``protocol/netcheck.py`` (the netcheck probes, which map nothing).
"""

from __future__ import annotations

PORT = 5351
"""UDP port of NAT-PMP and PCP on the gateway (RFC 6886 section 3, RFC 6887 section 19.1)."""
NATPMP_VERSION = 0
OP_ADDRESS = 0
"""NAT-PMP opcode: the gateway's external address."""
OP_MAP_UDP = 1
"""NAT-PMP opcode: map a UDP port."""
RESPONSE_BIT = 0x80
"""Set in a NAT-PMP (and PCP) response's opcode byte."""

SSDP_ADDRESS = ("239.255.255.250", 1900)
"""SSDP's IPv4 multicast group and port."""
IGD_V1 = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
IGD_V2 = "urn:schemas-upnp-org:device:InternetGatewayDevice:2"
SEARCH_TARGETS = (IGD_V2, IGD_V1)
"""The IGD versions a mapping client searches for, newest first."""
MX_RANGE = (1, 5)
"""Seconds an M-SEARCH may ask answers to spread over (UDA 1.1: 1 to 5)."""


def address_request() -> bytes:
    """The 2-byte NAT-PMP external address request (RFC 6886 section 3.2): version 0, opcode 0.
    A PCP server answers it with a version-2 UNSUPP_VERSION response (RFC 6887 section 9)."""
    return bytes([NATPMP_VERSION, OP_ADDRESS])


def msearch(target: str = IGD_V1, mx: int = 2) -> bytes:
    """An SSDP ``M-SEARCH`` for ``target``, answers spread over ``mx`` seconds (clamped to
    :data:`MX_RANGE`)."""
    mx = max(MX_RANGE[0], min(MX_RANGE[1], mx))
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_ADDRESS[0]}:{SSDP_ADDRESS[1]}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {target}\r\n"
        "\r\n"
    ).encode("ascii")


def ssdp_headers(lines: list[str]) -> dict[str, str]:
    """An SSDP answer's header lines (after its status line) as ``{lower-case name: value}``; a
    line without a colon is skipped, a repeated name keeps its last value."""
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers
