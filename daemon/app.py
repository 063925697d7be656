"""dvrlinkd wiring: config -> state -> presence core -> cloud link -> events -> status, systemd,
invites: pairing (kind 1) to ``InviteHandler``, session offers (kind 2) to ``SessionServer``.

The protocol core gets the event loop's clock (``loop.time()``); wall time (``time.time()``)
is used only for timestamps that are stored or shown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from dvrlink.daemon.alarms import AlarmQueue, ModemAlarmWatch, sender_config
from dvrlink.daemon.broker_nodes import BrokerNode, NodeList, NodeMemory, expand, is_ip_literal
from dvrlink.daemon.cloud_link import CloudLink, EventHandler, exc_text, handshake_problem
from dvrlink.daemon.config import DaemonConfig, describe
from dvrlink.daemon.console_pin import parse_pin_hash, verify_pin
from dvrlink.daemon.lan_responder import LanLinkConfig, start_lan_link
from dvrlink.daemon.nat_lifetime import LearnerConfig, LifetimeLearner, ProbeBudget
from dvrlink.daemon.nat_probe import NatProber
from dvrlink.daemon.nat_type import NatTyper, NatTypeTiming
from dvrlink.daemon.notify import Notifier
from dvrlink.daemon.pairing import InviteHandler
from dvrlink.daemon.presence_transport import (
    Link,
    PolicyConfig,
    PresenceTransport,
    TcpLink,
    Transport,
    TransportMode,
    TransportPolicy,
    presence_tls_context,
    stun_reaches,
)
from dvrlink.daemon.presence_tuning import PresenceTuning
from dvrlink.daemon.reporting import Reporter, ReportPolicy
from dvrlink.daemon.services import ServicesConfig
from dvrlink.daemon.session_server import SessionServer
from dvrlink.daemon.state import DeviceState, check_state_files
from dvrlink.daemon.status import DaemonStatus, ModemBlock, SessionStatus, StatusFile
from dvrlink.protocol.alarm_link import AlarmsDelivered, AlarmsDropped
from dvrlink.protocol.alarm_wire import AlarmKind
from dvrlink.protocol.identity import ed25519_public_bytes, fingerprint
from dvrlink.protocol.presence_client import ClientConfig, ClientState, PresenceClient
from dvrlink.protocol.presence_events import (
    Address,
    ClientEvent,
    ConnectionLost,
    HandshakeUnanswered,
    InviteReceived,
    KeepaliveAcknowledged,
    ReflexiveAddressChanged,
    Registered,
    RegistrationRefused,
)
from dvrlink.protocol.signalling import INVITE_KIND_CANDIDATES, INVITE_KIND_SESSION
from dvrlink.protocol.supervisor_wire import Health
from dvrlink.session.allow_list import parse_allowed_target
from dvrlink.session.netcheck import direct_paths, local_ip_towards

if TYPE_CHECKING:  # the modem stack (pyudev, pyserial, ...) loads only with [modem] enabled
    from dvrlink.daemon.board_io_service import BoardIoService
    from dvrlink.daemon.capture_service import CaptureService
    from dvrlink.daemon.disk_watch import DiskEvent, DiskService
    from dvrlink.daemon.live_view import LiveView
    from dvrlink.daemon.modem_service import ModemOptions, ModemService
    from dvrlink.daemon.sms_sleep import SmsSleeper
    from dvrlink.daemon.snapshot import SnapshotTaker
    from dvrlink.daemon.supervisor_service import SupervisorService
    from dvrlink.hal.gpio import BoardEvent

log = logging.getLogger(__name__)

FAILING_AFTER_S = 3600.0
"""Seconds without a registration after which the supervisor's heartbeat says FAILING."""


async def run_daemon(
    config: DaemonConfig,
    stop: asyncio.Event,
    environ: Mapping[str, str] | None = None,
    *,
    modem_options: ModemOptions | None = None,
    reboot: Callable[[], None] | None = None,
) -> None:
    """Run until ``stop`` is set; ``environ`` holds the service manager's variables;
    ``modem_options`` the modem's timers and test seams (defaults: a real modem); ``reboot``
    what the console's ``reboot`` calls (default: ``[modem] reboot_command``).

    With ``[console] port``, the serial console runs for the whole run. Settings it saves are
    applied by stopping the links (presence, sessions, modem) and starting them again with the
    new config, in this process: no reboot, no restart by the service manager.

    The state directory is locked for the whole run (a second daemon on it gets
    ``AlreadyRunning``), and every state file is checked before anything else
    (``check_state_files``): a corrupt one stops the start, or is moved aside where losing it
    is safe, with a warning.

    Raises:
        AlreadyRunning: another dvrlinkd holds the state directory.
        StateError: the state directory or a state file cannot be used.
    """
    state = DeviceState(config.device.state_dir)
    with state.running_lock():
        for moved in check_state_files(config.device.state_dir, time.time()):
            log.warning(
                "%s; moved it aside to %s and starting without it: %s",
                moved.problem,
                moved.aside,
                moved.if_lost,
            )
        live = LiveConfig(config)
        settled = asyncio.Event()  # presence registered or failed once (DeviceEvents.presence_settled)
        console = _start_console(live, state, reboot, settled)
        try:
            while True:
                await _run_locked(
                    live.config,
                    state,
                    stop,
                    environ,
                    modem_options,
                    live.changed,
                    settled,
                    reboot or functools.partial(_reboot_board, live),
                )
                if stop.is_set():
                    break
                live.changed.clear()
                log.info("restarting the links with the new settings: %s", describe(live.config))
        finally:
            if console is not None:
                console.cancel()
                await asyncio.gather(console, return_exceptions=True)


