"""The firmware's entry on the MCU (MicroPython runs main.py at boot): the real clock, then sv_board.run."""

import select
import time

import machine
import sv_board
from sv_core import Config


class McuClock:
    """time's wrapping millisecond ticks (read often enough that they never wrap twice), and a
    wait that ends early when the UART has bytes."""

    def __init__(self) -> None:
        self._poller = select.poll()
        self._registered = False
        self._last = time.ticks_ms()

    def elapsed_ms(self) -> int:
        now = time.ticks_ms()
        elapsed = time.ticks_diff(now, self._last)
        self._last = now
        return elapsed

    def wait(self, uart: machine.UART, timeout_ms: int) -> None:
        if not self._registered:
            self._poller.register(uart, select.POLLIN)
            self._registered = True
        self._poller.poll(timeout_ms)


if sv_board.maintenance_jumper(sv_board.PICO_BOARD):
    print("supervisor: maintenance jumper set (GPIO 22 to ground): not started, the REPL is free")
else:
    sv_board.run(sv_board.PICO_BOARD, Config(), McuClock(), "")
