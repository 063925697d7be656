"""Which transport presence uses (UDP, or TCP/TLS where UDP is blocked), and the TCP link.

One presence core (``PresenceClient``) serves both transports: it speaks datagrams, and
:class:`TcpLink` carries them as length-prefixed frames over TLS to the broker's presence TCP
endpoint (``protocol/presence_stream.py``). :class:`PresenceTransport` owns the link under the
core and swaps it when :class:`TransportPolicy` says so. A switch never stops the core: the old
link closes its socket without a GOODBYE, the new one opens and tells the core the network
changed, so the device registers again over the new transport and the broker replaces the old
session with the new one (the device never shows offline).

Policy (``[presence] transport``; ``auto`` by default), all with time passed in:

- ``udp`` / ``tcp``: that transport only.
- ``auto`` starts on UDP. After ``fallback_after_failures`` registration attempts in a row that
  got no reply at all, or ``fallback_after_s`` seconds of trying without any reply, it moves to
  the other transport (so also from TCP back to UDP when the TCP endpoint is the one that fails).
  A refusal or any other authentic reply is an answer: the broker is reachable, no switch.
- ``auto`` also moves to TCP when that is cheaper (``prefer``: the learned UDP keepalive costs
  more bytes a day than TCP's, see ``daemon/keepalive_cost.py``). Chosen for cost, TCP stays
  until it fails (then the rule above brings presence back to UDP); no UDP probes meanwhile.
- While on TCP in ``auto`` after a fallback, every ``udp_probe_interval_s`` (times a jitter factor in
  [0.8, 1.2)) it sends a STUN Binding request to the broker's presence UDP port (20 bytes, a few
  retransmissions). An answer means UDP works again: presence moves back to UDP (and if UDP
  registration then fails, the rule above brings it back to TCP).

What ``dvrlinkd status`` shows of it (:meth:`PresenceTransport.status`): the endpoint in use (the
TCP one over TCP), whether the link is up (a TCP connection: ``connected``, ``connecting``,
``reconnecting``; UDP: ``open``, or ``no socket`` while the broker's name does not resolve), since
when and why not, and why presence is on this transport (``UDP to host:port got no answer``). A
TCP connection that closes ends the presence session on it at once (the core registers again),
so status never says ``online`` over a connection that is gone.

Where the device knows several broker nodes (``[broker] hosts``), each link goes to one node, the
one ``broker_nodes.NodeList`` has in use, and :class:`PresenceTransport` replaces the link with
one to the next node when the node in use falls silent, leaves a registration unanswered or
refuses it: the same list over either transport.

TLS on the presence connection is for getting through middleboxes on port 443 and hiding the
protocol, not for trust: the device pins the broker by its presence key inside the protocol, so
the certificate is not checked.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from dvrlink.daemon.broker_nodes import BrokerNode, NodeList
from dvrlink.daemon.cloud_link import EventHandler, LinkCore, exc_text, presence_driver, unreachable_problem
from dvrlink.driver.core_driver import CoreDriver
from dvrlink.protocol.presence_client import ClientState
from dvrlink.protocol.presence_events import (
    Address,
    ClientEvent,
    ConnectionLost,
    HandshakeUnanswered,
    RegistrationRefused,
)
from dvrlink.protocol.presence_stream import StreamDeframer, encode_frame
from dvrlink.protocol.presence_wire import RefuseReason
from dvrlink.protocol.stun_probe import ProbeVerdict, StunProbe

log = logging.getLogger(__name__)

FLEET_WIDE_REFUSALS = frozenset({RefuseReason.BUSY, RefuseReason.TICKET_EXPIRED})
"""Refusals that another node of the fleet would give too, so the device stays with its node:
'busy' (the fleet's registry is unavailable: the device retries after the refusal's
retry_after) and an expired ticket (the device registers in full at once)."""


class Transport(enum.Enum):
    """What carries presence messages."""

    UDP = "udp"
    TCP = "tcp"

    @property
    def other(self) -> Transport:
        """The other transport."""
        return Transport.TCP if self is Transport.UDP else Transport.UDP


class TransportMode(enum.Enum):
    """``[presence] transport``."""

    UDP = "udp"
    TCP = "tcp"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Settings of :class:`TransportPolicy`. Times are in seconds."""

    mode: TransportMode = TransportMode.AUTO
    fallback_after_failures: int = 2
    """Registration attempts in a row without any reply before ``auto`` switches transport."""
    fallback_after_s: float = 30.0
    """Seconds of registering without any reply before ``auto`` switches transport."""
    udp_probe_interval_s: float = 600.0
    """While on TCP in ``auto``: how often UDP is tried again."""
    udp_probe_jitter: float = 0.2
    """The probe interval is multiplied by a factor in [1 - jitter, 1 + jitter)."""

    def __post_init__(self) -> None:
        if self.fallback_after_failures < 1 or self.fallback_after_s <= 0 or self.udp_probe_interval_s <= 0:
            raise ValueError("fallback_after_failures >= 1, fallback_after_s and udp_probe_interval_s > 0")
        if not 0 <= self.udp_probe_jitter < 1:
            raise ValueError("udp_probe_jitter must be in [0, 1)")


