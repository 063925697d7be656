"""ICCID and IMEI parsing against ModemManager's vectors (issue 11, findings 4 and 5).

Each vector names the ModemManager test it comes from (src/tests/test-modem-helpers.c). The facts
and the values are theirs; the code under test is ours.
"""

from __future__ import annotations

import pytest
from support.vectors import check_census

from dvrlink.modem.apn import ApnMemory, ProviderIndex
from dvrlink.modem.manager import (
    ManagerEvent,
    ModemConfig,
    ModemManager,
    ModemState,
    SendAt,
    SimAbsent,
    SimLocked,
    SimState,
)
from dvrlink.modem.profiles import profile_by_name
from dvrlink.modem.reply_parsers import luhn_valid, parse_ef_iccid, parse_iccid, parse_imei
from dvrlink.protocol.at_events import CommandCompleted, CommandFailed
from dvrlink.protocol.at_results import parse_final

# (ModemManager test function, raw reply value, expected ICCID or None for "rejected")
ICCID_VECTORS: list[tuple[str, str, str | None]] = [
    ("test_iccid_parse_quoted_swap_19_digit", '"984402003576012594F9"', "8944200053671052499"),
    ("test_iccid_parse_unquoted_swap_20_digit", "98231420326409614067", "89324102234690160476"),
    ("test_iccid_parse_unquoted_unswapped_19_digit", "8944200053671052499F", "8944200053671052499"),
    ("test_iccid_parse_unquoted_unswapped_19_digit_no_f", "8944200053671052499", "8944200053671052499"),
    ("test_iccid_parse_quoted_unswapped_20_digit", '"89324102234690160476"', "89324102234690160476"),
    # CMCC and others use hex digits in the operator's account part: still an identity
    ("test_iccid_parse_quoted_unswapped_hex_account", '"898602F9091830030220"', "898602F9091830030220"),
    ("test_iccid_parse_quoted_unswapped_hex_account_2", '"898602C0123456789012"', "898602C0123456789012"),
    ("test_iccid_parse_short", "982314203264096", None),
    ("test_iccid_parse_invalid_chars", "98231420326pl9614067", None),
    ("test_iccid_parse_quoted_invalid_mii", '"0044200053671052499"', None),
    ("test_iccid_parse_unquoted_invalid_mii", "0044200053671052499", None),
]


@pytest.mark.parametrize(("source", "raw", "expected"), ICCID_VECTORS, ids=[v[0] for v in ICCID_VECTORS])
def test_iccid_vectors(source: str, raw: str, expected: str | None) -> None:
    # bare, and in the vendor reply forms the manager reads (+QCCID, ^ICCID, +CCID)
    assert parse_iccid((raw,)) == expected
    for prefix in ("+QCCID: ", "^ICCID: ", "+CCID: ", "+ICCID: "):
        assert parse_iccid((prefix + raw,)) == expected


def test_iccid_rules_beyond_the_vectors() -> None:
    # hex digits only in the account part (from the 7th character on), as ModemManager allows them
    assert parse_iccid(("89A602F9091830030220",)) is None
    # a swapped ICCID is only expected from a raw +CRSM read: exactly 20 characters
    assert parse_iccid(("9823142032640961406",)) is None
    assert parse_iccid(("898602c0123456789012",)) == "898602C0123456789012"
    assert parse_iccid(("+CCID: 89324102234690160476123",)) is None


def test_ef_iccid_reads_the_same_identity() -> None:
    # EF_ICCID over +CRSM is BCD with swapped nibbles; the swap of test_iccid_parse_quoted_swap_19_digit
    assert parse_ef_iccid(('+CRSM: 144,0,"984402003576012594F9"',)) == "8944200053671052499"
    # test_iccid_parse_unquoted_swap_20_digit
    assert parse_ef_iccid(('+CRSM: 144,0,"98231420326409614067"',)) == "89324102234690160476"
    # the SIM refused the read, or the data is not an ICCID
    assert parse_ef_iccid(('+CRSM: 106,130,""',)) is None
    assert parse_ef_iccid(('+CRSM: 144,0,"0044200053671052499F"',)) is None


