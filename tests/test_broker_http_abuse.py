"""The viewer API of a real ``dvrlink-broker serve`` process under abuse from loopback: a burst
of concurrent wrong logins, request bodies that never come, clients that drop mid-request, and
more connections from one address than it may hold. Every burst is bounded in count, every wait
in time; the broker's memory is read from /proc."""

from __future__ import annotations

import asyncio
import collections
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from dvrlink.broker.state import BrokerInfo, read_info
from dvrlink.broker.tls import client_context

BROKER = Path(sys.executable).with_name("dvrlink-broker")
PASSWORD = "s3cret-pass"
BOUND_S = 60.0  # bound on any wait in these tests


@dataclass
class BrokerProcess:
    proc: subprocess.Popen[str]
    info: BrokerInfo
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS in /proc/{self.proc.pid}/status")

    def wait_for_lines(self, text: str, count: int, timeout: float = BOUND_S) -> list[str]:
        """The log lines holding ``text``, once there are ``count`` of them (or at the bound)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [line for line in self.lines if text in line]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found
                self.changed.wait(left)

    def log(self) -> str:
        with self.changed:
            return "".join(self.lines)


@contextmanager
def running_broker(tmp_path: Path, extra: str = "") -> Iterator[BrokerProcess]:
    state = tmp_path / "state"
    done = subprocess.run(
        [str(BROKER), "user", "add", "alice", "--password-stdin", "--state-dir", str(state)],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=BOUND_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config = tmp_path / "broker.toml"
    config.write_text(
        f'state_dir = "{state}"\nudp_host = "127.0.0.1"\nudp_port = 0\nhttps_host = "127.0.0.1"\n'
        "https_port = 0\npresence_tcp_port = 0\nturn_udp_port = 0\nturn_tcp_port = 0\n"
        "turn_relay_port_min = 0\nturn_relay_port_max = 0\nlogin_max_failures = 10\n" + extra
    )
    proc = subprocess.Popen(
        [str(BROKER), "serve", "--config", str(config)], stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines: list[str] = []
    ready = threading.Event()
    changed = threading.Condition()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with changed:
                lines.append(line)
                changed.notify_all()
            if "dvrlink-broker ready" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(BOUND_S) and proc.poll() is None, "broker did not start:\n" + "".join(lines)
        yield BrokerProcess(proc, read_info(state), lines, changed)
    finally:
        proc.terminate()
        proc.wait(BOUND_S)
        reader.join(BOUND_S)


async def _wrong_logins(info: BrokerInfo, username: str, count: int) -> collections.Counter[str]:
    """``count`` concurrent logins with a wrong password, each on its own connection."""
    connector = aiohttp.TCPConnector(ssl=client_context(info.cert), limit=0, force_close=True)
    outcomes: collections.Counter[str] = collections.Counter()
    timeout = aiohttp.ClientTimeout(total=BOUND_S)
    async with aiohttp.ClientSession(
        f"https://localhost:{info.https_port}", connector=connector, timeout=timeout
    ) as http:

        async def one() -> None:
            try:
                body = {"username": username, "password": "wrong-password"}
                async with http.post("/v1/tokens", json=body) as resp:
                    outcomes[str(resp.status)] += 1
            except (aiohttp.ClientError, OSError) as exc:
                outcomes[type(exc).__name__] += 1

        await asyncio.gather(*(one() for _ in range(count)))
    return outcomes


@pytest.mark.parametrize("cap", [64, 2000], ids=["default-connection-cap", "every-connection-admitted"])
def test_a_burst_of_concurrent_wrong_logins_is_held_to_the_limit_and_memory_stays_flat(
    tmp_path: Path, cap: int
) -> None:
    with running_broker(tmp_path, f"http_max_connections_per_address = {cap}\n") as broker:
        started = broker.rss_kib()
        warm = asyncio.run(_wrong_logins(broker.info, "warm-up", 4))  # the hashing pool's first use
        assert warm["401"] == 4, warm
        before = broker.rss_kib()
        burst = asyncio.run(_wrong_logins(broker.info, "alice", 1000))
        after = broker.rss_kib()
        print(
            f"broker RSS: {started / 1024:.1f} MiB at start, {before / 1024:.1f} MiB after the warm-up, "
            f"{after / 1024:.1f} MiB after 1000 concurrent wrong logins with a cap of {cap} connections "
            f"({(after - before) / 1024:+.1f} MiB); "
            f"outcomes {dict(burst)}"
        )
        assert burst["401"] <= 10, f"the limit is 10 wrong passwords, the burst got {dict(burst)}"
        assert burst["200"] == 0 and sum(burst.values()) == 1000, burst
        assert burst["429"] > 0, burst
        # With the default cap the target holds (about +7 MiB measured). With every connection
        # admitted, the growth is native memory of the TLS connections open at once (no Python
        # objects: tracemalloc shows none kept), and how many are open at once depends on how busy
        # the machine is (+40 MiB on a quiet one, +100 MiB seen while two cores were building a
        # guest image): that variant checks the limit only, and prints the figure.
        if cap == 64:
            assert after - started <= 20 * 1024, f"RSS grew from {started} KiB to {after} KiB"
        assert broker.proc.poll() is None
        # the real password is refused too while the limit holds
        again = asyncio.run(_wrong_logins(broker.info, "alice", 1))
        assert again["429"] == 1, again


# -- slow bodies, dropped clients, and connections per address -----------------------------------


def _tls_connection(info: BrokerInfo) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", info.https_port), timeout=BOUND_S)
    return client_context(info.cert).wrap_socket(raw, server_hostname="localhost")


HEADERS_ONLY = (
    b"POST /v1/tokens HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n"
)


def _read_until_closed(conn: ssl.SSLSocket) -> bytes:
    """What the server sends until it closes (bounded by the socket timeout)."""
    data = b""
    try:
        while chunk := conn.recv(4096):
            data += chunk
    except (ssl.SSLError, ConnectionResetError):
        pass
    return data


@pytest.mark.slow  # waits out the broker's 10 s body timeout
def test_slow_bodies_time_out_and_dropped_clients_log_one_quiet_line(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker:  # default http_body_timeout_s = 10
        dropped = [_tls_connection(broker.info) for _ in range(10)]
        held = [_tls_connection(broker.info) for _ in range(10)]
        for conn in dropped + held:
            conn.sendall(HEADERS_ONLY)
        # the dropping clients go away before their body timeout
        for conn in dropped:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()
        quiet = broker.wait_for_lines("closed the connection before its request body", 10)
        # the waiting ones get a 408 and are closed
        answers = [_read_until_closed(conn) for conn in held]
        for conn in held:
            conn.close()
        statuses = collections.Counter(a.split(b"\r\n", 1)[0] for a in answers)
        assert statuses == {b"HTTP/1.1 408 Request Timeout": 10}, statuses
        log = broker.log()
        assert len(quiet) == 10, log
        assert "Traceback" not in log and " ERROR " not in log, log
        assert '" 500 ' not in log and log.count('" 499 ') == 10, log  # the access log's record


def _wait_closed_by_server(conns: list[ssl.SSLSocket], count: int, timeout: float) -> set[int]:
    """Indexes of the connections the server closed, once ``count`` are (or at the bound)."""
    closed: set[int] = set()
    for conn in conns:
        conn.setblocking(False)
    deadline = time.monotonic() + timeout
    while len(closed) < count and (left := deadline - time.monotonic()) > 0:
        open_ones = {conn.fileno(): i for i, conn in enumerate(conns) if i not in closed}
        ready, _, _ = select.select(list(open_ones), [], [], left)
        for fd in ready:
            try:
                data = conns[open_ones[fd]].recv(1)
            except ssl.SSLWantReadError:
                continue
            except (ssl.SSLError, OSError):
                data = b""
            if data == b"":
                closed.add(open_ones[fd])
    for conn in conns:
        conn.settimeout(BOUND_S)
    return closed


def _tls_connection_or_refusal(info: BrokerInfo) -> ssl.SSLSocket | None:
    try:
        return _tls_connection(info)
    except (ssl.SSLError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return None  # closed by the broker before or during the TLS handshake


def test_connections_per_address_are_capped(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker:  # default http_max_connections_per_address = 64
        made = [_tls_connection_or_refusal(broker.info) for _ in range(70)]
        conns = [conn for conn in made if conn is not None]
        try:
            closed = _wait_closed_by_server(conns, 6 - made.count(None), BOUND_S / 2)
            refused = made.count(None) + len(closed)
            assert refused == 6, f"{refused} of 70 connections were closed; the cap is 64"
            assert broker.wait_for_lines("connections from 127.0.0.1", 1), broker.log()
            for i, conn in enumerate(conns):  # the others are served
                if i not in closed:
                    conn.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answers = [_read_until_closed(conn) for i, conn in enumerate(conns) if i not in closed]
            assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
        finally:
            for conn in conns:
                conn.close()
        # once they are gone, the address may connect again (the broker may see the new connection
        # before the closes: a few tries)
        answer = b""
        for _ in range(20):
            again = _tls_connection(broker.info)
            again.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = _read_until_closed(again)
            again.close()
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 200"), f"no answer after the cap freed up: {answer!r}"
