"""The firmware's entry under the tests: sv_board.run on the simulated board and clock."""

import simboard
import sv_board
from sv_core import Config

config = simboard.WORLD.config
board = sv_board.PICO_BOARD
if config.get("no_power_cut"):
    signals = {k: v for k, v in board.signals.items() if k != "modem_power_cut"}
    board = sv_board.Board(0, 0, 1, 115200, signals, 26, board.r_top_ohm, board.r_bottom_ohm)
try:  # noqa: SIM105 (MicroPython has no contextlib)
    sv_board.run(board, Config(**config.get("policy", {})), simboard.Clock(), "/flash")
except SystemExit:
    pass
