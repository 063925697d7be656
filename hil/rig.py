"""A rig file: which board the HIL suite runs on, and how the host reaches it.

``pytest tests/hil --rig rigs/qemu-arm64.toml`` runs the scenarios on an emulated board; the same
command with a bench board's rig file runs them on real hardware. The file names:

- the board: emulated (``kind = "qemu"``, with its architecture) or on the bench;
- the serial the board registers under (its label's, ``[device] serial``);
- the root shell the tests drive (``systemctl``, ``kill``): the QEMU board console, or a UART;
- the installer console ``dvrlinkd`` serves (``[console] port`` on the board) and the host's end
  of the cable that ``dvrlink provision --port`` / ``dvrlink pair --port`` open;
- the modem: the emulator (on a QEMU serial port, or on a USB-UART cable to a bench board's
  modem UART), the board's own modem, or none;
- the network: QEMU's user network, a namespace, or a real interface of the host, and the
  address the board reaches the host's broker at;
- power control: the QEMU monitor, a command (a USB relay, a GPIO line), or ``manual`` (the
  operator is asked);
- how the board gets the broker's settings: QEMU's fw_cfg (a whole config at boot) or the
  installer console (``dvrlink provision``, as on site).

``load_rig`` reads and checks it once; every mistake is a ``RigError`` that names the file, the
key, what was seen and what to write instead. docs/hil.md ("Rig files") shows a bench board's file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

BoardKind = Literal["qemu", "bench"]
InitKind = Literal["systemd", "busybox"]
ShellKind = Literal["qemu-console", "serial"]
ModemKind = Literal["emulator", "board", "none"]
NetworkKind = Literal["qemu-user", "namespace", "interface"]
PowerKind = Literal["qemu-monitor", "command", "manual"]
ConfigDelivery = Literal["fw_cfg", "console"]

QEMU_PTY = "qemu-pty"
"""``[console] host_port`` of an emulated board: QEMU makes a PTY for the guest's UART."""
QEMU_USER_HOST = "10.0.2.2"
"""The host as a guest on QEMU's user network sees it."""
QEMU_ARCHES = ("arm64", "armhf")
QEMU_INIT = {"arm64": "systemd", "armhf": "busybox"}
"""The init each QEMU board's image runs (hil.qemu's targets), the default of ``[board] init``."""
SERIAL_RE = re.compile(r"^[A-Z0-9-]{3,32}$")
"""dvrlinkd's serial format: 3-32 characters of A-Z, 0-9 and '-'."""


class RigError(ValueError):
    """A rig file that cannot be used; the message names the file, the key and what to do."""


@dataclass(frozen=True, slots=True)
class BoardSpec:
    """``[board]``: an emulated board (``qemu``, with ``arch`` and ``mem_mb``) or a bench board."""

    kind: BoardKind
    arch: str = ""
    """QEMU only: ``arm64`` or ``armhf`` (hil.qemu's targets)."""
    mem_mb: int | None = None
    """QEMU only: guest RAM in MiB; None: the target's default."""
    init: InitKind = "systemd"
    """The board's init: ``systemd`` (dvrlinkd.service) or ``busybox`` (S95dvrlinkd)."""
    boot_timeout_s: float = 900.0
    """From power on to registered at the broker."""


@dataclass(frozen=True, slots=True)
class ShellSpec:
    """``[shell]``: the root shell the tests type commands into."""

    kind: ShellKind
    port: str = ""
    """serial only: the host's device for the board's debug UART, e.g. /dev/ttyUSB1."""
    baud: int = 115200
    prompt: str = r"[#$] $"
    """serial only: a regular expression matching the end of the shell's prompt."""


@dataclass(frozen=True, slots=True)
class ConsoleSpec:
    """``[console]``: the installer console (docs/console.md)."""

    board_port: str
    """The board's name for the UART, written to ``[console] port`` of its dvrlinkd.toml."""
    host_port: str
    """The host's end: ``qemu-pty``, a device (/dev/ttyUSB0) or a pyserial URL (socket://...)."""
    baud: int = 115200


