"""Rig files (hil/rig.py) and the parts of hil/board.py that run without a board.

The shipped rig files load; every kind of mistake in a rig file stops with a message that names
the file and the key and says what to write; the QEMU board's config gets the installer console;
the bench board's shell runs commands on a real ``sh`` at the far end of a PTY cable; power
commands run, and a failing one is reported with its output.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.console import PtyCable

from hil.bench_modem import ecm_refusal, modem_refusal, write_file_commands
from hil.board import (
    BoardError,
    CommandPower,
    ManualPower,
    SerialShell,
    broker_namespace,
    check_broker_namespace,
    guest_config,
    installer_console_args,
    qemu_installer_pty,
    viewer_reaches_broker,
)
from hil.modememu.emulator import ModemEmulator
from hil.netlab.lab import down, new_prefix, run_command
from hil.qemu.host import HostBroker
from hil.qemu.modem import GuestModem, modem_config
from hil.qemu.rigconfig import image_config_path
from hil.rig import ModemSpec, PowerSpec, RigError, ShellSpec, load_rig, parse_rig

REPO = Path(__file__).resolve().parent.parent
RIGS = sorted((REPO / "rigs").glob("*.toml"))


def test_the_rig_files_in_the_tree_load() -> None:
    assert {p.name for p in RIGS} >= {"qemu-arm64.toml", "qemu-armhf.toml", "example-board.toml"}, RIGS
    for path in RIGS:
        rig = load_rig(path)
        assert rig.source == path
    arm64 = load_rig(REPO / "rigs/qemu-arm64.toml")
    assert arm64.emulated and arm64.board.arch == "arm64" and arm64.board.init == "systemd"
    assert arm64.console.host_port == "qemu-pty" and arm64.power.kind == "qemu-monitor"
    assert arm64.network.host_address == "10.0.2.2" and arm64.config_delivery == "fw_cfg"
    armhf = load_rig(REPO / "rigs/qemu-armhf.toml")
    assert armhf.board.init == "busybox" and armhf.board.mem_mb == 128
    bench = load_rig(REPO / "rigs/example-board.toml")
    assert not bench.emulated and bench.config_delivery == "console"
    assert bench.power.kind == "command" and bench.power.on[0] == "usbrelay", bench.power
    assert bench.shell.kind == "serial" and bench.network.kind == "interface"
    assert arm64.modem == ModemSpec("emulator", host_port="qemu-pty", board_port="/dev/ttyS0"), arm64.modem
    assert armhf.modem == ModemSpec("none"), armhf.modem
    assert bench.modem.kind == "emulator" and bench.modem.board_port == "/dev/ttyAMA2", bench.modem
    assert bench.modem.host_port.startswith("/dev/serial/by-id/"), bench.modem


def bench_doc() -> dict[str, Any]:
    """The example bench board's file as a document, to break one key at a time."""
    return tomllib.loads((REPO / "rigs/example-board.toml").read_text())


def refused(doc: dict[str, Any]) -> str:
    with pytest.raises(RigError) as caught:
        parse_rig(doc, Path("rigs/bad.toml"))
    message = str(caught.value)
    assert message.startswith("rigs/bad.toml: "), message
    return message


DROP = object()
"""In a case: remove the key."""

