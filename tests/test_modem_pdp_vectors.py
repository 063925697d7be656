"""Packet-domain, radio and operator replies captured from real modems, from ModemManager's tests:
``src/tests/test-modem-helpers.c`` (``+CGEV``, ``+CFUN?``, ``+CGDCONT=?``, ``+CGDCONT?``,
``+CGACT?``, APN comparison, ``+COPS?``, ``+CESQ``) and the Huawei plugin's
``plugins/huawei/tests/test-modem-helpers-huawei.c`` (``^SYSINFOEX``). Each row names the test
function it comes from and the value ModemManager expects; where dvrlink reads something else on
purpose, the row says why.

Replies go through the AT engine first (as the answer to their command), unsolicited lines as
URCs, then through the parser the manager uses.
"""

from __future__ import annotations

import pytest
from support.vectors import check_census

from dvrlink.modem.pdp import (
    CgevKind,
    RadioPower,
    apn_matches,
    parse_cfun,
    parse_cgact_read,
    parse_cgdcont_read,
    parse_cgdcont_test,
    parse_cgev,
)
from dvrlink.modem.radio import parse_radio_info
from dvrlink.modem.reply_parsers import cesq_to_dbm, parse_cops
from dvrlink.protocol.at_engine import AtConfig, AtEngine
from dvrlink.protocol.at_events import CommandCompleted, UrcReceived


def reply(command: str, lines: list[str]) -> tuple[str, ...]:
    """``lines`` as the engine hands them on: the information lines of ``command``'s reply."""
    engine = AtEngine(AtConfig())
    command_id = engine.submit(command, 0.0)
    engine.data_to_send()
    engine.feed(b"".join(f"\r\n{line}\r\n".encode() for line in lines) + b"\r\nOK\r\n", 0.0)
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    [done] = [e for e in events if isinstance(e, CommandCompleted)]
    assert done.command_id == command_id
    assert done.lines == tuple(lines), f"the engine kept {done.lines} of {lines}"
    return done.lines


def urc(line: str) -> str:
    engine = AtEngine(AtConfig())
    engine.feed(f"\r\n{line}\r\n".encode(), 0.0)
    events = []
    while (event := engine.next_event()) is not None:
        events.append(event)
    [got] = [e for e in events if isinstance(e, UrcReceived)]
    return got.line


# ------------------------------------------------------------------------------------ +CGEV

