"""The device's session services: TCP port forwards to allow-listed targets, and ``ping``/``info`` RPC.

A session hands every stream the viewer opens to ``SessionServices.serve`` (or ``start``) with
the target from the stream-open header. What the viewer sees:

- ``ForwardTarget(host, port)``: if ``host:port`` is in ``[services] forward`` the device
  connects to it (``connect_timeout_s``) and then copies bytes both ways until both directions
  have ended, with backpressure and half-close. Otherwise, or if the connection fails, the
  stream is reset with a ``ServiceErrorCode`` that the viewer turns into a message. A target
  that is not allowed is never connected to.
- ``RpcTarget("ping")``: the request (everything up to the viewer's end of stream) is sent back,
  then the stream ends.
- ``RpcTarget("info")``: a JSON object ``{serial, version, uptime_s, forward, sessions}``, then
  the end of the stream.
- ``RpcTarget("channels")``: a JSON object ``{"devices": [...]}``, the capture devices and their
  channels' signal, format and motion (``CaptureService.channels``), then end of stream;
- ``RpcTarget(name)`` for a name in ``handlers`` (the daemon's own RPCs, e.g. ``snapshot``):
  the request (everything up to the viewer's end of stream) goes to the handler, its reply bytes
  go back, then the stream ends. A handler that raises resets the stream (``INTERNAL``).
- ``RpcTarget("relay")``: the request is a JSON object: ``{}`` lists the board's alarm inputs and
  relays, ``{"relay": NAME, "action": "on" | "off" | "pulse", "seconds": S}`` switches one
  (``BoardIoService.relay_call``). The reply is ``{"inputs": [...], "relays": [...]}`` after the
  action, or ``{"error": "..."}`` saying what to send instead; then end of stream;
- ``RpcTarget("unpair")``: the device forgets this session's viewer (``dvrlink unpair``) and
  answers ``{"revoked": true}`` (``false`` if it was already forgotten), then the stream ends.
  New sessions from that viewer are refused from then on; this one ends when the viewer closes it.
- any other method: reset with ``UNKNOWN_METHOD``.

Nothing a stream does (a peer reset, a TCP error, a bad request, a failing info provider) raises
out of ``serve``/``serve_stream``: each ends as a reset stream and a log line. Only cancellation
propagates, after the stream is reset and the TCP connection aborted.

The stream is anything with the ``StreamLike`` shape; a reset by the peer shows up as ``read``
raising an exception whose ``error_code`` attribute (an int) is the peer's code.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvrlink.daemon.errors import ConfigError
from dvrlink.protocol.session_streams import ForwardTarget, StreamErrorCode, StreamTarget
from dvrlink.session.allow_list import AllowedTarget, allows, parse_allowed_target
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
from dvrlink.store.toml_text import toml_key, toml_value

log = logging.getLogger(__name__)

# --- configuration ---


@dataclass(frozen=True, slots=True)
class ServicesConfig:
    """``[services]``: what viewers may reach through the device.

    The allow-list is empty by default: a device forwards nothing until its config names each
    target, e.g. ``forward = ["127.0.0.1:554", "127.0.0.1:80"]``. ``ping`` and ``info`` are always
    served (``info`` reveals the serial, version, uptime, allow-list and session count, which a
    paired viewer may know).
    """

    forward_allow: tuple[AllowedTarget, ...] = ()
    """Targets a viewer may forward to (``forward`` in the file)."""
    connect_timeout_s: float = 5.0
    """Seconds to wait for a forward target to accept the TCP connection."""
    max_streams_per_session: int = 32
    """Streams one session may have open at once; more are reset with ``TOO_MANY_STREAMS``."""
    max_rpc_request_bytes: int = 64 * 1024
    """Largest RPC request (e.g. a ping payload) the device reads; larger ones get ``BAD_REQUEST``."""

    def allows(self, host: str, port: int) -> bool:
        """True if ``host:port`` is on the allow-list (host compared after normalising)."""
        return allows(self.forward_allow, host, port)


_SERVICES_KEYS = ("forward", "connect_timeout_s", "max_streams_per_session")


def parse_services(document: Mapping[str, object], source: Path) -> ServicesConfig:
    """Read the ``[services]`` section of a parsed dvrlinkd TOML document (absent: defaults).

    Raises:
        ConfigError: the section is not a table, has an unknown key, or a bad value; the message
            names the file, the key, the value and what to write.
    """
    raw = document.get("services", {})
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: services must be a section [services], got {toml_value(raw)}")
    for key in raw:
        if key not in _SERVICES_KEYS:
            close = difflib.get_close_matches(str(key), _SERVICES_KEYS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"{source}: unknown key {toml_key(key)} in [services]; {hint}known keys: "
                f"{', '.join(_SERVICES_KEYS)}"
            )
    defaults = ServicesConfig()

    forward = raw.get("forward", [])
    example = 'write it as forward = ["127.0.0.1:554", "127.0.0.1:80"]'
    if not isinstance(forward, list):
        raise ConfigError(f"{source}: [services] forward = {toml_value(forward)}: expected a list; {example}")
    allowed: list[AllowedTarget] = []
    for entry in forward:
        try:
            target = parse_allowed_target(entry)
        except ValueError as exc:
            raise ConfigError(
                f"{source}: [services] forward entry {toml_value(entry)}: {exc}; {example}"
            ) from None
        if target in allowed:
            raise ConfigError(
                f"{source}: [services] forward lists {target} twice (as {toml_value(entry)}); "
                "remove one of them"
            )
        allowed.append(target)

    timeout = raw.get("connect_timeout_s", defaults.connect_timeout_s)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0.1 <= timeout <= 120:
        raise ConfigError(
            f"{source}: [services] connect_timeout_s = {toml_value(timeout)}: expected seconds "
            "from 0.1 to 120"
        )
    streams = raw.get("max_streams_per_session", defaults.max_streams_per_session)
    if isinstance(streams, bool) or not isinstance(streams, int) or not 1 <= streams <= 1024:
        raise ConfigError(
            f"{source}: [services] max_streams_per_session = {toml_value(streams)}: expected a whole number "
            "from 1 to 1024"
        )
    return ServicesConfig(
        forward_allow=tuple(allowed), connect_timeout_s=float(timeout), max_streams_per_session=streams
    )


# --- serving streams ---


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What ``info`` reports besides the allow-list; the daemon builds it on each call."""

    serial: str
    version: str
    uptime_s: float
    sessions: int
    """Sessions open now."""
    channels: list[dict[str, Any]] = field(default_factory=list)
    """The capture devices and their channels (``CaptureService.channels``); empty without."""
    live_port: int = 0
    """The live view's RTSP port on the device's 127.0.0.1 (0: no live view)."""
    cellular: bool = False
    """The device's uplink is its cellular modem: viewers pick the sub-stream."""


