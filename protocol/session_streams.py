"""The stream-open header of a session stream: what each stream is for (a port forward or an RPC).

The first bytes a viewer writes on a new stream name its target; the device checks the target
against its allow-list before it connects anything. This module is free of QUIC so that config
and service code can name targets without loading the session stack.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import construct as c

MAX_TARGET_LENGTH = 255


class Service(enum.IntEnum):
    """What a stream is for; the first byte of its stream-open header."""

    FORWARD = 1
    RPC = 2
    DATAPLANE = 3
    """The data plane's key exchange (session-internal: never reaches the application)."""


class StreamErrorCode(enum.IntEnum):
    """Application error codes of RESET_STREAM / STOP_SENDING."""

    BAD_HEADER = 0x1
    REFUSED = 0x2
    CANCELLED = 0x3


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    """A TCP port forward to ``host:port`` on the device's side (checked against its allow-list)."""

    host: str
    port: int

    @property
    def service(self) -> Service:
        """Always ``Service.FORWARD``."""
        return Service.FORWARD


@dataclass(frozen=True, slots=True)
class RpcTarget:
    """An RPC call by method name, e.g. ``ping`` or ``info``."""

    method: str

    @property
    def service(self) -> Service:
        """Always ``Service.RPC``."""
        return Service.RPC


@dataclass(frozen=True, slots=True)
class DataplaneTarget:
    """The stream on which the two ends of a session exchange the data plane's key material
    (``protocol.session``); its target text is ``v`` and the data plane's version."""

    version: int = 1

    @property
    def service(self) -> Service:
        """Always ``Service.DATAPLANE``."""
        return Service.DATAPLANE


StreamTarget = ForwardTarget | RpcTarget
"""What the application opens streams for."""
AnyTarget = StreamTarget | DataplaneTarget

# service (1) ‖ port (2, 0 for RPC) ‖ target (1 + n, UTF-8: forward host or RPC method)
_STREAM_HEADER = c.Struct(
    "service" / c.Int8ub,
    "port" / c.Int16ub,
    "target" / c.PascalString(c.Int8ub, "utf8"),
)
_HEADER_FIXED = 4


def encode_stream_header(target: AnyTarget) -> bytes:
    """Return the stream-open header for ``target``.

    Raises:
        ValueError: an empty or over-long (255 bytes of UTF-8) host or method, or a port
            outside 1-65535.
    """
    if isinstance(target, ForwardTarget):
        text, port = target.host, target.port
        if not 1 <= port <= 65535:
            raise ValueError(f"forward port {port} is out of range: use 1-65535")
    elif isinstance(target, DataplaneTarget):
        text, port = f"v{target.version}", 0
    else:
        text, port = target.method, 0
    raw = text.encode("utf8")
    if not 1 <= len(raw) <= MAX_TARGET_LENGTH:
        raise ValueError(f"stream target {text!r} must be 1-{MAX_TARGET_LENGTH} bytes of UTF-8")
    return bytes(_STREAM_HEADER.build({"service": int(target.service), "port": port, "target": text}))


def decode_stream_header(data: bytes) -> tuple[AnyTarget, int] | None:
    """Parse a stream-open header at the start of ``data``.

    Returns:
        ``(target, header_length)``, or None if ``data`` does not hold the whole header yet.

    Raises:
        ValueError: the header is malformed: unknown service, bad port, empty or non-UTF-8 target.
    """
    if len(data) < _HEADER_FIXED or len(data) < _HEADER_FIXED + data[3]:
        return None
    length = _HEADER_FIXED + data[3]
    try:
        v = _STREAM_HEADER.parse(data[:length])
    except (c.ConstructError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed stream header: {exc}") from exc
    text = str(v.target)
    if not text:
        raise ValueError("malformed stream header: empty target")
    if v.service == Service.FORWARD:
        if v.port == 0:
            raise ValueError("malformed stream header: forward to port 0")
        return ForwardTarget(text, int(v.port)), length
    if v.service == Service.RPC:
        if v.port != 0:
            raise ValueError("malformed stream header: RPC with a port")
        return RpcTarget(text), length
    if v.service == Service.DATAPLANE:
        if v.port != 0 or not (text.startswith("v") and text[1:].isdigit() and len(text) <= 4):
            raise ValueError(f"malformed stream header: data plane version {text!r}")
        return DataplaneTarget(int(text[1:])), length
    raise ValueError(f"malformed stream header: unknown service {v.service}")
