"""dvrlinkd's CPU and memory while it watches four capture channels, with no viewer (issue 15).

    python -m bench.hal_watch [--quick] [--seconds N]

Starts a dvrlink-broker (core 0) and dvrlinkd (core 1) on loopback, twice: once without a
capture device, once with a synthetic ``[[capture]]`` device of 4 channels watched for signal,
format and motion (read every 0.2 s, the default). Over an idle window of ``--seconds`` (60; 5
with ``--quick``) after registration it prints each run's CPU (schedstat) and VmRSS, and the
difference the watching makes. The synthetic device's read is a few attribute reads; a decoder
on I2C adds its bus transfers (about a dozen register reads per poll at 100-400 kHz), which
this machine cannot measure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import (
    GENERATOR_CORE,
    SERVER_CORE,
    BenchError,
    child_process,
    cpu_ns,
    log_tail,
    rss_bytes,
    run_main,
    venv_script,
    wait_until,
)
from bench.daemon_footprint import ONLINE_TIMEOUT_S, read_status, write_daemon_config
from bench.servers import broker_process

MB = 2**20
CAPTURE = """
[[capture]]
name = "bench"
backend = "synthetic"
channels = 4
"""


def one_run(work: Path, with_capture: bool, seconds: float) -> tuple[float, int, int]:
    """(CPU % of a core over the window, VmRSS at its end, reads of the device) for one daemon."""
    with broker_process(work, core=GENERATOR_CORE) as broker:
        config = write_daemon_config(work, broker.udp[1], broker.public_key, 25.0)
        if with_capture:
            config.write_text(config.read_text() + CAPTURE)
        log = work / "dvrlinkd.log"
        argv = [venv_script("dvrlinkd"), "run", "--config", str(config)]
        with child_process(argv, log, core=SERVER_CORE) as proc:
            runtime_dir = work / "daemon-run"

            def online() -> bool:
                if proc.poll() is not None:
                    raise BenchError(f"dvrlinkd exited with status {proc.returncode}:\n{log_tail(log)}")
                status = read_status(runtime_dir)
                return status is not None and status.get("state") == "online"

            wait_until(online, ONLINE_TIMEOUT_S, f"dvrlinkd to register (status.json in {runtime_dir})")
            time.sleep(1.0)
            ns0, wall0 = cpu_ns(proc.pid), time.perf_counter()
            time.sleep(seconds)
            ns1, wall1 = cpu_ns(proc.pid), time.perf_counter()
            if ns0 is None or ns1 is None:
                raise BenchError("this kernel has no schedstat: the CPU figure needs /proc/PID/schedstat")
            rss = rss_bytes(proc.pid)
            status = read_status(runtime_dir) or {}
            devices = status.get("capture", [])
            watched = sum(len(d.get("channels", [])) for d in devices) if isinstance(devices, list) else 0
            if with_capture and watched != 4:
                raise BenchError(f"dvrlinkd's status lists {watched} watched channels, not 4: {devices}")
            return 100 * (ns1 - ns0) / 1e9 / (wall1 - wall0), rss, watched


def run(seconds: float) -> None:
    """The whole benchmark."""
    print(
        "dvrlinkd idle, without and with 4 watched channels (synthetic, read every 0.2 s), "
        f"{seconds:g} s each"
    )
    results = {}
    for with_capture in (False, True):
        with tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp:
            cpu, rss, _ = one_run(Path(tmp), with_capture, seconds)
        label = "4 channels watched" if with_capture else "no capture device"
        print(f"  {label}: CPU {cpu:.3f} % of a core; VmRSS {rss / MB:.1f} MB")
        results[with_capture] = (cpu, rss)
    print(
        f"  watching 4 channels adds {results[True][0] - results[False][0]:.3f} % of a core and "
        f"{(results[True][1] - results[False][1]) / MB:.1f} MB"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="dvrlinkd watching 4 capture channels: CPU and memory")
    parser.add_argument("--quick", action="store_true", help="a 5 s window instead of 60 s")
    parser.add_argument("--seconds", type=float, default=60.0, help="the idle window (5-3600 s)")
    args = parser.parse_args(argv)
    if not 5 <= args.seconds <= 3600:
        parser.error("--seconds must be 5-3600")
    return run_main(lambda: run(5.0 if args.quick else args.seconds))


if __name__ == "__main__":
    sys.exit(main())
