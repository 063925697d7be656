"""Modem hot-plug through udev, against a fake USB tree and fake uevents from umockdev.

umockdev (Debian ``umockdev`` and ``gir1.2-umockdev-1.0``) needs no root: its preload library
redirects ``/sys``, ``/dev`` and the udev netlink socket of a process into a testbed directory. The
testbed is built by ``hil/umockdev/testbed.py`` under the system Python (``python3-gi``; the
project's venv cannot import ``gi``) from the handwritten device descriptions in ``hil/umockdev/``.
The code under test, ``UdevModemWatcher`` with real pyudev and libudev, runs in
``hil/umockdev/watch.py``, a child process started under ``umockdev-wrapper`` with ``UMOCKDEV_DIR``
set: the preload library must be in place when a process starts, so it cannot be this one.
umockdev 0.17 aborts its testbed when a uevent burst overflows the watcher's datagram queue, so the
watcher runs in a private network namespace with a longer queue (see ``_roomy_queue_prefix``).
Every wait is bounded; the watcher settles for 0.2 s instead of 1 s to keep the test short.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BEDS = ROOT / "hil" / "umockdev"
SYSTEM_PYTHON = "/usr/bin/python3"
HUB = "/sys/devices/pci0000:00/0000:00:14.0/usb1"
WAIT_S = 10.0


def _umockdev_missing() -> str | None:
    if shutil.which("umockdev-wrapper") is None:
        return "umockdev-wrapper not installed (Debian package umockdev)"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('UMockdev', '1.0')"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if probe.returncode != 0:
        return "the system Python cannot load UMockdev (Debian packages python3-gi, gir1.2-umockdev-1.0)"
    return None


pytestmark = pytest.mark.skipif(bool(reason := _umockdev_missing()), reason=reason or "")


class Child:
    """A child process whose stdout lines are collected by a thread, read with a bound."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self) -> str:
        try:
            line = self.lines.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"{self.proc.args} printed nothing within {WAIT_S} s") from None
        if line is None:
            raise AssertionError(f"{self.proc.args} exited with {self.proc.wait()}")
        return line

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=WAIT_S)


class UmockdevBed(Child):
    """hil/umockdev/testbed.py: add and remove devices."""

    def __init__(self) -> None:
        super().__init__(["umockdev-wrapper", SYSTEM_PYTHON, str(BEDS / "testbed.py")])
        first = self.line()
        assert first.startswith("root "), first
        self.root = first.split(" ", 1)[1]

    def command(self, text: str) -> None:
        self.send(text)
        reply = self.line()
        assert reply.startswith("ok"), f"{text}: {reply}"

    def add(self, name: str) -> None:
        self.command(f"add {BEDS / name}")

    def remove(self, usb_path: str) -> None:
        self.command(f"remove {usb_path}")


def _roomy_queue_prefix() -> list[str]:
    """A private network namespace whose datagram queues hold more than 10 messages.

    umockdev delivers uevents over a Unix datagram socket and aborts the testbed when the
    receiver's queue is full (``uevent_sender sendmsg_one: sendmsg failed: Resource temporarily
    unavailable``); the queue length is ``net.unix.max_dgram_qlen``, 10 by default, and one
    SIM7600 sends 18 uevents in a burst. The namespace is the watcher's own, so this machine's
    settings stay as they are. Where user namespaces are not allowed the watcher runs as it is.
    """
    probe = [
        "unshare",
        "--net",
        "--map-root-user",
        "sh",
        "-c",
        'echo 4096 > /proc/sys/net/unix/max_dgram_qlen && exec "$@"',
        "sh",
    ]
    if shutil.which("unshare") and subprocess.run([*probe, "true"], check=False, timeout=30).returncode == 0:
        return probe
    return []


class Watcher(Child):
    """hil/umockdev/watch.py under umockdev-wrapper: detection events as JSON."""

    def __init__(self, testbed: UmockdevBed) -> None:
        env = {**os.environ, "UMOCKDEV_DIR": testbed.root}
        super().__init__(
            [
                *_roomy_queue_prefix(),
                "umockdev-wrapper",
                sys.executable,
                "-m",
                "hil.umockdev.watch",
                "--settle",
                "0.2",
            ],
            env=env,
        )
        self.seen: list[dict[str, object]] = []
        assert self.event()["event"] == "ready"

    def event(self) -> dict[str, object]:
        event = json.loads(self.line())
        assert isinstance(event, dict)
        self.seen.append(event)
        return event


