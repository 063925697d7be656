"""Board I/O against a real GPIO chip: the PL061 of QEMU's arm64 ``virt`` machine in the guest.

The ``virt`` machine wires its power button to line 3 of the PL061 (``/dev/gpiochip0`` with the
guest kernel's ``CONFIG_GPIO_PL061=y``), and describes it in the device tree as a ``gpio-keys``
button: the rig boots with ``-kernel``, so there is a device tree and no ACPI. The monitor command
``system_powerdown`` presses it: QEMU's gpio-key device raises the line and drops it again 100 ms
later (after QEMU's hw/gpio/gpio_key.c, ``GPIO_KEY_LATENCY``), so one press is a rising and a
falling edge.

The test unbinds the gpio-keys driver, so that line 3 is free for dvrlinkd and logind does not
power the guest off; configures ``[[alarm_input]] door`` on line 3 and ``[[relay]] siren`` on
line 4; restarts dvrlinkd; presses the button; and then the viewer on the host sees the
``AlarmInput`` alarms (``door: active``, then ``door: cleared``) in ``dvrlink events``.
``dvrlink relay SERIAL siren on`` drives line 4 high, which the kernel's GPIO debugfs shows as
an output held by dvrlinkd. Afterwards the config, the daemon and the gpio-keys driver are put
back as they were.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable

import pytest

from hil.board import Board, wait_until
from hil.loopback import Viewer

pytestmark = [pytest.mark.hil, pytest.mark.timeout(1800)]

CONFIG = "/etc/dvrlink/dvrlinkd.toml"
SAVED = "/etc/dvrlink/dvrlinkd.toml.before-gpio"
KEYS = "/sys/bus/platform/drivers/gpio-keys"
BOARD_IO = """
[[alarm_input]]
name = "door"
chip = "/dev/gpiochip0"
line = 3
debounce_s = 0.02

[[relay]]
name = "siren"
chip = "/dev/gpiochip0"
line = 4
"""
DEBUGFS = (
    "mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug; cat /sys/kernel/debug/gpio"
)


def line_state(debugfs: str, offset: int) -> str:
    """The debugfs line of gpiochip0's line ``offset``: `` gpio-515 (  |dvrlinkd  ) out hi``.
    The numbers there are global (the chip's base plus the offset); the chip's header gives the
    base (``gpiochip0: GPIOs 512-519, ...``)."""
    header = re.search(r"^gpiochip0: GPIOs (\d+)-(\d+)", debugfs, re.MULTILINE)
    assert header, f"no gpiochip0 in the kernel's GPIO debugfs:\n{debugfs}"
    number = int(header.group(1)) + offset
    line = re.search(rf"^\s*gpio-{number}\b.*$", debugfs, re.MULTILINE)
    assert line, f"gpiochip0 line {offset} (gpio-{number}) not in the GPIO debugfs:\n{debugfs}"
    return line.group(0)


def relays(viewer: Viewer, serial: str, *action: str) -> dict[str, object]:
    reply = json.loads(viewer.run("relay", serial, *action, "--json", timeout=300).stdout)
    assert isinstance(reply, dict), reply
    return reply


@pytest.mark.hil_core
def test_a_button_press_on_the_pl061_is_an_alarm_and_a_relay_drives_its_line(
    board: Board, logged_in_viewer: Callable[[str], Viewer]
) -> None:
    if board.guest is None:
        pytest.skip("the scenario presses QEMU's power button: it needs the QEMU rig")
    has_binding = board.run("python3 -c 'import gpiod; print(gpiod.__version__)' 2>&1")
    assert re.fullmatch(r"2\.\d+(\.\d+)?", has_binding), (
        f"the image has no gpiod 2.x binding for python3 (the guest said {has_binding!r}): "
        "add python3 gpiod to the image"
    )
    keys = board.run(f"ls {KEYS} 2>/dev/null | grep -v -e bind -e uevent -e module; true").split()
    board.run(f"cp -p {CONFIG} {SAVED}")  # -p: the daemon's user reads it through its group
    try:
        for device in keys:  # free line 3: the button no longer reaches logind either
            board.run(f"echo {device} > {KEYS}/unbind")
        table = BOARD_IO.replace("\n", "\\n")
        checked = board.run(f"printf '{table}' >> {CONFIG} && dvrlinkd check-config 2>&1; true")
        assert re.search(r"alarm input door: /dev/gpiochip0 \(.*line 3( \(.*\))?: free", checked), checked
        assert re.search(r"relay siren: /dev/gpiochip0 \(.*line 4( \(.*\))?: free", checked), checked
        board.restart_daemon()
        debugfs = board.run(DEBUGFS)
        assert "dvrlinkd" in line_state(debugfs, 3) and " in " in line_state(debugfs, 3), debugfs
        assert re.search(r"dvrlinkd\s*\) out lo", line_state(debugfs, 4)), debugfs

        label = board.run("dvrlinkd pairing-code")
        uri = next(line.split(": ", 1)[1] for line in label.splitlines() if "dvrlink://" in line)
        viewer = logged_in_viewer("owner-gpio")
        viewer.run("pair", uri.strip(), timeout=300)
        listed = relays(viewer, board.serial)
        assert listed["inputs"] == [
            {**listed["inputs"][0], "name": "door", "state": "inactive", "error": ""}  # type: ignore[index]
        ], listed
        assert listed["relays"] == [
            {**listed["relays"][0], "name": "siren", "on": False, "error": ""}  # type: ignore[index]
        ], listed

        pressed = time.monotonic()
        board.guest.monitor("system_powerdown")

        def events() -> str:
            return viewer.run("events", board.serial, timeout=120).stdout

        wait_until(
            "the door's alarm in dvrlink events", lambda: "AlarmInput  door: active" in events(), 600, events
        )
        seen_s = time.monotonic() - pressed
        # QEMU drops the line 100 ms after the press: the input clears again.
        wait_until("the door's cleared note", lambda: "AlarmInput  door: cleared" in events(), 600, events)
        journal = board.run(
            "journalctl -u dvrlinkd --no-pager -o cat 2>/dev/null | grep AlarmInput || "
            "grep AlarmInput /var/log/messages 2>/dev/null"
        )
        assert "door: AlarmInputActive" in journal, journal

        on = relays(viewer, board.serial, "siren", "on")
        assert on["relays"][0]["on"] is True, on  # type: ignore[index]
        assert re.search(r"dvrlinkd\s*\) out hi", line_state(board.run(DEBUGFS), 4)), board.run(DEBUGFS)
        relays(viewer, board.serial, "siren", "off")
        assert re.search(r"dvrlinkd\s*\) out lo", line_state(board.run(DEBUGFS), 4)), board.run(DEBUGFS)
        status = board.status()
        assert status["board"]["relays"][0]["on"] is False, status  # type: ignore[index]
        print(f"\nPL061 button: pressed to dvrlink events {seen_s:.1f} s", file=sys.stderr)
    finally:
        board.run(f"mv {SAVED} {CONFIG}")
        board.restart_daemon()  # releases lines 3 and 4 (and puts the siren at its default)
        for device in keys:
            board.run(f"echo {device} > {KEYS}/bind; true")
