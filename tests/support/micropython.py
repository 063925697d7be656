"""The supervisor firmware (supervisor/) running in real MicroPython, for the tests.

MicroPython's WebAssembly port (the npm package ``@micropython/micropython-webassembly-pyscript``,
installed by ``make micropython-wasm`` into ``.micropython/``) runs under node. The firmware runs
unchanged but for two things from ``tests/support/micropython_sim/``: the ``machine`` module (Pin
records each level change with its time, UART bridged to the test, ADC, WDT) and a simulated clock
handed to ``sv_board.run``. Time is simulated: it moves only when the test says ``run(ms)``, so a
day of heartbeat timeouts takes a second. ``runner.mjs`` says how the two sides talk.

The MCU's flash is a folder of the test's: the runner copies it in at start and back at every
sync, so ``restart()`` (the node process killed and started again on the same folder) is a power
cycle of the MCU that keeps what the firmware saved. ``PtyBridge`` puts the UART on a PTY in real
time, for a program (tests/support/micropython_heartbeats.py, later the daemon) to talk to.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from dvrlink.protocol.supervisor_wire import Frame, FrameDecoder, Reply, parse_reply

ROOT = Path(__file__).resolve().parent.parent.parent
FIRMWARE = ROOT / "supervisor"
SIM_SUPPORT = Path(__file__).resolve().parent
SIM = SIM_SUPPORT / "micropython_sim"
MODULES = ROOT / ".micropython"
PACKAGE = MODULES / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
REPLY_WAIT = 20.0
"""Seconds of real time a step of the simulation may take before the test gives up on it."""


def load_firmware(name: str) -> ModuleType:
    """A firmware module (``sv_core``, say) imported into CPython, for tests of its pure parts
    that want many cases fast; its imports of other ``sv_*`` modules resolve to supervisor/."""
    sys.path.insert(0, str(FIRMWARE))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(FIRMWARE))


def node_missing() -> str | None:
    """Why the MicroPython tests cannot run here, or None when they can."""
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm): the firmware's MicroPython tests need it"
    return None


def require_package() -> None:
    """Raises AssertionError saying how to install the WebAssembly port when it is missing."""
    if not (PACKAGE / "micropython.mjs").is_file():
        raise AssertionError(
            f"MicroPython's WebAssembly port is not installed in {MODULES}: run `make micropython-wasm` "
            "(npm installs the pinned @micropython/micropython-webassembly-pyscript)"
        )


def run_entry(entry: str, flash: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Run one firmware module to its end (``main``, say, with the maintenance jumper set), with
    no host on the other side: the output and exit status."""
    require_package()
    flash.mkdir(parents=True, exist_ok=True)
    command = ["node", str(SIM / "runner.mjs"), str(MODULES), str(FIRMWARE), str(SIM), str(flash)]
    return subprocess.run(
        [*command, json.dumps({**config, "entry": entry})],
        input="",
        capture_output=True,
        text=True,
        timeout=REPLY_WAIT,
        check=False,
    )


@dataclass
class Trace:
    """Everything the firmware did, in simulated milliseconds."""

    pins: list[tuple[int, int, int]] = field(default_factory=list)
    """(t, gpio, level) for each level change, the initial levels included."""
    tx: list[tuple[int, bytes]] = field(default_factory=list)
    fs: list[list[str]] = field(default_factory=list)
    wdt_expired: list[tuple[int, int]] = field(default_factory=list)
    wdt_started: list[int] = field(default_factory=list)

    def levels(self, gpio: int) -> list[tuple[int, int]]:
        """(t, level) changes of one pin."""
        return [(t, v) for t, g, v in self.pins if g == gpio]

    def pulses(self, gpio: int, active: int = 1) -> list[tuple[int, int]]:
        """(start, width ms) of each time the pin went to ``active`` and back."""
        out, start = [], None
        for t, v in self.levels(gpio):
            if v == active and start is None:
                start = t
            elif v != active and start is not None:
                out.append((start, t - start))
                start = None
        return out


