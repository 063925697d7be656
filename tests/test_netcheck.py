"""``dvrlink netcheck`` and ``dvrlinkd netcheck`` (issue 17, part 3).

- The path rules (``protocol/nat_behaviour.py``): the report's ``nat_type`` text round-trips, and
  the matrix's cells take their predictions from the same ``predict_path``.
- The probes' bytes: NAT-PMP and PCP answers, SSDP answers, the TURN Allocate without credentials;
  bad input gives None, never an exception.
- A NAT-PMP gateway answering on loopback is found with its external address.
- Real processes on loopback: a ``dvrlink-broker`` with ``stun_alternate_host = 127.0.0.2`` and
  its TURN relay, a ``dvrlinkd`` registered with it, ``dvrlinkd netcheck --json`` and
  ``dvrlink netcheck SERIAL --json``.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.dashboard import BrowserRigDaemon, LoggedProcess
from support.waiting import wait_until

from dvrlink.broker.state import read_info
from dvrlink.protocol.nat_behaviour import (
    Filtering,
    Mapping,
    NatBehaviour,
    NatProfile,
    Punch,
    parse_nat_type,
    predict_path,
)
from dvrlink.protocol.nat_behaviour import (
    Path as PathKind,
)
from dvrlink.protocol.netcheck import (
    FamilyReport,
    GatewayAnswer,
    Latency,
    NetcheckReport,
    PathReport,
    PortMapping,
    Presence,
    SsdpAnswer,
    is_turn_answer,
    parse_gateway_answer,
    parse_ssdp_answer,
    render_text,
    ssdp_search,
    stun_message_length,
    turn_probe,
)
from dvrlink.protocol.stun import binding_response
from dvrlink.session.netcheck import default_gateway, probe_gateway, stun_latency
from hil.matrix.cells import lan_cells
from hil.netlab import NatType

BIN = Path(sys.executable).parent
WAIT_S = 30.0
SERIAL = "DL-0017-0301"
USER, PASSWORD = "alice", "s3cret-pass-16"


# -- the rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize("nat", list(NatType))
def test_each_lab_type_round_trips_through_the_report_text(nat: NatType) -> None:
    profile = nat.profile
    text = profile.nat_type
    assert text is not None
    back = parse_nat_type(text)
    assert back is not None
    # The text does not carry sequential ports or a router's port mapping: those are what is lost.
    assert back == NatProfile(profile.udp, profile.nat, profile.mapping, profile.filtering), (nat, text)


@pytest.mark.parametrize("text", ["", "EIM", "EIM/", "/APDF", "XYZ/APDF", "no NAT, XYZ", "EIM/APDF/x", None])
def test_unknown_report_text_parses_to_none(text: str | None) -> None:
    assert parse_nat_type(text) is None


def test_the_matrix_and_netcheck_predict_with_one_classifier() -> None:
    seen: dict[str, int] = {}
    for cell in lan_cells():
        prediction = predict_path(
            cell.side_profile(cell.viewer),
            cell.side_profile(cell.device),
            same_nat=cell.device is NatType.HAIRPIN and cell.viewer is NatType.HAIRPIN,
        )
        assert cell.prediction == prediction
        assert cell.predicted_path == ("relay" if prediction.path is PathKind.RELAY else "direct")
        # What netcheck on a viewer predicts from the device's *report* (text) is the same but
        # where the text loses sequential ports (port prediction becomes a birthday search) and
        # the router's port mapping (the report names the NAT alone: symmetric_upnp × symmetric
        # is predicted as symmetric × symmetric, the relay).
        # Nor does the report say that the device has IPv6: an IPv6 cell is predicted by its IPv4 NATs.
        from_report = predict_path(
            cell.side_profile(cell.viewer),
            parse_nat_type(cell.device.profile.nat_type),
            same_nat=cell.device is NatType.HAIRPIN and cell.viewer is NatType.HAIRPIN,
        )
        if cell.device.profile.maps_ports:
            assert from_report.path is PathKind.RELAY and prediction.punch is Punch.PORT_MAPPING, cell
        elif cell.ipv6:
            assert from_report.path is PathKind.RELAY and prediction.punch is Punch.IPV6, cell
        else:
            assert from_report.path == prediction.path, cell
        seen[prediction.punch.value] = seen.get(prediction.punch.value, 0) + 1
    assert set(seen) == {p.value for p in Punch}, seen


@pytest.mark.parametrize(
    ("viewer", "device", "path", "punch"),
    [
        ("port_restricted_cone", "symmetric", PathKind.DIRECT, Punch.BIRTHDAY_SEARCH),
        ("port_restricted_cone", "sequential_symmetric", PathKind.DIRECT, Punch.PORT_PREDICTION),
        ("restricted_cone", "symmetric", PathKind.DIRECT, Punch.ICE_CHECKS),
        ("symmetric", "symmetric", PathKind.RELAY, Punch.NONE),
        ("public", "udp_blocked", PathKind.RELAY, Punch.NONE),
        ("port_restricted_cone", "cgnat", PathKind.DIRECT, Punch.ICE_CHECKS),
        ("symmetric", "symmetric_upnp", PathKind.DIRECT, Punch.PORT_MAPPING),
        ("port_restricted_cone", "symmetric_upnp", PathKind.DIRECT, Punch.PORT_MAPPING),
        ("restricted_cone", "symmetric_upnp", PathKind.DIRECT, Punch.ICE_CHECKS),
        ("symmetric_upnp", "symmetric", PathKind.RELAY, Punch.NONE),
        ("udp_blocked", "symmetric_upnp", PathKind.RELAY, Punch.NONE),
    ],
)
def test_paths_between_lab_types(viewer: str, device: str, path: PathKind, punch: Punch) -> None:
    prediction = predict_path(NatType.parse(viewer).profile, NatType.parse(device).profile)
    assert (prediction.path, prediction.punch) == (path, punch), prediction.reason
    assert prediction.reason


def test_only_the_side_that_asks_for_a_mapping_gains_from_its_router() -> None:
    mapper, symmetric = NatType.SYMMETRIC_UPNP.profile, NatType.SYMMETRIC.profile
    mapped = predict_path(symmetric, mapper)
    assert (mapped.path, mapped.punch) == (PathKind.DIRECT, Punch.PORT_MAPPING)
    assert "device's router maps ports" in mapped.reason and "without the mapping: relay" in mapped.reason
    # The names decide which side asks, not the order.
    swapped = predict_path(mapper, symmetric, here_name="device", there_name="viewer")
    assert (swapped.path, swapped.punch) == (PathKind.DIRECT, Punch.PORT_MAPPING)
    assert "device's router maps ports" in swapped.reason
    # A device whose port mapping is off ([sessions] port_mapping = []) is its NAT alone.
    off = predict_path(symmetric, mapper, asks_mapping=None)
    assert (off.path, off.punch) == (PathKind.RELAY, Punch.NONE)
    # Where the mapping would turn a birthday search into a direct path, the reason says so.
    searched = predict_path(NatType.PORT_RESTRICTED_CONE.profile, mapper)
    assert "without the mapping: direct by birthday search" in searched.reason


def test_an_unreported_device_makes_the_path_unknown_but_a_blocked_side_still_means_the_relay() -> None:
    mine = NatProfile(mapping=Mapping.ENDPOINT_INDEPENDENT, filtering=Filtering.ADDRESS_AND_PORT_DEPENDENT)
    unknown = predict_path(mine, None)
    assert unknown.path is PathKind.UNKNOWN and "device is not known" in unknown.reason
    blocked = predict_path(NatProfile(udp=False), None)
    assert blocked.path is PathKind.RELAY and blocked.relay_over_tcp
    assert "UDP is blocked at the viewer" in blocked.reason


# -- the probes' bytes ----------------------------------------------------------------------------


def test_gateway_answers_are_told_apart() -> None:
    natpmp = bytes([0, 128]) + struct.pack("!HI", 0, 77) + bytes([198, 51, 100, 9])
    answer = parse_gateway_answer(natpmp)
    assert answer is not None and (answer.protocol, answer.external_address) == ("NAT-PMP", "198.51.100.9")
    refused = parse_gateway_answer(bytes([0, 128]) + struct.pack("!HI", 3, 77) + bytes(4))
    assert refused is not None and refused.external_address is None and refused.result_code == 3
    pcp = bytes([2, 0x80, 0, 1]) + bytes(20)  # UNSUPP_VERSION
    answer = parse_gateway_answer(pcp)
    assert answer is not None and answer.protocol == "PCP" and answer.result_code == 1
    for junk in (b"", b"\x00", bytes([0, 0, 0, 0]), bytes([2, 0]) + bytes(22), b"HTTP/1.1 200 OK"):
        assert parse_gateway_answer(junk) is None


def test_random_bytes_never_make_a_parser_raise() -> None:
    rng = random.Random(17)
    tid = bytes(12)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(0, 64))
        if rng.random() < 0.3 and data:
            data = bytes([rng.choice((0, 2))]) + bytes([rng.choice((0x80, 0x81))]) + data[2:]
        parse_gateway_answer(data)
        parse_ssdp_answer(data)
        is_turn_answer(data, tid)
        assert parse_nat_type(data.decode("latin-1")) is None or data.isascii()


def test_ssdp_search_and_answers() -> None:
    search = ssdp_search(9).decode()
    assert search.startswith("M-SEARCH * HTTP/1.1\r\n") and "MX: 5\r\n" in search
    assert "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1" in search
    answer = parse_ssdp_answer(
        b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nLocation: http://192.168.1.1:5000/rootDesc.xml\r\n"
        b"SERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3\r\n"
        b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
    )
    assert answer is not None and answer.location == "http://192.168.1.1:5000/rootDesc.xml"
    assert "MiniUPnPd" in answer.server
    for junk in (b"", b"HTTP/1.1 200 OK\r\n\r\n", b"NOTIFY * HTTP/1.1\r\nLOCATION: x\r\n\r\n", b"\xff" * 40):
        assert parse_ssdp_answer(junk) is None


def test_turn_probe_is_an_allocate_without_credentials() -> None:
    tid = bytes(range(12))
    request = turn_probe(tid)
    assert len(request) == 28 and request[:2] == b"\x00\x03" and stun_message_length(request) == 28
    challenge = b"\x01\x13\x00\x00\x21\x12\xa4\x42" + tid
    assert is_turn_answer(challenge, tid)
    assert not is_turn_answer(challenge, bytes(12))
    assert not is_turn_answer(request, tid)  # the request itself is no answer
    with pytest.raises(ValueError, match="12 bytes"):
        turn_probe(b"short")


def test_default_gateway_from_a_route_table(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\n"
        "eth0\t0001A8C0\t00000000\t0001\n"
        "eth0\t00000000\t0101A8C0\t0003\n"
    )
    assert default_gateway(table) == "192.168.1.1"
    table.write_text("Iface\tDestination\tGateway\neth0\t0001A8C0\t00000000\n")
    assert default_gateway(table) is None
    assert default_gateway(tmp_path / "missing") is None


def test_a_natpmp_gateway_on_loopback_is_found_with_its_external_address() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        gateway = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        gateway.bind(("127.0.0.3", 0))
        gateway.setblocking(False)
        port = gateway.getsockname()[1]
        received: list[bytes] = []

        async def serve() -> None:
            data, source = await loop.sock_recvfrom(gateway, 64)
            received.append(data)
            answer = bytes([0, 128]) + struct.pack("!HI", 0, 5) + bytes([203, 0, 113, 77])
            await loop.sock_sendto(gateway, answer, source)

        server = asyncio.create_task(serve())
        try:
            found = await probe_gateway("127.0.0.3", port=port, timeout_s=5.0)
            assert found is not None and found.external_address == "203.0.113.77", found
            assert received == [b"\x00\x00"]  # one NAT-PMP external address request
            # Nothing answers at another port: not found, within the bound.
            assert (
                await probe_gateway("127.0.0.3", port=port + 1 if port < 65535 else 1, timeout_s=0.3) is None
            )
        finally:
            await server
            gateway.close()

    asyncio.run(asyncio.wait_for(run(), WAIT_S))


# -- real processes on loopback ---------------------------------------------------------------------


class Rig(BrowserRigDaemon):
    """A ``dvrlink-broker`` (RFC 5780 with 127.0.0.2, the built-in TURN relay) and a ``dvrlinkd``
    paired to ``alice``; a viewer home logged in as her."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, BIN, WAIT_S)
        self.state = tmp / "broker"
        config = tmp / "broker.toml"
        config.write_text(
            f'state_dir = "{self.state}"\nudp_host = "127.0.0.1"\nudp_port = 0\nhttps_host = "127.0.0.1"\n'
            "https_port = 0\npresence_tcp_port = 0\nturn_udp_port = 0\nturn_tcp_port = 0\n"
            'stun_alternate_host = "127.0.0.2"\nstun_alternate_port = 0\n'
        )
        self.broker = LoggedProcess(
            [str(BIN / "dvrlink-broker"), "--config", str(config), "serve"], tmp / "broker.log", self.env
        )
        self.broker.wait_for("dvrlink-broker ready")
        self.info = read_info(self.state)
        self.base = f"https://localhost:{self.info.https_port}"
        self.point_daemon_at(SERIAL, self.info.udp_port, self.info.public_key, 5)
        with self.daemon_config.open("a") as config_file:
            config_file.write("learn_after_s = 0\n")  # [presence]: classify at once
        self.pair_daemon(SERIAL, self.state, self.base, self.info.cert, USER, PASSWORD)
        self.home = tmp / "viewer"
        self.viewer("login", "--broker", self.base, "--user", USER, "--password-stdin",
                    "--cacert", str(self.info.cert), stdin=PASSWORD)  # fmt: skip

    def viewer(self, *args: str, stdin: str = "") -> str:
        """``dvrlink --home HOME args``; its stdout (fails the test if it fails)."""
        return self.run(str(BIN / "dvrlink"), "--home", str(self.home), *args, stdin=f"{stdin}\n".encode())

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.broker.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    for script in ("dvrlinkd", "dvrlink-broker", "dvrlink"):
        if not (BIN / script).exists():
            pytest.skip(f"the {script} script is not installed (run `make venv`)")
    the_rig = Rig(tmp_path)
    try:
        yield the_rig
    finally:
        the_rig.close()


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.integration
def test_real_netcheck_on_loopback_from_both_ends(rig: Rig) -> None:
    assert rig.daemon is not None
    # The daemon's own NAT type run, so that the broker has the device's report with it.
    rig.daemon.wait_for("NAT type: ", timeout=WAIT_S)
    device_files = _files(rig.tmp / "device") | _files(rig.tmp / "run")
    out = rig.run(str(BIN / "dvrlinkd"), "netcheck", "--json", "--config", str(rig.daemon_config))
    device: dict[str, Any] = json.loads(out)
    assert device["schema"] == 1 and device["program"] == "dvrlinkd"
    assert device["udp"] is True and device["udp_blocked"] is False
    ipv4 = device["ipv4"]
    assert (ipv4["nat"], ipv4["nat_type"], ipv4["name"]) == (False, "no NAT", "public"), ipv4
    assert (ipv4["mapping"], ipv4["filtering"]) == ("EIM", "EIF")
    assert ipv4["hairpin"] is None  # no NAT: nothing to hairpin
    assert device["presence"]["transport"] == "udp"
    assert device["keepalive_s"] == 5
    [node] = device["broker_nodes"]
    assert node["kind"] == "stun" and node["rtt_ms"] is not None and 0 < node["rtt_ms"] < 1000, node
    assert device["port_mapping"]["nat_pmp"] is False and device["port_mapping"]["upnp"] is False
    assert device["relays"] == [] and "dvrlink netcheck" in device["relays_note"]
    assert _files(rig.tmp / "device") | _files(rig.tmp / "run") == device_files, "netcheck wrote a file"

    # The broker must have the device's report with its NAT type before the viewer asks.
    def reported() -> bool:
        out = rig.viewer("status", SERIAL, "--json")
        return "no NAT" in out

    wait_until("the device's report to carry its NAT type", reported, timeout=WAIT_S)
    viewer_files = _files(rig.home)
    sessions_before = rig.viewer("sessions")
    out = rig.viewer("netcheck", SERIAL, "--json")
    viewer: dict[str, Any] = json.loads(out)
    assert viewer["program"] == "dvrlink" and viewer["udp"] is True
    assert viewer["stun_server"] == f"127.0.0.1:{rig.info.udp_port}"
    assert viewer["ipv4"]["nat_type"] == "no NAT"
    relays = {r["kind"]: r for r in viewer["relays"]}
    assert set(relays) == {"turn-udp", "turn-tcp"}, viewer["relays"]
    for relay in relays.values():
        assert relay["rtt_ms"] is not None and relay["rtt_ms"] < 1000, relay
    [https] = viewer["broker_nodes"]
    assert https["kind"] == "https" and https["rtt_ms"] is not None, https
    path = viewer["path"]
    assert path["serial"] == SERIAL and path["device_nat_type"] == "no NAT"
    # Both on one host: the broker sees them at the same address, so the host candidates meet.
    assert (path["path"], path["punch"]) == ("lan", "host candidates"), path
    assert _files(rig.home) == viewer_files, "netcheck wrote a file"
    assert rig.viewer("sessions") == sessions_before, "netcheck made a session"

    text = rig.viewer("netcheck", SERIAL)
    assert "  * IPv4 NAT: public (mapping EIM, filtering EIF)" in text, text
    assert f"  * path to {SERIAL}: lan (host candidates)" in text, text


