"""A real RTSP server for tests: GStreamer's RTSP server with a live test pattern (H.264, 25 fps).

Runs under the system Python (Debian's python3-gi and gir1.2-gst-rtsp-server-1.0), not in the
project's virtual environment:

    /usr/bin/python3 hil/rtsp_test_server.py [PORT]     # 0 or absent: a free port

It serves rtsp://127.0.0.1:PORT/live (RTP over UDP or interleaved in the RTSP TCP connection)
and prints "ready PORT" once it listens. ffmpeg 5.1's RTSP muxer cannot listen (its listen
flag is for the demuxer), so this stands in for the recorder's RTSP service.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = (
    "( videotestsrc is-live=true pattern=smpte ! video/x-raw,width=320,height=240,framerate=25/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! rtph264pay name=pay0 pt=96 )"
)


def main() -> None:
    """Serve until killed."""
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1] if len(sys.argv) > 1 else "0")
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    # Each client gets its own pipeline. With one shared pipeline, four clients joining at once on
    # a loaded machine had one refused (ffprobe: "Operation not permitted", the RTSP reply to a
    # request the shared media was not in a state to take) while the forward carried it fine.
    factory.set_shared(False)
    server.get_mount_points().add_factory("/live", factory)
    server.attach(None)
    print(f"ready {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
