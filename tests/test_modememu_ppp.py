"""The emulator's PPP server core, sans-I/O: framing, LCP, PAP, CHAP-MD5, IPCP, echo, terminate.

Frames go in as the bytes a host writes and come out decoded; time is made up. Packets are built
and read with scapy's PPP layers, the way a peer would see them.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.ppp import (
    PPP_IPCP,
    PPP_LCP,
    PPP_CHAP_ChallengeResponse,
    PPP_IPCP_Option,
    PPP_IPCP_Option_DNS1,
    PPP_IPCP_Option_DNS2,
    PPP_IPCP_Option_IPAddress,
    PPP_LCP_ACCM_Option,
    PPP_LCP_Auth_Protocol_Option,
    PPP_LCP_Callback_Option,
    PPP_LCP_Configure,
    PPP_LCP_Echo,
    PPP_LCP_Magic_Number_Option,
    PPP_LCP_MRU_Option,
    PPP_LCP_Option,
    PPP_PAP_Request,
    PPP_PAP_Response,
)

from hil.modememu.ppp_client import fcs16_bitwise
from hil.modememu.ppp_framing import FCS_GOOD, Deframer, encode_frame, fcs16
from hil.modememu.ppp_fsm import TRANSITIONS, Action, Event, State
from hil.modememu.ppp_server import (
    Authenticated,
    AuthenticationFailed,
    AuthMethod,
    IpPacketReceived,
    LinkOpened,
    LinkTerminated,
    NetworkOpened,
    PppEvent,
    PppServer,
    PppServerConfig,
)

LCP, PAP, CHAP, IPCP, IPV4 = 0xC021, 0xC023, 0xC223, 0x8021, 0x0021
LOCAL, PEER = "100.64.192.1", "100.64.192.2"
CREDENTIALS = (("web", "secret"),)
PEER_MAGIC = 0x01020304


def counting_rng() -> Callable[[int], bytes]:
    counter = itertools.count(0x11)
    return lambda n: bytes(next(counter) & 0xFF for _ in range(n))


class Peer:
    """Drives one server as the host's pppd would: frames in, decoded frames and events out."""

    def __init__(self, **config: object) -> None:
        self.config = PppServerConfig(**config)  # type: ignore[arg-type]
        self.server = PppServer(self.config, LOCAL, PEER, counting_rng())
        self.now = 100.0
        self.decoder = Deframer(receive_accm=0)
        self.events: list[PppEvent] = []

    def start(self) -> list[tuple[int, bytes]]:
        self.server.start(self.now)
        return self.out()

    def send(self, protocol: int, packet: bytes) -> list[tuple[int, bytes]]:
        self.server.receive_data(encode_frame(b"\xff\x03" + struct.pack("!H", protocol) + packet), self.now)
        return self.out()

    def advance(self, seconds: float) -> list[tuple[int, bytes]]:
        self.now += seconds
        self.server.handle_timer(self.now)
        return self.out()

    def out(self) -> list[tuple[int, bytes]]:
        frames = []
        for frame in self.decoder.feed(self.server.data_to_send()):
            assert frame[:2] == b"\xff\x03", frame
            frames.append((int.from_bytes(frame[2:4], "big"), frame[4:]))
        while (event := self.server.next_event()) is not None:
            self.events.append(event)
        return frames

    def of(self, kind: type[PppEvent]) -> list[PppEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    def open_lcp(self, peer_options: list[object] | None = None) -> bytes:
        """Both Configure-Requests acked; returns the server's request."""
        (proto, request), *_ = self.start()
        assert proto == LCP and request[0] == 1
        options = peer_options if peer_options is not None else [PPP_LCP_ACCM_Option(accm=0), magic_option()]
        replies = self.send(LCP, lcp_conf(1, 0x21, options))
        assert [(p, r[0]) for p, r in replies] == [(LCP, 2)], replies
        self.send(LCP, ack_of(request))
        assert self.of(LinkOpened), self.events
        return request

    def authenticate_pap(self, user: str = "web", password: str = "secret") -> list[tuple[int, bytes]]:
        return self.send(PAP, bytes(PPP_PAP_Request(id=7, username=user, password=password)))


def magic_option(value: int = PEER_MAGIC) -> object:
    return PPP_LCP_Magic_Number_Option(magic_number=value)


def lcp_conf(code: int, ident: int, options: Sequence[object]) -> bytes:
    return bytes(PPP_LCP_Configure(code=code, id=ident, options=options))


def ack_of(request: bytes) -> bytes:
    return bytes((2,)) + request[1:]


def ipcp_conf(code: int, ident: int, options: Sequence[object]) -> bytes:
    return bytes(PPP_IPCP(code=code, id=ident, options=options))


def options_of(packet: bytes) -> list[int]:
    return [o.type for o in PPP_LCP_Configure(packet).options]


def ipv4(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    return bytes(IP(src=src, dst=dst) / UDP(sport=4000, dport=7) / payload)


# ----------------------------------------------------------------------------------------- framing


def test_fcs16_is_crc16_x25() -> None:
    # CRC-16/X-25's check value over "123456789" (the CRC catalogue's vector), and RFC 1662's
    # good residue over a frame followed by its FCS
    assert fcs16(b"123456789") ^ 0xFFFF == 0x906E
    assert fcs16_bitwise(b"123456789") == 0x906E
    body = b"\xff\x03\xc0\x21\x01\x01\x00\x04"
    fcs = fcs16(body) ^ 0xFFFF
    assert fcs16(body + bytes((fcs & 0xFF, fcs >> 8))) == FCS_GOOD


@pytest.mark.parametrize(
    ("accm", "escaped_controls"),
    [(0xFFFFFFFF, set(range(0x20))), (0, set()), ((1 << 0x11) | (1 << 0x13), {0x11, 0x13})],
)
def test_framing_escapes_flags_and_the_accm(accm: int, escaped_controls: set[int]) -> None:
    payload = b"\xff\x03\x00\x21" + bytes(range(256)) + b"\x7e\x7d\x7e"
    wire = encode_frame(payload, accm)
    inner = wire[1:-1]
    assert wire[0] == wire[-1] == 0x7E and 0x7E not in inner
    raw_controls = {b for i, b in enumerate(inner) if b < 0x20 and (i == 0 or inner[i - 1] != 0x7D)}
    assert raw_controls.isdisjoint(escaped_controls)
    assert raw_controls == set(range(0x20)) - escaped_controls
    deframer = Deframer(max_frame=4096, receive_accm=0)
    assert deframer.feed(wire) == [payload]
    one_by_one = Deframer(max_frame=4096, receive_accm=0)
    got = [f for b in wire for f in one_by_one.feed(bytes((b,)))]
    assert got == [payload]


def test_a_bad_fcs_is_dropped_and_counted_and_the_next_frame_still_comes() -> None:
    good = encode_frame(b"\xff\x03\xc0\x21\x09\x01\x00\x08abcd")
    bad = bytearray(good)
    bad[6] ^= 0x01
    deframer = Deframer()
    frames = deframer.feed(bytes(bad) + good)
    assert frames == [b"\xff\x03\xc0\x21\x09\x01\x00\x08abcd"]
    assert deframer.counters.bad_fcs == 1 and deframer.counters.frames == 1


def test_aborted_short_and_overlong_frames_are_counted() -> None:
    deframer = Deframer(max_frame=16)
    assert deframer.feed(b"~\xff\x03\xc0\x21\x7d~" + b"~ab~" + b"~" + b"x" * 40 + b"~") == []
    counters = deframer.counters
    assert (counters.aborted, counters.too_short, counters.too_long) == (1, 1, 1)


def test_unescaped_control_characters_in_the_receive_accm_are_removed() -> None:
    # RFC 1662 7.1: equipment on the line may insert XON/XOFF; with the default ACCM they go
    wire = encode_frame(b"\xff\x03\xc0\x21\x09\x01\x00\x08abcd")
    noisy = wire[:5] + b"\x11" + wire[5:8] + b"\x13" + wire[8:]
    assert Deframer().feed(noisy) == [b"\xff\x03\xc0\x21\x09\x01\x00\x08abcd"]
    assert Deframer(receive_accm=0).feed(noisy) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=2, max_size=300), st.integers(0, 0xFFFFFFFF))
