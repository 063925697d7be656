"""The cellular modem inside dvrlinkd: ``[modem]`` settings -> a supervised ``ModemDriver``.

:class:`ModemService` is what ``run_daemon`` starts when ``[modem] enabled = true``. It

- finds the AT port: ``[modem] port`` when given, else a udev watcher (``modem/detect.py``) that
  follows the modem by USB ID and interface number; the runner's ``find_port`` returns the port
  of the modem attached now, so a modem that re-enumerates after a reset is picked up again;
- picks the data link from the profile's dial method (or ``data_link``): pppd
  (``modem/ppp.py``) on the modem's PPP port, or DHCP on its network interface (``modem/ecm.py``),
  both judged healthy by a STUN probe to the broker through the modem (``modem/netprobe.py``);
- keeps the APN memory, the recovery ladder's state and the data accounting under
  ``<state_dir>/modem/`` (atomic writes);
- gives the ladder the board hooks (:class:`BoardHooks`): USB reset through sysfs, a power
  cycle through the board's supervisor (``[board] supervisor``, with the modem profile's PWRKEY
  timing) or else a configured command (GPIO), a board reboot only when ``board_reboot`` is on;
- never lets the modem take the daemon down: an unexpected error is logged, shown in status, and
  the runner is built again after a backoff;
- offers a snapshot for the status file (:meth:`ModemService.snapshot`) and a small report for the
  broker (:meth:`ModemService.report`);
- applies the data cap of the SIM in the tray: at ``cap_warn_percent`` a warning (log, status); at
  ``cap_stop_percent`` optional traffic stops (:meth:`ModemService.optional_traffic_refusal` says
  why, ``on_cap`` is told) until a new billing cycle or another SIM clears it. Presence, its
  keepalives and the control of the device go on.

Timer settings the config file does not expose are in :class:`ModemTuning`; the defaults suit a
real modem, rigs scale them down. :class:`ModemOptions` holds those and the seams tests use
(replacement board hooks, a runner factory, a watcher factory).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from dvrlink.daemon.config import ModemSettings
from dvrlink.daemon.status import ModemBlock
from dvrlink.modem.accounting import AccountingConfig, AccountingLedger, CapLevel, next_cycle_start
from dvrlink.modem.apn import (
    ApnConfig,
    ApnDatabaseError,
    ApnMemoryFile,
    ApnSettings,
    ProviderIndex,
    load_index,
)
from dvrlink.modem.detect import (
    DetectConfig,
    DetectionEvent,
    ModemAdded,
    ModemIncomplete,
    ModemRemoved,
    UdevModemWatcher,
    usb_device_path,
)
from dvrlink.modem.driver import DriverConfig, DriverEvent, ModemDriver, PortUser, RecoveryHooks
from dvrlink.modem.ecm import EcmConfig, EcmLink
from dvrlink.modem.ladder import LadderFile, Step
from dvrlink.modem.manager import (
    DataFailed,
    DataFailure,
    DataRequest,
    DataUp,
    ModemConfig,
    ModemState,
    ModemStatus,
    redact_iccid,
)
from dvrlink.modem.netprobe import DataPathProbe, ProbeConfig
from dvrlink.modem.ppp import LinkFailed, PppConfig, PppLink
from dvrlink.modem.profiles import DialMethod, ModemProfile, profile_by_name

log = logging.getLogger(__name__)

MODEM_DIR = "modem"
APN_MEMORY_FILE = "apn_memory.json"
LADDER_FILE = "ladder.json"
ACCOUNTING_FILE = "accounting.json"
APN_INDEX_CACHE = "apn_index.cache"
MB = 1_000_000


# ------------------------------------------------------------------------------------ options


@dataclass(frozen=True, slots=True)
class ModemTuning:
    """Timers the config file does not expose. Times in seconds."""

    modem: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """``ModemConfig`` fields to override (``sim_poll_s``, ``probe_interval_s``, ...)."""
    runner: DriverConfig = field(default_factory=DriverConfig)
    """The runner's settings; its ladder's intervals are kept, the enabled steps and the reboot cap
    come from ``[modem]``."""
    detect: DetectConfig = field(default_factory=DetectConfig)
    probe_timeout_s: float = 8.0
    """One data-path probe (GPRS round trips reach 1-2 s)."""
    restart_backoff_s: float = 5.0
    """First wait before the runner is built again after an unexpected error; it doubles."""
    restart_backoff_max_s: float = 300.0
    usb_reset_off_s: float = 1.0
    """How long the modem's USB device stays de-authorised during a USB reset."""
    hook_timeout_s: float = 60.0
    """A board hook command (power cycle, reboot) taking longer than this is killed and counts as failed."""

    def __post_init__(self) -> None:
        if not 0 < self.restart_backoff_s <= self.restart_backoff_max_s:
            raise ValueError("restart_backoff_s must be > 0 and at most restart_backoff_max_s")
        if self.probe_timeout_s <= 0 or self.usb_reset_off_s < 0 or self.hook_timeout_s <= 0:
            raise ValueError("probe_timeout_s and hook_timeout_s must be > 0, usb_reset_off_s >= 0 seconds")


