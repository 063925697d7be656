"""The viewer's side of a session's services: local port forwards, ``ping`` and ``info``.

``dvrlink forward SERIAL 8554:554`` listens on 127.0.0.1:8554; every connection accepted there
becomes one session stream to ``ForwardTarget("127.0.0.1", 554)`` on the device, with bytes
copied both ways (backpressure, half-close) by the same pump the device uses. If the device
resets the stream (the port is not allowed, nothing listens there, ...), the local connection is
aborted and a ``ForwardRefused`` event carries a message that says what to do.

Streams come from anything with the ``StreamOpener`` shape (the session runner); nothing here
knows about QUIC or ICE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dvrlink.protocol.session_streams import ForwardTarget, RpcTarget, StreamErrorCode, StreamTarget
from dvrlink.session.allow_list import allows, parse_allowed_target
from dvrlink.session.streams import (
    CHUNK_SIZE,
    ServiceErrorCode,
    StreamLike,
    TcpEnd,
    TrafficCounters,
    pump,
    reset_code,
    reset_quietly,
)
from dvrlink.viewer.errors import ViewerError, toml_value

DEFAULT_BIND = "127.0.0.1"
DEFAULT_REMOTE_HOST = "127.0.0.1"
MAX_PING_PAYLOAD = 64 * 1024
MAX_INFO_BYTES = 64 * 1024
MAX_CHANNELS_BYTES = 256 * 1024
"""16 capture devices of 64 channels fit with room to spare."""
MAX_SNAPSHOT_BYTES = 512 * 1024 + 1024
"""The device's snapshot cap (``daemon.snapshot.MAX_RPC_SNAPSHOT``) and room for an error."""
_EXAMPLES = "e.g. 8554:554, 0.0.0.0:8080:80 or 8000:192.168.1.64:8000"


class StreamOpener(Protocol):
    """Opens streams on an established session (the viewer's session runner)."""

    async def open_stream(self, target: StreamTarget) -> StreamLike:
        """A new stream to ``target``; raises if the session cannot open one (closed, ...)."""
        ...


# --- forward specs ---


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    """``-L``: listen on ``bind_host:local_port``; reach ``remote_host:remote_port`` from the device."""

    bind_host: str
    local_port: int
    """0: any free port (the listener reports the one it got)."""
    remote_host: str
    """Host as the device sees it; 127.0.0.1 is the device itself."""
    remote_port: int

    def __str__(self) -> str:
        return (
            f"{_bracket(self.bind_host)}:{self.local_port} -> {_bracket(self.remote_host)}:{self.remote_port}"
        )


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split_spec(text: str) -> list[str]:
    """Split on ':' outside brackets; bracketed parts lose their brackets."""
    parts: list[str] = []
    rest = text
    while True:
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                raise ValueError("an opening '[' has no closing ']'")
            parts.append(rest[1:end])
            rest = rest[end + 1 :]
            if not rest:
                return parts
            if not rest.startswith(":"):
                raise ValueError("a ']' must be followed by ':'")
            rest = rest[1:]
        else:
            head, sep, rest = rest.partition(":")
            parts.append(head)
            if not sep:
                return parts


def _port(text: str, what: str, low: int) -> int:
    if not text.isdigit() or not low <= int(text) <= 65535:
        raise ValueError(f"{what} {toml_value(text)} must be a number from {low} to 65535")
    return int(text)


def _host(text: str, what: str) -> str:
    if not text or any(ch.isspace() or ch in "/[]" for ch in text):
        raise ValueError(f"{what} {toml_value(text)} must be a host name or IP address")
    return text


