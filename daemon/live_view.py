"""Live view: each capture channel as an RTSP stream on the device's loopback, for sessions.

``dvrlink view`` forwards a local port through a session to this server (``127.0.0.1:PORT`` on
the device, which ``[live] port`` names and the forward allow-list gets by itself), so the media
rides the session's data plane like any forward, and the viewer's player sees a normal RTSP
server. The URL names the capture device, the channel and the profile:
``rtsp://127.0.0.1:PORT/front/2/main`` (or ``/sub``, the low-bitrate one for a relay or a
cellular path).

- **The encoder is a seam.** Here it is ffmpeg (``[live] encoder``), fed by the channel's
  ``FrameSource`` (V4L2 node, synthetic test pattern), encoding H.264 and sending RTP to a
  loopback UDP port of dvrlinkd's. A board with a hardware encoder replaces this class. One
  encoder per channel and profile is shared by every viewer of it. It starts at the first
  DESCRIBE and stops ``idle_stop_s`` after the last viewer left.
  An encoder started by DESCRIBE waits ``SETUP_GRACE_S`` (30 s) for its first PLAY. The
  ``live-warm`` RPC starts one before the DESCRIBE (``dvrlink view`` sends it as soon as it
  knows the channel), so the encoder's start overlaps the viewer's own (``warm``).
- **RTSP.** OPTIONS, DESCRIBE (the encoder's SDP, made an RTSP answer), SETUP (RTP interleaved
  in the RTSP connection only; a request for UDP gets 461 and players then ask for TCP), PLAY,
  TEARDOWN, GET_PARAMETER (keep-alive). RTP packets are relayed as they come; a viewer that
  starts playing first gets the packets since the last key frame (kept per encoder), so its
  picture starts at once instead of at the next key frame. A viewer whose
  connection backs up loses packets (counted), never delays the others.
- **Stalls and failures are events.** A watched encoder that sends nothing for
  ``stall_after_s`` while its channel is locked gives ``StreamStalled`` (once, until packets come
  again); one that exits while watched gives ``EncoderError`` and its viewers' connections end,
  so their players see the stream end instead of a frozen picture. Both go to ``on_event`` (the
  capture service's sinks: the log, the status and an alarm).
- **No picture, no stream.** A channel without a signal answers DESCRIBE with 503 and the
  reason (``no-video``); a device whose frames do not reach user space (a decoder chip) with
  501.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from dvrlink.daemon.services import rpc_object
from dvrlink.hal.device import FrameSource
from dvrlink.hal.model import EncoderError, HalEvent, StreamStalled
from dvrlink.protocol.rtsp import (
    BadRequest,
    Request,
    RequestParser,
    h264_keyframe_packet,
    interleaved,
    interleaved_channels,
    response,
    rtp_timestamp,
    session_sdp,
)

log = logging.getLogger(__name__)

PROFILES = ("main", "sub")
SDP_TIMEOUT_S = 20.0
"""How long the encoder may take to write its SDP (it opens the source first)."""
MAX_BACKLOG_BYTES = 1 << 20
"""A viewer's connection holding more than this drops packets until it drains."""
MAX_RTP_BYTES = 1400
WATCH_INTERVAL_S = 1.0
"""How often a running encoder is checked for a stall or an exit."""
MAX_GOP_PACKETS = 4096
"""The packets kept since the last key frame, for a viewer that starts playing (about 5 MB)."""
SETUP_GRACE_S = 30.0
"""An encoder started by DESCRIBE or SETUP waits this long (at least ``idle_stop_s``) for the
PLAY that makes someone its viewer."""


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """``[live]``: the live view server. Times in seconds, rates in kbit/s."""

    port: int = 8554
    """The RTSP port on the device's 127.0.0.1; 0 turns live view off."""
    encoder: tuple[str, ...] = ("ffmpeg",)
    """The software encoder (ffmpeg) and leading arguments."""
    main_kbit: int = 2000
    """The main stream's bit rate."""
    sub_kbit: int = 256
    """The sub-stream's bit rate (relay and cellular paths)."""
    sub_width: int = 640
    """The sub-stream's width in pixels (height follows the picture's shape)."""
    idle_stop_s: float = 10.0
    """An encoder nobody watches stops after this long."""
    stall_after_s: float = 5.0
    """A watched encoder silent this long, its channel locked, gives ``StreamStalled``."""


