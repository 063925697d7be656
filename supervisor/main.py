"""The firmware's entry on the MCU (MicroPython runs main.py at boot): the real clock, then sv_board.run."""

import select
import time

import machine
import sv_board
from sv_core import Config


class McuClock:
    """time's wrapping millisecond ticks, and a wait that ends early when the UART has bytes."""

    def __init__(self) -> None:
        self._poller = select.poll()
        self._registered = False

    def ticks_ms(self) -> int:
        return time.ticks_ms()

    def ticks_diff(self, later: int, earlier: int) -> int:
        return time.ticks_diff(later, earlier)

    def wait(self, uart: machine.UART, timeout_ms: int) -> None:
        if not self._registered:
            self._poller.register(uart, select.POLLIN)
            self._registered = True
        self._poller.poll(timeout_ms)


sv_board.run(sv_board.PICO_BOARD, Config(), McuClock(), "")