def parse_forward_spec(text: str) -> ForwardSpec:
    """Parse ``[bind:]local:remote`` or ``[bind:]local:host:remote`` (IPv6 in brackets).

    With three parts, a first part made of digits is the local port (``local:host:remote``),
    anything else the bind address (``bind:local:remote``). The bind address defaults to
    127.0.0.1 and the remote host to 127.0.0.1, the device itself. A local port of 0 picks a
    free port.

    Raises:
        ValueError: malformed; the message quotes the spec, says what is wrong and shows examples.
    """
    try:
        parts = _split_spec(text.strip())
        if len(parts) == 2:
            bind, local, host, remote = DEFAULT_BIND, parts[0], DEFAULT_REMOTE_HOST, parts[1]
        elif len(parts) == 3 and parts[0].isdigit():
            bind, local, host, remote = DEFAULT_BIND, parts[0], parts[1], parts[2]
        elif len(parts) == 3:
            bind, local, host, remote = parts[0], parts[1], DEFAULT_REMOTE_HOST, parts[2]
        elif len(parts) == 4:
            bind, local, host, remote = parts
        else:
            raise ValueError("expected [BIND:]LOCAL:REMOTE or [BIND:]LOCAL:HOST:REMOTE")
        return ForwardSpec(
            bind_host=_host(bind, "bind address"),
            local_port=_port(local, "local port", 0),
            remote_host=_host(host, "device-side host"),
            remote_port=_port(remote, "remote port", 1),
        )
    except ValueError as exc:
        raise ValueError(f"bad forward {toml_value(text)}: {exc} ({_EXAMPLES})") from None


# --- what the device's reset codes mean ---


def describe_reset(code: int | None, target: StreamTarget) -> str:
    """A one-line message for a stream the device reset with ``code`` (None: the session ended)."""
    if isinstance(target, ForwardTarget):
        where = f"{_bracket(target.host)}:{target.port}"
        if code == ServiceErrorCode.NOT_ALLOWED:
            return (
                f"the device refuses port {target.port} on {target.host}: "
                f'add "{where}" to [services] forward in dvrlinkd.toml on the device'
            )
        if code == ServiceErrorCode.CONNECT_REFUSED:
            return (
                f"nothing listens on {where} on the device: check that the recorder's service is "
                "running and the port is right"
            )
        if code == ServiceErrorCode.CONNECT_TIMEOUT:
            return f"the device got no answer from {where} in time: check the address and that the host is up"
        if code == ServiceErrorCode.CONNECT_FAILED:
            return f"the device cannot connect to {where}: check the address (its log says more)"
    else:
        if code == ServiceErrorCode.UNKNOWN_METHOD:
            return f"the device does not know the {toml_value(target.method)} request: update dvrlinkd on it"
        if code == ServiceErrorCode.BAD_REQUEST:
            return f"the device refused the {toml_value(target.method)} request as too large"
    if code == ServiceErrorCode.TOO_MANY_STREAMS:
        return "the device has too many streams open on this session: close some connections and retry"
    if code == ServiceErrorCode.INTERNAL:
        return "the device failed to serve the stream (a bug there; its log says more)"
    if code is None:
        return "the session to the device ended"
    if code == StreamErrorCode.CANCELLED:
        return "the device closed the connection abruptly"
    return f"the device reset the stream (code 0x{code:x})"


REFUSAL_CODES = frozenset(
    {
        ServiceErrorCode.NOT_ALLOWED,
        ServiceErrorCode.CONNECT_REFUSED,
        ServiceErrorCode.CONNECT_TIMEOUT,
        ServiceErrorCode.CONNECT_FAILED,
        ServiceErrorCode.TOO_MANY_STREAMS,
    }
)
"""Codes with which the device turns a forward down before any byte passes."""


# --- forward events and counters ---


@dataclass(frozen=True, slots=True)
class ForwardEvent:
    """Base of what a forward reports."""


@dataclass(frozen=True, slots=True)
class ForwardListening(ForwardEvent):
    """The local listener is up on ``address`` (host, port)."""

    spec: ForwardSpec
    address: tuple[str, int]


@dataclass(frozen=True, slots=True)
class ConnectionAccepted(ForwardEvent):
    """A local client connected from ``peer``."""

    peer: str


@dataclass(frozen=True, slots=True)
class ForwardRefused(ForwardEvent):
    """The device turned the connection down (``REFUSAL_CODES``); ``message`` says what to do."""

    peer: str
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed(ForwardEvent):
    """A local connection is over; ``error`` is None if both directions ended normally."""

    peer: str
    bytes_out: int
    """Bytes from the local client to the device."""
    bytes_in: int
    """Bytes from the device to the local client."""
    error: str | None


@dataclass(slots=True)
class ForwardStats:
    """Live counters of one forward, for a status line; updated while connections run."""

    connections_total: int = 0
    connections_open: int = 0
    refused: int = 0
    traffic: TrafficCounters = field(default_factory=TrafficCounters)

    @property
    def bytes_out(self) -> int:
        """Bytes from local clients to the device."""
        return self.traffic.from_tcp

    @property
    def bytes_in(self) -> int:
        """Bytes from the device to local clients."""
        return self.traffic.to_tcp