N = None
# (source, line, kind, pdp type, address, cid, parent cid, event type). ModemManager gives 0 for
# a field the line lacks; dvrlink gives None, so that "no context named" is not read as cid 0.
CGEV: list[tuple[str, str, CgevKind, str, str, int | None, int | None, int | None]] = [
    (
        "test_cgev_indication",
        "+CGEV: REJECT IP, 123.123.123.123",
        CgevKind.REJECT,
        "IP",
        "123.123.123.123",
        N,
        N,
        N,
    ),
    ("test_cgev_indication", "REJECT IP, 123.123.123.123", CgevKind.REJECT, "IP", "123.123.123.123", N, N, N),
    (
        "test_cgev_indication",
        "+CGEV: NW REACT IP, 123.123.123.123",
        CgevKind.NW_REACT,
        "IP",
        "123.123.123.123",
        N,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "NW REACT IP, 123.123.123.123",
        CgevKind.NW_REACT,
        "IP",
        "123.123.123.123",
        N,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "+CGEV: NW REACT IP, 123.123.123.123, 1",
        CgevKind.NW_REACT,
        "IP",
        "123.123.123.123",
        1,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "NW DEACT IP, 123.123.123.123, 1",
        CgevKind.NW_DEACT_PDP,
        "IP",
        "123.123.123.123",
        1,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "+CGEV: NW DEACT IP, 123.123.123.123",
        CgevKind.NW_DEACT_PDP,
        "IP",
        "123.123.123.123",
        N,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "NW DEACT IP, 123.123.123.123",
        CgevKind.NW_DEACT_PDP,
        "IP",
        "123.123.123.123",
        N,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "+CGEV: NW DEACT IP, 123.123.123.123, 1",
        CgevKind.NW_DEACT_PDP,
        "IP",
        "123.123.123.123",
        1,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "ME DEACT IP, 123.123.123.123, 1",
        CgevKind.ME_DEACT_PDP,
        "IP",
        "123.123.123.123",
        1,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "+CGEV: ME DEACT IP, 123.123.123.123",
        CgevKind.ME_DEACT_PDP,
        "IP",
        "123.123.123.123",
        N,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "ME DEACT IP, 123.123.123.123",
        CgevKind.ME_DEACT_PDP,
        "IP",
        "123.123.123.123",
        N,
        N,
        N,
    ),
    (
        "test_cgev_indication",
        "+CGEV: ME DEACT IP, 123.123.123.123, 1",
        CgevKind.ME_DEACT_PDP,
        "IP",
        "123.123.123.123",
        1,
        N,
        N,
    ),
    ("test_cgev_indication", "ME PDN ACT 2", CgevKind.ME_ACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "+CGEV: ME PDN ACT 2", CgevKind.ME_ACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "ME PDN ACT 2, 3", CgevKind.ME_ACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "+CGEV: ME PDN ACT 2, 3", CgevKind.ME_ACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "ME PDN ACT 2, 3, 4", CgevKind.ME_ACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "+CGEV: ME PDN ACT 2, 3, 4", CgevKind.ME_ACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "ME PDN DEACT 2", CgevKind.ME_DEACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "+CGEV: ME PDN DEACT 2", CgevKind.ME_DEACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "ME ACT 3, 2, 1", CgevKind.ME_ACT_SECONDARY, "", "", 2, 3, 1),
    ("test_cgev_indication", "+CGEV: ME ACT 3, 2, 1", CgevKind.ME_ACT_SECONDARY, "", "", 2, 3, 1),
    ("test_cgev_indication", "ME DEACT 3, 2, 1", CgevKind.ME_DEACT_SECONDARY, "", "", 2, 3, 1),
    ("test_cgev_indication", "+CGEV: ME DEACT 3, 2, 1", CgevKind.ME_DEACT_SECONDARY, "", "", 2, 3, 1),
    ("test_cgev_indication", "NW PDN ACT 2", CgevKind.NW_ACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "+CGEV: NW PDN ACT 2", CgevKind.NW_ACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "NW PDN DEACT 2", CgevKind.NW_DEACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "+CGEV: NW PDN DEACT 2", CgevKind.NW_DEACT_PRIMARY, "", "", 2, N, N),
    ("test_cgev_indication", "NW ACT 3, 2, 1", CgevKind.NW_ACT_SECONDARY, "", "", 2, 3, 1),
    ("test_cgev_indication", "+CGEV: NW ACT 3, 2, 1", CgevKind.NW_ACT_SECONDARY, "", "", 2, 3, 1),
    ("test_cgev_indication", "NW DEACT 3, 2, 1", CgevKind.NW_DEACT_SECONDARY, "", "", 2, 3, 1),
    ("test_cgev_indication", "+CGEV: NW DEACT 3, 2, 1", CgevKind.NW_DEACT_SECONDARY, "", "", 2, 3, 1),
    ("test_cgev_indication", "+CGEV: NW DETACH", CgevKind.NW_DETACH, "", "", N, N, N),
    ("test_cgev_indication", "NW DETACH", CgevKind.NW_DETACH, "", "", N, N, N),
    ("test_cgev_indication", "+CGEV: ME DETACH", CgevKind.ME_DETACH, "", "", N, N, N),
    ("test_cgev_indication", "ME DETACH", CgevKind.ME_DETACH, "", "", N, N, N),
    ("test_cgev_indication", "+CGEV: NW CLASS A", CgevKind.NW_CLASS, "", "", N, N, N),
    ("test_cgev_indication", "NW CLASS A", CgevKind.NW_CLASS, "", "", N, N, N),
    ("test_cgev_indication", "+CGEV: ME CLASS A", CgevKind.ME_CLASS, "", "", N, N, N),
    ("test_cgev_indication", "ME CLASS A", CgevKind.ME_CLASS, "", "", N, N, N),
]


@pytest.mark.parametrize(("source", "line", "kind", "pdp", "addr", "cid", "parent", "etype"), CGEV)
def test_cgev_vector(
    source: str,
    line: str,
    kind: CgevKind,
    pdp: str,
    addr: str,
    cid: int | None,
    parent: int | None,
    etype: int | None,
) -> None:
    routed = urc(line) if line.startswith("+CGEV:") else line
    event = parse_cgev(routed)
    assert event is not None, f"{source}: {line!r} not parsed"
    got = (event.kind, event.pdp_type, event.address, event.cid, event.parent_cid, event.event_type)
    assert got == (kind, pdp, addr, cid, parent, etype), f"{source}: {line!r}"