InfoProvider = Callable[[], DeviceInfo]
RpcHandler = Callable[[bytes], Awaitable[bytes]]
"""One of the daemon's own RPCs: the viewer's request in, the reply out."""
RelayHandler = Callable[[Mapping[str, object]], dict[str, Any]]
"""Serves a ``relay`` request (``BoardIoService.relay_call``); raises ``ValueError`` with what
to send instead for a request it cannot do."""


def no_relays(request: Mapping[str, object]) -> dict[str, Any]:
    """The ``relay`` handler of a device without board I/O: an empty list, and an error for
    any action.

    Raises:
        ValueError: ``request`` asks for an action.
    """
    if request:
        raise ValueError("this device has no relays (no [[relay]] in its dvrlinkd config)")
    return {"inputs": [], "relays": []}


Revoker = Callable[[], bool]
"""Forgets the session's viewer; True if it was paired. May raise (logged, stream reset)."""
TcpConnector = Callable[[str, int], Awaitable[TcpEnd]]


async def _open_tcp(host: str, port: int) -> TcpEnd:
    _, end = await asyncio.get_running_loop().create_connection(TcpEnd, host, port)
    return end


@dataclass(slots=True)
class ServiceStats:
    """Counters across all sessions of one daemon (for status and logs)."""

    streams_total: int = 0
    streams_open: int = 0
    forwards_refused: int = 0
    """Forwards reset before any byte: not allowed, connection refused, timeout, failure."""
    traffic: TrafficCounters = field(default_factory=TrafficCounters)
    """Forwarded bytes: ``to_tcp`` from viewers to local services, ``from_tcp`` back."""


