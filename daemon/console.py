"""The serial console's core: bytes from the installer's terminal in, bytes back out, typed events.

Sans-I/O: no serial port, no clock, no files. ``daemon/console_link.py`` moves bytes between a
TTY and this object and answers its events (reads the device's state, writes settings, reboots).

Each line is judged on its own. A line that starts with ``{`` is a machine-mode request
(``protocol/console_wire.py``, one JSON reply line, never echoed, no prompt); any other line is
a human command, echoed as typed, answered in text and followed by the prompt. Bad input never
raises: a line of noise (a wrong baud rate turns text into bytes that are not text), an
over-long line, an unknown command or a request for another protocol version each get one clear
message and change nothing.

With an installer PIN (``[console] pin_hash``) the console starts locked: only ``help``,
``unlock`` and machine-mode ``hello``/``unlock`` are answered until the right PIN is given.
Wrong PINs are limited per sliding window (the PIN is not even checked once the limit is
reached), and the console locks itself again after ``idle_lock_s`` without input. The PIN
check is a callable passed in (``verify_pin`` with the configured hash, in the daemon).
"""

from __future__ import annotations

import collections
import math
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from dvrlink.protocol import console_wire as wire
from dvrlink.protocol.identity import format_fingerprint
from dvrlink.protocol.pairing import format_code

PROMPT = b"dvrlink> "
LOCKED_PROMPT = b"dvrlink (locked)> "
CRLF = b"\r\n"


# --- options, commands, events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsoleOptions:
    """How one console behaves; the daemon builds it from ``[console]``."""

    serial: str
    """The device's serial, for the banner and ``hello``."""
    baud: int = 115200
    """The port's speed, named in the message about unreadable input."""
    pin_required: bool = False
    """Start locked until ``unlock PIN``."""
    pin_max_failures: int = 5
    """Wrong PINs allowed per ``pin_window_s``; beyond, no PIN is checked until the oldest leaves."""
    pin_window_s: float = 300.0
    idle_lock_s: float = 600.0
    """Lock again after this long without input (with a PIN)."""
    max_line_bytes: int = 512
    """Longer lines are dropped whole, with a message."""
    noise_quiet_s: float = 2.0
    """At most one message about unreadable input per this many seconds (the rest are counted)."""


@dataclass(frozen=True, slots=True)
class SettingChanges:
    """Settings a ``set`` asks for; None: leave as it is. ``apn`` "" means automatic."""

    broker_host: str | None = None
    broker_port: int | None = None
    broker_public_key: str | None = None
    apn: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The requested changes, by ``SETTING_KEYS`` name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True, slots=True)
class Command:
    """Base of what the console asks its owner to do."""


@dataclass(frozen=True, slots=True)
class ShowStatus(Command):
    """Answer with the device's status (reply: a flat mapping of names to values)."""


@dataclass(frozen=True, slots=True)
class ShowPairingCode(Command):
    """Answer with ``serial``, ``code``, ``fingerprint`` and ``uri``."""


@dataclass(frozen=True, slots=True)
class ChangeSettings(Command):
    """Validate, save and apply ``changes`` (reply: ``file``, ``changed``, ``notes``)."""

    changes: SettingChanges


@dataclass(frozen=True, slots=True)
class ResetPairing(Command):
    """Forget every paired viewer (reply: ``viewers_removed``)."""


@dataclass(frozen=True, slots=True)
class Reboot(Command):
    """Reboot the board once the reply has gone out (reply: ``rebooting``)."""


@dataclass(frozen=True, slots=True)
class ConsoleEvent:
    """Base of the console core's events."""


@dataclass(frozen=True, slots=True)
class CommandReceived(ConsoleEvent):
    """A command to carry out; answer it with ``Console.reply`` or ``Console.refuse``."""

    ticket: int
    command: Command
    machine: bool
    """It came in machine mode (for logs)."""


