"""The device's persisted alarm queue (``daemon/alarms.py``): journal, restart, torn writes,
compaction, and its hand-over to a real ``PresenceClient``."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from support.presence import Lab

from dvrlink.daemon.alarms import COMPACT_MIN_DEAD, JOURNAL_FILE, AlarmQueue, read_journal
from dvrlink.protocol.alarm_link import AlarmsDelivered, AlarmsDropped, SenderConfig
from dvrlink.protocol.alarm_wire import AlarmKind, SnapshotTooLargeError
from dvrlink.protocol.presence_client import ClientConfig, PresenceClient

T = 1_780_000_000.0


def open_queue(path: Path, capacity: int = 1000) -> AlarmQueue:
    return AlarmQueue.open(
        path, SenderConfig(capacity=capacity), rng=lambda n: b"\x00\x00\x12\x34", wall_clock=lambda: T
    )


def test_alarms_survive_a_reopen_and_acked_ones_do_not(tmp_path: Path) -> None:
    queue = open_queue(tmp_path)
    for channel in range(5):
        queue.raise_alarm(AlarmKind.SIGNAL_LOST, channel=channel, detail="no video")
    queue.on_event(AlarmsDelivered(2, 2))
    queue.close()  # as after SIGKILL: nothing more is written at close
    again = open_queue(tmp_path)
    assert [r.seq for r in again.sender.queued()] == [3, 4, 5]
    assert again.sender.queued()[0].detail == "no video" and again.sender.queued()[0].time_ms == T * 1000
    assert again.sender.stream == 0x1234
    assert again.raise_alarm(AlarmKind.MOTION_START).seq == 6  # numbering goes on
    again.on_event(AlarmsDelivered(6, 4))
    again.close()
    empty = open_queue(tmp_path)
    assert empty.pending == 0
    assert empty.raise_alarm(AlarmKind.MOTION_STOP).seq == 7  # even with nothing left queued
    empty.close()


def test_a_torn_last_write_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    queue = open_queue(tmp_path)
    for _ in range(3):
        queue.raise_alarm(AlarmKind.DISK_ERROR, detail="sda: I/O error")
    queue.close()
    path = tmp_path / JOURNAL_FILE
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # power cut in the middle of the third append
    again = open_queue(tmp_path)
    assert [r.seq for r in again.sender.queued()] == [1, 2]
    assert read_journal(path.read_bytes()).torn_bytes == 0  # type: ignore[union-attr]
    again.close()


def test_a_journal_that_is_not_one_is_set_aside_and_a_new_stream_begins(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE).write_bytes(b"garbage that is no journal")
    queue = AlarmQueue.open(tmp_path, rng=lambda n: b"\x00\x00\x00\x09")
    assert queue.sender.stream == 9 and queue.pending == 0
    assert (tmp_path / (JOURNAL_FILE + ".corrupt")).read_bytes() == b"garbage that is no journal"
    queue.close()


def test_bad_alarms_are_refused_before_they_are_numbered(tmp_path: Path) -> None:
    queue = open_queue(tmp_path)
    with pytest.raises(SnapshotTooLargeError, match="over the 16384-byte cap"):
        queue.raise_alarm(AlarmKind.MOTION_START, channel=0, snapshot=b"\xff\xd8\xff" + bytes(20000))
    assert queue.raise_alarm(AlarmKind.MOTION_START, channel=0).seq == 1
    queue.close()


def test_the_journal_is_appended_per_alarm_and_compacted_only_when_mostly_dead(tmp_path: Path) -> None:
    queue = open_queue(tmp_path)
    path = tmp_path / JOURNAL_FILE
    sizes = []
    for seq in range(1, 6001):
        queue.raise_alarm(AlarmKind.MOTION_START, channel=seq % 4, detail="zone 1")
        queue.on_event(AlarmsDelivered(seq, 1))
        sizes.append(path.stat().st_size)
    assert max(sizes) <= COMPACT_MIN_DEAD + 200
    assert sum(1 for a, b in itertools.pairwise(sizes) if b < a) >= 2  # it compacted
    queue.close()
    again = open_queue(tmp_path)
    assert again.pending == 0 and again.raise_alarm(AlarmKind.OTHER, detail="x").seq == 6001
    again.close()


def test_a_full_queue_drops_the_oldest_in_the_journal_too(tmp_path: Path) -> None:
    queue = open_queue(tmp_path, capacity=3)
    for _ in range(5):
        queue.raise_alarm(AlarmKind.ALARM_INPUT, channel=1)
    events = []
    while (event := queue.sender.next_event()) is not None:
        events.append(event)
        queue.on_event(event)
    assert events == [AlarmsDropped(1, 1), AlarmsDropped(2, 1)]
    assert queue.stats["dropped"] == 2
    queue.close()
    assert [r.seq for r in open_queue(tmp_path, capacity=3).sender.queued()] == [3, 4, 5]


def test_raise_alarm_hands_the_record_to_the_presence_client_and_flushes(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    lab = Lab()
    queue = open_queue(tmp_path)
    device = lab.add_device("DL-0001-0001")
    device.client = PresenceClient(
        ClientConfig("DL-0001-0001", lab.server.public_key), device.key, alarms=queue.sender
    )
    flushed = []
    queue.attach(device.client, lambda: flushed.append(True), lambda: lab.now)
    send = mocker.spy(device.client, "send_alarm")
    record = queue.raise_alarm(AlarmKind.SIGNAL_LOST, channel=3)
    send.assert_called_once_with(record, lab.now)
    assert flushed == [True]
    assert os.path.getsize(tmp_path / JOURNAL_FILE) > 20
    queue.close()


def test_the_alarms_section_is_checked(tmp_path: Path) -> None:
    from dvrlink.daemon.config import AlarmsConfig, ConfigError, parse_alarms

    source = tmp_path / "dvrlinkd.toml"
    assert parse_alarms({}, source) == AlarmsConfig()
    assert parse_alarms({"alarms": {"queue_size": 50}}, source).queue_size == 50
    with pytest.raises(ConfigError, match=r"\[alarms\] queue_size = 0"):
        parse_alarms({"alarms": {"queue_size": 0}}, source)
    with pytest.raises(ConfigError, match="must be at least retransmit_initial_s"):
        parse_alarms({"alarms": {"retransmit_initial_s": 5, "retransmit_max_s": 2}}, source)
    with pytest.raises(ConfigError, match="queue_sise"):
        parse_alarms({"alarms": {"queue_sise": 5}}, source)


def test_the_modem_watch_raises_sim_removed_and_data_cap_once_each() -> None:
    from dvrlink.daemon.alarms import ModemAlarmWatch
    from dvrlink.daemon.status import ModemBlock

    watch = ModemAlarmWatch()
    assert watch.update(ModemBlock(state="sim-absent", sim="absent")) == []  # absent at start: no removal
    online = ModemBlock(state="online", sim="identified", iccid="894910******1234", data_used_bytes=10)
    assert watch.update(online) == []
    capped = ModemBlock(
        state="online", sim="identified", cap_level="stop", data_used_bytes=1000, data_cap_bytes=1000
    )
    [(kind, detail)] = watch.update(capped)
    assert kind is AlarmKind.DATA_CAP_REACHED and detail.startswith("1000 of 1000 bytes used")
    assert watch.update(capped) == []
    [(kind, detail)] = watch.update(ModemBlock(state="sim-absent", sim="absent", cap_level="stop"))
    assert kind is AlarmKind.SIM_REMOVED and "894910******1234" in detail
    assert watch.update(ModemBlock(state="sim-absent", sim="absent")) == []


def test_device_events_raise_modem_alarms_in_the_queue(tmp_path: Path, mocker: MockerFixture) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from dvrlink.daemon.app import DeviceEvents
    from dvrlink.daemon.config import load_config
    from dvrlink.daemon.notify import Notifier
    from dvrlink.daemon.pairing import InviteHandler
    from dvrlink.daemon.state import DeviceState
    from dvrlink.daemon.status import ModemBlock, StatusFile

    class Modem:  # stands for the modem service (a real one acts on a serial port)
        block = ModemBlock(state="online", sim="ready", iccid="8949")

        def snapshot(self) -> ModemBlock:
            return self.block

    path = tmp_path / "dvrlinkd.toml"
    path.write_text(
        '[device]\nserial = "DL-0015-0005"\nstate_dir = "state"\nruntime_dir = "run"\n'
        '[broker]\nhost = "127.0.0.1"\nport = 3478\n'
        'public_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="\n'
    )
    config = load_config(path)
    state = DeviceState(config.device.state_dir)
    invites = InviteHandler("DL-0015-0005", state.device_key(), state.pairing_secret(), state, config.pairing)
    client = PresenceClient(ClientConfig("DL-0015-0005", bytes(range(32))), Ed25519PrivateKey.generate())
    events = DeviceEvents(
        config, client, Notifier({}), StatusFile(config.device.runtime_dir), invites, lambda: 0.0
    )
    queue = open_queue(tmp_path)
    events.alarms = queue
    modem = Modem()
    events.attach_modem(modem)
    raise_alarm = mocker.spy(queue, "raise_alarm")
    events.modem_changed()  # nothing new
    raise_alarm.assert_not_called()
    modem.block = ModemBlock(state="sim-absent", sim="absent")
    events.modem_changed()
    raise_alarm.assert_called_once()
    assert [r.kind for r in queue.sender.queued()] == [AlarmKind.SIM_REMOVED]
    queue.close()
