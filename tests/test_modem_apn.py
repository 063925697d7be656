"""Auto-APN: the provider database index (real Debian file and edge-case fixtures), ranking, chooser."""

from __future__ import annotations

import logging
import time
import tracemalloc
from pathlib import Path

import pytest

from dvrlink.modem.apn import (
    DEFAULT_DATABASE,
    ApnCandidate,
    ApnChooser,
    ApnConfig,
    ApnDatabaseError,
    ApnFailure,
    ApnMemory,
    ApnMemoryFile,
    ApnSelected,
    ApnSettings,
    ApnsExhausted,
    ApnSource,
    ApnWorked,
    ProviderApn,
    ProviderIndex,
    load_index,
    mnc_length_from_ef_ad,
    rank_apns,
    split_imsi,
)

DATA = Path(__file__).parent / "data" / "apn"
FIXTURE = DATA / "providers.xml"

needs_db = pytest.mark.skipif(
    not DEFAULT_DATABASE.exists(), reason="Debian package mobile-broadband-provider-info not installed"
)


@pytest.fixture(scope="module")
def real_index() -> ProviderIndex:
    if not DEFAULT_DATABASE.exists():
        pytest.skip("Debian package mobile-broadband-provider-info not installed")
    return ProviderIndex.parse(DEFAULT_DATABASE)


def apns(entries: tuple[ProviderApn, ...]) -> list[str]:
    return [e.settings.apn for e in entries]


# ----------------------------------------------------------------------------------- real database


@needs_db
def test_parse_time_and_memory_of_real_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    tracemalloc.start()
    t0 = time.perf_counter()
    index = ProviderIndex.parse(DEFAULT_DATABASE)
    parse_s = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    cache = tmp_path / "apn-index.json"
    load_index(DEFAULT_DATABASE, cache)
    t0 = time.perf_counter()
    cached = load_index(DEFAULT_DATABASE, cache)
    cache_s = time.perf_counter() - t0
    assert len(index) > 500
    assert len(cached) == len(index)
    with capsys.disabled():
        print(
            f"\n[apn] {DEFAULT_DATABASE.stat().st_size} B database: {len(index)} networks, "
            f"parse {parse_s * 1000:.0f} ms, peak {peak / 1024:.0f} KiB traced; "
            f"cache {cache.stat().st_size} B, load {cache_s * 1000:.1f} ms"
        )


@needs_db
def test_germany_telekom_several_internet_apns_in_file_order(real_index: ProviderIndex) -> None:
    mcc, mnc, found = real_index.lookup_imsi("262011234567890", 2)
    assert (mcc, mnc) == ("262", "01")
    names = apns(found)
    # Telekom's own internet APNs come first, in file order; its MMS entry is left out.
    assert names[:5] == [
        "internet.t-d1.de",
        "internet.t-mobile",
        "internet.v6.telekom",
        "internet.telekom",
        "iot.telekom.net",
    ]
    assert all(e.usage == "internet" for e in found)
    t_mobile = found[1].settings
    assert (t_mobile.username, t_mobile.password) == ("t-mobile", "tm")
    # Congstar (an MVNO on 262-01) uses exactly the same settings: listed once.
    assert names.count("internet.t-mobile") == 1


@needs_db
def test_india_aircel_three_digit_mnc(real_index: ProviderIndex) -> None:
    mcc, mnc, found = real_index.lookup_imsi("405800123456789", 3)
    assert (mcc, mnc) == ("405", "800")
    assert apns(found)[:2] == ["aircelweb", "aircelgprs"]
    assert not any("mms" in a for a in apns(found))


@needs_db
def test_us_att_310_410_not_confused_with_310_41(real_index: ProviderIndex) -> None:
    _, mnc, found = real_index.lookup_imsi("310410123456789", 3)
    assert mnc == "410"
    names = apns(found)
    assert names[0] == "NXTGENPHONE"  # AT&T lists its data APNs as mms-internet-hipri
    assert "att.mvno" in names  # an MVNO on the same network, after AT&T's own
    assert names.index("att.mvno") > names.index("broadband")
    # The same IMSI read as a 2-digit MNC is another network, which the database does not know.
    assert real_index.lookup_imsi("310410123456789", 2)[1:] == ("41", ())
    # Unknown MNC length (old SIM without EF_AD byte 4): 310 is a 3-digit country.
    assert real_index.lookup_imsi("310410123456789", None)[1] == "410"


@needs_db
def test_argentina_722_34_and_722_341_are_separate_keys(real_index: ProviderIndex) -> None:
    assert real_index.lookup("722", "341")
    assert real_index.lookup("722", "34")
    assert real_index.lookup_imsi("722341000000001", 3)[1] == "341"
    assert real_index.lookup_imsi("722341000000001", 2)[1] == "34"


# --------------------------------------------------------------------------------- fixture database


