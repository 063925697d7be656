"""JPEG snapshots of the capture channels, through the encoder seam.

ffmpeg (``[live] encoder``) reads one frame of the channel's ``FrameSource`` and writes it as a
JPEG. When a viewer is watching the channel, its V4L2 node is already streaming (a second
reader would get "device busy"), so the frame comes from the live view's own RTSP stream
instead, which starts at its last key frame. A JPEG over the size cap is encoded again from
itself, smaller and coarser, until it fits (``LADDER``).

- ``SnapshotTaker``: a channel's JPEG by (capture device, channel).
- ``snapshot_rpc``: the session RPC ``snapshot``: a JSON request ``{"device": "front",
  "channel": 2, "width": 640}``; the reply is the JPEG itself (it starts with ``FF D8``), or a
  JSON object ``{"error": "..."}`` that says why there is none.
- ``CaptureAlarms``: HAL events as alarms for the broker, in the order they happened; with
  ``[alarms] snapshots`` on, a ``MotionStart`` waits (``SNAPSHOT_WAIT_S`` at most) for a JPEG
  of its channel (``alarm_wire.MAX_SNAPSHOT`` bytes at most) and carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from dvrlink.daemon.capture_service import AlarmRaiser, raise_capture_alarm
from dvrlink.daemon.services import rpc_object
from dvrlink.hal.device import FrameSource
from dvrlink.hal.model import HalEvent, MotionStart

log = logging.getLogger(__name__)

JPEG_START = b"\xff\xd8"
LADDER = ((640, 5), (640, 10), (480, 15), (320, 20), (240, 31))
"""(width, ffmpeg's JPEG quantiser 2-31): the steps tried until a JPEG fits its cap."""
GRAB_TIMEOUT_S = 10.0
"""How long ffmpeg may take to open the source and encode one frame."""
SNAPSHOT_WAIT_S = 5.0
"""How long an alarm waits for its snapshot before it goes without one."""
MAX_RPC_SNAPSHOT = 512 * 1024
"""The largest JPEG the ``snapshot`` RPC sends (a 1920-wide frame at the first step is ~300 KB)."""
MIN_WIDTH, MAX_WIDTH = 160, 1920


class SnapshotError(Exception):
    """No snapshot: the message says why (no signal, the encoder failed, nothing fits the cap)."""


SourceLookup = Callable[[str, int], tuple[FrameSource | None, str]]
"""(device, channel) -> (its frame source, its signal state or why there is none)."""


class LiveUrls(Protocol):
    """What the snapshots need of the live view: the RTSP URL of a channel being streamed."""

    def streaming_url(self, device: str, channel: int) -> str | None: ...


def grab_command(
    encoder: tuple[str, ...], input_args: tuple[str, ...], width: int, quality: int
) -> list[str]:
    """ffmpeg's command line: one frame of ``input_args``, ``width`` pixels wide, as a JPEG on stdout."""
    return [
        *encoder,
        "-hide_banner", "-loglevel", "error",
        *input_args,
        "-frames:v", "1", "-an", "-vf", f"scale={width}:-2",
        "-q:v", str(quality), "-f", "image2pipe", "-c:v", "mjpeg", "-",
    ]  # fmt: skip


async def _run(command: list[str], stdin: bytes | None, timeout_s: float) -> bytes:
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise SnapshotError(
            f"the encoder {command[0]} cannot start ({exc.strerror}); install ffmpeg"
        ) from exc
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise SnapshotError(f"the encoder gave no frame within {timeout_s:g} s") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    if process.returncode != 0 or not out.startswith(JPEG_START):
        lines = err.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1] if lines else f"exit code {process.returncode}, no JPEG"
        raise SnapshotError(f"the encoder failed: {why}")
    return out


async def grab_jpeg(
    encoder: tuple[str, ...],
    input_args: tuple[str, ...],
    max_bytes: int,
    *,
    width: int = LADDER[0][0],
    timeout_s: float = GRAB_TIMEOUT_S,
) -> bytes:
    """One JPEG of ``input_args`` (ffmpeg input arguments), at most ``max_bytes``: grabbed
    ``width`` wide, then encoded again from itself down ``LADDER`` while it is too large.

    Raises:
        SnapshotError: the encoder is missing, fails or times out, or even the last step is
            over ``max_bytes``.
    """
    steps = [(width, LADDER[0][1])] + [(min(w, width), q) for w, q in LADDER[1:]]
    jpeg = await _run(grab_command(encoder, input_args, *steps[0]), None, timeout_s)
    for step_width, quality in steps[1:]:
        if len(jpeg) <= max_bytes:
            return jpeg
        jpeg = await _run(
            grab_command(encoder, ("-f", "image2pipe", "-i", "-"), step_width, quality), jpeg, timeout_s
        )
    if len(jpeg) <= max_bytes:
        return jpeg
    raise SnapshotError(f"the smallest JPEG of the frame is {len(jpeg)} bytes, over the {max_bytes}-byte cap")


