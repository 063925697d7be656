"""Viewer ⇄ device sessions, sans-I/O: identity checks, streams, path switch, timers."""

from __future__ import annotations

import hashlib
import random
from typing import TypeVar

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.session import (
    DEVICE_DIRECT,
    SERIAL,
    VIEWER_DIRECT,
    VIEWER_RELAYED,
    WALL_CLOCK,
    Keys,
    Link,
    established_link,
    is_quic_first_byte,
    make_device,
    make_viewer,
)

from dvrlink.compat.aioquic_compat import peer_certificate, probe_timeout, received_marker
from dvrlink.protocol.identity import ed25519_public_bytes
from dvrlink.protocol.session import (
    CloseCode,
    DeviceSession,
    PeerMoved,
    PinMismatch,
    SessionClosed,
    SessionConfig,
    SessionEstablished,
    SessionEvent,
    SessionState,
    SessionStateError,
    StreamData,
    StreamEnded,
    StreamOpened,
    ViewerRefused,
)
from dvrlink.protocol.session_streams import (
    ForwardTarget,
    RpcTarget,
    Service,
    StreamErrorCode,
    decode_stream_header,
    encode_stream_header,
)
from dvrlink.protocol.session_tls import device_certificate

T = TypeVar("T")


def of_type(events: list[SessionEvent], kind: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, kind)]


def received(events: list[SessionEvent], stream_id: int) -> bytes:
    return b"".join(e.data for e in of_type(events, StreamData) if e.stream_id == stream_id)


def ended(events: list[SessionEvent], stream_id: int) -> bool:
    return any(e.stream_id == stream_id for e in of_type(events, StreamEnded))


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --- identity ---


def test_right_pin_and_authorised_viewer_establish_both_sides() -> None:
    keys = Keys()
    link = established_link(keys)
    assert of_type(link.viewer_events, SessionEstablished) == [SessionEstablished(keys.device_fp)]
    assert of_type(link.device_events, SessionEstablished) == [SessionEstablished(keys.viewer_fp)]
    assert link.viewer.state is SessionState.ESTABLISHED
    assert link.device.state is SessionState.ESTABLISHED
    assert link.device.peer_address == VIEWER_RELAYED


@pytest.mark.parametrize(
    "serial", ["DL-0009-0009", SERIAL], ids=["another device", "impostor certificate naming the serial"]
)
def test_device_with_another_key_fails_the_pin_and_nothing_is_exchanged(serial: str) -> None:
    keys = Keys()
    impostor = Ed25519PrivateKey.generate()
    viewer_key = ed25519_public_bytes(keys.viewer)
    device = make_device(impostor, lambda raw: raw == viewer_key, serial=serial)
    link = Link(device=device, viewer=make_viewer(keys.viewer, keys.device_fp))
    link.start()
    link.run(lambda: link.viewer.state is SessionState.CLOSED)
    link.run_for(5.0)

    mismatch = of_type(link.viewer_events, PinMismatch)
    assert len(mismatch) == 1
    assert mismatch[0].expected == keys.device_fp
    assert mismatch[0].seen is not None and mismatch[0].seen != keys.device_fp
    closed = of_type(link.viewer_events, SessionClosed)
    assert closed and closed[0].error_code == CloseCode.PIN_MISMATCH
    assert not of_type(link.viewer_events, SessionEstablished)
    assert not of_type(link.device_events, SessionEstablished)
    assert not of_type(link.device_events, StreamOpened)
    # The viewer never sent its certificate (nor its Finished) to the impostor.
    assert device._quic is not None
    assert peer_certificate(device._quic) is None
    with pytest.raises(SessionStateError):
        link.viewer.open_stream(RpcTarget("ping"))


def test_genuine_certificate_without_the_device_key_fails_the_handshake() -> None:
    keys = Keys()
    impostor_key = Ed25519PrivateKey.generate()
    viewer_key = ed25519_public_bytes(keys.viewer)
    impostor = make_device(impostor_key, lambda raw: raw == viewer_key)
    # A copy of the real certificate (it is public), presented by someone without the private key.
    impostor._certificate = device_certificate(keys.device, SERIAL, WALL_CLOCK)
    link = Link(device=impostor, viewer=make_viewer(keys.viewer, keys.device_fp))
    link.start()
    link.run(lambda: link.viewer.state is SessionState.CLOSED)

    assert not of_type(link.viewer_events, SessionEstablished)
    assert not of_type(link.device_events, SessionEstablished)
    closed = of_type(link.viewer_events, SessionClosed)
    assert closed and "transport code" in closed[0].reason


