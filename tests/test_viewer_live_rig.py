"""The viewer against real processes on loopback: ``dvrlink-broker``, ``dvrlinkd`` and ``dvrlink``.

A TCP echo server in the test stands for the recorder's service; the daemon allows forwards to
it only. Each daemon gets a serial of its own, so a test that kills one leaves the others alone.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hil.loopback import (
    BIN,
    Broker,
    Daemon,
    Forward,
    Viewer,
    add_user,
    loopback_services_toml,
    make_daemon,
    start_broker,
    start_forward,
    stop_all,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOUND = 30.0  # s, the longest any one step may take (the machine is shared)
USER, PASSWORD = "owner", "pass phrase"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class Rig:
    root: Path
    broker: Broker
    viewer: Viewer
    echo_port: int
    started: list[Daemon | Broker] = field(default_factory=list)

    def device(self, serial: str) -> Daemon:
        """A running daemon for ``serial``, online and paired with the viewer."""
        daemon = make_daemon(
            self.root, serial, self.broker, extra_toml=loopback_services_toml(self.echo_port)
        )
        daemon.start()
        self.started.append(daemon)
        wait_for(f"{serial} online", daemon.online, BOUND)
        self.viewer.run("pair", daemon.pairing_uri())
        return daemon


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("live")
    echo = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=echo.serve_forever, name="echo", daemon=True)
    thread.start()
    broker = start_broker(root / "broker")
    rig = Rig(root, broker, Viewer(root / "viewer"), echo.server_address[1], [broker])
    try:
        add_user(broker.state_dir, USER, PASSWORD)
        rig.viewer.login(broker, USER, PASSWORD)
        yield rig
    finally:
        stop_all(list(reversed(rig.started)))
        echo.shutdown()
        echo.server_close()
        thread.join(BOUND)


class Lines:
    """Collects a process's output lines (with their ``time.monotonic()``) in a thread."""

    def __init__(self, forward: Forward) -> None:
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(forward,), daemon=True)
        self._thread.start()

    def _read(self, forward: Forward) -> None:
        assert forward.proc.stdout is not None
        for line in forward.proc.stdout:
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()

    def wait(self, what: str, text: str, timeout: float = BOUND) -> tuple[float, str]:
        """The first line containing ``text``; fails with everything read if none comes in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for when, line in self.lines:
                    if text in line:
                        return when, line
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(line for _, line in self.lines)
                    pytest.fail(f"{what}: no line with {text!r} within {timeout:.0f} s; output:\n{seen}")
                self._changed.wait(left)

    def join(self) -> None:
        self._thread.join(BOUND)


def start_forward_process(viewer: Viewer, serial: str, *specs: str) -> subprocess.Popen[str]:
    """``dvrlink forward SERIAL SPECS...`` on loopback, stdout and stderr apart."""
    return subprocess.Popen(
        [str(BIN / "dvrlink"), "--home", str(viewer.home), "forward", serial, *specs,
         "--relay-only", "--host-address", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _echo_once(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, f"the forward closed after {got!r}"
        got += chunk
    assert got == payload
    return sock


def _closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closed ``sock`` (EOF or reset), or None if it stayed open."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    except TimeoutError:
        return None
    assert data == b"", f"unexpected bytes {data!r}"
    return time.monotonic() - start


def test_a_killed_device_is_declared_dead_and_new_connections_are_refused(
    rig: Rig, record_property: pytest.RecordProperty
) -> None:
    serial = "DL-LIVE-0010"
    daemon = rig.device(serial)
    forward = start_forward(rig.viewer, serial, rig.echo_port, "--relay-only")
    lines = Lines(forward)
    try:
        held = _echo_once(forward.local_port, b"before the kill")
        assert daemon.proc is not None
        daemon.proc.kill()  # SIGKILL: no CONNECTION_CLOSE reaches the viewer
        killed_at = time.monotonic()
        daemon.proc.wait(BOUND)
        dead_at, line = lines.wait("the viewer declaring the session dead", f"the session to {serial} closed")
        time_to_dead = dead_at - killed_at
        record_property("time_to_dead_s", round(time_to_dead, 2))
        print(f"time to dead: {time_to_dead:.2f} s ({line})")
        assert "stopped answering" in line, line
        quiet_at, quiet = lines.wait("a status line noting the silence", "no answer for")
        assert quiet_at <= dead_at and quiet.startswith("path relay"), quiet
        assert _closed_within(held, BOUND) is not None, "the open connection was left hanging"
        start = time.monotonic()
        try:
            fresh = socket.create_connection(("127.0.0.1", forward.local_port), timeout=BOUND)
        except ConnectionRefusedError:
            closed: float | None = time.monotonic() - start
        else:
            with fresh:
                closed = _closed_within(fresh, BOUND)
        assert closed is not None and closed < 5.0, f"a new connection was held {closed} s"
        assert forward.proc.wait(BOUND) == 1
    finally:
        if forward.proc.poll() is None:
            forward.proc.kill()
            forward.proc.wait(BOUND)
        lines.join()
        with contextlib.suppress(OSError):
            held.close()


@pytest.fixture(scope="module")
def device(rig: Rig) -> Daemon:
    """A device that stays up for the tests that do not kill it."""
    return rig.device("DL-LIVE-0001")


def test_a_forward_to_a_port_the_device_does_not_allow_is_refused_at_start(rig: Rig, device: Daemon) -> None:
    with socket.socket() as spare:  # a port nobody allowed (nor listens on)
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    forward = start_forward_process(rig.viewer, device.serial, f"0:{port}", f"-L0:{rig.echo_port}")
    try:
        out, err = forward.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        forward.kill()
        out, err = forward.communicate()
        pytest.fail(f"the forward to port {port} kept running; stdout: {out!r} stderr: {err!r}")
    assert forward.returncode == 1, (forward.returncode, out, err)
    assert "forwarding" not in out, out
    assert f"the device refuses port {port} on 127.0.0.1" in err, err
    assert f'"127.0.0.1:{port}"' in err and "[services] forward" in err, err
    assert "127.0.0.1:" + str(rig.echo_port) in err, "the message should name what the device allows"


def test_without_a_tty_each_connection_is_a_status_line(rig: Rig, device: Daemon) -> None:
    forward = start_forward(rig.viewer, device.serial, rig.echo_port, "--relay-only")
    lines = Lines(forward)
    try:
        with _echo_once(forward.local_port, b"one line per change") as sock:
            peer = f"127.0.0.1:{sock.getsockname()[1]}"
            lines.wait("a line for the new connection", f"connection from {peer} opened")
        _, closed = lines.wait("a line for the closed connection", f"connection from {peer} closed")
        assert "19 B out, 19 B in" in closed, closed
    finally:
        forward.stop(BOUND)
        lines.join()


def _paired_keys(daemon: Daemon) -> list[str]:
    viewers = json.loads((daemon.home / "state" / "viewers.json").read_text())
    return [v["public_key"] for v in viewers]


def test_unpair_revokes_the_viewer_on_the_device_and_at_the_broker(rig: Rig) -> None:
    serial = "DL-LIVE-0020"
    daemon = rig.device(serial)
    try:
        assert len(_paired_keys(daemon)) == 1
        done = rig.viewer.run("unpair", serial, check=False)
        assert done.returncode == 0, done
        assert f"{serial} revoked this viewer" in done.stdout, done.stdout
        assert _paired_keys(daemon) == [], "the device still holds the viewer's key"
        assert serial not in rig.viewer.run("devices").stdout
        pins = json.loads((rig.viewer.home / "pins.json").read_text())
        assert serial not in pins
        again = rig.viewer.run("forward", serial, "0:1", check=False)
        assert again.returncode == 1 and "not paired" in again.stderr, again
    finally:
        assert daemon.stop(BOUND) == 0


def test_unpair_of_an_offline_device_does_the_broker_part_and_says_so(rig: Rig) -> None:
    serial = "DL-LIVE-0021"
    daemon = rig.device(serial)
    assert daemon.stop(BOUND) == 0
    done = rig.viewer.run("unpair", serial, check=False)
    assert done.returncode == 0, done
    assert "offline" in done.stderr and "still holds this viewer's key" in done.stderr, done.stderr
    assert serial not in rig.viewer.run("devices").stdout
    assert len(_paired_keys(daemon)) == 1  # the device could not be told


def test_logout_forgets_the_token_and_keeps_the_key(rig: Rig, tmp_path: Path) -> None:
    viewer = Viewer(tmp_path / "viewer")
    viewer.login(rig.broker, USER, PASSWORD)
    done = viewer.run("logout", check=False)
    assert done.returncode == 0, done
    assert "logged out" in done.stdout, done.stdout
    assert not (viewer.home / "viewer.json").exists()
    assert (viewer.home / "viewer_key.pem").exists()
    after = viewer.run("devices", check=False)
    assert after.returncode == 1 and "not logged in" in after.stderr, after
    again = viewer.run("logout", check=False)
    assert again.returncode == 0 and "not logged in" in again.stdout, again


def test_the_device_drops_the_session_of_a_killed_viewer(
    rig: Rig, device: Daemon, record_property: pytest.RecordProperty
) -> None:
    def sessions() -> list[object]:
        return list((device.status() or {}).get("sessions", []))

    wait_for("no session left on the device from earlier tests", lambda: not sessions(), BOUND)
    forward = start_forward(rig.viewer, device.serial, rig.echo_port, "--relay-only")
    try:
        _echo_once(forward.local_port, b"before the kill").close()
        wait_for("the session in the device's status", sessions, BOUND)
        forward.proc.kill()  # SIGKILL: no CONNECTION_CLOSE reaches the device
        killed_at = time.monotonic()
        forward.proc.wait(BOUND)
        wait_for("the device dropping the dead viewer's session", lambda: not sessions(), BOUND)
        dropped = time.monotonic() - killed_at
    finally:
        if forward.proc.poll() is None:
            forward.proc.kill()
            forward.proc.wait(BOUND)
    record_property("device_time_to_drop_s", round(dropped, 2))
    print(f"device dropped the session {dropped:.2f} s after the viewer was killed")
    log = device.log.read_text(errors="replace")
    assert "the viewer stopped answering" in log, log[-3000:]
