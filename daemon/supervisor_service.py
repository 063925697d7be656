"""The board supervisor inside dvrlinkd (``[board] supervisor``; docs/supervisor.md).

:class:`SupervisorService`

- at start, opens the supervisor's port, sets its heartbeat timeout (``supervisor_timeout_s``),
  and reads its status (firmware version), its supply voltage and its reset log: the newest
  reset of this board is shown by ``dvrlinkd status`` in words ("the supervisor reset this board
  at 03:12 after 120 s without a heartbeat");
- sends a heartbeat with the daemon's health at every watchdog ping (``heartbeat``), and every
  ``REFRESH_S`` reads the status, the supply and the log again;
- raises an alarm for each reset log entry the broker has not had yet (``SupervisorReset``; a
  power-on of the supervisor, or a supply below ``low_supply_v``, is a ``BrownOut``), remembering
  the entries it has reported in the state directory (atomic writes), so the fleet view shows
  the boards that keep resetting;
- power-cycles the modem for the recovery ladder with the modem profile's timing
  (:meth:`power_cycle_modem`);
- on a deliberate stop (SIGTERM/SIGINT: ``close(disarm=True)``) disarms the supervisor's
  heartbeat watchdog, so a daemon stopped for maintenance does not get the board reset; the next
  heartbeat (the daemon started again) arms it. A crash or a hang sends nothing, and the
  supervisor resets the board after the timeout as before.

It never raises into the daemon: a supervisor that does not answer is logged, shown in status,
and tried again at the next heartbeat. Its module loads only with ``[board] supervisor`` set
(pyserial comes with it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from dvrlink.daemon.config import SUPERVISOR_MODEM_OF_PROFILE, BoardConfig
from dvrlink.daemon.state import SUPERVISOR_LOG_FILE, StateError, parse_supervisor_log
from dvrlink.daemon.supervisor_link import SupervisorError, SupervisorLink, SupervisorRefused
from dvrlink.protocol import supervisor_wire as wire
from dvrlink.protocol.alarm_wire import AlarmKind
from dvrlink.store.files import atomic_write

log = logging.getLogger(__name__)

EARLIEST_TIME = 1_577_836_800
"""2020-01-01: a board clock before this has not been set (no RTC, no NTP yet), and the
heartbeat says the time is unknown (0) rather than date the supervisor's log in 1970."""
POWER_CYCLE_MARGIN_S = 0.5
"""Waited beyond a power cycle's announced length before the ladder reopens the port (the reply's
own trip, and the supervisor's loop turn)."""
DISARM_WAIT_S = 2.0
"""The longest a stopping daemon waits for the supervisor to confirm the disarm (the client's
three tries take 1.5 s); systemd's stop timeout is far longer."""
REFRESH_S = 300.0
"""Seconds between reads of the supervisor's status, supply and reset log."""
MCU_POWER_ON = 1
"""``machine.reset_cause()`` of a power-on, in an MCU start entry's detail."""
MCU_WATCHDOG = 3
"""``machine.reset_cause()`` of the MCU's own watchdog."""
BOARD_RESETS = (wire.ResetCause.HEARTBEAT_TIMEOUT, wire.ResetCause.COMMAND, wire.ResetCause.MCU_START)
"""Entries that reset this board (an MCU power-on is the board's supply coming back)."""
Entry = tuple[int, int, int, int]
"""A reset log entry as stored: cause, unix time, the supervisor's uptime, detail."""

_PROFILES = {
    ("sim800", False): wire.ModemProfile.SIM800,
    ("sim800", True): wire.ModemProfile.SIM800_POWER_CUT,
    ("quectel-ec2x-uc20", False): wire.ModemProfile.QUECTEL_EC2X_UC20,
    ("quectel-ec2x-uc20", True): wire.ModemProfile.QUECTEL_POWER_CUT,
}


def supervisor_profile(board: BoardConfig, modem_profile: str) -> wire.ModemProfile:
    """The firmware's power-cycle profile for the modem ``modem_profile`` (``[modem]`` profile
    name) on this board.

    Raises:
        RuntimeError: ``supervisor_modem = "auto"`` and the supervisor has no timing for that
            modem (the message says what to set).
    """
    timing = board.supervisor_modem
    if timing == "auto":
        found = SUPERVISOR_MODEM_OF_PROFILE.get(modem_profile)
        if found is None:
            raise RuntimeError(
                f"the supervisor has no power-cycle timing for the modem {modem_profile}: set [board] "
                'supervisor_modem = "sim800" or "quectel-ec2x-uc20"'
            )
        timing = found
    return _PROFILES[(timing, board.supervisor_power_cut)]


