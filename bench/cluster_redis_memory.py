"""Issue 16: Redis memory per online device for a broker cluster's presence location.

A ``redis-server`` (no persistence) gets one ``p:<serial>`` key per device, written the way a
node writes them (``PresenceDirectory``: ``SET p:<serial> <node id> PX <2 intervals>`` in one
pipeline), for 100,000 devices with a realistic node id (``broker-a.example.net:3478``). The
figure is the growth of ``INFO memory`` ``used_memory`` divided by the device count, and
``MEMORY USAGE`` of one key for comparison. Target: at most 200 B per online device.

    python -m bench.cluster_redis_memory [--quick]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

from bench.common import parse_args, run_main, verdict
from dvrlink.broker.cluster.directory import PresenceDirectory
from dvrlink.broker.cluster.node import presence_key
from hil.redis_server import RedisServer

NODE_ID = "broker-a.example.net:3478"
TARGET_BYTES = 200
DEVICES = 100_000
QUICK_DEVICES = 10_000
BATCH = 5_000
"""Keys per pipeline (a node's ticks hold far fewer; this only speeds up the fill)."""


async def fill(url: str, count: int) -> tuple[float, int]:
    """(bytes per device by used_memory, MEMORY USAGE of one key) after ``count`` keys."""
    client = Redis.from_url(url)
    try:
        before = int((await client.info("memory"))["used_memory"])
        directory = PresenceDirectory(client, NODE_ID, lambda serial: 25.0, time.monotonic)
        for start in range(0, count, BATCH):
            for n in range(start, min(start + BATCH, count)):
                directory.book.online(f"DL-{n // 10_000:04d}-{n % 10_000:04d}")
            await directory.flush()
        stored = int(await client.dbsize())
        if stored != count:
            raise RuntimeError(f"{stored} keys stored, {count} written")
        after = int((await client.info("memory"))["used_memory"])
        sample = int(await client.memory_usage(presence_key("DL-0000-0042")) or 0)
        return (after - before) / count, sample
    finally:
        await client.aclose()


def body(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="dvrlink-redis-bench-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            per_device, sample = asyncio.run(fill(redis.url, count))
        finally:
            redis.stop()
    print(f"Redis presence location, {count} online devices, node id {NODE_ID!r}:")
    print(f"  used_memory growth per device: {per_device:.0f} B (target <= {TARGET_BYTES} B) "
          f"{verdict(per_device <= TARGET_BYTES)}")  # fmt: skip
    print(f"  MEMORY USAGE of one key: {sample} B")
    mib = per_device / 2**20
    print(f"  so 100k devices: {mib * 100_000:.0f} MiB, 1M devices: {mib * 1_000_000:.0f} MiB")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("Redis memory per online device (presence location)", argv)
    return run_main(lambda: body(QUICK_DEVICES if args.quick else DEVICES))


if __name__ == "__main__":
    raise SystemExit(main())
