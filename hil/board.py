"""The board a rig file describes, switched on and reachable: a QEMU guest or a bench board.

The HIL scenarios talk to a ``Board`` only: a root shell (``run``), the host's end of the
installer console (``console_port``, for ``dvrlink provision --port`` / ``dvrlink pair --port``),
power control, and what the board was given. ``start_qemu_board`` boots the rig's image with the
installer console on a ``pci-serial`` UART wired to a host PTY; ``start_bench_board`` power-cycles
a real board, writes the broker's settings over its installer console as an installer would, and
opens its shell UART.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import serial

from dvrlink.broker.state import BrokerInfo
from dvrlink.protocol.identity import b64encode_key
from hil.netlab.lab import NetlabError, namespaces, run_command
from hil.qemu.boot import BootOptions, Guest
from hil.qemu.build import Image
from hil.qemu.host import BIN
from hil.qemu.rigconfig import Value, with_values
from hil.qemu.targets import Target
from hil.rig import PowerSpec, Rig, ShellSpec

INSTALLER_CHARDEV = "installer"
"""QEMU's id of the installer console's chardev (``info chardev`` names its PTY)."""
_ESCAPE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\^_])")


class BoardError(Exception):
    """The board did not do what was asked (power, shell, console); says what was seen and what to do."""


class Shell(Protocol):
    """A root shell on the board."""

    def run(self, command: str, timeout: float = 120.0) -> str:
        """Run ``command``; its output (stdout and stderr as the terminal shows them)."""
        ...


class Power(Protocol):
    """A board's power switch."""

    def cycle(self) -> None:
        """Switch the board off and on again."""
        ...


def broker_namespace(rig: Rig) -> str | None:
    """The network namespace the rig's broker runs in: ``[network] name`` for ``kind =
    "namespace"`` (the board's cable is there, so is the broker, at ``host_address``); None, this
    host's own namespace, for QEMU's user network and a bench board on one of this host's NICs."""
    return rig.network.name if rig.network.kind == "namespace" else None


def viewer_reaches_broker(rig: Rig) -> bool:
    """Whether a viewer on this host reaches the rig's broker (at 127.0.0.1): not when the
    broker runs inside the board's namespace (a viewer in there is not wired yet)."""
    return broker_namespace(rig) is None


