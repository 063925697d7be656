"""dvrlinkd on an emulated modem, on the rig's board (``--rig``): the board's real pppd over a UART,
a SIM inserted late, modem faults, and (QEMU only) an ECM NIC.

The modem emulator (hil/modememu) runs on this host at the far end of the board's modem UART, as
the rig's ``[modem] kind = "emulator"`` places it: on a QEMU rig its PTY is the guest's
``pci-serial`` port (``/dev/ttyS0``); on a bench board it is ``host_port``, a USB-UART cable to the
board's ``board_port``. Behind ``ATD*99#`` the emulator's PPP server talks to the board's own pppd
and moves the IP packets through a TUN device into a carrier namespace; the broker sits in a
namespace behind it (192.0.2.10), which nothing on the host routes to. The QEMU modem guest's
user-network NIC stays unconfigured and a bench board's default routes are removed for the
scenarios, so a registration can only have come over the modem, and the broker sees it from the
call's address. The ECM guest gets a second NIC whose link the emulator raises and drops through
QEMU's monitor as calls start and end (``hil.qemu.modem``): QEMU rigs only.

Each class starts one board (class-scoped fixtures: on QEMU its own guest, with the modem and no
LAN; on the bench a power cycle), so two guests never run at once. The PPP board starts without a
SIM: its first test inserts one and waits for the daemon to go online. A rig whose ``[modem]``
is the board's own modem or none skips these scenarios, saying why (``-rs`` prints it).
"""

from __future__ import annotations

import base64
import ipaddress
import re
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.console import PtyCable

from hil.bench_modem import (
    BOARD_CONFIG,
    SAVED_SUFFIX,
    BenchModemBoard,
    ecm_refusal,
    modem_refusal,
    point_at_modem,
    start_bench_modem_board,
)
from hil.board import Shell, ask_on_terminal, status_document
from hil.modememu.model import SimCard
from hil.modememu.ppp_link import PPP_POOL
from hil.modememu.ppp_server import Authenticated, LinkOpened, NetworkOpened
from hil.qemu.boot import BootOptions, Guest
from hil.qemu.build import REPO, build
from hil.qemu.modem import (
    BROKER_ADDRESS,
    DROP_IN_PATH,
    ECM_GUEST_INTERFACE,
    ECM_NET,
    GUEST_MODEM_PORT,
    MODEM_PCI_SLOT,
    GuestModem,
    boot_modem_guest,
)
from hil.qemu.rigconfig import image_config_path, with_values
from hil.qemu.targets import target
from hil.rig import Rig, parse_rig

pytestmark = [pytest.mark.hil, pytest.mark.timeout(3600)]

BOOT_BOUND = 600.0
"""QEMU start to the console's shell: about 90 s under TCG on a busy 2-core host."""
ONLINE_BOUND = 600.0
"""Daemon (re)start to registered over the modem; a redial or a recovery step to registered again."""
CONSOLE_BOUND = 120.0
SIM = SimCard.for_network("26201")
BENCH_SERIAL = "DL-BENCH-STANDIN"


