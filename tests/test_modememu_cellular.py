"""The emulator's data path behind ECM calls.

Without root: the model tells its ``DataPath`` of each ECM call once, and of its end whatever
ends it (the model is driven directly, no PTY, no timers). With root: a carrier namespace behind
the NAT lab's carrier-grade NAT gives the call a veth, the stand-in udhcpc configures it from the
lease, the broker's namespace sees the datagram from the carrier's public address, and the link
goes away with the call.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hil import netlab
from hil.matrix.netns import socket_in
from hil.modememu import ModemEmulator, ModemModel, SimCard, get_profile
from hil.modememu.cellular import CarrierDataPath, lease_file
from hil.modememu.wire import RawPort
from hil.netlab.carrier import Carrier, Lease

FAKE_UDHCPC = Path(__file__).resolve().parent.parent / "hil" / "fake_udhcpc.py"
WAIT = 10.0


class RecordingPath:
    def __init__(self) -> None:
        self.events: list[str] = []

    def connected(self, apn: str, mode: str, send: Callable[[bytes], None]) -> None:
        self.events.append(f"connected {apn} {mode}")

    def received(self, data: bytes) -> None:
        self.events.append("received")

    def disconnected(self) -> None:
        self.events.append("disconnected")


class Model:
    """A model fed command lines directly; its output and timers are collected."""

    def __init__(self, profile: str) -> None:
        self.path = RecordingPath()
        self.out = bytearray()
        self.timers: list[Callable[[], None]] = []
        self.model = ModemModel(
            get_profile(profile),
            SimCard(),
            self.out.extend,
            lambda _delay, fn: self.timers.append(fn),
            data_path=self.path,
        )

    def at(self, line: str) -> str:
        self.out.clear()
        self.model.feed(line.encode() + b"\r")
        return self.out.decode("latin-1")

    def dial(self) -> None:
        profile = self.model.profile
        assert self.at('AT+CGDCONT=1,"IP","web"').endswith("OK\r\n")
        command = {
            "AT+QNETDEVCTL=": "AT+QNETDEVCTL=1,1,1",
            "AT$QCRMCALL=": "AT$QCRMCALL=1,1",
            "AT^NDISDUP=": 'AT^NDISDUP=1,1,"web"',
        }[profile.ecm_dial or ""]
        assert "OK" in self.at(command)
        assert self.path.events == ["connected web ecm"]

    def run_timers(self) -> None:
        while self.timers:
            self.timers.pop(0)()


def end_call(m: Model, how: str) -> None:
    model = m.model
    if how == "disconnect command":
        m.at("AT+QNETDEVCTL=0,1,0")
    elif how == "signal lost":
        model.network_stat = 2
        model.update_registration()
    elif how == "SIM removed":
        model.remove_sim()
    elif how in ENDING_COMMANDS:
        m.at(ENDING_COMMANDS[how])
    elif how == "network drop":
        model.drop_carrier()
    elif how == "reset":
        m.at("AT+CFUN=1,1")
        m.run_timers()
    else:
        assert how == "port vanished"
        model.end_calls()


ENDING_COMMANDS = {"radio off": "AT+CFUN=0", "detach": "AT+CGATT=0", "context off": "AT+CGACT=0,1"}
ENDINGS = [
    "disconnect command",
    "signal lost",
    "SIM removed",
    *ENDING_COMMANDS,
    "network drop",
    "reset",
    "port vanished",
]


@pytest.mark.parametrize("ending", ENDINGS)
def test_an_ecm_call_ends_once_whatever_ends_it(ending: str) -> None:
    m = Model("quectel-ec25")
    m.dial()
    assert "OK" in m.at("AT+QNETDEVCTL=1,1,1")  # dialling again during the call keeps it
    assert m.path.events == ["connected web ecm"]
    end_call(m, ending)
    assert m.path.events == ["connected web ecm", "disconnected"]
    m.model.end_calls()
    m.at("AT+QNETDEVCTL=0,1,0")
    assert m.path.events == ["connected web ecm", "disconnected"], "a call ends once"


@pytest.mark.parametrize("how", ["vanish", "stop"])
def test_the_port_vanishing_or_the_emulator_stopping_ends_the_call(how: str) -> None:
    path = RecordingPath()
    emu = ModemEmulator("quectel-ec25", SimCard(), data_path=path)
    with emu, RawPort(emu.path) as port:
        port.command("ATE0")
        port.command("AT+QNETDEVCTL=1,1,1")
        assert path.events == ["connected  ecm"]
        if how == "vanish":
            emu.vanish()
            assert path.events == ["connected  ecm", "disconnected"]
    assert path.events == ["connected  ecm", "disconnected"]


def test_a_disconnect_without_a_call_tells_the_path_nothing() -> None:
    m = Model("simcom-sim7600")
    assert m.at("AT$QCRMCALL=0,1").endswith("OK\r\n")
    m.dial()
    m.at("AT$QCRMCALL=0,1")
    assert m.path.events == ["connected web ecm", "disconnected"]


def test_huawei_network_drop_sends_ndisstat_down() -> None:
    m = Model("huawei-e173")
    m.dial()
    m.out.clear()
    m.model.drop_carrier()
    assert m.out.decode() == '\r\n^NDISSTAT: 0,,,"IPV4"\r\n'
    assert m.path.events[-1] == "disconnected"


def test_ecm_profiles_name_their_network_interface() -> None:
    assert get_profile("quectel-ec25").net_interface == "usb0"
    assert get_profile("simcom-sim7600").net_interface == "wwan0"
    assert get_profile("huawei-mu709").net_interface == "wwan0"
    assert get_profile("simcom-sim800").net_interface is None  # PPP only


class FakeCarrier:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.links: list[str] = []

    def connect(self, device_ns: str, interface: str) -> Lease:
        if self.fail:
            raise netlab.NetlabError("ip link add failed: no such namespace")
        self.links.append(f"up {device_ns} {interface}")
        return Lease(interface, "100.64.128.2", "100.64.128.1", 30)

    def disconnect(self, device_ns: str, interface: str) -> bool:
        self.links.append(f"down {device_ns} {interface}")
        return True


def test_the_data_path_writes_the_lease_for_the_call_and_withdraws_it(tmp_path: Path) -> None:
    carrier = FakeCarrier()
    path = CarrierDataPath(carrier, "cell", "usb0", tmp_path)
    path.connected("web", "ecm", lambda _data: None)
    lease = json.loads(lease_file(tmp_path, "usb0").read_text())
    assert lease == {
        "interface": "usb0",
        "ip": "100.64.128.2",
        "subnet": "255.255.255.252",
        "mask": "30",
        "router": "100.64.128.1",
        "serverid": "100.64.128.1",
        "lease": "7200",
    }
    path.disconnected()
    assert not lease_file(tmp_path, "usb0").exists()
    assert carrier.links == ["up cell usb0", "down cell usb0"]
    path.connected("web", "ppp", lambda _data: None)  # PPP: no network path here
    assert carrier.links == ["up cell usb0", "down cell usb0"] and path.lease is None


def test_a_link_that_cannot_be_made_is_recorded_not_raised(tmp_path: Path) -> None:
    path = CarrierDataPath(FakeCarrier(fail=True), "cell", "usb0", tmp_path)
    path.connected("web", "ecm", lambda _data: None)
    assert path.lease is None and not lease_file(tmp_path, "usb0").exists()
    assert "no such namespace" in path.errors[0]


# ------------------------------------------------------------------------------- in the NAT lab

REASON = netlab.unavailable_reason()
CarrierLab = tuple[netlab.Lab, Carrier, str]


def lab_test(test: Callable[..., None]) -> Callable[..., None]:
    """Needs root and the lab tools (skipped with the reason otherwise); bounded to 60 s."""
    marked: Callable[..., None] = pytest.mark.skipif(REASON is not None, reason=REASON or "")(
        pytest.mark.timeout(60)(test)
    )
    return marked


@pytest.fixture
def carrier_lab() -> Iterator[CarrierLab]:
    with netlab.topology("cgnat", "public") as lab:
        carrier = Carrier.for_lab(lab).build()
        try:
            yield lab, carrier, carrier.add_subscriber_ns()
        finally:
            carrier.close()


def links(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]


def udhcpc(
    lab: netlab.Lab, ns: str, lease_dir: Path, *args: str, interface: str = "usb0"
) -> subprocess.Popen[str]:
    env = dict(os.environ, FAKE_DHCP_CONFIGURE="1", FAKE_DHCP_LEASE_DIR=str(lease_dir))
    argv = [sys.executable, str(FAKE_UDHCPC), "-f", "-i", interface, "-t", "2", "-T", "0.5", "-n", *args]
    return lab.popen(ns, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def default_route(lab: netlab.Lab, ns: str) -> str:
    return " ".join(lab.run(ns, ["ip", "route", "show", "default"]).stdout.split()[:5])


def seen_from(lab: netlab.Lab, cell: str) -> str:
    """Send one datagram from ``cell`` to the broker's address; the source address it arrives from."""
    with socket_in(lab.broker_ns, socket.SOCK_DGRAM) as server, socket_in(cell, socket.SOCK_DGRAM) as client:
        server.bind((lab.broker_addrs[0], 9999))
        server.settimeout(WAIT)
        client.sendto(b"hello", (lab.broker_addrs[0], 9999))
        data, (address, _port) = server.recvfrom(64)
        assert data == b"hello"
        return str(address)


