"""Footprint of dvrlinkd: resident memory and CPU while registered and keeping alive, then
through one viewer session and after it.

    python -m bench.daemon_footprint [--quick] [--interval S]

Starts a dvrlink-broker (core 0) and one dvrlinkd (core 1, the process under test) with a
minimal config on loopback, waits until the daemon's status.json says online, then samples
the daemon's VmRSS (/proc/PID/status) and its CPU time (utime + stime of /proc/PID/stat) over
an idle window: 60 s, or 5 s with ``--quick``. The keepalive interval is short (5 s by default)
so the window holds several keepalives; at the default 25 s the CPU share is lower still.

Then the session part, on the loopback session rig (``bench.session_rig``: a broker, dvrlinkd
allowed to forward to a local TCP service, a paired viewer): VmRSS before any session, its
maximum while one ``dvrlink forward`` session carries 8 MB (1 MB with ``--quick``) from the
device's service to the viewer, and after the session has ended (status.json lists no session).
Issue 13's targets: idle ≤ 25 MB, ≤ 35 MB during one session, ≤ 30 MB after it.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    GENERATOR_CORE,
    LOOPBACK,
    SERVER_CORE,
    BenchError,
    child_process,
    cpu_ns,
    cpu_seconds,
    describe_pinning,
    log_tail,
    run_main,
    venv_script,
    verdict,
    wait_until,
)
from bench.servers import broker_process
from bench.session_rig import IO_TIMEOUT_S, TcpService, recv_exactly, send_count, session_rig
from dvrlink.protocol.identity import b64encode_key

SERIAL = "BENCH-DAEMON-0001"
ONLINE_TIMEOUT_S = 30.0
SESSION_END_TIMEOUT_S = 30.0
MB = 2**20
TARGET_IDLE_MB = 25.0
TARGET_SESSION_MB = 35.0
TARGET_AFTER_MB = 30.0


@dataclass(frozen=True, slots=True)
class Memory:
    """Memory lines of /proc/PID/status, in bytes."""

    rss: int
    anon: int
    file: int
    peak: int


def memory(pid: int) -> Memory:
    """VmRSS, RssAnon, RssFile and VmHWM of ``pid``.

    Raises:
        BenchError: the process is gone.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise BenchError(f"dvrlinkd (pid {pid}) is gone: {exc}") from exc
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return Memory(values["VmRSS"], values["RssAnon"], values["RssFile"], values["VmHWM"])


def write_daemon_config(work: Path, udp_port: int, public_key: bytes, interval: float) -> Path:
    """A minimal dvrlinkd.toml: device, broker on loopback, a short keepalive interval."""
    reply_timeout = min(3.0, interval / 4)
    path = work / "dvrlinkd.toml"
    path.write_text(
        "[device]\n"
        f'serial = "{SERIAL}"\n'
        f'state_dir = "{work / "daemon-state"}"\n'
        f'runtime_dir = "{work / "daemon-run"}"\n'
        "\n[broker]\n"
        'host = "127.0.0.1"\n'
        f"port = {udp_port}\n"
        f'public_key = "{b64encode_key(public_key)}"\n'
        "\n[presence]\n"
        f"keepalive_interval_s = {interval:g}\n"
        f"reply_timeout_s = {reply_timeout:g}\n"
        "retries = 2\n"
        "learn_keepalive = false\n"  # the fixed interval this benchmark names
    )
    return path


