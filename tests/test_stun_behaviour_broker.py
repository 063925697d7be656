"""The broker's RFC 5780 sockets on loopback (127.0.0.1 primary, 127.0.0.2 alternate), and the
configuration keys that turn them on."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aioice import stun

from dvrlink.broker.app import start_broker
from dvrlink.broker.config import ConfigError, config_from_mapping
from dvrlink.protocol.stun_behaviour import CHANGE_IP, CHANGE_PORT, Origin
from dvrlink.session.direct import binding_request

Address = tuple[str, int]


def _request(change: int = 0) -> tuple[bytes, bytes]:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["CHANGE-REQUEST"] = change  # 0 too: an RFC 5780 client says so
    message.add_fingerprint()
    return bytes(message), message.transaction_id


async def _ask(destination: Address, change: int = 0) -> tuple[stun.Message, Address]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    try:
        data, transaction_id = _request(change)
        for _ in range(5):  # bounded: 5 tries of 1 s
            sock.sendto(data, destination)
            try:
                reply, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 1.0)
            except TimeoutError:
                continue
            message = stun.parse_message(reply)
            assert message.transaction_id == transaction_id
            return message, (source[0], source[1])
        raise AssertionError(f"no STUN answer from {destination} (change {change})")
    finally:
        sock.close()


def _config(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {
        "state_dir": str(tmp_path / "state"),
        "udp_host": "127.0.0.1",
        "udp_port": 0,
        "https_host": "127.0.0.1",
        "https_port": 0,
        "turn_enabled": False,
        **extra,
    }


def test_the_broker_answers_rfc5780_from_all_four_addresses(tmp_path: Path) -> None:
    async def main() -> None:
        config = config_from_mapping(
            _config(tmp_path, stun_alternate_host="127.0.0.2", stun_alternate_port=0), "test"
        )
        broker = await start_broker(config)
        try:
            primary = broker.link.local_address
            response, source = await _ask(primary)
            assert source == primary
            assert response.attributes["RESPONSE-ORIGIN"] == primary
            other = response.attributes["OTHER-ADDRESS"]
            assert other[0] == "127.0.0.2" and other[1] not in (0, primary[1])
            addresses = {
                Origin.PRIMARY: primary,
                Origin.ALTERNATE_PORT: ("127.0.0.1", other[1]),
                Origin.ALTERNATE_IP: ("127.0.0.2", primary[1]),
                Origin.ALTERNATE_BOTH: tuple(other),
            }
            # Every (receiving address, CHANGE-REQUEST) pair answers from the right socket,
            # including replies from the presence socket to requests on an alternate one.
            for received_on, where in addresses.items():
                for change in (0, CHANGE_PORT, CHANGE_IP, CHANGE_IP | CHANGE_PORT):
                    response, source = await _ask(where, change)
                    expected = received_on.changed(bool(change & CHANGE_IP), bool(change & CHANGE_PORT))
                    assert source == addresses[expected], (received_on, change)
                    assert response.attributes["RESPONSE-ORIGIN"] == addresses[expected]
                    assert response.attributes["XOR-MAPPED-ADDRESS"][0] == "127.0.0.1"
            assert broker.server.stats["stun"] >= 5
        finally:
            await broker.close()

    asyncio.run(main())


def test_without_an_alternate_stun_stays_plain(tmp_path: Path) -> None:
    async def main() -> None:
        broker = await start_broker(config_from_mapping(_config(tmp_path), "test"))
        try:
            response, source = await _ask(broker.link.local_address, CHANGE_IP | CHANGE_PORT)
            # No alternate address: a change cannot be honoured, and the broker says so (420).
            assert source == broker.link.local_address
            assert response.message_class == stun.Class.ERROR and response.error_code == 420, response
            response, source = await _ask(broker.link.local_address, 0)
            assert "OTHER-ADDRESS" not in response.attributes
            assert "XOR-MAPPED-ADDRESS" in response.attributes
        finally:
            await broker.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"udp_host": "0.0.0.0", "stun_alternate_host": "127.0.0.2"}, "not a wildcard"),
        ({"stun_alternate_host": "127.0.0.1"}, "two\ndifferent|different specific"),
        ({"stun_alternate_host": "::1"}, "one IP family"),
        ({"stun_alternate_host": "127.0.0.2", "stun_alternate_port": 3478, "udp_port": 3478}, "udp_port"),
        (
            {"stun_alternate_host": "127.0.0.2", "stun_alternate_port": 3479, "turn_enabled": True},
            "turn_udp_port",
        ),
        ({"stun_alternate_host": "somewhere"}, "not an IP address"),
        ({"stun_alternate_port": 70000}, "out of range"),
    ],
)
def test_bad_alternate_settings_say_what_to_fix(tmp_path: Path, extra: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_mapping(_config(tmp_path, **extra), "test")


def test_alternate_defaults(tmp_path: Path) -> None:
    config = config_from_mapping(_config(tmp_path), "test")
    assert (config.stun_alternate_host, config.stun_alternate_port) == (None, 3480)
    config = config_from_mapping(_config(tmp_path, stun_alternate_host="127.0.0.2"), "test")
    assert config.stun_alternate_host == "127.0.0.2"


def test_the_daemons_gathering_request_still_gets_other_address(tmp_path: Path) -> None:
    # Port prediction (session/direct.py) needs the broker's OTHER-ADDRESS; the broker sends
    # it only to clients that signal RFC 5780, which the daemon's gathering request does.
    async def main() -> None:
        config = config_from_mapping(
            _config(tmp_path, stun_alternate_host="127.0.0.2", stun_alternate_port=0), "test"
        )
        broker = await start_broker(config)
        try:
            primary = broker.link.local_address
            for rfc5780, expect_other in ((True, True), (False, False)):
                request = binding_request(rfc5780=rfc5780)
                answer = await _send(bytes(request), primary)
                response = stun.parse_message(answer)
                assert response.transaction_id == request.transaction_id
                assert ("OTHER-ADDRESS" in response.attributes) is expect_other, (rfc5780, response)
        finally:
            await broker.close()

    asyncio.run(main())


async def _send(data: bytes, destination: Address) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        for _ in range(5):  # bounded: 5 tries of 1 s
            sock.sendto(data, destination)
            try:
                return await asyncio.wait_for(loop.sock_recv(sock, 2048), 1.0)
            except TimeoutError:
                continue
    raise AssertionError(f"no STUN answer from {destination}")
