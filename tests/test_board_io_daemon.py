"""dvrlinkd's board I/O on a real event loop, over the fake GPIO backend (this kernel has no
gpio-sim or gpio-mockup, so no chip can stand in here; tests/hil/test_board_gpio.py uses a real
one in the guest). The fake's inputs have real file descriptors, so the daemon's
``loop.add_reader`` path is the one a chip takes.

- the service: edges to alarms, relay defaults at start and exit, a pulse ending on its timer,
  a busy line listed with its consumer and requested again once free;
- the ``relay`` RPC from the viewer's ``device_relay`` through ``SessionServices``;
- the whole daemon (``run_daemon``) with an in-process broker: a door opening is an
  ``ALARM_INPUT`` alarm stored at the broker, and the relays are off again after the stop.

Every wait is on an event or bounded (``support.waiting``).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from support.presence import loopback_broker_config
from support.services import FakeOpener, services
from support.waiting import wait_until_async

from dvrlink.broker.alarm_store import StoredAlarm
from dvrlink.broker.app import start_broker
from dvrlink.daemon.alarms import AlarmQueue
from dvrlink.daemon.app import run_daemon
from dvrlink.daemon.board_io_service import BoardIoService, raise_board_alarm
from dvrlink.daemon.config import load_config
from dvrlink.daemon.status import DaemonStatus, format_board
from dvrlink.hal.gpio import (
    AlarmInputActive,
    AlarmInputCleared,
    AlarmInputConfig,
    BoardEvent,
    LineFailed,
    RelayConfig,
    RelaySwitched,
)
from dvrlink.hal.gpio_fake import FakeBackend
from dvrlink.protocol.alarm_wire import AlarmKind
from dvrlink.viewer.cli import main as viewer_main
from dvrlink.viewer.errors import ViewerError
from dvrlink.viewer.forward import device_relay
from dvrlink.viewer.render import render_relays

SERIAL = "DL-0015-0008"
WAIT = 30.0
CHIP = "/dev/gpiochip0"
DOOR = AlarmInputConfig("door", CHIP, 3, debounce_s=0.02)
SIREN = RelayConfig("siren", CHIP, 4)
STRIKE = RelayConfig("strike", CHIP, 5, active_low=True, default_on=True)


class Events:
    """A sink that keeps the service's events and wakes a waiter on each."""

    def __init__(self) -> None:
        self.seen: list[BoardEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: BoardEvent) -> None:
        self.seen.append(event)
        self._changed.set()

    async def wait_for(self, kind: type[BoardEvent], name: str) -> BoardEvent:
        async def found() -> BoardEvent:
            while True:
                for event in self.seen:
                    if isinstance(event, kind) and event.name == name:
                        self.seen.remove(event)
                        return event
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(found(), WAIT)
        except TimeoutError:
            raise AssertionError(f"no {kind.__name__} for {name} in {WAIT} s; events: {self.seen}") from None


