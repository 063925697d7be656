"""Modem emulator faults, each injected through the Python API and observed on the PTY wire.

Waits are bounded; "nothing arrives" is checked over a short window (a reply that should be held
back for a second must not show within 0.3 s), never as a timing assertion on the emulator.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator

import pytest

from hil.modememu import ModemEmulator, SimCard
from hil.modememu.wire import RawPort

Open = Callable[..., tuple[ModemEmulator, RawPort]]


@pytest.fixture
def open_emu() -> Iterator[Open]:
    before = set(threading.enumerate())
    started: list[tuple[ModemEmulator, RawPort]] = []

    def start(
        profile: str = "quectel-ec25", sim: SimCard | None = None, **kw: object
    ) -> tuple[ModemEmulator, RawPort]:
        emu = ModemEmulator(profile, sim, **kw)  # type: ignore[arg-type]
        emu.start()
        port = RawPort(emu.path)
        started.append((emu, port))
        assert port.command("ATE0 V1 +CMEE=1").endswith(b"\r\nOK\r\n")
        return emu, port

    yield start
    for emu, port in started:
        port.close()
        emu.stop()
    left = [t for t in threading.enumerate() if t not in before and t.name.startswith("modememu")]
    assert not left, f"emulator threads left running: {left}"


def lines(reply: bytes) -> list[str]:
    return [x for x in reply.decode("latin-1").split("\r\n") if x]


def test_hang_then_resume(open_emu: Open) -> None:
    emu, port = open_emu()
    emu.hang()
    port.send("AT")
    assert port.read_for(0.3) == b""
    emu.hang(False)
    assert lines(port.command("AT")) == ["OK"]
    assert emu.commands.count("AT") == 1  # the first was read and dropped unseen, as a hung modem does


def test_garbage_bytes_arrive_then_replies_continue(open_emu: Open) -> None:
    emu, port = open_emu()
    emu.inject_garbage(b"\x00\xff\xfe~junk\r\n")
    assert port.read_until(b"junk\r\n") == b"\x00\xff\xfe~junk\r\n"
    assert lines(port.command("AT+CSQ")) == ["+CSQ: 20,99", "OK"]


def test_split_writes_come_one_byte_at_a_time(open_emu: Open) -> None:
    emu, port = open_emu()
    emu.split_writes()
    port.chunks.clear()
    reply = port.command("ATI")
    assert lines(reply) == ["Quectel", "EC25", "Revision: EC25EFAR06A06M4G", "OK"]
    # 40-odd bytes 3 ms apart: the reader sees many small reads, never the whole reply at once.
    assert len(port.chunks) > 5
    assert max(port.chunks) < len(reply)
    emu.split_writes(False)
    port.chunks.clear()
    port.command("ATI")
    assert len(port.chunks) <= 2


def test_echo_toggled_behind_the_hosts_back(open_emu: Open) -> None:
    emu, port = open_emu()
    assert port.command("AT") == b"\r\nOK\r\n"
    emu.set_echo(True)
    assert port.command("AT+CSQ") == b"AT+CSQ\r\r\n+CSQ: 20,99\r\n\r\nOK\r\n"
    emu.set_echo(False)
    assert port.command("AT") == b"\r\nOK\r\n"


def test_urc_storm_interleaves_with_a_reply(open_emu: Open) -> None:
    emu, port = open_emu()
    emu.urc_storm(500)
    port.send("AT+CGMM")
    got = port.read_until(b"\r\nOK\r\n", timeout=5)
    got += port.read_for(0.1)
    urcs = [x for x in lines(got) if x == '+QIND: "csq",20,99']
    assert len(urcs) == 500
    assert "EC25" in lines(got)


def test_late_ok_arrives_after_a_later_command(open_emu: Open) -> None:
    emu, port = open_emu()
    emu.late_reply(1.0)
    port.send("AT+CGMI")
    assert port.read_for(0.3) == b""  # an engine with a 300 ms timeout gives up here
    assert lines(port.command("AT")) == ["OK"]  # its resync is answered at once
    late = port.read_until(b"\r\nOK\r\n", timeout=3)
    assert lines(late) == ["Quectel", "OK"]


def test_reboot_mid_command_then_rdy(open_emu: Open) -> None:
    emu, port = open_emu()
    emu.reboot(mid_command=True)
    port.send("AT+COPS?")
    got = port.read_until(b"+QIND: PB DONE\r\n", timeout=3)
    assert "OK" not in lines(got)
    assert lines(got)[0] == "RDY"
    assert port.command("AT").startswith(b"AT\r")  # echo on again after the reboot


def test_reboot_now(open_emu: Open) -> None:
    emu, port = open_emu("simcom-sim800")
    emu.reboot()
    assert lines(port.read_until(b"SMS Ready\r\n")) == [
        "RDY",
        "+CFUN: 1",
        "+CPIN: READY",
        "Call Ready",
        "SMS Ready",
    ]


@pytest.mark.parametrize(
    ("profile", "removed", "inserted", "iccid_cmd", "prefix"),
    [
        ("quectel-ec25", ["+QSIMSTAT: 1,0"], ["+QSIMSTAT: 1,1", "+CPIN: READY"], "AT+QCCID", "+QCCID: "),
        (
            "simcom-sim7600",
            ["+SIMCARD: NOT AVAILABLE"],
            ["+CPIN: READY", "SMS DONE", "PB DONE"],
            "AT+CICCID",
            "+ICCID: ",
        ),
        ("huawei-mu709", ["^SIMST: 255"], ["^SIMST: 1"], "AT^ICCID?", "^ICCID: "),
        ("simcom-sim800", ["+CPIN: NOT READY"], ["+CPIN: READY", "Call Ready", "SMS Ready"], "AT+CCID", ""),
    ],
)
def test_sim_removed_inserted_swapped(
    open_emu: Open, profile: str, removed: list[str], inserted: list[str], iccid_cmd: str, prefix: str
) -> None:
    emu, port = open_emu(profile, SimCard(iccid="89490200000000000001"))
    port.command("AT+CREG=1")
    emu.remove_sim()
    assert lines(port.read_until(b"+CREG: 0\r\n")) == [*removed, "+CREG: 0"]
    port.send("AT+CPIN?")
    assert lines(port.read_until(b"+CME ERROR: 10\r\n")) == ["+CME ERROR: 10"]
    emu.insert_sim(SimCard(iccid="89490200000000000001"))
    assert lines(port.read_until(b"+CREG: 1\r\n")) == [*inserted, "+CREG: 1"]
    emu.swap_sim(SimCard(iccid="89490200000000000002", imsi="262079876543210"))
    assert lines(port.read_until(b"+CREG: 1\r\n")) == [*removed, "+CREG: 0", *inserted, "+CREG: 1"]
    assert lines(port.command(iccid_cmd))[0] == prefix + "89490200000000000002"
    assert lines(port.command("AT+CIMI"))[0] == "262079876543210"


@pytest.mark.parametrize(
    ("stat", "creg"),
    [("denied", "+CREG: 3"), ("searching", "+CREG: 2"), ("none", "+CREG: 0")],
)
def test_registration_lost_states(open_emu: Open, stat: str, creg: str) -> None:
    emu, port = open_emu()
    port.command("AT+CREG=1;+CEREG=1")
    emu.set_registration(stat)
    assert lines(port.read_until(creg.replace("CREG", "CEREG").encode() + b"\r\n")) == [
        creg,
        creg.replace("CREG", "CEREG"),
    ]
    assert lines(port.command("AT+COPS?")) == ["+COPS: 0", "OK"]
    port.send("AT+CGATT=1")
    assert lines(port.read_until(b"+CME ERROR: 30\r\n")) == ["+CME ERROR: 30"]
    port.send("ATD*99#")
    assert lines(port.read_until(b"NO CARRIER\r\n")) == ["NO CARRIER"]


def test_roaming_with_location_urc(open_emu: Open) -> None:
    emu, port = open_emu()
    port.command("AT+CREG=2")
    emu.set_registration("roaming")
    assert lines(port.read_until(b",7\r\n")) == ['+CREG: 5,"1A2B","01C3D4E5",7']
    assert lines(port.command("AT+COPS?"))[0] == '+COPS: 0,0,"Emulated Roaming",7'
    assert lines(port.command("ATD*99#", final=b"CONNECT\r\n")) == ["CONNECT"]


def test_signal_loss(open_emu: Open) -> None:
    emu, port = open_emu()
    port.command("AT+CEREG=1")
    emu.lose_signal()
    assert lines(port.read_until(b"+CEREG: 2\r\n")) == ["+CEREG: 2"]
    assert lines(port.command("AT+CSQ")) == ["+CSQ: 99,99", "OK"]
    assert lines(port.command("AT+CESQ")) == ["+CESQ: 99,99,255,255,255,255", "OK"]
    emu.set_signal(18)
    emu.set_registration("home")
    assert lines(port.read_until(b"+CEREG: 1\r\n")) == ["+CEREG: 1"]
    assert lines(port.command("AT+CSQ")) == ["+CSQ: 18,99", "OK"]


def test_dial_failure_then_success_and_carrier_drop(open_emu: Open) -> None:
    emu, port = open_emu("quectel-uc20")
    emu.fail_dials(2)
    for _ in range(2):
        port.send("ATD*99#")
        assert lines(port.read_until(b"NO CARRIER\r\n")) == ["NO CARRIER"]
    assert lines(port.command("ATD*99#", final=b"CONNECT\r\n")) == ["CONNECT"]
    emu.drop_carrier()
    assert lines(port.read_until(b"NO CARRIER\r\n")) == ["NO CARRIER"]
    assert lines(port.command("AT")) == ["OK"]  # back in command mode


def test_port_vanishes_and_comes_back_on_a_new_path(open_emu: Open) -> None:
    emu, port = open_emu()
    old = emu.path
    emu.vanish(reappear_after=0.2)
    with pytest.raises(OSError) as info:
        port.send("AT")
        port.read_until(b"OK", timeout=1)
    assert info.value.errno == errno.EIO  # what a serial read gives after a USB unplug
    new = emu.wait_for_path_change(old, timeout=5)
    assert new != old and os.path.exists(new)
    with RawPort(new) as again:
        # Power-on state after a re-enumeration: echo is on.
        assert again.command("AT") == b"AT\r\r\nOK\r\n"


def test_port_vanishes_for_good(open_emu: Open) -> None:
    emu, _port = open_emu()
    old = emu.path
    emu.vanish()
    assert emu.path == ""
    with pytest.raises(TimeoutError, match="did not come back"):
        emu.wait_for_path_change(old, timeout=0.3)


def test_wait_for_command_is_bounded(open_emu: Open) -> None:
    emu, port = open_emu()
    port.send("AT+CSQ")
    assert emu.wait_for_command("at+csq", timeout=3) == "AT+CSQ"
    with pytest.raises(TimeoutError, match="AT\\+COPS"):
        emu.wait_for_command("AT+COPS", timeout=0.2)


def test_cops_deregister_and_automatic_again(open_emu: Open) -> None:
    emu, port = open_emu("huawei-e173")
    port.command("AT+CGREG=1")
    port.send("AT+COPS=2")
    assert lines(port.read_until(b"+CGREG: 0\r\n")) == ["OK", "+CGREG: 0"]
    port.send("AT+COPS=0")
    assert lines(port.read_until(b"+CGREG: 1\r\n")) == ["OK", "+CGREG: 1"]
    emu.set_registration("denied")
    port.read_until(b"+CGREG: 3\r\n")
    port.send("AT+COPS=0")
    assert lines(port.read_until(b"+CME ERROR: 30\r\n")) == ["+CME ERROR: 30"]