def test_framing_round_trips_any_payload(payload: bytes, accm: int) -> None:
    wire = encode_frame(payload, accm)
    assert Deframer(max_frame=1024, receive_accm=accm & 0).feed(wire) == [payload]
    assert fcs16(payload) ^ 0xFFFF == fcs16_bitwise(payload)


# ------------------------------------------------------------------------------------ the table


def test_the_transition_table_is_rfc_1661s() -> None:
    assert TRANSITIONS[(State.OPENED, Event.RTR)] == ((Action.TLD, Action.ZRC, Action.STA), State.STOPPING)
    assert TRANSITIONS[(State.REQ_SENT, Event.RCA)] == ((Action.IRC,), State.ACK_RCVD)
    assert TRANSITIONS[(State.ACK_RCVD, Event.RCR_PLUS)] == ((Action.SCA, Action.TLU), State.OPENED)
    assert TRANSITIONS[(State.STOPPED, Event.RCR_MINUS)] == (
        (Action.IRC, Action.SCR, Action.SCN),
        State.REQ_SENT,
    )
    assert (State.INITIAL, Event.RCA) not in TRANSITIONS
    assert len(TRANSITIONS) == 120  # 160 cells less the 40 the RFC marks "-"


# ------------------------------------------------------------------------------------------- LCP


