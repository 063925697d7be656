"""A bulk transfer up a cellular uplink of the NAT lab, with the uplink's queue and the device's
presence watched while it runs (issue 14: a GPRS or 3G link must neither have its queue filled by
the data plane nor starve the presence keepalives that share it).

It reuses the matrix rig (:class:`hil.matrix.rig.MatrixRig`): the real ``dvrlink-broker``,
``dvrlinkd run`` and ``dvrlink forward`` processes in the lab's namespaces. One run:

1. The device side behind ``device_nat`` with ``profile`` on its uplink (``Lab.set_profile``: the
   NAT's ``wan0``, direction ``up``), the viewer public on a LAN link.
2. :class:`BulkService` on the device's 127.0.0.1:5540: each connection gets bytes as fast as the
   socket takes them, until ``duration_s`` or ``max_bytes``, then a close (a recorder pushing
   more than the uplink carries).
3. ``dvrlinkd`` with a short fixed keepalive; the viewer pairs, starts ``dvrlink forward`` and
   drains the forward's local port in this process (:func:`drain`).
4. While bytes flow, :class:`QdiscSampler` reads ``tc -s -j qdisc show dev wan0`` in the NAT's
   namespace every ``sample_s`` (backlog, drops, packets sent) and :class:`PresenceWatch` reads
   the daemon's status file (presence state, registration, the last acknowledged keepalive and
   its round trip).
5. At the end: the session's plane and path from the status file, and the broker's own view of
   the device (``dvrlink devices --json``: online, last seen).

Every wait and loop is bounded; :func:`run_transfer` never raises for what it measured, the
record says what was seen. ``python -m hil.matrix.congestion [PROFILE ...]`` prints the figures.
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil import netlab
from hil.matrix.cells import Cell
from hil.matrix.netns import listener_in, socket_in
from hil.matrix.rig import (
    BIN,
    FORWARDING,
    PATH_LINE,
    SERIAL,
    SERVICE_PORT,
    LineLog,
    MatrixError,
    MatrixRig,
    _stop,
    _tail,
    matrix_rig,
    wait,
)
from hil.netlab import NatType
from hil.netlab.profiles import profile as link_profile

CHUNK = 64 * 1024
SAMPLE_S = 0.2
MAX_SAMPLES = 1000
"""Bound on the samples one sampler keeps (200 s at 0.2 s)."""
TC_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class QdiscSample:
    """One reading of a root qdisc's counters (``tc -s -j qdisc show``)."""

    at: float
    """``time.monotonic()`` of the reading."""
    kind: str
    """``netem`` or ``tbf`` (or ``noqueue``: no profile on the link)."""
    backlog_bytes: int
    backlog_packets: int
    sent_bytes: int
    sent_packets: int
    drops: int


def parse_qdisc(text: str, at: float) -> QdiscSample:
    """The root qdisc in ``tc -s -j qdisc show dev DEV`` output.

    Raises:
        ValueError: not tc's JSON, or no root qdisc in it (the message has the text).
    """
    try:
        qdiscs = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"tc printed no JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(qdiscs, list):
        raise ValueError(f"tc's JSON is not a list of qdiscs: {text[:200]!r}")
    for qdisc in qdiscs:
        if isinstance(qdisc, dict) and qdisc.get("root"):
            try:
                return QdiscSample(
                    at=at,
                    kind=str(qdisc["kind"]),
                    backlog_bytes=int(qdisc.get("backlog", 0)),
                    backlog_packets=int(qdisc.get("qlen", 0)),
                    sent_bytes=int(qdisc.get("bytes", 0)),
                    sent_packets=int(qdisc.get("packets", 0)),
                    drops=int(qdisc.get("drops", 0)),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"tc's root qdisc lacks a counter ({exc}): {qdisc}") from None
    raise ValueError(f"no root qdisc in tc's output: {text[:200]!r}")