@dataclass(frozen=True, slots=True)
class TransportEvent:
    """Base of what :class:`TransportPolicy` asks its driver to do."""


@dataclass(frozen=True, slots=True)
class SwitchRequested(TransportEvent):
    """Carry presence over ``transport`` from now on."""

    transport: Transport
    reason: str
    fallback: bool = False
    """The transport left got no answer (not a move for cost, nor back to UDP once it answers)."""


@dataclass(frozen=True, slots=True)
class UdpProbeRequested(TransportEvent):
    """Check whether UDP reaches the broker again; report with ``probe_finished``."""


class TransportPolicy:
    """Decides the presence transport from what the core does (sans-I/O; see module docstring).

    Feed it the active core's progress (``attempt_started``, ``heard``, ``attempt_failed``,
    ``registered``) and probe outcomes; take events with ``next_event``; call ``handle_timer`` at
    ``get_timer``.
    """

    def __init__(self, config: PolicyConfig, jitter: Callable[[], float] = random.random) -> None:
        self._config = config
        self._jitter = jitter
        self._transport = Transport.TCP if config.mode is TransportMode.TCP else Transport.UDP
        self._events: list[TransportEvent] = []
        self._failures = 0
        self._unanswered_since: float | None = None
        self._attempt_heard = True
        self._next_probe: float | None = None
        self._probing = False
        self._for_cost = False

    @property
    def transport(self) -> Transport:
        """The transport presence should use now."""
        return self._transport

    @property
    def probing(self) -> bool:
        """True while a UDP probe is out."""
        return self._probing

    @property
    def next_probe_at(self) -> float | None:
        """When the next UDP probe is due (only on TCP in ``auto``)."""
        return self._next_probe

    def start(self, now: float) -> None:
        """The core starts on :attr:`transport`."""
        self._schedule_probe(now)

    def attempt_started(self, now: float) -> None:
        """The core sent the first HELLO of a registration attempt."""
        self._attempt_heard = False
        if self._unanswered_since is None:
            self._unanswered_since = now

    def heard(self, now: float) -> None:
        """The core accepted a message from the broker (any authentic reply)."""
        self._attempt_heard = True
        self._failures = 0
        self._unanswered_since = None

    def registered(self, now: float) -> None:
        """The core is online."""
        self.heard(now)

    def attempt_failed(self, now: float) -> None:
        """A registration attempt ended without success (the core backs off)."""
        if self._attempt_heard:
            return
        self._attempt_heard = True  # count each attempt once
        self._failures += 1
        if self._auto and self._failures >= self._config.fallback_after_failures:
            self._switch(
                self._transport.other,
                f"{self._failures} registration attempts over {self._transport.value} got no reply",
                now,
                fallback=True,
            )

    def prefer(self, transport: Transport, reason: str, now: float) -> None:
        """In ``auto``: use ``transport`` because it is cheaper (UDP works); ignored otherwise."""
        if not self._auto or transport is self._transport:
            return
        self._switch(transport, reason, now, for_cost=True)

    @property
    def chosen_for_cost(self) -> bool:
        """True while the transport in use was chosen by ``prefer``, not by a fallback."""
        return self._for_cost

    def probe_finished(self, reached: bool, now: float) -> None:
        """The UDP probe asked for with ``UdpProbeRequested`` is over."""
        if not self._probing:
            return
        self._probing = False
        if reached and self._transport is Transport.TCP:
            self._switch(Transport.UDP, "the broker answers over UDP again", now)
        else:
            self._schedule_probe(now)

    def next_event(self) -> TransportEvent | None:
        """The next thing to do, or None."""
        return self._events.pop(0) if self._events else None

    def datagrams_to_send(self) -> list[bytes]:
        """Nothing: the policy sends no datagrams itself (it asks for a probe with
        ``UdpProbeRequested``). Here so that a ``CoreDriver`` runs it like any other core."""
        return []

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is due, or None."""
        times = []
        if self._auto and self._unanswered_since is not None:
            times.append(self._unanswered_since + self._config.fallback_after_s)
        if self._next_probe is not None and not self._probing:
            times.append(self._next_probe)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Switch after too long without a reply; ask for a due UDP probe. Early calls do nothing."""
        since = self._unanswered_since
        if self._auto and since is not None and now >= since + self._config.fallback_after_s:
            self._switch(
                self._transport.other,
                f"no reply over {self._transport.value} for {now - since:.0f} s",
                now,
                fallback=True,
            )
            return
        if self._next_probe is not None and not self._probing and now >= self._next_probe:
            self._next_probe = None
            self._probing = True
            self._events.append(UdpProbeRequested())

    @property
    def auto(self) -> bool:
        """True in ``auto`` mode (the policy may switch)."""
        return self._config.mode is TransportMode.AUTO

    @property
    def _auto(self) -> bool:
        return self.auto

    def _switch(
        self, transport: Transport, reason: str, now: float, *, for_cost: bool = False, fallback: bool = False
    ) -> None:
        self._for_cost = for_cost
        self._transport = transport
        self._failures = 0
        self._unanswered_since = None
        self._attempt_heard = True
        self._probing = False
        self._next_probe = None
        self._schedule_probe(now)
        self._events.append(SwitchRequested(transport, reason, fallback))

    def _schedule_probe(self, now: float) -> None:
        if self._auto and self._transport is Transport.TCP and not self._probing and not self._for_cost:
            spread = self._config.udp_probe_jitter
            factor = 1 - spread + 2 * spread * self._jitter()
            self._next_probe = now + self._config.udp_probe_interval_s * factor


