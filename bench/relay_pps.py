"""TURN relay forwarding in packets per second on one core, ours against coturn in the same run.

    python -m bench.relay_pps [--quick] [--payload B] [--rounds N]

Both servers run at the same time, pinned to core 1: the broker's built-in TURN relay
(``dvrlink-broker serve``, TURN on a free UDP port, loopback peers allowed) and coturn
(``turnserver -c /dev/null -n --use-auth-secret --static-auth-secret=S --realm dvrlink
--relay-threads 1 --allow-loopback-peers``, UDP only). Both get REST credentials
(``expiry:name`` / base64 HMAC-SHA1) made from their own secret. Only one is under load at a
time; the rounds alternate which goes first (ours, coturn; then coturn, ours; ...), so a
neighbour that loads the machine for a while weighs on both alike.

The generator (this process, core 0) is a minimal TURN client on ``aioice.stun``: Allocate (with
the 401 round), ChannelBind to a peer socket it owns on 127.0.0.1, then it sends ChannelData
frames (``--payload`` bytes each, 100 by default) as fast as it can, in bursts of 32, draining
the peer socket between bursts. The same generator, frame and burst go to both servers. After a
1 s warm-up it counts, for 10 s (2 s with ``--quick``), the datagrams of exactly ``--payload``
bytes the peer socket receives from the relayed address, and reads the server's CPU time (utime
+ stime over all threads, which includes the softirq work its sends cause on its core) at the
start and the end of that same window.

Figures per round: relayed packets per wall-clock second, and per CPU-second of the server
(packets counted / server CPU seconds in the window). The target (ours >= 0.5 of coturn) is
judged on the median over the rounds of the per-core ratio, since neither server gets core 1 to
itself on a shared machine. The offered rate and each server's share of a core are printed, so
a reader can see whether both were offered the same load and how close each was to saturation
(a server idle between packets wakes up for fewer packets at a time, so its per-core figure
understates what a full core would do; one that shares core 1 with other processes may also
lose some cache warmth).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aioice import stun

from bench.common import (
    GENERATOR_CORE,
    LOOPBACK,
    SERVER_CORE,
    BenchError,
    CoreMeter,
    cpu_seconds,
    describe_pinning,
    fmt_int,
    free_udp_port,
    log_tail,
    pin_to_core,
    run_main,
    taskset_prefix,
    verdict,
)
from bench.session_rig import on_core, start_bench_broker
from dvrlink.broker.turn_credentials import long_term_key, make_credentials

REALM = "dvrlink"
UDP_TRANSPORT = 0x11000000
CHANNEL = 0x4000
BURST = 32
TARGET_RATIO = 0.5
REQUEST_TIMEOUT_S = 2.0
REQUEST_TRIES = 5
WARMUP_S = 1.0
COTURN_START_TIMEOUT_S = 10.0
SATURATED = 0.9  # a server using at least this share of a core counts as saturated


@dataclass(frozen=True, slots=True)
class Result:
    """One server's figures."""

    name: str
    received: int
    sent: int
    wall: float
    server_cpu: float
    generator_cpu: float
    core_load: str

    @property
    def per_second(self) -> float:
        return self.received / self.wall

    @property
    def per_core_second(self) -> float:
        return self.received / self.server_cpu if self.server_cpu > 0 else 0.0

    @property
    def offered(self) -> float:
        return self.sent / self.wall

    @property
    def core_share(self) -> float:
        return self.server_cpu / self.wall