def test_edges_become_alarms_and_relays_are_at_their_defaults_from_start_to_exit(
    mocker: MockerFixture,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        backend = FakeBackend()
        service = BoardIoService([DOOR], [SIREN, STRIKE], backend, loop.time, loop=loop)
        events = Events()
        service.add_sink(events)
        alarms = mocker.Mock(spec=AlarmQueue)
        service.add_sink(lambda event: raise_board_alarm(alarms, event))
        service.start()
        door = backend.inputs["door"]
        siren, strike = backend.outputs["siren"], backend.outputs["strike"]
        assert (siren.values, strike.values) == ([False], [True]), "requested at their defaults"
        snapshot = service.snapshot()
        assert snapshot["inputs"][0]["state"] == "inactive" and snapshot["inputs"][0]["error"] == ""

        door.change(True, loop.time())
        active = await events.wait_for(AlarmInputActive, "door")
        assert isinstance(active, AlarmInputActive)
        assert active.at - active.since == pytest.approx(DOOR.debounce_s)
        alarms.raise_alarm.assert_called_once_with(AlarmKind.ALARM_INPUT, detail="door: active")
        assert service.snapshot()["inputs"][0]["state"] == "active"
        door.change(False, loop.time())
        await events.wait_for(AlarmInputCleared, "door")
        assert alarms.raise_alarm.call_args.kwargs["detail"].startswith("door: cleared after")

        service.relay_call({"relay": "siren", "action": "pulse", "seconds": 0.05})
        assert siren.value is True
        assert service.snapshot()["relays"][0]["pulse_left_s"] is not None
        off = await events.wait_for(RelaySwitched, "siren")  # the "on" of the pulse
        assert isinstance(off, RelaySwitched) and off.on
        off = await events.wait_for(RelaySwitched, "siren")
        assert isinstance(off, RelaySwitched) and not off.on and off.why == "pulse over"
        assert siren.values == [False, True, False]

        service.relay_call({"relay": "siren", "action": "on"})
        service.relay_call({"relay": "strike", "action": "off"})
        service.close()
        assert siren.values[-1] is False and strike.values[-1] is True, "back at the defaults at exit"
        assert door.released and siren.released and strike.released
        assert backend.held == {}
        service.close()  # idempotent

    asyncio.run(main())


def test_a_busy_line_is_listed_with_its_consumer_and_requested_again_once_free() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        backend = FakeBackend(held={(CHIP, 3): "gpio-keys"})
        service = BoardIoService([DOOR], [SIREN], backend, loop.time, loop=loop, reopen_s=0.01)
        service.start()
        try:
            (door,) = service.snapshot()["inputs"]
            assert door["state"] == "unknown"
            assert "held by the consumer 'gpio-keys'" in door["error"] and "unbind" in door["error"]
            text = "\n".join(format_board(service.snapshot()))
            assert f"alarm input door ({CHIP} line 3): not in use: line 3 of {CHIP} is held" in text
            del backend.held[(CHIP, 3)]
            await wait_until_async(
                "the door's line requested again",
                lambda: "door" in backend.inputs,
                timeout=WAIT,
                seen=service.snapshot,
            )
            assert service.snapshot()["inputs"][0]["error"] == ""
        finally:
            service.close()

    asyncio.run(main())


def test_a_failing_read_releases_the_input_and_it_is_requested_again(mocker: MockerFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        backend = FakeBackend()
        service = BoardIoService([DOOR], [], backend, loop.time, loop=loop, reopen_s=0.05)
        events = Events()
        service.add_sink(events)
        requested = mocker.spy(backend, "request_input")
        service.start()
        first = backend.inputs["door"]
        first.fail_reads = "Input/output error"
        try:
            first.change(True, loop.time())  # readable, and the read fails: the fd stays readable
            failed = await events.wait_for(LineFailed, "door")
            assert isinstance(failed, LineFailed) and "Input/output error" in failed.message
            assert first.released, "the line is given back, so its fd cannot spin the loop"
            assert service.snapshot()["inputs"][0]["state"] == "unknown"
            await wait_until_async(
                "the door's line requested again", lambda: requested.call_count >= 2, timeout=WAIT
            )
            second = backend.inputs["door"]
            assert second is not first and service.snapshot()["inputs"][0]["error"] == ""
            second.change(True, loop.time())
            await events.wait_for(AlarmInputActive, "door")
        finally:
            service.close()

    asyncio.run(main())


def test_the_relay_rpc_lists_switches_and_refuses_with_the_reason(mocker: MockerFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        backend = FakeBackend()
        service = BoardIoService([DOOR], [SIREN], backend, loop.time, loop=loop)
        service.start()
        switch = mocker.spy(service.bank, "set")
        pulse = mocker.spy(service.bank, "pulse")
        served = services(relay=service.relay_call)
        opener = FakeOpener(served)
        try:
            listed = await device_relay(opener)
            assert [r["name"] for r in listed["relays"]] == ["siren"] and listed["relays"][0]["on"] is False
            assert [i["name"] for i in listed["inputs"]] == ["door"]
            after = await device_relay(opener, {"relay": "siren", "action": "on"})
            assert after["relays"][0]["on"] is True and backend.outputs["siren"].value is True
            switch.assert_called_once_with("siren", True, mocker.ANY)
            await device_relay(opener, {"relay": "siren", "action": "pulse", "seconds": 2})
            pulse.assert_called_once_with("siren", 2.0, mocker.ANY)
            with pytest.raises(
                ViewerError, match=r"the device refused: no relay named 'horn' \(relays: siren\)"
            ):
                await device_relay(opener, {"relay": "horn", "action": "on"})
            with pytest.raises(ViewerError, match="pulse needs seconds"):
                await device_relay(opener, {"relay": "siren", "action": "pulse"})
            table = render_relays(SERIAL, await device_relay(opener))
            assert table.splitlines()[0].split() == ["KIND", "NAME", "LINE", "STATE", "FOR"]
            assert "relay  siren  /dev/gpiochip0:4  on (pulse, 2 s left)" in table
            assert "input  door   /dev/gpiochip0:3  inactive" in table
        finally:
            service.close()
            await served.aclose()

    asyncio.run(main())


def test_a_device_without_relays_answers_an_empty_list_and_refuses_actions() -> None:
    async def main() -> None:
        opener = FakeOpener(services())
        assert await device_relay(opener) == {"inputs": [], "relays": []}
        with pytest.raises(ViewerError, match=r"no relays \(no \[\[relay\]\]"):
            await device_relay(opener, {"relay": "siren", "action": "on"})
        assert "has no alarm inputs or relays" in render_relays(SERIAL, {"inputs": [], "relays": []})
        await opener.services.aclose()

    asyncio.run(main())


def test_a_door_opening_in_a_running_daemon_is_an_alarm_stored_at_the_broker(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    backend = FakeBackend()
    mocker.patch("dvrlink.daemon.board_io_service.default_backend", return_value=backend)
    raised = mocker.spy(AlarmQueue, "raise_alarm")
    requested = mocker.spy(backend, "request_input")

    async def main() -> None:
        broker = await start_broker(loopback_broker_config(tmp_path / "broker"))
        key = base64.b64encode(broker.info.public_key).decode()
        config_path = tmp_path / "dvrlinkd.toml"
        config_path.write_text(
            f'[device]\nserial = "{SERIAL}"\nstate_dir = "state"\nruntime_dir = "run"\n'
            f'[broker]\nhost = "127.0.0.1"\nport = {broker.info.udp_port}\npublic_key = "{key}"\n'
            '[presence]\ntransport = "udp"\nlearn_keepalive = false\n'
            f'[[alarm_input]]\nname = "door"\nchip = "{CHIP}"\nline = 3\ndebounce_s = 0.02\n'
            f'[[relay]]\nname = "siren"\nchip = "{CHIP}"\nline = 4\n'
        )
        alarms = broker.alarms
        assert alarms is not None
        stored: list[StoredAlarm] = []
        arrived = asyncio.Event()

        def note(alarm: StoredAlarm) -> None:
            stored.append(alarm)
            arrived.set()

        alarms.listeners.append(note)
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(load_config(config_path), stop, {}))
        try:
            await wait_until_async(
                "the daemon requested the door's line", lambda: requested.call_count, timeout=WAIT
            )
            loop = asyncio.get_running_loop()
            backend.inputs["door"].change(True, loop.time())
            try:
                await asyncio.wait_for(arrived.wait(), WAIT)
            except TimeoutError:
                raise AssertionError(
                    f"no alarm at the broker in {WAIT} s; the daemon raised {raised.call_args_list}"
                ) from None
            (alarm,) = stored
            assert (alarm.serial, alarm.kind, alarm.detail) == (
                SERIAL,
                int(AlarmKind.ALARM_INPUT),
                "door: active",
            )
            raised.assert_called_once_with(mocker.ANY, AlarmKind.ALARM_INPUT, detail="door: active")
            status = DaemonStatus.from_json((tmp_path / "run" / "status.json").read_bytes())
            assert status.board["inputs"][0]["state"] == "active"
            assert status.board["relays"][0] == {**status.board["relays"][0], "name": "siren", "on": False}
        finally:
            stop.set()
            await asyncio.wait_for(daemon, WAIT)
            await broker.close()
        siren = backend.outputs["siren"]
        assert siren.values[-1] is False and siren.released and backend.inputs["door"].released

    asyncio.run(main())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["siren"], "say what to do with relay siren: on, off or pulse SECONDS"),
        (["siren", "pulse"], "only pulse takes SECONDS, and pulse needs them"),
        (["siren", "on", "5"], "only pulse takes SECONDS"),
    ],
)
def test_dvrlink_relay_usage_errors_come_before_any_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert viewer_main(["--home", str(tmp_path), "relay", "DL-0001-0002", *argv]) == 2
    assert message in capsys.readouterr().err