def wait_line(proc: subprocess.Popen[str], text: str) -> list[str]:
    """Lines of ``proc`` up to the first containing ``text`` (bounded by the test timeout)."""
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line.rstrip())
        if text in line:
            return seen
    raise AssertionError(f"the client ended without {text!r}: {seen}")


@lab_test
def test_a_call_is_a_link_behind_carrier_grade_nat(carrier_lab: CarrierLab, tmp_path: Path) -> None:
    lab, carrier, cell = carrier_lab
    assert links(cell) == ["lo"]
    path = CarrierDataPath(carrier, cell, "usb0", tmp_path)
    sim = SimCard.for_network("26201")
    with ModemEmulator("quectel-ec25", sim, data_path=path) as emu, RawPort(emu.path) as port:
        assert port.command("ATE0 V1 +CMEE=1;+CEREG=1").endswith(b"OK\r\n")
        # no call, no lease: the client gives up as udhcpc -n does
        client = udhcpc(lab, cell, tmp_path)
        assert client.wait(WAIT) == 1
        port.command('AT+CGDCONT=1,"IP","internet"')
        port.command("AT+QNETDEVCTL=1,1,1")
        assert links(cell) == ["lo", "usb0"]
        first = path.lease
        assert first is not None and lease_file(tmp_path, "usb0").exists()

        client = udhcpc(lab, cell, tmp_path, "-R")
        assert f"lease of {first.address} obtained" in wait_line(client, "obtained")[-1]
        # udhcpc prints the lease, then runs its script ("bound")
        netlab.wait_until("the default route via the modem", lambda: default_route(lab, cell), WAIT)
        assert default_route(lab, cell) == f"default via {first.router} dev usb0"
        assert seen_from(lab, cell) == carrier.public_addr == lab.wan_addr("device")

        emu.lose_signal()  # registration lost: the call ends and its link with it
        port.read_until(b"+CEREG: 2\r\n")
        assert links(cell) == ["lo"] and not lease_file(tmp_path, "usb0").exists()
        client.terminate()
        assert client.wait(WAIT) == 0

        emu.set_signal(20)
        emu.set_registration("home")
        port.read_until(b"+CEREG: 1\r\n")
        port.command("AT+QNETDEVCTL=1,1,1")
        second = path.lease
        assert second is not None and second.address != first.address  # a new call, a new address
        client = udhcpc(lab, cell, tmp_path, "-R")
        wait_line(client, "obtained")
        netlab.wait_until("the default route via the new call", lambda: default_route(lab, cell), WAIT)
        assert default_route(lab, cell) == f"default via {second.router} dev usb0"
        assert seen_from(lab, cell) == carrier.public_addr
        client.terminate()
        assert "unicasting a release" in "".join(wait_line(client, "SIGTERM"))
        assert client.wait(WAIT) == 0
        addresses = lab.run(cell, ["ip", "-4", "-o", "addr", "show", "dev", "usb0"]).stdout
        assert "inet " not in addresses, "deconfig on exit flushes the address"
    assert path.errors == []
    assert links(cell) == ["lo"], "stopping the emulator ends the call"