def test_the_server_opens_with_accm_auth_and_magic() -> None:
    peer = Peer()
    (proto, request), *rest = peer.start()
    assert proto == LCP and not rest
    parsed = PPP_LCP_Configure(request)
    assert parsed.code == 1
    assert [type(o) for o in parsed.options] == [
        PPP_LCP_ACCM_Option,
        PPP_LCP_Auth_Protocol_Option,
        PPP_LCP_Magic_Number_Option,
    ]
    assert parsed.options[0].accm == 0 and parsed.options[1].auth_protocol == PAP
    assert peer.server.get_timer() == peer.now + 3.0


def test_lcp_acks_a_usual_request_word_for_word_and_opens() -> None:
    peer = Peer()
    request = peer.start()[0][1]
    options = [
        PPP_LCP_MRU_Option(max_recv_unit=1400),
        PPP_LCP_ACCM_Option(accm=0),
        magic_option(),
        PPP_LCP_Option(type=7),
        PPP_LCP_Option(type=8),
    ]
    sent = lcp_conf(1, 0x21, options)
    replies = peer.send(LCP, sent)
    assert replies == [(LCP, ack_of(sent))]
    assert peer.send(LCP, ack_of(request)) == []  # PAP: the server waits for the peer's request
    assert peer.events == [LinkOpened(peer_mru=1400, peer_accm=0, auth=AuthMethod.PAP)]
    assert peer.server.get_timer() == peer.now + 30.0  # auth_timeout_s


def test_lcp_rejects_what_it_does_not_do_and_only_that() -> None:
    peer = Peer()
    peer.start()
    auth_us = PPP_LCP_Auth_Protocol_Option(auth_protocol=CHAP, algorithm=5)
    callback = PPP_LCP_Callback_Option(operation=0)
    replies = peer.send(LCP, lcp_conf(1, 0x22, [PPP_LCP_MRU_Option(max_recv_unit=1500), auth_us, callback]))
    assert len(replies) == 1
    _proto, reply = replies[0]
    assert reply[0] == 4 and reply[1] == 0x22
    assert reply[4:] == bytes(auth_us) + bytes(callback)


