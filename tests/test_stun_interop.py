"""Interop: standard STUN clients against a real broker on loopback (127.0.0.1 primary, 127.0.0.2
alternate): ``stun`` (Debian stun-client, classic RFC 3489) and coturn's ``turnutils_stunclient``
(RFC 5780 with RESPONSE-PORT and PADDING). Also, over real sockets: PADDING on the presence port,
RESPONSE-PORT, the reply sizes, and the per-source rate limit."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aioice import stun

from dvrlink.broker.app import RunningBroker, start_broker
from dvrlink.broker.config import config_from_mapping

STUN_CLIENT = shutil.which("stun")
TURNUTILS_STUNCLIENT = shutil.which("turnutils_stunclient")
CLIENT_TIMEOUT_S = 30.0

Address = tuple[str, int]


def _config(tmp_path: Path, alternate: bool, **extra: object) -> dict[str, object]:
    values: dict[str, object] = {
        "state_dir": str(tmp_path / "state"),
        "udp_host": "127.0.0.1",
        "udp_port": 0,
        "https_host": "127.0.0.1",
        "https_port": 0,
        "turn_enabled": False,
        **extra,
    }
    if alternate:
        values.update(stun_alternate_host="127.0.0.2", stun_alternate_port=0)
    return values


@asynccontextmanager
async def _broker(tmp_path: Path, alternate: bool, **extra: object) -> AsyncIterator[RunningBroker]:
    broker = await start_broker(config_from_mapping(_config(tmp_path, alternate, **extra), "test"))
    try:
        yield broker
    finally:
        await broker.close()


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


async def _client(*argv: str) -> tuple[int, str]:
    """Run a client process to its end (bounded); its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        raise AssertionError(
            f"{argv[0]} did not finish in {CLIENT_TIMEOUT_S:g} s; it printed:\n{text}"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def _exchange(
    data: bytes, destination: Address, listen: socket.socket | None = None, timeout: float = 2.0
) -> tuple[bytes, Address] | None:
    """Send ``data`` (from ``listen`` if given) and wait for one answer on ``listen``; None if
    none comes within ``timeout``."""
    loop = asyncio.get_running_loop()
    sock = listen or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if listen is None:
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
        sock.sendto(data, destination)
        try:
            reply, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), timeout)
        except TimeoutError:
            return None
        return reply, (source[0], source[1])
    finally:
        if listen is None:
            sock.close()


def _binding(*attributes: tuple[int, bytes]) -> bytes:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attributes)
    return bytes(message)[:2] + struct.pack("!H", len(body)) + bytes(message)[4:20] + body


@pytest.mark.skipif(STUN_CLIENT is None, reason="needs stun (Debian package stun-client)")
@pytest.mark.parametrize("alternate", [False, True], ids=["plain", "rfc5780"])
def test_the_classic_stun_client_finds_an_open_internet(tmp_path: Path, alternate: bool) -> None:
    async def main() -> None:
        async with _broker(tmp_path, alternate) as broker:
            assert STUN_CLIENT is not None
            port = broker.link.local_address[1]
            code, out = await _client(STUN_CLIENT, f"127.0.0.1:{port}", "-v")
            assert "Primary: Open" in out, out[-3000:]
            assert code == 1, out[-3000:]  # stun-client's exit code is its verdict; 1 = open
            assert broker.server.stats["stun"] >= 3, broker.server.stats

    _run(main)


@pytest.mark.skipif(TURNUTILS_STUNCLIENT is None, reason="needs turnutils_stunclient (Debian coturn)")
@pytest.mark.parametrize("alternate", [False, True], ids=["plain", "rfc5780"])
def test_turnutils_stunclient_gets_its_answer(tmp_path: Path, alternate: bool) -> None:
    async def main() -> None:
        async with _broker(tmp_path, alternate) as broker:
            assert TURNUTILS_STUNCLIENT is not None
            port = broker.link.local_address[1]
            code, out = await _client(TURNUTILS_STUNCLIENT, "-p", str(port), "127.0.0.1")
            assert code == 0, out
            assert "UDP reflexive addr: 127.0.0.1:" in out, out

    _run(main)