def test_luhn() -> None:
    # ModemManager checks no Luhn digit, and none of its captured ICCIDs or IMEIs carries a
    # valid one (8944200053671052499, 89324102234690160476, 354237065082227, 356936001568843):
    # they are redacted captures. So a bad check digit is logged by the manager, never a reason
    # to drop an identity (which the accounting and the APN memory key on). The check itself:
    assert luhn_valid("490154203237518")  # IMEI example of 3GPP TS 23.003 Annex B
    assert luhn_valid("8901410321111851072")
    assert luhn_valid("89014103211118510720")
    assert not luhn_valid("8944200053671052499")
    assert not luhn_valid("354237065082227")
    assert not luhn_valid("898602F9091830030220")  # hex: no decimal check digit to verify


# (ModemManager test function, raw +CGSN reply lines, expected IMEI; "" for "not an IMEI")
IMEI_VECTORS: list[tuple[str, tuple[str, ...], str]] = [
    ("test_cdma_parse_gsn", ("354237065082227",), "354237065082227"),
    ("test_cdma_parse_gsn", ("356936001568843,NL2A62Z0N5",), "356936001568843"),
    ("test_cdma_parse_gsn", ("adsfasdfasdfasdf",), ""),
    ("test_cdma_parse_gsn", ("0x6030Cfgh",), ""),
    # CDMA ESN/MEID replies are valid for ModemManager (as ESN/MEID, not IMEI); dvrlink drives 3GPP
    # modems only and keeps an IMEI alone, so these give no IMEI, like in ModemManager.
    ("test_cdma_parse_gsn", ("0x6744775",), ""),
    ("test_cdma_parse_gsn", ("0x2214A600",), ""),
    ("test_cdma_parse_gsn", ("6030C012",), ""),
    ("test_cdma_parse_gsn", ("45317471585658170:2161753034", "0x00A1000013FB653A:0x80D9BBCA"), ""),
]


@pytest.mark.parametrize(("source", "lines", "expected"), IMEI_VECTORS)
def test_imei_vectors(source: str, lines: tuple[str, ...], expected: str) -> None:
    assert parse_imei(lines) == expected
    assert parse_imei(tuple("+CGSN: " + line for line in lines)) == expected


def test_imei_forms() -> None:
    assert parse_imei(('+CGSN: "867123456789012"',)) == "867123456789012"
    assert parse_imei(("", "867123456789012")) == "867123456789012"
    assert parse_imei(("8671234567890123",)) == ""  # 16 digits is an IMEISV, not an IMEI
    assert parse_imei(("86712345678901",)) == ""
    assert parse_imei(()) == ""


# ------------------------------------------------------------------ +CPIN? (issue 11, finding 3)


class _Modem:
    """Answers the manager's AT commands from a table (prefix -> info lines and final line)."""

    def __init__(self, manager: ModemManager, answers: dict[str, tuple[str, ...]]) -> None:
        self.manager = manager
        self.answers = answers
        self.sent: list[str] = []
        self.events: list[ManagerEvent] = []
        self.next_id = 1

    def step(self, now: float) -> None:
        self.manager.tick(now)
        while (action := self.manager.next_action()) is not None:
            if not isinstance(action, SendAt):
                continue
            command_id, self.next_id = self.next_id, self.next_id + 1
            self.sent.append(action.command)
            self.manager.at_submitted(command_id)
            *lines, final = next(
                (reply for prefix, reply in self.answers.items() if action.command.startswith(prefix)),
                ("OK",),
            )
            result = parse_final(final)
            assert result is not None
            event: CommandCompleted | CommandFailed
            if result.ok:
                event = CommandCompleted(command_id, action.command, tuple(lines), result)
            else:
                event = CommandFailed(command_id, action.command, tuple(lines), result, 1)
            self.manager.at_event(event, now)
        while (event := self.manager.next_event()) is not None:
            self.events.append(event)


