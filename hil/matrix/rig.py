"""Run one matrix cell with the real processes: ``dvrlink-broker serve`` in the lab's broker
namespace (one for the whole matrix), ``dvrlinkd run`` in the device namespace (one per cell) and
``dvrlink forward`` in the viewer namespace (one per timed run).

A cell:

1. ``Lab.reconfigure(device_nat, viewer_nat)`` and the link profile on the device's uplink.
2. A one-byte TCP service on 127.0.0.1:5540 in the device namespace (the recorder's port).
3. ``dvrlinkd run``; wait until its status file says ``online`` (or ``backoff``: the broker did
   not answer the registration, as behind a UDP-blocking NAT).
4. Time a run: from the ``Popen`` of ``dvrlink forward SERIAL 0:5540`` until the service's byte
   has come back through the forward, as ``bench/session_setup.py`` times it (the byte is read
   from a socket this process opens in the viewer namespace).
5. Settle: the path is final when the forward's live status line shows ``lan`` or ``direct``
   (the session only leaves a direct path if it dies), or when the device's ICE checks gave up
   (its log says "no direct path"), which leaves the relay. Bounded by ``settle_s``.
6. Stop the forward (SIGINT) and the daemon (SIGTERM); the TURN byte counters give the bytes
   the relay carried for this session.

Bytes relayed: the broker's TURN core counts datagrams only (``TurnServer.stats``), and neither
``/v1/health`` nor its log exposes them. Instead of changing the broker, the matrix counts in the
broker's namespace with iptables: IP bytes clients sent to the TURN port (3479, UDP and TCP) and
bytes the TURN port sent back. Every relayed datagram enters from one client and leaves to the
other, so ``relay_in`` is what the relay carried (plus Allocate/Refresh/ChannelBind, a few
hundred bytes). The hop between the two allocations stays on the broker's loopback and is not
counted.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from hil import netlab
from hil.loopback import add_user
from hil.matrix.cells import DIRECT_PATHS, Cell, CellPlan
from hil.matrix.netns import ByteService, first_byte
from hil.netlab import NatType

BIN = Path(sys.executable).parent
SERIAL = "DL-MATRIX-0001"
USER = "matrix"
PASSWORD = "matrix-password-1"
SERVICE_PORT = 5540
TURN_UDP_PORT = 3479
TCP_443 = 443
API_ADDR = "203.0.113.12"
COUNTER_CHAIN = "DLM-TURN"
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02

MOVED = re.compile(r"viewer moved to path \('(\w+)'")
AUTHENTICATED = re.compile(r"authenticated on the (\w+) path")
PATH_LINE = re.compile(r"^path (\S+)")
FORWARDING = re.compile(r"^forwarding \S+ -> \S+ via (\S+)")


class MatrixError(RuntimeError):
    """The rig itself could not run (not a cell's outcome); the message says what failed."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Bounds of the waits every cell shares, seconds (per-cell bounds are in ``CellPlan``)."""

    register: float = 15.0
    """dvrlinkd start to ``online`` or ``backoff``."""
    first_byte: float = 10.0
    """"forwarding" line to the service's byte."""


@dataclass
class RunResult:
    """One ``dvrlink forward`` run in a cell."""

    connected: bool
    first_byte_s: float | None = None
    """``dvrlink forward`` command start to the first byte through the forward."""
    forwarding_s: float | None = None
    """Command start to its "forwarding ... via PATH" line (session established)."""
    initial_path: str | None = None
    error: str | None = None


@dataclass
class CellRecord:
    """Everything the matrix records for one cell (JSON-ready with ``asdict``)."""

    device_nat: str
    viewer_nat: str
    profile: str
    netem: bool
    registered: bool = False
    presence: str | None = None
    """The daemon's presence transport once registered: udp or tcp."""
    connected: bool = False
    path: str | None = None
    """Final path as the viewer's forward shows it: lan, direct or relay."""
    settled: bool = False
    """True when the path is final: a direct path was taken, or the device's ICE gave up."""
    settle_note: str = ""
    device_path: str | None = None
    """The path the device's log last names for the session (cross-check)."""
    direct_after_s: float | None = None
    """Command start to the status line showing lan/direct (None if it never did)."""
    first_byte_s: float | None = None
    """Median over the runs that connected."""
    first_byte_runs: list[float] = field(default_factory=list)
    forwarding_s: float | None = None
    relay_in_bytes: int | None = None
    """IP bytes clients sent to the broker's TURN port during the first run."""
    relay_out_bytes: int | None = None
    """IP bytes the broker's TURN port sent to clients during the first run."""
    runs: int = 0
    error: str | None = None
    cell_seconds: float = 0.0
    """Wall time the whole cell took (reconfigure to teardown)."""

    def as_dict(self) -> dict[str, Any]:
        """The record as plain JSON values."""
        return asdict(self)


class LineLog:
    """Lines of a process's output with the ``time.monotonic()`` each arrived, read by a thread."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), name="line-log", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in stream:
                with self._lock:
                    self.lines.append((time.monotonic(), line.rstrip("\n")))

    def snapshot(self) -> list[tuple[float, str]]:
        """The lines so far."""
        with self._lock:
            return list(self.lines)

    def text(self, last: int = 20) -> str:
        """The last ``last`` lines, joined."""
        return "\n".join(line for _, line in self.snapshot()[-last:])

    @property
    def ended(self) -> bool:
        """The stream has closed (the process exited) and every line was read."""
        return not self._thread.is_alive()

    def join(self, timeout: float) -> None:
        """Wait (bounded) for the reader to see the end of the stream."""
        self._thread.join(timeout)


def wait(condition: Callable[[], Any], timeout: float) -> Any:
    """The first truthy ``condition()`` within ``timeout`` seconds, else the last (falsy) value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(POLL_S)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def _stop(proc: subprocess.Popen[Any], sig: int) -> int | None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return None


class TurnCounters:
    """iptables byte counters on the broker's TURN port, in the broker namespace (never the host's)."""

    def __init__(self, lab: netlab.Lab) -> None:
        self._lab = lab
        # INPUT sees what clients send to the TURN port, OUTPUT what it sends them; each rule
        # only counts (RETURN), and only the ones for its direction ever match.
        self._ipt(["-N", COUNTER_CHAIN])
        turn = lab.broker_addrs[0]
        for proto, port in (("udp", TURN_UDP_PORT), ("tcp", TCP_443)):
            self._ipt(["-A", COUNTER_CHAIN, "-i", "eth0", "-d", turn, "-p", proto, "--dport", str(port),
                       "-m", "comment", "--comment", "in", "-j", "RETURN"])  # fmt: skip
            self._ipt(["-A", COUNTER_CHAIN, "-o", "eth0", "-s", turn, "-p", proto, "--sport", str(port),
                       "-m", "comment", "--comment", "out", "-j", "RETURN"])  # fmt: skip
        self._ipt(["-I", "INPUT", "-j", COUNTER_CHAIN])
        self._ipt(["-I", "OUTPUT", "-j", COUNTER_CHAIN])

    def _ipt(self, args: list[str]) -> str:
        return self._lab.run(self._lab.broker_ns, ["iptables", "-w", *args], timeout=30).stdout

    def read(self) -> tuple[int, int]:
        """(bytes in to the TURN port, bytes out of it) since the chain was made."""
        return parse_counters(self._ipt(["-nvxL", COUNTER_CHAIN]))


def parse_counters(listing: str) -> tuple[int, int]:
    """Sum the byte column of ``iptables -nvxL`` rules commented ``in`` and ``out``."""
    totals = {"in": 0, "out": 0}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0].isdigit() and "/*" in parts:
            label = parts[parts.index("/*") + 1]
            if label in totals:
                totals[label] += int(parts[1])
    return totals["in"], totals["out"]


