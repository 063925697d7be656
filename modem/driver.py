"""The asyncio driver of one modem: the AT link, the modem state machine, the recovery ladder and
the data link, wired together.

It owns the AT port (an ``AtLink`` with a fresh ``AtEngine`` per opening), carries out what the
``ModemManager`` asks (AT commands, data link up/down/probe, port resync and reopen), asks the
``Ladder`` what to do about each fault and runs the step (AT-level steps through the manager,
port/USB/GPIO/board steps itself), saves the APN memory and the ladder state, and counts the data
link's bytes per ICCID in the accounting ledger. The manager's clock is the loop's; the ladder's
is the wall clock, because its state outlives the process; the accounting's is ``calendar`` (an
aware ``datetime``: the billing cycle follows the calendar).

Use::

    driver = ModemDriver(DriverConfig(), ModemConfig(profile=...), find_port=..., data_link=...,
                         index=..., apn_memory_file=..., ladder_file=..., hooks=..., ledger=...)
    task = asyncio.create_task(driver.run())
    status = await driver.wait_for(lambda s: s.online, timeout=120)
    ...
    task.cancel()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from dvrlink.driver.at_link import AtLink, PortError
from dvrlink.modem.accounting import AccountingEvent, AccountingLedger
from dvrlink.modem.apn import ApnMemory, ApnMemoryFile, ProviderIndex
from dvrlink.modem.data_link import DataFailed, DataFailure, DataLink, DataUp
from dvrlink.modem.ladder import (
    Fault,
    FaultKind,
    Ladder,
    LadderConfig,
    LadderEntry,
    LadderFile,
    RunStep,
    Step,
)
from dvrlink.modem.manager import ModemConfig, ModemManager, ModemState, ModemStatus
from dvrlink.modem.manager_events import (
    ApnRemembered,
    CameOnline,
    FaultDetected,
    ManagerAction,
    ManagerEvent,
    ProbeData,
    ReopenPort,
    ResyncPort,
    SendAt,
    SimChanged,
    StartData,
    StateChanged,
    StopData,
    WentOffline,
)
from dvrlink.modem.sim_flow import redact_iccid
from dvrlink.protocol.at_engine import AtConfig, AtEngine
from dvrlink.protocol.at_events import AtEvent
from dvrlink.protocol.at_specs import CommandSpec, spec_for

log = logging.getLogger(__name__)

PortFinder = Callable[[], str | None]
"""Returns the AT port's current device path, or None while the modem is not there (the
detection layer finds it by USB ID and interface, so the path may change after a reset)."""
DriverEvent = ManagerEvent | LadderEntry | AccountingEvent
AT_STEPS = frozenset({Step.RESYNC, Step.REATTACH, Step.CFUN_CYCLE, Step.MODEM_RESET})
HOOK_STEPS = frozenset({Step.USB_RESET, Step.POWER_CYCLE, Step.BOARD_REBOOT})


class RecoveryHooks(Protocol):
    """Board-level recovery (the HAL): each returns once the action is done or under way."""

    async def usb_reset(self) -> None: ...

    async def power_cycle(self) -> None: ...

    async def reboot_board(self) -> None: ...


class PortUser(Protocol):
    """Another user of the open AT port (the daemon's wake SMS inbox): it runs its own commands
    on the link between the manager's (the engine queues them) and sees every engine event."""

    def port_opened(self, link: AtLink) -> None:
        """The AT port is open on ``link``; it is used until ``link.wait_closed()`` returns."""

    def at_event(self, event: AtEvent) -> None:
        """An event of the open link's engine (the manager has seen it first)."""


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """Settings of the modem driver. Times in seconds.

    ``at``: AT engine settings (the profile adds its URCs). ``command_timeout_cap_s``: cap every
    command's timeout class at this (None: the specs' 3/20/180 s); for rigs and tests.
    ``port_wait_s``: how long a reopen waits for the port to (re)appear before that counts as a
    fault; ``port_poll_s``: how often it looks. ``accounting_interval_s``: how often the data
    link's byte counters go to the ledger.
    """

    at: AtConfig = field(default_factory=AtConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    command_timeout_cap_s: float | None = None
    baudrate: int = 115200
    port_poll_s: float = 0.5
    port_wait_s: float = 60.0
    accounting_interval_s: float = 60.0
    data_down_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.command_timeout_cap_s is not None and self.command_timeout_cap_s <= 0:
            raise ValueError("command_timeout_cap_s must be > 0 seconds, or left out")
        if self.port_poll_s <= 0 or self.port_wait_s <= 0 or self.accounting_interval_s <= 0:
            raise ValueError("port_poll_s, port_wait_s and accounting_interval_s must be > 0 seconds")


class ModemDriver:
    """Runs one modem (see module docstring). ``on_event`` gets every manager event, every
    ladder step taken and every accounting event (cycle started, cap warning/reached/cleared), in
    order, from the event loop.

    ``data_on_at_port`` says whether the data link runs on the AT port itself (PPP on a UART modem
    such as the SIM800). Then the driver closes the AT port before the link comes up and sends no
    AT command while it is up (the manager pauses its polls; the data-path probes go on); it takes
    the port back once the link failed, ended by itself (``wait_down`` of the data link, when it has
    one) or was taken down, including before a recovery step.
    """

    def __init__(
        self,
        config: DriverConfig,
        modem: ModemConfig,
        *,
        find_port: PortFinder,
        data_link: DataLink,
        index: ProviderIndex,
        apn_memory_file: ApnMemoryFile | None = None,
        ladder_file: LadderFile | None = None,
        hooks: RecoveryHooks | None = None,
        ledger: AccountingLedger | None = None,
        wall_clock: Callable[[], float] = time.time,
        calendar: Callable[[], datetime] = lambda: datetime.now().astimezone(),
        data_on_at_port: Callable[[], bool] = lambda: False,
        on_event: Callable[[DriverEvent], None] | None = None,
    ) -> None:
        self.config = config
        self.modem_config = modem
        self._find_port = find_port
        self._data_link = data_link
        self._data_starting = False
        self._apn_file = apn_memory_file
        self._ladder_file = ladder_file
        self._hooks = hooks
        self._ledger = ledger
        self._wall = wall_clock
        self._calendar = calendar
        self._data_on_at_port = data_on_at_port
        self._stopping_data = False
        self._on_event = on_event
        memory = apn_memory_file.load() if apn_memory_file is not None else ApnMemory()
        self._memory = memory
        self.manager = ModemManager(modem, index, memory)
        ladder_config = config.ladder
        if hooks is None:
            ladder_config = replace(ladder_config, enabled=ladder_config.enabled - HOOK_STEPS)
        state = ladder_file.load() if ladder_file is not None else None
        self.ladder = Ladder(ladder_config, state)
        self._at_config = modem.profile.at_config(config.at)
        self._link: AtLink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._data_lock: asyncio.Lock | None = None
        self._recovering: asyncio.Task[None] | None = None
        self._deferred_fault: Fault | None = None
        self._ladder_retry: tuple[float, Fault] | None = None
        self._draining = False
        self._stopped = False
        """``run`` has ended (or is ending): nothing new is started."""
        self._watchers: set[asyncio.Event] = set()
        self._recent: deque[DriverEvent] = deque(maxlen=30)
        self.steps_taken: list[LadderEntry] = []
        """Ladder steps taken by this driver, in order (the persisted history is in the ladder)."""
        self._acct_iccid: str | None = None
        self._acct_last = (0, 0)
        self._acct_next: float | None = None
        self.port_user: PortUser | None = None
        """Shares the AT port while it is open (see :class:`PortUser`); set before ``run``."""

    # ---------------------------------------------------------------------------------- public

    @property
    def link(self) -> AtLink | None:
        """The open AT link, if any (a PPP-on-AT-port data link needs it)."""
        return self._link

    def want_data(self, wanted: bool) -> None:
        """Whether the data session is wanted (:meth:`ModemManager.want_data`): not wanted, the
        data link is taken down, no data-path probe runs and the modem stays registered (an
        ``sms-wake`` recorder asleep); wanted again, it dials. May be called before :meth:`run`."""
        now = self._loop.time() if self._loop is not None else 0.0
        self.manager.want_data(wanted, now)
        if self._loop is not None and not self._stopped:  # a stopped driver starts nothing
            self._drain()

    def status(self) -> ModemStatus:
        """The manager's snapshot plus the ladder step and the data used this cycle."""
        used: int | None = None
        iccid = self.manager.iccid
        if self._ledger is not None and iccid:
            usage = self._ledger.core.usage(iccid)
            used = usage.total if usage is not None else 0
        step = self.ladder.episode_step
        return self.manager.status(ladder_step=int(step) if step else 0, data_used_bytes=used)

    async def wait_for(self, predicate: Callable[[ModemStatus], bool], timeout: float) -> ModemStatus:
        """Wait until ``predicate(status)`` holds; returns that status.

        Raises:
            TimeoutError: not within ``timeout`` seconds; the message has the status and the
                last events.
        """
        try:
            async with asyncio.timeout(timeout):
                while not predicate(status := self.status()):
                    event = asyncio.Event()
                    self._watchers.add(event)
                    try:
                        await event.wait()
                    finally:
                        self._watchers.discard(event)
                return status
        except TimeoutError:
            recent = "\n  ".join(repr(e) for e in self._recent)
            raise TimeoutError(
                f"modem condition not reached within {timeout:g} s; status: {self.status()}\n"
                f"last events:\n  {recent}"
            ) from None

    async def run(self) -> None:
        """Run until cancelled. On the way out the data link is taken down and the port closed."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        self._data_lock = asyncio.Lock()
        try:
            if not await self._open_port("start"):
                self._fault(Fault(FaultKind.PORT_LOST, "the AT port did not appear", at_alive=False))
            while True:
                self._drain()
                self._wake.clear()  # callbacks set it when they change a deadline
                timeout = self._timeout(loop.time())
                if timeout is None or timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await self._wake.wait()
                self._on_timers()
        finally:
            await self._shutdown()

    # ------------------------------------------------------------------------------ internals

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("modem driver task %s failed", task.get_name(), exc_info=task.exception())
        if task is self._recovering:
            self._recovering = None
            if not task.cancelled():
                self._recovery_finished()
                self._drain()
        self._poke()

    def _timeout(self, now: float) -> float | None:
        deadlines: list[float] = []
        if (d := self.manager.next_deadline()) is not None:
            deadlines.append(d)
        if self._ladder_retry is not None:
            deadlines.append(self._ladder_retry[0])
        if (w := self.ladder.next_deadline()) is not None:
            deadlines.append(now + max(0.0, w - self._wall()))
        if self._acct_next is not None:
            deadlines.append(self._acct_next)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _on_timers(self) -> None:
        now = self._now()
        self.manager.tick(now)
        if self._ladder_retry is not None and now >= self._ladder_retry[0]:
            _, fault = self._ladder_retry
            self._ladder_retry = None
            self._fault(fault)
        if self.ladder.tick(self._wall()):
            self._notify()
        self._save_ladder()
        if self._acct_next is not None and now >= self._acct_next:
            self._account()
            self._acct_next = now + self.config.accounting_interval_s

    def _notify(self) -> None:
        for event in self._watchers:
            event.set()

    # ------------------------------------------------------------------------ manager plumbing

    def _drain(self) -> None:
        """Carry out the manager's actions and hand out its events, until both queues are empty."""
        if self._draining:
            return
        self._draining = True
        try:
            while True:
                action = self.manager.next_action()
                if action is not None:
                    self._act(action)
                    continue
                event = self.manager.next_event()
                if event is None:
                    break
                self._handle_event(event)
        finally:
            self._draining = False
        self._notify()
        self._poke()

    def _act(self, action: ManagerAction) -> None:
        if isinstance(action, SendAt):
            command_id: int | None = None
            link = self._link
            if link is not None and link.is_open:
                try:
                    command_id = link.submit(action.command)
                except (PortError, ValueError) as exc:
                    log.warning("modem: cannot send %s: %s", action.command, exc)
            self.manager.at_submitted(command_id)
        elif isinstance(action, StartData):
            self._spawn(self._data_up(action), "modem-data-up")
        elif isinstance(action, StopData):
            self._spawn(self._data_down(action.reason), "modem-data-down")
        elif isinstance(action, ProbeData):
            self._spawn(self._probe(), "modem-probe")
        elif isinstance(action, ResyncPort):
            if self._link is not None and self._link.is_open:
                self._link.resync()
        elif isinstance(action, ReopenPort):
            self._recovering = self._spawn(self._reopen(action.reason, close_first=False), "modem-reopen")

    def _handle_event(self, event: ManagerEvent) -> None:
        self._emit(event)
        if isinstance(event, FaultDetected) and self.manager.port_lent:
            self._spawn(self._reclaim(event.fault), "modem-reclaim-port")
        elif isinstance(event, FaultDetected):
            self._fault(event.fault)
        elif isinstance(event, CameOnline):
            self._acct_iccid = self.manager.iccid
            self._acct_last = (0, 0)
            self._acct_next = self._now() + self.config.accounting_interval_s
            self._account()  # the cap level of this SIM applies from the start
            self.ladder.online(self._wall())
            self._save_ladder()
        elif isinstance(event, WentOffline):
            self._account()
            self._acct_iccid = None
            self._acct_next = None
            self.ladder.offline()
            self._save_ladder()
        elif isinstance(event, StateChanged) and event.new is ModemState.STANDBY:
            # registered with the data session down on purpose: healthy, as online is
            self.ladder.online(self._wall())
            self._save_ladder()
        elif isinstance(event, SimChanged):
            if event.old is not None:
                log.info("modem: SIM %s replaced by %s", redact_iccid(event.old), redact_iccid(event.new))
        elif isinstance(event, ApnRemembered) and self._apn_file is not None:
            try:
                self._apn_file.save(self._memory)
            except OSError as exc:
                log.error("modem: cannot save the APN memory: %s; it is kept in memory", exc)

    def _emit(self, event: DriverEvent) -> None:
        self._recent.append(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                log.exception("modem event handler failed on %r", event)

    def _on_at_event(self, event: AtEvent) -> None:
        self.manager.at_event(event, self._now())
        self._drain()
        if self.port_user is not None:
            try:
                self.port_user.at_event(event)
            except Exception:
                log.exception("modem: the AT port's other user failed on %r", event)

    # ------------------------------------------------------------------------------ data link

    async def _data_up(self, action: StartData) -> None:
        assert self._data_lock is not None
        async with self._data_lock:
            lend = self._link is not None and self._data_on_at_port()
            if lend:
                self._lend_port()
            self._data_starting = True  # stays set if cancelled here: _shutdown then takes it down
            try:
                result: DataUp | DataFailed = await self._data_link.up(action.request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("modem: data link up() raised")
                result = DataFailed(DataFailure.OTHER, f"data link error: {exc}")
            self._data_starting = False
            if lend and not isinstance(result, DataUp):
                await self._return_port("")
        self.manager.data_result(result, self._now(), generation=action.generation)
        self._drain()
        if lend and self.manager.data_up and self.manager.port_lent:
            self._spawn(self._watch_data(), "modem-data-watch")

    async def _data_down(self, reason: str) -> None:
        assert self._data_lock is not None
        self._account()
        async with self._data_lock:
            log.info("modem: data link down: %s", reason)
            self._stopping_data = True
            try:
                async with asyncio.timeout(self.config.data_down_timeout_s):
                    await self._data_link.down()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("modem: data link down() failed")
            finally:
                self._stopping_data = False
            if self.manager.port_lent:
                await self._return_port(reason)
        self._drain()

    # ------------------------------------------------------------------- PPP on the AT port

    def _lend_port(self) -> None:
        """Close the AT port for the data link (without telling the manager it was lost)."""
        link, self._link = self._link, None  # _watch sees a link closed on purpose
        if link is not None:
            link.close("handed to the data link")
            log.info("modem: AT port %s handed to the data link until it ends", link.path)
        self.manager.lend_port(self._now())

    async def _return_port(self, data_ended: str) -> None:
        """Open the AT port again after the data link let it go; a port that does not come back
        is a fault."""
        if not await self._open_port("back from the data link", data_ended=data_ended):
            self._fault(
                Fault(
                    FaultKind.PORT_LOST,
                    f"the AT port did not come back from the data link within {self.config.port_wait_s:g} s",
                    at_alive=False,
                )
            )

    async def _watch_data(self) -> None:
        """Take the AT port back when the data link on it ends by itself (the modem hung up)."""
        wait_down = getattr(self._data_link, "wait_down", None)
        if wait_down is None:
            return
        try:
            ended = await wait_down()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("modem: waiting for the data link to end failed")
            return
        assert self._data_lock is not None
        async with self._data_lock:
            if self._stopping_data or not self.manager.port_lent:
                return  # taken down on purpose; _data_down returns the port
            reason = str(getattr(ended, "reason", ended))
            log.warning("modem: the data link on the AT port ended: %s", reason)
            self._account()
            await self._return_port(reason)
        self._drain()

    async def _reclaim(self, fault: Fault) -> None:
        """A fault while the data link holds the AT port: take the link down (the port comes
        back), then climb the ladder."""
        await self._data_down(f"recovering from {fault.kind.value}")
        self._fault(fault)

    async def _probe(self) -> None:
        try:
            ok = await self._data_link.probe()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("modem: data path probe raised; counted as failed")
            ok = False
        self.manager.probe_result(ok, self._now())
        self._drain()

    def _account(self) -> None:
        iccid = self._acct_iccid
        if self._ledger is None or iccid is None:
            return
        try:
            rx, tx = self._data_link.counters()
        except Exception:
            log.exception("modem: data link counters failed")
            return
        last_rx, last_tx = self._acct_last
        # counters restart from 0 with each link
        drx = rx - last_rx if rx >= last_rx else rx
        dtx = tx - last_tx if tx >= last_tx else tx
        self._acct_last = (rx, tx)
        # Recorded even without new bytes: the billing cycle rolls over (and the cap clears) on
        # the calendar, and after a restart the first record re-raises the cap level reached.
        for event in self._ledger.record(iccid, drx, dtx, self._calendar()):
            self._emit(event)

    # --------------------------------------------------------------------------------- port

    def _spec_for(self, text: str) -> CommandSpec:
        spec = spec_for(text)
        cap = self.config.command_timeout_cap_s
        return dataclasses.replace(spec, timeout=min(spec.timeout, cap)) if cap is not None else spec

    async def _open_port(self, why: str, *, data_ended: str | None = None) -> bool:
        """Wait up to ``port_wait_s`` for the port and open it; True when open. ``data_ended``
        not None: the port comes back from the data link (the manager goes on where it was)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.port_wait_s
        last = "not found"
        while True:
            path = self._find_port()
            if path:
                engine = AtEngine(self._at_config, self._spec_for)
                link = AtLink(path, engine, baudrate=self.config.baudrate, on_event=self._on_at_event)
                try:
                    await link.open()
                except PortError as exc:
                    last = str(exc)
                else:
                    self._link = link
                    self._spawn(self._watch(link), "modem-port-watch")
                    log.info("modem: AT port %s open (%s)", path, why)
                    if data_ended is None:
                        self.manager.port_opened(loop.time())
                    else:
                        self.manager.port_returned(loop.time(), data_ended=data_ended)
                    self._drain()
                    if self.port_user is not None:
                        try:
                            self.port_user.port_opened(link)
                        except Exception:
                            log.exception("modem: the AT port's other user failed to start")
                    return True
            if loop.time() >= deadline:
                log.warning("modem: AT port not back within %g s: %s", self.config.port_wait_s, last)
                return False
            await asyncio.sleep(self.config.port_poll_s)

    async def _watch(self, link: AtLink) -> None:
        reason = await link.wait_closed()
        if link is not self._link:
            return  # closed on purpose
        self._link = None
        self.manager.port_closed(reason, self._now())
        self._drain()

    def _close_port(self, reason: str) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close(reason)
        self.manager.port_closed(reason, self._now(), expected=True)
        self._drain()

    async def _reopen(self, reason: str, *, close_first: bool) -> None:
        if close_first:
            self._close_port(reason)
        if not await self._open_port(reason):
            self._recovering = None
            self._fault(
                Fault(
                    FaultKind.PORT_LOST,
                    f"the AT port did not come back within {self.config.port_wait_s:g} s",
                    at_alive=False,
                )
            )

    # ----------------------------------------------------------------------------- recovery

    def _fault(self, fault: Fault) -> None:
        if self._recovering is not None and not self._recovering.done():
            self._deferred_fault = fault
            return
        self._ladder_retry = None
        decision = self.ladder.decide(fault, self._wall())
        if not isinstance(decision, RunStep):
            delay = max(0.0, decision.until - self._wall())
            log.warning("modem recovery waits %.0f s: %s", delay, decision.reason)
            self._ladder_retry = (self._now() + delay, fault)
            self._save_ladder()
            return
        step = decision.step
        entry = self.ladder.started(step, f"{fault.kind.value}: {fault.reason}", self._wall())
        self.steps_taken.append(entry)
        self._save_ladder()
        self._emit(entry)
        if step in AT_STEPS:
            self.manager.recover(step, self._now())
            self._drain()
        elif step is Step.REOPEN_PORT:
            self._recovering = self._spawn(self._reopen(entry.reason, close_first=True), "modem-reopen")
        else:
            self._recovering = self._spawn(self._hook_step(step, entry.reason), f"modem-{step.label}")

    async def _hook_step(self, step: Step, reason: str) -> None:
        hooks = self._hooks
        assert hooks is not None  # the ladder has these steps off without hooks
        self._close_port(f"recovery step {step.label}")
        try:
            if step is Step.USB_RESET:
                await hooks.usb_reset()
            elif step is Step.POWER_CYCLE:
                await hooks.power_cycle()
            else:
                await hooks.reboot_board()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("modem recovery step %s failed", step.label)
        await self._reopen(reason, close_first=False)

    def _save_ladder(self) -> None:
        if not self.ladder.dirty or self._ladder_file is None:
            return
        try:
            self._ladder_file.save(self.ladder.state, self._wall())
        except OSError as exc:
            log.error("modem: cannot save the recovery ladder state: %s", exc)
            return
        self.ladder.dirty = False

    def _recovery_finished(self) -> None:
        fault, self._deferred_fault = self._deferred_fault, None
        if fault is not None:
            self._fault(fault)

    async def _shutdown(self) -> None:
        self._stopped = True
        # a task ending on its cancellation may start another (a port lost meanwhile starts a
        # reopen): cancel until none is left
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks.difference_update(tasks)
        link, self._link = self._link, None
        if link is not None:
            link.close("modem driver stopped")
        if self.manager.data_up or self._data_starting:
            # also a link cancelled half-way up (a DHCP client or pppd started, no lease yet)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.config.data_down_timeout_s):
                    await self._data_link.down()
        self._account()
        if self._ledger is not None:
            self._ledger.close(self._calendar())
        self._save_ladder()