def test_fixture_usage_filter_auth_and_primary_order() -> None:
    index = ProviderIndex.parse(FIXTURE)
    found = index.lookup("001", "01")
    # Primary first, then unmarked, then primary="false"; mms/wap dropped; no-usage kept; dedup.
    assert apns(found) == ["no-usage.testnet", "chap.testnet", "reseller.inet", "budget.inet"]
    chap = found[1]
    assert chap.settings == ApnSettings("chap.testnet", "user", "secret", "chap")
    assert chap.provider == "Testnet"
    assert found[0].usage == "internet"
    assert found[2].settings.username == "re"


def test_fixture_two_and_three_digit_mnc_collision() -> None:
    index = ProviderIndex.parse(FIXTURE)
    assert apns(index.lookup_imsi("310987000000001", 3)[2]) == ["three.digit"]
    assert apns(index.lookup_imsi("310987000000001", 2)[2]) == ["two.digit"]
    assert apns(index.lookup_imsi("310987000000001", None)[2]) == ["three.digit"]
    # Unknown length in a 2-digit country falls back to a 3-digit match when only that exists.
    assert index.lookup_imsi("001019999999999", None)[:2] == ("001", "01")


def test_missing_database_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ApnDatabaseError, match=r"not found: install mobile-broadband-provider-info"):
        ProviderIndex.parse(tmp_path / "nope.xml")
    with pytest.raises(ApnDatabaseError, match="set the APN in the config"):
        load_index(tmp_path / "nope.xml", tmp_path / "cache.json")


def test_malformed_database_names_line_and_next_step() -> None:
    with pytest.raises(ApnDatabaseError, match=r"malformed\.xml is not valid XML \(line \d+.*reinstall"):
        ProviderIndex.parse(DATA / "malformed.xml")


def test_wrong_root_element_is_refused() -> None:
    with pytest.raises(ApnDatabaseError, match=r"root element <apns>.*serviceproviders\.xml"):
        ProviderIndex.parse(DATA / "wrong_root.xml")


def test_cache_written_once_reused_and_rebuilt_when_stale(tmp_path: Path) -> None:
    db = tmp_path / "serviceproviders.xml"
    db.write_bytes(FIXTURE.read_bytes())
    cache = tmp_path / "apn-index.json"
    writes: list[Path] = []

    def writer(path: Path, data: bytes) -> None:
        writes.append(path)
        path.write_bytes(data)

    first = load_index(db, cache, writer=writer)
    second = load_index(db, cache, writer=writer)
    assert len(writes) == 1
    assert second.lookup("001", "01") == first.lookup("001", "01")
    # A new database version (different size) invalidates the cache.
    db.write_bytes(FIXTURE.read_bytes().replace(b"budget.inet", b"budget.internet"))
    third = load_index(db, cache, writer=writer)
    assert len(writes) == 2
    assert "budget.internet" in apns(third.lookup("001", "01"))


def test_corrupt_cache_is_rebuilt_with_a_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "apn-index.json"
    cache.write_bytes(b"{not json")
    with caplog.at_level(logging.WARNING):
        index = load_index(FIXTURE, cache)
    assert index.lookup("310", "98")
    assert "unreadable" in caplog.text
    assert ProviderIndex.from_bytes(cache.read_bytes())[0].lookup("310", "98")


def test_ef_ad_and_imsi_helpers() -> None:
    assert mnc_length_from_ef_ad("00000002") == 2
    assert mnc_length_from_ef_ad("00FFFF03") == 3
    assert mnc_length_from_ef_ad(bytes([0, 0, 0])) is None  # old SIM: no MNC length
    assert mnc_length_from_ef_ad("0000000F") is None
    assert split_imsi("262011234567890", 2) == ("262", "01")
    assert split_imsi("405800123456789", None) == ("405", "800")
    with pytest.raises(ValueError, match="AT\\+CIMI"):
        split_imsi("26201abc", 2)


# ---------------------------------------------------------------------------------------- ranking


P1 = ProviderApn(ApnSettings("first.apn"), "Net", "internet")
P2 = ProviderApn(ApnSettings("second.apn", "u", "p", "pap"), "Net", "internet")
MVNO = ProviderApn(ApnSettings("mvno.apn"), "Blau Mobile", "internet")


def test_rank_order_override_last_provider_network() -> None:
    ranked = rank_apns(
        override=ApnSettings("override.apn"),
        last_worked=ApnSettings("last.apn"),
        provider_apns=[P1, P2],
    )
    assert [(c.settings.apn, c.source) for c in ranked] == [
        ("override.apn", ApnSource.CONFIG),
        ("last.apn", ApnSource.LAST_WORKED),
        ("first.apn", ApnSource.PROVIDER),
        ("second.apn", ApnSource.PROVIDER),
        ("", ApnSource.NETWORK),
    ]


