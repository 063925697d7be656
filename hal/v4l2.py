"""The V4L2 backend: capture cards with a Linux driver (tw686x, solo6x10, cx25821 class) and vivid.

DVR capture cards give each channel a video node of its own (tw686x and solo6x10 make one
``/dev/videoN`` per input), so a channel here is a node, read through its current input:
- **signal**: ``VIDIOC_ENUMINPUT``'s status flags: ``NO_POWER``, ``NO_SIGNAL`` or ``NO_SYNC`` is no
  video; ``NO_H_LOCK``, ``NO_V_LOCK``, ``NO_STD_LOCK`` or ``NO_CARRIER`` is no lock; none of these is
  a locked picture (the flags are the driver's, for the node's current input);
- **format**: ``VIDIOC_QUERYSTD`` for an analogue (SDTV) input: a 625-line standard is CVBS PAL, a
  525-line one CVBS NTSC. The analogue HD families have no V4L2 standard, so a node that is not
  SDTV reports the format ``unknown`` while locked;
- **controls**: ``V4L2_CID_BRIGHTNESS``, ``CONTRAST``, ``SATURATION`` and ``HUE``, scaled from the
  HAL's 0-255 to each control's range (``VIDIOC_QUERYCTRL``);
- **motion**: V4L2 has no common motion status (solo6x10 has its own events), so this backend
  reports none; motion on such boards needs a frame analyser (not built).

The ioctls are made with ``fcntl.ioctl`` on ``ctypes`` structures laid out as in the kernel's UAPI
header ``linux/videodev2.h`` (its layout is part of the kernel's ABI). No V4L2 library is used:
the one made for Python (linuxpy) is GPL-3.0, which a recorder image under Apache-2.0 should not
ship, and five ioctls do not need it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Sequence

from dvrlink.hal.device import FrameSource, check_channel
from dvrlink.hal.model import (
    ChannelReading,
    DeviceIoError,
    MotionConfig,
    PictureControls,
    SignalState,
    VideoFormat,
)

# ---- the UAPI (linux/videodev2.h) -----------------------------------------------------------


class V4l2Capability(ctypes.Structure):
    _fields_ = (
        ("driver", ctypes.c_char * 16),
        ("card", ctypes.c_char * 32),
        ("bus_info", ctypes.c_char * 32),
        ("version", ctypes.c_uint32),
        ("capabilities", ctypes.c_uint32),
        ("device_caps", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 3),
    )


class V4l2Input(ctypes.Structure):
    _fields_ = (
        ("index", ctypes.c_uint32),
        ("name", ctypes.c_char * 32),
        ("type", ctypes.c_uint32),
        ("audioset", ctypes.c_uint32),
        ("tuner", ctypes.c_uint32),
        ("std", ctypes.c_uint64),
        ("status", ctypes.c_uint32),
        ("capabilities", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 3),
    )


class V4l2Control(ctypes.Structure):
    _fields_ = (("id", ctypes.c_uint32), ("value", ctypes.c_int32))


class V4l2Queryctrl(ctypes.Structure):
    _fields_ = (
        ("id", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("name", ctypes.c_char * 32),
        ("minimum", ctypes.c_int32),
        ("maximum", ctypes.c_int32),
        ("step", ctypes.c_int32),
        ("default_value", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 2),
    )


class V4l2Querymenu(ctypes.Structure):
    _pack_ = 4  # the kernel declares it __attribute__((packed)) around a union with a __s64
    _fields_ = (
        ("id", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("name", ctypes.c_char * 32),
        ("reserved", ctypes.c_uint32),
    )


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("V") << 8) | number


_READ, _WRITE = 2, 1
VIDIOC_QUERYCAP = _ioc(_READ, 0, ctypes.sizeof(V4l2Capability))
VIDIOC_G_STD = _ioc(_READ, 23, 8)
VIDIOC_S_STD = _ioc(_WRITE, 24, 8)
VIDIOC_ENUMINPUT = _ioc(_READ | _WRITE, 26, ctypes.sizeof(V4l2Input))
VIDIOC_G_CTRL = _ioc(_READ | _WRITE, 27, ctypes.sizeof(V4l2Control))
VIDIOC_S_CTRL = _ioc(_READ | _WRITE, 28, ctypes.sizeof(V4l2Control))
VIDIOC_QUERYCTRL = _ioc(_READ | _WRITE, 36, ctypes.sizeof(V4l2Queryctrl))
VIDIOC_QUERYMENU = _ioc(_READ | _WRITE, 37, ctypes.sizeof(V4l2Querymenu))
VIDIOC_G_INPUT = _ioc(_READ, 38, 4)
VIDIOC_QUERYSTD = _ioc(_READ, 63, 8)

V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_DEVICE_CAPS = 0x80000000
V4L2_IN_CAP_STD = 0x00000004
V4L2_IN_ST_NO_POWER = 0x00000001
V4L2_IN_ST_NO_SIGNAL = 0x00000002
V4L2_IN_ST_NO_H_LOCK = 0x00000100
V4L2_IN_ST_NO_V_LOCK = 0x00000400
V4L2_IN_ST_NO_STD_LOCK = 0x00000800
V4L2_IN_ST_NO_SYNC = 0x00010000
V4L2_IN_ST_NO_CARRIER = 0x00040000
NO_VIDEO_FLAGS = V4L2_IN_ST_NO_POWER | V4L2_IN_ST_NO_SIGNAL | V4L2_IN_ST_NO_SYNC
NO_LOCK_FLAGS = V4L2_IN_ST_NO_H_LOCK | V4L2_IN_ST_NO_V_LOCK | V4L2_IN_ST_NO_STD_LOCK | V4L2_IN_ST_NO_CARRIER
V4L2_STD_PAL = 0x000000FF
V4L2_STD_NTSC = 0x0000B000
V4L2_STD_525_60 = 0x0000B000 | 0x00000100 | 0x00000800 | 0x00004000
"""NTSC, PAL-M, PAL-60 and NTSC-443: the 525-line standards."""
V4L2_STD_625_50 = 0x000000FF | 0x00000600 | 0x00FF0000
"""PAL, PAL-N, PAL-Nc and SECAM: the 625-line standards."""
V4L2_CID_BRIGHTNESS = 0x00980900
V4L2_CID_CONTRAST = 0x00980901
V4L2_CID_SATURATION = 0x00980902
V4L2_CID_HUE = 0x00980903
V4L2_CTRL_FLAG_DISABLED = 0x0001
V4L2_CTRL_FLAG_NEXT_CTRL = 0x80000000
V4L2_CTRL_TYPE_MENU = 3


def reading_from(status: int, std: int | None) -> tuple[SignalState, VideoFormat]:
    """The HAL's signal and format from an input's status flags and its detected standard
    (``std``: ``VIDIOC_QUERYSTD``'s answer, None if the input has no standards)."""
    if status & NO_VIDEO_FLAGS:
        return SignalState.NO_VIDEO, VideoFormat.UNKNOWN
    if status & NO_LOCK_FLAGS:
        return SignalState.NO_LOCK, VideoFormat.UNKNOWN
    if std is None:
        return SignalState.LOCKED, VideoFormat.UNKNOWN
    if std & V4L2_STD_625_50 and not std & V4L2_STD_525_60:
        return SignalState.LOCKED, VideoFormat.CVBS_PAL
    if std & V4L2_STD_525_60 and not std & V4L2_STD_625_50:
        return SignalState.LOCKED, VideoFormat.CVBS_NTSC
    if std == 0:  # the decoder has a signal but names no standard
        return SignalState.NO_LOCK, VideoFormat.UNKNOWN
    return SignalState.LOCKED, VideoFormat.UNKNOWN


def scale_control(value: int, minimum: int, maximum: int) -> int:
    """The HAL's 0-255 (128 neutral) on a control's ``minimum``..``maximum``."""
    return minimum + round(value * (maximum - minimum) / 255)


class V4l2Node:
    """One open video node and the few ioctls the backend uses."""

    def __init__(self, path: str) -> None:
        """Open ``path`` (non-blocking, read-write).

        Raises:
            DeviceIoError: it does not exist, cannot be opened, or is not a video capture node.
        """
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceIoError(
                f"{path} does not exist: is the capture driver loaded (lsmod, dmesg)? "
                "check [[capture]] devices"
            ) from None
        except OSError as exc:
            raise DeviceIoError(
                f"cannot open {path}: {exc.strerror}; run dvrlinkd as a user in the video group"
            ) from exc
        try:
            caps = V4l2Capability()
            self._ioctl(VIDIOC_QUERYCAP, caps, "QUERYCAP")
        except DeviceIoError:
            os.close(self.fd)
            raise
        mask = caps.device_caps if caps.capabilities & V4L2_CAP_DEVICE_CAPS else caps.capabilities
        if not mask & V4L2_CAP_VIDEO_CAPTURE:
            os.close(self.fd)
            raise DeviceIoError(f"{path} ({caps.card.decode(errors='replace')}) is not a video capture node")
        self.driver = caps.driver.decode(errors="replace")
        self.card = caps.card.decode(errors="replace")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _ioctl(
        self, request: int, argument: ctypes.Structure | ctypes.Array[ctypes.c_char], what: str
    ) -> None:
        try:
            fcntl.ioctl(self.fd, request, argument, True)
        except OSError as exc:
            raise DeviceIoError(
                f"{self.path}: VIDIOC_{what} failed: {exc.strerror}; check the driver (dmesg)"
            ) from exc

    def current_input(self) -> V4l2Input:
        """The current input with its status flags."""
        index = ctypes.c_uint32()
        try:
            fcntl.ioctl(self.fd, VIDIOC_G_INPUT, index, True)
        except OSError as exc:
            if exc.errno != errno.ENOTTY:
                raise DeviceIoError(f"{self.path}: VIDIOC_G_INPUT failed: {exc.strerror}") from exc
            index.value = 0
        found = V4l2Input(index=index.value)
        self._ioctl(VIDIOC_ENUMINPUT, found, "ENUMINPUT")
        return found

    def query_std(self) -> int:
        """The standard the decoder detects (0: none)."""
        std = ctypes.c_uint64()
        try:
            fcntl.ioctl(self.fd, VIDIOC_QUERYSTD, std, True)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.ENODATA):
                return 0
            raise DeviceIoError(f"{self.path}: VIDIOC_QUERYSTD failed: {exc.strerror}") from exc
        return std.value

    def set_std(self, std: int) -> None:
        value = ctypes.c_uint64(std)
        try:
            fcntl.ioctl(self.fd, VIDIOC_S_STD, value, True)
        except OSError as exc:
            raise DeviceIoError(
                f"{self.path}: VIDIOC_S_STD failed: {exc.strerror} (a stream may be running)"
            ) from exc

    def query_control(self, control_id: int) -> V4l2Queryctrl | None:
        """A control's description, or None if the node has no such control."""
        query = V4l2Queryctrl(id=control_id)
        try:
            fcntl.ioctl(self.fd, VIDIOC_QUERYCTRL, query, True)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return None
            raise DeviceIoError(f"{self.path}: VIDIOC_QUERYCTRL failed: {exc.strerror}") from exc
        return None if query.flags & V4L2_CTRL_FLAG_DISABLED else query

    def controls(self) -> list[V4l2Queryctrl]:
        """Every control of the node (``V4L2_CTRL_FLAG_NEXT_CTRL`` enumeration), at most 1024."""
        out: list[V4l2Queryctrl] = []
        next_id = 0
        for _ in range(1024):
            query = V4l2Queryctrl(id=next_id | V4L2_CTRL_FLAG_NEXT_CTRL)
            try:
                fcntl.ioctl(self.fd, VIDIOC_QUERYCTRL, query, True)
            except OSError:
                break
            out.append(query)
            next_id = query.id
        return out

    def menu(self, control: V4l2Queryctrl) -> dict[str, int]:
        """A menu control's item names and their values."""
        items: dict[str, int] = {}
        for index in range(max(control.minimum, 0), min(control.maximum, 255) + 1):
            entry = V4l2Querymenu(id=control.id, index=index)
            try:
                fcntl.ioctl(self.fd, VIDIOC_QUERYMENU, entry, True)
            except OSError:
                continue
            items[entry.name.decode(errors="replace")] = index
        return items

    def get_control(self, control_id: int) -> int:
        control = V4l2Control(id=control_id)
        self._ioctl(VIDIOC_G_CTRL, control, "G_CTRL")
        return int(control.value)

    def set_control(self, control_id: int, value: int) -> None:
        self._ioctl(VIDIOC_S_CTRL, V4l2Control(id=control_id, value=value), "S_CTRL")


