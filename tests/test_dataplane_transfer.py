"""Two data plane cores back to back through a simulated link: complete, ordered transfers under
loss, duplication and reordering; FIN, reset and stop-sending; flow control; idle and keepalive."""

from __future__ import annotations

import hashlib
import random

import pytest
from support.dataplane_link import Link, Simulation, key_material, pair, run_until_ended, take_stream_data

from dvrlink.protocol.dataplane import (
    DataplaneClosed,
    DataplaneEvent,
    StopSendingReceived,
    StreamData,
    StreamOpened,
    StreamReset,
)

SIZE = 5_000_000


def collector(conn_events: list[DataplaneEvent], received: dict[int, bytearray], ended: set[int]) -> None:
    for event in conn_events:
        if isinstance(event, StreamData):
            received.setdefault(event.stream_id, bytearray()).extend(event.data)
            if event.ended:
                ended.add(event.stream_id)


@pytest.mark.parametrize("streams", [1, 4])
@pytest.mark.parametrize("loss", [0.0, 0.02, 0.10])
def test_transfer_arrives_complete_and_in_order(streams: int, loss: float) -> None:
    rng = random.Random(int(loss * 100) * 10 + streams)
    viewer, device = pair(key_material(rng))
    sim = Simulation(
        viewer,
        device,
        Link(rng, delay=0.020, loss=loss, duplicate=0.01, reorder=0.05),
        Link(rng, delay=0.020, loss=loss, duplicate=0.01, reorder=0.05),
    )
    sent: dict[int, bytes] = {}
    for _ in range(streams):
        stream = viewer.open_stream()
        sent[stream] = rng.randbytes(SIZE // streams)
        viewer.send(stream, sent[stream], end_stream=True)
    received: dict[int, bytearray] = {}
    ended: set[int] = set()

    def done() -> bool:
        take_stream_data(device, received, ended, sim.now)
        return ended == set(sent)

    sim.run_until(done, max_steps=3_000_000)
    for stream, data in sent.items():
        got = bytes(received.get(stream, b""))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), (
            f"stream {stream}: {len(got)} of {len(data)} bytes, or not in order"
        )
    if loss:
        assert viewer.stats.packets_lost > 0, "the link lost packets but the sender declared none lost"
    assert device.stats.dropped["duplicate"] > 0, "the link duplicated datagrams but none was dropped"


def test_reset_and_stop_sending_are_delivered() -> None:
    rng = random.Random(3)
    viewer, device = pair(key_material(rng))
    sim = Simulation(viewer, device, Link(rng, loss=0.05), Link(rng, loss=0.05))
    stream = viewer.open_stream()
    viewer.send(stream, b"some bytes")
    seen: list[DataplaneEvent] = []
    viewer_seen: list[DataplaneEvent] = []

    def opened() -> bool:
        seen.extend(device.events())
        return any(isinstance(e, StreamOpened) for e in seen)

    sim.run_until(opened, max_steps=10_000)
    device.stop_sending(stream, 9)
    viewer.reset_stream(stream, 7)

    def both() -> bool:
        seen.extend(device.events())
        viewer_seen.extend(viewer.events())
        return any(isinstance(e, StreamReset) for e in seen) and any(
            isinstance(e, StopSendingReceived) for e in viewer_seen
        )

    sim.run_until(both, max_steps=10_000)
    assert [e for e in seen if isinstance(e, StreamReset)] == [StreamReset(stream, 7)], seen
    assert [e for e in viewer_seen if isinstance(e, StopSendingReceived)] == [StopSendingReceived(stream, 9)]


