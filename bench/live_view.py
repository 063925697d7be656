"""Live view through a session: command to first decoded frame, and frames carried (issue 15).

    python -m bench.live_view [--quick] [--runs N] [--seconds S] [--profile 3g [--stream sub]]

Real processes on loopback: dvrlink-broker, dvrlinkd with a synthetic capture device (a PAL
test pattern at 25 frames per second, encoded by ffmpeg as H.264 at 4 Mbit/s for the main
stream) and a paired viewer. For each path (direct, relay):

1. **First frame.** ``--runs`` times (6; 3 with ``--quick``): the time from starting ``dvrlink
   view --print-url`` to ffprobe having decoded the channel's first frame. Each run starts a
   fresh session, and the encoder is stopped in between (``idle_stop_s = 0``), so a run
   includes the session set-up, the encoder's start and its first key frame. Median and p95.
2. **Frames carried.** One ffprobe reads the main stream for ``--seconds`` (60; 10 with
   ``--quick``) and counts the frames it decoded, against the 25 per second the source makes.

The target for the LAN cell is a first frame within 2 s and at least 0.95 of the frames.

``--profile 3g`` (or ``edge``, ``gprs``; needs root) runs the same across the NAT lab
(``hil/netlab``, the matrix rig of ``hil/matrix``): the broker in its namespace, ``dvrlinkd`` in
the device namespace behind a port-restricted cone NAT whose uplink has the profile (3G: ~150 ms
round trip, 1 Mbit/s up, 2 Mbit/s down), and ``dvrlink view`` and ffprobe in the viewer namespace
(public, LAN link). A 4 Mbit/s main stream cannot cross a 1 Mbit/s uplink, so in the lab the
stream is ``--stream`` (``sub``, 256 kbit/s, by default; ``main`` is encoded at
``LAB_MAIN_KBIT``). The 3G target is a first frame within 5 s. On a kernel without ``sch_netem``
the lab delays packets with its user-space wire, so the round trips are there either way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchError, run_main, verdict
from bench.session_rig import median, percentile
from hil import netlab
from hil.loopback import (
    BIN,
    Viewer,
    loopback_services_toml,
    paired_recorder,
    read_line_until,
    unused_tcp_port,
)
from hil.matrix.cells import Cell
from hil.matrix.rig import SERIAL as MATRIX_SERIAL
from hil.matrix.rig import matrix_rig
from hil.netlab import NatType

SERIAL = "BENCH-LIVE-0001"
FPS = 25
LAB_MAIN_KBIT = 768
"""The main stream's rate in the lab: under 3G's 1 Mbit/s uplink."""
Wrap = Callable[[list[str]], list[str]]


def here(argv: list[str]) -> list[str]:
    """Run ``argv`` in this network namespace."""
    return argv


@dataclass(frozen=True)
class Where:
    """Where the viewer side runs: its home, the device's serial, the stream, the namespace
    wrapper for its commands and the first-frame target."""

    viewer: Viewer
    serial: str = SERIAL
    stream: str = "main"
    wrap: Wrap = here
    target_s: float = 2.0
    cell: str = "the LAN cell"
    host_args: tuple[str, ...] = ("--host-address", "127.0.0.1")
    """ICE host candidates: loopback here; in the lab the viewer offers its own addresses."""


def view(where: Where, mode: str) -> tuple[subprocess.Popen[str], str]:
    """``dvrlink view --print-url`` on channel 0's stream over ``mode``; (process, URL)."""
    proc = subprocess.Popen(
        where.wrap([
            str(BIN / "dvrlink"), "--home", str(where.viewer.home), "view", where.serial, "--channel", "0",
            f"--{where.stream}", "--print-url", *where.host_args, f"--{mode}-only",
        ]),
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


def probe(url: str, read: str, wrap: Wrap = here) -> tuple[int, str]:
    """ffprobe ``url`` for ``read`` (``-read_intervals``); (frames decoded, its error text)."""
    done = subprocess.run(
        wrap([
            "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-timeout", "30000000",
            "-select_streams", "v:0",
            "-read_intervals", read, "-count_frames", "-show_entries", "stream=nb_read_frames",
            "-of", "json", url,
        ]),
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    streams = json.loads(done.stdout or "{}").get("streams", [])
    return (int(streams[0].get("nb_read_frames", 0)) if streams else 0), done.stderr.strip()


def first_frame(url: str, mode: str, wrap: Wrap = here) -> None:
    """Return once ffprobe has decoded the first frame of ``url`` (it prints one line per frame).

    Raises:
        BenchError: ffprobe ended or printed nothing within 120 s.
    """
    proc = subprocess.Popen(
        wrap([
            "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-timeout", "30000000",
            "-select_streams", "v:0", "-show_entries", "frame=pict_type", "-of", "compact=p=0", url,
        ]),
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


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def measure(where: Where, mode: str, runs: int, seconds: float) -> None:
    firsts, urls = [], []
    for _ in range(runs):
        started = time.perf_counter()
        proc, url = view(where, mode)
        urls.append(time.perf_counter() - started)
        try:
            first_frame(url, mode, where.wrap)
            firsts.append(time.perf_counter() - started)
        finally:
            stop(proc)
        time.sleep(0.5)  # the encoder stops (idle_stop_s = 0) once its viewer left
    first_med = median(firsts)
    print(
        f"  {mode}: command to first decoded frame, {runs} runs: median {first_med:.2f} s, "
        f"p95 {percentile(firsts, 0.95):.2f} s; target ≤ {where.target_s:g} s on {where.cell}: "
        f"{verdict(first_med <= where.target_s)}"
    )
    print(
        f"  {mode}: of which the session (command to URL printed): median {median(urls):.2f} s; "
        f"RTSP and the first key frame (URL to first frame): median "
        f"{median([f - u for f, u in zip(firsts, urls, strict=True)]):.2f} s"
    )
    proc, url = view(where, mode)
    try:
        frames, error = probe(url, f"%+{seconds:g}", where.wrap)
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
                measure(Where(viewer), mode, runs, seconds)


def run_in_lab(profile: str, stream: str, runs: int, seconds: float) -> None:
    """The benchmark across the NAT lab, ``profile`` on the device's uplink (see the docstring).

    Raises:
        BenchError: the lab cannot run here, or the device did not come online across it.
    """
    reason = netlab.unavailable_reason()
    if reason:
        raise BenchError(f"the NAT lab is not available: {reason}")
    kbit = LAB_MAIN_KBIT if stream == "main" else 256
    print(
        f"live view of a synthetic PAL channel ({stream} stream, H.264 at {kbit} kbit/s) through dvrlink "
        f"view, device behind a NAT on the {profile} profile, viewer public on a LAN, {runs} runs per path"
    )
    with tempfile.TemporaryDirectory(prefix="dvrlink-bench-") as tmp, matrix_rig(Path(tmp)) as rig:
        lab = rig.lab
        rig.prepare(Cell(NatType.PORT_RESTRICTED_CONE, NatType.PUBLIC, profile))
        extra = (
            '[[capture]]\nname = "bench"\nbackend = "synthetic"\nformat = "cvbs-pal"\n'
            f"[live]\nport = 8554\nmain_kbit = {LAB_MAIN_KBIT}\nidle_stop_s = 0\n"
        )
        daemon = rig.start_daemon(Path(tmp) / "dvrlinkd.log", profile, extra_toml=extra)
        try:
            try:
                netlab.wait_until(
                    "dvrlinkd online across the lab",
                    lambda: rig.daemon_state() == "online" or daemon.poll() is not None,
                    90.0,
                )
            except TimeoutError as exc:
                raise BenchError(f"{exc}; see {Path(tmp) / 'dvrlinkd.log'}") from None
            if daemon.poll() is not None:
                log = (Path(tmp) / "dvrlinkd.log").read_text(errors="replace")
                raise BenchError(f"dvrlinkd ended ({daemon.returncode}) in the lab: {log[-800:]}")
            rig.pair()
            where = Where(
                Viewer(rig.viewer_home), MATRIX_SERIAL, stream,
                lambda argv: lab.command(lab.viewer_ns, argv), 5.0 if profile == "3g" else 2.0,
                f"the {profile} cell", host_args=(),
            )  # fmt: skip
            if not lab.netem:
                print("  (this kernel has no netem: the lab's user-space wire adds the profile's delay)")
            for mode in ("direct", "relay"):
                measure(where, mode, runs, seconds)
        finally:
            stop(daemon)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description="live view: command to first frame, frames carried")
    parser.add_argument("--quick", action="store_true", help="3 runs and a 10 s window")
    parser.add_argument("--runs", type=int, default=6, help="first-frame runs per path (1-7)")
    parser.add_argument("--seconds", type=float, default=60.0, help="the frames window (5-600 s)")
    parser.add_argument("--profile", help="run across the NAT lab with this link profile (3g, edge, gprs)")
    parser.add_argument(
        "--stream", choices=("sub", "main"), default="sub", help="the stream in the lab (sub by default)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 7 or not 5 <= args.seconds <= 600:
        # each run is a session, and the broker keeps an account's sessions until their TTL
        # (16 at once by default): 2 x (runs + 1) must stay under it
        parser.error("--runs must be 1-7 (each run is a session the broker counts) and --seconds 5-600")
    runs, seconds = (3 if args.quick else args.runs), (10.0 if args.quick else args.seconds)
    if args.profile:
        if args.profile not in netlab.PROFILES:
            parser.error(f"--profile: use one of {', '.join(netlab.PROFILES)}")
        return run_main(lambda: run_in_lab(args.profile, args.stream, runs, seconds))
    return run_main(lambda: run(runs, seconds))


if __name__ == "__main__":
    sys.exit(main())
