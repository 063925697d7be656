"""dvrlinkd with ``[board] supervisor``, every side real: ``dvrlink-broker`` and ``dvrlinkd`` as
processes on loopback, and the supervisor's MicroPython firmware (tests/support/micropython.py)
on a PTY that the daemon opens as its serial port.

Before the daemon starts, the firmware has already reset the board once (a heartbeat, then
silence, in simulated time). The daemon then heartbeats at every watchdog ping, shows the
firmware's version, the supply voltage and that reset in words in ``dvrlinkd status``, and sends
the reset log's entries to the broker as alarms. SIGSTOP (a hung daemon): the firmware pulses the
SoC's reset line one timeout after the last heartbeat.

A deliberate stop (SIGTERM) disarms the firmware's watchdog: no reset pulse in two timeouts, and
the next start shows "disarmed by the daemon at HH:MM"; a crash (SIGKILL) sends nothing, and the
reset line pulses one timeout after the last heartbeat.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.micropython import PtyBridge, SimulatedSupervisor, node_missing
from support.presence import Program
from support.waiting import wait_until_async

from dvrlink.broker.alarm_store import ALARMS_FILE, AlarmStore
from dvrlink.broker.state import read_info
from dvrlink.protocol import supervisor_wire as wire
from dvrlink.protocol.alarm_wire import kind_name
from dvrlink.protocol.identity import b64encode_key

BIN = Path(sys.executable).parent
SERIAL = "DL-0018-0001"
BOUND = 60.0
SOC_RESET = 2
TIMEOUT_S = 3
ADC_12V = 43000
"""The ADC count of 12.0 V through the Pico board's 100k/22k divider."""

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(node_missing() is not None, reason=node_missing() or ""),
]


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _acks(sim: SimulatedSupervisor, msg_type: int = wire.MsgType.HEARTBEAT) -> list[int]:
    """When the firmware answered each request of ``msg_type`` (simulated ms)."""
    return [t for t, data in sim.trace.tx if data[2:3] == bytes((msg_type | wire.REPLY_BIT,))]


def _require_scripts() -> None:
    for name in ("dvrlinkd", "dvrlink-broker"):
        if not (BIN / name).exists():
            pytest.skip(f"the {name} script is not installed (run `make venv`)")


async def _start_broker(tmp_path: Path, env: dict[str, str]) -> tuple[Program, Path]:
    """A broker on loopback, ready; returns it and a daemon config (``[board] supervisor``
    left for the caller to append)."""
    broker_state, device_state = tmp_path / "broker", tmp_path / "device"
    udp_port, https_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    broker = await Program.start(
        str(BIN / "dvrlink-broker"), "serve", "--state-dir", str(broker_state), "--udp-port", str(udp_port),
        "--https-port", str(https_port), "--turn-port", "0", "--presence-tcp-port", "0",
        bound=BOUND, env=env,
    )  # fmt: skip
    await broker.wait_for_line("dvrlink-broker ready")
    info = read_info(broker_state)
    config = tmp_path / "dvrlinkd.toml"
    config.write_text(
        f'[device]\nserial = "{SERIAL}"\nstate_dir = "{device_state}"\n'
        f'runtime_dir = "{tmp_path / "run"}"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {udp_port}\n'
        f'public_key = "{b64encode_key(info.public_key)}"\n'
        '[presence]\ntransport = "udp"\nkeepalive_interval_s = 2.0\nreply_timeout_s = 0.5\n'
        "learn_keepalive = false\n"
    )
    return broker, config


def test_a_daemon_heartbeats_shows_the_last_reset_reports_it_and_is_reset_when_it_hangs(
    tmp_path: Path,
) -> None:
    _require_scripts()
    policy = {"heartbeat_timeout_s": TIMEOUT_S, "min_timeout_s": 1, "boot_grace_ms": 1000}
    earlier = int(time.time()) - 600
    with SimulatedSupervisor(tmp_path / "flash", {"policy": policy}) as sim:
        # The board was reset ten minutes ago: a heartbeat, then silence for the timeout.
        sim.run(1000, adc=ADC_12V)
        assert isinstance(sim.request(wire.heartbeat(1, wire.Health.OK, earlier)), wire.HeartbeatAck)
        sim.run(TIMEOUT_S * 1000 + 500)
        assert len(sim.trace.pulses(SOC_RESET)) == 1
        with PtyBridge(sim) as pty:
            asyncio.run(asyncio.wait_for(_daemon_side(tmp_path, sim, pty.path, earlier), BOUND * 3))
    assert not sim.trace.wdt_expired