@dataclass(frozen=True, slots=True)
class ModemSpec:
    """``[modem]``: the emulator (hil/modememu on this host, at the far end of the board's modem
    UART), the board's own modem, or none."""

    kind: ModemKind
    port: str = ""
    """board only: the modem's AT port on the board, as its dvrlinkd.toml names it; empty: found by USB ID."""
    host_port: str = ""
    """emulator only: this host's end of the board's modem UART, where the emulator answers:
    ``qemu-pty`` (QEMU: a PTY wired to the guest's ``pci-serial``), or a device or pyserial URL
    (a bench board: the USB-UART cable to the UART the board's modem would sit on)."""
    board_port: str = ""
    """emulator only: that UART on the board, the ``[modem] port`` its dvrlinkd and pppd use."""


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """``[network]``: how the board's network reaches the host's broker."""

    kind: NetworkKind
    name: str = ""
    """namespace: the namespace the board's cable is in; interface: the host's NIC on the bench."""
    host_address: str = ""
    """The address the board reaches the host's broker at (10.0.2.2 on QEMU's user network)."""


@dataclass(frozen=True, slots=True)
class PowerSpec:
    """``[power]``: how the board is switched off and on."""

    kind: PowerKind
    on: tuple[str, ...] = ()
    """command only: the command that switches the board on (argv)."""
    off: tuple[str, ...] = ()
    """command only: the command that switches it off (argv)."""
    off_s: float = 3.0
    """command and manual: how long the board stays off in a power cycle."""


@dataclass(frozen=True, slots=True)
class Rig:
    """A rig file, checked. ``source`` is the file it came from."""

    name: str
    serial: str
    board: BoardSpec
    shell: ShellSpec
    console: ConsoleSpec
    modem: ModemSpec
    network: NetworkSpec
    power: PowerSpec
    config_delivery: ConfigDelivery
    source: Path

    @property
    def emulated(self) -> bool:
        return self.board.kind == "qemu"


class _Section:
    """One table of the file; takes its keys one by one, then complains about the rest."""

    def __init__(self, file: Path, name: str, table: object, *, required: bool = True) -> None:
        self.file = file
        self.name = name
        if table is None:
            if required:
                raise RigError(f"{file}: no [{name}] table: add one (docs/hil.md, 'Rig files')")
            table = {}
        if not isinstance(table, dict):
            raise RigError(f"{file}: {name} is a {type(table).__name__}: it must be a [{name}] table")
        self.table: dict[str, Any] = dict(table)
        self.taken: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.file}: [{self.name}] {key}" if self.name else f"{self.file}: {key}"

    def get(self, key: str) -> object:
        self.taken.add(key)
        return self.table.get(key)

    def has(self, key: str) -> bool:
        return key in self.table

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.get(key)
        if value is None:
            if default is not None:
                return default
            raise RigError(f"{self.where(key)} is missing: set it to one of {_listed(choices)}")
        if value not in choices:
            raise RigError(f"{self.where(key)} = {value!r} is not known: use one of {_listed(choices)}")
        return str(value)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.get(key)
        if value is None:
            if default is not None:
                return default
            raise RigError(f'{self.where(key)} is missing: add {key} = "..."')
        if not isinstance(value, str):
            raise RigError(f"{self.where(key)} = {value!r} is a {type(value).__name__}: write it as a string")
        return value

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RigError(f"{self.where(key)} = {value!r} is not a number: write e.g. {key} = {default:g}")
        if not low <= value <= high:
            raise RigError(f"{self.where(key)} = {value!r} is out of range: use {low:g} to {high:g}")
        return float(value)

    def integer(self, key: str, default: int | None, *, low: int, high: int) -> int | None:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise RigError(f"{self.where(key)} = {value!r} is not a whole number: write e.g. {key} = {low}")
        if not low <= value <= high:
            raise RigError(f"{self.where(key)} = {value!r} is out of range: use {low} to {high}")
        return value

    def argv(self, key: str) -> tuple[str, ...]:
        value = self.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise RigError(
                f"{self.where(key)} = {value!r}: write the command as a list of words, "
                f'e.g. {key} = ["usbrelay", "BITFT_1=1"]'
            )
        return tuple(value)

    def only(self, keys: tuple[str, ...], because: str) -> None:
        """Refuse keys of this table that make no sense here (``because`` says why)."""
        for key in keys:
            if key in self.table:
                raise RigError(f"{self.where(key)}: not used {because}; remove it")

    def done(self) -> None:
        """Refuse keys nobody took: a typo must not be ignored silently."""
        unknown = sorted(set(self.table) - self.taken)
        if unknown:
            known = _listed(tuple(sorted(self.taken))) if self.taken else "none"
            raise RigError(f"{self.where(unknown[0])} is not a rig key: the keys here are {known}")