class MatrixRig:
    """One lab and one broker for many cells; a paired viewer home; a device home kept across
    cells (its key and paired viewers), with a fresh ``dvrlinkd`` per cell."""

    def __init__(self, lab: netlab.Lab, work: Path, timeouts: Timeouts | None = None) -> None:
        self.lab = lab
        self.work = work
        self.timeouts = timeouts or Timeouts()
        # A UDP-blocking NAT lets only TCP to port 443 out, and three services must be reachable
        # there: presence over TCP/TLS (the device), TURN over TCP (both sides) and the HTTPS API
        # (the viewer). Each gets its own address on 443: TURN shares udp_host with STUN and
        # presence (the broker binds TURN there), presence over TCP takes the RFC 5780 alternate,
        # and the API a third address this rig adds to the broker's interface.
        lab.run(lab.broker_ns, ["ip", "addr", "add", f"{API_ADDR}/24", "dev", "eth0"])
        self.broker = netlab.start_lab_broker(
            lab,
            work / "broker",
            session_max_per_account=10000,
            log_level="INFO",
            https_host=API_ADDR,
            server_names=[API_ADDR],
            turn_tcp_port=TCP_443,
            presence_tcp_host=lab.broker_addrs[1],
            presence_tcp_port=TCP_443,
        )
        add_user(self.broker.state_dir, USER, PASSWORD)
        self.counters = TurnCounters(lab)
        self.viewer_home = work / "viewer"
        self.device_home = work / "device"
        self.device_home.mkdir(parents=True, exist_ok=True)
        self.cert = str(self.broker.info["cert"])
        self.url = f"https://{API_ADDR}:{self.broker.info['https_port']}"
        self._paired = False

    # -- processes ----------------------------------------------------------------------------------

    def _daemon_config(
        self,
        profile: str = "lan",
        keepalive_s: float | None = None,
        extra_toml: str = "",
        presence_toml: str = "",
    ) -> Path:
        # Registration gives up after reply_timeout_s * (retries + 1): short on LAN, so a device
        # behind a UDP-blocking NAT reaches "backoff" quickly; longer on the slow profiles.
        reply_timeout = 0.5 if profile == "lan" else 2.0
        presence = ["keepalive_interval_s = 20", f"reply_timeout_s = {reply_timeout}"]
        if keepalive_s is not None:
            # A fixed, short interval (no learning), with every retry inside it, as the config
            # requires: reply_timeout_s * (retries + 1) < keepalive_interval_s.
            presence = [
                f"keepalive_interval_s = {keepalive_s}",
                f"reply_timeout_s = {round(keepalive_s * 0.3, 3)}",
                "learn_keepalive = false",
            ]
        config = self.device_home / "dvrlinkd.toml"
        config.write_text(
            "\n".join(
                [
                    "[device]",
                    f'serial = "{SERIAL}"',
                    'state_dir = "state"',
                    'runtime_dir = "run"',
                    "[broker]",
                    f'host = "{self.lab.broker_addrs[0]}"',
                    f"port = {self.broker.primary[1]}",
                    f'public_key = "{self.broker.info["public_key"]}"',
                    f'tcp_host = "{self.lab.broker_addrs[1]}"',
                    f"tcp_port = {TCP_443}",
                    "[presence]",
                    *presence,
                    "retries = 2",
                    presence_toml,
                    "[services]",
                    f'forward = ["127.0.0.1:{SERVICE_PORT}"]',
                    "[log]",
                    'level = "INFO"',
                    extra_toml,
                    "",
                ]
            )
        )
        return config

    def start_daemon(
        self,
        log: Path,
        profile: str = "lan",
        keepalive_s: float | None = None,
        extra_toml: str = "",
        presence_toml: str = "",
    ) -> subprocess.Popen[bytes]:
        """``dvrlinkd run`` in the device namespace, output to ``log``; ``keepalive_s``: a fixed
        keepalive interval instead of the matrix's 20 s (learning off); ``extra_toml``: config
        lines added at the end (e.g. ``[[capture]]`` and ``[live]`` for a live-view bench);
        ``presence_toml``: lines added to ``[presence]`` (e.g. ``learn_after_s = 0``)."""
        (self.device_home / "run" / "status.json").unlink(missing_ok=True)
        config = self._daemon_config(profile, keepalive_s, extra_toml, presence_toml)
        with log.open("ab") as out:
            return self.lab.popen(
                self.lab.device_ns,
                [str(BIN / "dvrlinkd"), "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def daemon_status(self) -> dict[str, Any]:
        """The daemon's status file, or {} before it wrote one (or while it is being replaced)."""
        try:
            status = json.loads((self.device_home / "run" / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

    def daemon_state(self) -> str | None:
        """The presence state in the daemon's status file, or None before it wrote one."""
        state = self.daemon_status().get("state")
        return state if isinstance(state, str) else None

    def viewer(self, *args: str, stdin: str | None = None, timeout: float = 60.0) -> str:
        """Run ``dvrlink --home VIEWER args`` in the viewer namespace; returns its stdout.

        Raises:
            MatrixError: it failed (the message has its output).
        """
        proc = self.lab.run(
            self.lab.viewer_ns,
            [str(BIN / "dvrlink"), "--home", str(self.viewer_home), *args],
            check=False,
            timeout=timeout,
            input=stdin,
        )
        if proc.returncode != 0:
            raise MatrixError(f"dvrlink {args[0]} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
        return proc.stdout

    def pair(self) -> None:
        """Log the viewer in and pair it with the device (once; needs a cell whose sides can reach
        the broker and a daemon online in it).

        Raises:
            MatrixError: login or pairing failed.
        """
        if self._paired:
            return
        self.viewer("login", "--broker", self.url, "--user", USER, "--password-stdin", "--cacert", self.cert,
                    stdin=PASSWORD + "\n")  # fmt: skip
        out = subprocess.run(
            [str(BIN / "dvrlinkd"), "pairing-code", "--config", str(self._daemon_config())],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        uri = next(line.split(": ", 1)[1].strip() for line in out.splitlines() if "dvrlink://" in line)
        self.viewer("pair", uri)
        self._paired = True

    # -- a cell -------------------------------------------------------------------------------------------

    def prepare(self, cell: Cell) -> None:
        """Rebuild the sides for ``cell`` and put its profile on the device's uplink."""
        self.lab.reconfigure(cell.device, cell.viewer, ipv6=cell.ipv6)
        if cell.profile != "lan":
            self.lab.set_profile("device", cell.profile)

    def run_cell(self, plan: CellPlan) -> CellRecord:
        """Run ``plan.cell``: ``plan.runs`` timed forwards; after the first one's byte, wait up to
        ``plan.settle_s`` for the final path (a direct path, or with ``plan.wait_for_ice`` the
        device's ICE giving up). Never raises for a cell's outcome; the record says what happened.

        Raises:
            MatrixError: the lab or the pairing could not be set up.
        """
        cell, runs = plan.cell, plan.runs
        started = time.monotonic()
        self.prepare(cell)
        record = CellRecord(cell.device_name, cell.viewer_name, cell.profile, bool(self.lab.netem))
        folder = self.work / "cells" / cell.key.replace("/", "__")
        folder.mkdir(parents=True, exist_ok=True)
        daemon_log = folder / "dvrlinkd.log"
        set_aside_log(daemon_log)
        service = ByteService(self.lab.device_ns, SERVICE_PORT)
        daemon = self.start_daemon(daemon_log, cell.profile)
        try:
            online = wait(lambda: self.daemon_state() == "online" or daemon.poll() is not None,
                          self.timeouts.register)  # fmt: skip
            record.registered = self.daemon_state() == "online"
            record.presence = self.daemon_status().get("transport") if record.registered else None
            if daemon.poll() is not None:
                record.error = (
                    f"dvrlinkd exited ({daemon.returncode}) before registering:\n{_tail(daemon_log)}"
                )
            elif not online:
                record.error = (
                    f"dvrlinkd did not register within {self.timeouts.register:.0f} s "
                    f"(state {self.daemon_state()}):\n{_tail(daemon_log)}"
                )
            if record.registered and not self._paired:
                self.pair()
            before = self.counters.read()
            first = self._run_forward(plan, record, daemon_log, folder / "forward-1.log")
            after = self.counters.read()
            record.relay_in_bytes, record.relay_out_bytes = after[0] - before[0], after[1] - before[1]
            results = [first]
            if first.connected:
                for index in range(2, runs + 1):
                    results.append(self._run_forward(plan, None, daemon_log, folder / f"forward-{index}.log"))
            record.runs = len(results)
            times = [r.first_byte_s for r in results if r.connected and r.first_byte_s is not None]
            record.first_byte_runs = [round(t, 4) for t in times]
            record.first_byte_s = round(statistics.median(times), 4) if times else None
            record.connected = first.connected
            record.forwarding_s = first.forwarding_s
            if record.error is None and not first.connected:
                record.error = first.error
            elif first.error and record.error is not None:
                record.error += f"\nviewer: {first.error}"
        finally:
            _stop(daemon, signal.SIGTERM)
            service.close()
        record.device_path = device_path(daemon_log.read_text(errors="replace"))
        record.cell_seconds = round(time.monotonic() - started, 2)
        return record

    def _run_forward(
        self, plan: CellPlan, record: CellRecord | None, daemon_log: Path, out_path: Path
    ) -> RunResult:
        t0 = time.monotonic()
        proc: subprocess.Popen[str] = self.lab.popen(
            self.lab.viewer_ns,
            [str(BIN / "dvrlink"), "--home", str(self.viewer_home), "forward", SERIAL, f"0:{SERVICE_PORT}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        lines = LineLog(proc.stdout)
        result = RunResult(connected=False)
        try:

            def forwarding() -> tuple[float, re.Match[str]] | None:
                for when, line in lines.snapshot():
                    if found := FORWARDING.match(line):
                        return when, found
                return None

            wait(lambda: forwarding() or lines.ended, plan.forward_s)
            line = forwarding()
            if line is None:
                reason = "exited" if lines.ended else f"gave no session within {plan.forward_s:.0f} s"
                result.error = f"dvrlink forward {reason}: {lines.text(8) or '(no output)'}"
                return result
            when, found = line
            result.forwarding_s = round(when - t0, 4)
            result.initial_path = found.group(1)
            port = int(found.group(0).split()[1].rsplit(":", 1)[1])
            try:
                data, arrived = first_byte(self.lab.viewer_ns, port, self.timeouts.first_byte)
            except OSError as exc:
                result.error = f"no byte through the forward: {type(exc).__name__}: {exc}"
                return result
            if data != b"!":
                result.error = f"expected the service's byte through the forward, got {data!r}"
                return result
            result.connected = True
            result.first_byte_s = round(arrived - t0, 4)
            if record is not None:
                self._settle(plan, record, lines, daemon_log, t0)
            return result
        finally:
            _stop(proc, signal.SIGINT)
            lines.join(5)
            timed = [f"{when - t0:8.3f} {line}" for when, line in lines.snapshot()]
            out_path.write_text("\n".join(timed) + "\n")

    def _settle(
        self, plan: CellPlan, record: CellRecord, lines: LineLog, daemon_log: Path, t0: float
    ) -> None:
        def viewer_path() -> tuple[str | None, float | None]:
            path: str | None = None
            direct_at: float | None = None
            for when, line in lines.snapshot():
                found = FORWARDING.match(line) or PATH_LINE.match(line)
                if found:
                    path = found.group(1)
                    if path in DIRECT_PATHS and direct_at is None:
                        direct_at = when
            return path, direct_at

        def ice_gave_up() -> bool:
            try:
                return "no direct path: ICE checks" in daemon_log.read_text(errors="replace")
            except OSError:
                return False

        def final() -> bool:
            path, _ = viewer_path()
            return path in DIRECT_PATHS or (plan.wait_for_ice and ice_gave_up()) or lines.ended

        wait(final, plan.settle_s)
        path, direct_at = viewer_path()
        record.path = path
        record.direct_after_s = round(direct_at - t0, 4) if direct_at is not None else None
        if path in DIRECT_PATHS:
            record.settled = True
            record.settle_note = "direct path in use"
        elif lines.ended:
            record.settle_note = f"the forward ended: {lines.text(4)}"
        elif ice_gave_up():
            record.settled = True
            why = next(
                (
                    line.split("no direct path: ", 1)[1].strip()
                    for line in daemon_log.read_text(errors="replace").splitlines()
                    if "no direct path: ICE checks" in line
                ),
                "",
            )
            record.settle_note = f"the device's ICE checks gave up: relay is final ({why})"
        else:
            what = "ICE still checking" if plan.wait_for_ice else "quick run: not waited for ICE to end"
            record.settle_note = f"on {path} {plan.settle_s:.0f} s after the first byte ({what})"


def set_aside_log(log: Path) -> None:
    """Rename a log an earlier run of the same cell left (``dvrlinkd.log`` → ``dvrlinkd.log.1``, …)
    so this run's daemon writes a fresh one: the daemon appends, and a run that read the earlier
    run's "no direct path" line would call its own relay final at once."""
    if not log.exists():
        return
    index = 1
    while log.with_name(f"{log.name}.{index}").exists():
        index += 1
    log.rename(log.with_name(f"{log.name}.{index}"))


def device_path(log_text: str) -> str | None:
    """The last path the daemon's log names for a session (authenticated on / viewer moved to)."""
    path: str | None = None
    for line in log_text.splitlines():
        found = MOVED.search(line) or AUTHENTICATED.search(line)
        if found:
            path = found.group(1)
    return path


@contextlib.contextmanager
def matrix_rig(work: Path, timeouts: Timeouts | None = None) -> Iterator[MatrixRig]:
    """A lab (public × public to start) with the broker and the TURN counters; removed on exit.

    Raises:
        MatrixError: the lab cannot run here (the message says why).
    """
    reason = netlab.unavailable_reason()
    if reason is not None:
        raise MatrixError(reason)
    with netlab.topology(NatType.PUBLIC, NatType.PUBLIC) as lab:
        yield MatrixRig(lab, work, timeouts)
