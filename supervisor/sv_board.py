"""The board: which pin does what, and the thin main loop that runs sv_core.Supervisor on it.

``run`` is the only loop. Each turn it feeds the MCU's watchdog, hands the UART's bytes, an ADC
sample now and then and the time to the Supervisor, sets the pins to what the Supervisor asks,
writes its replies, saves the reset log when it changed, and waits for the UART or the next
deadline (at most ``MAX_WAIT_MS``, well inside the watchdog's timeout). An exception escaping the
loop stops the feeding, and the MCU's watchdog restarts the firmware, which logs that start.
"""

import machine
from sv_core import MODEM_POWER_CUT, MODEM_PWRKEY, NEVER, SOC_RESET, Config, Supervisor
from sv_log import ResetLog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Clock(Protocol):
        """Milliseconds and waiting; main.py's is the MCU's, the tests' is simulated."""

        def elapsed_ms(self) -> int:
            """Milliseconds since the previous call (since the clock was made, the first time)."""

        def wait(self, uart: machine.UART, timeout_ms: int) -> None:
            """Return when the UART has bytes or after ``timeout_ms``."""


MAX_WAIT_MS = 1000
WDT_TIMEOUT_MS = 5000
"""The MCU's own watchdog (the RP2040's longest is 8388 ms)."""
ADC_PERIOD_MS = 1000
LOG_FILE = "reset_log.json"


class Board:
    """Pins and parts. ``signals``: signal -> (GPIO, MCU level that asserts it); a signal the
    board lacks is left out. The supply reaches the ADC through ``r_top_ohm`` over
    ``r_bottom_ohm``."""

    def __init__(
        self,
        uart_id: int,
        uart_tx: int,
        uart_rx: int,
        baudrate: int,
        signals: dict[str, tuple[int, int]],
        adc_gpio: int,
        r_top_ohm: int,
        r_bottom_ohm: int,
        vref_mv: int = 3300,
        maintenance_gpio: int = -1,
    ) -> None:
        self.uart_id = uart_id
        self.uart_tx = uart_tx
        self.uart_rx = uart_rx
        self.baudrate = baudrate
        self.signals = signals
        self.adc_gpio = adc_gpio
        self.r_top_ohm = r_top_ohm
        self.r_bottom_ohm = r_bottom_ohm
        self.vref_mv = vref_mv
        self.maintenance_gpio = maintenance_gpio
        """An input with a pull-up; a jumper to ground at boot keeps the supervisor from starting,
        so that mpremote can reach the REPL (-1: none)."""

    def fitted(self) -> tuple[str, ...]:
        return tuple(self.signals)

    def millivolts(self, raw_u16: int) -> int:
        """The supply voltage for an ADC reading (0-65535 over 0-vref)."""
        total = self.r_top_ohm + self.r_bottom_ohm
        return raw_u16 * self.vref_mv * total // (65535 * self.r_bottom_ohm)


PICO_BOARD = Board(
    uart_id=0,
    uart_tx=0,
    uart_rx=1,
    baudrate=115200,
    signals={SOC_RESET: (2, 1), MODEM_PWRKEY: (3, 1), MODEM_POWER_CUT: (4, 1)},
    adc_gpio=26,
    r_top_ohm=100_000,
    r_bottom_ohm=22_000,
    maintenance_gpio=22,
)
"""A Raspberry Pi Pico wired as docs/supervisor.md draws it: every output drives a transistor,
active high, with a pull-down, so an MCU in reset leaves the SoC running and the modem powered."""


class Hardware:
    """The MCU's peripherals for a board. Outputs start released."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.pins: dict[str, machine.Pin] = {}
        for signal, (gpio, active) in board.signals.items():
            self.pins[signal] = machine.Pin(gpio, machine.Pin.OUT, value=1 - active)
        self.levels: dict[str, bool] = {signal: False for signal in board.signals}
        self.uart = machine.UART(
            board.uart_id,
            baudrate=board.baudrate,
            tx=machine.Pin(board.uart_tx),
            rx=machine.Pin(board.uart_rx),
            rxbuf=1024,
            timeout=0,
        )
        self.adc = machine.ADC(machine.Pin(board.adc_gpio))
        self.wdt = machine.WDT(timeout=WDT_TIMEOUT_MS)

    def apply(self, asserted: dict[str, bool]) -> None:
        """Set each fitted signal's pin to match ``asserted``."""
        for signal, pin in self.pins.items():
            level = asserted[signal]
            if level != self.levels[signal]:
                active = self.board.signals[signal][1]
                pin.value(active if level else 1 - active)
                self.levels[signal] = level


def maintenance_jumper(board: Board) -> bool:
    """Whether the board's maintenance jumper is set (read once, at boot)."""
    if board.maintenance_gpio < 0:
        return False
    return machine.Pin(board.maintenance_gpio, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0


def run(board: Board, config: Config, clock: "Clock", flash_dir: str) -> None:
    """Run the supervisor until the MCU stops (never returns on the device)."""
    hw = Hardware(board)
    hw.wdt.feed()
    log = ResetLog(flash_dir + "/" + LOG_FILE)
    entries, boots, _found = log.load()
    core = Supervisor(config, board.fitted(), entries, boots + 1, 0, machine.reset_cause())
    saved = -1
    now = 0
    next_adc = 0
    while True:
        now += clock.elapsed_ms()
        hw.wdt.feed()
        data = hw.uart.read()
        if data:
            core.receive(data, now)
        if now >= next_adc:
            raw = hw.adc.read_u16()
            core.supply_sample(board.millivolts(raw), raw)
            next_adc = now + ADC_PERIOD_MS
        core.poll(now)
        hw.apply(core.asserted)
        out = core.take_output()
        if out:
            hw.uart.write(out)
        if core.log_serial != saved:
            log.save(core.log, core.boots)
            saved = core.log_serial
        deadline = core.next_deadline(now)
        wait = MAX_WAIT_MS if deadline == NEVER else deadline - now
        clock.wait(hw.uart, max(1, min(wait, MAX_WAIT_MS, next_adc - now)))
