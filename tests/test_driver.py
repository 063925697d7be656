"""The core driver: one tiny real sans-I/O core, driven on a real event loop.

``EchoCore`` echoes each datagram to its sender and then sends it ``ticks`` timed datagrams; a
datagram starting ``b"bad"`` makes it raise, as a core with a parsing bug would. The driver must
flush the core's output and re-arm its timer after every input and every expiry, contain every
exception, and stop for good on close.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from pytest_mock import MockerFixture
from support.aio import run
from support.waiting import WAIT

from dvrlink.driver.core_driver import LOGGED_ERRORS, CoreDriver

Addr = tuple[str, int]
PEER: Addr = ("192.0.2.7", 4000)
OTHER: Addr = ("192.0.2.8", 4001)


@dataclass(frozen=True, slots=True)
class EchoEvent:
    """Base of ``EchoCore``'s events."""


@dataclass(frozen=True, slots=True)
class Echoed(EchoEvent):
    data: bytes
    address: Addr


@dataclass(frozen=True, slots=True)
class Ticked(EchoEvent):
    now: float


class EchoCore:
    """Echoes each datagram to its sender, then sends it ``ticks`` ``b"tick"`` datagrams, one every
    ``interval`` seconds (a new datagram starts the count again). Raises ``ValueError`` on a
    datagram that starts with ``b"bad"``; ``fail_timer`` makes ``handle_timer`` raise once."""

    def __init__(self, interval: float, ticks: int = 2) -> None:
        self.interval = interval
        self.ticks = ticks
        self.fired: list[float] = []
        self.fail_timer = False
        self._events: deque[EchoEvent] = deque()
        self._out: list[tuple[bytes, Addr]] = []
        self._deadline: float | None = None
        self._left = 0
        self._peer = PEER

    def receive_datagram(self, data: bytes, address: Addr, now: float) -> None:
        if data.startswith(b"bad"):
            raise ValueError(f"malformed datagram {data!r}")
        self._out.append((b"echo:" + data, address))
        self._events.append(Echoed(data, address))
        self._peer = address
        self._left = self.ticks
        self._deadline = now + self.interval

    def send(self, data: bytes) -> None:
        """A call the application makes on the core (``reply_invite``, ``send_invite``)."""
        self._out.append((data, self._peer))

    def next_event(self) -> EchoEvent | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self.fail_timer:
            self.fail_timer = False
            raise RuntimeError("timer bug")
        if self._deadline is None or now < self._deadline:
            return  # early calls do nothing
        self.fired.append(now)
        self._out.append((b"tick", self._peer))
        self._events.append(Ticked(now))
        self._left -= 1
        self._deadline = now + self.interval if self._left else None