def test_lcp_naks_a_tiny_mru_and_a_looped_back_magic() -> None:
    peer = Peer()
    request = peer.start()[0][1]
    server_magic = PPP_LCP_Configure(request).options[-1].magic_number
    tiny = PPP_LCP_MRU_Option(max_recv_unit=64)
    replies = peer.send(LCP, lcp_conf(1, 5, [tiny, magic_option(server_magic)]))
    (_proto, reply), *_ = replies
    assert reply[0] == 3
    naked = PPP_LCP_Configure(reply).options
    assert naked[0].max_recv_unit == 128
    assert naked[1].magic_number not in (0, server_magic)


def test_a_nak_of_our_mru_is_taken_within_what_the_server_can_receive() -> None:
    peer = Peer(mru=1400)
    request = peer.start()[0][1]
    assert PPP_LCP_Configure(request).options[0].max_recv_unit == 1400
    nak = lcp_conf(3, request[1], [PPP_LCP_MRU_Option(max_recv_unit=1200)])
    ((_proto, again),) = peer.send(LCP, nak)
    assert PPP_LCP_Configure(again).options[0].max_recv_unit == 1200
    too_big = lcp_conf(3, again[1], [PPP_LCP_MRU_Option(max_recv_unit=9000)])
    ((_proto, third),) = peer.send(LCP, too_big)
    assert PPP_LCP_Configure(third).options[0].max_recv_unit == 1200


def test_a_nak_of_chap_suggesting_pap_switches_to_pap() -> None:
    peer = Peer(auth=(AuthMethod.CHAP_MD5, AuthMethod.PAP))
    request = peer.start()[0][1]
    assert PPP_LCP_Configure(request).options[1].auth_protocol == CHAP
    nak = bytes((3,)) + request[1:2] + struct.pack("!H", 8) + struct.pack("!BBH", 3, 4, PAP)
    (_proto, again), *_ = peer.send(LCP, nak)
    assert again[0] == 1 and again[1] != request[1]
    assert PPP_LCP_Configure(again).options[1].auth_protocol == PAP


def test_a_peer_that_rejects_authentication_is_cut_off_when_credentials_are_required() -> None:
    peer = Peer(credentials=CREDENTIALS)
    request = peer.start()[0][1]
    auth = bytes(PPP_LCP_Auth_Protocol_Option(auth_protocol=PAP))
    peer.send(LCP, lcp_conf(1, 1, [magic_option()]))
    replies = peer.send(LCP, bytes((4,)) + request[1:2] + struct.pack("!H", 4 + len(auth)) + auth)
    assert [(p, r[0]) for p, r in replies] == [(LCP, 5)], replies  # Terminate-Request
    assert peer.send(LCP, bytes(PPP_LCP(code=6, id=replies[0][1][1]))) == []
    (ended,) = peer.of(LinkTerminated)
    assert isinstance(ended, LinkTerminated) and not ended.by_peer
    assert "authentication" in ended.reason


def test_a_peer_that_rejects_authentication_goes_on_when_any_login_is_accepted() -> None:
    peer = Peer()
    request = peer.start()[0][1]
    auth = bytes(PPP_LCP_Auth_Protocol_Option(auth_protocol=PAP))
    peer.send(LCP, lcp_conf(1, 1, [magic_option()]))
    (_proto, again), *_ = peer.send(LCP, bytes((4,)) + request[1:2] + struct.pack("!H", 4 + len(auth)) + auth)
    assert 3 not in options_of(again)
    replies = peer.send(LCP, ack_of(again))
    assert peer.of(LinkOpened) == [LinkOpened(1500, 0xFFFFFFFF, None)]
    assert [(p, r[0]) for p, r in replies] == [(IPCP, 1)]  # straight to the network phase


def test_acks_that_do_not_match_the_request_are_ignored() -> None:
    peer = Peer()
    request = peer.start()[0][1]
    assert peer.send(LCP, bytes((2, (request[1] + 1) & 0xFF)) + request[2:]) == []
    assert peer.send(LCP, ack_of(request)[:-1] + bytes((request[-1] ^ 1,))) == []
    assert peer.server.counters.discarded == 2
    assert peer.server.lcp.state is State.REQ_SENT


