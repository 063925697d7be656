"""`make demo`: a broker and two simulated recorders on loopback; a viewer pairs one, lists them,
lists the first one's cameras (a synthetic capture device), follows its alarms and sees one
arrive when a camera is unplugged, and forwards a port.

Everything runs as real processes in a fresh temporary directory and is stopped at the end.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import selectors
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

from hil.loopback import (
    BIN,
    Broker,
    Daemon,
    Viewer,
    add_user,
    loopback_services_toml,
    make_daemon,
    start_broker,
    start_forward,
    stop_all,
    wait_for,
)

CAPTURE = """
[[capture]]
name = "front"
backend = "synthetic"
channels = 4
"""


def dvrlinkd(recorder: Daemon, *args: str) -> str:
    """Run ``dvrlinkd ARGS --config`` for ``recorder``; its output (raises if it fails)."""
    return subprocess.run(
        [str(BIN / "dvrlinkd"), *args, "--config", str(recorder.config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def read_line_containing(stream: IO[str], text: str, timeout: float) -> str:
    """The first line from ``stream`` that contains ``text``.

    Raises:
        TimeoutError: none within ``timeout`` (the message has what was read).
    """
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0 and selector.select(left):
            line = stream.readline()
            if not line:
                break
            if text in line:
                return line
            seen.append(line)
    raise TimeoutError(f"no line with {text!r} within {timeout:g} s; got: {''.join(seen)[-1000:]}")


def step(text: str) -> None:
    """Print a step heading."""
    print(f"\n== {text}", flush=True)


def show(text: str) -> None:
    """Print a command's output, indented."""
    for line in text.rstrip().splitlines():
        print(f"   {line}")


def start_web_ui(root: Path) -> http.server.ThreadingHTTPServer:
    """A small HTTP server standing in for the recorder's web page, on a free loopback port."""
    site = root / "recorder-web"
    site.mkdir(parents=True, exist_ok=True)
    (site / "index.html").write_text(
        "<html><body><h1>Recorder DL-DEMO-0001</h1><p>4 channels, all recording.</p></body></html>\n"
    )
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, name="recorder-web", daemon=True).start()
    return server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request."""

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""


def run(root: Path) -> int:
    """Run the demo in ``root``; returns the exit code."""
    processes: list[Daemon | Broker] = []
    web = start_web_ui(root)
    web_port = web.server_address[1]
    try:
        step("starting dvrlink-broker on 127.0.0.1 (UDP presence + STUN, HTTPS API)")
        broker = start_broker(root / "broker")
        processes.append(broker)
        print(f"   presence/STUN udp://127.0.0.1:{broker.udp_port}   API {broker.url}")
        print(f"   broker key (pinned by devices): {broker.public_key}")
        add_user(broker.state_dir, "demo", "demo-password")
        print("   created viewer account 'demo'")

        step("starting two simulated recorders (dvrlinkd)")
        services = loopback_services_toml(web_port)
        recorders = [
            make_daemon(
                root / "devices", s, broker, extra_toml=services + (CAPTURE if s.endswith("1") else "")
            )
            for s in ("DL-DEMO-0001", "DL-DEMO-0002")
        ]
        print(f"   {recorders[0].serial} has 4 synthetic cameras (a [[capture]] test pattern)")
        print(f"   each recorder serves its web page on 127.0.0.1:{web_port} and allows forwards to it")
        for recorder in recorders:
            recorder.start()
            processes.append(recorder)
        for recorder in recorders:
            wait_for(f"{recorder.serial} registered", recorder.online, 30)
            status = recorder.status() or {}
            print(f"   {recorder.serial}: {status.get('state')} as {status.get('reflexive_address')}")

        step(f"owner reads the pairing code of {recorders[0].serial} (dvrlinkd pairing-code)")
        uri = recorders[0].pairing_uri()
        print(f"   {uri}")

        viewer = Viewer(root / "viewer")
        step("viewer logs in (dvrlink login)")
        show(viewer.login(broker, "demo", "demo-password").stdout)

        step(f"viewer pairs {recorders[0].serial} (dvrlink pair)")
        show(viewer.run("pair", uri).stdout)

        step("viewer lists its devices (dvrlink devices)")
        show(viewer.run("devices").stdout)

        step(f"viewer asks for {recorders[1].serial}, which it has not paired (dvrlink status)")
        refused = viewer.run("status", recorders[1].serial, check=False)
        show(refused.stderr)

        step(f"device status (dvrlinkd status) of {recorders[0].serial}")

        show(dvrlinkd(recorders[0], "status"))
        step(f"viewer lists the cameras of {recorders[0].serial} (dvrlink channels)")
        show(viewer.run("channels", recorders[0].serial).stdout)

        step(f"viewer follows the alarms of {recorders[0].serial} (dvrlink events --follow)")
        follower = subprocess.Popen(
            [str(BIN / "dvrlink"), "--home", str(viewer.home), "events", recorders[0].serial, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(1.0)  # the follower connects (it would also catch up on what it missed)

        step(f"someone cuts the cable of camera 2 (dvrlinkd synthetic 2 unplug on {recorders[0].serial})")
        cut = time.monotonic()
        show(dvrlinkd(recorders[0], "synthetic", "2", "unplug"))
        try:
            assert follower.stdout is not None
            line = read_line_containing(follower.stdout, "SignalLost", 30)
            print(f"   dvrlink events --follow printed, {time.monotonic() - cut:.1f} s after the cut:")
            show(line)
        finally:
            follower.terminate()
            follower.wait(10)
        wait_for(
            "channel 2 to lose its signal",
            lambda: "no-video" in viewer.run("channels", recorders[0].serial).stdout,
            30,
        )
        show(viewer.run("channels", recorders[0].serial).stdout)

        step(
            f"viewer forwards a local port to the recorder web page "
            f"(dvrlink forward {recorders[0].serial} 0:{web_port})"
        )
        forward = start_forward(viewer, recorders[0].serial, web_port)
        try:
            print(f"   listening on 127.0.0.1:{forward.local_port}, session path: {forward.path}")
            url = f"http://127.0.0.1:{forward.local_port}/"
            with urllib.request.urlopen(url, timeout=20) as reply:
                page = reply.read().decode()
            print(f"   GET {url} -> {reply.status}")
            show(page)
        finally:
            forward.stop()

        step("done: stopping everything")
        return 0
    finally:
        stop_all(list(reversed(processes)))
        web.shutdown()


def main() -> int:
    """Entry point of ``python -m hil.demo``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args.keep)
    with tempfile.TemporaryDirectory(prefix="dvrlink-demo-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
