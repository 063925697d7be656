"""The modem state machine without I/O (a scripted modem and made-up time), its parsers and its
status snapshot; and, over the emulator, SIM swaps keeping data accounting apart per ICCID."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.aio import run
from support.modem_rig import needs_database, provider_index, running
from support.modem_script import ANSWERS, ICCID, ScriptedModem

from dvrlink.daemon.config import ModemSettings
from dvrlink.daemon.modem_service import advice
from dvrlink.modem.apn import ApnMemory
from dvrlink.modem.ladder import FaultKind, Step
from dvrlink.modem.manager import (
    TRANSITIONS,
    ApnFailed,
    DataContextEnded,
    DataFailed,
    DataFailure,
    DataUp,
    FaultDetected,
    ModemConfig,
    ModemManager,
    ModemState,
    ModemStatus,
    ProbeData,
    RadioSwitchedOn,
    SendAt,
    StopData,
    redact_iccid,
)
from dvrlink.modem.profiles import profile_by_name
from dvrlink.modem.reply_parsers import (
    cesq_to_dbm,
    csq_to_dbm,
    parse_ef_iccid,
    parse_iccid,
    parse_registration,
)
from dvrlink.protocol.at_events import CommandTimedOut, Resynced, UrcReceived
from dvrlink.protocol.at_results import FinalResult
from hil.modememu import SimCard


def test_parsers() -> None:
    assert parse_registration('+CREG: 2,1,"1A2B","01C3D4E5",7', reply=True).stat == 1  # type: ignore[union-attr]
    assert parse_registration('+CEREG: 5,"2B3C","01C3D4E5",7', reply=False) == parse_registration(
        '+CEREG: 2,5,"2B3C","01C3D4E5",7', reply=True
    )
    info = parse_registration('+CGREG: 1,"1A2B","01C3D4E5",2', reply=False)
    assert info is not None and (info.stat, info.act) == (1, 2)
    assert parse_registration("+CREG: x", reply=False) is None
    assert (csq_to_dbm("+CSQ: 0,99"), csq_to_dbm("+CSQ: 31,0"), csq_to_dbm("+CSQ: 99,99")) == (
        -113,
        -51,
        None,
    )
    assert cesq_to_dbm("+CESQ: 99,99,255,255,20,60") == -81
    assert cesq_to_dbm("+CESQ: 99,99,40,10,255,255") == -81
    assert cesq_to_dbm("+CESQ: 99,99,255,255,255,255") is None
    assert parse_iccid(("+QCCID: 89490200001234567890",)) == ICCID
    assert parse_iccid(("^ICCID: 8949020000123456789F",)) == "8949020000123456789"
    assert parse_iccid(("garbage",)) is None
    assert parse_ef_iccid(('+CRSM: 144,0,"98942000002143658709"',)) == ICCID


def test_iccid_is_redacted_in_status_text_and_dict() -> None:
    status = ModemStatus(ModemState.ONLINE, iccid=ICCID, imei="866425031234567")
    assert redact_iccid(ICCID) == "894902**********7890"
    assert ICCID not in str(status) and ICCID not in repr(status)
    assert status.as_dict()["iccid"] == "894902**********7890"
    assert "866425031234567" not in repr(status)


def test_every_state_is_reachable_in_the_transition_table() -> None:
    targets = {new for (_, new) in TRANSITIONS}
    assert targets == set(ModemState)


def test_config_errors_say_what_to_fix() -> None:
    profile = profile_by_name("generic")
    with pytest.raises(ValueError, match=r"modem\.pin"):
        ModemConfig(profile=profile, pin="12a4")
    with pytest.raises(ValueError, match="1-24"):
        ModemConfig(profile=profile, cid=0)


@needs_database
def test_made_up_time_online_then_a_timeout_is_a_fault_and_a_resync_puts_it_back() -> None:
    config = ModemConfig(
        profile=profile_by_name("quectel-ec25"), at_unresponsive_s=10.0, probe_interval_s=30.0
    )
    manager = ModemManager(config, provider_index(), ApnMemory())
    modem = ScriptedModem(manager, ANSWERS)
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.ONLINE
    status = manager.status()
    assert (status.apn, status.operator, status.rat, status.signal_dbm) == (
        "internet.t-d1.de",
        "Telekom.de",
        "LTE",
        -63,
    )
    assert modem.sent[:2] == ["ATE0 V1 +CMEE=1", "AT+CGMI"]
    assert "AT+CRSM=176,28589,0,0,4" in modem.sent
    assert 'AT+CGDCONT=1,"IP","internet.t-d1.de"' in modem.sent
    # the next poll goes unanswered: a fault for the ladder, the data link stays up meanwhile
    deadline = manager.next_deadline()
    assert deadline is not None and deadline <= 30.0
    modem.hang = True
    manager.tick(deadline)
    modem.step(deadline)
    polled = modem.sent[-1]
    command_id = modem.next_id - 1
    manager.at_event(CommandTimedOut(command_id, polled, (), 3.0), deadline + 3)
    modem.step(deadline + 3)
    faults = [e for e in modem.events if isinstance(e, FaultDetected)]
    assert [f.fault.kind for f in faults] == [FaultKind.AT_TIMEOUT]
    assert manager.state is ModemState.RECOVERING and manager.data_up
    manager.recover(Step.RESYNC, deadline + 3)
    modem.step(deadline + 3)
    # no answer for at_unresponsive_s: the next fault says the modem is dead to AT
    manager.tick(deadline + 13.5)
    modem.step(deadline + 13.5)
    faults = [e for e in modem.events if isinstance(e, FaultDetected)]
    assert faults[-1].fault.kind is FaultKind.AT_UNRESPONSIVE and not faults[-1].fault.at_alive
    # the engine gets an answer at last: back online without a re-dial
    modem.hang = False
    manager.at_event(Resynced(4), deadline + 14)
    modem.step(deadline + 14)
    assert manager.state is ModemState.ONLINE


@needs_database
def test_a_system_that_cannot_run_pppd_keeps_the_apn_and_never_asks_the_ladder() -> None:
    config = ModemConfig(profile=profile_by_name("quectel-uc20"), config_backoff_s=300.0)
    manager = ModemManager(config, provider_index(), ApnMemory())
    modem = ScriptedModem(manager, ANSWERS)
    cannot = "config: pppd on /dev/ttyUSB3 exited with 3: pppd is not setuid root"
    modem.data = [DataFailed(DataFailure.CONFIG, cannot) for _ in range(4)]
    manager.port_opened(0.0)
    modem.step(0.0)
    now = 0.0
    for attempt in range(1, 5):
        assert manager.state is ModemState.DATA_BACKOFF, attempt
        status = manager.status()
        assert status.setup_problem == cannot and "trying again in 300 s" in status.detail
        assert advice(status, ModemSettings(enabled=True)).startswith(
            f"the data link cannot run on this system ({cannot})"
        )
        # registration polls go on meanwhile; the data link waits out the backoff
        now = 300.0 * attempt
        while (deadline := manager.next_deadline()) is not None and deadline < now:
            manager.tick(deadline)
            modem.step(deadline)
        manager.tick(now)
        modem.step(now)
    # the fifth start works: online, with the first APN of the ranking every time
    assert manager.state is ModemState.ONLINE and manager.status().setup_problem == ""
    assert len(modem.starts) == 5
    assert {start.request.apn.apn for start in modem.starts} == {"internet.t-d1.de"}
    assert not [e for e in modem.events if isinstance(e, FaultDetected | ApnFailed)]


@needs_database
def test_while_the_data_link_holds_the_at_port_no_command_is_sent_and_probes_go_on() -> None:
    config = ModemConfig(
        profile=profile_by_name("simcom-sim800"), registration_poll_s=5.0, probe_interval_s=7.0
    )
    manager = ModemManager(config, provider_index(), ApnMemory())
    modem = ScriptedModem(manager, {**ANSWERS, "AT+CCID": (ICCID, "OK")})
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.ONLINE
    manager.lend_port(0.0)  # the runner does so before the data link comes up; here after, alike
    sent = len(modem.sent)
    probes = 0
    now = 0.0
    while now < 60.0:
        deadline = manager.next_deadline()
        assert deadline is not None and deadline > now  # no timer left due: no busy loop
        now = deadline
        manager.tick(now)
        while (action := manager.next_action()) is not None:
            assert not isinstance(action, SendAt), action
            if isinstance(action, ProbeData):
                probes += 1
                manager.probe_result(True, now)
    assert len(modem.sent) == sent and probes >= 7
    assert manager.state is ModemState.ONLINE
    # pppd ended by itself: the port is back, registration is asked before the next dial
    manager.port_returned(now, data_ended="the modem hung up (NO CARRIER)")
    assert manager.state is ModemState.REGISTERING and not manager.data_up
    modem.step(now)
    assert any(command.startswith("AT+CREG?") for command in modem.sent[sent:])
    assert manager.state is ModemState.ONLINE


def test_a_stale_data_result_is_taken_down() -> None:
    config = ModemConfig(profile=profile_by_name("quectel-uc20"))
    manager = ModemManager(config, provider_index(), ApnMemory())
    manager.port_opened(0.0)
    # a result for a generation that is long gone (the state changed meanwhile)
    manager.data_result(DataUp("ppp0"), 1.0, generation=-5)
    actions = []
    while (action := manager.next_action()) is not None:
        actions.append(type(action).__name__)
    assert "StopData" in actions
    assert not manager.data_up
    assert FinalResult  # imported for the scripted modem's types


@needs_database
def test_sim_swap_keeps_accounting_apart_per_iccid(tmp_path: Path) -> None:
    first = SimCard.for_network(
        "26201", iccid="89490200001234500011", working_apns=frozenset({"internet.telekom"})
    )
    second = SimCard.for_network(
        "310410", iccid="89014103211118510720", working_apns=frozenset({"broadband"})
    )

    async def main() -> None:
        async with running("quectel-ec25", first, tmp_path) as rig:
            await rig.online()
            await rig.wait(lambda s: (s.data_used_bytes or 0) >= 3000)
            rig.emu.swap_sim(second)
            status = await rig.wait(lambda s: s.online and s.iccid == second.iccid)
            assert status.apn == "broadband"
            await rig.wait(lambda s: (s.data_used_bytes or 0) >= 2000)
            usage = rig.ledger.core
            one, two = usage.usage(first.iccid), usage.usage(second.iccid)
            assert one is not None and two is not None
            assert one.rx >= 3000 and two.rx >= 2000
            # the first SIM's counter stopped at the swap
            frozen = one.rx
            await rig.wait(lambda s: (s.data_used_bytes or 0) >= two.total + 2000)
            assert usage.usage(first.iccid).rx == frozen  # type: ignore[union-attr]
        saved = json.loads((tmp_path / "accounting.json").read_bytes())
        assert set(saved["sims"]) == {first.iccid, second.iccid}

    run(main)


# Unsolicited registration lines that carry a leading <n> (issue 11, finding 1), each from
# ModemManager's src/tests/test-modem-helpers.c; the last is the status-11 variant, which
# is not usable for data and so is checked apart below.
URCS_WITH_N = [
    ("+CREG", '+CREG: 2,5,"0502","0404736D"'),  # test_creg2_md400_unsolicited
    ("+CGREG", "+CGREG: 2,1, 81ED, 1A9CEB"),  # test_cgreg2_x220_unsolicited
    ("+CREG", "+CREG: 2,1,000B,2816, B, C2816"),  # test_creg2_s8500_wave_unsolicited
    ("+CEREG", '+CEREG: 2,10,"8d83","671f98a",7'),  # issue 11: roaming, CSFB not preferred
]


@needs_database
@pytest.mark.parametrize(("name", "line"), URCS_WITH_N)
def test_online_modem_stays_online_on_registration_urcs_with_n(name: str, line: str) -> None:
    config = ModemConfig(profile=profile_by_name("quectel-ec25"), allow_roaming=True)
    manager = ModemManager(config, provider_index(), ApnMemory())
    modem = ScriptedModem(manager, ANSWERS)
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.ONLINE
    manager.at_event(UrcReceived(name, line), 1.0)
    modem.step(1.0)
    assert manager.state is ModemState.ONLINE, manager.status().detail
    assert not [a for a in modem.actions if isinstance(a, StopData)]


@needs_database
def test_online_modem_on_restricted_local_services_goes_back_to_registering_and_says_why() -> None:
    # dvrlink differs from ModemManager here on purpose: ModemManager reports status 11
    # (attached for restricted local operator services) as its own state; it carries no data,
    # so the manager takes the link down and waits for a full registration, and says why
    config = ModemConfig(profile=profile_by_name("quectel-ec25"))
    manager = ModemManager(config, provider_index(), ApnMemory())
    modem = ScriptedModem(manager, ANSWERS)
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.ONLINE
    modem.answers = {**ANSWERS, "AT+CGREG?": ("+CGREG: 2,11", "OK"), "AT+CEREG?": ("+CEREG: 2,11", "OK")}
    manager.at_event(UrcReceived("+CEREG", '+CEREG: 11,"8d83","671f98a",7'), 1.0)
    manager.at_event(UrcReceived("+CGREG", "+CGREG: 11"), 1.0)
    modem.step(1.0)
    assert manager.state is ModemState.REGISTERING
    assert [a for a in modem.actions if isinstance(a, StopData)]
    detail = manager.status().detail
    assert "restricted local operator services" in detail and "status 11" in detail


@needs_database
@pytest.mark.parametrize("stat", [9, 10])
def test_lte_modem_registered_with_csfb_not_preferred_dials(stat: int) -> None:
    config = ModemConfig(profile=profile_by_name("quectel-ec25"), allow_roaming=True)
    manager = ModemManager(config, provider_index(), ApnMemory())
    answers = {
        **ANSWERS,
        "AT+CREG?": ("+CREG: 2,0", "OK"),
        "AT+CGREG?": ("+CGREG: 2,0", "OK"),
        "AT+CEREG?": (f'+CEREG: 2,{stat},"8d83","671f98a",7', "OK"),
    }
    modem = ScriptedModem(manager, answers)
    manager.port_opened(0.0)
    modem.step(0.0)
    assert modem.starts, manager.status().detail
    assert manager.state is ModemState.ONLINE
    assert manager.status().roaming is (stat == 10)


@needs_database
@pytest.mark.parametrize(
    ("ps", "dials"),
    [("+CEREG: 2,1", True), ("+CEREG: 2,4", False)],
)
def test_sms_only_cs_registration_dials_only_with_a_ps_registration(ps: str, dials: bool) -> None:
    config = ModemConfig(profile=profile_by_name("quectel-ec25"), allow_roaming=True)
    manager = ModemManager(config, provider_index(), ApnMemory())
    answers = {
        **ANSWERS,
        "AT+CREG?": ('+CREG: 2,6,"8B37","0A265185",7', "OK"),  # test_creg2_ublox_solicited
        "AT+CGREG?": ("+CGREG: 2,4", "OK"),
        "AT+CEREG?": (ps, "OK"),
    }
    modem = ScriptedModem(manager, answers)
    manager.port_opened(0.0)
    modem.step(0.0)
    assert bool(modem.starts) is dials
    assert manager.sms_registered


@needs_database
def test_a_5g_registration_urc_dials() -> None:
    config = ModemConfig(profile=profile_by_name("quectel-ec25"))
    manager = ModemManager(config, provider_index(), ApnMemory())
    answers = {
        **ANSWERS,
        "AT+CREG?": ("+CREG: 2,2", "OK"),
        "AT+CGREG?": ("+CGREG: 2,2", "OK"),
        "AT+CEREG?": ("+CEREG: 2,2", "OK"),
    }
    modem = ScriptedModem(manager, answers)
    manager.port_opened(0.0)
    modem.step(0.0)
    assert manager.state is ModemState.REGISTERING and not modem.starts
    # test_c5greg2_unsolicited (ModemManager's src/tests/test-modem-helpers.c)
    manager.at_event(UrcReceived("+C5GREG", "+C5GREG: 1,1F00,79D903,11,6,ABCDEF"), 1.0)
    modem.step(1.0)
    assert manager.state is ModemState.ONLINE and modem.starts


# ------------------------------------------------------- +CGEV, +CFUN?, +CGDCONT? and +CGACT?


def online_ec25(answers: dict[str, tuple[str, ...]] | None = None) -> tuple[ModemManager, ScriptedModem]:
    config = ModemConfig(profile=profile_by_name("quectel-ec25"))
    manager = ModemManager(config, provider_index(), ApnMemory())
    modem = ScriptedModem(manager, {**ANSWERS, **(answers or {})})
    manager.port_opened(0.0)
    modem.step(0.0)
    return manager, modem


@needs_database
@pytest.mark.parametrize(
    "line",
    [
        "+CGEV: NW PDN DEACT 1",  # Release 8 and later
        "+CGEV: NW DEACT IP, 10.64.0.2, 1",  # earlier releases, with the optional <cid>
        "+CGEV: NW DEACT IP, 10.64.0.2",  # and without it
        "+CGEV: ME PDN DEACT 1",
        "+CGEV: NW DETACH",
    ],
)
def test_the_network_ending_the_data_context_takes_the_link_down_and_dials_again(line: str) -> None:
    manager, modem = online_ec25()
    assert manager.state is ModemState.ONLINE and len(modem.starts) == 1
    manager.at_event(UrcReceived("+CGEV", line), 5.0)
    modem.step(5.0)
    stops = [a for a in modem.actions if isinstance(a, StopData)]
    assert stops and "the data context ended" in stops[0].reason, modem.actions
    assert [e for e in modem.events if isinstance(e, DataContextEnded) and e.report == line]
    assert len(modem.starts) == 2, "no new dial after the context ended"
    assert manager.state is ModemState.ONLINE


@needs_database
@pytest.mark.parametrize(
    "line",
    [
        "+CGEV: NW PDN DEACT 3",
        "+CGEV: NW DEACT 1, 2, 0",
        "+CGEV: NW PDN ACT 1",
        "+CGEV: NW CLASS B",
        "+CGEV: ??",
    ],
)
def test_reports_about_other_contexts_or_not_ending_one_leave_the_link_up(line: str) -> None:
    manager, modem = online_ec25()
    manager.at_event(UrcReceived("+CGEV", line), 5.0)
    modem.step(5.0)
    assert manager.state is ModemState.ONLINE
    assert not [a for a in modem.actions if isinstance(a, StopData)], line


@needs_database
@pytest.mark.parametrize(("reply", "fun"), [("+CFUN: 4", 4), ("+CFUN: 0,0", 0)])
def test_a_radio_left_off_is_switched_on_before_the_sim_is_asked(reply: str, fun: int) -> None:
    manager, modem = online_ec25({"AT+CFUN?": (reply, "OK")})
    assert "AT+CFUN=1" in modem.sent, modem.sent
    assert modem.sent.index("AT+CFUN?") < modem.sent.index("AT+CFUN=1") < modem.sent.index("AT+CPIN?")
    assert [e for e in modem.events if isinstance(e, RadioSwitchedOn) and e.fun == fun]
    assert manager.state is ModemState.ONLINE


@needs_database
def test_a_radio_that_is_on_is_left_alone() -> None:
    _, modem = online_ec25({"AT+CFUN?": ("+CFUN: 1", "OK")})
    assert "AT+CFUN?" in modem.sent and "AT+CFUN=1" not in modem.sent
    assert not [e for e in modem.events if isinstance(e, RadioSwitchedOn)]


@needs_database
def test_a_modem_that_keeps_an_apn_of_its_own_fails_that_apn_and_never_starts_the_link() -> None:
    manager, modem = online_ec25({"AT+CGDCONT?": ('+CGDCONT: 1,"IP","locked.operator","0.0.0.0",0,0', "OK")})
    failed = [e for e in modem.events if isinstance(e, ApnFailed)]
    assert failed and "kept APN 'locked.operator' for context 1" in failed[0].reason, modem.events
    assert not modem.starts
    assert manager.state is not ModemState.ONLINE


@needs_database
def test_the_operator_identifier_the_network_appends_to_the_apn_is_the_same_apn() -> None:
    manager, modem = online_ec25()
    [dial] = [c for c in modem.sent if c.startswith("AT+CGDCONT=1,")]
    apn = dial.split(",")[2].strip('"')
    manager, modem = online_ec25(
        {"AT+CGDCONT?": (f'+CGDCONT: 1,"IP","{apn}.mnc001.mcc262.gprs","0.0.0.0",0,0', "OK")}
    )
    assert manager.state is ModemState.ONLINE, manager.status().detail
    assert "AT+CGDCONT?" in modem.sent


@needs_database
def test_a_dial_answered_ok_with_the_context_inactive_fails_the_apn() -> None:
    _, modem = online_ec25({"AT+CGACT?": ("+CGACT: 1,0", "OK")})
    failed = [e for e in modem.events if isinstance(e, ApnFailed)]
    assert failed and "+CGACT? shows context 1 inactive" in failed[0].reason, modem.events
    assert not modem.starts