def test_flow_control_stops_the_sender_at_the_window_and_resumes_after_consumed() -> None:
    rng = random.Random(4)
    window = 64 * 1024
    viewer, device = pair(key_material(rng), stream_window=window, connection_window=4 * window)
    sim = Simulation(viewer, device, Link(rng), Link(rng))
    stream = viewer.open_stream()
    data = rng.randbytes(1_000_000)
    viewer.send(stream, data, end_stream=True)
    received: dict[int, bytearray] = {}
    ended: set[int] = set()
    worst = [0]

    def watch(s: Simulation) -> None:
        collector(device.events(), received, ended)
        sent_once = len(data) - viewer.send_buffered(stream)
        worst[0] = max(worst[0], sent_once, len(received.get(stream, b"")))

    sim.on_step = watch
    sim.run_until(lambda: sim.now > 5.0, max_steps=100_000)
    got = len(received.get(stream, b""))
    assert got == window, f"the receiver got {got} bytes without consuming, window {window}"
    assert worst[0] <= window, f"the sender sent {worst[0]} bytes into a {window}-byte window"
    device.consumed(stream, got, sim.now)
    consumed = [got]

    def consume(s: Simulation) -> None:
        before = len(received.get(stream, b""))
        collector(device.events(), received, ended)
        after = len(received.get(stream, b""))
        if after > before:
            device.consumed(stream, after - before, s.now)
            consumed[0] += after - before
        assert len(data) - viewer.send_buffered(stream) <= consumed[0] + window

    sim.on_step = consume
    sim.run_until(lambda: stream in ended, max_steps=200_000)
    assert bytes(received[stream]) == data


def test_idle_timeout_closes_both_ends() -> None:
    rng = random.Random(5)
    viewer, device = pair(key_material(rng), idle_timeout_s=30.0)
    sim = Simulation(viewer, device, Link(rng), Link(rng))
    sim.run_until(lambda: viewer.closed and device.closed, max_steps=1000)
    for conn in (viewer, device):
        closed = [e for e in conn.events() if isinstance(e, DataplaneClosed)]
        assert closed == [DataplaneClosed(0, "idle timeout", by_peer=False)], closed
    assert 30.0 <= sim.now <= 30.1, f"closed at t={sim.now}"


def test_keepalive_pings_keep_an_idle_connection_with_streams_open() -> None:
    rng = random.Random(6)
    viewer, device = pair(key_material(rng), idle_timeout_s=30.0, keepalive_s=10.0)
    sim = Simulation(viewer, device, Link(rng), Link(rng))
    stream = viewer.open_stream()
    viewer.send(stream, b"hello")
    sim.run_until(lambda: sim.now > 300.0, max_steps=10_000)
    events = viewer.events() + device.events()
    assert not any(isinstance(e, DataplaneClosed) for e in events), events
    assert not viewer.closed and not device.closed
    assert viewer.stats.packets_sent >= 25, (
        f"{viewer.stats.packets_sent} packets in 300 s: no keepalive PINGs?"
    )


def packet_number(datagram: bytes) -> int:
    return int.from_bytes(datagram[5:11], "big")


def test_a_lost_tail_is_recovered_by_the_probe_timeout() -> None:
    rng = random.Random(8)
    first_copies: set[int] = set()

    def lose_tail_once(datagram: bytes) -> bool:
        number = packet_number(datagram)
        if 5 <= number <= 9 and number not in first_copies:
            first_copies.add(number)
            return True
        return False

    viewer, device = pair(key_material(rng))
    sim = Simulation(viewer, device, Link(rng, drop=lose_tail_once), Link(rng))
    stream = viewer.open_stream()
    data = rng.randbytes(10 * 1150)  # ten packets: numbers 0-9, the last five lost
    viewer.send(stream, data, end_stream=True)
    received: dict[int, bytearray] = {}
    ended: set[int] = set()

    def done() -> bool:
        collector(device.events(), received, ended)
        return stream in ended

    sim.run_until(done, max_steps=10_000)
    assert first_copies == {5, 6, 7, 8, 9}, f"the tail was not what the test dropped: {sorted(first_copies)}"
    assert bytes(received[stream]) == data
    assert viewer.stats.packets_lost >= 5, f"the sender declared {viewer.stats.packets_lost} lost"


