"""Loopback integration with real processes: a fleet of daemons, a broker crash, a hijack attempt."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvrlink.protocol.identity import ed25519_private_from_pem, ed25519_public_bytes
from hil.loopback import Broker, Daemon, make_daemon, start_broker, stop_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FLEET = 50
INTERVAL = 4.0


def bound_keys(state_dir: Path) -> dict[str, bytes]:
    """serial -> public key, read straight from the broker's SQLite registry."""
    with sqlite3.connect(state_dir / "registry.sqlite3") as db:
        return {serial: bytes(key) for serial, key in db.execute("SELECT serial, public_key FROM devices")}


def device_public_key(daemon: Daemon) -> bytes:
    path = daemon.home / "state" / "device_key.pem"
    return ed25519_public_bytes(ed25519_private_from_pem(path.read_bytes(), str(path)))


@pytest.fixture
def processes() -> Iterator[list[Daemon | Broker]]:
    started: list[Daemon | Broker] = []
    yield started
    stop_all(list(reversed(started)))


def test_fleet_survives_a_broker_crash(tmp_path: Path, processes: list[Daemon | Broker]) -> None:
    broker = start_broker(tmp_path / "broker")
    processes.append(broker)
    fleet = [
        make_daemon(tmp_path / "devices", f"DL-FLT-{i:04d}", broker, keepalive_interval=INTERVAL)
        for i in range(FLEET)
    ]
    for daemon in fleet:
        daemon.start()
        processes.append(daemon)
    wait_for("50 daemons online", lambda: broker.health().get("online") == FLEET, 120)
    before = bound_keys(broker.state_dir)
    assert len(before) == FLEET
    assert all(before[d.serial] == device_public_key(d) for d in fleet)

    # Crash the broker (no clean shutdown) and bring it back on the same ports.
    assert broker.stop(signal.SIGKILL) == -signal.SIGKILL
    processes.remove(broker)
    restarted = start_broker(
        broker.state_dir, udp_port=broker.udp_port, https_port=broker.https_port, turn_port=broker.turn_port
    )
    processes.append(restarted)
    back_at = time.monotonic()
    wait_for("50 daemons back online", lambda: restarted.health().get("online") == FLEET, 60)
    took = time.monotonic() - back_at
    print(f"all {FLEET} back online {took:.1f} s after the broker restarted (interval {INTERVAL} s)")
    # The protocol bound (not a speed target): back within two keepalive intervals.
    assert took <= 2 * INTERVAL, f"took {took:.1f} s, more than 2 x {INTERVAL} s"
    assert bound_keys(restarted.state_dir) == before
    assert all(d.proc is not None and d.proc.poll() is None for d in fleet)
    # They came back by their resumption tickets (protocol/presence_ticket.py), not in full.
    in_full = [d.serial for d in fleet if "(resumed by ticket)" not in d.log.read_text(errors="replace")]
    assert not in_full, f"{len(in_full)} of {FLEET} registered in full after the restart: {in_full[:5]}"


def test_hijack_with_another_key_is_refused_and_the_original_stays(
    tmp_path: Path, processes: list[Daemon | Broker]
) -> None:
    broker = start_broker(tmp_path / "broker")
    processes.append(broker)
    original = make_daemon(tmp_path / "a", "DL-HJK-0001", broker, keepalive_interval=1.0, reply_timeout=0.2)
    original.start()
    processes.append(original)
    wait_for("original online", original.online, 30)
    thief = make_daemon(tmp_path / "b", "DL-HJK-0001", broker, keepalive_interval=1.0, reply_timeout=0.2)
    thief.start()
    processes.append(thief)

    def refused() -> bool:
        status = thief.status()
        return bool(status and "another" in status.get("message", ""))

    wait_for("the second key is refused", refused, 30)
    log = broker.log.read_text()
    assert "DL-HJK-0001" in log and "refus" in log.lower()
    # The original keeps its keepalives going on the same registration.
    first = original.status() or {}
    wait_for(
        "original keeps alive",
        lambda: (original.status() or {}).get("last_keepalive", 0) > first.get("last_keepalive", 0) + 1.5,
        15,
    )
    assert original.online()
    assert (original.status() or {}).get("registered_at") == first.get("registered_at")
    assert bound_keys(broker.state_dir)["DL-HJK-0001"] == device_public_key(original)
    assert not thief.online()
