"""The SMS parsers beyond ModemManager's vectors: text mode through the AT engine (multi-line
bodies, stored status reports, the one-line text-mode ``+CDS``), PDU fields its tests do not
reach (status report parameters, validity, invalid concatenation and time stamps, the GSM 7-bit
extension table), storage counts, and fuzzing: no input makes a parser raise."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from dvrlink.protocol.at_engine import AtConfig, AtEngine
from dvrlink.protocol.at_events import AtEvent, CommandCompleted, UrcReceived
from dvrlink.protocol.sms import (
    Deliver,
    MessageStatus,
    PduError,
    PduMessage,
    StatusReport,
    StorageIndication,
    StorageState,
    Submit,
    TextMessage,
    TextStatusReport,
    Unparsed,
    decode_pdu,
    gsm7_decode,
    parse_cds,
    parse_cmgl,
    parse_cmgr,
    parse_cmt,
    parse_cpms_query,
    parse_cpms_set,
    parse_cpms_test,
    parse_cscs_test,
    parse_storage_indication,
)

# test_pdu3 of ModemManager's test-sms-part-3gpp.c ("hellohello" from +18005551212)
_PDU3 = "07912143658709F1040B918100551512F20000111010214365000AE8329BFD4697D9EC37"
# test_parse_cds of its test-modem-helpers.c (a status report)
_PDU_CDS = "07914356060013F1065A098136395339F6219011700463802190117004638030"
_PDU_MULTIPART2 = (
    "07912160130320F6440B916171056429F5000021405291651569320500034C0202E9E8301D44479741F0B09C3E0785"
    "E56590BCCC0ED3CB6410FD0D7ABBCBA0B0FB4D4797E52E10"
)
_CET = timezone(timedelta(hours=2))


def _events(engine: AtEngine) -> list[AtEvent]:
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    return events


def _completed(command: str, data: bytes) -> tuple[CommandCompleted, list[AtEvent]]:
    engine = AtEngine(AtConfig())
    engine.submit(command, 0.0)
    engine.data_to_send()
    engine.feed(data, 0.0)
    events = _events(engine)
    done = [e for e in events if isinstance(e, CommandCompleted)]
    assert len(done) == 1, f"{command}: {events}"
    return done[0], [e for e in events if not isinstance(e, CommandCompleted)]


# -- text mode through the engine ---------------------------------------------------------------


def test_text_mode_listing_with_a_multiline_body_and_a_stored_report() -> None:
    data = (
        b'\r\n+CMGL: 1,"REC UNREAD","+31628870634",,"11/06/22,10:53:14+08"\r\n'
        b"line one\r\nline two\r\n"
        b'+CMGL: 2,"STO UNSENT","+31628870634",,\r\nsent by us\r\n'
        # a stored status report has no body line: the OK after it ends the list
        b'+CMGL: 3,"REC READ",6,4,"+31628870634",145,"11/06/22,10:53:14+08","11/06/22,10:53:20+08",0\r\n'
        b"\r\nOK\r\n"
    )
    done, others = _completed('AT+CMGL="ALL"', data)
    assert others == [], f"lines went elsewhere: {others}"
    entries = parse_cmgl(done.lines)
    assert entries == (
        TextMessage(
            1,
            MessageStatus.RECEIVED_UNREAD,
            "+31628870634",
            None,
            datetime(2011, 6, 22, 10, 53, 14, tzinfo=_CET),
            "line one\nline two",
        ),
        TextMessage(2, MessageStatus.STORED_UNSENT, "+31628870634", None, None, "sent by us"),
        TextStatusReport(
            index=3,
            status=MessageStatus.RECEIVED_READ,
            first_octet=6,
            message_reference=4,
            recipient="+31628870634",
            type_of_address=145,
            timestamp=datetime(2011, 6, 22, 10, 53, 14, tzinfo=_CET),
            discharge_time=datetime(2011, 6, 22, 10, 53, 20, tzinfo=_CET),
            report_status=0,
        ),
    ), entries


def test_text_mode_read_and_a_urc_in_the_middle() -> None:
    data = (
        b'\r\n+CMGR: "REC READ","+31628870634",,"11/06/22,10:53:14-04"\r\nHi\r\n+CMTI: "SM",4\r\n\r\nOK\r\n'
    )
    done, others = _completed("AT+CMGR=3", data)
    assert [(e.name, e.line) for e in others if isinstance(e, UrcReceived)] == [("+CMTI", '+CMTI: "SM",4')]
    entry = parse_cmgr(done.lines)
    assert isinstance(entry, TextMessage), entry
    assert (entry.index, entry.address, entry.body) == (None, "+31628870634", "Hi")
    assert entry.timestamp == datetime(2011, 6, 22, 10, 53, 14, tzinfo=timezone(timedelta(hours=-1)))


def test_text_mode_cds_is_one_line_and_the_next_urc_is_kept() -> None:
    engine = AtEngine(AtConfig())
    engine.feed(
        b'\r\n+CDS: 6,202,"+31628870634",145,"11/06/22,10:53:14+08","11/06/22,10:53:20+08",0\r\n'
        b'\r\n+CMTI: "SM",7\r\n',
        0.0,
    )
    events = _events(engine)
    assert [(e.name, e.body) for e in events if isinstance(e, UrcReceived)] == [
        ("+CDS", None),
        ("+CMTI", None),
    ]
    cds, cmti = events
    assert isinstance(cds, UrcReceived) and isinstance(cmti, UrcReceived)
    report = parse_cds(cds.line, cds.body)
    assert isinstance(report, TextStatusReport), report
    assert (report.message_reference, report.recipient, report.report_status) == (202, "+31628870634", 0)
    assert parse_storage_indication(cmti.line) == StorageIndication("+CMTI", "SM", 7)


def test_text_mode_cmt_and_cdsi() -> None:
    message = parse_cmt('+CMT: "+31628870634",,"11/06/22,10:53:14+08"', "Hello")
    assert message == TextMessage(
        None, None, "+31628870634", None, datetime(2011, 6, 22, 10, 53, 14, tzinfo=_CET), "Hello"
    )
    assert parse_storage_indication('+CDSI: "SR",2') == StorageIndication("+CDSI", "SR", 2)
    assert isinstance(parse_storage_indication('+CMTI: "SM"'), Unparsed)
    assert isinstance(parse_cmt("+CMT: ,24", None), Unparsed)


def test_pdu_mode_cmt_keeps_alpha() -> None:
    message = parse_cmt('+CMT: "Alice",35', _PDU3)
    assert message == PduMessage(None, None, "Alice", 35, _PDU3)
    decoded = message.decode()
    assert isinstance(decoded, Deliver) and decoded.text == "hellohello"


# -- storage and character sets -----------------------------------------------------------------


def test_full_sim_store_is_detected() -> None:
    state = parse_cpms_query('+CPMS: "SM",30,30,"SM",30,30,"SM",30,30')
    assert isinstance(state, StorageState) and state.full, state
    room = parse_cpms_query('+CPMS: "SM",29,30,"SM",29,30,"SM",29,30')
    assert isinstance(room, StorageState) and not room.full, room
    # a SIM with no message storage at all is not "full"
    none = parse_cpms_query('+CPMS: "SM",0,0')
    assert isinstance(none, StorageState) and not none.full and none.mem2 is None, none


def test_cpms_set_reply_and_bad_lines() -> None:
    assert parse_cpms_set("+CPMS: 3,30,3,30,3,30") == ((3, 30), (3, 30), (3, 30))
    for line in ("+CPMS: 3,30,3", "+CPMS: a,b", "+CSQ: 3,30"):
        assert isinstance(parse_cpms_set(line), Unparsed), line
    for line in ('+CPMS: "SM",1', '+CPMS: "SM",x,30', "+CPMS:"):
        assert isinstance(parse_cpms_query(line), Unparsed), line
    for line in ('+CPMS: ("SM"),("SM")', '+CPMS: ("SM,("SM"),("SM")'):
        assert isinstance(parse_cpms_test(line), Unparsed), line
    for line in ("+CSCS: ()", "+CSCS:", '+CSCS: ("IRA'):
        assert isinstance(parse_cscs_test(line), Unparsed), line


# -- PDU fields ---------------------------------------------------------------------------------


def test_status_report_with_parameters_carries_text() -> None:
    # parameter indicator 0x07: PID, DCS (GSM 7-bit) and 5 septets of user data, "hello"
    decoded = decode_pdu(_PDU_CDS + "07" + "00" + "00" + "05E8329BFD06")
    assert isinstance(decoded, StatusReport), decoded
    assert (decoded.protocol_id, decoded.text, decoded.delivered, decoded.final) == (0, "hello", False, False)
    # the same report cut inside its announced user data
    assert isinstance(decode_pdu(_PDU_CDS + "07000005E832"), PduError)


def test_submit_with_relative_validity() -> None:
    # SMS-SUBMIT, VPF relative, TP-VP 0xA7 = 12 h + 24 × 30 min
    decoded = decode_pdu("0011000B918100551512F20000A70AE8329BFD4697D9EC37")
    assert isinstance(decoded, Submit), decoded
    assert (decoded.validity, decoded.text, decoded.recipient.number) == (
        timedelta(days=1),
        "hellohello",
        "+18005551212",
    )
    for value, expected in (
        ("00", timedelta(minutes=5)),
        ("AD", timedelta(days=7)),
        ("FF", timedelta(weeks=63)),
    ):
        relative = decode_pdu(f"0011000B918100551512F20000{value}0AE8329BFD4697D9EC37")
        assert isinstance(relative, Submit) and relative.validity == expected, (value, relative)


def test_concatenation_with_part_zero_is_ignored() -> None:
    # 23.040 9.2.3.24.1: a sequence number of 0 makes the receiver ignore the element
    pdu = _PDU_MULTIPART2.replace("0500034C0202", "0500034C0200")
    decoded = decode_pdu(pdu)
    assert isinstance(decoded, Deliver) and decoded.concatenation is None, decoded
    assert decoded.user_data.header[0].identifier == 0x00
    assert decoded.text == "that the parts are related to one another. "


def test_invalid_time_stamp_keeps_the_message() -> None:
    # month 13 in the service centre time stamp
    decoded = decode_pdu(_PDU3.replace("11101021436500", "11311021436500"))
    assert isinstance(decoded, Deliver) and decoded.timestamp is None and decoded.text == "hellohello", (
        decoded
    )


def test_gsm7_extension_table() -> None:
    assert gsm7_decode([0x1B, 0x65, 0x1B, 0x3C, 0x1B, 0x3E, 0x1B, 0x14]) == "€[]^"
    # an escape before a code the extension table lacks gives the default character; a lone
    # escape at the end, a space
    assert gsm7_decode([0x1B, 0x41, 0x1B]) == "A "
    assert gsm7_decode([0x00, 0x01, 0x02, 0x24, 0x40, 0x5F, 0x60, 0x7F]) == "@£$¤¡§¿à"


def test_reserved_type_and_garbage() -> None:
    for pdu, word in (
        ("0003", "reserved message type"),
        ("07912143", "truncated"),
        ("0G", "not hex"),
        ("123", "odd number"),
        ("", "empty"),
    ):
        decoded = decode_pdu(pdu)
        assert isinstance(decoded, PduError) and word in decoded.reason, (pdu, decoded)


# -- fuzzing: a bad PDU or line is a value, never an exception -----------------------------------

_PARSERS = (
    lambda line: parse_cmgl([line, line]),
    lambda line: parse_cmgr([line, "00"]),
    lambda line: parse_cmt(line, line),
    lambda line: parse_cds(line, None),
    parse_cpms_test,
    parse_cpms_query,
    parse_cpms_set,
    parse_cscs_test,
    parse_storage_indication,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_fuzz_random_bytes_never_raise(data: bytes, with_smsc: bool) -> None:
    result = decode_pdu(data, with_smsc=with_smsc)
    assert isinstance(result, Deliver | Submit | StatusReport | PduError)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789ABCDEFabcdef \tXG", max_size=300))
def test_fuzz_random_hex_never_raises(text: str) -> None:
    assert isinstance(decode_pdu(text), Deliver | Submit | StatusReport | PduError)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=160), st.integers(min_value=0, max_value=2))
def test_fuzz_valid_heads_with_random_tails_never_raise(tail: bytes, kind: int) -> None:
    # a real SMSC and first octet, so the decoder gets past them into the message's fields
    head = bytes.fromhex("07912143658709F1") + bytes([kind | 0x40])
    assert isinstance(decode_pdu(head + tail), Deliver | Submit | StatusReport | PduError)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["+CMGL: ", "+CMGR: ", "+CMT: ", "+CDS: ", "+CPMS: ", "+CSCS: ", "+CMTI: ", "+CDSI: "]),
    st.text(alphabet='0123456789,"() ABCDEFRSMTU/:+-', max_size=80),
)
def test_fuzz_reply_lines_never_raise(prefix: str, rest: str) -> None:
    for parse in _PARSERS:
        parse(prefix + rest)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["+CMGL: ", "+CMGR: ", "+CPMS: ", "+CMTI: ", "+CDS: ", ""]), st.text(max_size=60))
def test_fuzz_any_text_never_raises(prefix: str, rest: str) -> None:
    # any Unicode: digits of other scripts, superscripts, control characters
    for parse in _PARSERS:
        parse(prefix + rest)