def test_rate_cap_limits_the_sending_rate() -> None:
    rng = random.Random(9)
    viewer, device = pair(key_material(rng))
    cap = 50_000.0
    viewer.set_rate_cap(cap)
    sim = Simulation(viewer, device, Link(rng, delay=0.02), Link(rng, delay=0.02))
    stream = viewer.open_stream()
    viewer.send(stream, rng.randbytes(2_000_000))

    def consume(s: Simulation) -> None:
        for event in device.events():
            if isinstance(event, StreamData):
                device.consumed(event.stream_id, len(event.data), s.now)

    sim.on_step = consume
    sim.run_until(lambda: sim.now > 10.0, max_steps=100_000)
    rate = viewer.stats.bytes_sent / sim.now
    burst = 10 * 1200
    assert viewer.stats.bytes_sent <= cap * sim.now + burst, f"{rate:.0f} B/s under a {cap:.0f} B/s cap"
    assert rate >= 0.8 * cap, f"only {rate:.0f} B/s under a {cap:.0f} B/s cap"


@pytest.mark.parametrize(("cap", "most", "least"), [(None, 0.15, 0.01), (200_000.0, 0.6, 0.4)])
def test_acks_are_decimated_at_high_rates_only(cap: float | None, most: float, least: float) -> None:
    rng = random.Random(10)
    viewer, device = pair(key_material(rng))
    viewer.set_rate_cap(cap)
    sim = Simulation(viewer, device, Link(rng, delay=0.01), Link(rng, delay=0.01))
    stream = viewer.open_stream()
    viewer.send(stream, rng.randbytes(3_000_000))

    def consume(s: Simulation) -> None:
        for event in device.events():
            if isinstance(event, StreamData):
                device.consumed(event.stream_id, len(event.data), s.now)

    sim.on_step = consume
    sim.run_until(lambda: sim.now > 5.0 or viewer.send_buffered(stream) == 0, max_steps=200_000)
    ratio = device.stats.acks_sent / device.stats.packets_received
    assert least <= ratio <= most, (
        f"{device.stats.acks_sent} ACKs for {device.stats.packets_received} packets ({ratio:.2f}) "
        f"at {viewer.stats.bytes_sent / sim.now:.0f} B/s"
    )


def test_config_and_key_material_errors_name_the_field() -> None:
    from dvrlink.protocol.dataplane import DataplaneConfig, KeyMaterial

    with pytest.raises(ValueError, match="max_datagram"):
        DataplaneConfig("viewer", max_datagram=50)
    with pytest.raises(ValueError, match="keepalive_s"):
        DataplaneConfig("device", keepalive_s=0)
    with pytest.raises(ValueError, match="viewer_tag"):
        KeyMaterial(bytes(32), bytes(32), b"abc", b"abcd")
    with pytest.raises(ValueError, match="device_random"):
        KeyMaterial(bytes(32), bytes(31), b"abcd", b"abcd")