def _listed(choices: tuple[str, ...]) -> str:
    return ", ".join(repr(c) for c in choices)


def _board(top: _Section) -> BoardSpec:
    s = _Section(top.file, "board", top.get("board"))
    kind = s.choice("kind", ("qemu", "bench"))
    if kind == "qemu":
        arch = s.choice("arch", QEMU_ARCHES)
        mem = s.integer("mem_mb", None, low=64, high=16384)
    else:
        s.only(("arch", "mem_mb"), "for a bench board (they describe an emulated one)")
        arch, mem = "", None
    init = s.choice("init", ("systemd", "busybox"), default=QEMU_INIT.get(arch, "systemd"))
    timeout = s.number("boot_timeout_s", 900.0, low=1.0, high=86400.0)
    s.done()
    return BoardSpec(
        kind="qemu" if kind == "qemu" else "bench",
        arch=arch,
        mem_mb=mem,
        init="busybox" if init == "busybox" else "systemd",
        boot_timeout_s=timeout,
    )


def _shell(top: _Section, board: BoardSpec) -> ShellSpec:
    s = _Section(top.file, "shell", top.get("shell"))
    kind = s.choice("kind", ("qemu-console", "serial"))
    if kind == "qemu-console":
        if board.kind != "qemu":
            raise RigError(
                f"{s.where('kind')} = 'qemu-console' needs [board] kind = 'qemu': "
                "a bench board's shell is kind = 'serial' with its port"
            )
        s.only(("port", "baud", "prompt"), "with kind = 'qemu-console' (the rig drives QEMU's console)")
        s.done()
        return ShellSpec(kind="qemu-console")
    port = s.text("port")
    baud = s.integer("baud", 115200, low=50, high=4_000_000)
    prompt = s.text("prompt", r"[#$] $")
    try:
        re.compile(prompt)
    except re.error as exc:
        raise RigError(f"{s.where('prompt')} = {prompt!r} is not a regular expression: {exc}") from None
    s.done()
    assert baud is not None
    return ShellSpec(kind="serial", port=port, baud=baud, prompt=prompt)


def _console(top: _Section, board: BoardSpec) -> ConsoleSpec:
    s = _Section(top.file, "console", top.get("console"))
    board_port = s.text("board_port")
    if not board_port.startswith("/dev/"):
        raise RigError(
            f"{s.where('board_port')} = {board_port!r}: give the board's device, e.g. '/dev/ttyS1'"
        )
    host_port = s.text("host_port", QEMU_PTY if board.kind == "qemu" else None)
    if host_port == QEMU_PTY and board.kind != "qemu":
        raise RigError(
            f"{s.where('host_port')} = {QEMU_PTY!r} needs [board] kind = 'qemu': "
            "give the host's end of the cable, e.g. '/dev/ttyUSB0'"
        )
    if not host_port:
        raise RigError(
            f"{s.where('host_port')} is empty: give the host's end of the cable, e.g. '/dev/ttyUSB0'"
        )
    baud = s.integer("baud", 115200, low=50, high=4_000_000)
    s.done()
    assert baud is not None
    return ConsoleSpec(board_port=board_port, host_port=host_port, baud=baud)


QEMU_MODEM_PORT = "/dev/ttyS0"
"""The emulator's port in a QEMU modem guest: its ``pci-serial`` UART, the guest's only 8250."""


