"""Issue 15: alarm raised on the device → printed by ``dvrlink events --follow`` (median and p95
of 50 on loopback), and bytes on the wire per alarm.

Real ``dvrlink-broker`` and ``dvrlink events --follow`` processes. The device runs in this
process: the daemon's own ``AlarmQueue`` (journal with fsync) and ``PresenceClient`` on a UDP
socket, as ``dvrlinkd`` wires them (``dvrlinkd`` has no local command that raises an alarm; its
HAL and modem service call ``AlarmQueue.raise_alarm`` inside it). The latency runs from
``raise_alarm`` to the follower's line read from its stdout, on one clock. Bytes per alarm are
the EVENT datagrams up and the ACKs down during the 50, with 28 bytes of IPv4 and UDP headers
each.

``--profile gprs`` (or ``edge``, ``3g``; needs root) runs the same in the NAT lab
(``hil/netlab``): the broker in its namespace, the device (this module with ``--device-child``)
in the device namespace behind a port-restricted NAT whose uplink has the profile (GPRS: ~600 ms
round trip, 40/80 kbit/s, 1 % loss each way), the follower in the viewer namespace on a LAN
link. Raise and print are timed on the monotonic clock, which network namespaces share. On a
kernel without ``sch_netem`` the lab's user-space wire (``hil/netlab/wire_nfqueue.py``) gives the
profile its delay, so the round trips are there either way.

    python -m bench.alarm_latency [--quick] [--profile gprs]
"""

from __future__ import annotations

import asyncio
import queue as queues
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.common import BenchError, parse_args, run_main, verdict
from bench.session_rig import percentile, start_bench_broker
from dvrlink.daemon.alarms import AlarmQueue
from dvrlink.protocol.alarm_wire import AlarmKind
from dvrlink.protocol.identity import b64decode_key, ed25519_public_bytes
from dvrlink.protocol.pairing import (
    MAC_SIZE,
    PairingGuard,
    PairRequest,
    PairResult,
    PairStatus,
    result_message,
)
from dvrlink.protocol.presence_client import ClientConfig, PresenceClient
from dvrlink.protocol.presence_events import InviteReceived, Registered
from dvrlink.protocol.presence_wire import INVITE_KIND_PAIR, INVITE_OK, INVITE_UNSUPPORTED, MessageType
from hil import netlab
from hil.loopback import BIN, Viewer, add_user
from hil.netlab import NatType

SERIAL = "DL-BENCH-ALRM"
CODE = "ABCDEFGHJKMNPQRS"
USER = "bench"
PASSWORD = "bench pass phrase"
TARGET_MEDIAN_S = 1.0
IPV4_UDP = 28
STEP_S = 30.0


