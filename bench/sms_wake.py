"""Issue 17, SMS wake: idle IP bytes of a sleeping recorder, and wake latency broken down.

    python -m bench.sms_wake [--quick] [--window S] [--runs N]

Real processes on loopback, as ``tests/test_sms_wake_end_to_end.py``: ``dvrlink-broker`` with its
HTTP SMS gateway, ``dvrlinkd`` in ``[presence] mode = "sms-wake"`` whose modem is the PTY emulator
(an EC25: ECM call, the stand-in udhcpc on ``lo``), and ``dvrlink forward``. The SMS provider is an
HTTP server in this process that hands each wake to the emulator (``receive_sms``).

Every datagram between the recorder and the broker (presence, and the modem's data-path probe,
which goes to the broker's presence port) passes through a counting UDP relay in this process:
the recorder's ``[broker] port`` is the relay's. That is all the IP traffic an idle recorder makes
(no sessions; NAT learning and classification are off in ``sms-wake``).

(a) Idle IP bytes: once the recorder sleeps (offline at the broker, modem ``standby``), the relay
counts for ``--window`` seconds (default 120; 15 with ``--quick``); each datagram costs its
payload plus 28 bytes of IPv4 + UDP header. Bytes per month = bytes in the window x (30 days /
window). The emulator is also sampled every 0.5 s: whether an ECM call (PDP context) is up, and
every dial command, so "0 B" is also "no data session to carry a byte". Target: 0 B.

(b) Wake latency, emulator with no network delays: from the SMS reaching the modem (the provider
hands it to the emulator at once) to the inbox reading it (``AT+CMGR``), to the data call dialled
(``AT+QNETDEVCTL=1,...``), to the first datagram out (HELLO: the presence client starts only once
the modem is online, so this is "data up"), to REGISTERED back from the broker, to the session
(``dvrlink forward`` prints ``forwarding``), to the first byte echoed through it. Median of
``--runs`` wakes (default 3; 1 with ``--quick``); the recorder sleeps again between runs.

(c) The same with the emulator's ``NetworkDelays(attach_s, pdp_activation_s)`` set to the
published figures in ``PUBLISHED`` (docs/sms-wake.md cites the source). The recorder stays
attached while it sleeps, so only the PDP activation lies on the wake path; the attach delay is
set too, and would only count after the network detached the modem.
"""

from __future__ import annotations

import dataclasses
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import BenchError, run_main
from dvrlink.protocol.pairing import PairingUri
from dvrlink.protocol.presence_wire import MessageType
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

SERIAL = "DL-SMS-BENCH"
OWN_NUMBER = "+491701234567"
BROKER_NUMBER = "+491609876543"
IDLE_S = 8.0
"""The recorder's ``awake_idle_s``: it sleeps again this long after each session."""
KEEPALIVE_S = 2.0
IPV4_UDP_HEADER = 28
MONTH_S = 30 * 86_400.0
PUBLISHED = NetworkDelays(attach_s=2.0, pdp_activation_s=2.0)
"""GPRS attach and PDP context activation: 2 s each, the time a regulator's quality-of-service
rules require 98 % of successful attaches and activations to complete in (docs/sms-wake.md)."""
DIAL = "AT+QNETDEVCTL=1"


@dataclass
class Relay:
    """A counting UDP relay: the recorder sends to ``port``, the relay to the broker, and back."""

    broker_port: int
    sock_front: socket.socket = field(init=False)
    sock_back: socket.socket = field(init=False)
    port: int = field(init=False)
    log: list[tuple[float, str, int, int]] = field(default_factory=list)
    """(time, "up" or "down", datagram length, first byte) of every datagram."""
    _device: tuple[str, int] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.sock_front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock_front.bind(("127.0.0.1", 0))
        self.port = int(self.sock_front.getsockname()[1])
        self.sock_back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock_back.connect(("127.0.0.1", self.broker_port))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock_front, selectors.EVENT_READ, "up")
            sel.register(self.sock_back, selectors.EVENT_READ, "down")
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    try:
                        if key.data == "up":
                            data, self._device = self.sock_front.recvfrom(65536)
                            self.sock_back.send(data)
                        else:
                            data = self.sock_back.recv(65536)
                            if self._device is None:
                                continue
                            self.sock_front.sendto(data, self._device)
                    except OSError:
                        continue
                    self.log.append((time.monotonic(), key.data, len(data), data[0] if data else -1))

    def bytes_between(self, start: float, end: float) -> tuple[int, int]:
        """Datagrams and wire bytes (with IPv4 + UDP headers) between two monotonic times."""
        rows = [r for r in list(self.log) if start <= r[0] < end]
        return len(rows), sum(length + IPV4_UDP_HEADER for _, _, length, _ in rows)

    def first(self, after: float, direction: str, kind: int | None = None) -> float | None:
        for at, where, _, first in list(self.log):
            if at >= after and where == direction and (kind is None or first == kind):
                return at
        return None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sock_front.close()
        self.sock_back.close()


