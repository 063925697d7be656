"""Connectivity and session runners on loopback: which path a session uses, refusals, clear errors."""

from __future__ import annotations

import asyncio
import socket
import time

import aioice.ice
import pytest
from aioice import Connection
from pytest_mock import MockerFixture
from support.aio import run
from support.connectivity import (
    LOOPBACK,
    WAIT,
    Session,
    lab,
    payload,
    read_digest,
    session,
    sha,
    write_all,
)
from support.session import Keys

from dvrlink.protocol.dataplane import DataplaneConnection
from dvrlink.protocol.dataplane_recovery import Recovery
from dvrlink.protocol.session import DeviceSession, ViewerSession
from dvrlink.protocol.session_streams import RpcTarget, StreamTarget
from dvrlink.protocol.signalling import PathPolicy, TurnServer
from dvrlink.session.connectivity import (
    LAN,
    RELAY,
    Connectivity,
    ConnectivityError,
    batch_reads,
    is_session_datagram,
)
from dvrlink.session.direct import (
    gather_host,
    host_protocols,
    is_private,
    nominated_protocol,
    selected_pair,
    selected_transport,
)
from dvrlink.session.gso import GsoSender
from dvrlink.session.relay import channel_send, turn_client
from dvrlink.session.runner import (
    PATH_MTU_CEILING,
    PinMismatchError,
    SessionClosedError,
    SessionStream,
    ViewerRefusedError,
    path_is_dead,
)


async def echo(stream: SessionStream, target: StreamTarget) -> None:
    while data := await stream.read():
        stream.write(data)
    stream.write_eof()


async def round_trip(stream: SessionStream, data: bytes) -> bytes:
    writer = asyncio.create_task(write_all(stream, data))
    digest, size = await asyncio.wait_for(read_digest(stream), WAIT)
    await writer
    assert size == len(data)
    return bytes.fromhex(digest)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_relay_only_establishes_over_the_relay(transport: str) -> None:
    async def main() -> None:
        async with (
            lab() as the_lab,
            session(the_lab, PathPolicy.RELAY_ONLY, on_stream=echo, turn_transport=transport) as s,
        ):
            await asyncio.wait_for(s.viewer.established(), WAIT)
            assert s.viewer.path == RELAY
            data = b"hello over the relay " * 5000
            stream = await s.viewer.open_stream(RpcTarget("echo"))
            assert await round_trip(stream, data) == bytes.fromhex(sha(data))
            assert s.device.path == RELAY
            assert s.viewer.connectivity.paths == [RELAY]
            assert s.viewer.rtt is not None
            assert s.viewer.bytes_out > len(data) and s.viewer.bytes_in > len(data)
            assert the_lab.turn is not None and the_lab.turn.core.stats["to_peer"] > 0
            # The hot path (ChannelData straight on aioice's TURN socket) is what carried it.
            conn = s.viewer.connectivity
            assert conn._turn is not None and conn._remote_relay is not None
            assert turn_client(conn._turn) is not None
            assert channel_send(conn._turn, b"\x40not-quic-the-peer-drops-it", conn._remote_relay)

    run(main)


def test_direct_only_establishes_over_lan() -> None:
    async def main() -> None:
        async with (
            lab(with_turn=False) as the_lab,
            session(the_lab, PathPolicy.DIRECT_ONLY, on_stream=echo) as s,
        ):
            await asyncio.wait_for(s.viewer.established(), WAIT)
            assert s.viewer.path == LAN
            assert s.viewer.path_changes == [LAN]
            stream = await s.viewer.open_stream(RpcTarget("echo"))
            data = b"x" * 300_000
            assert await round_trip(stream, data) == bytes.fromhex(sha(data))
            assert s.device.path == LAN
            assert set(s.viewer.connectivity.bytes_out) == {LAN}
            assert s.viewer.connectivity.relayed_address is None

    run(main)