def test_which_reports_end_the_data_context() -> None:
    ends = {line for _, line, *_ in CGEV if (e := parse_cgev(line)) is not None and e.ends_context}
    assert "+CGEV: NW PDN DEACT 2" in ends and "+CGEV: NW DETACH" in ends
    assert "NW DEACT IP, 123.123.123.123" in ends and "+CGEV: ME DEACT IP, 123.123.123.123, 1" in ends
    # a secondary context's end, an activation or a class change leaves the data call up
    assert not ends & {"+CGEV: NW DEACT 3, 2, 1", "+CGEV: NW PDN ACT 2", "+CGEV: NW CLASS A"}


@pytest.mark.parametrize(
    "line", ["+CGEV:", "+CGEV: NW", "+CGEV: NW PDN DEACT x", "+CGEV: ME ACT 1,2", "garbage"]
)
def test_malformed_cgev_is_none(line: str) -> None:
    assert parse_cgev(line) is None


# ------------------------------------------------------------------------------------ +CFUN?

# (source, line, fun, power): test_cfun_generic_response's power states; test_cfun_response reads
# the number alone (19 is a vendor mode, which ModemManager's generic parser does not map)
CFUN: list[tuple[str, str, int, RadioPower]] = [
    ("test_cfun_response", "+CFUN: 1", 1, RadioPower.ON),
    ("test_cfun_response", "+CFUN: 1,0", 1, RadioPower.ON),
    ("test_cfun_response", "+CFUN: 0", 0, RadioPower.OFF),
    ("test_cfun_response", "+CFUN: 0,0", 0, RadioPower.OFF),
    ("test_cfun_response", "+CFUN: 19", 19, RadioPower.OTHER),
    ("test_cfun_response", "+CFUN: 19,0", 19, RadioPower.OTHER),
    ("test_cfun_generic_response", "+CFUN: 1", 1, RadioPower.ON),
    ("test_cfun_generic_response", "+CFUN: 1,0", 1, RadioPower.ON),
    ("test_cfun_generic_response", "+CFUN: 0", 0, RadioPower.OFF),
    ("test_cfun_generic_response", "+CFUN: 0,0", 0, RadioPower.OFF),
    ("test_cfun_generic_response", "+CFUN: 4", 4, RadioPower.LOW),
    ("test_cfun_generic_response", "+CFUN: 4,0", 4, RadioPower.LOW),
]


@pytest.mark.parametrize(("source", "line", "fun", "power"), CFUN)
def test_cfun_vector(source: str, line: str, fun: int, power: RadioPower) -> None:
    level = parse_cfun(reply("AT+CFUN?", [line]))
    assert level is not None, f"{source}: {line!r} not parsed"
    assert (level.fun, level.power) == (fun, power), f"{source}: {line!r}"


@pytest.mark.parametrize("lines", [[], ["+CFUN: x"], ["+CFUN:"], ["OK"]])
def test_cfun_without_a_number_is_none(lines: list[str]) -> None:
    assert parse_cfun(lines) is None


# ------------------------------------------------------------------------ +CGDCONT=? and ?

# (source, reply lines, [(pdp type, min cid, max cid)])
CGDCONT_TEST: list[tuple[str, list[str], list[tuple[str, int, int]]]] = [
    ("test_cgdcont_test_response_single", ['+CGDCONT: (1-10),"IP",,,(0,1),(0,1)'], [("IP", 1, 10)]),
    (
        "test_cgdcont_test_response_multiple",
        [
            '+CGDCONT: (1-10),"IP",,,(0,1),(0,1)',
            '+CGDCONT: (1-10),"IPV6",,,(0,1),(0,1)',
            '+CGDCONT: (1-10),"IPV4V6",,,(0,1),(0,1)',
        ],
        [("IP", 1, 10), ("IPV6", 1, 10), ("IPV4V6", 1, 10)],
    ),
    (
        "test_cgdcont_test_response_multiple_and_ignore",
        [
            '+CGDCONT: (1-16),"IP",,,(0-2),(0-4)',
            '+CGDCONT: (1-16),"PPP",,,(0-2),(0-4)',
            '+CGDCONT: (1-16),"IPV6",,,(0-2),(0-4)',
        ],
        [("IP", 1, 16), ("IPV6", 1, 16)],
    ),
    (
        "test_cgdcont_test_response_single_context",
        ['+CGDCONT: (1),"IP",,,(0),(0)', '+CGDCONT: (1),"IPV6",,,(0),(0)'],
        [("IP", 1, 1), ("IPV6", 1, 1)],
    ),
    (
        "test_cgdcont_test_response_thuraya",
        ['+CGDCONT: ( 1 ) , "IP" ,,, (0-2),(0-3)', '+CGDCONT: , "PPP" ,,, (0-2),(0-3)'],
        [("IP", 1, 1)],
    ),
    (
        "test_cgdcont_test_response_cinterion_phs8",
        ['+CGDCONT: (1-17,101-116),"IP",,,(0),(0-4)'],
        [("IP", 1, 17)],
    ),
]