async def serve_stream(
    stream: StreamLike,
    target: StreamTarget,
    config: ServicesConfig,
    info_provider: InfoProvider,
    *,
    stats: ServiceStats | None = None,
    connect: TcpConnector = _open_tcp,
    label: str = "session",
    revoke: Revoker | None = None,
    handlers: Mapping[str, RpcHandler] | None = None,
) -> None:
    """Serve one stream the viewer opened for ``target`` until it is over (see the module doc).

    ``revoke`` serves ``unpair``; without it, ``unpair`` is an unknown method. ``handlers``
    serve the RPCs they name.

    ``label`` names the session in log lines. Never raises, except ``CancelledError`` after the
    stream is reset.
    """
    stats = stats if stats is not None else ServiceStats()
    try:
        if isinstance(target, ForwardTarget):
            await _serve_forward(stream, target, config, stats, connect, label)
        elif target.method == "ping":
            request = await _read_request(stream, config.max_rpc_request_bytes, label)
            if request is not None:
                stream.write(request)
                stream.write_eof()
                await stream.drain()
        elif target.method == "info":
            if await _read_request(stream, config.max_rpc_request_bytes, label) is not None:
                stream.write(_info_json(info_provider(), config))
                stream.write_eof()
                await stream.drain()
        elif target.method == "channels":
            if await _read_request(stream, config.max_rpc_request_bytes, label) is not None:
                stream.write(json.dumps({"devices": info_provider().channels}).encode("utf-8"))
                stream.write_eof()
                await stream.drain()
        elif handlers is not None and target.method in handlers:
            request = await _read_request(stream, config.max_rpc_request_bytes, label)
            if request is not None:
                stream.write(await handlers[target.method](request))
                stream.write_eof()
                await stream.drain()
        elif target.method == "unpair" and revoke is not None:
            if await _read_request(stream, config.max_rpc_request_bytes, label) is not None:
                revoked = revoke()
                log.warning(
                    "%s: the viewer unpaired itself: %s", label, "forgotten" if revoked else "was not paired"
                )
                stream.write(json.dumps({"revoked": revoked}).encode("utf-8"))
                stream.write_eof()
                await stream.drain()
        else:
            log.info("%s: unknown RPC method %r: stream reset", label, target.method)
            reset_quietly(stream, ServiceErrorCode.UNKNOWN_METHOD)
    except asyncio.CancelledError:
        reset_quietly(stream, StreamErrorCode.CANCELLED)
        raise
    except Exception as exc:
        if reset_code(exc) is not None:
            log.debug("%s: the viewer reset the %s stream (code 0x%x)", label, target, reset_code(exc))
        else:
            log.exception("%s: serving %s failed; stream reset", label, target)
            reset_quietly(stream, ServiceErrorCode.INTERNAL)


def rpc_object(request: bytes) -> dict[str, Any] | None:
    """An RPC request as a JSON object (``{}`` when empty), or None if it is not one."""
    try:
        body = json.loads(request) if request.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def relay_rpc(relay: RelayHandler) -> RpcHandler:
    """The ``relay`` RPC (see the module docstring) over ``relay``, for ``handlers``."""

    async def handle(request: bytes) -> bytes:
        return json.dumps(_relay_reply(relay, request, "relay")).encode("utf-8")

    return handle


def _relay_reply(relay: RelayHandler, request: bytes, label: str) -> dict[str, Any]:
    body = rpc_object(request)
    if body is None:
        return {"error": 'the relay request is not a JSON object: send {} or {"relay": NAME, "action": "on"}'}
    try:
        return relay(body)
    except ValueError as exc:
        log.info("%s: relay request %s refused: %s", label, body, exc)
        return {"error": str(exc)}


async def _read_request(stream: StreamLike, limit: int, label: str) -> bytes | None:
    """The whole request up to the viewer's end of stream, or None (stream reset) if over ``limit``."""
    request = bytearray()
    while data := await stream.read(min(CHUNK_SIZE, limit + 1 - len(request))):
        request += data
        if len(request) > limit:
            log.info("%s: RPC request over %d bytes: stream reset", label, limit)
            reset_quietly(stream, ServiceErrorCode.BAD_REQUEST)
            return None
    return bytes(request)