class TurnClient:
    """A blocking, minimal TURN-over-UDP client: enough to allocate and bind one channel."""

    def __init__(self, server: tuple[str, int], username: str, password: str) -> None:
        self.server = server
        self.username = username
        self.password = password
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.connect(server)
        self.sock.settimeout(REQUEST_TIMEOUT_S)
        self.key = b""
        self.nonce = b""
        self.realm = REALM

    def _transact(self, request: stun.Message, sign: bool) -> stun.Message:
        if sign:
            request.attributes["USERNAME"] = self.username
            request.attributes["REALM"] = self.realm
            request.attributes["NONCE"] = self.nonce
            request.add_message_integrity(self.key)
        else:
            request.add_fingerprint()
        data = bytes(request)
        for _ in range(REQUEST_TRIES):
            with contextlib.suppress(ConnectionRefusedError):
                self.sock.send(data)
            deadline = time.monotonic() + REQUEST_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    reply = self.sock.recv(2048)
                except TimeoutError:
                    break
                except ConnectionRefusedError:  # nothing listens (yet): ICMP port unreachable
                    time.sleep(0.1)
                    break
                if len(reply) < 20 or reply[0] >= 0x40:
                    continue
                try:
                    message = stun.parse_message(reply)
                except ValueError:
                    continue
                if message.transaction_id == request.transaction_id:
                    return message
        raise BenchError(f"no answer from TURN server {self.server} to {request.message_method.name}")

    def allocate(self) -> tuple[str, int]:
        """Allocate (first unauthenticated, then with the nonce and realm from the 401).

        Raises:
            BenchError: the server refused or did not answer.
        """
        first = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
        first.attributes["REQUESTED-TRANSPORT"] = UDP_TRANSPORT
        reply = self._transact(first, sign=False)
        if reply.message_class == stun.Class.ERROR:
            self.nonce = bytes(reply.attributes.get("NONCE", b""))
            self.realm = str(reply.attributes.get("REALM", REALM))
            self.key = long_term_key(self.username, self.realm, self.password)
            again = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
            again.attributes["REQUESTED-TRANSPORT"] = UDP_TRANSPORT
            again.attributes["LIFETIME"] = 600
            reply = self._transact(again, sign=True)
        if reply.message_class != stun.Class.RESPONSE:
            raise BenchError(
                f"TURN server {self.server} refused Allocate: {reply.attributes.get('ERROR-CODE')}"
            )
        host, port = reply.attributes["XOR-RELAYED-ADDRESS"]
        return str(host), int(port)

    def channel_bind(self, peer: tuple[str, int]) -> None:
        """Bind ``CHANNEL`` to ``peer`` (which also installs the permission).

        Raises:
            BenchError: the server refused or did not answer.
        """
        request = stun.Message(stun.Method.CHANNEL_BIND, stun.Class.REQUEST)
        request.attributes["CHANNEL-NUMBER"] = CHANNEL
        request.attributes["XOR-PEER-ADDRESS"] = peer
        reply = self._transact(request, sign=True)
        if reply.message_class != stun.Class.RESPONSE:
            raise BenchError(
                f"TURN server {self.server} refused ChannelBind to {peer}: "
                f"{reply.attributes.get('ERROR-CODE')}"
            )

    def close(self) -> None:
        """Close the socket (the allocation times out on the server)."""
        self.sock.close()


@dataclass(frozen=True, slots=True)
class Window:
    """What one blast counted, and the CPU the server and this process used in the same window."""

    received: int
    sent: int
    wall: float
    server_cpu: float
    generator_cpu: float
    core_load: str


def blast(
    client: TurnClient,
    peer: socket.socket,
    relayed: tuple[str, int],
    payload: int,
    window: float,
    server_cpu: Callable[[], float],
) -> Window:
    """Send ChannelData as fast as possible; count the datagrams of ``payload`` bytes the peer
    receives from ``relayed`` within the window after ``WARMUP_S``, and the CPU used in it."""
    frame = struct.pack("!HH", CHANNEL, payload) + bytes(payload)
    send = client.sock.send
    recv_from = peer.recvfrom
    peer.setblocking(False)
    client.sock.setblocking(False)
    received = sent = 0
    counting = False
    start = time.perf_counter()
    t_count = start + WARMUP_S
    end = t_count + window
    t_window = start
    cores = CoreMeter()
    cpu0 = gen0 = 0.0
    while True:
        for _ in range(BURST):
            try:
                send(frame)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ECONNREFUSED:
                    raise
            sent += 1
        while True:
            try:
                data, source = recv_from(65536)
            except BlockingIOError:
                break
            if source == relayed and len(data) == payload:
                received += 1
        now = time.perf_counter()
        if not counting and now >= t_count:
            counting = True
            received = sent = 0
            cpu0 = server_cpu()
            gen0 = time.process_time()
            cores.start()
            t_window = time.perf_counter()
        elif counting and now >= end:
            server_used = server_cpu() - cpu0
            generator_used = time.process_time() - gen0
            wall = time.perf_counter() - t_window
            loads = cores.loads()
            load = "; ".join(f"core {c} {loads[c]}" for c in sorted(loads))
            return Window(received, sent, wall, server_used, generator_used, load)


