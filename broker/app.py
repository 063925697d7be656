"""dvrlink-broker wiring: registry, presence core on UDP, viewer API on HTTPS, TURN relay.

    config ─► registry (SQLite) ─┬─► DeviceEventHandler ◄── events ── PresenceServer ◄─► PresenceLink ◄─► UDP
                                 │                 (by address: TransportRouter) └─► PresenceTcpServer ◄─► TLS
                                 └─► BrokerApi (aiohttp, TLS) ──► PresenceGateway (invites) ──┘
                                     └─ RelayDirectory (REST credentials) ··· TurnLink ◄─► UDP/TCP + relays
    PresenceServer ── AlarmMessageReceived ──► AlarmService ──► AlarmStore (SQLite) ──► API: history, SSE
    PresenceServer ── DeviceOnline/DeviceOffline ──► DashboardFeed ──► /dashboard/ pages and SSE
    with redis_url: PresenceServer ── DeviceOnline/Offline ──► Cluster (Redis: p:<serial>, r:<node>)
                    BrokerApi ──► ClusterPresence (local, else routed) · shared counters and sessions

``start_broker`` returns once both sockets are bound and ``broker.json`` is written;
``serve`` runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dvrlink.broker.alarm_store import ALARMS_FILE, AlarmStore
from dvrlink.broker.alarms import AlarmService
from dvrlink.broker.api import BrokerApi, SharedCounters
from dvrlink.broker.api_common import PresenceView
from dvrlink.broker.api_sessions import RelayDirectory
from dvrlink.broker.cluster.logins import RedisLogins
from dvrlink.broker.cluster.node import default_node_id, load_fleet_key
from dvrlink.broker.cluster.runtime import Cluster, start_cluster
from dvrlink.broker.config import BrokerConfig, ExternalTurnServer, SmsGatewayConfig
from dvrlink.broker.connection_gate import AddressGate
from dvrlink.broker.dashboard.feed import DashboardFeed
from dvrlink.broker.dashboard.routes import DashboardRoutes
from dvrlink.broker.dashboard.view import DashboardView
from dvrlink.broker.device_events import REGISTRATION_FLUSH_S, DeviceEventHandler
from dvrlink.broker.presence_gateway import PresenceGateway
from dvrlink.broker.presence_link import PresenceLink, start_presence_link
from dvrlink.broker.presence_tcp import (
    PresenceTcpConfig,
    PresenceTcpServer,
    TransportRouter,
    start_presence_tcp,
)
from dvrlink.broker.registry import RegistryStore, format_address, open_registry
from dvrlink.broker.sms.gateway import SmsGateway, SmsSendError
from dvrlink.broker.sms.http_provider import HttpSmsGateway
from dvrlink.broker.sms.modem import ModemSmsGateway
from dvrlink.broker.sms.wake import Waker
from dvrlink.broker.state import (
    INFO_FILE,
    REGISTRY_FILE,
    BrokerInfo,
    ensure_state_dir,
    load_or_create_static_key,
    load_or_create_turn_secret,
    remove_info,
    write_info,
)
from dvrlink.broker.stun_alternate import StunResponder
from dvrlink.broker.tls import CertificatePaths, ensure_self_signed, server_context
from dvrlink.broker.turn_link import TurnLink, TurnLinkConfig, start_turn_link
from dvrlink.broker.turn_server import DEFAULT_DENIED_PEER_NETWORKS, AllocationCreated, TurnConfig, TurnEvent
from dvrlink.broker.webhooks import WebhookDispatcher, WebhookPolicy
from dvrlink.protocol.identity import b64encode_key, x25519_public_bytes
from dvrlink.protocol.presence_events import Address, ServerEvent
from dvrlink.protocol.presence_server import PresenceServer, ServerConfig, StunHook
from dvrlink.protocol.stun import StunRateLimiter

LOCK_FILE = "broker.lock"

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunningBroker:
    """A started broker; ``close`` stops it."""

    info: BrokerInfo
    config: BrokerConfig
    registry: RegistryStore
    server: PresenceServer
    link: PresenceLink
    app: web.Application
    _stack: AsyncExitStack
    turn: TurnLink | None = None
    """The built-in TURN relay (None when ``turn_enabled`` is false)."""
    presence_tcp: PresenceTcpServer | None = None
    """Presence over TCP/TLS (None when its default port could not be bound)."""
    alarms: AlarmService | None = None
    """Alarms from devices: history, followers."""
    webhooks: WebhookDispatcher | None = None
    """Alarm deliveries to the accounts' webhooks."""
    dashboard: DashboardFeed | None = None
    """The dashboard's presence history, counters and live followers."""
    cluster: Cluster | None = None
    """This node's Redis side (None without ``redis_url``)."""

    async def close(self) -> None:
        """Stop serving, close the sockets and the registry, remove broker.json."""
        await self._stack.aclose()


