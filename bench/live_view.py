"""Live view through a session: command to first decoded frame, and frames carried (issue 15).

    python -m bench.live_view [--quick] [--runs N] [--seconds S]

Real processes on loopback: dvrlink-broker, dvrlinkd with a synthetic capture device (a PAL
test pattern at 25 frames per second, encoded by ffmpeg as H.264 at 4 Mbit/s for the main
stream) and a paired viewer. For each path (direct, relay):

1. **First frame.** ``--runs`` times (6; 3 with ``--quick``): the time from starting ``dvrlink
   view --print-url`` to ffprobe having decoded the channel's first frame. Each run starts a
   fresh session, and the encoder is stopped in between (``idle_stop_s = 0``), so a run
   includes the session set-up, the encoder's start and its first key frame. Median and p95.
2. **Frames carried.** One ffprobe reads the main stream for ``--seconds`` (60; 10 with
   ``--quick``) and counts the frames it decoded, against the 25 per second the source makes.

The target for the LAN cell is a first frame within 2 s and at least 0.95 of the frames. The
3G profile needs the NAT lab (root) and is not measured here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import BenchError, run_main, verdict
from bench.session_rig import median, percentile
from hil.loopback import (
    BIN,
    Viewer,
    loopback_services_toml,
    paired_recorder,
    read_line_until,
    unused_tcp_port,
)

SERIAL = "BENCH-LIVE-0001"
FPS = 25


def view(viewer: Viewer, mode: str) -> tuple[subprocess.Popen[str], str]:
    """``dvrlink view --print-url`` on channel 0's main stream over ``mode``; (process, URL)."""
    proc = subprocess.Popen(
        [
            str(BIN / "dvrlink"), "--home", str(viewer.home), "view", SERIAL, "--channel", "0",
            "--main", "--print-url", "--host-address", "127.0.0.1", f"--{mode}-only",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        return proc, read_line_until(proc.stdout, "rtsp://", 120).strip()
    except TimeoutError as exc:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise BenchError(
            f"dvrlink view --{mode}-only printed no URL: {exc}; stderr: {err.strip()[-600:]}"
        ) from None


def probe(url: str, read: str) -> tuple[int, str]:
    """ffprobe ``url`` for ``read`` (``-read_intervals``); (frames decoded, its error text)."""
    done = subprocess.run(
        [
            "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-timeout", "30000000",
            "-select_streams", "v:0",
            "-read_intervals", read, "-count_frames", "-show_entries", "stream=nb_read_frames",
            "-of", "json", url,
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    streams = json.loads(done.stdout or "{}").get("streams", [])
    return (int(streams[0].get("nb_read_frames", 0)) if streams else 0), done.stderr.strip()


def first_frame(url: str, mode: str) -> None:
    """Return once ffprobe has decoded the first frame of ``url`` (it prints one line per frame).

    Raises:
        BenchError: ffprobe ended or printed nothing within 120 s.
    """
    proc = subprocess.Popen(
        [
            "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-timeout", "30000000",
            "-select_streams", "v:0", "-show_entries", "frame=pict_type", "-of", "compact=p=0", url,
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        read_line_until(proc.stdout, "", 120)
    except TimeoutError:
        proc.kill()
        raise BenchError(f"ffprobe decoded no frame of {url} over the {mode} path within 120 s") from None
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def measure(viewer: Viewer, mode: str, runs: int, seconds: float) -> None:
    firsts = []
    for _ in range(runs):
        started = time.perf_counter()
        proc, url = view(viewer, mode)
        try:
            first_frame(url, mode)
            firsts.append(time.perf_counter() - started)
        finally:
            stop(proc)
        time.sleep(0.5)  # the encoder stops (idle_stop_s = 0) once its viewer left
    first_med = median(firsts)
    print(
        f"  {mode}: command to first decoded frame, {runs} runs: median {first_med:.2f} s, "
        f"p95 {percentile(firsts, 0.95):.2f} s; target ≤ 2 s on the LAN cell: {verdict(first_med <= 2.0)}"
    )
    proc, url = view(viewer, mode)
    try:
        frames, error = probe(url, f"%+{seconds:g}")
    finally:
        stop(proc)
    ratio = frames / (FPS * seconds)
    print(
        f"  {mode}: {frames} frames decoded over {seconds:g} s of a {FPS} fps source: {ratio:.3f} of them; "
        f"target ≥ 0.95: {verdict(ratio >= 0.95)}"
        + (f" (ffprobe: {error[-300:]})" if ratio < 0.95 and error else "")
    )


def run(runs: int, seconds: float) -> None:
    """The whole benchmark."""
    print(
        f"live view of a synthetic PAL channel (H.264 at 4 Mbit/s) through dvrlink view, {runs} runs per path"
    )
    with tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp:
        root = Path(tmp)
        extra = (
            loopback_services_toml()
            + '[[capture]]\nname = "bench"\nbackend = "synthetic"\nformat = "cvbs-pal"\n'
            + f"[live]\nport = {unused_tcp_port()}\nmain_kbit = 4000\nidle_stop_s = 0\n"
        )
        with paired_recorder(root, SERIAL, extra) as (_, viewer):
            for mode in ("direct", "relay"):
                measure(viewer, mode, runs, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="live view: command to first frame, frames carried")
    parser.add_argument("--quick", action="store_true", help="3 runs and a 10 s window")
    parser.add_argument("--runs", type=int, default=6, help="first-frame runs per path (1-7)")
    parser.add_argument("--seconds", type=float, default=60.0, help="the frames window (5-600 s)")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 7 or not 5 <= args.seconds <= 600:
        # each run is a session, and the broker keeps an account's sessions until their TTL
        # (16 at once by default): 2 x (runs + 1) must stay under it
        parser.error("--runs must be 1-7 (each run is a session the broker counts) and --seconds 5-600")
    return run_main(lambda: run(3 if args.quick else args.runs, 10.0 if args.quick else args.seconds))


if __name__ == "__main__":
    sys.exit(main())