def measure(
    name: str,
    server_pid: int,
    server: tuple[str, int],
    username: str,
    password: str,
    payload: int,
    window: float,
) -> Result:
    """Allocate on ``server``, bind a channel to a fresh peer socket, blast and count."""
    client = TurnClient(server, username, password)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind((LOOPBACK, 0))
        with contextlib.suppress(OSError):
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        relayed = client.allocate()
        client.channel_bind(peer.getsockname())
        counted = blast(client, peer, relayed, payload, window, lambda: cpu_seconds(server_pid))
        return Result(
            name,
            counted.received,
            counted.sent,
            counted.wall,
            counted.server_cpu,
            counted.generator_cpu,
            counted.core_load,
        )
    finally:
        client.close()
        peer.close()


@contextlib.contextmanager
def coturn(work: Path, secret: str) -> Iterator[tuple[int, tuple[str, int]]]:
    """coturn with REST credentials on a free loopback port, pinned to core 1; yields (pid, address).

    Raises:
        BenchError: it exits or does not answer.
    """
    port = free_udp_port()
    log = work / "turnserver.out"
    argv = [
        *taskset_prefix(SERVER_CORE),
        "turnserver", "-c", "/dev/null", "-n",
        "--use-auth-secret", f"--static-auth-secret={secret}", "--realm", REALM,
        "--listening-ip", LOOPBACK, "--listening-port", str(port), "--relay-ip", LOOPBACK,
        "--allow-loopback-peers", "--no-cli", "--relay-threads", "1",
        "--no-tcp", "--no-tls", "--no-dtls", "--no-tcp-relay",
        "--userdb", str(work / "turndb"), "--pidfile", str(work / "turnserver.pid"),
        "--log-file", str(work / "turnserver.log"), "--simple-log",
    ]  # fmt: skip
    with log.open("wb") as out:
        try:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise BenchError(f"cannot start turnserver: {exc}") from exc
    try:
        wait_for_stun((LOOPBACK, port), proc, log)
        yield proc.pid, (LOOPBACK, port)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_for_stun(server: tuple[str, int], proc: subprocess.Popen[bytes], log: Path) -> None:
    """Send Binding requests until ``server`` answers one.

    Raises:
        BenchError: the process exits, or there is no answer within ``COTURN_START_TIMEOUT_S``.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(server)
        sock.settimeout(0.2)
        deadline = time.monotonic() + COTURN_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"turnserver exited with {proc.returncode}:\n{log_tail(log)}")
            request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            try:
                sock.send(bytes(request))
                reply = sock.recv(2048)
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.05)
                continue
            if reply[8:20] == request.transaction_id:
                return
    raise BenchError(
        f"turnserver on {server[0]}:{server[1]} answered no STUN Binding within "
        f"{COTURN_START_TIMEOUT_S:g} s:\n{log_tail(log)}"
    )


def report(result: Result) -> None:
    """Print one server's figures."""
    loss = 1 - result.received / result.sent if result.sent else 0.0
    print(
        f"  {result.name}: {fmt_int(result.per_second)} packets/s relayed over {result.wall:.1f} s "
        f"(offered {fmt_int(result.offered)}/s, {loss:.0%} not relayed); server used "
        f"{result.core_share:.2f} of a core -> "
        f"{fmt_int(result.per_core_second)} per core-second; "
        f"generator used {result.generator_cpu / result.wall:.2f}; {result.core_load}"
    )