def _lock_state_dir(state_dir: Path) -> int:
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuntimeError(
            f"another dvrlink-broker is using {state_dir}; stop it first, or give this one its own state_dir"
        ) from None
    return fd


def _stun_by_family(v4: StunResponder, v6: StunResponder | None) -> StunHook:
    """The presence core's STUN hook: a request from an IPv6 source (it came in on the
    ``stun_host6`` socket) is answered by ``v6``, with that socket's RFC 5780 addresses; every
    other by ``v4``."""
    if v6 is None:
        return v4.answer_on_primary

    def answer(data: bytes, source: Address) -> bytes | None:
        return (v6 if ":" in source[0] else v4).answer_on_primary(data, source)

    return answer


IF_INET6 = Path("/proc/net/if_inet6")
"""Linux's list of this host's IPv6 addresses (absent elsewhere: no check)."""


def global_ipv6_addresses(if_inet6: str) -> list[str]:
    """The global-scope addresses in the text of ``/proc/net/if_inet6`` (one address a line: 32
    hex digits, interface index, prefix length, scope, flags, name); lines it cannot read are
    skipped."""
    found: list[str] = []
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != "00" or len(fields[0]) != 32:
            continue
        try:
            found.append(str(ipaddress.IPv6Address(int(fields[0], 16))))
        except ValueError:
            continue
    return found


def _warn_wildcard_ipv6(config: BrokerConfig) -> None:
    """A ``::`` presence socket answers from the address the kernel picks; with several global
    IPv6 addresses that may not be the one a device sent to, and the device drops the answer."""
    host = ipaddress.ip_address(config.udp_host)
    if host.version != 6 or not host.is_unspecified:
        return
    try:
        found = global_ipv6_addresses(IF_INET6.read_text())
    except OSError:
        return
    if len(found) > 1:
        log.warning(
            "udp_host %s on a host with %d IPv6 addresses (%s): answers to devices over IPv6 leave from "
            "the one the kernel picks, and a device that sent to another drops them; set udp_host to "
            "this host's IPv4 address and stun_host6 to the IPv6 address devices use",
            config.udp_host,
            len(found),
            ", ".join(found),
        )


def _default_route_address(ipv6: bool) -> str | None:
    """The local address of the interface with the default route (no packet is sent)."""
    family, probe = (socket.AF_INET6, "2001:db8::1") if ipv6 else (socket.AF_INET, "192.0.2.1")
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            return str(sock.getsockname()[0])
    except OSError:
        return None


def relay_public_address(config: BrokerConfig) -> str | None:
    """The IP peers reach relay sockets at: ``turn_relay_public_host``, else None when the relay
    host is a specific address, else the default-route address (127.0.0.1 / ::1 without one)."""
    if config.turn_relay_public_host is not None:
        return config.turn_relay_public_host
    relay = ipaddress.ip_address(config.turn_relay_bind_host)
    if not relay.is_unspecified:
        return None
    found = _default_route_address(relay.version == 6)
    if found is None:
        found = "::1" if relay.version == 6 else "127.0.0.1"
        log.warning(
            "no default route: the TURN relay announces %s; set turn_relay_public_host to the address "
            "peers reach this host at",
            found,
        )
    else:
        log.info(
            "TURN relay announces %s (default-route address); set turn_relay_public_host if peers reach "
            "this host at another address",
            found,
        )
    return found


