"""The session server's decisions without a network: offers it turns down at once, answers that
fit an invite, path policies, the ``[sessions]`` config section and the status file's sessions."""

from __future__ import annotations

import asyncio
import base64
import importlib.metadata
import os
import re
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytest_mock import MockerFixture

from dvrlink.daemon.config import SessionsConfig, load_config
from dvrlink.daemon.errors import ConfigError
from dvrlink.daemon.services import ServicesConfig
from dvrlink.daemon.session_server import SessionServer, combine_policies, fit_answer
from dvrlink.daemon.state import Viewer
from dvrlink.daemon.status import DaemonStatus, SessionStatus, format_status
from dvrlink.protocol.port_mapping import MappingProtocol
from dvrlink.protocol.presence_events import InviteReceived
from dvrlink.protocol.presence_wire import INVITE_KIND_PAIR, INVITE_MALFORMED, INVITE_OK, MAX_INVITE_BODY
from dvrlink.protocol.signalling import (
    INVITE_KIND_SESSION,
    AnswerStatus,
    PathPolicy,
    SessionAnswer,
    SessionOffer,
)

KEY_B64 = base64.b64encode(bytes(range(1, 33))).decode()
EXAMPLE = Path(__file__).resolve().parent.parent / "daemon" / "dvrlinkd.example.toml"
ALL, RELAY, DIRECT = PathPolicy.ALL, PathPolicy.RELAY_ONLY, PathPolicy.DIRECT_ONLY


class Replies:
    def __init__(self) -> None:
        self.sent: list[tuple[int, int, bytes, float]] = []

    def reply_invite(self, invite_id: int, status: int, body: bytes, now: float) -> None:
        self.sent.append((invite_id, status, body, now))


class NoViewers:
    def viewers(self) -> list[Viewer]:
        return []

    def remove_viewer(self, public_key: bytes) -> bool:
        return False


def server(replies: Replies, config: SessionsConfig | None = None) -> SessionServer:
    return SessionServer(
        "DL-0001-0002",
        Ed25519PrivateKey.generate(),
        NoViewers(),
        config or SessionsConfig(),
        ServicesConfig(),
        ("127.0.0.1", 3478),
        replies,
        lambda: 7.0,
    )


def offer(policy: PathPolicy = ALL) -> bytes:
    return SessionOffer(
        os.urandom(16), os.urandom(32), policy, "view", "viewerpassword0123456789", (), ()
    ).encode()


def test_the_stricter_policy_wins_and_opposites_refuse() -> None:
    assert [
        combine_policies(v, d) for v, d in [(ALL, ALL), (RELAY, ALL), (ALL, DIRECT), (DIRECT, DIRECT)]
    ] == [
        ALL,
        RELAY,
        DIRECT,
        DIRECT,
    ]
    assert combine_policies(RELAY, DIRECT) is None and combine_policies(DIRECT, RELAY) is None


def test_offers_turned_down_at_once_are_answered_in_the_step() -> None:
    async def main() -> None:
        replies = Replies()
        the_server = server(replies, SessionsConfig(policy=RELAY))
        the_server.handle(InviteReceived(1, INVITE_KIND_SESSION, b"\x00" * 20), 3.0)
        assert replies.sent == [(1, INVITE_MALFORMED, b"", 3.0)]

        the_server.handle(InviteReceived(2, INVITE_KIND_SESSION, offer(DIRECT)), 4.0)
        invite_id, status, body, now = replies.sent[-1]
        answer = SessionAnswer.decode(body)
        assert (invite_id, status, now, answer.status) == (2, INVITE_OK, 4.0, AnswerStatus.REFUSED)
        assert (
            answer.message == "the viewer asked for direct_only paths but the device allows relay_only only"
        )

        await the_server.close()
        the_server.handle(InviteReceived(3, INVITE_KIND_SESSION, offer()), 5.0)
        answer = SessionAnswer.decode(replies.sent[-1][2])
        assert (answer.status, answer.message) == (
            AnswerStatus.BUSY,
            "the device is shutting down; retry in a minute",
        )
        assert the_server.count == 0 and the_server.snapshot() == ()

        with pytest.raises(ValueError, match="not a session offer"):
            the_server.handle(InviteReceived(4, INVITE_KIND_PAIR, b""), 6.0)

    asyncio.run(main())


def test_answers_fit_an_invite_keeping_the_relay_then_the_best() -> None:
    hosts = [f"{i} 1 udp {2130706431 - i} 10.0.{i}.1 {40000 + i} typ host generation 0" for i in range(40)]
    relay = "99 1 udp 16777215 192.0.2.1 50002 typ relay raddr 198.51.100.1 rport 40000"
    answer = fit_answer(AnswerStatus.ACCEPTED, "abcdefgh", "p" * 24, [*hosts, relay, "garbage"])
    assert len(answer.encode()) <= MAX_INVITE_BODY
    assert answer.candidates[0] == relay
    kept = answer.candidates[1:]
    assert 5 < len(kept) < len(hosts) and list(kept) == hosts[: len(kept)]  # highest priority first
    small = fit_answer(AnswerStatus.ACCEPTED, "abcdefgh", "p" * 24, hosts[:2])
    assert small.candidates == tuple(hosts[:2])


def write(tmp_path: Path, sessions: str) -> Path:
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(
        '[device]\nserial = "DL-0001-0002"\n'
        f'[broker]\nhost = "127.0.0.1"\npublic_key = "{KEY_B64}"\n{sessions}'
    )
    return path