def new_entries(seen: Sequence[Entry], now: Sequence[Entry]) -> list[Entry]:
    """The entries of the log ``now`` (newest first) that came after the log ``seen``: the
    fewest newest entries of ``now`` such that the rest of it lines up with the start of
    ``seen`` (the log keeps the newest 16, so old entries fall off its end)."""
    for k in range(len(now) + 1):
        rest = now[k:]
        if list(rest) == list(seen[: len(rest)]):
            return list(now[:k])
    return list(now)  # pragma: no cover (k == len(now) always matches)


def entry_tuple(entry: wire.ResetLogEntry) -> Entry:
    return (int(entry.cause), entry.unix_time, entry.uptime_s, entry.detail)


def alarm_for(entry: Entry, min_supply_mv: int | None) -> tuple[AlarmKind, str] | None:
    """The alarm a new reset log entry raises, or None (a modem power cycle the daemon asked for)."""
    cause, _, uptime_s, detail = entry
    if cause == wire.ResetCause.HEARTBEAT_TIMEOUT:
        return (
            AlarmKind.SUPERVISOR_RESET,
            f"the supervisor reset the board after {detail} s without a heartbeat",
        )
    if cause == wire.ResetCause.COMMAND:
        return AlarmKind.SUPERVISOR_RESET, "the supervisor reset the board, asked by dvrlinkd"
    if cause == wire.ResetCause.CAPPED:
        return (
            AlarmKind.SUPERVISOR_RESET,
            f"the supervisor held a reset back ({detail} s without a heartbeat): its daily cap is reached",
        )
    if cause == wire.ResetCause.MCU_START:
        if detail == MCU_POWER_ON:
            low = f"; supply now at least {min_supply_mv / 1000:.1f} V" if min_supply_mv else ""
            return AlarmKind.BROWN_OUT, f"the board's supply failed: the supervisor powered up{low}"
        if detail == MCU_WATCHDOG:
            return AlarmKind.SUPERVISOR_RESET, "the supervisor's own watchdog restarted it"
        return None
    if cause in (wire.ResetCause.MODEM_POWER_CYCLE, wire.ResetCause.DISARMED):
        return None  # asked for by the daemon: a power cycle it logs itself, a deliberate stop
    return (
        AlarmKind.SUPERVISOR_RESET,
        f"supervisor log entry of cause {cause} (detail {detail}, uptime {uptime_s} s)",
    )


