"""The daemon's keepalive tuning and its reports to the broker, on 127.0.0.1: the broker
in-process (``support.broker.lab``), the real ``run_daemon``. Loopback has no NAT (the broker
sees the device at its own address), so there is no mapping lifetime to learn: no probes, the
configured interval, UDP kept. Real NAT lifetimes are learned in the NAT lab
(``test_keepalive_lab.py``). Every wait is bounded; progress is read from the daemon's log.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from support.aio import run
from support.broker import lab
from support.daemon_sessions import LogWatch
from support.waiting import wait_until_async

from dvrlink.daemon.app import run_daemon
from dvrlink.daemon.config import load_config
from dvrlink.daemon.status import format_status, read_status
from dvrlink.protocol.identity import b64encode_key

SERIAL = "DL-0009-0001"
WAIT = 60.0


def test_on_loopback_there_is_no_nat_to_learn_and_the_broker_keeps_the_report(tmp_path: Path) -> None:
    """The issue's loopback run "measured" 33 s and moved presence to TCP."""

    async def main() -> None:
        watch = LogWatch()
        logger = logging.getLogger("dvrlink")
        old_level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(watch)
        try:
            async with lab(tmp_path) as t:
                config_file = tmp_path / "dvrlinkd.toml"
                config_file.write_text(
                    f'[device]\nserial = "{SERIAL}"\nstate_dir = "{tmp_path / "device"}"\n'
                    f'runtime_dir = "{tmp_path / "run"}"\n'
                    f'[broker]\nhost = "127.0.0.1"\nport = {t.broker.info.udp_port}\n'
                    f'public_key = "{b64encode_key(t.broker.info.public_key)}"\n'
                    "[presence]\nkeepalive_interval_s = 5\nreply_timeout_s = 1\nretries = 1\n"
                    "learn_keepalive = true\nmax_keepalive_interval_s = 10\nlearn_after_s = 0\n"
                    'report_min_interval_s = 1\ntransport = "auto"\n'
                )
                stop = asyncio.Event()
                daemon = asyncio.create_task(run_daemon(load_config(config_file), stop, {}))
                try:
                    await watch.wait_for(r"^registered: ")
                    line = await watch.wait_for("no NAT between this device and the broker", timeout=WAIT)
                    assert "127.0.0.1:" in line, line

                    def the_report() -> dict[str, Any] | None:
                        record = t.broker.registry.device(SERIAL)
                        return record.report if record is not None else None

                    await wait_until_async(
                        "the broker has the report with keepalive_s 5",
                        lambda: (the_report() or {}).get("keepalive_s") == 5,
                        timeout=WAIT,
                        seen=the_report,
                    )
                    record = t.broker.registry.device(SERIAL)
                    assert record is not None and record.report is not None
                    assert record.report["presence_transport"] == "udp"
                    assert "nat_lifetime_s" not in record.report or record.report["nat_lifetime_s"] is None
                    status = read_status(tmp_path / "run")
                    assert (status.keepalive_learning, status.nat_lifetime_s) == ("no-nat", None), status
                    assert (status.keepalive_s, status.transport) == (5.0, "udp"), status
                    assert "(fixed: no NAT" in format_status(status, status.started_at)
                    assert t.broker.server.stats["probes"] == 0, t.broker.server.stats
                    assert not [line for line in watch.lines if "presence moves to" in line], watch.lines
                finally:
                    stop.set()
                    await asyncio.wait_for(daemon, WAIT)
        finally:
            logger.removeHandler(watch)
            logger.setLevel(old_level)

    run(main, bound=120.0)
