"""The registry on PostgreSQL when the server goes away: a typed, quick error that says what to
do, a reconnect when it is back, and a broker that refuses registrations with 'busy' meanwhile
while it keeps serving the devices already online."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pytest_mock import MockerFixture
from support.aio import run
from support.broker import lab
from support.postgres import PostgresServer, free_port, postgres_server, postgres_url  # noqa: F401 (fixtures)
from support.presence import Lab, of_type

from dvrlink.broker.alarm_store import AlarmStore, StreamPosition
from dvrlink.broker.device_events import REGISTRY_BUSY_RETRY_S, DeviceEventHandler
from dvrlink.broker.registry import (
    BindingVerdict,
    RegistryUnavailableError,
    RegistryUnusableError,
    ScryptParams,
    open_registry,
)
from dvrlink.broker.registry_postgres import PG_MIGRATIONS, PostgresRegistry, connection_string, redact_url
from dvrlink.broker.webhooks import WebhookDispatcher, WebhookPolicy
from dvrlink.protocol.alarm_wire import AlarmKind, AlarmRecord
from dvrlink.protocol.presence_client import ClientState
from dvrlink.protocol.presence_events import DeviceOnline, Registered, RegistrationRefused
from dvrlink.protocol.presence_server import ServerConfig
from dvrlink.protocol.presence_wire import RefuseReason

CHEAP = ScryptParams(n=2**4, r=1, p=1)
KEY_A = bytes(range(32))
T0 = 1_700_000_000.0
QUICK_S = 2.5  # a call on a stopped server must fail within this


@pytest.fixture
def url(postgres_url: str) -> str:  # noqa: F811 (the imported fixture)
    """This test's fresh database."""
    return postgres_url


def test_a_stopped_server_gives_a_quick_clear_error_and_calls_work_after_restart(
    postgres_server: PostgresServer,  # noqa: F811
    url: str,
) -> None:
    reg = PostgresRegistry(url, password_params=CHEAP)
    try:
        assert reg.check_binding("DL-0001", KEY_A, T0, manifest_only=False) is BindingVerdict.BOUND_NOW
        with postgres_server.stopped():
            for call in (
                lambda: reg.device("DL-0001"),  # the open connection is gone
                lambda: reg.check_binding("DL-0002", KEY_A, T0, manifest_only=False),  # connect refused
                lambda: reg.create_user("alice", "pw123456", T0),  # in a transaction
                lambda: reg.issue_token("alice", T0, 60.0),
            ):
                started = time.monotonic()
                with pytest.raises(RegistryUnavailableError) as caught:
                    call()
                took = time.monotonic() - started
                assert took < QUICK_S, f"a call on a stopped server took {took:.2f} s"
                message = str(caught.value)
                assert redact_url(url) in message and "retry" in message and "PostgreSQL" in message, message
        # the same object reconnects on its next call; nothing of the failed calls was applied
        assert reg.device("DL-0001") is not None
        assert reg.device("DL-0002") is None
        assert reg.password_record("alice") is None
        reg.create_user("alice", "pw123456", T0)
        assert reg.authenticate("alice", "pw123456")
    finally:
        reg.close()