class Device(asyncio.DatagramProtocol):
    """The device side: presence core with the daemon's alarm queue on one UDP socket."""

    def __init__(self, broker_key: bytes, state: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.key = Ed25519PrivateKey.generate()
        self.public = ed25519_public_bytes(self.key)
        state.mkdir(parents=True, exist_ok=True)
        self.queue = AlarmQueue.open(state)
        self.client = PresenceClient(
            ClientConfig(SERIAL, broker_key, keepalive_interval=25.0), self.key, alarms=self.queue.sender
        )
        self.guard = PairingGuard(SERIAL, self.public, CODE)
        self.loop = asyncio.get_running_loop()
        self.queue.attach(self.client, self.flush, self.loop.time)
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.registered = asyncio.Event()
        self.event_bytes = [0, 0]  # EVENT bytes up, down (with IPv4 and UDP headers)

    async def start(self, port: int) -> None:
        transport, _ = await self.loop.create_datagram_endpoint(lambda: self, remote_addr=(self.host, port))
        self.transport = transport
        self.client.start(self.loop.time())
        self.flush()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[:1] == bytes([MessageType.EVENT]):
            self.event_bytes[1] += len(data) + IPV4_UDP
        self.client.receive_datagram(data, self.loop.time())
        self.flush()

    def flush(self) -> None:
        while (event := self.client.next_event()) is not None:
            if isinstance(event, Registered):
                self.registered.set()
            elif isinstance(event, InviteReceived):
                self.answer(event)
            self.queue.on_event(event)
        assert self.transport is not None
        for data in self.client.datagrams_to_send():
            if data[0] == MessageType.EVENT:
                self.event_bytes[0] += len(data) + IPV4_UDP
            self.transport.sendto(data)
        if self.timer is not None:
            self.timer.cancel()
        deadline = self.client.get_timer()
        self.timer = None if deadline is None else self.loop.call_at(deadline, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.client.handle_timer(self.loop.time())
        self.flush()

    def answer(self, invite: InviteReceived) -> None:
        now = self.loop.time()
        if invite.kind != INVITE_KIND_PAIR:
            self.client.reply_invite(invite.invite_id, INVITE_UNSUPPORTED, b"", now)
            return
        request = PairRequest.decode(invite.body)
        status = self.guard.check(request, time.time())
        confirmation = self.guard.confirmation(request) if status is PairStatus.PAIRED else bytes(MAC_SIZE)
        signature = self.key.sign(result_message(SERIAL, request.viewer_key, request.nonce, status))
        result = PairResult(status, self.public, confirmation, signature)
        self.client.reply_invite(invite.invite_id, INVITE_OK, result.encode(), now)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.client.stop(self.loop.time())
        if self.transport is not None:
            for data in self.client.datagrams_to_send():
                self.transport.sendto(data)
            self.transport.close()
        self.queue.close()


async def measure(work: Path, count: int) -> None:
    broker = start_bench_broker(work / "broker")
    follower: asyncio.subprocess.Process | None = None
    device: Device | None = None
    try:
        add_user(broker.state_dir, USER, PASSWORD)
        device = Device(b64decode_key(broker.public_key, "broker key"), work / "device")
        await device.start(broker.udp_port)
        await asyncio.wait_for(device.registered.wait(), STEP_S)
        viewer = Viewer(work / "viewer")
        await asyncio.to_thread(viewer.login, broker, USER, PASSWORD)
        await asyncio.to_thread(viewer.run, "pair", SERIAL, CODE)
        follower = await asyncio.create_subprocess_exec(
            str(BIN / "dvrlink"), "--home", str(viewer.home), "events", SERIAL, "--follow", "-n", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert follower.stdout is not None
        latencies: list[float] = []
        warmup = 3  # until a line comes back, the follower may not be subscribed yet
        for index in range(count + warmup):
            if index == warmup:
                device.event_bytes = [0, 0]  # the warm-up's ACKs are in by now: their lines were read
            started = time.monotonic()
            device.queue.raise_alarm(AlarmKind.SIGNAL_LOST, channel=index % 4)
            try:
                line = await asyncio.wait_for(follower.stdout.readline(), STEP_S if index >= warmup else 3.0)
            except TimeoutError:
                if index < warmup:
                    continue
                raise BenchError(
                    f"alarm {index + 1} was not printed by `dvrlink events --follow` in {STEP_S} s"
                ) from None
            if not line:
                raise BenchError("`dvrlink events --follow` exited")
            if index >= warmup:
                latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.1)
        up, down = device.event_bytes
    finally:
        if follower is not None and follower.returncode is None:
            follower.kill()
            await follower.wait()
        if device is not None:
            device.close()
        broker.stop()
    report(latencies, up, down, count, "loopback")


def report(latencies: list[float], up: int, down: int, count: int, where: str) -> None:
    """Print the figures."""
    med = statistics.median(latencies)
    print(f"alarm raised -> printed by `dvrlink events --follow`, {where}, {len(latencies)} alarms:")
    print(
        f"  median {med * 1000:.1f} ms, p95 {percentile(latencies, 0.95) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms  (target median <= {TARGET_MEDIAN_S:g} s on a LAN: "
        f"{verdict(med <= TARGET_MEDIAN_S)})"
    )
    print(
        f"bytes on the wire per alarm (IPv4+UDP, channel, no detail or snapshot): {up / count:.0f} up, "
        f"{down / count:.0f} down (ACK), {(up + down) / count:.0f} in all"
    )


async def device_child(host: str, port: int, key: str, state: Path) -> None:
    """``--device-child``: the device in the lab's device namespace. Prints ``registered``, then
    raises one alarm per ``raise`` line on stdin; at end of input prints ``bytes UP DOWN``."""
    device = Device(b64decode_key(key, "broker key"), state, host)
    await device.start(port)
    await asyncio.wait_for(device.registered.wait(), 120.0)
    print("registered", flush=True)
    index = 0
    while (line := await asyncio.to_thread(sys.stdin.readline)) != "":
        if line.strip() == "reset":
            device.event_bytes = [0, 0]
        elif line.strip() == "raise":
            device.queue.raise_alarm(AlarmKind.SIGNAL_LOST, channel=index % 4)
            index += 1
    print(f"bytes {device.event_bytes[0]} {device.event_bytes[1]}", flush=True)
    device.close()


def measure_in_lab(work: Path, count: int, profile: str) -> None:
    """The same figures across the NAT lab with ``profile`` on the device's uplink (root)."""
    reason = netlab.unavailable_reason()
    if reason:
        raise BenchError(f"the NAT lab is not available: {reason}")
    with netlab.topology(NatType.PORT_RESTRICTED_CONE, NatType.PUBLIC) as lab:
        lab.set_profile("device", profile)
        where = f"device on the {profile} profile behind a NAT, viewer on a LAN"
        if not lab.netem:
            where += " (no netem here: the lab's user-space wire adds the profile's delay)"
        broker = netlab.start_lab_broker(lab, work / "broker")
        add_user(broker.state_dir, USER, PASSWORD)
        child = lab.popen(
            lab.device_ns,
            [sys.executable, "-m", "bench.alarm_latency", "--device-child", broker.primary[0],
             str(broker.primary[1]), str(broker.info["public_key"]), str(work / "device")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "registered":
            raise BenchError("the device did not register across the lab")
        home = work / "viewer"
        viewer = [str(BIN / "dvrlink"), "--home", str(home)]
        lab.run(
            lab.viewer_ns,
            [*viewer, "login", "--broker", broker.https_url, "--user", USER, "--password-stdin",
             "--cacert", str(broker.info["cert"])],
            input=PASSWORD + "\n",
        )  # fmt: skip
        lab.run(lab.viewer_ns, [*viewer, "pair", SERIAL, CODE], timeout=120.0)
        follower = lab.popen(
            lab.viewer_ns, [*viewer, "events", SERIAL, "--follow", "-n", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert follower.stdout is not None
        lines: queues.Queue[float] = queues.Queue()
        stdout = follower.stdout

        def stamp_lines() -> None:  # the time each printed line is read
            for _ in iter(stdout.readline, ""):
                lines.put(time.monotonic())

        threading.Thread(target=stamp_lines, daemon=True).start()
        latencies: list[float] = []
        warmup = 3
        for index in range(count + warmup):
            if index == warmup:
                child.stdin.write("reset\n")
            started = time.monotonic()
            child.stdin.write("raise\n")
            child.stdin.flush()
            try:
                printed = lines.get(timeout=STEP_S if index >= warmup else 10.0)
            except queues.Empty:
                if index < warmup:
                    continue
                raise BenchError(f"alarm {index + 1} was not printed within {STEP_S} s") from None
            if index >= warmup:
                latencies.append(printed - started)
            time.sleep(0.5)
        child.stdin.close()
        last = child.stdout.readline().split()
        child.wait(30)
        follower.kill()
        up, down = (int(last[1]), int(last[2])) if last[:1] == ["bytes"] else (0, 0)
        broker.stop()
    report(latencies, up, down, count, where)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--device-child"]:
        host, port, key, state = argv[1:5]
        asyncio.run(device_child(host, int(port), key, Path(state)))
        return 0
    profile = None
    if "--profile" in argv:
        at = list(argv).index("--profile")
        profile = argv[at + 1] if at + 1 < len(argv) else ""
        argv = [*argv[:at], *argv[at + 2 :]]
    args = parse_args("issue 15: alarm -> dvrlink events --follow latency, bytes per alarm", argv)
    count = 10 if args.quick else 50

    def body() -> None:
        with tempfile.TemporaryDirectory(prefix="dvrlink-alarm-bench-") as work:
            if profile:
                measure_in_lab(Path(work), count, profile)
            else:
                asyncio.run(measure(Path(work), count))

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
