"""The device classifies its NAT and reports it (``daemon/nat_type.py``, report item 9).

- The RFC 5780 check: one 28-byte request tells whether the broker node has an alternate
  address (the broker's own STUN cores answer it).
- When to classify (``NatTypeSchedule``, made-up time): after the first registration, after one
  from a new public IP, at most once per ``min_interval_s``.
- What the report says for each behaviour.
- Real processes on loopback: a ``dvrlink-broker`` with ``stun_alternate_host = 127.0.0.2`` and a
  ``dvrlinkd``: the broker's copy of the report says ``no NAT``, and the run cost a few hundred
  bytes. Against a broker without an alternate address the daemon reports no type, and the
  classifier (aioice) is never loaded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.dashboard import BrowserRigDaemon, LoggedProcess
from support.waiting import wait_until

from dvrlink.broker.state import read_info
from dvrlink.broker.tls import client_context
from dvrlink.daemon.nat_type import NO_NAT, UDP_BLOCKED, NatTypeSchedule, NatTypeTiming, classify, nat_type_of
from dvrlink.daemon.status import format_status, read_status
from dvrlink.protocol.nat_classify import Filtering, Mapping, NatBehaviour
from dvrlink.protocol.stun import binding_response
from dvrlink.protocol.stun_behaviour import Origin, Rfc5780Addresses, answer_binding
from dvrlink.protocol.stun_probe import ProbeVerdict, StunProbe, binding_request, other_address

BIN = Path(sys.executable).parent
TID = bytes(range(12))
DEVICE = ("198.51.100.7", 40000)
SERVER = Rfc5780Addresses("203.0.113.10", 3478, "203.0.113.11", 3480)
WAIT_S = 30.0


# -- the check: does the broker node have an alternate address? ------------------------------------


def test_an_rfc5780_request_gets_other_address_only_from_a_server_with_an_alternate() -> None:
    request = binding_request(TID, rfc5780=True)
    assert len(request) == 28 and len(binding_request(TID)) == 20
    reply = answer_binding(request, DEVICE, Origin.PRIMARY, SERVER)
    assert reply is not None and len(reply.data) == 56
    assert other_address(reply.data, TID) == ("203.0.113.11", 3480)
    plain = binding_response(request, DEVICE)  # the broker without stun_alternate_host
    assert plain is not None and len(plain) == 32
    assert other_address(plain, TID) is None
    assert other_address(reply.data, bytes(12)) is None  # another transaction
    for cut in range(len(reply.data)):
        assert other_address(reply.data[:cut], TID) in (None, ("203.0.113.11", 3480))


def test_the_probe_records_other_address_and_counts_its_bytes() -> None:
    probe = StunProbe(TID, timeout_s=3.0, initial_rto_s=1.0, rfc5780=True)
    probe.start(0.0)
    [request] = probe.datagrams_to_send()
    probe.handle_timer(1.0)  # one retransmission
    assert probe.datagrams_to_send() == [request]
    reply = answer_binding(request, DEVICE, Origin.PRIMARY, SERVER)
    assert reply is not None
    probe.datagram_received(reply.data, 1.1)
    assert probe.verdict is ProbeVerdict.REACHED
    assert probe.other_address == ("203.0.113.11", 3480)
    assert (probe.sent_bytes, probe.received_bytes) == (56, 56)


# -- when ----------------------------------------------------------------------------------------


def test_classified_after_the_first_registration_and_again_from_a_new_public_ip_at_most_hourly() -> None:
    schedule = NatTypeSchedule(NatTypeTiming(delay_s=60.0, min_interval_s=3600.0))
    assert schedule.get_timer() is None
    schedule.registered(("198.51.100.7", 40000), 10.0)
    assert schedule.get_timer() == 70.0
    schedule.started(70.0)
    assert schedule.get_timer() is None
    schedule.finished(False, 72.0)
    assert schedule.get_timer() is None
    schedule.registered(("198.51.100.7", 40001), 500.0)  # a new port behind the same IP: same NAT
    assert schedule.get_timer() is None
    schedule.registered(("203.0.113.99", 40000), 600.0)  # another network: not before the hour
    assert schedule.get_timer() == 70.0 + 3600.0
    schedule.registered(("203.0.113.99", 40002), 700.0)
    assert schedule.get_timer() == 70.0 + 3600.0
    schedule.started(3670.0)
    schedule.finished(True, 3673.0)  # an answer was lost: tried again an hour on
    assert schedule.get_timer() == 3673.0 + 3600.0
    schedule.registered(("203.0.113.99", 40000), 4000.0)  # the same IP again: still due then
    assert schedule.get_timer() == 3673.0 + 3600.0
    schedule.put_off(7273.0)  # the data cap
    assert schedule.get_timer() == 7273.0 + 3600.0


# -- what ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "text"),
    [
        (NatBehaviour(udp=False, local=DEVICE), UDP_BLOCKED),
        (
            NatBehaviour(
                True, DEVICE, DEVICE, None, Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT
            ),
            NO_NAT,
        ),
        (
            NatBehaviour(True, DEVICE, DEVICE, None, None, Filtering.ADDRESS_AND_PORT_DEPENDENT),
            "no NAT, APDF",
        ),
        (
            NatBehaviour(
                True,
                DEVICE,
                ("203.0.113.5", 1),
                None,
                Mapping.ENDPOINT_INDEPENDENT,
                Filtering.ADDRESS_AND_PORT_DEPENDENT,
            ),
            "EIM/APDF",
        ),
        (
            NatBehaviour(
                True,
                DEVICE,
                ("203.0.113.5", 1),
                None,
                Mapping.ADDRESS_AND_PORT_DEPENDENT,
                Filtering.ADDRESS_AND_PORT_DEPENDENT,
            ),
            "APDM/APDF",
        ),
        (NatBehaviour(True, DEVICE, ("203.0.113.5", 1), None, None, Filtering.ENDPOINT_INDEPENDENT), None),
        (NatBehaviour(True, DEVICE, DEVICE), None),  # the server had no alternate address
    ],
)
def test_the_report_text_of_each_behaviour(behaviour: NatBehaviour, text: str | None) -> None:
    assert nat_type_of(behaviour) == text


# -- real processes on loopback -------------------------------------------------------------------


class Rig(BrowserRigDaemon):
    """A ``dvrlink-broker`` process and a ``dvrlinkd`` process."""

    def __init__(self, tmp: Path, serial: str, broker_settings: str) -> None:
        super().__init__(tmp, BIN, WAIT_S)
        self.state = tmp / "broker"
        config = tmp / "broker.toml"
        config.write_text(
            f'state_dir = "{self.state}"\nudp_host = "127.0.0.1"\nudp_port = 0\nhttps_host = "127.0.0.1"\n'
            f"https_port = 0\npresence_tcp_port = 0\nturn_enabled = false\n{broker_settings}"
        )
        self.broker = LoggedProcess(
            [str(BIN / "dvrlink-broker"), "--config", str(config), "serve"], tmp / "broker.log", self.env
        )
        self.broker.wait_for("dvrlink-broker ready")
        self.info = read_info(self.state)
        self.base = f"https://localhost:{self.info.https_port}"
        self.point_daemon_at(serial, self.info.udp_port, self.info.public_key, 5)
        with self.daemon_config.open("a") as config_file:
            config_file.write("learn_after_s = 0\n")

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.broker.stop()

    def report(self, serial: str) -> dict[str, Any]:
        """The broker's copy of the device's last report, through the viewer API (as
        ``dvrlink devices`` reads it)."""

        async def read() -> dict[str, Any]:
            connector = aiohttp.TCPConnector(ssl=client_context(self.info.cert))
            async with aiohttp.ClientSession(self.base, connector=connector) as http:
                login = {"username": "alice", "password": "s3cret-pass-16"}
                async with http.post("/v1/tokens", json=login) as resp:
                    assert resp.status == 200, await resp.text()
                    auth = {"Authorization": "Bearer " + (await resp.json())["token"]}
                async with http.get("/v1/devices", headers=auth) as resp:
                    body = await resp.json()
            [device] = [d for d in body["devices"] if d["serial"] == serial]
            return dict(device.get("report") or {})

        return asyncio.run(asyncio.wait_for(read(), WAIT_S))


@pytest.fixture
def scripts() -> None:
    for script in ("dvrlinkd", "dvrlink-broker"):
        if not (BIN / script).exists():
            pytest.skip(f"the {script} script is not installed (run `make venv`)")


@pytest.fixture
def rig(tmp_path: Path, scripts: None) -> Iterator[Rig]:
    serial = "DL-0016-0501"
    the_rig = Rig(tmp_path, serial, 'stun_alternate_host = "127.0.0.2"\nstun_alternate_port = 0\n')
    try:
        the_rig.pair_daemon(serial, the_rig.state, the_rig.base, the_rig.info.cert, "alice", "s3cret-pass-16")
        yield the_rig
    finally:
        the_rig.close()


@pytest.mark.integration
def test_a_real_daemon_reports_no_nat_to_a_broker_with_an_alternate_address(rig: Rig) -> None:
    assert rig.daemon is not None
    line = rig.daemon.wait_for("NAT type: ", timeout=WAIT_S)
    assert "NAT type: no NAT (public (EIM/EIF)" in line, line
    report = wait_until(
        "the broker's copy of the report to carry nat_type",
        lambda: (r := rig.report("DL-0016-0501")).get("nat_type") and r,
        timeout=WAIT_S,
    )
    assert report["nat_type"] == NO_NAT, report
    status = read_status(rig.tmp / "run")
    assert status.nat_type == NO_NAT
    # The check (1 round trip) and the classifier's tests I, the two filtering and the two
    # mapping tests, all answered at once on loopback: 6 requests, 6 answers.
    assert 0 < status.nat_type_bytes <= 6 * (28 + 36) + 6 * (28 + 64), status
    assert f"NAT type:          {NO_NAT} ({status.nat_type_bytes} bytes to find)" in format_status(
        status, status.started_at
    )
    assert "NAT type: " not in rig.daemon.text().split(line, 1)[1], "classified more than once"


@pytest.mark.integration
def test_against_a_broker_without_an_alternate_address_no_type_is_reported(
    tmp_path: Path, scripts: None
) -> None:
    serial = "DL-0016-0502"
    rig = Rig(tmp_path, serial, "")
    try:
        rig.pair_daemon(serial, rig.state, rig.base, rig.info.cert, "alice", "s3cret-pass-16")
        assert rig.daemon is not None
        line = rig.daemon.wait_for("NAT type: ", timeout=WAIT_S)
        assert "no RFC 5780 alternate address" in line, line
        assert f"2 datagrams, {28 + 28 + 28 + 32} bytes on the wire" in line, line  # one round trip
        wait_until("a report", lambda: rig.report(serial).get("presence_transport"), timeout=WAIT_S)
        assert "nat_type" not in rig.report(serial)
        assert read_status(rig.tmp / "run").nat_type is None
    finally:
        rig.close()


def test_the_check_against_a_plain_stun_server_does_not_load_the_classifier() -> None:
    """An idle daemon stays lean (tests/test_daemon_lazy_imports.py): a run against a node
    without an alternate address ends after the check, before aioice is imported."""
    program = textwrap.dedent(
        """
        import asyncio, json, socket, struct, sys
        from dvrlink.daemon.nat_type import NatTypeTiming, classify

        class Plain(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport
            def datagram_received(self, data, addr):
                # a plain Binding success: XOR-MAPPED-ADDRESS only (what a node without an
                # alternate address answers)
                port = addr[1] ^ 0x2112
                ip = bytes(a ^ b for a, b in zip(socket.inet_aton(addr[0]), data[4:8]))
                attr = struct.pack("!HHxBH", 0x0020, 8, 1, port) + ip
                self.transport.sendto(struct.pack("!HH", 0x0101, len(attr)) + data[4:20] + attr, addr)

        async def main():
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(Plain, local_addr=("127.0.0.1", 0))
            server = transport.get_extra_info("sockname")
            outcome = await classify(server, NatTypeTiming(retransmit_s=0.5, test_timeout_s=5.0),
                                     presence_over_udp=True)
            transport.close()
            print(json.dumps([outcome.nat_type, outcome.note, outcome.datagrams, outcome.bytes_on_wire,
                              sorted(m for m in sys.modules if m.startswith("aioice"))]))

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    nat_type, note, datagrams, on_wire, aioice = json.loads(done.stdout)
    assert nat_type is None and "no RFC 5780 alternate address" in note, note
    assert (datagrams, on_wire) == (2, 28 + 28 + 28 + 32), (datagrams, on_wire)
    assert aioice == [], f"the check loaded {aioice}"


def test_no_answer_over_udp_is_udp_blocked_only_while_presence_runs_over_tcp() -> None:
    """A node whose STUN port does not answer: over TCP presence that is the verdict; over UDP
    presence (which the broker answers) it is a loss, tried again later."""

    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
            silent.bind(("127.0.0.1", 0))
            server = silent.getsockname()
            timing = NatTypeTiming(retransmit_s=0.2, test_timeout_s=0.5)
            over_tcp = await classify(server, timing, presence_over_udp=False)
            over_udp = await classify(server, timing, presence_over_udp=True)
        assert (over_tcp.nat_type, over_tcp.retry) == (UDP_BLOCKED, False), over_tcp
        assert (over_udp.nat_type, over_udp.retry) == (None, True), over_udp
        assert over_tcp.datagrams == 2 and over_tcp.bytes_on_wire == 2 * (28 + 28), over_tcp

    asyncio.run(asyncio.wait_for(main(), 30))
