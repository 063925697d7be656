"""The modem emulator wired to a bench board: the board's own dvrlinkd and pppd dial it over a UART.

A rig file with ``[modem] kind = "emulator"`` on a bench board names two ends of one USB-UART
cable: ``board_port``, the board's UART where a SIM800-class modem would sit (its dvrlinkd's
``[modem] port``), and ``host_port``, this host's end, where :class:`hil.qemu.modem.GuestModem`
runs the emulator (``port=``) instead of on a PTY for QEMU. Behind ``ATD*99#`` the path is the
QEMU rig's: the emulator's PPP server, a TUN device into the carrier namespace, and the broker
in a namespace behind it (192.0.2.10), which only the modem reaches::

    board dvrlinkd + pppd ── board_port ══ USB-UART ══ host_port ── emulator ── TUN ── carrier ── broker

:func:`start_bench_modem_board` power-cycles the board (a known state, as a fresh QEMU guest has),
opens its root shell, keeps a copy of its dvrlinkd.toml and writes one with the modem and the
carrier's broker, installs the product's pppd drop-in (:func:`hil.qemu.modem.guest_setup`),
removes the board's default routes (so the broker is reachable over the modem only, as in the
QEMU modem guest, which has no LAN) and restarts dvrlinkd. :meth:`BenchModemBoard.restore` puts
the config, the drop-in and the routes back. Boards with systemd only, for now (the drop-in and
the journal the scenarios read are systemd's).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dvrlink.protocol.identity import b64encode_key
from hil.board import BoardError, CommandPower, ManualPower, Power, SerialShell, Shell
from hil.qemu.modem import DROP_IN_PATH, GuestModem, guest_setup, modem_config
from hil.rig import Rig

BOARD_CONFIG = "/etc/dvrlink/dvrlinkd.toml"
"""The dvrlinkd.toml of the image on the board (the Buildroot overlay's path)."""
SAVED_SUFFIX = ".hil-saved"
"""The copy of the board's own config while the modem scenarios run (kept if a run dies)."""
CHUNK = 512
"""Characters per line typed into the board's shell (a tty's line buffer holds 4095)."""


def modem_refusal(rig: Rig) -> str | None:
    """Why the modem scenarios (SIM insert, PPP, faults) cannot run on ``rig``; None when they can."""
    if rig.modem.kind == "none":
        return (
            f"{rig.name}: [modem] kind = 'none': no modem scenarios (a rig with kind = 'emulator' runs "
            "them: rigs/qemu-arm64.toml, or a bench board with a USB-UART cable to its modem UART)"
        )
    if rig.modem.kind == "board":
        return (
            f"{rig.name}: [modem] kind = 'board' (the board's own modem): these scenarios insert a SIM, "
            "drop calls and silence the modem through the emulator, which a real modem does not do on "
            "cue; for them give the rig [modem] kind = 'emulator' with a USB-UART cable to the board's "
            "modem UART (docs/hil.md, 'The modem on a bench board')"
        )
    if rig.board.init != "systemd":
        return (
            f"{rig.name} runs {rig.board.init} init: the modem scenarios install the systemd drop-in "
            "for pppd and read dvrlinkd's journal (systemd boards only, so far)"
        )
    return None


def ecm_refusal(rig: Rig) -> str | None:
    """Why the ECM scenarios cannot run on ``rig`` (beyond :func:`modem_refusal`); None when they can."""
    if not rig.emulated:
        return (
            f"{rig.name}: the ECM modem's network function is a QEMU NIC whose link the emulator "
            "raises and drops through QEMU's monitor; a bench board has no such NIC (QEMU rigs only)"
        )
    return None


def write_file_commands(path: str, data: bytes, chunk: int = CHUNK) -> list[str]:
    """Shell lines that write ``data`` to ``path`` through a base64 file, each line short enough
    for a tty's line buffer; the last one replaces ``path``'s contents (owner and mode kept)."""
    encoded = base64.b64encode(data).decode()
    staging = f"/tmp/dvrlink-hil-{Path(path).name}.b64"
    lines = [f": > {staging}"]
    lines += [f"printf %s {encoded[i : i + chunk]} >> {staging}" for i in range(0, len(encoded), chunk)]
    lines.append(f"base64 -d {staging} > {staging}.out && cat {staging}.out > {path} && rm -f {staging}*")
    return lines


@dataclass
class BenchModemBoard:
    """A bench board whose dvrlinkd dials the emulator; ``run`` types into its root shell."""

    shell: Shell
    close_shell: Callable[[], None] = lambda: None
    routes: list[str] = field(default_factory=list)
    """The board's default routes before the scenarios (``ip -4 route show default`` lines)."""
    had_drop_in: bool = True

    def run(self, command: str, timeout: float = 120.0) -> str:
        return self.shell.run(command, timeout)

    def restore(self) -> None:
        """Put back the board's config, its drop-in and routes, restart dvrlinkd, close the shell.

        Raises:
            BoardError: the shell did not answer (says what to put back by hand).
        """
        try:
            saved = f"{BOARD_CONFIG}{SAVED_SUFFIX}"
            steps = [f"if [ -e {saved} ]; then cat {saved} > {BOARD_CONFIG} && rm -f {saved}; fi"]
            if not self.had_drop_in:
                steps.append(f"rm -f {DROP_IN_PATH}")
            steps.append("systemctl daemon-reload")
            steps += [f"ip -4 route replace {route}" for route in self.routes]
            steps.append("systemctl restart --no-block dvrlinkd")
            done = self.run("; ".join(steps) + "; echo restored", 180)
            if not done.endswith("restored"):
                raise BoardError(f"restoring the board after the modem scenarios said:\n{done}")
        except BoardError as exc:
            raise BoardError(
                f"{exc}\nput back by hand: {BOARD_CONFIG}{SAVED_SUFFIX} as {BOARD_CONFIG}, the default "
                f"routes {self.routes}, and restart dvrlinkd"
            ) from None
        finally:
            self.close_shell()


def start_bench_modem_board(
    rig: Rig,
    modem: GuestModem,
    run_dir: Path,
    *,
    profile: str,
    data_link: str,
    ask: Callable[[str], None],
) -> BenchModemBoard:
    """Power-cycle ``rig``'s board, point its dvrlinkd at ``modem`` (running on the rig's
    ``[modem] host_port``) and the carrier's broker, and restart it without waiting for it.

    Raises:
        BoardError: the power switch or the shell failed, or a setup step on the board did (its
        output quoted). ValueError: the board's config cannot take the modem settings.
    """
    if modem.broker is None:
        raise BoardError("the modem rig has no broker: start the board inside `with GuestModem(...)`")
    spec = rig.power
    power: Power = CommandPower(spec) if spec.kind == "command" else ManualPower(spec, ask)
    power.cycle()
    shell = SerialShell(rig.shell, run_dir / "shell.log")
    shell.open(rig.board.boot_timeout_s)
    board = BenchModemBoard(shell, shell.close)
    point_at_modem(board, rig, modem, profile=profile, data_link=data_link)
    return board


def point_at_modem(
    board: BenchModemBoard, rig: Rig, modem: GuestModem, *, profile: str, data_link: str
) -> None:
    """On a running board: keep its config, write one for the modem on ``rig``'s ``board_port``
    and ``modem``'s broker, install the pppd drop-in, remove the default routes, restart dvrlinkd.
    On failure the board is restored (:meth:`BenchModemBoard.restore`).

    Raises:
        BoardError: a step on the board failed (its output quoted). ValueError: the board's config
        cannot take the modem settings.
    """
    if modem.broker is None:
        raise BoardError("the modem rig has no broker: start the board inside `with GuestModem(...)`")
    try:
        saved = f"{BOARD_CONFIG}{SAVED_SUFFIX}"
        kept = board.run(f"[ -e {saved} ] || cp -p {BOARD_CONFIG} {saved}; base64 {saved}")
        base = base64.b64decode("".join(kept.split())).decode()
        if not re.search(r"^\s*\[modem\]", base, re.M):
            base = base.rstrip("\n") + "\n\n[modem]\n"
        info = modem.broker.info
        text = modem_config(
            base,
            serial=rig.serial,
            broker_port=info.udp_port,
            broker_key_b64=b64encode_key(info.public_key),
            profile=profile,
            data_link=data_link,
            port=rig.modem.board_port,
        )
        for line in write_file_commands(BOARD_CONFIG, text.encode()):
            board.run(line)
        written = board.run(f"sha256sum {BOARD_CONFIG}").split()
        if not written or written[0] != hashlib.sha256(text.encode()).hexdigest():
            raise BoardError(f"{BOARD_CONFIG} on the board is not the config written: {written}")
        board.had_drop_in = board.run(f"[ -e {DROP_IN_PATH} ] && echo had || echo none") == "had"
        board.routes = [r for r in board.run("ip -4 route show default").splitlines() if r.strip()]
        setup = guest_setup(pppd_as_root=data_link == "ppp")
        done = board.run(
            f"{setup} && while ip -4 route del default 2>/dev/null; do :; done;"
            " systemctl restart --no-block dvrlinkd && echo set-up",
            180,
        )
        if not done.endswith("set-up"):
            raise BoardError(f"the board's modem setup failed:\n{done}")
    except BaseException:
        board.restore()
        raise