class LiveConfig:
    """The config in force, and the event that asks ``run_daemon`` to restart its links with a
    newer one (the console's ``set`` and ``reset-pairing``)."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.changed = asyncio.Event()

    def apply(self, config: DaemonConfig) -> None:
        """Use ``config`` from now on: the links restart with it."""
        self.config = config
        self.changed.set()


def _start_console(
    live: LiveConfig, state: DeviceState, reboot: Callable[[], None] | None, presence_settled: asyncio.Event
) -> asyncio.Task[None] | None:
    """The serial console's task when ``[console] port`` is set.

    Raises:
        ConfigError: ``[console] pin_hash`` cannot be read (checked before anything starts).
    """
    settings = live.config.console
    if not settings.port:
        return None
    check_pin = None
    if settings.pin_hash:
        stored = parse_pin_hash(settings.pin_hash)
        check_pin = functools.partial(verify_pin, stored=stored)
    return asyncio.get_running_loop().create_task(
        _run_console(live, state, reboot, check_pin, presence_settled), name="console"
    )


async def _run_console(
    live: LiveConfig,
    state: DeviceState,
    reboot: Callable[[], None] | None,
    check_pin: Callable[[str], bool] | None,
    presence_settled: asyncio.Event,
) -> None:
    """The serial console, until cancelled. Its modules and pyserial (a quarter of a second on a
    Cortex-A7) are imported once presence has registered or failed once, or after
    ``[presence] reply_timeout_s``, in a worker thread, as the modem stack is (``_run_modem``)."""
    await _after_presence_settles(presence_settled, live.config)
    await asyncio.to_thread(_import_modules, "dvrlink.daemon.console", "dvrlink.daemon.console_link")
    from dvrlink.daemon.console import Console, ConsoleOptions  # noqa: PLC0415  (loaded just above)
    from dvrlink.daemon.console_link import ConsoleLink, ConsoleService  # noqa: PLC0415

    settings = live.config.console
    options = ConsoleOptions(
        serial=live.config.device.serial,
        baud=settings.baud,
        pin_required=bool(settings.pin_hash),
        pin_max_failures=settings.pin_max_failures,
        pin_window_s=settings.pin_window_s,
        idle_lock_s=settings.idle_lock_s,
    )
    service = ConsoleService(
        lambda: live.config,
        state,
        fingerprint(ed25519_public_bytes(state.device_key())),
        live.apply,
        reboot or functools.partial(_reboot_board, live),
        clock=asyncio.get_running_loop().time,
    )
    failures = service.saved_pin_failures(settings.pin_window_s) if check_pin else []
    console = Console(options, check_pin, pin_failures=failures)
    await ConsoleLink(settings.port, settings.baud, console, service).run()


def _import_modules(*names: str) -> None:
    """Import ``names`` (run in a worker thread for the stacks that load after presence starts)."""
    for name in names:
        importlib.import_module(name)


def _reboot_board(live: LiveConfig) -> None:
    """Run ``[modem] reboot_command`` (the board's reboot), without waiting for it."""
    subprocess.Popen(live.config.modem.reboot_command, start_new_session=True)


async def _run_locked(
    config: DaemonConfig,
    state: DeviceState,
    stop: asyncio.Event,
    environ: Mapping[str, str] | None,
    modem_options: ModemOptions | None,
    restart: asyncio.Event | None = None,
    presence_settled: asyncio.Event | None = None,
    reboot: Callable[[], None] | None = None,
) -> None:
    """``run_daemon`` once the state directory is locked and its files are checked; returns
    when ``stop`` is set, or ``restart`` (new settings: the caller runs it again)."""
    loop = asyncio.get_running_loop()
    device_key = state.device_key()
    invites = InviteHandler(config.device.serial, device_key, state.pairing_secret(), state, config.pairing)
    alarms = AlarmQueue.open(  # event sources call alarms.raise_alarm(...)
        config.device.state_dir,
        sender_config(
            config.alarms.queue_size, config.alarms.retransmit_initial_s, config.alarms.retransmit_max_s
        ),
    )
    memory = NodeMemory(config.device.state_dir)
    nodes = NodeList(await resolve_nodes(config.broker.nodes, system_lookup()), start=memory.load())
    if len(nodes.nodes) > 1:
        log.info(
            "broker nodes: %s; registering with %s",
            ", ".join(n.label for n in nodes.nodes),
            nodes.current.label,
        )

    def node_address() -> tuple[str, int]:
        return (nodes.current.connect_host, nodes.current.port)

    client = PresenceClient(
        ClientConfig(
            serial=config.device.serial,
            broker_public_key=config.broker.public_key,
            keepalive_interval=config.presence.keepalive_interval_s,
            reply_timeout=config.presence.reply_timeout_s,
            retries=config.presence.retries,
        ),
        device_key,
        alarms=alarms.sender,
    )
    sessions = SessionServer(
        config.device.serial,
        device_key,
        state,
        config.sessions,
        _services_with_live(config),
        node_address,  # the presence port answers STUN
        client,
        loop.time,
    )
    sessions.stun_server6 = config.broker.stun6
    notifier = Notifier(environ)
    status_file = StatusFile(config.device.runtime_dir)
    events = DeviceEvents(
        config,
        client,
        notifier,
        status_file,
        invites,
        loop.time,
        sessions=sessions,
        presence_settled=presence_settled,
    )
    link = _presence_link(config, client, events, nodes, memory)
    events.broker_label = link.broker_label
    events.broker_address = node_address
    events.alarms = alarms
    alarms.on_change = events.alarms_changed
    alarms.attach(client, link.flush, loop.time)
    events.presence_transport = lambda: link.transport.value
    events.link_status = link.status
    tuning = events.tuning = _presence_tuning(config, client, loop, node_address)
    tuning.flush = link.flush
    tuning.status_changed = events.status_changed
    tuning.transport = lambda: link.transport.value
    tuning.local_address = lambda: link.local_address
    if link.auto:
        tuning.tcp_interval = link.tcp_keepalive_interval
        tuning.prefer_tcp = lambda reason: link.prefer(Transport.TCP, reason)
        if config.presence.learn_keepalive:
            tuning.tcp_prober = _tcp_prober(
                config, client, tuning, lambda: config.broker.tcp_address_of(nodes.current)
            )
            tuning.set_tcp_interval = link.set_tcp_keepalive_interval
    sessions.on_reply = link.flush
    sessions.on_change = events.sessions_changed
    lan = None
    if config.lan.discovery:  # docs/connectivity.md, "LAN discovery"
        lan_config = LanLinkConfig(port=config.lan.port)
        lan = await start_lan_link(device_key, sessions.is_paired, sessions, lan_config)
    sleeper = None
    if config.presence.mode == "sms-wake":  # docs/sms-wake.md; loads the modem's AT stack
        from dvrlink.daemon.sms_sleep import start_sms_sleep  # noqa: PLC0415

        sleeper = start_sms_sleep(config, device_key, client, link.flush, sessions, events, tuning, reboot)
    capture = _start_capture(config, loop)
    live = None
    capture_alarms = None
    if capture is not None:
        from dvrlink.daemon.snapshot import CaptureAlarms, SnapshotTaker, snapshot_rpc  # noqa: PLC0415
        from dvrlink.protocol.alarm_wire import MAX_SNAPSHOT  # noqa: PLC0415

        sessions.channels = capture.channels
        taker = SnapshotTaker(config.live.encoder, capture.live_source)
        sessions.handlers["snapshot"] = snapshot_rpc(taker)
        snap = functools.partial(_alarm_snapshot, taker, MAX_SNAPSHOT) if config.alarms.snapshots else None
        capture_alarms = CaptureAlarms(alarms, snap)
        capture.add_sink(lambda _event: events.capture_changed())
        capture.add_sink(capture_alarms)
        events.attach_capture(capture.channels)
        live = await _start_live(config, capture)
        if live is not None:
            from dvrlink.daemon.live_view import warm_rpc  # noqa: PLC0415

            sessions.handlers["live-warm"] = warm_rpc(live, capture.first_device)
            sessions.live_port = config.live.port
            sessions.cellular = config.modem.enabled
            taker.live = live
    disks = _start_disks(config, alarms, events)
    board = _start_board_io(config, loop)
    if board is not None:
        board.add_sink(lambda _event: events.board_changed())
        board.add_sink(functools.partial(_board_alarm, alarms))
        sessions.relay = board.relay_call
        events.attach_board(board.snapshot)
    supervisor_task = None
    if config.board.supervisor:
        supervisor_task = loop.create_task(_run_supervisor(config, alarms, events), name="supervisor")
    timeout = config.board.supervisor_timeout_s
    period = notifier.watchdog_period
    if config.board.supervisor and timeout and period is not None and period * 3 > timeout:
        log.warning(
            "the supervisor's heartbeats go at each watchdog ping, every %g s, but [board] "
            "supervisor_timeout_s is %d s: one late ping could reset the board; raise the timeout "
            "to at least %g s or lower the unit's WatchdogSec",
            period,
            timeout,
            period * 3,
        )
    watchdog = _Watchdog(
        notifier,
        loop,
        on_ping=events.supervisor_heartbeat if config.board.supervisor else None,
        period_without_systemd=config.board.supervisor_heartbeat_s,
    )

    log.info("starting: %s, device key %s", describe(config), fingerprint(ed25519_public_bytes(device_key)))
    notifier.status(f"registering with {nodes.current.label}")
    modem_task = None
    if config.modem.enabled:
        modem_task = loop.create_task(
            _run_modem(config, modem_options, events, tuning, sessions, sleeper), name="modem"
        )
        modem_task.add_done_callback(_modem_ended)
    try:
        await link.start()
        await _first_of(stop, restart)
        log.info("stopping" if stop.is_set() else "stopping the links to apply new settings")
    finally:
        if restart is None or not restart.is_set() or stop.is_set():
            notifier.stopping()
        watchdog.cancel()
        if supervisor_task is not None:
            supervisor_task.cancel()
            await asyncio.gather(supervisor_task, return_exceptions=True)
        if events.supervisor is not None:
            # A deliberate stop (SIGTERM/SIGINT) stands the supervisor's watchdog down; a restart
            # to apply new settings keeps it armed (the heartbeats resume within the timeout).
            await events.supervisor.close(disarm=stop.is_set())
            events.supervisor = None
        if live is not None:
            await live.close()
        if capture is not None:
            capture.close()
        if capture_alarms is not None:
            capture_alarms.close()
        if disks is not None:
            disks.close()
        if board is not None:
            board.close()  # the relays go to their defaults
        if modem_task is not None:
            modem_task.cancel()
            await asyncio.gather(modem_task, return_exceptions=True)
        if sleeper is not None:
            sleeper.close()
            await sleeper.wait_closed()
        if lan is not None:
            lan.close()
        await sessions.close()
        if events.tuning is not None:
            events.tuning.cancel()
            for prober in (events.tuning.prober, events.tuning.tcp_prober):
                if prober is not None:
                    await prober.close()
            if events.tuning.nat_typer is not None:
                await events.tuning.nat_typer.close()
        link.close()
        alarms.close()
        events.close()
        events.status_file.remove()
        notifier.close()


async def _run_supervisor(config: DaemonConfig, alarms: AlarmQueue, events: DeviceEvents) -> None:
    """Start the board's supervisor (``[board] supervisor``): its module and pyserial are
    imported in a worker thread, then it is connected, told its timeout and read (status,
    supply, reset log). Heartbeats go from the watchdog's pings (``DeviceEvents.supervisor_heartbeat``)."""
    service_class = await asyncio.to_thread(_import_supervisor_service)

    def raise_alarm(kind: AlarmKind, detail: str, time_ms: int | None) -> None:
        alarms.raise_alarm(kind, detail=detail, time_ms=time_ms)

    service = service_class(
        config.board,
        config.device.state_dir,
        raise_alarm=raise_alarm,
        health=events.health,
        on_change=events.status_changed,
    )
    events.supervisor = service
    await service.start()
    events.status_changed()


def _import_supervisor_service() -> type[SupervisorService]:
    """``SupervisorService``, importing pyserial with it (only with ``[board] supervisor``)."""
    from dvrlink.daemon.supervisor_service import SupervisorService  # noqa: PLC0415

    return SupervisorService


def _start_disks(config: DaemonConfig, alarms: AlarmQueue, events: DeviceEvents) -> DiskService | None:
    """Watch the ``[disks]`` mount points; None without any."""
    if not config.disks.paths:
        return None
    from dvrlink.daemon.disk_watch import DiskService  # noqa: PLC0415

    disks = DiskService(config.disks, functools.partial(_disk_event, alarms), time.time)
    disks.on_look = events.disks_changed
    events.disks = disks.status
    disks.start()
    return disks


def _disk_event(alarms: AlarmQueue, event: DiskEvent) -> None:
    """A disk went bad or recovered: the log and an alarm."""
    from dvrlink.daemon.disk_watch import DiskProblem, disk_alarm  # noqa: PLC0415

    kind, detail = disk_alarm(event)
    if isinstance(event, DiskProblem):
        log.warning("disk %s", detail)
    else:
        log.info("disk %s", detail)
    alarms.raise_alarm(kind, detail=detail)


async def _alarm_snapshot(taker: SnapshotTaker, max_bytes: int, device: str, channel: int) -> bytes:
    """A motion alarm's JPEG (``[alarms] snapshots``), within the alarm cap."""
    return await taker.take(device, channel, max_bytes)


def _board_alarm(alarms: AlarmQueue, event: BoardEvent) -> None:
    """An alarm input's change as an alarm for the broker (``board_io_service.raise_board_alarm``)."""
    from dvrlink.daemon.board_io_service import raise_board_alarm  # noqa: PLC0415

    raise_board_alarm(alarms, event)


def _start_board_io(config: DaemonConfig, loop: asyncio.AbstractEventLoop) -> BoardIoService | None:
    """Request the ``[[alarm_input]]`` and ``[[relay]]`` lines; None without any (the GPIO
    binding is then never imported)."""
    if not config.alarm_inputs and not config.relays:
        return None
    from dvrlink.daemon.board_io_service import BoardIoService, default_backend  # noqa: PLC0415

    board = BoardIoService(config.alarm_inputs, config.relays, default_backend(), loop.time, loop=loop)
    board.start()
    return board


def _services_with_live(config: DaemonConfig) -> ServicesConfig:
    """The forward allow-list, plus the live view's own port when it is on."""
    services = config.services
    if not config.capture or not config.live.port:
        return services
    live = parse_allowed_target(f"127.0.0.1:{config.live.port}")
    if live in services.forward_allow:
        return services
    return dataclasses.replace(services, forward_allow=(*services.forward_allow, live))


async def _start_live(config: DaemonConfig, capture: CaptureService) -> LiveView | None:
    """Serve the channels as RTSP on 127.0.0.1 for sessions; None when ``[live] port = 0``, or
    (logged) when the port is taken."""
    if not config.live.port:
        return None
    from dvrlink.daemon.live_view import LiveView, workdir_for  # noqa: PLC0415

    live = LiveView(config.live, capture.live_source, workdir_for(config.device.runtime_dir), capture.publish)
    try:
        await live.start()
    except OSError as exc:
        log.error("%s; live view is off", exc)
        return None
    log.info("live view on 127.0.0.1:%d", config.live.port)
    return live


def _start_capture(config: DaemonConfig, loop: asyncio.AbstractEventLoop) -> CaptureService | None:
    """Watch the ``[[capture]]`` devices; None without any (the HAL is then never imported)."""
    if not config.capture:
        return None
    from dvrlink.daemon.capture_service import CaptureService  # noqa: PLC0415

    capture = CaptureService(config.capture, config.device.runtime_dir, loop.time)
    capture.start()
    return capture


async def _first_of(stop: asyncio.Event, restart: asyncio.Event | None) -> None:
    """Wait until ``stop`` or ``restart`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in (stop, restart) if event is not None]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def _presence_tuning(
    config: DaemonConfig,
    client: PresenceClient,
    loop: asyncio.AbstractEventLoop,
    broker: Callable[[], tuple[str, int]],
) -> PresenceTuning:
    """Reports to the broker, the learned keepalive when ``[presence] learn_keepalive``, the NAT
    type when ``[presence] classify_nat``."""
    presence = config.presence
    tuning = PresenceTuning(
        client,
        loop.time,
        interval=presence.keepalive_interval_s,
        reporter=Reporter(ReportPolicy(min_interval_s=presence.report_min_interval_s)),
    )
    tuning.learn_after_s = presence.learn_after_s
    if presence.learn_keepalive:
        learner = LifetimeLearner(
            LearnerConfig(
                min_interval_s=min(10.0, presence.keepalive_interval_s / 2),
                max_interval_s=presence.max_keepalive_interval_s,
                max_probe_s=presence.max_keepalive_interval_s / LearnerConfig().safety,
            ),
            presence.keepalive_interval_s,
            ProbeBudget(),  # shared with the TCP learner: the broker holds 8 probes per device
        )
        tuning.prober = NatProber(learner, client, broker, on_event=tuning.on_learner_event)
    if presence.classify_nat:

        def transport() -> str:  # tuning.transport is the link's, set once the link is made
            return tuning.transport()

        asks_mapping = bool(config.sessions.port_mapping)

        async def paths() -> str:  # the device's IPv6 and port mapping, for its report (item 11)
            try:
                local: str | None = local_ip_towards(broker())
            except OSError:
                local = None
            return await direct_paths(port_mapping=asks_mapping, local_ip=local)

        tuning.nat_typer = NatTyper(
            NatTypeTiming(delay_s=presence.learn_after_s),
            broker,
            tuning.nat_type_found,
            transport=transport,
            paused=lambda: tuning.paused,
            paths=paths,
            on_paths=tuning.direct_paths_found,
        )
    return tuning


def _stop_optional_traffic(tuning: PresenceTuning, sessions: SessionServer, reason: str) -> None:
    """The cellular data cap was reached: pause the NAT lifetime probes and end open sessions."""
    tuning.pause_probes(reason)
    sessions.end_all(reason)


def _tcp_prober(
    config: DaemonConfig,
    client: PresenceClient,
    tuning: PresenceTuning,
    broker: Callable[[], tuple[str, int]],
) -> NatProber:
    """Learns how long the NAT keeps an idle TCP connection, starting from
    ``tcp_keepalive_interval_s``: probes over fresh TLS connections to the presence TCP endpoint,
    up to an hour each, repeated weekly (each costs a TLS handshake)."""
    start = config.presence.tcp_keepalive_interval_s
    learner = LifetimeLearner(
        LearnerConfig(
            parallel=3,  # hour-long probes: the UDP learner keeps most of the broker's 8 probe slots
            min_interval_s=min(60.0, start / 2),
            max_interval_s=3600.0,
            max_probe_s=3600.0,
            remeasure_s=7 * 86400.0,
        ),
        start,
        tuning.prober.learner.budget if tuning.prober is not None else ProbeBudget(),
    )
    return NatProber(
        learner,
        client,
        broker,
        on_event=tuning.on_tcp_learner_event,
        transport="tcp",
        tls=presence_tls_context(),
    )


async def _run_modem(
    config: DaemonConfig,
    options: ModemOptions | None,
    events: DeviceEvents,
    tuning: PresenceTuning,
    sessions: SessionServer,
    sleeper: SmsSleeper | None = None,
) -> None:
    """The cellular modem service (``[modem] enabled``), until cancelled; the broker is its
    default probe target. ``sleeper`` (``sms-wake``) shares the modem's AT port for wake SMS.

    The modem stack (pyudev, pyserial, the AT engine and the manager: over a second of imports
    on a Cortex-A7) loads after presence's first registration or first failure, or after
    ``[presence] reply_timeout_s`` (``_after_presence_settles``), and in a worker thread: a
    recorder with a wired uplink registers without waiting for it, and one whose only uplink is
    the modem loses at most that timeout against a cellular attach of tens of seconds. Until the
    modem is attached, the status file and the reports carry no modem block, as on a board
    without a modem.
    """
    await _after_presence_settles(events.presence_settled, config)
    service_class = await asyncio.to_thread(_import_modem_service)
    modem = service_class(
        config.modem,
        state_dir=config.device.state_dir,
        runtime_dir=config.device.runtime_dir,
        broker=events.broker_address,
        options=options,
        power_cycler=events.supervisor_power_cycle if config.board.supervisor else None,
    )
    events.attach_modem(modem)
    tuning.attach_modem(modem)
    modem.on_change = events.modem_changed
    # The data cap stops optional traffic: sessions (open and new) and NAT lifetime probes.
    sessions.admission = modem.optional_traffic_refusal
    modem.on_cap = functools.partial(_stop_optional_traffic, tuning, sessions)
    modem.port_user = sleeper
    if sleeper is not None:  # sms-wake: the data session is down while the recorder sleeps
        sleeper.attach_modem(modem)
        modem.on_change = functools.partial(_modem_changed, events, sleeper)
    await modem.run()


def _modem_changed(events: DeviceEvents, sleeper: SmsSleeper) -> None:
    events.modem_changed()
    sleeper.modem_changed()


async def _after_presence_settles(settled: asyncio.Event, config: DaemonConfig) -> None:
    """Wait until presence has registered or failed once (``settled``), for at most
    ``[presence] reply_timeout_s``."""
    try:
        async with asyncio.timeout(config.presence.reply_timeout_s):
            await settled.wait()
    except TimeoutError:
        pass


def _modem_ended(task: asyncio.Task[None]) -> None:
    """Log a modem service that stopped on an error (presence goes on without it)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error(
            "the modem service stopped: %s; presence goes on over other links; restart dvrlinkd "
            "to start the modem again",
            exc,
            exc_info=exc,
        )


def _import_modem_service() -> type[ModemService]:
    """``ModemService``, importing the modem stack (about 3 MB; only with a modem)."""
    from dvrlink.daemon.modem_service import ModemService  # noqa: PLC0415

    return ModemService


Lookup = Callable[[str, int], Awaitable[list[str]]]
"""Resolves a host name and port to IP addresses (raises OSError or TimeoutError when it cannot)."""


def system_lookup(timeout_s: float = 3.0) -> Lookup:
    """The system resolver (A and AAAA records, in its order), giving up after ``timeout_s``."""

    async def lookup(host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM), timeout_s)
        return [str(info[4][0]) for info in infos]

    return lookup