async def _daemon_side(tmp_path: Path, sim: SimulatedSupervisor, port: str, earlier: int) -> None:
    broker_state = tmp_path / "broker"
    heartbeat_file = tmp_path / "heartbeat"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID")}
    daemon_env = {**env, "WATCHDOG_USEC": "1000000", "DVRLINKD_HEARTBEAT_FILE": str(heartbeat_file)}
    broker, config = await _start_broker(tmp_path, env)
    with config.open("a") as f:
        f.write(f'[board]\nsupervisor = "{port}"\n')
    daemon: Program | None = None
    try:
        daemon = await Program.start(
            str(BIN / "dvrlinkd"), "run", "--config", str(config), bound=BOUND, env=daemon_env
        )
        await daemon.wait_for_line("registered")
        await daemon.wait_for_line(r"supervisor on .*: firmware 1\.1\.0, supply 12\.\d\d V")

        # Heartbeats at the watchdog's pings (every 0.5 s), each telling the daemon's health.
        before = len(_acks(sim))
        await wait_until_async(
            "four more heartbeats", lambda: len(_acks(sim)) >= before + 4, seen=lambda: _acks(sim)
        )
        assert heartbeat_file.exists(), "the watchdog pinged"

        shown = await _status(config, env)
        at = time.strftime("%H:%M", time.localtime(earlier + 3))
        assert re.search(r"supervisor .*: firmware 1\.1\.0, supply 12\.\d\d V", shown), shown
        assert (
            f"last reset: the supervisor reset this board at {at} after 3 s without a heartbeat" in shown
        ), shown

        # The reset log reached the broker as alarms: the reset, and the supervisor's power-on.
        store = AlarmStore(broker_state / ALARMS_FILE)
        try:

            def kinds() -> dict[str, list[tuple[str, int]]]:
                out: dict[str, list[tuple[str, int]]] = {}
                for alarm in store.history(SERIAL):
                    out.setdefault(kind_name(alarm.kind), []).append((alarm.detail, alarm.time_ms // 1000))
                return out

            alarms = await wait_until_async(
                "the supervisor's alarms at the broker",
                lambda: {"SupervisorReset", "BrownOut"} <= kinds().keys(),
                seen=kinds,
            )
            assert alarms
            assert kinds()["SupervisorReset"] == [
                ("the supervisor reset the board after 3 s without a heartbeat", earlier + 3)
            ], "one alarm, at the reset's time"
            assert kinds()["BrownOut"][0][0].startswith(
                "the board's supply failed: the supervisor powered up"
            )
        finally:
            store.close()

        # A hung daemon: SIGSTOP. The reset line pulses one timeout after the last heartbeat.
        resets = len(sim.trace.pulses(SOC_RESET))
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            pulses = await wait_until_async(
                "the SoC reset pulse",
                lambda: sim.trace.pulses(SOC_RESET)[resets:],
                seen=lambda: sim.trace.pins,
            )
            last_ack = max(t for t in _acks(sim) if t < pulses[0][0])
            assert pulses[0][0] - last_ack == TIMEOUT_S * 1000, (last_ack, pulses)
            assert pulses[0][1] == 200
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
    finally:
        if daemon is not None:
            daemon.proc.send_signal(signal.SIGTERM)
            await daemon.stop()
        broker.proc.send_signal(signal.SIGTERM)
        await broker.stop()


async def _status(config: Path, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "dvrlinkd"), "status", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), BOUND)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def test_a_stopped_daemon_disarms_the_supervisor_and_a_killed_one_is_reset(tmp_path: Path) -> None:
    _require_scripts()
    policy = {"heartbeat_timeout_s": TIMEOUT_S, "min_timeout_s": 1, "boot_grace_ms": 1000}
    with SimulatedSupervisor(tmp_path / "flash", {"policy": policy}) as sim:
        sim.run(1000, adc=ADC_12V)
        with PtyBridge(sim) as pty:
            asyncio.run(asyncio.wait_for(_stop_then_kill(tmp_path, sim, pty.path), BOUND * 3))
    assert not sim.trace.wdt_expired