def _modem(top: _Section, board: BoardSpec) -> ModemSpec:
    s = _Section(top.file, "modem", top.get("modem"), required=False)
    kind = s.choice("kind", ("emulator", "board", "none"), default="none")
    if kind == "emulator":
        s.only(("port",), "with kind = 'emulator' (its ports are host_port and board_port)")
        return _emulator(s, board)
    port = s.text("port", "") if kind == "board" else ""
    if kind != "board":
        s.only(("port",), f"with kind = {kind!r} (only kind = 'board' names the board's modem port)")
    s.only(("host_port", "board_port"), f"with kind = {kind!r} (they place the emulator: kind = 'emulator')")
    s.done()
    return ModemSpec(kind="board" if kind == "board" else "none", port=port)


def _emulator(s: _Section, board: BoardSpec) -> ModemSpec:
    """``[modem] kind = "emulator"``: on QEMU a PTY on the guest's pci-serial; on a bench board
    this host's end of a USB-UART cable to the board's modem UART."""
    if board.kind == "qemu":
        host_port = s.text("host_port", QEMU_PTY)
        if host_port != QEMU_PTY:
            raise RigError(
                f"{s.where('host_port')} = {host_port!r}: a QEMU board's modem is the emulator's PTY on "
                f"the guest's pci-serial; write host_port = {QEMU_PTY!r} or leave it out"
            )
        board_port = s.text("board_port", QEMU_MODEM_PORT)
        if board_port != QEMU_MODEM_PORT:
            raise RigError(
                f"{s.where('board_port')} = {board_port!r}: the QEMU modem guest's pci-serial UART is "
                f"{QEMU_MODEM_PORT}; write board_port = {QEMU_MODEM_PORT!r} or leave it out"
            )
        s.done()
        return ModemSpec(kind="emulator", host_port=host_port, board_port=board_port)
    host_port = s.text("host_port")
    if host_port == QEMU_PTY:
        raise RigError(
            f"{s.where('host_port')} = {QEMU_PTY!r} needs [board] kind = 'qemu': give this host's end of "
            "the cable to the board's modem UART, e.g. '/dev/ttyUSB1'"
        )
    if not host_port:
        raise RigError(
            f"{s.where('host_port')} is empty: give this host's end of the cable to the board's modem "
            "UART, e.g. '/dev/ttyUSB1'"
        )
    board_port = s.text("board_port")
    if not board_port.startswith("/dev/"):
        raise RigError(
            f"{s.where('board_port')} = {board_port!r}: give the board's device for the modem UART "
            "(its dvrlinkd's [modem] port), e.g. '/dev/ttyS2'"
        )
    s.done()
    return ModemSpec(kind="emulator", host_port=host_port, board_port=board_port)


def _network(top: _Section, board: BoardSpec) -> NetworkSpec:
    s = _Section(top.file, "network", top.get("network"))
    kind = s.choice("kind", ("qemu-user", "namespace", "interface"))
    if kind == "qemu-user":
        if board.kind != "qemu":
            raise RigError(
                f"{s.where('kind')} = 'qemu-user' needs [board] kind = 'qemu': a bench board is "
                "kind = 'interface' (a NIC of this host) or 'namespace'"
            )
        s.only(("name",), "with kind = 'qemu-user'")
        host = s.text("host_address", QEMU_USER_HOST)
        s.done()
        return NetworkSpec(kind="qemu-user", host_address=host)
    if board.kind == "qemu":
        raise RigError(
            f"{s.where('kind')} = {kind!r} needs [board] kind = 'bench' (a board's cable on this host's "
            "NIC, or moved into a namespace): a QEMU board uses kind = 'qemu-user'"
        )
    name = s.text("name")
    if not name:
        raise RigError(f"{s.where('name')} is empty: name the {kind} the board's cable is on")
    host = s.text("host_address")
    if not host:
        raise RigError(f"{s.where('host_address')} is empty: give this host's address as the board sees it")
    s.done()
    return NetworkSpec(kind="namespace" if kind == "namespace" else "interface", name=name, host_address=host)


