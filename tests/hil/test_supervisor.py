"""The board supervisor on the QEMU arm64 rig: the supervisor's MicroPython firmware runs on the
host (tests/support/micropython.py) and is the guest's ``pci-serial`` port (``/dev/ttyS0``),
which the guest's ``dvrlinkd`` opens as ``[board] supervisor``. Its SoC reset line is wired to
QEMU's ``system_reset`` (the monitor): ``hil.qemu.supervisor.PinWiring`` hands each pulse of that
pin on the recorded trace to QEMU as it ends, the way the transistor on a board pulls the SoC's
nRESET.

The scenario: the guest registers and heartbeats under systemd (one at every watchdog ping); then
its userspace is frozen whole (the cgroups of PID 1, the services and the sessions), so neither
dvrlinkd nor systemd can do anything, and QEMU's own watchdog (the i6300esb that systemd feeds)
is set to do nothing. The supervisor resets the board one timeout after the last heartbeat; the
board boots again, registers again, and ``dvrlinkd status`` says why it was reset.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
from support.micropython import PtyBridge, SimulatedSupervisor, node_missing

from dvrlink.protocol import supervisor_wire as wire
from dvrlink.protocol.identity import b64encode_key
from hil.board import wait_until
from hil.qemu.boot import PROMPT, BootOptions, Guest
from hil.qemu.build import Image, build
from hil.qemu.host import HostBroker
from hil.qemu.rigconfig import image_config_path, with_values
from hil.qemu.supervisor import PinWiring
from hil.qemu.targets import Target

SERIAL = "DL-0018-0042"
SOC_RESET = 2
TIMEOUT_S = 90
"""The supervisor's heartbeat timeout: three of systemd's watchdog pings (WatchdogSec=60: every 30 s)."""
BOOT_S = 900.0
"""A TCG boot to registered on a loaded host (docs/hil.md measured 100-300 s)."""
GUEST_PORT = "/dev/ttyS0"
"""The supervisor's ``pci-serial`` port, the guest's only 8250 UART (the console is the PL011)."""
FREEZE = "for c in init.scope system.slice user.slice; do echo 1 > /sys/fs/cgroup/$c/cgroup.freeze; done"
"""Freeze PID 1's cgroup, the services' and the sessions' (the shell's own last)."""

pytestmark = [
    pytest.mark.hil,
    pytest.mark.timeout(3600),  # two TCG boots and a heartbeat timeout: past the default 300 s
    pytest.mark.skipif(node_missing() is not None, reason=node_missing() or ""),
]


@pytest.fixture(scope="module")
def image(arm64: Target) -> Image:
    return build(arm64, out=sys.stderr)


def status(guest: Guest) -> dict[str, object]:
    """``dvrlinkd status --json`` on the guest (``{"running": false, ...}`` while it starts)."""
    text = guest.console.run("dvrlinkd status --json 2>/dev/null", timeout=120)
    start = text.find("{")
    try:
        doc, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else ({}, 0)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def test_a_frozen_board_is_reset_by_the_supervisor_and_comes_back_registered(
    arm64: Target, image: Image, host_broker: HostBroker, tmp_path: Path
) -> None:
    info = host_broker.info
    text = image_config_path().read_text().rstrip("\n") + "\n\n[board]\n"
    config = tmp_path / "dvrlinkd.toml"
    config.write_text(
        with_values(
            text,
            {
                "device": {"serial": SERIAL},
                "broker": {
                    "host": "10.0.2.2",
                    "port": info.udp_port,
                    "public_key": b64encode_key(info.public_key),
                },
                "board": {"supervisor": GUEST_PORT, "supervisor_timeout_s": TIMEOUT_S},
            },
        )
    )
    # A boot under TCG takes minutes: the grace after a reset covers it.
    policy = {"boot_grace_ms": int(BOOT_S * 1000), "min_timeout_s": 10}
    with SimulatedSupervisor(tmp_path / "flash", {"policy": policy}) as sim:
        sim.run(1000, adc=43000)  # 12.0 V
        with PtyBridge(sim) as pty:
            options = BootOptions(
                mem_mb=arm64.default_mem_mb,
                config=config,
                extra_args=(
                    *("-chardev", f"serial,id=supervisor,path={pty.path}"),
                    *("-device", "pci-serial,chardev=supervisor"),
                ),
            )
            (tmp_path / "run").mkdir()
            guest = Guest(arm64, image, options, tmp_path / "run")
            guest.start()
            try:
                _scenario(guest, sim, host_broker)
            finally:
                guest.stop()
    assert not sim.trace.wdt_expired


def _acks(sim: SimulatedSupervisor) -> list[int]:
    return [t for t, data in sim.trace.tx if data[2:3] == bytes((wire.MsgType.HEARTBEAT | wire.REPLY_BIT,))]


def _scenario(guest: Guest, sim: SimulatedSupervisor, broker: HostBroker) -> None:
    broker.process.wait_for(rf"serial {SERIAL} bound to key .* on first registration from ", BOOT_S)
    guest.login(300.0)
    wait_until(
        "two heartbeats from the guest's dvrlinkd", lambda: len(_acks(sim)) >= 2, 120.0, lambda: sim.trace.tx
    )
    first = status(guest)
    block = first.get("supervisor")
    assert isinstance(block, dict) and block.get("firmware") == "1.1.0", first
    assert block.get("timeout_s") == TIMEOUT_S, block
    registered_before = float(first.get("registered_at") or 0)

    # QEMU's watchdog must not be the one that resets the board: only the supervisor may.
    guest.monitor("watchdog_action none")
    resets = len(sim.trace.pulses(SOC_RESET))
    handed: list[tuple[float, int]] = []
    """(time, console position) of each reset the wiring handed to QEMU."""

    def reset_line() -> None:
        handed.append((time.monotonic(), guest.console.mark()))
        guest.monitor("system_reset")

    with PinWiring(sim.trace.pins, reset_soc=reset_line):
        frozen_at = time.monotonic()
        guest.console.write(FREEZE + "\n")
        wait_until(
            "the supervisor's SoC reset pulse, handed to QEMU",
            lambda: handed,
            TIMEOUT_S + 120.0,
            lambda: (sim.trace.pins, _acks(sim)[-3:]),
        )
        start, width = sim.trace.pulses(SOC_RESET)[resets]
        last_ack = max(t for t in _acks(sim) if t < start)
        assert start - last_ack == TIMEOUT_S * 1000, (last_ack, start)
        assert width == 200
        reset_at, mark = handed[0]
        print(f"\nfrozen to reset: {reset_at - frozen_at:.1f} s", file=sys.stderr)
        guest.console.wait_for(rf"{PROMPT}:\S*# ", BOOT_S, start=mark)
        guest.login(60.0)

        def online_again() -> bool:
            now = status(guest)
            return now.get("state") == "online" and float(now.get("registered_at") or 0) > registered_before

        wait_until("dvrlinkd registered again after the reset", online_again, BOOT_S, lambda: status(guest))
    assert len(handed) == 1, handed
    print(f"reset to registered: {time.monotonic() - reset_at:.1f} s", file=sys.stderr)
    shown = guest.console.run("dvrlinkd status", timeout=120)
    assert re.search(
        rf"last reset: the supervisor reset this board at \d\d:\d\d after {TIMEOUT_S} s without a heartbeat",
        shown,
    ), shown
