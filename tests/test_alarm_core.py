"""Sans-I/O tests of alarm delivery: the wire format, and the sender inside ``PresenceClient``
against ``PresenceServer`` plus ``AlarmReceiver`` on the fake link, with made-up time."""

from __future__ import annotations

import itertools
import random

import pytest
from support.presence import Device, Lab, seeded_rng

from dvrlink.protocol.alarm_link import (
    AlarmReceiver,
    AlarmsDelivered,
    AlarmsDropped,
    AlarmSender,
    SenderConfig,
    StreamPosition,
)
from dvrlink.protocol.alarm_wire import (
    FRAGMENT_CHUNK,
    MAX_SNAPSHOT,
    AckMessage,
    AlarmKind,
    AlarmRecord,
    SnapshotTooLargeError,
    check_alarm,
    decode_event,
    encode_fragment,
    encode_records,
    kind_from_name,
    kind_name,
)
from dvrlink.protocol.presence_client import ClientConfig, ClientState, PresenceClient
from dvrlink.protocol.presence_events import AlarmMessageReceived, ServerEvent
from dvrlink.protocol.presence_wire import HEADER_STRUCT, VERSION, MessageType

IPV4_UDP_HEADERS = 28
SERIAL = "DL-0001-0001"
T0 = 1_780_000_000_000


