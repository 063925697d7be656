"""UPnP Internet Gateway Device: the messages of a port mapping client. Sans-I/O.

What a client needs to map one UDP port on a home router that speaks UPnP-IGD (v1 or v2):

1. SSDP discovery: an ``M-SEARCH`` datagram to 239.255.255.250:1900; routers answer with an
   HTTP-like datagram whose ``LOCATION`` header is the URL of their device description.
2. The device description (XML): the control URL of the ``WANIPConnection`` (or
   ``WANPPPConnection``) service.
3. SOAP calls to that URL: ``GetExternalIPAddress``, ``AddPortMapping`` (renewed by calling it
   again before ``NewLeaseDuration`` runs out) and ``DeletePortMapping``.

This module builds and parses those messages (the search itself, :func:`msearch`, is
``protocol/port_mapping_wire.py``'s, which netcheck shares without loading the XML parser);
``session.port_mapping`` moves them. The router is
on the LAN but not trusted: every parser bounds its input, refuses XML with a DTD (no entity
expansion), and raises ``UpnpError`` with what was wrong instead of anything else.
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from dvrlink.protocol.port_mapping_wire import SEARCH_TARGETS, SSDP_ADDRESS, msearch
from dvrlink.protocol.port_mapping_wire import ssdp_headers as _headers

__all__ = [
    "CONFLICT_IN_MAPPING_ENTRY",
    "MAX_DOCUMENT",
    "NO_SUCH_ENTRY_IN_ARRAY",
    "ONLY_PERMANENT_LEASES_SUPPORTED",
    "SEARCH_TARGETS",
    "SERVICE_TYPES",
    "SSDP_ADDRESS",
    "Service",
    "UpnpError",
    "add_port_mapping_arguments",
    "delete_port_mapping_arguments",
    "http_request",
    "msearch",
    "parse_description",
    "parse_http_response",
    "parse_search_response",
    "parse_soap_response",
    "soap_body",
    "soap_request",
]

SERVICE_TYPES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
"""Services that map ports, in order of preference."""
MAX_DOCUMENT = 64 * 1024
"""Largest description or SOAP response accepted (real ones are a few kB)."""
CONFLICT_IN_MAPPING_ENTRY = 718
ONLY_PERMANENT_LEASES_SUPPORTED = 725
NO_SUCH_ENTRY_IN_ARRAY = 714
_SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
_CONTROL_NS = "urn:schemas-upnp-org:control-1-0"


class UpnpError(Exception):
    """A UPnP message was malformed, or the router answered with an error (``code`` is the UPnP
    error code, 0 for anything else)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Service:
    """A port-mapping service of an IGD: its type and absolute control URL."""

    service_type: str
    control_url: str


def parse_search_response(data: bytes) -> str | None:
    """The description URL (``LOCATION``) in an SSDP answer from an IGD, or None when the datagram
    is not one (another device, a NOTIFY, garbage)."""
    if len(data) > 8192:
        return None
    lines = data.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.") or " 200" not in lines[0]:
        return None
    headers = _headers(lines[1:])
    target = headers.get("st", "")
    if (
        "InternetGatewayDevice" not in target
        and "WANIPConnection" not in target
        and "WANPPPConnection" not in target
    ):
        return None
    location = headers.get("location", "")
    try:
        parsed = urllib.parse.urlsplit(location)
        parsed.port  # noqa: B018 (raises ValueError on a port out of range)
    except ValueError:
        return None
    if parsed.scheme != "http" or not parsed.hostname:
        return None
    return location