BAD_CASES = [
    # (table ("" for the top level), key, new value or DROP, what the message must say)
    ("", "serial", DROP, "serial is missing: add serial = "),
    ("", "serial", "dl 1", "serial = 'dl 1' is not a dvrlink serial: 3-32 characters"),
    ("", "power", DROP, "no [power] table: add one"),
    ("", "power", "relay", "power is a str: it must be a [power] table"),
    ("", "boards", {}, "rigs/bad.toml: boards is not a rig key"),
    ("power", "kind", "relay", "[power] kind = 'relay' is not known: use one of 'qemu-monitor', 'command', "),
    ("power", "off", DROP, "[power] off is missing: with kind = 'command' give the command that switches"),
    ("power", "on", "usbrelay BITFT_1=1", "[power] on = 'usbrelay BITFT_1=1': write the command as a list"),
    ("power", "off_s", "3", "[power] off_s = '3' is not a number"),
    ("power", "off_s", -1, "[power] off_s = -1 is out of range: use 0 to 600"),
    ("power", "kind", "qemu-monitor", "[power] kind = 'qemu-monitor' needs [board] kind = 'qemu'"),
    ("board", "kind", "fpga", "[board] kind = 'fpga' is not known: use one of 'qemu', 'bench'"),
    ("board", "arch", "arm64", "[board] arch: not used for a bench board"),
    ("board", "boot_timout_s", 30, "[board] boot_timout_s is not a rig key: the keys here are"),
    ("board", "init", "openrc", "[board] init = 'openrc' is not known: use one of 'systemd', 'busybox'"),
    ("shell", "kind", "qemu-console", "[shell] kind = 'qemu-console' needs [board] kind = 'qemu'"),
    ("shell", "port", DROP, "[shell] port is missing"),
    ("shell", "baud", 115200.5, "[shell] baud = 115200.5 is not a whole number"),
    ("shell", "prompt", "[#$", "[shell] prompt = '[#$' is not a regular expression"),
    ("console", "board_port", "ttyS1", "[console] board_port = 'ttyS1': give the board's device"),
    ("console", "host_port", DROP, "[console] host_port is missing"),
    ("console", "host_port", "qemu-pty", "[console] host_port = 'qemu-pty' needs [board] kind = 'qemu'"),
    ("modem", "kind", "walkie-talkie", "[modem] kind = 'walkie-talkie' is not known: use one of 'emulator'"),
    ("modem", "host_port", DROP, "[modem] host_port is missing"),
    ("modem", "host_port", "", "[modem] host_port is empty: give this host's end of the cable"),
    ("modem", "host_port", "qemu-pty", "[modem] host_port = 'qemu-pty' needs [board] kind = 'qemu'"),
    ("modem", "board_port", DROP, "[modem] board_port is missing"),
    ("modem", "board_port", "ttyS2", "[modem] board_port = 'ttyS2': give the board's device for the modem"),
    ("modem", "board_port", "/dev/ttyAMA1", "[modem] board_port = '/dev/ttyAMA1' is the installer console's"),
    ("modem", "port", "/dev/ttyUSB2", "[modem] port: not used with kind = 'emulator'"),
    ("modem", "kind", "none", "[modem] host_port: not used with kind = 'none'"),
    ("modem", "kind", "board", "[modem] host_port: not used with kind = 'board'"),
    ("network", "kind", "qemu-user", "[network] kind = 'qemu-user' needs [board] kind = 'qemu'"),
    ("network", "host_address", "", "[network] host_address is empty"),
    ("network", "kind", "tunnel", "[network] kind = 'tunnel' is not known: use one of 'qemu-user', "),
    ("network", "name", DROP, "[network] name is missing"),
    ("config", "delivery", "fw_cfg", "[config] delivery = 'fw_cfg' needs [board] kind = 'qemu'"),
]


@pytest.mark.parametrize(("table", "key", "value", "expected"), BAD_CASES)
def test_a_bad_rig_file_names_the_key_and_what_to_do(
    table: str, key: str, value: object, expected: str
) -> None:
    doc = bench_doc()
    where = doc[table] if table else doc
    if value is DROP:
        del where[key]
    else:
        where[key] = value
    message = refused(doc)
    assert expected in message, message


def test_the_example_board_file_is_what_the_bad_cases_start_from() -> None:
    """The cases above break a good file: unbroken, it loads."""
    assert parse_rig(bench_doc(), Path("rigs/bad.toml")).serial == "DL-0001-0002"