def test_on_the_lan_path_session_datagrams_skip_aioice_and_leave_in_gso_runs(mocker: MockerFixture) -> None:
    """Once the pair is nominated, the session's datagrams go from the socket's batch reader
    straight to the session (aioice would try each as STUN first), and the data plane's bursts
    leave in ``sendmsg`` runs (``session.gso``) and arrive as coalesced reads (``UDP_GRO``),
    handed to the session a read at a time; the bytes arrive intact."""

    async def main() -> None:
        # spied before the sockets exist: the batch reader holds on to the method it calls
        through_aioice = mocker.spy(aioice.ice.StunProtocol, "datagram_received")
        runs = mocker.spy(GsoSender, "_send_run")
        coalesced = mocker.spy(ViewerSession, "receive_datagrams")
        async with (
            lab(with_turn=False) as the_lab,
            session(the_lab, PathPolicy.DIRECT_ONLY, on_stream=echo) as s,
        ):
            await asyncio.wait_for(s.viewer.established(), WAIT)
            warm_up = await s.viewer.open_stream(RpcTarget("echo"))
            assert await round_trip(warm_up, b"warm-up") == bytes.fromhex(sha(b"warm-up"))
            stream = await s.viewer.open_stream(RpcTarget("echo"))
            through_aioice.reset_mock()  # the checks, and datagrams that came before nomination
            runs.reset_mock()
            coalesced.reset_mock()
            data = payload(1_000_000, seed=5)
            assert await round_trip(stream, data) == bytes.fromhex(sha(data))
            session_datagrams = [
                call.args[1] for call in through_aioice.call_args_list if is_session_datagram(call.args[1])
            ]
            assert not session_datagrams, f"{len(session_datagrams)} session datagrams went through aioice"
            assert s.device.connectivity.bytes_in[LAN] > 1_000_000
            sent_in_runs = [call.args[1] for call in runs.call_args_list]
            assert any(len(run) > 1 for run in sent_in_runs), (
                f"no run of datagrams: {len(sent_in_runs)} calls"
            )
            assert True in runs.spy_return_list, "every sendmsg run was refused on loopback"
            reads = [len(call.args[1]) for call in coalesced.call_args_list]
            assert reads and max(reads) > 1, f"no coalesced read reached the viewer's session: {reads[:20]}"

    run(main)


async def send_download(stream: SessionStream, target: StreamTarget) -> None:
    """The device side of a download: 2 MB to the viewer, then FIN."""
    await write_all(stream, payload(2_000_000, seed=6))


def test_a_recorder_ends_its_rtt_samples_when_an_ack_arrived_not_when_read(mocker: MockerFixture) -> None:
    """dvrlinkd reads its ICE sockets one stamped datagram at a time (``gso.StampedReceiver``):
    each ACK reaches the data plane with the kernel's arrival time, and the RTT sample ends
    there, so the time an ACK waits while the recorder is busy sending is not taken for
    queuing on the path (LEDBAT would back off for it)."""

    async def main() -> None:
        reads = mocker.spy(DeviceSession, "receive_datagrams")
        planes = mocker.spy(DataplaneConnection, "receive_datagram")
        acks = mocker.spy(Recovery, "on_ack")
        async with (
            lab(with_turn=False) as the_lab,
            session(
                the_lab, PathPolicy.DIRECT_ONLY, on_stream=send_download, device_reads_as_dvrlinkd=True
            ) as s,
        ):
            await asyncio.wait_for(s.viewer.established(), WAIT)
            stream = await s.viewer.open_stream(RpcTarget("download"))
            digest, size = await asyncio.wait_for(read_digest(stream), WAIT)
            assert (digest, size) == (sha(payload(2_000_000, seed=6)), 2_000_000)
        assert reads.call_args_list, "the device's session got no datagram through its ICE reader"
        per_read = {len(call.args[1]) for call in reads.call_args_list}
        assert per_read == {1}, f"the device read {per_read} datagrams at a time, not one"
        unstamped = [call for call in reads.call_args_list if call.args[4] is None]
        total = len(reads.call_args_list)
        assert not unstamped, f"{len(unstamped)} of {total} device reads had no arrival stamp"
        late = [call.args[4] - call.args[3] for call in reads.call_args_list if call.args[4] > call.args[3]]
        assert not late, f"arrivals after their reads, by {late[:5]} s"
        device_planes = {id(call.args[0].dataplane) for call in reads.call_args_list}
        device_datagrams = [call for call in planes.call_args_list if id(call.args[0]) in device_planes]
        assert device_datagrams and all(call.args[3] is not None for call in device_datagrams), (
            "the device's data plane got datagrams without their arrival"
        )
        stamped_acks = [call for call in acks.call_args_list if call.args[4] is not None]
        assert stamped_acks, f"none of {len(acks.call_args_list)} ACKs reached loss recovery with its arrival"
        assert all(call.args[4] <= call.args[3] for call in stamped_acks)

    run(main)


