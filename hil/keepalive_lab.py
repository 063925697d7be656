"""The learned keepalive against real NATs: ``dvrlinkd`` behind a NAT of a given UDP lifetime
(conntrack timeouts in the lab), the real broker, and a viewer that pings the device through the
broker at random times while the daemon learns.

    python -m hil.keepalive_lab [--lifetimes 30 60 120] [--scale 1.0] [--pings 20] [--json FILE]
    python -m hil.keepalive_lab ping ...      (the pinger; runs inside the viewer's namespace)

For each lifetime it builds its own lab (device behind a port-restricted cone NAT with
``udp_timeout`` = the lifetime), starts the broker and the daemon (keepalive from
``25 * scale`` s, learning on, presence pinned to UDP), pairs a viewer, and starts the pinger:
``pings`` calls of ``POST /v1/devices/SERIAL/ping`` at random times over ``600 * scale`` s,
each of which must be answered within 2 s (a reachable device). It reports when the interval
settled, at what interval, the NAT lifetime the daemon measured, and the pings. Lifetimes run
in parallel, each in its own namespaces.

``scale`` shrinks every time (lifetimes, the start interval, the 10-minute window) so a test can
run the same experiment in a couple of minutes; the probes' 2.5 s priming wait (conntrack's
2-second rule) does not scale. Needs root, like the NAT lab.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hil import netlab
from hil.loopback import add_user

BIN = Path(sys.executable).parent
SERIAL = "DL-KEEP-0001"
USER = "keeper"
PASSWORD = "keepalive lab pass"
WINDOW_S = 600.0
PING_LIMIT_MS = 2000.0


@dataclass
class LifetimeResult:
    """One lifetime's outcome."""

    lifetime_s: float
    scale: float
    settled_after_s: float | None = None
    interval_s: float | None = None
    measured_s: float | None = None
    pings: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        """Interval / lifetime."""
        return None if self.interval_s is None else self.interval_s / self.lifetime_s

    @property
    def pings_ok(self) -> int:
        """Pings answered 200 within ``PING_LIMIT_MS``."""
        return sum(1 for p in self.pings if p.get("status") == 200 and p.get("rtt_ms", 1e9) < PING_LIMIT_MS)

    def line(self) -> str:
        """One line for the report."""
        if self.error:
            return f"lifetime {self.lifetime_s:g} s: ERROR {self.error}"
        return (
            f"lifetime {self.lifetime_s:g} s: interval {self.interval_s} s "
            f"({(self.ratio or 0) * 100:.0f} % of the lifetime), measured {self.measured_s} s, settled after "
            f"{self.settled_after_s and round(self.settled_after_s)} s (window {WINDOW_S * self.scale:g} s); "
            f"pings {self.pings_ok}/{len(self.pings)} answered within {PING_LIMIT_MS:g} ms"
        )