@pytest.mark.skipif(TURNUTILS_STUNCLIENT is None, reason="needs turnutils_stunclient (Debian coturn)")
def test_turnutils_stunclient_rfc5780_tests_with_response_port_and_padding(tmp_path: Path) -> None:
    # -f: RFC 5780 processing: CHANGE-REQUEST with RESPONSE-PORT, then one with 1,500 B of PADDING.
    async def main() -> None:
        async with _broker(tmp_path, True) as broker:
            assert TURNUTILS_STUNCLIENT is not None
            port = broker.link.local_address[1]
            code, out = await _client(TURNUTILS_STUNCLIENT, "-f", "-p", str(port), "127.0.0.1")
            assert code == 0, out
            assert "RFC 5780 response 2" in out, out
            assert "Response origin: : 127.0.0.2:" in out and "Other addr: : 127.0.0.2:" in out, out

    _run(main)


def test_a_padded_request_on_the_presence_port_is_answered(tmp_path: Path) -> None:
    async def main() -> None:
        async with _broker(tmp_path, False) as broker:
            data = _binding((0x0003, bytes(4)), (0x0026, bytes(1500)))
            assert len(data) == 1532
            answer = await _exchange(data, broker.link.local_address)
            assert answer is not None, "no answer to a Binding with PADDING"
            assert len(answer[0]) == 32, stun.parse_message(answer[0])

    _run(main)


def test_response_port_is_honoured_and_plain_replies_are_small(tmp_path: Path) -> None:
    async def main() -> None:
        async with _broker(tmp_path, True) as broker:
            primary = broker.link.local_address
            answer = await _exchange(_binding(), primary)
            assert answer is not None
            assert len(answer[0]) == 32, (
                f"a 20 B Binding got {len(answer[0])} B: {stun.parse_message(answer[0])}"
            )
            # An RFC 5780 client gets the RFC 5780 attributes (56 B for 28 B).
            answer = await _exchange(_binding((0x0003, bytes(4))), primary)
            assert answer is not None and len(answer[0]) == 56
            other = stun.parse_message(answer[0]).attributes["OTHER-ADDRESS"]
            # RESPONSE-PORT: the answer goes to another socket of ours, from the changed address.
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
            ):
                for sock in (sender, receiver):
                    sock.setblocking(False)
                    sock.bind(("127.0.0.1", 0))
                response_port = receiver.getsockname()[1]
                request = _binding(
                    (0x0003, struct.pack("!I", 6)), (0x0027, struct.pack("!HH", response_port, 0))
                )
                sender.sendto(request, primary)
                loop = asyncio.get_running_loop()
                reply, source = await asyncio.wait_for(loop.sock_recvfrom(receiver, 4096), 5.0)
                assert (source[0], source[1]) == tuple(other), source
                mapped = stun.parse_message(reply).attributes["XOR-MAPPED-ADDRESS"]
                assert mapped == sender.getsockname(), mapped

    _run(main)


def test_one_source_is_held_to_its_stun_rate(tmp_path: Path) -> None:
    async def main() -> None:
        async with _broker(tmp_path, False, stun_rate_per_s=1, stun_rate_burst=20) as broker:
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.bind(("127.0.0.1", 0))
                for _ in range(200):
                    sock.sendto(_binding(), broker.link.local_address)
                answers = 0
                while True:  # until the socket stays quiet for 1 s (at most 200 answers)
                    try:
                        await asyncio.wait_for(loop.sock_recv(sock, 4096), 1.0)
                    except TimeoutError:
                        break
                    answers += 1
            # 20 at once, and at most a couple more for the time the burst took to arrive.
            assert 20 <= answers <= 23, f"{answers} of 200 Bindings from one source were answered"

    _run(main)
