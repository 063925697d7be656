"""The modem emulator's short messages over a real PTY: the SIM store, +CPMS, text and PDU mode,
+CNMI routing (+CMT direct, +CMTI stored), +CMGR/+CMGL/+CMGD, a full store, a text-only modem,
and the control commands that inject messages.

The host side writes raw AT commands (hil.modememu.wire.RawPort) and reads what comes back with the
modem package's parsers (dvrlink.protocol.sms), so both ends are checked against each other.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvrlink.protocol.sms import (
    Deliver,
    MessageStatus,
    PduMessage,
    StorageIndication,
    StorageState,
    TextMessage,
    decode_pdu,
    encode_submit,
    parse_cmgl,
    parse_cmgr,
    parse_cmt,
    parse_cpms_query,
    parse_storage_indication,
)
from hil.modememu import ModemEmulator, SimCard, get_profile
from hil.modememu.control import ControlError, apply_command
from hil.modememu.model import ModemModel, NetworkDelays, SentSms
from hil.modememu.sms import IncomingSms
from hil.modememu.wire import RawPort

SENDER = "+491701234567"
STAMP = datetime(2026, 12, 7, 8, 30, 5, tzinfo=timezone(timedelta(hours=1)))
OpenEmu = Callable[..., tuple[ModemEmulator, RawPort]]


@pytest.fixture
def open_emu() -> Iterator[OpenEmu]:
    started: list[tuple[ModemEmulator, RawPort]] = []

    def start(
        profile: str = "quectel-ec25", capacity: int = 5, text_only: bool = False
    ) -> tuple[ModemEmulator, RawPort]:
        emu_profile = get_profile(profile)
        if text_only:
            emu_profile = replace(emu_profile, sms_text_only=True)
        emu = ModemEmulator(emu_profile, SimCard(sms_capacity=capacity))
        emu.start()
        port = RawPort(emu.path)
        started.append((emu, port))
        assert port.command("ATE0 V1 +CMEE=1").endswith(b"OK\r\n")
        return emu, port

    yield start
    for emu, port in started:
        port.close()
        emu.stop()


def info(reply: bytes) -> list[str]:
    """The lines of a reply before its final OK."""
    lines = [x for x in reply.decode("latin-1").split("\r\n") if x]
    assert lines[-1] == "OK", lines
    return lines[:-1]


def failure(port: RawPort, command: str) -> str:
    port.send(command)
    reply = port.read_until(b"ERROR", timeout=3).decode()
    return reply + port.read_until(b"\r\n").decode()


def indication(port: RawPort) -> StorageIndication:
    port.read_until(b"+CMTI: ", timeout=5)
    parsed = parse_storage_indication("+CMTI: " + port.read_until(b"\r\n").decode().strip())
    assert isinstance(parsed, StorageIndication), parsed
    return parsed


def storage(port: RawPort) -> StorageState:
    state = parse_cpms_query(info(port.command("AT+CPMS?"))[0])
    assert isinstance(state, StorageState), state
    return state


def test_pdu_mode_stores_indicates_reads_lists_and_deletes(open_emu: OpenEmu) -> None:
    emu, port = open_emu()
    assert info(port.command("AT+CMGF=0;+CNMI=2,1,0,0,0")) == []
    assert info(port.command('AT+CPMS="SM","SM","SM"')) == ["+CPMS: 0,5,0,5,0,5"]
    emu.receive_sms(SENDER, "wake up [now] €", timestamp=STAMP)
    assert indication(port) == StorageIndication("+CMTI", "SM", 1)
    entry = parse_cmgr(info(port.command("AT+CMGR=1")))
    assert isinstance(entry, PduMessage) and entry.status is MessageStatus.RECEIVED_UNREAD
    pdu = entry.decode()
    assert isinstance(pdu, Deliver)
    assert (pdu.sender.number, pdu.text, pdu.timestamp) == (SENDER, "wake up [now] €", STAMP)
    assert len(bytes.fromhex(entry.pdu)) - 1 == entry.length  # the TPDU length leaves out the SMSC field
    emu.receive_sms("DVRLINK", b"\x00\x01\xfe\xff", timestamp=STAMP)
    assert indication(port).index == 2
    listed = parse_cmgl(info(port.command("AT+CMGL=4")))
    assert [(e.index, e.status) for e in listed if isinstance(e, PduMessage)] == [
        (1, MessageStatus.RECEIVED_READ),  # read by +CMGR
        (2, MessageStatus.RECEIVED_UNREAD),
    ]
    second = listed[1]
    assert isinstance(second, PduMessage)
    data = decode_pdu(second.pdu)
    assert isinstance(data, Deliver) and data.user_data.data == b"\x00\x01\xfe\xff"
    assert data.sender.number == "DVRLINK" and data.sender.alphanumeric
    assert info(port.command("AT+CMGL")) == []  # nothing unread after the listing
    assert storage(port).mem1.used == 2
    assert info(port.command("AT+CMGD=1")) == []
    assert storage(port).mem1.used == 1
    assert info(port.command("AT+CMGR=1")) == []  # an empty slot
    assert info(port.command("AT+CMGD=0,4")) == []
    assert storage(port).mem1.used == 0


def test_text_mode_prints_sender_time_and_body_with_8_bit_data_in_hex(open_emu: OpenEmu) -> None:
    emu, port = open_emu("simcom-sim800")
    assert info(port.command("AT+CMGF=1")) == []
    emu.receive_sms(SENDER, "DW1:ABCDEF", timestamp=STAMP)
    assert indication(port).index == 1
    emu.receive_sms(SENDER, b"DW\x01", timestamp=STAMP)
    assert indication(port).index == 2
    first = parse_cmgr(info(port.command("AT+CMGR=1")))
    assert isinstance(first, TextMessage)
    assert (first.status, first.address, first.timestamp, first.body) == (
        MessageStatus.RECEIVED_UNREAD,
        SENDER,
        STAMP,
        "DW1:ABCDEF",
    )
    listed = parse_cmgl(info(port.command('AT+CMGL="ALL"')))
    assert [(e.index, e.body) for e in listed if isinstance(e, TextMessage)] == [
        (1, "DW1:ABCDEF"),
        (2, "445701"),
    ]
    assert "+CMS ERROR: 305" in failure(port, 'AT+CMGL="SOMETIMES"')


@pytest.mark.parametrize("text_mode", [False, True])
def test_cnmi_2_2_shows_the_message_at_once_without_storing_it(open_emu: OpenEmu, text_mode: bool) -> None:
    emu, port = open_emu()
    assert info(port.command(f"AT+CMGF={int(text_mode)};+CNMI=2,2,0,0,0")) == []
    assert info(port.command("AT+CNMI?")) == ["+CNMI: 2,2,0,0,0"]
    emu.receive_sms(SENDER, "hello", timestamp=STAMP)
    port.read_until(b"+CMT: ", timeout=3)
    head = "+CMT: " + port.read_until(b"\r\n").decode().strip()
    body = port.read_until(b"\r\n").decode().strip()
    message = parse_cmt(head, body)
    if text_mode:
        assert isinstance(message, TextMessage) and (message.address, message.body) == (SENDER, "hello")
    else:
        assert isinstance(message, PduMessage)
        pdu = message.decode()
        assert isinstance(pdu, Deliver) and (pdu.sender.number, pdu.text) == (SENDER, "hello")
    assert storage(port).mem1.used == 0


def test_cnmi_mode_0_stores_without_a_word(open_emu: OpenEmu) -> None:
    emu, port = open_emu()
    assert info(port.command("AT+CNMI=0,1,0,0,0")) == []
    emu.receive_sms(SENDER, "quiet", timestamp=STAMP)
    assert storage(port).mem1.used == 1  # the reply has no +CMTI before it: info() would have seen it


def test_a_full_store_holds_new_messages_at_the_network_until_one_is_deleted(open_emu: OpenEmu) -> None:
    emu, port = open_emu(capacity=3)
    assert emu.fill_sms_store() == 3
    assert storage(port).full
    emu.receive_sms(SENDER, "urgent", timestamp=STAMP)
    emu.receive_sms(SENDER, "second", timestamp=STAMP)
    assert emu.sms_counts() == (3, 3, 2)
    assert emu.model.sms_rejected >= 1
    assert info(port.command("AT")) == []  # no +CMTI came for either
    port.send("AT+CMGD=2")
    assert port.read_until(b"OK\r\n").strip() == b"OK"
    assert indication(port) == StorageIndication("+CMTI", "SM", 2)
    entry = parse_cmgr(info(port.command("AT+CMGR=2")))
    assert isinstance(entry, PduMessage)
    pdu = entry.decode()
    assert isinstance(pdu, Deliver) and pdu.text == "urgent"
    assert emu.sms_counts() == (3, 3, 1)
    port.send("AT+CMGD=1,4")
    port.read_until(b"OK\r\n")
    assert indication(port).index == 1
    assert emu.sms_counts() == (1, 3, 0)


def test_a_text_only_modem_refuses_pdu_mode(open_emu: OpenEmu) -> None:
    emu, port = open_emu("simcom-sim800", text_only=True)
    assert info(port.command("AT+CMGF?")) == ["+CMGF: 1"]
    assert info(port.command("AT+CMGF=?")) == ["+CMGF: (1)"]
    port.send("AT+CMGF=0")
    assert port.read_until(b"\r\n", timeout=3) + port.read_until(b"\r\n") == b"\r\nERROR\r\n"
    emu.receive_sms(SENDER, "still text", timestamp=STAMP)
    assert indication(port).index == 1
    entry = parse_cmgr(info(port.command("AT+CMGR=1")))
    assert isinstance(entry, TextMessage) and entry.body == "still text"
    assert info(port.command("ATZ E0")) == []
    assert info(port.command("AT+CMGF?")) == ["+CMGF: 1"]  # text mode is what it comes back to


def test_sms_errors_are_cms_errors(open_emu: OpenEmu) -> None:
    emu, port = open_emu(capacity=5)
    assert "+CMS ERROR: 321" in failure(port, "AT+CMGR=6")
    assert "+CMS ERROR: 321" in failure(port, "AT+CMGD=0")
    assert "+CMS ERROR: 302" in failure(port, 'AT+CPMS="ME"')
    assert "+CMS ERROR: 304" in failure(port, "AT+CMGL=7")
    emu.remove_sim()
    assert "+CMS ERROR: 310" in failure(port, "AT+CMGR=1")


def test_messages_wait_at_the_network_while_the_modem_is_in_flight_mode(open_emu: OpenEmu) -> None:
    emu, port = open_emu()
    assert info(port.command("AT+CFUN=4")) == []
    emu.receive_sms(SENDER, "later", timestamp=STAMP)
    assert emu.sms_counts() == (0, 5, 1)
    port.send("AT+CFUN=1")
    port.read_until(b"OK\r\n")
    assert indication(port).index == 1
    assert info(port.command("AT+CFUN=4")) == []
    emu.receive_sms(SENDER, "after a restart", timestamp=STAMP)
    emu.reboot()  # flight mode is forgotten: the network finds the modem again after its restart
    assert indication(port).index == 2


def test_control_commands_inject_messages(open_emu: OpenEmu) -> None:
    emu, port = open_emu(capacity=4)
    answer = apply_command(emu, f"sms {SENDER} hello there")
    assert re.fullmatch(r"SMS from \+491701234567 delivered; store 1/4, 0 held at the network", answer)
    assert indication(port).index == 1
    apply_command(emu, f"sms8 {SENDER} 4457 01")
    assert indication(port).index == 2
    assert apply_command(emu, "smsfill") == "2 filler messages stored; store 4/4"
    assert "sms=4/4+0" in apply_command(emu, "status")
    listed = parse_cmgl(info(port.command("AT+CMGL=4")))
    texts = [
        m.text if isinstance(m, Deliver) else m
        for e in listed
        if isinstance(e, PduMessage)
        for m in [e.decode()]
    ]
    assert texts[0] == "hello there" and texts[2:] == ["filler 1", "filler 2"]
    with pytest.raises(ControlError, match="help"):
        apply_command(emu, "sms8 +4917 nothex")
    with pytest.raises(ControlError, match="help"):
        apply_command(emu, f"sms {SENDER} " + "x" * 161)


def test_cmgs_sends_in_text_and_pdu_mode_and_esc_cancels(open_emu: OpenEmu) -> None:
    emu, port = open_emu()
    assert info(port.command("AT+CMGF=1")) == []
    port.send(f'AT+CMGS="{SENDER}"')
    port.read_until(b"> ")
    port.write(b"status: online\x1a")
    assert info(port.read_until(b"OK\r\n")) == ["+CMGS: 1"]
    port.send(f'AT+CMGS="{SENDER}"')
    port.read_until(b"> ")
    port.write(b"never mind\x1b")
    assert info(port.read_until(b"OK\r\n")) == []
    assert info(port.command("AT+CMGF=0")) == []
    encoded = encode_submit(SENDER, b"\x01\x02", validity_minutes=5)
    port.send(f"AT+CMGS={encoded.tpdu_length}")
    port.read_until(b"> ")
    port.write(encoded.hex().encode() + b"\x1a")
    assert info(port.read_until(b"OK\r\n")) == ["+CMGS: 2"]
    assert emu.sent_sms() == [SentSms(SENDER, "status: online", 1), SentSms(SENDER, b"\x01\x02", 2)]
    port.send(f"AT+CMGS={encoded.tpdu_length + 1}")  # a length that is not the TPDU's
    port.read_until(b"> ")
    port.write(encoded.hex().encode() + b"\x1a")
    assert b"+CMS ERROR: 304" in port.read_until(b"\r\n+CMS ERROR: 304\r\n")
    emu.set_registration("searching")
    assert "+CMS ERROR: 331" in failure(port, "AT+CMGS=20")
    assert len(emu.sent_sms()) == 2


sms_commands = st.one_of(
    st.builds(
        "{}{}".format,
        st.sampled_from(["AT+CMGR", "AT+CMGL", "AT+CMGD", "AT+CPMS", "AT+CNMI", "AT+CMGF", "AT+CMGS"]),
        st.one_of(
            st.sampled_from(
                ["", "?", "=?", "=", "=1", "=0,4", '="ALL"', '="SM"', "=99999999999", "=2,2", "=,"]
            ),
            st.text(alphabet='=?,"0123456789ASMLRE ', max_size=12),
        ),
    ),
    st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(sms_commands, st.booleans()), max_size=12))
def test_any_sms_command_gets_a_final_result_and_never_breaks_the_model(
    script: list[tuple[str, bool]],
) -> None:
    written = bytearray()
    model = ModemModel(
        get_profile("quectel-ec25"), SimCard(sms_capacity=3), written.extend, lambda _d, _f: None
    )
    model.settings.echo = False
    final = re.compile(rb"\r\n(OK|ERROR|\+CM[ES] ERROR: \d+)\r\n|\r\n> $")  # URCs may follow an OK
    for command, deliver in script:
        if deliver:
            model.receive_sms(IncomingSms(SENDER, command[:100], STAMP))
        line = command.replace("\r", "")
        before = len(written)
        model.feed(line.encode("latin-1") + b"\r")
        plain = not any(c in line for c in "\x08\x1a\x1b\n")
        if plain and line.strip(" \t\x00").upper().startswith("AT"):
            assert final.search(bytes(written[before:])), (line, bytes(written[before:]))
        model.feed(b"\x1b\r")  # leaves a > prompt, if one was opened (else a line that is no command)
    assert model.sms_store.used <= 3
    model.feed(b"AT\r")
    assert written.endswith(b"\r\nOK\r\n"), bytes(written[-200:])


def test_network_delays_hold_back_attach_pdp_activation_and_sms_delivery(open_emu: OpenEmu) -> None:
    emu, port = open_emu()
    assert apply_command(emu, "delays 0.2 0.3 0.25") == "attach 0.2 s, PDP activation 0.3 s, SMS 0.25 s"
    assert info(port.command('AT+CGDCONT=1,"IP","internet"')) == []
    assert info(port.command("AT+CGATT=1")) == []  # already attached: no delay
    assert info(port.command("AT+CGATT=0")) == []
    for command, least in (("AT+CGATT=1", 0.2), ("AT+CGACT=1,1", 0.3)):
        started = time.monotonic()
        assert info(port.command(command, timeout=5)) == []
        assert time.monotonic() - started >= least, command
    started = time.monotonic()
    emu.receive_sms(SENDER, "slow network", timestamp=STAMP)
    assert emu.sms_counts() == (0, 5, 0)  # still at the service centre
    assert indication(port).index == 1
    assert time.monotonic() - started >= 0.25
    with pytest.raises(ValueError, match="0-600"):
        NetworkDelays(pdp_activation_s=-1)
