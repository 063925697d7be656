"""netcheck's NAT-PMP request and SSDP search are the mapping clients' own bytes, from the one
module without an XML parser (``protocol/port_mapping_wire.py``), so the idle daemon, which
imports netcheck, still loads no ``xml.etree``."""

from __future__ import annotations

import json
import subprocess
import sys

from dvrlink.protocol import natpmp, netcheck, port_mapping_wire, upnp_igd


def test_netcheck_sends_the_mapping_clients_bytes() -> None:
    assert netcheck.natpmp_request() == natpmp.address_request() == b"\x00\x00"
    assert netcheck.PCP_PORT == natpmp.PORT == 5351
    assert netcheck.SSDP_GROUP == upnp_igd.SSDP_ADDRESS == ("239.255.255.250", 1900)
    assert netcheck.IGD_SEARCH_TARGET in upnp_igd.SEARCH_TARGETS
    for mx in (1, 2, 5):
        assert netcheck.ssdp_search(mx) == upnp_igd.msearch(netcheck.IGD_SEARCH_TARGET, mx=mx)
    assert upnp_igd.msearch is port_mapping_wire.msearch
    assert natpmp.address_request is port_mapping_wire.address_request


def test_the_search_is_an_ssdp_m_search_with_mx_clamped() -> None:
    text = port_mapping_wire.msearch(port_mapping_wire.IGD_V2, mx=0).decode("ascii")
    assert text == (
        'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\n'
        "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:2\r\n\r\n"
    )
    assert b"MX: 5\r\n" in port_mapping_wire.msearch(mx=60)


def test_ssdp_headers_are_case_blind_and_skip_junk() -> None:
    headers = port_mapping_wire.ssdp_headers(["Location: http://x/", "junk", "ST:a:b", "st: c"])
    assert headers == {"location": "http://x/", "st": "c"}


def test_the_netcheck_modules_load_no_xml_parser() -> None:
    program = (
        "import importlib, json, sys\n"
        "for name in ('dvrlink.protocol.netcheck', 'dvrlink.session.netcheck', 'dvrlink.daemon.netcheck'):\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "dvrlink.protocol.port_mapping_wire" in loaded
    assert not {"xml.etree.ElementTree", "dvrlink.protocol.upnp_igd"} & loaded, sorted(loaded)