def check_broker_namespace(name: str, listed: Callable[[], list[str]] = namespaces) -> None:
    """The board's namespace exists; its loopback goes up (the broker's own clients use it).

    Raises:
        BoardError: no such namespace (says how to make one), or ``ip`` failed.
    """
    if name not in listed():
        raise BoardError(
            f"[network] name = {name!r}: no such network namespace; create it and move the board's "
            f"NIC into it (ip netns add {name}; ip link set <nic> netns {name}; give it host_address), "
            "or use kind = 'interface'"
        )
    try:
        run_command(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
    except NetlabError as exc:
        raise BoardError(f"namespace {name}: {exc}") from None


def installer_console_args(chardev: str = INSTALLER_CHARDEV) -> tuple[str, ...]:
    """QEMU arguments for the installer console: a ``pci-serial`` UART (the guest's 8250_pci
    driver names it ttyS0 when it is the only one) on a host PTY with no reader until a test opens it."""
    return ("-chardev", f"pty,id={chardev}", "-device", f"pci-serial,chardev={chardev}")


def guest_config(image_config: str, rig: Rig, broker_host: str, udp_port: int, public_key: bytes) -> str:
    """The image's dvrlinkd.toml with the rig's serial, the host's broker and the installer console.

    Raises:
        ValueError: the config lacks a section to set (hil.qemu.rigconfig.with_values).
    """
    if not re.search(r"^\s*\[console\]", image_config, re.M):
        image_config = image_config.rstrip("\n") + "\n\n[console]\n"
    values: dict[str, Mapping[str, Value]] = {
        "device": {"serial": rig.serial},
        "broker": {"host": broker_host, "port": udp_port, "public_key": b64encode_key(public_key)},
        "console": {"port": rig.console.board_port, "baud": rig.console.baud},
    }
    return with_values(image_config, values)


class QemuPower:
    """Power for an emulated board: the QEMU monitor's ``system_reset``."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest

    def cycle(self) -> None:
        self.guest.monitor("system_reset")


class CommandPower:
    """Power through commands on this host: a USB relay, a GPIO line."""

    def __init__(self, spec: PowerSpec, sleep: Callable[[float], None] = time.sleep) -> None:
        self.spec = spec
        self._sleep = sleep

    def _switch(self, argv: tuple[str, ...], what: str) -> None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BoardError(
                f"power {what}: {' '.join(argv)} did not run: {exc}; check [power] {what}"
            ) from None
        if done.returncode != 0:
            raise BoardError(
                f"power {what}: {' '.join(argv)} exited with {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()}; check [power] {what} and the relay's cable"
            )

    def cycle(self) -> None:
        self._switch(self.spec.off, "off")
        self._sleep(self.spec.off_s)  # the board must stay unpowered this long: a hardware need
        self._switch(self.spec.on, "on")


class ManualPower:
    """Power by the operator: ``ask`` shows the request and returns once it is done."""

    def __init__(self, spec: PowerSpec, ask: Callable[[str], None]) -> None:
        self.spec = spec
        self._ask = ask

    def cycle(self) -> None:
        self._ask(f"switch the board off, wait {self.spec.off_s:g} s, switch it on, then press Enter")


def ask_on_terminal(message: str) -> None:
    """Ask the operator on the controlling terminal (pytest's capture does not reach it).

    Raises:
        BoardError: there is no terminal (a CI run): a manual rig needs an operator.
    """
    try:
        with open("/dev/tty", "r+") as tty:
            tty.write(f"\n[rig] {message} ")
            tty.flush()
            tty.readline()
    except OSError as exc:
        raise BoardError(
            f"[power] kind = 'manual' needs an operator at a terminal ({exc}): run pytest from one, "
            "or give the rig a power command"
        ) from None


class SerialShell:
    """A root shell on a board's UART, opened with pyserial; every byte read is logged."""

    def __init__(self, spec: ShellSpec, log: Path) -> None:
        self.spec = spec
        self.log = log
        self._port: serial.SerialBase | None = None
        self._text = ""

    def open(self, timeout: float) -> None:
        """Open the port and wait for the shell's prompt.

        Raises:
            BoardError: the port cannot be opened, a login prompt shows, or no prompt in ``timeout`` s.
        """
        try:
            self._port = serial.serial_for_url(self.spec.port, baudrate=self.spec.baud, timeout=0.2)
        except (serial.SerialException, ValueError) as exc:
            raise BoardError(
                f"cannot open the board's shell UART {self.spec.port}: {exc}; "
                "check [shell] port and the cable"
            ) from None
        self._write("\x15\n")  # Ctrl-U drops a half-typed line
        seen = self._read_until(re.compile(rf"({self.spec.prompt})|(login: ?$)", re.M), timeout, 0)
        if seen.group(2):
            raise BoardError(
                f"{self.spec.port} shows a login prompt: give the board's image a root autologin on "
                "that UART (the QEMU rig's serial-getty drop-in does it) or log in once by hand"
            )
        self.run("stty -echo; export SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat", timeout)

    def _write(self, text: str) -> None:
        port = self._port
        assert port is not None, "open() first"
        port.write(text.encode())

    def _read_until(self, regex: re.Pattern[str], timeout: float, start: int) -> re.Match[str]:
        port = self._port
        assert port is not None, "open() first"
        deadline = time.monotonic() + timeout
        with self.log.open("a", errors="replace") as log:
            while True:
                if found := regex.search(self._text, start):
                    return found
                if time.monotonic() > deadline:
                    tail = "\n".join(self._text.splitlines()[-15:])
                    raise BoardError(
                        f"no output matching {regex.pattern!r} on {self.spec.port} within {timeout} s; "
                        f"last lines:\n{tail}"
                    )
                data = port.read(4096)
                if data:
                    raw = data.decode(errors="replace")
                    log.write(raw)
                    log.flush()
                    self._text += _ESCAPE.sub("", raw).replace("\r", "")

    def run(self, command: str, timeout: float = 120.0) -> str:
        """Run ``command`` between echoed markers; its output.

        Raises:
            BoardError: no end marker within ``timeout`` s.
        """
        tag = f"{os.getpid()}{time.monotonic_ns() % 10**9}"
        start = len(self._text)
        self._write(f"echo @@B{tag}; {command}; echo @@E{tag}:$?\n")
        # Each marker must end its line: ``$`` also matches at the end of the text read so far,
        # where a partly read echo of the command line or exit status can be (see hil.qemu.boot).
        begin = self._read_until(re.compile(rf"@@B{tag}\n", re.M), timeout, start)
        end = self._read_until(re.compile(rf"^@@E{tag}:(\d+)\n", re.M), timeout, begin.end())
        return self._text[begin.end() : end.start()].strip("\n")

    def close(self) -> None:
        port = self._port
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()


def status_document(text: str) -> dict[str, object]:
    """What ``dvrlinkd status --json`` printed on a board's shell, as a JSON object.

    Raises:
        AssertionError: it printed no JSON object (quoted).
    """
    try:
        doc = json.loads(text)
    except ValueError:
        raise AssertionError(f"dvrlinkd status --json printed no JSON:\n{text}") from None
    if not isinstance(doc, dict):
        raise AssertionError(f"dvrlinkd status --json printed no object:\n{text}")
    return doc


@dataclass
class Board:
    """A switched-on board: see the module docstring."""

    rig: Rig
    shell: Shell
    power: Power
    console_port: str
    """The host's end of the installer console, for ``dvrlink ... --port``."""
    broker_host: str
    """The host's broker as the board reaches it."""
    powered_at: float
    """``time.monotonic()`` when the board was switched on."""
    delivered_config: bytes | None = None
    """The whole dvrlinkd.toml handed to the board (QEMU's fw_cfg), or None (set over the console)."""
    guest: Guest | None = None
    ready_check: Callable[[float], None] | None = None
    registered_s: float = 0.0
    """From power on to the first registration at the host's broker (set by whoever waited)."""
    closers: list[Callable[[], object]] = field(default_factory=list)

    @property
    def serial(self) -> str:
        return self.rig.serial

    def ready(self, timeout: float) -> None:
        """Wait until the root shell answers (a QEMU guest's autologin); at once on a bench board.

        Raises:
            BootError: no shell within ``timeout`` s.
        """
        if self.ready_check is not None:
            self.ready_check(timeout)

    def run(self, command: str, timeout: float = 120.0) -> str:
        """A command on the board's root shell; its output."""
        return self.shell.run(command, timeout)

    def status(self) -> dict[str, object]:
        """``dvrlinkd status --json`` on the board.

        Raises:
            AssertionError: it printed no JSON object (quoted).
        """
        return status_document(self.run("dvrlinkd status --json"))

    def restart_daemon(self, timeout: float = 600.0) -> None:
        """Restart dvrlinkd (systemd, or BusyBox's init script) to apply a changed config, and
        wait until it has registered again.

        Raises:
            AssertionError: the restart command failed, or no new registration within
                ``timeout`` s (the last status is quoted).
        """
        before = _registered_at(self._status_or_none() or {})
        restarted = self.run(RESTART_DAEMON, timeout=300)
        assert restarted.endswith("restarted"), f"restarting dvrlinkd printed {restarted!r}"

        def registered() -> bool:
            status = self._status_or_none()  # None while it starts: no status file yet
            return status is not None and _registered_at(status) > before and status.get("state") == "online"

        def seen() -> object:
            log = self.run(
                "journalctl -u dvrlinkd -n 15 --no-pager -o cat 2>/dev/null || tail -n 15 /var/log/messages"
            )
            return f"{self._status_or_none()}; its log ends:\n{log}"

        wait_until("dvrlinkd registered again after its restart", registered, timeout, seen)

    def _status_or_none(self) -> dict[str, object] | None:
        try:
            return self.status()
        except AssertionError:
            return None

    def close(self) -> None:
        """Stop what the rig started (QEMU, open ports); a bench board stays on."""
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                closer()
        self.closers.clear()


RESTART_DAEMON = (
    "if command -v systemctl >/dev/null; then systemctl restart dvrlinkd; "
    "else /etc/init.d/S95dvrlinkd restart >/dev/null 2>&1; fi; echo restarted"
)


def _registered_at(status: Mapping[str, object]) -> float:
    value = status.get("registered_at")
    return float(value) if isinstance(value, (int, float)) else 0.0


def wait_until(what: str, check: Callable[[], bool], timeout: float, seen: Callable[[], object]) -> None:
    """Poll ``check`` once a second until it holds.

    Raises:
        AssertionError: it did not within ``timeout`` s; says ``what`` and the last ``seen()``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:g} s; last seen: {seen()}")


def qemu_installer_pty(guest: Guest, chardev: str = INSTALLER_CHARDEV) -> str:
    """The host PTY QEMU made for the installer console (from the monitor's ``info chardev``).

    Raises:
        BoardError: the monitor names no PTY for ``chardev``.
    """
    info = guest.monitor("info chardev")
    found = re.search(rf"^{re.escape(chardev)}: filename=pty:(\S+)", info.replace("\r", ""), re.M)
    if found is None:
        raise BoardError(f"QEMU's monitor names no PTY for chardev {chardev!r}; info chardev said:\n{info}")
    return found.group(1)


def start_qemu_board(
    rig: Rig,
    target: Target,
    image: Image,
    config_text: str,
    run_dir: Path,
    extra_args: tuple[str, ...] = (),
    nic: str = "virtio-net-pci",
) -> Board:
    """Boot ``image`` with ``config_text`` as its dvrlinkd.toml and the installer console on a PTY
    (``nic``: ``BootOptions.nic``).

    The shell is the board console: ``Board.ready`` waits for its root shell.

    Raises:
        BootError: QEMU did not start. BoardError: no PTY for the installer console.
    """
    config = run_dir / "dvrlinkd.toml"
    config.write_text(config_text)
    options = BootOptions(
        mem_mb=rig.board.mem_mb or target.default_mem_mb,
        config=config,
        extra_args=(*installer_console_args(), *extra_args),
        nic=nic,
    )
    guest = Guest(target, image, options, run_dir)
    guest.start()
    board = Board(
        rig=rig,
        shell=guest.console,
        power=QemuPower(guest),
        console_port="",
        broker_host=rig.network.host_address,
        powered_at=guest.started,
        delivered_config=config.read_bytes(),
        guest=guest,
        ready_check=guest.login,
        closers=[guest.stop],
    )
    try:
        board.console_port = qemu_installer_pty(guest)
    except BaseException:
        board.close()
        raise
    return board


def provision_broker(
    port: str, baud: int, broker_host: str, info: BrokerInfo, timeout: float, env: Mapping[str, str]
) -> dict[str, object]:
    """``dvrlink provision --port`` with the broker's host, UDP port and key, retried until the
    board's console answers (it may still be booting); the JSON it printed.

    Raises:
        BoardError: no success within ``timeout`` s; quotes the last answer.
    """
    argv = [
        str(BIN / "dvrlink"), "provision", "--port", port, "--baud", str(baud), "--timeout", "10",
        "--broker", f"{broker_host}:{info.udp_port}",
        "--broker-key", b64encode_key(info.public_key), "--json",
    ]  # fmt: skip
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=dict(env))
        if done.returncode == 0:
            doc = json.loads(done.stdout)
            assert isinstance(doc, dict), done.stdout
            return doc
        last = (done.stderr or done.stdout).strip()
        # A port that is not there yet (a USB adapter re-enumerating) fails at once: pace the retries.
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    raise BoardError(
        f"dvrlink provision --port {port} did not succeed within {timeout} s; last answer: {last}; "
        "check [console] host_port and board_port and that dvrlinkd runs on the board"
    )


def start_bench_board(
    rig: Rig, info: BrokerInfo, run_dir: Path, env: Mapping[str, str], ask: Callable[[str], None]
) -> Board:
    """Power-cycle a bench board, set the broker over its installer console, open its shell.

    Raises:
        BoardError: the power switch, the console or the shell failed (says which and what to do).
    """
    spec = rig.power
    power: Power = CommandPower(spec) if spec.kind == "command" else ManualPower(spec, ask)
    power.cycle()
    powered = time.monotonic()
    provision_broker(
        rig.console.host_port, rig.console.baud, rig.network.host_address, info, rig.board.boot_timeout_s, env
    )
    shell = SerialShell(rig.shell, run_dir / "shell.log")
    shell.open(rig.board.boot_timeout_s)
    return Board(
        rig=rig,
        shell=shell,
        power=power,
        console_port=rig.console.host_port,
        broker_host=rig.network.host_address,
        powered_at=powered,
        closers=[shell.close],
    )
