"""Wake by SMS, end to end with real processes on loopback (issue 17): ``dvrlink-broker`` with its
HTTP SMS gateway, ``dvrlinkd`` in ``[presence] mode = "sms-wake"`` whose modem is the PTY emulator,
and ``dvrlink forward``.

The SMS provider is an HTTP server in this test: it plays the network, delivering each wake it
is asked to send into the device's emulator (``receive_sms``). The recorder registers at start,
reports that it sleeps by SMS and its number, is paired, and falls asleep (offline at the broker,
no keepalives). ``dvrlink forward`` then asks for a session: the broker sends the wake and holds
the request, the viewer shows "waking the recorder by SMS…", the modem indicates the SMS, the
daemon's inbox reads it and registers, the broker lets the session through, and bytes go both
ways through the forward. Then the same SMS again (a replay) and a forged one leave the sleeping
recorder asleep. The figures (SMS handed over → registered → first byte) are printed.
"""

from __future__ import annotations

import http.server
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dvrlink.protocol.pairing import PairingUri
from hil.loopback import (
    BIN,
    Broker,
    Daemon,
    LineReader,
    Viewer,
    add_user,
    loopback_services_toml,
    make_daemon,
    start_broker,
    stop_all,
    wait_for,
)
from hil.modememu import ModemEmulator, NetworkDelays, SimCard

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIAL = "DL-SMS-0001"
OWN_NUMBER = "+491701234567"
BROKER_NUMBER = "+491609876543"
FAKE_UDHCPC = Path(__file__).resolve().parent.parent / "hil" / "fake_udhcpc.py"
IDLE_S = 12.0
"""The recorder's ``awake_idle_s``: long enough to pair it after its first registration."""
SMS_DELIVERY_S = 2.5
"""The service centre's part of the delivery (the emulator's ``sms_delivery_s``): long enough
that the viewer shows the wake's progress while its request is held."""


@dataclass
class Network:
    """The SMS provider's HTTP API on loopback, delivering into the device's emulator."""

    emu: ModemEmulator
    sent: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        network = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                message = {name: form[name][0] for name in ("to", "from", "text")}
                network.sent.append((time.monotonic(), message))
                if message["to"] == OWN_NUMBER:
                    network.emu.receive_sms(message["from"], message["text"])
                self.send_response(200)
                self.send_header("Content-Length", "6")
                self.end_headers()
                self.wfile.write(b"queued")

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


