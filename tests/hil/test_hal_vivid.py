"""The HAL's V4L2 backend against a real driver: vivid in the QEMU guest, four capture channels.

vivid is loaded as four instances with one S-Video input each, the way DVR capture cards
(tw686x, solo6x10) give each channel a video node of its own. dvrlinkd watches them through a
``[[capture]] backend = "v4l2"`` table; a viewer on the host lists them with ``dvrlink
channels``; then vivid's "Standard Signal Mode" control switches channel 2 to "No Signal", as a
cut cable would, and the viewer sees it in ``dvrlink channels`` and as an alarm in ``dvrlink
events``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import pytest

from hil.board import Board
from hil.loopback import Viewer

pytestmark = [pytest.mark.hil, pytest.mark.timeout(1800)]

VIVID = "modprobe vivid n_devs=4 node_types=0x1,0x1,0x1,0x1 num_inputs=1,1,1,1 input_types=0x2,0x2,0x2,0x2"
CAPTURE = """
[[capture]]
name = "vivid"
backend = "v4l2"
devices = [{nodes}]
lost_after_s = 0.5
"""
RESTART = (
    "if command -v systemctl >/dev/null; then systemctl restart dvrlinkd; "
    "else /etc/init.d/S95dvrlinkd restart >/dev/null 2>&1; fi; echo restarted"
)
SIGNAL_MODE = (
    'python3 -c "from dvrlink.hal.v4l2 import V4l2Node, set_control_by_name; '
    "node = V4l2Node('{node}'); set_control_by_name(node, 'Standard Signal Mode', '{mode}'); print('set')\""
)


def channels(viewer: Viewer, serial: str) -> dict[int, dict[str, object]]:
    reply = json.loads(viewer.run("channels", serial, "--json", timeout=300).stdout)
    (device,) = reply["devices"]
    assert device["name"] == "vivid" and device["error"] == "", device
    return {row["channel"]: row for row in device["channels"]}


def wait_until(what: str, check: Callable[[], bool], timeout: float, seen: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:g} s; last seen: {seen()}")


@pytest.mark.hil_core
def test_vivid_channels_are_listed_and_a_lost_signal_shows(
    board: Board, logged_in_viewer: Callable[[str], Viewer]
) -> None:
    loaded = board.run(f"{VIVID} && ls /dev/video* | tr '\\n' ' '; echo", timeout=300)
    nodes = [word for word in loaded.split() if word.startswith("/dev/video")]
    assert len(nodes) == 4, (
        f"vivid did not make 4 video nodes: {loaded!r} (dmesg: {board.run('dmesg | tail -5')})"
    )
    before = board.status()["registered_at"]
    table = CAPTURE.format(nodes=", ".join(f'"{node}"' for node in nodes)).replace("\n", "\\n")
    appended = board.run(f"printf '{table}' >> /etc/dvrlink/dvrlinkd.toml && dvrlinkd check-config")
    assert "capture device vivid (v4l2): /dev/video0: vivid" in appended, appended
    assert board.run(RESTART, timeout=300).endswith("restarted")
    wait_until(
        "dvrlinkd registered again after its restart",
        lambda: board.status().get("registered_at", 0) > before and board.status().get("state") == "online",
        600,
        board.status,
    )

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

    assert board.run(SIGNAL_MODE.format(node=nodes[2], mode="No Signal")) == "set"
    cut = time.monotonic()
    wait_until(
        "channel 2 shown without video",
        lambda: channels(viewer, board.serial)[2]["signal"] == "no-video",
        600,
        lambda: channels(viewer, board.serial),
    )
    seen_s = time.monotonic() - cut
    rows = channels(viewer, board.serial)
    assert [rows[c]["signal"] for c in range(4)] == ["locked", "locked", "no-video", "locked"], rows
    journal = board.run(
        "journalctl -u dvrlinkd --no-pager -o cat 2>/dev/null | grep SignalLost || "
        "grep SignalLost /var/log/messages 2>/dev/null"
    )
    assert "vivid channel 2: SignalLost (no-video)" in journal, journal
    events = viewer.run("events", board.serial, timeout=120).stdout
    assert "SignalLost  channel 2  vivid: no-video" in events, f"dvrlink events printed:\n{events}"

    assert board.run(SIGNAL_MODE.format(node=nodes[2], mode="Current Standard")) == "set"
    wait_until(
        "channel 2 locked again",
        lambda: channels(viewer, board.serial)[2]["signal"] == "locked",
        600,
        lambda: channels(viewer, board.serial),
    )
    print(
        f"\nvivid: dvrlink channels in {listed_s:.1f} s; signal cut to shown {seen_s:.1f} s", file=sys.stderr
    )
