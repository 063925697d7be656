"""Snapshots: ffmpeg grabs a JPEG of a channel and shrinks it under its cap; motion alarms carry
one, in order with the other alarms; the ``snapshot`` RPC says why there is none. The live
view's own stall and exit watch. Real ffmpeg throughout (a synthetic test pattern), a real
alarm queue, a real RTSP connection to the live view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from support.waiting import wait_until_async

from dvrlink.daemon import snapshot as snapshot_module
from dvrlink.daemon.alarms import AlarmQueue
from dvrlink.daemon.live_view import LiveConfig, LiveView, warm_rpc
from dvrlink.daemon.snapshot import CaptureAlarms, SnapshotError, SnapshotTaker, grab_jpeg, snapshot_rpc
from dvrlink.hal.device import FrameSource
from dvrlink.hal.model import EncoderError, HalEvent, MotionStart, SignalLost, SignalState, StreamStalled
from dvrlink.protocol.alarm_wire import MAX_SNAPSHOT, AlarmKind
from hil.loopback import BIN, loopback_services_toml, paired_recorder, unused_tcp_port, wait_for

PATTERN = ("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25")
WAIT = 60.0


def sources(state: str = "locked") -> Callable[[str, int], tuple[FrameSource | None, str]]:
    def lookup(device: str, channel: int) -> tuple[FrameSource | None, str]:
        if device != "front":
            return None, "unknown device"
        if channel not in range(4):
            return None, "no such channel"
        return FrameSource(PATTERN, 1280, 720, 25.0), state

    return lookup


def test_a_grab_fits_its_cap_by_encoding_smaller_and_says_when_it_cannot(mocker: MockerFixture) -> None:
    runs = mocker.spy(snapshot_module, "_run")

    async def main() -> None:
        large = await grab_jpeg(("ffmpeg",), PATTERN, 1 << 20)
        assert large.startswith(b"\xff\xd8") and large.endswith(b"\xff\xd9"), large[:8]
        assert runs.call_count == 1
        small = await grab_jpeg(("ffmpeg",), PATTERN, 6000)
        assert small.startswith(b"\xff\xd8") and len(small) <= 6000 < len(large), (len(small), len(large))
        assert runs.call_count > 2  # the grab, then encodings of the JPEG itself
        with pytest.raises(SnapshotError, match="over the 100-byte cap"):
            await grab_jpeg(("ffmpeg",), PATTERN, 100)
        with pytest.raises(SnapshotError, match=r"cannot start .*install ffmpeg"):
            await grab_jpeg(("no-such-encoder-here",), PATTERN, 1 << 20)
        with pytest.raises(SnapshotError, match=r"the encoder failed: .*no-such-file"):
            await grab_jpeg(("ffmpeg",), ("-f", "v4l2", "-i", "/dev/no-such-file"), 1 << 20)

    asyncio.run(main())


def test_the_rpc_answers_a_jpeg_or_why_there_is_none() -> None:
    async def main() -> None:
        handle = snapshot_rpc(SnapshotTaker(("ffmpeg",), sources()))
        jpeg = await handle(json.dumps({"device": "front", "channel": 1, "width": 320}).encode())
        assert jpeg.startswith(b"\xff\xd8"), jpeg[:80]
        cases = {
            b"not json": "a snapshot request is",
            b'{"device": "front", "channel": "1"}': "a snapshot request is",
            b'{"device": "front", "channel": 1, "width": 5000}': "width 5000 is out of range",
            b'{"device": "back", "channel": 1}': "back channel 1: unknown device",
            b'{"device": "front", "channel": 9}': "front channel 9: no such channel",
        }
        for request, expected in cases.items():
            answer = json.loads(await handle(request))
            assert expected in answer["error"], (request, answer)
        dark = snapshot_rpc(SnapshotTaker(("ffmpeg",), sources("no-video")))
        answer = json.loads(await dark(b'{"device": "front", "channel": 0}'))
        assert answer == {"error": "no picture on front channel 0 (no-video)"}

    asyncio.run(main())


def test_motion_alarms_carry_a_snapshot_and_keep_their_order(tmp_path: Path, mocker: MockerFixture) -> None:
    queue = AlarmQueue.open(tmp_path)
    raised = mocker.spy(queue, "raise_alarm")
    taker = SnapshotTaker(("ffmpeg",), sources())
    took = mocker.spy(taker, "take")

    async def main() -> None:
        async def snap(device: str, channel: int) -> bytes:
            return await taker.take(device, channel, MAX_SNAPSHOT)

        alarms = CaptureAlarms(queue, snap)
        alarms(MotionStart("front", 1.0, 2))
        alarms(SignalLost("front", 1.1, 3, SignalState.NO_VIDEO))  # waits behind the snapshot
        assert raised.call_count == 0
        await wait_until_async(
            "both alarms raised",
            lambda: raised.call_count >= 2,
            timeout=WAIT,
            seen=lambda: raised.call_args_list,
        )
        alarms.close()

    asyncio.run(main())
    assert took.call_args.args == ("front", 2, MAX_SNAPSHOT)
    records = queue.sender.queued()
    assert [(r.kind, r.channel) for r in records] == [(AlarmKind.MOTION_START, 2), (AlarmKind.SIGNAL_LOST, 3)]
    assert records[0].snapshot is not None and records[0].snapshot.startswith(b"\xff\xd8")
    assert len(records[0].snapshot) <= MAX_SNAPSHOT and records[1].snapshot is None
    queue.close()
    reopened = AlarmQueue.open(tmp_path)
    assert reopened.sender.queued() == records  # the snapshot is in the journal too
    reopened.close()


def test_an_alarm_goes_without_its_snapshot_when_none_comes_and_none_is_lost_at_close(tmp_path: Path) -> None:
    queue = AlarmQueue.open(tmp_path)

    async def main() -> None:
        never = asyncio.Event()

        async def stuck(device: str, channel: int) -> bytes:
            await never.wait()
            return b""

        async def failing(device: str, channel: int) -> bytes:
            raise SnapshotError("no picture on front channel 1 (no-video)")

        late = CaptureAlarms(queue, stuck, wait_s=0.2)
        late(MotionStart("front", 1.0, 0))
        await wait_until_async("the first alarm queued", lambda: queue.pending >= 1, timeout=WAIT)
        assert late.stats == {"snapshots": 0, "without_snapshot": 1}
        failed = CaptureAlarms(queue, failing)
        failed(MotionStart("front", 2.0, 1))
        await wait_until_async("the second alarm queued", lambda: queue.pending >= 2, timeout=WAIT)
        closing = CaptureAlarms(queue, stuck)
        closing(MotionStart("front", 3.0, 2))
        closing(SignalLost("front", 3.1, 2, SignalState.NO_VIDEO))
        await asyncio.sleep(0)
        closing.close()  # the daemon stops: both go, without a snapshot

    asyncio.run(main())
    records = queue.sender.queued()
    assert [(r.kind, r.channel, r.snapshot) for r in records] == [
        (AlarmKind.MOTION_START, 0, None),
        (AlarmKind.MOTION_START, 1, None),
        (AlarmKind.MOTION_START, 2, None),
        (AlarmKind.SIGNAL_LOST, 2, None),
    ]
    queue.close()


async def _rtsp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: str) -> str:
    writer.write(request.encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    text = head.decode()
    length = next(
        (int(line.split(":")[1]) for line in text.split("\r\n") if line.lower().startswith("content-length")),
        0,
    )
    if length:
        text += (await reader.readexactly(length)).decode()
    return text


def test_a_stalled_encoder_and_one_that_dies_while_watched_are_reported(tmp_path: Path) -> None:
    pidfile = tmp_path / "encoder.pid"
    encoder = ("sh", "-c", f'echo $$ > {pidfile}; exec ffmpeg "$@"', "ffmpeg")
    events: list[HalEvent] = []

    def seen(kind: type[HalEvent]) -> bool:
        return any(isinstance(e, kind) for e in events)

    async def main() -> None:
        port_probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = port_probe.sockets[0].getsockname()[1]
        port_probe.close()
        await port_probe.wait_closed()
        config = LiveConfig(port=port, encoder=encoder, stall_after_s=1.0, idle_stop_s=1.0)
        live = LiveView(config, sources(), tmp_path, events.append)
        await live.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            url = f"rtsp://127.0.0.1:{port}/front/1/sub"
            described = await _rtsp(reader, writer, f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n")
            assert described.startswith("RTSP/1.0 200") and "m=video" in described, described
            transport = "RTP/AVP/TCP;unicast;interleaved=0-1"
            setup = await _rtsp(
                reader, writer, f"SETUP {url}/trackID=0 RTSP/1.0\r\nCSeq: 2\r\nTransport: {transport}\r\n\r\n"
            )
            assert setup.startswith("RTSP/1.0 200"), setup
            assert live.streaming_url("front", 1) == url
            played = await _rtsp(reader, writer, f"PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: 1\r\n\r\n")
            assert played.startswith("RTSP/1.0 200"), played
            frames = asyncio.ensure_future(reader.read(1 << 20))  # packets flow, then stop
            await asyncio.wait_for(asyncio.shield(frames), WAIT)
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGSTOP)
            await wait_until_async(
                "StreamStalled", lambda: seen(StreamStalled), timeout=WAIT, seen=lambda: events
            )
            stalled = next(e for e in events if isinstance(e, StreamStalled))
            assert (stalled.device, stalled.channel) == ("front", 1) and stalled.silent_s >= 1.0, stalled
            os.kill(pid, signal.SIGKILL)
            await wait_until_async(
                "EncoderError", lambda: seen(EncoderError), timeout=WAIT, seen=lambda: events
            )
            error = next(e for e in events if isinstance(e, EncoderError))
            assert error.channel == 1 and "exited (code -9) while watched" in error.message, error
            async with asyncio.timeout(WAIT):  # the viewer's connection ends with the stream
                while await reader.read(1 << 16):
                    pass
            assert live.streaming_url("front", 1) is None
            assert sum(isinstance(e, StreamStalled) for e in events) == 1, events
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await live.close()

    asyncio.run(main())


@pytest.mark.integration
@pytest.mark.slow
def test_a_viewer_saves_a_channel_now_and_the_snapshot_a_motion_alarm_carried(tmp_path: Path) -> None:
    serial = "DL-SNAP-0001"
    extra = (
        loopback_services_toml()
        + '[alarms]\nsnapshots = true\n[[capture]]\nname = "front"\nbackend = "synthetic"\n'
        + 'format = "ahd-720p25"\nlost_after_s = 0.2\n'
        + f"[live]\nport = {unused_tcp_port()}\n"
    )
    with paired_recorder(tmp_path, serial, extra) as (daemon, viewer):
        now = tmp_path / "now.jpg"
        saved = viewer.run("snapshot", serial, "--channel", "1", "--width", "320", "-o", str(now))
        assert saved.stdout.strip().startswith(f"{now}: "), saved.stdout
        assert now.read_bytes().startswith(b"\xff\xd8")
        assert probe(now) == "mjpeg 320x180", probe(now)

        moved = subprocess.run(
            [str(BIN / "dvrlinkd"), "synthetic", "2", "motion", "--config", str(daemon.config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        line = ""

        def motion_listed() -> bool:
            nonlocal line
            listed = viewer.run("events", serial).stdout.splitlines()
            line = next((x for x in listed if "MotionStart" in x), "")
            return "[snapshot" in line

        wait_for("the MotionStart alarm with its snapshot", motion_listed, 60)
        event_id = int(line.rsplit("id ", 1)[1].rstrip("]"))
        carried = tmp_path / "carried.jpg"
        viewer.run("snapshot", serial, "--event", str(event_id), "-o", str(carried))
        jpeg = carried.read_bytes()
        assert jpeg.startswith(b"\xff\xd8") and len(jpeg) <= MAX_SNAPSHOT, len(jpeg)
        assert f"[snapshot {len(jpeg)} bytes, id {event_id}]" in line, line

        refused = viewer.run("snapshot", serial, "--channel", "1", "--event", "999999", check=False)
        assert refused.returncode != 0 and "999999" in refused.stderr, refused.stderr
        unplug = subprocess.run(
            [str(BIN / "dvrlinkd"), "synthetic", "3", "unplug", "--config", str(daemon.config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert unplug.returncode == 0, unplug.stderr
        wait_for("channel 3 dark", lambda: "no-video" in viewer.run("channels", serial).stdout, 30)
        dark = viewer.run("snapshot", serial, "--channel", "3", "-o", str(tmp_path / "dark.jpg"), check=False)
        assert dark.returncode == 1 and "front channel 3 has no picture (no-video" in dark.stderr, dark.stderr
        assert not (tmp_path / "dark.jpg").exists()
        # each closed session was ended at the broker: none counts against alice's limit
        assert viewer.run("sessions").stdout.startswith("no sessions"), viewer.run("sessions").stdout


def probe(path: Path) -> str:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
         "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    stream = json.loads(out)["streams"][0]
    return f"{stream['codec_name']} {stream['width']}x{stream['height']}"


def test_live_warm_starts_the_encoder_before_any_describe(tmp_path: Path, mocker: MockerFixture) -> None:
    async def main() -> None:
        config = LiveConfig(port=unused_tcp_port(), idle_stop_s=1.0)
        live = LiveView(config, sources(), tmp_path)
        warm = mocker.spy(live, "warm")
        handle = warm_rpc(live, lambda: "front")
        await live.start()
        try:
            bad = json.loads(await handle(b'{"device": "front", "channel": 1, "profile": "hd"}'))
            assert "a live-warm request is" in bad["error"], bad
            assert warm.call_count == 0
            answer = json.loads(await handle(b'{"device": "", "channel": 1, "profile": "sub"}'))
            assert answer == {"warming": "front/1/sub"}
            warm.assert_called_once_with("front", 1, "sub")
            await wait_until_async(
                "the warmed encoder running",
                lambda: live.streaming_url("front", 1) is not None,
                timeout=WAIT,
                seen=lambda: live.streaming_url("front", 1),
            )
        finally:
            await live.close()

    asyncio.run(main())
