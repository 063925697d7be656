"""Registration lines (``+CREG``/``+CGREG``/``+CEREG``/``+C5GREG``) captured from real modems, taken
from ModemManager's ``src/tests/test-modem-helpers.c``: each row names the test function it comes
from, the line, whether it answers a ``?`` query (solicited) or arrived alone (unsolicited), and
the ``<stat>`` and ``<AcT>`` ModemManager reads from it (its ``MM_MODEM_ACCESS_TECHNOLOGY_*`` given
here as the 3GPP number; ``None`` where it reads no technology).

The line goes through the AT engine first, so that the test also shows how the engine routes it:
a solicited line is the reply to its query, an unsolicited one a URC.
"""

from __future__ import annotations

import pytest
from support.vectors import check_census

from dvrlink.modem.reply_parsers import parse_registration
from dvrlink.protocol.at_engine import AtConfig, AtEngine
from dvrlink.protocol.at_events import CommandCompleted, UrcReceived

# (source test function, line, solicited, stat, act)
VECTORS: list[tuple[str, str, bool, int, int | None]] = [
    ("test_creg1_solicited", "+CREG: 1,3", True, 3, None),
    ("test_creg1_unsolicited", "+CREG: 3", False, 3, None),
    ("test_creg2_mercury_solicited", "+CREG: 1,1,84CD,00D30173", True, 1, None),
    ("test_creg2_mercury_unsolicited", "+CREG: 1,84CD,00D30156", False, 1, None),
    ("test_creg2_sek850i_solicited", '+CREG: 2,1,"CE00","01CEAD8F"', True, 1, None),
    ("test_creg2_sek850i_unsolicited", '+CREG: 1,"CE00","00005449"', False, 1, None),
    ("test_creg2_e160g_solicited_unregistered", "+CREG: 2,0,00,0", True, 0, None),
    ("test_creg2_e160g_solicited", "+CREG: 2,1,8BE3,2BAF", True, 1, None),
    ("test_creg2_e160g_unsolicited", "+CREG: 1,8BE3,2BAF", False, 1, None),
    ("test_creg2_tm506_solicited", '+CREG: 2,1,"8BE3","00002BAF"', True, 1, None),
    ("test_creg2_xu870_unsolicited_unregistered", "+CREG: 2,,", False, 2, None),
    ("test_creg2_iridium_solicited", '+CREG:002,001,"18d8","ffff"', True, 1, None),
    ("test_creg2_no_leading_zeros_solicited", "+CREG:2,1,0001,0010", True, 1, None),
    ("test_creg2_leading_zeros_solicited", '+CREG:002,001,"0001","0010"', True, 1, None),
    ("test_creg2_no_leading_zeros_unsolicited", "+CREG: 1,0001,0010,0", False, 1, 0),
    ("test_creg2_leading_zeros_unsolicited", '+CREG: 001,"0001","0010",000', False, 1, 0),
    ("test_creg2_ublox_solicited", '+CREG: 2,6,"8B37","0A265185",7', True, 6, 7),
    ("test_creg2_ublox_unsolicited", '+CREG: 6,"8B37","0A265185",7', False, 6, 7),
    ("test_cgreg1_solicited", "+CGREG: 1,3", True, 3, None),
    ("test_cgreg1_unsolicited", "+CGREG: 3", False, 3, None),
    ("test_cgreg2_f3607gw_solicited", '+CGREG: 2,1,"8BE3","00002B5D",3', True, 1, 3),
    ("test_cgreg2_f3607gw_unsolicited", '+CGREG: 1,"8BE3","00002B5D",3', False, 1, 3),
    ("test_creg2_md400_unsolicited", '+CREG: 2,5,"0502","0404736D"', False, 5, None),
    ("test_cgreg2_md400_unsolicited", '+CGREG: 5,"0502","0404736D",2', False, 5, 2),
    ("test_creg_cgreg_multi_unsolicited", "+CREG: 5", False, 5, None),
    ("test_creg_cgreg_multi_unsolicited", "+CGREG: 0", False, 0, None),
    ("test_cgreg2_x220_unsolicited", "+CGREG: 2,1, 81ED, 1A9CEB", False, 1, None),
    # ModemManager reads no technology from the " B" field
    ("test_creg2_s8500_wave_unsolicited", "+CREG: 2,1,000B,2816, B, C2816", False, 1, None),
    ("test_creg2_gobi_weird_solicited", "+CREG: 2,1,  0 5, 2715", True, 1, None),
    ("test_cgreg2_unsolicited_with_rac", '+CGREG: 1,"1422","00000142",3,"00"', False, 1, 3),
    ("test_cereg1_solicited", "+CEREG: 1,3", True, 3, None),
    ("test_cereg1_unsolicited", "+CEREG: 3", False, 3, None),
    ("test_cereg2_solicited", "+CEREG: 2,1, 1F00, 79D903 ,7", True, 1, 7),
    ("test_cereg2_unsolicited", "+CEREG: 1, 1F00, 79D903 ,7", False, 1, 7),
    ("test_cereg2_altair_lte_solicited", "+CEREG: 1, 2, 0001, 00000100, 7", True, 2, 7),
    ("test_cereg2_altair_lte_unsolicited", "+CEREG: 2, 0001, 00000100, 7", False, 2, 7),
    ("test_cereg2_novatel_lte_solicited", "+CEREG: 2,1, 1F00, 20 ,79D903 ,7", True, 1, 7),
    ("test_cereg2_novatel_lte_unsolicited", "+CEREG: 1, 1F00, 20 ,79D903 ,7", False, 1, 7),
    ("test_cgreg2_thuraya_solicited", '+CGREG: 2, 1, "0426", "F00F"', True, 1, None),
    ("test_cgreg2_thuraya_unsolicited", '+CGREG: 1, "0426", "F00F"', False, 1, None),
    ("test_c5greg1_solicited", "+C5GREG: 1,3", True, 3, None),
    ("test_c5greg1_unsolicited", "+C5GREG: 3", False, 3, None),
    ("test_c5greg2_solicited", "+C5GREG: 2,1,1F00,79D903,11,6,ABCDEF", True, 1, 11),
    ("test_c5greg2_unsolicited", "+C5GREG: 1,1F00,79D903,11,6,ABCDEF", False, 1, 11),
]