@dataclass
class ModemBoard:
    """A board whose dvrlinkd dials the emulator: its root shell, the emulator's rig, the rig file."""

    shell: Shell
    rig: GuestModem
    restarted: float
    """When the daemon was restarted with the modem's setup (monotonic)."""
    rig_file: Rig
    guest: Guest | None = None
    """The QEMU guest (None on a bench board)."""

    @property
    def serial(self) -> str:
        return self.rig_file.serial

    def run(self, command: str, timeout: float = CONSOLE_BOUND) -> str:
        return self.shell.run(command, timeout)

    def status(self) -> dict[str, object]:
        return status_document(self.run("dvrlinkd status --json"))

    def modem(self) -> dict[str, object]:
        block = self.status().get("modem")
        assert isinstance(block, dict), f"no modem in dvrlinkd status: {self.status()}"
        return block

    def wait_on_board(self, condition: str, what: str, timeout: float = ONLINE_BOUND) -> None:
        """Until the shell ``condition`` holds on the board (checked each second, bounded)."""
        script = base64.b64encode(f"until {condition}; do sleep 1; done\n".encode()).decode()
        waited = self.run(
            f"echo {script} | base64 -d > /tmp/wait.sh; timeout {int(timeout)} sh /tmp/wait.sh;"
            " echo waited=$?",
            timeout=timeout + 60,
        )
        if not waited.endswith("waited=0"):
            journal = self.run("journalctl -u dvrlinkd --no-pager -o cat | tail -25")
            raise AssertionError(f"{what}: not within {timeout:.0f} s; dvrlinkd's journal:\n{journal}")

    def wait_registered_after(self, before: float, timeout: float = ONLINE_BOUND) -> dict[str, object]:
        """dvrlinkd status once ``registered_at`` is later than ``before`` and the state online."""
        self.wait_on_board(
            'dvrlinkd status --json | python3 -c "import json,sys; d=json.load(sys.stdin); '
            f"sys.exit(not (d.get('state') == 'online' and (d.get('registered_at') or 0) > {before}))\"",
            f"dvrlinkd registered again after {before}",
            timeout,
        )
        return self.status()

    def journal_since_restart(self, pattern: str) -> list[str]:
        text = self.run("journalctl -u dvrlinkd --no-pager -o cat")
        return [line for line in text.splitlines() if re.search(pattern, line)]


@pytest.fixture(scope="module")
def modem_rig(rig: Rig) -> Rig:
    """The rig, when its ``[modem]`` is the emulator on a board these scenarios can drive."""
    if (why := modem_refusal(rig)) is not None:
        pytest.skip(why)
    return rig


def modem_board(
    rig: Rig, run_dir: Path, *, profile: str, sim: SimCard | None, data_link: str
) -> Iterator[ModemBoard]:
    """The rig's board with its dvrlinkd on the emulated modem, restarted; stopped or restored after.

    QEMU: a guest of its own with the modem on pci-serial and no LAN (``boot_modem_guest``).
    Bench: the emulator on the rig's ``[modem] host_port``, the board power-cycled and pointed at
    it (``hil.bench_modem``)."""
    if rig.emulated:
        board_target = target(rig.board.arch)
        image = build(board_target, out=sys.stderr)
        with GuestModem(run_dir, profile, sim, ecm=data_link == "ecm") as modem:
            guest = boot_modem_guest(
                board_target, image, run_dir, modem,
                serial=rig.serial, profile=profile, data_link=data_link, boot_timeout=BOOT_BOUND,
            )  # fmt: skip
            try:
                yield ModemBoard(guest.console, modem, time.monotonic(), rig, guest)
            finally:
                guest.stop()
        return
    with GuestModem(run_dir, profile, sim, port=rig.modem.host_port) as modem:
        bench = start_bench_modem_board(
            rig, modem, run_dir, profile=profile, data_link=data_link, ask=ask_on_terminal
        )
        try:
            yield ModemBoard(bench, modem, time.monotonic(), rig)
        finally:
            bench.restore()


@pytest.fixture(scope="class")
def ppp_board(modem_rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModemBoard]:
    run_dir = tmp_path_factory.mktemp("modem-ppp")
    yield from modem_board(modem_rig, run_dir, profile="simcom-sim800", sim=None, data_link="ppp")


