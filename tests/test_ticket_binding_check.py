"""A registration resumed by its ticket is let in without the registry, and its binding is checked
afterwards in a batch (broker/device_events.py): the check costs one query per batch, a binding
that changed since the ticket was issued ends the session and is audited, and that serial's next
registration is judged by the registry first. Sans-I/O lab, real SQLite registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from support.presence import Device, Lab, of_type

from dvrlink.broker.device_events import DeviceEventHandler
from dvrlink.broker.registry import Registry, ScryptParams
from dvrlink.protocol.presence_client import ClientState
from dvrlink.protocol.presence_events import DeviceOffline, Registered, RegistrationRefused
from dvrlink.protocol.presence_wire import RefuseReason

WALL = 1_800_000_000.0
INTERVAL = 20.0
SERIAL = "DL-0016-0101"
OTHER_KEY = bytes(range(40, 72))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry.sqlite3", password_params=ScryptParams(16, 1, 1))
    yield reg
    reg.close()


class Broker:
    """The lab's presence core with the broker's real event handler in front of a real registry."""

    def __init__(self, lab: Lab, registry: Registry) -> None:
        self.lab = lab
        self.registry = registry
        self.handler = self.new_handler()

    def new_handler(self) -> DeviceEventHandler:
        lab = self.lab
        handler = DeviceEventHandler(
            lab.server,
            self.registry,
            False,
            lambda: lab.now,
            lambda: WALL + lab.now,
            lambda e: None,
            ticket_lifetime=3600.0,
        )
        lab.on_server_event = handler
        return handler

    def restart(self) -> None:
        """A broker restart: a new core (same fleet key) and a new handler, same registry."""
        self.lab.restart_broker()
        self.handler = self.new_handler()

    def flush(self) -> None:
        """The broker's periodic flush, then what it put out."""
        self.handler.flush()
        self.lab.pump()


def online(registry: Registry) -> tuple[Lab, Broker, Device]:
    lab = Lab(interval=INTERVAL)
    lab.auto_accept = False
    lab.wall = WALL
    broker = Broker(lab, registry)
    device = lab.add_device(SERIAL, seed=3)
    lab.start_all()
    broker.flush()
    assert device.client.state is ClientState.ONLINE, device.events[-3:]
    assert [r.resumed for r in of_type(device.events, Registered)] == [False]
    return lab, broker, device


def test_a_resumed_registration_skips_the_registry_and_is_checked_in_the_next_batch(
    registry: Registry, mocker: MockerFixture
) -> None:
    lab, broker, device = online(registry)
    broker.restart()
    check = mocker.spy(registry, "check_binding")
    batch = mocker.spy(registry, "binding_keys")
    lab.advance(lab.now + 2 * INTERVAL)  # the device finds the restart at a keepalive and resumes
    assert [r.resumed for r in of_type(device.events, Registered)] == [False, True], device.events[-4:]
    assert device.client.state is ClientState.ONLINE
    assert check.call_count == 0, "a fresh ticket went to the registry before it was let in"
    broker.flush()
    assert batch.call_count == 1 and batch.call_args.args[0] == [SERIAL], batch.call_args_list
    assert check.call_count == 0, "a binding that matched was judged again one by one"
    assert device.client.state is ClientState.ONLINE
    assert registry.device(SERIAL).last_registered_at == pytest.approx(WALL + lab.now, abs=2 * INTERVAL)


def test_a_ticket_whose_serial_was_bound_to_another_key_since_loses_its_session(
    registry: Registry, mocker: MockerFixture
) -> None:
    lab, broker, device = online(registry)
    # the operator released the serial and a replacement device bound it with its own key
    assert registry.release_device(SERIAL)
    registry.check_binding(SERIAL, OTHER_KEY, WALL + lab.now, False)
    broker.restart()
    lab.advance(lab.now + 2 * INTERVAL)
    assert [r.resumed for r in of_type(device.events, Registered)] == [False, True]
    assert lab.server.presence(SERIAL) is not None and lab.server.presence(SERIAL).online
    broker.flush()
    offline = [e for e in lab.server_events if isinstance(e, DeviceOffline) and e.serial == SERIAL]
    assert offline and "key-mismatch" in offline[-1].reason, lab.server_events[-4:]
    assert not lab.server.presence(SERIAL).online
    refusals = registry.refusals(SERIAL)
    assert [r.reason for r in refusals] == ["key-mismatch"], refusals
    assert registry.device(SERIAL).public_key == OTHER_KEY, "the replacement's binding was touched"
    # its next registration (after UNKNOWN_SESSION) goes to the registry first, ticket or not
    check = mocker.spy(registry, "check_binding")
    lab.advance(lab.now + 3 * INTERVAL)
    assert check.call_count >= 1
    refused = of_type(device.events, RegistrationRefused)
    assert refused and refused[0].reason == RefuseReason.KEY_MISMATCH, device.events[-4:]
    assert device.client.state is not ClientState.ONLINE


def test_a_released_serial_is_bound_again_by_its_ticket_as_on_first_use(registry: Registry) -> None:
    lab, broker, device = online(registry)
    key = registry.device(SERIAL).public_key
    assert registry.release_device(SERIAL)
    broker.restart()
    lab.advance(lab.now + 2 * INTERVAL)
    broker.flush()
    assert device.client.state is ClientState.ONLINE
    record = registry.device(SERIAL)
    assert record is not None and record.public_key == key and record.source == "first-use"
    assert registry.refusals(SERIAL) == []
