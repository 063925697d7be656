"""Alarms through the broker in-process on loopback: a real ``PresenceClient`` with an alarm
queue on UDP, the real presence core, ``AlarmService`` with its SQLite history, and the HTTPS
API (history, SSE stream, snapshot). Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from support.aio import run
from support.broker import STEP, Lab, SimulatedDevice, lab, pairing_body

from dvrlink.broker.alarm_store import AlarmStore
from dvrlink.protocol.alarm_link import AlarmsDelivered, AlarmSender, SenderConfig, StreamPosition
from dvrlink.protocol.alarm_wire import AlarmKind, AlarmRecord
from dvrlink.protocol.presence_wire import MessageType

SERIAL = "DL-0015-0001"


async def paired_device(t: Lab, alarms: AlarmSender) -> tuple[SimulatedDevice, dict[str, str]]:
    auth = await t.login("alice")
    device = await t.device(SERIAL, alarms=alarms)
    body, _ = pairing_body(device)
    status, answer = await t.call("POST", f"/v1/devices/{SERIAL}/pairings", auth, json=body)
    assert status == 200, answer
    return device, auth


def raise_on(device: SimulatedDevice, seq: int, **fields: Any) -> None:
    record = AlarmRecord(seq, int(time.time() * 1000), fields.pop("kind", AlarmKind.SIGNAL_LOST), **fields)
    device.client.send_alarm(record, device.loop.time())
    device.flush()


async def delivered_through(device: SimulatedDevice, seq: int) -> None:
    while True:
        event = await device.next_event(AlarmsDelivered)
        if event.through_seq >= seq:
            return


async def sse_lines(resp: aiohttp.ClientResponse, until: str) -> list[str]:
    """Lines of the stream up to one starting with ``until``."""
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), STEP)
        assert raw, f"the stream ended before {until!r}: {lines}"
        line = raw.decode().rstrip("\n")
        lines.append(line)
        if line.startswith(until):
            return lines


def test_alarms_are_stored_listed_followed_and_kept_from_strangers(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            device, auth = await paired_device(t, AlarmSender(SenderConfig(), 77))
            path = f"/v1/devices/{SERIAL}/events"
            async with t.http.get(path + "/stream", headers=auth) as stream:
                assert stream.status == 200
                assert stream.headers["Content-Type"] == "text/event-stream"
                await sse_lines(stream, ": following")
                raise_on(device, 1, channel=2, detail="cable cut")
                lines = await sse_lines(stream, "data: ")
            alarm = json.loads(lines[-1].removeprefix("data: "))
            assert lines[-2:] == ["event: alarm", lines[-1]] and lines[-3] == f"id: {alarm['id']}"
            assert (alarm["kind"], alarm["channel"], alarm["detail"], alarm["seq"]) == (
                "SignalLost",
                2,
                "cable cut",
                1,
            )
            raise_on(
                device, 2, kind=AlarmKind.MOTION_START, channel=0, snapshot=b"\xff\xd8\xff" + bytes(3000)
            )
            await delivered_through(device, 2)
            status, listing = await t.call("GET", path, auth)
            assert status == 200
            assert [(e["seq"], e["kind"]) for e in listing["events"]] == [
                (1, "SignalLost"),
                (2, "MotionStart"),
            ]
            assert listing["events"][1]["snapshot_size"] == 3003
            status, after = await t.call("GET", f"{path}?after={alarm['id']}", auth)
            assert [e["seq"] for e in after["events"]] == [2]
            async with t.http.get(f"{path}/{after['last_id']}/snapshot", headers=auth) as resp:
                assert resp.status == 200 and resp.content_type == "image/jpeg"
                assert await resp.read() == b"\xff\xd8\xff" + bytes(3000)

            # a reconnecting follower gets what it missed first
            async with t.http.get(
                path + "/stream", headers={**auth, "Last-Event-ID": str(alarm["id"])}
            ) as resp:
                lines = await sse_lines(resp, "data: ")
            assert json.loads(lines[-1].removeprefix("data: "))["seq"] == 2

            bob = await t.login("bob")
            for url in (path, path + "/stream", f"{path}/1/snapshot"):
                async with t.http.get(url, headers=bob) as resp:
                    assert resp.status == 403, url
                    assert (await resp.json())["error"] == "not_paired"
            async with t.http.get(path) as resp:
                assert resp.status == 401
            status, bad = await t.call("GET", f"{path}?after=minus-one", auth)
            assert (status, bad["error"]) == (400, "bad_request")

    run(main)


def test_malformed_event_frames_are_dropped_counted_and_the_broker_serves_on(tmp_path: Path) -> None:
    async def main() -> None:
        async with lab(tmp_path) as t:
            device, auth = await paired_device(t, AlarmSender(SenderConfig(), 5))
            service = t.broker.alarms
            assert service is not None
            assert device.transport is not None
            for junk in (
                b"",
                b"\x01garbage",
                b"\x02" + bytes(12) + b"\xff\xff",
                b"\x07nonsense",
                b"\x03" + bytes(10),
            ):
                device.transport.sendto(device.client._seal(MessageType.EVENT, junk))
            device.transport.sendto(bytes([MessageType.EVENT, 1]) + bytes(40))  # not even authentic
            raise_on(device, 1, channel=1)
            await delivered_through(device, 1)
            assert service.malformed == 5
            assert t.broker.server.stats["dropped"] >= 1
            status, listing = await t.call("GET", f"/v1/devices/{SERIAL}/events", auth)
            assert status == 200 and [e["seq"] for e in listing["events"]] == [1]

    run(main)


def test_history_is_bounded_per_device_and_ids_never_repeat(tmp_path: Path) -> None:
    store = AlarmStore(tmp_path / "alarms.sqlite3", max_per_device=10)
    ids = []
    for seq in range(1, 26):
        [stored] = store.store("DL-1", [AlarmRecord(seq, 1000 + seq, 1)], StreamPosition(1, seq), 5.0)
        ids.append(stored.id)
    store.store("DL-2", [AlarmRecord(1, 1, 4)], StreamPosition(3, 1), 5.0)
    assert [a.seq for a in store.latest("DL-1", 100)] == list(range(16, 26))
    assert len(store.latest("DL-2", 100)) == 1
    assert ids == sorted(set(ids))
    assert store.position("DL-1") == StreamPosition(1, 25)
    store.close()