def test_a_missing_or_broken_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(RigError, match=r"no such rig file: pass one of rigs/\*\.toml with --rig"):
        load_rig(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x"\n[board\n')
    with pytest.raises(RigError, match=r"broken\.toml: not valid TOML: .*line 2"):
        load_rig(broken)


def test_a_qemu_rig_refuses_bench_only_settings() -> None:
    doc = tomllib.loads((REPO / "rigs/qemu-arm64.toml").read_text())
    doc["power"]["on"] = ["true"]
    assert "[power] on: not used with kind = 'qemu-monitor'" in refused(doc)
    doc = tomllib.loads((REPO / "rigs/qemu-arm64.toml").read_text())
    doc["board"]["arch"] = "riscv64"
    assert "[board] arch = 'riscv64' is not known: use one of 'arm64', 'armhf'" in refused(doc)


QEMU_CASES = [
    # (table, key, new value, what the message must say) on the QEMU arm64 rig's file
    ("network", "kind", "namespace", "[network] kind = 'namespace' needs [board] kind = 'bench'"),
    ("network", "kind", "interface", "[network] kind = 'interface' needs [board] kind = 'bench'"),
    ("modem", "host_port", "/dev/ttyUSB1", "[modem] host_port = '/dev/ttyUSB1': a QEMU board's modem is"),
    ("modem", "board_port", "/dev/ttyS1", "[modem] board_port = '/dev/ttyS1': the QEMU modem guest's"),
]


@pytest.mark.parametrize(("table", "key", "value", "expected"), QEMU_CASES)
def test_a_qemu_rig_refuses_what_its_wiring_cannot_do(
    table: str, key: str, value: str, expected: str
) -> None:
    doc = tomllib.loads((REPO / "rigs/qemu-arm64.toml").read_text())
    doc[table][key] = value
    if key == "kind" and table == "network":
        doc[table].update(name="dl-bench", host_address="10.9.0.1")
    assert expected in refused(doc)


def test_a_qemu_modem_rig_takes_the_defaults() -> None:
    doc = tomllib.loads((REPO / "rigs/qemu-arm64.toml").read_text())
    doc["modem"] = {"kind": "emulator"}
    rig = parse_rig(doc, Path("rigs/q.toml"))
    assert rig.modem == ModemSpec("emulator", host_port="qemu-pty", board_port="/dev/ttyS0"), rig.modem


def test_the_emulator_needs_its_own_cable_on_the_bench() -> None:
    doc = bench_doc()
    doc["modem"]["host_port"] = doc["console"]["host_port"]
    assert "[modem] host_port = '/dev/serial/by-id/usb-Prolific_PL2303-if00-port0' is also [console]" in (
        refused(doc)
    )
    doc = bench_doc()
    doc["modem"]["host_port"] = doc["shell"]["port"]
    assert "is also [shell] port: the emulator needs its own USB-UART cable" in refused(doc)


def rig_with(**tables: dict[str, Any]) -> Any:
    """The example bench board's rig with whole tables replaced."""
    doc = bench_doc()
    doc.update(tables)
    return parse_rig(doc, Path("rigs/bench.toml"))


def test_the_broker_runs_in_the_boards_namespace_only_on_a_namespace_rig() -> None:
    interface = load_rig(REPO / "rigs/example-board.toml")
    assert broker_namespace(interface) is None and viewer_reaches_broker(interface)
    qemu = load_rig(REPO / "rigs/qemu-arm64.toml")
    assert broker_namespace(qemu) is None and viewer_reaches_broker(qemu)
    namespaced = rig_with(network={"kind": "namespace", "name": "dl-bench", "host_address": "10.9.0.1"})
    assert broker_namespace(namespaced) == "dl-bench"
    assert not viewer_reaches_broker(namespaced)
    assert namespaced.network.host_address == "10.9.0.1"


def test_a_missing_namespace_says_how_to_make_one() -> None:
    with pytest.raises(BoardError, match=r"\[network\] name = 'dl-bench': no such network namespace; "
                       r"create it .*ip netns add dl-bench"):  # fmt: skip
        check_broker_namespace("dl-bench", listed=lambda: ["dl-other"])


def test_which_rigs_run_the_modem_scenarios() -> None:
    qemu = load_rig(REPO / "rigs/qemu-arm64.toml")
    assert modem_refusal(qemu) is None and ecm_refusal(qemu) is None
    bench = load_rig(REPO / "rigs/example-board.toml")
    assert modem_refusal(bench) is None
    assert "a bench board has no such NIC (QEMU rigs only)" in str(ecm_refusal(bench))
    armhf = load_rig(REPO / "rigs/qemu-armhf.toml")
    assert "[modem] kind = 'none': no modem scenarios" in str(modem_refusal(armhf))
    real = rig_with(modem={"kind": "board", "port": "/dev/ttyUSB2"})
    assert "[modem] kind = 'board' (the board's own modem): these scenarios insert a SIM" in str(
        modem_refusal(real)
    )
    busybox = bench_doc()
    busybox["board"]["init"] = "busybox"
    refusal = modem_refusal(parse_rig(busybox, Path("rigs/bench.toml")))
    assert "runs busybox init: the modem scenarios install the systemd drop-in" in str(refusal)


def test_the_modem_config_names_the_boards_uart() -> None:
    text = modem_config(
        image_config_path().read_text(), serial="DL-0001-0002", broker_port=3478,
        broker_key_b64="AAAA", profile="simcom-sim800", data_link="ppp", port="/dev/ttyAMA2",
    )  # fmt: skip
    doc = tomllib.loads(text)
    assert doc["modem"]["port"] == "/dev/ttyAMA2" and doc["modem"]["data_link"] == "ppp", doc["modem"]
    assert doc["broker"]["host"] == "192.0.2.10" and doc["device"]["serial"] == "DL-0001-0002"


def test_an_ecm_modem_on_a_bench_serial_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"an ECM NIC needs QEMU's monitor: no ECM modem on the serial port"):
        GuestModem(tmp_path, "quectel-ec25", None, ecm=True, port="/dev/ttyUSB1")