SourceLookup = Callable[[str, int], tuple[FrameSource | None, str]]
"""(device name, channel) -> (its frame source, its signal state or why there is none)."""


def encoder_command(config: LiveConfig, source: FrameSource, profile: str, port: int, sdp: Path) -> list[str]:
    """The encoder's command line: the channel's frames to H.264 in RTP to ``127.0.0.1:port``,
    its SDP to ``sdp``."""
    kbit = config.main_kbit if profile == "main" else config.sub_kbit
    scale = [] if profile == "main" else ["-vf", f"scale={config.sub_width}:-2"]
    return [
        *config.encoder,
        "-hide_banner", "-nostdin", "-loglevel", "error",
        *source.input_args,
        "-an", *scale,
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        "-g", "25", "-b:v", f"{kbit}k", "-maxrate", f"{kbit}k", "-bufsize", f"{kbit}k",
        "-x264-params", "repeat-headers=1",
        "-f", "rtp", "-payload_type", "96", "-sdp_file", str(sdp),
        f"rtp://127.0.0.1:{port}?rtcpport={port}&pkt_size={MAX_RTP_BYTES}",
    ]  # fmt: skip


class _Encoder:
    """One running encoder and the viewers of its packets."""

    def __init__(self, key: str, config: LiveConfig, workdir: Path) -> None:
        self.key = key
        self.config = config
        self.workdir = workdir
        self.sdp = ""
        self.viewers: set[_Viewer] = set()
        self.process: asyncio.subprocess.Process | None = None
        self.socket: socket.socket | None = None
        self.stop_timer: asyncio.TimerHandle | None = None
        self.packets = 0
        self.last_packet_at = 0.0
        """The event loop's time of the last packet (of the start, before any)."""
        self.stalled = False
        self.watch: asyncio.TimerHandle | None = None
        self.gop: list[bytes] = []
        """The RTP packets since the last key frame began (empty until one did, or after more than
        ``MAX_GOP_PACKETS``): a new viewer gets them first, so its player starts at once."""
        self.gop_timestamp: int | None = None

    async def start(self, source: FrameSource, profile: str) -> None:
        loop = asyncio.get_running_loop()
        sock = self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        port = sock.getsockname()[1]
        sdp = self.workdir / f"live-{self.key.replace('/', '-')}.sdp"
        with contextlib.suppress(FileNotFoundError):
            sdp.unlink()
        command = encoder_command(self.config, source, profile, port, sdp)
        stderr = (self.workdir / f"live-{self.key.replace('/', '-')}.log").open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr
            )
        except OSError as exc:
            self.close()
            raise LiveError(
                503, f"the encoder {self.config.encoder[0]} cannot start ({exc.strerror}); install ffmpeg"
            ) from exc
        finally:
            stderr.close()
        loop.add_reader(sock.fileno(), self._relay)
        self.last_packet_at = loop.time()
        deadline = loop.time() + SDP_TIMEOUT_S
        while loop.time() < deadline:
            if self.process.returncode is not None:
                break
            with contextlib.suppress(OSError):
                text = sdp.read_text()
                if "m=video" in text:
                    self.sdp = session_sdp(text)
                    return
            await asyncio.sleep(0.05)
        self.close()
        raise LiveError(503, f"the encoder gave no stream within {SDP_TIMEOUT_S:g} s (see live-*.log)")

    def _relay(self) -> None:
        sock = self.socket
        if sock is None:
            return
        for _ in range(64):
            try:
                packet = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                return
            self.packets += 1
            if self.packets & 15 == 1:
                self.last_packet_at = asyncio.get_running_loop().time()
            rtcp = len(packet) > 1 and 200 <= packet[1] <= 204
            if not rtcp:
                self._remember(packet)
            for viewer in tuple(self.viewers):
                viewer.send(packet, rtcp)

    def _remember(self, packet: bytes) -> None:
        timestamp = rtp_timestamp(packet)
        if h264_keyframe_packet(packet) and timestamp != self.gop_timestamp:
            self.gop = []
            self.gop_timestamp = timestamp
        if self.gop_timestamp is None:
            return
        if len(self.gop) >= MAX_GOP_PACKETS:
            self.gop = []
            self.gop_timestamp = None  # until the next key frame
            return
        self.gop.append(packet)

    def close(self) -> None:
        if self.stop_timer is not None:
            self.stop_timer.cancel()
            self.stop_timer = None
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.socket is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self.socket.fileno())
            self.socket.close()
            self.socket = None
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