class TestPppModem:
    """SIM800-class: one UART, PPP on the AT port, the guest's own pppd."""

    def test_sim_insert_to_online(self, ppp_board: ModemBoard) -> None:
        """Booted without a SIM: dvrlinkd says so; a SIM goes in and it comes online over PPP."""
        ppp_board.wait_on_board(
            'dvrlinkd status --json | grep -q \'"state": "sim-absent"\'',
            "dvrlinkd reporting the SIM absent",
        )
        absent = ppp_board.modem()
        assert absent["state"] == "sim-absent", absent
        assert not ppp_board.rig.ppp.servers, "a PPP call without a SIM"
        inserted = time.monotonic()
        ppp_board.rig.emulator.insert_sim(SIM)
        line = ppp_board.rig.broker.process.wait_for(  # type: ignore[union-attr]
            rf"serial {ppp_board.serial} bound to key .* on first registration from ", ONLINE_BOUND
        )
        online_s = time.monotonic() - inserted
        source = ipaddress.IPv4Address(line.rsplit("from ", 1)[1].rsplit(":", 1)[0])
        assert source in PPP_POOL, f"the broker saw the device from {source}, not the PPP pool: {line}"
        status = ppp_board.wait_registered_after(0.0)
        modem = status["modem"]
        assert isinstance(modem, dict) and modem["state"] == "online", status
        assert modem["sim"] == "identified", modem
        print(f"\nSIM inserted to registered over PPP: {online_s:.1f} s", file=sys.stderr)

    def test_registration_went_over_the_guests_pppd(self, ppp_board: ModemBoard) -> None:
        rig = ppp_board.rig
        opened = rig.ppp.wait_for(LinkOpened, 10)
        auth = rig.ppp.wait_for(Authenticated, 10)
        network = rig.ppp.wait_for(NetworkOpened, 10)
        dial = rig.emulator.wait_for_command("ATD", 10)
        assert re.fullmatch(r"ATD\*99(\*\*\*\d+)?#", dial.upper()), dial
        assert opened.auth is not None, opened

        status = ppp_board.status()
        assert status["state"] == "online", status
        assert status["broker"] == f"{BROKER_ADDRESS}:{rig.broker.info.udp_port}", status  # type: ignore[union-attr]
        reflexive = str(status["reflexive_address"]).rsplit(":", 1)[0]
        assert reflexive == network.peer_address, (status, network)
        modem = status["modem"]
        assert isinstance(modem, dict) and modem["interface"] == "ppp0", modem

        route = ppp_board.run("ip -4 route show default")
        assert re.fullmatch(r"default dev ppp0 .*", route), f"the guest's default route: {route!r}"
        ppp0 = ppp_board.run("ip -4 -br addr show dev ppp0")
        assert network.peer_address in ppp0, f"ppp0 in the guest: {ppp0!r} (IPCP gave {network})"
        if ppp_board.guest is not None:  # the QEMU guest's user-network NIC stays unconfigured
            lan = ppp_board.run("ip -br addr show dev enp0s2")
            assert not re.search(r"\d+\.\d+\.\d+\.\d+", lan), f"the user-network NIC has IPv4: {lan!r}"
        pppd = ppp_board.journal_since_restart(r"pppd [0-9.]+ started by root")
        assert pppd, "no 'pppd ... started by root' line in dvrlinkd's journal: not the guest's pppd"
        counters = rig.ppp.servers[-1].counters
        assert counters.ip_in > 0 and counters.ip_out > 0, counters
        print(
            f"\nPPP: LCP auth {opened.auth.value}, user {auth.username!r}, guest {network.peer_address},"
            f" {counters.ip_in} packets in / {counters.ip_out} out",
            file=sys.stderr,
        )

    def test_no_carrier_mid_session_redials_and_registers_again(self, ppp_board: ModemBoard) -> None:
        rig = ppp_board.rig
        before = ppp_board.status()
        calls = len(rig.ppp.servers)
        commands = len(rig.emulator.commands)
        dropped = time.monotonic()
        rig.emulator.drop_carrier()
        rig.emulator.wait_for_command("ATD", ONLINE_BOUND, after=commands)
        status = ppp_board.wait_registered_after(float(before["registered_at"]))  # type: ignore[arg-type]
        back_s = time.monotonic() - dropped
        assert len(rig.ppp.servers) > calls, f"no new PPP call after NO CARRIER ({rig.ppp.servers})"
        new_peer = rig.ppp.servers[-1].peer_address
        assert str(status["reflexive_address"]).startswith(f"{new_peer}:"), (status, new_peer)
        assert status["reflexive_address"] != before["reflexive_address"], (before, status)
        print(f"\nNO CARRIER to registered again over a new call: {back_s:.1f} s", file=sys.stderr)

    def test_a_modem_that_stops_answering_is_recovered(self, ppp_board: ModemBoard) -> None:
        """The modem goes silent (the call dies with it, so pppd's LCP echoes fail and the daemon
        takes the port back to AT commands nobody answers); it answers again a while later."""
        rig = ppp_board.rig
        before = ppp_board.status()
        seen = len(ppp_board.journal_since_restart(r"modem recovery step \d"))
        commands = len(rig.emulator.commands)
        rig.emulator.hang(True)
        rig.emulator.drop_carrier()  # no NO CARRIER: a hung modem says nothing
        try:
            ppp_board.wait_on_board(
                "[ $(journalctl -u dvrlinkd --no-pager -o cat | grep -c 'modem recovery step [0-9]')"
                f" -gt {seen} ]",
                "a recovery step while the modem is silent",
            )
        finally:
            rig.emulator.hang(False)
        steps = ppp_board.journal_since_restart(r"modem recovery step \d")[seen:]
        status = ppp_board.wait_registered_after(float(before["registered_at"]))  # type: ignore[arg-type]
        assert status["modem"]["state"] == "online", status  # type: ignore[index]
        assert len(rig.emulator.commands) > commands, "no AT command after the modem answered again"
        print(f"\nrecovery steps seen: {[s.split('modem recovery step', 1)[1][:60] for s in steps]}")