def _started(cpin: tuple[str, ...]) -> tuple[ModemManager, _Modem]:
    config = ModemConfig(profile=profile_by_name("quectel-ec25"), sim_poll_s=10.0)
    manager = ModemManager(config, ProviderIndex({}), ApnMemory())
    modem = _Modem(manager, {"AT+CPIN?": cpin, "AT+QCCID": ("+QCCID: 89490200001234567890", "OK")})
    manager.port_opened(0.0)
    modem.step(0.0)
    return manager, modem


# 3GPP TS 27.007 8.3 (+CPIN) and 9.2 (+CME ERROR codes). ModemManager's own +CPIN table
# (mm-broadband-modem.c, unlock_results) maps the same texts to its MMModemLock values.
LOCKS: list[tuple[tuple[str, ...], str]] = [
    (("+CPIN: PH-NET PIN", "OK"), "network-locked"),
    (("+CPIN: PH-NET PUK", "OK"), "network-locked"),
    (("+CPIN: PH-NETSUB PIN", "OK"), "network-subset-locked"),
    (("+CPIN: PH-SP PIN", "OK"), "locked to a service provider"),
    (("+CPIN: PH-CORP PIN", "OK"), "locked to a corporate"),
    (("+CPIN: PH-SIM PIN", "OK"), "locked to one SIM"),
    (("+CPIN: PH-FSIM PIN", "OK"), "locked to the first SIM"),
    (("+CME ERROR: 40",), "network-locked"),
    (("+CME ERROR: 44",), "locked to a service provider"),
    (("+CPIN: SIM PUK", "OK"), "PUK"),
]


@pytest.mark.parametrize(("cpin", "words"), LOCKS, ids=[c[0] for c, _ in LOCKS])
def test_a_modem_lock_is_reported_as_what_it_is(cpin: tuple[str, ...], words: str) -> None:
    manager, modem = _started(cpin)
    assert manager.state is ModemState.SIM_LOCKED
    detail = manager.status().detail
    assert words in detail and "no SIM" not in detail
    assert next(e for e in modem.events if isinstance(e, SimLocked)).detail == detail
    if "PH-" in cpin[0] or cpin[0].startswith("+CME"):
        assert "unlock code" in detail and "seller" in detail


@pytest.mark.parametrize("cpin", [("+CPIN: SIM PIN2", "OK"), ("+CPIN: SIM PUK2", "OK")])
def test_pin2_does_not_lock_the_sim_for_data(cpin: tuple[str, ...]) -> None:
    # 27.007: PIN2/PUK2 is asked only after a command that needs it failed (fixed dialling and
    # the like); ModemManager ignores these locks too. The SIM is ready for data.
    manager, modem = _started(cpin)
    assert manager.state is not ModemState.SIM_LOCKED
    assert "AT+QCCID" in modem.sent


@pytest.mark.parametrize(
    "cpin", [("+CME ERROR: 100",), ("+CME ERROR: 14",), ("+CPIN: SOMETHING NEW", "OK"), ("ERROR",)]
)
def test_an_unknown_sim_state_is_unknown_and_asked_again(cpin: tuple[str, ...]) -> None:
    manager, modem = _started(cpin)
    status = manager.status()
    assert manager.state is not ModemState.SIM_ABSENT and status.sim is SimState.UNKNOWN
    assert "insert" not in status.detail and "unknown" in status.detail
    assert not [e for e in modem.events if isinstance(e, SimAbsent)]
    asked = modem.sent.count("AT+CPIN?")
    modem.answers["AT+CPIN?"] = ("+CPIN: READY", "OK")
    modem.step(10.0)
    assert modem.sent.count("AT+CPIN?") == asked + 1
    assert manager.status().sim is not SimState.UNKNOWN and "AT+QCCID" in modem.sent


@pytest.mark.parametrize("cpin", [("+CME ERROR: 10",), ("+CME ERROR: SIM not inserted",)])
def test_no_sim_is_still_no_sim(cpin: tuple[str, ...]) -> None:
    manager, _ = _started(cpin)
    assert manager.state is ModemState.SIM_ABSENT
    assert "insert one" in manager.status().detail


def test_census_of_modemmanager_vectors() -> None:
    check_census("test_modem_identity_vectors", [row[0] for row in ICCID_VECTORS + IMEI_VECTORS])
