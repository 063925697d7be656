"""Sessions carry their streams on the data plane (``protocol.dataplane``) once the two hellos
have crossed on the QUIC session: the bytes travel as the data plane's AEAD datagrams, nothing
on the wire is plaintext, a device without the data plane keeps the session on QUIC, and a
replayed or forged data plane datagram is dropped and counted.

Two session cores on the made-up link of ``support.session`` (no sockets, made-up time)."""

from __future__ import annotations

import hashlib
import random

from pytest_mock import MockerFixture
from support.session import (
    DEVICE_DIRECT,
    VIEWER_DIRECT,
    Keys,
    Link,
    dataplane_link,
    established_link,
    is_dataplane_first_byte,
    is_quic_first_byte,
    make_device,
    make_viewer,
)

from dvrlink.protocol.dataplane_wire import HEADER_SIZE
from dvrlink.protocol.identity import ed25519_public_bytes
from dvrlink.protocol.session import (
    DATAPLANE_STREAM_BASE,
    DataplaneStarted,
    SessionClosed,
    SessionConfig,
    SessionEvent,
    StreamData,
    StreamEnded,
    StreamOpened,
)
from dvrlink.protocol.session_streams import (
    DataplaneTarget,
    ForwardTarget,
    Service,
    StreamErrorCode,
    encode_stream_header,
)

MARKER = b"PLAINTEXT-MARKER-dvrlink-"


def received(events: list[SessionEvent], stream_id: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, StreamData) and e.stream_id == stream_id)


def ended(events: list[SessionEvent], stream_id: int) -> bool:
    return any(isinstance(e, StreamEnded) and e.stream_id == stream_id for e in events)


def marked(size: int, seed: int) -> bytes:
    """``size`` bytes with the marker every 4 kB, so a plaintext leak anywhere would show."""
    noise = random.Random(seed).randbytes(size)
    out = bytearray(noise)
    for at in range(0, size - len(MARKER), 4096):
        out[at : at + len(MARKER)] = MARKER
    return bytes(out)


def test_streams_ride_the_data_plane_and_the_wire_carries_no_plaintext() -> None:
    link = dataplane_link()
    up, down = marked(1_000_000, 1), marked(1_000_000, 2)
    before = len(link.wire)
    sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
    assert sid >= DATAPLANE_STREAM_BASE, f"stream {sid} opened on QUIC although the data plane is up"
    link.viewer.send(sid, up, end_stream=True)
    link.run(lambda: any(isinstance(e, StreamOpened) for e in link.device_events))
    opened = [e for e in link.device_events if isinstance(e, StreamOpened)]
    assert opened == [StreamOpened(sid, Service.FORWARD, ForwardTarget("127.0.0.1", 554))]
    link.device.send(sid, down, end_stream=True)
    link.run(lambda: ended(link.device_events, sid) and ended(link.viewer_events, sid), limit=200_000)

    assert hashlib.sha256(received(link.device_events, sid)).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received(link.viewer_events, sid)).digest() == hashlib.sha256(down).digest()
    wire = link.wire[before:]
    plane = sum(len(d) for _, d, _ in wire if is_dataplane_first_byte(d[0]))
    quic = sum(len(d) for _, d, _ in wire if is_quic_first_byte(d[0]))
    assert plane > 2_000_000, f"only {plane} B of data plane datagrams for 2 MB of streams"
    assert quic < plane // 50, f"QUIC carried {quic} B beside the data plane's {plane} B"
    leaks = [side for side, d, _ in link.wire if MARKER[:16] in d]
    assert not leaks, f"plaintext on the wire in {len(leaks)} datagrams"
    assert link.device.dataplane is not None and link.device.dataplane.stats.dropped["auth"] == 0


def test_a_device_without_the_data_plane_keeps_the_session_on_quic() -> None:
    keys = Keys()
    viewer_key = ed25519_public_bytes(keys.viewer)
    link = Link(
        device=make_device(keys.device, lambda raw: raw == viewer_key, SessionConfig(dataplane=False)),
        viewer=make_viewer(keys.viewer, keys.device_fp),  # offers the data plane
    )
    link.start()
    link.run(lambda: link.viewer.peer_fingerprint is not None and link.device.peer_fingerprint is not None)
    assert link.viewer.dataplane_pending
    link.run(lambda: not link.viewer.dataplane_pending)  # the device refused the hello
    assert link.viewer.dataplane is None and link.device.dataplane is None
    assert not link.viewer.dataplane_pending, "the viewer still waits for an answer to its hello"
    data = marked(200_000, 3)
    sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 80))
    assert sid < DATAPLANE_STREAM_BASE
    link.viewer.send(sid, data, end_stream=True)
    link.run(lambda: ended(link.device_events, sid))
    assert received(link.device_events, sid) == data
    assert not [d for _, d, _ in link.wire if is_dataplane_first_byte(d[0])]
    assert not [e for e in link.viewer_events if isinstance(e, StreamEnded)], (
        "the refused hello reached the application"
    )