PROBE = """
import asyncio, sys
from dvrlink.modem.netprobe import DataPathProbe, ProbeConfig
from dvrlink.modem.ppp import LinkUp
probe = DataPathProbe(ProbeConfig(sys.argv[1], timeout_s=2.0, initial_rto_s=0.2))
print(asyncio.run(probe(LinkUp(sys.argv[2], sys.argv[3]))))
"""


def data_path_probe(lab: netlab.Lab, cell: str, lease: Lease) -> str:
    """The daemon's data-path probe (STUN to the broker through the interface), run in ``cell``."""
    args = ["-c", PROBE, lab.broker_addrs[0], lease.interface, lease.address]
    return lab.python(cell, args, timeout=WAIT).stdout.strip()


@lab_test
def test_the_daemons_probe_sees_the_path_and_its_loss_at_a_hang_up(
    carrier_lab: CarrierLab, tmp_path: Path
) -> None:
    lab, carrier, cell = carrier_lab
    netlab.start_lab_broker(lab, tmp_path / "broker")
    interface = get_profile("huawei-mu709").net_interface
    assert interface == "wwan0"
    path = CarrierDataPath(carrier, cell, interface, tmp_path / "leases")
    with ModemEmulator("huawei-mu709", SimCard(), data_path=path) as emu, RawPort(emu.path) as port:
        port.command("ATE0")
        port.command('AT^NDISDUP=1,1,"internet"')
        port.read_until(b'^NDISSTAT: 1,,,"IPV4"\r\n')
        lease = path.lease
        assert lease is not None and lease.interface == interface
        client = udhcpc(lab, cell, path.lease_dir, interface=interface)
        wait_line(client, "obtained")
        netlab.wait_until("the default route via the modem", lambda: default_route(lab, cell), WAIT)
        assert data_path_probe(lab, cell, lease) == "True"
        emu.drop_carrier()  # the network ends the call: the interface goes, the client stays
        port.read_until(b'^NDISSTAT: 0,,,"IPV4"\r\n')
        assert links(cell) == ["lo"] and client.poll() is None
        assert data_path_probe(lab, cell, lease) == "False"
        client.terminate()
        assert client.wait(WAIT) == 0
    assert path.errors == []