def test_the_request_is_sent_again_and_the_link_given_up_after_max_configure() -> None:
    peer = Peer(max_configure=3, restart_s=2.0)
    first = peer.start()[0][1]
    second = peer.advance(2.0)[0][1]
    assert second[0] == 1 and second[1] != first[1]
    assert peer.advance(2.0)[0][1][0] == 1
    assert peer.advance(2.0) == [] and peer.advance(2.0) == []
    (ended,) = peer.of(LinkTerminated)
    assert peer.server.lcp.state is State.STOPPED and peer.server.get_timer() is None
    assert isinstance(ended, LinkTerminated)


# ----------------------------------------------------------------------------------- PAP and CHAP


def test_pap_with_the_right_password_opens_the_network_phase() -> None:
    peer = Peer(credentials=CREDENTIALS)
    peer.open_lcp()
    replies = peer.authenticate_pap()
    assert [p for p, _ in replies] == [PAP, IPCP]
    response = PPP_PAP_Response(replies[0][1])
    assert response.code == 2 and response.id == 7
    assert peer.of(Authenticated) == [Authenticated(AuthMethod.PAP, "web")]


def test_pap_with_a_wrong_password_is_refused_and_the_link_closed() -> None:
    peer = Peer(credentials=CREDENTIALS)
    peer.open_lcp()
    replies = peer.authenticate_pap(password="wrong")
    assert [(p, r[0]) for p, r in replies] == [(PAP, 3), (LCP, 5)]
    (failed,) = peer.of(AuthenticationFailed)
    assert isinstance(failed, AuthenticationFailed) and failed.username == "web"
    peer.send(LCP, bytes(PPP_LCP(code=6, id=replies[1][1][1])))
    assert len(peer.of(LinkTerminated)) == 1


def test_pap_without_a_request_in_time_ends_the_link() -> None:
    peer = Peer(credentials=CREDENTIALS, auth_timeout_s=5.0)
    peer.open_lcp()
    replies = peer.advance(5.0)
    assert [(p, r[0]) for p, r in replies] == [(LCP, 5)]
    assert len(peer.of(AuthenticationFailed)) == 1


def chap_peer(**config: object) -> tuple[Peer, PPP_CHAP_ChallengeResponse]:
    peer = Peer(auth=(AuthMethod.CHAP_MD5,), **config)
    (_proto, request), *_ = peer.start()
    peer.send(LCP, lcp_conf(1, 1, [magic_option()]))
    replies = peer.send(LCP, ack_of(request))
    assert [p for p, _ in replies] == [CHAP]
    challenge = PPP_CHAP_ChallengeResponse(replies[0][1])
    assert challenge.code == 1 and challenge.optional_name == b"modememu" and len(challenge.value) == 16
    return peer, challenge


def chap_response(challenge: PPP_CHAP_ChallengeResponse, user: str, secret: str) -> bytes:
    digest = hashlib.md5(bytes((challenge.id,)) + secret.encode() + challenge.value).digest()
    response = PPP_CHAP_ChallengeResponse(code=2, id=challenge.id, value=digest, optional_name=user.encode())
    return bytes(response)


def test_chap_md5_with_the_right_secret_succeeds() -> None:
    peer, challenge = chap_peer(credentials=CREDENTIALS)
    replies = peer.send(CHAP, chap_response(challenge, "web", "secret"))
    assert [(p, r[0]) for p, r in replies] == [(CHAP, 3), (IPCP, 1)]
    assert peer.of(Authenticated) == [Authenticated(AuthMethod.CHAP_MD5, "web")]


def test_chap_md5_with_a_wrong_secret_fails_and_closes() -> None:
    peer, challenge = chap_peer(credentials=CREDENTIALS)
    replies = peer.send(CHAP, chap_response(challenge, "web", "guess"))
    assert [(p, r[0]) for p, r in replies] == [(CHAP, 4), (LCP, 5)]
    assert len(peer.of(AuthenticationFailed)) == 1 and not peer.of(Authenticated)