@pytest.fixture(scope="class")
def ecm_board(modem_rig: Rig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModemBoard]:
    if (why := ecm_refusal(modem_rig)) is not None:
        pytest.skip(why)
    run_dir = tmp_path_factory.mktemp("modem-ecm")
    yield from modem_board(modem_rig, run_dir, profile="quectel-ec25", sim=SIM, data_link="ecm")


class TestEcmModem:
    """An ECM modem: AT on pci-serial, data over a second NIC whose link follows the calls."""

    def test_dvrlinkd_comes_online_through_the_ecm_nic(self, ecm_board: ModemBoard) -> None:
        rig = ecm_board.rig
        line = rig.broker.process.wait_for(  # type: ignore[union-attr]
            rf"serial {ecm_board.serial} bound to key .* on first registration from ", ONLINE_BOUND
        )
        online_s = time.monotonic() - ecm_board.restarted
        source = ipaddress.IPv4Address(line.rsplit("from ", 1)[1].rsplit(":", 1)[0])
        assert source in ECM_NET, f"the broker saw the device from {source}, not the ECM subnet: {line}"
        assert rig.ecm_path.links[:1] == [True], f"ECM NIC link changes: {rig.ecm_path.links}"
        assert not rig.ecm_path.errors, rig.ecm_path.errors
        dial = rig.emulator.wait_for_command("AT+QNETDEVCTL=", 10)
        status = ecm_board.wait_registered_after(0.0)
        modem = status["modem"]
        assert isinstance(modem, dict) and modem["interface"] == ECM_GUEST_INTERFACE, status
        route = ecm_board.run("ip -4 route show default")
        assert f"dev {ECM_GUEST_INTERFACE}" in route, f"the guest's default route: {route!r}"
        print(f"\nECM ({dial}): daemon restart to registered {online_s:.1f} s", file=sys.stderr)

    def test_a_call_dropped_by_the_network_takes_the_link_down_and_a_new_call_up(
        self, ecm_board: ModemBoard
    ) -> None:
        """The NIC's link follows the call; the daemon dials again and the presence goes on over
        the new call (same lease, so the session may stay: keepalives after the redial count)."""
        rig = ecm_board.rig
        links = len(rig.ecm_path.links)
        commands = len(rig.emulator.commands)
        dropped = time.monotonic()
        rig.emulator.drop_carrier()
        assert rig.ecm_path.links[links:] == [False], f"ECM NIC link changes: {rig.ecm_path.links}"
        rig.emulator.wait_for_command("AT+QNETDEVCTL=1", ONLINE_BOUND, after=commands)
        stamps = re.findall(r"^\d+\.\d+$", ecm_board.run("date +%s.%N"), re.M)
        assert stamps, "no time in the guest's answer to date"
        redialled = float(stamps[-1])
        assert rig.ecm_path.links[links:] == [False, True], f"ECM NIC link changes: {rig.ecm_path.links}"
        ecm_board.wait_on_board(
            'dvrlinkd status --json | python3 -c "import json,sys; d=json.load(sys.stdin); '
            "sys.exit(not (d['state'] == 'online' and d['modem']['state'] == 'online' and "
            f"(d.get('last_keepalive') or 0) > {redialled}))\"",
            "dvrlinkd online with a keepalive answered over the new call",
        )
        back_s = time.monotonic() - dropped
        status = ecm_board.status()
        assert not rig.ecm_path.errors, rig.ecm_path.errors
        carrier = ecm_board.run(f"ip -br link show dev {ECM_GUEST_INTERFACE}")
        assert "LOWER_UP" in carrier, carrier
        assert status["modem"]["interface"] == ECM_GUEST_INTERFACE, status  # type: ignore[index]
        print(f"\nECM call dropped to online again over a new call: {back_s:.1f} s", file=sys.stderr)


