"""The modem manager's "data not wanted" input (``want_data``, the ``STANDBY`` state) that an
``sms-wake`` recorder uses while it sleeps: the data session goes down (an ECM call also with the
profile's disconnect command), no dial and no data-path probe follow, and the modem stays
registered with its AT polls going on; wanted again, it dials. First the core with a scripted
modem and made-up time, then the real driver on the PTY emulator, whose SMS still arrive."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pytest_mock import MockerFixture
from support.aio import run
from support.modem_rig import needs_database, provider_index, running
from support.modem_script import ANSWERS, ScriptedModem

from dvrlink.driver.at_link import AtLink
from dvrlink.modem.apn import ApnMemory
from dvrlink.modem.manager import (
    CameOnline,
    ModemConfig,
    ModemManager,
    ModemState,
    ProbeData,
    StartData,
    StopData,
    WentOffline,
)
from dvrlink.modem.profiles import profile_by_name
from dvrlink.protocol.at_events import AtEvent, UrcReceived
from hil.modememu import SimCard

HOUR = 3600.0


def _run_until(manager: ModemManager, modem: ScriptedModem, end: float, now: float) -> float:
    """Tick the manager at each of its deadlines up to ``end``, answering what it sends."""
    while (deadline := manager.next_deadline()) is not None and deadline <= end:
        assert deadline >= now, "a deadline in the past: the manager would busy-loop"
        now = deadline
        manager.tick(now)
        modem.step(now)
    return end


def _manager(profile: str = "quectel-ec25") -> tuple[ModemManager, ScriptedModem]:
    config = ModemConfig(profile=profile_by_name(profile), probe_interval_s=60.0, registration_poll_s=10.0)
    manager = ModemManager(config, provider_index(), ApnMemory())
    return manager, ScriptedModem(manager, ANSWERS)


@needs_database
def test_not_wanted_takes_an_ecm_call_down_and_an_hour_asleep_has_no_probe_and_no_dial() -> None:
    manager, modem = _manager()
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.ONLINE and len(modem.starts) == 1
    sent = len(modem.sent)
    actions = len(modem.actions)
    manager.want_data(False, 5.0)
    modem.step(5.0)
    assert manager.state is ModemState.STANDBY and not manager.data_up and not manager.data_wanted
    assert [type(a) for a in modem.actions[actions:] if type(a).__name__ != "SendAt"] == [StopData]
    assert "AT+QNETDEVCTL=0,1,0" in modem.sent[sent:], "the ECM call in the modem is ended"
    assert any(isinstance(e, WentOffline) for e in modem.events)
    actions = len(modem.actions)
    sent = len(modem.sent)
    _run_until(manager, modem, HOUR, 5.0)
    later = modem.actions[actions:]
    assert not [a for a in later if isinstance(a, ProbeData | StartData | StopData)], later
    assert manager.state is ModemState.STANDBY
    # still registered and watched over AT: registration, operator and signal polls go on
    polled = modem.sent[sent:]
    assert polled.count("AT+CGREG?") >= 300 and "AT+CSQ" in polled
    assert not [c for c in polled if c.startswith(("AT+CGDCONT=", "AT+QNETDEVCTL=1", "ATD"))]
    # a wake: the data session is wanted again and comes up at once
    manager.want_data(True, HOUR + 1)
    modem.step(HOUR + 1)
    assert manager.state is ModemState.ONLINE and manager.data_up and len(modem.starts) == 2
    assert any(isinstance(e, CameOnline) for e in modem.events)
    # probes run again once online
    actions = len(modem.actions)
    _run_until(manager, modem, HOUR + 200, HOUR + 1)
    assert [a for a in modem.actions[actions:] if isinstance(a, ProbeData)]


@needs_database
def test_not_wanted_from_the_start_registers_and_never_dials() -> None:
    manager, modem = _manager("quectel-uc20")  # a PPP modem: pppd hangs up, no AT disconnect
    manager.want_data(False, 0.0)
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.STANDBY
    _run_until(manager, modem, 600.0, 0.0)
    assert modem.starts == [] and not [a for a in modem.actions if isinstance(a, ProbeData | StopData)]
    assert manager.status().detail.startswith("data session down: not wanted")


@needs_database
def test_a_ppp_call_is_hung_up_by_the_data_link_alone() -> None:
    manager, modem = _manager("quectel-uc20")
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.ONLINE
    sent, actions = len(modem.sent), len(modem.actions)
    manager.want_data(False, 1.0)
    modem.step(1.0)
    assert manager.state is ModemState.STANDBY
    assert [a for a in modem.actions[actions:] if isinstance(a, StopData)], "pppd is stopped (it hangs up)"
    assert not [c for c in modem.sent[sent:] if c.startswith(("AT+QNETDEVCTL", "AT+CGACT=0", "AT+CGATT"))]
    manager.want_data(False, 2.0)  # said again: nothing new
    modem.step(2.0)
    assert (
        manager.state is ModemState.STANDBY
        and len([a for a in modem.actions if isinstance(a, StopData)]) == 1
    )


@needs_database
def test_registration_lost_while_asleep_comes_back_to_standby_not_to_a_dial() -> None:
    manager, modem = _manager()
    manager.want_data(False, 0.0)
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.STANDBY
    for line in ('+CGREG: 2,"1A2B","01C3D4E5",7', '+CEREG: 2,"2B3C","01C3D4E5",7'):
        manager.at_event(UrcReceived(line.split(":")[0], line, None), 10.0)
    assert manager.state is ModemState.REGISTERING
    modem.step(10.0)  # the registration polls the lost registration starts find it back
    assert manager.state is ModemState.STANDBY and modem.starts == []
    assert not [a for a in modem.actions if isinstance(a, ProbeData | StopData)]


class SmsWatch:
    """Another user of the AT port (as the wake SMS inbox is): keeps the URCs the engine routes."""

    def __init__(self) -> None:
        self.urcs: list[str] = []
        self.changed = asyncio.Event()

    def port_opened(self, link: AtLink) -> None:
        pass

    def at_event(self, event: AtEvent) -> None:
        if isinstance(event, UrcReceived):
            self.urcs.append(event.line)
            self.changed.set()


@needs_database
def test_on_the_emulator_asleep_the_call_is_down_probes_stop_and_sms_still_arrive(
    tmp_path: Path, mocker: MockerFixture
) -> None:
    sim = SimCard.for_network(
        "26201", iccid="89490200001234500001", working_apns=frozenset({"internet.telekom"})
    )

    async def main() -> None:
        async with running("quectel-ec25", sim, tmp_path) as rig:
            watch = SmsWatch()
            rig.runner.port_user = watch
            await rig.online()
            assert rig.emu.model.active, "the ECM call is up in the modem"
            probe = mocker.spy(rig.data, "probe")
            up = mocker.spy(rig.data, "up")
            down = mocker.spy(rig.data, "down")
            await rig.wait(lambda _: probe.call_count >= 2)  # probes run while online
            rig.runner.want_data(False)
            await rig.state(ModemState.STANDBY)
            await rig.wait(lambda _: not rig.emu.model.active)
            assert down.call_count == 1 and rig.emu.model.ecm_call is None
            probes = probe.call_count
            # 20 probe intervals of AT polls (0.2 s each here): not one probe, not one dial
            await rig.commands_answered(60)
            assert probe.call_count == probes and up.call_count == 0
            assert rig.runner.status().state is ModemState.STANDBY
            assert rig.emu.model.registered() and not rig.emu.model.detached
            assert not any(c.upper().startswith(("AT+QNETDEVCTL=1", "ATD")) for c in rig.emu.commands[-60:])
            # an SMS reaches the sleeping modem and is indicated on the AT port
            rig.emu.receive_sms("+491609876543", "hello")
            async with asyncio.timeout(10):
                while not any(u.startswith("+CMTI:") for u in watch.urcs):
                    watch.changed.clear()
                    await watch.changed.wait()
            # a wake: data up again, and probes with it
            rig.runner.want_data(True)
            await rig.online()
            assert up.call_count == 1 and rig.emu.model.active
            await rig.wait(lambda _: probe.call_count > probes)

    run(main)