def test_a_fin_alone_after_all_data_was_acknowledged_ends_the_stream() -> None:
    """The session layer writes the data first and the end of the stream later (a forward's
    local socket closes after its last bytes were carried): a STREAM frame with FIN and no data,
    when the stream's chunks have all been acknowledged and dropped."""
    rng = random.Random(7)
    viewer, device = pair(key_material(rng))
    sim = Simulation(viewer, device, Link(rng, delay=0.010), Link(rng, delay=0.010))
    stream = viewer.open_stream()
    data = rng.randbytes(50_000)
    viewer.send(stream, data)
    received: dict[int, bytearray] = {}
    ended: set[int] = set()

    def all_acknowledged() -> bool:
        take_stream_data(device, received, ended, sim.now)
        return len(received.get(stream, b"")) == len(data) and viewer.stats.bytes_in_flight == 0

    sim.run_until(all_acknowledged, max_steps=100_000)
    viewer.send(stream, b"", end_stream=True)

    def stream_ended() -> bool:
        take_stream_data(device, received, ended, sim.now)
        return stream in ended

    sim.run_until(stream_ended, max_steps=100_000)
    assert bytes(received[stream]) == data


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_the_bulk_path_puts_the_same_bytes_on_the_wire_as_the_general_one(
    loss: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_send_bulk`` (full packets of one stream's fresh bytes) is a shortcut, not another
    protocol: the same transfer, with the same keys, losses and clock, puts byte-identical
    datagrams on the wire with it and without it (the general loop of ``datagrams_to_send``)."""

    by_bulk = [0]

    def transfer(bulk: bool) -> tuple[list[bytes], int]:
        rng = random.Random(7)
        viewer, device = pair(key_material(rng))
        if bulk:
            send_bulk = viewer._send_bulk

            def counted(out: list[bytes], now: float) -> None:
                before = len(out)
                send_bulk(out, now)
                by_bulk[0] += len(out) - before

            monkeypatch.setattr(viewer, "_send_bulk", counted)
        else:
            monkeypatch.setattr(viewer, "_send_bulk", lambda out, now: None)
            monkeypatch.setattr(device, "_send_bulk", lambda out, now: None)
        sim = Simulation(viewer, device, Link(rng, delay=0.010, loss=loss), Link(rng, delay=0.010, loss=loss))
        sim.record = True
        stream = viewer.open_stream()
        data = rng.randbytes(400_000)
        viewer.send(stream, data[:150_000])
        viewer.send(stream, data[150_000:], end_stream=True)
        assert run_until_ended(sim, device, stream, 500_000) == data
        return sim.sent_a, viewer.stats.packets_sent

    bulk_wire, bulk_sent = transfer(bulk=True)
    general_wire, general_sent = transfer(bulk=False)
    assert by_bulk[0] > bulk_sent // 2, f"only {by_bulk[0]} of {bulk_sent} packets took the bulk path"
    assert bulk_sent == general_sent, (bulk_sent, general_sent)
    differing = [i for i, (a, b) in enumerate(zip(bulk_wire, general_wire, strict=True)) if a != b]
    assert not differing, f"{len(differing)} of {len(bulk_wire)} datagrams differ, first at {differing[:1]}"


def _timed_transfer(max_stream_window: int, consume_rate: float | None) -> tuple[float, int]:
    """4 MB over a 40 ms round trip with a 64 KiB initial stream window; the receiver consumes
    at once (``consume_rate`` None) or at that many bytes per second. Returns (the time the last
    byte arrived, the most bytes the receiver ever held unconsumed)."""
    rng = random.Random(21)
    window = 64 * 1024
    viewer, device = pair(
        key_material(rng),
        stream_window=window,
        connection_window=4 * window,
        max_stream_window=max_stream_window,
        max_connection_window=max(4 * window, 2 * max_stream_window),
    )
    sim = Simulation(viewer, device, Link(rng, delay=0.020), Link(rng, delay=0.020))
    stream = viewer.open_stream()
    data = rng.randbytes(4_000_000)
    viewer.send(stream, data, end_stream=True)
    received: dict[int, bytearray] = {}
    ended: set[int] = set()
    consumed = [0]
    held = [0]
    start = sim.now

    def step(s: Simulation) -> None:
        for event in device.events():
            if isinstance(event, StreamData):
                received.setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.ended:
                    ended.add(event.stream_id)
        got = len(received.get(stream, b""))
        allowed = got if consume_rate is None else min(got, int((s.now - start) * consume_rate))
        if allowed > consumed[0]:
            device.consumed(stream, allowed - consumed[0], s.now)
            consumed[0] = allowed
        held[0] = max(held[0], got - consumed[0])

    sim.on_step = step
    sim.run_until(lambda: stream in ended, max_steps=400_000)
    assert bytes(received[stream]) == data
    assert not device.closed and not viewer.closed
    return sim.now - start, held[0]


def test_the_receive_window_grows_while_the_application_keeps_up_and_only_then() -> None:
    """Auto-tuning (``DataplaneConfig.max_stream_window``): a receiver that consumes at once
    doubles its window each time half of it went by in under two round trips, so a 64 KiB
    initial window stops limiting the transfer (1.6 MB/s at 40 ms); a slow receiver's window
    stays where it was, and so does what it must hold."""
    fixed, _ = _timed_transfer(64 * 1024, None)
    grown, _ = _timed_transfer(4 << 20, None)
    assert fixed > 2.0, f"4 MB through a fixed 64 KiB window at 40 ms took only {fixed:.2f} s"
    assert grown < fixed / 3, f"with auto-tuning {grown:.2f} s against {fixed:.2f} s fixed"
    slow, held = _timed_transfer(4 << 20, 400_000.0)
    assert slow >= 9.0, f"a 400 kB/s reader got 4 MB in {slow:.2f} s"
    assert held <= 64 * 1024, f"a slow reader's window grew: it held {held} bytes unconsumed"


@pytest.mark.parametrize(("ask", "most", "least"), [(True, 0.11, 0.05), (False, 0.3, 0.13)])
def test_a_sender_with_much_in_flight_asks_for_fewer_acks(ask: bool, most: float, least: float) -> None:
    """``ACK_FREQUENCY``: 2 MB/s over a 20 ms round trip (about 33 packets in flight), which the
    receiver's own rate rule does not count as fast: asked, it ACKs every 10th to 20th packet;
    not asked, once per batch the pacer releases (about 6 packets). The bytes arrive either
    way."""
    rng = random.Random(10)
    viewer, device = pair(key_material(rng), ack_frequency=ask)
    viewer.set_rate_cap(2_000_000.0)
    sim = Simulation(viewer, device, Link(rng, delay=0.01), Link(rng, delay=0.01))
    stream = viewer.open_stream()
    data = rng.randbytes(3_000_000)
    viewer.send(stream, data, end_stream=True)
    assert run_until_ended(sim, device, stream, 400_000) == data
    ratio = device.stats.acks_sent / device.stats.packets_received
    assert least <= ratio <= most, (
        f"{device.stats.acks_sent} ACKs for {device.stats.packets_received} packets"
    )
    # a steady flight is asked for once or twice (the start, then the window's size), not per pump
    assert viewer._asked_sequence <= (3 if ask else 0), f"{viewer._asked_sequence} ACK_FREQUENCY requests"


def test_ack_frequency_requests_are_bounded_and_stale_ones_ignored() -> None:
    """A peer may ask for anything: the threshold stays within 1 .. MAX_ACK_THRESHOLD (the max
    ACK delay still sends an ACK), and a request older than the last one applied (a
    retransmission that arrives late) changes nothing."""
    from dvrlink.protocol.dataplane import MAX_ACK_THRESHOLD
    from dvrlink.protocol.dataplane_wire import AckFrequencyFrame

    _, device = pair()
    device._on_control_frame(AckFrequencyFrame(5, 10**12), 0.0)
    assert device._ack.threshold == MAX_ACK_THRESHOLD
    device._on_control_frame(AckFrequencyFrame(4, 3), 0.0)
    assert device._ack.threshold == MAX_ACK_THRESHOLD, "a stale request was applied"
    device._on_control_frame(AckFrequencyFrame(6, 0), 0.0)
    assert device._ack.threshold == 1


@pytest.mark.parametrize(
    ("flight_packets", "asked", "wanted"),
    [(0, 2, 2), (7, 2, 2), (10, 2, 4), (17, 2, 4), (18, 2, 8), (34, 2, 16), (66, 2, 32), (4000, 4, 32),
     (95, 32, 32), (64, 32, 32), (63, 32, 8), (24, 8, 8), (16, 8, 8), (15, 8, 2), (11, 4, 4), (7, 4, 2)],
)  # fmt: skip
def test_the_asked_threshold_moves_in_steps_and_comes_down_only_well_below(
    flight_packets: int, asked: int, wanted: int
) -> None:
    from dvrlink.protocol.dataplane import ack_threshold

    assert ack_threshold(flight_packets * 1200, 1200, asked) == wanted