# -------------------------------------------------------------------------------------- by hand

ROOT = Path(__file__).resolve().parent.parent


def hand_run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hil.modememu", "--profile", "quectel-ec25", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )


def test_hand_run_data_path_needs_a_lab_and_a_network_function() -> None:
    proc = hand_run("--data-path", "dlt000000-")
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2 and "python -m hil.netlab up cgnat" in out, out
    proc = hand_run("--data-path", "dlt000000-", "--profile", "simcom-sim800")
    out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 2 and "no network function" in out, out


@lab_test
def test_hand_run_data_path_builds_the_carrier_and_removes_it(tmp_path: Path) -> None:
    with netlab.topology("cgnat", "public") as lab:
        proc = hand_run("--data-path", lab.prefix, "--lease-dir", str(tmp_path))
        try:
            assert proc.stdout is not None and proc.stdin is not None
            printed = [proc.stdout.readline()]  # bounded by the test timeout
            while not printed[-1].startswith("profile quectel-ec25"):
                printed.append(proc.stdout.readline())
                assert printed[-1], f"the emulator exited: {printed}"
            pty = next(line.split()[1] for line in printed if line.startswith("PTY /dev/"))
            assert f"carrier {lab.prefix}carrier behind {lab.nat_ns('device')}" in printed[0], printed
            assert f"ip netns exec {lab.prefix}cell dvrlinkd run" in "".join(printed), printed
            with RawPort(pty) as port:
                port.command("ATE0")
                port.command("AT+QNETDEVCTL=1,1,1")
                assert links(f"{lab.prefix}cell") == ["lo", "usb0"]
                assert json.loads(lease_file(tmp_path, "usb0").read_text())["router"] == "100.64.128.1"
                proc.stdin.write("status\n")
                proc.stdin.flush()
                assert "call=ecm:1" in proc.stdout.readline()
                proc.stdin.write("drop\nquit\n")
                proc.stdin.flush()
                assert proc.wait(timeout=WAIT) == 0
            left = [
                ns for ns in netlab.lab.namespaces() if ns in (f"{lab.prefix}carrier", f"{lab.prefix}cell")
            ]
            assert left == [], "the emulator removes what it built"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
                netlab.down(lab.prefix)  # what the killed emulator could not remove
