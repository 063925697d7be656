"""Port mapping cores (sans-I/O): PCP and NAT-PMP wire formats and schedules, one mapping's lifecycle
with made-up time against small fake routers, and the UPnP-IGD message parsers."""

from __future__ import annotations

import contextlib
import itertools
import random
import struct
from pathlib import Path

import pytest

from dvrlink.protocol import natpmp, pcp, upnp_igd
from dvrlink.protocol.port_mapping import (
    TRANSITIONS,
    MappingConfig,
    MappingCore,
    MappingCreated,
    MappingDeleted,
    MappingEvent,
    MappingFailed,
    MappingLost,
    MappingRenewed,
    MappingState,
    state_diagram,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "connectivity.md"
NONCE = bytes(range(12))
CLIENT = "192.168.1.2"
EXTERNAL = "100.63.0.2"


def events(core: MappingCore) -> list[MappingEvent]:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def pcp_answer(request: bytes, *, result: int = 0, lifetime: int | None = None, epoch: int = 100,
               external_port: int | None = None, nonce: bytes | None = None) -> bytes:  # fmt: skip
    """What a PCP server answers to ``request`` (RFC 6887 7.2, 11.1)."""
    _, _, _, asked, _ = struct.unpack_from("!BBHI16s", request)
    req_nonce, proto, internal, suggested, _ = struct.unpack_from("!12sB3xHH16s", request, 24)
    granted = asked if lifetime is None else lifetime
    port = (suggested or internal) if external_port is None else external_port
    head = struct.pack("!BBBBII12s", 2, 0x81, 0, result, granted, epoch, bytes(12))
    body = struct.pack("!12sB3xHH16s", nonce or req_nonce, proto, internal, port, pcp.mapped_ipv6(EXTERNAL))
    return head + body


def pcp_core(lifetime: int = 120, attempts: int = 4) -> MappingCore:
    wire = pcp.PcpWire(CLIENT, 40001, NONCE, lambda: 0.0, max_attempts=attempts)
    return MappingCore(wire, MappingConfig(lifetime_s=lifetime))


# -- PCP wire -------------------------------------------------------------------------------------------


def test_pcp_map_request_has_rfc_6887_layout() -> None:
    data = pcp.MapRequest(CLIENT, NONCE, 40001, 7200, suggested_port=40001).encode()
    assert len(data) == 60
    assert data[:4] == bytes([2, 1, 0, 0])
    assert struct.unpack_from("!I", data, 4)[0] == 7200
    assert data[8:24] == bytes(10) + b"\xff\xff" + bytes([192, 168, 1, 2])
    assert data[24:36] == NONCE
    assert data[36] == 17 and data[37:40] == bytes(3)
    assert struct.unpack_from("!HH", data, 40) == (40001, 40001)
    assert data[44:60] == bytes(10) + b"\xff\xff" + bytes(4)


def test_pcp_response_is_parsed_and_checked() -> None:
    request = pcp.MapRequest(CLIENT, NONCE, 40001, 7200).encode()
    response = pcp.parse_response(pcp_answer(request, external_port=50000, lifetime=3600))
    assert response is not None
    assert (response.result, response.lifetime_s, response.epoch_s) == (0, 3600, 100)
    assert (response.external_ip, response.external_port, response.internal_port) == (EXTERNAL, 50000, 40001)
    with pytest.raises(ValueError, match="version"):
        pcp.parse_response(b"\x01" + pcp_answer(request)[1:])
    with pytest.raises(ValueError, match="a PCP request"):
        pcp.parse_response(request)
    with pytest.raises(ValueError, match="multiple of 4"):
        pcp.parse_response(pcp_answer(request)[:-1])


def test_pcp_retransmission_follows_rfc_6887_schedule() -> None:
    rng = random.Random(7)
    wire = pcp.PcpWire(CLIENT, 40001, NONCE, lambda: rng.uniform(-0.1, 0.1))
    delays: list[float] = []
    previous = None
    for _ in range(14):
        previous = wire.next_delay(previous)
        delays.append(previous)
    assert 2.7 <= delays[0] <= 3.3
    for before, after in itertools.pairwise(delays):
        assert after <= 1.1 * min(2 * before, pcp.MRT_S) + 1e-9
        assert after >= 0.9 * min(2 * before, pcp.MRT_S) - 1e-9
    assert max(delays) <= 1.1 * pcp.MRT_S


def test_pcp_ignores_other_nonces_and_garbage_without_raising() -> None:
    core = pcp_core()
    core.start(0.0)
    (request,) = core.datagrams_to_send()
    rng = random.Random(1)
    for size in (0, 1, 3, 24, 59, 60, 61, 64, 1200):
        core.receive_datagram(bytes(rng.randrange(256) for _ in range(size)), 0.1)
    core.receive_datagram(pcp_answer(request, nonce=b"x" * 12), 0.1)
    assert core.state is MappingState.REQUESTING
    assert core.ignored == 10
    assert events(core) == []


# -- the lifecycle, PCP ----------------------------------------------------------------------------------


def test_pcp_mapping_is_created_renewed_at_half_lifetime_and_deleted() -> None:
    core = pcp_core(lifetime=120)
    core.start(0.0)
    (request,) = core.datagrams_to_send()
    core.receive_datagram(pcp_answer(request, lifetime=100), 0.05)
    assert events(core) == [MappingCreated(pcp.PcpWire.protocol, (EXTERNAL, 40001), 100)]
    assert core.get_timer() == pytest.approx(50.05)
    core.handle_timer(50.05)
    (renewal,) = core.datagrams_to_send()
    assert core.state is MappingState.RENEWING
    assert renewal[24:36] == NONCE  # same nonce: the same mapping (RFC 6887 11.2.1)
    assert struct.unpack_from("!H", renewal, 42)[0] == 40001  # suggests the port it holds
    core.receive_datagram(pcp_answer(renewal, lifetime=100), 50.1)
    assert events(core) == [MappingRenewed((EXTERNAL, 40001), 100, moved=False)]
    core.delete(60.0)
    (deletion,) = core.datagrams_to_send()
    assert struct.unpack_from("!I", deletion, 4)[0] == 0
    core.receive_datagram(pcp_answer(deletion, lifetime=0), 60.01)
    assert events(core) == [MappingDeleted(confirmed=True)]
    assert core.state is MappingState.DELETED and core.get_timer() is None


def test_pcp_unanswered_request_fails_after_its_attempts() -> None:
    core = pcp_core(attempts=3)
    core.start(0.0)
    sent = len(core.datagrams_to_send())
    while (deadline := core.get_timer()) is not None:
        core.handle_timer(deadline)
        sent += len(core.datagrams_to_send())
    assert sent == 3
    (failed,) = events(core)
    assert isinstance(failed, MappingFailed) and "after 3 requests" in failed.reason
    assert core.state is MappingState.FAILED


def test_pcp_renewal_unanswered_until_expiry_loses_the_mapping() -> None:
    core = pcp_core(lifetime=120)
    core.start(0.0)
    core.receive_datagram(pcp_answer(core.datagrams_to_send()[0]), 0.0)
    events(core)
    now = 0.0
    renewals = 0
    while (deadline := core.get_timer()) is not None:
        now = deadline
        core.handle_timer(now)
        renewals += len(core.datagrams_to_send())
    assert now == pytest.approx(120.0)
    assert renewals >= 3  # retransmitted (3 s, 6 s, 12 s, ...) until the lifetime ran out
    (lost,) = events(core)
    assert isinstance(lost, MappingLost)


def test_pcp_refusal_and_a_natpmp_router_are_told_apart() -> None:
    core = pcp_core()
    core.start(0.0)
    core.receive_datagram(pcp_answer(core.datagrams_to_send()[0], result=2, lifetime=30), 0.0)
    (failed,) = events(core)
    assert isinstance(failed, MappingFailed)
    assert "NOT_AUTHORIZED (2)" in failed.reason and not failed.other_version
    core = pcp_core()
    core.start(0.0)
    core.datagrams_to_send()
    core.receive_datagram(bytes([0, 0x81, 0, 1]) + bytes(12), 0.0)  # NAT-PMP: unsupported version
    (failed,) = events(core)
    assert isinstance(failed, MappingFailed) and failed.other_version


def test_transient_error_during_renewal_is_retried_after_its_lifetime() -> None:
    core = pcp_core(lifetime=120)
    core.start(0.0)
    core.receive_datagram(pcp_answer(core.datagrams_to_send()[0]), 0.0)
    events(core)
    core.handle_timer(60.0)
    renewal = core.datagrams_to_send()[0]
    core.receive_datagram(pcp_answer(renewal, result=8, lifetime=10), 60.1)  # NO_RESOURCES for 10 s
    assert events(core) == [] and core.state is MappingState.RENEWING
    assert core.get_timer() == pytest.approx(70.1)
    core.handle_timer(70.1)
    core.receive_datagram(pcp_answer(core.datagrams_to_send()[0]), 70.2)
    assert [type(e) for e in events(core)] == [MappingRenewed]


def test_unanswered_deletion_gives_up_quietly() -> None:
    core = pcp_core()
    core.start(0.0)
    core.receive_datagram(pcp_answer(core.datagrams_to_send()[0]), 0.0)
    events(core)
    core.delete(1.0)
    while (deadline := core.get_timer()) is not None:
        core.handle_timer(deadline)
    assert len(core.datagrams_to_send()) == MappingConfig().delete_attempts
    assert events(core) == [MappingDeleted(confirmed=False)]


def test_every_transition_is_in_the_table_and_the_docs_diagram() -> None:
    diagram = state_diagram()
    for src, dst in TRANSITIONS:
        assert f"{src.value} --> {dst.value}" in diagram
    assert diagram in DOC.read_text(), (
        "docs/connectivity.md does not hold the diagram of protocol.port_mapping.TRANSITIONS: render it "
        "again with python -m hil.matrix --render docs"
    )
    with pytest.raises(RuntimeError, match="make a new MappingCore"):
        core = pcp_core()
        core.start(0.0)
        core.start(1.0)


# -- NAT-PMP ---------------------------------------------------------------------------------------------


def natpmp_router(request: bytes, *, epoch: int = 5, external_port: int = 50001, result: int = 0) -> bytes:
    """What a NAT-PMP router answers to ``request`` (RFC 6886 3.2, 3.3)."""
    if request == natpmp.address_request():
        return struct.pack("!BBHI4s", 0, 128, result, epoch, bytes([100, 63, 0, 2]))
    _, op, _, internal, _suggested, lifetime = struct.unpack("!BBHHHI", request)
    return struct.pack(
        "!BBHIHHI", 0, 128 + op, result, epoch, internal, external_port if lifetime else 0, lifetime
    )


def test_natpmp_requests_have_rfc_6886_layout_and_schedule() -> None:
    assert natpmp.address_request() == b"\x00\x00"
    assert natpmp.map_request(40001, 40001, 7200) == bytes([0, 1, 0, 0]) + struct.pack(
        "!HHI", 40001, 40001, 7200
    )
    wire = natpmp.NatPmpWire(40001)
    delays, previous = [], None
    for _ in range(natpmp.MAX_ATTEMPTS):
        previous = wire.next_delay(previous)
        delays.append(previous)
    assert delays == [0.25 * 2**n for n in range(9)]  # 250 ms doubling, the last wait 64 s


def test_natpmp_mapping_needs_both_answers_and_renews_and_deletes() -> None:
    core = MappingCore(natpmp.NatPmpWire(40001), MappingConfig(lifetime_s=7200))
    core.start(0.0)
    address, mapping = core.datagrams_to_send()
    core.receive_datagram(natpmp_router(mapping), 0.01)  # the map answer first: no address yet
    assert events(core) == []
    core.receive_datagram(natpmp_router(address), 0.02)
    assert events(core) == [MappingCreated(natpmp.NatPmpWire.protocol, (EXTERNAL, 50001), 7200)]
    core.handle_timer(3600.02)
    address, mapping = core.datagrams_to_send()
    assert struct.unpack("!BBHHHI", mapping)[4] == 50001  # asks for the port it holds
    core.receive_datagram(natpmp_router(address), 3600.1)
    core.receive_datagram(natpmp_router(mapping), 3600.1)
    assert events(core) == [MappingRenewed((EXTERNAL, 50001), 7200, moved=False)]
    core.delete(3700.0)
    (deletion,) = core.datagrams_to_send()
    assert struct.unpack("!BBHHHI", deletion)[4:] == (0, 0)  # external port 0, lifetime 0
    core.receive_datagram(natpmp_router(deletion), 3700.1)
    assert events(core) == [MappingDeleted(confirmed=True)]


def test_natpmp_refusal_and_garbage() -> None:
    core = MappingCore(natpmp.NatPmpWire(40001))
    core.start(0.0)
    address, _ = core.datagrams_to_send()
    for junk in (b"", b"\x00", b"\x02\x81\x00\x00", b"\x00\x01\x00\x00" + bytes(8), b"\x00\x81\x00\x00"):
        core.receive_datagram(junk, 0.0)
    assert core.ignored == 5 and events(core) == []
    core.receive_datagram(natpmp_router(address, result=2), 0.1)
    (failed,) = events(core)
    assert isinstance(failed, MappingFailed) and "NOT_AUTHORIZED (2)" in failed.reason


# -- UPnP-IGD messages ---------------------------------------------------------------------------------------

DESCRIPTION = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><controlURL>/ctl/IPConn</controlURL>
</service></serviceList></device></deviceList></device></deviceList></device></root>"""

FAULT = b"""<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>
<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>
<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718</errorCode>
<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"""


def test_upnp_discovery_description_and_soap_round_trip() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
        b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
        b"LOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n"
    )
    location = upnp_igd.parse_search_response(answer)
    assert location == "http://192.168.1.1:5000/rootDesc.xml"
    assert upnp_igd.parse_search_response(answer.replace(b"InternetGatewayDevice", b"MediaServer")) is None
    assert upnp_igd.parse_search_response(b"NOTIFY * HTTP/1.1\r\n\r\n") is None
    for bad in (b"http://[::1/x", b"http://192.168.1.1:99999/", b"ftp://192.168.1.1/", b"/rootDesc.xml"):
        assert (
            upnp_igd.parse_search_response(answer.replace(b"http://192.168.1.1:5000/rootDesc.xml", bad))
            is None
        )
    service = upnp_igd.parse_description(DESCRIPTION, location)
    assert service.control_url == "http://192.168.1.1:5000/ctl/IPConn"
    request = upnp_igd.soap_request(
        service, "AddPortMapping", upnp_igd.add_port_mapping_arguments(1, 2, CLIENT, 60)
    )
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /ctl/IPConn HTTP/1.1\r\nHost: 192.168.1.1:5000\r\n")
    assert b'SOAPAction: "urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"' in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"<NewInternalClient>192.168.1.2</NewInternalClient><NewEnabled>1</NewEnabled>" in body
    ok = b'<s:Envelope xmlns:s="x"><s:Body><u:GetExternalIPAddressResponse xmlns:u="y">'
    ok += b"<NewExternalIPAddress>100.63.0.2</NewExternalIPAddress>"
    ok += b"</u:GetExternalIPAddressResponse></s:Body></s:Envelope>"
    status, body = upnp_igd.parse_http_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(ok) + ok
    )
    answer_fields = upnp_igd.parse_soap_response(status, body, "GetExternalIPAddress")
    assert answer_fields == {"NewExternalIPAddress": EXTERNAL}
    with pytest.raises(upnp_igd.UpnpError, match="718 ConflictInMappingEntry") as refused:
        upnp_igd.parse_soap_response(500, FAULT, "AddPortMapping")
    assert refused.value.code == 718


def test_upnp_parsers_refuse_hostile_input_with_upnp_errors() -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><root>&a;</root>'
    with pytest.raises(upnp_igd.UpnpError, match="DTD"):
        upnp_igd.parse_description(bomb, "http://192.168.1.1/")
    with pytest.raises(upnp_igd.UpnpError, match="more than"):
        upnp_igd.parse_description(b"<a>" + b" " * upnp_igd.MAX_DOCUMENT + b"</a>", "http://192.168.1.1/")
    with pytest.raises(upnp_igd.UpnpError, match="not well-formed"):
        upnp_igd.parse_description(b"<root><device>", "http://192.168.1.1/")
    with pytest.raises(upnp_igd.UpnpError, match="not an IGD"):
        upnp_igd.parse_description(b"<root/>", "http://192.168.1.1/")
    with pytest.raises(upnp_igd.UpnpError, match="not an HTTP response"):
        upnp_igd.parse_http_response(b"SSH-2.0-OpenSSH\r\n")
    status, body = upnp_igd.parse_http_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert (status, body) == (200, b"abc")


def test_upnp_parsers_raise_nothing_but_upnp_errors_on_random_bytes() -> None:
    rng = random.Random(5)
    pieces = [
        *(b"HTTP/1.1 200 OK\r\n", b"\r\n\r\n", b"<", b">", b"</", b"UPnPError", b"errorCode", b"&"),
        *(b"Transfer-Encoding: chunked", b"Content-Length: 9", b"zz\r\n", b"<service>", b"\x00\xff"),
    ]
    for _ in range(2000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        with contextlib.suppress(upnp_igd.UpnpError):
            upnp_igd.parse_http_response(data)
        with contextlib.suppress(upnp_igd.UpnpError):
            upnp_igd.parse_soap_response(200, data, "AddPortMapping")
        with contextlib.suppress(upnp_igd.UpnpError):
            upnp_igd.parse_description(data, "http://192.168.1.1/")
        assert upnp_igd.parse_search_response(data) is None or data.startswith(b"HTTP/1.1 200")
