"""dvrlinkd in-process (``run_daemon``) raising 1,000 alarms while its broker is down; then the
broker (in-process, the whole ``start_broker``) comes back on the same port and state: every
alarm is stored once, in order. The daemon's own ``AlarmQueue`` is taken with ``mocker.spy``,
the way an event source inside the daemon holds it. Every wait is bounded."""

from __future__ import annotations

import asyncio
import base64
import socket
from pathlib import Path

from pytest_mock import MockerFixture
from support.presence import loopback_broker_config
from support.status import status_or_none
from support.waiting import wait_until_async

from dvrlink.broker.alarm_store import StoredAlarm
from dvrlink.broker.app import start_broker
from dvrlink.daemon.alarms import AlarmQueue
from dvrlink.daemon.app import run_daemon
from dvrlink.daemon.config import load_config
from dvrlink.protocol.alarm_wire import AlarmKind

SERIAL = "DL-0015-0004"
WAIT = 30.0
COUNT = 1000


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_status(what: str, run_dir: Path, pending: int) -> None:
    def alarms_pending() -> int | None:
        status = status_or_none(run_dir)
        return None if status is None else status.alarms_pending

    await wait_until_async(what, lambda: alarms_pending() == pending, timeout=WAIT, seen=alarms_pending)


def test_1000_alarms_raised_in_a_running_daemon_while_the_broker_is_down(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    opened = mocker.spy(AlarmQueue, "open")

    async def main() -> None:
        port = _free_udp_port()
        broker_config = loopback_broker_config(tmp_path / "broker", udp_port=port)
        broker = await start_broker(broker_config)
        key = base64.b64encode(broker.info.public_key).decode()
        await broker.close()  # the broker is down from here on
        config_path = tmp_path / "dvrlinkd.toml"
        config_path.write_text(
            f'[device]\nserial = "{SERIAL}"\nstate_dir = "state"\nruntime_dir = "run"\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {port}\npublic_key = "{key}"\n'
            '[presence]\ntransport = "udp"\nkeepalive_interval_s = 1.0\nreply_timeout_s = 0.3\n'
            "learn_keepalive = false\n"
        )
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(load_config(config_path), stop, {}))
        broker = None
        try:
            for _ in range(100_000):  # the daemon opens its queue in its first steps
                if opened.spy_return_list:
                    break
                await asyncio.sleep(0)
            else:
                raise AssertionError("the daemon did not open its alarm queue")
            queue: AlarmQueue = opened.spy_return_list[0]
            for seq in range(1, COUNT + 1):
                queue.raise_alarm(AlarmKind.ALARM_INPUT, channel=seq % 8, detail=f"input {seq}")
                if seq % 100 == 0:
                    await asyncio.sleep(0)  # the daemon keeps trying the broker meanwhile
            assert queue.pending == COUNT
            run_dir = tmp_path / "run"
            await wait_status("the status file counting the queued alarms", run_dir, COUNT)

            broker = await start_broker(broker_config)
            alarms = broker.alarms
            assert alarms is not None
            # On a busy machine the daemon registers and delivers before start_broker returns:
            # count what the service stored, not what a listener added afterwards has seen.
            all_in = asyncio.Event()

            def note(_alarm: StoredAlarm | None = None) -> None:
                if alarms.stats["stored"] >= COUNT:
                    all_in.set()

            alarms.listeners.append(note)
            note()
            try:
                await asyncio.wait_for(all_in.wait(), WAIT)
            except TimeoutError:
                raise AssertionError(
                    f"{alarms.stats['stored']} of {COUNT} alarms stored in {WAIT} s "
                    f"(the daemon's queue holds {queue.pending}, sender {queue.sender.stats})"
                ) from None
            history = alarms.store.history(SERIAL, 0, 2 * COUNT)
            assert [a.seq for a in history] == list(range(1, COUNT + 1))  # once each
            assert history[-1].detail == f"input {COUNT}"
            assert alarms.receiver.stats["malformed"] == 0
            await wait_status("the status file with none queued", run_dir, 0)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, WAIT)
            if broker is not None:
                await broker.close()
        assert opened.spy_return_list[0].pending == 0

    asyncio.run(main())