def read_qdisc(ns: str, dev: str) -> QdiscSample:
    """The root qdisc of ``dev`` in namespace ``ns`` now.

    Raises:
        ValueError: tc failed or printed something else (the message has what it printed).
    """
    try:
        proc = subprocess.run(
            ["tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev],
            capture_output=True,
            text=True,
            timeout=TC_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"tc qdisc show dev {dev} in {ns} took over {TC_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise ValueError(f"tc qdisc show dev {dev} in {ns} failed ({proc.returncode}): {proc.stderr.strip()}")
    return parse_qdisc(proc.stdout, time.monotonic())


class QdiscSampler:
    """Reads a link's root qdisc every ``interval`` seconds on a thread until :meth:`stop`."""

    def __init__(self, ns: str, dev: str, interval: float = SAMPLE_S) -> None:
        self.ns, self.dev, self.interval = ns, dev, interval
        self.samples: list[QdiscSample] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"qdisc-{ns}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < MAX_SAMPLES:
            try:
                self.samples.append(read_qdisc(self.ns, self.dev))
            except ValueError as exc:
                self.errors.append(str(exc))
                if len(self.errors) > 10:
                    return
            self._stop.wait(self.interval)

    def stop(self) -> list[QdiscSample]:
        """Stop (bounded) and return the samples."""
        self._stop.set()
        self._thread.join(TC_TIMEOUT_S + 1)
        return list(self.samples)


@dataclass(frozen=True, slots=True)
class PresenceSample:
    """The daemon's presence, as one read of its status file showed it."""

    at: float
    state: str | None
    registered_at: float | None
    session_id: int | None
    last_keepalive: float | None
    """Unix time of the last acknowledged keepalive (or of the registration)."""
    rtt: float | None
    """Round trip of that keepalive (or registration), seconds."""


class PresenceWatch:
    """Reads the daemon's status file every ``interval`` seconds on a thread until :meth:`stop`."""

    def __init__(self, rig: MatrixRig, interval: float = SAMPLE_S) -> None:
        self._rig = rig
        self.interval = interval
        self.samples: list[PresenceSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="presence-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < MAX_SAMPLES:
            status = self._rig.daemon_status()
            if status:
                self.samples.append(
                    PresenceSample(
                        at=time.monotonic(),
                        state=_opt(status.get("state"), str),
                        registered_at=_opt(status.get("registered_at"), float),
                        session_id=_opt(status.get("session_id"), int),
                        last_keepalive=_opt(status.get("last_keepalive"), float),
                        rtt=_opt(status.get("rtt"), float),
                    )
                )
            self._stop.wait(self.interval)

    def stop(self) -> list[PresenceSample]:
        """Stop (bounded) and return the samples."""
        self._stop.set()
        self._thread.join(2)
        return list(self.samples)


def _opt(value: object, kind: type[Any]) -> Any:
    if value is None or isinstance(value, bool):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


class BulkService:
    """A TCP listener on ``127.0.0.1:port`` in ``ns`` that sends each connection bytes as fast as
    the socket takes them, for at most ``duration_s`` seconds and ``max_bytes`` bytes, then closes
    it: a recorder sending more than its uplink carries. ``sent`` counts what the socket took."""

    def __init__(self, ns: str, port: int, duration_s: float, max_bytes: int) -> None:
        self.duration_s, self.max_bytes = duration_s, max_bytes
        self.sent = 0
        self.connections = 0
        self.errors: list[str] = []
        self._listener = listener_in(ns, port, 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"bulk-service-{ns}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        chunk = bytes(range(256)) * (CHUNK // 256)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                deadline = time.monotonic() + self.duration_s
                conn.settimeout(0.2)
                try:
                    while not self._stop.is_set() and self.sent < self.max_bytes:
                        if time.monotonic() >= deadline:
                            break
                        with contextlib.suppress(TimeoutError):
                            self.sent += conn.send(chunk[: self.max_bytes - self.sent])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the viewer hung up: the end of a transfer
                except OSError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop sending and accepting; wait up to 2 s for the thread."""
        self._stop.set()
        self._thread.join(2)
        self._listener.close()


@dataclass
class Drained:
    """What :func:`drain` read."""

    received: int = 0
    connected_at: float | None = None
    """``time.monotonic()`` the connection to the forward was up."""
    first_at: float | None = None
    last_at: float | None = None
    ended: bool = False
    """The far end closed before ``duration`` was up."""
    error: str | None = None


def drain(ns: str, port: int, duration: float) -> Drained:
    """Connect to ``127.0.0.1:port`` in ``ns``, read for ``duration`` seconds (or until the peer
    closes) and close; never raises (the result's ``error`` says what failed)."""
    result = Drained()
    try:
        with socket_in(ns) as sock:
            sock.settimeout(10.0)
            sock.connect(("127.0.0.1", port))
            result.connected_at = time.monotonic()
            deadline = result.connected_at + duration
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(min(left, 1.0))
                try:
                    data = sock.recv(CHUNK)
                except TimeoutError:
                    continue
                now = time.monotonic()
                if not data:
                    result.ended = True
                    break
                if result.first_at is None:
                    result.first_at = now
                result.last_at = now
                result.received += len(data)
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


@dataclass
class CongestionRecord:
    """What one transfer showed (JSON-ready with ``dataclasses.asdict``)."""

    profile: str
    device_nat: str
    qdisc_kind: str | None = None
    uplink_bytes_per_s: float = 0.0
    queue_limit_packets: int = 0
    """The profile's queue limit (netem ``limit``; tbf holds ``queue_packets * 1500`` bytes)."""
    queue_limit_bytes: int | None = None
    """tbf's limit in bytes; None on netem (a limit in packets)."""
    registered: bool = False
    connected: bool = False
    path: str | None = None
    """The session's path the daemon lists at the end: relay, direct or lan."""
    plane: str | None = None
    """What carried the session's streams, as the daemon lists it: ``data plane`` or ``quic``."""
    viewer_paths: list[str] = field(default_factory=list)
    """Paths ``dvrlink forward`` named, in order."""
    service_sent: int = 0
    received: int = 0
    transfer_s: float = 0.0
    """From the connection to the forward until its last byte (the viewer reads for
    ``TransferPlan.duration_s``, then hangs up)."""
    goodput_bytes_per_s: float = 0.0
    ended: bool = False
    backlog_packets: list[int] = field(default_factory=list)
    """Backlog in packets per sample, steady state (the first ``warmup_s`` left out)."""
    backlog_bytes: list[int] = field(default_factory=list)
    all_backlog_packets: list[int] = field(default_factory=list)
    """Every sample's backlog in packets, warm-up included."""
    samples: int = 0
    qdisc_sent_packets: int = 0
    """Packets the uplink's qdisc sent during the transfer."""
    qdisc_drops: int = 0
    """Packets the uplink's qdisc dropped during the transfer."""
    keepalive_acks: int = 0
    """Distinct acknowledged keepalives the status file showed during the transfer."""
    keepalive_rtts: list[float] = field(default_factory=list)
    """Their round trips, seconds."""
    keepalive_s: float = 0.0
    states: list[str] = field(default_factory=list)
    """Every presence state the status file showed during the transfer (in order, repeats folded)."""
    registrations: int = 0
    """Distinct (registered_at, session_id) pairs seen during the transfer: 1 if presence never
    registered again."""
    broker_online: bool | None = None
    broker_last_seen: float | None = None
    """Unix time the broker last heard from the device, as ``dvrlink devices --json`` shows it."""
    transfer_started_wall: float = 0.0
    """Unix time the transfer began."""
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def median_backlog(self) -> float:
        return statistics.median(self.backlog_packets) if self.backlog_packets else 0.0

    @property
    def max_backlog(self) -> int:
        return max(self.backlog_packets, default=0)

    def line(self) -> str:
        """One line of figures for a log or a test's output."""
        rtts = self.keepalive_rtts
        rtt = f"{1000 * statistics.median(rtts):.0f}/{1000 * max(rtts):.0f} ms" if rtts else "-"
        kbytes = max(self.backlog_bytes, default=0) / 1000
        return (
            f"{self.profile} ({self.qdisc_kind}, limit {self.queue_limit_packets} packets): "
            f"path {self.path} on the {self.plane}; "
            f"{self.received / 1e6:.2f} MB in {self.transfer_s:.1f} s = "
            f"{8 * self.goodput_bytes_per_s / 1000:.0f} kbit/s of {8 * self.uplink_bytes_per_s / 1000:.0f}; "
            f"backlog median {self.median_backlog:.0f} / max {self.max_backlog} packets "
            f"(max {kbytes:.1f} kB) over {len(self.backlog_packets)} samples; "
            f"drops {self.qdisc_drops} of {self.qdisc_sent_packets} packets; "
            f"keepalives answered {self.keepalive_acks} "
            f"(every {self.keepalive_s:g} s, rtt median/max {rtt}); "
            f"states {self.states}, registrations {self.registrations}; broker online {self.broker_online}"
        )


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """One transfer's settings; times in seconds."""

    profile: str = "3g"
    device_nat: NatType = NatType.PORT_RESTRICTED_CONE
    duration_s: float = 20.0
    """How long the viewer reads; the service sends until the viewer hangs up (and at most
    ``3 * duration_s``, or ``max_bytes``)."""
    max_bytes: int = 16_000_000
    """The most the service sends (3G's uplink carries about 2.5 MB in 20 s)."""
    keepalive_s: float = 3.0
    warmup_s: float = 3.0
    """Samples this long after the first byte are start-up (slow start), not steady state."""
    forward_s: float = 30.0
    """Bound on ``dvrlink forward`` reaching "forwarding"."""


def plan_for(profile: str) -> TransferPlan:
    """The transfer the test runs on ``profile``: 20 s, a keepalive every 3 s, or every 5 s on
    the slow profiles, so that a keepalive's retries (1.5 s each, 4.5 s in all) outlast the
    start-up burst of 10 datagrams (2.5 s at GPRS's 40 kbit/s, plus 600 ms of round trip on
    netem)."""
    slow = (link_profile(profile).up_kbit or 0) < 500
    return TransferPlan(profile=profile, duration_s=20.0, keepalive_s=5.0 if slow else 3.0)


def run_transfer(rig: MatrixRig, plan: TransferPlan, folder: Path) -> CongestionRecord:
    """Run one transfer as the module's docstring says. Never raises for an outcome; the record's
    ``error`` says what failed.

    Raises:
        MatrixError: the lab or the pairing could not be set up.
    """
    chosen = link_profile(plan.profile)
    lab = rig.lab
    rig.prepare(Cell(plan.device_nat, NatType.PUBLIC, plan.profile))
    record = CongestionRecord(plan.profile, plan.device_nat.value, keepalive_s=plan.keepalive_s)
    record.uplink_bytes_per_s = (chosen.up_kbit or 0) * 1000 / 8
    record.queue_limit_packets = chosen.queue_packets
    record.queue_limit_bytes = None if lab.netem else chosen.queue_packets * 1500
    folder.mkdir(parents=True, exist_ok=True)
    daemon_log = folder / "dvrlinkd.log"
    service = BulkService(lab.device_ns, SERVICE_PORT, 3 * plan.duration_s, plan.max_bytes)
    daemon = rig.start_daemon(daemon_log, plan.profile, keepalive_s=plan.keepalive_s)
    forward: subprocess.Popen[str] | None = None
    lines: LineLog | None = None
    try:
        wait(lambda: rig.daemon_state() == "online" or daemon.poll() is not None, rig.timeouts.register)
        record.registered = rig.daemon_state() == "online"
        if not record.registered:
            record.error = f"dvrlinkd did not register (state {rig.daemon_state()}):\n{_tail(daemon_log)}"
            return record
        rig.pair()
        forward = lab.popen(
            lab.viewer_ns,
            [str(BIN / "dvrlink"), "--home", str(rig.viewer_home), "forward", SERIAL, f"0:{SERVICE_PORT}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert forward.stdout is not None
        lines = LineLog(forward.stdout)
        log = lines

        def forwarding() -> str | None:
            return next((line for _, line in log.snapshot() if FORWARDING.match(line)), None)

        wait(lambda: forwarding() or log.ended, plan.forward_s)
        found = forwarding()
        if found is None:
            what = "exited" if lines.ended else f"gave no session within {plan.forward_s:.0f} s"
            record.error = f"dvrlink forward {what}: {lines.text(8) or '(no output)'}"
            return record
        port = int(found.split()[1].rsplit(":", 1)[1])
        record.connected = True
        _measure(rig, plan, record, port)
        if daemon.poll() is not None:
            record.error = f"dvrlinkd exited ({daemon.returncode}) during the transfer:\n{_tail(daemon_log)}"
        if lines.ended:
            record.error = f"dvrlink forward exited during the transfer: {lines.text(8)}"
        paths = [
            m.group(1)
            for _, line in lines.snapshot()
            if (m := FORWARDING.match(line) or PATH_LINE.match(line))
        ]
        record.viewer_paths = [p for i, p in enumerate(paths) if i == 0 or paths[i - 1] != p]
        sessions = rig.daemon_status().get("sessions") or []
        if sessions and isinstance(sessions[0], dict):
            record.path = _opt(sessions[0].get("path"), str)
            record.plane = _opt(sessions[0].get("plane"), str)
        try:
            listed = json.loads(rig.viewer("devices", "--json"))["devices"]
            mine = next(d for d in listed if d.get("serial") == SERIAL)
            record.broker_online = bool(mine.get("online"))
            record.broker_last_seen = _opt(mine.get("last_seen"), float)
        except (MatrixError, ValueError, KeyError, StopIteration, TypeError) as exc:
            record.notes.append(f"dvrlink devices: {type(exc).__name__}: {exc}")
        return record
    finally:
        if forward is not None:
            _stop(forward, signal.SIGINT)
        if lines is not None:
            lines.join(5)
            (folder / "forward.log").write_text(lines.text(200) + "\n")
        _stop(daemon, signal.SIGTERM)
        service.close()
        record.service_sent = service.sent
        if service.errors:
            record.notes.append(f"service: {service.errors[:3]}")


def _measure(rig: MatrixRig, plan: TransferPlan, record: CongestionRecord, port: int) -> None:
    """Drain the forward while sampling the uplink's qdisc and the daemon's presence."""
    lab = rig.lab
    qdisc = QdiscSampler(lab.nat_ns("device"), "wan0")
    presence = PresenceWatch(rig)
    record.transfer_started_wall = time.time()
    started = time.monotonic()
    try:
        drained = drain(lab.viewer_ns, port, plan.duration_s)
    finally:
        samples = qdisc.stop()
        watched = presence.stop()
    record.received = drained.received
    record.ended = drained.ended
    if drained.error:
        record.error = f"draining the forward: {drained.error}"
    if qdisc.errors:
        record.notes.append(f"qdisc: {qdisc.errors[:3]}")
    if drained.connected_at is not None and drained.last_at is not None:
        record.transfer_s = round(drained.last_at - drained.connected_at, 3)
        if record.transfer_s > 0:
            record.goodput_bytes_per_s = round(record.received / record.transfer_s, 1)
    if samples:
        record.qdisc_kind = samples[0].kind
        record.samples = len(samples)
        record.qdisc_sent_packets = samples[-1].sent_packets - samples[0].sent_packets
        record.qdisc_drops = samples[-1].drops - samples[0].drops
        record.all_backlog_packets = [s.backlog_packets for s in samples]
        begin = (drained.first_at or started) + plan.warmup_s
        end = drained.last_at or samples[-1].at
        steady = [s for s in samples if begin <= s.at <= end]
        record.backlog_packets = [s.backlog_packets for s in steady]
        record.backlog_bytes = [s.backlog_bytes for s in steady]
    acks: dict[float, float | None] = {}
    states: list[str] = []
    registrations: set[tuple[float | None, int | None]] = set()
    for sample in watched:
        if sample.state is not None and (not states or states[-1] != sample.state):
            states.append(sample.state)
        registrations.add((sample.registered_at, sample.session_id))
        if (
            sample.last_keepalive is not None
            and sample.last_keepalive >= record.transfer_started_wall
            and sample.last_keepalive not in acks
        ):
            acks[sample.last_keepalive] = sample.rtt
    record.states = states
    record.registrations = len(registrations)
    record.keepalive_acks = len(acks)
    record.keepalive_rtts = [round(r, 4) for r in acks.values() if r is not None]


def main(argv: list[str]) -> int:
    """``python -m hil.matrix.congestion [PROFILE ...]``: one transfer per profile (3g when none),
    one line of figures each."""
    reason = netlab.unavailable_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 77
    with tempfile.TemporaryDirectory(prefix="congestion-") as tmp, matrix_rig(Path(tmp)) as rig:
        for name in argv or ["3g"]:
            record = run_transfer(rig, plan_for(name), Path(tmp) / name)
            print(record.line())
            if record.error:
                print(f"  error: {record.error}")
            for note in record.notes:
                print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