def test_a_replayed_or_forged_data_plane_datagram_is_dropped_and_counted() -> None:
    link = dataplane_link()
    sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
    link.viewer.send(sid, b"x" * 50_000, end_stream=True)
    link.run(lambda: ended(link.device_events, sid))
    plane = link.device.dataplane
    assert plane is not None
    sample = next(d for side, d, _ in link.wire if side == "viewer" and is_dataplane_first_byte(d[0]))
    events_before = len(link.device_events)
    dropped = dict(plane.stats.dropped)

    link.device.receive_datagram(sample, link.viewer_source, link.now)  # replayed
    forged = bytearray(sample)
    forged[-1] ^= 0x01
    forged[5:11] = (10**9).to_bytes(6, "big")  # a packet number never used
    link.device.receive_datagram(bytes(forged), link.viewer_source, link.now)
    link.collect()

    after = plane.stats.dropped
    assert after["duplicate"] == dropped["duplicate"] + 1, after
    assert after["auth"] == dropped["auth"] + 1, after
    assert len(link.device_events) == events_before
    assert not any(isinstance(e, SessionClosed) for e in link.device_events)


def test_two_sessions_never_share_keys() -> None:
    first, second = dataplane_link(), dataplane_link()
    content = b"same content " * 50
    for link in (first, second):
        sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
        link.viewer.send(sid, content, end_stream=True)
        events = link.device_events
        link.run(lambda: ended(events, sid))  # noqa: B023 (run() returns before the next turn)
    one = {d[HEADER_SIZE:] for side, d, _ in first.wire if side == "viewer" and is_dataplane_first_byte(d[0])}
    two = {
        d[HEADER_SIZE:] for side, d, _ in second.wire if side == "viewer" and is_dataplane_first_byte(d[0])
    }
    assert one and two and not one & two


def test_a_device_refusal_on_a_data_plane_stream_reaches_the_viewer() -> None:
    link = dataplane_link()
    sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 23))
    link.viewer.send(sid, b"hello")
    link.run(lambda: any(isinstance(e, StreamOpened) for e in link.device_events))
    link.device.reset_stream(sid, StreamErrorCode.REFUSED)  # port not allow-listed
    link.run(lambda: ended(link.viewer_events, sid))
    assert [e for e in link.viewer_events if isinstance(e, StreamEnded)] == [
        StreamEnded(sid, StreamErrorCode.REFUSED)
    ]


def test_a_path_switch_mid_transfer_loses_no_bytes_on_the_data_plane() -> None:
    """Relay -> direct while 1 MB moves each way, the old path gone at once: what was in flight on
    it is lost and the data plane's own loss recovery sends it again on the new path."""
    link = dataplane_link(delay=0.02)
    up, down = marked(1_000_000, 5), marked(1_000_000, 6)
    sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
    assert sid >= DATAPLANE_STREAM_BASE
    link.viewer.send(sid, up, end_stream=True)
    link.run(lambda: any(isinstance(e, StreamOpened) for e in link.device_events))
    link.device.send(sid, down, end_stream=True)
    link.run(
        lambda: (
            len(received(link.device_events, sid)) > 300_000
            and len(received(link.viewer_events, sid)) > 300_000
        ),
        limit=200_000,
    )
    link.switch_path(VIEWER_DIRECT, DEVICE_DIRECT, keep_old=False)
    link.run(lambda: ended(link.device_events, sid) and ended(link.viewer_events, sid), limit=400_000)

    assert hashlib.sha256(received(link.device_events, sid)).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received(link.viewer_events, sid)).digest() == hashlib.sha256(down).digest()
    assert link.dropped > 0, "nothing was in flight on the old path: the switch tested nothing"
    assert link.device.peer_address == VIEWER_DIRECT
    assert not any(isinstance(e, SessionClosed) for e in link.viewer_events + link.device_events)