class RunnerLike(Protocol):
    """What the service needs of a ``ModemDriver``."""

    async def run(self) -> None: ...

    def status(self) -> ModemStatus: ...


PowerCycler = Callable[[str], Awaitable[None]]
"""Power-cycles the modem of the named profile through the board's supervisor; raises
RuntimeError (or a subclass) when it cannot."""

RunnerFactory = Callable[..., RunnerLike]
"""Called like ``ModemDriver(runner_config, modem_config, **keywords)``."""


class WatcherLike(Protocol):
    """What the service needs of a ``UdevModemWatcher``: its hot-plug events."""

    async def start(self) -> None: ...

    async def next_event(self) -> DetectionEvent: ...

    def close(self) -> None: ...


WatcherFactory = Callable[[DetectConfig], WatcherLike]
"""Called like ``UdevModemWatcher(tuning.detect)`` when no ``[modem] port`` is set."""


@dataclass(frozen=True, slots=True)
class ModemOptions:
    """How ``run_daemon`` builds the modem service beyond the config file (rigs and tests)."""

    tuning: ModemTuning = field(default_factory=ModemTuning)
    hooks: RecoveryHooks | None = None
    """Board hooks to use instead of :class:`BoardHooks` (a test must never reboot its host)."""
    runner_factory: RunnerFactory = ModemDriver
    watcher_factory: WatcherFactory = UdevModemWatcher
    """Builds the modem watcher (udev); a test gives one that replays hot-plug events."""
    on_status: Callable[[ModemBlock], None] | None = None
    """Called with each new snapshot, after the daemon has rewritten its status file."""


# ------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class ModemReport:
    """What the device tells the broker about its modem, at a low rate."""

    state: str
    """The modem state (``online``, ``registering``, ``sim-absent``, ...)."""
    signal_dbm: int | None
    rat: str
    """Radio technology (``LTE``, ``UMTS``, ``EDGE``, ...); empty when not registered."""
    data_used_bytes: int | None
    """Bytes this billing cycle for the SIM in the tray; None before it was identified."""


# --------------------------------------------------------------------------------- board hooks


def usb_device_of_tty(port: str, sys_root: Path = Path("/sys")) -> Path | None:
    """The sysfs directory of the USB device a tty belongs to, or None (not USB, or not there)."""
    name = Path(os.path.realpath(port)).name
    try:
        device = (sys_root / "class" / "tty" / name / "device").resolve(strict=True)
    except OSError:
        return None
    found = usb_device_path(str(device))
    return Path(found) if found else None


