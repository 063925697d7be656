"""IPv6 in netcheck and in the path prediction (issue 17, parts 2 and 3).

- The device's report carries its direct paths besides its NAT (item 11, ``direct_paths``: IPv6,
  port mapping) in one byte; an older decoder skips it, and the largest report still fits.
- ``predict_path`` takes them: a device with IPv6 and a viewer with IPv6 are direct over IPv6
  (rule 9), a device whose router maps ports is direct by port mapping (rule 8).
- The broker's IPv6 STUN (``stun_host6``) answers on ``::1`` beside an IPv4 one, and netcheck
  classifies the IPv6 path with the same classifier; a host without a global IPv6 address says
  "no IPv6".
- The broker's config refuses an IPv6 STUN setup that cannot work, saying what to set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pytest_mock import MockerFixture

from dvrlink.broker.config import ConfigError, load_config
from dvrlink.broker.stun_alternate import StunService, start_stun_service
from dvrlink.protocol.nat_behaviour import (
    Filtering,
    Mapping,
    NatBehaviour,
    NatProfile,
    Punch,
    format_direct_paths,
    parse_nat_type,
    predict_path,
    with_direct_paths,
)
from dvrlink.protocol.nat_behaviour import (
    Path as PathKind,
)
from dvrlink.protocol.netcheck import FamilyReport, ipv6_direct, own_profile
from dvrlink.protocol.presence_report import MAX_REPORT, DeviceReport
from dvrlink.session import netcheck
from tests.support.ipv6 import has_ipv6_loopback

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main, timeout)

    return asyncio.run(bounded())


needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="needs IPv6 on loopback (::1)")


# -- the report's item 11 -----------------------------------------------------------------------------


def test_direct_paths_round_trip_in_one_byte() -> None:
    for text in ("", "ipv6", "mapping", "ipv6,mapping"):
        report = DeviceReport(nat_type="APDM/APDF", direct_paths=text)
        data = report.encode()
        assert data.endswith(bytes([11, 1, {"": 0, "ipv6": 1, "mapping": 2, "ipv6,mapping": 3}[text]]))
        assert DeviceReport.decode(data) == report
        assert DeviceReport.from_dict(report.as_dict()) == report
    # Order and unknown names do not matter to the bits.
    assert DeviceReport.decode(DeviceReport(direct_paths="mapping,ipv6,teleport").encode()).direct_paths == (
        "ipv6,mapping"
    )
    assert DeviceReport.decode(bytes([11, 1, 0xFF])).direct_paths == "ipv6,mapping"
    with pytest.raises(ValueError, match="item 11 has 2 bytes"):
        DeviceReport.decode(bytes([11, 2, 0, 0]))


def test_an_older_broker_skips_item_11_and_the_largest_report_still_fits() -> None:
    report = DeviceReport(rat="lte", nat_type="EIM/APDF", direct_paths="ipv6")
    data = report.encode()
    # What a decoder that stops at item 10 keeps: everything but the last item (3 bytes).
    assert DeviceReport.decode(data[:-3]) == DeviceReport(rat="lte", nat_type="EIM/APDF")
    largest = DeviceReport(
        signal_dbm=-1,
        rat="r" * 100,
        data_used=1,
        modem_state="s" * 100,
        operator="o" * 100,
        keepalive_s=1,
        nat_lifetime_s=1,
        presence_transport="t" * 100,
        nat_type="n" * 100,
        sms_wake_number="+" + "9" * 15,
        direct_paths="ipv6,mapping",
    )
    assert len(largest.encode()) <= MAX_REPORT
    assert DeviceReport.decode(largest.encode()).direct_paths == "ipv6,mapping"


# -- the prediction ---------------------------------------------------------------------------------


SYMMETRIC = NatProfile(
    mapping=Mapping.ADDRESS_AND_PORT_DEPENDENT, filtering=Filtering.ADDRESS_AND_PORT_DEPENDENT
)


def test_what_the_device_reports_reaches_the_path_rules() -> None:
    assert format_direct_paths(ipv6=True, maps_ports=True) == "ipv6,mapping"
    assert format_direct_paths(ipv6=False, maps_ports=False) == ""
    device = parse_nat_type("APDM/APDF")
    assert with_direct_paths(device, None) == device
    assert with_direct_paths(device, "") == device
    assert with_direct_paths(None, "mapping") is None
    unknown_v4 = with_direct_paths(None, "ipv6")
    assert unknown_v4 is not None and unknown_v4.ipv6 and not unknown_v4.known

    viewer6 = NatProfile(**{**_fields(SYMMETRIC), "ipv6": True})
    assert predict_path(viewer6, device).path is PathKind.RELAY  # no item 11: symmetric × symmetric
    v6 = predict_path(viewer6, with_direct_paths(device, "ipv6"))
    assert (v6.path, v6.punch) == (PathKind.DIRECT, Punch.IPV6), v6
    # The device's NAT type unknown, but both have IPv6: still rule 9.
    v6_only = predict_path(viewer6, with_direct_paths(None, "ipv6"))
    assert (v6_only.path, v6_only.punch) == (PathKind.DIRECT, Punch.IPV6), v6_only
    mapped = predict_path(SYMMETRIC, with_direct_paths(device, "mapping"))
    assert (mapped.path, mapped.punch) == (PathKind.DIRECT, Punch.PORT_MAPPING), mapped
    # The viewer's own mapping router does not count (only the device asks).
    assert predict_path(with_direct_paths(SYMMETRIC, "mapping"), device).path is PathKind.RELAY


def _fields(profile: NatProfile) -> dict[str, Any]:
    return {name: getattr(profile, name) for name in profile.__slots__}


def _behaviour(local: tuple[str, int], mapped: tuple[str, int] | None, *, udp: bool = True) -> NatBehaviour:
    return NatBehaviour(
        udp,
        local,
        mapped,
        mapping=Mapping.ENDPOINT_INDEPENDENT if udp else None,
        filtering=Filtering.ADDRESS_AND_PORT_DEPENDENT if udp else None,
    )


def test_own_side_has_ipv6_only_from_an_unnated_global_address() -> None:
    v4 = FamilyReport("ipv4", True, _behaviour(("192.168.1.2", 5000), ("198.51.100.2", 40000)))
    no_v6 = FamilyReport("ipv6", False, note="no IPv6: this host has no global IPv6 address")
    untested = FamilyReport("ipv6", True, note="the broker names no ipv6 STUN address")
    direct = FamilyReport("ipv6", True, _behaviour(("2001:db8:1::2", 5000), ("2001:db8:1::2", 5000)))
    nat66 = FamilyReport("ipv6", True, _behaviour(("fd00::2", 5000), ("2001:db8:1::9", 6000)))
    blocked = FamilyReport("ipv6", True, _behaviour(("2001:db8:1::2", 5000), None, udp=False))
    assert not ipv6_direct((v4, no_v6)) and not ipv6_direct((v4,))
    assert ipv6_direct((v4, untested)) and ipv6_direct((v4, direct))
    assert not ipv6_direct((v4, nat66)) and not ipv6_direct((v4, blocked))
    own = own_profile((v4, direct))
    assert own is not None and own.ipv6 and own.name == "port_restricted_cone"
    alone = own_profile((FamilyReport("ipv4", False, note="no route"), direct))
    assert alone is not None and alone.name == "firewalled" and alone.ipv6  # the IPv6 test's behaviour
    assert own_profile((FamilyReport("ipv4", False), no_v6)) is None


# -- the broker's config ----------------------------------------------------------------------------


def _config(tmp_path: Path, lines: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n{lines}\n')
    return path


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('stun_alternate_host6 = "2001:db8::11"', "needs stun_host6"),
        ('stun_host6 = "203.0.113.10"', "specific IPv6 address"),
        ('stun_host6 = "::"', "specific IPv6 address"),
        ('udp_host = "::1"\nstun_host6 = "::1"', "already answer over IPv6"),
        ('udp_host = "127.0.0.1"\nstun_host6 = "::1"\nstun_alternate_host6 = "::1"', "two different"),
        ('stun_host6 = "nowhere"', "not an IP address"),
    ],
)
def test_the_config_refuses_ipv6_stun_that_cannot_work(tmp_path: Path, lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, lines))


def test_the_config_takes_ipv6_stun(tmp_path: Path) -> None:
    config = load_config(
        _config(tmp_path, 'udp_host = "127.0.0.1"\nstun_host6 = "::1"\nstun_alternate_host6 = "2001:db8::11"')
    )
    assert (config.stun_host6, config.stun_alternate_host6) == ("::1", "2001:db8::11")


# -- netcheck against STUN on both families -------------------------------------------------------


@needs_ipv6
def test_netcheck_classifies_ipv6_against_the_ipv6_stun_service(mocker: MockerFixture) -> None:
    """Loopback stands for a global IPv6 address (``global_ipv6_source``, which reads this
    machine's routes, is the one stub): the IPv6 family is tested against the STUN service on
    ``::1`` with the same classifier as IPv4, and finds no NAT there."""
    mocker.patch.object(netcheck, "global_ipv6_source", return_value="::1")
    classify = mocker.spy(netcheck, "classify_nat")

    async def main() -> tuple[tuple[FamilyReport, ...], list[tuple[str, tuple[str, int]]]]:
        v4: StunService = await start_stun_service("127.0.0.1", 0, None, 0)
        v6: StunService = await start_stun_service("::1", 0, None, 0)
        try:
            families = await netcheck.check_families(
                "127.0.0.1", v4.address[1], ipv6_server=v6.address, test_timeout_s=1.0
            )
            return families, v6.listening()
        finally:
            v4.close()
            v6.close()

    families, listening = run(main())
    assert listening[0][0] == "stun6/udp" and listening[0][1][0] == "::1"
    four, six = families
    assert four.family == "ipv4" and four.behaviour is not None and four.behaviour.udp
    assert six.family == "ipv6" and six.available and six.behaviour is not None, six
    assert six.behaviour.udp and not six.behaviour.nat and six.behaviour.mapped is not None
    assert six.behaviour.mapped[0] == "::1" and six.behaviour.local[0] == "::1"
    assert six.as_json()["mapped"].startswith("[::1]:")
    assert [c.args[0][0] for c in classify.call_args_list] == ["127.0.0.1", "::1"]
    assert ipv6_direct(families)


def test_without_a_global_ipv6_address_netcheck_says_no_ipv6(mocker: MockerFixture) -> None:
    mocker.patch.object(netcheck, "global_ipv6_source", return_value=None)
    classify = mocker.spy(netcheck, "classify_nat")

    async def main() -> tuple[FamilyReport, ...]:
        v4 = await start_stun_service("127.0.0.1", 0, None, 0)
        try:
            return await netcheck.check_families(
                "127.0.0.1", v4.address[1], ipv6_server=("::1", 9), test_timeout_s=1.0
            )
        finally:
            v4.close()

    families = run(main())
    six = families[1]
    assert six.family == "ipv6" and not six.available and six.behaviour is None
    assert six.note.startswith("no IPv6"), six.note
    assert len(classify.call_args_list) == 1  # IPv4 only: nothing sent over IPv6


def test_global_ipv6_source_takes_only_global_addresses(mocker: MockerFixture) -> None:
    for source, found in (
        ("2001:db8:1::2", "2001:db8:1::2"),
        ("2a00:1450::1", "2a00:1450::1"),
        ("fe80::1%eth0", None),
        ("fd12::2", None),
        ("::1", None),
    ):
        mocker.patch.object(netcheck, "local_ip_towards", return_value=source)
        assert netcheck.global_ipv6_source() == found, source
    mocker.patch.object(netcheck, "local_ip_towards", side_effect=OSError(101, "Network is unreachable"))
    assert netcheck.global_ipv6_source() is None


def test_the_device_probes_its_gateway_only_from_a_private_ipv4_address(mocker: MockerFixture) -> None:
    """``direct_paths`` (item 11): ``mapping`` needs a private IPv4 address towards the broker
    (the only kind the sessions map), so loopback and public addresses send no probe at all."""
    mocker.patch.object(netcheck, "global_ipv6_source", return_value=None)
    probe = mocker.patch.object(netcheck, "check_port_mapping")  # it would send to this machine's gateway
    probe.return_value = netcheck.PortMapping(
        "192.168.1.1", None, netcheck.SsdpAnswer("http://192.168.1.1:5000/")
    )
    for local in ("127.0.0.1", "203.0.113.5", "2001:db8::2", None):
        assert run(netcheck.direct_paths(port_mapping=True, local_ip=local)) == ""
    assert probe.call_count == 0
    assert run(netcheck.direct_paths(port_mapping=False, local_ip="192.168.1.2")) == ""
    assert probe.call_count == 0
    assert run(netcheck.direct_paths(port_mapping=True, local_ip="192.168.1.2")) == "mapping"
    assert run(netcheck.direct_paths(port_mapping=True, local_ip="100.64.3.2")) == "mapping"  # carrier NAT
    assert probe.call_count == 2
    probe.return_value = netcheck.PortMapping("192.168.1.1", netcheck.GatewayAnswer("NAT-PMP", 3), None)
    assert run(netcheck.direct_paths(port_mapping=True, local_ip="10.0.0.2")) == ""  # refused, no UPnP
    mocker.patch.object(netcheck, "global_ipv6_source", return_value="2001:db8:1::2")
    assert run(netcheck.direct_paths(port_mapping=False, local_ip=None)) == "ipv6"
