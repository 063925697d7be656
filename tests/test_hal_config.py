"""``[[capture]]`` in dvrlinkd's config: what it accepts, and what each refusal says to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from dvrlink.daemon.capture_config import parse_capture
from dvrlink.daemon.errors import ConfigError
from dvrlink.hal.backends import BusOwner, control_path, open_device
from dvrlink.hal.i2c import FakeBus
from dvrlink.hal.model import DeviceIoError, VideoFormat
from dvrlink.hal.nvp6158 import Nvp6158
from dvrlink.hal.synthetic import SyntheticDevice
from hil.chips.nvp6158 import Nvp6158Model

SOURCE = Path("/etc/dvrlink/dvrlinkd.toml")


def parse(*tables: dict[str, object]) -> list[object]:
    return list(parse_capture({"capture": list(tables)}, SOURCE))


def test_defaults_and_a_full_table() -> None:
    (plain,) = parse({"backend": "synthetic"})
    assert plain.name == "synthetic1" and plain.channels == 4 and plain.watched() == (0, 1, 2, 3)
    (full,) = parse(
        {
            "backend": "synthetic",
            "name": "yard",
            "channels": 8,
            "watch": [0, 7],
            "format": "CVBS_PAL",
            "control": "ctl/yard.ctl",
            "lost_after_s": 1,
        }
    )
    assert (full.name, full.channels, full.watched()) == ("yard", 8, (0, 7))
    assert full.video_format is VideoFormat.CVBS_PAL
    assert full.control == "/etc/dvrlink/ctl/yard.ctl", "a relative path is relative to the config file"
    assert full.watch_settings.lost_after_s == 1.0
    device = open_device(full, Path("/run/dvrlink"))
    assert isinstance(device, SyntheticDevice) and device.channel_count == 8
    assert control_path(plain, Path("/run/dvrlink")) == Path("/run/dvrlink/capture-synthetic1.ctl")
    assert parse_capture({}, SOURCE) == ()


@pytest.mark.parametrize(
    ("tables", "says"),
    [
        ([{"backend": "synthetic", "chanels": 4}], "did you mean channels?"),
        ([{}], 'add backend = "synthetic"'),
        ([{"backend": "hdmi"}], "expected one of synthetic"),
        ([{"backend": "synthetic", "channels": 0}], "from 1 to 64"),
        ([{"backend": "synthetic", "watch": [4]}], "from 0 to 3"),
        ([{"backend": "synthetic", "watch": [1, 1]}], "listed twice"),
        ([{"backend": "synthetic", "format": "hdmi"}], "use one of"),
        ([{"backend": "synthetic", "bus": "/dev/i2c-1"}], "remove it for synthetic"),
        ([{"backend": "synthetic", "name": "Front Door"}], "lower-case"),
        ([{"backend": "synthetic"}, {"backend": "synthetic", "name": "synthetic1"}], "used twice"),
        ([{"backend": "synthetic", "poll_interval_s": 0}], "seconds from 0.01"),
    ],
)
def test_refusals_say_what_to_write(tables: list[dict[str, object]], says: str) -> None:
    with pytest.raises(ConfigError, match="capture") as caught:
        parse(*tables)
    assert says in str(caught.value) and str(SOURCE) in str(caught.value)


def test_a_single_table_is_refused_with_the_right_syntax() -> None:
    with pytest.raises(ConfigError, match=r"\[\[capture\]\] \(double brackets"):
        parse_capture({"capture": {"backend": "synthetic"}}, SOURCE)


def test_a_v4l2_device_has_a_channel_per_node() -> None:
    (cards,) = parse({"backend": "v4l2", "devices": ["/dev/video0", "/dev/video1"]})
    assert (cards.channels, cards.devices, cards.watched()) == (2, ("/dev/video0", "/dev/video1"), (0, 1))
    with pytest.raises(ConfigError, match="backend v4l2 needs devices"):
        parse({"backend": "v4l2"})
    with pytest.raises(ConfigError, match="one channel per node: 1 here"):
        parse({"backend": "v4l2", "devices": ["/dev/video0"], "channels": 4})
    with pytest.raises(ConfigError, match="only v4l2 take devices"):
        parse({"backend": "synthetic", "devices": ["/dev/video0"]})


def test_decoder_chips_open_their_bus_and_close_it(tmp_path: Path, mocker: MockerFixture) -> None:
    (chip,) = parse({"backend": "nvp6158", "bus": str(tmp_path / "i2c-9"), "address": 0x30})
    assert (chip.bus, chip.address, chip.channels) == (str(tmp_path / "i2c-9"), 0x30, 4)
    with pytest.raises(DeviceIoError, match="cannot be opened"):
        open_device(chip, tmp_path)
    with pytest.raises(ConfigError, match="backend tw2866 needs bus"):
        parse({"backend": "tw2866", "address": 0x28})
    with pytest.raises(ConfigError, match="from 3 to 119"):
        parse({"backend": "tw2866", "bus": "/dev/i2c-1", "address": 0x90})

    bus = FakeBus("/dev/i2c-1")
    model = Nvp6158Model()
    bus.attach(0x30, model)
    owner = BusOwner(Nvp6158("front", bus, 0x30), bus)
    closed = mocker.spy(bus, "close")
    assert "6158" in owner.probe() and len(owner.read()) == 4
    owner.close()
    assert closed.call_count == 1, "the device that opened the bus closes it"