# -- the links ----------------------------------------------------------------------------------


class PresenceCore(LinkCore, Protocol):
    """What ``PresenceTransport`` needs of ``PresenceClient``: what each link needs
    (``cloud_link.LinkCore``), and its state, statistics and keepalive interval, to choose and
    switch transports."""

    @property
    def state(self) -> ClientState: ...
    @property
    def keepalive_interval(self) -> float: ...

    stats: dict[str, int]

    def set_keepalive_interval(self, interval: float, now: float) -> None: ...


class Link(Protocol):
    """A link that moves the core's datagrams (``CloudLink`` for UDP, :class:`TcpLink`)."""

    @property
    def local_address(self) -> Address | None: ...

    problem: str
    """Why the link has no socket or connection now (for ``dvrlinkd status``); empty while up."""

    async def start(self, *, resume: bool = False, register_now: bool = True) -> None: ...
    def close(self) -> None: ...
    def detach(self) -> None: ...
    def flush(self) -> None: ...


def presence_tls_context() -> ssl.SSLContext:
    """TLS client context for presence over TCP: no certificate check (the broker is pinned by its
    presence key inside the protocol; TLS only gets the stream through middleboxes on 443)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # deliberate: authentication is the pinned presence key
    return ctx


class TcpLink:
    """Drives ``core`` over one TLS connection to ``host``:``port`` at a time, reconnecting.

    Each (re)connection tells a started core that the network changed, so it registers again at
    once. A ``ConnectionLost`` from the core (keepalives unanswered) drops the connection and opens
    a new one: TCP retransmits by itself, so a stream whose keepalives go unanswered is dead.
    Messages the core sends while no connection is up are dropped (counted in ``dropped``); its
    own retries cover them.
    """

    def __init__(
        self,
        core: LinkCore,
        handler: EventHandler,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout_s: float = 10.0,
        reconnect_delay_s: float = 1.0,
        reconnect_delay_max_s: float = 30.0,
    ) -> None:
        self._core = core
        self._handler = handler
        self._host = host
        self._port = port
        self._tls = tls
        self._connect_timeout = connect_timeout_s
        self._delay_initial = reconnect_delay_s
        self._delay_max = reconnect_delay_max_s
        self._delay = reconnect_delay_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.Transport | None = None
        self._local: Address | None = None
        self._connector: asyncio.Task[None] | None = None
        self._driver = presence_driver(core, handler, self._send, self._on_event, f"TCP to {host}:{port}")
        self._reconnect_on_loss = True
        self._started = False
        self._closed = False
        self.dropped = 0
        """Messages the core wanted to send while no connection was up."""
        self.connections = 0
        """Connections made so far."""
        self.state = "connecting"
        """``connecting`` (none made yet), ``connected`` or ``reconnecting``."""
        self.since = time.time()
        """Unix time ``state`` was entered."""
        self.problem = ""
        """Why no connection is up (the last connect error, or how the last one ended)."""
        self._resumed = False
        self._register_now = True

    @property
    def local_address(self) -> Address | None:
        """The connection's local (ip, port), or None while none is up."""
        return self._local

    async def start(self, *, resume: bool = False, register_now: bool = True) -> None:
        """Start connecting; start the core unless ``resume`` (it runs already: a transport switch
        or a move to another broker node). ``register_now=False`` (with ``resume``): the core
        backs off after a failed attempt, and its own timer sends the next HELLO over the first
        connection, rather than the connection starting one at once.

        Raises:
            RuntimeError: called twice.
        """
        if self._loop is not None:
            raise RuntimeError("TcpLink.start() called twice")
        self._loop = asyncio.get_running_loop()
        self._started = True
        self._resumed = resume
        self._register_now = register_now or not resume
        if not resume:
            self._core.start(self._loop.time())
        self._connect_soon(0.0)
        self._driver.flush()

    def close(self) -> None:
        """Stop the core (GOODBYE if online, sent if connected) and close the connection."""
        if self._closed or self._loop is None:
            return
        self._core.stop(self._loop.time())
        self._send(self._core.datagrams_to_send())
        self.detach()

    def detach(self) -> None:
        """Close the connection and stop driving the core, which keeps its state (a switch)."""
        self._closed = True
        self._driver.close()
        if self._connector is not None:
            self._connector.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._local = None

    def flush(self) -> None:
        """Send what the core queued after a call made outside the link (an invite reply)."""
        self._driver.flush()

    # -- connection ------------------------------------------------------------------------------

    def _connect_soon(self, delay: float) -> None:
        assert self._loop is not None
        if self._closed or (self._connector is not None and not self._connector.done()):
            return
        self._connector = self._loop.create_task(self._connect(delay))

    async def _connect(self, delay: float) -> None:
        assert self._loop is not None
        if delay:
            await asyncio.sleep(delay)
        try:
            transport, _ = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: _TcpEndpoint(self),
                    self._host,
                    self._port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None,
                ),
                self._connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            failed = f"cannot connect to {self._host}:{self._port}"
            self.problem = unreachable_problem(exc, self._host, failed)
            log.warning(
                "cannot connect to the broker's presence TCP endpoint %s:%d (%s); retrying in %g s",
                self._host,
                self._port,
                exc_text(exc),
                self._delay,
            )
            delay, self._delay = self._delay, min(self._delay * 2, self._delay_max)
            self._connector = None
            self._connect_soon(delay)
            return
        if self._closed:
            transport.close()
            return
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self._local = (str(sockname[0]), int(sockname[1])) if sockname else None
        self._delay = self._delay_initial
        self.connections += 1
        self.state, self.since, self.problem = "connected", time.time(), ""
        log.info("presence over TCP/TLS to %s:%d from %s", self._host, self._port, self._local)
        endpoint = f"{self._host}:{self._port}"
        reason = (
            f"presence moved to TCP {endpoint}"
            if self._resumed and self.connections == 1
            else f"a new TCP connection to the broker {endpoint}"
        )
        if self.connections > 1 or self._register_now:
            self._core.network_changed(self._loop.time(), reason)
        self._flush_keeping_connection()  # its ConnectionLost is about the old path, not this one

    def _lost(self, endpoint: _TcpEndpoint, exc: Exception | None) -> None:
        if endpoint.transport is not self._transport or self._closed or self._loop is None:
            return
        where = f"{self._host}:{self._port}"
        reason = (
            f"the broker {where} closed the presence TCP connection"
            if exc is None
            else f"the presence TCP connection to the broker {where} broke ({exc})"
        )
        log.warning("%s; reconnecting", reason)
        self._transport = None
        self._local = None
        self._down(reason)
        # The session lived on that connection: the core registers again (over the next one).
        self._core.network_changed(self._loop.time(), reason)
        self._flush_keeping_connection()
        self._connect_soon(self._delay)

    def _down(self, problem: str) -> None:
        if self.state == "connected":
            self.state, self.since = "reconnecting", time.time()
        self.problem = problem

    def _received(self, endpoint: _TcpEndpoint, message: bytes) -> None:
        if endpoint.transport is not self._transport or self._closed:
            return
        self._driver.receive(self._core.receive_datagram, message)

    # -- the core --------------------------------------------------------------------------------

    def _flush_keeping_connection(self) -> None:
        """Flush, but a ``ConnectionLost`` in this pass does not drop the connection: it is about
        the path the core used before the network change just reported."""
        self._reconnect_on_loss = False
        try:
            self._driver.flush()
        finally:
            self._reconnect_on_loss = True

    def _on_event(self, event: ClientEvent) -> None:
        if isinstance(event, ConnectionLost) and self._reconnect_on_loss and self._transport is not None:
            log.warning("presence over TCP: %s; opening a new connection", event.reason)
            self._transport.close()
            self._transport = None
            self._local = None
            self._down(event.reason)
            self._connect_soon(0.0)
        self._handler.on_event(event)

    def _send(self, messages: Sequence[bytes]) -> None:
        for data in messages:
            if self._transport is None or self._transport.is_closing():
                self.dropped += 1
            else:
                self._transport.write(encode_frame(data))