def _power(top: _Section, board: BoardSpec) -> PowerSpec:
    s = _Section(top.file, "power", top.get("power"))
    kind = s.choice("kind", ("qemu-monitor", "command", "manual"))
    if kind == "qemu-monitor" and board.kind != "qemu":
        raise RigError(
            f"{s.where('kind')} = 'qemu-monitor' needs [board] kind = 'qemu': a bench board is "
            "kind = 'command' (a USB relay, a GPIO line) or 'manual'"
        )
    if kind == "qemu-monitor":
        s.only(("on", "off", "off_s"), "with kind = 'qemu-monitor' (the rig uses QEMU's monitor)")
        s.done()
        return PowerSpec(kind="qemu-monitor")
    if kind == "command":
        on, off = s.argv("on"), s.argv("off")
        for key, value in (("on", on), ("off", off)):
            if not value:
                raise RigError(
                    f"{s.where(key)} is missing: with kind = 'command' give the command that switches "
                    f'the board {key}, e.g. {key} = ["usbrelay", "BITFT_1={1 if key == "on" else 0}"]'
                )
    else:
        s.only(("on", "off"), "with kind = 'manual' (the operator switches the board)")
        on, off = (), ()
    off_s = s.number("off_s", 3.0, low=0.0, high=600.0)
    s.done()
    return PowerSpec(kind="command" if kind == "command" else "manual", on=on, off=off, off_s=off_s)


def _distinct_ports(source: Path, shell: ShellSpec, console: ConsoleSpec, modem: ModemSpec) -> None:
    """The emulator's UART must be a UART of its own, on the board and on this host."""
    if modem.kind != "emulator" or modem.host_port == QEMU_PTY:
        return
    if modem.board_port == console.board_port:
        raise RigError(
            f"{source}: [modem] board_port = {modem.board_port!r} is the installer console's UART too "
            "([console] board_port): the emulator needs a UART of its own on the board"
        )
    for key, used in (("[console] host_port", console.host_port), ("[shell] port", shell.port)):
        if modem.host_port == used:
            raise RigError(
                f"{source}: [modem] host_port = {modem.host_port!r} is also {key}: the emulator needs "
                "its own USB-UART cable to the board's modem UART"
            )


def parse_rig(doc: Mapping[str, object], source: Path) -> Rig:
    """The rig described by ``doc`` (a parsed TOML document) read from ``source``.

    Raises:
        RigError: a key is missing, unknown, of the wrong type or out of range, or two keys
        contradict each other (a QEMU-only key on a bench board); the message names the key.
    """
    top = _Section(source, "", doc)
    name = top.text("name", source.stem)
    serial = top.text("serial")
    if not SERIAL_RE.match(serial):
        raise RigError(
            f"{top.where('serial')} = {serial!r} is not a dvrlink serial: 3-32 characters of A-Z, "
            "0-9 and '-', as on the board's label"
        )
    board = _board(top)
    shell = _shell(top, board)
    console = _console(top, board)
    modem = _modem(top, board)
    _distinct_ports(source, shell, console, modem)
    network = _network(top, board)
    power = _power(top, board)
    cfg = _Section(source, "config", top.get("config"), required=False)
    delivery = cfg.choice(
        "delivery", ("fw_cfg", "console"), default="fw_cfg" if board.kind == "qemu" else "console"
    )
    if delivery == "fw_cfg" and board.kind != "qemu":
        raise RigError(
            f"{cfg.where('delivery')} = 'fw_cfg' needs [board] kind = 'qemu': a bench board gets the "
            "broker's settings over its installer console (delivery = 'console')"
        )
    cfg.done()
    top.done()
    return Rig(
        name=name,
        serial=serial,
        board=board,
        shell=shell,
        console=console,
        modem=modem,
        network=network,
        power=power,
        config_delivery="fw_cfg" if delivery == "fw_cfg" else "console",
        source=source,
    )


def load_rig(path: Path) -> Rig:
    """Read and check the rig file at ``path``.

    Raises:
        RigError: the file is missing, unreadable, not TOML, or describes no usable rig; the
        message names the file (and the line, or the key) and what to do.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RigError(f"{path}: no such rig file: pass one of rigs/*.toml with --rig") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RigError(f"{path}: cannot read the rig file: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RigError(f"{path}: not valid TOML: {exc}; fix that line") from None
    return parse_rig(doc, path)
