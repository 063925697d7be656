"""Map a UDP port on the home router with PCP, NAT-PMP or UPnP-IGD, keep it while in use, delete it.

``PortMapping.open(internal_port, config)`` asks the router (the default route's gateway unless
the config names one) in PCP and in UPnP-IGD at the same time; a router that answers PCP with
"unsupported version" speaks NAT-PMP, which is asked next (RFC 6887 appendix A). The first grant
wins and the others are released. The mapping is renewed at half its lifetime while the object
is open; ``close`` deletes it. ``wait_mapped`` gives the external address (or None when no router
maps), ``external`` and ``on_change`` follow it.

PCP and NAT-PMP run as sans-I/O cores (``protocol.port_mapping.MappingCore`` with
``protocol.pcp.PcpWire`` or ``protocol.natpmp.NatPmpWire``) under ``driver.CoreDriver``, one
connected UDP socket each. UPnP-IGD is a small client of our own (SSDP ``M-SEARCH``, the device
description, ``GetExternalIPAddress``/``AddPortMapping``/``DeletePortMapping`` over HTTP), with
its messages in ``protocol.upnp_igd``: the ``miniupnpc`` module would be one more C extension to
cross-compile for the recorder's image, and its calls block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dvrlink.driver.core_driver import CoreDriver
from dvrlink.protocol import natpmp, pcp, upnp_igd
from dvrlink.protocol.port_mapping import (
    Address,
    MappingConfig,
    MappingCore,
    MappingCreated,
    MappingDeleted,
    MappingEvent,
    MappingFailed,
    MappingLost,
    MappingProtocol,
    MappingRenewed,
    MappingWire,
    PortMappingConfig,
)

log = logging.getLogger(__name__)

ROUTE_TABLE = Path("/proc/net/route")
MAX_HTTP = upnp_igd.MAX_DOCUMENT + 8192
UPNP_HEAD_START_S = 1.0
"""How long PCP (or NAT-PMP) may go unanswered before UPnP-IGD is asked too. Asking all at once
would do for routers that speak one; one that speaks both, given the same port twice, keeps one
entry for both, and releasing the slower protocol's grant would delete the faster one's."""
UPNP_CONFLICT_TRIES = 4
"""``AddPortMapping`` attempts with other external ports when the one asked for is taken."""


def default_gateway(route_table: Path = ROUTE_TABLE) -> str | None:
    """The IPv4 gateway of the default route (Linux ``/proc/net/route``), or None without one
    (a point-to-point link such as a modem's PPP has no gateway: no router to ask)."""
    try:
        lines = route_table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "00000000" and fields[2] != "00000000":
            return socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
    return None


def local_address_towards(gateway: str) -> str:
    """Our source address for datagrams to ``gateway`` (no packet is sent).

    Raises:
        OSError: no route to it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((gateway, pcp.PORT))
        return str(probe.getsockname()[0])


# -- one protocol's attempt ----------------------------------------------------------------------------


class _Attempt:
    """One protocol's mapping; events go to ``on_event``."""

    protocol: MappingProtocol

    def __init__(self, on_event: Callable[[_Attempt, MappingEvent], None]) -> None:
        self.on_event = on_event

    async def start(self) -> None:
        raise NotImplementedError

    def renew(self) -> None:
        raise NotImplementedError

    async def delete(self, timeout: float) -> bool:
        """Release the mapping; True when the router confirmed."""
        raise NotImplementedError

    def abandon(self) -> None:
        """Stop renewing without deleting (the router's entry is held by another protocol)."""
        raise NotImplementedError


class _Link(asyncio.DatagramProtocol):
    def __init__(self, attempt: _CoreAttempt) -> None:
        self.attempt = attempt

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.attempt.driver.receive(self.attempt.core.receive_datagram, data)

    def error_received(self, exc: Exception) -> None:
        attempt = self.attempt
        attempt.core.router_unreachable(
            f"the router refused port {attempt.port} ({exc})", attempt.driver.now()
        )
        attempt.driver.flush()


class _CoreAttempt(_Attempt):
    """PCP or NAT-PMP: a ``MappingCore`` on a UDP socket connected to the router's port 5351."""

    def __init__(
        self,
        wire: MappingWire,
        gateway: str,
        lifetime_s: int,
        on_event: Callable[[_Attempt, MappingEvent], None],
    ) -> None:
        super().__init__(on_event)
        self.protocol = wire.protocol
        self.port = pcp.PORT
        self.gateway = gateway
        self.core = MappingCore(wire, MappingConfig(lifetime_s=lifetime_s))
        self.driver: CoreDriver[MappingEvent, bytes] = CoreDriver(
            self.core, self._transmit, on_event=self._event, name=f"{wire.protocol.value} mapping", logger=log
        )
        self._transport: asyncio.DatagramTransport | None = None
        self._deleted = asyncio.Event()
        self._confirmed = False

    def _transmit(self, datagrams: Sequence[bytes]) -> None:
        if self._transport is not None:
            for datagram in datagrams:
                self._transport.sendto(datagram)

    def _event(self, event: MappingEvent) -> None:
        if isinstance(event, MappingDeleted):
            self._confirmed = event.confirmed
            self._deleted.set()
        self.on_event(self, event)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Link(self), remote_addr=(self.gateway, self.port)
        )
        self.core.start(self.driver.now())
        self.driver.flush()

    def renew(self) -> None:
        self.core.renew(self.driver.now())
        self.driver.flush()

    def abandon(self) -> None:
        self.driver.close()
        if self._transport is not None:
            self._transport.close()

    async def delete(self, timeout: float) -> bool:
        try:
            if not self.driver.closed:
                self.core.delete(self.driver.now())
                self.driver.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._deleted.wait(), timeout)
            return self._confirmed
        finally:
            self.driver.close()
            if self._transport is not None:
                self._transport.close()


