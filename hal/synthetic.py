"""The synthetic capture device: a test pattern per channel, with signal loss and motion scripted.

For ``make demo`` and for running dvrlinkd on a PC. Each channel is a camera that is plugged in
(locked, in its format) or not, and sees motion or not. A test changes them with the methods; a
running dvrlinkd takes them from its **control file**, which ``dvrlinkd synthetic`` writes and the
device reads again whenever its modification time changes. One line per channel that differs from
the start (plugged, in the device's format, no motion)::

    2 unplugged
    1 plugged ahd-1080p25 motion
    3 no-lock

Frames come from ffmpeg's ``testsrc2`` at the channel's format size and rate (``frame_source``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dvrlink.hal.device import FrameSource, check_channel
from dvrlink.hal.model import (
    ChannelReading,
    DeviceIoError,
    MotionConfig,
    PictureControls,
    SignalState,
    VideoFormat,
)

CONTROL_STATES = ("plugged", "unplugged", "no-lock")
MAX_CONTROL_BYTES = 4096


@dataclass(slots=True)
class _Camera:
    signal: SignalState
    format: VideoFormat
    motion: bool


class SyntheticDevice:
    """A capture device with ``channels`` scripted cameras (see the module's docstring)."""

    def __init__(
        self,
        name: str,
        channels: int = 4,
        video_format: VideoFormat = VideoFormat.AHD_1080P25,
        control: Path | None = None,
        *,
        check_control: bool = True,
    ) -> None:
        """``check_control``: ``probe`` checks that the control file's folder exists (off for
        the default file in the runtime folder, which the daemon makes when it starts)."""
        if not 1 <= channels <= 64:
            raise ValueError(f"a synthetic device has 1-64 channels, not {channels}")
        if video_format is VideoFormat.UNKNOWN:
            raise ValueError("a synthetic camera needs a format; name one (e.g. ahd-1080p25)")
        self._name = name
        self._default = video_format
        self._cameras = [_Camera(SignalState.LOCKED, video_format, False) for _ in range(channels)]
        self._control = control
        self._control_stamp: tuple[int, int, int] | None = None
        self._check_control = check_control
        self.controls = [PictureControls(128, 128, 128, 128) for _ in range(channels)]
        self.motion_settings = [MotionConfig() for _ in range(channels)]
        self.fail_reads = 0
        """Reads left to fail (a test's injected device error)."""
        self.reads = 0

    # ---- scripting ----

    def unplug(self, channel: int) -> None:
        """The channel's camera is gone (its cable cut)."""
        check_channel(self, channel)
        self._cameras[channel] = _Camera(SignalState.NO_VIDEO, VideoFormat.UNKNOWN, False)

    def plug(self, channel: int, video_format: VideoFormat | None = None) -> None:
        """A camera (in ``video_format``, else the device's) is connected to the channel."""
        check_channel(self, channel)
        self._cameras[channel] = _Camera(SignalState.LOCKED, video_format or self._default, False)

    def no_lock(self, channel: int) -> None:
        """Something the decoder cannot lock to is on the channel."""
        check_channel(self, channel)
        self._cameras[channel] = _Camera(SignalState.NO_LOCK, VideoFormat.UNKNOWN, False)

    def motion(self, channel: int, active: bool) -> None:
        """Motion in the channel's picture starts or stops."""
        check_channel(self, channel)
        self._cameras[channel].motion = active

    # ---- CaptureDevice ----

    @property
    def name(self) -> str:
        return self._name

    @property
    def channel_count(self) -> int:
        return len(self._cameras)

    def probe(self) -> str:
        if self._check_control and self._control is not None and not self._control.parent.is_dir():
            raise DeviceIoError(
                f"{self._name}: the synthetic control file's folder {self._control.parent} does not "
                "exist; create it or point [[capture]] control elsewhere"
            )
        return f"synthetic test pattern, {self.channel_count} channels, {self._default.value}"

    def read(self) -> list[ChannelReading]:
        self.reads += 1
        if self.fail_reads > 0:
            self.fail_reads -= 1
            raise DeviceIoError(f"{self._name}: injected read failure (a test)")
        self._read_control()
        return [
            ChannelReading(
                channel,
                camera.signal,
                camera.format if camera.signal is SignalState.LOCKED else VideoFormat.UNKNOWN,
                camera.motion and camera.signal is SignalState.LOCKED,
            )
            for channel, camera in enumerate(self._cameras)
        ]

    def set_format(self, channel: int, video_format: VideoFormat) -> None:
        check_channel(self, channel)
        if video_format is VideoFormat.UNKNOWN:
            raise ValueError("set a named format (e.g. cvbs-pal), not unknown")
        camera = self._cameras[channel]
        if camera.signal is SignalState.LOCKED:
            camera.format = video_format

    def set_controls(self, channel: int, controls: PictureControls) -> None:
        check_channel(self, channel)
        self.controls[channel] = self.controls[channel].merged(controls)

    def set_motion(self, channel: int, motion: MotionConfig) -> None:
        check_channel(self, channel)
        self.motion_settings[channel] = motion

    def reset(self) -> None:
        pass  # nothing to initialise; injected failures (``fail_reads``) outlast a reset

    def frame_source(self, channel: int) -> FrameSource | None:
        check_channel(self, channel)
        info = (
            self._cameras[channel].format
            if self._cameras[channel].signal is SignalState.LOCKED
            else self._default
        ).info
        pattern = f"testsrc2=size={info.width}x{info.height}:rate={info.fps:g}"
        return FrameSource(("-re", "-f", "lavfi", "-i", pattern), info.width, info.height, info.fps)

    def close(self) -> None:
        pass

    # ---- the control file ----

    def _read_control(self) -> None:
        path = self._control
        if path is None:
            return
        try:
            stat = path.stat()
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            raise DeviceIoError(f"{self._name}: cannot read the control file {path}: {exc.strerror}") from exc
        else:
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._control_stamp:
            return
        self._control_stamp = stamp
        cameras = [_Camera(SignalState.LOCKED, self._default, False) for _ in self._cameras]
        if stamp is not None:
            try:
                text = path.read_bytes()[:MAX_CONTROL_BYTES].decode("utf-8", "replace")
            except OSError as exc:
                raise DeviceIoError(
                    f"{self._name}: cannot read the control file {path}: {exc.strerror}"
                ) from exc
            for line in text.splitlines():
                parsed = parse_control_line(line, len(cameras), self._default)
                if parsed is not None:
                    channel, camera = parsed
                    cameras[channel] = camera
        self._cameras = cameras


def parse_control_line(line: str, channels: int, default: VideoFormat) -> tuple[int, _Camera] | None:
    """One control-file line as (channel, camera); None for a blank, comment or bad line (a
    control file is a test's script: a bad line is skipped, not fatal)."""
    words = line.split("#", 1)[0].split()
    if len(words) < 2 or not words[0].isdigit() or not 0 <= int(words[0]) < channels:
        return None
    channel, state = int(words[0]), words[1].lower()
    motion = "motion" in (w.lower() for w in words[2:])
    if state == "unplugged":
        return channel, _Camera(SignalState.NO_VIDEO, VideoFormat.UNKNOWN, False)
    if state == "no-lock":
        return channel, _Camera(SignalState.NO_LOCK, VideoFormat.UNKNOWN, False)
    if state != "plugged":
        return None
    video_format = default
    for word in words[2:]:
        if word.lower() != "motion":
            try:
                video_format = VideoFormat.parse(word)
            except ValueError:
                return None
    if video_format is VideoFormat.UNKNOWN:
        return None
    return channel, _Camera(SignalState.LOCKED, video_format, motion)


def write_control(path: Path, lines: dict[int, str]) -> None:
    """Write a control file atomically (a temporary file, then a rename): ``lines`` maps a
    channel to the rest of its line (``"unplugged"``, ``"plugged cvbs-pal motion"``).

    Raises:
        OSError: the folder cannot be written.
    """
    text = "".join(f"{channel} {rest}\n" for channel, rest in sorted(lines.items()))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def read_control(path: Path) -> dict[int, str]:
    """A control file's lines by channel (empty when there is none yet)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    out: dict[int, str] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0].isdigit():
            out[int(words[0])] = " ".join(words[1:])
    return out