def test_a_chap_challenge_is_sent_again_when_unanswered() -> None:
    peer, challenge = chap_peer(restart_s=1.0)
    (proto, again), *_ = peer.advance(1.0)
    second = PPP_CHAP_ChallengeResponse(again)
    assert proto == CHAP and second.id != challenge.id and second.value != challenge.value
    assert peer.send(CHAP, chap_response(challenge, "any", "thing")) == []  # the stale id
    assert [p for p, _ in peer.send(CHAP, chap_response(second, "any", "thing"))] == [CHAP, IPCP]


# ------------------------------------------------------------------------------------------ IPCP


def network_peer(**config: object) -> tuple[Peer, bytes]:
    """LCP open, PAP done; returns the server's IPCP Configure-Request."""
    peer = Peer(**config)
    peer.open_lcp()
    replies = peer.authenticate_pap()
    ((_proto, request),) = [r for r in replies if r[0] == IPCP]
    parsed = PPP_IPCP(request)
    assert parsed.code == 1 and [o.data for o in parsed.options] == [LOCAL]
    return peer, request


def test_ipcp_assigns_the_pool_address_and_dns_and_rejects_compression() -> None:
    peer, request = network_peer(dns=("192.0.2.53", "192.0.2.54"))
    zero = [
        PPP_IPCP_Option_IPAddress(data="0.0.0.0"),
        PPP_IPCP_Option_DNS1(data="0.0.0.0"),
        PPP_IPCP_Option_DNS2(data="0.0.0.0"),
    ]
    vj = PPP_IPCP_Option(type=2, data=b"\x00\x2d\x0f\x01")
    (proto, reply), *_ = peer.send(IPCP, ipcp_conf(1, 1, [*zero, vj]))
    assert proto == IPCP and reply[0] == 4 and reply[4:] == bytes(vj)
    (_proto, reply), *_ = peer.send(IPCP, ipcp_conf(1, 2, zero))
    assert reply[0] == 3
    assert [o.data for o in PPP_IPCP(reply).options] == [PEER, "192.0.2.53", "192.0.2.54"]
    asked = ipcp_conf(1, 3, list(PPP_IPCP(reply).options))
    assert peer.send(IPCP, asked) == [(IPCP, bytes((2,)) + asked[1:])]
    peer.send(IPCP, ack_of(request))
    assert peer.of(NetworkOpened) == [NetworkOpened(LOCAL, PEER, ("192.0.2.53", "192.0.2.54"))]


def test_ipcp_naks_a_wrong_address_and_rejects_dns_it_has_none_of() -> None:
    peer, _ = network_peer()
    (proto, reply), *_ = peer.send(IPCP, ipcp_conf(1, 1, [PPP_IPCP_Option_IPAddress(data="10.1.2.3")]))
    assert proto == IPCP and reply[0] == 3 and PPP_IPCP(reply).options[0].data == PEER
    dns = PPP_IPCP_Option_DNS1(data="0.0.0.0")
    (_proto, reply), *_ = peer.send(IPCP, ipcp_conf(1, 2, [PPP_IPCP_Option_IPAddress(data=PEER), dns]))
    assert reply[0] == 4 and reply[4:] == bytes(dns)


def test_ip_packets_flow_both_ways_once_ipcp_is_open() -> None:
    peer, request = network_peer()
    assert not peer.server.send_ip(ipv4(LOCAL, PEER), peer.now)  # not open yet
    peer.send(IPCP, ipcp_conf(1, 1, [PPP_IPCP_Option_IPAddress(data=PEER)]))
    peer.send(IPCP, ack_of(request))
    packet = ipv4(PEER, "198.51.100.7", b"+++ not an escape")
    peer.send(IPV4, packet)
    peer.send(IPV4, ipv4("10.9.9.9", "198.51.100.7"))  # a spoofed source
    assert peer.of(IpPacketReceived) == [IpPacketReceived(packet)]
    answer = ipv4("198.51.100.7", PEER, b"\x7e\x7d\x11 stuffed")
    assert peer.server.send_ip(answer, peer.now)
    assert peer.out() == [(IPV4, answer)]
    counters = peer.server.counters
    assert (counters.ip_in, counters.ip_out, counters.ip_dropped) == (1, 1, 2)