class _Ssdp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        location = upnp_igd.parse_search_response(data)
        if location is not None and not self.found.done():
            self.found.set_result(location)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error to one of the searches; the others may still be answered


class _UpnpAttempt(_Attempt):
    """UPnP-IGD: discovery, then ``AddPortMapping`` renewed by calling it again."""

    protocol = MappingProtocol.UPNP

    def __init__(
        self,
        gateway: str,
        local_ip: str,
        internal_port: int,
        config: PortMappingConfig,
        on_event: Callable[[_Attempt, MappingEvent], None],
        rng: random.Random,
    ) -> None:
        super().__init__(on_event)
        self.gateway, self.local_ip, self.internal_port = gateway, local_ip, internal_port
        self.config = config
        self.rng = rng
        self.service: upnp_igd.Service | None = None
        self.external: Address | None = None
        self.lease_s = config.lifetime_s
        self._renewal: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        try:
            await self._map()
        except (OSError, TimeoutError, upnp_igd.UpnpError) as exc:
            self.on_event(self, MappingFailed(f"upnp: {exc or type(exc).__name__}"))

    async def _map(self) -> None:
        timeout = self.config.upnp_timeout_s
        location = await self._discover(timeout)
        status, body = await self._http(upnp_igd.http_request("GET", location), location, timeout)
        if status != 200:
            raise upnp_igd.UpnpError(f"GET {location} answered HTTP {status}")
        self.service = upnp_igd.parse_description(body, location)
        answer = await self._call("GetExternalIPAddress", {})
        external_ip = answer.get("NewExternalIPAddress", "")
        try:
            socket.inet_aton(external_ip)
        except OSError:
            raise upnp_igd.UpnpError(f"the router's external address {external_ip!r} is not IPv4") from None
        port = self.internal_port
        for attempt in range(UPNP_CONFLICT_TRIES):
            try:
                await self._add(port)
                break
            except upnp_igd.UpnpError as exc:
                if exc.code == upnp_igd.ONLY_PERMANENT_LEASES_SUPPORTED and self.lease_s:
                    self.lease_s = 0  # a permanent mapping: never renewed, deleted on close
                    await self._add(port)
                    break
                if exc.code != upnp_igd.CONFLICT_IN_MAPPING_ENTRY or attempt == UPNP_CONFLICT_TRIES - 1:
                    raise
                port = self.rng.randrange(20000, 60000)
        if self._closed:
            return
        self.external = (external_ip, port)
        self._schedule_renewal()
        self.on_event(self, MappingCreated(MappingProtocol.UPNP, self.external, self.lease_s))

    async def _discover(self, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        transport, ssdp = await loop.create_datagram_endpoint(_Ssdp, local_addr=(self.local_ip, 0))
        try:
            with contextlib.suppress(OSError):
                transport.get_extra_info("socket").setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
            for target in upnp_igd.SEARCH_TARGETS:
                # To the group, and to the gateway itself (a router answers either).
                for address in (upnp_igd.SSDP_ADDRESS, (self.gateway, upnp_igd.SSDP_ADDRESS[1])):
                    transport.sendto(upnp_igd.msearch(target, mx=1), address)
            try:
                return await asyncio.wait_for(asyncio.shield(ssdp.found), timeout)
            except TimeoutError:
                raise upnp_igd.UpnpError(
                    f"no UPnP gateway answered an M-SEARCH within {timeout:g} s"
                ) from None
        finally:
            transport.close()

    async def _http(self, request: bytes, url: str, timeout: float) -> tuple[int, bytes]:
        from urllib.parse import urlsplit  # noqa: PLC0415

        parts = urlsplit(url)
        host, port = parts.hostname or self.gateway, parts.port or 80

        async def exchange() -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request)
                await writer.drain()
                data = b""
                while chunk := await reader.read(65536):
                    data += chunk
                    if len(data) > MAX_HTTP:
                        raise upnp_igd.UpnpError(f"{url} sent more than {MAX_HTTP} bytes")
                return data
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        try:
            data = await asyncio.wait_for(exchange(), timeout)
        except TimeoutError:
            raise upnp_igd.UpnpError(f"{url} did not answer within {timeout:g} s") from None
        return upnp_igd.parse_http_response(data)

    async def _call(self, action: str, arguments: dict[str, str]) -> dict[str, str]:
        assert self.service is not None
        request = upnp_igd.soap_request(self.service, action, arguments)
        status, body = await self._http(request, self.service.control_url, self.config.upnp_timeout_s)
        return upnp_igd.parse_soap_response(status, body, action)

    async def _add(self, external_port: int) -> None:
        arguments = upnp_igd.add_port_mapping_arguments(
            external_port, self.internal_port, self.local_ip, self.lease_s, self.config.description
        )
        await self._call("AddPortMapping", arguments)

    def _schedule_renewal(self) -> None:
        if self.lease_s and not self._closed:
            loop = asyncio.get_running_loop()
            self._renewal = loop.call_later(self.lease_s / 2, self.renew)

    def renew(self) -> None:
        if self._closed or self.external is None or (self._task is not None and not self._task.done()):
            return
        if self._renewal is not None:
            self._renewal.cancel()
        self._task = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        assert self.external is not None
        try:
            await self._add(self.external[1])
        except (OSError, TimeoutError, upnp_igd.UpnpError) as exc:
            self.external = None
            self.on_event(self, MappingLost(f"upnp renewal failed: {exc or type(exc).__name__}"))
            return
        if not self._closed:
            self._schedule_renewal()
            self.on_event(self, MappingRenewed(self.external, self.lease_s, moved=False))

    def abandon(self) -> None:
        self._closed = True
        self.external = None
        if self._renewal is not None:
            self._renewal.cancel()
        if self._task is not None:
            self._task.cancel()

    async def delete(self, timeout: float) -> bool:
        self._closed = True
        if self._renewal is not None:
            self._renewal.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.external is None or self.service is None:
            return False
        port, self.external = self.external[1], None
        try:
            await asyncio.wait_for(
                self._call("DeletePortMapping", upnp_igd.delete_port_mapping_arguments(port)), timeout
            )
        except (OSError, TimeoutError, upnp_igd.UpnpError) as exc:
            log.info("upnp: deleting the mapping of port %d failed: %s", port, exc)
            return False
        return True


