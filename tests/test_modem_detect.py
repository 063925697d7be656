"""Modem detection core (sans-I/O): ports by USB interface number, debounce, add/remove events.

Made-up time and hand-built snapshots; the udev side is in test_modem_detect_umockdev.py.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest

from dvrlink.modem.detect import (
    DetectConfig,
    ModemAdded,
    ModemDetector,
    ModemIncomplete,
    ModemRemoved,
    UsbSnapshot,
    interface_number,
    match_modem,
    usb_device_path,
)

HUB = "/sys/devices/pci0000:00/0000:00:14.0/usb1"
EC25 = f"{HUB}/1-1"


def snapshot(path: str, vendor: int, product: int, ttys: dict[int, str], nets: dict[int, str]) -> UsbSnapshot:
    return UsbSnapshot(path, vendor, product, MappingProxyType(ttys), MappingProxyType(nets))


def ec25(ttys: dict[int, str] | None = None) -> UsbSnapshot:
    shuffled = {0: "/dev/ttyUSB3", 1: "/dev/ttyUSB1", 2: "/dev/ttyUSB0", 3: "/dev/ttyUSB2"}
    return snapshot(EC25, 0x2C7C, 0x0125, shuffled if ttys is None else ttys, {4: "usb0"})


def drain(detector: ModemDetector) -> list[object]:
    events = []
    while (event := detector.next_event()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize(
    ("sys_path", "expected"),
    [
        (f"{EC25}/1-1:1.2/ttyUSB0/tty/ttyUSB0", EC25),
        (f"{EC25}/1-1:1.4/net/usb0", EC25),
        (EC25, EC25),
        (f"{HUB}/1-1/1-1.4/1-1.4:1.2/ttyUSB5/tty/ttyUSB5", f"{HUB}/1-1/1-1.4"),
        (HUB, None),
        ("/sys/devices/virtual/tty/tty1", None),
        ("/sys/devices/platform/serial8250/tty/ttyS0", None),
    ],
)
def test_usb_device_path_from_sysfs_path_alone(sys_path: str, expected: str | None) -> None:
    assert usb_device_path(sys_path) == expected


def test_interface_number_from_sysfs_name() -> None:
    assert interface_number("1-1:1.2") == 2
    assert interface_number("3-1.4.2:1.12") == 12
    assert interface_number("1-1") is None
    assert interface_number("ttyUSB0") is None


def test_ec25_at_port_is_interface_2_whatever_the_tty_numbers() -> None:
    found = match_modem(ec25())
    assert isinstance(found, ModemAdded)
    assert found.profile.name == "quectel-ec25"
    assert found.at_port == "/dev/ttyUSB0"
    assert found.data_port == "/dev/ttyUSB2"
    assert found.net_iface == "usb0"
    assert found.usb_path == EC25


def test_simcom_and_huawei_layouts() -> None:
    sim7600 = match_modem(
        snapshot(
            f"{HUB}/1-2",
            0x1E0E,
            0x9001,
            {i: f"/dev/ttyUSB{i + 4}" for i in range(5)},
            {5: "wwan0"},
        )
    )
    assert isinstance(sim7600, ModemAdded)
    assert (sim7600.profile.name, sim7600.at_port, sim7600.data_port, sim7600.net_iface) == (
        "simcom-sim7600",
        "/dev/ttyUSB6",
        "/dev/ttyUSB7",
        "wwan0",
    )
    e173 = match_modem(
        snapshot(f"{HUB}/1-3", 0x12D1, 0x1001, {0: "/dev/ttyUSB0", 1: "/dev/ttyUSB1", 2: "/dev/ttyUSB2"}, {})
    )
    assert isinstance(e173, ModemAdded)
    # 12d1:1001 has PPP on interface 0 and AT on 2, and no network function
    assert (e173.profile.name, e173.at_port, e173.data_port, e173.net_iface) == (
        "huawei-e173",
        "/dev/ttyUSB2",
        "/dev/ttyUSB0",
        None,
    )


def test_probe_profile_lists_its_serial_ports_in_interface_order() -> None:
    found = match_modem(
        snapshot(f"{HUB}/1-5", 0x12D1, 0x1506, {2: "/dev/ttyUSB7", 0: "/dev/ttyUSB9"}, {1: "usb1"})
    )
    assert isinstance(found, ModemAdded)
    assert found.profile.name == "huawei-mu709"
    assert found.at_port is None
    assert found.serial_ports == ("/dev/ttyUSB9", "/dev/ttyUSB7")
    assert found.net_iface == "usb1"


def test_unknown_usb_id_is_ignored() -> None:
    assert match_modem(snapshot(f"{HUB}/1-4", 0x0403, 0x6001, {0: "/dev/ttyUSB0"}, {})) is None
    detector = ModemDetector()
    detector.coldplug([snapshot(f"{HUB}/1-4", 0x0403, 0x6001, {0: "/dev/ttyUSB0"}, {})], now=0.0)
    assert drain(detector) == []


def test_missing_at_port_is_reported_once_with_what_to_check() -> None:
    detector = ModemDetector()
    partial = ec25({0: "/dev/ttyUSB0", 1: "/dev/ttyUSB1"})
    detector.scanned(EC25, partial, now=0.0)
    detector.scanned(EC25, partial, now=1.0)
    [event] = drain(detector)
    assert isinstance(event, ModemIncomplete)
    assert "interface 2" in event.message and "option" in event.message and EC25 in event.message
    detector.scanned(EC25, ec25(), now=2.0)
    [added] = drain(detector)
    assert isinstance(added, ModemAdded) and added.at_port == "/dev/ttyUSB0"


def test_uevents_are_debounced_until_the_device_is_quiet() -> None:
    detector = ModemDetector(DetectConfig(settle_s=1.0))
    assert detector.get_timer() is None
    detector.device_changed(EC25, 10.0, "add")
    detector.device_changed(f"{EC25}/1-1:1.2", 10.3, "add")
    detector.device_changed(f"{EC25}/1-1:1.2/ttyUSB0/tty/ttyUSB0", 10.6, "add")
    assert detector.get_timer() == pytest.approx(11.6)
    assert detector.handle_timer(11.0) == []
    assert detector.handle_timer(11.6) == [EC25]
    assert detector.get_timer() is None
    detector.scanned(EC25, ec25(), 11.6)
    [added] = drain(detector)
    assert isinstance(added, ModemAdded)
    # events outside any USB device do not wake the detector
    detector.device_changed("/sys/devices/virtual/net/lo", 12.0, "change")
    assert detector.get_timer() is None


def test_removal_of_the_usb_device_is_reported_at_once_and_readd_after_settling() -> None:
    detector = ModemDetector(DetectConfig(settle_s=1.0))
    detector.coldplug([ec25()], now=0.0)
    [added] = drain(detector)
    assert isinstance(added, ModemAdded)
    detector.device_changed(f"{EC25}/1-1:1.2/ttyUSB0/tty/ttyUSB0", 5.0, "remove")
    assert drain(detector) == []  # a child leaving is not yet the modem leaving
    detector.device_changed(EC25, 5.1, "remove")
    [removed] = drain(detector)
    assert isinstance(removed, ModemRemoved)
    assert (removed.usb_path, removed.at_port, removed.profile.name) == (EC25, "/dev/ttyUSB0", "quectel-ec25")
    assert detector.modems == ()
    # it comes back within the settle time, renumbered
    detector.device_changed(EC25, 5.5, "add")
    renumbered = ec25({0: "/dev/ttyUSB16", 1: "/dev/ttyUSB14", 2: "/dev/ttyUSB13", 3: "/dev/ttyUSB15"})
    for path in detector.handle_timer(6.5):
        detector.scanned(path, renumbered, 6.5)
    [again] = drain(detector)
    assert isinstance(again, ModemAdded) and again.at_port == "/dev/ttyUSB13"


def test_a_changed_layout_is_removed_then_added_and_an_unchanged_one_is_silent() -> None:
    detector = ModemDetector()
    detector.coldplug([ec25()], now=0.0)
    drain(detector)
    detector.scanned(EC25, ec25(), 1.0)
    assert drain(detector) == []
    detector.scanned(EC25, ec25({2: "/dev/ttyUSB9", 3: "/dev/ttyUSB8"}), 2.0)
    removed, added = drain(detector)
    assert isinstance(removed, ModemRemoved) and isinstance(added, ModemAdded)
    assert added.at_port == "/dev/ttyUSB9"
    detector.scanned(EC25, None, 3.0)
    [gone] = drain(detector)
    assert isinstance(gone, ModemRemoved)


def test_config_and_misuse_errors() -> None:
    with pytest.raises(ValueError, match="settle_s"):
        DetectConfig(settle_s=-1)
    with pytest.raises(ValueError, match="snapshot of"):
        ModemDetector().scanned(f"{HUB}/1-9", ec25(), 0.0)