class BoardHooks:
    """The ladder's board steps (``RecoveryHooks``): each raises when it cannot be carried out, with
    a message saying why (the runner logs it and goes on to reopen the port)."""

    def __init__(
        self,
        settings: ModemSettings,
        tuning: ModemTuning,
        usb_device: Callable[[], Path | None],
        *,
        power_cycler: PowerCycler | None = None,
        profile: str = "",
    ) -> None:
        self._settings = settings
        self._tuning = tuning
        self._usb_device = usb_device
        self._power_cycler = power_cycler
        self._profile = profile

    async def usb_reset(self) -> None:
        """De-authorise the modem's USB device, then authorise it again (it re-enumerates).

        Raises:
            RuntimeError: no USB device is known for the modem.
            OSError: ``authorized`` cannot be written (the daemon needs write access to it).
        """
        device = self._usb_device()
        if device is None:
            raise RuntimeError(
                "USB reset: the modem's USB device is not known (not a USB modem, or unplugged)"
            )
        authorized = device / "authorized"
        log.warning("modem recovery: USB reset of %s", device)
        authorized.write_text("0")
        await asyncio.sleep(self._tuning.usb_reset_off_s)
        authorized.write_text("1")

    async def power_cycle(self) -> None:
        """Power-cycle the modem through the board's supervisor (``[board] supervisor``), with
        the timing of the modem's profile, and return once its sequence has run; without a
        supervisor, run ``power_cycle_command`` (the board's GPIO).

        Raises:
            RuntimeError: no supervisor and no command is configured, or the power cycle failed.
        """
        if self._power_cycler is not None:
            await self._power_cycler(self._profile)
            return
        await self._run("power cycle", self._settings.power_cycle_command)

    async def reboot_board(self) -> None:
        """Run ``reboot_command`` when ``board_reboot`` is on.

        Raises:
            RuntimeError: board reboots are off, or the command failed.
        """
        if not self._settings.board_reboot:
            raise RuntimeError("board reboot is off: set [modem] board_reboot = true to allow it")
        await self._run("board reboot", self._settings.reboot_command)

    async def _run(self, what: str, argv: tuple[str, ...]) -> None:
        if not argv:
            raise RuntimeError(f"{what}: no command configured in [modem]")
        log.warning("modem recovery: %s with %s", what, " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            raise RuntimeError(f"{what}: cannot run {argv[0]}: {exc}; fix the command in [modem]") from exc
        try:
            async with asyncio.timeout(self._tuning.hook_timeout_s):
                code = await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(
                f"{what}: {argv[0]} did not finish within {self._tuning.hook_timeout_s:g} s"
            ) from None
        if code != 0:
            raise RuntimeError(f"{what}: {argv[0]} exited with {code}")


# ---------------------------------------------------------------------------------- data link


@dataclass(frozen=True, slots=True)
class ModemPorts:
    """Where the modem attached now is: AT port, PPP port, network interface, USB device."""

    at_port: str | None
    data_port: str | None
    net_iface: str | None
    usb_device: Path | None


class CurrentPortLink:
    """A ``DataLink`` that binds to the modem's current ports at each ``up``: pppd on the PPP port,
    or DHCP on the network interface, as the dial method says (the ports change when the modem
    re-enumerates)."""

    def __init__(
        self,
        method: DialMethod,
        ports: Callable[[], ModemPorts | None],
        ppp: PppConfig,
        ecm: EcmConfig,
        probe: DataPathProbe,
    ) -> None:
        self.method = method
        self._ports = ports
        self._ppp = ppp
        self._ecm = ecm
        self._probe = probe
        self._link: PppLink | EcmLink | None = None

    @property
    def link(self) -> PppLink | EcmLink | None:
        """The link of the last ``up``, if any."""
        return self._link

    async def up(self, request: DataRequest) -> DataUp | DataFailed:
        ports = self._ports()
        if self.method is DialMethod.PPP:
            device = ports.data_port if ports is not None else None
            if not device:
                return DataFailed(DataFailure.NO_DEVICE, "no PPP port: the modem is not attached")
            # on the AT port of a UART modem, hang up over the port when pppd ends (DTR may be unwired)
            config = dataclasses.replace(self._ppp, hang_up=self.on_at_port())
            self._link = PppLink(config, device, path_probe=self._probe)
        else:
            iface = ports.net_iface if ports is not None else None
            if not iface:
                return DataFailed(
                    DataFailure.NO_DEVICE,
                    "the modem has no network interface: check its USB composition (ECM) or set "
                    '[modem] net_interface, or use data_link = "ppp"',
                )
            self._link = EcmLink(self._ecm, iface, path_probe=self._probe)
        return await self._link.up(request)

    async def down(self) -> None:
        if self._link is not None:
            await self._link.down()

    async def probe(self) -> bool:
        return await self._link.probe() if self._link is not None else False

    def counters(self) -> tuple[int, int]:
        return self._link.counters() if self._link is not None else (0, 0)

    async def wait_down(self) -> LinkFailed:
        """After an ``up`` that worked: wait until pppd ends, and say how (the runner then takes
        the AT port back when PPP ran on it).

        Raises:
            RuntimeError: the last ``up`` was not a PPP link.
        """
        link = self._link
        if not isinstance(link, PppLink):
            raise RuntimeError("only a PPP data link can be waited on")
        return await link.wait_down()

    def on_at_port(self) -> bool:
        """True when PPP runs on the AT port itself (a UART modem such as the SIM800)."""
        ports = self._ports()
        if self.method is not DialMethod.PPP or ports is None or not ports.at_port or not ports.data_port:
            return False
        return os.path.realpath(ports.at_port) == os.path.realpath(ports.data_port)


# ------------------------------------------------------------------------------------ advice


def advice(status: ModemStatus, settings: ModemSettings) -> str:
    """What the installer should do, for a modem that is not online (empty when online)."""
    detail = status.detail
    state = status.state
    if state is ModemState.ONLINE:
        return ""
    if status.setup_problem and state in (ModemState.CONNECTING, ModemState.DATA_BACKOFF):
        return (
            f"the data link cannot run on this system ({status.setup_problem}); it is tried again "
            "every few minutes, no restart needed once fixed"
        )
    if state is ModemState.PORT_CLOSED:
        where = settings.port or "the modem's AT port"
        return detail or f"waiting for {where}: check that the modem is plugged in and powered"
    if state is ModemState.SIM_ABSENT:
        return "no SIM: insert a SIM card (switch the recorder off first if the tray is not hot-swap)"
    if state is ModemState.SIM_LOCKED:
        return detail or "the SIM is locked: set [modem] pin, or unlock the SIM in a phone"
    if state in (ModemState.REGISTERING, ModemState.REG_BACKOFF):
        signal = f" (signal {status.signal_dbm} dBm)" if status.signal_dbm is not None else ""
        hint = "check the antenna, the coverage and that the SIM's plan is active"
        if status.roaming and not settings.allow_roaming:
            hint = "the SIM is roaming: set [modem] allow_roaming = true if that is intended"
        return f"{detail + ': ' if detail else ''}no network registration yet{signal}; {hint}"
    if state is ModemState.DATA_BACKOFF:
        return f"{detail or 'no APN worked'}; set [modem] apn (and credentials) to what the carrier gives"
    if state is ModemState.CONNECTING:
        return detail or "starting the data link"
    if state is ModemState.STANDBY:
        return detail  # registered, data down on purpose (sms-wake asleep): nothing to fix
    if state in (ModemState.RECOVERING, ModemState.RESETTING):
        return f"recovering: {detail}" if detail else "recovering from a modem fault"
    return detail


def cap_bytes(settings: ModemSettings) -> int | None:
    """The byte count at which optional traffic stops; None without a cap."""
    if not settings.monthly_cap_mb:
        return None
    return settings.monthly_cap_mb * MB * settings.cap_stop_percent // 100


# ------------------------------------------------------------------------------------ service


class ModemService:
    """Runs the modem for the daemon (see module docstring).

    ``broker``: host and port of the broker's presence service (the default probe target), or
    what returns those of the broker node in use (a fleet; read when the modem runner starts).
    ``on_change``: called (from the event loop, at most once per loop pass) when the snapshot
    changed; the daemon rewrites its status file.
    """

    def __init__(
        self,
        settings: ModemSettings,
        *,
        state_dir: Path,
        runtime_dir: Path,
        broker: tuple[str, int] | Callable[[], tuple[str, int]],
        options: ModemOptions | None = None,
        on_change: Callable[[], None] | None = None,
        power_cycler: PowerCycler | None = None,
    ) -> None:
        self.settings = settings
        self._power_cycler = power_cycler
        """The board's supervisor: the ladder's power-cycle rung (else ``power_cycle_command``)."""
        self.options = options or ModemOptions()
        self.on_change = on_change
        self.port_user: PortUser | None = None
        """Shares each runner's AT port (the wake SMS inbox of ``[presence] mode = sms-wake``)."""
        self.on_cap: Callable[[str], None] | None = None
        """Called when optional traffic stops (with :meth:`optional_traffic_refusal`'s reason) and
        when it may resume (with ``""``): the daemon pauses NAT lifetime probes."""
        self._tuning = self.options.tuning
        self._dir = Path(state_dir) / MODEM_DIR
        self._runtime_dir = Path(runtime_dir)
        self._broker_of = broker if callable(broker) else (lambda: broker)
        self._runner: RunnerLike | None = None
        self._status = ModemStatus(ModemState.PORT_CLOSED)
        self._problem = ""
        """Why the service itself is not running a modem (detection, a crash); shown as detail."""
        self._note = ""
        self._index: ProviderIndex | None = None
        self._ledger: AccountingLedger | None = None
        self._ports: ModemPorts | None = None
        if settings.port:
            self._ports = ModemPorts(
                settings.port,
                settings.data_port or settings.port,
                settings.net_interface or None,
                usb_device_of_tty(settings.port),
            )
        self._detected_profile: ModemProfile | None = None
        self._modem_changed: asyncio.Event | None = None
        self._change_pending = False
        self._cap_level = CapLevel.NORMAL
        self._last_iccid = ""
        self.restarts = 0
        """How many times the runner was built again after an unexpected error."""
        self._data_wanted = True

    # ------------------------------------------------------------------------------ public

    def want_data(self, wanted: bool) -> None:
        """Whether the data session is wanted (``ModemDriver.want_data``), for this runner and
        every runner built later: False while an ``sms-wake`` recorder sleeps."""
        self._data_wanted = wanted
        if isinstance(self._runner, ModemDriver):
            self._runner.want_data(wanted)

    @property
    def data_up(self) -> bool:
        """The modem is online: its data session is up."""
        return self._current().state is ModemState.ONLINE

    def report(self) -> ModemReport:
        """Signal, radio technology, data used this cycle and state, for the broker."""
        status = self._current()
        return ModemReport(status.state.value, status.signal_dbm, status.rat, status.data_used_bytes)

    def optional_traffic_refusal(self) -> str:
        """Why optional traffic (viewer sessions, NAT lifetime probes) must not run now: the
        SIM in the tray reached its data cap this billing cycle. Empty when it may run."""
        status = self._current()
        if self._level(status) is not CapLevel.STOP:
            return ""
        assert self._ledger is not None
        usage = self._ledger.core.usage(self._last_iccid)
        cap = cap_bytes(self.settings) or 0
        used = usage.total if usage is not None else cap
        resume = ""
        if usage is not None:
            day = next_cycle_start(usage.cycle_start, self.settings.billing_cycle_day)
            resume = f" on {day.isoformat()}"
        return (
            f"cellular data cap reached ({used / MB:.1f} of {cap / MB:.1f} MB this billing cycle): "
            f"live view resumes with the next cycle{resume}, or raise [modem] monthly_cap_mb"
        )

    def snapshot(self) -> ModemBlock:
        """The status file's modem block (ICCID redacted; the detail says what to do)."""
        status = self._current()
        step = status.ladder_step
        detail = self._problem or advice(status, self.settings)
        if self._note and not detail:
            detail = self._note
        return ModemBlock(
            state=status.state.value,
            modem=" ".join(x for x in (status.vendor, status.model) if x),
            sim=status.sim.value,
            iccid=redact_iccid(status.iccid),
            operator=status.operator,
            roaming=status.roaming,
            rat=status.rat,
            band=status.band,
            signal_dbm=status.signal_dbm,
            apn=status.apn,
            interface=status.interface,
            ladder_step=step,
            ladder_step_name=Step(step).label if 1 <= step <= len(Step) else "",
            data_used_bytes=status.data_used_bytes,
            data_cap_bytes=cap_bytes(self.settings),
            cap_level=self._level(status).name.lower(),
            detail=detail,
        )

    def find_port(self) -> str | None:
        """The AT port of the modem attached now (the runner's ``find_port``)."""
        if self.settings.port:
            return self.settings.port if os.path.exists(self.settings.port) else None
        return self._ports.at_port if self._ports is not None else None

    async def run(self) -> None:
        """Run the modem until cancelled. Never raises anything but ``CancelledError``: an
        unexpected error is logged and the runner is built again after a backoff."""
        self._modem_changed = asyncio.Event()
        backoff = self._tuning.restart_backoff_s
        try:
            while True:
                try:
                    await self._run_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.restarts += 1
                    log.exception("modem service failed; restarting it in %g s", backoff)
                    self._problem = (
                        f"modem service failed ({exc}); restarting it in {backoff:g} s "
                        "(see `journalctl -u dvrlinkd`)"
                    )
                    self._changed()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._tuning.restart_backoff_max_s)
                    self._problem = ""
                else:
                    backoff = self._tuning.restart_backoff_s
        finally:
            self._runner = None
            if self._ledger is not None:
                with contextlib.suppress(Exception):
                    self._ledger.close(datetime.now().astimezone())

    # --------------------------------------------------------------------------- internals

    def _current(self) -> ModemStatus:
        if self._runner is not None:
            try:
                self._status = self._runner.status()
            except Exception:
                log.exception("modem runner status failed; showing the last one")
        return self._status

    def _level(self, status: ModemStatus) -> CapLevel:
        # While the modem recovers or re-reads its SIM, the last SIM seen keeps its level.
        self._last_iccid = status.iccid or self._last_iccid
        if self._ledger is None or not self._last_iccid:
            return CapLevel.NORMAL
        return self._ledger.core.cap_level(self._last_iccid)

    def _changed(self) -> None:
        if self._change_pending:
            return
        self._change_pending = True
        try:
            asyncio.get_running_loop().call_soon(self._flush_change)
        except RuntimeError:
            self._flush_change()

    def _flush_change(self) -> None:
        self._change_pending = False
        status = self._current()
        level = self._level(status)
        if level != self._cap_level:
            used = status.data_used_bytes or 0
            cap = cap_bytes(self.settings) or 0
            if level is CapLevel.STOP:
                log.warning(
                    "modem data cap reached: %d of %d bytes this cycle; optional traffic stops", used, cap
                )
            elif level is CapLevel.WARN:
                log.warning(
                    "modem data at %d%% of the cap: %d of %d bytes this cycle",
                    self.settings.cap_warn_percent,
                    used,
                    cap,
                )
            else:
                log.info("modem data cap cleared: a new billing cycle began, or another SIM is in")
            stopped = (self._cap_level is CapLevel.STOP) != (level is CapLevel.STOP)
            self._cap_level = level
            if stopped and self.on_cap is not None:
                try:
                    self.on_cap(self.optional_traffic_refusal())
                except Exception:
                    log.exception("applying the data cap failed")
        for listener in (self.on_change, self._status_listener):
            if listener is not None:
                try:
                    listener()
                except Exception:
                    log.exception("modem status listener failed")

    def _status_listener(self) -> None:
        if self.options.on_status is not None:
            self.options.on_status(self.snapshot())

    def _on_runner_event(self, event: DriverEvent) -> None:
        self._changed()

    async def _load_index(self) -> ProviderIndex:
        if self._index is None:
            database = self.settings.provider_database
            try:
                self._index = await asyncio.to_thread(load_index, database, self._dir / APN_INDEX_CACHE)
            except ApnDatabaseError as exc:
                log.error("%s; only [modem] apn and the network's default APN will be tried", exc)
                self._note = (
                    f"no provider database ({database}): install mobile-broadband-provider-info or set apn"
                )
                self._index = ProviderIndex({})
        return self._index

    def _prepare_dir(self) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._ledger is None:
            cap = cap_bytes(self.settings)
            ledger = AccountingLedger(
                self._dir / ACCOUNTING_FILE,
                AccountingConfig(
                    cycle_start_day=self.settings.billing_cycle_day,
                    monthly_cap_bytes=cap,
                    warn_fraction=self.settings.cap_warn_percent / self.settings.cap_stop_percent,
                ),
            )
            ledger.load()
            self._ledger = ledger

    async def _run_once(self) -> None:
        self._prepare_dir()
        index = await self._load_index()
        if self.settings.port:
            await self._run_runner(profile_by_name(self.settings.profile), index)
            return
        watcher = self.options.watcher_factory(self._tuning.detect)
        try:
            await watcher.start()
        except OSError as exc:
            raise RuntimeError(
                f"cannot watch udev for the modem ({exc}); set [modem] port and profile instead"
            ) from exc
        watch = asyncio.get_running_loop().create_task(self._watch(watcher), name="modem-detect")
        try:
            while True:
                profile = await self._wait_for_modem(watch)
                await self._run_runner(profile, index, watch)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            watcher.close()

    async def _wait_for_modem(self, watch: asyncio.Task[None]) -> ModemProfile:
        assert self._modem_changed is not None
        while self._detected_profile is None:
            if not self._problem:
                self._problem = "waiting for a modem: plug one in, or check `lsusb` for its USB ID"
                self._changed()
            self._modem_changed.clear()
            changed = asyncio.ensure_future(self._modem_changed.wait())
            try:
                await asyncio.wait({changed, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()  # also when this task is cancelled while waiting
            if watch.done():
                watch.result()  # raises what stopped detection
                raise RuntimeError("modem detection stopped")
        self._problem = ""
        return self._detected_profile

    async def _watch(self, watcher: WatcherLike) -> None:
        assert self._modem_changed is not None
        wanted = self.settings.profile
        while True:
            event = await watcher.next_event()
            if isinstance(event, ModemAdded):
                if wanted not in ("auto", event.profile.name):
                    log.warning(
                        "modem %s (%s) ignored: [modem] profile is %s",
                        event.profile.name,
                        event.usb_id,
                        wanted,
                    )
                    continue
                if event.at_port is None:
                    self._problem = (
                        f"{event.profile.description}: its AT port is found by probing, which is not "
                        "supported here; set [modem] port to its AT port"
                    )
                    self._changed()
                    continue
                log.info(
                    "modem %s (%s) attached: AT port %s", event.profile.name, event.usb_id, event.at_port
                )
                self._ports = ModemPorts(
                    event.at_port, event.data_port, event.net_iface, Path(event.usb_path)
                )
                if self._detected_profile is None or self._detected_profile.name != event.profile.name:
                    self._detected_profile = event.profile
                    self._modem_changed.set()
                self._problem = ""
                self._changed()
            elif isinstance(event, ModemRemoved):
                if self._ports is not None and self._ports.usb_device == Path(event.usb_path):
                    log.warning("modem %s removed; waiting for it to come back", event.profile.name)
                    self._ports = None
                    self._changed()
            elif isinstance(event, ModemIncomplete):
                log.warning("%s", event.message)
                self._problem = event.message
                self._changed()

    def _dial_method(self, profile: ModemProfile) -> DialMethod:
        choice = self.settings.data_link
        if choice == "ppp":
            return DialMethod.PPP
        if choice == "ecm":
            if profile.ecm_connect is None:
                raise RuntimeError(
                    f'profile {profile.name} has no ECM call command: set [modem] data_link = "ppp"'
                )
            return DialMethod.ECM
        return profile.dial_method

    def _build(self, profile: ModemProfile, index: ProviderIndex) -> RunnerLike:
        settings, tuning = self.settings, self._tuning
        method = self._dial_method(profile)
        profile = dataclasses.replace(profile, dial_method=method)
        override = (
            ApnSettings(settings.apn, settings.apn_username, settings.apn_password, settings.apn_auth)
            if settings.apn
            else None
        )
        modem = ModemConfig(
            profile=profile,
            apn=ApnConfig(database=settings.provider_database, override=override),
            pin=settings.pin or None,
            allow_roaming=settings.allow_roaming,
        )
        modem = dataclasses.replace(modem, **dict(tuning.modem))
        enabled = set(Step)
        if not settings.usb_reset:
            enabled.discard(Step.USB_RESET)
        if not settings.power_cycle_command and self._power_cycler is None:
            enabled.discard(Step.POWER_CYCLE)
        if not settings.board_reboot or settings.reboots_per_day == 0:
            enabled.discard(Step.BOARD_REBOOT)
        ladder = dataclasses.replace(
            tuning.runner.ladder, enabled=frozenset(enabled), reboots_per_day=settings.reboots_per_day
        )
        runner_config = dataclasses.replace(tuning.runner, ladder=ladder)
        host, port = self._broker_of()
        probe = DataPathProbe(
            ProbeConfig(
                host=settings.probe_host or host,
                port=settings.probe_port or port,
                timeout_s=tuning.probe_timeout_s,
            )
        )
        ppp = PppConfig(
            pppd_command=settings.pppd,
            chat_command=settings.chat,
            run_dir=self._runtime_dir / "ppp",
            cid=modem.cid,
        )
        ecm = EcmConfig(dhcp_command=settings.dhcp_command)
        data_link = CurrentPortLink(method, lambda: self._ports, ppp, ecm, probe)
        hooks = self.options.hooks or BoardHooks(
            settings, tuning, self._usb_device, power_cycler=self._power_cycler, profile=profile.name
        )
        log.info(
            "modem: profile %s, %s data link, APN %s",
            profile.name,
            method.value,
            settings.apn or "automatic",
        )
        return self.options.runner_factory(
            runner_config,
            modem,
            find_port=self.find_port,
            data_link=data_link,
            index=index,
            apn_memory_file=ApnMemoryFile(self._dir / APN_MEMORY_FILE),
            ladder_file=LadderFile(self._dir / LADDER_FILE),
            hooks=hooks,
            ledger=self._ledger,
            data_on_at_port=data_link.on_at_port,
            on_event=self._on_runner_event,
        )

    def _usb_device(self) -> Path | None:
        return self._ports.usb_device if self._ports is not None else None

    async def _run_runner(
        self, profile: ModemProfile, index: ProviderIndex, watch: asyncio.Task[None] | None = None
    ) -> None:
        """Run one runner until it fails (raises), detection stops, or another modem family is
        attached (returns, to build a runner for it)."""
        assert self._modem_changed is not None
        runner = self._build(profile, index)
        if isinstance(runner, ModemDriver):
            runner.port_user = self.port_user
            runner.want_data(self._data_wanted)
        self._runner = runner
        self._changed()
        task = asyncio.get_running_loop().create_task(runner.run(), name="modem-runner")
        try:
            while True:
                self._modem_changed.clear()
                changed = asyncio.ensure_future(self._modem_changed.wait())
                waiters: set[asyncio.Future[Any]] = {task, changed}
                if watch is not None:
                    waiters.add(watch)
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()  # also when this task is cancelled while waiting
                if task.done():
                    task.result()  # raises the runner's error
                    raise RuntimeError("the modem runner stopped by itself")
                if watch is not None and watch.done():
                    watch.result()
                    raise RuntimeError("modem detection stopped")
                if self._detected_profile is not None and self._detected_profile.name != profile.name:
                    log.info(
                        "modem: another modem family (%s) attached; starting over",
                        self._detected_profile.name,
                    )
                    return
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self._status = self._current()
            self._runner = None
