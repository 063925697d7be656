"""Several broker nodes, without processes: the rotation core with made-up time, the node
entries of ``[broker] hosts``, the remembered node, the status lines, and the presence core's
silence bound (two cores on a fake link with made-up time)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support.daemon_config import KEY_B64, load_text, run_dvrlinkd, write
from support.presence import Lab

from dvrlink.daemon.app import resolve_nodes, system_lookup
from dvrlink.daemon.broker_nodes import NODE_FILE, BrokerNode, NodeList, NodeMemory, expand, parse_node
from dvrlink.daemon.console import SettingChanges
from dvrlink.daemon.console_settings import SettingsRefused, save_settings
from dvrlink.daemon.errors import ConfigError
from dvrlink.daemon.status import DaemonStatus, format_status
from dvrlink.protocol.presence_client import ClientConfig, ClientState, PresenceClient
from dvrlink.protocol.presence_events import ConnectionLost, KeepaliveAcknowledged
from dvrlink.protocol.presence_wire import MessageType

A = BrokerNode("node-a.example", 3478)
B = BrokerNode("node-b.example", 3478)
C = BrokerNode("192.0.2.3", 4000)

FLEET = f"""
[device]
serial = "DL-0001-0002"
[broker]
hosts = ["node-a.example", "node-b.example:3479", "[2001:db8::1]:3480", "192.0.2.3"]
port = 3500
public_key = "{KEY_B64}"
"""


# -- the rotation ------------------------------------------------------------------------------


def test_moves_to_the_next_node_and_wraps() -> None:
    nodes = NodeList([A, B, C])
    assert nodes.current == A
    assert nodes.move_on("fell silent", 10.0) == B
    assert nodes.move_on("fell silent", 20.0) == C
    assert nodes.move_on("fell silent", 30.0) == A  # wraps
    assert nodes.moves == 3
    assert [row["problem"] for row in nodes.status(30.0)] == ["fell silent"] * 3


def test_one_node_stays_and_records_the_problem() -> None:
    nodes = NodeList([A])
    assert nodes.move_on("did not answer HELLO", 5.0) == A
    assert nodes.moves == 0
    assert nodes.status(5.0)[0]["problem"] == "did not answer HELLO"


def test_a_refusing_node_is_passed_over_until_its_hold_ends() -> None:
    nodes = NodeList([A, B, C], refused_hold_s=600.0)
    assert nodes.move_on("is outside the fleet", 0.0, refused=True) == B  # A held until 600
    assert nodes.move_on("fell silent", 10.0) == C
    assert nodes.move_on("fell silent", 20.0) == B, "A is still held: the round skips it"
    assert nodes.status(20.0)[0]["held_s"] == 580.0
    assert nodes.move_on("fell silent", 30.0) == C
    assert nodes.move_on("fell silent", 600.0) == A, "the hold is over: A is tried again"


def test_when_every_node_is_held_the_one_whose_hold_ends_first_is_used() -> None:
    nodes = NodeList([A, B], refused_hold_s=100.0)
    assert nodes.move_on("refused", 0.0, refused=True) == B
    assert nodes.move_on("refused", 50.0, refused=True) == A  # A's hold ends at 100, B's at 150
    assert nodes.move_on("refused", 60.0, refused=True) == B  # now A until 160, B until 150


def test_an_answer_clears_the_problem_and_reports_a_new_last_node() -> None:
    nodes = NodeList([A, B], start=B)
    assert nodes.current == B
    assert nodes.answered(1.0) is False, "B answered last before the restart: nothing to remember"
    nodes.move_on("fell silent", 2.0)
    assert nodes.answered(3.0) is True
    assert nodes.answered(4.0) is False
    rows = nodes.status(4.0)
    assert rows[0] == {"node": A.label, "in_use": True, "last_answer": 4.0, "problem": "", "held_s": 0.0}
    assert rows[1]["problem"] == "fell silent" and rows[1]["last_answer"] == 1.0


def test_a_start_node_not_in_the_list_is_ignored() -> None:
    nodes = NodeList([A, B], start=BrokerNode("gone.example", 1))
    assert nodes.current == A
    assert nodes.answered(0.0) is True


def test_names_resolved_again_keep_the_node_in_use() -> None:
    a1, a2 = BrokerNode(A.host, A.port, "192.0.2.1"), BrokerNode(A.host, A.port, "192.0.2.2")
    nodes = NodeList([a1, a2, B])
    nodes.move_on("fell silent", 1.0)
    assert nodes.current == a2
    nodes.replace_nodes([a2, B])  # a1's record went
    assert nodes.current == a2
    nodes.replace_nodes([BrokerNode(A.host, A.port, "192.0.2.9"), B])
    assert nodes.current.address == "192.0.2.9", "same host and port: that node"
    with pytest.raises(ValueError, match="at least one node"):
        nodes.replace_nodes([])
    with pytest.raises(ValueError, match="at least one node"):
        NodeList([])


# -- entries and names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "node"),
    [
        ("node1.example.net", BrokerNode("node1.example.net", 3478)),
        (" node1.example.net:4000 ", BrokerNode("node1.example.net", 4000)),
        ("192.0.2.10:3479", BrokerNode("192.0.2.10", 3479)),
        ("2001:db8::1", BrokerNode("2001:db8::1", 3478)),
        ("[2001:db8::1]:3480", BrokerNode("2001:db8::1", 3480)),
        ("[2001:db8::1]", BrokerNode("2001:db8::1", 3478)),
    ],
)
def test_node_entries(entry: str, node: BrokerNode) -> None:
    assert parse_node(entry, 3478) == node


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("udp://node1.example.net", "no scheme, path or spaces"),
        ("node1.example.net:0", "port '0' is not a number from 1 to 65535"),
        ("node1.example.net:http", "port 'http' is not a number"),
        ("[node1]:3478", "is not an IPv6 address"),
        ("[2001:db8::1]3478", "must be followed by :port"),
        ("2001:db8::zz:3478", "put an IPv6 address in brackets"),
        (":3478", "has no host name"),
        ("", "is not a host or host:port"),
    ],
)
def test_bad_node_entries_say_what_to_write(entry: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as err:
        parse_node(entry, 3478)
    assert '"node1.example.net:3478"' in str(err.value)  # the example of what to write


def test_a_name_with_several_addresses_is_several_nodes() -> None:
    assert expand(A, ["192.0.2.1", "2001:db8::5", "192.0.2.1"]) == [
        BrokerNode(A.host, A.port, "192.0.2.1"),
        BrokerNode(A.host, A.port, "2001:db8::5"),
    ]
    assert expand(A, []) == [A], "not resolved now: the link resolves it later"
    assert expand(A, ["192.0.2.1"]) == [A], "one address: the link resolves the name (and follows it)"
    assert expand(C, ["192.0.2.3"]) == [C], "an IP literal is itself"
    assert BrokerNode(A.host, A.port, "192.0.2.1").label == "node-a.example:3478 (192.0.2.1)"
    assert BrokerNode("2001:db8::1", 3478).label == "[2001:db8::1]:3478"


def test_the_last_node_is_remembered_atomically(tmp_path: Path) -> None:
    memory = NodeMemory(tmp_path)
    assert memory.load() is None
    node = BrokerNode(A.host, A.port, "192.0.2.1")
    memory.save(node)
    assert memory.load() == node
    assert json.loads((tmp_path / NODE_FILE).read_text()) == {
        "host": A.host,
        "port": 3478,
        "address": "192.0.2.1",
    }
    assert [p.name for p in tmp_path.iterdir()] == [NODE_FILE], "no temporary file left"
    (tmp_path / NODE_FILE).write_text('{"host": 5}')
    assert memory.load() is None, "a file that is not ours is ignored"


# -- the config --------------------------------------------------------------------------------


def test_config_lists_the_nodes(tmp_path: Path) -> None:
    config = load_text(tmp_path, FLEET)
    assert config.broker.nodes == (
        BrokerNode("node-a.example", 3500),
        BrokerNode("node-b.example", 3479),
        BrokerNode("2001:db8::1", 3480),
        BrokerNode("192.0.2.3", 3500),
    )
    assert (config.broker.host, config.broker.port) == ("node-a.example", 3500)
    assert config.broker.tcp_address_of(config.broker.nodes[1]) == ("node-b.example", 443)
    with pytest.raises(AttributeError):
        config.broker.hosts = ()  # type: ignore[misc]


def test_one_host_is_a_list_of_one(tmp_path: Path) -> None:
    text = f'[device]\nserial = "DL-0001-0002"\n[broker]\nhost = "b.example"\npublic_key = "{KEY_B64}"\n'
    assert load_text(tmp_path, text).broker.nodes == (BrokerNode("b.example", 3478),)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("hosts = [", 'host = "x.example"\nhosts = [', "give host (one node) or hosts (several), not both"),
        ('"node-a.example", ', '"node-b.example:3479", ', "'node-b.example:3479' is listed twice"),
        ('"node-a.example"', '"https://node-a.example"', "no scheme, path or spaces"),
        ('"node-a.example", ', "7, ", 'expected a list of "host" or "host:port" strings'),
        ("port = 3500", 'port = 3500\ntcp_host = "t.example"', "remove tcp_host"),
    ],
)
def test_bad_node_lists(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in FLEET
    with pytest.raises(ConfigError, match="\\[broker\\]") as err:
        load_text(tmp_path, FLEET.replace(old, new, 1))
    assert expected in str(err.value)


def test_neither_host_nor_hosts(tmp_path: Path) -> None:
    text = f'[device]\nserial = "DL-0001-0002"\n[broker]\npublic_key = "{KEY_B64}"\n'
    with pytest.raises(ConfigError, match=r"host is missing; add host = .* or hosts = "):
        load_text(tmp_path, text)


def test_check_config_names_the_nodes(tmp_path: Path) -> None:
    result = run_dvrlinkd("--check-config", "--config", str(write(tmp_path, FLEET)))
    assert result.returncode == 0, result.stderr
    assert (
        "broker nodes node-a.example:3500, node-b.example:3479, [2001:db8::1]:3480, 192.0.2.3:3500 "
        "(one fleet key)" in result.stdout
    ), result.stdout


# -- status ------------------------------------------------------------------------------------


def test_status_shows_the_node_in_use_and_the_list() -> None:
    status = DaemonStatus(
        state="online", serial="DL-0001-0002", broker="192.0.2.2:3478", reflexive_address=None,
        session_id=None, registered_at=None, last_keepalive=None, rtt=None, pid=1, started_at=1000.0,
        node="192.0.2.2:3478",
        nodes=[
            {"node": "192.0.2.1:3478", "in_use": False, "last_answer": 990.0, "problem": "fell silent",
             "held_s": 0},
            {"node": "192.0.2.2:3478", "in_use": True, "last_answer": 999.0, "problem": "", "held_s": 0},
            {"node": "192.0.2.3:3478", "in_use": False, "last_answer": None,
             "problem": "is outside the fleet", "held_s": 540.0},
        ],
    )  # fmt: skip
    assert DaemonStatus.from_json(status.to_json()) == status
    lines = format_status(status, 1000.0).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("broker nodes:"))
    assert lines[at].endswith("3, using 192.0.2.2:3478"), lines
    assert (
        lines[at + 1].startswith("    192.0.2.1:3478: last answered")
        and "last failed: it fell silent" in lines[at + 1]
    )
    assert lines[at + 2].startswith("  * 192.0.2.2:3478: last answered"), lines
    assert lines[at + 3] == (
        "    192.0.2.3:3478: not answered yet; last failed: it is outside the fleet; "
        "passed over for 540 s more"
    )


def test_status_of_one_node_has_no_node_lines() -> None:
    status = DaemonStatus(
        state="online", serial="DL-0001-0002", broker="192.0.2.2:3478", reflexive_address=None,
        session_id=None, registered_at=None, last_keepalive=None, rtt=None, pid=1, started_at=1000.0,
        node="192.0.2.2:3478", nodes=[{"node": "192.0.2.2:3478", "in_use": True}],
    )  # fmt: skip
    assert "broker nodes" not in format_status(status, 1000.0)


# -- the presence core's silence bound ---------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "reply_timeout", "retries"),
    [(25.0, 3.0, 2), (2.0, 0.2, 2), (5.0, 3.0, 2), (1.0, 3.0, 4), (600.0, 3.0, 2)],
)
def test_a_silent_broker_is_given_up_within_one_and_a_half_intervals(
    interval: float, reply_timeout: float, retries: int
) -> None:
    """The broker answers until it goes down at an awkward moment (just after answering a
    keepalive), then nothing: ``ConnectionLost(silence=True)`` must come at most 1.5 intervals
    after its last answer, whatever ``reply_timeout`` says, leaving half an interval to register
    with the next node."""
    lab = Lab(interval=interval)
    dev = lab.add_device("DL-0001-0002")
    dev.client = PresenceClient(
        ClientConfig(
            serial="DL-0001-0002",
            broker_public_key=lab.server.public_key,
            keepalive_interval=interval,
            reply_timeout=reply_timeout,
            retries=retries,
        ),
        dev.key,
    )
    lab.start_all()
    assert dev.client.state is ClientState.ONLINE
    lab.advance(2 * interval + 0.001)  # two keepalives answered; the last one just now
    acks = [e for e in dev.events if isinstance(e, KeepaliveAcknowledged)]
    assert len(acks) == 2 and dev.client.last_keepalive_at == pytest.approx(2 * interval)
    last_answer = dev.client.last_keepalive_at
    assert last_answer is not None
    hello_times: list[float] = []

    def broker_gone(direction: str, data: bytes, _device: object) -> bool:
        if direction == "up" and data[0] == MessageType.HELLO:
            hello_times.append(lab.now)
        return False

    lab.filter = broker_gone
    lab.advance(lab.now + 3 * interval)
    lost = [e for e in dev.events if isinstance(e, ConnectionLost)]
    assert len(lost) == 1 and lost[0].silence, dev.events
    # When it came: the core sends a HELLO at once, so the time of that HELLO on the wire.
    hello_at = hello_times[0]
    waited = hello_at - last_answer
    assert waited <= 1.5 * interval + 1e-9, (
        f"silence noticed {waited:.2f} s after the last answer; "
        f"the bound is 1.5 intervals = {1.5 * interval:g} s"
    )
    assert dev.client.keepalive_reply_timeout == min(reply_timeout, interval / (2 * (retries + 1)))


def test_a_forgotten_session_is_no_silence() -> None:
    """UNKNOWN_SESSION (the node restarted) re-registers with the same node: not a move."""
    lab = Lab(interval=20.0)
    dev = lab.add_device("DL-0001-0002")
    lab.start_all()
    lab.restart_broker()
    lab.advance(21.0)
    lost = [e for e in dev.events if isinstance(e, ConnectionLost)]
    assert len(lost) == 1 and not lost[0].silence and "UNKNOWN_SESSION" in lost[0].reason, lost


# -- names with several addresses --------------------------------------------------------------


def test_resolving_makes_a_node_per_address_and_keeps_a_name_that_does_not_resolve() -> None:
    answers = {
        "fleet.example": ["192.0.2.1", "2001:db8::1", "192.0.2.1"],
        "one.example": ["192.0.2.7"],
        "down.example": None,
    }
    asked: list[tuple[str, int]] = []

    async def lookup(host: str, port: int) -> list[str]:
        asked.append((host, port))
        found = answers[host]
        if found is None:
            raise OSError(-2, "Name or service not known")
        return found

    nodes = [
        BrokerNode("fleet.example", 3478),
        BrokerNode("one.example", 3478),
        BrokerNode("down.example", 3478),
        C,
    ]
    resolved = asyncio.run(resolve_nodes(nodes, lookup))
    assert resolved == [
        BrokerNode("fleet.example", 3478, "192.0.2.1"),
        BrokerNode("fleet.example", 3478, "2001:db8::1"),
        BrokerNode("one.example", 3478),
        BrokerNode("down.example", 3478),
        C,
    ]
    assert asked == [("fleet.example", 3478), ("one.example", 3478), ("down.example", 3478)], (
        "an IP literal is not looked up"
    )
    assert [n.connect_host for n in resolved] == [
        "192.0.2.1",
        "2001:db8::1",
        "one.example",
        "down.example",
        "192.0.2.3",
    ]


def test_the_system_lookup_resolves_loopback() -> None:
    async def main() -> list[str]:
        return await system_lookup()("localhost", 3478)

    assert "127.0.0.1" in asyncio.run(main())


def test_the_serial_console_cannot_set_one_host_over_a_fleet_list(tmp_path: Path) -> None:
    """An installer's ``set broker_host`` on a device with ``[broker] hosts`` is refused with the
    config's own words, and the file stays as it was."""
    path = write(tmp_path, FLEET)
    with pytest.raises(SettingsRefused) as refused:
        save_settings(path, SettingChanges(broker_host="other.example"))
    assert refused.value.code == "bad_value"
    assert "give host (one node) or hosts (several), not both" in refused.value.message
    assert path.read_text() == FLEET
    saved = save_settings(path, SettingChanges(broker_port=3600))  # the default port of the entries
    assert [n.port for n in saved.config.broker.nodes] == [3600, 3479, 3480, 3600]
