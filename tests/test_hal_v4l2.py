"""The V4L2 backend's pieces that run without a capture device: the UAPI layout and ioctl numbers,
how status flags and standards become the HAL's signal and format, control scaling, and the
errors for a missing or wrong node. The backend against a real driver (vivid) runs in the QEMU
guest (tests/hil/test_hal_vivid.py)."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest

from dvrlink.hal import v4l2
from dvrlink.hal.model import DeviceIoError, SignalState, VideoFormat

NATIVE_U64_ALIGN = struct.calcsize("IQ") - 8  # 4 on i386, 8 on x86-64, arm64 and EABI armhf


def test_structures_and_ioctl_numbers_match_the_kernel_header() -> None:
    assert ctypes.sizeof(v4l2.V4l2Capability) == 104
    assert ctypes.sizeof(v4l2.V4l2Input) == (80 if NATIVE_U64_ALIGN == 8 else 76)
    assert ctypes.sizeof(v4l2.V4l2Queryctrl) == 68
    assert ctypes.sizeof(v4l2.V4l2Querymenu) == 44
    assert v4l2.V4l2Input.std.offset == 48 and v4l2.V4l2Input.status.offset == 56
    # Values from linux/videodev2.h as a 64-bit build prints them.
    assert v4l2.VIDIOC_QUERYCAP == 0x80685600
    assert v4l2.VIDIOC_G_INPUT == 0x80045626
    assert v4l2.VIDIOC_QUERYSTD == 0x8008563F
    assert v4l2.VIDIOC_S_STD == 0x40085618
    assert v4l2.VIDIOC_S_CTRL == 0xC008561C
    assert v4l2.VIDIOC_QUERYCTRL == 0xC0445624
    assert v4l2.VIDIOC_QUERYMENU == 0xC02C5625
    if NATIVE_U64_ALIGN == 8:
        assert v4l2.VIDIOC_ENUMINPUT == 0xC050561A


@pytest.mark.parametrize(
    ("status", "std", "signal", "video_format"),
    [
        (0, v4l2.V4L2_STD_PAL, SignalState.LOCKED, VideoFormat.CVBS_PAL),
        (0, 0x1000, SignalState.LOCKED, VideoFormat.CVBS_NTSC),  # NTSC-M alone
        (0, 0x100, SignalState.LOCKED, VideoFormat.CVBS_NTSC),  # PAL-M has 525 lines
        (0, 0x10000, SignalState.LOCKED, VideoFormat.CVBS_PAL),  # SECAM-B: 625 lines
        (0, None, SignalState.LOCKED, VideoFormat.UNKNOWN),  # an input without standards
        (0, 0, SignalState.NO_LOCK, VideoFormat.UNKNOWN),
        (v4l2.V4L2_IN_ST_NO_SIGNAL, v4l2.V4L2_STD_PAL, SignalState.NO_VIDEO, VideoFormat.UNKNOWN),
        (v4l2.V4L2_IN_ST_NO_POWER, None, SignalState.NO_VIDEO, VideoFormat.UNKNOWN),
        (v4l2.V4L2_IN_ST_NO_H_LOCK, v4l2.V4L2_STD_PAL, SignalState.NO_LOCK, VideoFormat.UNKNOWN),
        (v4l2.V4L2_IN_ST_NO_STD_LOCK, None, SignalState.NO_LOCK, VideoFormat.UNKNOWN),
        (0x10 | 0x20, v4l2.V4L2_STD_PAL, SignalState.LOCKED, VideoFormat.CVBS_PAL),  # flips are no loss
    ],
)
def test_status_and_standard_become_signal_and_format(
    status: int, std: int | None, signal: SignalState, video_format: VideoFormat
) -> None:
    assert v4l2.reading_from(status, std) == (signal, video_format)


def test_controls_scale_from_the_hal_range() -> None:
    assert v4l2.scale_control(0, 0, 255) == 0 and v4l2.scale_control(255, 0, 255) == 255
    assert v4l2.scale_control(128, -128, 127) == 0
    assert v4l2.scale_control(255, 256, 511) == 511  # vivid's brightness on input 2


def test_a_missing_node_and_a_node_that_is_not_video_say_what_to_check(tmp_path: Path) -> None:
    missing = v4l2.V4l2Device("cards", [str(tmp_path / "video9")])
    with pytest.raises(DeviceIoError, match="does not exist: is the capture driver loaded"):
        missing.probe()
    not_video = v4l2.V4l2Device("cards", ["/dev/null"])
    with pytest.raises(DeviceIoError, match="/dev/null: VIDIOC_QUERYCAP failed"):
        not_video.read()
    with pytest.raises(ValueError, match="at least one node"):
        v4l2.V4l2Device("cards", [])
    device = v4l2.V4l2Device("cards", ["/dev/video0", "/dev/video1"])
    with pytest.raises(ValueError, match="cvbs-pal or cvbs-ntsc"):
        device.set_format(1, VideoFormat.AHD_720P25)
    source = device.frame_source(1)
    assert source is not None and source.input_args == ("-f", "v4l2", "-i", "/dev/video1")
