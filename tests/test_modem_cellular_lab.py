"""dvrlinkd over "cellular" in the NAT lab (needs root): its only network is the emulated modem.

The lab's device side is carrier-grade NAT (``device_nat="cgnat"``); a carrier namespace
(``hil/netlab/carrier.py``) hangs off that NAT, and a device namespace with nothing but loopback
is the recorder. ``dvrlinkd run`` (the real program) runs inside it with ``[modem] enabled`` on
the PTY of the modem emulator playing a Quectel EC25. When the daemon dials ECM over AT
(``AT+QNETDEVCTL``), the emulator's data path (``hil/modememu/cellular.py``) puts ``usb0`` into the
device namespace, a veth whose peer is in the carrier, and writes the lease; the daemon's DHCP
client, the stand-in ``hil/fake_udhcpc.py`` with ``FAKE_DHCP_CONFIGURE=1``, configures address
and default route from it. So every packet of the device goes through the "modem" and the CGN.

The test asserts that the device comes online through the modem, registers with the broker, which
sees it from the carrier's public address, and serves a viewer's ``dvrlink forward``. Then the
signal goes (the call ends and ``usb0`` with it), comes back, and the same daemon process dials
again (a new call, a new address), registers again and serves the viewer again.

The daemon runs with its default modem timers (``dvrlinkd`` has no test seams); the signal loss
reaches it as registration URCs, so nothing waits for a poll. Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dvrlink.modem.apn import DEFAULT_DATABASE
from hil import netlab
from hil.loopback import add_user
from hil.matrix.netns import ByteService, first_byte
from hil.matrix.rig import LineLog
from hil.modememu import ModemEmulator, SimCard
from hil.modememu.cellular import CarrierDataPath
from hil.netlab.carrier import Carrier

REASON = netlab.unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.skipif(
        not DEFAULT_DATABASE.exists(), reason="Debian package mobile-broadband-provider-info not installed"
    ),
    pytest.mark.timeout(60),
]

BIN = Path(sys.executable).parent
FAKE_UDHCPC = Path(__file__).resolve().parent.parent / "hil" / "fake_udhcpc.py"
SERIAL = "DL-CELL-0001"
USER = "cellular"
PASSWORD = "cellular-password-1"
SERVICE_PORT = 5540
ICCID = "89490200001234500001"
INTERFACE = "usb0"
"""The EC25's ECM interface, as the emulator's profile names it."""
WAIT = 20.0
"""Seconds any single wait may take before the test fails."""
FORWARDING = re.compile(r"^forwarding \S+:(\d+) -> \S+ via (\S+)")


@dataclass
class Cellular:
    """The lab, the carrier, the emulated modem and the daemon behind it."""

    lab: netlab.Lab
    carrier: Carrier
    cell: str
    """The device namespace: loopback plus whatever the modem's call puts there."""
    broker: netlab.LabBroker
    emu: ModemEmulator
    path: CarrierDataPath
    daemon: subprocess.Popen[bytes]
    work: Path

    @property
    def config(self) -> Path:
        return self.work / "device" / "dvrlinkd.toml"

    @property
    def daemon_log(self) -> Path:
        return self.work / "dvrlinkd.log"

    def status(self) -> dict[str, Any]:
        """The daemon's status file, or {} before it wrote one (or while it is replaced)."""
        try:
            status = json.loads((self.work / "device" / "run" / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

    def wait_status(self, what: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first status for which ``predicate`` holds, within ``WAIT`` seconds.

        Raises AssertionError with the last status and the daemon's log when it does not come."""

        def check() -> dict[str, Any] | None:
            if self.daemon.poll() is not None:
                raise AssertionError(f"dvrlinkd exited ({self.daemon.returncode}):\n{self.log_tail()}")
            status = self.status()
            return status if status and predicate(status) else None

        try:
            found: dict[str, Any] = netlab.wait_until(what, check, WAIT)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last status: {self.status()}\n{self.log_tail()}") from None
        return found

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.daemon_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def viewer(self, *args: str, stdin: str | None = None) -> str:
        """``dvrlink --home VIEWER args`` in the viewer namespace; its stdout."""
        proc = self.lab.run(
            self.lab.viewer_ns,
            [str(BIN / "dvrlink"), "--home", str(self.work / "viewer"), *args],
            check=False,
            timeout=WAIT,
            input=stdin,
        )
        assert proc.returncode == 0, (
            f"dvrlink {args[0]} failed ({proc.returncode}): {proc.stderr or proc.stdout}"
        )
        return proc.stdout

    def dvrlinkd(self, command: str) -> str:
        """``dvrlinkd COMMAND --config CONFIG`` (status, pairing-code: files only, no network); stdout."""
        argv = [str(BIN / "dvrlinkd"), command, "--config", str(self.config)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, check=True).stdout

    def seen_by_broker(self) -> dict[str, Any]:
        """The device as the broker shows it to the viewer (``dvrlink status --json``)."""
        device: dict[str, Any] = json.loads(self.viewer("status", SERIAL, "--json"))
        return device

    def links(self) -> list[str]:
        """Interface names in the device namespace."""
        out = self.lab.run(self.cell, ["ip", "-o", "link", "show"]).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def toml(sections: dict[str, dict[str, object]]) -> str:
    """A TOML document of flat sections (strings, numbers, booleans, lists of strings)."""

    def value(v: object) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    return "".join(
        f"[{name}]\n" + "".join(f"{key} = {value(v)}\n" for key, v in keys.items())
        for name, keys in sections.items()
    )


def _daemon_config(work: Path, broker: netlab.LabBroker, lab: netlab.Lab, port: str) -> Path:
    home = work / "device"
    home.mkdir(parents=True, exist_ok=True)
    dhcp = [sys.executable, str(FAKE_UDHCPC), "-f", "-i", "{iface}", "-t", "5", "-T", "1", "-n", "-R"]
    config = home / "dvrlinkd.toml"
    sections: dict[str, dict[str, object]] = {
        "device": {"serial": SERIAL, "state_dir": "state", "runtime_dir": "run"},
        "broker": {
            "host": lab.broker_addrs[0],
            "port": broker.primary[1],
            "public_key": broker.info["public_key"],
        },
        # UDP only, and short timers, so a new address is noticed within seconds
        "presence": {
            "transport": "udp",
            "keepalive_interval_s": 2,
            "reply_timeout_s": 0.5,
            "retries": 2,
            "learn_keepalive": False,
        },
        "services": {"forward": [f"127.0.0.1:{SERVICE_PORT}"]},
        "modem": {
            "enabled": True,
            "profile": "quectel-ec25",
            "port": port,
            "net_interface": INTERFACE,
            "dhcp_command": dhcp,
        },
        "log": {"level": "INFO"},
    }
    config.write_text(toml(sections))
    return config


def _stop(proc: subprocess.Popen[Any], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def cellular(tmp_path: Path) -> Iterator[Cellular]:
    with netlab.topology("cgnat", "public") as lab:
        carrier = Carrier.for_lab(lab).build()
        try:
            cell = carrier.add_subscriber_ns()
            broker = netlab.start_lab_broker(lab, tmp_path / "broker")
            add_user(broker.state_dir, USER, PASSWORD)
            path = CarrierDataPath(carrier, cell, INTERFACE, tmp_path / "leases")
            sim = SimCard.for_network("26201", iccid=ICCID)
            with ModemEmulator("quectel-ec25", sim, boot_delay_s=0.05, data_path=path) as emu:
                service = ByteService(cell, SERVICE_PORT)
                config = _daemon_config(tmp_path, broker, lab, emu.path)
                env = dict(os.environ, FAKE_DHCP_CONFIGURE="1", FAKE_DHCP_LEASE_DIR=str(path.lease_dir))
                with (tmp_path / "dvrlinkd.log").open("ab") as out:
                    daemon = lab.popen(
                        cell,
                        [str(BIN / "dvrlinkd"), "run", "--config", str(config)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                try:
                    yield Cellular(lab, carrier, cell, broker, emu, path, daemon, tmp_path)
                finally:
                    _stop(daemon, signal.SIGTERM)
                    service.close()
        finally:
            carrier.close()


def forward_once(rig: Cellular) -> str:
    """``dvrlink forward SERIAL 0:5540`` in the viewer namespace; the service's byte must come back
    through it. Returns the path the forward names (relay or direct)."""
    proc: subprocess.Popen[str] = rig.lab.popen(
        rig.lab.viewer_ns,
        [str(BIN / "dvrlink"), "--home", str(rig.work / "viewer"), "forward", SERIAL, f"0:{SERVICE_PORT}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = LineLog(proc.stdout)
    try:

        def forwarding() -> re.Match[str] | None:
            return next((m for _, line in lines.snapshot() if (m := FORWARDING.match(line))), None)

        try:
            found = netlab.wait_until("the forward's session", lambda: forwarding() or lines.ended, WAIT)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {lines.text(10)}\n{rig.log_tail()}") from None
        assert isinstance(found, re.Match), f"dvrlink forward ended: {lines.text(10)}\n{rig.log_tail()}"
        data, _ = first_byte(rig.lab.viewer_ns, int(found.group(1)), WAIT)
        assert data == b"!", f"expected the service's byte through the forward, got {data!r}"
        return str(found.group(2))
    finally:
        _stop(proc, signal.SIGINT)
        lines.join(5)


def online_via_modem(status: dict[str, Any]) -> bool:
    modem = status.get("modem") or {}
    return status.get("state") == "online" and modem.get("state") == "online"


def test_the_device_is_reached_over_cellular_and_redials_after_signal_loss(cellular: Cellular) -> None:
    rig = cellular
    public = rig.lab.wan_addr("device")
    assert rig.carrier.public_addr == public

    # 1. online through the modem: the call's usb0 is the device's only way out
    status = rig.wait_status("dvrlinkd online through the modem", online_via_modem)
    first = rig.path.lease
    assert first is not None and rig.path.errors == []
    assert status["modem"]["interface"] == INTERFACE and status["modem"]["modem"] == "Quectel EC25"
    assert rig.links() == ["lo", INTERFACE]
    route = rig.lab.run(rig.cell, ["ip", "route", "show", "default"]).stdout.split()
    assert route[:5] == ["default", "via", first.router, "dev", INTERFACE]
    assert str(status["reflexive_address"]).startswith(f"{public}:"), status["reflexive_address"]
    text = rig.dvrlinkd("status")
    assert re.search(r"^\s*modem:\s+online$", text, re.MULTILINE), text

    # 2. the broker sees it from the carrier's public address; a viewer reaches its service
    rig.viewer("login", "--broker", f"https://{rig.lab.broker_addrs[0]}:{rig.broker.info['https_port']}",
               "--user", USER, "--password-stdin", "--cacert", str(rig.broker.info["cert"]),
               stdin=PASSWORD + "\n")  # fmt: skip
    pairing = rig.dvrlinkd("pairing-code")
    rig.viewer("pair", next(w for w in pairing.split() if w.startswith("dvrlink://")))
    device = rig.seen_by_broker()
    assert device["online"] and str(device["reflexive_address"]).startswith(f"{public}:"), device
    assert forward_once(rig) in ("relay", "direct")
    registered_at = status["registered_at"]

    # 3. the signal goes: the modem deregisters, the call ends and usb0 with it
    rig.emu.lose_signal()
    rig.wait_status(
        "the modem offline after the signal loss", lambda s: (s.get("modem") or {}).get("state") != "online"
    )
    assert rig.links() == ["lo"] and rig.path.lease is None

    # 4. the signal is back: the same daemon dials again, gets a new address, registers again
    rig.emu.set_signal(20)
    rig.emu.set_registration("home")
    status = rig.wait_status(
        "dvrlinkd registered again through the modem",
        lambda s: online_via_modem(s) and (s.get("registered_at") or 0) > registered_at,
    )
    assert len(rig.path.leases) == 2, rig.path.leases
    second = rig.path.leases[-1]
    assert second.address != first.address, (first, second)
    assert rig.links() == ["lo", INTERFACE] and rig.path.errors == []
    assert str(status["reflexive_address"]).startswith(f"{public}:"), status["reflexive_address"]
    device = netlab.wait_until(
        "the broker showing the new registration",
        lambda: (d := rig.seen_by_broker())["online"] and (d["registered_at"] or 0) > registered_at and d,
        WAIT,
    )
    assert str(device["reflexive_address"]).startswith(f"{public}:"), device
    assert forward_once(rig) in ("relay", "direct")
    assert rig.daemon.poll() is None, "the daemon ran throughout"
    assert rig.emu.commands.count("AT+QNETDEVCTL=1,1,1") >= 2