@dataclass(frozen=True, slots=True)
class Unlocked(ConsoleEvent):
    """The right PIN was given."""


@dataclass(frozen=True, slots=True)
class Relocked(ConsoleEvent):
    """The console locked itself again (``lock``, or idle)."""

    reason: str


@dataclass(frozen=True, slots=True)
class PinRefused(ConsoleEvent):
    """A wrong PIN, or any PIN while too many wrong ones are in the window."""

    failures: int
    """Wrong PINs in the window now."""
    retry_after_s: float | None
    """Seconds until a PIN is checked again; None while tries are left."""


@dataclass(frozen=True, slots=True)
class InputRejected(ConsoleEvent):
    """A line that was not a command: ``unreadable`` (noise), ``too_long``, ``unknown`` or a
    machine-mode error code."""

    reason: str
    size: int
    """Its length in bytes."""


HELP = """\
commands:
  help                              this list
  status                            serial, connection, broker, APN, paired viewers
  pairing-code                      the pairing code, key fingerprint and pairing URI
  set broker HOST[:PORT] [KEY]      the broker's host, port and public key (base64)
  set apn NAME                      the cellular APN ("set apn auto": automatic)
  reset-pairing confirm             forget every paired viewer
  reboot                            reboot the recorder
  lock                              lock the console (with an installer PIN)
  unlock PIN                        unlock it
Settings are checked, saved to the config file and applied at once; a bad value changes nothing.
Tools speak JSON lines: {"v": 1, "id": 1, "cmd": "hello"} (see docs/console.md)."""

_LOCKED_COMMANDS = ("help", "unlock", "")
_MACHINE_WHILE_LOCKED = ("hello", "unlock")


@dataclass(slots=True)
class _Pending:
    machine: bool
    request_id: int | str | None
    name: str


