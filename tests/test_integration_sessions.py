"""End to end with real processes: dvrlink forward carries RTSP from a recorder to ffprobe.

broker + dvrlinkd + `dvrlink forward` as processes on loopback; the recorder's RTSP service is
GStreamer's RTSP server with a live test pattern; ffprobe on the viewer side counts video
packets through the forward. Relay-only and direct-only run the same test.

ffmpeg's own ``-rtsp_flags listen`` is an input option: a listening ffmpeg receives a stream that
a client publishes (ANNOUNCE/RECORD) and cannot serve one to ffprobe. So the served-stream tests
use GStreamer, and one more test runs ffmpeg exactly as named: listening on the recorder's side
while an ffmpeg on the viewer's side publishes ``lavfi testsrc`` to it through the forward.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hil.loopback import (
    SYSTEM_PYTHON,
    Broker,
    Daemon,
    Forward,
    RtspServer,
    Viewer,
    add_user,
    loopback_services_toml,
    make_daemon,
    start_broker,
    start_forward,
    start_rtsp_server,
    stop_all,
    tcp_listening,
    unused_tcp_port,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERIAL = "DL-E2E-0001"


def rtsp_server_available() -> bool:
    if shutil.which("ffprobe") is None or not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return probe.returncode == 0


needs_rtsp = pytest.mark.skipif(
    not rtsp_server_available(),
    reason="needs ffprobe (Debian ffmpeg) and GStreamer RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0)",
)


LISTEN_PORT = unused_tcp_port()
"""Where the recorder-side ``ffmpeg -rtsp_flags listen`` listens (allowed in the daemon's forward list)."""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Viewer, RtspServer]]:
    root = tmp_path_factory.mktemp("e2e")
    started: list[Daemon | Broker] = []
    rtsp = start_rtsp_server()
    try:
        broker = start_broker(root / "broker")
        started.append(broker)
        add_user(broker.state_dir, "owner", "pass phrase")
        daemon = make_daemon(
            root,
            SERIAL,
            broker,
            keepalive_interval=2.0,
            extra_toml=loopback_services_toml(rtsp.port, LISTEN_PORT),
        )
        daemon.start()
        started.append(daemon)
        wait_for("device online", daemon.online, 30)
        viewer = Viewer(root / "viewer")
        viewer.login(broker, "owner", "pass phrase")
        viewer.run("pair", daemon.pairing_uri())
        yield daemon, viewer, rtsp
    finally:
        stop_all(list(reversed(started)))
        rtsp.stop()


PACKETS = 75
"""Video packets ffprobe reads from each stream: 3 s of the 25 fps test pattern on a quiet machine.
The read waits for a count of packets, not a span of time, so a busy machine only makes it slower.
Packets, not decoded frames: on a loaded machine ffprobe once read the packets but its decoder
made no frame ("no frame!", nb_read_frames N/A), which says nothing about the forward; the bytes
themselves are checked end to end by the connectivity transfer tests."""
STREAM_BOUND = 120.0
"""Seconds ffprobe may take to read them before the test fails."""


def count_packets(url: str, packets: int = PACKETS) -> int:
    """How many of the first ``packets`` video packets at ``url`` ffprobe read (all, normally)."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-rtsp_transport",
            "tcp",
            "-count_packets",
            "-read_intervals",
            f"%+#{packets}",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=STREAM_BOUND,
        check=False,
    )
    said = f"stdout {out.stdout.strip()[-200:]!r}, stderr {out.stderr.strip()[-600:]!r}"
    assert out.returncode == 0, f"ffprobe {url} exited {out.returncode}: {said}"
    first = out.stdout.strip().splitlines()[:1]
    assert first and first[0].isdigit(), f"ffprobe {url} counted no packets: {said}"
    return int(first[0])


def assert_on_the_data_plane(daemon: Daemon) -> None:
    """Every authenticated session the device lists carries its streams on the data plane."""
    sessions = [s for s in (daemon.status() or {}).get("sessions", []) if s.get("viewer")]
    assert sessions, "the device lists no authenticated session"
    assert all(s.get("plane") == "data plane" for s in sessions), sessions


def _stop_and_read(forward: Forward) -> str:
    """Stop a forward and return what it printed after its "forwarding" line."""
    forward.stop()
    assert forward.proc.stdout is not None
    return forward.proc.stdout.read()[-1500:]


@needs_rtsp
@pytest.mark.parametrize(
    ("flag", "paths"), [("--relay-only", {"relay"}), ("--direct-only", {"lan", "direct"})]
)
def test_ffprobe_reads_rtsp_frames_through_dvrlink_forward(
    rig: tuple[Daemon, Viewer, RtspServer], flag: str, paths: set[str]
) -> None:
    daemon, viewer, rtsp = rig
    forward = start_forward(viewer, SERIAL, rtsp.port, flag)
    try:
        assert forward.path in paths, forward.path
        read = count_packets(f"rtsp://127.0.0.1:{forward.local_port}/live")
        print(f"{flag}: ffprobe read {read} video packets via {forward.path}")
        assert read == PACKETS
        assert_on_the_data_plane(daemon)
    finally:
        assert forward.stop() == 0


@needs_rtsp
def test_a_port_the_device_does_not_allow_is_refused(rig: tuple[Daemon, Viewer, RtspServer]) -> None:
    _, viewer, _ = rig
    # The viewer asks the device at session start which forwards it allows: no listener opens.
    result = viewer.run("forward", SERIAL, "0:80", "--relay-only", "--host-address", "127.0.0.1", check=False)
    assert result.returncode == 1, result
    assert "forwarding" not in result.stdout, result.stdout
    assert "refuses port 80" in result.stderr, result.stderr


@needs_rtsp
def test_two_sessions_at_once_each_with_two_streams(rig: tuple[Daemon, Viewer, RtspServer]) -> None:
    daemon, viewer, rtsp = rig
    relayed = start_forward(viewer, SERIAL, rtsp.port, "--relay-only")
    direct = start_forward(viewer, SERIAL, rtsp.port, "--direct-only")
    try:
        wait_for(
            "two sessions on the device", lambda: len((daemon.status() or {}).get("sessions", [])) == 2, 15
        )
        urls = [f"rtsp://127.0.0.1:{f.local_port}/live" for f in (relayed, direct) for _ in range(2)]
        with ThreadPoolExecutor(len(urls)) as pool:
            try:
                read = list(pool.map(count_packets, urls))
            except AssertionError as exc:
                # What the forwards said about their streams (a refused or failed stream open).
                said = {f.path: _stop_and_read(f) for f in (relayed, direct)}
                status = daemon.status()
                raise AssertionError(f"{exc}\nthe forwards printed: {said}\ndevice: {status}") from None
        print(f"4 streams over 2 sessions: {read} video packets")
        assert read == [PACKETS] * 4, read
        assert_on_the_data_plane(daemon)
    finally:
        assert relayed.stop() == 0
        assert direct.stop() == 0


@needs_rtsp
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (Debian ffmpeg)")
def test_ffmpeg_listening_on_the_recorder_side_receives_testsrc_through_the_forward(
    rig: tuple[Daemon, Viewer, RtspServer],
) -> None:
    _, viewer, _ = rig
    recorder = subprocess.Popen(
        [
            "ffmpeg", "-hide_banner", "-nostats", "-loglevel", "error",
            "-rtsp_flags", "listen", "-rtsp_transport", "tcp",
            "-i", f"rtsp://127.0.0.1:{LISTEN_PORT}/live",
            "-f", "null", "-progress", "pipe:1", "-",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    forward = None
    try:
        wait_for("ffmpeg listening", lambda: tcp_listening(LISTEN_PORT), 15)
        forward = start_forward(viewer, SERIAL, LISTEN_PORT, "--relay-only")
        subprocess.run(
            [
                "ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
                "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-t", "4",
                "-c:v", "mpeg4", "-f", "rtsp", "-rtsp_transport", "tcp",
                f"rtsp://127.0.0.1:{forward.local_port}/live",
            ],
            check=True,
            timeout=60,
            capture_output=True,
        )  # fmt: skip
        out, err = recorder.communicate(timeout=30)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait(timeout=10)
        if forward is not None:
            assert forward.stop() == 0
    frames = [int(line.split("=", 1)[1]) for line in out.splitlines() if line.startswith("frame=")]
    print(f"ffmpeg -rtsp_flags listen received {frames[-1] if frames else 0} frames via the relay")
    assert recorder.returncode == 0, err
    assert frames and frames[-1] >= 50, (out[-500:], err)