# Not from ModemManager's tests: the forms with statuses above 5 (issue 11, findings 1-2).
EXTRA: list[tuple[str, str, bool, int, int | None]] = [
    ("issue 11: s8500 form, status 11", "+CREG: 2,11,003F,8FE3, B, C2816", False, 11, None),
    ("issue 11: roaming, CSFB not preferred", '+CEREG: 2,10,"8d83","671f98a",7', False, 10, 7),
    ("issue 11: the same, solicited", '+CEREG: 2,10,"8d83","671f98a",7', True, 10, 7),
    ("issue 11: home, CSFB not preferred", '+CEREG: 9,"8d83","671f98a",7', False, 9, 7),
]


def _route(line: str, solicited: bool) -> str:
    """The line as the engine hands it on: the reply to its query, or a URC."""
    engine = AtEngine(AtConfig())
    name = line.split(":", 1)[0]
    if solicited:
        command_id = engine.submit(f"AT{name}?", 0.0)
        engine.data_to_send()
    engine.feed(f"\r\n{line}\r\n".encode() + (b"\r\nOK\r\n" if solicited else b""), 0.0)
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    if solicited:
        [done] = [e for e in events if isinstance(e, CommandCompleted)]
        assert done.command_id == command_id and done.lines == (line,)
        return done.lines[0]
    [urc] = [e for e in events if isinstance(e, UrcReceived)]
    assert urc.name == name
    return urc.line


@pytest.mark.parametrize(("source", "line", "solicited", "stat", "act"), VECTORS + EXTRA)
def test_registration_vector(source: str, line: str, solicited: bool, stat: int, act: int | None) -> None:
    routed = _route(line, solicited)
    info = parse_registration(routed, reply=solicited)
    assert info is not None, f"{source}: {line!r} not parsed"
    assert (info.stat, info.act) == (stat, act), f"{source}: {line!r}"


@pytest.mark.parametrize(
    "line", ["+CREG: x", "+CREG:", "+CEREG: ,1", '+CGREG: "1A2B"', "+CREG: 1,2,3,4,5,6,7,8,9"]
)
def test_malformed_registration_is_none_and_never_raises(line: str) -> None:
    assert parse_registration(line, reply=False) is None or line.endswith("9")
    parse_registration(line, reply=True)


def test_census_of_modemmanager_vectors() -> None:
    check_census("test_modem_registration_vectors", [row[0] for row in VECTORS])