def read_status(runtime_dir: Path) -> dict[str, object] | None:
    """The daemon's status.json, or None while it is missing or half-written."""
    try:
        doc = json.loads((runtime_dir / "status.json").read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def run(window: float, interval: float, step: float) -> None:
    """The whole benchmark."""
    print(
        f"dvrlinkd idle footprint: keepalive interval {interval:g} s, idle window {window:g} s "
        f"sampled every {step:g} s"
    )
    with tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp:
        work = Path(tmp)
        with broker_process(work, core=GENERATOR_CORE) as broker:
            config = write_daemon_config(work, broker.udp[1], broker.public_key, interval)
            log = work / "dvrlinkd.log"
            argv = [venv_script("dvrlinkd"), "run", "--config", str(config)]
            with child_process(argv, log, core=SERVER_CORE) as proc:
                runtime_dir = work / "daemon-run"
                started = time.monotonic()

                def online() -> bool:
                    if proc.poll() is not None:
                        raise BenchError(f"dvrlinkd exited with status {proc.returncode}:\n{log_tail(log)}")
                    status = read_status(runtime_dir)
                    return status is not None and status.get("state") == "online"

                wait_until(online, ONLINE_TIMEOUT_S, f"dvrlinkd to register (status.json in {runtime_dir})")
                print(
                    f"  registered {time.monotonic() - started:.2f} s after start; "
                    f"{describe_pinning('dvrlinkd', proc.pid, SERVER_CORE)}; "
                    f"broker sees {broker.online_count()} online"
                )
                time.sleep(min(1.0, step))
                measure(proc.pid, runtime_dir, window, step)
                if proc.poll() is not None:
                    raise BenchError(f"dvrlinkd exited during the window:\n{log_tail(log)}")


def measure(pid: int, runtime_dir: Path, window: float, step: float) -> None:
    """Sample and print RSS and CPU over ``window`` seconds."""
    first = memory(pid)
    cpu0 = cpu_seconds(pid)
    ns0 = cpu_ns(pid)
    wall0 = time.perf_counter()
    keepalives: set[object] = set()
    samples = [first]
    deadline = wall0 + window
    while (left := deadline - time.perf_counter()) > 0:
        time.sleep(min(step, left))
        samples.append(memory(pid))
        status = read_status(runtime_dir)
        if status is not None and status.get("state") == "online":
            keepalives.add(status.get("last_keepalive"))
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds(pid) - cpu0
    ns1 = cpu_ns(pid)
    last = samples[-1]
    top = max(s.rss for s in samples)
    mb = MB
    print(
        f"  VmRSS {first.rss / mb:.1f} MB at the start of the window, {last.rss / mb:.1f} MB at the end, "
        f"max {top / mb:.1f} MB (RssAnon {last.anon / mb:.1f} MB, RssFile {last.file / mb:.1f} MB; "
        f"VmHWM {last.peak / mb:.1f} MB)"
    )
    print(
        f"  idle VmRSS at the end of the window: target ≤ {TARGET_IDLE_MB:g} MB: "
        f"{verdict(last.rss <= TARGET_IDLE_MB * mb)}"
    )
    share = 100 * cpu / wall
    print(f"  CPU (utime+stime, 10 ms ticks) {cpu:.2f} s over {wall:.1f} s = {share:.2f} % of a core")
    if ns0 is not None and ns1 is not None:
        fine = (ns1 - ns0) / 1e9
        share = 100 * fine / wall
        print(f"  CPU (schedstat, ns) {fine * 1000:.1f} ms over {wall:.1f} s = {share:.3f} % of a core")
    print(f"  {len(keepalives)} distinct last_keepalive times seen in status.json during the window")


def session_part(payload: int, step: float) -> None:
    """VmRSS before, during and after one forward session carrying ``payload`` bytes."""
    print(f"dvrlinkd through one session: {payload / MB:g} MB from the device's service to the viewer")
    service = TcpService(lambda conn: send_count(conn, payload))
    try:
        with (
            tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp,
            session_rig(Path(tmp), [service.port]) as rig,
        ):
            pid = rig.daemon_pid
            before = memory(pid)
            forward = rig.forward(service.port, "direct")
            got: list[int] = []
            samples = [memory(pid)]
            try:
                conn = socket.create_connection((LOOPBACK, forward.local_port), timeout=IO_TIMEOUT_S)
                with conn:
                    reader = threading.Thread(
                        target=lambda: got.append(recv_exactly(conn, payload)), daemon=True
                    )
                    reader.start()
                    deadline = time.monotonic() + IO_TIMEOUT_S + payload / 1e6
                    while reader.is_alive() and time.monotonic() < deadline:
                        reader.join(step)
                        samples.append(memory(pid))
            finally:
                forward.stop()
            if got != [payload]:
                raise BenchError(f"the session carried {got or 'nothing'} of {payload} bytes")

            def ended() -> bool:
                status = rig.daemon.status()
                return status is not None and not status.get("sessions")

            wait_until(ended, SESSION_END_TIMEOUT_S, "dvrlinkd to list no session after the forward stopped")
            time.sleep(min(2.0, step * 4))  # let the session's tasks finish their close
            after = memory(pid)
            during = max(sample.rss for sample in samples)
            print(f"  {forward.path} path; {len(samples)} samples during the session")
            for label, value, target in (
                ("VmRSS before any session", before.rss, TARGET_IDLE_MB),
                ("VmRSS during the session, max", during, TARGET_SESSION_MB),
                ("VmRSS after the session ended", after.rss, TARGET_AFTER_MB),
            ):
                print(
                    f"  {label}: {value / MB:.1f} MB "
                    f"(target ≤ {target:g} MB: {verdict(value <= target * MB)})"
                )
            print(f"  after: RssAnon {after.anon / MB:.1f} MB, RssFile {after.file / MB:.1f} MB")
    finally:
        service.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="dvrlinkd idle resident memory and CPU")
    parser.add_argument("--quick", action="store_true", help="5 s window instead of 60 s")
    parser.add_argument("--interval", type=float, default=5.0, help="keepalive interval in seconds (1-3600)")
    args = parser.parse_args(argv)
    if not 1.0 <= args.interval <= 3600.0:
        parser.error("--interval must be 1-3600 s")
    window, step = (5.0, 0.5) if args.quick else (60.0, 1.0)
    payload = (1 if args.quick else 8) * MB

    def both() -> None:
        run(window, args.interval, step)
        session_part(payload, 0.25)

    return run_main(both)


if __name__ == "__main__":
    sys.exit(main())