def run_lifetime(
    lifetime_s: float, scale: float, work: Path, pings: int = 20, seed: int = 1
) -> LifetimeResult:
    """Build a lab for one NAT lifetime, run the daemon and the pinger, and report."""
    result = LifetimeResult(lifetime_s * scale, scale)
    lifetime = max(1, round(lifetime_s * scale))
    result.lifetime_s = lifetime
    work.mkdir(parents=True, exist_ok=True)
    try:
        with netlab.topology(
            device_nat="port_restricted_cone", viewer_nat="public", udp_timeout=lifetime
        ) as lab:
            broker = netlab.start_lab_broker(
                lab,
                work / "broker",
                log_level="INFO",
                presence_tcp_host=lab.broker_addrs[1],  # the HTTPS API holds 443 on the primary
                presence_tcp_port=443,
            )
            add_user(broker.state_dir, USER, PASSWORD)
            config = _daemon_config(lab, broker, work / "device", scale)
            daemon, tail, registered = _start_daemon(lab, config, work)
            started = registered[0]
            _pair(lab, broker, config, work / "viewer")
            window = WINDOW_S * scale
            pinger = lab.popen(
                lab.viewer_ns,
                [
                    sys.executable, "-m", "hil.keepalive_lab", "ping",
                    "--url", broker.https_url, "--cacert", str(broker.info["cert"]),
                    "--user", USER, "--password", PASSWORD, "--serial", SERIAL,
                    "--count", str(pings), "--window", str(window), "--seed", str(seed),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=str(Path(__file__).resolve().parent.parent),
            )  # fmt: skip
            out_text, err_text = pinger.communicate(timeout=window + 120)
            result.pings = [json.loads(line) for line in out_text.splitlines() if line.startswith("{")]
            if pinger.returncode != 0:
                result.error = f"pinger exited {pinger.returncode}: {err_text[-500:]}"
            done = tail.first("NAT keeps an idle UDP mapping at least")
            if done is not None:
                result.settled_after_s = round(done[0] - started, 1)
                found = re.search(r"at least ([\d.]+) s", done[1])
                result.measured_s = float(found.group(1)) if found else None
            intervals = tail.all(r"keepalive (?:interval|every) ([\d.]+) s")
            tail.close()
            result.interval_s = float(intervals[-1]) if intervals else None
            if daemon.poll() is not None:
                result.error = f"dvrlinkd exited {daemon.returncode}"
    except Exception as exc:  # a lab problem is reported, not raised, so the other lifetimes finish
        result.error = f"{type(exc).__name__}: {exc}"
    return result


@dataclass
class RebindResult:
    """A NAT rebinding: what the device was reached at before and after, and the ping between."""

    nat: str
    interval_s: float
    address_before: str | None = None
    address_after: str | None = None
    ping: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def line(self) -> str:
        """One line for the report."""
        if self.error:
            return f"rebinding behind {self.nat}: ERROR {self.error}"
        return (
            f"rebinding behind {self.nat} (keepalive every {self.interval_s:g} s): mapping "
            f"{self.address_before} -> {self.address_after}; ping right after the flush: "
            f"{self.ping.get('status')} in {self.ping.get('rtt_ms')} ms"
        )


def run_rebinding(work: Path, interval: float = 3.0, nat: str = "symmetric") -> RebindResult:
    """Flush the device NAT's conntrack table (its mappings are gone; a symmetric NAT gives the
    next packet another port) and ping the device at once through a broker whose invites live
    only ``interval + 2`` s: the ping succeeds only if the device is reachable again within about
    one keepalive interval."""
    result = RebindResult(nat, interval)
    work.mkdir(parents=True, exist_ok=True)
    try:
        with netlab.topology(device_nat=nat, viewer_nat="public") as lab:
            broker = netlab.start_lab_broker(
                lab,
                work / "broker",
                log_level="INFO",
                presence_tcp_host=lab.broker_addrs[1],
                presence_tcp_port=443,
                invite_ttl_s=int(interval + 2),
            )
            add_user(broker.state_dir, USER, PASSWORD)
            config = _daemon_config(lab, broker, work / "device", interval / 25, learn=False)
            _, tail, first = _start_daemon(lab, config, work)
            found = re.search(r" as (\S+?),", first[1])
            result.address_before = found.group(1) if found else None
            _pair(lab, broker, config, work / "viewer")
            before = len(_registered_lines(tail))
            lab.flush_conntrack("device")
            result.ping = _ping_once(lab, broker)
            # The ping can come back before the daemon has logged its new registration: wait for
            # that line rather than read the old one.
            moved = netlab.wait_until(
                "dvrlinkd registered again after the conntrack flush",
                lambda: _registered_lines(tail)[before:],
                max(30.0, interval * 5),
            )
            found = re.search(r" as (\S+?),", moved[-1])
            result.address_after = found.group(1) if found else None
            tail.close()
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


@dataclass
class WireBytes:
    """Bytes on the wire (IPv4 headers included) per keepalive round trip, as the NAT counted."""

    transport: str
    keepalives: int
    bytes_total: int

    @property
    def per_keepalive(self) -> float:
        """Bytes per keepalive round trip."""
        return self.bytes_total / self.keepalives if self.keepalives else 0.0


def measure_keepalive_bytes(work: Path, transport: str, interval: float = 2.0, count: int = 5) -> WireBytes:
    """Run an idle ``dvrlinkd`` on ``transport`` (learning off) behind a port-restricted NAT and
    read the NAT's conntrack byte counters of its flows to the broker over ``count`` keepalives
    after registration: what a SIM would be billed for."""
    work.mkdir(parents=True, exist_ok=True)
    with netlab.topology(device_nat="port_restricted_cone", viewer_nat="public") as lab:
        nat = lab.nat_ns("device")
        lab.run(nat, ["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"])
        broker = netlab.start_lab_broker(
            lab, work / "broker", presence_tcp_host=lab.broker_addrs[1], presence_tcp_port=443
        )
        config = _daemon_config(
            lab,
            broker,
            work / "device",
            interval / 25,
            learn=False,
            transport=transport,
            tcp_interval=interval,
        )
        _, tail, _ = _start_daemon(lab, config, work)
        time.sleep(interval / 2)  # a scheduled moment: between two keepalives
        before = _flow_bytes(lab.conntrack("device"), broker)
        time.sleep(interval * count)  # exactly ``count`` keepalive periods
        after = _flow_bytes(lab.conntrack("device"), broker)
        tail.close()
    return WireBytes(transport, count, after - before)


def _ping_once(lab: netlab.Lab, broker: netlab.LabBroker) -> dict[str, Any]:
    """One ping of the device through the broker, from the viewer's namespace."""
    pinger = lab.python(
        lab.viewer_ns,
        [
            "-m", "hil.keepalive_lab", "ping",
            "--url", broker.https_url, "--cacert", str(broker.info["cert"]),
            "--user", USER, "--password", PASSWORD, "--serial", SERIAL,
            "--count", "1", "--window", "0",
        ],
        timeout=60,
    )  # fmt: skip
    pings = [json.loads(line) for line in pinger.stdout.splitlines() if line.startswith("{")]
    return pings[0] if pings else {"error": pinger.stderr[-300:]}


def _flow_bytes(listing: str, broker: netlab.LabBroker) -> int:
    """Sum of both directions' bytes of the flows to the broker's presence endpoints."""
    total = 0
    for line in listing.splitlines():
        if broker.primary[0] not in line and broker.alternate[0] not in line:
            continue
        if not (f"dport={broker.primary[1]} " in line or "dport=443 " in line):
            continue
        total += sum(int(b) for b in re.findall(r"bytes=(\d+)", line))
    return total


def run_auto_choice(work: Path, scale: float = 0.2) -> dict[str, Any]:
    """Presence ``auto`` behind a NAT with a 30 s UDP lifetime and a 30 min TCP lifetime (both
    scaled): the daemon learns UDP, compares costs and moves to TCP; a ping still reaches it."""
    udp_lifetime = max(1, round(30 * scale))
    outcome: dict[str, Any] = {"udp_lifetime_s": udp_lifetime, "tcp_lifetime_s": round(1800 * scale)}
    with netlab.topology(
        device_nat="port_restricted_cone", viewer_nat="public", udp_timeout=udp_lifetime,
        tcp_timeout=round(1800 * scale),
    ) as lab:  # fmt: skip
        broker = netlab.start_lab_broker(
            lab,
            work / "broker",
            log_level="INFO",
            presence_tcp_host=lab.broker_addrs[1],
            presence_tcp_port=443,
        )
        add_user(broker.state_dir, USER, PASSWORD)
        config = _daemon_config(
            lab, broker, work / "device", scale, transport="auto", tcp_interval=round(300 * scale)
        )
        _, tail, _ = _start_daemon(lab, config, work)
        _pair(lab, broker, config, work / "viewer")
        cost = netlab.wait_until("a cost comparison", lambda: tail.first("presence cost: "), 600 * scale + 60)
        outcome["cost_line"] = cost[1].split("presence cost: ", 1)[1]
        moved = netlab.wait_until("presence over TCP", lambda: tail.first("presence moves to tcp"), 60)
        outcome["moved"] = moved[1]
        netlab.wait_until(
            "registered over TCP", lambda: [ln for _, ln in list(tail.lines) if "registered: " in ln][1:], 60
        )
        outcome["ping"] = _ping_once(lab, broker)
        status = json.loads((work / "device" / "run" / "status.json").read_text())
        outcome["transport"] = status.get("transport")
        tail.close()
    return outcome


def run_tcp_learning(work: Path, tcp_lifetime: int = 20, start: float = 15.0) -> dict[str, Any]:
    """Presence ``auto`` behind a NAT that keeps idle TCP connections ``tcp_lifetime`` s (and UDP
    ones long enough to stay on UDP): the daemon learns the TCP lifetime with probes over fresh
    TLS connections, starting from ``tcp_keepalive_interval_s = start``."""
    outcome: dict[str, Any] = {"tcp_lifetime_s": tcp_lifetime}
    with netlab.topology(
        device_nat="port_restricted_cone", viewer_nat="public", udp_timeout=600, tcp_timeout=tcp_lifetime
    ) as lab:
        broker = netlab.start_lab_broker(
            lab, work / "broker", presence_tcp_host=lab.broker_addrs[1], presence_tcp_port=443
        )
        config = _daemon_config(lab, broker, work / "device", 0.2, transport="auto", tcp_interval=start)
        _, tail, _ = _start_daemon(lab, config, work)
        done = netlab.wait_until(
            "the TCP lifetime learned", lambda: tail.first("NAT keeps an idle TCP mapping"), 20 * tcp_lifetime
        )
        outcome["line"] = done[1]
        found = re.search(r"at least ([\d.]+) s.*keepalive every ([\d.]+) s", done[1])
        if found:
            outcome["measured_s"], outcome["interval_s"] = float(found.group(1)), float(found.group(2))
        tail.close()
    return outcome


def run_all(lifetimes: Sequence[float], scale: float, work: Path, pings: int = 20) -> list[LifetimeResult]:
    """Each lifetime in its own lab, in parallel threads."""
    results: list[LifetimeResult | None] = [None] * len(lifetimes)

    def one(index: int, lifetime: float) -> None:
        results[index] = run_lifetime(lifetime, scale, work / f"l{lifetime:g}", pings, seed=index + 1)

    threads = [threading.Thread(target=one, args=(i, lt)) for i, lt in enumerate(lifetimes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def _registered_lines(tail: LogTail) -> list[str]:
    return [line for _, line in list(tail.lines) if "registered: " in line]


def _start_daemon(
    lab: netlab.Lab, config: Path, work: Path
) -> tuple[subprocess.Popen[bytes], LogTail, tuple[float, str]]:
    """``dvrlinkd run`` in the device namespace, its log followed; waits for the registration.

    Returns the process, the log tail and (when, line) of the first "registered" line."""
    log = work / "dvrlinkd.log"
    log.touch()
    tail = LogTail(log)
    with log.open("ab") as out:
        daemon = lab.popen(
            lab.device_ns,
            [str(BIN / "dvrlinkd"), "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    registered = netlab.wait_until("dvrlinkd registered", lambda: tail.first("registered: "), 60)
    return daemon, tail, registered


def _daemon_config(
    lab: netlab.Lab,
    broker: netlab.LabBroker,
    home: Path,
    scale: float,
    *,
    learn: bool = True,
    transport: str = "udp",
    tcp_interval: float | None = None,
) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    interval = max(1.0, round(25 * scale, 1))
    config = home / "dvrlinkd.toml"
    config.write_text(
        "\n".join(
            [
                "[device]",
                f'serial = "{SERIAL}"',
                'state_dir = "state"',
                'runtime_dir = "run"',
                "[broker]",
                f'host = "{broker.primary[0]}"',
                f"port = {broker.primary[1]}",
                f'public_key = "{broker.info["public_key"]}"',
                f'tcp_host = "{lab.broker_addrs[1]}"',
                "tcp_port = 443",
                "[presence]",
                f"keepalive_interval_s = {interval:g}",
                f"reply_timeout_s = {min(1.0, interval / 4):g}",
                "retries = 2",
                f"learn_keepalive = {'true' if learn else 'false'}",
                "learn_after_s = 0",
                "classify_nat = false",  # these runs count presence bytes: no NAT type tests
                f"max_keepalive_interval_s = {max(10.0, 1800 * scale):g}",
                "report_min_interval_s = 1",
                f'transport = "{transport}"',
                f"tcp_keepalive_interval_s = {tcp_interval or 300:g}",
                "[log]",
                'level = "INFO"',
                "",
            ]
        )
    )
    return config


def _pair(lab: netlab.Lab, broker: netlab.LabBroker, config: Path, viewer_home: Path) -> None:
    def viewer(*args: str, stdin: str | None = None) -> None:
        lab.run(lab.viewer_ns, [str(BIN / "dvrlink"), "--home", str(viewer_home), *args], input=stdin)

    viewer("login", "--broker", broker.https_url, "--user", USER, "--password-stdin",
           "--cacert", str(broker.info["cert"]), stdin=PASSWORD + "\n")  # fmt: skip
    out = subprocess.run(
        [str(BIN / "dvrlinkd"), "pairing-code", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    uri = next(line.split(": ", 1)[1].strip() for line in out.splitlines() if "dvrlink://" in line)
    viewer("pair", uri)


class LogTail:
    """Follows a log file in a thread, noting when each line appeared."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset = 0
        pending = ""
        while not self._stop.is_set():
            try:
                with self.path.open("r", errors="replace") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset = handle.tell()
            except OSError:
                chunk = ""
            if chunk:
                now = time.time()
                pending += chunk
                *complete, pending = pending.split("\n")
                self.lines.extend((now, line) for line in complete)
            self._stop.wait(0.1)

    def first(self, text: str) -> tuple[float, str] | None:
        """(when, line) of the first line containing ``text``."""
        return next(((t, line) for t, line in list(self.lines) if text in line), None)

    def all(self, pattern: str) -> list[str]:
        """Every first group of ``pattern`` in the lines so far."""
        return [m.group(1) for _, line in list(self.lines) if (m := re.search(pattern, line))]

    def close(self) -> None:
        """Stop following."""
        self._stop.set()
        self._thread.join(5)


# -- the pinger (runs in the viewer namespace) ------------------------------------------------------


def ping_main(argv: Sequence[str]) -> int:
    """Log in, then ping the device ``count`` times at random moments within ``window`` seconds;
    one JSON line per ping: time offset, HTTP status, round trip (ms)."""
    parser = argparse.ArgumentParser(prog="python -m hil.keepalive_lab ping")
    parser.add_argument("--url", required=True)
    parser.add_argument("--cacert", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--serial", required=True)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--window", type=float, default=WINDOW_S)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    context = ssl.create_default_context(cafile=args.cacert)
    context.check_hostname = False

    def call(path: str, body: dict[str, Any] | None, token: str | None) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            args.url + path,
            data=json.dumps(body or {}).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {token}"} if token else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    status, answer = call("/v1/tokens", {"username": args.user, "password": args.password}, None)
    if status not in (200, 201):
        print(f"login failed: {status} {answer}", file=sys.stderr)
        return 1
    token = str(answer["token"])
    rng = random.Random(args.seed)
    moments = sorted(rng.uniform(0, args.window) for _ in range(args.count))
    start = time.monotonic()
    for moment in moments:
        delay = start + moment - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # a scheduled moment, not a wait for something to happen
        sent = time.monotonic()
        status, answer = call(f"/v1/devices/{args.serial}/ping", None, token)
        elapsed = (time.monotonic() - sent) * 1000
        print(json.dumps({"at_s": round(moment, 1), "status": status, "rtt_ms": round(elapsed, 1), **answer}),
              flush=True)  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The experiment, or (``ping``) the pinger."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ping"]:
        return ping_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m hil.keepalive_lab", description=__doc__.splitlines()[0])
    parser.add_argument("--lifetimes", type=float, nargs="+", default=[30.0, 60.0, 120.0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--pings", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    reason = netlab.unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="keepalive-lab-"))
    results = run_all(args.lifetimes, args.scale, work, args.pings)
    for result in results:
        print(result.line(), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0 if all(r.error is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