@pytest.mark.parametrize(("source", "lines", "expected"), CGDCONT_TEST)
def test_cgdcont_test_vector(source: str, lines: list[str], expected: list[tuple[str, int, int]]) -> None:
    formats = parse_cgdcont_test(reply("AT+CGDCONT=?", lines))
    assert [(f.pdp_type, f.min_cid, f.max_cid) for f in formats] == expected, source


# (source, reply lines, [(cid, pdp type, apn)]): ModemManager's NULL APN is ""
CGDCONT_READ: list[tuple[str, list[str], list[tuple[int, str, str]]]] = [
    ("test_cgdcont_read_response_nokia", ['+CGDCONT: 1,"IP",,,0,0'], [(1, "IP", "")]),
    (
        "test_cgdcont_read_response_samsung",
        [
            '+CGDCONT: 1,"IP","nate.sktelecom.com","",0,0',
            '+CGDCONT: 2,"IP","epc.tmobile.com","",0,0',
            '+CGDCONT: 3,"IP","MAXROAM.com","",0,0',
        ],
        [(1, "IP", "nate.sktelecom.com"), (2, "IP", "epc.tmobile.com"), (3, "IP", "MAXROAM.com")],
    ),
]


@pytest.mark.parametrize(("source", "lines", "expected"), CGDCONT_READ)
def test_cgdcont_read_vector(source: str, lines: list[str], expected: list[tuple[int, str, str]]) -> None:
    contexts = parse_cgdcont_read(reply("AT+CGDCONT?", lines))
    assert [(c.cid, c.pdp_type, c.apn) for c in contexts] == expected, source


# (source, reply lines, {cid: active})
CGACT: list[tuple[str, list[str], dict[int, bool]]] = [
    ("test_cgact_read_response_none", [], {}),
    ("test_cgact_read_response_single_inactive", ["+CGACT: 1,0"], {1: False}),
    ("test_cgact_read_response_single_active", ["+CGACT: 1,1"], {1: True}),
    (
        "test_cgact_read_response_multiple",
        ["+CGACT: 1,0", "+CGACT: 4,1", "+CGACT: 5,0"],
        {1: False, 4: True, 5: False},
    ),
]


@pytest.mark.parametrize(("source", "lines", "expected"), CGACT)
def test_cgact_read_vector(source: str, lines: list[str], expected: dict[int, bool]) -> None:
    assert parse_cgact_read(reply("AT+CGACT?", lines)) == expected, source


# (source, requested, existing, match): the network may append the operator identifier
# (ModemManager's NULL is "" here: the modem reports an empty APN either way)
APN_CMP: list[tuple[str, str, str, bool]] = [
    ("test_cmp_apn_name", "", "", True),
    ("test_cmp_apn_name", "", "", True),  # existing NULL
    ("test_cmp_apn_name", "", "", True),  # requested NULL
    ("test_cmp_apn_name", "", "", True),  # both NULL
    ("test_cmp_apn_name", "m2m.com.attz", "m2m.com.attz", True),
    ("test_cmp_apn_name", "m2m.com.attz", "M2M.COM.ATTZ", True),
    ("test_cmp_apn_name", "M2M.COM.ATTZ", "m2m.com.attz", True),
    ("test_cmp_apn_name", "m2m.com.attz.mnc170.mcc310.gprs", "m2m.com.attz", False),
    ("test_cmp_apn_name", "m2m.com.attz", "m2m.com.attz.mnc170.mcc310.gprs", True),
    ("test_cmp_apn_name", "ac.vodafone.es", "ac.vodafone.es.MNC001.MCC214.GPRS", True),
    ("test_cmp_apn_name", "", "m2m.com.attz", False),
    ("test_cmp_apn_name", "m2m.com.attz", "", False),
    ("test_cmp_apn_name", "internet", "internet.test", False),
    ("test_cmp_apn_name", "INTERNET", "internet.test", False),
    ("test_cmp_apn_name", "internet.tes", "internet.test", False),
]


