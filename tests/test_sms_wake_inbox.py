"""The SMS inbox core (sans-I/O) with made-up replies and time: its command script, the fallback to
text mode, direct +CMT, the periodic sweep, slots seen twice, and replies it cannot read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvrlink.modem.sms_wake import (
    InboxCommand,
    InboxConfig,
    InboxEvent,
    InboxProblem,
    InboxReady,
    InboxSwept,
    SmsDropped,
    SmsInbox,
    SmsSent,
    WakeRequested,
    WakeStateChanged,
)
from dvrlink.protocol.at_events import (
    CommandAborted,
    CommandCompleted,
    CommandFailed,
    CommandTimedOut,
    UrcReceived,
)
from dvrlink.protocol.at_results import FinalKind, FinalResult
from dvrlink.protocol.sms import Submit, decode_pdu, encode_deliver
from dvrlink.protocol.sms_wake import (
    DropReason,
    WakeCommand,
    WakeConfig,
    WakeMessage,
    WakeVerifier,
    encode_binary,
    encode_text,
)

BROKER = "+491701234567"
KEY = bytes(range(32))
STAMP = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
OK = FinalResult(FinalKind.OK, "OK")
ERROR = FinalResult(FinalKind.ERROR, "ERROR")


def inbox(config: InboxConfig | None = None) -> SmsInbox:
    return SmsInbox(WakeVerifier(KEY, WakeConfig(allowed_senders=frozenset({BROKER}))), config)


def ok(command: str, *lines: str) -> CommandCompleted:
    return CommandCompleted(1, command, tuple(lines), OK)


def failed(command: str) -> CommandFailed:
    return CommandFailed(1, command, (), ERROR, 1)


def events(box: SmsInbox) -> list[InboxEvent]:
    out = []
    while (event := box.next_event()) is not None:
        out.append(event)
    return out


def step(box: SmsInbox, expected: str, *lines: str, now: float = 0.0, fail: bool = False) -> None:
    command = box.next_command()
    assert command is not None and command.text == expected, command
    box.command_done(failed(command.text) if fail else ok(command.text, *lines), now)


def pdu(counter: int, sender: str = BROKER) -> str:
    return encode_deliver(sender, encode_binary(WakeMessage(WakeCommand.WAKE, counter), KEY), STAMP).hex()


def test_the_setup_script_then_a_sweep_that_reads_and_deletes_each_slot() -> None:
    box = inbox()
    box.start(0.0)
    step(box, "AT+CMGF=0")
    step(box, 'AT+CPMS="SM","SM","SM"', "+CPMS: 2,20,2,20,2,20")
    step(box, "AT+CNMI=2,1,0,0,0")
    assert events(box) == [InboxReady(text_mode=False, indications=True)]
    step(box, "AT+CPMS?", '+CPMS: "SM",2,20,"SM",2,20,"SM",2,20')
    step(box, "AT+CMGL=4", "+CMGL: 3,0,,30", pdu(1), "+CMGL: 9,1,,30", pdu(1), now=5.0)
    found = events(box)
    assert [type(e) for e in found] == [WakeStateChanged, WakeRequested, SmsDropped, InboxSwept]
    assert found[2] == SmsDropped(BROKER, DropReason.REPLAYED, "counter 1, highest 1")
    assert found[3] == InboxSwept(found=2, full=False)
    step(box, "AT+CMGD=3")
    step(box, "AT+CMGD=9")
    assert box.next_command() is None
    assert box.stats == {"read": 2, "deleted": 2, "sweeps": 1, "problems": 0}
    assert box.next_deadline() == 5.0 + 600.0


def test_a_modem_without_pdu_mode_is_read_in_text_mode() -> None:
    box = inbox()
    box.start(0.0)
    step(box, "AT+CMGF=0", fail=True)
    step(box, "AT+CMGF=1")
    step(box, 'AT+CSCS="IRA"')
    step(box, 'AT+CPMS="SM","SM","SM"')
    step(box, "AT+CNMI=2,1,0,0,0")
    step(box, "AT+CPMS?")
    wake = encode_text(WakeMessage(WakeCommand.WAKE, 4), KEY)
    eight_bit = encode_binary(WakeMessage(WakeCommand.WAKE, 5), KEY).hex().upper()
    step(
        box,
        'AT+CMGL="ALL"',
        f'+CMGL: 1,"REC UNREAD","{BROKER}",,"26/12/07,08:00:00+04"',
        wake,
        f'+CMGL: 2,"REC UNREAD","{BROKER}",,"26/12/07,08:00:00+04"',
        eight_bit,
        '+CMGL: 3,"STO UNSENT","+4930123",,',
        "an outgoing draft",
    )
    assert [e.counter for e in events(box) if isinstance(e, WakeRequested)] == [4, 5]
    assert box.text_mode


def test_setup_failures_are_reported_and_the_inbox_goes_on() -> None:
    box = inbox()
    box.start(0.0)
    step(box, "AT+CMGF=0", fail=True)
    step(box, "AT+CMGF=1", fail=True)
    step(box, 'AT+CSCS="IRA"', fail=True)
    step(box, 'AT+CPMS="SM","SM","SM"', fail=True)
    step(box, "AT+CNMI=2,1,0,0,0", fail=True)
    found = events(box)
    assert InboxReady(text_mode=True, indications=False) in found
    problems = [e.what for e in found if isinstance(e, InboxProblem)]
    assert len(problems) == 4 and "neither PDU nor text mode" in problems[0]
    assert "character set" not in problems[1] and "text bodies" in problems[1]
    assert "found by sweeps" in problems[3]
    assert box.next_command() == InboxCommand("AT+CPMS?")


def test_a_cmti_is_read_and_deleted_and_a_direct_cmt_needs_no_command() -> None:
    box = inbox(InboxConfig(sweep_interval_s=0))
    box.start(0.0)
    for command in ("AT+CMGF=0", 'AT+CPMS="SM","SM","SM"', "AT+CNMI=2,1,0,0,0", "AT+CPMS?", "AT+CMGL=4"):
        step(box, command)
    events(box)
    assert box.next_deadline() is None  # no periodic sweep
    box.urc(UrcReceived("+CMTI", '+CMTI: "SM",4'), 1.0)
    step(box, "AT+CMGR=4", "+CMGR: 0,,30", pdu(2))
    step(box, "AT+CMGD=4")
    assert [type(e) for e in events(box)] == [WakeStateChanged, WakeRequested]
    box.urc(UrcReceived("+CMT", "+CMT: ,30", pdu(3)), 2.0)
    assert box.next_command() is None
    assert [e.counter for e in events(box) if isinstance(e, WakeRequested)] == [3]


def test_a_slot_the_sweep_read_is_not_read_again_nor_deleted_twice() -> None:
    box = inbox()
    box.start(0.0)
    for command in ("AT+CMGF=0", 'AT+CPMS="SM","SM","SM"', "AT+CNMI=2,1,0,0,0", "AT+CPMS?"):
        step(box, command)
    box.urc(UrcReceived("+CMTI", '+CMTI: "SM",1'), 0.5)  # arrives while the sweep is queued
    step(box, "AT+CMGL=4", "+CMGL: 1,0,,30", pdu(7))
    step(box, "AT+CMGD=1")
    assert box.next_command() is None
    # a new message in the freed slot is read, not deleted unread
    box.urc(UrcReceived("+CMTI", '+CMTI: "SM",1'), 1.0)
    step(box, "AT+CMGR=1", "+CMGR: 0,,30", pdu(8))
    step(box, "AT+CMGD=1")
    assert [e.counter for e in events(box) if isinstance(e, WakeRequested)] == [7, 8]
    assert box.verifier.stats["replayed"] == 0


def test_the_sweep_runs_again_when_due_and_says_when_the_store_was_full() -> None:
    box = inbox(InboxConfig(sweep_interval_s=60))
    box.start(0.0)
    for command in ("AT+CMGF=0", 'AT+CPMS="SM","SM","SM"', "AT+CNMI=2,1,0,0,0", "AT+CPMS?"):
        step(box, command)
    step(box, "AT+CMGL=4", now=10.0)
    events(box)
    box.tick(69.9)
    assert box.next_command() is None
    box.tick(70.0)
    step(box, "AT+CPMS?", '+CPMS: "SM",1,1,"SM",1,1,"SM",1,1')
    step(box, "AT+CMGL=4", "+CMGL: 1,1,,30", pdu(1, sender="+4930123456"), now=70.0)
    found = events(box)
    assert InboxSwept(found=1, full=True) in found
    assert (
        SmsDropped("+4930123456", DropReason.UNKNOWN_SENDER, "sender '+4930123456' is not in the allow-list")
        in found
    )
    step(box, "AT+CMGD=1")
    assert box.next_deadline() == 130.0


@pytest.mark.parametrize(
    "outcome",
    [
        CommandTimedOut(1, "AT+CMGL=4", (), 20.0),
        CommandAborted(1, "AT+CMGL=4", "the modem restarted"),
        CommandFailed(1, "AT+CMGL=4", (), FinalResult(FinalKind.CMS_ERROR, "+CMS ERROR: 310", 310), 1),
    ],
)
def test_a_failed_sweep_is_a_problem_and_is_tried_again_later(
    outcome: CommandTimedOut | CommandAborted | CommandFailed,
) -> None:
    box = inbox()
    box.start(0.0)
    for command in ("AT+CMGF=0", 'AT+CPMS="SM","SM","SM"', "AT+CNMI=2,1,0,0,0", "AT+CPMS?"):
        step(box, command)
    assert box.next_command() == InboxCommand("AT+CMGL=4")
    box.command_done(outcome, 3.0)
    problems = [e for e in events(box) if isinstance(e, InboxProblem)]
    assert len(problems) == 1 and "AT+CMGL=4 failed" in problems[0].what
    assert box.next_deadline() == 603.0


lines = st.lists(
    st.one_of(
        st.text(max_size=80),
        st.sampled_from(["+CMGL: 1,0,,30", '+CMGL: x,"REC UNREAD"', "+CMGR: 0,,99", "00", "+CMT: ,5", "ZZ"]),
    ),
    max_size=6,
)


@settings(max_examples=300)
@given(lines, lines, st.text(max_size=60), st.one_of(st.none(), st.text(max_size=200)))
def test_replies_and_urcs_it_cannot_read_never_raise(
    listing: list[str], reading: list[str], urc_line: str, body: str | None
) -> None:
    box = inbox()
    box.start(0.0)
    for command in ("AT+CMGF=0", 'AT+CPMS="SM","SM","SM"', "AT+CNMI=2,1,0,0,0"):
        step(box, command, *listing[:1])
    step(box, "AT+CPMS?", *listing)
    step(box, "AT+CMGL=4", *listing)
    box.urc(UrcReceived("+CMT", "+CMT: " + urc_line, body), 1.0)
    box.urc(UrcReceived("+CMTI", "+CMTI: " + urc_line), 1.0)
    while (queued := box.next_command()) is not None:
        box.command_done(ok(queued.text, *reading), 2.0)
    assert all(isinstance(e, InboxEvent.__args__) for e in events(box))


def test_a_reply_is_sent_as_a_pdu_or_as_text_in_the_mode_the_modem_reads() -> None:
    box = inbox()
    box.start(0.0)
    for command in ("AT+CMGF=0", 'AT+CPMS="SM","SM","SM"', "AT+CNMI=2,1,0,0,0", "AT+CPMS?", "AT+CMGL=4"):
        step(box, command)
    box.send_sms(BROKER, "dvrlink DL-1 reg=home")
    sending = box.next_command()
    assert sending is not None and sending.payload is not None
    submit = decode_pdu(sending.payload)
    assert isinstance(submit, Submit) and (submit.recipient.number, submit.text) == (
        BROKER,
        "dvrlink DL-1 reg=home",
    )
    assert sending.text == f"AT+CMGS={len(bytes.fromhex(sending.payload)) - 1}"
    box.command_done(ok(sending.text, "+CMGS: 17"), 1.0)
    assert events(box)[-1] == SmsSent(BROKER, 17)
    text_box = inbox(InboxConfig(pdu_mode=False))
    text_box.start(0.0)
    text_box.send_sms(BROKER, "état ok")
    for expected in (
        "AT+CMGF=1",
        'AT+CSCS="IRA"',
        'AT+CPMS="SM","SM","SM"',
        "AT+CNMI=2,1,0,0,0",
        "AT+CPMS?",
        'AT+CMGL="ALL"',
    ):
        step(text_box, expected)
    assert text_box.next_command() == InboxCommand(f'AT+CMGS="{BROKER}"', "?tat ok")
    text_box.command_done(failed(f'AT+CMGS="{BROKER}"'), 1.0)
    assert "was not sent" in str(events(text_box)[-1])


def test_a_reply_that_cannot_be_sent_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="160"):
        inbox().send_sms(BROKER, "x" * 161)
    with pytest.raises(ValueError, match="not a phone number"):
        inbox().send_sms("DVRLINK", "x")


def test_an_empty_store_answered_with_cms_error_321_is_an_empty_sweep() -> None:
    box = inbox()
    box.start(0.0)
    for command in ("AT+CMGF=0", 'AT+CPMS="SM","SM","SM"', "AT+CNMI=2,1,0,0,0", "AT+CPMS?"):
        step(box, command)
    assert box.next_command() == InboxCommand("AT+CMGL=4")
    error = FinalResult(FinalKind.CMS_ERROR, "+CMS ERROR: 321", 321)
    box.command_done(CommandFailed(1, "AT+CMGL=4", (), error, 1), 1.0)
    assert events(box)[-1] == InboxSwept(found=0, full=False)
    assert box.stats["problems"] == 0


@pytest.mark.parametrize("line", ['^SMMEMFULL: "SM"', '+QIND: "smsfull",1'])
def test_a_store_full_urc_starts_a_sweep(line: str) -> None:
    box = inbox(InboxConfig(sweep_interval_s=0))
    box.start(0.0)
    for command in ("AT+CMGF=0", 'AT+CPMS="SM","SM","SM"', "AT+CNMI=2,1,0,0,0", "AT+CPMS?", "AT+CMGL=4"):
        step(box, command)
    box.urc(UrcReceived(line.split(":", maxsplit=1)[0], line), 1.0)
    step(box, "AT+CPMS?", '+CPMS: "SM",1,1,"SM",1,1,"SM",1,1')
    step(box, "AT+CMGL=4", "+CMGL: 1,1,,30", pdu(1))
    assert InboxSwept(found=1, full=True) in events(box)
    box.urc(UrcReceived("+QIND", '+QIND: "smsfull",0'), 2.0)  # room again: nothing to do
    step(box, "AT+CMGD=1")
    assert box.next_command() is None
