"""The cellular data cap inside dvrlinkd: a warning at ``cap_warn_percent``, then optional traffic
stops at ``cap_stop_percent`` (a viewer's new session is refused with the reason, the NAT lifetime
probes pause) while presence stays registered, and everything resumes when a new billing cycle
starts.

The daemon runs as in ``test_daemon_modem.py`` (the emulated EC25, the stand-in udhcpc on ``lo``,
a loopback broker with its TURN relay). Two seams make the cap reachable without moving real
bytes: the data link's byte counters are metered by the test (the link itself is the daemon's
real one), and the accounting's calendar is the test's, so "next month" is a step of the test.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.daemon_modem import ICCID, SERIAL, Rig, running, status_rows
from support.daemon_sessions import Connections, LogWatch
from support.daemon_sessions import Rig as SessionRig
from support.keepalive import FakeProber

from dvrlink.daemon import presence_tuning
from dvrlink.daemon.presence_tuning import PresenceTuning
from dvrlink.daemon.status import format_status, read_status
from dvrlink.modem.manager import DataFailed, DataLink, DataRequest, DataUp
from dvrlink.protocol.presence_events import Registered

pytestmark = pytest.mark.timeout(90)

CAP_CONFIG = "monthly_cap_mb = 1\ncap_warn_percent = 50\nbilling_cycle_day = 1\n"
OTHER_SECTIONS = '[sessions]\nhost_addresses = ["127.0.0.1"]\n[presence]\nlearn_after_s = 0\n'


class MeteredLink:
    """The daemon's data link, with byte counters the test sets (``lo`` counts every process)."""

    def __init__(self, link: DataLink) -> None:
        self._link = link
        self.rx = 0
        self.tx = 0

    async def up(self, request: DataRequest) -> DataUp | DataFailed:
        return await self._link.up(request)

    async def down(self) -> None:
        await self._link.down()

    async def probe(self) -> bool:
        return await self._link.probe()

    def counters(self) -> tuple[int, int]:
        return self.rx, self.tx


class Calendar:
    """The accounting's clock: the test turns the page to the next billing cycle."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@contextlib.contextmanager
def daemon_log() -> Iterator[LogWatch]:
    """The daemon's INFO lines while the block runs."""
    watch, logger = LogWatch(), logging.getLogger("dvrlink")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)


@contextlib.asynccontextmanager
async def capped_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meter: Callable[[dict[str, Any]], dict[str, Any]]
) -> AsyncIterator[tuple[Rig, LogWatch]]:
    """The daemon with a 1 MB cap (warn at 50 %), its data link metered by ``meter``.

    Loopback has no NAT, and a daemon the broker sees at its own address learns nothing (no
    probes to pause). The cap's pause is about probes, so here the daemon is told its reflexive
    address is behind a NAT, the one thing loopback cannot give it.
    """
    monkeypatch.setattr(presence_tuning, "behind_nat", lambda local, reflexive: True)
    with daemon_log() as watch:
        async with running(
            tmp_path,
            monkeypatch,
            extra_modem=CAP_CONFIG,
            extra_config=OTHER_SECTIONS,
            runner_keywords=meter,
            lab_settings={"turn_allow_loopback_peers": True},
        ) as rig:
            yield rig, watch


def test_the_data_cap_warns_then_stops_optional_traffic_until_the_next_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    links: list[MeteredLink] = []
    calendar = Calendar()

    def meter(keywords: dict[str, Any]) -> dict[str, Any]:
        links.append(MeteredLink(keywords["data_link"]))
        return {**keywords, "data_link": links[-1], "calendar": calendar}

    async def main() -> None:
        async with capped_daemon(tmp_path, monkeypatch, meter) as (rig, watch):
            await scenario(rig, watch, links, calendar)

    async def bounded() -> None:
        async with asyncio.timeout(80):
            await main()

    asyncio.run(bounded())


