"""What the SMS wake end-to-end test and ``bench.sms_wake`` both stand up on loopback.

- :class:`SmsProvider`: an SMS provider's HTTP API (the broker's ``[sms_gateway] backend =
  "http"``) that plays the network: each message to the recorder's number is handed to the
  modem emulator at once (``receive_sms``). It notes every message it was asked to send.
- :class:`EchoServer`: the recorder's service the forward reaches.
- :func:`sms_broker_toml` and :func:`sms_wake_daemon_toml`: the broker's and the recorder's
  configs for a wake by SMS through them (an EC25 with an ECM call and the stand-in udhcpc).
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from hil.loopback import loopback_services_toml
from hil.modememu import ModemEmulator

FAKE_UDHCPC = Path(__file__).resolve().parent / "fake_udhcpc.py"
DHCP_ENV = {"FAKE_DHCP_IP": "127.0.0.1", "FAKE_DHCP_ROUTER": "127.0.0.1"}
"""The environment ``dvrlinkd`` needs for the stand-in udhcpc to lease loopback."""


class SmsProvider:
    """The provider's HTTP API on loopback (``POST /send``, form fields ``to``, ``from``,
    ``text``), serving in a thread until :meth:`close`. Messages to ``own_number`` reach the
    emulator; every message is noted in :attr:`sent` with the monotonic time it came."""

    def __init__(self, emu: ModemEmulator, own_number: str) -> None:
        self.emu = emu
        self.own_number = own_number
        self.sent: list[tuple[float, dict[str, str]]] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The URL the broker's HTTP gateway posts to."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/send"

    def delivered(self) -> list[float]:
        """When each message to the recorder's number was handed to the emulator."""
        return [at for at, message in list(self.sent) if message["to"] == self.own_number]

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                message = {name: form[name][0] for name in ("to", "from", "text")}
                provider.sent.append((time.monotonic(), message))
                if message["to"] == provider.own_number:
                    provider.emu.receive_sms(message["from"], message["text"])
                self.send_response(200)
                self.send_header("Content-Length", "6")
                self.end_headers()
                self.wfile.write(b"queued")

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class EchoServer:
    """A TCP echo service on loopback, in a thread until :meth:`close`."""

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
        """Stop serving and close the socket."""
        self._closed.set()
        self._thread.join(10)
        self.sock.close()


def sms_broker_toml(broker_dir: Path, provider: SmsProvider, sender: str, wake_hold_s: int) -> str:
    """A loopback broker whose SMS gateway is ``provider``, sending as ``sender``."""
    return (
        f'state_dir = "{broker_dir}"\nudp_host = "127.0.0.1"\nudp_port = 0\n'
        'https_host = "127.0.0.1"\nhttps_port = 0\npresence_tcp_port = 0\n'
        "turn_udp_port = 0\nturn_tcp_port = 0\nturn_allow_loopback_peers = true\n"
        '[sms_gateway]\nbackend = "http"\n'
        f'url = "{provider.url}"\n'
        'body = "to={to}&from={from}&text={text}"\n'
        'content_type = "application/x-www-form-urlencoded"\n'
        f'sender = "{sender}"\nwake_hold_s = {wake_hold_s}\n'
    )


def sms_wake_daemon_toml(
    emu: ModemEmulator, echo_port: int, idle_s: float, broker_number: str, own_number: str
) -> str:
    """The ``extra_toml`` of ``hil.loopback.make_daemon`` for a recorder in ``sms-wake`` mode
    whose modem is ``emu`` (an EC25), serving ``echo_port``, woken by ``broker_number``. Start
    it with :data:`DHCP_ENV`."""
    dhcp = ", ".join(f'"{w}"' for w in (sys.executable, str(FAKE_UDHCPC), "-f", "-i", "{iface}", "-n"))
    return (
        f'mode = "sms-wake"\ntransport = "udp"\nawake_idle_s = {idle_s}\n'
        + loopback_services_toml(echo_port)
        + f'[modem]\nenabled = true\nprofile = "quectel-ec25"\nport = "{emu.path}"\n'
        + f'net_interface = "lo"\ndhcp_command = [{dhcp}]\n'
        + f'[sms_wake]\nallowed_senders = ["{broker_number}"]\nown_number = "{own_number}"\n'
    )