def test_the_emulator_answers_on_a_serial_port(tmp_path: Path) -> None:
    """The emulator on this host's end of a cable (pyserial), the board's end opened as a UART."""
    with (
        PtyCable() as cable,
        ModemEmulator("simcom-sim800", boot_delay_s=0.01, port=cable.laptop_path) as emu,
    ):
        assert emu.path == cable.laptop_path
        fd = board_end(cable)
        try:
            os.write(fd, b"ATE0\r")
            emu.wait_for_command("ATE0", 30)
            os.write(fd, b"AT+CGMM\r")
            emu.wait_for_command("AT+CGMM", 30)
            seen = b""
            deadline = time.monotonic() + 30
            while seen.count(b"OK\r\n") < 2 and time.monotonic() < deadline:  # ATE0's, AT+CGMM's
                ready, _, _ = select.select([fd], [], [], 1.0)
                if ready:
                    seen += os.read(fd, 1024)
            assert b"SIM800" in seen and seen.rstrip().endswith(b"OK"), f"the board's end read {seen!r}"
        finally:
            os.close(fd)
    assert not emu.path, "the port is still open after the emulator stopped"


def test_the_emulator_names_a_port_it_cannot_open(tmp_path: Path) -> None:
    emu = ModemEmulator("simcom-sim800", port=str(tmp_path / "ttyUSB9"))
    with pytest.raises(OSError, match=r"the modem emulator cannot open .*ttyUSB9: .*check the port"):
        emu.start()
    emu.stop()  # nothing started: a no-op


def test_the_qemu_board_config_gets_the_installer_console() -> None:
    rig = load_rig(REPO / "rigs/qemu-arm64.toml")
    text = guest_config(image_config_path().read_text(), rig, "10.0.2.2", 3478, bytes(range(32)))
    doc = tomllib.loads(text)
    assert doc["console"] == {"port": "/dev/ttyS0", "baud": 115200}, doc.get("console")
    assert doc["device"]["serial"] == "DL-QEMU-0001"
    assert doc["broker"]["host"] == "10.0.2.2" and doc["broker"]["port"] == 3478
    assert installer_console_args() == (
        "-chardev", "pty,id=installer", "-device", "pci-serial,chardev=installer",
    )  # fmt: skip