async def resolve_nodes(nodes: Sequence[BrokerNode], lookup: Lookup) -> list[BrokerNode]:
    """``nodes`` with each name that has several addresses as one node per address. A name that
    does not resolve now (no uplink yet) stays one node, which its link resolves when it
    connects."""
    out: list[BrokerNode] = []
    for node in nodes:
        addresses: list[str] = []
        if not is_ip_literal(node.host):
            try:
                addresses = await lookup(node.host, node.port)
            except (OSError, TimeoutError) as exc:
                log.info(
                    "cannot resolve the broker node %s now (%s); its link resolves it later",
                    node.label,
                    exc_text(exc),
                )
        for expanded in expand(node, addresses):
            if expanded not in out:
                out.append(expanded)
    return out


def _presence_link(
    config: DaemonConfig, client: PresenceClient, events: DeviceEvents, nodes: NodeList, memory: NodeMemory
) -> PresenceTransport:
    """Presence over UDP, or TCP/TLS where UDP is blocked, as ``[presence] transport`` says, to
    one of the broker nodes at a time (moving on when it falls silent)."""
    presence, broker = config.presence, config.broker
    policy = TransportPolicy(
        PolicyConfig(
            mode=TransportMode(presence.transport),
            fallback_after_failures=presence.fallback_after_failures,
            fallback_after_s=presence.fallback_after_s,
            udp_probe_interval_s=presence.udp_probe_interval_s,
        )
    )
    tls = presence_tls_context()

    def make_link(transport: Transport, node: BrokerNode, handler: EventHandler) -> Link:
        if transport is Transport.UDP:
            return CloudLink(client, handler, node.connect_host, node.port)
        return TcpLink(client, handler, *broker.tcp_address_of(node), tls=tls)

    def probe_udp(node: BrokerNode) -> Awaitable[bool]:
        return stun_reaches(
            node.connect_host, node.port, timeout_s=presence.reply_timeout_s * (presence.retries + 1)
        )

    def endpoint(transport: Transport, node: BrokerNode) -> str:
        return node.label if transport is Transport.UDP else _addr(broker.tcp_address_of(node))

    def remember(node: BrokerNode) -> None:
        try:
            memory.save(node)
        except OSError as exc:
            log.error("cannot remember the broker node that answered: %s", exc)

    return PresenceTransport(
        client,
        events,
        policy,
        make_link,
        probe_udp,
        tcp_keepalive_interval_s=presence.tcp_keepalive_interval_s,
        nodes=nodes,
        endpoint=endpoint,
        on_answered=remember,
        resolve=(lambda: resolve_nodes(broker.nodes, system_lookup()))
        if any(not is_ip_literal(n.host) for n in broker.nodes)
        else None,
    )