@pytest.mark.parametrize(
    ("policy", "size"), [(PathPolicy.DIRECT_ONLY, PATH_MTU_CEILING), (PathPolicy.RELAY_ONLY, 1200)]
)
def test_the_data_plane_probes_for_larger_datagrams_on_the_lan_path_only(
    policy: PathPolicy, size: int
) -> None:
    """On the lan path (DF set on its sockets) both ends' data planes find that loopback
    carries ``PATH_MTU_CEILING``-byte datagrams and send the bulk at that size; over the relay
    they stay at the base size."""

    async def main() -> None:
        async with lab() as the_lab, session(the_lab, policy, on_stream=echo) as s:
            await asyncio.wait_for(s.viewer.established(), WAIT)
            first = await s.viewer.open_stream(RpcTarget("echo"))
            data = payload(600_000, seed=8)
            assert await round_trip(first, data) == bytes.fromhex(sha(data))
            second = await s.viewer.open_stream(RpcTarget("echo"))  # after the probes
            assert await round_trip(second, data) == bytes.fromhex(sha(data))
            for side in (s.viewer, s.device):
                plane = side._core.dataplane
                assert plane is not None, "the data plane is not up"
                assert plane.max_datagram == size, f"{plane.max_datagram} B datagrams on {side.path}"
            assert s.viewer.connectivity.path_mtu_probing

    run(main)


def test_all_connects_on_the_relay_then_moves_to_lan() -> None:
    async def main() -> None:
        async with lab() as the_lab, session(the_lab, PathPolicy.ALL, on_stream=echo) as s:
            await asyncio.wait_for(s.viewer.established(), WAIT)
            assert s.viewer.path_changes[0] == RELAY
            stream = await s.viewer.open_stream(RpcTarget("echo"))
            data = b"y" * 200_000
            assert await round_trip(stream, data) == bytes.fromhex(sha(data))
            await wait_for_lan(s)  # ICE may still be checking: wait for its path, no sleep
            assert s.viewer.path_changes == [RELAY, LAN]

    run(main)


async def wait_for_lan(s: Session) -> None:
    """Until the viewer is on the lan path (ICE may still be checking): bounded, no sleep."""
    if s.viewer.path == LAN:
        return
    ready = asyncio.get_running_loop().create_future()
    conn = s.viewer.connectivity
    previous = conn.on_path_ready

    def ready_hook(path: tuple[str, int]) -> None:
        previous(path)
        if path == LAN and not ready.done():
            ready.set_result(None)

    conn.on_path_ready = ready_hook
    await asyncio.wait_for(ready, WAIT)


def test_a_dead_lan_path_falls_back_to_the_relay_mid_transfer() -> None:
    """The lan path turns into a black hole both ways (a NAT mapping or Wi-Fi gone) in the middle
    of a 4 MB echo: the viewer gives it up and the session carries on over the relay, losing
    nothing."""

    async def main() -> None:
        async with lab() as the_lab, session(the_lab, PathPolicy.ALL, on_stream=echo) as s:
            await asyncio.wait_for(s.viewer.established(), WAIT)
            await wait_for_lan(s)
            device = s.device.connectivity
            forward, forward_many, deliver = device.send, device.send_many, device._deliver
            cut = False

            def black_hole_send(data: bytes, path: tuple[str, int]) -> None:
                if not (cut and path == LAN):
                    forward(data, path)

            def black_hole_send_many(datagrams: list[bytes], path: tuple[str, int]) -> None:
                if not (cut and path == LAN):
                    forward_many(datagrams, path)

            def black_hole_deliver(data: bytes, path: tuple[str, int]) -> None:
                if not (cut and path == LAN):
                    deliver(data, path)

            device.send = black_hole_send  # type: ignore[method-assign]
            device.send_many = black_hole_send_many  # type: ignore[method-assign]
            device._deliver = black_hole_deliver  # type: ignore[method-assign]

            async def cut_midway() -> None:
                nonlocal cut
                cut = True

            stream = await s.viewer.open_stream(RpcTarget("echo"))
            data = payload(4 * 1024 * 1024, seed=11)
            writer = asyncio.create_task(write_all(stream, data, midway=cut_midway))
            digest, size = await asyncio.wait_for(read_digest(stream), 3 * WAIT)
            await writer
            assert cut and (digest, size) == (sha(data), len(data))
            assert s.viewer.path_changes == [RELAY, LAN, RELAY]
            assert s.viewer.connectivity.retired == [LAN]
            assert s.viewer.connectivity.best_path == RELAY
            assert any("lan path given up" in e for e in s.viewer.connectivity.errors)

    run(main)