class SimulatedSupervisor:
    """The firmware in one node process. Use as a context manager, or call ``close``."""

    def __init__(self, flash: Path, config: dict[str, Any] | None = None, firmware: Path = FIRMWARE) -> None:
        """``firmware``: the folder whose files become the MCU's code (supervisor/, or the
        .mpy files ``make supervisor`` compiles)."""
        require_package()
        self.firmware = firmware
        self.flash = flash
        self.flash.mkdir(parents=True, exist_ok=True)
        self.config = config or {}
        self.trace = Trace()
        self.now = 0
        self.decoder = FrameDecoder()
        self._replies: list[Frame] = []
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the object; closed in close)
        self._proc: subprocess.Popen[bytes] | None = None
        self._start()

    def __enter__(self) -> SimulatedSupervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self.now = 0
        self._proc = subprocess.Popen(
            [
                "node",
                str(SIM / "runner.mjs"),
                str(MODULES),
                str(self.firmware),
                str(SIM),
                str(self.flash),
                json.dumps(self.config),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._collect(self._read_report())

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _read_report(self) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(REPLY_WAIT):
                raise AssertionError(
                    f"the firmware did not report within {REPLY_WAIT} s; stderr:\n{self.stderr()}"
                )
        line = proc.stdout.readline()
        if not line:
            proc.wait(REPLY_WAIT)
            raise AssertionError(f"the firmware stopped (exit {proc.returncode}); stderr:\n{self.stderr()}")
        report: dict[str, Any] = json.loads(line)
        return report

    def _collect(self, report: dict[str, Any]) -> None:
        self.now = report["now"]
        for event in report["events"]:
            t = event["t"]
            if "pin" in event:
                self.trace.pins.append((t, event["pin"], event["v"]))
            elif "tx" in event:
                data = bytes.fromhex(event["tx"])
                self.trace.tx.append((t, data))
                self._replies += self.decoder.feed(data, t)
            elif "wdt_expired" in event:
                self.trace.wdt_expired.append((t, event["wdt_expired"]))
            elif "wdt_start" in event:
                self.trace.wdt_started.append(t)
        self.trace.fs += report["fs"]

    def _command(self, command: dict[str, Any]) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        proc.stdin.write((json.dumps(command) + "\n").encode())
        proc.stdin.flush()
        self._collect(self._read_report())

    def run(self, ms: int, rx: bytes = b"", adc: int | None = None) -> None:
        """Send ``rx`` to the firmware's UART (if any), set the ADC (if given), and let ``ms``
        simulated milliseconds pass. Bytes end the firmware's wait at once, so the run may report
        before ``ms`` is over; it continues until it is."""
        target = self.now + ms
        command: dict[str, Any] = {"run": ms}
        if rx:
            command["rx"] = rx.hex()
        if adc is not None:
            command["adc"] = adc
        self._command(command)
        while self.now < target:
            self._command({"run": target - self.now})

    def run_until(self, t: int) -> None:
        if t > self.now:
            self.run(t - self.now)

    def replies(self) -> Iterator[Frame]:
        """The frames the firmware sent since the last call."""
        out, self._replies = self._replies, []
        yield from out

    def request(self, frame: bytes, ms: int = 50, junk: bytes = b"") -> Reply:
        """Send one request frame (after ``junk``, if any) and return the reply to it (by seq)."""
        seq = frame[3]
        self.run(ms, rx=junk + frame)
        got = [f for f in self.replies() if f.seq == seq]
        assert len(got) == 1, f"one reply to seq {seq} expected, got {got}; stderr:\n{self.stderr()}"
        return parse_reply(got[0])

    def restart(self) -> None:
        """Power-cycle the MCU: kill the process and start the firmware again on the same flash."""
        self._kill()
        self._start()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(REPLY_WAIT)
        if self._proc is not None:
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()

    def close(self) -> None:
        """Stop the firmware (it exits when told); kill it if it does not."""
        proc = self._proc
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.write(b'{"exit": true}\n')
                proc.stdin.flush()
                proc.wait(REPLY_WAIT)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        self._kill()
        self._stderr.close()


class PtyBridge:
    """The simulated MCU's UART on a PTY, in real time: a program opens ``path`` as it would the
    supervisor's serial port (``/dev/ttyS2`` on the board). A thread moves the simulated clock
    along with the real one (``run`` of the milliseconds that passed), hands it what the program
    wrote, and writes back what the firmware sent. While the bridge runs, read ``sim.trace`` but
    call no other method of ``sim``; close the bridge (or leave its ``with``) to stop the thread."""

    STEP = 0.01
    """Seconds between steps when no byte comes."""

    def __init__(self, sim: SimulatedSupervisor) -> None:
        self.sim = sim
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._relay, name="micropython-pty", daemon=True)
        self._thread.start()

    def __enter__(self) -> PtyBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(REPLY_WAIT)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.error is not None:
            raise AssertionError(f"the PTY bridge failed: {self.error!r}") from self.error

    def _relay(self) -> None:
        sent = len(self.sim.trace.tx)
        last = time.monotonic()
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._master, selectors.EVENT_READ)
                while not self._stop.is_set():
                    data = os.read(self._master, 4096) if sel.select(self.STEP) else b""
                    now = time.monotonic()
                    elapsed = max(1, round((now - last) * 1000))
                    last = now
                    self.sim.run(elapsed, rx=data)
                    for _, chunk in self.sim.trace.tx[sent:]:
                        os.write(self._master, chunk)
                    sent = len(self.sim.trace.tx)
        except BaseException as exc:  # reported by close, in the test's thread
            self.error = exc