class Forwarder:
    """One local listener whose connections become streams to one target on the device."""

    def __init__(
        self,
        opener: StreamOpener,
        spec: ForwardSpec,
        on_event: Callable[[ForwardEvent], None] | None = None,
    ) -> None:
        self._opener = opener
        self._spec = spec
        self._on_event = on_event or (lambda event: None)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.stats = ForwardStats()
        """Live counters; read them any time."""

    async def start(self) -> tuple[str, int]:
        """Listen on the spec's bind address and port; returns the address really bound.

        Raises:
            ViewerError: the address cannot be bound (in use, not local, no permission).
        """
        spec = self._spec
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: TcpEnd(self._connected), spec.bind_host, spec.local_port
            )
        except OSError as exc:
            raise ViewerError(
                f"cannot listen on {_bracket(spec.bind_host)}:{spec.local_port} "
                f"({exc.strerror or exc}): pick another local port or bind address"
            ) from exc
        sockname = self._server.sockets[0].getsockname()
        address = (str(sockname[0]), int(sockname[1]))
        self._on_event(ForwardListening(spec, address))
        return address

    async def aclose(self) -> None:
        """Stop listening and abort the connections still open; waits until they are gone."""
        if self._server is not None:
            self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _connected(self, tcp: TcpEnd) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(tcp))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, tcp: TcpEnd) -> None:
        peername = tcp.get_extra_info("peername")
        peer = f"{_bracket(str(peername[0]))}:{peername[1]}" if peername else "?"
        stats = self.stats
        stats.connections_total += 1
        stats.connections_open += 1
        self._on_event(ConnectionAccepted(peer))
        mine = TrafficCounters()
        error: str | None = None
        target = ForwardTarget(self._spec.remote_host, self._spec.remote_port)
        try:
            try:
                stream = await self._opener.open_stream(target)
            except Exception as exc:
                tcp.abort()
                error = f"cannot open a stream to the device: {exc}"
                return
            result = await pump(stream, tcp, (mine, stats.traffic))
            if not result.clean:
                code = result.stream_error_code
                if code is not None and code in REFUSAL_CODES and mine.to_tcp == 0:
                    stats.refused += 1
                    error = describe_reset(code, target)
                    self._on_event(ForwardRefused(peer, code, error))
                elif code is not None:
                    error = describe_reset(code, target)
                else:
                    error = result.error
        except asyncio.CancelledError:
            error = "the forward was closed"
            raise
        except Exception as exc:  # a bug: keep serving other connections
            tcp.abort()
            error = f"internal error ({type(exc).__name__}: {exc})"
        finally:
            stats.connections_open -= 1
            self._on_event(ConnectionClosed(peer, mine.from_tcp, mine.to_tcp, error))


async def run_forward(
    opener: StreamOpener,
    spec: ForwardSpec,
    on_event: Callable[[ForwardEvent], None] | None = None,
    stats: ForwardStats | None = None,
) -> None:
    """Serve ``spec`` until cancelled; then close the listener and its connections.

    ``stats``, if given, is updated live (connections, refusals, bytes).

    Raises:
        ViewerError: the local address cannot be bound.
    """
    forwarder = Forwarder(opener, spec, on_event)
    if stats is not None:
        forwarder.stats = stats
    await forwarder.start()
    try:
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        await forwarder.aclose()


# --- RPC ---


async def _call(opener: StreamOpener, method: str, request: bytes, limit: int) -> bytes:
    """Send ``request`` to RPC ``method`` and read the whole reply (at most ``limit`` bytes).

    Raises:
        ViewerError: no stream could be opened, the device reset it, or the reply is too long.
    """
    target = RpcTarget(method)
    try:
        stream = await opener.open_stream(target)
    except Exception as exc:
        raise ViewerError(f"cannot open a {method} request to the device: {exc}") from exc
    send_error: Exception | None = None
    try:
        if request:
            stream.write(request)
        stream.write_eof()
        await stream.drain()
    except Exception as exc:  # the reason (the device's reset code) surfaces on the read side
        send_error = exc
    try:
        reply = bytearray()
        while data := await stream.read(CHUNK_SIZE):
            reply += data
            if len(reply) > limit:
                reset_quietly(stream, StreamErrorCode.CANCELLED)
                raise ViewerError(f"the device's {method} reply is over {limit} bytes: is it a dvrlinkd?")
        if send_error is not None:
            raise send_error
        return bytes(reply)
    except asyncio.CancelledError:
        reset_quietly(stream, StreamErrorCode.CANCELLED)
        raise
    except ViewerError:
        raise
    except Exception as exc:
        raise ViewerError(describe_reset(reset_code(exc), target)) from exc


