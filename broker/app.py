"""dvrlink-broker wiring: registry, presence core on UDP, viewer API on HTTPS.

    config ─► registry (SQLite) ─┬─► DeviceEventHandler ◄── events ── PresenceServer ◄─► PresenceLink ◄─► UDP
                                 └─► BrokerApi (aiohttp, TLS) ──► PresenceGateway (invites) ──┘

``start_broker`` returns once both sockets are bound and ``broker.json`` is written;
``serve`` runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import logging
import os
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from dvrlink.broker.api import BrokerApi
from dvrlink.broker.config import BrokerConfig
from dvrlink.broker.device_events import DeviceEventHandler
from dvrlink.broker.presence_gateway import PresenceGateway
from dvrlink.broker.presence_link import PresenceLink, start_presence_link
from dvrlink.broker.registry import Registry
from dvrlink.broker.state import (
    INFO_FILE,
    REGISTRY_FILE,
    BrokerInfo,
    ensure_state_dir,
    load_or_create_static_key,
    remove_info,
    write_info,
)
from dvrlink.broker.tls import CertificatePaths, ensure_self_signed, server_context
from dvrlink.protocol.identity import x25519_public_bytes
from dvrlink.protocol.presence_server import PresenceServer, ServerConfig

LOCK_FILE = "broker.lock"

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RunningBroker:
    """A started broker; ``close`` stops it."""

    info: BrokerInfo
    config: BrokerConfig
    registry: Registry
    server: PresenceServer
    link: PresenceLink
    app: web.Application
    _stack: AsyncExitStack

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
        registry = Registry(state / REGISTRY_FILE)
        stack.callback(registry.close)
        static_key = load_or_create_static_key(state)
        server = PresenceServer(server_config or ServerConfig(), static_key)
        gateway = PresenceGateway(server, loop, flush=lambda: link.flush())  # noqa: PLW0108 (link is bound below)
        on_event = DeviceEventHandler(
            server, registry, config.manifest_only, loop.time, time.time, gateway.on_event
        )
        link = await start_presence_link(server, on_event, config.udp_host, config.udp_port)
        stack.callback(link.close)
        if config.tls_cert is not None and config.tls_key is not None:
            certs = CertificatePaths(config.tls_cert, config.tls_key)
        else:
            certs = ensure_self_signed(state, config.server_names, datetime.datetime.now(datetime.UTC))
        app = BrokerApi(registry, gateway, config).build_app()
        runner = web.AppRunner(app, shutdown_timeout=2.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        stack.callback(gateway.cancel_all)
        await web.TCPSite(
            runner, config.https_host, config.https_port, ssl_context=server_context(certs)
        ).start()
        udp_port = link.local_address[1]
        https_port = int(runner.addresses[0][1])
        info = BrokerInfo(udp_port, https_port, x25519_public_bytes(static_key), os.getpid(), certs.cert)
        write_info(state, info)
        stack.callback(remove_info, state, info.pid)
        log.info(
            "dvrlink-broker ready udp=%s:%d https=%s:%d",
            config.udp_host,
            udp_port,
            config.https_host,
            https_port,
        )
        return RunningBroker(info, config, registry, server, link, app, stack)
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
