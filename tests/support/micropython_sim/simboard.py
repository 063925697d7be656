"""The simulated world the firmware runs in under the tests (MicroPython, in the WebAssembly port).

Time is simulated: the firmware's clock stands still until its main loop waits, and a wait moves
it on. The host (tests/support/micropython.py, through runner.mjs) grants time with ``run``; when a
wait would pass the granted time, the clock stops there and ``sync`` sends what happened (pin
changes, UART bytes, watchdog feeds, flash writes) and takes the host's next command. Bytes the
host sends end the wait at once, as the UART's poll does on the MCU.
"""

import json

import hostlink


class World:
    """The one simulated world of this MicroPython instance (the runner makes one per test)."""

    def __init__(self) -> None:
        self.now = 0
        self.until = 0
        self.events: list[dict[str, object]] = []
        self.rx = b""
        self.adc = 0
        self.config = json.loads(hostlink.config())
        self.reset_cause = int(self.config.get("reset_cause", 1))
        self.wdt_timeout = -1
        self.wdt_last = 0

    def event(self, fields: dict[str, object]) -> None:
        fields["t"] = self.now
        self.events.append(fields)

    def check_wdt(self) -> None:
        if self.wdt_timeout >= 0 and self.now - self.wdt_last > self.wdt_timeout:
            self.event({"wdt_expired": self.now - self.wdt_last})
            self.wdt_last = self.now

    def sync(self) -> None:
        self.check_wdt()
        fs = json.loads(hostlink.fs_events())
        hostlink.send(json.dumps({"now": self.now, "events": self.events, "fs": fs}))
        self.events = []
        line = hostlink.recv()
        if not line:
            raise SystemExit
        cmd = json.loads(line)
        if "rx" in cmd:
            self.rx += bytes.fromhex(cmd["rx"])
        if "adc" in cmd:
            self.adc = int(cmd["adc"])
        if cmd.get("exit"):
            raise SystemExit
        self.until = self.now + int(cmd.get("run", 0))


WORLD = World()


class Clock:
    """The firmware's clock in the simulation (the Clock of sv_board)."""

    def __init__(self) -> None:
        self._last = WORLD.now

    def elapsed_ms(self) -> int:
        elapsed = WORLD.now - self._last
        self._last = WORLD.now
        return elapsed

    def wait(self, uart: object, timeout_ms: int) -> None:
        target = WORLD.now + timeout_ms
        while target > WORLD.until:
            WORLD.now = WORLD.until
            WORLD.sync()
            if WORLD.rx:
                return
        WORLD.now = target
