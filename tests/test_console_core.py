"""The console core without I/O: bytes and made-up time in, events and bytes out.

Each command in both modes, the line discipline (echo, backspace, Ctrl-C, escape sequences),
version negotiation, the PIN lock and its rate limit on a fake clock, and each kind of bad input:
a line of garbage, binary noise, an over-long line, a wrong baud rate.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from dvrlink.daemon.console import (
    LOCKED_PROMPT,
    PROMPT,
    ChangeSettings,
    CommandReceived,
    Console,
    ConsoleEvent,
    ConsoleOptions,
    InputRejected,
    PinRefused,
    Reboot,
    Relocked,
    ResetPairing,
    SettingChanges,
    ShowPairingCode,
    ShowStatus,
    Unlocked,
)
from dvrlink.daemon.console_pin import check_pin_text, hash_pin, parse_pin_hash, verify_pin
from dvrlink.protocol import console_wire as wire

SERIAL = "DL-0001-0002"
PIN = "4711"


def make(pin: bool = False, **options: Any) -> Console:
    console = Console(
        ConsoleOptions(serial=SERIAL, pin_required=pin, **options), (lambda p: p == PIN) if pin else None
    )
    console.start(0.0)
    console.data_to_send()
    return console


def events(console: Console) -> list[ConsoleEvent]:
    out = []
    while (event := console.next_event()) is not None:
        out.append(event)
    return out


def send(console: Console, data: bytes, now: float = 1.0) -> tuple[bytes, list[ConsoleEvent]]:
    console.receive_data(data, now)
    return console.data_to_send(), events(console)


def request(console: Console, now: float = 1.0, **doc: Any) -> tuple[dict[str, Any], list[ConsoleEvent]]:
    """One machine-mode line; returns the one reply object (or {} when none came yet) and the events."""
    out, evs = send(console, json.dumps(doc).encode() + b"\n", now)
    lines = [line for line in out.split(b"\r\n") if line]
    assert len(lines) <= 1, f"more than one reply line: {out!r}"
    return (json.loads(lines[0]) if lines else {}), evs


def commands(evs: list[ConsoleEvent]) -> list[CommandReceived]:
    return [e for e in evs if isinstance(e, CommandReceived)]


# --- human mode --------------------------------------------------------------------------------


def test_banner_and_help() -> None:
    console = Console(ConsoleOptions(serial=SERIAL))
    console.start(0.0)
    banner = console.data_to_send()
    assert SERIAL.encode() in banner and banner.endswith(PROMPT), banner
    out, evs = send(console, b"help\r")
    assert out.startswith(b"help\r\n"), out  # echoed, then the line end
    for word in (b"status", b"pairing-code", b"set broker", b"set apn", b"reset-pairing", b"reboot"):
        assert word in out, (word, out)
    assert out.endswith(PROMPT) and evs == []


@pytest.mark.parametrize(
    ("line", "command"),
    [
        (b"status", ShowStatus()),
        (b"  STATUS  ", ShowStatus()),
        (b"pairing-code", ShowPairingCode()),
        (b"reboot", Reboot()),
        (b"reset-pairing confirm", ResetPairing()),
        (b"set apn internet.example", ChangeSettings(SettingChanges(apn="internet.example"))),
        (b"set apn auto", ChangeSettings(SettingChanges(apn=""))),
        (b"set apn 'two words'", ChangeSettings(SettingChanges(apn="two words"))),
        (b"set broker broker.example.net", ChangeSettings(SettingChanges(broker_host="broker.example.net"))),
        (
            b"set broker 192.0.2.7:3479 " + b"A" * 43 + b"=",
            ChangeSettings(SettingChanges("192.0.2.7", 3479, "A" * 43 + "=")),
        ),
        (b"set broker [2001:db8::1]:3478", ChangeSettings(SettingChanges("2001:db8::1", 3478))),
        (b"set broker 2001:db8::1", ChangeSettings(SettingChanges("2001:db8::1"))),
    ],
)
def test_each_human_command_becomes_one_typed_event(line: bytes, command: object) -> None:
    console = make()
    out, evs = send(console, line + b"\r\n")
    assert [e.command for e in commands(evs)] == [command], evs
    assert not out.endswith(PROMPT), "the prompt comes after the reply"
    (event,) = commands(evs)
    assert not event.machine


def test_replies_are_rendered_for_a_person() -> None:
    console = make()
    _, evs = send(console, b"status\r")
    console.reply(
        commands(evs)[0].ticket, {"serial": SERIAL, "state": "online", "paired_viewers": 2, "x": None}
    )
    text = console.data_to_send()
    assert b"serial:" in text and b"online" in text and b"paired viewers: 2" in text and b"x:" in text
    assert text.endswith(PROMPT)
    _, evs = send(console, b"pairing-code\r")
    code = "ABCDEFGHIJKLMNOP"
    fp = "f" * 16
    console.reply(
        commands(evs)[0].ticket, {"serial": SERIAL, "code": code, "fingerprint": fp, "uri": "dvrlink://x"}
    )
    text = console.data_to_send()
    assert b"ABCD-EFGH-IJKL-MNOP" in text and b"dvrlink://x" in text and b"show it only to the owner" in text
    _, evs = send(console, b"set apn internet\r")
    result = {"file": "/etc/x.toml", "changed": {"apn": "internet"}, "notes": ["the modem is off"]}
    console.reply(commands(evs)[0].ticket, result)
    text = console.data_to_send()
    assert b"saved to /etc/x.toml: apn = internet; applied now" in text and b"the modem is off" in text
    _, evs = send(console, b"set apn internet\r")
    console.reply(commands(evs)[0].ticket, {"file": "/etc/x.toml", "changed": {}, "notes": []})
    assert b"nothing to change: /etc/x.toml already holds these values" in console.data_to_send()
    _, evs = send(console, b"reset-pairing confirm\r")
    console.reply(commands(evs)[0].ticket, {"viewers_removed": 1})
    assert b"forgot 1 paired viewer;" in console.data_to_send()
    _, evs = send(console, b"reboot\r")
    console.reply(commands(evs)[0].ticket, {"rebooting": True})
    assert b"rebooting now" in console.data_to_send()
    _, evs = send(console, b"status\r")
    console.refuse(commands(evs)[0].ticket, wire.UNAVAILABLE, "no code yet")
    assert console.data_to_send() == b"error: no code yet\r\n" + PROMPT


@pytest.mark.parametrize(
    ("line", "seen"),
    [
        (b"frobnicate", b"unknown command 'frobnicate': type help"),
        (b"status now", b"unknown command 'status now'"),
        (b"reset-pairing", b"type reset-pairing confirm"),
        (b"set", b"usage: set broker"),
        (b"set apn", b"usage: set broker"),
        (b"set broker h:99999", b"the port must be 1 to 65535; nothing was changed"),
        (b"set broker [::1", b"in brackets"),
        (b"set apn 'open", b"cannot read that line (No closing quotation)"),
        (b"unlock", b"usage: unlock PIN"),
        (b"unlock 1234", b"has no installer PIN"),
    ],
)
def test_bad_human_lines_get_a_clear_message_and_no_command(line: bytes, seen: bytes) -> None:
    console = make()
    out, evs = send(console, line + b"\r")
    assert seen in out, out
    assert commands(evs) == []
    assert out.endswith(PROMPT)


def test_line_editing_backspace_ctrl_c_and_arrow_keys() -> None:
    console = make()
    out, evs = send(console, b"statx\x7fus\r")
    assert out.startswith(b"statx\b \bus\r\n") and [e.command for e in commands(evs)] == [ShowStatus()]
    console.reply(commands(evs)[0].ticket, {})
    console.data_to_send()
    out, evs = send(console, b"reboot\x03")
    assert out == b"reboot^C\r\n" + PROMPT and evs == []  # Ctrl-C drops the line: no reboot
    out, evs = send(console, b"\x1b[A\x1b[Dstatus\x1bOA\r")  # arrow keys are swallowed
    assert [e.command for e in commands(evs)] == [ShowStatus()], (out, evs)
    out, evs = send(console, b"\r\n\n")  # CR LF is one line end; a lone LF another (empty) line
    assert out == b"\r\n" + PROMPT + b"\r\n" + PROMPT, out


# --- bad input ---------------------------------------------------------------------------------


def test_binary_noise_gets_one_message_per_quiet_period_and_no_command() -> None:
    console = make(noise_quiet_s=2.0)
    rng = random.Random(7)
    noise = bytes(rng.randrange(128, 256) for _ in range(3000))
    out, evs = send(console, noise, now=10.0)
    assert out.count(b"unreadable input") == 1, out
    assert b"set the terminal to 115200 baud, 8N1, and check the cable" in out
    out, evs = send(console, b"\r" + noise + b"\r", now=10.5)  # within the quiet period: counted
    assert b"unreadable input" not in out and out.endswith(PROMPT)
    assert [e.reason for e in evs if isinstance(e, InputRejected)] == ["unreadable", "unreadable"]
    out, evs = send(console, b"\xff\r", now=13.0)
    assert b"(and 2 more such times)" in out, out
    out, evs = send(console, b"status\r", now=13.5)  # the console still works
    assert [e.command for e in commands(evs)] == [ShowStatus()]


@pytest.mark.parametrize("seed", range(20))
def test_any_bytes_never_raise_and_never_command_a_reboot_by_chance(seed: int) -> None:
    console = make(pin=True)
    rng = random.Random(seed)
    for step in range(50):
        chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        console.receive_data(chunk, float(step))
        for event in events(console):
            assert not isinstance(event, CommandReceived), event  # locked: nothing gets through
        console.data_to_send()


def test_wrong_baud_rate_garbage_then_the_right_speed_works() -> None:
    """A terminal at 9600 against a 115200 console: its text arrives as noise with no line end
    the console can read. The console says so at once; once the speed is right, it answers."""
    console = make()
    garbled = bytes(0x80 | ((b * 37 + 11) & 0x7F) for b in b"status\r\n"[::2])
    out, evs = send(console, garbled, now=1.0)
    assert b"unreadable input" in out and b"115200 baud" in out, out
    out, evs = send(console, b"\rstatus\r", now=5.0)
    assert [e.command for e in commands(evs)] == [ShowStatus()]


def test_over_long_line_is_dropped_whole() -> None:
    console = make(max_line_bytes=64)
    out, evs = send(console, b"set apn " + b"x" * 200 + b"\r")
    assert b"line of 208 bytes dropped: the longest is 64; nothing was changed" in out, out
    assert commands(evs) == [] and [e.reason for e in evs] == ["too_long"]
    out, evs = send(console, b'{"v":1,"id":9,"cmd":"status","pad":"' + b"y" * 100 + b'"}\n')
    reply = json.loads(out.strip())
    assert reply["ok"] is False and reply["error"]["code"] == "line_too_long", reply
    out, evs = send(console, b"status\r")
    assert [e.command for e in commands(evs)] == [ShowStatus()]


# --- machine mode ------------------------------------------------------------------------------


def test_hello_names_the_versions_and_is_not_echoed() -> None:
    console = make()
    reply, evs = request(console, v=1, id="a-1", cmd="hello")
    assert reply == {
        "v": 1,
        "id": "a-1",
        "ok": True,
        "result": {"serial": SERIAL, "versions": [1], "locked": False, "commands": list(wire.COMMANDS)},
    }
    assert evs == []


@pytest.mark.parametrize(
    ("doc", "command"),
    [
        ({"cmd": "status"}, ShowStatus()),
        ({"cmd": "pairing-code"}, ShowPairingCode()),
        ({"cmd": "reboot"}, Reboot()),
        ({"cmd": "reset-pairing", "confirm": True}, ResetPairing()),
        ({"cmd": "set", "settings": {"apn": "iot"}}, ChangeSettings(SettingChanges(apn="iot"))),
        (
            {"cmd": "set", "settings": {"broker_host": "b.example", "broker_port": 3479}},
            ChangeSettings(SettingChanges("b.example", 3479)),
        ),
    ],
)
def test_each_machine_command_becomes_one_event_and_one_reply_line(
    doc: dict[str, Any], command: object
) -> None:
    console = make()
    reply, evs = request(console, v=1, id=7, **doc)
    assert reply == {} and [e.command for e in commands(evs)] == [command]
    (event,) = commands(evs)
    assert event.machine
    console.reply(event.ticket, {"done": 1})
    assert json.loads(console.data_to_send()) == {"v": 1, "id": 7, "ok": True, "result": {"done": 1}}


@pytest.mark.parametrize(
    ("line", "code", "text"),
    [
        (b'{"v": 2, "id": 1, "cmd": "status"}', "unsupported_version", "protocol version 2 is not supported"),
        (b'{"v": 0, "id": 1, "cmd": "status"}', "unsupported_version", "this console speaks version 1"),
        (b'{"id": 1, "cmd": "status"}', "no_version", 'add "v"'),
        (b'{"v": "1", "id": 1, "cmd": "status"}', "no_version", 'add "v"'),
        (b'{"v": 1, "id": 1, "cmd": "format-disk"}', "unknown_command", 'unknown command "format-disk"'),
        (b'{"v": 1, "id": 1}', "bad_request", '"cmd" must be a string'),
        (b'{"v": 1, "id": [1], "cmd": "status"}', "bad_request", '"id" must be'),
        (b'{"v": 1, "id": 1, "cmd": "status"', "bad_json", "not a JSON object"),
        (b"{]", "bad_json", "not a JSON object"),
        (b'{"v": 1, "id": 1, "cmd": "set"}', "bad_value", '"settings" must be an object'),
        (b'{"v": 1, "id": 1, "cmd": "set", "settings": {"ntp": "x"}}', "bad_value", "unknown setting 'ntp'"),
        (
            b'{"v": 1, "id": 1, "cmd": "set", "settings": {"broker_port": "1"}}',
            "bad_value",
            "must be a number",
        ),
        (b'{"v": 1, "id": 1, "cmd": "set", "settings": {"apn": 5}}', "bad_value", '"apn" must be a string'),
        (b'{"v": 1, "id": 1, "cmd": "reset-pairing"}', "bad_request", '"confirm": true'),
        (b'{"v": 1, "id": 1, "cmd": "status", "x": "\xff"}', "unreadable", "unreadable input"),
    ],
)
def test_bad_requests_get_an_error_reply_and_no_command(line: bytes, code: str, text: str) -> None:
    console = make()
    out, evs = send(console, line + b"\n")
    reply = json.loads(out)
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert text in reply["error"]["message"], reply
    assert commands(evs) == []
    if code in ("unsupported_version", "no_version"):
        assert reply["error"]["supported"] == [1]
    assert not out.endswith(PROMPT)


# --- the PIN ------------------------------------------------------------------------------------


def test_locked_console_answers_only_help_unlock_and_hello() -> None:
    console = make(pin=True)
    out, evs = send(console, b"status\r")
    assert b"the console is locked: type unlock PIN" in out and out.endswith(LOCKED_PROMPT)
    assert commands(evs) == []
    out, evs = send(console, b"help\r")
    assert b"commands:" in out
    reply, evs = request(console, v=1, id=1, cmd="pairing-code")
    assert reply["error"]["code"] == "locked" and commands(evs) == []
    reply, _ = request(console, v=1, id=2, cmd="hello")
    assert reply["result"]["locked"] is True


def test_the_pin_is_not_echoed() -> None:
    console = make(pin=True)
    out, evs = send(console, b"unlock " + PIN.encode() + b"\r")
    assert PIN.encode() not in out and b"unlock ****" in out, out
    assert b"unlocked" in out and out.endswith(PROMPT) and evs == [Unlocked()]
    out, evs = send(console, b"status\r")
    assert [e.command for e in commands(evs)] == [ShowStatus()]


def test_wrong_pins_are_rate_limited_on_a_sliding_window() -> None:
    console = make(pin=True, pin_max_failures=3, pin_window_s=300.0)
    for i, now in enumerate((10.0, 20.0, 30.0)):
        out, evs = send(console, b"unlock 0000\r", now)
        assert f"wrong PIN ({2 - i} tries left in 300 s)".encode() in out, out
        assert evs == [PinRefused(i + 1, None)]
    # The limit is reached: even the right PIN is not checked.
    out, evs = send(console, f"unlock {PIN}\r".encode(), 100.0)
    assert b"too many wrong PINs (3 in 300 s): no PIN is checked for 210 s" in out, out
    assert evs == [PinRefused(3, 210.0)] and console.locked
    reply, evs = request(console, 200.0, v=1, id=1, cmd="unlock", pin=PIN)
    assert reply["error"]["code"] == "rate_limited" and "for 110 s" in reply["error"]["message"]
    # The first wrong PIN leaves the window at 310 s: one try again, and the right PIN works.
    reply, evs = request(console, 310.0, v=1, id=2, cmd="unlock", pin=PIN)
    assert reply["ok"] is True and reply["result"] == {"locked": False} and evs == [Unlocked()]


def test_pin_checks_are_not_made_while_rate_limited() -> None:
    checked: list[str] = []

    def check(pin: str) -> bool:
        checked.append(pin)
        return False

    console = Console(ConsoleOptions(serial=SERIAL, pin_required=True, pin_max_failures=2), check)
    for _ in range(10):
        console.receive_data(b"unlock 1234\r", 5.0)
    assert checked == ["1234", "1234"]


def test_idle_console_locks_again_and_lock_command() -> None:
    console = make(pin=True, idle_lock_s=600.0)
    send(console, f"unlock {PIN}\r".encode(), 0.0)
    out, evs = send(console, b"status\r", 599.0)
    assert commands(evs)
    console.reply(commands(evs)[0].ticket, {})
    console.data_to_send()
    out, evs = send(console, b"status\r", 1200.0)
    assert Relocked("idle") in evs and b"locked" in out and commands(evs) == []
    send(console, f"unlock {PIN}\r".encode(), 1201.0)
    out, evs = send(console, b"lock\r", 1202.0)
    assert evs == [Relocked("lock command")] and out.endswith(LOCKED_PROMPT)


def test_pin_hash_round_trip_and_bad_hashes() -> None:
    stored = hash_pin("123456", bytes(16))
    assert stored.startswith("scrypt$ln=13,r=8,p=1$") and "123456" not in stored
    parsed = parse_pin_hash(stored)
    assert verify_pin("123456", parsed)
    assert not verify_pin("123457", parsed)
    assert not verify_pin("12345x", parsed)
    for bad in (
        "",
        "123456",
        "scrypt$ln=13,r=8,p=1$AAAA$BBBB",
        "scrypt$ln=40,r=8,p=1$" + stored.split("$", 2)[2],
    ):
        with pytest.raises(ValueError):
            parse_pin_hash(bad)
    for pin in ("123", "12ab", "1234567890123", "١٢٣٤"):
        with pytest.raises(ValueError, match="4 to 12 digits"):
            check_pin_text(pin)
