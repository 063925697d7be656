"""Alarm webhooks: each account may set one URL; every alarm of a device paired to it is POSTed
there, signed, and retried with backoff until the endpoint answers 2xx.

**Request.** ``POST <url>`` with ``Content-Type: application/json`` and the body
``{"event": <Alarm JSON, as in the API>}``, and the headers

- ``X-Dvrlink-Event-Id``: the alarm's id (the same on every retry: endpoints drop repeats by it);
- ``X-Dvrlink-Timestamp``: unix seconds when this attempt was signed;
- ``X-Dvrlink-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed with the webhook's secret
  (handed out once by ``PUT /v1/webhook``), of ``<timestamp>.`` followed by the body bytes.

**Delivery.** The outbox is in the alarm store (``webhook_outbox``), so a broker restart
resumes it. One worker per account sends its alarms in order, one at a time: an alarm is removed
from the outbox once the endpoint answers 2xx; otherwise (an error status, a timeout, a refused
connection) it is tried again after ``retry_initial_s``, doubling up to ``MAX_BACKOFF_S``, at most
``max_attempts`` times, then given up and logged. Redirects are not followed. An endpoint thus
gets each alarm once for every 2xx it answers; one whose 2xx is lost on the way back gets that
alarm again with the same ``X-Dvrlink-Event-Id``.

**SSRF guard.** A webhook URL must be ``https`` and must not point at this broker (its
``server_names``, or any address of this host), loopback, private, link-local, multicast,
reserved or unspecified addresses: the broker would otherwise let any account make requests
into its own network. The check runs when the URL is set and again at every connection, on the
addresses the name resolves to then (so a name that later resolves to a private address is
refused too). ``webhook_allowed_networks`` in the broker config lifts it for addresses in those
networks (and lets them use plain ``http``), for labs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from dvrlink.broker.alarm_store import AlarmStore, StoredAlarm
from dvrlink.broker.registry import RegistryError

MAX_BACKOFF_S = 300.0
UNROUTED_RETRY_S = 5.0
"""How soon alarms whose accounts could not be looked up (registry unavailable) are tried again."""
MAX_UNROUTED = 10_000
"""Alarms kept waiting for the registry; beyond, the oldest lose their webhook deliveries (they
stay in the history)."""
REQUEST_TIMEOUT_S = 10.0
MAX_URL = 2048

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger(__name__)


class WebhookRefusedError(ValueError):
    """A webhook URL is not allowed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """What webhook URLs may point at."""

    allowed_networks: tuple[IpNetwork, ...] = ()
    own_names: tuple[str, ...] = ()
    """Names of this broker (``server_names``): refused as targets."""

    @classmethod
    def from_config(cls, networks: Sequence[str], own_names: Sequence[str]) -> WebhookPolicy:
        """From the broker config's ``webhook_allowed_networks`` and ``server_names``."""
        return cls(
            tuple(ipaddress.ip_network(n, strict=False) for n in networks),
            tuple(n.lower().rstrip(".") for n in own_names),
        )

    def allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """True if ``ip`` is in an allowed network."""
        return any(ip in network for network in self.allowed_networks)

    def address_problem(self, address: str) -> str | None:
        """Why a webhook may not connect to ``address`` (an IP literal), or None."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.allowed(ip):
            return None
        for test, what in (
            (ip.is_loopback, "a loopback address"),
            (ip.is_link_local, "a link-local address"),
            (ip.is_multicast, "a multicast address"),
            (ip.is_unspecified, "an unspecified address"),
            (ip.is_private, "a private address"),
            (ip.is_reserved, "a reserved address"),
            (not ip.is_global, "not a public address"),  # e.g. 100.64.0.0/10, carrier-grade NAT
        ):
            if test:
                return f"{ip} is {what}"
        if _is_own_address(str(ip)):
            return f"{ip} is an address of this broker"
        return None

    def check_url(self, url: str) -> yarl.URL:
        """Check a URL's form, before any name is resolved.

        Raises:
            WebhookRefusedError: not an absolute http(s) URL with a host, credentials in it, too
                long, http to a host that is not an allowed IP literal, or a name of this broker.
        """
        if len(url) > MAX_URL:
            raise WebhookRefusedError(f"the webhook URL is {len(url)} characters long; at most {MAX_URL}")
        try:
            parsed = yarl.URL(url)
        except ValueError as exc:
            raise WebhookRefusedError(f"the webhook URL {url!r} does not parse ({exc})") from None
        host = (parsed.host or "").lower().rstrip(".")
        if parsed.scheme not in ("https", "http") or not host:
            raise WebhookRefusedError(f"the webhook URL {url!r} must be an https:// URL with a host")
        if parsed.user is not None or parsed.password is not None:
            raise WebhookRefusedError(
                "put no user name or password in the webhook URL: its signature authenticates"
            )
        if host in self.own_names or host == "localhost" or host.endswith(".localhost"):
            raise WebhookRefusedError(
                f"the webhook URL {url!r} points at this broker ({host}): give your own endpoint's URL"
            )
        literal = _ip_literal(host)
        if literal is not None:
            problem = self.address_problem(literal)
            if problem is not None:
                raise WebhookRefusedError(self._refusal(url, problem))
        if parsed.scheme == "http" and (literal is None or not self.allowed(ipaddress.ip_address(literal))):
            raise WebhookRefusedError(
                f"the webhook URL {url!r} is plain http: use https (http only reaches the networks in "
                "webhook_allowed_networks, for labs)"
            )
        return parsed

    async def check_resolved(self, url: yarl.URL) -> None:
        """Check the addresses ``url``'s host resolves to now.

        Raises:
            WebhookRefusedError: one of them is refused, or the name does not resolve.
        """
        host = url.host or ""
        if _ip_literal(host) is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, url.port or 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise WebhookRefusedError(
                f"the webhook host {host} does not resolve ({exc}): check the URL"
            ) from None
        for info in infos:
            problem = self.address_problem(str(info[4][0]))
            if problem is not None:
                raise WebhookRefusedError(self._refusal(str(url), f"{host} resolves to {problem}"))

    @staticmethod
    def _refusal(url: str, problem: str) -> str:
        return (
            f"the webhook URL {url!r} is refused: {problem}. Webhooks must reach a public https endpoint; "
            "for a lab, add its network to webhook_allowed_networks in the broker config"
        )


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _is_own_address(address: str) -> bool:
    """True if ``address`` is an address of this host (it can be bound to)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


