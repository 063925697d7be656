"""A modem that answers the manager's commands from a table, with made-up command ids and time:
the manager's core driven without a port.
"""

from __future__ import annotations

from dvrlink.modem.manager import (
    DataFailed,
    DataUp,
    ModemManager,
    SendAt,
    StartData,
)
from dvrlink.protocol.at_events import CommandCompleted, CommandFailed
from dvrlink.protocol.at_results import parse_final

ICCID = "89490200001234567890"


class ScriptedModem:
    """Answers the manager's commands from a table; made-up command ids and time."""

    def __init__(self, manager: ModemManager, answers: dict[str, tuple[str, ...]]) -> None:
        self.manager = manager
        self.answers = answers
        self.sent: list[str] = []
        self.next_id = 1
        self.hang = False
        self.events: list[object] = []
        self.data: list[DataUp | DataFailed] = []
        """Results for the next data link starts, in order; then ``DataUp("usb0")``."""
        self.starts: list[StartData] = []
        self.actions: list[object] = []
        """Every action the manager asked for, in order."""

    def step(self, now: float) -> None:
        """Answer every SendAt and start every data link, until the manager is quiet."""
        while True:
            action = self.manager.next_action()
            while (event := self.manager.next_event()) is not None:
                self.events.append(event)
            if action is None:
                return
            self.actions.append(action)
            if isinstance(action, StartData):
                self.starts.append(action)
                result = self.data.pop(0) if self.data else DataUp("usb0")
                self.manager.data_result(result, now, generation=action.generation)
            elif isinstance(action, SendAt):
                command_id = self.next_id
                self.next_id += 1
                self.sent.append(action.command)
                self.manager.at_submitted(command_id)
                if self.hang:
                    continue
                lines = ()
                final = "OK"
                for prefix, reply in self.answers.items():
                    if action.command.startswith(prefix):
                        *lines, final = reply  # type: ignore[assignment]
                        break
                result = parse_final(final)
                assert result is not None
                event: CommandCompleted | CommandFailed
                if result.ok:
                    event = CommandCompleted(command_id, action.command, tuple(lines), result)
                else:
                    event = CommandFailed(command_id, action.command, tuple(lines), result, 1)
                self.manager.at_event(event, now)


ANSWERS = {
    "AT+CPIN?": ("+CPIN: READY", "OK"),
    "AT+QCCID": (f"+QCCID: {ICCID}", "OK"),
    "AT+CIMI": ("262011234567890", "OK"),
    "AT+CRSM=176,28589": ('+CRSM: 144,0,"00000002"', "OK"),
    "AT+CSPN?": ('+CSPN: "Telekom.de",0', "OK"),
    "AT+CREG?": ('+CREG: 2,1,"1A2B","01C3D4E5",7', "OK"),
    "AT+CGREG?": ('+CGREG: 2,1,"1A2B","01C3D4E5",7', "OK"),
    "AT+CEREG?": ('+CEREG: 2,1,"2B3C","01C3D4E5",7', "OK"),
    "AT+COPS?": ('+COPS: 0,0,"Telekom.de",7', "OK"),
    "AT+CSQ": ("+CSQ: 25,99", "OK"),
    "AT+CESQ": ("+CESQ: 99,99,255,255,255,255", "OK"),
}
