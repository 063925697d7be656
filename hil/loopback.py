"""Loopback rig: real broker, daemon and viewer processes on 127.0.0.1, for tests and the demo.

Every wait is bounded: ``wait_for`` polls a condition until a deadline and raises ``TimeoutError``
with a message that names what did not happen (and the process's last output).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvrlink.protocol.pairing import PairingUri

BIN = Path(sys.executable).parent
POLL = 0.05


def wait_for(what: str, condition: Callable[[], Any], timeout: float) -> Any:
    """Return the first truthy value of ``condition()`` within ``timeout`` seconds.

    Raises:
        TimeoutError: the condition stayed false; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(POLL)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


@dataclass
class Broker:
    """A running ``dvrlink-broker serve`` process."""

    state_dir: Path
    proc: subprocess.Popen[bytes]
    udp_port: int
    https_port: int
    turn_port: int
    public_key: str
    cert: Path
    log: Path

    @property
    def url(self) -> str:
        """Base URL of the viewer API."""
        return f"https://127.0.0.1:{self.https_port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the process and wait for it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def health(self) -> dict[str, Any]:
        """GET /v1/health with the broker's own certificate as CA."""
        context = ssl.create_default_context(cafile=str(self.cert))
        with urllib.request.urlopen(f"{self.url}/v1/health", context=context, timeout=5) as reply:
            body: dict[str, Any] = json.loads(reply.read())
            return body


def broker_command(*args: str) -> list[str]:
    """The ``dvrlink-broker`` command line with ``args``."""
    return [str(BIN / "dvrlink-broker"), *args]