class PresenceView(Protocol):
    """What ``DeviceEvents`` reads from ``PresenceClient``, and the invite reply it makes."""

    @property
    def state(self) -> ClientState: ...
    @property
    def session_id(self) -> int | None: ...
    @property
    def reflexive_address(self) -> Address | None: ...
    @property
    def rtt(self) -> float | None: ...
    @property
    def keepalive_interval(self) -> float: ...
    def reply_invite(self, invite_id: int, status: int, body: bytes, now: float) -> None: ...


class SessionRouter(Protocol):
    """What ``DeviceEvents`` needs of ``SessionServer``: session offers in, the list out."""

    def handle(self, invite: InviteReceived, now: float) -> None: ...
    def snapshot(self) -> tuple[SessionStatus, ...]: ...


class ModemView(Protocol):
    """What ``DeviceEvents`` reads of ``ModemService``: the status file's modem block."""

    def snapshot(self) -> ModemBlock: ...


class DeviceEvents:
    """What the daemon does on each presence event (the ``EventHandler`` of the cloud link).

    ``core_clock`` is the presence core's clock (``loop.time``), for invite replies. Session
    offers go to ``sessions`` (without one they get the pairing handler's "unsupported").
    """

    def __init__(
        self,
        config: DaemonConfig,
        client: PresenceView,
        notifier: Notifier,
        status_file: StatusFile,
        invites: InviteHandler,
        core_clock: Callable[[], float],
        *,
        sessions: SessionRouter | None = None,
        presence_settled: asyncio.Event | None = None,
    ) -> None:
        self._config = config
        self._sessions = sessions
        self._modem: ModemView | None = None
        """The modem service once it is loaded (``attach_modem``)."""
        self._capture: Callable[[], list[dict[str, Any]]] | None = None
        """The capture devices' channels (``attach_capture``)."""
        self.disks: Callable[[], list[dict[str, Any]]] = list
        """The recording disks' last looks for the status file (``DiskService.status``)."""
        self._board: Callable[[], dict[str, Any]] | None = None
        """The alarm inputs and relays (``attach_board``)."""
        self.tuning: PresenceTuning | None = None
        """Learned keepalive and reports (set by ``run_daemon``)."""
        self.alarms: AlarmQueue | None = None
        """The alarm queue, told of delivered and dropped alarms (set by ``run_daemon``)."""
        self.supervisor: SupervisorService | None = None
        """The board's supervisor once it is loaded (``[board] supervisor``)."""
        self._last_online = core_clock()
        """When presence was last seen online (the core's clock; the start until then)."""
        self._alarms_write: asyncio.TimerHandle | None = None
        self._modem_alarms = ModemAlarmWatch()
        self._client = client
        self._core_clock = core_clock
        self._notifier = notifier
        self.status_file = status_file
        self._invites = invites
        self.presence_transport: Callable[[], str] = lambda: "udp"
        self.link_status: Callable[[], dict[str, Any]] = dict
        self.broker_label: Callable[[], str] = lambda: config.broker.address
        """The broker node in use for log lines: ``host:port``, ``... over TCP/TLS``."""
        self.broker_address: Callable[[], tuple[str, int]] = lambda: (config.broker.host, config.broker.port)
        """The presence UDP address of the broker node in use (the modem's default probe target)."""
        """The presence link's endpoint, state and why (``PresenceTransport.status``)."""
        self._written_link: dict[str, Any] | None = None
        """What carries presence now (set by ``run_daemon``)."""
        self._started_at = time.time()
        self.presence_settled = presence_settled or asyncio.Event()
        """Set at presence's first registration or first failure: the modem stack and the console
        load after it (or after ``[presence] reply_timeout_s``), so that on a one-core board they
        do not take the CPU from the registration."""
        self._ready_sent = False
        self._registered_at: float | None = None
        self._last_keepalive: float | None = None
        self._message = ""
        self._written_state: str | None = None
        self._write_failed = False
        try:
            status_file.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cannot create %s (%s): `dvrlinkd status` will not work", status_file.path.parent, exc)

    def on_event(self, event: ClientEvent) -> None:
        """Log, update the status file, then tell systemd; answer invites."""
        if self.tuning is not None:
            self.tuning.on_event(event)
        if isinstance(event, AlarmsDelivered | AlarmsDropped):
            if self.alarms is not None:
                self.alarms.on_event(event)
            return
        if isinstance(event, InviteReceived):
            if event.kind in (INVITE_KIND_SESSION, INVITE_KIND_CANDIDATES) and self._sessions is not None:
                self._sessions.handle(event, self._core_clock())
            else:
                self._invites.handle(event, self._client, self._core_clock())
            return
        broker = self.broker_label()
        ready = False
        systemd_status: str | None = None
        if isinstance(event, (Registered, RegistrationRefused, ConnectionLost, HandshakeUnanswered)):
            self.presence_settled.set()
        if isinstance(event, Registered):
            self._registered_at = self._last_keepalive = time.time()
            systemd_status = (
                f"online via {broker} as {_addr(event.reflexive_address)}, session {event.session_id:#010x}"
            )
            how = " (resumed by ticket)" if event.resumed else ""
            log.info("registered: %s, keepalive every %g s%s", systemd_status, event.keepalive_interval, how)
            self._message = "registered"
            ready, self._ready_sent = not self._ready_sent, True
        elif isinstance(event, KeepaliveAcknowledged):
            self._last_keepalive = time.time()
            log.debug("keepalive acknowledged, rtt %.0f ms", event.rtt * 1000)
        elif isinstance(event, RegistrationRefused):
            log.error(
                "the broker %s refused the registration (reason %d): %s; retrying in %g s",
                broker,
                event.reason,
                event.message,
                event.retry_after,
            )
            self._message = systemd_status = f"refused by the broker: {event.message}"
        elif isinstance(event, ConnectionLost):
            log.warning("connection to the broker %s lost: %s; registering again", broker, event.reason)
            self._message = f"connection lost: {event.reason}"
            systemd_status = f"{self._message}; registering again with {broker}"
        elif isinstance(event, ReflexiveAddressChanged):
            log.warning(
                "address seen by the broker changed %s -> %s; registering again",
                *map(_addr, (event.old, event.new)),
            )
            self._message = f"reflexive address changed to {_addr(event.new)}"
            systemd_status = f"{self._message}; registering again"
        elif isinstance(event, HandshakeUnanswered):
            problem = handshake_problem(event, broker)
            # Each failed attempt repeats it: a warning when the diagnosis changes, else debug.
            seen_before = self._message.split(" (", 1)[0] == problem.split(" (", 1)[0]
            log.log(logging.DEBUG if seen_before else logging.WARNING, "%s; trying again", problem)
            self._message = systemd_status = problem
        # The status file first, so `dvrlinkd status` agrees with systemd once READY is seen.
        self._write_status()
        if ready:
            self._notifier.ready(systemd_status)
        elif systemd_status is not None:
            self._notifier.status(systemd_status)

    def after_step(self) -> None:
        """Rewrite the status file when the presence state changed without an event; let the
        tuning hand over a report."""
        if self.tuning is not None:
            self.tuning.after_step()
        if self._client.state.value != self._written_state or self.link_status() != self._written_link:
            self._write_status()

    def health(self) -> Health:
        """What the supervisor's heartbeat says of the daemon: OK while registered with the
        broker, DEGRADED while not, FAILING after ``FAILING_AFTER_S`` without a registration."""
        now = self._core_clock()
        if self._client.state is ClientState.ONLINE:
            self._last_online = now
            return Health.OK
        return Health.FAILING if now - self._last_online >= FAILING_AFTER_S else Health.DEGRADED

    def supervisor_heartbeat(self) -> None:
        """A watchdog ping: the supervisor gets a heartbeat (nothing before it is loaded)."""
        if self.supervisor is not None:
            self.supervisor.heartbeat()

    async def supervisor_power_cycle(self, modem_profile: str) -> None:
        """The modem ladder's power-cycle rung through the supervisor.

        Raises:
            RuntimeError: the supervisor is not connected yet, or the power cycle failed.
        """
        if self.supervisor is None:
            raise RuntimeError("the supervisor is not loaded yet; the power cycle is tried at the next fault")
        await self.supervisor.power_cycle_modem(modem_profile)

    def sessions_changed(self) -> None:
        """Rewrite the status file: a session was added, authenticated or removed."""
        self._write_status()

    def status_changed(self) -> None:
        """Rewrite the status file: something it shows changed outside a presence event (the
        NAT type was found)."""
        self._write_status()

    def attach_modem(self, modem: ModemView) -> None:
        """The modem service is up (it loads after presence starts): the status file gets its block."""
        self._modem = modem
        self._modem_alarms.update(modem.snapshot())
        self._write_status()

    def alarms_changed(self) -> None:
        """Rewrite the status file within a second: the alarm queue's count changed (at most one
        write a second, however many alarms come and go)."""
        if self._alarms_write is None:
            self._alarms_write = asyncio.get_running_loop().call_later(1.0, self._write_alarms)

    def close(self) -> None:
        """The daemon stops: no status write after this."""
        if self._alarms_write is not None:
            self._alarms_write.cancel()
            self._alarms_write = None

    def _write_alarms(self) -> None:
        self._alarms_write = None
        self._write_status()

    def attach_capture(self, channels: Callable[[], list[dict[str, Any]]]) -> None:
        """The capture devices are watched: the status file lists their channels."""
        self._capture = channels
        self._write_status()

    def attach_board(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """The board's inputs and relays are requested: the status file lists them."""
        self._board = snapshot
        self._write_status()

    def board_changed(self) -> None:
        """Rewrite the status file: an input or a relay changed."""
        self._write_status()

    def disks_changed(self) -> None:
        """Rewrite the status file: the disks were looked at."""
        self._write_status()

    def capture_changed(self) -> None:
        """Rewrite the status file: a channel's signal, format or motion changed."""
        self._write_status()

    def modem_changed(self) -> None:
        """Rewrite the status file: the modem's state, signal or data changed; raise the alarms
        that calls for (SIM removed, data cap reached)."""
        if self._modem is not None:
            for kind, detail in self._modem_alarms.update(self._modem.snapshot()):
                if self.alarms is not None:
                    self.alarms.raise_alarm(kind, detail=detail)
        self._write_status()

    def _write_status(self) -> None:
        reflexive = self._client.reflexive_address
        link = self.link_status()
        status = DaemonStatus(
            state=self._client.state.value,
            serial=self._config.device.serial,
            broker=str(link.get("node") or self._config.broker.address),
            reflexive_address=_addr(reflexive) if reflexive else None,
            session_id=self._client.session_id,
            registered_at=self._registered_at,
            last_keepalive=self._last_keepalive,
            rtt=self._client.rtt,
            pid=os.getpid(),
            started_at=self._started_at,
            message=self._message,
            sessions=self._sessions.snapshot() if self._sessions is not None else (),
            modem=self._modem.snapshot() if self._modem is not None else None,
            capture=self._capture() if self._capture is not None else [],
            disks=self.disks(),
            alarms_pending=self.alarms.pending if self.alarms is not None else 0,
            alarms_dropped=self.alarms.stats["dropped"] if self.alarms is not None else 0,
            board=self._board() if self._board is not None else {},
            supervisor=self.supervisor.snapshot() if self.supervisor is not None else {},
            transport=self.presence_transport(),
            **link,
            keepalive_s=self._client.keepalive_interval,
            **(self.tuning.status() if self.tuning is not None else {}),
        )
        try:
            self.status_file.write(status)
        except OSError as exc:
            if not self._write_failed:  # say it once, not on every keepalive
                log.error("cannot write the status file: %s", exc)
            self._write_failed = True
            return
        self._write_failed = False
        self._written_state = status.state
        self._written_link = link


class _Watchdog:
    """Pings the systemd watchdog from the event loop, so pings stop if the loop hangs; at each
    ping ``on_ping`` (the supervisor's heartbeat) runs too. With ``on_ping`` and no systemd
    watchdog, it pings every ``period_without_systemd`` seconds for ``on_ping`` alone."""

    def __init__(
        self,
        notifier: Notifier,
        loop: asyncio.AbstractEventLoop,
        *,
        on_ping: Callable[[], None] | None = None,
        period_without_systemd: float = 10.0,
    ) -> None:
        self._notifier = notifier
        self._loop = loop
        self._on_ping = on_ping
        self._handle: asyncio.TimerHandle | None = None
        self._period = notifier.watchdog_period
        if self._period is None and on_ping is not None:
            self._period = period_without_systemd
        if notifier.watchdog_period is not None:
            log.info("watchdog: pinging every %g s", notifier.watchdog_period)
        if self._period is not None:
            self._ping()

    def _ping(self) -> None:
        assert self._period is not None
        if self._notifier.watchdog_period is not None:
            self._notifier.watchdog()
        if self._on_ping is not None:
            try:
                self._on_ping()
            except Exception:
                log.exception("the supervisor heartbeat failed at a watchdog ping")
        self._handle = self._loop.call_later(self._period, self._ping)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _addr(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