class Broker:
    """The broker's alarm handling as ``dvrlink.broker.alarms`` does it, with a dict for SQLite."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.receiver = AlarmReceiver()
        self.positions: dict[str, StreamPosition] = {}
        self.stored: list[AlarmRecord] = []
        self.answer = True
        lab.on_server_event = self.on_event

    def on_event(self, event: ServerEvent) -> None:
        if not isinstance(event, AlarmMessageReceived) or not self.answer:
            return
        accepted = self.receiver.receive(event.serial, event.plaintext, self.positions.get(event.serial))
        if accepted is None:
            return
        self.stored.extend(accepted.records)
        self.positions[event.serial] = accepted.position
        self.lab.server.send_alarm_ack(event.serial, accepted.ack, self.lab.now)


def alarm_device(lab: Lab, config: SenderConfig | None = None, stream: int = 0x1234) -> Device:
    """A device whose presence client carries an alarm queue."""
    device = lab.add_device(SERIAL)
    jitter = itertools.cycle([0.3, 0.9, 0.6])
    sender = AlarmSender(config or SenderConfig(), stream)
    device.client = PresenceClient(
        ClientConfig(SERIAL, lab.server.public_key, keepalive_interval=lab.interval, reply_timeout=2.0),
        device.key,
        rng=seeded_rng(107),
        jitter=lambda: next(jitter),
        alarms=sender,
    )
    return device


def raise_alarms(lab: Lab, device: Device, count: int, first: int = 1, **fields: object) -> None:
    for seq in range(first, first + count):
        record = AlarmRecord(seq, T0 + seq * 37, AlarmKind.SIGNAL_LOST, seq % 4, **fields)  # type: ignore[arg-type]
        device.client.send_alarm(record, lab.now)
    lab.pump()


def event_datagrams(lab: Lab, direction: str) -> list[bytes]:
    return [b for d, b, _ in lab.wire if d == direction and b[0] == MessageType.EVENT]


# -- wire ------------------------------------------------------------------------------------------


def test_records_round_trip_with_times_going_back_and_unicode_detail() -> None:
    records = [
        AlarmRecord(7, T0, AlarmKind.SIGNAL_LOST, 2),
        AlarmRecord(8, T0 - 1500, AlarmKind.OTHER, None, "tür offen ✓"),
        AlarmRecord(9, T0 + 10**7, 200, 255, "", b"\xff\xd8\xff\xe0jpeg"),
    ]
    message = decode_event(encode_records(0xDEADBEEF, records))
    assert message.stream == 0xDEADBEEF  # type: ignore[union-attr]
    assert message.records == tuple(records)  # type: ignore[union-attr]
    assert kind_name(200) == "Kind200"
    assert kind_name(AlarmKind.SIGNAL_LOST) == "SignalLost"
    assert kind_from_name("motion-start") is kind_from_name("MotionStart") is AlarmKind.MOTION_START
    with pytest.raises(ValueError, match="use one of SignalLost"):
        kind_from_name("explosion")


def test_one_alarm_costs_under_80_bytes_on_the_wire() -> None:
    lab = Lab()
    Broker(lab)
    device = alarm_device(lab)
    lab.start_all()
    lab.wire.clear()
    raise_alarms(lab, device, 1)
    up, down = event_datagrams(lab, "up"), event_datagrams(lab, "down")
    assert len(up) == len(down) == 1
    up_bytes, down_bytes = len(up[0]) + IPV4_UDP_HEADERS, len(down[0]) + IPV4_UDP_HEADERS
    print(f"bytes per alarm (IPv4+UDP, no snapshot, no detail): {up_bytes} up + {down_bytes} ack")
    assert up_bytes <= 80 and down_bytes <= 70, (up_bytes, down_bytes)
    burst = len(encode_records(1, [AlarmRecord(s, T0 + s * 40, 1, s % 4) for s in range(1, 51)]))
    print(f"a burst of 50 alarms: {burst} bytes of plaintext, {burst / 50:.1f} bytes each")
    assert burst / 50 <= 6


def test_oversized_or_non_jpeg_snapshot_is_refused_with_what_to_do() -> None:
    with pytest.raises(SnapshotTooLargeError, match=r"16385 bytes is over the 16384-byte cap: take it at a"):
        check_alarm(AlarmKind.MOTION_START, 1, "", b"\xff\xd8\xff" + bytes(MAX_SNAPSHOT - 2))
    with pytest.raises(ValueError, match="does not start with a JPEG marker"):
        check_alarm(AlarmKind.MOTION_START, 1, "", b"\x89PNG....")
    with pytest.raises(ValueError, match="channel 300 is out of range"):
        check_alarm(AlarmKind.MOTION_START, 300, "", None)
    assert check_alarm(AlarmKind.OTHER, None, "é" * 100, None) == "é" * 60  # cut to 120 bytes


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"\x09",
        b"\x01\x00\x00\x00\x01",  # records header truncated
        b"\x01" + bytes(8),  # no record
        b"\x01" + bytes(8) + b"\x05\x01\x00",  # record runs past the end
        b"\x01" + bytes(8) + b"\x03\x01\x02\x80",  # varint truncated
        b"\x01" + bytes(8) + b"\x05\x01\x02\x00\x01\xff",  # detail truncated
        b"\x01" + bytes(8) + b"\x06\x01\x02\x00\x02\xc3\x28",  # detail not UTF-8
        b"\x01" + bytes(8) + b"\x06\x01\x04\x00\xff\xff\x03",  # snapshot over the cap
        b"\x02" + bytes(8) + b"\xff\xff\x00\x00x",  # fragment of a record over the cap
        b"\x02" + bytes(8) + b"\x00\x04\x00\x03xx",  # fragment past its record's end
        AckMessage(1, 2).encode() + b"x",
    ],
)
def test_malformed_event_plaintexts_are_refused_and_counted(plaintext: bytes) -> None:
    with pytest.raises(ValueError):
        decode_event(plaintext)
    receiver = AlarmReceiver()
    assert receiver.receive(SERIAL, plaintext, None) is None
    assert receiver.stats["malformed"] == 1


def test_random_bytes_never_raise_anything_but_value_error() -> None:
    rng = random.Random(15)
    receiver = AlarmReceiver()
    for _ in range(5000):
        data = bytes([rng.choice([1, 2, 3])]) + rng.randbytes(rng.randrange(0, 40))
        receiver.receive(SERIAL, data, StreamPosition(0, 0))
    assert receiver.stats["messages"] == 5000


# -- delivery --------------------------------------------------------------------------------------


def test_alarm_goes_out_at_once_not_at_the_next_keepalive() -> None:
    lab = Lab(interval=60.0)
    broker = Broker(lab)
    device = alarm_device(lab)
    lab.start_all()
    lab.advance(5.0)
    raise_alarms(lab, device, 1)
    assert [r.seq for r in broker.stored] == [1]  # same instant, no timer involved
    assert device.events[-1] == AlarmsDelivered(1, 1)


def test_1000_alarms_raised_while_the_broker_is_down_arrive_once_in_order() -> None:
    lab = Lab(interval=20.0)
    broker = Broker(lab)
    device = alarm_device(lab)
    lab.start_all()
    lab.broker_up = False
    lab.advance(100.0)
    assert device.client.state is not ClientState.ONLINE
    for seq in range(1, 1001):
        record = AlarmRecord(seq, T0 + seq, AlarmKind.MOTION_START, seq % 16, f"zone {seq % 3}")
        device.client.send_alarm(record, lab.now)
        lab.advance(lab.now + 0.05)
    lab.broker_up = True
    lab.advance(lab.now + 60.0)
    assert device.client.state is ClientState.ONLINE
    assert [r.seq for r in broker.stored] == list(range(1, 1001))
    assert broker.stored[999].detail == "zone 1"
    delivered = sum(e.count for e in device.events if isinstance(e, AlarmsDelivered))
    assert delivered == 1000
    assert broker.receiver.stats["duplicates"] == 0
    messages = len(event_datagrams(lab, "up"))
    print(f"1000 alarms in {messages} EVENT datagrams")
    assert messages <= 30


def test_loss_both_ways_retransmits_and_the_broker_drops_duplicates() -> None:
    lab = Lab(interval=20.0)
    broker = Broker(lab)
    device = alarm_device(lab, SenderConfig(rto_initial=0.5, rto_max=4.0))
    lab.start_all()
    dice = random.Random(3)
    lab.filter = lambda d, b, dev: b[0] != MessageType.EVENT or dice.random() > 0.35
    for seq in range(1, 301):
        raise_alarms(lab, device, 1, first=seq)
        lab.advance(lab.now + 0.2)
    lab.advance(lab.now + 120.0)
    assert [r.seq for r in broker.stored] == list(range(1, 301))
    assert device.client.state is ClientState.ONLINE
    sender_stats = device.client._alarms.stats  # type: ignore[union-attr]
    assert sender_stats["retransmitted"] > 10
    assert broker.receiver.stats["duplicates"] > 0  # acks were lost: repeats came and were dropped


def test_a_snapshot_travels_in_fragments_through_loss() -> None:
    lab = Lab(interval=20.0)
    broker = Broker(lab)
    device = alarm_device(lab, SenderConfig(rto_initial=0.5))
    lab.start_all()
    dice = random.Random(9)
    lab.filter = lambda d, b, dev: b[0] != MessageType.EVENT or dice.random() > 0.25
    snapshot = b"\xff\xd8\xff" + random.Random(1).randbytes(MAX_SNAPSHOT - 3)
    raise_alarms(lab, device, 1, snapshot=snapshot)
    raise_alarms(lab, device, 3, first=2)
    lab.advance(lab.now + 200.0)
    assert [r.seq for r in broker.stored] == [1, 2, 3, 4]
    assert broker.stored[0].snapshot == snapshot
    assert broker.receiver.stats["fragments"] >= 16
    assert max(len(b) for b in event_datagrams(lab, "up")) <= 1200


def test_a_full_queue_drops_the_oldest_and_says_so() -> None:
    lab = Lab()
    broker = Broker(lab)
    device = alarm_device(lab, SenderConfig(capacity=10))
    lab.broker_up = False
    lab.start_all()
    raise_alarms(lab, device, 15)
    dropped = [e for e in device.events if isinstance(e, AlarmsDropped)]
    assert [e.through_seq for e in dropped] == [1, 2, 3, 4, 5]
    lab.broker_up = True
    lab.advance(lab.now + 60.0)
    assert [r.seq for r in broker.stored] == list(range(6, 16))


def test_broker_restart_mid_snapshot_resumes_without_loss() -> None:
    lab = Lab(interval=5.0)
    broker = Broker(lab)
    device = alarm_device(lab)
    lab.start_all()
    raise_alarms(lab, device, 2)
    sent = 0

    def cut_after_three_fragments(direction: str, data: bytes, dev: Device) -> bool:
        nonlocal sent
        if direction == "up" and data[0] == MessageType.EVENT:
            sent += 1
        return sent <= 3

    lab.filter = cut_after_three_fragments
    raise_alarms(lab, device, 1, first=3, snapshot=b"\xff\xd8\xff" + bytes(5000))
    lab.advance(lab.now + 3.0)
    lab.restart_broker()  # the partial record is gone; the stored position stays (SQLite)
    broker.receiver = AlarmReceiver()
    lab.filter = lambda d, b, dev: True
    raise_alarms(lab, device, 1, first=4)
    lab.advance(lab.now + 60.0)
    assert [r.seq for r in broker.stored] == [1, 2, 3, 4]
    assert broker.stored[2].snapshot == b"\xff\xd8\xff" + bytes(5000)


def test_a_broker_without_alarm_support_costs_a_datagram_per_30_s_at_most() -> None:
    lab = Lab(interval=20.0)
    broker = Broker(lab)
    broker.answer = False  # an older broker drops EVENT like any unknown type
    device = alarm_device(lab)
    lab.start_all()
    raise_alarms(lab, device, 3)
    lab.advance(lab.now + 600.0)
    assert device.client.state is ClientState.ONLINE
    assert len(event_datagrams(lab, "up")) <= 1 + 6 + 600 // 30


def test_forged_and_foreign_acks_are_counted_not_trusted() -> None:
    lab = Lab()
    Broker(lab).answer = False
    device = alarm_device(lab)
    lab.start_all()
    raise_alarms(lab, device, 2)
    sender = device.client._alarms  # type: ignore[union-attr]
    assert sender is not None
    assert not sender.receive_ack(AckMessage(0x9999, 2).encode(), lab.now)  # another stream
    assert not sender.receive_ack(b"\x03junk", lab.now)
    assert sender.stats["bad_acks"] == 2 and sender.pending == 2
    session = device.client.session_id
    assert session is not None
    forged = HEADER_STRUCT.pack(MessageType.EVENT, VERSION, session, 99) + bytes(40)
    device.client.receive_datagram(forged, lab.now)  # fails authentication
    assert sender.pending == 2 and device.client.stats["dropped"] == 1


def test_a_device_whose_queue_was_wiped_starts_a_new_stream_and_is_not_taken_for_repeats() -> None:
    lab = Lab()
    broker = Broker(lab)
    device = alarm_device(lab, stream=1)
    lab.start_all()
    raise_alarms(lab, device, 3)
    fresh = alarm_device(lab, stream=2)  # the same serial and key, new state
    lab.devices.remove(device)
    fresh.client.start(lab.now)
    lab.pump()
    raise_alarms(lab, fresh, 2)
    assert [r.seq for r in broker.stored] == [1, 2, 3, 1, 2]
    assert broker.positions[SERIAL] == StreamPosition(2, 2)


def test_fragment_out_of_order_is_not_taken_and_the_ack_says_where_to_resume() -> None:
    receiver = AlarmReceiver()
    encoded = AlarmRecord(5, T0, AlarmKind.MOTION_START, 1, "", b"\xff\xd8\xff" + bytes(3000)).encode()
    late = receiver.receive(SERIAL, encode_fragment(1, 5, encoded, FRAGMENT_CHUNK), StreamPosition(1, 4))
    assert late is not None and late.records == ()
    assert decode_event(late.ack) == AckMessage(1, 4, 0)
    first = receiver.receive(SERIAL, encode_fragment(1, 5, encoded, 0), StreamPosition(1, 4))
    assert first is not None and decode_event(first.ack) == AckMessage(1, 4, FRAGMENT_CHUNK)