class SnapshotTaker:
    """Snapshots of the channels ``sources`` knows, with ``encoder`` (``[live] encoder``); from
    the live view's stream (``live``) while one runs."""

    def __init__(self, encoder: tuple[str, ...], sources: SourceLookup, live: LiveUrls | None = None) -> None:
        self._encoder = encoder
        self._sources = sources
        self.live = live
        self.taken = 0

    async def take(self, device: str, channel: int, max_bytes: int, width: int = LADDER[0][0]) -> bytes:
        """A JPEG of ``device``'s ``channel``, at most ``max_bytes``.

        Raises:
            SnapshotError: no picture on the channel (its state says why), no frames in user
                space (a decoder chip without a capture path), or the encoder failed.
        """
        source, state = self._sources(device, channel)
        if source is None and state in ("unknown device", "no such channel", "not watched"):
            raise SnapshotError(f"{device} channel {channel}: {state}; see `dvrlink channels`")
        if state != "locked":
            raise SnapshotError(f"no picture on {device} channel {channel} ({state})")
        url = self.live.streaming_url(device, channel) if self.live is not None else None
        if url is not None:
            input_args: tuple[str, ...] = ("-rtsp_transport", "tcp", "-i", url)
        elif source is not None:
            input_args = source.input_args
        else:
            raise SnapshotError(f"{device} channel {channel} has no frames in user space for a snapshot")
        jpeg = await grab_jpeg(self._encoder, input_args, max_bytes, width=width)
        self.taken += 1
        log.info(
            "snapshot of %s channel %d: %d bytes, from %s",
            device,
            channel,
            len(jpeg),
            "the live stream" if url is not None else "the source",
        )
        return jpeg


def snapshot_rpc(taker: SnapshotTaker) -> Callable[[bytes], Awaitable[bytes]]:
    """The ``snapshot`` RPC handler (see the module docstring)."""

    async def handle(request: bytes) -> bytes:
        body = rpc_object(request) or {}
        device, channel, width = body.get("device"), body.get("channel"), body.get("width", LADDER[0][0])
        if not isinstance(device, str) or type(channel) is not int or type(width) is not int:
            return _error('a snapshot request is {"device": NAME, "channel": N, "width": PIXELS}')
        if not MIN_WIDTH <= width <= MAX_WIDTH:
            return _error(f"width {width} is out of range: use {MIN_WIDTH} to {MAX_WIDTH} pixels")
        try:
            return await taker.take(device, channel, MAX_RPC_SNAPSHOT, width)
        except SnapshotError as exc:
            log.info("snapshot of %s channel %s: %s", device, channel, exc)
            return _error(str(exc))

    return handle


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")


class CaptureAlarms:
    """HAL events as alarms, in order (see the module docstring). ``snapshot`` takes a
    channel's JPEG (``SnapshotTaker.take`` with the alarm cap); None: alarms carry none."""

    def __init__(
        self,
        alarms: AlarmRaiser,
        snapshot: Callable[[str, int], Awaitable[bytes]] | None = None,
        wait_s: float = SNAPSHOT_WAIT_S,
    ) -> None:
        self._alarms = alarms
        self._snapshot = snapshot
        self._wait_s = wait_s
        self._pending: deque[HalEvent] = deque()
        self._task: asyncio.Task[None] | None = None
        self.stats = {"snapshots": 0, "without_snapshot": 0}

    def __call__(self, event: HalEvent) -> None:
        """Raise ``event``'s alarm now, or after the snapshots of the events before it."""
        if self._snapshot is None or (not self._pending and not isinstance(event, MotionStart)):
            raise_capture_alarm(self._alarms, event)
            return
        self._pending.append(event)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="alarm snapshots")

    async def _drain(self) -> None:
        try:
            while self._pending:
                event = self._pending[0]
                jpeg = await self._take(event) if isinstance(event, MotionStart) else None
                self._pending.popleft()
                raise_capture_alarm(self._alarms, event, snapshot=jpeg)
        finally:
            self._task = None

    async def _take(self, event: MotionStart) -> bytes | None:
        assert self._snapshot is not None
        try:
            async with asyncio.timeout(self._wait_s):
                jpeg = await self._snapshot(event.device, event.channel)
        except (SnapshotError, TimeoutError) as exc:
            self.stats["without_snapshot"] += 1
            log.warning(
                "motion on %s channel %d: the alarm goes without a snapshot (%s)",
                event.device,
                event.channel,
                exc or f"none within {self._wait_s:g} s",
            )
            return None
        self.stats["snapshots"] += 1
        return jpeg

    def close(self) -> None:
        """Raise the alarms still waiting for snapshots, without them: none is lost."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        while self._pending:
            raise_capture_alarm(self._alarms, self._pending.popleft())
