"""Data-path probe: the STUN core with made-up time, and the asyncio probe on loopback.

The loopback tests bind the probe to ``lo`` (as it binds to ``ppp0`` or ``usb0`` on a device) and
answer with a small STUN responder in the test; nothing on this machine's network is changed.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import cast

import pytest

from dvrlink.modem.netprobe import DataPathProbe, ProbeConfig, ProbeTransport
from dvrlink.modem.ppp import LinkUp
from dvrlink.protocol.stun_probe import (
    BINDING_ERROR,
    BINDING_SUCCESS,
    STUN_MAGIC_COOKIE,
    ProbeVerdict,
    StunProbe,
    binding_request,
    is_binding_response,
)

TID = bytes(range(12))
LO = LinkUp("lo", "127.0.0.1")


def response(kind: int = BINDING_SUCCESS, tid: bytes = TID, body: bytes = b"") -> bytes:
    return struct.pack("!HHI12s", kind, len(body), STUN_MAGIC_COOKIE, tid) + body


def test_binding_request_is_a_20_byte_stun_header() -> None:
    request = binding_request(TID)
    assert request == b"\x00\x01\x00\x00\x21\x12\xa4\x42" + TID
    with pytest.raises(ValueError, match="12 bytes"):
        binding_request(b"short")


def test_response_matching() -> None:
    xor_mapped = struct.pack("!HHBBH4s", 0x0020, 8, 0, 1, 0x1234, b"\x01\x02\x03\x04")
    assert is_binding_response(response(body=xor_mapped), TID)
    assert is_binding_response(response(BINDING_ERROR), TID)  # the broker answered: path works
    assert not is_binding_response(response(tid=bytes(12)), TID)
    assert not is_binding_response(response(0x0001), TID)  # a request, not a response
    assert not is_binding_response(response()[:19], TID)
    assert not is_binding_response(response(body=xor_mapped)[:-4], TID)  # truncated body
    assert not is_binding_response(b"\xff" * 40, TID)


def test_core_retransmits_with_doubling_rto_then_fails() -> None:
    probe = StunProbe(TID, timeout_s=4.0, initial_rto_s=0.5)
    probe.start(10.0)
    assert probe.datagrams_to_send() == [binding_request(TID)]
    sent_at = [10.0]
    while probe.verdict is ProbeVerdict.PENDING:
        now = probe.get_timer()
        assert now is not None
        probe.handle_timer(now)
        if probe.datagrams_to_send():
            sent_at.append(now)
    assert sent_at == [10.0, 10.5, 11.5, 13.5]
    assert probe.verdict is ProbeVerdict.FAILED
    assert probe.get_timer() is None


def test_core_reached_by_a_matching_answer_only() -> None:
    probe = StunProbe(TID, timeout_s=4.0, initial_rto_s=0.5)
    probe.start(0.0)
    probe.datagram_received(response(tid=bytes(12)), 0.1)
    probe.datagram_received(b"garbage", 0.2)
    assert probe.verdict is ProbeVerdict.PENDING
    probe.datagram_received(response(), 0.3)
    assert probe.verdict is ProbeVerdict.REACHED
    probe.handle_timer(5.0)
    assert probe.verdict is ProbeVerdict.REACHED
    with pytest.raises(RuntimeError):
        probe.start(1.0)


def test_config_errors_say_what_to_set() -> None:
    with pytest.raises(ValueError, match="broker"):
        ProbeConfig(host="")
    with pytest.raises(ValueError, match="port"):
        ProbeConfig(host="x", port=0)


class Responder(asyncio.DatagramProtocol):
    """A STUN responder that answers every n-th request (0: never)."""

    def __init__(self, answer_every: int) -> None:
        self.answer_every = answer_every
        self.requests = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests += 1
        if self.answer_every and self.requests % self.answer_every == 0 and self.transport is not None:
            self.transport.sendto(response(tid=data[8:20]), addr)


def run_udp(answer_every: int, up: LinkUp = LO) -> tuple[bool, int]:
    async def run() -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        transport, responder = await loop.create_datagram_endpoint(
            lambda: Responder(answer_every), local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            probe = DataPathProbe(ProbeConfig("127.0.0.1", port, timeout_s=1.0, initial_rto_s=0.05))
            return await probe(up), responder.requests
        finally:
            transport.close()

    return asyncio.run(run())


def test_udp_probe_reaches_a_stun_responder_through_lo() -> None:
    assert run_udp(answer_every=1) == (True, 1)


def test_udp_probe_survives_a_lost_request() -> None:
    ok, requests = run_udp(answer_every=2)
    assert ok and requests == 2


def test_udp_probe_fails_when_nothing_answers() -> None:
    ok, requests = run_udp(answer_every=0)
    assert not ok and requests >= 2


def test_udp_probe_fails_on_a_closed_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
    probe = DataPathProbe(ProbeConfig("127.0.0.1", port, timeout_s=5.0, initial_rto_s=0.05))
    assert asyncio.run(probe(LO)) is False


def test_probe_through_a_missing_interface_fails() -> None:
    ok, _ = run_udp(answer_every=1, up=LinkUp("nosuchif0", ""))
    assert ok is False


def with_listener(check: Callable[[int], bool]) -> bool:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        return check(listener.getsockname()[1])


def test_tcp_probe_reaches_a_listener_and_fails_on_a_closed_port() -> None:
    def probe_port(port: int) -> bool:
        config = ProbeConfig("127.0.0.1", port, transport=ProbeTransport.TCP, timeout_s=2.0)
        return asyncio.run(DataPathProbe(config)(LO))

    assert with_listener(probe_port) is True
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        closed = holder.getsockname()[1]
    assert probe_port(closed) is False
