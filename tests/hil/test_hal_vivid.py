"""The HAL's V4L2 backend against a real driver: vivid in the QEMU guest, four capture channels.

vivid is loaded as four instances with one S-Video input each, the way DVR capture cards
(tw686x, solo6x10) give each channel a video node of its own. dvrlinkd watches them through a
``[[capture]] backend = "v4l2"`` table; a viewer on the host lists them with ``dvrlink
channels`` and watches channel 2 live: ``dvrlink view --print-url`` holds a forward to the
device's live view server (the guest's ffmpeg encodes the vivid node with libx264) and the
host's ffprobe decodes frames from it. Then vivid's "Standard Signal Mode" control switches
channel 2 to "No Signal", as a cut cable would, and the viewer sees it in ``dvrlink channels``
and as an alarm that ``dvrlink events --follow``, started before the cut, prints.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from hil.board import Board, wait_until
from hil.loopback import BIN, LineReader, Viewer

pytestmark = [pytest.mark.hil, pytest.mark.timeout(1800)]

VIVID = "modprobe vivid n_devs=4 node_types=0x1,0x1,0x1,0x1 num_inputs=1,1,1,1 input_types=0x2,0x2,0x2,0x2"
CAPTURE = """
[[capture]]
name = "vivid"
backend = "v4l2"
devices = [{nodes}]
lost_after_s = 0.5
"""
SIGNAL_MODE = (
    'python3 -c "from dvrlink.hal.v4l2 import V4l2Node, set_control_by_name; '
    "node = V4l2Node('{node}'); set_control_by_name(node, 'Standard Signal Mode', '{mode}'); print('set')\""
)


def channels(viewer: Viewer, serial: str) -> dict[int, dict[str, object]]:
    reply = json.loads(viewer.run("channels", serial, "--json", timeout=300).stdout)
    (device,) = reply["devices"]
    assert device["name"] == "vivid" and device["error"] == "", device
    return {row["channel"]: row for row in device["channels"]}


VIEW_FRAMES = 50
VIEW_PROFILE = "--sub"
"""The sub-stream (640 pixels wide, 256 kbit/s): what a relayed or cellular viewer gets, and
what the emulated CPU encodes fastest."""
FRAME = re.compile(r"\d+,\d+,[IPB?]")
"""A line ffprobe prints for a decoded frame: width, height, picture type."""
FFPROBE_TIMEOUT_US = 120_000_000
"""ffprobe's socket timeout: the first DESCRIBE waits while the guest starts its encoder, which
takes seconds under TCG."""


def start_cli(viewer: Viewer, *args: str) -> tuple[subprocess.Popen[bytes], LineReader]:
    """``dvrlink --home HOME args`` as a long-running process; its merged output as lines."""
    proc = subprocess.Popen(
        [str(BIN / "dvrlink"), "--home", str(viewer.home), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return proc, LineReader(proc.stdout)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``proc`` as Ctrl-C would, killing it if it is still there after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
    if proc.stdout is not None:
        proc.stdout.close()


def watch_live(viewer: Viewer, serial: str, channel: int) -> tuple[int, float, float, float]:
    """``dvrlink view SERIAL --channel N --sub --print-url`` and ffprobe on the URL it prints,
    until ``VIEW_FRAMES`` frames are decoded; (frames, s to the URL, s from ffprobe's start to
    its first frame and to the last)."""
    started = time.monotonic()
    view, view_out = start_cli(viewer, "view", serial, "--channel", str(channel), VIEW_PROFILE, "--print-url")
    try:
        url = view_out.until("dvrlink view printing its URL", lambda line: line.startswith("rtsp://"), 300)
        url_s = time.monotonic() - started
        assert url.endswith(f"/{channel}/sub"), url
        probe_started = time.monotonic()
        probe = subprocess.Popen(
            [
                "stdbuf", "-oL",  # one line per frame as it is decoded, not a 4 KB block
                "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-timeout", str(FFPROBE_TIMEOUT_US),
                "-select_streams", "v:0", "-show_entries", "frame=pict_type,width,height",
                "-of", "csv=p=0", "-read_intervals", f"%+#{VIEW_FRAMES + 20}", url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        frames = LineReader(probe.stdout)
        decoded: list[str] = []

        def count_until(enough: int) -> Callable[[str], bool]:
            def counted(line: str) -> bool:
                if FRAME.fullmatch(line):
                    decoded.append(line)
                return len(decoded) >= enough

            return counted

        try:
            frames.until("ffprobe decoding a first frame", count_until(1), 600)
            first_s = time.monotonic() - probe_started
            frames.until(f"ffprobe decoding {VIEW_FRAMES} frames", count_until(VIEW_FRAMES), 600)
            all_s = time.monotonic() - probe_started
        except TimeoutError as exc:
            probe.kill()
            _, err = probe.communicate(timeout=30)
            raise AssertionError(
                f"{exc}\nffprobe said: {err.decode(errors='replace')[-1500:]}\n"
                f"dvrlink view said: {view_out.lines[-10:]}"
            ) from None
        stop(probe)
        if probe.stderr is not None:
            probe.stderr.close()
        assert all(line.startswith("640,") for line in decoded), decoded[:5]
        assert view.poll() is None, f"dvrlink view ended: {view_out.lines[-10:]}"
        return len(decoded), url_s, first_s, all_s
    finally:
        stop(view)


@pytest.mark.hil_core
def test_vivid_channels_are_listed_watched_live_and_a_lost_signal_shows(
    board: Board, logged_in_viewer: Callable[[str], Viewer]
) -> None:
    loaded = board.run(f"{VIVID} && ls /dev/video* | tr '\\n' ' '; echo", timeout=300)
    nodes = [word for word in loaded.split() if word.startswith("/dev/video")]
    assert len(nodes) == 4, (
        f"vivid did not make 4 video nodes: {loaded!r} (dmesg: {board.run('dmesg | tail -5')})"
    )
    table = CAPTURE.format(nodes=", ".join(f'"{node}"' for node in nodes)).replace("\n", "\\n")
    appended = board.run(f"printf '{table}' >> /etc/dvrlink/dvrlinkd.toml && dvrlinkd check-config")
    assert "capture device vivid (v4l2): /dev/video0: vivid" in appended, appended
    board.restart_daemon()

    label = board.run("dvrlinkd pairing-code")
    uri = next(line.split(": ", 1)[1] for line in label.splitlines() if "dvrlink://" in line)
    viewer = logged_in_viewer("owner-vivid")
    viewer.run("pair", uri.strip(), timeout=300)

    started = time.monotonic()
    rows = channels(viewer, board.serial)
    listed_s = time.monotonic() - started
    assert sorted(rows) == [0, 1, 2, 3], rows
    assert all(row["signal"] == "locked" for row in rows.values()), rows
    assert {row["format"] for row in rows.values()} <= {"cvbs-pal", "cvbs-ntsc"}, rows

    frames, url_s, first_s, all_s = watch_live(viewer, board.serial, 2)
    assert frames >= VIEW_FRAMES, frames

    follow, alarms = start_cli(viewer, "events", board.serial, "--follow")
    try:
        # Started before the cut: the alarm comes on the stream it follows (or, if the stream
        # took longer to open than the alarm to arrive, in the recent ones it prints first).
        assert not any("SignalLost" in line for line in alarms.lines), alarms.lines
        assert board.run(SIGNAL_MODE.format(node=nodes[2], mode="No Signal")) == "set"
        cut = time.monotonic()
        alarm = alarms.until(
            "dvrlink events --follow printing channel 2's SignalLost",
            lambda line: "SignalLost  channel 2  vivid: no-video" in line,
            600,
        )
        followed_s = time.monotonic() - cut
        assert board.serial in alarm, alarm
        assert follow.poll() is None, f"dvrlink events --follow ended: {alarms.lines}"
    finally:
        stop(follow)
    wait_until(
        "channel 2 shown without video",
        lambda: channels(viewer, board.serial)[2]["signal"] == "no-video",
        600,
        lambda: channels(viewer, board.serial),
    )
    rows = channels(viewer, board.serial)
    assert [rows[c]["signal"] for c in range(4)] == ["locked", "locked", "no-video", "locked"], rows
    journal = board.run(
        "journalctl -u dvrlinkd --no-pager -o cat 2>/dev/null | grep SignalLost || "
        "grep SignalLost /var/log/messages 2>/dev/null"
    )
    assert "vivid channel 2: SignalLost (no-video)" in journal, journal

    assert board.run(SIGNAL_MODE.format(node=nodes[2], mode="Current Standard")) == "set"
    wait_until(
        "channel 2 locked again",
        lambda: channels(viewer, board.serial)[2]["signal"] == "locked",
        600,
        lambda: channels(viewer, board.serial),
    )
    print(
        f"\nvivid: dvrlink channels in {listed_s:.1f} s; live view of channel 2 (sub): URL in "
        f"{url_s:.1f} s, first frame {first_s:.1f} s after ffprobe started, "
        f"{frames} frames in {all_s:.1f} s; "
        f"signal cut to SignalLost on dvrlink events --follow {followed_s:.1f} s",
        file=sys.stderr,
    )
