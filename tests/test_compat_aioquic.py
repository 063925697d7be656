"""Guards of ``dvrlink.compat.aioquic_compat``: every aioquic private name dvrlink reads, on real
aioquic connections. If one of these fails after an aioquic upgrade, its message names the
version and the name that moved; adapt the compat module, or keep aioquic inside the range
pyproject.toml pins."""

from __future__ import annotations

import datetime
import importlib.util
import re
import ssl
import sys
from importlib import metadata
from typing import Any

import pytest
from aioquic import buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived
from aioquic.quic.packet import pull_quic_header
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.compat import InternalsMoved, aioquic_compat
from dvrlink.protocol.session_tls import (
    ALPN,
    certificate_fingerprint,
    device_certificate,
    viewer_certificate,
)

CLIENT_ADDR = ("192.0.2.1", 4000)
SERVER_ADDR = ("192.0.2.2", 5000)
RTT = 0.05
WALL_CLOCK = datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC)
VERSION = metadata.version("aioquic")


def moved_message(name: str) -> str:
    return rf"aioquic {re.escape(VERSION)} has no {re.escape(name)}"


class RecordingServer(aioquic_compat.HookedQuicConnection):
    """A server whose hooks record their calls; it asks for a client certificate when told."""

    def __init__(self, *, ask_certificate: bool, window: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ask_certificate = ask_certificate
        self.window = window
        self.contexts: list[object] = []

    def tls_context_created(self) -> None:
        self.contexts.append(self.tls)
        if self.ask_certificate:
            aioquic_compat.request_client_certificate(self)

    def stream_receive_limit(self, stream_id: int, limit: int) -> int | None:
        return self.window


class Pair:
    """An aioquic client and a ``RecordingServer`` on a perfect link with RTT/2 each way and
    made-up time. ``window``: what the server's ``stream_receive_limit`` answers (None: aioquic's
    own policy); ``max_stream_data``: its initial per-stream receive window."""

    def __init__(
        self, ask_certificate: bool = False, window: int | None = None, max_stream_data: int | None = None
    ) -> None:
        server_key, self.viewer_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        server_config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
        server_config.certificate = device_certificate(server_key, "DVR-GUARD-1", WALL_CLOCK)
        server_config.private_key = server_key
        if max_stream_data is not None:
            server_config.max_stream_data = max_stream_data
        client_config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
        client_config.certificate = viewer_certificate(self.viewer_key, WALL_CLOCK)
        client_config.private_key = self.viewer_key
        self.client = QuicConnection(configuration=client_config)
        self.now = 0.0
        self.client.connect(SERVER_ADDR, now=self.now)
        self.server = RecordingServer(
            ask_certificate=ask_certificate,
            window=window,
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self.received: dict[int, int] = {}
        """Stream data bytes the server received, per stream."""

    def exchange(self, rounds: int = 10) -> None:
        """Move datagrams both ways ``rounds`` times (a round is one trip each way)."""
        for _ in range(rounds):
            sent = self.client.datagrams_to_send(self.now)
            self.now += RTT / 2
            for data, _addr in sent:
                self.server.receive_datagram(data, CLIENT_ADDR, self.now)
            while (event := self.server.next_event()) is not None:
                if isinstance(event, StreamDataReceived):
                    self.received[event.stream_id] = self.received.get(event.stream_id, 0) + len(event.data)
            sent = self.server.datagrams_to_send(self.now)
            self.now += RTT / 2
            for data, _addr in sent:
                self.client.receive_datagram(data, SERVER_ADDR, self.now)

    def established(self) -> Pair:
        self.exchange()
        events = []
        while (event := self.client.next_event()) is not None:
            events.append(type(event).__name__)
        assert HandshakeCompleted.__name__ in events, f"no handshake after 10 round trips: {events}"
        return self


def test_the_probe_timeout_count_is_aioquics_live_counter() -> None:
    """``_loss._pto_count``: 0 while the peer answers, rises with each probe timeout while it is
    silent, and drops back to 0 with the next acknowledgement (what dead-path detection needs)."""
    pair = Pair().established()
    assert aioquic_compat.probe_timeout_count(pair.client) == 0
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stream_id, b"x" * 1000)
    pair.client.datagrams_to_send(pair.now)  # lost: the server never gets it
    counts = []
    for _ in range(3):
        timer = pair.client.get_timer()
        assert timer is not None, "aioquic armed no timer with data in flight"
        pair.now = timer
        pair.client.handle_timer(pair.now)
        pair.client.datagrams_to_send(pair.now)  # the probes are lost too
        counts.append(aioquic_compat.probe_timeout_count(pair.client))
    assert counts == [1, 2, 3], f"probe timeout counts after 3 silent timeouts: {counts}"
    timer = pair.client.get_timer()
    assert timer is not None
    pair.now = timer
    pair.client.handle_timer(pair.now)  # the next probe gets through, and its acknowledgement
    pair.exchange()
    assert aioquic_compat.probe_timeout_count(pair.client) == 0


def test_a_missing_probe_timeout_count_fails_loudly() -> None:
    """The fallback of 0 this used to have switched dead-path detection off without a word."""
    pair = Pair().established()
    del pair.client._loss._pto_count
    with pytest.raises(InternalsMoved, match=moved_message("QuicPacketRecovery._pto_count")):
        aioquic_compat.probe_timeout_count(pair.client)
    del pair.client._loss
    with pytest.raises(InternalsMoved, match=moved_message("QuicConnection._loss")):
        aioquic_compat.probe_timeout_count(pair.client)


def test_rtt_and_probe_timeout_are_none_before_a_sample_then_measured() -> None:
    """``_loss._rtt_initialized``, ``_rtt_smoothed`` and ``get_probe_timeout()``."""
    pair = Pair()
    assert aioquic_compat.smoothed_rtt(pair.client) is None
    assert aioquic_compat.probe_timeout(pair.client) is None
    pair.established()
    rtt = aioquic_compat.smoothed_rtt(pair.client)
    pto = aioquic_compat.probe_timeout(pair.client)
    assert rtt == pytest.approx(RTT, rel=0.2), f"smoothed RTT {rtt} on a {RTT} s link"
    assert pto is not None and pto > rtt, f"probe timeout {pto} s for a smoothed RTT of {rtt} s"


@pytest.mark.parametrize("name", ["_rtt_initialized", "_rtt_smoothed", "get_probe_timeout"])
def test_missing_rtt_names_fail_loudly(name: str) -> None:
    pair = Pair().established()
    loss = pair.client._loss
    if name == "get_probe_timeout":
        loss.get_probe_timeout = None  # shadows the method: not callable
        with pytest.raises(InternalsMoved, match=moved_message("QuicPacketRecovery.get_probe_timeout")):
            aioquic_compat.probe_timeout(pair.client)
        return
    delattr(loss, name)
    with pytest.raises(InternalsMoved, match=moved_message(f"QuicPacketRecovery.{name}")):
        aioquic_compat.smoothed_rtt(pair.client)


def test_the_tls_hook_runs_once_with_the_context_and_gets_the_client_certificate() -> None:
    """``_initialize`` (overridden), ``tls.Context._request_client_certificate`` (set) and
    ``tls.Context._peer_certificate`` (read), both ends."""
    pair = Pair(ask_certificate=True)
    assert aioquic_compat.peer_certificate(pair.client) is None  # no certificate yet
    pair.established()
    assert pair.server.contexts == [pair.server.tls], "the hook ran other than once, with the context"
    viewer = aioquic_compat.peer_certificate(pair.server)
    device = aioquic_compat.peer_certificate(pair.client)
    assert viewer is not None, "the server asked for a client certificate and got none"
    assert certificate_fingerprint(viewer) == certificate_fingerprint(
        viewer_certificate(pair.viewer_key, WALL_CLOCK)
    )
    assert device is not None and device == pair.server.configuration.certificate


def test_without_the_request_the_client_sends_no_certificate() -> None:
    """The flag is what makes the difference (so setting it is not a no-op)."""
    pair = Pair(ask_certificate=False).established()
    assert aioquic_compat.peer_certificate(pair.server) is None


def test_a_missing_client_certificate_flag_fails_loudly() -> None:
    """Setting the flag on a context that no longer has it would create an attribute nobody reads
    and refuse every viewer; it raises instead."""

    class Server(RecordingServer):
        def tls_context_created(self) -> None:
            del self.tls._request_client_certificate
            aioquic_compat.request_client_certificate(self)

    pair = Pair()
    pair.server = Server(
        ask_certificate=True,
        window=None,
        configuration=pair.server.configuration,
        original_destination_connection_id=pair.client.original_destination_connection_id,
    )
    with pytest.raises(InternalsMoved, match=moved_message("tls.Context._request_client_certificate")):
        pair.exchange(rounds=1)


def test_a_missing_peer_certificate_fails_loudly() -> None:
    pair = Pair(ask_certificate=True).established()
    del pair.server.tls._peer_certificate
    with pytest.raises(InternalsMoved, match=moved_message("tls.Context._peer_certificate")):
        aioquic_compat.peer_certificate(pair.server)


@pytest.mark.parametrize(("window", "expected"), [(None, 4 * 4096), (4096, 4096), (3 * 4096, 3 * 4096)])
def test_the_receive_window_hook_decides_what_the_peer_may_send(window: int | None, expected: int) -> None:
    """``_write_stream_limits`` (overridden, with ``_on_max_stream_data_delivery``): the limit the
    hook answers is what the peer may send; None leaves aioquic's own growing window."""
    pair = Pair(window=window, max_stream_data=4096).established()
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stream_id, b"v" * (4 * 4096))
    pair.exchange(rounds=20)
    assert pair.received.get(stream_id, 0) == expected, (
        f"the server received {pair.received.get(stream_id, 0)} bytes with the hook answering {window}"
    )