def _parse_xml(body: bytes, what: str) -> ET.Element:
    if len(body) > MAX_DOCUMENT:
        raise UpnpError(f"{what} is {len(body)} bytes, more than {MAX_DOCUMENT}: not a router's answer")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise UpnpError(f"{what} has a DTD: refused (no XML entities from the network)")
    try:
        return ET.fromstring(body)  # noqa: S314 (no DTD, so no entity expansion: checked above)
    except ET.ParseError as exc:
        raise UpnpError(f"{what} is not well-formed XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_description(body: bytes, location: str) -> Service:
    """The preferred port-mapping service of the device description ``body`` fetched from
    ``location``.

    Raises:
        UpnpError: malformed, or no WANIPConnection/WANPPPConnection service in it.
    """
    root = _parse_xml(body, f"the device description at {location}")
    base = location
    found: dict[str, str] = {}
    for element in root.iter():
        name = _local(element.tag)
        if name == "URLBase" and element.text:
            base = element.text.strip()
        elif name == "service":
            fields = {_local(child.tag): (child.text or "").strip() for child in element}
            kind, control = fields.get("serviceType", ""), fields.get("controlURL", "")
            if kind in SERVICE_TYPES and control and kind not in found:
                found[kind] = control
    for kind in SERVICE_TYPES:
        if kind in found:
            try:
                url = urllib.parse.urljoin(base, found[kind])
                parts = urllib.parse.urlsplit(url)
                parts.port  # noqa: B018 (raises ValueError on a port out of range)
            except ValueError:
                raise UpnpError(f"the control URL {found[kind]!r} of {location} is malformed") from None
            if parts.scheme != "http" or not parts.hostname:
                raise UpnpError(f"the control URL {url!r} of {location} is not http")
            return Service(kind, url)
    raise UpnpError(f"{location} describes no WANIPConnection or WANPPPConnection service: not an IGD")


def soap_body(service_type: str, action: str, arguments: dict[str, str]) -> bytes:
    """The SOAP envelope that calls ``action`` with ``arguments`` (in the given order)."""
    args = "".join(f"<{k}>{_escape(v)}</{k}>" for k, v in arguments.items())
    return (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{_SOAP_NS}" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action} xmlns:u="{service_type}">{args}</u:{action}></s:Body></s:Envelope>\r\n'
    ).encode()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def http_request(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 request for ``url`` (``Connection: close``: one request per connection)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def soap_request(service: Service, action: str, arguments: dict[str, str]) -> bytes:
    """The HTTP POST that calls ``action`` on ``service``."""
    return http_request(
        "POST",
        service.control_url,
        soap_body(service.service_type, action, arguments),
        {
            "Content-Type": 'text/xml; charset="utf-8"',
            "SOAPAction": f'"{service.service_type}#{action}"',
        },
    )


def parse_http_response(data: bytes) -> tuple[int, bytes]:
    """(status, body) of a whole HTTP/1.x response read until the server closed (``Content-Length``
    honoured when present, chunked bodies decoded).

    Raises:
        UpnpError: not an HTTP response, or larger than ``MAX_DOCUMENT``.
    """
    if len(data) > MAX_DOCUMENT + 8192:
        raise UpnpError(f"HTTP response of {len(data)} bytes: more than a router sends")
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if (
        not sep
        or len(status_line) < 2
        or not status_line[0].startswith("HTTP/1.")
        or not status_line[1].isdigit()
    ):
        raise UpnpError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = _headers(lines[1:])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    elif headers.get("content-length", "").isdigit():
        body = body[: int(headers["content-length"])]
    return int(status_line[1]), body


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    rest = body
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            raise UpnpError(f"bad chunk size {size_line[:20]!r} in an HTTP response") from None
        if not sep or size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


def parse_soap_response(status: int, body: bytes, action: str) -> dict[str, str]:
    """The out-arguments of ``action``'s response.

    Raises:
        UpnpError: a SOAP fault (``code`` is the UPnP error code: 718 conflict, 725 only
            permanent leases, ...), or a malformed answer.
    """
    root = _parse_xml(body, f"the answer to {action}") if body.strip() else None
    if root is not None:
        for element in root.iter():
            if _local(element.tag) == "UPnPError":
                fields = {_local(child.tag): (child.text or "").strip() for child in element}
                code = fields.get("errorCode", "")
                description = fields.get("errorDescription", "")
                raise UpnpError(
                    f"{action} refused: UPnP error {code} {description}".strip(),
                    int(code) if code.isdigit() else 0,
                )
    if status != 200 or root is None:
        raise UpnpError(f"{action} answered HTTP {status} without a UPnP error")
    for element in root.iter():
        if _local(element.tag) == f"{action}Response":
            return {_local(child.tag): (child.text or "").strip() for child in element}
    raise UpnpError(f"the answer to {action} has no {action}Response")


def add_port_mapping_arguments(
    external_port: int, internal_port: int, internal_client: str, lease_s: int, description: str = "dvrlink"
) -> dict[str, str]:
    """``AddPortMapping``'s arguments for a UDP port (the order the service's SCPD lists them)."""
    return {
        "NewRemoteHost": "",
        "NewExternalPort": str(external_port),
        "NewProtocol": "UDP",
        "NewInternalPort": str(internal_port),
        "NewInternalClient": internal_client,
        "NewEnabled": "1",
        "NewPortMappingDescription": description,
        "NewLeaseDuration": str(lease_s),
    }


def delete_port_mapping_arguments(external_port: int) -> dict[str, str]:
    """``DeletePortMapping``'s arguments for a UDP port."""
    return {"NewRemoteHost": "", "NewExternalPort": str(external_port), "NewProtocol": "UDP"}
