"""A fake ``hal.gpio.LineBackend``: GPIO lines in memory, for the host tests and a laptop run.

The host's kernel has no ``gpio-sim`` or ``gpio-mockup`` module, so nothing on it can stand in
for a chip; the guest test (``tests/hil/test_board_gpio.py``) uses a real one. The fake behaves
like the character device where the daemon can tell: each input has a real file descriptor (a
pipe) that becomes readable when edges are waiting, so the daemon's ``loop.add_reader`` path is
the one a real chip takes; a line can be made busy (held by a named consumer), a chip missing or
unreadable, and a read or write can be made to fail.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from dvrlink.hal.gpio import CONSUMER, AlarmInputConfig, Edge, GpioError, RelayConfig
from dvrlink.hal.gpio_chip import describe_failure


class FakeInput:
    """A requested fake input line; ``change`` moves it as a wire would."""

    def __init__(
        self, chip: str, line: int | str, active: bool, on_release: Callable[[], None] = lambda: None
    ) -> None:
        self.chip = chip
        self.line = line
        self.value = active
        self._on_release = on_release
        self._edges: list[Edge] = []
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self.released = False
        self.fail_reads: str | None = None
        """When set, reads fail with this ``strerror`` (EIO)."""

    @property
    def fd(self) -> int:
        return self._read_fd

    def change(self, active: bool, at: float) -> None:
        """The line moves to ``active`` at ``at`` (an edge, as the kernel would time-stamp it).
        A move to the level it has is ignored, as the kernel sees no edge."""
        if self.released or active == self.value:
            return
        self.value = active
        self._edges.append(Edge(active, at))
        os.write(self._write_fd, b"e")

    def read_edges(self) -> list[Edge]:
        if self.fail_reads is not None:
            raise GpioError(
                describe_failure("read", self.chip, self.line, OSError(errno.EIO, self.fail_reads), None)
            )
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        edges, self._edges = self._edges, []
        return edges

    def get_value(self) -> bool:
        if self.fail_reads is not None:
            raise GpioError(
                describe_failure("read", self.chip, self.line, OSError(errno.EIO, self.fail_reads), None)
            )
        return self.value

    def release(self) -> None:
        if not self.released:
            self.released = True
            os.close(self._read_fd)
            os.close(self._write_fd)
            self._on_release()


class FakeOutput:
    """A requested fake output line; ``values`` records every level written, the first included."""

    def __init__(
        self, chip: str, line: int | str, active: bool, on_release: Callable[[], None] = lambda: None
    ) -> None:
        self.chip = chip
        self.line = line
        self.values = [active]
        self._on_release = on_release
        self.released = False
        self.fail_writes: str | None = None
        """When set, writes fail with this ``strerror`` (EIO)."""

    @property
    def value(self) -> bool:
        """The level driven now."""
        return self.values[-1]

    def set_value(self, active: bool) -> None:
        if self.fail_writes is not None:
            raise GpioError(
                describe_failure("write", self.chip, self.line, OSError(errno.EIO, self.fail_writes), None)
            )
        self.values.append(active)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._on_release()


@dataclass
class FakeBackend:
    """Fake chips: every chip exists unless listed in ``missing`` or ``forbidden``; a line held by
    another program is in ``held`` (``(chip, line) -> consumer``). Requested lines are kept by
    their config name in ``inputs`` and ``outputs`` (the latest request of each)."""

    levels: dict[tuple[str, int | str], bool] = field(default_factory=dict)
    """The inputs' levels at request (default inactive)."""
    held: dict[tuple[str, int | str], str] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    forbidden: set[str] = field(default_factory=set)
    inputs: dict[str, FakeInput] = field(default_factory=dict)
    outputs: dict[str, FakeOutput] = field(default_factory=dict)
    requests: int = 0
    """Requests tried, failed ones included."""

    def request_input(self, config: AlarmInputConfig) -> FakeInput:
        self._check(config.chip, config.line)
        key = (config.chip, config.line)
        line = FakeInput(config.chip, config.line, self.levels.get(key, False), lambda: self._free(key))
        self.inputs[config.name] = line
        self.held[(config.chip, config.line)] = CONSUMER
        return line

    def request_output(self, config: RelayConfig, active: bool) -> FakeOutput:
        self._check(config.chip, config.line)
        key = (config.chip, config.line)
        line = FakeOutput(config.chip, config.line, active, lambda: self._free(key))
        self.outputs[config.name] = line
        self.held[(config.chip, config.line)] = CONSUMER
        return line

    def probe(self, chip: str, line: int | str) -> str:
        self.requests -= 1  # a probe is not a request
        self._check(chip, line, probing=True)
        held = self.held.get((chip, line))
        return f"{chip} (fake) line {line}: " + ("free" if held is None else f"held by {held} (running)")

    def _free(self, key: tuple[str, int | str]) -> None:
        if self.held.get(key) == CONSUMER:
            del self.held[key]

    def _check(self, chip: str, line: int | str, *, probing: bool = False) -> None:
        self.requests += 1
        if chip in self.missing:
            raise GpioError(
                describe_failure("request", chip, line, OSError(errno.ENOENT, "No such file"), None)
            )
        if chip in self.forbidden:
            raise GpioError(
                describe_failure("request", chip, line, OSError(errno.EACCES, "Permission denied"), None)
            )
        held = self.held.get((chip, line))
        if held is not None and not (probing and held == CONSUMER):
            busy = OSError(errno.EBUSY, "Device or resource busy")
            raise GpioError(describe_failure("request", chip, line, busy, held))