async def ping(
    opener: StreamOpener,
    count: int = 4,
    payload_size: int = 32,
    *,
    timeout_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[int], bytes] = os.urandom,
) -> list[float]:
    """Send ``count`` pings of ``payload_size`` random bytes one after the other; returns their RTTs (s).

    Each RTT runs from opening the stream to the end of the echoed reply (``clock`` seconds).

    Raises:
        ValueError: ``count`` < 1 or ``payload_size`` outside 0-65536.
        ViewerError: a ping got no reply within ``timeout_s``, a wrong echo, or a reset.
    """
    if count < 1:
        raise ValueError(f"ping count {count} must be at least 1")
    if not 0 <= payload_size <= MAX_PING_PAYLOAD:
        raise ValueError(f"ping payload {payload_size} must be 0-{MAX_PING_PAYLOAD} bytes")
    rtts: list[float] = []
    for n in range(1, count + 1):
        payload = rng(payload_size)
        start = clock()
        try:
            async with asyncio.timeout(timeout_s):
                reply = await _call(opener, "ping", payload, MAX_PING_PAYLOAD)
        except TimeoutError:
            raise ViewerError(
                f"ping {n}: no reply from the device within {timeout_s:g} s: check `dvrlink status`"
            ) from None
        if reply != payload:
            raise ViewerError(
                f"ping {n}: the device echoed {len(reply)} bytes that differ from the {len(payload)} sent"
            )
        rtts.append(clock() - start)
    return rtts


async def _call_json(opener: StreamOpener, method: str, limit: int, timeout_s: float) -> object:
    """RPC ``method`` with an empty request; its reply as JSON, or None if it is not JSON.

    Raises:
        ViewerError: no reply within ``timeout_s``, a reset, or a reply over ``limit`` bytes.
    """
    try:
        async with asyncio.timeout(timeout_s):
            reply = await _call(opener, method, b"", limit)
    except TimeoutError:
        raise ViewerError(f"no {method} reply from the device within {timeout_s:g} s") from None
    try:
        return json.loads(reply)
    except ValueError:
        return None


async def device_snapshot(
    opener: StreamOpener, device: str, channel: int, width: int, *, timeout_s: float = 30.0
) -> bytes:
    """A JPEG of ``device``'s ``channel`` (``width`` pixels wide), from the ``snapshot`` RPC.

    Raises:
        ViewerError: no reply in time, a reset (a dvrlinkd without snapshots), or the device's
            reason for having none (no signal, the encoder failed, ...).
    """
    request = json.dumps({"device": device, "channel": channel, "width": width}).encode("utf-8")
    try:
        async with asyncio.timeout(timeout_s):
            reply = await _call(opener, "snapshot", request, MAX_SNAPSHOT_BYTES)
    except TimeoutError:
        raise ViewerError(f"no snapshot from the device within {timeout_s:g} s") from None
    if reply.startswith(b"\xff\xd8"):
        return reply
    try:
        body = json.loads(reply)
    except ValueError:
        body = None
    why = body.get("error") if isinstance(body, dict) else None
    if isinstance(why, str):
        raise ViewerError(f"no snapshot: {why}")
    raise ViewerError("the device's snapshot reply is neither a JPEG nor an error: is it a dvrlinkd?")