class _TcpEndpoint(asyncio.Protocol):
    """asyncio callbacks of one connection, deframed and forwarded to the link."""

    def __init__(self, link: TcpLink) -> None:
        self._link = link
        self._deframer = StreamDeframer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._deframer.receive_data(data)
        while (message := self._deframer.next_message()) is not None:
            self._link._received(self, message)
        if self._deframer.error is not None and self.transport is not None:
            log.warning("bad presence stream from the broker (%s); reconnecting", self._deframer.error)
            self.transport.close()
        self._link.flush()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._lost(self, exc)


# -- the switch ---------------------------------------------------------------------------------

LinkFactory = Callable[[Transport, BrokerNode, EventHandler], Link]
"""Builds the link for a transport to one broker node."""


class PresenceTransport:
    """The daemon's presence link: UDP or TCP under one core, switched by a :class:`TransportPolicy`.

    It has the face of a single link (``start``, ``close``, ``flush``) and hands the core's events
    to ``handler`` whichever transport carries them. ``make_link(transport, node, handler)``
    builds a link to one broker node (tests pass fakes); ``probe_udp(node)`` answers whether that
    node's UDP port answers STUN. On TCP the core keeps alive every ``tcp_keepalive_interval_s``;
    back on UDP it returns to the interval it had before.

    ``nodes`` is the fleet's broker nodes (``broker_nodes.NodeList``; one node without a fleet).
    Registration goes to its current node. When that node falls silent (keepalives unanswered),
    leaves a registration unanswered, refuses it, or answers with replies that do not open with
    the pinned fleet key (a node outside the fleet), presence moves to the next node over the same
    transport and the core registers there, keeping its serial and key. After a silence the new
    node gets a HELLO at once (the move completes within two keepalive intervals, see
    ``PresenceClient.keepalive_reply_timeout``); after a failed attempt the core's backoff
    paces it, so a fleet that is all down is not hammered. ``on_answered(node)`` is called
    when a node other than the last one that answered registers the device (the daemon
    remembers it for its next start). ``endpoint(transport, node)`` names a link's far end in
    status and log lines. ``resolve()``, if given, lists the nodes again (names resolved anew)
    each time the rotation wraps to the top of the list.
    """

    def __init__(
        self,
        core: PresenceCore,
        handler: EventHandler,
        policy: TransportPolicy,
        make_link: LinkFactory,
        probe_udp: Callable[[BrokerNode], Any],
        *,
        tcp_keepalive_interval_s: float,
        nodes: NodeList,
        endpoint: Callable[[Transport, BrokerNode], str] | None = None,
        on_answered: Callable[[BrokerNode], None] | None = None,
        resolve: Callable[[], Awaitable[list[BrokerNode]]] | None = None,
    ) -> None:
        self._core = core
        self._nodes = nodes
        self._endpoint = endpoint or (lambda _transport, node: node.label)
        self._on_answered = on_answered
        self._resolve = resolve
        self._link_node: BrokerNode | None = None
        self._relinking = asyncio.Lock()
        self._reason = ""
        self._link_since = time.time()
        self._handler = handler
        self._policy = policy
        self._make_link = make_link
        self._probe_udp = probe_udp
        self._tcp_interval = tcp_keepalive_interval_s
        self._udp_interval: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: Link | None = None
        self._transport = policy.transport
        self._policy_driver: CoreDriver[TransportEvent, bytes] = CoreDriver(
            policy, None, on_event=self._on_policy_event, name="the presence transport policy", logger=log
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_state: ClientState | None = None
        self._accepted = 0
        self._closed = False
        self.switches = 0
        """Transport switches so far."""
        self.on_switch: Callable[[Transport], None] | None = None
        """Called after each switch (status, reports)."""

    @property
    def transport(self) -> Transport:
        """The transport presence uses now."""
        return self._transport

    @property
    def local_address(self) -> Address | None:
        """The current link's local address."""
        return None if self._link is None else self._link.local_address

    def status(self) -> dict[str, Any]:
        """What ``dvrlinkd status`` shows of presence's link (``DaemonStatus`` fields): the
        endpoint in use, the link's state, since when (unix time) and why it is down, and why
        presence is on this transport."""
        link = self._link
        if isinstance(link, TcpLink):
            state, since, detail = link.state, link.since, link.problem
        elif link is not None and link.local_address is None:
            state, since, detail = "no socket", self._link_since, link.problem
        else:
            state, since, detail = "open", self._link_since, ""
        node = self._link_node or self._nodes.current
        return {
            "endpoint": self._endpoint(self._transport, node),
            "link": state,
            "link_since": since,
            "link_detail": detail,
            "transport_reason": self._reason,
            "node": node.label,
            "nodes": self.nodes_status(),
        }

    def nodes_status(self) -> list[dict[str, Any]]:
        """The broker nodes for ``dvrlinkd status`` (``NodeList.status``), ``last_answer`` as
        unix time."""
        if self._loop is None:
            return [dict(item) for item in self._nodes.status(0.0)]
        mono, wall = self._loop.time(), time.time()
        out = []
        for item in self._nodes.status(mono):
            answer = item["last_answer"]
            row = dict(item)
            row["last_answer"] = None if not isinstance(answer, float) else round(wall - (mono - answer), 3)
            out.append(row)
        return out

    def broker_label(self) -> str:
        """The broker endpoint in use, for log lines: ``host:port``, or ``host:port over TCP/TLS``."""
        text = self._endpoint(self._transport, self._link_node or self._nodes.current)
        return f"{text} over TCP/TLS" if self._transport is Transport.TCP else text

    @property
    def node(self) -> BrokerNode:
        """The broker node registration goes to now."""
        return self._nodes.current

    def prefer(self, transport: Transport, reason: str) -> None:
        """Move presence to ``transport`` because it is cheaper (``auto`` only)."""
        if self._loop is None or self._closed:
            return
        self._policy.prefer(transport, reason, self._loop.time())
        self._policy_driver.flush()

    def set_tcp_keepalive_interval(self, interval: float) -> None:
        """Keep alive every ``interval`` over TCP from now on (a learned TCP lifetime); applied at
        once when presence is on TCP."""
        self._tcp_interval = interval
        if self._transport is Transport.TCP and self._loop is not None and not self._closed:
            try:
                self._core.set_keepalive_interval(interval, self._loop.time())
            except ValueError:
                log.exception("the TCP keepalive interval %g s is refused; keeping the old one", interval)

    @property
    def tcp_keepalive_interval(self) -> float:
        """The keepalive interval presence uses over TCP."""
        return self._tcp_interval

    @property
    def auto(self) -> bool:
        """True when the policy may choose the transport."""
        return self._policy.auto

    async def start(self) -> None:
        """Open the first link and start the core.

        Raises:
            RuntimeError: called twice.
        """
        if self._loop is not None:
            raise RuntimeError("PresenceTransport.start() called twice")
        self._loop = asyncio.get_running_loop()
        self._policy.start(self._loop.time())
        if self._transport is Transport.TCP:
            self._udp_interval = self._core.keepalive_interval
            self._core.set_keepalive_interval(self._tcp_interval, self._loop.time())
        self._link_node = self._nodes.current
        self._link = self._make_link(self._transport, self._link_node, self)
        await self._link.start()
        self._policy_driver.flush()

    def close(self) -> None:
        """Stop the core (GOODBYE over the current link) and close everything."""
        if self._closed:
            return
        self._closed = True
        self._policy_driver.close()
        for task in self._tasks:
            task.cancel()
        if self._link is not None:
            self._link.close()

    def flush(self) -> None:
        """Send what the core queued after a call made outside the link."""
        if self._link is not None:
            self._link.flush()

    # -- EventHandler, for the links -----------------------------------------------------------

    def on_event(self, event: ClientEvent) -> None:
        """Pass a core event on to the daemon; a handshake the link could not carry (no socket
        or connection: ``status`` says why) is no sign of a wrong key or port, and is dropped.
        Move to the next broker node where the event says this one failed."""
        link = self._link
        if isinstance(event, HandshakeUnanswered) and link is not None and link.local_address is None:
            log.debug("registration attempt without a link (%s); not a handshake problem", link.problem)
            self._node_failed(f"no link: {link.problem or 'not connected'}", register_now=False)
            return
        if isinstance(event, ConnectionLost) and event.silence:
            self._node_failed(f"fell silent ({event.reason})", register_now=True)
        elif isinstance(event, HandshakeUnanswered):
            if event.unverified:
                problem = (
                    f"is outside the fleet: its {event.unverified} replies to REGISTER do not open with "
                    "the fleet key ([broker] public_key); give it the fleet's key file or remove it "
                    "from [broker] hosts"
                )
                self._node_failed(problem, register_now=False, refused=True)
            else:
                stage = "HELLO" if event.stage == "hello" else "REGISTER"
                problem = f"did not answer {stage} ({event.tries} tries in {event.waited:.1f} s)"
                self._node_failed(problem, register_now=False)
        elif isinstance(event, RegistrationRefused) and event.reason not in FLEET_WIDE_REFUSALS:
            problem = f"refused the registration (reason {event.reason}: {event.message})"
            self._node_failed(problem, register_now=False, refused=True)
        self._handler.on_event(event)

    def _node_failed(self, problem: str, *, register_now: bool, refused: bool = False) -> None:
        """The node in use failed: move to the next one (nothing with one node). While a move is
        under way, what the old link still reports is about the node being left: ignored."""
        if self._loop is None or self._closed or self._link_node != self._nodes.current:
            return
        left = self._nodes.current
        node = self._nodes.move_on(problem, self._loop.time(), refused=refused)
        if node == left:
            return
        verb = "skipping" if refused else "leaving"
        log.warning("%s broker node %s: it %s; moving to %s", verb, left.label, problem, node.label)
        order = self._nodes.nodes
        wrapped = order.index(node) <= order.index(left)
        self._spawn(self._move(register_now, resolve_again=wrapped))

    def after_step(self) -> None:
        """Tell the policy what the core did in this step, then the daemon."""
        if self._loop is not None and not self._closed:
            now = self._loop.time()
            accepted = self._core.stats.get("received", 0) - self._core.stats.get("dropped", 0)
            if accepted > self._accepted:
                self._policy.heard(now)
                # A COOKIE is no proof of a fleet node: only a session counts as an answer.
                if self._core.state is ClientState.ONLINE and self._link_node == self._nodes.current:
                    self._node_answered(now)
            self._accepted = accepted
            state = self._core.state
            if state is not self._last_state:
                self._last_state = state
                if state is ClientState.COOKIE_WAIT:
                    self._policy.attempt_started(now)
                elif state is ClientState.BACKOFF:
                    self._policy.attempt_failed(now)
                elif state is ClientState.ONLINE:
                    self._policy.registered(now)
            # Never switch links from inside a link's step.
            self._loop.call_soon(self._policy_driver.flush)
        self._handler.after_step()

    def _node_answered(self, now: float) -> None:
        if self._nodes.answered(now) and self._on_answered is not None:
            try:
                self._on_answered(self._nodes.current)
            except Exception:
                log.exception("cannot remember the broker node %s; carrying on", self._nodes.current.label)

    # -- policy ---------------------------------------------------------------------------------

    def _on_policy_event(self, event: TransportEvent) -> None:
        if isinstance(event, SwitchRequested):
            self._spawn(self._switch(event))
        elif isinstance(event, UdpProbeRequested):
            self._spawn(self._probe())

    def _spawn(self, work: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self) -> None:
        assert self._loop is not None
        try:
            reached = bool(await self._probe_udp(self._nodes.current))
        except Exception:
            log.exception("the UDP probe failed unexpectedly; counting it as no answer")
            reached = False
        log.info("UDP probe of the broker: %s", "answered" if reached else "no answer")
        self._policy.probe_finished(reached, self._loop.time())
        self._policy_driver.flush()

    async def _switch(self, event: SwitchRequested) -> None:
        async with self._relinking:
            await self._switch_locked(event)

    async def _switch_locked(self, event: SwitchRequested) -> None:
        assert self._loop is not None
        if self._closed or event.transport is self._transport:
            return
        log.warning("presence moves to %s: %s", event.transport.value, event.reason)
        left = self._transport
        if event.fallback:
            where = self._endpoint(left, self._link_node or self._nodes.current)
            tried = f"{left.value.upper()} to {where}" if where else left.value.upper()
            self._reason = f"{tried} got no answer: {event.reason}"
        elif self._policy.chosen_for_cost:
            self._reason = event.reason
        else:
            self._reason = ""
        now = self._loop.time()
        if event.transport is Transport.TCP:
            self._udp_interval = self._core.keepalive_interval
            self._core.set_keepalive_interval(self._tcp_interval, now)
        elif self._udp_interval is not None:
            self._core.set_keepalive_interval(self._udp_interval, now)
        self._transport = event.transport
        self.switches += 1
        await self._replace_link(register_now=True)
        if self.on_switch is not None:
            try:
                self.on_switch(event.transport)
            except Exception:
                log.exception("on_switch failed; carrying on")

    async def _move(self, register_now: bool, *, resolve_again: bool = False) -> None:
        """Carry presence to the node now current, over the transport in use; with
        ``resolve_again`` list the nodes anew first (the rotation wrapped)."""
        async with self._relinking:
            if resolve_again and self._resolve is not None:
                try:
                    fresh = await self._resolve()
                except Exception:
                    log.exception("listing the broker nodes again failed; keeping the list")
                    fresh = []
                if fresh and not self._closed:
                    self._nodes.replace_nodes(fresh)
            if self._closed or self._link_node == self._nodes.current:
                return
            await self._replace_link(register_now=register_now)

    async def _replace_link(self, *, register_now: bool) -> None:
        """Close the link (no GOODBYE) and open one over the current transport to the current
        node; the running core registers over it (at once, or at its backoff's end)."""
        self._link_since = time.time()
        old = self._link
        if old is not None:
            old.detach()
        self._last_state = None
        node = self._link_node = self._nodes.current
        self._link = self._make_link(self._transport, node, self)
        await self._link.start(resume=True, register_now=register_now)


async def stun_reaches(host: str, port: int, *, timeout_s: float = 5.0, initial_rto_s: float = 0.5) -> bool:
    """True if a STUN Binding request to ``host``:``port`` over UDP is answered within ``timeout_s``
    (the broker's presence port answers STUN). Network errors count as no answer."""
    loop = asyncio.get_running_loop()
    probe = StunProbe(os.urandom(12), timeout_s=timeout_s, initial_rto_s=initial_rto_s)
    changed = asyncio.Event()

    class _Inbox(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            probe.datagram_received(data, loop.time())
            changed.set()

        def error_received(self, exc: Exception) -> None:
            probe.unreachable()
            changed.set()

    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        transport, _ = await loop.create_datagram_endpoint(
            _Inbox, remote_addr=(str(sockaddr[0]), int(sockaddr[1])), family=family
        )
    except (OSError, IndexError) as exc:
        log.debug("UDP probe of %s:%d: %s", host, port, exc)
        return False
    try:
        probe.start(loop.time())
        while probe.verdict is ProbeVerdict.PENDING:
            for data in probe.datagrams_to_send():
                transport.sendto(data)
            deadline = probe.get_timer()
            if deadline is None:
                break
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                probe.handle_timer(loop.time())
        return probe.verdict is ProbeVerdict.REACHED
    finally:
        transport.close()