def test_rank_dedups_and_options() -> None:
    ranked = rank_apns(
        override=None, last_worked=P2.settings, provider_apns=[P1, P2], allow_network_apn=False
    )
    assert [c.settings.apn for c in ranked] == ["second.apn", "first.apn"]
    assert ranked[0].source is ApnSource.LAST_WORKED
    # No database entry at all: only the network's default APN.
    assert rank_apns(override=None, last_worked=None, provider_apns=()) == (
        ApnCandidate(ApnSettings(""), ApnSource.NETWORK),
    )


def test_rank_prefers_provider_matching_spn() -> None:
    ranked = rank_apns(override=None, last_worked=None, provider_apns=[P1, MVNO], spn="blau")
    assert [c.settings.apn for c in ranked][:2] == ["mvno.apn", "first.apn"]


# ---------------------------------------------------------------------------------------- chooser


def test_chooser_advances_on_failures_and_remembers_across_reload(tmp_path: Path) -> None:
    index = ProviderIndex.parse(FIXTURE)
    state = ApnMemoryFile(tmp_path / "apn.json")
    memory = state.load()
    chooser = ApnChooser.for_sim(
        iccid="8949000000000000001",
        imsi="001011234567890",
        mnc_length=2,
        index=index,
        memory=memory,
        config=ApnConfig(database=FIXTURE),
    )
    event = chooser.start()
    assert isinstance(event, ApnSelected)
    assert (event.candidate.settings.apn, event.attempt, event.total) == ("no-usage.testnet", 1, 5)
    event = chooser.failed(ApnFailure.ACTIVATION_REJECTED)
    assert isinstance(event, ApnSelected) and event.candidate.settings.apn == "chap.testnet"
    event = chooser.failed(ApnFailure.IPCP_FAILED)
    assert isinstance(event, ApnSelected) and event.candidate.settings.apn == "reseller.inet"
    worked = chooser.worked()
    assert worked == ApnWorked("8949000000000000001", event.candidate, memory_changed=True)
    state.save(memory)

    reloaded = ApnMemoryFile(tmp_path / "apn.json").load()
    again = ApnChooser.for_sim(
        iccid="8949000000000000001",
        imsi="001011234567890",
        mnc_length=2,
        index=index,
        memory=reloaded,
        config=ApnConfig(database=FIXTURE),
    )
    first = again.start()
    assert isinstance(first, ApnSelected)
    assert first.candidate.settings == ApnSettings("reseller.inet", "re", "seller")
    assert first.candidate.source is ApnSource.LAST_WORKED
    assert again.worked().memory_changed is False
    # Another SIM does not get this SIM's APN.
    other = ApnChooser.for_sim(
        iccid="8949000000000000002",
        imsi="001011234567890",
        mnc_length=2,
        index=index,
        memory=reloaded,
        config=ApnConfig(database=FIXTURE),
    ).start()
    assert isinstance(other, ApnSelected) and other.candidate.source is ApnSource.PROVIDER


def test_chooser_exhausts_then_restarts() -> None:
    chooser = ApnChooser("icc", rank_apns(override=None, last_worked=None, provider_apns=[P1]), ApnMemory())
    assert isinstance(chooser.start(), ApnSelected)
    assert isinstance(chooser.failed(ApnFailure.DIAL_FAILED), ApnSelected)  # the network APN
    done = chooser.failed(ApnFailure.PPP_FAILED)
    assert isinstance(done, ApnsExhausted)
    assert [(c.settings.apn, why) for c, why in done.tried] == [
        ("first.apn", ApnFailure.DIAL_FAILED),
        ("", ApnFailure.PPP_FAILED),
    ]
    assert chooser.current is None
    with pytest.raises(RuntimeError, match="start"):
        chooser.worked()
    again = chooser.restart()
    assert isinstance(again, ApnSelected) and again.attempt == 1


def test_config_override_goes_first() -> None:
    index = ProviderIndex.parse(FIXTURE)
    chooser = ApnChooser.for_sim(
        iccid="icc",
        imsi="001011234567890",
        mnc_length=2,
        index=index,
        memory=ApnMemory({"icc": ApnSettings("budget.inet")}),
        config=ApnConfig(database=FIXTURE, override=ApnSettings("installer.apn")),
    )
    assert [c.settings.apn for c in chooser.candidates][:3] == [
        "installer.apn",
        "budget.inet",
        "no-usage.testnet",
    ]


def test_corrupt_memory_file_is_kept_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "apn.json"
    path.write_bytes(b'{"version": 1, "apns": {"icc": {"apn": 3}}}')
    with caplog.at_level(logging.WARNING):
        memory = ApnMemoryFile(path).load()
    assert memory.last_worked("icc") is None
    assert (tmp_path / "apn.json.corrupt").exists()
    assert not path.exists()
    assert "corrupt" in caplog.text


def test_bad_auth_method_is_refused() -> None:
    with pytest.raises(ValueError, match="pap, chap"):
        ApnSettings("x", auth="mschap")