def test_the_installer_pty_is_read_from_the_qemu_monitor() -> None:
    said = (
        "info chardev\r\ninstaller: filename=pty:/dev/pts/7\r\nconsole: filename=unix:/tmp/c.sock\r\n(qemu) "
    )
    guest = SimpleNamespace(monitor=lambda command: said if command == "info chardev" else "")
    assert qemu_installer_pty(guest) == "/dev/pts/7"  # type: ignore[arg-type]
    with pytest.raises(BoardError, match="names no PTY for chardev 'installer'"):
        qemu_installer_pty(SimpleNamespace(monitor=lambda command: "(qemu) "))  # type: ignore[arg-type]


def test_power_commands_run_in_order_and_a_failure_says_which(tmp_path: Path) -> None:
    log = tmp_path / "relay.log"
    record = [sys.executable, "-c", f"import sys; open({str(log)!r}, 'a').write(sys.argv[1] + '\\n')"]
    waited: list[float] = []
    power = CommandPower(
        PowerSpec("command", on=(*record, "on"), off=(*record, "off"), off_s=2.5), waited.append
    )
    power.cycle()
    assert log.read_text() == "off\non\n" and waited == [2.5]

    failing = (sys.executable, "-c", "import sys; sys.exit('relay 1 not found')")
    power = CommandPower(PowerSpec("command", on=(*record, "on"), off=failing), waited.append)
    with pytest.raises(
        BoardError, match=r"power off: .* exited with 1: relay 1 not found; check \[power\] off"
    ):
        power.cycle()
    missing = CommandPower(PowerSpec("command", on=("true",), off=("/nonexistent/usbrelay",)), waited.append)
    with pytest.raises(BoardError, match=r"power off: /nonexistent/usbrelay did not run"):
        missing.cycle()


def test_manual_power_asks_the_operator() -> None:
    asked: list[str] = []
    ManualPower(PowerSpec("manual", off_s=5), asked.append).cycle()
    assert asked == ["switch the board off, wait 5 s, switch it on, then press Enter"]


def board_end(cable: PtyCable) -> int:
    """The board's end of the cable, opened at the shell's speed (the cable garbles a mismatch)."""
    fd = os.open(cable.device_path, os.O_RDWR | os.O_NOCTTY)
    attrs = termios.tcgetattr(fd)
    attrs[4] = attrs[5] = termios.B115200
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return fd


@pytest.fixture
def bench_shell(tmp_path: Path) -> Iterator[tuple[PtyCable, subprocess.Popen[bytes]]]:
    """A real ``sh -i`` on the board's end of a PTY cable, as a board's debug UART offers one."""
    with PtyCable() as cable:
        fd = board_end(cable)
        shell = subprocess.Popen(
            ["sh", "-i"], stdin=fd, stdout=fd, stderr=fd, start_new_session=True,
            env={"PATH": os.environ["PATH"], "PS1": "root@bench# ", "HOME": str(tmp_path)},
        )  # fmt: skip
        os.close(fd)
        try:
            yield cable, shell
        finally:
            os.killpg(shell.pid, signal.SIGKILL)  # the shell and what it still runs (the sleep)
            shell.wait(10)