async def live_warm(
    opener: StreamOpener, device: str, channel: int, profile: str, *, timeout_s: float = 10.0
) -> None:
    """Ask the device to start a channel's encoder now (``live-warm``), so it is running when
    the player's DESCRIBE comes. Best effort: a device without it, or any failure, is ignored
    (the DESCRIBE then starts the encoder and says what is wrong)."""
    request = json.dumps({"device": device, "channel": channel, "profile": profile}).encode("utf-8")
    with contextlib.suppress(ViewerError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            await _call(opener, "live-warm", request, MAX_INFO_BYTES)


async def device_info(opener: StreamOpener, *, timeout_s: float = 10.0) -> dict[str, object]:
    """The device's ``info`` reply: ``serial``, ``version``, ``uptime_s``, ``forward``, ``sessions``,
    ``live_port``.

    Raises:
        ViewerError: no reply in time, a reset, or a reply that is not a JSON object.
    """
    body = await _call_json(opener, "info", MAX_INFO_BYTES, timeout_s)
    if isinstance(body, dict):
        return body
    raise ViewerError("the device's info reply is not a JSON object: is it a dvrlinkd?")


async def device_channels(opener: StreamOpener, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The device's ``channels`` reply: its capture devices, each with ``name``, ``backend``,
    ``error`` and ``channels`` (``channel``, ``signal``, ``format``, ``motion``, ``for_s``).

    Raises:
        ViewerError: no reply in time, a reset (a dvrlinkd older than the HAL does not know
            ``channels``), or a reply that is not ``{"devices": [...]}``.
    """
    body = await _call_json(opener, "channels", MAX_CHANNELS_BYTES, timeout_s)
    devices = body.get("devices") if isinstance(body, dict) else None
    if isinstance(devices, list) and all(isinstance(d, dict) for d in devices):
        return devices
    raise ViewerError('the device\'s channels reply is not {"devices": [...]}: is it a dvrlinkd?')


async def device_relay(
    opener: StreamOpener, request: Mapping[str, object] | None = None, *, timeout_s: float = 10.0
) -> dict[str, Any]:
    """The device's ``relay`` RPC: ``request`` None lists its alarm inputs and relays,
    ``{"relay": NAME, "action": "on" | "off" | "pulse", "seconds": S}`` switches one. Returns
    ``{"inputs": [...], "relays": [...]}`` as the device has them after the action.

    Raises:
        ViewerError: no reply in time, a reset (a dvrlinkd older than board I/O does not know
            ``relay``), the device refused the request (its reason), or a reply of another shape.
    """
    body = json.dumps(dict(request or {})).encode("utf-8")
    try:
        async with asyncio.timeout(timeout_s):
            reply = await _call(opener, "relay", body, MAX_INFO_BYTES)
    except TimeoutError:
        raise ViewerError(f"no relay reply from the device within {timeout_s:g} s") from None
    try:
        parsed = json.loads(reply)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        raise ViewerError(f"the device refused: {parsed['error']}")
    if (
        isinstance(parsed, dict)
        and isinstance(parsed.get("inputs"), list)
        and isinstance(parsed.get("relays"), list)
    ):
        return parsed
    raise ViewerError(
        'the device\'s relay reply is not {"inputs": [...], "relays": [...]}: is it a dvrlinkd?'
    )


def refused_forwards(specs: Sequence[ForwardSpec], info: Mapping[str, object]) -> list[str]:
    """Messages for each of ``specs`` that the device's ``info`` reply (its ``forward`` list)
    does not allow, compared as the device compares them; empty if all are allowed, or if the
    reply has no usable list (the device then decides at each connection)."""
    listed = info.get("forward")
    if not isinstance(listed, list):
        return []
    try:
        allowed = tuple(parse_allowed_target(entry) for entry in listed)
    except ValueError:
        return []
    shown = ", ".join(str(t) for t in allowed) or "nothing"
    messages = []
    for spec in specs:
        if not allows(allowed, spec.remote_host, spec.remote_port):
            target = ForwardTarget(spec.remote_host, spec.remote_port)
            reason = describe_reset(ServiceErrorCode.NOT_ALLOWED, target)
            messages.append(f"{reason} (it allows {shown})")
    return messages


async def unpair_self(opener: StreamOpener, *, timeout_s: float = 10.0) -> bool:
    """Ask the device to forget this viewer (``unpair``); True if it did, False if it had
    already forgotten it.

    Raises:
        ViewerError: no reply in time, a reset (an older dvrlinkd does not know ``unpair``), or
            a reply that is not ``{"revoked": bool}``.
    """
    try:
        async with asyncio.timeout(timeout_s):
            reply = await _call(opener, "unpair", b"", MAX_INFO_BYTES)
    except TimeoutError:
        raise ViewerError(f"no unpair reply from the device within {timeout_s:g} s") from None
    with contextlib.suppress(ValueError):
        body = json.loads(reply)
        if isinstance(body, dict) and isinstance(body.get("revoked"), bool):
            return bool(body["revoked"])
    raise ViewerError('the device\'s unpair reply is not {"revoked": true|false}: is it a dvrlinkd?')