# -- the mapping ------------------------------------------------------------------------------------------


@dataclass
class PortMappingStats:
    """What happened to one mapping, for status output and tests."""

    failures: list[str] = field(default_factory=list)
    renewals: int = 0
    lost: list[str] = field(default_factory=list)


class PortMapping:
    """One internal UDP port mapped on the router (see the module docstring). Use :meth:`open`."""

    def __init__(self, internal_port: int, config: PortMappingConfig) -> None:
        """Use :meth:`open`."""
        self.internal_port = internal_port
        self.config = config
        self.external: Address | None = None
        """The router's public address for the port while mapped, else None."""
        self.protocol: MappingProtocol | None = None
        """The protocol whose mapping is in use."""
        self.on_change: Callable[[Address | None], None] = lambda external: None
        """Called when the external address changes (None: the mapping was lost)."""
        self.on_renewed: Callable[[int], None] = lambda lifetime_s: None
        """Called after each granted renewal with the lifetime granted."""
        self.stats = PortMappingStats()
        self.gateway: str | None = None
        self.local_ip: str | None = None
        self._attempts: list[_Attempt] = []
        self._active: _Attempt | None = None
        self._pending = 0
        self._settled: asyncio.Event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        """Attempts starting (cancelled by ``close``)."""
        self._releases: set[asyncio.Task[None]] = set()
        """Deletions of mappings not needed (awaited by ``close``)."""
        self._closed = False
        self._upnp_due: asyncio.TimerHandle | None = None
        """UPnP-IGD's delayed start (``UPNP_HEAD_START_S``), while pending."""
        self._rng = random.Random(secrets.randbits(64))

    @classmethod
    async def open(
        cls, internal_port: int, config: PortMappingConfig, internal_ip: str | None = None
    ) -> PortMapping:
        """Start mapping ``internal_port`` (UDP) on the router; returns at once (see
        :meth:`wait_mapped`). With no router to ask (no default gateway, no protocol configured,
        or ``internal_ip`` given and not the address we reach the gateway from) the mapping
        settles at once as unmapped.

        Raises:
            ValueError: the port is not 1..65535.
        """
        if not 0 < internal_port <= 0xFFFF:
            raise ValueError(f"cannot map port {internal_port}: ports are 1..65535")
        self = cls(internal_port, config)
        self.gateway = config.gateway or default_gateway()
        if self.gateway is None or not config.protocols:
            why = "no protocol configured" if not config.protocols else "no default gateway to ask"
            self.stats.failures.append(f"no port mapping: {why}")
            self._settled.set()
            return self
        try:
            self.local_ip = local_address_towards(self.gateway)
        except OSError as exc:
            self.stats.failures.append(f"no route to the gateway {self.gateway}: {exc}")
            self._settled.set()
            return self
        if internal_ip is not None and internal_ip != self.local_ip:
            self.stats.failures.append(
                f"{internal_ip} is not on the way to the gateway {self.gateway} (that is {self.local_ip})"
            )
            self._settled.set()
            return self
        protocols = config.protocols
        if MappingProtocol.PCP in protocols:
            self._launch(self._pcp())
        elif MappingProtocol.NATPMP in protocols:
            self._launch(self._natpmp())
        if MappingProtocol.UPNP in protocols:
            if self._attempts:
                self._upnp_due = asyncio.get_running_loop().call_later(UPNP_HEAD_START_S, self._start_upnp)
            else:
                self._start_upnp()
        return self

    def _start_upnp(self) -> None:
        self._upnp_due = None
        if self._closed or self._active is not None:
            return
        assert self.gateway is not None and self.local_ip is not None
        self._launch(
            _UpnpAttempt(self.gateway, self.local_ip, self.internal_port, self.config, self._event, self._rng)
        )

    def _pcp(self) -> _Attempt:
        assert self.gateway is not None and self.local_ip is not None
        wire = pcp.PcpWire(
            self.local_ip,
            self.internal_port,
            secrets.token_bytes(pcp.NONCE_SIZE),
            lambda: self._rng.uniform(-0.1, 0.1),
            max_attempts=self.config.pcp_attempts,
        )
        return _CoreAttempt(wire, self.gateway, self.config.lifetime_s, self._event)

    def _natpmp(self) -> _Attempt:
        assert self.gateway is not None
        wire = natpmp.NatPmpWire(self.internal_port, max_attempts=self.config.natpmp_attempts)
        return _CoreAttempt(wire, self.gateway, self.config.lifetime_s, self._event)

    def _launch(self, attempt: _Attempt) -> None:
        self._attempts.append(attempt)
        self._pending += 1
        task = asyncio.get_running_loop().create_task(self._start(attempt))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, attempt: _Attempt) -> None:
        try:
            await attempt.start()
        except OSError as exc:
            self._event(attempt, MappingFailed(f"{attempt.protocol.value}: {exc}"))
        except Exception as exc:
            # A router's answer we did not foresee must not leave the mapping waiting for ever.
            log.exception("port %d: %s mapping failed", self.internal_port, attempt.protocol.value)
            self._event(attempt, MappingFailed(f"{attempt.protocol.value}: {type(exc).__name__}: {exc}"))

    def _event(self, attempt: _Attempt, event: MappingEvent) -> None:
        log.debug("port %d: %s %r", self.internal_port, attempt.protocol.value, event)
        if isinstance(event, MappingCreated):
            self._pending -= 1
            if self._active is None and not self._closed:
                if self._upnp_due is not None:
                    self._upnp_due.cancel()
                    self._upnp_due = None
                self._active, self.protocol, self.external = attempt, event.protocol, event.external
                log.info(
                    "port %d mapped to %s:%d by %s for %d s",
                    self.internal_port, *event.external, event.protocol.value, event.lifetime_s,
                )  # fmt: skip
                self._settled.set()
                self.on_change(self.external)
            elif event.external == self.external:
                # The same public port: the router keeps one entry for both protocols, and
                # deleting this grant would delete the one in use.
                self._attempts.remove(attempt)
                attempt.abandon()
            else:
                self._release(attempt)  # a slower protocol's grant: not needed
        elif isinstance(event, MappingFailed):
            self._pending -= 1
            self.stats.failures.append(event.reason)
            log.info("port %d: %s", self.internal_port, event.reason)
            if event.other_version and MappingProtocol.NATPMP in self.config.protocols and not self._closed:
                self._launch(self._natpmp())
            elif self._upnp_due is not None:
                self._upnp_due.cancel()
                self._start_upnp()  # no need to wait out the head start
            elif self._pending <= 0:
                self._settled.set()
        elif isinstance(event, MappingRenewed) and attempt is self._active:
            self.stats.renewals += 1
            if event.moved:
                self.external = event.external
                self.on_change(self.external)
            self.on_renewed(event.lifetime_s)
        elif isinstance(event, MappingLost) and attempt is self._active:
            self.stats.lost.append(event.reason)
            log.warning("port %d: mapping lost: %s", self.internal_port, event.reason)
            self.external = None
            self.on_change(None)

    def _release(self, attempt: _Attempt) -> None:
        self._attempts.remove(attempt)
        task = asyncio.get_running_loop().create_task(self._delete(attempt))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _delete(self, attempt: _Attempt) -> None:
        await attempt.delete(self.config.upnp_timeout_s)

    async def wait_mapped(self, timeout: float) -> Address | None:
        """The external address once a protocol granted one; None when every protocol failed or
        ``timeout`` seconds passed first (the attempts go on; a late grant calls ``on_change``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        return self.external

    def renew(self) -> None:
        """Renew the mapping in use now (its own timer renews it at half the lifetime anyway)."""
        if self._active is not None:
            self._active.renew()

    async def close(self, timeout: float = 2.0) -> bool:
        """Delete the mapping (and stop every attempt); True when the router confirmed the
        deletion of the one in use. Idempotent."""
        if self._closed:
            return False
        self._closed = True
        self._settled.set()
        if self._upnp_due is not None:
            self._upnp_due.cancel()
            self._upnp_due = None
        active = self._active
        self.external = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._releases, return_exceptions=True)
        results = await asyncio.gather(*(a.delete(timeout) for a in self._attempts), return_exceptions=True)
        confirmed = False
        for attempt, result in zip(self._attempts, results, strict=True):
            if attempt is active:
                confirmed = result is True
        self._attempts.clear()
        return confirmed