def test_the_bench_shell_runs_commands_over_the_uart(
    bench_shell: tuple[PtyCable, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    cable, _ = bench_shell
    shell = SerialShell(ShellSpec("serial", port=cable.laptop_path, prompt=r"# $"), tmp_path / "shell.log")
    try:
        shell.open(timeout=30)
        assert shell.run("echo hello; echo world >&2") == "hello\nworld"
        assert shell.run("printf 'a\\nb\\n'; false") == "a\nb"
        with pytest.raises(BoardError, match=r"within 0.5 s; last lines:"):
            shell.run("sleep 5", timeout=0.5)
    finally:
        shell.close()
    assert "hello" in (tmp_path / "shell.log").read_text()


def test_the_bench_shell_refuses_a_login_prompt(tmp_path: Path) -> None:
    with PtyCable() as cable:
        shell = SerialShell(ShellSpec("serial", port=cable.laptop_path), tmp_path / "shell.log")
        fd = board_end(cable)

        def getty() -> None:
            """Answer the shell's first line end with a login prompt, as a getty does (pyserial
            drops what arrived before it opened the port)."""
            seen = b""
            while b"\n" not in seen:
                chunk = os.read(fd, 64)
                if not chunk:
                    return
                seen += chunk
            os.write(fd, b"\r\ndvrlink login: ")

        answering = threading.Thread(target=getty, daemon=True)
        answering.start()
        try:
            with pytest.raises(
                BoardError, match="shows a login prompt: give the board's image a root autologin"
            ):
                shell.open(timeout=30)
        finally:
            shell.close()
            answering.join(10)
            os.close(fd)
        assert not answering.is_alive()


def test_the_bench_shell_names_a_port_it_cannot_open(tmp_path: Path) -> None:
    shell = SerialShell(ShellSpec("serial", port=str(tmp_path / "ttyUSB9")), tmp_path / "shell.log")
    with pytest.raises(
        BoardError, match=r"cannot open the board's shell UART .*ttyUSB9: .*check \[shell\] port"
    ):
        shell.open(timeout=1)


def test_a_file_is_written_on_the_board_in_lines_its_tty_takes(
    bench_shell: tuple[PtyCable, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """The bench modem's config goes to the board through its shell: lines under the tty's
    4095-character limit, the file's contents replaced (not the file: owner and mode stay)."""
    cable, _ = bench_shell
    target = tmp_path / "dvrlinkd.toml"
    target.write_text("old\n")
    target.chmod(0o640)
    data = os.urandom(3000) + b"\n[modem]\nport = '/dev/ttyAMA2'\n"
    lines = write_file_commands(str(target), data, chunk=512)
    assert len(lines) > 8 and max(map(len, lines)) < 1024, [len(line) for line in lines]
    shell = SerialShell(ShellSpec("serial", port=cable.laptop_path, prompt=r"# $"), tmp_path / "shell.log")
    try:
        shell.open(timeout=30)
        for line in lines:
            shell.run(line, timeout=30)
    finally:
        shell.close()
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_a_namespace_rigs_broker_listens_inside_the_namespace_only(tmp_path: Path) -> None:
    """What the suite's rig_broker does on a ``[network] kind = "namespace"`` rig, with a namespace
    made here (its loopback down, as ``ip netns add`` leaves it) standing in for the board's."""
    prefix = new_prefix()
    netns = f"{prefix}bench"
    run_command(["ip", "netns", "add", netns])
    try:
        check_broker_namespace(netns)
        lo = run_command(["ip", "-n", netns, "-br", "link", "show", "lo"])
        assert " UNKNOWN " in f"{lo} " or " UP " in f"{lo} ", f"lo in {netns} is not up: {lo!r}"
        rig = rig_with(network={"kind": "namespace", "name": netns, "host_address": "10.9.0.1"})
        state = tmp_path / "broker"
        state.mkdir()
        broker = HostBroker.start(state, netns=broker_namespace(rig))
        try:
            port = f":{broker.info.https_port} "
            inside = run_command(["ip", "netns", "exec", netns, "ss", "-Hltn"])
            assert port in inside, f"the broker's HTTPS port {port} is not listening in {netns}:\n{inside}"
            outside = run_command(["ss", "-Hltn"])
            assert port not in outside, f"the broker's HTTPS port {port} listens on this host:\n{outside}"
        finally:
            code = broker.stop()
        assert code == 0, "".join(broker.process.lines[-20:])
    finally:
        down(prefix)