def test_sessions_config_section(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).sessions == SessionsConfig()
    config = load_config(
        write(
            tmp_path,
            '[sessions]\nmax_sessions = 2\nhost_addresses = ["127.0.0.1", " ::1 "]\npolicy = "Relay_Only"\n'
            "handshake_timeout_s = 5\n",
        )
    )
    assert config.sessions == SessionsConfig(2, ("127.0.0.1", "::1"), RELAY, 5.0)
    for bad, message in [
        ("max_sessions = 0", "max_sessions = 0: out of range; use a value from 1 to 256"),
        ('host_addresses = "127.0.0.1"', "expected a list of IP addresses"),
        ('host_addresses = ["eth0"]', '"eth0" is not an IP address'),
        ('host_addresses = ["0.0.0.0"]', "0.0.0.0 cannot be a host candidate"),
        ('policy = "relay"', 'policy = "relay": expected one of all, relay_only, direct_only'),
        ("max_session = 3", "unknown key max_session in [sessions]; did you mean max_sessions?"),
        ('port_mapping = "pcp"', "expected a list of port mapping protocols"),
        (
            'port_mapping = ["igd"]',
            '"igd" is not one; expected a list of port mapping protocols out of "pcp"',
        ),
        ("port_mapping_lifetime_s = 60", "out of range; use a value from 120 to 86400"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(write(tmp_path, f"[sessions]\n{bad}\n"))


def test_port_mapping_protocols_are_read_in_order_and_can_be_turned_off(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[sessions]\nport_mapping = ["UPnP", " pcp", "upnp"]\n'))
    assert config.sessions.port_mapping == (MappingProtocol.UPNP, MappingProtocol.PCP)
    assert load_config(write(tmp_path, "[sessions]\nport_mapping = []\n")).sessions.port_mapping == ()
    assert SessionsConfig().port_mapping == tuple(MappingProtocol)


def test_the_example_documents_services_and_sessions(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", KEY_B64)
    uncommented = re.sub(r"^# ([a-z_]+ = .*)$", r"\1", text, flags=re.MULTILINE)
    path = tmp_path / "dvrlinkd.toml"
    path.write_text(uncommented)
    config = load_config(path)
    # Commented lines show the defaults (tests/test_example_configs.py); examples are in the prose.
    assert config.services.forward_allow == ()
    assert config.sessions == SessionsConfig(8, (), ALL, 30.0)
    assert '["127.0.0.1:554", "127.0.0.1:80", "192.168.1.64:8000"]' in text
    assert '["192.168.1.20"]' in text


def test_status_lists_sessions() -> None:
    now = time.time()
    session = SessionStatus("ab" * 16, "viewerfingerprint", "relay", 0.0123, 2_500_000, 900)
    status = DaemonStatus(
        "online", "DL-0001-0002", "127.0.0.1:3478", None, 7, now, now, 0.01, os.getpid(), now, "", (session,)
    )
    assert DaemonStatus.from_json(status.to_json()) == status
    text = format_status(status, now)
    assert "sessions:" in text and text.splitlines()[-1] == (
        "  abababababab  viewer viewerfingerprint  path relay  rtt 12 ms  in 2.5 MB  out 900 B"
    )
    pending = SessionStatus("cd" * 16, None, None, None, 0, 0)
    old = DaemonStatus("online", "DL-0001-0002", "x", None, None, None, None, None, 1, now)
    assert old.sessions == () and "sessions:          none" in format_status(old, now)
    assert "viewer (handshake)  path -  rtt -" in format_status(
        DaemonStatus("online", "DL-0001-0002", "x", None, None, None, None, None, 1, now, "", (pending,)), now
    )
    on_plane = SessionStatus("ef" * 16, "viewerfingerprint", "lan", 0.001, 10, 20, plane="data plane")
    listed = DaemonStatus(
        "online", "DL-0001-0002", "x", None, None, None, None, None, 1, now, "", (on_plane,)
    )
    assert DaemonStatus.from_json(listed.to_json()) == listed
    assert "path lan (data plane)  rtt 1 ms" in format_status(listed, now)
    mapped = SessionStatus(
        "01" * 16, "viewerfingerprint", "direct", 0.001, 10, 20, mapped="pcp 100.63.0.2:40001"
    )
    listed = DaemonStatus("online", "DL-0001-0002", "x", None, None, None, None, None, 1, now, "", (mapped,))
    assert DaemonStatus.from_json(listed.to_json()) == listed
    assert format_status(listed, now).endswith("out 20 B  mapped pcp 100.63.0.2:40001")
    with pytest.raises(ValueError, match="bad session entry"):
        DaemonStatus.from_json(
            b'{"state": "online", "serial": "x", "pid": 1, "sessions": [{"viewer": null}]}'
        )


def test_info_reports_the_installed_version_looked_up_once(mocker: MockerFixture) -> None:
    sessions = server(Replies())
    lookup = mocker.spy(importlib.metadata, "version")
    first, second = sessions.info(), sessions.info()
    assert first.version == importlib.metadata.distribution("dvrlink").version, first
    assert second.version == first.version
    assert lookup.call_count == 1, f"the version was looked up {lookup.call_count} times"
    assert (first.serial, first.sessions) == ("DL-0001-0002", 0), first