@dataclass
class Commands:
    """The emulator's AT commands as they came, with the monotonic time of each."""

    emu: ModemEmulator
    seen: list[tuple[float, str]] = field(default_factory=list)

    def watch(self) -> None:
        original = self.emu.model.on_command

        def seen(line: str) -> None:
            self.seen.append((time.monotonic(), line))
            if original is not None:
                original(line)

        self.emu.model.on_command = seen

    def after(self, prefix: str, after: float) -> float | None:
        return next((at for at, line in list(self.seen) if at >= after and line.startswith(prefix)), None)


def modem_state(daemon: Daemon) -> str:
    status = daemon.status() or {}
    modem = status.get("modem") or {}
    return str(modem.get("state", ""))


def asleep(daemon: Daemon) -> bool:
    return not daemon.online() and modem_state(daemon) == "standby"


@dataclass
class Wake:
    sms: float
    read: float
    dial: float
    data_up: float
    registered: float
    session: float
    first_byte: float

    def steps(self) -> list[tuple[str, float]]:
        return [
            ("SMS delivered -> read by the inbox (AT+CMGR)", self.read - self.sms),
            ("read -> data call dialled (verify, counter on disk)", self.dial - self.read),
            ("dialled -> data up (first datagram out: HELLO)", self.data_up - self.dial),
            ("data up -> registered with the broker", self.registered - self.data_up),
            ("registered -> session up ('forwarding')", self.session - self.registered),
            ("session -> first byte echoed", self.first_byte - self.session),
            ("total: SMS delivered -> first byte", self.first_byte - self.sms),
        ]


