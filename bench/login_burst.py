"""Concurrent wrong logins against a real broker: held to the limit, and the broker's memory.

``python -m bench.login_burst [--quick]``: starts ``dvrlink-broker serve`` on loopback with its
defaults (``login_max_failures = 10``, 64 API connections per client address), warms the password
pool up with 4 wrong logins, then sends bursts of 1,000 concurrent wrong logins for one account,
each on its own TLS connection, and prints what came back and the broker's resident memory
(VmRSS) after each burst. Target (issue 10): the burst is held to the limit (at most 10 × 401,
the rest 429 or refused at accept) and RSS grows by at most 20 MB.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench.common import parse_args, run_main, verdict
from dvrlink.broker.tls import client_context
from hil.loopback import Broker, add_user, start_broker, stop_all

PASSWORD = "s3cret-pass"
BOUND_S = 60.0
LIMIT = 10
TARGET_MB = 20.0


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


async def wrong_logins(broker: Broker, username: str, count: int) -> collections.Counter[str]:
    """``count`` concurrent logins with a wrong password, each on its own connection."""
    connector = aiohttp.TCPConnector(ssl=client_context(broker.cert), limit=0, force_close=True)
    outcomes: collections.Counter[str] = collections.Counter()
    async with aiohttp.ClientSession(
        f"https://localhost:{broker.https_port}",
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=BOUND_S),
    ) as http:

        async def one() -> None:
            try:
                body = {"username": username, "password": "wrong-password"}
                async with http.post("/v1/tokens", json=body) as resp:
                    outcomes[str(resp.status)] += 1
            except (aiohttp.ClientError, OSError) as exc:
                outcomes[f"refused ({type(exc).__name__})"] += 1

        await asyncio.gather(*(one() for _ in range(count)))
    return outcomes


def run(quick: bool) -> None:
    bursts, count = (1, 200) if quick else (4, 1000)
    with tempfile.TemporaryDirectory(prefix="bench-login-") as tmp:
        state = Path(tmp) / "broker"
        state.mkdir()
        add_user(state, "alice", PASSWORD)
        broker = start_broker(state)
        try:
            pid = broker.proc.pid
            started = rss_kib(pid)
            asyncio.run(wrong_logins(broker, "warm-up", 4))
            warm = rss_kib(pid)
            print(f"broker RSS: {started / 1024:.1f} MiB at start, {warm / 1024:.1f} MiB after 4 logins")
            held = True
            for index in range(bursts):
                outcomes = asyncio.run(wrong_logins(broker, f"alice{index}", count))
                after = rss_kib(pid)
                held = held and outcomes["401"] <= LIMIT and outcomes["200"] == 0
                seen = dict(sorted(outcomes.items()))
                print(
                    f"burst {index + 1}: {count} concurrent wrong logins -> {seen}; "
                    f"RSS {after / 1024:.1f} MiB ({(after - started) / 1024:+.1f} MiB since start)"
                )
            grown_mb = (after - started) * 1024 / 1e6
            print(f"held to the limit of {LIMIT} wrong passwords per account: {verdict(held)}")
            print(
                f"RSS growth over {bursts} burst(s): {grown_mb:.1f} MB "
                f"[target <= {TARGET_MB:.0f} MB: {verdict(grown_mb <= TARGET_MB)}]"
            )
        finally:
            stop_all([broker])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args("concurrent wrong logins against a real broker: the limit and its memory", argv)
    return run_main(lambda: run(args.quick))


if __name__ == "__main__":
    sys.exit(main())
