"""The channel watcher (made-up time), the synthetic device and the poller on a real event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from dvrlink.hal.model import (
    ChannelReading,
    DeviceError,
    DeviceRecovered,
    FormatChanged,
    HalEvent,
    MotionConfig,
    MotionStart,
    MotionStop,
    MotionZone,
    PictureControls,
    SignalLost,
    SignalRestored,
    SignalState,
    VideoFormat,
)
from dvrlink.hal.poller import DevicePoller
from dvrlink.hal.synthetic import SyntheticDevice, read_control, write_control
from dvrlink.hal.watch import ChannelWatcher, ReadDue, WatchConfig

LOCKED = SignalState.LOCKED
NO_VIDEO = SignalState.NO_VIDEO
HD = VideoFormat.AHD_1080P25
CONFIG = WatchConfig(poll_interval_s=0.2, lost_after_s=0.3, restored_after_s=0.5, motion_hold_s=2.0)


def drain(watcher: ChannelWatcher) -> list[HalEvent]:
    out = []
    while (event := watcher.next_event()) is not None:
        out.append(event)
    return out


def feed(watcher: ChannelWatcher, device: SyntheticDevice, start: float, stop: float) -> list[HalEvent]:
    """Read the device every poll interval from ``start`` to ``stop`` (made-up time)."""
    now = start
    while now <= stop + 1e-9:
        watcher.update(device.read(), now)
        now += CONFIG.poll_interval_s
    return drain(watcher)


def test_first_reading_sets_the_state_without_events() -> None:
    device = SyntheticDevice("dvr", 4)
    device.unplug(3)
    watcher = ChannelWatcher("dvr", range(4), CONFIG)
    watcher.update(device.read(), 0.0)
    assert drain(watcher) == []
    assert [(s.channel, s.signal, s.format) for s in watcher.status()] == [
        (0, LOCKED, HD),
        (1, LOCKED, HD),
        (2, LOCKED, HD),
        (3, NO_VIDEO, VideoFormat.UNKNOWN),
    ]


@pytest.mark.parametrize("channel", range(4))
def test_unplug_and_replug_give_one_event_each_after_the_debounce(channel: int) -> None:
    device = SyntheticDevice("dvr", 4)
    watcher = ChannelWatcher("dvr", range(4), CONFIG)
    watcher.update(device.read(), 0.0)
    device.unplug(channel)
    assert feed(watcher, device, 1.0, 1.2) == [], "a loss shorter than lost_after_s is not reported yet"
    events = feed(watcher, device, 1.4, 3.0)
    assert events == [SignalLost("dvr", pytest.approx(1.4), channel, NO_VIDEO)], events
    device.plug(channel, VideoFormat.TVI_720P30)
    events = feed(watcher, device, 4.0, 6.0)
    assert events == [SignalRestored("dvr", pytest.approx(4.6), channel, VideoFormat.TVI_720P30)], events
    assert watcher.status()[channel].format is VideoFormat.TVI_720P30


def test_a_flicker_shorter_than_the_debounce_is_not_reported() -> None:
    device = SyntheticDevice("dvr", 1)
    watcher = ChannelWatcher("dvr", [0], CONFIG)
    watcher.update(device.read(), 0.0)
    device.unplug(0)
    watcher.update(device.read(), 1.0)
    device.plug(0)
    assert feed(watcher, device, 1.2, 5.0) == []


def test_a_format_change_without_a_gap_is_format_changed() -> None:
    device = SyntheticDevice("dvr", 2)
    watcher = ChannelWatcher("dvr", range(2), CONFIG)
    watcher.update(device.read(), 0.0)
    device.plug(1, VideoFormat.CVI_4M)
    events = feed(watcher, device, 1.0, 3.0)
    assert events == [FormatChanged("dvr", pytest.approx(1.6), 1, HD, VideoFormat.CVI_4M)], events


def test_motion_starts_at_once_and_stops_after_the_hold() -> None:
    device = SyntheticDevice("dvr", 1)
    watcher = ChannelWatcher("dvr", [0], CONFIG)
    watcher.update(device.read(), 0.0)
    device.motion(0, True)
    watcher.update(device.read(), 1.0)
    assert drain(watcher) == [MotionStart("dvr", 1.0, 0)]
    device.motion(0, False)
    assert feed(watcher, device, 1.2, 2.8) == []
    assert watcher.get_timer() == pytest.approx(3.0)
    watcher.handle_timer(3.0)
    assert drain(watcher) == [MotionStop("dvr", 3.0, 0)]


def test_losing_the_signal_ends_motion_first() -> None:
    device = SyntheticDevice("dvr", 1)
    watcher = ChannelWatcher("dvr", [0], CONFIG)
    watcher.update(device.read(), 0.0)
    device.motion(0, True)
    watcher.update(device.read(), 0.2)
    device.unplug(0)
    events = feed(watcher, device, 0.4, 1.0)
    assert [type(e) for e in events] == [MotionStart, MotionStop, SignalLost], events


def test_unwatched_channels_are_ignored() -> None:
    device = SyntheticDevice("dvr", 4)
    watcher = ChannelWatcher("dvr", [0, 1], CONFIG)
    watcher.update(device.read(), 0.0)
    device.unplug(3)
    assert feed(watcher, device, 0.2, 2.0) == []
    assert [s.channel for s in watcher.status()] == [0, 1]


def test_read_errors_give_one_device_error_back_off_and_recovery() -> None:
    watcher = ChannelWatcher("dvr", [0], CONFIG)
    watcher.update([ChannelReading(0, LOCKED, HD)], 0.0)
    for attempt in range(6):
        watcher.failed("i2c-1 0x60: no answer", 1.0 + attempt)
    assert drain(watcher) == [DeviceError("dvr", 1.0, "i2c-1 0x60: no answer")]
    assert watcher.poll_delay() == pytest.approx(min(0.2 * 64, CONFIG.max_retry_s))
    assert watcher.status()[0].signal is LOCKED, "the channels keep their last state"
    watcher.update([ChannelReading(0, LOCKED, HD)], 9.0)
    assert drain(watcher) == [DeviceRecovered("dvr", 9.0, pytest.approx(8.0))]
    assert watcher.poll_delay() == CONFIG.poll_interval_s


def test_the_watcher_asks_for_reads_on_its_schedule() -> None:
    watcher = ChannelWatcher("dvr", [0], CONFIG)
    assert watcher.get_timer() == 0.0
    watcher.handle_timer(0.0)
    assert list(watcher.datagrams_to_send()) == [ReadDue(False)]
    assert watcher.get_timer() is None, "no second read while one is out"
    watcher.update([ChannelReading(0, LOCKED, HD)], 0.01)
    due = watcher.get_timer()
    assert due == pytest.approx(0.21)
    watcher.handle_timer(due)
    assert list(watcher.datagrams_to_send()) == [ReadDue(False)]
    watcher.failed("gone", 0.22)
    assert watcher.get_timer() == pytest.approx(0.22 + 0.4)
    watcher.handle_timer(0.62)
    assert list(watcher.datagrams_to_send()) == [ReadDue(True)], "after a failure: reset, then read"


def test_watch_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="poll_interval_s"):
        WatchConfig(poll_interval_s=0)
    with pytest.raises(ValueError, match="lost_after_s"):
        WatchConfig(lost_after_s=-1)


def test_formats_know_their_family_size_and_rate() -> None:
    assert VideoFormat.CVBS_PAL.info.height == 576
    assert (VideoFormat.TVI_1080P30.info.width, VideoFormat.TVI_1080P30.info.fps) == (1920, 30.0)
    assert VideoFormat.AHD_5M.info.family is not None and VideoFormat.AHD_5M.info.family.value == "ahd"
    assert VideoFormat.parse("AHD_720P25") is VideoFormat.AHD_720P25
    with pytest.raises(ValueError, match="use one of"):
        VideoFormat.parse("hdmi")


def test_controls_and_zones_are_checked() -> None:
    with pytest.raises(ValueError, match="0-255"):
        PictureControls(brightness=300)
    with pytest.raises(ValueError, match="block grid"):
        MotionZone(20, 0, 5, 1)
    with pytest.raises(ValueError, match="sensitivity"):
        MotionConfig(sensitivity=0)


def test_synthetic_controls_merge_and_channels_are_checked() -> None:
    device = SyntheticDevice("dvr", 2)
    device.set_controls(1, PictureControls(brightness=200))
    assert device.controls[1] == PictureControls(200, 128, 128, 128)
    with pytest.raises(ValueError, match="channels 0-1, not 2"):
        device.unplug(2)
    source = device.frame_source(0)
    assert source is not None and "testsrc2=size=1920x1080:rate=25" in source.input_args


def test_the_control_file_scripts_a_running_device(tmp_path: Path) -> None:
    control = tmp_path / "synthetic.ctl"
    device = SyntheticDevice("dvr", 4, control=control)
    assert [r.signal for r in device.read()] == [LOCKED] * 4, "no file: every camera plugged"
    write_control(control, {2: "unplugged", 1: "plugged cvbs-ntsc motion", 3: "bogus words"})
    readings = device.read()
    assert readings[2].signal is NO_VIDEO
    assert (readings[1].format, readings[1].motion) == (VideoFormat.CVBS_NTSC, True)
    assert readings[3].signal is LOCKED, "a bad line is skipped"
    assert read_control(control)[2] == "unplugged"
    control.unlink()
    assert readings != device.read() and all(r.signal is LOCKED for r in device.read())


async def wait_for(events: list[HalEvent], kind: type[HalEvent], timeout: float = 10.0) -> HalEvent:
    """The first event of ``kind``, waiting on the loop (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for event in events:
            if isinstance(event, kind):
                return event
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {kind.__name__} within {timeout} s; saw {events}")


def test_poller_reports_a_cut_cable_and_a_failing_device(mocker: MockerFixture) -> None:
    asyncio.run(poller_scenario(mocker))


async def poller_scenario(mocker: MockerFixture) -> None:
    device = SyntheticDevice("dvr", 4)
    watcher = ChannelWatcher("dvr", range(4), WatchConfig(poll_interval_s=0.02, lost_after_s=0.05))
    events: list[HalEvent] = []
    poller = DevicePoller(device, watcher, events.append)
    reset = mocker.spy(device, "reset")
    poller.start()
    try:
        await wait_for_reads(device, 2)
        device.unplug(2)
        lost = await wait_for(events, SignalLost)
        assert isinstance(lost, SignalLost) and lost.channel == 2
        device.fail_reads = 3
        await wait_for(events, DeviceError)
        await wait_for(events, DeviceRecovered)
        assert reset.call_count >= 1, "a failed device is reset before the next read"
        assert [s.signal for s in poller.status()] == [LOCKED, LOCKED, NO_VIDEO, LOCKED]
        assert watcher.errors == 3
    finally:
        poller.close()


async def wait_for_reads(device: SyntheticDevice, count: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while device.reads < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the poller read the device {device.reads} times in {timeout} s")
        await asyncio.sleep(0.01)