def test_the_hooked_methods_are_checked_when_the_module_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    aioquic_compat.check_hooked_methods()
    monkeypatch.delattr(QuicConnection, "_write_stream_limits")
    with pytest.raises(InternalsMoved, match=moved_message("QuicConnection._write_stream_limits()")):
        aioquic_compat.check_hooked_methods()


def test_the_received_marker_moves_only_when_a_peer_packet_decrypts() -> None:
    """``QuicConnection._spaces`` and ``largest_received_packet``."""
    pair = Pair().established()
    before = aioquic_compat.received_marker(pair.client)
    assert before, "no packet number spaces found"
    pair.client.receive_datagram(bytes([0x40]) + bytes(60), SERVER_ADDR, pair.now)  # forged short header
    assert aioquic_compat.received_marker(pair.client) == before
    pair.server.send_ping(1)
    pair.exchange(rounds=1)
    assert aioquic_compat.received_marker(pair.client) != before
    del pair.client._spaces
    with pytest.raises(InternalsMoved, match=moved_message("QuicConnection._spaces")):
        aioquic_compat.received_marker(pair.client)


def test_unacknowledged_bytes_follow_the_send_buffer() -> None:
    """``QuicConnection._streams`` and the sender's ``_buffer_start``/``_buffer_stop``."""
    pair = Pair().established()
    stream_id = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(stream_id, b"u" * 3000)
    assert aioquic_compat.unacknowledged_bytes(pair.client, stream_id) == 3000
    pair.exchange(rounds=3)
    assert aioquic_compat.unacknowledged_bytes(pair.client, stream_id) == 0
    assert aioquic_compat.unacknowledged_bytes(pair.client, 1000) == 0  # no such stream
    pair.client.send_stream_data(stream_id, b"u" * 10)
    del pair.client._streams[stream_id].sender._buffer_stop
    with pytest.raises(InternalsMoved, match=moved_message("QuicStreamSender._buffer_stop")):
        aioquic_compat.unacknowledged_bytes(pair.client, stream_id)


def test_buffer_is_the_class_aioquics_public_module_names() -> None:
    """``aioquic._buffer.Buffer``: still the class ``aioquic.buffer`` re-exports, and the one
    ``pull_quic_header`` reads."""
    assert aioquic_compat.Buffer is buffer.Buffer  # type: ignore[attr-defined]
    pair = Pair()
    initial = pair.client.datagrams_to_send(pair.now)[0][0]
    header = pull_quic_header(aioquic_compat.Buffer(data=initial))
    assert header.destination_cid == pair.client.original_destination_connection_id


def test_a_moved_buffer_module_fails_loudly_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the compat module where ``aioquic._buffer`` is gone names the version (a fresh copy of
    the module is loaded, so the one in use stays as it is)."""
    monkeypatch.setitem(sys.modules, "aioquic._buffer", None)  # makes the import fail
    spec = importlib.util.spec_from_file_location("aioquic_compat_copy", aioquic_compat.__file__)
    assert spec is not None and spec.loader is not None
    with pytest.raises(InternalsMoved, match=moved_message("aioquic._buffer.Buffer")):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