async def scenario(rig: Rig, watch: LogWatch, links: list[MeteredLink], calendar: Calendar) -> None:
    run_dir = rig.config.device.runtime_dir
    await rig.watch.until(lambda b: b.state == "online" and b.cap_level == "normal", "online under the cap")
    await watch.wait_for(r"^registered: ")
    session = SessionRig(
        rig.lab, rig.config, watch, 0, Connections(), 0, Connections(), rig.stop, rig.daemon, serial=SERIAL
    )
    auth, key, _pin = await session.pair()
    link = links[-1]

    # 60 % of the cap: a warning in the log and in `dvrlinkd status`; sessions still open
    link.rx, link.tx = 400_000, 200_000
    block = await rig.watch.until(lambda b: b.cap_level == "warn", "the cap warning")
    assert block.data_used_bytes == 600_000 and block.data_cap_bytes == 1_000_000
    await watch.wait_for(r"modem data at 50% of the cap: 600000 of 1000000 bytes")
    rows = status_rows(format_status(read_status(run_dir), 0.0))
    assert rows["data this cycle"].endswith("(warn)"), rows
    code, body, open_conn, _ = await session.offer(auth, key)  # a live view under the warning
    assert code == 200, body
    assert len(read_status(run_dir).sessions) == 1

    # over the cap: the open session ends, new ones are refused with the reason, probes pause,
    # presence goes on
    mark = len(watch.lines)
    link.rx = 900_000
    await rig.watch.until(lambda b: b.cap_level == "stop", "the cap reached")
    await watch.wait_for(r"ending 1 session\(s\): cellular data cap reached", after=mark)
    await watch.wait_for(r"released; 0 sessions open", after=mark)
    await open_conn.close()
    await watch.wait_for(r"NAT lifetime probes paused: cellular data cap reached", after=mark)
    status = read_status(run_dir)
    assert status.keepalive_learning == "paused"
    assert "probes paused" in status_rows(format_status(status, 0.0))["keepalive"]
    code, body, conn, _ = await session.offer(auth, key)
    assert (code, body["status"]) == (403, "refused"), body
    message = body["device_message"]
    assert "cellular data cap reached (1.1 of 1.0 MB this billing cycle)" in message
    assert "next cycle on 2026-12-01" in message and "monthly_cap_mb" in message
    await watch.wait_for(r"refused: cellular data cap reached", after=mark)
    assert rig.registered() and status.state == "online"

    # the next billing cycle: the cap clears, probes measure again, sessions are accepted
    mark = len(watch.lines)
    calendar.now += timedelta(days=12)
    await rig.watch.until(lambda b: b.cap_level == "normal", "the cap cleared by a new cycle")
    await watch.wait_for(r"modem data cap cleared", after=mark)
    await watch.wait_for(r"NAT lifetime probes resume", after=mark)
    assert read_status(run_dir).keepalive_learning != "paused"
    code, body, conn, _ = await session.offer(auth, key)
    await conn.close()
    assert code == 200, body
    assert rig.registered()


def test_a_cap_reached_before_a_restart_applies_as_soon_as_the_modem_is_online(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cap level is not stored, the bytes are: after a restart the first count (with no new
    bytes) finds the SIM over its cap, and sessions are refused from the start."""
    state = tmp_path / "device" / "modem"
    state.mkdir(parents=True)
    saved = {"current": {"cycle_start": "2026-11-01", "rx": 900_000, "tx": 200_000}, "history": []}
    (state / "accounting.json").write_text(json.dumps({"version": 1, "sims": {ICCID: saved}}))
    calendar = Calendar()

    def meter(keywords: dict[str, Any]) -> dict[str, Any]:
        return {**keywords, "data_link": MeteredLink(keywords["data_link"]), "calendar": calendar}

    async def main() -> None:
        async with capped_daemon(tmp_path, monkeypatch, meter) as (rig, watch):
            block = await rig.watch.until(lambda b: b.state == "online" and b.cap_level == "stop", "the cap")
            assert block.data_used_bytes == 1_100_000
            await watch.wait_for(r"^registered: ")
            session = SessionRig(
                rig.lab,
                rig.config,
                watch,
                0,
                Connections(),
                0,
                Connections(),
                rig.stop,
                rig.daemon,
                serial=SERIAL,
            )
            auth, key, _pin = await session.pair()
            code, body, _, _ = await session.offer(auth, key)
            assert (code, body["status"]) == (403, "refused")
            assert "cellular data cap reached" in body["device_message"]

    async def bounded() -> None:
        async with asyncio.timeout(80):
            await main()

    asyncio.run(bounded())


class NullClient:
    def report(self, report: object, now: float, *, send_now: bool = False) -> None: ...
    def set_keepalive_interval(self, interval: float, now: float) -> None: ...


def test_probes_pause_at_the_cap_and_start_afresh_when_it_clears() -> None:
    """Unit view of ``PresenceTuning.pause_probes``: probes not started yet (``learn_after_s``)
    are held, running ones stopped; on resume each starts afresh, except the UDP one while
    presence runs over TCP (it measures again once back on UDP)."""

    async def main() -> None:
        udp, tcp = FakeProber(), FakeProber()
        transport = ["udp"]
        tuning = PresenceTuning(NullClient(), asyncio.get_running_loop().time, interval=25.0)
        tuning.prober, tuning.tcp_prober = udp, tcp  # type: ignore[assignment]
        tuning.transport = lambda: transport[0]
        tuning.learn_after_s = 3600.0  # held back: still pending when the cap is reached
        tuning.on_event(Registered(1, ("192.0.2.1", 40000), 25.0))
        assert udp.calls == tcp.calls == []
        tuning.pause_probes("cellular data cap reached")
        assert tuning.status() == {"keepalive_learning": "paused"}
        assert udp.calls == tcp.calls == ["stop"]
        tuning.learn_after_s = 0.0
        tuning.on_event(Registered(2, ("192.0.2.1", 40000), 25.0))  # registering again while paused
        assert tcp.calls == ["stop"]
        tuning.pause_probes("")
        assert udp.calls == tcp.calls == ["stop", "start"]
        assert tuning.status()["keepalive_learning"] == "measuring"
        # measuring when the cap is reached again; presence moved to TCP meanwhile
        tuning.pause_probes("cellular data cap reached")
        transport[0] = "tcp"
        tuning.pause_probes("")
        assert udp.calls == ["stop", "start", "stop"]
        assert tcp.calls == ["stop", "start", "stop", "start"]
        tuning.cancel()

    asyncio.run(main())