def set_control_by_name(node: V4l2Node, name: str, value: str | int) -> None:
    """Set the control called ``name`` (a menu item's name, or a number). For rigs and tests:
    vivid's "Standard Signal Mode" switches an input to "No Signal" or "No Lock".

    Raises:
        ValueError: no such control, or no such menu item (the message lists what there is).
        DeviceIoError: the ioctl failed.
    """
    controls = {c.name.decode(errors="replace"): c for c in node.controls()}
    control = controls.get(name)
    if control is None:
        raise ValueError(f"{node.path} has no control {name!r}; it has {', '.join(sorted(controls))}")
    if isinstance(value, str) and control.type == V4L2_CTRL_TYPE_MENU:
        items = node.menu(control)
        if value not in items:
            raise ValueError(f"{name} has no item {value!r}; it has {', '.join(items)}")
        value = items[value]
    node.set_control(control.id, int(value))


class V4l2Device:
    """Capture channels on V4L2 nodes, one node per channel (see the module's docstring)."""

    def __init__(self, name: str, paths: Sequence[str]) -> None:
        if not paths:
            raise ValueError("a V4L2 capture device needs at least one node in devices")
        self._name = name
        self._paths = tuple(paths)
        self._nodes: list[V4l2Node | None] = [None] * len(self._paths)
        self._standards: list[int | None] = [None] * len(self._paths)

    @property
    def name(self) -> str:
        return self._name

    @property
    def channel_count(self) -> int:
        return len(self._paths)

    def _node(self, channel: int) -> V4l2Node:
        node = self._nodes[channel]
        if node is None:
            node = self._nodes[channel] = V4l2Node(self._paths[channel])
        return node

    def probe(self) -> str:
        cards = []
        for channel in range(self.channel_count):
            node = self._node(channel)
            cards.append(f"{node.path}: {node.driver} {node.card}")
        return "; ".join(cards)

    def read(self) -> list[ChannelReading]:
        readings = []
        for channel in range(self.channel_count):
            node = self._node(channel)
            found = node.current_input()
            std = node.query_std() if found.capabilities & V4L2_IN_CAP_STD else None
            signal, video_format = reading_from(found.status, std)
            readings.append(ChannelReading(channel, signal, video_format, False))
        return readings

    def set_format(self, channel: int, video_format: VideoFormat) -> None:
        check_channel(self, channel)
        std = {VideoFormat.CVBS_PAL: V4L2_STD_PAL, VideoFormat.CVBS_NTSC: V4L2_STD_NTSC}.get(video_format)
        if std is None:
            raise ValueError(f"V4L2 nodes take cvbs-pal or cvbs-ntsc, not {video_format.value}")
        self._node(channel).set_std(std)
        self._standards[channel] = std

    def set_controls(self, channel: int, controls: PictureControls) -> None:
        check_channel(self, channel)
        node = self._node(channel)
        for control_id, value in (
            (V4L2_CID_BRIGHTNESS, controls.brightness),
            (V4L2_CID_CONTRAST, controls.contrast),
            (V4L2_CID_SATURATION, controls.saturation),
            (V4L2_CID_HUE, controls.hue),
        ):
            if value is None:
                continue
            query = node.query_control(control_id)
            if query is not None:
                node.set_control(control_id, scale_control(value, query.minimum, query.maximum))

    def set_motion(self, channel: int, motion: MotionConfig) -> None:
        check_channel(self, channel)
        if motion.enabled:
            raise ValueError("this V4L2 backend has no motion detection; turn it off for this device")

    def reset(self) -> None:
        self.close()  # reopened at the next read
        for channel, std in enumerate(self._standards):
            if std is not None:
                self._node(channel).set_std(std)

    def frame_source(self, channel: int) -> FrameSource | None:
        check_channel(self, channel)
        return FrameSource(("-f", "v4l2", "-i", self._paths[channel]), 0, 0, 0.0)

    def close(self) -> None:
        for channel, node in enumerate(self._nodes):
            if node is not None:
                node.close()
                self._nodes[channel] = None
