"""The dashboard's cores without I/O: the feed (history, rate, bounded followers), the login
table (expiry, bound, CSRF comparison), escaping, the operators' config key, and the device
name in the registry (migration 4 keeps what an older registry holds)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import tracemalloc
from pathlib import Path

import pytest

from dvrlink.broker.config import ConfigError, config_from_mapping
from dvrlink.broker.dashboard.feed import DashboardFeed, PresenceChanged
from dvrlink.broker.dashboard.logins import Login, LoginTable, csrf_matches, login_from_json, login_json
from dvrlink.broker.dashboard.render import esc, url_part
from dvrlink.broker.dashboard.view import format_bytes, format_time
from dvrlink.broker.registry import MIGRATIONS, Registry, ScryptParams
from dvrlink.protocol.presence_events import DeviceOffline, DeviceOnline, DeviceReported
from dvrlink.protocol.presence_report import DeviceReport

A, B = "DL-0016-0001", "DL-0016-0002"
FAST = ScryptParams(n=2, r=1, p=1)


def _online(serial: str) -> DeviceOnline:
    return DeviceOnline(serial, ("198.51.100.7", 40000))


def test_feed_keeps_history_newest_first_and_bounded() -> None:
    feed = DashboardFeed(history_per_device=3)
    feed.on_event(_online(A), 100.0)
    feed.on_event(DeviceReported(A, DeviceReport(signal_dbm=-70)), 101.0)  # not a presence change
    feed.on_event(DeviceOffline(A, "no keepalive"), 160.0)
    assert feed.history(A) == [
        PresenceChanged(A, False, 160.0, reason="no keepalive"),
        PresenceChanged(A, True, 100.0, address="198.51.100.7:40000"),
    ]
    for at in (200.0, 300.0, 400.0):
        feed.on_event(_online(A), at)
    assert [c.at for c in feed.history(A)] == [400.0, 300.0, 200.0]
    assert feed.history(B) == []


def test_feed_forgets_the_oldest_device_history_when_full() -> None:
    feed = DashboardFeed(max_devices=2)
    for index, serial in enumerate((A, B, "DL-0016-0003")):
        feed.on_event(_online(serial), float(index))
    assert feed.history(A) == [] and len(feed.history(B)) == 1 and len(feed.history("DL-0016-0003")) == 1


def test_the_history_of_a_fleet_costs_little_next_to_its_sessions() -> None:
    """A broker keeps one history per device: it must stay small (the presence session itself is
    under 1 kB a device; section 1 of docs/benchmarks.md). The events share the session's serial
    and address, as the presence core's do."""
    events = [
        DeviceOnline(f"DL-{i:07d}", (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 40000))
        for i in range(20_000)
    ]
    feed = DashboardFeed()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for event in events:
            feed.on_event(event, 1000.0)
        per_device = (tracemalloc.get_traced_memory()[0] - before) / len(events)
    finally:
        tracemalloc.stop()
    assert per_device < 250, f"{per_device:.0f} bytes of history per device"
    assert feed.history("DL-0000007")[0].address == "10.0.0.7:40000"
    assert feed.registrations_per_minute(1000.5) == 20_000.0


def test_registrations_per_minute_counts_the_last_minute_only() -> None:
    feed = DashboardFeed()
    for at in (0.0, 10.0, 50.0, 59.0):
        feed.on_event(_online(A), at)
    feed.on_event(DeviceOffline(A, "gone"), 59.5)
    assert feed.registrations_per_minute(59.9) == 4.0
    assert feed.registrations_per_minute(60.0) == 3.0  # the one at 0 s is a minute old
    assert feed.registrations_per_minute(200.0) == 0.0


def test_followers_get_their_devices_only() -> None:
    async def main() -> None:
        feed = DashboardFeed()
        everything, only_b = feed.subscribe(None), feed.subscribe(frozenset({B}))
        feed.on_event(_online(A), 1.0)
        feed.on_event(DeviceOffline(B, "goodbye"), 2.0)
        assert [everything.queue.get_nowait() for _ in range(2)] == [
            PresenceChanged(A, True, 1.0, address="198.51.100.7:40000"),
            PresenceChanged(B, False, 2.0, reason="goodbye"),
        ]
        assert only_b.queue.get_nowait() == PresenceChanged(B, False, 2.0, reason="goodbye")
        assert only_b.queue.empty()
        feed.unsubscribe(only_b)
        feed.on_event(DeviceOffline(B, "again"), 3.0)
        assert only_b.queue.empty() and feed.subscribers == 1
        feed.close()
        assert everything.queue.get_nowait() is not None  # the change of 3.0 first ...
        assert everything.queue.get_nowait() is None  # ... then the end

    asyncio.run(main())


