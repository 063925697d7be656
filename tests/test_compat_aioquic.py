"""Guards of ``dvrlink.compat.aioquic_compat``: every aioquic private name dvrlink reads, on real
aioquic connections. If one of these fails after an aioquic upgrade, its message names the
version and the name that moved; adapt the compat module, or keep aioquic inside the range
pyproject.toml pins."""

from __future__ import annotations

import datetime
import re
import ssl
from importlib import metadata

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dvrlink.compat import InternalsMoved, aioquic_compat
from dvrlink.protocol.session_tls import ALPN, device_certificate

CLIENT_ADDR = ("192.0.2.1", 4000)
SERVER_ADDR = ("192.0.2.2", 5000)
RTT = 0.05
WALL_CLOCK = datetime.datetime(2026, 12, 6, tzinfo=datetime.UTC)
VERSION = metadata.version("aioquic")


def moved_message(name: str) -> str:
    return rf"aioquic {re.escape(VERSION)} has no {re.escape(name)}"


class Pair:
    """An aioquic client and server on a perfect link with RTT/2 each way and made-up time."""

    def __init__(self) -> None:
        key = Ed25519PrivateKey.generate()
        server_config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
        server_config.certificate = device_certificate(key, "DVR-GUARD-1", WALL_CLOCK)
        server_config.private_key = key
        self.client = QuicConnection(
            configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
        )
        self.now = 0.0
        self.client.connect(SERVER_ADDR, now=self.now)
        self.server = QuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )

    def exchange(self, rounds: int = 10) -> None:
        """Move datagrams both ways ``rounds`` times (a round is one trip each way)."""
        for _ in range(rounds):
            sent = self.client.datagrams_to_send(self.now)
            self.now += RTT / 2
            for data, _addr in sent:
                self.server.receive_datagram(data, CLIENT_ADDR, self.now)
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