def test_unauthorised_viewer_is_refused() -> None:
    async def main() -> None:
        async with lab() as the_lab, session(the_lab, PathPolicy.RELAY_ONLY, authorised=False) as s:
            # TLS 1.3: the client's handshake completes before the server has checked its
            # certificate, so the viewer may see "established" for a moment, then the refusal.
            reason = await asyncio.wait_for(s.viewer.wait_closed(), WAIT)
            assert "refused this viewer" in reason
            with pytest.raises(ViewerRefusedError, match="refused this viewer"):
                await s.viewer.open_stream(RpcTarget("ping"))
            with pytest.raises(ViewerRefusedError, match="not authorised"):
                await asyncio.wait_for(s.device.established(), WAIT)

    run(main)


def test_pin_mismatch_is_refused_by_the_viewer() -> None:
    async def main() -> None:
        other = Keys().device_fp
        async with lab() as the_lab, session(the_lab, PathPolicy.RELAY_ONLY, pin=other) as s:
            with pytest.raises(PinMismatchError, match="not the pinned"):
                await asyncio.wait_for(s.viewer.established(), WAIT)
            with pytest.raises(SessionClosedError):
                await asyncio.wait_for(s.device.established(), WAIT)

    run(main)


def test_wrong_turn_credentials_say_so() -> None:
    async def main() -> None:
        async with lab() as the_lab:
            servers = the_lab.turn_servers("account-1", password="d3JvbmcgcGFzc3dvcmQ=")
            with pytest.raises(ConnectivityError, match="TURN credentials rejected"):
                await Connectivity.prepare(True, the_lab.stun, servers, PathPolicy.RELAY_ONLY)

    run(main)


def test_unreachable_turn_falls_back_to_ice_under_policy_all() -> None:
    async def main() -> None:
        async with lab(with_turn=False) as the_lab:
            username = f"{int(time.time()) + 600}:x"
            dead = [TurnServer(LOOPBACK, 9, "tcp", username, "cGFzcw==")]  # discard port: refused
            conn = await Connectivity.prepare(
                True, the_lab.stun, dead, PathPolicy.ALL, host_addresses=[LOOPBACK]
            )
            try:
                assert conn.relayed_address is None
                assert any("cannot reach TURN server" in e for e in conn.errors)
                assert conn.local_candidates()
            finally:
                await conn.close()

    run(main)


def test_no_path_closes_the_session_with_a_reason() -> None:
    async def main() -> None:
        async with lab(with_turn=False) as the_lab:
            conn = await Connectivity.prepare(
                True, the_lab.stun, [], PathPolicy.DIRECT_ONLY, host_addresses=[LOOPBACK]
            )
            failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            conn.on_failed = failed.set_result
            try:
                await conn.start("abcd", "a" * 22, [], end_of_candidates=True)
                reason = await asyncio.wait_for(failed, WAIT)
                assert "no path to the peer" in reason
                assert "ICE" in reason or "no host" in reason
            finally:
                await conn.close()

    run(main)


def test_the_aioice_helpers_on_a_fresh_connection() -> None:
    """Connectivity's helpers over aioice before any check (the aioice internals under them are
    guarded in test_compat_aioice.py; birthday.py's public aioice names are checked here)."""

    async def main() -> None:
        ice = Connection(ice_controlling=True)
        await gather_host(ice, [LOOPBACK])
        assert [c.host for c in ice.local_candidates] == [LOOPBACK]
        protocols = host_protocols(ice)
        assert len(protocols) == 1 and hasattr(protocols[0], "request")
        assert batch_reads(protocols[0].transport, protocols[0])
        assert callable(aioice.ice.get_host_addresses)
        assert selected_pair(ice) is None and selected_transport(ice) is None
        # session/birthday.py: its sockets are aioice protocols.
        assert callable(aioice.ice.StunProtocol)
        assert hasattr(protocols[0], "local_candidate") and callable(protocols[0].send_stun)
        assert nominated_protocol(ice) is None
        await ice.close()

    run(main)


def test_drain_waits_for_the_peer_to_acknowledge() -> None:
    async def main() -> None:
        async with lab() as the_lab, session(the_lab, PathPolicy.RELAY_ONLY, on_stream=sink) as s:
            await asyncio.wait_for(s.viewer.established(), WAIT)
            stream = await s.viewer.open_stream(RpcTarget("sink"))
            stream.write(b"z" * (3 * s.viewer.buffer_limit))
            # the write goes out at once as far as the congestion window allows; the rest waits
            backlog = s.viewer._backlog(stream.stream_id)
            assert 2 * s.viewer.buffer_limit < backlog <= 3 * s.viewer.buffer_limit + 8, backlog
            await asyncio.wait_for(stream.drain(), WAIT)
            assert s.viewer._backlog(stream.stream_id) <= s.viewer.buffer_limit
            stream.write_eof()
            assert await asyncio.wait_for(stream.read(), WAIT) == b""

    run(main)