def test_the_viewer_knows_while_its_hello_is_unanswered() -> None:
    link = established_link()
    assert link.viewer.dataplane_pending, "the viewer sent no hello at establishment"
    assert not link.device.dataplane_pending
    link.run(lambda: not link.viewer.dataplane_pending)
    assert link.viewer.dataplane is not None
    link.run(lambda: link.device.dataplane is not None)
    for side in (link.viewer_events, link.device_events):
        assert [e for e in side if isinstance(e, DataplaneStarted)] == [DataplaneStarted()], side

    refused = established_link(config=SessionConfig(dataplane=False))
    assert not refused.viewer.dataplane_pending  # with the data plane off it offers nothing


def test_a_malformed_header_or_a_hello_on_a_data_plane_stream_is_refused_without_an_event() -> None:
    link = dataplane_link()
    plane = link.viewer.dataplane
    assert plane is not None
    bad = plane.open_stream()
    plane.send(bad, b"\x09\x00\x00\x03abc rest")  # unknown service 9
    hello = plane.open_stream()
    plane.send(hello, encode_stream_header(DataplaneTarget(1)) + bytes(36))  # a hello belongs on QUIC
    device_plane = link.device.dataplane
    assert device_plane is not None
    link.run(lambda: device_plane.stats.packets_received >= 2)
    link.run_for(0.5)
    assert not [e for e in link.device_events if isinstance(e, (StreamOpened, StreamData))]
    # the session carries on
    sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
    link.viewer.send(sid, b"still here", end_stream=True)
    link.run(lambda: ended(link.device_events, sid))
    assert received(link.device_events, sid) == b"still here"


def test_coalesced_reads_carry_the_same_bytes_and_drop_the_same_bad_datagrams(mocker: MockerFixture) -> None:
    """``receive_datagrams`` (one coalesced read, as ``gso.GroReceiver`` hands them over) with
    the session's QUIC datagrams in the same runs: 1 MB each way arrives intact, a replayed and
    a forged data plane datagram inside a run are dropped and counted, the datagrams around them
    still arrive, and a viewer drops a run from an address it never sent to."""
    link = dataplane_link(delay=0.01)
    link.coalesce = True
    runs = mocker.spy(link.viewer, "receive_datagrams")
    up, down = marked(1_000_000, 7), marked(1_000_000, 8)
    sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
    link.viewer.send(sid, up, end_stream=True)
    link.run(lambda: any(isinstance(e, StreamOpened) for e in link.device_events))
    link.device.send(sid, down, end_stream=True)
    link.run(lambda: ended(link.device_events, sid) and ended(link.viewer_events, sid), limit=200_000)
    assert hashlib.sha256(received(link.device_events, sid)).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received(link.viewer_events, sid)).digest() == hashlib.sha256(down).digest()
    sizes = [len(call.args[0]) for call in runs.call_args_list]
    assert max(sizes) > 10, f"the link coalesced nothing: {sizes[:20]}"

    plane = link.device.dataplane
    assert plane is not None
    dropped = dict(plane.stats.dropped)
    sample = next(d for side, d, _ in link.wire if side == "viewer" and is_dataplane_first_byte(d[0]))
    quic = next(d for side, d, _ in link.wire if side == "viewer" and is_quic_first_byte(d[0]))
    forged = bytearray(sample)
    forged[-1] ^= 0x01
    forged[5:11] = (10**9).to_bytes(6, "big")
    second = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
    link.viewer.send(second, b"after the bad ones", end_stream=True)
    fresh = [d for d, _ in link.viewer.datagrams_to_send(link.now)]
    assert fresh and all(is_dataplane_first_byte(d[0]) for d in fresh), (
        "the new stream did not ride the data plane"
    )
    link.device.receive_datagrams([sample, bytes(forged), quic, *fresh], link.viewer_source, link.now)
    link.collect()
    after = plane.stats.dropped
    assert after["duplicate"] == dropped["duplicate"] + 1, after
    assert after["auth"] == dropped["auth"] + 1, after
    assert received(link.device_events, second) == b"after the bad ones"
    assert not any(isinstance(e, SessionClosed) for e in link.viewer_events + link.device_events)

    viewer_plane = link.viewer.dataplane
    assert viewer_plane is not None
    before = viewer_plane.stats.packets_received
    link.device.send(second, b"from nowhere")
    stray = [d for d, _ in link.device.datagrams_to_send(link.now)]
    link.viewer.receive_datagrams(stray, ("192.0.2.99", 4242), link.now)
    assert viewer_plane.stats.packets_received == before, "the viewer took datagrams from an unknown address"