def test_unauthorised_viewer_is_refused_by_the_device_whatever_the_broker_says() -> None:
    keys = Keys()
    # The broker may claim anything (an invite naming this viewer as paired); the device consults
    # only its own list, which does not hold this viewer's key.
    broker_claims_paired = {ed25519_public_bytes(keys.viewer)}
    device_list: set[bytes] = {ed25519_public_bytes(Ed25519PrivateKey.generate())}
    seen: list[bytes] = []

    def authorised(raw: bytes) -> bool:
        seen.append(raw)
        return raw in device_list

    link = Link(device=make_device(keys.device, authorised), viewer=make_viewer(keys.viewer, keys.device_fp))
    link.start()
    # The viewer may consider itself connected (it verified the device) and send at once.
    link.run(
        lambda: (
            bool(of_type(link.viewer_events, SessionEstablished)) or link.device.state is SessionState.CLOSED
        )
    )
    if link.viewer.state is SessionState.ESTABLISHED:
        sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
        link.viewer.send(sid, b"DESCRIBE rtsp://x/ RTSP/1.0\r\n\r\n")
    link.run(lambda: link.viewer.state is SessionState.CLOSED and link.device.state is SessionState.CLOSED)

    assert seen == list(broker_claims_paired)
    refused = of_type(link.device_events, ViewerRefused)
    assert refused == [ViewerRefused(keys.viewer_fp, "the viewer key is not authorised on this device")]
    assert not of_type(link.device_events, SessionEstablished)
    assert not of_type(link.device_events, StreamOpened)
    assert not of_type(link.device_events, StreamData)
    closed = of_type(link.viewer_events, SessionClosed)
    assert closed and closed[0].error_code == CloseCode.VIEWER_NOT_AUTHORISED
    assert "refused this viewer" in closed[0].reason


def test_viewer_without_client_certificate_is_refused() -> None:
    keys = Keys()
    device = make_device(keys.device, lambda raw: True)
    configuration = QuicConfiguration(alpn_protocols=["dvrlink/1"], is_client=True)
    configuration.verify_mode = 0  # ssl.CERT_NONE
    client = QuicConnection(configuration=configuration)
    now = 0.0
    client.connect(VIEWER_RELAYED, now)
    events: list[SessionEvent] = []
    for _ in range(50):
        for data, _addr in client.datagrams_to_send(now):
            device.receive_datagram(data, VIEWER_RELAYED, now)
        for data, _addr in device.datagrams_to_send(now):
            client.receive_datagram(data, VIEWER_RELAYED, now)
        while (event := device.next_event()) is not None:
            events.append(event)
        now += 0.01
    assert of_type(events, ViewerRefused) == [ViewerRefused(None, "the viewer sent no client certificate")]
    assert not of_type(events, SessionEstablished)


def test_session_objects_reject_mismatched_certificates() -> None:
    keys = Keys()
    with pytest.raises(ValueError, match="not for the device key"):
        DeviceSession(keys.device, device_certificate(keys.viewer, SERIAL, WALL_CLOCK), lambda raw: True)
    with pytest.raises(ValueError, match="fingerprint"):
        make_viewer(keys.viewer, "not-a-fingerprint")


# --- streams ---


def test_several_streams_carry_a_megabyte_each_way_intact() -> None:
    link = established_link()
    up = payload(1_000_000, 1)
    down = payload(1_000_000, 2)
    fwd = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
    rpc = link.viewer.open_stream(RpcTarget("ping"))
    web = link.viewer.open_stream(ForwardTarget("::1", 80))
    link.viewer.send(fwd, up, end_stream=True)
    link.viewer.send(rpc, b"ping", end_stream=True)
    link.viewer.send(web, up[:300_000], end_stream=True)

    link.run(lambda: len(of_type(link.device_events, StreamOpened)) == 3)
    opened = {e.stream_id: e for e in of_type(link.device_events, StreamOpened)}
    assert opened[fwd] == StreamOpened(fwd, Service.FORWARD, ForwardTarget("127.0.0.1", 554))
    assert opened[rpc] == StreamOpened(rpc, Service.RPC, RpcTarget("ping"))
    assert opened[web].target == ForwardTarget("::1", 80)
    link.device.send(fwd, down, end_stream=True)
    link.device.send(rpc, b"pong", end_stream=True)

    link.run(
        lambda: all(ended(link.device_events, s) for s in (fwd, rpc, web)) and ended(link.viewer_events, fwd)
    )
    link.run(lambda: ended(link.viewer_events, rpc))
    assert hashlib.sha256(received(link.device_events, fwd)).digest() == hashlib.sha256(up).digest()
    assert received(link.device_events, web) == up[:300_000]
    assert received(link.device_events, rpc) == b"ping"
    assert hashlib.sha256(received(link.viewer_events, fwd)).digest() == hashlib.sha256(down).digest()
    assert received(link.viewer_events, rpc) == b"pong"
    assert not of_type(link.viewer_events, StreamOpened)  # the viewer opened them all itself