def test_the_commands_refuse_a_bad_timeout_and_the_viewer_wants_a_login(tmp_path: Path) -> None:
    config = tmp_path / "dvrlinkd.toml"
    config.write_text(
        f'[device]\nserial = "{SERIAL}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'runtime_dir = "{tmp_path / "run"}"\n'
        f'[broker]\nhost = "127.0.0.1"\npublic_key = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="\n'
    )
    daemon = subprocess.run(
        [str(BIN / "dvrlinkd"), "netcheck", "--timeout", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert daemon.returncode == 2 and "--timeout 0 is out of range" in daemon.stderr, daemon.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "run").exists()
    viewer = subprocess.run(
        [str(BIN / "dvrlink"), "--home", str(tmp_path / "home"), "netcheck"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert viewer.returncode == 1 and "login" in viewer.stderr, viewer.stderr


def test_the_text_names_what_was_found_and_what_was_not() -> None:
    blocked = NatBehaviour(udp=False, local=("192.168.1.2", 40000))
    report = NetcheckReport(
        program="dvrlinkd",
        stun_server="203.0.113.10:3478",
        families=(FamilyReport("ipv4", True, blocked), FamilyReport("ipv6", False, note="no ipv6 route")),
        port_mapping=PortMapping(
            "192.168.1.1",
            GatewayAnswer("NAT-PMP", 0, "198.51.100.2"),
            SsdpAnswer("http://192.168.1.1:5000/rootDesc.xml", "MiniUPnPd/2.3"),
        ),
        presence=Presence("tcp", "UDP got no answer", Latency("203.0.113.11:443", "tcp", 12.5)),
        broker_nodes=(Latency("203.0.113.10:3478", "stun", None, "no answer within 2 s"),),
        nat_lifetime_s=None,
        path=PathReport("DL-1", "UDP blocked", predict_path(None, NatProfile(udp=False))),
    )
    text = render_text(report)
    assert "  * UDP: no (blocked)" in text
    assert "  * IPv4: no UDP answer from 203.0.113.10:3478" in text
    assert "  * IPv6: no (no ipv6 route)" in text
    assert "PCP no, NAT-PMP yes, UPnP yes (gateway 192.168.1.1)" in text
    assert "gateway's external address: 198.51.100.2" in text
    assert "  * presence: tcp (UDP got no answer)" in text
    assert "  * TCP 203.0.113.11:443 (tcp): 12.5 ms" in text
    assert "  * NAT lifetime: not learned (yet)" in text
    assert "203.0.113.10:3478 (stun): no answer (no answer within 2 s)" in text
    assert "  * path to DL-1: relay" in text
    document = report.as_json()
    assert document["udp_blocked"] is True and document["ipv4"]["name"] == "udp_blocked"
    assert document["port_mapping"]["external_address"] == "198.51.100.2"
    assert document["path"]["relay_over_tcp"] is True
    json.dumps(document)  # plain JSON values only


def test_a_round_trip_to_a_node_given_by_name_is_timed_and_an_unknown_name_says_so() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        port = server.getsockname()[1]

        async def answer() -> None:
            data, source = await loop.sock_recvfrom(server, 2048)
            reply = binding_response(data, source)
            assert reply is not None
            await loop.sock_sendto(server, reply, source)

        responder = asyncio.create_task(answer())
        try:
            timed = await stun_latency(("localhost", port), timeout_s=5.0)
            assert timed.rtt_ms is not None and timed.name == f"localhost:{port}", timed
        finally:
            await responder
            server.close()
        unknown = await stun_latency(("no-such-host.invalid", port), timeout_s=0.5)
        assert unknown.rtt_ms is None and unknown.error == "cannot resolve no-such-host.invalid", unknown

    asyncio.run(asyncio.wait_for(run(), WAIT_S))


def test_global_ipv6_on_both_sides_is_direct_whatever_the_ipv4_nats_do() -> None:
    symmetric = NatType.SYMMETRIC.profile
    v6 = replace(symmetric, ipv6=True)
    both = predict_path(v6, v6)
    assert (both.path, both.punch) == (PathKind.DIRECT, Punch.IPV6)
    assert "IPv6" in both.reason
    # One side without IPv6: the IPv4 rules decide (symmetric × symmetric: the relay).
    assert predict_path(v6, symmetric).path is PathKind.RELAY
    assert predict_path(symmetric, v6).path is PathKind.RELAY
    # Blocked UDP and one NAT still come first.
    blocked = replace(NatType.UDP_BLOCKED.profile, ipv6=True)
    assert predict_path(v6, blocked).path is PathKind.RELAY
    assert predict_path(v6, v6, same_nat=True).path is PathKind.LAN
    # IPv6 does not change the IPv4 names the report and the lab use.
    assert (v6.name, v6.nat_type) == (symmetric.name, symmetric.nat_type)
