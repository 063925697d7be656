"""The register-level decoder backends against their chip models, through the fake I2C bus.

Each test drives the cameras on a model (``hil/chips``), reads the backend and feeds the real
``ChannelWatcher`` with made-up time, and checks the events; or it checks the registers a
backend's writes leave in the model. Every channel of both chips is covered.
"""

from __future__ import annotations

import errno
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from pytest_mock import MockerFixture

from dvrlink.hal import i2c
from dvrlink.hal.i2c import BusFault, FakeBus, open_i2c_bus
from dvrlink.hal.model import (
    ChannelReading,
    DeviceError,
    DeviceIoError,
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
from dvrlink.hal.nvp6158 import Nvp6158
from dvrlink.hal.tw2866 import Tw2866
from dvrlink.hal.watch import ChannelWatcher, WatchConfig
from hil.chips.nvp6158 import Nvp6158Model
from hil.chips.tw2866 import Tw2866Model

NVP_ADDRESS = 0x30
TW_ADDRESS = 0x28
CHANNELS = [0, 1, 2, 3]
CONFIG = WatchConfig()
SETTLE_S = 1.0
"""Longer than any confirmation time of ``CONFIG`` (lost 0.3 s, restored 0.5 s)."""


@dataclass
class Rig:
    """One chip model on a fake bus, its backend, and a watcher over all its channels."""

    chip: str
    model: Any
    bus: FakeBus
    backend: Any
    watcher: ChannelWatcher
    address: int
    formats: tuple[VideoFormat, ...]
    """A camera's first format, then the formats it changes to."""
    now: float = 100.0

    def poll(self) -> list[ChannelReading] | None:
        """One read of the backend into the watcher, at the rig's clock (a failed read is
        reported to the watcher, as the poller does)."""
        try:
            readings = self.backend.read()
        except DeviceIoError as exc:
            self.watcher.failed(str(exc), self.now)
            return None
        self.watcher.update(readings, self.now)
        return list(readings)

    def settle(self) -> list[HalEvent]:
        """Read now and again after every confirmation time has passed; the events that gives."""
        self.poll()
        self.now += SETTLE_S
        self.poll()
        self.now += 0.1
        return self.events()

    def events(self) -> list[HalEvent]:
        out = []
        while (event := self.watcher.next_event()) is not None:
            out.append(event)
        return out


def make_nvp(chip_id: int = 0xA1) -> Rig:
    model = Nvp6158Model(chip_id=chip_id)
    bus = FakeBus("/dev/i2c-test")
    bus.attach(NVP_ADDRESS, model)
    backend = Nvp6158("front", bus, NVP_ADDRESS)
    formats = (VideoFormat.AHD_1080P25, VideoFormat.TVI_720P30, VideoFormat.CVI_4M)
    return Rig(
        "nvp6158", model, bus, backend, ChannelWatcher("front", CHANNELS, CONFIG), NVP_ADDRESS, formats
    )


def make_tw(device_id: int = 0x19) -> Rig:
    model = Tw2866Model(device_id=device_id)
    bus = FakeBus("/dev/i2c-test")
    bus.attach(TW_ADDRESS, model)
    backend = Tw2866("yard", bus, TW_ADDRESS)
    formats = (VideoFormat.CVBS_PAL, VideoFormat.CVBS_NTSC, VideoFormat.CVBS_PAL)
    return Rig("tw2866", model, bus, backend, ChannelWatcher("yard", CHANNELS, CONFIG), TW_ADDRESS, formats)


MAKERS: dict[str, Callable[[], Rig]] = {"nvp6158": make_nvp, "tw2866": make_tw}


@pytest.fixture(params=sorted(MAKERS))
def rig(request: pytest.FixtureRequest) -> Rig:
    """A rig of each chip with a camera on every input, already seen once by the watcher."""
    made = MAKERS[request.param]()
    for channel in CHANNELS:
        made.model.plug(channel, made.formats[0])
    assert made.settle() == [], "the first reading sets the channels' states without events"
    return made


E = TypeVar("E", bound=HalEvent)


def only(events: list[HalEvent], kind: type[E]) -> E:
    assert len(events) == 1 and isinstance(events[0], kind), f"wanted one {kind.__name__}, saw {events}"
    event = events[0]
    assert isinstance(event, kind)
    return event


# ---- signal and format -----------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_unplug_replug_and_format_changes_give_their_events(rig: Rig, channel: int) -> None:
    rig.model.unplug(channel)
    lost = only(rig.settle(), SignalLost)
    assert (lost.channel, lost.signal, lost.device) == (channel, SignalState.NO_VIDEO, rig.backend.name)

    first, *changes = rig.formats
    rig.model.plug(channel, first)
    restored = only(rig.settle(), SignalRestored)
    assert (restored.channel, restored.format) == (channel, first)

    old = first
    for new in changes:
        rig.model.change_format(channel, new)
        changed = only(rig.settle(), FormatChanged)
        assert (changed.channel, changed.old, changed.new) == (channel, old, new)
        old = new
    readings = rig.poll()
    assert readings is not None and readings[channel] == ChannelReading(channel, SignalState.LOCKED, old)


@pytest.mark.parametrize("channel", CHANNELS)
def test_a_signal_without_lock_is_lost_with_no_lock(rig: Rig, channel: int) -> None:
    rig.model.set_no_lock(channel)
    lost = only(rig.settle(), SignalLost)
    assert (lost.channel, lost.signal) == (channel, SignalState.NO_LOCK)
    readings = rig.poll()
    assert readings is not None
    assert readings[channel] == ChannelReading(channel, SignalState.NO_LOCK, VideoFormat.UNKNOWN)


@pytest.mark.parametrize("channel", CHANNELS)
def test_nvp6158_every_format_it_detects_reads_back(channel: int) -> None:
    rig = make_nvp()
    for fmt in VideoFormat:
        if fmt in (VideoFormat.UNKNOWN, VideoFormat.CVI_5M):
            continue
        rig.model.plug(channel, fmt)
        readings = rig.backend.read()
        assert readings[channel] == ChannelReading(channel, SignalState.LOCKED, fmt), fmt


@pytest.mark.parametrize("code", [0x22, 0x40, 0x83, 0xFF, 0x9E])
def test_nvp6158_codes_without_a_hal_format_read_as_no_lock(code: int) -> None:
    rig = make_nvp()
    rig.model.send_code(2, code)
    assert rig.backend.read()[2] == ChannelReading(2, SignalState.NO_LOCK, VideoFormat.UNKNOWN)


def test_nvp6158_a_cvi_5m_camera_is_not_detected_and_reads_as_no_lock() -> None:
    rig = make_nvp()
    rig.model.plug(1, VideoFormat.CVI_5M)
    assert rig.backend.read()[1].signal is SignalState.NO_LOCK


@pytest.mark.parametrize("channel", CHANNELS)
def test_tw2866_reads_no_lock_while_its_standard_detection_runs(channel: int) -> None:
    rig = make_tw()
    rig.model.plug(channel, VideoFormat.CVBS_NTSC)
    rig.model.set_detecting(channel, True)
    assert rig.backend.read()[channel] == ChannelReading(channel, SignalState.NO_LOCK)
    rig.model.set_detecting(channel, False)
    assert rig.backend.read()[channel] == ChannelReading(channel, SignalState.LOCKED, VideoFormat.CVBS_NTSC)


# ---- motion ----------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_motion_bits_start_and_stop_motion(rig: Rig, channel: int) -> None:
    rig.backend.set_motion(channel, MotionConfig(sensitivity=7))
    rig.model.set_motion(channel, True)
    rig.poll()
    start = only(rig.events(), MotionStart)
    assert start.channel == channel

    rig.model.set_motion(channel, False)
    rig.poll()
    rig.now += CONFIG.motion_hold_s + 0.1
    rig.poll()
    stop = only(rig.events(), MotionStop)
    assert stop.channel == channel


@pytest.mark.parametrize("channel", CHANNELS)
def test_motion_switched_off_on_the_chip_reports_nothing(rig: Rig, channel: int) -> None:
    rig.backend.set_motion(channel, MotionConfig(enabled=True))
    rig.backend.set_motion(channel, MotionConfig(enabled=False))
    rig.model.set_motion(channel, True)
    assert rig.settle() == []
    assert not rig.model.motion_enabled(channel)


# ---- bus errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [BusFault.NACK, BusFault.TIMEOUT])
@pytest.mark.parametrize("channel", CHANNELS)
def test_a_bus_error_gives_device_error_then_recovery(rig: Rig, fault: BusFault, channel: int) -> None:
    rig.bus.inject(fault, address=rig.address, count=None)
    for _ in range(3):
        assert rig.poll() is None
        rig.now += rig.watcher.poll_delay()
    error = only(rig.events(), DeviceError)
    assert f"0x{rig.address:02x}" in error.message and rig.bus.name in error.message
    assert ("no acknowledge" if fault is BusFault.NACK else "timed out") in error.message
    assert "check" in error.message
    with pytest.raises(DeviceIoError):
        rig.backend.reset()

    rig.bus.clear_faults()
    rig.backend.reset()
    rig.model.unplug(channel)  # a change while it failed is reported after the recovery
    rig.poll()
    recovered = rig.events()
    assert len(recovered) == 1 and isinstance(recovered[0], DeviceRecovered), recovered
    assert recovered[0].failed_s > 0
    rig.now += SETTLE_S
    rig.poll()
    lost = only(rig.events(), SignalLost)
    assert lost.channel == channel


def test_a_single_failed_transfer_fails_one_read_only(rig: Rig) -> None:
    rig.bus.inject(BusFault.TIMEOUT, address=rig.address, count=1)
    assert rig.poll() is None
    assert rig.poll() is not None
    events = rig.events()
    assert [type(event) for event in events] == [DeviceError, DeviceRecovered]


def test_a_fault_on_another_address_does_not_touch_the_chip(rig: Rig) -> None:
    rig.bus.inject(BusFault.NACK, address=0x50, count=None)
    assert rig.poll() is not None
    assert rig.events() == []


# ---- probe -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("chip_id", "name"), [(0xA1, "NVP6158 "), (0xA0, "NVP6158C")])
def test_nvp6158_probe_names_the_chip(chip_id: int, name: str) -> None:
    rig = make_nvp(chip_id)
    line = rig.backend.probe()
    assert name in line and "0x30" in line and "/dev/i2c-test" in line


@pytest.mark.parametrize(("device_id", "name"), [(0x19, "TW2866"), (0x18, "TW2865")])
def test_tw2866_probe_names_the_chip(device_id: int, name: str) -> None:
    line = make_tw(device_id).backend.probe()
    assert name in line and "0x28" in line


@pytest.mark.parametrize(
    ("make", "fix"),
    [
        (lambda: make_nvp(0xC1), "NVP6168"),
        (lambda: make_nvp(0x12), "check the address"),
        (lambda: make_tw(0x0C), "TW2864"),
        (lambda: make_tw(0x03), "check the address"),
    ],
    ids=["nvp6168", "nvp-garbage", "tw2864", "tw-garbage"],
)
def test_probe_refuses_another_chip_and_says_what_to_fix(make: Callable[[], Rig], fix: str) -> None:
    with pytest.raises(DeviceIoError, match=fix):
        make().backend.probe()


@pytest.mark.parametrize("chip", sorted(MAKERS))
def test_probe_of_a_silent_address_says_what_to_check(chip: str) -> None:
    rig = MAKERS[chip]()
    rig.bus.detach(rig.address)
    with pytest.raises(DeviceIoError) as caught:
        rig.backend.probe()
    message = str(caught.value)
    assert rig.backend.name in message and "no acknowledge" in message
    assert "address strap" in message and "power" in message and "wiring" in message


# ---- writes: format, controls, motion ---------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_nvp6158_set_format_writes_the_format_registers(channel: int, mocker: MockerFixture) -> None:
    rig = make_nvp()
    write = mocker.spy(rig.model, "write")
    for fmt in (*rig.formats, VideoFormat.CVBS_PAL, VideoFormat.AHD_5M, VideoFormat.CVI_5M):
        rig.backend.set_format(channel, fmt)
        assert rig.model.configured_format(channel) is fmt
    assert all(rig.model.configured_format(other) is None for other in CHANNELS if other != channel)
    assert write.call_count > 0 and rig.model.bank == 0x05 + channel


@pytest.mark.parametrize("channel", CHANNELS)
def test_tw2866_set_format_forces_the_standard_and_a_wrong_one_loses_lock(channel: int) -> None:
    rig = make_tw()
    rig.model.plug(channel, VideoFormat.CVBS_PAL)
    rig.backend.set_format(channel, VideoFormat.CVBS_NTSC)
    assert rig.model.forced_standard(channel) is VideoFormat.CVBS_NTSC
    assert rig.model.register(0x10 * channel + 0x09) == 0xF0  # vertical active, NTSC
    assert rig.backend.read()[channel].signal is SignalState.NO_LOCK
    rig.backend.set_format(channel, VideoFormat.CVBS_PAL)
    assert rig.backend.read()[channel] == ChannelReading(channel, SignalState.LOCKED, VideoFormat.CVBS_PAL)


@pytest.mark.parametrize("chip", sorted(MAKERS))
def test_set_format_refuses_what_the_chip_cannot_take(chip: str) -> None:
    backend = MAKERS[chip]().backend
    with pytest.raises(ValueError, match="use"):
        backend.set_format(0, VideoFormat.UNKNOWN)
    with pytest.raises(ValueError, match="channels 0-3"):
        backend.set_format(4, VideoFormat.CVBS_PAL)
    if chip == "tw2866":
        with pytest.raises(ValueError, match="CVBS only"):
            backend.set_format(0, VideoFormat.AHD_1080P25)


@pytest.mark.parametrize("channel", CHANNELS)
def test_nvp6158_set_controls_writes_bank_0(channel: int) -> None:
    rig = make_nvp()
    rig.backend.set_controls(channel, PictureControls(brightness=200, contrast=100, hue=0, saturation=255))
    assert [rig.model.register(0x00, base + channel) for base in (0x0C, 0x10, 0x40, 0x3C)] == [
        72,
        100,
        0x80,
        255,
    ]
    rig.backend.set_controls(channel, PictureControls(brightness=128))
    assert rig.model.register(0x00, 0x0C + channel) == 0x00
    assert rig.model.register(0x00, 0x10 + channel) == 100, "a None control is left alone"


@pytest.mark.parametrize("channel", CHANNELS)
def test_tw2866_set_controls_writes_the_channel_block(channel: int, mocker: MockerFixture) -> None:
    rig = make_tw()
    write = mocker.spy(rig.model, "write")
    rig.backend.set_controls(channel, PictureControls(brightness=100, contrast=128, hue=255, saturation=64))
    base = 0x10 * channel
    assert [rig.model.register(base + offset) for offset in (1, 2, 4, 5, 6)] == [0xE4, 0x64, 64, 64, 127]
    write.reset_mock()
    rig.backend.set_controls(channel, PictureControls(contrast=255))
    assert write.call_args_list == [mocker.call(base + 2, 0xC7)]


@pytest.mark.parametrize("channel", CHANNELS)
def test_nvp6158_motion_zones_become_the_chip_block_mask(channel: int) -> None:
    rig = make_nvp()
    # the left half of the HAL's 22 x 18 grid, top half: the chip's 16 x 12 blocks 0-7 x 0-5
    rig.backend.set_motion(channel, MotionConfig(sensitivity=10, zones=(MotionZone(0, 0, 11, 9),)))
    mask = rig.model.motion_mask(channel)
    for row in range(12):
        assert mask[2 * row : 2 * row + 2] == (b"\xff\x00" if row < 6 else b"\x00\x00"), row
    assert rig.model.motion_enabled(channel)
    assert rig.model.register(0x02, 7 * channel + 1) == 0x00  # temporal threshold: most sensitive
    assert rig.model.register(0x02, 7 * channel + 2) & 0x07 == 0
    rig.backend.set_motion(channel, MotionConfig(sensitivity=1))
    assert rig.model.motion_mask(channel) == b"\xff" * 24
    assert rig.model.register(0x02, 7 * channel + 2) & 0x07 == 7


def test_tw2866_refuses_motion_zones() -> None:
    with pytest.raises(ValueError, match="remove the motion zones"):
        make_tw().backend.set_motion(0, MotionConfig(zones=(MotionZone(0, 0, 2, 2),)))


@pytest.mark.parametrize("chip", sorted(MAKERS))
def test_reset_writes_the_settings_again_to_a_chip_that_lost_them(chip: str) -> None:
    rig = MAKERS[chip]()
    rig.backend.set_format(2, rig.formats[1])
    rig.backend.set_controls(2, PictureControls(brightness=10))
    rig.backend.set_controls(2, PictureControls(saturation=20))
    rig.backend.set_motion(2, MotionConfig(sensitivity=3))
    fresh = type(rig.model)()  # the chip was power-cycled: its registers are at reset values
    rig.bus.attach(rig.address, fresh)
    rig.backend.reset()
    if chip == "nvp6158":
        assert fresh.configured_format(2) is rig.formats[1]
        assert fresh.register(0x00, 0x0C + 2) == (10 - 128) & 0xFF
        assert fresh.register(0x00, 0x3C + 2) == 20
    else:
        assert fresh.forced_standard(2) is rig.formats[1]
        assert fresh.register(0x21) == (10 - 128) & 0xFF
        assert fresh.register(0x24) == 20
    assert fresh.motion_enabled(2)


def test_a_closed_backend_refuses_to_read() -> None:
    rig = make_nvp()
    rig.backend.close()
    rig.backend.close()
    with pytest.raises(DeviceIoError, match="closed"):
        rig.backend.read()
    assert not rig.bus.closed, "the bus belongs to whoever opened it"


@pytest.mark.parametrize("chip", sorted(MAKERS))
def test_constructor_checks_channels_and_address(chip: str) -> None:
    backend_type = Nvp6158 if chip == "nvp6158" else Tw2866
    with pytest.raises(ValueError, match="use 1-4"):
        backend_type("x", FakeBus(), 0x30, channels=5)
    with pytest.raises(ValueError, match="7-bit"):
        backend_type("x", FakeBus(), 0xA0)
    assert backend_type("x", FakeBus(), 0x30, channels=2).channel_count == 2


# ---- the bus itself --------------------------------------------------------------------------


def test_fake_bus_counts_faults_and_names_what_failed() -> None:
    bus = FakeBus("/dev/i2c-7")
    bus.attach(0x30, Nvp6158Model())
    bus.inject(BusFault.TIMEOUT, count=2)
    for _ in range(2):
        with pytest.raises(DeviceIoError, match=r"I2C /dev/i2c-7: read of register 0xf4 at address 0x30"):
            bus.read_byte_data(0x30, 0xF4)
    assert bus.read_byte_data(0x30, 0xF4) == 0xA1
    assert bus.operations == 3
    with pytest.raises(ValueError, match="7-bit"):
        bus.read_byte_data(0x80, 0)


class _FakeSmbus:
    """Stands in for ``smbus2.SMBus`` (which would open a node on this machine)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.closed = False

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        raise OSError(errno.EREMOTEIO, "Remote I/O error")

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        raise OSError(errno.ETIMEDOUT, "Connection timed out")

    def close(self) -> None:
        self.closed = True


def test_smbus_bus_turns_os_errors_into_device_io_errors(mocker: MockerFixture) -> None:
    module = types.SimpleNamespace(SMBus=_FakeSmbus)
    mocker.patch.object(i2c, "load_smbus2", return_value=module)
    bus = open_i2c_bus("3")
    assert bus.name == "/dev/i2c-3"
    with pytest.raises(DeviceIoError, match=r"read of register 0xa8 at address 0x30 failed: no acknowledge"):
        bus.read_byte_data(0x30, 0xA8)
    with pytest.raises(
        DeviceIoError, match=r"write of register 0xff at address 0x30 failed: timed out; .*pull-ups"
    ):
        bus.write_byte_data(0x30, 0xFF, 0x00)
    bus.close()
    bus.close()
    with pytest.raises(DeviceIoError, match="closed"):
        bus.read_byte_data(0x30, 0xA8)


def test_opening_a_bus_says_what_is_missing() -> None:
    with pytest.raises(DeviceIoError) as caught:
        open_i2c_bus("/dev/i2c-does-not-exist")
    message = str(caught.value)
    assert "/dev/i2c-does-not-exist" in message
    assert "python-smbus2" in message or "modprobe i2c-dev" in message