class _GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses any address the policy refuses, so
    a name that resolves to a private address at delivery time is not connected to."""

    def __init__(self, policy: WebhookPolicy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            problem = self._policy.address_problem(result["host"])
            if problem is not None:
                raise OSError(f"webhook host {host} resolves to a refused address: {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Dvrlink-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


class WebhookDispatcher:
    """Delivers stored alarms to the webhooks of the accounts paired with their device (see the
    module docstring). ``paired_users`` names the accounts a serial is paired to."""

    def __init__(
        self,
        store: AlarmStore,
        paired_users: Callable[[str], list[str]],
        policy: WebhookPolicy,
        retry_initial_s: float = 2.0,
        max_attempts: int = 12,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._paired_users = paired_users
        self.policy = policy
        self._retry_initial = retry_initial_s
        self._max_attempts = max_attempts
        self._wall_clock = wall_clock
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None
        self._unrouted: list[StoredAlarm] = []
        """Alarms whose accounts the registry could not name yet (it was unavailable)."""
        self._retry: asyncio.TimerHandle | None = None
        self._outage = False
        self.stats: dict[str, int] = {
            "delivered": 0,
            "failed_attempts": 0,
            "given_up": 0,
            "unrouted_dropped": 0,
        }

    def start(self) -> None:
        """Resume the deliveries a previous run left (call in the running loop)."""
        for username in self._store.delivery_users():
            self._kick(username)

    def on_alarm(self, alarm: StoredAlarm) -> None:
        """Queue ``alarm`` for the webhooks of the accounts paired with its device. While the
        registry cannot name them (``RegistryError``: PostgreSQL stopped), the alarm waits, in
        order, and is queued when the registry answers again (tried every ``UNROUTED_RETRY_S``)."""
        self._unrouted.append(alarm)
        if len(self._unrouted) > MAX_UNROUTED:
            del self._unrouted[0]
            self.stats["unrouted_dropped"] += 1
        self._route()

    def _route(self, from_timer: bool = False) -> None:
        if from_timer:
            self._retry = None
        while self._unrouted:
            alarm = self._unrouted[0]
            try:
                users = self._paired_users(alarm.serial)
            except (RegistryError, sqlite3.Error) as exc:
                if not self._outage:
                    self._outage = True
                    log.warning(
                        "alarm webhooks wait: cannot look up the paired accounts (%s); trying again "
                        "every %g s and at each new alarm",
                        exc,
                        UNROUTED_RETRY_S,
                    )
                if self._retry is None:
                    loop = asyncio.get_running_loop()
                    self._retry = loop.call_later(UNROUTED_RETRY_S, self._route, True)
                return
            del self._unrouted[0]
            for username in self._store.enqueue_deliveries(users, alarm.id):
                self._kick(username)
        if self._outage:
            self._outage = False
            log.info("alarm webhooks: the paired accounts can be looked up again")
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    @property
    def unrouted(self) -> int:
        """Alarms waiting for the registry before their webhooks can be queued."""
        return len(self._unrouted)

    def webhook_changed(self, username: str) -> None:
        """The account's webhook was set or removed: its worker picks that up."""
        event = self._wake.get(username)
        if event is not None:
            event.set()

    async def close(self) -> None:
        """Stop the workers (what is left stays in the outbox) and close the HTTP client."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _kick(self, username: str) -> None:
        self._wake.setdefault(username, asyncio.Event()).set()
        task = self._workers.get(username)
        if task is None or task.done():
            self._workers[username] = asyncio.get_running_loop().create_task(
                self._work(username), name=f"webhook {username}"
            )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self.policy), limit=64)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": "dvrlink-broker-webhook/1"},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            )
        return self._session

    async def _work(self, username: str) -> None:
        wake = self._wake.setdefault(username, asyncio.Event())
        while True:
            wake.clear()
            pending = self._store.pending_deliveries(username)
            if not pending:
                await wake.wait()
                continue
            for alarm_id, attempts in pending:
                await self._deliver(username, alarm_id, attempts)

    async def _deliver(self, username: str, alarm_id: int, attempts: int) -> None:
        while True:
            webhook = self._store.webhook(username)
            alarm = self._store.alarm(alarm_id)
            if webhook is None or alarm is None:
                self._store.delivery_done(username, alarm_id)  # removed meanwhile: nothing to send
                return
            problem = await self._post(webhook.url, webhook.secret, alarm)
            if problem is None:
                self._store.delivery_done(username, alarm_id)
                self.stats["delivered"] += 1
                return
            attempts += 1
            self.stats["failed_attempts"] += 1
            if attempts >= self._max_attempts:
                self._store.delivery_done(username, alarm_id)
                self.stats["given_up"] += 1
                log.warning(
                    "gave up delivering alarm %d to %s's webhook %s after %d attempts: %s",
                    alarm_id,
                    username,
                    webhook.url,
                    attempts,
                    problem,
                )
                return
            self._store.delivery_attempted(username, alarm_id)
            delay = min(self._retry_initial * 2 ** (attempts - 1), MAX_BACKOFF_S)
            log.info(
                "webhook of %s failed for alarm %d (%s); attempt %d in %g s",
                username,
                alarm_id,
                problem,
                attempts + 1,
                delay,
            )
            await asyncio.sleep(delay)

    async def _post(self, url: str, secret: bytes, alarm: StoredAlarm) -> str | None:
        """One attempt; None on 2xx, else what went wrong."""
        try:
            parsed = self.policy.check_url(url)
        except WebhookRefusedError as exc:
            return str(exc)
        body = json.dumps({"event": alarm.to_json()}, separators=(",", ":")).encode()
        timestamp = int(self._wall_clock())
        headers: dict[str, Any] = {
            "Content-Type": "application/json",
            "X-Dvrlink-Event-Id": str(alarm.id),
            "X-Dvrlink-Timestamp": str(timestamp),
            "X-Dvrlink-Signature": sign(secret, timestamp, body),
        }
        try:
            async with self._http().post(parsed, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return str(exc) or type(exc).__name__
