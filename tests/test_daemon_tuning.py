"""The daemon learns its keepalive interval and reports to the broker, on 127.0.0.1: the broker
in-process (``test_broker_api.lab``), the real ``run_daemon``. Loopback has no NAT, so every probe
is answered and the interval climbs to ``max_keepalive_interval_s``; real NAT lifetimes are
measured in the NAT lab. Every wait is bounded; progress is read from the daemon's log.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from test_broker_api import lab
from test_connectivity_harness import run
from test_daemon_sessions import LogWatch

from dvrlink.daemon.app import run_daemon
from dvrlink.daemon.config import load_config
from dvrlink.daemon.status import format_status, read_status
from dvrlink.protocol.identity import b64encode_key

SERIAL = "DL-0009-0001"
WAIT = 60.0


async def logged(watch: LogWatch, text: str) -> str:
    """The first log line containing ``text``, waiting up to ``WAIT`` s."""

    async def scan() -> str:
        while True:
            for line in watch.lines:
                if text in line:
                    return line
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(scan(), WAIT)
    except TimeoutError:
        raise AssertionError(f"no log line with {text!r}:\n" + "\n".join(watch.lines[-30:])) from None


def test_the_daemon_learns_its_interval_and_the_broker_keeps_its_report(tmp_path: Path) -> None:
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
                    'report_min_interval_s = 1\ntransport = "udp"\n'
                )
                stop = asyncio.Event()
                daemon = asyncio.create_task(run_daemon(load_config(config_file), stop, {}))
                try:
                    await watch.wait_for(r"^registered: ")
                    # Round one probes 2.5, 5, 10 and 11.1 s (the cap); all are answered.
                    line = await logged(watch, "NAT keeps an idle UDP mapping at least")
                    assert "at least 11.1 s" in line, line
                    await logged(watch, "keepalive interval 10 s")

                    async def broker_uses_the_new_interval() -> None:
                        while True:
                            info = t.broker.server.presence(SERIAL)
                            record = t.broker.registry.device(SERIAL)
                            report = record.report if record is not None else None
                            if (
                                info is not None
                                and info.keepalive_interval == 10.0
                                and report is not None
                                and report.get("keepalive_s") == 10
                            ):
                                return
                            await asyncio.sleep(0.05)

                    await asyncio.wait_for(broker_uses_the_new_interval(), WAIT)
                    record = t.broker.registry.device(SERIAL)
                    assert record is not None and record.report is not None
                    assert record.report["presence_transport"] == "udp"
                    assert record.report["nat_lifetime_s"] == 11
                    assert t.broker.server.stats["probes"] >= 4
                    status = read_status(tmp_path / "run")
                    assert (status.keepalive_learning, status.nat_lifetime_s) == ("settled", 11.1)
                    assert status.keepalive_s == 10.0
                    assert "learned: the NAT keeps an idle UDP mapping at least 11.1 s" in format_status(
                        status, status.started_at
                    )
                finally:
                    stop.set()
                    await asyncio.wait_for(daemon, WAIT)
        finally:
            logger.removeHandler(watch)
            logger.setLevel(old_level)

    run(main, bound=120.0)