async def _stop_then_kill(tmp_path: Path, sim: SimulatedSupervisor, port: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_PID")}
    # Heartbeats at the watchdog's pings, every 0.5 s (the file stands for systemd's notify socket).
    daemon_env = {**env, "WATCHDOG_USEC": "1000000", "DVRLINKD_HEARTBEAT_FILE": str(tmp_path / "heartbeat")}
    broker, config = await _start_broker(tmp_path, env)
    with config.open("a") as f:
        f.write(f'[board]\nsupervisor = "{port}"\n')
    daemon: Program | None = None
    try:
        daemon = await Program.start(
            str(BIN / "dvrlinkd"), "run", "--config", str(config), bound=BOUND, env=daemon_env
        )
        await daemon.wait_for_line(r"supervisor on .*: firmware 1\.1\.0")
        await wait_until_async("three heartbeats", lambda: len(_acks(sim)) >= 3, seen=lambda: _acks(sim))

        # systemctl stop: SIGTERM. The daemon disarms the watchdog on its way out.
        before_stop = time.time()
        assert await daemon.stop() == 0, "".join(daemon.lines)
        after_stop = time.time()
        assert any("disarmed until dvrlinkd's next heartbeat" in line for line in daemon.lines), daemon.lines
        (disarmed_at,) = _acks(sim, wire.MsgType.DISARM)
        last_ack = max(_acks(sim))
        assert last_ack < disarmed_at, "no heartbeat after the disarm"
        quiet_until = last_ack + 2 * TIMEOUT_S * 1000 + 500
        await wait_until_async(
            "two timeouts after the last heartbeat", lambda: sim.now >= quiet_until, seen=lambda: sim.now
        )
        assert sim.trace.pulses(SOC_RESET) == [], (
            "the supervisor reset a board whose daemon stopped cleanly",
            sim.trace.pulses(SOC_RESET),
            [(t, data[2]) for t, data in sim.trace.tx],
            "".join(daemon.lines),
        )

        # Started again: its first heartbeat arms the watchdog, and status tells of the clean stop.
        daemon = await Program.start(
            str(BIN / "dvrlinkd"), "run", "--config", str(config), bound=BOUND, env=daemon_env
        )
        await daemon.wait_for_line(r"supervisor on .*: firmware 1\.1\.0")

        def stop_line() -> str:
            shown = _status_now(config, env)
            return next((line for line in shown.splitlines() if "last stop:" in line), "")

        line = await wait_until_async("the clean stop in dvrlinkd status", stop_line, timeout=BOUND)
        minutes = {time.strftime("%H:%M", time.localtime(t)) for t in (before_stop, after_stop)}
        assert any(f"last stop: disarmed by the daemon at {m}" in line for m in minutes), (line, minutes)

        # A crash: SIGKILL sends nothing, and the reset line pulses one timeout after the last heartbeat.
        before = len(_acks(sim))
        await wait_until_async(
            "heartbeats again", lambda: len(_acks(sim)) >= before + 2, seen=lambda: _acks(sim)
        )
        daemon.proc.kill()
        await daemon.stop()
        pulses = await wait_until_async(
            "the SoC reset pulse after SIGKILL",
            lambda: sim.trace.pulses(SOC_RESET),
            seen=lambda: sim.trace.pins,
        )
        last_ack = max(t for t in _acks(sim) if t < pulses[0][0])
        assert pulses[0][0] - last_ack == TIMEOUT_S * 1000, (last_ack, pulses)
        assert len(_acks(sim, wire.MsgType.DISARM)) == 1, "a killed daemon sent no disarm"
    finally:
        if daemon is not None:
            await daemon.stop()
        broker.proc.send_signal(signal.SIGTERM)
        await broker.stop()


def _status_now(config: Path, env: dict[str, str]) -> str:
    """``dvrlinkd status`` (its output, or "" while the daemon has not written its status yet)."""
    done = subprocess.run(
        [str(BIN / "dvrlinkd"), "status", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=BOUND, check=False,
    )  # fmt: skip
    return done.stdout if done.returncode == 0 else ""