def test_stream_reset_and_refusal_reach_the_other_side() -> None:
    link = established_link()
    sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 23))
    link.viewer.send(sid, b"hello")
    link.run(lambda: bool(of_type(link.device_events, StreamOpened)))
    link.device.reset_stream(sid, StreamErrorCode.REFUSED)  # port not allow-listed
    link.run(lambda: ended(link.viewer_events, sid))
    assert of_type(link.viewer_events, StreamEnded) == [StreamEnded(sid, StreamErrorCode.REFUSED)]


def test_malformed_stream_header_is_reset_without_an_event() -> None:
    link = established_link()
    assert link.viewer._quic is not None
    sid = link.viewer._quic.get_next_available_stream_id()
    link.viewer._quic.send_stream_data(sid, b"\x09\x00\x00\x03abc rest")  # unknown service 9
    link.run(lambda: ended(link.viewer_events, sid))
    assert of_type(link.viewer_events, StreamEnded) == [StreamEnded(sid, StreamErrorCode.BAD_HEADER)]
    assert not of_type(link.device_events, StreamOpened)
    assert not of_type(link.device_events, StreamData)
    # The session itself carries on.
    ok = link.viewer.open_stream(RpcTarget("info"))
    link.viewer.send(ok, b"{}", end_stream=True)
    link.run(lambda: ended(link.device_events, ok))
    assert received(link.device_events, ok) == b"{}"


def test_header_split_across_deliveries_is_reassembled() -> None:
    link = established_link()
    assert link.viewer._quic is not None
    sid = link.viewer._quic.get_next_available_stream_id()
    header = encode_stream_header(ForwardTarget("camera.local", 8000))
    for i in range(len(header)):
        link.viewer._quic.send_stream_data(sid, header[i : i + 1])
        link.exchange()
    link.viewer._quic.send_stream_data(sid, b"data", end_stream=True)
    link.run(lambda: ended(link.device_events, sid))
    assert of_type(link.device_events, StreamOpened) == [
        StreamOpened(sid, Service.FORWARD, ForwardTarget("camera.local", 8000))
    ]
    assert received(link.device_events, sid) == b"data"


@pytest.mark.parametrize(
    "target", [ForwardTarget("127.0.0.1", 554), ForwardTarget("é" * 100, 65535), RpcTarget("ping")]
)
def test_stream_header_round_trip(target: ForwardTarget | RpcTarget) -> None:
    header = encode_stream_header(target)
    assert decode_stream_header(header + b"tail") == (target, len(header))
    for cut in range(len(header)):
        assert decode_stream_header(header[:cut]) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"\x01\x00\x00\x01a",
        b"\x02\x00\x05\x04ping",
        b"\x03\x00\x00\x01a",
        b"\x02\x00\x00\x00",
        b"\x01\x00\x16\x01\xff",
    ],
)
def test_bad_stream_headers_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValueError, match="malformed stream header"):
        decode_stream_header(raw)


@pytest.mark.parametrize(
    "target", [ForwardTarget("", 554), ForwardTarget("h", 0), ForwardTarget("h", 70000), RpcTarget("x" * 256)]
)
def test_unencodable_targets_raise(target: ForwardTarget | RpcTarget) -> None:
    with pytest.raises(ValueError):
        encode_stream_header(target)


# --- paths ---


