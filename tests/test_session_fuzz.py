"""Property tests: no datagram makes a session raise, and garbage does not disturb a live session."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.session import (
    DEVICE_RELAYED,
    VIEWER_RELAYED,
    Keys,
    established_link,
    make_device,
    make_viewer,
)

from dvrlink.protocol.session import SessionState, StreamData, StreamEnded
from dvrlink.protocol.session_streams import RpcTarget

# Bytes that look like QUIC: long headers of v1 with plausible lengths, short headers, and anything.
long_header = st.builds(
    lambda first, rest: bytes([first]) + b"\x00\x00\x00\x01" + rest,
    st.integers(0xC0, 0xFF),
    st.binary(min_size=0, max_size=1300),
)
short_header = st.builds(
    lambda first, rest: bytes([first]) + rest, st.integers(0x40, 0x7F), st.binary(max_size=200)
)
padded_initial = st.builds(
    lambda rest: b"\xc3\x00\x00\x00\x01\x08" + rest.ljust(1250, b"\x00"), st.binary(min_size=0, max_size=1300)
)
anything = st.one_of(st.binary(max_size=1500), long_header, short_header, padded_initial)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(datagrams=st.lists(anything, min_size=1, max_size=6))
def test_fresh_device_never_raises_and_keeps_no_state_for_garbage(datagrams: list[bytes]) -> None:
    keys = Keys()
    device = make_device(keys.device, lambda raw: True)
    for i, data in enumerate(datagrams):
        device.receive_datagram(data, VIEWER_RELAYED, 10.0 + i)
        device.datagrams_to_send(10.0 + i)
        device.handle_timer(10.0 + i)
    assert device.next_event() is None
    assert device.state is SessionState.HANDSHAKE


@SETTINGS
@given(datagrams=st.lists(anything, min_size=1, max_size=6))
def test_connecting_viewer_never_raises(datagrams: list[bytes]) -> None:
    keys = Keys()
    viewer = make_viewer(keys.viewer, keys.device_fp)
    viewer.connect(DEVICE_RELAYED, 0.0)
    viewer.datagrams_to_send(0.0)
    for i, data in enumerate(datagrams):
        viewer.receive_datagram(data, DEVICE_RELAYED, 0.001 * i)
        viewer.datagrams_to_send(0.001 * i)
    assert viewer.state is not SessionState.ESTABLISHED


@SETTINGS
@given(to_device=st.lists(anything, max_size=4), to_viewer=st.lists(anything, max_size=4))
def test_garbage_into_an_established_session_changes_nothing(
    to_device: list[bytes], to_viewer: list[bytes]
) -> None:
    link = established_link()
    for data in to_device:
        link.device.receive_datagram(data, VIEWER_RELAYED, link.now)
    for data in to_viewer:
        link.viewer.receive_datagram(data, DEVICE_RELAYED, link.now)
    link.collect()
    sid = link.viewer.open_stream(RpcTarget("ping"))
    link.viewer.send(sid, b"ping", end_stream=True)
    link.run(lambda: any(isinstance(e, StreamEnded) for e in link.device_events))
    assert b"".join(e.data for e in link.device_events if isinstance(e, StreamData)) == b"ping"
    assert link.device.state is SessionState.ESTABLISHED
    assert link.viewer.state is SessionState.ESTABLISHED
