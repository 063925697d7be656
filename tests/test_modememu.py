"""Modem emulator over a real PTY: every profile answers probe, identity, SIM and registration.

The host side writes raw AT commands and reads raw bytes (hil.modememu.wire.RawPort), so these
tests see the wire exactly and do not depend on the modem package's AT engine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hil.modememu import PROFILE_NAMES, PROFILES, ModemEmulator, SimCard
from hil.modememu.control import ControlError, apply_command
from hil.modememu.wire import RawPort

ROOT = Path(__file__).resolve().parent.parent
ICCID = "89014103211118510720"


@pytest.fixture
def no_thread_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.name.startswith("modememu")]
    assert not left, f"emulator threads left running: {left}"


@pytest.fixture
def open_emu(no_thread_left: None) -> Iterator[Callable[..., tuple[ModemEmulator, RawPort]]]:
    started: list[tuple[ModemEmulator, RawPort]] = []

    def start(
        profile: str = "generic", sim: SimCard | None = None, **kw: object
    ) -> tuple[ModemEmulator, RawPort]:
        emu = ModemEmulator(profile, sim, **kw)  # type: ignore[arg-type]
        emu.start()
        port = RawPort(emu.path)
        started.append((emu, port))
        return emu, port

    yield start
    for emu, port in started:
        port.close()
        emu.stop()


def lines(reply: bytes) -> list[str]:
    return [x for x in reply.decode("latin-1").split("\r\n") if x]


def wait_ready(port: RawPort, timeout: float = 3.0) -> None:
    """Send AT until the modem answers (it ignores input while it boots)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            port.command("AT", timeout=0.2)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def probe(port: RawPort) -> None:
    assert port.command("ATE0 V1 +CMEE=1").endswith(b"\r\nOK\r\n")


# ------------------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profile_answers_probe_identity_sim_and_registration(
    name: str, open_emu: Callable[..., tuple[ModemEmulator, RawPort]]
) -> None:
    profile = PROFILES[name]
    emu, port = open_emu(name, SimCard.for_network("26201", iccid=ICCID, spn="Telekom.de"))
    # Echo is on at power-on: the probe comes back first, then OK.
    reply = port.command("ATE0 V1 +CMEE=1")
    assert reply == b"ATE0 V1 +CMEE=1\r\r\nOK\r\n"
    assert lines(port.command("AT")) == ["OK"]  # echo now off
    assert lines(port.command("AT+CGMI")) == [profile.manufacturer, "OK"]
    assert lines(port.command("AT+CGMM")) == [profile.model, "OK"]
    assert lines(port.command("AT+CGSN")) == [profile.imei, "OK"]
    assert lines(port.command("AT+CGMR")) == [profile.revision, "OK"]
    assert lines(port.command("ATI")) == [*profile.ati, "OK"]
    assert lines(port.command("AT+CPIN?")) == ["+CPIN: READY", "OK"]
    assert lines(port.command(profile.iccid_command)) == [profile.iccid_reply_prefix + ICCID, "OK"]
    assert lines(port.command("AT+CIMI")) == ["262011234567890", "OK"]
    assert lines(port.command("AT+CRSM=176,28589,0,0,4")) == ['+CRSM: 144,0,"00000002"', "OK"]
    assert lines(port.command("AT+CSPN?")) == ['+CSPN: "Telekom.de",0', "OK"]
    assert lines(port.command("AT+CREG=2;+CGREG=2")) == ["OK"]
    creg = lines(port.command("AT+CREG?"))
    assert re.fullmatch(r'\+CREG: 2,1,"[0-9A-F]{4}","[0-9A-F]{8}"(,\d)?', creg[0]), creg
    assert lines(port.command("AT+CGREG?"))[0].startswith("+CGREG: 2,1,")
    if profile.lte:
        assert lines(port.command("AT+CEREG?")) == ["+CEREG: 0,1", "OK"]
        assert lines(port.command("AT+CESQ"))[0].startswith("+CESQ: 99,99,255,255,")
    else:  # a 2G/3G module does not know +CEREG/+CESQ
        port.send("AT+CEREG?")
        assert lines(port.read_until(b"ERROR\r\n")) == ["ERROR"]
    assert lines(port.command("AT+COPS=3,2;+COPS?"))[0].startswith('+COPS: 0,2,"26201"')
    assert lines(port.command("AT+CSQ")) == ["+CSQ: 20,99", "OK"]
    assert lines(port.command('AT+CGDCONT=1,"IP","internet.telekom"')) == ["OK"]
    assert lines(port.command("AT+CGDCONT?"))[0] == '+CGDCONT: 1,"IP","internet.telekom","0.0.0.0",0,0'
    assert lines(port.command("AT+CGATT?")) == ["+CGATT: 1", "OK"]
    assert lines(port.command("ATD*99***1#", final=b"CONNECT\r\n")) == ["CONNECT"]
    port.write(b"+++")
    assert lines(port.read_until(b"OK\r\n")) == ["OK"]
    assert lines(port.command("AT+CFUN?")) == ["+CFUN: 1", "OK"]
    assert emu.commands[0] == "ATE0 V1 +CMEE=1"


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_vendor_reset_reboots_with_boot_urcs_and_echo_back_on(
    name: str, open_emu: Callable[..., tuple[ModemEmulator, RawPort]]
) -> None:
    profile = PROFILES[name]
    emu, port = open_emu(name)
    probe(port)
    assert lines(port.command("AT+CREG=1")) == ["OK"]
    assert lines(port.command(profile.reset_command)) == ["OK"]
    if profile.boot_urcs:
        got = port.read_until(profile.boot_urcs[-1].encode() + b"\r\n", timeout=3)
        assert lines(got) == list(profile.boot_urcs)
    else:  # a generic modem says nothing when it is back: poll with AT, as an engine would
        assert port.read_for(0.01) == b""
        wait_ready(port)
    # Power-on defaults are back: echo on, URCs off, CMEE at the family's default.
    reply = port.command("AT+CREG?")
    assert reply.startswith(b"AT+CREG?\r")
    assert "+CREG: 0,1" in lines(reply)
    assert lines(port.command("AT+CMEE?"))[-2] == f"+CMEE: {profile.default_cmee}"
    assert emu.commands.count(profile.reset_command) == 1


