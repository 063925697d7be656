"""Wake by SMS, end to end with real processes on loopback (issue 17): ``dvrlink-broker`` with its
HTTP SMS gateway, ``dvrlinkd`` in ``[presence] mode = "sms-wake"`` whose modem is the PTY emulator,
and ``dvrlink forward``.

The SMS provider is an HTTP server in this test (``hil/sms_rig.py``): it plays the network,
delivering each wake it is asked to send into the device's emulator (``receive_sms``). The
recorder registers at start, reports that it sleeps by SMS and its number, is paired, and falls
asleep (offline at the broker, no keepalives). ``dvrlink forward`` then asks for a session: the
broker sends the wake and holds the request, the viewer shows "waking the recorder by SMS…", the
modem indicates the SMS, the daemon's inbox reads it and registers, the broker lets the session
through, and bytes go both ways through the forward. Then the same SMS again (a replay) and a
forged one leave the sleeping recorder asleep. The figures (SMS handed over → registered → first
byte) are printed.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
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
    make_daemon,
    start_broker,
    stop_all,
    wait_for,
)
from hil.modememu import ModemEmulator, NetworkDelays, SimCard
from hil.sms_rig import DHCP_ENV, EchoServer, SmsProvider, sms_broker_toml, sms_wake_daemon_toml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIAL = "DL-SMS-0001"
OWN_NUMBER = "+491701234567"
BROKER_NUMBER = "+491609876543"
IDLE_S = 12.0
"""The recorder's ``awake_idle_s``: long enough to pair it after its first registration."""
SMS_DELIVERY_S = 2.5
"""The service centre's part of the delivery (the emulator's ``sms_delivery_s``): long enough
that the viewer shows the wake's progress while its request is held."""


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Daemon, Viewer, SmsProvider, int]]:
    sim = SimCard.for_network(
        "26201", iccid="89490200001234500001", working_apns=frozenset({"internet.telekom"})
    )
    echo = EchoServer()
    started: list[Daemon | Broker] = []
    with ModemEmulator("quectel-ec25", sim, boot_delay_s=0.05) as emu:
        provider = SmsProvider(emu, OWN_NUMBER)
        try:
            broker_dir = tmp_path / "broker"
            broker_dir.mkdir()
            broker_toml = broker_dir / "broker.toml"
            broker_toml.write_text(sms_broker_toml(broker_dir, provider, BROKER_NUMBER, wake_hold_s=60))
            broker = start_broker(broker_dir, config=broker_toml)
            started.append(broker)
            add_user(broker.state_dir, "alice", "correct horse")
            daemon = make_daemon(
                tmp_path,
                SERIAL,
                broker,
                keepalive_interval=2.0,
                extra_toml=(
                    sms_wake_daemon_toml(emu, echo.port, IDLE_S, BROKER_NUMBER, OWN_NUMBER)
                    # a cellular recorder far from the viewer: no LAN path to it
                    + "[lan]\ndiscovery = false\n"
                ),
            )
            daemon.start(env=DHCP_ENV)
            started.append(daemon)
            wait_for(f"{SERIAL} online", daemon.online, 30)
            viewer = Viewer(tmp_path / "viewer")
            viewer.login(broker, "alice", "correct horse")
            viewer.run("pair", SERIAL, PairingUri.parse(daemon.pairing_uri()).code)
            yield daemon, viewer, provider, echo.port
        finally:
            stop_all(list(reversed(started)))
            provider.close()
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
    rig: tuple[Daemon, Viewer, SmsProvider, int],
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