def _info_json(info: DeviceInfo, config: ServicesConfig) -> bytes:
    body = {
        "serial": info.serial,
        "version": info.version,
        "uptime_s": round(info.uptime_s, 1),
        "forward": [str(t) for t in config.forward_allow],
        "sessions": info.sessions,
        "live_port": info.live_port,
        "cellular": info.cellular,
    }
    return json.dumps(body).encode("utf-8")


async def _serve_forward(
    stream: StreamLike,
    target: ForwardTarget,
    config: ServicesConfig,
    stats: ServiceStats,
    connect: TcpConnector,
    label: str,
) -> None:
    where = str(AllowedTarget(target.host, target.port))
    if not config.allows(target.host, target.port):
        stats.forwards_refused += 1
        log.warning(
            "%s: forward to %s refused: not in [services] forward; add it there to allow it", label, where
        )
        reset_quietly(stream, ServiceErrorCode.NOT_ALLOWED)
        return
    try:
        async with asyncio.timeout(config.connect_timeout_s):
            tcp = await connect(target.host, target.port)
    except TimeoutError:
        code, why = ServiceErrorCode.CONNECT_TIMEOUT, f"no answer within {config.connect_timeout_s:g} s"
    except ConnectionRefusedError:
        code, why = ServiceErrorCode.CONNECT_REFUSED, "connection refused: nothing listens there"
    except OSError as exc:
        code, why = ServiceErrorCode.CONNECT_FAILED, exc.strerror or str(exc)
    else:
        log.info("%s: forward to %s open", label, where)
        result = await pump(stream, tcp, (stats.traffic,))
        if result.clean:
            log.info("%s: forward to %s done", label, where)
        else:
            log.info("%s: forward to %s aborted: %s", label, where, result.error)
        return
    stats.forwards_refused += 1
    log.warning("%s: forward to %s failed: %s", label, where, why)
    reset_quietly(stream, code)


class SessionServices:
    """The services of one session: enforces ``max_streams_per_session`` and owns its stream tasks."""

    def __init__(
        self,
        config: ServicesConfig,
        info_provider: InfoProvider,
        *,
        stats: ServiceStats | None = None,
        connect: TcpConnector = _open_tcp,
        label: str = "session",
        revoke: Revoker | None = None,
        handlers: Mapping[str, RpcHandler] | None = None,
    ) -> None:
        self._config = config
        self._info = info_provider
        self._revoke = revoke
        self._handlers = handlers
        self._stats = stats if stats is not None else ServiceStats()
        self._connect = connect
        self._label = label
        self._open = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def open_streams(self) -> int:
        """Streams being served now."""
        return self._open

    async def serve(self, stream: StreamLike, target: StreamTarget) -> None:
        """Serve one stream (see ``serve_stream``); resets it if the session is at its limit.

        Never raises, except ``CancelledError``.
        """
        if self._open >= self._config.max_streams_per_session:
            log.warning(
                "%s: stream for %s refused: %d streams open (max_streams_per_session)",
                self._label,
                target,
                self._open,
            )
            reset_quietly(stream, ServiceErrorCode.TOO_MANY_STREAMS)
            return
        self._open += 1
        self._stats.streams_open += 1
        self._stats.streams_total += 1
        try:
            await serve_stream(
                stream,
                target,
                self._config,
                self._info,
                stats=self._stats,
                connect=self._connect,
                label=self._label,
                revoke=self._revoke,
                handlers=self._handlers,
            )
        finally:
            self._open -= 1
            self._stats.streams_open -= 1

    def start(self, stream: StreamLike, target: StreamTarget) -> asyncio.Task[None]:
        """Serve a stream in a task of its own (for a runner's synchronous ``on_stream`` callback).

        Needs a running event loop; ``aclose`` cancels what is still running.
        """
        task = asyncio.get_running_loop().create_task(self.serve(stream, target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Cancel the streams still being served (the session is over) and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