class SupervisorService:
    """The supervisor for the daemon (see the module docstring).

    ``raise_alarm(kind, detail, time_ms)`` queues an alarm for the broker; ``health`` says how
    the daemon is (sent in each heartbeat); ``on_change`` is called when the status block changed.
    """

    def __init__(
        self,
        board: BoardConfig,
        state_dir: Path,
        *,
        raise_alarm: Callable[[AlarmKind, str, int | None], None],
        health: Callable[[], wire.Health],
        on_change: Callable[[], None] | None = None,
        link: SupervisorLink | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.board = board
        self.link = link or SupervisorLink(board.supervisor, baudrate=board.supervisor_baud)
        self._seen_file = Path(state_dir) / SUPERVISOR_LOG_FILE
        self._raise_alarm = raise_alarm
        self._health = health
        self.on_change = on_change
        self._wall = wall_clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._beat: asyncio.Task[None] | None = None
        self._refreshed_at: float | None = None
        self.status: wire.SupervisorStatus | None = None
        self.supply: wire.SupplyReading | None = None
        self.last_reset: Entry | None = None
        """The newest entry of the log that reset this board, read at start."""
        self.last_disarm: Entry | None = None
        """The newest log entry at start when it is a disarm: the daemon was stopped on purpose."""
        self.problem = "not started yet"
        self.heartbeats = 0
        """Heartbeats the supervisor answered."""
        self._low_reported = False
        self._last_uptime = -1
        self._read_once = False

    # -- the daemon's calls ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the port, set the timeout, read status, supply and log (never raises)."""
        await self._connect()

    def heartbeat(self) -> None:
        """The watchdog pinged: send a heartbeat with the daemon's health (in a task), reading the
        status, supply and log again every ``REFRESH_S``; a closed port is opened again first."""
        if self._beat is not None and not self._beat.done():
            return  # one at a time: the next ping sends the next
        self._beat = self._spawn(self._heartbeat())

    async def power_cycle_modem(self, modem_profile: str) -> float:
        """Power-cycle the modem with its profile's timing and wait until the supervisor's
        sequence has run; returns its length in seconds.

        Raises:
            RuntimeError: no timing for this modem, the board lacks the power switch, or the
                supervisor did not answer (``SupervisorError``); the message says what to check.
        """
        profile = supervisor_profile(self.board, modem_profile)
        started = await self.link.power_cycle_modem(profile)
        if started.status is wire.Status.NOT_FITTED:
            raise RuntimeError(
                f"the supervisor on {self.board.supervisor} has no {profile.name.lower()} power cycle: "
                "its board lacks the modem power switch; set [board] supervisor_power_cut = false"
            )
        if started.status is wire.Status.BUSY:
            log.warning("modem power cycle: the supervisor is running one already; waiting for it")
        else:
            log.warning(
                "modem recovery: the supervisor power-cycles the modem (%s, %.1f s)",
                profile.name.lower(),
                started.duration_ms / 1000,
            )
        await asyncio.sleep(started.duration_ms / 1000 + POWER_CYCLE_MARGIN_S)
        return started.duration_ms / 1000

    def snapshot(self) -> dict[str, Any]:
        """The status file's supervisor block."""
        status, supply = self.status, self.supply
        out: dict[str, Any] = {"port": self.board.supervisor, "problem": self.problem}
        if status is not None:
            out |= {
                "firmware": ".".join(map(str, status.firmware)),
                "timeout_s": status.timeout_s,
                "resets_24h": status.resets_24h,
                "daily_cap": status.daily_cap,
            }
        if supply is not None:
            out |= {"supply_mv": supply.millivolts, "min_supply_mv": supply.min_millivolts}
        if self.last_reset is not None:
            cause, unix, uptime_s, detail = self.last_reset
            out["last_reset"] = {"cause": cause, "unix_time": unix, "uptime_s": uptime_s, "detail": detail}
        if self.last_disarm is not None:
            cause, unix, uptime_s, detail = self.last_disarm
            out["last_disarm"] = {"cause": cause, "unix_time": unix, "uptime_s": uptime_s, "detail": detail}
        out["heartbeats"] = self.heartbeats
        return out

    async def close(self, *, disarm: bool = False) -> None:
        """Stop heartbeating and close the port. ``disarm``: the daemon stops on purpose (SIGTERM,
        SIGINT), so first stand the supervisor's watchdog down (never raises; a supervisor that
        does not answer, or a firmware before 1.1, is logged: it then resets the board one timeout
        after the last heartbeat, as after a crash)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if disarm:
            await self._disarm()
        self.link.close("closed: dvrlinkd stopped")

    async def _disarm(self) -> None:
        port = self.board.supervisor
        if not self.link.is_open:
            log.warning(
                "dvrlinkd stops without disarming the supervisor on %s (its port is not open: %s): it "
                "resets this board one timeout after the last heartbeat unless dvrlinkd starts again",
                port,
                self.link.closed_reason,
            )
            return
        try:
            done = await asyncio.wait_for(self.link.disarm(self._unix_time()), DISARM_WAIT_S)
        except SupervisorRefused as exc:
            if exc.code != wire.ErrorCode.UNKNOWN_TYPE:
                log.error("the supervisor on %s refused the disarm (%s)", port, exc)
                return
            log.warning(
                "the supervisor on %s has a firmware older than 1.1, which cannot be disarmed: it resets "
                "this board one timeout after the last heartbeat unless dvrlinkd starts again; update its "
                "firmware, or set its maintenance jumper for long maintenance",
                port,
            )
            return
        except (SupervisorError, TimeoutError) as exc:
            log.error(
                "could not disarm the supervisor on %s (%s): it resets this board one timeout after the "
                "last heartbeat unless dvrlinkd starts again",
                port,
                exc or "no answer",
            )
            return
        if done.was_armed:
            log.info("the supervisor on %s is disarmed until dvrlinkd's next heartbeat", port)
        else:
            log.info("the supervisor on %s was not armed; it stays so until the next heartbeat", port)

    # -- internals -------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._guarded(coro), name="supervisor")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro``; an unexpected error is logged, never left in a task."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the supervisor's heartbeat failed; trying again at the next one")

    def _unix_time(self) -> int:
        now = int(self._wall())
        return now if EARLIEST_TIME <= now <= 0xFFFFFFFF else 0

    async def _heartbeat(self) -> None:
        if not self.link.is_open:
            await self._connect()
            return
        try:
            await self.link.heartbeat(self._health(), self._unix_time())
        except SupervisorError as exc:
            self._failed(exc)
            return
        self.heartbeats += 1
        if self.problem:
            log.info("the supervisor on %s answers again", self.board.supervisor)
            self.problem = ""
            self._changed()
        loop_now = asyncio.get_running_loop().time()
        if self._refreshed_at is None or loop_now - self._refreshed_at >= REFRESH_S:
            await self._refresh()

    async def _connect(self) -> None:
        try:
            self.link.open()
            if self.board.supervisor_timeout_s:
                done = await self.link.set_heartbeat_timeout(self.board.supervisor_timeout_s)
                if done.status is not wire.Status.OK:
                    log.error(
                        "the supervisor refused a heartbeat timeout of %d s (%s); it keeps %d s",
                        self.board.supervisor_timeout_s,
                        done.status.name,
                        done.timeout_s,
                    )
            await self.link.heartbeat(self._health(), self._unix_time())
            self.heartbeats += 1
        except SupervisorError as exc:
            self._failed(exc)
            return
        if self.problem:
            log.info("the supervisor on %s answers", self.board.supervisor)
        self.problem = ""
        await self._refresh()

    async def _refresh(self) -> None:
        self._refreshed_at = asyncio.get_running_loop().time()
        try:
            self.status = await self.link.get_status()
            self.supply = await self.link.read_supply()
            reset_log = await self.link.read_reset_log()
        except SupervisorError as exc:
            self._failed(exc)
            return
        status = self.status
        first, self._read_once = not self._read_once, True
        if first:
            log.info(
                "supervisor on %s: firmware %s, supply %.2f V, heartbeat timeout %d s, %d resets in 24 h",
                self.board.supervisor,
                ".".join(map(str, status.firmware)),
                self.supply.millivolts / 1000,
                status.timeout_s,
                status.resets_24h,
            )
        entries = [entry_tuple(e) for e in reset_log.entries]
        if first:
            self.last_reset = next((e for e in entries if e[0] in BOARD_RESETS), None)
            self.last_disarm = entries[0] if entries and entries[0][0] == wire.ResetCause.DISARMED else None
        self._report_new(entries)
        self._check_supply(status, self.supply)
        self._changed()

    def _report_new(self, entries: list[Entry]) -> None:
        try:
            seen = parse_supervisor_log(self._seen_file, self._seen_file.read_bytes())
        except FileNotFoundError:
            seen = []
        except (OSError, StateError) as exc:
            log.error("%s; reporting the whole supervisor log again", exc)
            seen = []
        fresh = new_entries(seen, entries)
        min_mv = self.supply.min_millivolts if self.supply is not None else None
        for entry in reversed(fresh):  # oldest first
            alarm = alarm_for(entry, min_mv)
            if alarm is not None:
                kind, detail = alarm
                self._raise_alarm(kind, detail, entry[1] * 1000 if entry[1] else None)
        if fresh or not self._seen_file.exists():
            try:
                atomic_write(self._seen_file, json.dumps({"entries": [list(e) for e in entries]}).encode())
            except OSError as exc:
                log.error(
                    "cannot save %s (%s): its entries are reported again at the next start",
                    self._seen_file,
                    exc,
                )

    def _check_supply(self, status: wire.SupervisorStatus, supply: wire.SupplyReading) -> None:
        if status.uptime_s < self._last_uptime:
            self._low_reported = False  # the supervisor restarted: its lowest reading restarted too
        self._last_uptime = status.uptime_s
        threshold_mv = round(self.board.low_supply_v * 1000)
        if (
            threshold_mv
            and supply.min_millivolts
            and supply.min_millivolts < threshold_mv
            and not self._low_reported
        ):
            self._low_reported = True
            self._raise_alarm(
                AlarmKind.BROWN_OUT,
                f"the supply fell to {supply.min_millivolts / 1000:.2f} V, below [board] low_supply_v "
                f"{self.board.low_supply_v:g} V (now {supply.millivolts / 1000:.2f} V)",
                None,
            )

    def _failed(self, exc: SupervisorError) -> None:
        text = str(exc)
        if text != self.problem:
            log.error("%s; trying again at the next heartbeat", text)
            self.problem = text
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("the supervisor's status listener failed")