def _log_turn_event(event: TurnEvent) -> None:
    if isinstance(event, AllocationCreated):
        log.debug("TURN allocation %s", event)
    else:
        log.debug("TURN %s", event)


async def _start_turn(config: BrokerConfig, secret: str, public: str | None) -> TurnLink:
    denied = () if config.turn_allow_loopback_peers else DEFAULT_DENIED_PEER_NETWORKS
    turn_config = TurnConfig(
        secret=secret,
        realm=config.turn_realm,
        denied_peer_networks=denied,
        max_allocations_per_user=config.turn_max_allocations_per_name,
        stun_rate_per_s=config.stun_rate_per_s,
        stun_rate_burst=config.stun_rate_burst,
    )
    link_config = TurnLinkConfig(
        host=config.udp_host,
        udp_port=config.turn_udp_port,
        tcp_port=config.turn_tcp_port,
        relay_host=config.turn_relay_bind_host,
        relay_public_host=public,
        relay_port_min=config.turn_relay_port_min,
        relay_port_max=config.turn_relay_port_max,
    )
    return await start_turn_link(turn_config, link_config, on_event=_log_turn_event)


async def _start_presence_tcp(
    config: BrokerConfig, router: TransportRouter, link: PresenceLink, certs: CertificatePaths
) -> PresenceTcpServer | None:
    """Presence over TCP/TLS with the API's certificate. The default port (443) is skipped with a
    warning when it cannot be bound; a configured one must bind.

    Raises:
        OSError: a configured ``presence_tcp_port`` cannot be bound (the message says what to do).
    """
    host = config.presence_tcp_host or config.udp_host
    port = 443 if config.presence_tcp_port is None else config.presence_tcp_port
    try:
        return await start_presence_tcp(
            router, link.flush, PresenceTcpConfig(host, port), server_context(certs)
        )
    except OSError as exc:
        if config.presence_tcp_port is not None:
            raise
        log.warning("%s; devices behind UDP-blocking networks cannot register until this is fixed", exc)
        return None


async def _start_waker(
    config: SmsGatewayConfig, registry: RegistryStore, static_key: X25519PrivateKey, presence: PresenceView
) -> Waker:
    """The SMS gateway of ``[sms_gateway]`` and the waker that uses it. A gateway that cannot start
    (a modem not plugged in yet) is logged; each wake tries again."""
    gateway: SmsGateway
    if config.backend == "modem":
        gateway = ModemSmsGateway(
            config.modem_port,
            baudrate=config.modem_baudrate,
            text_only=config.modem_text_only,
            validity_minutes=config.validity_minutes,
        )
    else:
        gateway = HttpSmsGateway(config)
    try:
        await gateway.start()
    except SmsSendError as exc:
        log.warning("%s; wake SMS will fail until this is fixed (each wake tries again)", exc)
    else:
        log.info("SMS gateway ready: %s", config.modem_port if config.backend == "modem" else config.backend)

    async def is_online(serial: str) -> bool:
        info = await presence.lookup(serial)
        return info is not None and info.online

    return Waker(config, gateway, registry, static_key, time.time, is_online)