def coturn_version() -> str:
    """``coturn 4.6.1``, or just ``coturn`` if it does not say."""
    try:
        done = subprocess.run(
            ["turnserver", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "coturn"
    words = done.stdout.split()
    return f"coturn {words[0]}" if words else "coturn"


def summary(rounds: list[tuple[Result, Result]]) -> None:
    """Print the ratios of every round and judge the median."""
    ratios = [
        ours.per_core_second / theirs.per_core_second if theirs.per_core_second else 0.0
        for ours, theirs in rounds
    ]
    wall_ratios = [
        ours.per_second / theirs.per_second if theirs.per_second else 0.0 for ours, theirs in rounds
    ]
    offered = [ours.offered / theirs.offered if theirs.offered else 0.0 for ours, theirs in rounds]
    if len(rounds) > 1:
        print(f"  per-core ratio by round: {', '.join(f'{r:.2f}' for r in ratios)}")
        for label, index in (("ours", 0), ("coturn", 1)):
            per_core = [pair[index].per_core_second for pair in rounds]
            print(
                f"  {label} per core-second: median {fmt_int(statistics.median(per_core))} "
                f"(min {fmt_int(min(per_core))}, max {fmt_int(max(per_core))})"
            )
    print(f"  offered load, ours / coturn: {', '.join(f'{r:.2f}' for r in offered)}")
    unsaturated = [
        f"{result.name} round {k + 1} ({result.core_share:.2f})"
        for k, pair in enumerate(rounds)
        for result in pair
        if result.core_share < SATURATED
    ]
    if unsaturated:
        print(
            f"  below {SATURATED} of a core (other processes on core 1, or idle between packets; "
            "the per-core figure of a server idle between packets understates it): " + ", ".join(unsaturated)
        )
    ratio = statistics.median(ratios)
    print(f"  ratio to coturn, wall-clock packets/s: {statistics.median(wall_ratios):.2f}")
    print(
        f"  ratio to coturn per core: {ratio:.2f}   "
        f"[target >= {TARGET_RATIO}: {verdict(ratio >= TARGET_RATIO)}]"
    )


def run(window: float, payload: int, rounds: int) -> None:
    """The whole benchmark."""
    if not pin_to_core(GENERATOR_CORE):
        print(f"  (core {GENERATOR_CORE} is not online; the generator is not pinned)")
    print(
        f"TURN relay packets/s: ChannelData with {payload} B payload, {window:g} s window, "
        f"{rounds} round{'s' if rounds > 1 else ''}, loopback"
    )
    have_coturn = subprocess.run(["which", "turnserver"], capture_output=True, check=False).returncode == 0
    with tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        with on_core(SERVER_CORE):
            broker = start_bench_broker(work / "broker")
        stack.callback(broker.stop)
        print(f"  {describe_pinning('dvrlink-broker', broker.proc.pid, SERVER_CORE)}")
        secret = (broker.state_dir / "turn_secret").read_text().strip()

        def ours() -> Result:
            user, password = make_credentials(secret, "bench", time.time(), 3600)
            address = (LOOPBACK, broker.turn_port)
            return measure("dvrlink-broker TURN", broker.proc.pid, address, user, password, payload, window)

        if not have_coturn:
            report(ours())
            print("  coturn: not installed (Debian package coturn); no comparison")
            return
        coturn_secret = "bench-secret"
        pid, coturn_address = stack.enter_context(coturn(work, coturn_secret))
        print(f"  {describe_pinning('turnserver', pid, SERVER_CORE)}")
        label = f"{coturn_version()} (1 relay thread)"

        def theirs() -> Result:
            user, password = make_credentials(coturn_secret, "bench", time.time(), 3600)
            return measure(label, pid, coturn_address, user, password, payload, window)

        results: list[tuple[Result, Result]] = []
        for k in range(rounds):
            if rounds > 1:
                print(f"  round {k + 1}:")
            if k % 2 == 0:
                mine = ours()
                report(mine)
                other = theirs()
                report(other)
            else:
                other = theirs()
                report(other)
                mine = ours()
                report(mine)
            results.append((mine, other))
    summary(results)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="TURN relay packets per second, ours vs coturn")
    parser.add_argument("--quick", action="store_true", help="2 s window instead of 10 s")
    parser.add_argument("--payload", type=int, default=100, help="ChannelData payload bytes (1-1200)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternating rounds per server (default 3; 1 with --quick)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.payload <= 1200:
        parser.error("--payload must be 1-1200")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if not 1 <= rounds <= 20:
        parser.error("--rounds must be 1-20")
    return run_main(lambda: run(2.0 if args.quick else 10.0, args.payload, rounds))


if __name__ == "__main__":
    sys.exit(main())