class LiveError(Exception):
    """A request that cannot be served: an RTSP status and its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Viewer(asyncio.Protocol):
    """One RTSP connection."""

    def __init__(self, server: LiveView) -> None:
        self.server = server
        self.parser = RequestParser()
        self.transport: asyncio.Transport | None = None
        self.encoder: _Encoder | None = None
        self.channels = (0, 1)
        self.playing = False
        self.dropped = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        while (request := self.parser.next()) is not None:
            if isinstance(request, BadRequest):
                log.info("live view: a bad RTSP request (%s): closing", request.reason)
                self.write(response(400, "Bad Request", request.cseq))
                if self.transport is not None:
                    self.transport.close()
                return
            task = asyncio.get_running_loop().create_task(self.server.handle(self, request))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.leave(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send(self, packet: bytes, rtcp: bool) -> None:
        transport = self.transport
        if transport is None or not self.playing:
            return
        if transport.get_write_buffer_size() > MAX_BACKLOG_BYTES:
            self.dropped += 1
            return
        transport.write(interleaved(self.channels[1] if rtcp else self.channels[0], packet))


class LiveView:
    """The live view server (see the module's docstring)."""

    def __init__(
        self,
        config: LiveConfig,
        sources: SourceLookup,
        workdir: Path,
        on_event: Callable[[HalEvent], None] | None = None,
    ) -> None:
        self.config = config
        self._sources = sources
        self._workdir = workdir
        self._on_event = on_event
        self._server: asyncio.Server | None = None
        self._encoders: dict[str, _Encoder] = {}
        self._starting: dict[str, asyncio.Future[_Encoder]] = {}
        self._warming: set[asyncio.Task[None]] = set()
        self.requests = 0

    async def start(self) -> None:
        """Listen on ``127.0.0.1:port``.

        Raises:
            OSError: the port is taken; the message names it.
        """
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: _Viewer(self), "127.0.0.1", self.config.port
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"live view: cannot listen on 127.0.0.1:{self.config.port} ({exc.strerror}); "
                "set another [live] port",
            ) from exc

    async def close(self) -> None:
        """Stop listening and stop every encoder."""
        for task in tuple(self._warming):
            task.cancel()
        if self._server is not None:
            self._server.close()
        for encoder in self._encoders.values():
            encoder.close()
        self._encoders.clear()

    async def handle(self, viewer: _Viewer, request: Request) -> None:
        """Answer one request."""
        self.requests += 1
        cseq = request.cseq
        try:
            if request.method == "OPTIONS":
                public = "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER"
                viewer.write(response(200, "OK", cseq, {"Public": public}))
            elif request.method == "DESCRIBE":
                encoder = await self._encoder_for(request.url)
                body = encoder.sdp.encode("utf-8")
                base = request.url.rstrip("/") + "/"
                headers = {"Content-Type": "application/sdp", "Content-Base": base}
                viewer.write(response(200, "OK", cseq, headers, body))
            elif request.method == "SETUP":
                pair = interleaved_channels(request.headers.get("transport", ""))
                if pair is None:
                    viewer.write(response(461, "Unsupported Transport", cseq))
                    return
                encoder = await self._encoder_for(request.url)
                viewer.encoder = encoder
                viewer.channels = pair
                transport = f"RTP/AVP/TCP;unicast;interleaved={pair[0]}-{pair[1]}"
                viewer.write(response(200, "OK", cseq, {"Transport": transport, "Session": "1"}))
            elif request.method == "PLAY":
                if viewer.encoder is None:
                    viewer.write(response(455, "Method Not Valid In This State", cseq))
                    return
                viewer.write(response(200, "OK", cseq, {"Session": "1", "Range": "npt=0.000-"}))
                viewer.playing = True
                for packet in viewer.encoder.gop:  # from the last key frame: the picture starts at once
                    viewer.send(packet, False)
                self._join(viewer.encoder, viewer)
            elif request.method in ("GET_PARAMETER", "SET_PARAMETER"):
                viewer.write(response(200, "OK", cseq, {"Session": "1"}))
            elif request.method == "TEARDOWN":
                viewer.write(response(200, "OK", cseq, {"Session": "1"}))
                self.leave(viewer)
            else:
                viewer.write(response(501, "Not Implemented", cseq))
        except LiveError as exc:
            log.info("live view: %s %s: %d %s", request.method, request.url, exc.status, exc.reason)
            viewer.write(response(exc.status, exc.reason.replace("\r", " ").replace("\n", " "), cseq))

    def warm(self, device: str, channel: int, profile: str) -> None:
        """Start the encoder of ``device``'s ``channel`` and ``profile`` now, for a viewer about
        to DESCRIBE it; what stops it is logged here and answered to that DESCRIBE."""
        url = f"rtsp://127.0.0.1:{self.config.port}/{device}/{channel}/{profile}"
        task = asyncio.get_running_loop().create_task(self._warm(url), name=f"warming {url}")
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm(self, url: str) -> None:
        try:
            await self._encoder_for(url)
        except LiveError as exc:
            log.info("live view: warming %s: %d %s", url, exc.status, exc.reason)

    def streaming_url(self, device: str, channel: int) -> str | None:
        """``rtsp://127.0.0.1:PORT/DEVICE/CHANNEL/PROFILE`` of a running encoder of the channel
        (the main one first), or None: a snapshot then reads the stream, not the busy source."""
        for profile in PROFILES:
            encoder = self._encoders.get(f"{device}/{channel}/{profile}")
            if encoder is not None and encoder.process is not None and encoder.process.returncode is None:
                return f"rtsp://127.0.0.1:{self.config.port}/{device}/{channel}/{profile}"
        return None

    def _watch(self, key: str) -> None:
        """Every second while ``key``'s encoder runs: has it stalled, or exited under viewers?"""
        encoder = self._encoders.get(key)
        if encoder is None:
            return
        loop = asyncio.get_running_loop()
        encoder.watch = loop.call_later(WATCH_INTERVAL_S, self._watch, key)
        device, channel, _ = parse_path(f"/{key}")
        process = encoder.process
        if process is not None and process.returncode is not None:
            if encoder.viewers:
                message = (
                    f"the encoder of {key} exited (code {process.returncode}) while watched; "
                    f"see live-{key.replace('/', '-')}.log in the runtime directory"
                )
                log.warning("live view: %s", message)
                self._report(EncoderError(device, loop.time(), channel, message))
                for viewer in tuple(encoder.viewers):
                    if viewer.transport is not None:
                        viewer.transport.close()
            self._stop(key, f"its encoder exited with code {process.returncode}")
            return
        silent = loop.time() - encoder.last_packet_at
        if silent < self.config.stall_after_s:
            if encoder.stalled:
                encoder.stalled = False
                log.info("live view: %s sends again", key)
            return
        if encoder.stalled or not encoder.viewers or self._sources(device, channel)[1] != "locked":
            return
        encoder.stalled = True
        log.warning("live view: %s sent nothing for %.0f s", key, silent)
        self._report(StreamStalled(device, loop.time(), channel, silent))

    def _report(self, event: HalEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("live view: reporting %r failed; carrying on", event)

    def leave(self, viewer: _Viewer) -> None:
        """A viewer stopped or went away: its encoder stops once nobody watches."""
        viewer.playing = False
        encoder = viewer.encoder
        if encoder is None:
            return
        encoder.viewers.discard(viewer)
        viewer.encoder = None
        if not encoder.viewers and self._encoders.get(encoder.key) is encoder:
            self._arm(encoder, self.config.idle_stop_s)

    def _arm(self, encoder: _Encoder, delay: float) -> None:
        """Stop ``encoder`` after ``delay`` unless a viewer joins first."""
        if encoder.stop_timer is not None:
            encoder.stop_timer.cancel()
        encoder.stop_timer = asyncio.get_running_loop().call_later(delay, self._stop, encoder.key)

    def _join(self, encoder: _Encoder, viewer: _Viewer) -> None:
        encoder.viewers.add(viewer)
        if encoder.stop_timer is not None:
            encoder.stop_timer.cancel()
            encoder.stop_timer = None

    def _stop(self, key: str, why: str = "nobody watching") -> None:
        encoder = self._encoders.pop(key, None)
        if encoder is not None:
            encoder.stop_timer = None
            encoder.close()
            log.info("live view: %s stopped (%s); %d packets relayed", key, why, encoder.packets)

    async def _encoder_for(self, url: str) -> _Encoder:
        device, channel, profile = parse_path(url)
        key = f"{device}/{channel}/{profile}"
        encoder = self._encoders.get(key)
        if encoder is not None and encoder.process is not None and encoder.process.returncode is None:
            if not encoder.viewers:
                self._arm(encoder, max(self.config.idle_stop_s, SETUP_GRACE_S))
            return encoder
        if encoder is not None:
            self._stop(key, "its encoder had exited")
        pending = self._starting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        source, state = self._sources(device, channel)
        if state != "locked":
            raise LiveError(503, f"No signal on {device} channel {channel} ({state})")
        if source is None:
            raise LiveError(501, f"{device} channel {channel} has no software-encodable frames")
        future: asyncio.Future[_Encoder] = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        try:
            encoder = _Encoder(key, self.config, self._workdir)
            await encoder.start(source, profile)
            self._encoders[key] = encoder
            self._arm(encoder, max(self.config.idle_stop_s, SETUP_GRACE_S))
            encoder.watch = asyncio.get_running_loop().call_later(WATCH_INTERVAL_S, self._watch, key)
            log.info("live view: %s started", key)
            future.set_result(encoder)
            return encoder
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; waiters get it through shield
            raise
        finally:
            self._starting.pop(key, None)


def warm_rpc(live: LiveView, first_device: Callable[[], str]) -> Callable[[bytes], Awaitable[bytes]]:
    """The ``live-warm`` RPC: ``{"device": NAME or "", "channel": N, "profile": "main"|"sub"}``
    (``""``: the first capture device) starts that encoder and answers ``{"warming": PATH}`` at
    once, or ``{"error": ...}`` for a request of another shape."""

    async def handle(request: bytes) -> bytes:
        body = rpc_object(request) or {}
        device, channel, profile = body.get("device"), body.get("channel"), body.get("profile")
        if not isinstance(device, str) or type(channel) is not int or profile not in PROFILES:
            answer: dict[str, str] = {
                "error": 'a live-warm request is {"device": NAME, "channel": N, "profile": "main" or "sub"}'
            }
        else:
            name = device or first_device()
            live.warm(name, channel, str(profile))
            answer = {"warming": f"{name}/{channel}/{profile}"}
        return json.dumps(answer).encode("utf-8")

    return handle


def parse_path(url: str) -> tuple[str, int, str]:
    """(device, channel, profile) from ``rtsp://host:port/DEVICE/CHANNEL/PROFILE[/trackID=0]``.

    Raises:
        LiveError: 404 for a path of another shape.
    """
    path = url.split("://", 1)[-1]
    parts = [p for p in path.split("/")[1:] if p and not p.startswith("trackID=")]
    if len(parts) != 3 or not parts[1].isdigit() or parts[2] not in PROFILES:
        raise LiveError(404, "Not Found: use rtsp://HOST:PORT/DEVICE/CHANNEL/main or .../sub")
    return parts[0], int(parts[1]), parts[2]


def workdir_for(runtime_dir: Path) -> Path:
    """Where the encoders' SDP and log files go (made if missing)."""
    path = runtime_dir / "live"
    os.makedirs(path, exist_ok=True)
    return path