@pytest.mark.parametrize(("source", "requested", "existing", "match"), APN_CMP)
def test_apn_comparison_vector(source: str, requested: str, existing: str, match: bool) -> None:
    assert apn_matches(requested, existing) is match, f"{source}: {requested!r} vs {existing!r}"


# ------------------------------------------------------------------------ +COPS? and +CESQ

# (source, line, operator, AcT): ModemManager's MM_MODEM_ACCESS_TECHNOLOGY_LTE is 3GPP AcT 7
COPS: list[tuple[str, str, str, int | None]] = [
    ("test_cops_query", '+COPS: 1,0,"CHINA MOBILE"', "CHINA MOBILE", None),
    ("test_cops_query", '+COPS: 1,0,"CHINA MOBILE",7', "CHINA MOBILE", 7),
    ("test_cops_query", '+COPS: 1,2,"46000"', "46000", None),
    ("test_cops_query", '+COPS: 1,2,"46000",7', "46000", 7),
]


@pytest.mark.parametrize(("source", "line", "operator", "act"), COPS)
def test_cops_query_vector(source: str, line: str, operator: str, act: int | None) -> None:
    [routed] = reply("AT+COPS?", [line])
    assert parse_cops(routed) == (operator, act), f"{source}: {line!r}"


# (source, line, dBm): ModemManager's RSRP for LTE, RSCP for UMTS, RSSI for GSM, as the power
# the status shows (the best-known technology's)
CESQ: list[tuple[str, str, int]] = [
    ("test_cesq_response_to_signal", "+CESQ: 99,99,255,255,20,80", -61),
    ("test_cesq_response_to_signal", "+CESQ: 99,99,95,40,255,255", -26),
    ("test_cesq_response_to_signal", "+CESQ: 10,6,255,255,255,255", -101),
]


@pytest.mark.parametrize(("source", "line", "dbm"), CESQ)
def test_cesq_vector(source: str, line: str, dbm: int) -> None:
    [routed] = reply("AT+CESQ", [line])
    assert cesq_to_dbm(routed) == dbm, f"{source}: {line!r}"


# ----------------------------------------------------------------------------- ^SYSINFOEX

# (source, line, technology): ModemManager reads submode 41 (WCDMA) whatever the name says;
# dvrlink too, so the second field's "HSPA+" is not believed
SYSINFOEX: list[tuple[str, str, str]] = [
    ("test_sysinfoex", "^SYSINFOEX:2,4,5,1,,3,WCDMA,41,HSPA+", "UMTS"),
    ("test_sysinfoex", '^SYSINFOEX:2,4,5,1,,3,"WCDMA",41,"HSPA+"', "UMTS"),
    ("test_sysinfoex", '^SYSINFOEX: 2,4,5,1,0,3,"WCDMA",41,"HSPA+"', "UMTS"),
]


@pytest.mark.parametrize(("source", "line", "rat"), SYSINFOEX)
def test_sysinfoex_vector(source: str, line: str, rat: str) -> None:
    info = parse_radio_info("AT^SYSINFOEX", reply("AT^SYSINFOEX", [line]))
    assert info is not None and info.rat == rat, f"{source}: {line!r} gave {info}"


def test_sysinfoex_names_are_read_only_when_the_numbers_are_unknown() -> None:
    # submode 99 and sysmode 9 are in no table: the names are the only hint left
    info = parse_radio_info("AT^SYSINFOEX", ['^SYSINFOEX: 2,3,0,1,,9,"WCDMA",99,"HSDPA"'])
    assert info is not None and info.rat == "HSDPA"
    # a sysmode alone, no submode
    info = parse_radio_info("AT^SYSINFOEX", ["^SYSINFOEX: 2,3,0,1,,6"])
    assert info is not None and info.rat == "LTE"


VECTORS: list[tuple[str, ...]] = [
    *((v[0], v[1]) for v in CGEV),
    *((v[0], v[1]) for v in CFUN),
    *((v[0], "\n".join(v[1])) for v in CGDCONT_TEST),
    *((v[0], "\n".join(v[1])) for v in CGDCONT_READ),
    *((v[0], "\n".join(v[1])) for v in CGACT),
    *((v[0], f"{v[1]} / {v[2]}") for v in APN_CMP),
    *((v[0], v[1]) for v in COPS),
    *((v[0], v[1]) for v in CESQ),
    *((v[0], v[1]) for v in SYSINFOEX),
]
"""Every ModemManager vector of this module, as (source test function, input), for the census."""


def test_census_of_modemmanager_vectors() -> None:
    check_census("test_modem_pdp_vectors", [row[0] for row in VECTORS])