@pytest.mark.parametrize("keep_old", [True, False], ids=["old path still up", "old path gone"])
def test_path_switch_mid_transfer_loses_no_bytes(keep_old: bool) -> None:
    link = established_link(delay=0.02)  # 40 ms RTT, so datagrams are in flight at the switch
    up = payload(1_000_000, 3)
    down = payload(1_000_000, 4)
    sid = link.viewer.open_stream(ForwardTarget("127.0.0.1", 554))
    link.viewer.send(sid, up, end_stream=True)
    link.run(lambda: bool(of_type(link.device_events, StreamOpened)))
    link.device.send(sid, down, end_stream=True)
    link.run(
        lambda: (
            len(received(link.device_events, sid)) > 300_000
            and len(received(link.viewer_events, sid)) > 300_000
        )
    )

    # Relay -> direct: the viewer now sends to the device's direct address from its own.
    switched_at = len(link.wire)
    link.switch_path(VIEWER_DIRECT, DEVICE_DIRECT, keep_old=keep_old)
    link.run(lambda: ended(link.device_events, sid) and ended(link.viewer_events, sid))

    assert hashlib.sha256(received(link.device_events, sid)).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(received(link.viewer_events, sid)).digest() == hashlib.sha256(down).digest()
    assert of_type(link.device_events, PeerMoved) == [PeerMoved(VIEWER_DIRECT)]
    assert link.device.peer_address == VIEWER_DIRECT
    assert link.viewer.path == DEVICE_DIRECT
    # Once the device has heard the viewer on the new path, it sends only there (no flapping back).
    after = [dst for side, _, dst in link.wire[switched_at:] if side == "device"]
    moved = after.index(VIEWER_DIRECT)
    assert after[moved:] == [VIEWER_DIRECT] * len(after[moved:])
    assert len(after[moved:]) > 300
    assert link.viewer.path == DEVICE_DIRECT
    if keep_old:
        assert link.dropped == 0
    else:
        assert link.dropped > 0  # what was in flight on the relay was lost and sent again
    assert [dst for side, _, dst in link.wire[switched_at:] if side == "viewer"][-1] == DEVICE_DIRECT
    assert not of_type(link.viewer_events, SessionClosed)


def test_moving_off_a_dead_path_gives_the_peer_a_full_liveness_limit_on_the_new_one() -> None:
    # The viewer leaves a path that went silent 3 s ago; a busy device takes 2 s more to answer
    # on the new one. The silence was the old path's: the session must not be declared dead 1 s
    # after the move (4 s after the cut), as it was when the liveness clock ran on across it.
    link = established_link(config=SessionConfig(keepalive_s=None, idle_timeout_s=60.0))
    cut = link.now
    link.paths = {}
    link.viewer_source = ("0.0.0.0", 0)
    link.run_for(3.0)
    assert link.viewer.state is SessionState.ESTABLISHED
    link.switch_path(VIEWER_DIRECT, DEVICE_DIRECT, keep_old=False)
    moved = link.now
    link.paths = {}  # the device does not answer on the new path yet
    link.run_for(2.0)
    assert link.viewer.state is SessionState.ESTABLISHED, of_type(link.viewer_events, SessionClosed)
    assert link.now - cut > 4.5
    link.paths[VIEWER_DIRECT] = DEVICE_DIRECT
    link.run(lambda: of_type(link.device_events, PeerMoved) == [PeerMoved(VIEWER_DIRECT)])
    link.run_for(10.0)
    assert link.viewer.state is SessionState.ESTABLISHED and link.device.state is SessionState.ESTABLISHED
    # and a peer that never answers on the new path is declared dead one limit after the move
    link = established_link(config=SessionConfig(keepalive_s=None, idle_timeout_s=60.0))
    link.paths = {}
    link.viewer_source = ("0.0.0.0", 0)
    link.run_for(3.0)
    link.switch_path(VIEWER_DIRECT, DEVICE_DIRECT, keep_old=False)
    moved = link.now
    link.paths = {}
    link.run(lambda: link.viewer.state is SessionState.CLOSED)
    assert 4.0 <= float(link.closed_at["viewer"]) - moved < 4.5, link.closed_at


def test_viewer_drops_datagrams_from_unknown_addresses() -> None:
    link = established_link()
    sid = link.viewer.open_stream(RpcTarget("ping"))
    link.viewer.send(sid, b"ping", end_stream=True)
    link.run(lambda: ended(link.device_events, sid))
    link.device.send(sid, b"pong", end_stream=True)
    for data, _ in link.device.datagrams_to_send(link.now):
        link.viewer.receive_datagram(data, ("192.0.2.66", 1), link.now)  # not a path the viewer chose
    link.collect()
    assert not received(link.viewer_events, sid)


# --- timers ---


def test_idle_session_sends_keepalives_and_stays_up() -> None:
    link = established_link(config=SessionConfig(keepalive_s=10.0, idle_timeout_s=30.0))
    start, sent_before = link.now, len(link.wire)
    link.run_for(300.0)
    assert link.now - start >= 300.0
    assert link.viewer.state is SessionState.ESTABLISHED
    assert link.device.state is SessionState.ESTABLISHED
    viewer_sends = [d for side, d, _ in link.wire[sent_before:] if side == "viewer"]
    assert len(viewer_sends) >= 300 / 10 - 1
    assert all(is_quic_first_byte(d[0]) for _, d, _ in link.wire)


