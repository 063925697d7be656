"""Live view with real processes: dvrlinkd with a synthetic capture device serves a channel as
RTSP (ffmpeg encodes it), ``dvrlink view --print-url`` carries it through a session, and ffprobe
reads it; a channel without a picture is refused with its state. Also the RTSP core alone."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvrlink.daemon.live_view import LiveError, parse_path
from dvrlink.protocol.rtsp import (
    BadRequest,
    Request,
    RequestParser,
    h264_keyframe_packet,
    interleaved,
    interleaved_channels,
    rtp_timestamp,
    session_sdp,
)
from dvrlink.viewer.errors import ViewerError
from dvrlink.viewer.live import Choice, choose
from hil.loopback import (
    BIN,
    Daemon,
    Viewer,
    loopback_services_toml,
    paired_recorder,
    read_line_until,
    unused_tcp_port,
    wait_for,
)

SERIAL = "DL-LIVE-0001"


def test_the_parser_takes_requests_in_pieces_and_skips_interleaved_frames() -> None:
    parser = RequestParser()
    raw = (
        b"DESCRIBE rtsp://127.0.0.1:8554/front/2/main RTSP/1.0\r\nCSeq: 2\r\nAccept: application/sdp\r\n\r\n"
    )
    for byte in interleaved(1, b"\x80\xc9rtcp") + raw:
        assert parser.next() is None
        parser.feed(bytes([byte]))
    request = parser.next()
    assert request == Request(
        "DESCRIBE", "rtsp://127.0.0.1:8554/front/2/main", "2", {"cseq": "2", "accept": "application/sdp"}
    )
    assert parser.frames_skipped == 1 and parser.next() is None
    parser.feed(b"GARBAGE\r\n\r\n")
    bad = parser.next()
    assert (isinstance(bad, BadRequest) and "colon" in bad.reason) or "request line" in bad.reason
    huge = RequestParser()
    huge.feed(b"OPTIONS * RTSP/1.0\r\n" + b"X: y\r\n" * 2000)
    assert isinstance(huge.next(), BadRequest)


def test_transport_paths_and_sdp() -> None:
    assert interleaved_channels("RTP/AVP/TCP;unicast;interleaved=4-5") == (4, 5)
    assert interleaved_channels("RTP/AVP;unicast;client_port=5000-5001") is None
    assert parse_path("rtsp://127.0.0.1:1/front/2/sub/trackID=0") == ("front", 2, "sub")
    with pytest.raises(LiveError, match="Not Found"):
        parse_path("rtsp://127.0.0.1:1/front/two/main")
    sdp = session_sdp(
        "v=0\no=- 0 0 IN IP4 127.0.0.1\nc=IN IP4 127.0.0.1\nm=video 5004 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
    )
    assert "m=video 0 RTP/AVP 96\r\na=control:trackID=0" in sdp and "c=IN IP4 0.0.0.0" in sdp
    assert sdp.index("a=control:*") < sdp.index("m=video")


def rtp(payload: bytes, timestamp: int = 90000, csrc: int = 0) -> bytes:
    return (
        bytes((0x80 | csrc, 96))
        + (1).to_bytes(2, "big")
        + timestamp.to_bytes(4, "big")
        + bytes(4 + 4 * csrc)
        + payload
    )


def test_the_sub_stream_is_chosen_on_the_relay_and_on_a_cellular_uplink_unless_told() -> None:
    devices = [{"name": "front", "channels": [{"channel": 0, "signal": "locked"}]}]
    assert choose(devices, None, 0, None, "direct") == Choice("front", 0, "main")
    assert choose(devices, None, 0, None, "relay") == Choice("front", 0, "sub")
    assert choose(devices, None, 0, None, "direct", cellular=True) == Choice("front", 0, "sub")
    assert choose(devices, "front", 0, "main", "relay", cellular=True) == Choice("front", 0, "main")
    with pytest.raises(ViewerError, match="has no capture device 'back'; it has front"):
        choose(devices, "back", 0, None, "direct")


def test_key_frame_packets_are_told_apart() -> None:
    assert h264_keyframe_packet(rtp(b"\x67sps")) and h264_keyframe_packet(rtp(b"\x68pps"))
    assert h264_keyframe_packet(rtp(b"\x65idr", csrc=2))
    assert not h264_keyframe_packet(rtp(b"\x41p-slice"))
    assert h264_keyframe_packet(rtp(b"\x7c\x85fragment"))  # FU-A, start of an IDR slice
    assert not h264_keyframe_packet(rtp(b"\x7c\x81fragment"))  # FU-A of a P slice
    stap = b"\x78" + (4).to_bytes(2, "big") + b"\x67abc" + (4).to_bytes(2, "big") + b"\x68abc"
    assert h264_keyframe_packet(rtp(stap))
    assert not h264_keyframe_packet(rtp(b"\x78" + (9).to_bytes(2, "big") + b"\x41"))  # a size past the end
    assert not h264_keyframe_packet(b"\x80\x60short") and rtp_timestamp(rtp(b"\x41", 1234)) == 1234


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Daemon, Viewer]]:
    extra = (
        loopback_services_toml()
        + '[[capture]]\nname = "front"\nbackend = "synthetic"\nformat = "cvbs-pal"\nlost_after_s = 0.2\n'
        + f"[live]\nport = {unused_tcp_port()}\nsub_width = 320\nidle_stop_s = 2\n"
    )
    with paired_recorder(tmp_path, SERIAL, extra) as rig:
        yield rig


def start_view(viewer: Viewer, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            str(BIN / "dvrlink"),
            "--home",
            str(viewer.home),
            "view",
            SERIAL,
            "--print-url",
            "--host-address",
            "127.0.0.1",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        url = read_line_until(proc.stdout, "rtsp://", 60).strip()
    except TimeoutError:
        proc.kill()
        raise AssertionError(
            f"dvrlink view printed no URL: {proc.stderr.read() if proc.stderr else ''}"
        ) from None
    return proc, url


def frames_read(url: str, seconds: float) -> tuple[int, str]:
    probe = subprocess.run(
        [
            "ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-timeout", "30000000",
            "-select_streams", "v:0",
            "-read_intervals", f"%+{seconds:g}", "-count_frames",
            "-show_entries", "stream=nb_read_frames,codec_name,width,height", "-of", "json", url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    streams = json.loads(probe.stdout or "{}").get("streams", [])
    if not streams:
        return 0, probe.stderr
    stream = streams[0]
    return int(
        stream.get("nb_read_frames", 0)
    ), f"{stream.get('codec_name')} {stream.get('width')}x{stream.get('height')}"


@pytest.mark.integration
@pytest.mark.slow
def test_view_carries_a_channel_to_ffprobe_and_refuses_a_channel_without_a_picture(
    rig: tuple[Daemon, Viewer],
) -> None:
    daemon, viewer = rig
    proc, url = start_view(viewer, "--channel", "2", "--main")
    try:
        assert url.endswith("/front/2/main") and url.startswith("rtsp://127.0.0.1:"), url
        started = time.monotonic()
        count, what = frames_read(url, 4)
        assert count >= 50, (
            f"ffprobe read {count} frames of {url}: {what}\n"
            f"{(daemon.home / 'dvrlinkd.log').read_text()[-1500:]}"
        )
        assert what == "h264 720x576", what
        print(f"\nlive view: {count} frames in {time.monotonic() - started:.1f} s ({what})")
    finally:
        proc.terminate()
        proc.wait(30)

    sub, sub_url = start_view(viewer, "--channel", "0", "--sub")
    try:
        count, what = frames_read(sub_url, 2)
        assert count >= 20 and what.startswith("h264 320x"), (count, what)
    finally:
        sub.terminate()
        sub.wait(30)

    unplug = subprocess.run(
        [str(BIN / "dvrlinkd"), "synthetic", "1", "unplug", "--config", str(daemon.config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert unplug.returncode == 0, unplug.stderr
    wait_for("channel 1 without a picture", lambda: "no-video" in viewer.run("channels", SERIAL).stdout, 30)
    refused = viewer.run("view", SERIAL, "--channel", "1", "--print-url", check=False)
    assert refused.returncode == 1, refused
    assert "front channel 1 has no picture (no-video" in refused.stderr, refused.stderr
