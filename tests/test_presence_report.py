"""Device reports riding on keepalives: the layout, and delivery through the sans-I/O cores
(made-up time, a fake link that can lose datagrams)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.presence import Lab

from dvrlink.protocol.presence_client import ClientState
from dvrlink.protocol.presence_events import DeviceMoved, DeviceReported
from dvrlink.protocol.presence_report import MAX_NAT_TYPE, MAX_REPORT, MAX_TEXT, DeviceReport
from dvrlink.protocol.presence_wire import MessageType

FULL = DeviceReport(
    signal_dbm=-87,
    rat="lte",
    data_used=123_456_789_012,
    modem_state="online",
    operator="Telekom.de",
    keepalive_s=105,
    nat_lifetime_s=150,
    presence_transport="udp",
    nat_type="EIM/APDF",
)


def test_layout_round_trips_and_skips_unknown_items() -> None:
    assert DeviceReport.decode(FULL.encode()) == FULL
    assert DeviceReport.decode(b"") == DeviceReport()
    assert DeviceReport.decode(bytes([200, 3, 1, 2, 3]) + DeviceReport(rat="gprs").encode()) == DeviceReport(
        rat="gprs"
    )
    assert DeviceReport.from_dict(FULL.as_dict()) == FULL
    assert DeviceReport.from_dict({"signal_dbm": "loud", "rat": 5, "other": 1}) == DeviceReport()


def test_values_are_clamped_and_text_cut_so_every_report_fits() -> None:
    big = DeviceReport(
        signal_dbm=-500,
        rat="é" * 40,
        data_used=-1,
        modem_state="x" * 100,
        operator="y" * 100,
        keepalive_s=2**40,
        nat_lifetime_s=-3,
        presence_transport="z" * 100,
        nat_type="n" * 100,
    )
    data = big.encode()
    assert len(data) <= MAX_REPORT
    back = DeviceReport.decode(data)
    assert back.signal_dbm == -128 and back.data_used == 0 and back.keepalive_s == 2**32 - 1
    assert back.rat is not None and len(back.rat.encode()) <= MAX_TEXT and set(back.rat) == {"é"}
    assert back.nat_type == "n" * MAX_NAT_TYPE


def test_an_older_broker_skips_the_nat_type_item() -> None:
    """Item 9 is new: a decoder that knows items 1-8 only (an older broker) skips it and keeps
    the rest, as it skips any unknown item."""
    data = FULL.encode()
    assert bytes([9, len(b"EIM/APDF")]) + b"EIM/APDF" in data
    known = {1, 2, 3, 4, 5, 6, 7, 8}
    kept, offset = bytearray(), 0
    while offset < len(data):  # what an older broker's decoder keeps
        item, length = data[offset], data[offset + 1]
        if item in known:
            kept += data[offset : offset + 2 + length]
        offset += 2 + length
    older = DeviceReport.decode(bytes(kept))
    assert older == DeviceReport(**{**FULL.as_dict(), "nat_type": None})
    assert DeviceReport.decode(data).nat_type == "EIM/APDF"


@pytest.mark.parametrize(
    "data",
    [bytes([1]), bytes([1, 2, 0]), bytes([3, 4, 0, 0, 0, 0]), bytes([2, 1, 0xFF]), bytes(MAX_REPORT + 1)],
)
def test_malformed_reports_are_value_errors(data: bytes) -> None:
    with pytest.raises(ValueError, match="report"):
        DeviceReport.decode(data)


@given(st.binary(max_size=MAX_REPORT + 8))
def test_garbage_is_a_report_or_a_value_error(data: bytes) -> None:
    try:
        report = DeviceReport.decode(data)
    except ValueError:
        return
    assert DeviceReport.decode(report.encode()) == report


def test_a_report_rides_on_the_next_keepalive_and_is_retried_until_acknowledged() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0001")
    lab.start_all()
    dev.client.report(FULL, lab.now)
    assert dev.client.report_pending
    # Nothing extra is sent for it: it waits for the keepalive's time.
    lab.wire.clear()
    lab.advance(lab.now + 1.0)
    assert lab.wire == []

    # The first keepalive carrying it is lost on the way up; the retry carries it again.
    lost: list[bytes] = []

    def lose_first(direction: str, data: bytes, device: object) -> bool:
        if direction == "up" and data[0] == MessageType.KEEPALIVE and not lost:
            lost.append(data)
            return False
        return True

    lab.filter = lose_first
    lab.advance(lab.interval + 5.0)
    reports = [e for e in lab.server_events if isinstance(e, DeviceReported)]
    assert lost and reports == [DeviceReported("DL-0001-0001", FULL)]
    assert not dev.client.report_pending
    assert lab.server.stats["reports"] == 1

    # Later keepalives are empty again: the 117-byte round trip is back.
    lab.wire.clear()
    lab.advance(lab.now + lab.interval + 0.5)
    assert [len(b) for d, b, _ in lab.wire if d == "up"] == [26]
    assert [e for e in lab.server_events if isinstance(e, DeviceReported)] == reports


def test_send_now_sends_at_once_and_a_newer_report_replaces_an_unacknowledged_one() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0002")
    lab.start_all()
    lab.filter = lambda direction, data, device: direction != "down"  # acks lost for now
    dev.client.report(DeviceReport(signal_dbm=-100), lab.now, send_now=True)
    lab.pump()
    dev.client.report(DeviceReport(signal_dbm=-70, rat="umts"), lab.now)
    lab.filter = lambda direction, data, device: True
    lab.advance(lab.now + 10.0)
    got = [e.report for e in lab.server_events if isinstance(e, DeviceReported)]
    assert got[0] == DeviceReport(signal_dbm=-100)
    assert got[-1] == DeviceReport(signal_dbm=-70, rat="umts")
    assert not dev.client.report_pending


def test_a_bad_report_is_counted_and_the_keepalive_still_acknowledged() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0003")
    lab.start_all()
    dev.client._report = bytes([1, 5, 0])  # a signal item with a wrong length
    lab.advance(lab.interval + 0.5)
    assert lab.server.stats["bad_reports"] == 1
    assert not any(isinstance(e, DeviceReported) for e in lab.server_events)
    assert not dev.client.report_pending


PROBE_SOCKET = ("203.0.113.5", 50999)


def test_a_probe_from_a_second_socket_is_answered_there_after_its_delay() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0004")
    lab.start_all()
    main_address = dev.address
    made = dev.client.probe_datagram(40.0)
    assert made is not None
    datagram, echo = made
    lab.server.receive_datagram(datagram, PROBE_SOCKET, lab.now)
    lab.pump()
    assert lab.strays == []  # no answer yet
    lab.advance(lab.now + 39.0)
    assert lab.strays == []
    lab.advance(lab.now + 2.0)
    [(answer, to, at)] = lab.strays
    assert to == PROBE_SOCKET and 40.0 <= at <= 41.0
    assert dev.client.probe_reply(answer) == echo
    assert dev.client.probe_reply(answer) is None  # a replay
    assert dev.client.probe_reply(b"\x0a" + bytes(40)) is None
    # The probe socket never became the device's address; the main socket keeps working.
    info = lab.server.presence("DL-0001-0004")
    assert info is not None and info.address == main_address and info.online
    assert not any(isinstance(e, DeviceMoved) for e in lab.server_events)
    assert dev.client.state is ClientState.ONLINE


def test_probes_per_device_are_bounded_and_dropped_with_the_session() -> None:
    lab = Lab()
    dev = lab.add_device("DL-0001-0005")
    lab.start_all()
    limit = lab.server_config.max_probes_per_device
    for _ in range(limit + 2):
        made = dev.client.probe_datagram(30.0)
        assert made is not None
        lab.server.receive_datagram(made[0], PROBE_SOCKET, lab.now)
    assert lab.server.stats["probes"] == limit and lab.server.stats["probes_dropped"] == 2
    lab.advance(lab.now + 31.0)
    assert len(lab.strays) == limit
    # A probe outstanding when the session ends gets no answer.
    made = dev.client.probe_datagram(30.0)
    assert made is not None
    lab.server.receive_datagram(made[0], PROBE_SOCKET, lab.now)
    lab.restart_broker()
    lab.advance(lab.now + 31.0)
    assert len(lab.strays) == limit


def test_a_new_keepalive_interval_is_announced_then_used() -> None:
    lab = Lab(interval=20.0)
    dev = lab.add_device("DL-0001-0006")
    lab.start_all()
    dev.client.set_keepalive_interval(90.0, lab.now)
    assert dev.client.keepalive_interval == 20.0  # not before the broker knows
    lab.advance(lab.now + 20.5)
    assert dev.client.keepalive_interval == 90.0
    info = lab.server.presence("DL-0001-0006")
    assert info is not None and info.keepalive_interval == 90.0
    # 2.5 old intervals of silence no longer make it offline; the next keepalive is 90 s on.
    lab.wire.clear()
    lab.advance(lab.now + 85.0)
    assert lab.wire == [] and lab.server.presence("DL-0001-0006").online  # type: ignore[union-attr]
    lab.advance(lab.now + 6.0)
    assert [d for d, _, _ in lab.wire] == ["up", "down"]
    # After the broker restarts, registration asks for the learned interval at once.
    lab.restart_broker()
    lab.advance(lab.now + 95.0)
    assert dev.client.state is ClientState.ONLINE and dev.client.keepalive_interval == 90.0
    with pytest.raises(ValueError, match="out of range"):
        dev.client.set_keepalive_interval(0.0, lab.now)