class EchoServer:
    """A TCP echo service on loopback: the recorder's service the forward reaches."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)  # so the thread sees close() soon
        self.port = int(self.sock.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(30)
                while data := conn.recv(65536):
                    conn.sendall(data)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(10)
        self.sock.close()


@pytest.fixture
def rig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Broker, Daemon, Viewer, Network, int]]:
    sim = SimCard.for_network(
        "26201", iccid="89490200001234500001", working_apns=frozenset({"internet.telekom"})
    )
    echo = EchoServer()
    started: list[Daemon | Broker] = []
    with ModemEmulator("quectel-ec25", sim, boot_delay_s=0.05) as emu:
        network = Network(emu)
        provider = http.server.ThreadingHTTPServer(("127.0.0.1", 0), network.handler())
        serving = threading.Thread(target=provider.serve_forever, daemon=True)
        serving.start()
        try:
            broker_dir = tmp_path / "broker"
            broker_dir.mkdir()
            broker_toml = broker_dir / "broker.toml"
            broker_toml.write_text(
                f'state_dir = "{broker_dir}"\nudp_host = "127.0.0.1"\nudp_port = 0\n'
                'https_host = "127.0.0.1"\nhttps_port = 0\npresence_tcp_port = 0\n'
                "turn_udp_port = 0\nturn_tcp_port = 0\n"
                "turn_allow_loopback_peers = true\n"
                '[sms_gateway]\nbackend = "http"\n'
                f'url = "http://127.0.0.1:{provider.server_address[1]}/send"\n'
                'body = "to={to}&from={from}&text={text}"\n'
                'content_type = "application/x-www-form-urlencoded"\n'
                f'sender = "{BROKER_NUMBER}"\nwake_hold_s = 60\n'
            )
            broker = start_broker(broker_dir, config=broker_toml)
            started.append(broker)
            add_user(broker.state_dir, "alice", "correct horse")
            dhcp = ", ".join(
                f'"{w}"' for w in (sys.executable, str(FAKE_UDHCPC), "-f", "-i", "{iface}", "-n")
            )
            daemon = make_daemon(
                tmp_path,
                SERIAL,
                broker,
                keepalive_interval=2.0,
                extra_toml=(
                    f'mode = "sms-wake"\ntransport = "udp"\nawake_idle_s = {IDLE_S}\n'
                    + loopback_services_toml(echo.port)
                    + f'[modem]\nenabled = true\nprofile = "quectel-ec25"\nport = "{emu.path}"\n'
                    + f'net_interface = "lo"\ndhcp_command = [{dhcp}]\n'
                    + f'[sms_wake]\nallowed_senders = ["{BROKER_NUMBER}"]\nown_number = "{OWN_NUMBER}"\n'
                    # a cellular recorder far from the viewer: no LAN path to it
                    + "[lan]\ndiscovery = false\n"
                ),
            )
            daemon.start(env={"FAKE_DHCP_IP": "127.0.0.1", "FAKE_DHCP_ROUTER": "127.0.0.1"})
            started.append(daemon)
            wait_for(f"{SERIAL} online", daemon.online, 30)
            viewer = Viewer(tmp_path / "viewer")
            viewer.login(broker, "alice", "correct horse")
            viewer.run("pair", SERIAL, PairingUri.parse(daemon.pairing_uri()).code)
            yield daemon, viewer, network, echo.port
        finally:
            stop_all(list(reversed(started)))
            provider.shutdown()
            provider.server_close()
            serving.join(10)
            echo.close()


def _log(daemon: Daemon) -> str:
    return daemon.log.read_text(errors="replace")


def _echo(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_a_forward_wakes_the_sleeping_recorder_by_sms_and_replays_and_forgeries_do_not(
    rig: tuple[Daemon, Viewer, Network, int],
) -> None:
    daemon, viewer, network, service_port = rig
    wait_for("the recorder asleep (offline, no keepalives)", lambda: not daemon.online(), IDLE_S + 30)
    asleep_log = len(_log(daemon))
    network.emu.set_network_delays(NetworkDelays(sms_delivery_s=SMS_DELIVERY_S))
    started = time.monotonic()
    argv = [str(BIN / "dvrlink"), "--home", str(viewer.home), "forward", SERIAL, f"0:{service_port}"]
    proc = subprocess.Popen(
        [*argv, "--host-address", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        output = LineReader(proc.stdout)
        line = output.until("the forward's listening line", lambda text: text.startswith("forwarding"), 90)
        forwarding = time.monotonic()
        local_port = int(line.split()[1].rsplit(":", 1)[1])
        assert _echo(local_port, b"first bytes through a woken recorder") == (
            b"first bytes through a woken recorder"
        )
        first_byte = time.monotonic()
        ((sms_at, sms),) = network.sent
        assert sms["to"] == OWN_NUMBER and sms["from"] == BROKER_NUMBER and sms["text"].startswith("DW1:")
        woken = _log(daemon)[asleep_log:]
        assert "sms wake: woken by " + BROKER_NUMBER in woken, woken[-3000:]
        print(
            f"forward asked -> wake SMS handed to the provider {sms_at - started:.2f} s, -> SMS delivered "
            f"(+{SMS_DELIVERY_S:g} s) -> session up ('forwarding') {forwarding - sms_at:.2f} s, -> first "
            f"byte echoed {first_byte - forwarding:.3f} s; total {first_byte - started:.2f} s"
        )
        progress = [text for text in output.lines if "waking the recorder by SMS" in text]
        assert progress and "sent (http text)" in progress[-1], output.lines
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    # asleep again after the idle time; then a replay of that SMS and a forged one
    wait_for("the recorder asleep again", lambda: not daemon.online(), IDLE_S + 30)
    network.emu.receive_sms(BROKER_NUMBER, sms["text"])
    wait_for("the replay dropped", lambda: "its counter was accepted before" in _log(daemon), 30)
    text = sms["text"]
    forged = text[:-3] + ("AAA" if not text.endswith("AAA") else "BBB")
    network.emu.receive_sms(BROKER_NUMBER, forged)
    wait_for("the forgery dropped", lambda: "the MAC does not match" in _log(daemon), 30)
    assert not daemon.online()
    assert _log(daemon).count("sms wake: woken by") == 1
    assert len(network.sent) == 1
