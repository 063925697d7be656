"""NAT lab (needs root): ``dvrlinkd netcheck`` behind the device NAT and ``dvrlink netcheck SERIAL``
behind the viewer NAT, real processes on the connectivity matrix's rig (``hil/netcheck_lab.py``,
which also writes the outputs in ``docs/netcheck.md``).

- Device behind a symmetric NAT, viewer behind a port-restricted cone: the device finds APDM/APDF
  and no hairpinning, reports it, and the viewer predicts a direct path by a birthday search.
- Device behind a port-restricted cone that runs Debian's ``miniupnpd`` (NAT-PMP, PCP and
  UPnP-IGD): netcheck finds NAT-PMP and the UPnP gateway, and maps nothing.
- Device behind a NAT that lets only TCP to port 443 out: the device's netcheck says UDP is
  blocked and presence runs over TCP, with the round trip of a TCP connect to 443; the viewer
  predicts the relay over TCP.
- Both behind symmetric NATs, each with a global IPv6 address behind the lab carrier's stateful
  firewall: both netchecks classify IPv6 against the broker's IPv6 STUN (no NAT, APDF filtering)
  besides IPv4 (APDM), the device reports its IPv6 (item 11) and the viewer predicts a direct
  path over IPv6, as the matrix's IPv6 cell does. In the IPv4-only cells the line says no IPv6.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import netlab
from hil.matrix.cells import Cell
from hil.matrix.rig import SERIAL, MatrixRig, matrix_rig
from hil.netcheck_lab import run_cell, start_miniupnpd
from hil.netlab import NatType

REASON = netlab.unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.integration]
WAIT_S = 30.0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixRig]:
    with matrix_rig(Path(tmp_path_factory.mktemp("netcheck-lab"))) as built:
        yield built


def test_behind_a_symmetric_nat_the_device_finds_apdm_and_the_viewer_predicts_a_birthday_search(
    rig: MatrixRig,
) -> None:
    result = run_cell(rig, Cell(NatType.SYMMETRIC, NatType.PORT_RESTRICTED_CONE), timeout_s=1.0)
    device, viewer = result.device_json, result.viewer_json
    ipv4 = device["ipv4"]
    assert (ipv4["name"], ipv4["mapping"], ipv4["filtering"]) == ("symmetric", "APDM", "APDF"), ipv4
    assert ipv4["hairpin"] is False and ipv4["local"].startswith("192.168.1."), ipv4
    # A new outer port for each of the broker's three addresses.
    assert len(set(ipv4["mapped_ports"])) == 3, ipv4
    assert device["presence"]["transport"] == "udp" and device["udp_blocked"] is False
    assert device["port_mapping"] == {
        "gateway": "192.168.1.1",
        "pcp": False,
        "nat_pmp": False,
        "external_address": None,
        "gateway_result_code": None,
        "upnp": False,
        "upnp_location": None,
        "upnp_server": None,
    }
    [node] = device["broker_nodes"]
    assert node["rtt_ms"] is not None, node

    assert viewer["ipv4"]["nat_type"] == "EIM/APDF", viewer["ipv4"]
    assert {r["kind"] for r in viewer["relays"] if r["rtt_ms"] is not None} == {"turn-udp", "turn-tcp"}
    path = viewer["path"]
    assert (path["serial"], path["device_nat_type"]) == (SERIAL, "APDM/APDF"), path
    assert (path["path"], path["punch"]) == ("direct", "birthday search"), path
    # The matrix predicts the same for this cell: one classifier.
    assert path["reason"] == Cell(NatType.SYMMETRIC, NatType.PORT_RESTRICTED_CONE).prediction.reason
    # Neither side has a global IPv6 address in this cell: netcheck says so, and the device
    # reports no direct path of its own (no IPv6, no port-mapping router).
    for side in (device, viewer):
        ipv6 = side["ipv6"]
        assert (ipv6["available"], ipv6["udp"]) == (False, None), ipv6
        assert ipv6["note"].startswith("no IPv6"), ipv6
    assert path["device_direct_paths"] == "", path


def test_where_udp_is_blocked_netcheck_says_so_and_presence_runs_over_tcp_443(rig: MatrixRig) -> None:
    result = run_cell(rig, Cell(NatType.UDP_BLOCKED, NatType.PORT_RESTRICTED_CONE), timeout_s=1.0)
    device, viewer = result.device_json, result.viewer_json
    assert (device["udp"], device["udp_blocked"]) == (False, True), device
    assert device["ipv4"]["udp"] is False and device["ipv4"]["name"] == "udp_blocked"
    presence = device["presence"]
    assert presence["transport"] == "tcp", presence
    tcp = presence["tcp"]
    assert tcp["name"].endswith(":443") and tcp["rtt_ms"] is not None, tcp
    [node] = device["broker_nodes"]
    assert node["rtt_ms"] is None and "no answer" in node["error"], node

    path = viewer["path"]
    assert (path["device_nat_type"], path["path"], path["relay_over_tcp"]) == ("UDP blocked", "relay", True)
    assert "UDP is blocked at the device" in path["reason"], path


@pytest.mark.skipif(
    shutil.which("miniupnpd") is None, reason="needs miniupnpd (Debian package; make system-packages)"
)
def test_a_gateway_running_miniupnpd_is_found_and_nothing_is_mapped(rig: MatrixRig, tmp_path: Path) -> None:
    cell = Cell(NatType.PORT_RESTRICTED_CONE, NatType.PORT_RESTRICTED_CONE)
    rig.prepare(cell)
    gateway = start_miniupnpd(rig, tmp_path)
    log = tmp_path / "miniupnpd.log"
    try:
        result = run_cell(rig, cell, timeout_s=1.0, prepared=True)
    finally:
        gateway.terminate()
        gateway.wait(WAIT_S)
    mapping = result.device_json["port_mapping"]
    assert (mapping["gateway"], mapping["nat_pmp"], mapping["upnp"]) == ("192.168.1.1", True, True), mapping
    assert mapping["upnp_location"].startswith("http://192.168.1.1:"), mapping
    assert "MiniUPnPd" in mapping["upnp_server"], mapping
    # The lab's WAN addresses are documentation ranges, which miniupnpd will not map to: it
    # answers the NAT-PMP request with a failure result and no external address.
    assert mapping["external_address"] is None and mapping["gateway_result_code"] != 0, mapping
    text = log.read_text(errors="replace")
    assert "NAT-PMP public address request" in text and "SSDP M-SEARCH" in text, text[-3000:]
    # Probe only: no mapping was asked for.
    for asked in ("AddPortMapping", "map request", "PCP MAP"):
        assert asked not in text, text[-3000:]
    # The viewer's side has no gateway daemon.
    assert result.viewer_json["port_mapping"]["nat_pmp"] is False


def test_with_ipv6_on_both_sides_netcheck_classifies_it_and_predicts_direct_over_ipv6(rig: MatrixRig) -> None:
    cell = Cell(NatType.SYMMETRIC, NatType.SYMMETRIC, ipv6=True)
    result = run_cell(rig, cell, timeout_s=1.0)
    device, viewer = result.device_json, result.viewer_json
    for side, host6 in ((device, rig.lab.host_addr6("device")), (viewer, rig.lab.host_addr6("viewer"))):
        ipv6 = side["ipv6"]
        assert ipv6["available"] and ipv6["udp"] and ipv6["nat"] is False, ipv6
        # The carrier's stateful firewall: no NAT, replies only (the IPv6 form of APDF).
        assert (ipv6["mapping"], ipv6["filtering"], ipv6["name"]) == ("EIM", "APDF", "firewalled"), ipv6
        assert ipv6["local"].startswith(f"[{host6}]:") and ipv6["mapped"] == ipv6["local"], ipv6
        assert side["ipv4"]["mapping"] == "APDM", side["ipv4"]
    path = viewer["path"]
    assert (path["device_nat_type"], path["device_direct_paths"]) == ("APDM/APDF", "ipv6"), path
    assert (path["path"], path["punch"]) == ("direct", "ice checks over IPv6"), path
    # The matrix predicts the same for this cell: one classifier.
    assert path["reason"] == cell.prediction.reason