async def sink(stream: SessionStream, target: StreamTarget) -> None:
    while await stream.read():
        pass
    stream.write_eof()


def test_a_silent_udp_turn_server_does_not_hold_up_the_tcp_one() -> None:
    """UDP blocked: the UDP allocation gets no answer at all. The TCP one starts beside it after
    a short head start and wins, before the UDP attempt even times out (no error recorded yet)."""

    async def main() -> None:
        async with lab() as the_lab:
            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
            silent.bind((LOOPBACK, 0))
            try:
                [tcp] = the_lab.turn_servers("account-1", "tcp")
                udp = TurnServer(LOOPBACK, silent.getsockname()[1], "udp", tcp.username, tcp.password)
                conn = await Connectivity.prepare(True, None, [udp, tcp], PathPolicy.RELAY_ONLY)
                try:
                    assert conn.relayed_address is not None
                    assert conn._turn_server == tcp
                    assert conn.errors == []  # the UDP attempt was still pending, not given up
                finally:
                    await conn.close()
            finally:
                silent.close()

    run(main)


def test_an_allocation_that_lost_the_race_is_released_without_ending_the_relay_path() -> None:
    """On a slow uplink (3G's 150 ms round trip) the UDP Allocate outlives its head start, the
    TCP one starts beside it, UDP wins, and TCP succeeds later and is released. Its closing is not
    the adopted allocation's loss: the relay path stays (it once ended every relayed session
    there). The adopted allocation's own loss still ends the path."""

    async def main() -> None:
        async with (
            lab() as the_lab,
            session(the_lab, PathPolicy.RELAY_ONLY, on_stream=sink, turn_transport="tcp") as s,
        ):
            await asyncio.wait_for(s.viewer.established(), WAIT)
            conn = s.viewer._connectivity
            [tcp] = the_lab.turn_servers("account-1", "tcp")
            assert RELAY in conn._ready
            straggler, receiver = await conn._open_turn(tcp)  # succeeded after the race
            assert receiver is not None
            straggler.close()  # what release_turn does with it
            await asyncio.wait_for(receiver.closed, WAIT)
            await asyncio.sleep(0)
            assert RELAY in conn._ready and conn.errors == []
            adopted = conn._relay_receiver
            assert adopted is not None and conn._turn is not None
            conn._turn.close()
            await asyncio.wait_for(adopted.closed, WAIT)
            await asyncio.sleep(0)
            assert RELAY not in conn._ready
            assert any("allocation was lost" in error for error in conn.errors), conn.errors

    run(main)


@pytest.mark.parametrize(
    ("host", "lan"),
    [
        ("10.1.2.3", True),
        ("172.20.0.9", True),
        ("192.168.1.5", True),
        ("169.254.7.7", True),
        ("127.0.0.1", True),
        ("fe80::1%eth0", True),
        ("fd12::5", True),
        ("203.0.113.10", False),  # documentation ranges stand for public addresses
        ("100.64.1.1", False),  # carrier-grade NAT space: not the viewer's lan
        ("8.8.8.8", False),
        ("2001:db8::1", False),
        ("not-an-address", False),
    ],
)
def test_a_host_pair_is_lan_only_towards_a_private_address(host: str, lan: bool) -> None:
    assert is_private(host) is lan


def test_a_path_just_moved_to_is_not_dead_for_what_timed_out_before() -> None:
    """On a slow link QUIC's probe timeout may have fired twice on the relay already; the direct
    path that ICE just found has carried nothing yet. Silence counts from the move."""
    moved = 100.0
    assert not path_is_dead(moved + 0.9, None, moved, probe_timeouts=2)
    assert not path_is_dead(moved + 1.9, None, moved, probe_timeouts=5)
    assert path_is_dead(moved + 2.1, None, moved, probe_timeouts=2)
    # an old datagram from before the move does not make the path look silent either
    assert not path_is_dead(moved + 1.0, moved - 30.0, moved, probe_timeouts=3)
    # a path that carried data and then went quiet while QUIC kept timing out is dead
    assert path_is_dead(moved + 10.0, moved + 7.5, moved, probe_timeouts=2)
    assert not path_is_dead(moved + 10.0, moved + 7.5, moved, probe_timeouts=1)
    assert not path_is_dead(moved + 10.0, moved + 8.5, moved, probe_timeouts=4)