def one_wake(
    daemon: Daemon, viewer: Viewer, provider: SmsProvider, commands: Commands, relay: Relay, echo_port: int
) -> Wake:
    wait_for("the recorder asleep (offline, modem in standby)", lambda: asleep(daemon), IDLE_S + 60)
    started = time.monotonic()
    argv = [str(BIN / "dvrlink"), "--home", str(viewer.home), "forward", SERIAL, f"0:{echo_port}"]
    proc = subprocess.Popen(
        [*argv, "--host-address", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        line = LineReader(proc.stdout).until("'forwarding'", lambda text: text.startswith("forwarding"), 120)
        session = time.monotonic()
        port = int(line.split()[1].rsplit(":", 1)[1])
        payload = b"first bytes through a woken recorder"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload) and (chunk := conn.recv(65536)):
                got += chunk
        first_byte = time.monotonic()
        if got != payload:
            raise BenchError(f"the forward echoed {got!r}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
    sms = next((at for at in provider.delivered() if at >= started), None)
    if sms is None:
        raise BenchError("no wake SMS went to the provider")
    read = commands.after("AT+CMGR", sms)
    dial = commands.after(DIAL, sms)
    data_up = relay.first(sms, "up")
    registered = relay.first(sms, "down", MessageType.REGISTERED)
    if None in (read, dial, data_up, registered):
        raise BenchError(
            f"a step was not seen: read {read}, dial {dial}, up {data_up}, registered {registered}"
        )
    assert read is not None and dial is not None and data_up is not None and registered is not None
    return Wake(sms, read, dial, data_up, registered, session, first_byte)


def print_wakes(title: str, wakes: Sequence[Wake]) -> None:
    print(f"\n{title} (median of {len(wakes)}; seconds)")
    rows = [w.steps() for w in wakes]
    for i, (name, _) in enumerate(rows[0]):
        values = [row[i][1] for row in rows]
        spread = f"   [{min(values):.3f} .. {max(values):.3f}]" if len(values) > 1 else ""
        print(f"  {name:<55} {statistics.median(values):7.3f}{spread}")


def run(quick: bool, window: float, runs: int) -> None:
    sim = SimCard.for_network(
        "26201", iccid="89490200001234500001", working_apns=frozenset({"internet.telekom"})
    )
    echo = EchoServer()
    started: list[Daemon | Broker] = []
    with tempfile.TemporaryDirectory(prefix="bench-sms-") as tmp, ModemEmulator("quectel-ec25", sim) as emu:
        root = Path(tmp)
        commands = Commands(emu)
        commands.watch()
        provider = SmsProvider(emu, OWN_NUMBER)
        relay: Relay | None = None
        try:
            broker_dir = root / "broker"
            broker_dir.mkdir()
            broker_toml = broker_dir / "broker.toml"
            broker_toml.write_text(sms_broker_toml(broker_dir, provider, BROKER_NUMBER, wake_hold_s=90))
            broker = start_broker(broker_dir, config=broker_toml)
            started.append(broker)
            add_user(broker.state_dir, "alice", "correct horse")
            relay = Relay(broker.udp_port)
            daemon = make_daemon(
                root,
                SERIAL,
                dataclasses.replace(broker, udp_port=relay.port),
                keepalive_interval=KEEPALIVE_S,
                extra_toml=sms_wake_daemon_toml(emu, echo.port, IDLE_S, BROKER_NUMBER, OWN_NUMBER),
            )
            daemon.start(env=DHCP_ENV)
            started.append(daemon)
            wait_for(f"{SERIAL} online", daemon.online, 60)
            viewer = Viewer(root / "viewer")
            viewer.login(broker, "alice", "correct horse")
            viewer.run("pair", SERIAL, PairingUri.parse(daemon.pairing_uri()).code)

            # (a) idle IP bytes while asleep
            wait_for("the recorder asleep (offline, modem in standby)", lambda: asleep(daemon), IDLE_S + 60)
            begin = time.monotonic()
            dials_before = sum(1 for _, line in list(commands.seen) if line.startswith(DIAL))
            samples = call_up = 0
            commands_before = len(commands.seen)
            while time.monotonic() - begin < window:
                samples += 1
                call_up += emu.model.ecm_call is not None
                time.sleep(0.5)
            end = time.monotonic()
            datagrams, wire = relay.bytes_between(begin, end)
            dials = sum(1 for _, line in list(commands.seen) if line.startswith(DIAL)) - dials_before
            at_commands = len(commands.seen) - commands_before
            print(f"(a) idle IP bytes while asleep, over {end - begin:.0f} s (then x 30 days / window)")
            print(f"  datagrams between recorder and broker:   {datagrams}")
            print(f"  bytes (payload + 28 B IPv4/UDP each):    {wire}")
            month = wire * MONTH_S / (end - begin)
            print(f"  per month, extrapolated:                 {month:.0f} B   target 0 B")
            print(f"  data call up in emulator samples:        {call_up} of {samples}")
            print(f"  dial commands while asleep:              {dials}")
            print(f"  AT commands meanwhile (polls, SMS):      {at_commands} (the AT port, no IP)")
            if not asleep(daemon):
                raise BenchError("the recorder woke during the idle window")

            # (b) wake latency, no network delays; (c) with the published delays
            for title, delays in (
                ("(b) wake latency in the emulator, no network delays", NetworkDelays()),
                (
                    f"(c) wake latency, attach {PUBLISHED.attach_s:g} s and PDP activation "
                    f"{PUBLISHED.pdp_activation_s:g} s (published figures)",
                    PUBLISHED,
                ),
            ):
                emu.set_network_delays(delays)
                wakes = [one_wake(daemon, viewer, provider, commands, relay, echo.port) for _ in range(runs)]
                print_wakes(title, wakes)
        finally:
            stop_all(list(reversed(started)))
            if relay is not None:
                relay.close()
            provider.close()
            echo.close()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short window and one wake per case")
    parser.add_argument("--window", type=float, default=None, help="seconds of idle counting (default 120)")
    parser.add_argument("--runs", type=int, default=None, help="wakes per case (default 3)")
    args = parser.parse_args(argv)
    window = args.window if args.window is not None else (15.0 if args.quick else 120.0)
    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    return run_main(lambda: run(args.quick, window, runs))


if __name__ == "__main__":
    sys.exit(main())