def test_a_follower_that_falls_behind_is_dropped_without_blocking_the_others() -> None:
    async def main() -> None:
        feed = DashboardFeed(queue_size=4)
        slow, fast = feed.subscribe(None), feed.subscribe(None)
        started = time.monotonic()
        for index in range(10):
            feed.on_event(_online(A), float(index))
            while not fast.queue.empty():  # this one keeps up
                assert fast.queue.get_nowait() is not None
        assert time.monotonic() - started < 1.0  # never waited on the slow one
        assert slow.dropped and not fast.dropped and feed.dropped == 1 and feed.subscribers == 1
        drained = []
        while not slow.queue.empty():
            drained.append(slow.queue.get_nowait())
        assert drained[-1] is None  # its stream ends; the browser reconnects and starts afresh
        assert len(drained) <= 4

    asyncio.run(main())


def test_logins_expire_and_are_bounded() -> None:
    counter = iter(range(1000))
    table = LoginTable(ttl_s=100.0, max_logins=2, rng=lambda n: bytes([next(counter)]) * n)
    first_id, first = table.create("alice", 0.0)
    assert first.username == "alice" and first.expires_at == 100.0 and first.csrf_token != first_id
    assert table.get(first_id, 99.9) == first
    assert table.get(first_id, 100.0) is None  # expired: forgotten
    assert len(table) == 0
    a, _ = table.create("a", 10.0)
    b, _ = table.create("b", 20.0)
    c, _ = table.create("c", 30.0)  # full: the login closest to expiry goes
    assert table.get(a, 31.0) is None and table.get(b, 31.0) is not None and table.get(c, 31.0) is not None
    assert table.end(b) and not table.end(b) and table.get(b, 31.0) is None
    assert table.get("forged", 31.0) is None


def test_a_stored_login_reads_back_strictly() -> None:
    login = Login("alice", "token", 123.5)
    assert login_from_json(login_json(login)) == login
    for bad in (b"", b"[]", b"{}", b'{"u": "a", "c": "", "x": 1}', b'{"u": 1, "c": "t", "x": 1}',
                b'{"u": "a", "c": "t", "x": true}', b"\xff", b"[" * 100_000):  # fmt: skip
        assert login_from_json(bad) is None, bad


def test_csrf_comparison() -> None:
    assert csrf_matches("token", "token")
    assert not csrf_matches("token", "token2")
    assert not csrf_matches("", "")  # an empty expectation never matches


def test_escaping_and_formats() -> None:
    assert esc('<script>alert("x")</script>') == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert url_part("a/b c") == "a%2Fb%20c"
    assert format_time(None) == "never"
    assert format_time(0.0) == "1970-01-01 00:00:00 UTC"
    assert format_bytes(None) == "not reported"
    assert (format_bytes(999), format_bytes(12_345_678)) == ("999 B", "12.3 MB")


def test_operators_config_is_checked(tmp_path: Path) -> None:
    base = {"state_dir": str(tmp_path)}
    config = config_from_mapping({**base, "dashboard_operators": ["alice", "ops@example"]}, source="t")
    assert config.dashboard_operators == ("alice", "ops@example")
    assert config_from_mapping(base, source="t").dashboard_operators == ()
    with pytest.raises(ConfigError, match=r"dashboard_operators.*list of account names"):
        config_from_mapping({**base, "dashboard_operators": "alice"}, source="t")
    with pytest.raises(ConfigError, match="not valid"):
        config_from_mapping({**base, "dashboard_operators": ["bad name"]}, source="t")
    with pytest.raises(ConfigError, match="dashboard_session_ttl_s"):
        config_from_mapping({**base, "dashboard_session_ttl_s": 1}, source="t")


def test_device_names_live_with_pairings_and_survive_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    old = Registry(path, migrations=MIGRATIONS[:3], password_params=FAST)  # today's schema
    old.check_binding(A, bytes(32), 1.0, manifest_only=False)
    old.create_user("alice", "pw", 1.0)
    old.record_pairing("alice", A, b"k" * 32, 2.0)
    old.close()
    registry = Registry(path, password_params=FAST)
    assert registry.schema_version == len(MIGRATIONS) >= 4
    pairing = registry.pairing("alice", A)
    assert pairing is not None and pairing.name is None and pairing.paired_at == 2.0
    assert registry.set_device_name("alice", A, "<b>porch</b>")
    assert registry.pairing("alice", A).name == "<b>porch</b>"  # type: ignore[union-attr]
    assert registry.pairings_for("alice")[0].name == "<b>porch</b>"
    assert not registry.set_device_name("bob", A, "x")  # not paired
    assert registry.set_device_name("alice", A, None)
    assert registry.pairing("alice", A).name is None  # type: ignore[union-attr]
    assert [d.serial for d in registry.devices()] == [A]
    registry.close()
    with sqlite3.connect(path) as db:
        assert "name" in [row[1] for row in db.execute("PRAGMA table_info(pairings)")]