@pytest.fixture
def testbed() -> Iterator[UmockdevBed]:
    bed = UmockdevBed()
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture
def watcher_of(testbed: UmockdevBed) -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.close()


def start_watcher(testbed: UmockdevBed, started: list[Watcher]) -> Watcher:
    watcher = Watcher(testbed)
    started.append(watcher)
    return watcher


def test_ec25_present_at_start_at_port_is_interface_2_not_tty_index(
    testbed: UmockdevBed, watcher_of: list[Watcher]
) -> None:
    # quectel-ec25.umockdev numbers its ttys out of order: interface 2 is ttyUSB0, 3 is ttyUSB2
    testbed.add("quectel-ec25.umockdev")
    watcher = start_watcher(testbed, watcher_of)
    added = watcher.event()
    assert added["event"] == "added"
    assert added["profile"] == "quectel-ec25"
    assert added["at_port"] == "/dev/ttyUSB0"
    assert added["data_port"] == "/dev/ttyUSB2"
    assert added["net_iface"] == "usb0"
    assert added["usb_path"] == f"{HUB}/1-1"


def test_remove_and_readd_rebinds_to_the_new_ports(testbed: UmockdevBed, watcher_of: list[Watcher]) -> None:
    testbed.add("quectel-ec25.umockdev")
    watcher = start_watcher(testbed, watcher_of)
    assert watcher.event()["at_port"] == "/dev/ttyUSB0"

    testbed.remove(f"{HUB}/1-1")
    removed = watcher.event()
    assert (removed["event"], removed["usb_path"], removed["profile"]) == (
        "removed",
        f"{HUB}/1-1",
        "quectel-ec25",
    )

    # back after a reset, with other tty numbers: the AT port is still interface 2
    testbed.add("quectel-ec25-renumbered.umockdev")
    added = watcher.event()
    assert (added["event"], added["at_port"], added["data_port"]) == (
        "added",
        "/dev/ttyUSB13",
        "/dev/ttyUSB15",
    )

    testbed.remove(f"{HUB}/1-1")
    assert watcher.event()["event"] == "removed"
    testbed.add("quectel-ec25.umockdev")
    again = watcher.event()
    assert (again["event"], again["at_port"]) == ("added", "/dev/ttyUSB0")


def test_hotplug_simcom_and_huawei_and_an_unknown_id_is_ignored(
    testbed: UmockdevBed, watcher_of: list[Watcher]
) -> None:
    watcher = start_watcher(testbed, watcher_of)
    # The FTDI adapter goes in first and settles first: an event for it would come before the
    # SIMCom's and the Huawei's.
    testbed.add("ftdi-serial.umockdev")
    testbed.add("simcom-sim7600.umockdev")
    simcom = watcher.event()
    assert (simcom["event"], simcom["profile"]) == ("added", "simcom-sim7600")
    assert (simcom["at_port"], simcom["data_port"], simcom["net_iface"]) == (
        "/dev/ttyUSB6",
        "/dev/ttyUSB7",
        "wwan0",
    )

    testbed.add("huawei-e173.umockdev")
    huawei = watcher.event()
    assert (huawei["event"], huawei["profile"]) == ("added", "huawei-e173")
    # 12d1:1436: AT on the PCUI interface 4, PPP on interface 0
    assert (huawei["at_port"], huawei["data_port"], huawei["net_iface"]) == (
        "/dev/ttyUSB11",
        "/dev/ttyUSB9",
        "wwan1",
    )

    testbed.remove(f"{HUB}/1-4")  # the FTDI adapter leaves: nothing to report
    testbed.remove(f"{HUB}/1-2")
    gone = watcher.event()
    assert (gone["event"], gone["profile"]) == ("removed", "simcom-sim7600")
    assert not any("1-4" in str(event.get("usb_path", "")) for event in watcher.seen)
