"""The installer console on the rig's board, over a real serial line: ``dvrlink provision --port``
and ``dvrlink pair --port`` on the host, ``dvrlinkd``'s console on the board (docs/console.md).

On the QEMU rig the board's UART is an 8250 on QEMU's ``pci-serial`` (the guest's ttyS0, no getty
on it) and the host's end a PTY that QEMU makes; on a bench board, the rig's USB-UART cable. The
scenarios share the session's board (conftest.py): pairing with the code read over the wire and a
forward through that pairing; settings written over the wire and applied without a restart (the
board moves to a second broker on the host, then back); bad input on the wire answered and the
config left as it was.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import serial

from dvrlink.protocol.identity import b64encode_key
from hil.board import Board
from hil.loopback import Viewer, start_forward
from hil.qemu.host import HostBroker

pytestmark = [pytest.mark.hil, pytest.mark.timeout(3600)]

ANSWER_S = "60"
"""dvrlink --timeout per console answer: the board's daemon may be slow under TCG."""
BOUND = 300.0
"""A bound on a board-side wait (re-registration at another broker, a reply on the wire)."""


def console_args(board: Board) -> list[str]:
    return ["--port", board.console_port, "--baud", str(board.rig.console.baud), "--timeout", ANSWER_S]


def wait_status(board: Board, want: Callable[[dict[str, object]], bool], what: str) -> dict[str, object]:
    """``dvrlinkd status --json`` on the board until ``want`` holds (bounded by BOUND)."""
    deadline = time.monotonic() + BOUND
    while True:
        status = board.status()
        if want(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {BOUND} s; last status: {status}")
        board.run("sleep 2")  # the board's clock paces the poll; each round is a console command


def config_digest(board: Board) -> str:
    return board.run("sha256sum /etc/dvrlink/dvrlinkd.toml").split()[0]


@pytest.mark.hil_core
def test_pair_over_the_console_then_forward(
    board: Board, board_httpd: str, logged_in_viewer: Callable[[str], Viewer]
) -> None:
    """``dvrlink pair --port`` reads the serial, code and fingerprint over the wire; the viewer it
    paired then fetches a page from the board through ``dvrlink forward``."""
    if board.guest is not None:
        getty = board.run(f"systemctl is-active serial-getty@{board.rig.console.board_port[5:]}")
        assert getty != "active", f"a getty runs on the installer console {board.rig.console.board_port}"
    viewer = logged_in_viewer("owner-console")
    started = time.monotonic()
    paired = viewer.run("pair", *console_args(board), check=False)
    paired_s = time.monotonic() - started
    said = f"dvrlink pair --port: exit {paired.returncode}\n{paired.stdout}{paired.stderr}"
    assert paired.returncode == 0, said
    assert f"paired {board.serial}" in paired.stdout, paired.stdout + paired.stderr

    page = f"dvrlink-hil console {os.urandom(8).hex()}\n"
    written = board.run(f"echo '{page.strip()}' > {board_httpd}/console.html && echo written")
    assert written == "written", written
    forward = start_forward(viewer, board.serial, 80, timeout=120)
    try:
        url = f"http://127.0.0.1:{forward.local_port}/console.html"
        with urllib.request.urlopen(url, timeout=120) as reply:
            body = reply.read().decode()
    finally:
        code = forward.stop()
    assert body == page, f"the page through the forward ({forward.path}): {body!r}"
    assert code == 0, f"dvrlink forward exited with {code}"
    print(f"\ndvrlink pair --port {board.console_port}: {paired_s:.1f} s", file=sys.stderr)


@pytest.fixture
def second_broker(broker_netns: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostBroker]:
    """Another broker where the board reaches it (this host, or the board's namespace)."""
    broker = HostBroker.start(tmp_path_factory.mktemp("second-broker"), netns=broker_netns)
    try:
        yield broker
    finally:
        code = broker.stop()
    assert code == 0, f"the second dvrlink-broker exited with {code}:\n" + "".join(broker.process.lines[-20:])


def provision(board: Board, viewer_home: Viewer, *settings: str) -> dict[str, object]:
    done = viewer_home.run("provision", *console_args(board), *settings, "--json", check=False)
    assert done.returncode == 0, f"dvrlink provision: exit {done.returncode}\n{done.stdout}{done.stderr}"
    doc = json.loads(done.stdout)
    assert isinstance(doc, dict), done.stdout
    return doc


def test_provision_moves_the_board_to_another_broker_without_a_restart(
    board: Board, rig_broker: HostBroker, second_broker: HostBroker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``dvrlink provision --port`` shows the status, then writes the broker (host, port, key) and
    the APN; the running dvrlinkd applies them: it registers at the second broker with the same
    process, and the config file on the board holds the new values. Then back to the first."""
    installer = Viewer(tmp_path_factory.mktemp("installer"))  # provision needs no login
    shown = provision(board, installer)
    status = shown["status"]
    assert isinstance(status, dict), shown
    assert status["serial"] == board.serial and status["state"] == "online", status
    assert "private" not in json.dumps(shown).lower(), shown
    pid_before = board.run("systemctl show -p MainPID --value dvrlinkd") if board.guest is not None else ""

    new_broker = f"{board.broker_host}:{second_broker.info.udp_port}"
    started = time.monotonic()
    saved = provision(
        board, installer,
        "--broker", new_broker, "--broker-key", b64encode_key(second_broker.info.public_key),
        "--apn", "hil.example",
    )  # fmt: skip
    result = saved["saved"]
    assert isinstance(result, dict) and result["applied"] is True, saved
    assert set(result["changed"]) >= {"broker_port", "broker_public_key", "apn"}, saved
    second_broker.process.wait_for(rf"serial {board.serial} bound to key .* on first registration", BOUND)
    moved_s = time.monotonic() - started
    wait_status(board, lambda s: s.get("broker") == new_broker and s.get("state") == "online", "moved")
    console_status = saved["status"]
    assert isinstance(console_status, dict) and console_status["apn"] == "hil.example", saved
    assert console_status["broker"] == new_broker, saved
    config = board.run("grep -E '^(port|public_key|apn) =' /etc/dvrlink/dvrlinkd.toml")
    assert f"port = {second_broker.info.udp_port}" in config, config
    assert b64encode_key(second_broker.info.public_key) in config and '"hil.example"' in config, config
    if board.guest is not None:
        pid_after = board.run("systemctl show -p MainPID --value dvrlinkd")
        assert pid_after == pid_before, f"dvrlinkd was restarted ({pid_before} -> {pid_after}), not applied"

    back = f"{board.broker_host}:{rig_broker.info.udp_port}"
    provision(board, installer, "--broker", back, "--broker-key", b64encode_key(rig_broker.info.public_key))
    wait_status(board, lambda s: s.get("broker") == back and s.get("state") == "online", "back at the first")
    print(f"\nprovision --broker: saved to registered at the second broker: {moved_s:.1f} s", file=sys.stderr)


class Wire:
    """The host's end of the installer console, opened directly: raw lines in, text out."""

    def __init__(self, port: str, baud: int) -> None:
        self.port = serial.serial_for_url(port, baudrate=baud, timeout=0.2)
        self.seen = ""

    def send(self, data: bytes) -> None:
        self.port.write(data)

    def wait_for(self, pattern: str, start: int) -> re.Match[str]:
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + BOUND
        while not (found := regex.search(self.seen, start)):
            if time.monotonic() > deadline:
                wrote = self.seen[start:]
                raise AssertionError(f"no {pattern!r} on the console within {BOUND} s; it wrote:\n{wrote}")
            self.seen += self.port.read(4096).decode(errors="replace")
        return found

    def reply(self, request: dict[str, object]) -> dict[str, object]:
        start = len(self.seen)
        self.send(json.dumps(request).encode() + b"\r\n")
        # Not anchored: a reply may follow a human-mode prompt on the same line.
        line = self.wait_for(rf'(\{{.*"id": ?{json.dumps(request["id"])}.*\}})\r?$', start).group(1)
        doc = json.loads(line)
        assert isinstance(doc, dict), line
        return doc


def test_bad_input_on_the_wire_gets_a_clear_answer_and_changes_nothing(board: Board) -> None:
    """Garbage, binary noise, another protocol version and a bad value, typed on the real serial
    line: each answered, the config file unchanged, and the console still serving."""
    before = config_digest(board)
    wire = Wire(board.console_port, board.rig.console.baud)
    try:
        wire.send(b"\x15\r")  # Ctrl-U: drop whatever half line the line holds
        at = len(wire.seen)
        wire.send(b"frobnicate the recorder\r")
        wire.wait_for(r"error: unknown command 'frobnicate the recorder': type help", at)
        at = len(wire.seen)
        wire.send(b"\x00\xfe\xff\x81garbage\x9c\r")
        wire.wait_for(r"unreadable input .*set the terminal to \d+ baud", at)

        other = wire.reply({"v": 2, "id": "hil-v2", "cmd": "set", "settings": {"apn": "evil"}})
        assert other["ok"] is False and other["error"]["code"] == "unsupported_version", other  # type: ignore[index]
        assert other["error"]["supported"] == [1], other  # type: ignore[index]
        bad = wire.reply({"v": 1, "id": "hil-bad", "cmd": "set", "settings": {"broker_port": 0}})
        assert bad["ok"] is False and bad["error"]["code"] == "bad_value", bad  # type: ignore[index]
        assert "port" in bad["error"]["message"], bad  # type: ignore[index]
        hello = wire.reply({"v": 1, "id": "hil-hello", "cmd": "hello"})
        assert hello["ok"] is True and hello["result"]["serial"] == board.serial, hello  # type: ignore[index]
    finally:
        wire.port.close()
    assert config_digest(board) == before, "the config file changed after bad input on the console"
    assert board.status()["state"] == "online"