# ---------------------------------------------------------------------------- echo and terminate


def test_echo_requests_are_answered_with_the_servers_magic_once_open() -> None:
    peer = Peer()
    request = peer.start()[0][1]
    echo = bytes(PPP_LCP_Echo(code=9, id=3, magic_number=PEER_MAGIC, data=b"ping"))
    assert peer.send(LCP, echo) == []  # not Opened: RXR is ignored there
    peer.send(LCP, lcp_conf(1, 1, [magic_option()]))
    peer.send(LCP, ack_of(request))
    ((_proto, reply),) = peer.send(LCP, echo)
    parsed = PPP_LCP_Echo(reply)
    server_magic = PPP_LCP_Configure(request).options[-1].magic_number
    assert (parsed.code, parsed.id, parsed.magic_number, parsed.data) == (10, 3, server_magic, b"ping")


def test_a_terminate_request_is_acked_and_the_link_finishes_one_timeout_later() -> None:
    peer, _ = network_peer()
    assert peer.send(LCP, bytes(PPP_LCP(code=5, id=9))) == [(LCP, bytes(PPP_LCP(code=6, id=9)))]
    assert not peer.of(LinkTerminated)
    assert peer.advance(3.0) == []
    (ended,) = peer.of(LinkTerminated)
    assert isinstance(ended, LinkTerminated) and ended.by_peer
    assert ended.reason == "peer sent LCP Terminate-Request"


def test_closing_from_the_network_side_sends_terminate_requests() -> None:
    peer, _ = network_peer(max_terminate=2, restart_s=1.0)
    peer.server.close(peer.now, "operator barred the SIM")
    first = peer.out()
    assert [(p, r[0]) for p, r in first] == [(LCP, 5)]
    assert [(p, r[0]) for p, r in peer.advance(1.0)] == [(LCP, 5)]
    assert peer.advance(1.0) == []
    (ended,) = peer.of(LinkTerminated)
    assert isinstance(ended, LinkTerminated) and ended.reason == "operator barred the SIM"


def test_unknown_protocols_and_codes_are_rejected() -> None:
    peer, _ = network_peer()
    ((proto, reply),) = peer.send(0x8057, b"\x01\x01\x00\x04")  # IPv6CP
    assert proto == LCP and reply[0] == 8 and reply[4:6] == b"\x80\x57"
    ((_proto, reply),) = peer.send(LCP, b"\x63\x05\x00\x06zz")
    assert reply[0] == 7 and reply[4:] == b"\x63\x05\x00\x06zz"


# ---------------------------------------------------------------------------------------- fuzzing

PROTOCOLS = st.sampled_from([LCP, PAP, CHAP, IPCP, IPV4, 0x80FD, 0x0057, 0x21])


def fuzz_peer() -> Peer:
    peer, request = network_peer()
    peer.send(IPCP, ipcp_conf(1, 1, [PPP_IPCP_Option_IPAddress(data=PEER)]))
    peer.send(IPCP, ack_of(request))
    assert peer.of(NetworkOpened)
    return peer


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=8))
def test_line_noise_never_raises(chunks: list[bytes]) -> None:
    peer = fuzz_peer()
    for chunk in chunks:
        peer.server.receive_data(chunk, peer.now)
        peer.out()
    peer.advance(5.0)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(PROTOCOLS, st.integers(1, 11), st.binary(max_size=40)), max_size=6))
def test_well_framed_nonsense_never_raises(packets: list[tuple[int, int, bytes]]) -> None:
    for start_open in (False, True):
        peer = fuzz_peer() if start_open else Peer()
        if not start_open:
            peer.start()
        for protocol, code, body in packets:
            # a plausible header (code, id, length) over random contents, and the raw bytes too
            packet = bytes((code, 1)) + struct.pack("!H", 4 + len(body)) + body
            peer.send(protocol, packet)
            peer.send(protocol, body)
            peer.advance(0.5)
        assert peer.server.phase is not None
