"""Presence over IPv6 in the dual-stack NAT lab (needs root; issue 17, part 2).

The device has IPv4 behind a NAT and a global IPv6 address behind the lab carrier's stateful
firewall (``Lab.ipv6``). Its ``dvrlinkd run`` is given the broker's IPv6 address as ``[broker]
host``, and its NAT drops every IPv4 UDP datagram, so presence can only work over IPv6. The real
``dvrlink-broker`` takes presence over IPv6 in each of its two ways:

- ``udp_host = "::"``: one dual-stack socket for both families (no RFC 5780, which needs a
  specific address). It answers from the address the kernel picks, so the broker warns at start
  about its two IPv6 addresses, and the host then keeps one (with two, the answers left from the
  other one and the device dropped them);
- ``udp_host`` a specific IPv4 address with RFC 5780, and ``stun_host6``: the broker's IPv6
  socket there carries presence as well as STUN.

Either way the broker must see the device at its global IPv6 address (the viewer's ``dvrlink
status`` shows the address the broker sees; the device's ``dvrlinkd status`` shows the reflexive
address the broker told it), and a real ``dvrlink forward`` must carry a byte from the device's
service through a session. Outside the lab: the link's IPv6 socket refuses what it cannot serve.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.aio import run

from dvrlink.broker.app import global_ipv6_addresses
from dvrlink.broker.presence_link import start_presence_link
from dvrlink.protocol.presence_events import Address, ServerEvent
from hil import netlab
from hil.loopback import BIN, add_user, read_line_until, wait_for
from hil.matrix.netns import ByteService, first_byte
from hil.netlab.broker import STUN_PORT

REASON = netlab.unavailable_reason()
needs_the_lab = pytest.mark.skipif(REASON is not None, reason=REASON or "")

SERIAL = "DL-IPV6-0001"
SERVICE_PORT = 5541
PRESENCE_PORT = STUN_PORT
REGISTER_TIMEOUT_S = 30.0
FORWARD_TIMEOUT_S = 60.0


def status(home: Path) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads((home / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return value


def tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return "(no log)"


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    with netlab.topology("port_restricted_cone", "port_restricted_cone", ipv6=True) as built:
        built.block_udp("device")  # IPv4 UDP only (iptables): the carrier's IPv6 stays open
        yield built


def register_over_ipv6_and_forward(lab: netlab.Lab, broker: netlab.LabBroker, tmp_path: Path) -> None:
    """``dvrlinkd run`` with the broker's IPv6 address; asserts the broker sees the device's global
    IPv6 address, then pairs a viewer and reads the device service's byte through a forward."""
    device6 = lab.host_addr6("device")
    assert device6 is not None
    broker6 = lab.broker_addrs6[0]
    add_user(broker.state_dir, "owner", "pass phrase")
    service = ByteService(lab.device_ns, SERVICE_PORT, b"6")
    home = tmp_path / "device"
    home.mkdir()
    config = home / "dvrlinkd.toml"
    config.write_text(
        "\n".join(
            [
                "[device]",
                f'serial = "{SERIAL}"',
                'state_dir = "state"',
                'runtime_dir = "run"',
                "[broker]",
                f'host = "{broker6}"',
                f"port = {PRESENCE_PORT}",
                f'public_key = "{broker.info["public_key"]}"',
                "[presence]",
                'transport = "udp"',  # no TCP fallback over IPv4: presence is the IPv6 UDP one
                "[services]",
                f'forward = ["127.0.0.1:{SERVICE_PORT}"]',
                "",
            ]
        )
    )
    daemon_log = home / "dvrlinkd.log"
    forward: subprocess.Popen[str] | None = None
    try:
        with daemon_log.open("ab") as out:
            lab.popen(
                lab.device_ns,
                [str(BIN / "dvrlinkd"), "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def online() -> dict[str, Any] | None:
            now = status(home)
            return now if now and now.get("state") == "online" else None

        try:
            wait_for("the device online over IPv6", online, REGISTER_TIMEOUT_S)
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}\n--- dvrlinkd\n{tail(daemon_log)}\n--- broker\n{tail(broker.log)}"
            ) from None
        shown = lab.run(lab.device_ns, [str(BIN / "dvrlinkd"), "status", "--config", str(config)]).stdout
        rows = {
            key.strip(): value.strip()
            for key, value in (line.split(":", 1) for line in shown.splitlines() if ":" in line)
            if not key.startswith(" ")
        }
        assert rows["broker"].startswith(f"[{broker6}]:{PRESENCE_PORT}"), shown
        # No NAT66: the broker saw the device's own global address, and told it so.
        assert rows["reflexive address"].startswith(f"[{device6}]:"), shown

        viewer = tmp_path / "viewer"
        dvrlink = [str(BIN / "dvrlink"), "--home", str(viewer)]
        lab.run(
            lab.viewer_ns,
            [
                *dvrlink,
                "login",
                "--broker",
                broker.https_url,
                "--user",
                "owner",
                "--password-stdin",
                "--cacert",
                str(broker.info["cert"]),
            ],
            input="pass phrase\n",
        )
        uri = lab.run(lab.device_ns, [str(BIN / "dvrlinkd"), "pairing-code", "--config", str(config)]).stdout
        lab.run(lab.viewer_ns, [*dvrlink, "pair", next(w for w in uri.split() if w.startswith("dvrlink://"))])
        seen = json.loads(lab.run(lab.viewer_ns, [*dvrlink, "status", SERIAL, "--json"]).stdout)
        assert seen["online"], seen
        address = str(seen["reflexive_address"])
        assert address.startswith(f"[{device6}]:"), f"the broker sees the device at {address}, not over IPv6"

        forward = lab.popen(
            lab.viewer_ns,
            [*dvrlink, "forward", SERIAL, f"0:{SERVICE_PORT}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            line = read_line_until(forward.stdout, "forwarding", FORWARD_TIMEOUT_S)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- dvrlinkd\n{tail(daemon_log)}") from None
        local_port = int(line.split()[1].rsplit(":", 1)[1])
        byte, _ = first_byte(lab.viewer_ns, local_port, FORWARD_TIMEOUT_S)
        assert byte == b"6", f"{line}\n--- dvrlinkd\n{tail(daemon_log)}"
        print(line.strip())  # the path the session took (pytest -s shows it)
    finally:
        if forward is not None:
            forward.terminate()
            forward.wait(15)
        service.close()


class SilentCore:
    """A datagram core that takes everything and answers nothing (for the link's own checks)."""

    def receive_datagram(self, data: bytes, address: Address, now: float) -> None:
        pass

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        return []

    def next_event(self) -> ServerEvent | None:
        return None

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass


def test_the_broker_finds_its_global_ipv6_addresses_in_if_inet6() -> None:
    text = (
        "20010db8020300000000000000000010 02 40 00 80     eth0\n"
        "20010db8020300000000000000000011 02 40 00 80     eth0\n"
        "fe80000000000000b0db94fffeeb1cb2 02 40 20 80     eth0\n"  # link-local: not global
        "00000000000000000000000000000001 01 80 10 80       lo\n"  # loopback (host scope)
        "not a line\n"
    )
    assert global_ipv6_addresses(text) == ["2001:db8:203::10", "2001:db8:203::11"]
    assert global_ipv6_addresses("") == []


def test_the_ipv6_socket_is_one_specific_ipv6_address_beside_an_ipv4_one() -> None:
    async def main() -> None:
        link = await start_presence_link(SilentCore(), lambda event: None, "127.0.0.1", 0)
        try:
            for wrong in ("::", "0.0.0.0", "127.0.0.1"):
                with pytest.raises(ValueError, match="not a specific IPv6 address"):
                    await link.open_ipv6(wrong, 0)
            assert link.local_address6 is None
        finally:
            link.close()
        with pytest.raises(RuntimeError, match="open its IPv4 socket first"):
            await link.open_ipv6("2001:db8::1", 0)

    run(main)


@pytest.mark.integration
@needs_the_lab
def test_a_dual_stack_udp_host_takes_presence_over_ipv6(lab: netlab.Lab, tmp_path: Path) -> None:
    broker = netlab.start_lab_broker(
        lab,
        tmp_path / "broker",
        udp_host="::",
        # RFC 5780 needs a specific udp_host, and "::" answers STUN over IPv6 itself.
        stun_alternate_host=None,
        stun_host6=None,
        stun_alternate_host6=None,
        turn_relay_host=lab.broker_addrs[0],
    )
    assert "presence+stun/udp" in broker.info["listening"], broker.info
    # A "::" socket answers from the address the kernel picks for the device: of the lab broker's
    # two IPv6 addresses, the other one, which the device drops. The broker says so at start ...
    started = broker.log.read_text()
    assert "on a host with 2 IPv6 addresses" in started and "stun_host6" in started, started
    # ... and with one IPv6 address left, "::" serves the device.
    lab.run(lab.broker_ns, ["ip", "-6", "addr", "del", f"{lab.broker_addrs6[1]}/64", "dev", "eth0"])
    register_over_ipv6_and_forward(lab, broker, tmp_path)


@pytest.mark.integration
@needs_the_lab
def test_stun_host6_takes_presence_over_ipv6_beside_rfc5780_on_ipv4(lab: netlab.Lab, tmp_path: Path) -> None:
    broker = netlab.start_lab_broker(lab, tmp_path / "broker")  # udp_host IPv4 + RFC 5780, stun_host6
    six = lab.broker_addrs6[0]
    assert broker.info["listening"]["presence6/udp"] == f"[{six}]:{STUN_PORT}", broker.info
    assert "stun6-alternate-both/udp" in broker.info["listening"], broker.info
    register_over_ipv6_and_forward(lab, broker, tmp_path)