class Console:
    """One console session on one port (see the module docstring).

    ``check_pin`` says whether a PIN is right; it is only called when ``options.pin_required``.
    ``pin_failures`` are the times (on the clock ``now`` uses) of wrong PINs from before, such
    as those the owner kept over a reboot; ``pin_failures`` tells the current ones to keep.

    Raises (constructor):
        ValueError: ``pin_required`` without ``check_pin``.
    """

    def __init__(
        self,
        options: ConsoleOptions,
        check_pin: Callable[[str], bool] | None = None,
        *,
        pin_failures: Sequence[float] = (),
    ) -> None:
        if options.pin_required and check_pin is None:
            raise ValueError("a console with pin_required needs check_pin")
        self.options = options
        self._check_pin = check_pin
        self._locked = options.pin_required
        self._failures: collections.deque[float] = collections.deque(sorted(pin_failures))
        self._out = bytearray()
        self._events: collections.deque[ConsoleEvent] = collections.deque()
        self._pending: dict[int, _Pending] = {}
        self._next_ticket = 1
        self._last_input: float | None = None
        # line assembly
        self._line = bytearray()
        self._noise = 0
        self._overflow = 0
        self._after_cr = False
        self._escape = 0  # 0: none, 1: after ESC, 2: inside a CSI sequence
        self._masked_from: int | None = None
        self._noise_shown_at: float | None = None
        self._noise_unshown = 0

    @property
    def locked(self) -> bool:
        """True while an installer PIN is needed."""
        return self._locked

    @property
    def pin_failures(self) -> tuple[float, ...]:
        """Times of the wrong PINs that still count (oldest first)."""
        return tuple(self._failures)

    # --- the owner's side ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Greet the terminal (a banner and the prompt); call when the port opens."""
        self._last_input = now
        lock = " Locked: type unlock PIN." if self._locked else ""
        self._text(f"dvrlink console on {self.options.serial}.{lock} Type help for the commands.")
        self._prompt()

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes read from the port; ``now`` is a monotonic clock in seconds."""
        for byte in data:
            self._byte(byte, now)

    def next_event(self) -> ConsoleEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Bytes to write to the port (then cleared)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def reply(self, ticket: int, result: Mapping[str, Any]) -> None:
        """Answer a ``CommandReceived`` with its result.

        Raises:
            KeyError: no such ticket waits (a bug in the owner).
        """
        pending = self._pending.pop(ticket)
        if pending.machine:
            self._out += wire.encode_result(pending.request_id, dict(result))
            return
        self._text(_render(pending.name, result))
        self._prompt()

    def refuse(self, ticket: int, code: str, message: str) -> None:
        """Answer a ``CommandReceived`` with an error (``code``: a ``console_wire`` error code).

        Raises:
            KeyError: no such ticket waits.
        """
        pending = self._pending.pop(ticket)
        self._answer_error(pending.machine, pending.request_id, code, message)

    # --- bytes to lines -------------------------------------------------------------------------

    def _byte(self, byte: int, now: float) -> None:
        if self._escape:
            # Terminal escape sequences (arrow keys): ESC [ ... final byte, or ESC O x.
            if self._escape == 1:
                self._escape = 2 if byte in (0x5B, 0x4F) else 0
            elif 0x40 <= byte <= 0x7E:
                self._escape = 0
            return
        if byte in (0x0D, 0x0A):
            if byte == 0x0A and self._after_cr:
                self._after_cr = False
                return
            self._after_cr = byte == 0x0D
            self._end_line(now)
            return
        self._after_cr = False
        if byte == 0x00:  # a break condition, or a line held low
            return
        if byte == 0x1B:
            self._escape = 1
            return
        if byte in {0x03, 0x15}:  # Ctrl-C, Ctrl-U: drop the line
            echoed = self._echoing() and bool(self._line)
            self._reset_line()
            if byte == 0x03 or echoed:
                self._out += b"^C" + CRLF if byte == 0x03 else CRLF
                self._prompt()
            return
        if byte in (0x08, 0x7F):  # backspace, DEL
            if self._line and not self._noise and not self._overflow:
                echoed = self._echoing()
                self._line.pop()
                if self._masked_from is not None and len(self._line) < self._masked_from:
                    self._masked_from = None
                if echoed:
                    self._out += b"\b \b"
            return
        if self._overflow:
            self._overflow += 1
            if not 0x20 <= byte <= 0x7E and not self._noise:
                self._noise = 1  # an over-long line of noise is noise
                self._noise_started(now)
            return
        if len(self._line) + self._noise >= self.options.max_line_bytes:
            self._overflow = len(self._line) + self._noise + 1
            return
        if byte == 0x09:
            byte = 0x20
        if not 0x20 <= byte <= 0x7E:
            self._noise += 1
            if self._noise == 1 and not self._line.lstrip().startswith(b"{"):
                self._noise_started(now)
            return
        self._line.append(byte)
        if self._echoing():
            masked = self._masked_from is not None and len(self._line) > self._masked_from
            self._out += b"*" if masked else bytes([byte])
        if self._masked_from is None and bytes(self._line).lstrip().lower() == b"unlock ":
            self._masked_from = len(self._line)

    def _echoing(self) -> bool:
        """Human lines are echoed; machine lines (starting with ``{``) and noise are not."""
        return not self._line.lstrip().startswith(b"{") and not self._noise

    def _reset_line(self) -> None:
        self._line.clear()
        self._noise = 0
        self._overflow = 0
        self._masked_from = None

    def _end_line(self, now: float) -> None:
        line, noise, overflow = bytes(self._line), self._noise, self._overflow
        self._reset_line()
        machine = line.lstrip().startswith(b"{")
        if not machine:  # end the echoed line on the terminal (machine lines are not echoed)
            self._out += CRLF
        if noise:
            size = max(overflow, len(line) + noise)
            self._events.append(InputRejected("unreadable", size))
            if machine:
                self._answer_error(True, None, wire.UNREADABLE, self._noise_message(size))
            elif not self._report_noise(now, size):
                self._prompt()
            return
        if overflow:
            self._events.append(InputRejected("too_long", overflow))
            message = (
                f"line of {overflow} bytes dropped: the longest is {self.options.max_line_bytes}; "
                "nothing was changed"
            )
            self._answer_error(machine, None, wire.LINE_TOO_LONG, message)
            return
        self._idle_check(now)
        self._last_input = now
        text = line.decode("ascii").strip()
        if machine:
            self._machine(text, now)
        else:
            self._human(text, now)

    def _noise_message(self, size: int | None) -> str:
        count = f"{size} bytes" if size is not None else "bytes"
        return (
            f"unreadable input ({count} that are not text): set the terminal to "
            f"{self.options.baud} baud, 8N1, and check the cable"
        )

    def _noise_started(self, now: float) -> None:
        """The first byte of noise in a line: say so at once, since a terminal at the wrong
        speed may never send a line end the console can read."""
        if self._may_report_noise(now):
            self._out += CRLF
            self._report_noise(now, None)

    def _may_report_noise(self, now: float) -> bool:
        shown = self._noise_shown_at
        return shown is None or now - shown >= self.options.noise_quiet_s

    def _report_noise(self, now: float, size: int | None) -> bool:
        """The message about noise, at most once per ``noise_quiet_s``; False if held back."""
        if not self._may_report_noise(now):
            self._noise_unshown += 1
            return False
        more = f" (and {self._noise_unshown} more such times)" if self._noise_unshown else ""
        self._noise_shown_at, self._noise_unshown = now, 0
        self._answer_error(False, None, wire.UNREADABLE, self._noise_message(size) + more)
        return True

    def _idle_check(self, now: float) -> None:
        if (
            self.options.pin_required
            and not self._locked
            and self._last_input is not None
            and now - self._last_input >= self.options.idle_lock_s
        ):
            self._locked = True
            self._events.append(Relocked("idle"))

    # --- human mode ---------------------------------------------------------------------------

    def _human(self, text: str, now: float) -> None:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            self._events.append(InputRejected("unknown", len(text)))
            self._answer_error(False, None, wire.BAD_REQUEST, f"cannot read that line ({exc}); type help")
            return
        name = words[0].lower() if words else ""
        args = words[1:]
        if self._locked and name not in _LOCKED_COMMANDS:
            self._answer_error(
                False, None, wire.LOCKED, "the console is locked: type unlock PIN (the installer PIN)"
            )
            return
        if name == "":
            self._prompt()
        elif name == "help":
            self._text(HELP)
            self._prompt()
        elif name == "unlock":
            if len(args) != 1:
                self._answer_error(False, None, wire.BAD_REQUEST, "usage: unlock PIN")
                return
            self._unlock(False, None, args[0], now)
        elif name == "lock":
            self._lock(False, None)
        elif name == "status" and not args:
            self._command(False, None, "status", ShowStatus())
        elif name == "pairing-code" and not args:
            self._command(False, None, "pairing-code", ShowPairingCode())
        elif name == "reboot" and not args:
            self._command(False, None, "reboot", Reboot())
        elif name == "reset-pairing":
            if args != ["confirm"]:
                message = "reset-pairing forgets every paired viewer: type reset-pairing confirm to do it"
                self._answer_error(False, None, wire.BAD_REQUEST, message)
                return
            self._command(False, None, "reset-pairing", ResetPairing())
        elif name == "set":
            try:
                changes = parse_set_words(args)
            except ValueError as exc:
                self._answer_error(False, None, wire.BAD_VALUE, f"{exc}; nothing was changed")
                return
            self._command(False, None, "set", ChangeSettings(changes))
        else:
            self._events.append(InputRejected("unknown", len(text)))
            shown = text if len(text) <= 40 else text[:40] + "..."
            self._answer_error(False, None, wire.UNKNOWN_COMMAND, f"unknown command {shown!r}: type help")

    # --- machine mode -------------------------------------------------------------------------

    def _machine(self, text: str, now: float) -> None:
        try:
            request = wire.parse_request(text)
        except wire.WireError as exc:
            self._events.append(InputRejected(exc.code, len(text)))
            self._answer_error(True, exc.request_id, exc.code, exc.message)
            return
        rid, name = request.request_id, request.command
        if self._locked and name not in _MACHINE_WHILE_LOCKED:
            self._answer_error(
                True, rid, wire.LOCKED, 'the console is locked: send {"cmd": "unlock", "pin": ...}'
            )
            return
        if name == "hello":
            result = {
                "serial": self.options.serial,
                "versions": list(wire.SUPPORTED_VERSIONS),
                "locked": self._locked,
                "commands": list(wire.COMMANDS),
            }
            self._out += wire.encode_result(rid, result)
        elif name == "unlock":
            pin = request.args.get("pin")
            if not isinstance(pin, str):
                self._answer_error(True, rid, wire.BAD_REQUEST, '"pin" must be a string of digits')
                return
            self._unlock(True, rid, pin, now)
        elif name == "lock":
            self._lock(True, rid)
        elif name == "status":
            self._command(True, rid, name, ShowStatus())
        elif name == "pairing-code":
            self._command(True, rid, name, ShowPairingCode())
        elif name == "reboot":
            self._command(True, rid, name, Reboot())
        elif name == "reset-pairing":
            if request.args.get("confirm") is not True:
                self._answer_error(True, rid, wire.BAD_REQUEST, 'reset-pairing needs "confirm": true')
                return
            self._command(True, rid, name, ResetPairing())
        elif name == "set":
            try:
                changes = parse_settings(request.args.get("settings"))
            except ValueError as exc:
                self._answer_error(True, rid, wire.BAD_VALUE, f"{exc}; nothing was changed")
                return
            self._command(True, rid, name, ChangeSettings(changes))

    # --- shared -------------------------------------------------------------------------------

    def _unlock(self, machine: bool, rid: int | str | None, pin: str, now: float) -> None:
        if not self.options.pin_required:
            self._ok(machine, rid, {"locked": False}, "the console has no installer PIN: nothing to unlock")
            return
        window, limit = self.options.pin_window_s, self.options.pin_max_failures
        while self._failures and now - self._failures[0] >= window:
            self._failures.popleft()
        if len(self._failures) >= limit:
            wait = max(1, math.ceil(self._failures[0] + window - now))
            self._events.append(PinRefused(len(self._failures), float(wait)))
            message = f"too many wrong PINs ({limit} in {window:g} s): no PIN is checked for {wait} s"
            self._answer_error(machine, rid, wire.RATE_LIMITED, message)
            return
        assert self._check_pin is not None
        if self._check_pin(pin):
            self._failures.clear()
            self._locked = False
            self._events.append(Unlocked())
            self._ok(machine, rid, {"locked": False}, "unlocked")
            return
        self._failures.append(now)
        left = limit - len(self._failures)
        self._events.append(PinRefused(len(self._failures), None))
        self._answer_error(machine, rid, wire.WRONG_PIN, f"wrong PIN ({left} tries left in {window:g} s)")

    def _lock(self, machine: bool, rid: int | str | None) -> None:
        if not self.options.pin_required:
            self._ok(machine, rid, {"locked": False}, "the console has no installer PIN: it cannot lock")
            return
        self._locked = True
        self._events.append(Relocked("lock command"))
        self._ok(machine, rid, {"locked": True}, "locked")

    def _command(self, machine: bool, rid: int | str | None, name: str, command: Command) -> None:
        ticket = self._next_ticket
        self._next_ticket += 1
        self._pending[ticket] = _Pending(machine, rid, name)
        self._events.append(CommandReceived(ticket, command, machine))

    def _ok(self, machine: bool, rid: int | str | None, result: dict[str, Any], text: str) -> None:
        if machine:
            self._out += wire.encode_result(rid, result)
        else:
            self._text(text)
            self._prompt()

    def _answer_error(self, machine: bool, rid: int | str | None, code: str, message: str) -> None:
        if machine:
            self._out += wire.encode_error(rid, code, message)
        else:
            self._text(f"error: {message}")
            self._prompt()

    def _text(self, text: str) -> None:
        for line in text.splitlines():
            self._out += line.encode("ascii", errors="replace") + CRLF

    def _prompt(self) -> None:
        self._out += LOCKED_PROMPT if self._locked else PROMPT


# --- parsing settings ----------------------------------------------------------------------------


def parse_set_words(words: list[str]) -> SettingChanges:
    """``set broker HOST[:PORT] [KEY]`` or ``set apn NAME|auto`` (the words after ``set``).

    Raises:
        ValueError: anything else; the message shows the usage.
    """
    if len(words) >= 2 and words[0].lower() == "broker" and len(words) <= 3:
        host, port = wire.split_host_port(words[1])
        key = words[2] if len(words) == 3 else None
        return SettingChanges(broker_host=host, broker_port=port, broker_public_key=key)
    if len(words) == 2 and words[0].lower() == "apn":
        return SettingChanges(apn="" if words[1].lower() == "auto" else words[1])
    raise ValueError("usage: set broker HOST[:PORT] [PUBLIC_KEY], or set apn NAME (or set apn auto)")


def parse_settings(value: object) -> SettingChanges:
    """The ``"settings"`` object of a machine-mode ``set``.

    Raises:
        ValueError: not an object, an unknown key, a value of the wrong type, or nothing to set.
    """
    if not isinstance(value, dict) or not value:
        raise ValueError(f'"settings" must be an object with some of {", ".join(wire.SETTING_KEYS)}')
    unknown = sorted(set(value) - set(wire.SETTING_KEYS))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; known: {', '.join(wire.SETTING_KEYS)}")
    port = value.get("broker_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise ValueError('"broker_port" must be a number')
    for key in ("broker_host", "broker_public_key", "apn"):
        if key in value and not isinstance(value[key], str):
            raise ValueError(f'"{key}" must be a string')
    return SettingChanges(
        broker_host=value.get("broker_host"),
        broker_port=port,
        broker_public_key=value.get("broker_public_key"),
        apn=value.get("apn"),
    )


# --- human rendering ------------------------------------------------------------------------------


def _render(name: str, result: Mapping[str, Any]) -> str:
    if name == "pairing-code":
        return "\n".join(
            [
                f"serial:       {result.get('serial', '')}",
                f"pairing code: {format_code(str(result.get('code', '')))}",
                f"fingerprint:  {format_fingerprint(str(result.get('fingerprint', '')))}",
                f"pairing URI:  {result.get('uri', '')}",
                "Anyone with the serial and this code can pair a viewer: show it only to the owner.",
            ]
        )
    if name == "set":
        changed = result.get("changed", {})
        where = result.get("file", "the config file")
        notes = [str(n) for n in result.get("notes", [])]
        if not changed:
            return "\n".join([f"nothing to change: {where} already holds these values", *notes])
        what = ", ".join(f"{k} = {_shown(v)}" for k, v in changed.items())
        return "\n".join([f"saved to {where}: {what}; applied now", *notes])
    if name == "reset-pairing":
        count = result.get("viewers_removed", 0)
        return f"forgot {count} paired viewer{'s' if count != 1 else ''}; the pairing code is unchanged"
    if name == "reboot":
        return "rebooting now"
    width = max((len(k) for k in result), default=0) + 1
    return "\n".join(f"{(k.replace('_', ' ') + ':').ljust(width)} {_shown(v)}" for k, v in result.items())


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return '""' if value == "" else value
    return str(value)