async def start_broker(config: BrokerConfig, server_config: ServerConfig | None = None) -> RunningBroker:
    """Start a broker in the running event loop.

    Raises:
        OSError: the state directory or a port is unusable (the message says which).
        RuntimeError: another broker holds the state directory.
        ValueError: a key or certificate file is unreadable (the message names it).
        RegistryError: the registry cannot be opened.
    """
    loop = asyncio.get_running_loop()
    state = config.state_dir
    ensure_state_dir(state)
    stack = AsyncExitStack()  # undoes each step in reverse, at close or if a later step fails
    try:
        stack.callback(os.close, _lock_state_dir(state))
        (state / INFO_FILE).unlink(missing_ok=True)  # a stale one from a crash
        registry = open_registry(config.registry_url, state / REGISTRY_FILE)
        stack.callback(registry.close)
        if registry.created:
            log.info("created a new registry %s (no accounts, no device bindings yet)", registry.location)
        if config.fleet_key_file is not None:
            static_key = load_fleet_key(config.fleet_key_file)
        else:
            static_key = load_or_create_static_key(state)
            if config.redis_url:
                log.warning(
                    "clustered without fleet_key_file: this node serves its own key %s; devices pinned to "
                    "another node's key refuse it. Give every node the same fleet_key_file",
                    state / "broker_key.pem",
                )
        alternate = StunResponder(  # RFC 5780 on a second address and port, when configured
            config.stun_alternate_host,
            config.stun_alternate_port,
            StunRateLimiter(config.stun_rate_per_s, config.stun_rate_burst)
            if config.stun_rate_per_s
            else None,
            loop.time,
        )
        alternate6 = (  # STUN on the stun_host6 presence socket (RFC 5780 with stun_alternate_host6)
            StunResponder(
                config.stun_alternate_host6,
                config.stun_alternate_port,
                StunRateLimiter(config.stun_rate_per_s, config.stun_rate_burst)
                if config.stun_rate_per_s
                else None,
                loop.time,
            )
            if config.stun_host6 is not None
            else None
        )
        core_config = server_config or ServerConfig(tickets=config.presence_ticket_lifetime_s > 0)
        server = PresenceServer(core_config, static_key, stun=_stun_by_family(alternate, alternate6))
        gateway = PresenceGateway(server, loop, flush=lambda: link.flush())  # noqa: PLW0108 (link is bound below)
        on_device_event = DeviceEventHandler(
            server,
            registry,
            config.manifest_only,
            loop.time,
            time.time,
            gateway.on_event,
            ticket_lifetime=config.presence_ticket_lifetime_s,
        )
        stack.callback(on_device_event.flush)  # at close, after the flusher below has stopped

        async def flush_registrations() -> None:
            while True:
                await asyncio.sleep(REGISTRATION_FLUSH_S)
                on_device_event.flush()
                link.flush()  # a ticket refused after the fact put its device offline: hand that out

        flusher = asyncio.create_task(flush_registrations(), name="registration notes")
        stack.callback(flusher.cancel)
        alarm_store = AlarmStore(state / ALARMS_FILE)
        stack.callback(alarm_store.close)
        alarms = AlarmService(server, alarm_store, loop.time, time.time)
        webhooks = WebhookDispatcher(
            alarm_store,
            registry.paired_users,
            WebhookPolicy.from_config(config.webhook_allowed_networks, config.server_names),
            config.webhook_retry_initial_s,
            config.webhook_max_attempts,
        )
        stack.push_async_callback(webhooks.close)
        alarms.listeners.append(webhooks.on_alarm)
        webhooks.start()

        dashboard = DashboardFeed()
        cluster: Cluster | None = None
        waker: Waker | None = None

        def on_event(event: ServerEvent) -> None:
            on_device_event(event)
            alarms.on_event(event)
            dashboard.on_event(event, time.time())
            if cluster is not None:
                cluster.on_event(event)
            if waker is not None:
                waker.on_event(event)

        router = TransportRouter(server)  # messages for TCP-connected devices go to their connection
        _warn_wildcard_ipv6(config)
        link = await start_presence_link(
            router, on_event, config.udp_host, config.udp_port, config.udp_reuse_port
        )
        stack.callback(link.close)
        udp_port = link.local_address[1]
        listening = [("presence+stun/udp", format_address(link.local_address))]
        presence_view: PresenceView = gateway
        shared: SharedCounters | None = None
        if config.redis_url:

            def interval_of(serial: str) -> float | None:
                info = server.presence(serial)
                return info.keepalive_interval if info is not None and info.online else None

            cluster = start_cluster(
                config,
                config.node_id or default_node_id(udp_port),
                gateway,
                interval_of,
                registry,
                loop.time,
                time.time,
            )
            stack.push_async_callback(cluster.close)
            presence_view = cluster.presence
            shared = SharedCounters(cluster.logins, cluster.pair_failures, cluster.sessions)
            if (config.turn_enabled or config.turn_servers) and config.turn_secret_file is None:
                log.warning(
                    "clustered without turn_secret_file: this node's TURN credentials work on its own relay "
                    "only; give every node the same turn_secret_file"
                )

        def send_from_primary(data: bytes, address: tuple[str, int]) -> None:
            server.queue_datagram(data, address)  # the link sends it from the socket of its family
            link.flush()

        if config.stun_alternate_host is not None:
            rfc5780 = await alternate.start(link.local_address, send_from_primary)
            stack.callback(alternate.close)
            listening += [
                ("stun-alternate-port/udp", format_address((rfc5780.primary_host, rfc5780.alternate_port))),
                (
                    "stun-alternate-address/udp",
                    format_address((rfc5780.alternate_host, rfc5780.primary_port)),
                ),
                ("stun-alternate-both/udp", format_address((rfc5780.alternate_host, rfc5780.alternate_port))),
            ]
        stun6: tuple[str, int] | None = None
        if config.stun_host6 is not None and alternate6 is not None:
            # Presence and STUN over IPv6 beside the IPv4 socket: the link's second socket.
            stun6 = await link.open_ipv6(config.stun_host6, udp_port, config.udp_reuse_port)
            listening += [("presence6/udp", format_address(stun6)), ("stun6/udp", format_address(stun6))]
            if config.stun_alternate_host6 is not None:
                rfc5780_6 = await alternate6.start(stun6, send_from_primary)
                stack.callback(alternate6.close)
                listening += [
                    (
                        "stun6-alternate-port/udp",
                        format_address((rfc5780_6.primary_host, rfc5780_6.alternate_port)),
                    ),
                    (
                        "stun6-alternate-address/udp",
                        format_address((rfc5780_6.alternate_host, rfc5780_6.primary_port)),
                    ),
                    (
                        "stun6-alternate-both/udp",
                        format_address((rfc5780_6.alternate_host, rfc5780_6.alternate_port)),
                    ),
                ]
        turn: TurnLink | None = None
        relays: RelayDirectory | None = None
        public = relay_public_address(config)
        advertised = config.udp_host  # where clients reach STUN and the built-in TURN server
        if ipaddress.ip_address(advertised).is_unspecified:
            advertised = public or config.turn_relay_bind_host
        if config.turn_enabled or config.turn_servers:
            secret = load_or_create_turn_secret(config.turn_secret_path)
            servers: list[ExternalTurnServer] = []
            if config.turn_enabled:
                turn = await _start_turn(config, secret, public)
                stack.push_async_callback(turn.wait_closed)
                stack.callback(turn.close)
                listening.append(("turn/udp", format_address(turn.udp_address)))
                if turn.tcp_address is not None:
                    listening.append(("turn/tcp", format_address(turn.tcp_address)))
                servers.append(ExternalTurnServer(advertised, turn.udp_address[1], "udp"))
                if turn.tcp_address is not None:
                    servers.append(ExternalTurnServer(advertised, turn.tcp_address[1], "tcp"))
            servers.extend(config.turn_servers)
            relays = RelayDirectory(
                secret, config.turn_credential_ttl_s, tuple(servers), (advertised, udp_port), stun6
            )
        if config.tls_cert is not None and config.tls_key is not None:
            certs = CertificatePaths(config.tls_cert, config.tls_key)
        else:
            certs = ensure_self_signed(state, config.server_names, datetime.datetime.now(datetime.UTC))
        presence_tcp = await _start_presence_tcp(config, router, link, certs)
        if presence_tcp is not None:
            stack.push_async_callback(presence_tcp.wait_closed)
            stack.callback(presence_tcp.close)
            listening.append(("presence/tcp", format_address(presence_tcp.address)))
        if config.sms_gateway is not None:
            waker = await _start_waker(config.sms_gateway, registry, static_key, presence_view)
            stack.push_async_callback(waker.close)
        api = BrokerApi(
            registry,
            presence_view,
            config,
            relays=relays,
            alarms=alarms,
            webhooks=webhooks,
            shared=shared,
            waker=waker,
        )
        stack.callback(api.close)
        app = api.build_app()
        view = DashboardView(
            registry,
            gateway,
            api.sessions,
            alarm_store,
            dashboard,
            frozenset(config.dashboard_operators),
            time.time,
            None if cluster is None else cluster.fleet,
            lambda: (i.keepalive_interval for i in map(server.presence, server.online_serials()) if i),
        )
        if cluster is not None:  # the dashboard follows and counts the whole fleet
            cluster.fleet.on_change = dashboard.on_remote
            cluster.fleet.on_resync = dashboard.resync
            cluster.fleet.stats = view.node_stats
            cluster.fleet.online = lambda: server.online_count
        pages = DashboardRoutes(
            view,
            dashboard,
            api.check_login,
            config.dashboard_session_ttl_s,
            config.http_body_timeout_s,
            time.time,
            logins=None if cluster is None else RedisLogins(cluster.redis, config.dashboard_session_ttl_s),
        )
        app.add_subapp("/dashboard", pages.build_app())
        runner = web.AppRunner(app, shutdown_timeout=2.0, keepalive_timeout=config.http_idle_timeout_s)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        stack.callback(alarms.close)  # ends the alarm streams first, so the cleanup need not wait
        stack.callback(dashboard.close)  # and the dashboard's
        stack.callback(gateway.cancel_all)
        # TLS is started by the gate, after the per-address connection cap let a connection in.
        gate = AddressGate(
            config.http_max_connections_per_address, server_context(certs), config.http_body_timeout_s
        )
        handlers = runner.server  # makes one aiohttp request handler per connection
        assert handlers is not None  # set by setup()
        http_server = await loop.create_server(
            lambda: gate.protocol(handlers()), config.https_host, config.https_port, reuse_address=True
        )
        stack.callback(gate.close)
        stack.callback(http_server.close)
        https_port = int(http_server.sockets[0].getsockname()[1])
        listening.append(("https", format_address((config.https_host, https_port))))
        info = BrokerInfo(
            udp_port,
            https_port,
            x25519_public_bytes(static_key),
            os.getpid(),
            certs.cert,
            turn_udp_port=None if turn is None else turn.udp_address[1],
            turn_tcp_port=None if turn is None or turn.tcp_address is None else turn.tcp_address[1],
            listening=tuple(listening),
        )
        write_info(state, info)
        stack.callback(remove_info, state, info.pid)
        log.info("public key (devices pin it as [broker] public_key): %s", b64encode_key(info.public_key))
        for what, address in listening:
            log.info("listening: %s on %s", what, address)
        log.info(
            "dvrlink-broker ready udp=%s:%d presence-tcp=%s https=%s:%d turn=%s",
            config.udp_host,
            udp_port,
            "off" if presence_tcp is None else "{}:{}".format(*presence_tcp.address),
            config.https_host,
            https_port,
            "off" if turn is None else f"{config.udp_host}:{info.turn_udp_port}/udp,{info.turn_tcp_port}/tcp",
        )
        return RunningBroker(
            info,
            config,
            registry,
            server,
            link,
            app,
            stack,
            turn,
            presence_tcp,
            alarms,
            webhooks,
            dashboard,
            cluster,
        )
    except BaseException:
        await stack.aclose()
        raise


async def serve(config: BrokerConfig) -> None:
    """Run a broker until SIGTERM or SIGINT, then shut it down cleanly.

    Raises:
        The errors of :func:`start_broker`.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    broker = await start_broker(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("dvrlink-broker stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await broker.close()