def test_opening_an_unreachable_or_foreign_database_says_what_to_do(
    postgres_server: PostgresServer,  # noqa: F811
    url: str,
) -> None:
    nowhere = f"postgresql://dvrlink:secret@127.0.0.1:{free_port()}/dvrlink"
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match="retry in a few seconds") as caught:
        open_registry(nowhere, postgres_server.root / "unused.sqlite3")
    assert time.monotonic() - started < QUICK_S
    assert "secret" not in str(caught.value) and "dvrlink:***@127.0.0.1" in str(caught.value)
    with pytest.raises(RegistryUnusableError, match="dvrlink-broker migrate"):
        PostgresRegistry(url, create=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE devices (serial TEXT)")
    with pytest.raises(RegistryUnusableError, match="no schema_version table"):
        PostgresRegistry(url)


def test_timeouts_are_added_unless_the_url_sets_them() -> None:
    plain = connection_string("postgresql://dvrlink@db.example.net:5432/dvrlink")
    assert "connect_timeout=2" in plain and "statement_timeout=1500" in plain
    own = connection_string(
        "postgresql://dvrlink@db.example.net/dvrlink?connect_timeout=9&options=-c%20statement_timeout%3D5000"
    )
    assert "connect_timeout=9" in own and "statement_timeout=5000" in own and "1500" not in own


def test_nodes_that_start_together_create_the_schema_once(url: str) -> None:
    barrier = threading.Barrier(3)
    opened: list[PostgresRegistry] = []
    failed: list[BaseException] = []

    def node() -> None:
        barrier.wait(timeout=10)
        try:
            opened.append(PostgresRegistry(url, password_params=CHEAP))
        except BaseException as exc:  # reported by the assertion below
            failed.append(exc)

    threads = [threading.Thread(target=node, name=f"node-{i}") for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert not failed, failed
        assert sorted(reg.created for reg in opened) == [False, False, True]
        assert {reg.schema_version for reg in opened} == {len(PG_MIGRATIONS)}
    finally:
        for reg in opened:
            reg.close()


def test_registrations_are_refused_busy_while_the_registry_is_down_and_online_devices_stay(
    postgres_server: PostgresServer,  # noqa: F811
    url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lab = Lab(interval=20.0)  # refusals other than BUSY wait ServerConfig.refuse_retry_after (300 s)
    lab.auto_accept = False
    registry = PostgresRegistry(url, password_params=CHEAP)
    handler = DeviceEventHandler(
        lab.server, registry, False, lambda: lab.now, lambda: T0 + lab.now, lambda e: None
    )
    lab.on_server_event = handler
    caplog.set_level(logging.INFO, logger="dvrlink.broker.device_events")
    try:
        online = lab.add_device("DL-0001", seed=1)
        online.client.start(lab.now)
        lab.pump()
        assert of_type(online.events, Registered), online.events
        postgres_server.stop()
        try:
            late = lab.add_device("DL-0002", seed=2)
            late.client.start(lab.now)
            lab.pump()
            [refused] = of_type(late.events, RegistrationRefused)
            assert refused.reason == RefuseReason.BUSY and "retry later" in refused.message, refused
            assert refused.retry_after == REGISTRY_BUSY_RETRY_S < ServerConfig().refuse_retry_after
            assert late.client.state is ClientState.BACKOFF
            handler(DeviceOnline("DL-0001", ("203.0.113.5", 40000)))  # a note that cannot be written
            lab.advance(lab.now + 25.0)  # within the refusal's retry_after: still down
            assert online.client.state is ClientState.ONLINE, "an online device lost its session"
            assert lab.server.presence("DL-0001").online  # type: ignore[union-attr]
            warnings = [r.getMessage() for r in caplog.records if "registry unavailable" in r.getMessage()]
            assert len(warnings) == 1, warnings  # once per outage, not per event
        finally:
            postgres_server.start()
        lab.advance(lab.now + REGISTRY_BUSY_RETRY_S + 20.0)  # the refused device retries and registers
        assert of_type(late.events, Registered), late.events
        assert late.client.state is ClientState.ONLINE and online.client.state is ClientState.ONLINE
        device = registry.device("DL-0002")
        assert device is not None and device.public_key == late.key.public_key().public_bytes_raw()
        assert any("registry available again" in r.getMessage() for r in caplog.records)
    finally:
        registry.close()


def test_the_api_answers_503_while_the_registry_is_down(
    postgres_server: PostgresServer,  # noqa: F811
    url: str,
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with lab(tmp_path, registry_url=url) as node:
            headers = await node.login()
            device = await node.device("DL-0001")
            postgres_server.stop()
            try:
                status, body = await node.call("GET", "/v1/devices", headers=headers)
                assert status == 503 and body["error"] == "registry_unavailable", body
                assert "retry" in body["message"], body
                assert node.broker.registry.location == redact_url(url)
                presence = node.broker.server.presence("DL-0001")
                assert presence is not None and presence.online, "the device went offline"
            finally:
                postgres_server.start()
            status, body = await node.call("GET", "/v1/devices", headers=headers)
            assert status == 200, body
            assert device.client.state is ClientState.ONLINE

    run(main)


_SILENT_SERVER = """
import json, subprocess, sys, tempfile, time
from pathlib import Path
from tests.support.postgres import PostgresServer, find_bindir
from dvrlink.broker.registry import RegistryUnavailableError, ScryptParams
from dvrlink.broker.registry_postgres import PostgresRegistry

subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
server = PostgresServer(find_bindir(), Path(tempfile.mkdtemp(prefix="dvrlink-pg-")))
server.init()
seen = {}
try:
    reg = PostgresRegistry(server.new_database(), password_params=ScryptParams(16, 1, 1))
    reg.check_binding("DL-0001", bytes(32), 1.0, False)
    for flag in ("--dport", "--sport"):  # the server's host vanishes: its packets are dropped
        rule = ["-p", "tcp", flag, str(server.port), "-j", "DROP"]
        subprocess.run(["iptables", "-I", "INPUT", *rule], check=True)
    for call in ("in-flight", "next", "after"):
        started = time.monotonic()
        try:
            reg.device("DL-0001")
            seen[call] = ["answered", time.monotonic() - started]
        except RegistryUnavailableError as exc:
            seen[call] = [str(exc), time.monotonic() - started]
    subprocess.run(["iptables", "-F", "INPUT"], check=True)
    reg.close()
finally:
    server.destroy()
print(json.dumps(seen))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_server_that_does_not_answer_costs_one_timeout_then_calls_fail_at_once(
    postgres_server: PostgresServer,  # noqa: F811 (the binaries are there)
) -> None:
    """In a network namespace of its own (its loopback, its iptables), a child drops the
    server's packets mid-session: the call in flight gives up after the TCP user timeout, and the
    next calls fail at once instead of waiting for the connect timeout each."""
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", _SILENT_SERVER],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    message, took = seen["in-flight"]
    assert "does not answer" in message and took < 3.5, seen
    for call in ("next", "after"):
        message, took = seen[call]
        assert "the next try is in" in message and took < 0.5, seen


def test_a_device_with_a_ticket_gets_in_while_the_registry_is_down(
    postgres_server: PostgresServer,  # noqa: F811
    url: str,
    mocker: MockerFixture,
) -> None:
    """A broker restarts (or the device moves node) while PostgreSQL is stopped: the device the
    fleet knows comes back by its resumption ticket; a device without one is refused 'busy'."""
    lab = Lab(interval=20.0)
    lab.auto_accept = False
    lab.wall = T0
    registry = PostgresRegistry(url, password_params=CHEAP)

    def handler_for_this_core() -> DeviceEventHandler:
        return DeviceEventHandler(
            lab.server,
            registry,
            False,
            lambda: lab.now,
            lambda: T0 + lab.now,
            lambda e: None,
            ticket_lifetime=3600.0,
        )

    lab.on_server_event = handler_for_this_core()
    try:
        known = lab.add_device("DL-0003", seed=3)
        known.client.start(lab.now)
        lab.pump()
        assert [r.resumed for r in of_type(known.events, Registered)] == [False]
        postgres_server.stop()
        try:
            lab.restart_broker()
            lab.on_server_event = handler = handler_for_this_core()
            stranger = lab.add_device("DL-0004", seed=4)
            stranger.client.start(lab.now)
            lab.advance(lab.now + 2 * lab.interval)
            resumed = [r.resumed for r in of_type(known.events, Registered)]
            assert resumed == [False, True], (
                f"the known device did not come back by ticket: {known.events[-4:]}"
            )
            assert known.client.state is ClientState.ONLINE
            refused = of_type(stranger.events, RegistrationRefused)
            assert refused and refused[0].reason == RefuseReason.BUSY, stranger.events
            assert not of_type(stranger.events, Registered)
            handler.flush()  # the after-the-fact check of the ticket's binding cannot run: it waits
            lab.pump()
            assert known.client.state is ClientState.ONLINE
        finally:
            postgres_server.start()
        check = mocker.spy(registry, "binding_keys")
        handler.flush()  # the registry is back: the check that waited runs now
        lab.pump()
        assert [call.args[0] for call in check.call_args_list] == [["DL-0003"]], check.call_args_list
        assert known.client.state is ClientState.ONLINE
    finally:
        registry.close()


def test_alarm_webhooks_wait_for_the_registry_and_go_out_in_order_when_it_is_back(
    postgres_server: PostgresServer,  # noqa: F811
    url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The accounts an alarm's webhooks go to come from the registry: while PostgreSQL is stopped
    the alarms wait (none is lost, none raises into the presence link), then are queued in order."""
    caplog.set_level(logging.INFO, logger="dvrlink.broker.webhooks")
    registry = PostgresRegistry(url, password_params=CHEAP)
    store = AlarmStore(tmp_path / "alarms.sqlite3")
    try:
        registry.check_binding("DL-0005", KEY_A, T0, False)
        registry.create_user("alice", "correct horse", T0)
        registry.record_pairing("alice", "DL-0005", bytes(32), T0)
        store.set_webhook("alice", "https://hooks.example.com/a", bytes(32), T0)
        records = [AlarmRecord(seq, 1000 * seq, AlarmKind.MOTION_START) for seq in (1, 2, 3)]
        stored = store.store("DL-0005", records, StreamPosition(1, 3), T0)

        async def main() -> None:
            dispatcher = WebhookDispatcher(store, registry.paired_users, WebhookPolicy.from_config((), ()))
            kicked = mocker_free_spy(dispatcher)
            postgres_server.stop()
            try:
                for alarm in stored[:2]:
                    dispatcher.on_alarm(alarm)
                assert dispatcher.unrouted == 2 and store.delivery_users() == []
            finally:
                postgres_server.start()
            dispatcher.on_alarm(stored[2])  # the registry answers again: all three, in order
            assert dispatcher.unrouted == 0
            assert [a for a, _ in store.pending_deliveries("alice")] == [s.id for s in stored]
            assert kicked == ["alice"] * 3
            said = [r.getMessage() for r in caplog.records if r.name == "dvrlink.broker.webhooks"]
            assert len([m for m in said if "wait" in m]) == 1, said  # once per outage
            assert any("looked up again" in m for m in said), said
            await dispatcher.close()

        run(main)
    finally:
        store.close()
        registry.close()


def mocker_free_spy(dispatcher: WebhookDispatcher) -> list[str]:
    """The accounts the dispatcher wakes (its workers would deliver; none runs in this test)."""
    kicked: list[str] = []
    dispatcher._kick = kicked.append  # type: ignore[method-assign]
    return kicked