def test_atz_turns_echo_back_on(open_emu: Callable[..., tuple[ModemEmulator, RawPort]]) -> None:
    _, port = open_emu("quectel-uc20")
    probe(port)
    assert port.command("AT") == b"\r\nOK\r\n"
    assert port.command("ATZ") == b"\r\nOK\r\n"
    assert port.command("AT") == b"AT\r\r\nOK\r\n"


@pytest.mark.parametrize(
    ("cmee", "expected"),
    [("0", "ERROR"), ("1", "+CME ERROR: 10"), ("2", "+CME ERROR: SIM not inserted")],
)
def test_cmee_formats_with_sim_absent(
    cmee: str, expected: str, open_emu: Callable[..., tuple[ModemEmulator, RawPort]]
) -> None:
    _, port = open_emu("quectel-ec25", no_sim=True)
    probe(port)
    port.command(f"AT+CMEE={cmee}")
    port.send("AT+CPIN?")
    assert lines(port.read_until(expected.encode() + b"\r\n")) == [expected]
    assert port.read_for(0.05) == b""


def test_v0_numeric_result_codes(open_emu: Callable[..., tuple[ModemEmulator, RawPort]]) -> None:
    _, port = open_emu()
    probe(port)
    assert port.command("ATV0", final=b"0\r") == b"0\r"
    assert port.command("AT+FOO", final=b"4\r") == b"4\r"
    assert port.command("ATV1") == b"\r\nOK\r\n"  # the new setting applies to its own reply