class Wire:
    """The link's side of the driver: what ``transmit`` was given, in order, and the events."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Addr]] = []
        self.events: list[EchoEvent] = []
        self.steps = 0
        self.arrived = asyncio.Event()

    def transmit(self, out: Sequence[tuple[bytes, Addr]]) -> None:
        self.sent.extend(out)
        self.arrived.set()

    def on_event(self, event: EchoEvent) -> None:
        self.events.append(event)

    def after_step(self) -> None:
        self.steps += 1

    async def until_sent(self, count: int) -> None:
        """Wait (bounded) until ``count`` datagrams went out."""
        async with asyncio.timeout(WAIT):
            while len(self.sent) < count:
                self.arrived.clear()
                await self.arrived.wait()

    def payloads(self) -> list[bytes]:
        return [data for data, _ in self.sent]


def make(
    core: EchoCore, wire: Wire, clock: Callable[[], float] | None = None
) -> CoreDriver[EchoEvent, tuple[bytes, Addr]]:
    return CoreDriver(
        core, wire.transmit, on_event=wire.on_event, after_step=wire.after_step, clock=clock, name="echo core"
    )


def test_each_input_is_flushed_at_once_and_rearms_the_timer() -> None:
    async def main() -> None:
        clock = [500.0]  # the core's clock, moved by hand; the timer (60 s) does not fire here
        core, wire = EchoCore(interval=60.0), Wire()
        driver = make(core, wire, clock=lambda: clock[0])
        driver.receive_from(core.receive_datagram, b"one", PEER)
        # Flushed before receive_from returned: no loop iteration in between.
        assert wire.sent == [(b"echo:one", PEER)], wire.sent
        assert wire.events == [Echoed(b"one", PEER)], wire.events
        assert wire.steps == 1, wire.steps
        assert core.get_timer() == 560.0 and driver.timer_at == 560.0, driver.timer_at

        clock[0] = 501.0  # the next input moves the core's deadline; the timer follows
        driver.receive_from(core.receive_datagram, b"two", OTHER)
        assert core.get_timer() == 561.0 and driver.timer_at == 561.0, driver.timer_at
        assert wire.payloads() == [b"echo:one", b"echo:two"], wire.sent
        assert wire.sent[-1][1] == OTHER

        core.send(b"reply")  # a call made on the core from outside, then announced
        driver.flush()
        assert wire.payloads()[-1] == b"reply", wire.sent
        driver.close()

    run(main)


def test_timer_expiries_reach_the_core_and_their_output_is_flushed() -> None:
    async def main() -> None:
        core, wire = EchoCore(interval=0.02, ticks=3), Wire()
        driver = make(core, wire)
        driver.receive_from(core.receive_datagram, b"hi", PEER)
        await wire.until_sent(4)  # the echo, then three ticks, each after its own expiry
        assert wire.payloads() == [b"echo:hi", b"tick", b"tick", b"tick"], wire.sent
        assert [event for event in wire.events if isinstance(event, Ticked)] == [
            Ticked(now) for now in core.fired
        ]
        assert len(core.fired) == 3 and core.fired == sorted(core.fired), core.fired
        assert core.get_timer() is None and driver.timer_at is None, driver.timer_at
        assert wire.steps == 4, wire.steps
        driver.close()

    run(main)


def test_the_core_never_sees_a_time_before_its_deadline(mocker: MockerFixture) -> None:
    async def main() -> None:
        clock = [1000.0]  # a core clock that lags: it reads the same whatever the loop does
        core, wire = EchoCore(interval=0.05, ticks=1), Wire()
        timer = mocker.spy(core, "handle_timer")
        driver = make(core, wire, clock=lambda: clock[0])
        driver.receive_from(core.receive_datagram, b"hi", PEER)
        deadline = core.get_timer()
        assert deadline is not None and deadline > clock[0]
        await wire.until_sent(2)
        timer.assert_called_once_with(deadline)  # not 1000.0, which the clock still reads
        assert core.fired == [deadline]
        driver.close()

    run(main)


def test_a_core_that_raises_on_bad_input_does_not_stop_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        escaped: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: escaped.append(context))
        core, wire = EchoCore(interval=0.02, ticks=1), Wire()
        driver = make(core, wire)

        driver.receive_from(core.receive_datagram, b"bad frame", PEER)
        assert driver.errors == 1 and wire.sent == [], (driver.errors, wire.sent)
        # The pass still ran after the failure; later input is served as before.
        assert wire.steps == 1, wire.steps
        driver.receive_from(core.receive_datagram, b"good", PEER)
        assert wire.payloads() == [b"echo:good"], wire.sent

        core.fail_timer = True  # the first expiry raises; the core's deadline stays, so it runs again
        await wire.until_sent(2)
        assert wire.payloads() == [b"echo:good", b"tick"], wire.sent
        assert driver.errors == 2, driver.errors
        assert escaped == [], f"exceptions reached asyncio: {escaped}"

    with caplog.at_level(logging.ERROR):
        run(main)
    failures = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert [record.getMessage() for record in failures] == [
        f"echo core failed on a datagram from {PEER} (1 errors so far); carrying on",
        "echo core failed in its timer (2 errors so far); carrying on",
    ]
    assert failures[0].exc_info is not None and "malformed datagram" in str(failures[0].exc_info[1])


def test_a_failing_event_handler_gets_the_next_events(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        core, wire = EchoCore(interval=60.0), Wire()
        seen: list[EchoEvent] = []

        def on_event(event: EchoEvent) -> None:
            seen.append(event)
            raise RuntimeError("handler bug")

        driver = CoreDriver(core, wire.transmit, on_event=on_event, after_step=wire.after_step)
        driver.receive_from(core.receive_datagram, b"a", PEER)
        driver.receive_from(core.receive_datagram, b"b", PEER)
        assert seen == [Echoed(b"a", PEER), Echoed(b"b", PEER)], seen
        assert wire.payloads() == [b"echo:a", b"echo:b"], wire.sent  # output still flushed
        assert driver.errors == 2 and wire.steps == 2, (driver.errors, wire.steps)
        driver.close()

    run(main)
    assert "event handler failed on Echoed(data=b'a'" in caplog.text


def test_a_flood_of_failures_is_counted_but_the_log_thins_out(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        core, wire = EchoCore(interval=60.0), Wire()
        driver = make(core, wire)
        for _ in range(LOGGED_ERRORS + 40):
            driver.receive_from(core.receive_datagram, b"bad", PEER)
        assert driver.errors == LOGGED_ERRORS + 40
        driver.close()

    run(main)
    logged = [record for record in caplog.records if "failed on a datagram" in record.getMessage()]
    assert len(logged) == LOGGED_ERRORS, f"{len(logged)} lines logged for {LOGGED_ERRORS + 40} failures"


def test_a_flush_from_inside_a_pass_is_folded_into_it() -> None:
    async def main() -> None:
        core, wire = EchoCore(interval=60.0), Wire()
        driver: CoreDriver[EchoEvent, tuple[bytes, Addr]]
        depth = [0, 0]  # now, deepest

        def on_event(event: EchoEvent) -> None:
            depth[0] += 1
            depth[1] = max(depth)
            wire.on_event(event)
            if isinstance(event, Echoed):
                core.send(b"answer:" + event.data)  # what an invite handler does
                driver.flush()  # re-entrant: runs after this pass, not inside this handler
            depth[0] -= 1

        driver = CoreDriver(core, wire.transmit, on_event=on_event, after_step=wire.after_step)
        now = driver.now()
        core.receive_datagram(b"a", PEER, now)  # two events wait for one pass
        core.receive_datagram(b"b", PEER, now)
        driver.flush()
        assert depth[1] == 1, f"the event handler was re-entered ({depth[1]} deep)"
        assert wire.events == [Echoed(b"a", PEER), Echoed(b"b", PEER)], wire.events
        assert wire.payloads() == [b"echo:a", b"echo:b", b"answer:a", b"answer:b"], wire.sent
        assert wire.steps == 2, wire.steps  # the pass, then the one it was asked for
        driver.close()

    run(main)


def test_close_cancels_the_timer_and_stops_driving() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        core, wire = EchoCore(interval=0.02, ticks=1), Wire()
        driver = make(core, wire)
        driver.receive_from(core.receive_datagram, b"hi", PEER)
        deadline = driver.timer_at
        assert deadline is not None
        driver.close()
        assert driver.closed and driver.timer_at is None

        # Handles run in deadline order: one due after the core's deadline runs after its timer
        # would have.
        later = loop.create_future()
        loop.call_at(deadline + 0.02, later.set_result, None)
        await asyncio.wait_for(later, WAIT)
        assert core.fired == [], f"the core's timer ran after close: {core.fired}"

        driver.receive_from(core.receive_datagram, b"after", PEER)
        core.send(b"queued")
        driver.flush()
        assert wire.payloads() == [b"echo:hi"], wire.sent
        assert driver.timer_at is None

    run(main)


def test_a_connected_core_is_fed_without_an_address() -> None:
    async def main() -> None:
        core, wire = EchoCore(interval=60.0), Wire()
        driver = make(core, wire)
        driver.receive(lambda data, now: core.receive_datagram(data, OTHER, now), b"x")
        assert wire.sent == [(b"echo:x", OTHER)], wire.sent
        driver.receive(lambda data, now: core.receive_datagram(data, OTHER, now), b"bad")
        assert driver.errors == 1
        driver.close()

    run(main)
