"""The recording disks' watch: the mount table's superblock options, the sans-I/O watcher, looks
at real tmpfs mounts made by the test (full, read-only, unmounted, gone), a look that hangs,
the config, and a running dvrlinkd whose full disk becomes an alarm at a real broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.presence import loopback_broker_config
from support.status import status_or_none
from support.waiting import wait_until_async

from dvrlink.broker.alarm_store import StoredAlarm
from dvrlink.broker.app import start_broker
from dvrlink.daemon.app import run_daemon
from dvrlink.daemon.config import load_config, parse_disks
from dvrlink.daemon.disk_watch import (
    DiskEvent,
    DiskProblem,
    DiskReading,
    DiskRecovered,
    DisksConfig,
    DiskService,
    DiskState,
    DiskWatcher,
    disk_alarm,
    read_disk,
    superblock_options,
)
from dvrlink.daemon.errors import ConfigError
from dvrlink.daemon.status import read_status
from dvrlink.protocol.alarm_wire import AlarmKind

WAIT = 30.0
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro
40 27 8:17 / /mnt/hdd ro,relatime - ext4 /dev/sdb1 rw
41 40 8:17 / /mnt/hdd rw,relatime - ext4 /dev/sdb1 ro,errors=remount-ro
42 27 0:50 / /mnt/my\\040disk rw - tmpfs tmpfs rw,size=1024k
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def test_the_superblock_decides_read_only_and_the_last_mount_wins() -> None:
    assert superblock_options("/mnt/hdd", MOUNTINFO) == frozenset({"ro", "errors=remount-ro"})
    assert superblock_options("/mnt/my disk", MOUNTINFO) == frozenset({"rw", "size=1024k"})
    assert superblock_options("/mnt/other", MOUNTINFO) is None
    assert superblock_options("/", "garbage line\n\n" + MOUNTINFO) == frozenset({"rw", "errors=remount-ro"})


def test_the_watcher_reports_a_bad_disk_at_once_each_new_problem_and_the_recovery() -> None:
    hdd = Path("/mnt/hdd")
    watcher = DiskWatcher((hdd,))
    assert watcher.update(DiskReading(hdd, DiskState.OK, 40.0), 0.0) == []
    assert watcher.update(DiskReading(hdd, DiskState.FULL, 2.0, "2.0 % free"), 60.0) == [
        DiskProblem(hdd, 60.0, DiskState.FULL, "2.0 % free")
    ]
    assert watcher.update(DiskReading(hdd, DiskState.FULL, 1.0, "1.0 % free"), 120.0) == []
    assert watcher.update(DiskReading(hdd, DiskState.READ_ONLY, 1.0, "ro"), 180.0) == [
        DiskProblem(hdd, 180.0, DiskState.READ_ONLY, "ro")
    ]
    assert watcher.update(DiskReading(hdd, DiskState.OK, 30.0), 300.0) == [DiskRecovered(hdd, 300.0, 240.0)]
    boot = DiskWatcher((hdd,))  # a recorder that starts with a dead disk hears of it at once
    (problem,) = boot.update(DiskReading(hdd, DiskState.NOT_MOUNTED, None, "nothing is mounted there"), 5.0)
    assert disk_alarm(problem) == (AlarmKind.DISK_ERROR, "/mnt/hdd: not-mounted (nothing is mounted there)")
    assert disk_alarm(DiskRecovered(hdd, 9.0, 4.0)) == (
        AlarmKind.OTHER,
        "DiskRecovered (/mnt/hdd: ok after 4 s)",
    )


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "1m") -> Iterator[Path]:
    where.mkdir()
    _run("mount", "-t", "tmpfs", "-o", f"size={size}", "dvrlink-test-disk", str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True, timeout=60)


def fill(disk: Path) -> None:
    with contextlib.suppress(OSError), (disk / "recording.bin").open("wb") as out:
        for _ in range(64):  # 64 MiB at most; the 1 MiB tmpfs is full long before
            out.write(bytes(1 << 20))


@needs_root
def test_looks_at_a_real_mount_find_it_full_read_only_unmounted_and_gone(tmp_path: Path) -> None:
    disk = tmp_path / "hdd"
    with tmpfs(disk):
        ok = read_disk(disk, 5.0)
        assert ok.state is DiskState.OK and ok.free_percent is not None and ok.free_percent > 90, ok
        fill(disk)
        full = read_disk(disk, 5.0)
        assert full.state is DiskState.FULL and "under 5 %" in full.detail, full
        (disk / "recording.bin").unlink()
        _run("mount", "-o", "remount,ro", str(disk))
        read_only = read_disk(disk, 5.0)
        assert read_only.state is DiskState.READ_ONLY and "read-only" in read_only.detail, read_only
    unmounted = read_disk(disk, 5.0)
    assert unmounted.state is DiskState.NOT_MOUNTED and "check the disk" in unmounted.detail, unmounted
    disk.rmdir()
    assert read_disk(disk, 5.0).state is DiskState.MISSING


def test_a_look_that_hangs_is_not_answering_and_holds_one_thread() -> None:
    hdd = Path("/mnt/hdd")
    release = threading.Event()
    events: list[DiskEvent] = []
    calls: list[Path] = []

    def reader(path: Path, min_free: float) -> DiskReading:  # a disk whose statvfs hangs
        calls.append(path)
        if not release.wait(WAIT):
            raise AssertionError("never released")
        return DiskReading(path, DiskState.OK, 50.0, "50.0 % free")

    service = DiskService(DisksConfig((hdd,), timeout_s=0.2), events.append, lambda: 1.0, reader)

    async def main() -> None:
        await service.look()
        assert [(type(e), getattr(e, "state", None)) for e in events] == [
            (DiskProblem, DiskState.NOT_ANSWERING)
        ]
        await service.look()  # the first look still hangs: no second thread
        assert service.watcher.readings[hdd].detail == "the last look has not ended"
        release.set()
        async with asyncio.timeout(WAIT):
            while True:
                await service.look()
                if service.watcher.readings[hdd].state is DiskState.OK:
                    break
                await asyncio.sleep(0.05)

    asyncio.run(main())
    assert isinstance(events[-1], DiskRecovered), events
    assert len(events) == 2, events
    assert calls == [hdd, hdd], calls  # the hung look, then one after it ended: never two at once
    assert service.status() == [
        {"path": "/mnt/hdd", "state": "ok", "free_percent": 50.0, "detail": "50.0 % free"}
    ]


def test_the_disks_section_is_checked(tmp_path: Path) -> None:
    source = tmp_path / "dvrlinkd.toml"
    assert parse_disks({}, source) == DisksConfig()
    parsed = parse_disks({"disks": {"paths": ["/mnt/hdd"], "interval_s": 5}}, source)
    assert parsed.paths == (Path("/mnt/hdd"),) and parsed.interval_s == 5.0
    bad = {
        'paths = ["hdd"]': ({"paths": ["hdd"]}, "absolute mount points"),
        'paths = ["/"]': ({"paths": ["/"]}, "the root filesystem is not a recording disk"),
        "twice": ({"paths": ["/a", "/a"]}, "list each mount point once"),
        "free": ({"min_free_percent": 90}, "from 0 to 50"),
        "typo": ({"path": ["/a"]}, "unknown key path"),
    }
    for table, expected in bad.values():
        with pytest.raises(ConfigError, match=expected):
            parse_disks({"disks": table}, source)


@needs_root
def test_a_running_dvrlinkd_raises_an_alarm_when_its_disk_fills(tmp_path: Path) -> None:
    disk = tmp_path / "hdd"

    async def main() -> None:
        broker_config = loopback_broker_config(tmp_path / "broker", udp_port=0)
        broker = await start_broker(broker_config)
        stop = asyncio.Event()
        daemon: asyncio.Task[None] | None = None
        try:
            alarms = broker.alarms
            assert alarms is not None
            stored: list[StoredAlarm] = []
            got = asyncio.Event()

            def note(alarm: StoredAlarm) -> None:
                stored.append(alarm)
                got.set()

            alarms.listeners.append(note)
            key = base64.b64encode(broker.info.public_key).decode()
            config_path = tmp_path / "dvrlinkd.toml"
            config_path.write_text(
                '[device]\nserial = "DL-DISK-0001"\nstate_dir = "state"\nruntime_dir = "run"\n'
                f'[broker]\nhost = "127.0.0.1"\nport = {broker.info.udp_port}\npublic_key = "{key}"\n'
                '[presence]\ntransport = "udp"\nlearn_keepalive = false\n'
                f'[disks]\npaths = ["{disk}"]\ninterval_s = 1\n'
            )
            daemon = asyncio.create_task(run_daemon(load_config(config_path), stop, {}))
            run_dir = tmp_path / "run"

            def disk_state() -> object:
                status = status_or_none(run_dir)
                return status.disks[0]["state"] if status is not None and status.disks else None

            await wait_until_async(
                "the disk looked at", lambda: disk_state() == "ok", timeout=WAIT, seen=disk_state
            )
            await asyncio.to_thread(fill, disk)
            try:
                await asyncio.wait_for(got.wait(), WAIT)
            except TimeoutError:
                raise AssertionError(f"no disk alarm within {WAIT} s; status said {disk_state()}") from None
            (alarm,) = stored
            assert alarm.kind == AlarmKind.DISK_ERROR and alarm.detail.startswith(f"{disk}: full ("), alarm
            assert read_status(run_dir).disks[0]["state"] == "full"
        finally:
            stop.set()
            if daemon is not None:
                await asyncio.wait_for(daemon, WAIT)
            await broker.close()

    with tmpfs(disk):
        asyncio.run(main())