def test_sim_pin_flow_then_registration_urc(open_emu: Callable[..., tuple[ModemEmulator, RawPort]]) -> None:
    emu, port = open_emu("simcom-sim7600", SimCard(pin="1234"))
    probe(port)
    assert lines(port.command("AT+CPIN?")) == ["+CPIN: SIM PIN", "OK"]
    assert lines(port.command("AT+CREG=1;+CREG?")) == ["+CREG: 1,0", "OK"]
    port.send("AT+CIMI")
    assert lines(port.read_until(b"+CME ERROR: 11\r\n")) == ["+CME ERROR: 11"]
    port.send('AT+CPIN="0000"')
    assert lines(port.read_until(b"+CME ERROR: 16\r\n")) == ["+CME ERROR: 16"]
    port.send('AT+CPIN="1234"')
    assert lines(port.read_until(b"+CREG: 1\r\n")) == ["OK", "+CREG: 1"]
    assert lines(port.command("AT+CPIN?")) == ["+CPIN: READY", "OK"]
    assert emu.model.pin_tries == 2


def test_three_wrong_pins_lock_to_puk(open_emu: Callable[..., tuple[ModemEmulator, RawPort]]) -> None:
    _, port = open_emu(sim=SimCard(pin="1234"))
    probe(port)
    for _ in range(3):
        port.send("AT+CPIN=9999")
        port.read_until(b"+CME ERROR: 16\r\n")
    assert lines(port.command("AT+CPIN?")) == ["+CPIN: SIM PUK", "OK"]


@pytest.mark.parametrize(
    ("mcc_mnc", "mnc_length", "expected"),
    [
        ("310410", 3, '+CRSM: 144,0,"00000003"'),
        ("26201", 2, '+CRSM: 144,0,"00000002"'),
        ("26201", None, "+CRSM: 103,0"),  # old SIM: EF_AD has 3 bytes
    ],
)
def test_ef_ad_mnc_length(
    mcc_mnc: str,
    mnc_length: int | None,
    expected: str,
    open_emu: Callable[..., tuple[ModemEmulator, RawPort]],
) -> None:
    sim = SimCard.for_network(mcc_mnc)
    if mnc_length is None:
        sim = SimCard(imsi=sim.imsi, mnc_length=None)
    _, port = open_emu("generic", sim)
    probe(port)
    assert lines(port.command("AT+CRSM=176,28589,0,0,4"))[0] == expected
    assert lines(port.command("AT+CRSM=176,12258,0,0,10"))[0] == '+CRSM: 144,0,"98942000002143658709"'


def test_wrong_apn_fails_activation_and_dial_right_one_works(
    open_emu: Callable[..., tuple[ModemEmulator, RawPort]],
) -> None:
    sim = SimCard.for_network("26201", working_apns=frozenset({"internet.telekom"}))
    _, port = open_emu("quectel-ec25", sim)
    probe(port)
    port.command('AT+CGDCONT=1,"IP","internet.t-d1.de"')
    port.send("AT+CGACT=1,1")
    assert lines(port.read_until(b"+CME ERROR: 533\r\n")) == ["+CME ERROR: 533"]
    port.send("ATD*99#")
    assert lines(port.read_until(b"NO CARRIER\r\n")) == ["NO CARRIER"]
    port.send("AT+QNETDEVCTL=1,1,1")
    assert lines(port.read_until(b"+CME ERROR: 533\r\n")) == ["+CME ERROR: 533"]
    port.command('AT+CGDCONT=1,"IP","internet.telekom"')
    assert lines(port.command("AT+CGACT=1,1")) == ["OK"]
    assert lines(port.command("AT+CGPADDR=1")) == ['+CGPADDR: 1,"10.64.0.2"', "OK"]
    assert lines(port.command("AT+QNETDEVCTL=1,1,1")) == ["OK"]
    assert lines(port.command("ATD*99#", final=b"CONNECT\r\n")) == ["CONNECT"]


def test_huawei_ndisdup_reports_the_outcome_as_urc(
    open_emu: Callable[..., tuple[ModemEmulator, RawPort]],
) -> None:
    sim = SimCard.for_network("26201", working_apns=frozenset({"good.apn"}))
    _, port = open_emu("huawei-e173", sim)
    probe(port)
    port.send('AT^NDISDUP=1,1,"bad.apn"')
    assert lines(port.read_until(b'^NDISSTAT: 0,33,,"IPV4"\r\n')) == ["OK", '^NDISSTAT: 0,33,,"IPV4"']
    port.send('AT^NDISDUP=1,1,"good.apn"')
    assert lines(port.read_until(b'^NDISSTAT: 1,,,"IPV4"\r\n')) == ["OK", '^NDISSTAT: 1,,,"IPV4"']