def test_dead_link_ends_in_idle_timeout() -> None:
    config = SessionConfig(keepalive_s=None, idle_timeout_s=20.0, liveness_min_s=None)
    link = established_link(config=config)
    link.paths = {}  # every datagram from now on is lost
    link.viewer_source = ("0.0.0.0", 0)
    link.run(lambda: link.device.state is SessionState.CLOSED and link.viewer.state is SessionState.CLOSED)
    for events in (link.device_events, link.viewer_events):
        closed = of_type(events, SessionClosed)
        assert len(closed) == 1 and "Idle timeout" in closed[0].reason


def test_a_silent_peer_is_declared_dead_within_the_liveness_limit() -> None:
    link = established_link(config=SessionConfig(keepalive_s=None, idle_timeout_s=60.0))
    cut = link.now
    link.paths = {}  # the peer is gone: every datagram from now on is lost
    link.viewer_source = ("0.0.0.0", 0)
    link.run(lambda: link.device.state is SessionState.CLOSED and link.viewer.state is SessionState.CLOSED)
    closed_at = {side: float(t) for side, t in link.closed_at.items()}
    # The viewer waits liveness_min_s (4 s on a fast link), the device twice as long.
    assert 4.0 <= closed_at["viewer"] - cut < 4.5, closed_at
    assert 8.0 <= closed_at["device"] - cut < 8.5, closed_at
    for side, events in (("device", link.viewer_events), ("viewer", link.device_events)):
        (closed,) = of_type(events, SessionClosed)
        peer = "device" if side == "device" else "viewer"
        assert closed.reason.startswith(f"the {peer} stopped answering: nothing heard for "), closed.reason
        assert closed.error_code == CloseCode.PEER_SILENT


def test_an_idle_live_session_is_kept_up_by_probes_and_not_declared_dead() -> None:
    link = established_link(config=SessionConfig(keepalive_s=None, idle_timeout_s=30.0))
    sent_before = len(link.wire)
    link.run_for(120.0)
    assert link.viewer.state is SessionState.ESTABLISHED and link.device.state is SessionState.ESTABLISHED
    viewer_sends = sum(1 for side, _, _ in link.wire[sent_before:] if side == "viewer")
    # A probe a second (a quarter of the 4 s limit) while nothing else is heard; the answers to
    # them keep the device's own probes quiet. Bounded: no storm.
    assert 100 <= viewer_sends <= 130, viewer_sends


def test_the_liveness_limit_grows_with_a_slow_link() -> None:
    # 600 ms round trip, as on GPRS: 8 probe timeouts of it are longer than the 4 s floor.
    link = established_link(config=SessionConfig(keepalive_s=None, idle_timeout_s=120.0), delay=0.3)
    link.run_for(5.0)  # RTT samples from the probes
    limit = link.viewer.silent_for_limit
    assert limit is not None and limit > 8 * 0.6, limit
    link.run_for(60.0)
    assert link.viewer.state is SessionState.ESTABLISHED and link.device.state is SessionState.ESTABLISHED


def test_local_close_reaches_the_peer() -> None:
    link = established_link()
    link.viewer.close("user pressed ctrl-c")
    link.run(lambda: link.device.state is SessionState.CLOSED)
    assert of_type(link.viewer_events, SessionClosed) == [
        SessionClosed("user pressed ctrl-c", CloseCode.NORMAL)
    ]
    device_closed = of_type(link.device_events, SessionClosed)
    assert len(device_closed) == 1 and "user pressed ctrl-c" in device_closed[0].reason
    with pytest.raises(SessionStateError):
        link.device.send(0, b"x")


def test_the_aioquic_internals_liveness_reads_are_still_there() -> None:
    """``probe_timeout`` and ``received_marker`` (aioquic private names, guarded in
    test_compat_aioquic.py) give liveness what it needs on a real session."""
    link = established_link(delay=0.01)
    link.run_for(2.0)
    quic = link.viewer._quic
    assert quic is not None
    pto = probe_timeout(quic)
    assert pto is not None and 0.02 < pto < 1.0, pto
    before = received_marker(quic)
    assert before, "no packet number spaces found"
    link.device.send(link.device.open_stream(RpcTarget("ping")), b"x")
    link.run_for(0.5)
    assert received_marker(quic) != before