class TestBenchPathOnAQemuStandIn:
    """The bench board's modem path (``hil.bench_modem``), checked without a board: a QEMU guest
    stands in for one, its LAN up with a default route as a bench board's is; the emulator runs on
    pyserial at one end of a serial cable (two PTYs joined, ``support.console.PtyCable``) whose
    other end is the guest's pci-serial UART; the setup goes over the guest's console."""

    def test_the_board_dials_the_emulator_over_the_cable_and_is_restored(
        self, modem_rig: Rig, tmp_path: Path
    ) -> None:
        if not modem_rig.emulated:
            pytest.skip(f"{modem_rig.name} is a bench board: TestPppModem runs this path on the board itself")
        board_target = target(modem_rig.board.arch)
        image = build(board_target, out=sys.stderr)
        config = tmp_path / "dvrlinkd.toml"
        config.write_text(with_values(image_config_path().read_text(), {"device": {"serial": BENCH_SERIAL}}))
        doc = tomllib.loads((REPO / "rigs/example-board.toml").read_text())
        with PtyCable() as cable:
            doc["modem"].update(board_port=GUEST_MODEM_PORT, host_port=cable.laptop_path)
            doc["serial"] = BENCH_SERIAL
            bench = parse_rig(doc, Path("stand-in.toml"))
            with GuestModem(tmp_path, "simcom-sim800", SIM, port=bench.modem.host_port) as modem:
                cable_args = (
                    "-chardev", f"serial,id=modem,path={cable.device_path}",
                    "-device", f"pci-serial,chardev=modem,addr={MODEM_PCI_SLOT:#x}",
                )  # fmt: skip
                mem = board_target.default_mem_mb
                guest = Guest(board_target, image, BootOptions(mem, config, extra_args=cable_args), tmp_path)
                guest.start()
                try:
                    guest.login(BOOT_BOUND)
                    before = guest.console.run("ip -4 route show default", CONSOLE_BOUND).strip()
                    assert before.startswith("default via "), f"the stand-in has no LAN route: {before!r}"
                    board = BenchModemBoard(guest.console)
                    started = time.monotonic()
                    point_at_modem(board, bench, modem, profile="simcom-sim800", data_link="ppp")
                    assert modem.broker is not None
                    line = modem.broker.process.wait_for(
                        rf"serial {BENCH_SERIAL} bound to key .* on first registration from ", ONLINE_BOUND
                    )
                    online_s = time.monotonic() - started
                    source = ipaddress.IPv4Address(line.rsplit("from ", 1)[1].rsplit(":", 1)[0])
                    assert source in PPP_POOL, f"the broker saw the board from {source}: {line}"
                    assert modem.emulator.path == cable.laptop_path, modem.emulator.path
                    during = guest.console.run("ip -4 route show default", CONSOLE_BOUND)
                    assert "via 10.0.2.2" not in during, f"the LAN route stayed: {during!r}"
                    board.restore()
                    after = guest.console.run(
                        f"ip -4 route show default; ls {BOARD_CONFIG}{SAVED_SUFFIX} {DROP_IN_PATH} 2>&1;"
                        f" grep -c '{GUEST_MODEM_PORT}' {BOARD_CONFIG}",
                        CONSOLE_BOUND,
                    )
                    assert before in after, f"the LAN route is not back: {after!r}"
                    assert after.count("No such file") == 2, f"the saved config or drop-in stayed: {after!r}"
                    assert after.rstrip().endswith("\n0"), f"the modem's port stayed in the config: {after!r}"
                finally:
                    guest.stop()
        print(f"\nbench path on a QEMU stand-in: setup to registered {online_s:.1f} s", file=sys.stderr)