def test_sim7600_ecm_dial(open_emu: Callable[..., tuple[ModemEmulator, RawPort]]) -> None:
    _, port = open_emu("simcom-sim7600")
    probe(port)
    assert lines(port.command("AT$QCRMCALL=1,1")) == ["$QCRMCALL: 1,V4", "OK"]


def test_cfun_cycle_drops_and_restores_registration(
    open_emu: Callable[..., tuple[ModemEmulator, RawPort]],
) -> None:
    _, port = open_emu("quectel-ec25")
    probe(port)
    port.command("AT+CEREG=1")
    port.send("AT+CFUN=0")
    assert lines(port.read_until(b"+CEREG: 0\r\n")) == ["OK", "+CEREG: 0"]
    assert lines(port.command("AT+CSQ")) == ["+CSQ: 99,99", "OK"]
    port.send("AT+CFUN=1")
    assert lines(port.read_until(b"+CEREG: 1\r\n")) == ["OK", "+CEREG: 1"]


class RecordingPath:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.send: Callable[[bytes], None] | None = None

    def connected(self, apn: str, mode: str, send: Callable[[bytes], None]) -> None:
        self.events.append(("connected", (apn, mode)))
        self.send = send

    def received(self, data: bytes) -> None:
        self.events.append(("received", data))
        if self.send is not None:
            self.send(b"~reply~")

    def disconnected(self) -> None:
        self.events.append(("disconnected", None))


def test_data_path_hook_sees_the_ppp_session(open_emu: Callable[..., tuple[ModemEmulator, RawPort]]) -> None:
    hook = RecordingPath()
    _, port = open_emu("simcom-sim800", data_path=hook)
    probe(port)
    port.command('AT+CGDCONT=1,"IP","web"')
    port.command("ATD*99#", final=b"CONNECT\r\n")
    port.write(b"~\x7e\xff\x03frame~")
    assert port.read_until(b"~reply~") == b"~reply~"
    port.write(b"+++")
    port.read_until(b"OK\r\n")
    assert hook.events[0] == ("connected", ("web", "ppp"))
    assert hook.events[1][0] == "received"
    assert hook.events[-1] == ("disconnected", None)


# ------------------------------------------------------------------------------ control and CLI


def test_control_commands_drive_the_faults(open_emu: Callable[..., tuple[ModemEmulator, RawPort]]) -> None:
    emu, port = open_emu("quectel-ec25", SimCard(iccid=ICCID))
    probe(port)
    assert apply_command(emu, "reg roaming") == "registration stat 5"
    assert '+COPS: 0,0,"Emulated Roaming",7' in lines(port.command("AT+COPS?"))
    apply_command(emu, "sim swap 8949000000000000999")
    port.read_until(b"+CPIN: READY\r\n")
    assert lines(port.command("AT+QCCID"))[0] == "+QCCID: 8949000000000000999"
    apply_command(emu, "signal lost")
    assert lines(port.command("AT+CSQ"))[0] == "+CSQ: 99,99"
    assert "sim=8949000000000000999" in apply_command(emu, "status")
    with pytest.raises(ControlError, match="help"):
        apply_command(emu, "reg sideways")
    with pytest.raises(ControlError, match="unknown command"):
        apply_command(emu, "explode")


def test_hand_run_cli_prints_pty_and_takes_commands(no_thread_left: None) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.modememu", "--profile", "quectel-ec25", "--mcc-mnc", "310410"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()  # bounded by pytest-timeout; the process prints at once
        assert first.startswith("PTY /dev/"), first
        with RawPort(first.split()[1]) as port:
            assert lines(port.command("AT+CIMI"))[-2] == "310410123456789"
            proc.stdin.write("reg denied\n")
            proc.stdin.flush()
            port.command("AT+CREG=1")
            proc.stdin.write("reg home\n")
            proc.stdin.flush()
            port.read_until(b"+CREG: 1\r\n")
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