def start_broker(
    state_dir: Path,
    udp_port: int = 0,
    https_port: int = 0,
    turn_port: int = 0,
    timeout: float = 30.0,
    config: Path | None = None,
) -> Broker:
    """Start a broker and wait until it published its ports in ``broker.json``.

    Its TURN relay may relay to loopback peers, since everything in the rig is on 127.0.0.1.
    With ``config`` the broker reads that TOML file instead (its state_dir must be ``state_dir``).

    Raises:
        TimeoutError: it did not become ready; the message has its last log lines.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    info_file = state_dir / "broker.json"
    log = state_dir / "broker.log"
    with log.open("ab") as out:
        args = (
            ["serve", "--config", str(config)]
            if config is not None
            else [
                "serve",
                "--state-dir",
                str(state_dir),
                "--udp-port",
                str(udp_port),
                "--https-port",
                str(https_port),
                "--turn-port",
                str(turn_port),
                "--presence-tcp-port",
                "0",  # any free port: rigs run side by side, and 443 may be taken or need root
                "--turn-allow-loopback-peers",
            ]
        )
        proc = subprocess.Popen(
            broker_command(*args),
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def ready() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise RuntimeError(f"dvrlink-broker exited with {proc.returncode}:\n{_tail(log)}")
        try:
            info: dict[str, Any] = json.loads(info_file.read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == proc.pid else None

    try:
        info = wait_for("dvrlink-broker ready", ready, timeout)
    except TimeoutError as exc:
        proc.kill()
        raise TimeoutError(f"{exc}\n{_tail(log)}") from None
    return Broker(
        state_dir,
        proc,
        int(info["udp_port"]),
        int(info["https_port"]),
        int(info.get("turn_udp_port") or 0),
        str(info["public_key"]),
        Path(info["cert"]),
        log,
    )


@dataclass
class Daemon:
    """A ``dvrlinkd`` process and its files."""

    serial: str
    home: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home / "dvrlinkd.log"

    def start(self, env: dict[str, str] | None = None) -> None:
        """Start the process (output to ``dvrlinkd.log``)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "dvrlinkd"), "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def status(self) -> dict[str, Any] | None:
        """The status file's contents, or None if there is none yet."""
        try:
            status: dict[str, Any] = json.loads((self.home / "run" / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return status

    def online(self) -> bool:
        """True if the daemon's status file says it is registered."""
        status = self.status()
        return bool(status and status.get("state") == "online")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)

    def pairing_uri(self) -> str:
        """The QR-ready string printed by ``dvrlinkd pairing-code``."""
        out = subprocess.run(
            [str(BIN / "dvrlinkd"), "pairing-code", "--config", str(self.config)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return next(line.split(": ", 1)[1].strip() for line in out.splitlines() if "dvrlink://" in line)


def make_daemon(
    root: Path,
    serial: str,
    broker: Broker,
    keepalive_interval: float = 2.0,
    reply_timeout: float = 0.4,
    retries: int = 2,
    extra_toml: str = "",
    learn_keepalive: bool = False,
    lan_discovery: bool = False,
) -> Daemon:
    """Write a daemon config under ``root/serial`` pointing at ``broker``; ``extra_toml`` is appended.

    Learning the keepalive is off by default here: on loopback there is no NAT, so it would climb
    to the longest interval, and rigs that restart the broker expect devices back within a few
    short intervals. LAN discovery is off too unless ``lan_discovery`` (or a ``[lan]`` table in
    ``extra_toml``): the daemons of one machine's tests stand for recorders far from their viewer,
    and they share the one LAN port, so whichever binds it first would answer LAN queries and its
    test would take the ``lan`` path instead of the broker's."""
    if not lan_discovery and "[lan]" not in extra_toml:
        extra_toml += "\n[lan]\ndiscovery = false\n"
    home = root / serial
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dvrlinkd.toml"
    config.write_text(
        "\n".join(
            [
                "[device]",
                f'serial = "{serial}"',
                'state_dir = "state"',
                'runtime_dir = "run"',
                "[broker]",
                'host = "127.0.0.1"',
                f"port = {broker.udp_port}",
                f'public_key = "{broker.public_key}"',
                "[presence]",
                f"keepalive_interval_s = {keepalive_interval}",
                f"reply_timeout_s = {reply_timeout}",
                f"retries = {retries}",
                f"learn_keepalive = {'true' if learn_keepalive else 'false'}",
                extra_toml,
                "",
            ]
        )
    )
    return Daemon(serial, home, config)


@dataclass
class Viewer:
    """Runs the ``dvrlink`` CLI with its own home directory."""

    home: Path

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``dvrlink --home HOME args``; raises CalledProcessError on failure if ``check``."""
        result = subprocess.run(
            [str(BIN / "dvrlink"), "--home", str(self.home), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def login(self, broker: Broker, user: str, password: str) -> subprocess.CompletedProcess[str]:
        """``dvrlink login`` to ``broker`` with its own certificate as CA; raises CalledProcessError."""
        return self.run(
            "login",
            "--broker",
            broker.url,
            "--user",
            user,
            "--password-stdin",
            "--cacert",
            str(broker.cert),
            stdin=password + "\n",
        )


def loopback_services_toml(*forward_ports: int) -> str:
    """Daemon config lines for sessions on loopback (ICE host candidate 127.0.0.1) that allow
    forwards to ``127.0.0.1:port`` for each of ``forward_ports``."""
    targets = ", ".join(f'"127.0.0.1:{port}"' for port in forward_ports)
    return f'[sessions]\nhost_addresses = ["127.0.0.1"]\n[services]\nforward = [{targets}]\n'


def unused_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server started later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_listening(port: int) -> bool:
    """True if something listens on TCP ``port`` (IPv4), read from /proc without connecting,
    for servers that accept a single connection."""
    wanted = f":{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(f[1].endswith(wanted) and f[3] == "0A" for f in (line.split() for line in lines))


def add_user(broker_state: Path, name: str, password: str) -> None:
    """Create a viewer account with the broker's admin command."""
    subprocess.run(
        broker_command("user", "add", name, "--password-stdin", "--state-dir", str(broker_state)),
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )


def stop_all(processes: Sequence[Daemon | Broker]) -> None:
    """Stop every process, killing those that do not exit in time."""
    for item in processes:
        proc = item.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
    for item in processes:
        proc = item.proc
        if proc is None:
            continue
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class RtspServer:
    """A real RTSP server with a live test pattern (see hil/rtsp_test_server.py)."""

    proc: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        """Its stream URL."""
        return f"rtsp://127.0.0.1:{self.port}/live"

    def stop(self) -> None:
        """Kill it and wait."""
        self.proc.kill()
        self.proc.wait(10)


SYSTEM_PYTHON = "/usr/bin/python3"


def start_rtsp_server(timeout: float = 30.0) -> RtspServer:
    """Start the RTSP test server under the system Python and wait for its "ready PORT" line.

    Raises:
        RuntimeError: it could not start (GStreamer's RTSP server or python3-gi missing).
    """
    script = Path(__file__).with_name("rtsp_test_server.py")
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, str(script), "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    try:
        line = read_line_until(proc.stdout, "ready", timeout)
    except TimeoutError as exc:
        proc.kill()
        raise RuntimeError(f"the RTSP test server did not start: {exc}") from None
    return RtspServer(proc, int(line.split()[1]))


@dataclass
class Forward:
    """A running ``dvrlink forward`` process and the local port it listens on."""

    proc: subprocess.Popen[str]
    local_port: int
    path: str

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (as Ctrl-C) and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)


def read_line_until(stream: Any, prefix: str, timeout: float) -> str:
    """Read lines from ``stream`` until one starts with ``prefix``; returns it.

    Raises:
        TimeoutError: no such line within ``timeout`` (or the stream ended); the message has what was read.
    """
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            line = stream.readline()
            if not line:
                break
            if line.startswith(prefix):
                return str(line)
            seen.append(line)
    raise TimeoutError(
        f"no line starting with {prefix!r} within {timeout:.0f} s; got: {''.join(seen)[-2000:]}"
    )


class LineReader:
    """The lines a process writes to a pipe, as they come, each wait bounded.

    It reads the pipe's file descriptor itself, so no line can sit in a Python buffer that the
    selector does not see (as it can with ``readline`` on a text stream). Hand it the ``stdout``
    of a ``Popen`` made without ``text``.
    """

    def __init__(self, stream: Any) -> None:
        self._fd: int = stream.fileno()
        self._pending = b""
        self._unread: deque[str] = deque()
        self.lines: list[str] = []
        """Every line read so far, without its newline."""
        self.ended = False

    def until(self, what: str, matches: Callable[[str], bool], timeout: float) -> str:
        """Read until a line for which ``matches`` is true; returns it (without its newline).

        Raises:
            TimeoutError: no such line within ``timeout`` seconds, or the pipe ended first; the
                message names ``what`` and has the last lines read.
        """
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self._fd, selectors.EVENT_READ)
            while True:
                while self._unread:
                    line = self._unread.popleft()
                    if matches(line):
                        return line
                left = deadline - time.monotonic()
                if self.ended or left <= 0 or not sel.select(left):
                    break
                self._read()
        ending = "the output ended" if self.ended else f"not within {timeout:.0f} s"
        raise TimeoutError(f"{what}: {ending}; the last lines were:\n" + "\n".join(self.lines[-20:]))

    def _read(self) -> None:
        chunk = os.read(self._fd, 65536)
        if not chunk:
            self.ended = True
            chunk = b"\n" if self._pending else b""
        *complete, self._pending = (self._pending + chunk).split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.lines.append(line)
            self._unread.append(line)


def start_forward(
    viewer: Viewer, serial: str, remote_port: int, *flags: str, timeout: float = 60.0
) -> Forward:
    """Run ``dvrlink forward SERIAL 0:REMOTE`` and wait for its "forwarding" line.

    Raises:
        TimeoutError: the forward did not come up; the message has its output.
    """
    proc = subprocess.Popen(
        [
            str(BIN / "dvrlink"),
            "--home",
            str(viewer.home),
            "forward",
            serial,
            f"0:{remote_port}",
            "--host-address",
            "127.0.0.1",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = read_line_until(proc.stdout, "forwarding", timeout)
    except TimeoutError:
        proc.kill()
        raise
    # "forwarding 127.0.0.1:PORT -> SERIAL:REMOTE via PATH"
    local = line.split()[1]
    return Forward(proc, int(local.rsplit(":", 1)[1]), line.split()[-1])


@contextmanager
def paired_recorder(root: Path, serial: str, extra_toml: str = "") -> Iterator[tuple[Daemon, Viewer]]:
    """A broker, one dvrlinkd (config lines ``extra_toml`` added) registered with it, and a viewer
    logged in as ``alice`` and paired with the device; everything stopped on exit.

    Raises:
        TimeoutError: the device did not register within 30 s.
        subprocess.CalledProcessError: login or pairing failed.
    """
    started: list[Daemon | Broker] = []
    try:
        broker = start_broker(root / "broker")
        started.append(broker)
        add_user(broker.state_dir, "alice", "correct horse")
        daemon = make_daemon(root, serial, broker, extra_toml=extra_toml)
        daemon.start()
        started.append(daemon)
        wait_for(f"{serial} online", daemon.online, 30)
        viewer = Viewer(root / "viewer")
        viewer.login(broker, "alice", "correct horse")
        code = PairingUri.parse(daemon.pairing_uri()).code
        viewer.run("pair", serial, code)
        yield daemon, viewer
    finally:
        stop_all(list(reversed(started)))
