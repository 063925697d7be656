"""The path layer of one session, on either side: a TURN relay path at once, a direct one when ICE finds it.

``Connectivity`` moves QUIC datagrams between a session core and the network over up to two
paths, named by labels that the cores take as opaque addresses:

- ``RELAY`` (``("relay", 0)``): our TURN allocation (aioice's TURN client, UDP or TCP to the
  server) to the peer's relay candidate. It is usable as soon as ``start`` has the peer's
  candidates: ``start`` binds a channel (which installs the permission) towards the peer's
  relayed address, so the peer's datagrams pass our relay, and marks the path ready without
  waiting for anything (RFC 8656 queues our first datagrams behind the binding).
- ``LAN`` (``("lan", 0)``) or ``DIRECT`` (``("direct", 0)``): the pair an ``aioice.Connection``
  nominates among host and server-reflexive candidates (no TURN inside aioice). ``LAN`` when both
  candidates are host candidates and the peer's is a private, link-local or loopback address,
  ``DIRECT`` otherwise. The checks run in the background; nothing
  waits for them, and a failure only leaves the relay in use.

Lifecycle, either side::

    conn = await Connectivity.prepare(controlling, stun_server, turn, policy)   # relay + host
    send conn.local_ufrag, conn.local_pwd, conn.local_candidates() to the peer
    conn.on_datagram = ...; conn.on_path_ready = ...; conn.on_failed = ...
    await conn.start(remote_ufrag, remote_pwd, remote_candidates, end_of_candidates=...)
    trickle: await conn.wait_local_candidates(t); send the new conn.local_candidates() (and
             conn.local_gathering_done as end-of-candidates); conn.add_remote_candidates(...)
    conn.send(data, conn.best_path) ...
    await conn.close()

``prepare`` returns once the TURN allocation and the host candidates are ready (made at the
same time); server-reflexive candidates need a STUN round trip, or a timeout where UDP is
blocked, so they come later and are trickled (RFC 8838) rather than waited for.

Datagrams that arrive on the ICE sockets before this side has nominated its pair (the peer may
finish its checks first) are held, a few at most, and handed over with the nominated label once
it is known, so a path label always means one pair. Only datagrams whose first byte is QUIC's
(RFC 9443: 64-127 or 192-255) or the data plane's (0x20-0x3F, ``protocol.dataplane_wire``) are
handed over; the TURN channel primer (an empty datagram) and anything else is dropped.

aioice's and asyncio's internals are used only through ``dvrlink.compat.aioice_compat`` and
``dvrlink.compat.asyncio_compat``, which raise when an upgrade moved one (guards:
``tests/test_compat_aioice.py``, ``tests/test_compat_asyncio.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aioice
import aioice.ice
from aioice import stun
from aioice.candidate import Candidate
from aioice.turn import TurnTransport, create_turn_endpoint
from aioice.utils import random_string

from dvrlink.compat import asyncio_compat
from dvrlink.protocol.dataplane_wire import is_dataplane
from dvrlink.protocol.port_mapping import PortMappingConfig
from dvrlink.protocol.port_prediction import (
    BIRTHDAY_PROBES,
    BIRTHDAY_SOCKETS,
    BirthdayRole,
    Mapping,
    SearchBudget,
    SlowLink,
    birthday_role,
    mapping_of,
    probe_ports,
    rtt_of,
    search_cost,
    slow_link,
    with_mapping,
    with_rtt,
)
from dvrlink.protocol.signalling import PathPolicy, TurnServer
from dvrlink.session import birthday
from dvrlink.session.direct import (
    gather_host,
    host_protocols,
    is_private,
    mapped_candidate,
    nominated_protocol,
    predicted_candidates,
    selected_pair,
    selected_transport,
    srflx_candidate,
)
from dvrlink.session.gso import GsoSender, gro_receiver, probe_path_mtu, stamped_receiver
from dvrlink.session.port_mapping import PortMapping
from dvrlink.session.relay import RelayReceiver, channel_send, release_turn, turn_client, turn_error

Path = tuple[str, int]
"""A path label, passed to the session cores as the peer's address."""

RELAY: Path = ("relay", 0)
DIRECT: Path = ("direct", 0)
LAN: Path = ("lan", 0)
PATH_RANK: dict[Path, int] = {LAN: 3, DIRECT: 2, RELAY: 1}
"""Preference: lan over direct over relay."""

TURN_TIMEOUT_S = 5.0
"""How long an Allocate (with its 401 round) may take per TURN server."""
TURN_HEAD_START_S = 0.3
"""How long an Allocate may go unanswered before one over the other transport starts beside it."""
SRFLX_TIMEOUT_S = 5.0
"""How long a STUN Binding for a server-reflexive candidate may take (then none for that socket)."""
PORT_MAPPING_TIMEOUT_S = 5.0
"""How long the home router may take to map a host socket's port (PCP, NAT-PMP or UPnP-IGD); a
mapping granted later is released."""
UNMAP_TIMEOUT_S = 1.0
"""How long ``close`` waits for the router to confirm a mapping's deletion."""
BIRTHDAY_DELAY_S = 1.0
"""How long ICE may run on its own before a birthday search starts beside it (a peer that filters
nothing is reached by the plain checks in well under this, and then no search runs)."""
BIRTHDAY_ROUNDS = 3
"""Rounds of probes the endpoint-independent side sends while no check has come through."""
BIRTHDAY_ROUND_S = 1.0
"""How long a round of probes waits for ICE to nominate a pair before the next round."""
ICE_TIMEOUT_S = 30.0
"""How long the background ICE checks may run before the direct path is given up."""
CLOSE_TIMEOUT_S = 2.0
"""How long ``close`` waits for the TURN server to confirm the allocation's deletion."""
MAX_EARLY_ICE_DATAGRAMS = 64
"""Datagrams held from the ICE sockets until this side has nominated its pair."""
READ_BATCH = 64
"""Datagrams read from one socket per event-loop wake-up."""
RECV_SIZE = 65536
RECV_BUFFER = 2 * 1024 * 1024
"""SO_RCVBUF asked for on the session's UDP sockets."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StunServers:
    """Where host sockets ask for their server-reflexive address: ``v4`` (the broker's ``stun``,
    a name or an IP literal) and ``v6`` (its ``stun6``, an IPv6 literal), either None."""

    v4: tuple[str, int] | None
    v6: tuple[str, int] | None = None

    @property
    def any(self) -> bool:
        """Some STUN server is known."""
        return self.v4 is not None or self.v6 is not None

    def for_host(self, host: str) -> tuple[str, int] | None:
        """The server a host socket on ``host`` asks: an IPv6 socket ``v6`` when known, else
        ``v4`` (``session.direct.srflx_candidate`` reaches it over the socket's family only if
        its name has such an address); an IPv4 socket ``v4``."""
        if ":" in host and self.v6 is not None:
            return self.v6
        return self.v4


class ConnectivityError(Exception):
    """No path could be prepared or found; the message says why and what to do."""


def is_session_datagram(data: bytes) -> bool:
    """A datagram of the session: QUIC (RFC 9443: 64-127, short header, or 192-255, long
    header) or the data plane (0x20-0x3F)."""
    return bool(data) and (bool(data[0] & 0x40) or is_dataplane(data[0]))


class _IceConnection(aioice.Connection):
    """An aioice connection that hands data to its owner at once. ``Connectivity`` gathers its
    candidates (host ones at once, server-reflexive ones trickled), not aioice."""

    def __init__(self, owner: Connectivity, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owner = owner

    def data_received(self, data: bytes, component: int) -> None:
        self._owner._ice_datagram(data)


class Connectivity:
    """One session's paths (see the module docstring). Build it with :meth:`prepare`."""

    def __init__(
        self, controlling: bool, policy: PathPolicy, search: SearchBudget = SearchBudget.FULL
    ) -> None:
        """Use :meth:`prepare`; this only sets up empty state."""
        self.controlling = controlling
        self.policy = policy
        self.search = search
        """What this side may spend on a birthday search (``port_prediction.SearchBudget``)."""
        self.on_datagram: Callable[[bytes, Path], None] = lambda data, path: None
        """Called with each QUIC datagram received and the path it came on."""
        self.coalesced_reads = True
        """Read the ICE sockets with ``UDP_GRO`` where the kernel has it (``prepare``)."""
        self.on_datagrams: Callable[[list[bytes], Path, float | None], None] = self._each
        """Called instead with the datagrams of one read of an ICE socket (a coalesced run,
        ``gso.GroReceiver``, or one stamped datagram, ``gso.StampedReceiver``), in order, and
        when they reached the socket (on the event loop's clock; None where unknown); the
        default hands each to ``on_datagram``."""
        self.on_batch: Callable[[], None] = lambda: None
        """Called after one or more ``on_datagram`` calls: at the end of each batch read from a
        socket in one wake-up, before control returns to the event loop; for datagrams that came
        another way (TURN over TCP), once in the next pass. The place to send what they
        caused."""
        self.on_path_ready: Callable[[Path], None] = lambda path: None
        """Called once per path when it can carry datagrams both ways."""
        self.on_failed: Callable[[str], None] = lambda reason: None
        """Called once if every path this side could use has failed; ``reason`` says why."""
        self.bytes_in: dict[Path, int] = {}
        self.bytes_out: dict[Path, int] = {}
        self.last_in: dict[Path, float] = {}
        """``time.monotonic()`` of the last datagram received on each path."""
        self.retired: list[Path] = []
        """Paths given up on after they stopped carrying datagrams (see ``retire``)."""
        self.dropped = 0
        """Datagrams dropped: not QUIC, from an unexpected peer, or sent on a path not ready."""
        self.errors: list[str] = []
        """What went wrong so far, newest last (TURN refusals, failed ICE), for status output."""
        self._ufrag = random_string(8)
        self._pwd = random_string(24)
        self._ready: list[Path] = []
        self._turn: TurnTransport | None = None
        self._turn_server: TurnServer | None = None
        self._relay_receiver: RelayReceiver | None = None
        self._relayed_address: tuple[str, int] | None = None
        self._related_address: tuple[str, int] | None = None
        self._remote_relay: tuple[str, int] | None = None
        self._ice: _IceConnection | None = None
        self._srflx: list[Candidate] = []
        self._bases: list[tuple[Any, Candidate, Mapping, int]] = []
        """(aioice protocol, its server-reflexive candidate, its NAT's mapping, the STUN round
        trip in milliseconds) per socket whose mapping is known; the mapping and the round trip go
        out as attributes of that candidate."""
        self._remote_mappings: list[tuple[Candidate, Mapping, int | None]] = []
        """The peer's server-reflexive candidates that name their NAT's mapping, with the STUN
        round trip each advertises (None from a peer that advertises none)."""
        self._birthday_task: asyncio.Task[None] | None = None
        self.search_skipped: SlowLink | None = None
        """Set when a birthday search was called for but a slow link ruled it out (``slow_link``):
        the session stays on the relay unless plain checks find a path."""
        self._birthday_sockets: list[Any] = []
        self._ice_over = asyncio.Event()
        """Set when the ICE checks have nominated a pair or given up."""
        self._search_allowed = asyncio.Event()
        """Set by ``allow_search``: the session is established, a birthday search may start."""
        self._ice_route: tuple[asyncio.DatagramTransport, tuple[str, int]] | None = None
        self.path_mtu_probing = True
        """Whether every ICE socket sends with DF set (``gso.probe_path_mtu``): only then may
        the data plane probe for datagrams above its base size on the lan or direct path."""
        self._gso: GsoSender | None = None
        """The nominated pair's sender of datagram runs (made on first use, per socket)."""
        self._batching = False
        """A socket's batch of reads is under way: ``on_batch`` waits for its end."""
        self._batched = False
        """A datagram went to ``on_datagram`` since the last ``on_batch``."""
        self._flush_handle: asyncio.Handle | None = None
        """The pass-end ``on_batch`` for datagrams that came outside a batch reader."""
        self._srflx_task: asyncio.Task[None] | None = None
        self.mappings: list[PortMapping] = []
        """Ports the home router mapped for our host sockets (renewed while open, deleted by
        ``close``); each is offered as a server-reflexive candidate."""
        self._stragglers: set[asyncio.Task[tuple[TurnTransport, RelayReceiver | None]]] = set()
        """Allocation attempts that lost the race and still run (released when they finish)."""
        self._closers: set[asyncio.Task[None]] = set()
        """Closing the search's unused sockets (awaited by ``close``)."""
        self._local_end = False
        self._local_changed = asyncio.Event()
        self._ice_task: asyncio.Task[None] | None = None
        self._ice_path: Path | None = None
        self._ice_pending: deque[bytes] = deque(maxlen=MAX_EARLY_ICE_DATAGRAMS)
        self._ice_done = False
        self._relay_done = False
        self._started = False
        self._remote_end = False
        self._closed = False
        self._failed = False

    # -- setup -------------------------------------------------------------------------------------

    @classmethod
    async def prepare(
        cls,
        controlling: bool,
        stun_server: tuple[str, int] | None,
        turn: Sequence[TurnServer],
        policy: PathPolicy,
        *,
        host_addresses: Sequence[str] | None = None,
        search: SearchBudget = SearchBudget.FULL,
        coalesced_reads: bool = True,
        port_mapping: PortMappingConfig | None = None,
        stun_server6: tuple[str, int] | None = None,
    ) -> Connectivity:
        """Allocate a TURN relay (unless ``DIRECT_ONLY``) and gather host and server-reflexive
        candidates (unless ``RELAY_ONLY``).

        ``port_mapping``: also ask the home router to map each private IPv4 host socket's port
        (``session.port_mapping``); a granted public address is trickled as one more
        server-reflexive candidate, renewed while the session lasts and deleted by ``close``.

        ``stun_server6``: the STUN server's IPv6 address (the broker's ``stun6``), which IPv6 host
        sockets ask instead of ``stun_server`` (whose IPv4 literal they cannot reach); None:
        they ask ``stun_server`` too, which answers them only when its name has an IPv6 address.

        ``turn`` servers are tried in order; the first allocation that succeeds is used.
        ``host_addresses`` limits host candidates to these IP literals (default: every address
        of every interface but loopback, as aioice gathers them). ``search`` bounds this side's
        part in a birthday search (``LIGHT`` on a metered link). ``coalesced_reads`` sets
        ``UDP_GRO`` on the ICE sockets (``gso.GroReceiver``): worth it where the bulk arrives (a
        viewer); a recorder, which mostly sends and reads ACKs one at a time, leaves it off,
        since a GRO socket's ``recvmsg`` costs more than ``recvfrom`` for a lone datagram
        (``bench.udp_batching``: 91 against 39 µs in the armhf guest).

        Raises:
            ConnectivityError: no TURN allocation could be made under ``RELAY_ONLY`` (the message
                names the server and the cause, e.g. rejected credentials), or no candidate at all
                could be gathered.
        """
        self = cls(controlling, policy, search)
        self.coalesced_reads = coalesced_reads
        try:
            # The relay allocation (two round trips to the TURN server) and the host candidates
            # (local sockets, no round trip) are made together; server-reflexive candidates take a
            # STUN round trip, or a timeout where UDP is blocked, so they are trickled: see
            # ``local_gathering_done`` and ``wait_local_candidates``.
            steps: list[Coroutine[Any, Any, None]] = []
            if policy is not PathPolicy.DIRECT_ONLY:
                steps.append(self._allocate(turn))
            if policy is not PathPolicy.RELAY_ONLY:
                self._ice = _IceConnection(
                    self,
                    ice_controlling=controlling,
                    local_username=self._ufrag,
                    local_password=self._pwd,
                )
                steps.append(self._gather_host(self._ice, host_addresses))
            results = await asyncio.gather(*steps, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            mapping = port_mapping if port_mapping is not None and port_mapping.protocols else None
            servers = StunServers(stun_server, stun_server6)
            if self._ice is not None and (servers.any or mapping is not None):
                self._srflx_task = asyncio.create_task(self._gather_srflx(self._ice, servers, mapping))
            else:
                self._local_end = True
            if not self.local_candidates() and self._srflx_task is not None:
                await self.wait_local_candidates(SRFLX_TIMEOUT_S + 1)
            if not self.local_candidates():
                reasons = "; ".join(self.errors) or "no network address to gather candidates on"
                raise ConnectivityError(f"no ICE candidate could be gathered: {reasons}")
        except BaseException:
            await self.close()
            raise
        return self

    async def _gather_host(self, ice: _IceConnection, addresses: Sequence[str] | None) -> None:
        await gather_host(ice, list(addresses) if addresses is not None else None)
        for protocol in host_protocols(ice):
            self._read_ice(protocol)

    async def _gather_srflx(
        self, ice: _IceConnection, servers: StunServers, port_mapping: PortMappingConfig | None
    ) -> None:
        """Ask the STUN server for each host socket's mapped address (over the socket's own
        family: :meth:`StunServers.for_host`), adding each answer as it comes; a socket without
        an answer within ``SRFLX_TIMEOUT_S`` gets no srflx candidate. With ``port_mapping``, ask
        the home router for a mapping of each private IPv4 host socket at the same time
        (``PORT_MAPPING_TIMEOUT_S``)."""

        async def one(protocol: Any) -> None:
            stun_server = servers.for_host(protocol.local_candidate.host)
            if stun_server is None:
                return
            try:
                found = await asyncio.wait_for(srflx_candidate(protocol, stun_server), SRFLX_TIMEOUT_S)
            except (OSError, ConnectionError, stun.TransactionError, TimeoutError) as exc:
                log.info("no server-reflexive candidate from %s: %r", stun_server, exc)
                return
            if found is None or self._closed:
                return
            candidate, server, other, rtt = found
            # Port prediction and the birthday search are for IPv4 NATs: an IPv6 socket (no
            # NAT66 expected; a birthday search pairs sockets of one family) predicts nothing.
            if other is None or ":" in protocol.local_candidate.host:
                self._srflx.append(candidate)
                self._local_changed.set()
                return
            # The candidate waits for the prediction (one more round trip) so that its first
            # signalling already names the mapping the peer may need for a birthday search.
            mapping, predicted, probe_rtt = await predicted_candidates(protocol, server, other, candidate)
            if self.closed:
                return
            if mapping is not None:
                # The fastest of the three Bindings: a loss (and its retransmission) in one of
                # them does not make a fast link look slow.
                fastest = round(1000 * (rtt if probe_rtt is None else min(rtt, probe_rtt)))
                log.info("server-reflexive candidate %s:%d: the NAT's mapping is %s, STUN round trip %d ms",
                         candidate.host, candidate.port, mapping.value, fastest)  # fmt: skip
                self._bases.append((protocol, candidate, mapping, fastest))
            self._srflx += [candidate, *predicted]
            self._local_changed.set()
            self._maybe_birthday()

        async def mapped(protocol: Any, config: PortMappingConfig) -> None:
            base = protocol.local_candidate
            if ":" in base.host or not is_private(base.host):
                return
            mapping = await PortMapping.open(base.port, config, internal_ip=base.host)
            self.mappings.append(mapping)
            external = await mapping.wait_mapped(PORT_MAPPING_TIMEOUT_S)
            if external is None or self._closed:
                if external is None and mapping.stats.failures:
                    log.info(
                        "no port mapping for %s:%d: %s",
                        base.host,
                        base.port,
                        "; ".join(mapping.stats.failures),
                    )
                self.mappings.remove(mapping)
                await mapping.close(UNMAP_TIMEOUT_S)
                return
            self._srflx.append(mapped_candidate(base, *external))
            self._local_changed.set()

        steps = [one(p) for p in host_protocols(ice)] if servers.any else []
        if port_mapping is not None:
            steps += [mapped(p, port_mapping) for p in host_protocols(ice)]
        try:
            await asyncio.gather(*steps)
        finally:
            self._local_end = True
            self._local_changed.set()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._closed

    @property
    def local_gathering_done(self) -> bool:
        """True once every local candidate is known (``local_candidates`` will not grow)."""
        return self._local_end

    async def wait_local_candidates(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a new local candidate or the end of gathering;
        returns at once if gathering is done. Never raises on timeout."""
        if self._local_end:
            return
        self._local_changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._local_changed.wait(), timeout)

    async def _allocate(self, servers: Sequence[TurnServer]) -> None:
        """Allocate on the first server that answers. Servers are tried in the broker's order
        (UDP ones first), but not one after the other: when an attempt has not succeeded within
        ``TURN_HEAD_START_S``, the next server of the *other* transport starts beside it (UDP may
        be blocked, TCP may be slow), and a failed attempt starts the next server at once. The
        first allocation wins; one that succeeds later is released in the background."""
        pending = list(servers)
        attempts: dict[asyncio.Task[tuple[TurnTransport, RelayReceiver | None]], TurnServer] = {}

        def launch(transport: str | None = None) -> bool:
            for index, server in enumerate(pending):
                if transport is None or server.transport == transport:
                    del pending[index]
                    attempts[asyncio.ensure_future(self._open_turn(server))] = server
                    return True
            return False

        launch()
        while attempts:
            done, _ = await asyncio.wait(
                attempts, timeout=TURN_HEAD_START_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:  # nothing yet: give the other transport its chance beside it
                running = {server.transport for server in attempts.values()}
                other = "tcp" if running == {"udp"} else "udp" if running == {"tcp"} else None
                if other is not None:
                    launch(other)
                continue
            for task in done:
                server = attempts.pop(task)
                exc = task.exception()
                if exc is not None:
                    message = turn_error(server, exc)
                    log.warning("%s", message)
                    self.errors.append(message)
                    if not attempts:
                        launch()
                    continue
                if self._turn is None:
                    transport, receiver = task.result()
                    self._adopt(server, transport, receiver)
                else:
                    task.result()[0].close()  # a second success: not needed
            if self._turn is not None:
                for task in attempts:
                    task.add_done_callback(release_turn)
                    self._stragglers.add(task)
                    task.add_done_callback(self._stragglers.discard)
                return
        if not servers:
            self.errors.append("no TURN server was given")
        if self.policy is PathPolicy.RELAY_ONLY:
            raise ConnectivityError(
                "relay-only session without a relay: " + "; ".join(self.errors[-len(servers) or -1 :])
            )

    async def _open_turn(self, server: TurnServer) -> tuple[TurnTransport, RelayReceiver | None]:
        """One allocation attempt (with its 401 round), bounded by ``TURN_TIMEOUT_S``.

        Raises:
            OSError, ConnectionError, stun.TransactionError, TimeoutError: it failed.
        """
        receiver: RelayReceiver | None = None

        def factory() -> RelayReceiver:
            # An allocation that lost the race is closed once it succeeds; its errors and its end
            # are not the session's (only the adopted allocation's are).
            made: RelayReceiver | None = None

            def on_error(exc: Exception) -> None:
                if made is not None and made is self._relay_receiver:
                    self._relay_error(exc)

            def on_lost() -> None:
                if made is not None and made is self._relay_receiver:
                    self._relay_lost()

            nonlocal receiver
            receiver = made = RelayReceiver(self._relay_datagram, on_error, on_lost)
            return made

        transport, _ = await asyncio.wait_for(
            create_turn_endpoint(
                factory,
                (server.host, server.port),
                server.username,
                server.password,
                transport=server.transport,
            ),
            TURN_TIMEOUT_S,
        )
        return transport, receiver

    def _adopt(self, server: TurnServer, transport: TurnTransport, receiver: RelayReceiver | None) -> None:
        self._turn = transport
        self._turn_server = server
        if server.transport == "udp":
            inner = turn_client(transport)
            batch_reads(inner.transport, inner, before=self._batch_start, after=self._batch_done)
        self._relay_receiver = receiver
        self._relayed_address = transport.get_extra_info("sockname")
        self._related_address = transport.get_extra_info("related_address")

    # -- local parameters ---------------------------------------------------------------------------

    @property
    def local_ufrag(self) -> str:
        """Our ICE username fragment (also sent under ``RELAY_ONLY``, where it is unused)."""
        return self._ufrag

    @property
    def local_pwd(self) -> str:
        """Our ICE password."""
        return self._pwd

    def local_candidates(self) -> list[str]:
        """Our candidates as SDP ``candidate`` values: host and server-reflexive ones (a
        server-reflexive one equal to its base is left out, RFC 8445 section 5.1.3), then the
        relay candidate (the TURN relayed address, type relay)."""
        out: list[str] = []
        mappings = {(c.host, c.port): (mapping, rtt) for _, c, mapping, rtt in self._bases}
        if self._ice is not None:
            for candidate in [*self._ice.local_candidates, *self._srflx]:
                if candidate.type == "srflx" and (candidate.host, candidate.port) == (
                    candidate.related_address,
                    candidate.related_port,
                ):
                    continue
                sdp = candidate.to_sdp()
                attributes = mappings.get((candidate.host, candidate.port))
                if candidate.type == "srflx" and attributes is not None:
                    sdp = with_rtt(with_mapping(sdp, attributes[0]), attributes[1])
                out.append(sdp)
        if self._relayed_address is not None:
            host, port = self._relayed_address
            related = self._related_address or ("0.0.0.0", 9)
            out.append(
                Candidate(
                    foundation=aioice.candidate.candidate_foundation("relay", "udp", host),
                    component=1,
                    transport="udp",
                    priority=aioice.candidate.candidate_priority(1, "relay"),
                    host=host,
                    port=port,
                    type="relay",
                    related_address=related[0],
                    related_port=related[1],
                ).to_sdp()
            )
        return out

    @property
    def server_reflexive(self) -> list[tuple[str, int, str | None, int | None]]:
        """Every server-reflexive candidate gathered so far, as (host, port, base host, base
        port), also those ``local_candidates`` leaves out as equal to their base (RFC 8445
        5.1.3: an address without NAT, such as a global IPv6 one)."""
        return [(c.host, c.port, c.related_address, c.related_port) for c in self._srflx]

    @property
    def relayed_address(self) -> tuple[str, int] | None:
        """Our TURN relayed address, or None without an allocation."""
        return self._relayed_address

    # -- start -------------------------------------------------------------------------------------

    async def start(
        self,
        remote_ufrag: str,
        remote_pwd: str,
        remote_candidates: Sequence[str],
        *,
        end_of_candidates: bool = True,
    ) -> None:
        """Open the relay path as soon as the peer's relay candidate is known and start ICE checks
        in the background; returns at once.

        Pass ``end_of_candidates=False`` to trickle more with :meth:`add_remote_candidates`.
        Malformed remote candidates are skipped. If no path can come (no relay candidate from the
        peer or no allocation here, and the ICE checks failed), ``on_failed`` is called.

        Raises:
            RuntimeError: called twice, or after ``close``.
        """
        if self._started or self._closed:
            raise RuntimeError("Connectivity.start() may be called once, before close()")
        self._started = True
        if self._turn is None:
            self._relay_done = True
        ice = self._ice
        if ice is None:
            self._ice_done = True
        else:
            ice.remote_username = remote_ufrag
            ice.remote_password = remote_pwd
            self._ice_task = asyncio.create_task(self._run_ice(ice))
        await self.add_remote_candidates(remote_candidates, end=end_of_candidates)
        self._check_failed()

    async def add_remote_candidates(self, candidates: Sequence[str], *, end: bool = False) -> None:
        """Add trickled peer candidates (SDP strings); ``end``: the peer has no more.

        Raises:
            RuntimeError: before ``start`` or after end-of-candidates.
        """
        if not self._started or self._remote_end:
            raise RuntimeError("remote candidates are added after start() and before their end")
        if self._closed:
            return
        ice = self._ice
        for sdp in candidates:
            try:
                candidate = Candidate.from_sdp(sdp)
            except (ValueError, IndexError):
                log.info("skipping malformed remote candidate %r", sdp)
                continue
            if candidate.type == "relay":
                if self._turn is not None and self._remote_relay is None:
                    self._open_relay((candidate.host, candidate.port))
            elif candidate.type in ("host", "srflx") and ice is not None:
                await ice.add_remote_candidate(candidate)
                mapping = mapping_of(sdp)
                if candidate.type == "srflx" and mapping is not None:
                    self._remote_mappings.append((candidate, mapping, rtt_of(sdp)))
        self._maybe_birthday()
        if end:
            self._remote_end = True
            if ice is not None:
                await ice.add_remote_candidate(None)
            if self._turn is not None and self._remote_relay is None:
                self.errors.append("the peer offered no relay candidate; only a direct path can work")
                self._relay_done = True
            self._check_failed()

    def _open_relay(self, remote: tuple[str, int]) -> None:
        assert self._turn is not None
        self._remote_relay = remote
        # An empty datagram makes aioice bind a channel (and so a permission) to the peer's relay
        # now, so the peer's first datagrams pass our relay; the peer drops it as not QUIC.
        self._turn.sendto(b"", remote)
        self._mark_ready(RELAY)

    async def _run_ice(self, ice: _IceConnection) -> None:
        try:
            await self._check_ice(ice)
        finally:
            self._ice_over.set()

    async def _check_ice(self, ice: _IceConnection) -> None:
        try:
            await asyncio.wait_for(ice.connect(), ICE_TIMEOUT_S)
        except (ConnectionError, TimeoutError) as exc:
            self._end_birthday(None)
            what = "timed out" if isinstance(exc, TimeoutError) else "failed"
            self.errors.append(f"no direct path: ICE checks {what} ({exc or ICE_TIMEOUT_S})")
            log.info("%s", self.errors[-1])
            self._ice_done = True
            self._ice_pending.clear()
            self._check_failed()
            return
        self._end_birthday(nominated_protocol(ice))
        pair = selected_pair(ice)
        if pair is None:
            self.errors.append("no direct path: aioice nominated no usable pair")
            self._ice_done = True
            self._check_failed()
            return
        local, remote = pair
        path = LAN if local.type == "host" and remote.type == "host" and is_private(remote.host) else DIRECT
        self._ice_path = path
        self._ice_route = selected_transport(ice)
        self._mark_ready(path)
        pending = list(self._ice_pending)
        self._ice_pending.clear()
        for data in pending:
            self._deliver(data, path)

    # -- datagrams ---------------------------------------------------------------------------------

    @property
    def paths(self) -> list[Path]:
        """The paths ready, in the order they became ready."""
        return list(self._ready)

    @property
    def best_path(self) -> Path | None:
        """The preferred ready path (lan > direct > relay), or None while none is ready."""
        if not self._ready:
            return None
        return max(self._ready, key=lambda p: PATH_RANK[p])

    def send(self, data: bytes, path: Path) -> None:
        """Send one datagram on ``path``; dropped (and counted) if that path is not ready.

        Never raises: a datagram network is lossy and QUIC recovers.
        """
        if self._closed or path not in self._ready:
            self.dropped += 1
            return
        if path == RELAY:
            assert self._turn is not None and self._remote_relay is not None
            if not channel_send(self._turn, data, self._remote_relay):
                self._turn.sendto(data, self._remote_relay)
        else:
            route = self._direct_route()
            if route is None:
                self.dropped += 1
                return
            self._sender(route[0]).send((data,), route[1])
        self.bytes_out[path] = self.bytes_out.get(path, 0) + len(data)

    def send_many(self, datagrams: list[bytes], path: Path) -> None:
        """Send ``datagrams`` on ``path`` in order, as ``send`` each; on a lan or direct path
        with one ``sendmsg`` per run of equal-sized ones where the kernel has UDP GSO
        (``session.gso``). Never raises."""
        if path == RELAY or len(datagrams) < 2 or self._closed or path not in self._ready:
            for data in datagrams:
                self.send(data, path)
            return
        route = self._direct_route()
        if route is None:
            self.dropped += len(datagrams)
            return
        transport, address = route
        self.bytes_out[path] = self.bytes_out.get(path, 0) + self._sender(transport).send(datagrams, address)

    def _sender(self, transport: asyncio.DatagramTransport) -> GsoSender:
        """The sender on the nominated pair's socket (a new one when the socket changed)."""
        sender = self._gso
        if sender is None or sender.transport is not transport:
            sender = self._gso = GsoSender(transport)
        return sender

    def _direct_route(self) -> tuple[asyncio.DatagramTransport, tuple[str, int]] | None:
        """The nominated pair's socket and remote address (looked up again if its socket closed)."""
        route = self._ice_route
        if route is None or route[0].is_closing():
            route = self._ice_route = selected_transport(self._ice) if self._ice is not None else None
        return route

    def retire(self, path: Path, reason: str) -> None:
        """Stop using ``path`` for the rest of the session (it stopped carrying datagrams: a NAT
        mapping or an interface went away); ``best_path`` no longer offers it. The relay
        cannot be retired this way. Idempotent."""
        if path == RELAY or path not in self._ready:
            return
        self._ready.remove(path)
        self.retired.append(path)
        message = f"{path[0]} path given up: {reason}"
        self.errors.append(message)
        log.warning("%s", message)
        self._check_failed()

    async def close(self) -> None:
        """Delete the TURN allocation (waiting up to ``CLOSE_TIMEOUT_S``) and close ICE. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ready.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for straggler in list(self._stragglers):
            straggler.cancel()
        if self._stragglers:
            await asyncio.gather(*self._stragglers, return_exceptions=True)
        if self._srflx_task is not None:
            self._srflx_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._srflx_task
        if self.mappings:
            await asyncio.gather(*(m.close(UNMAP_TIMEOUT_S) for m in self.mappings), return_exceptions=True)
            self.mappings.clear()
        if self._ice_task is not None:
            self._ice_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ice_task
        if self._birthday_task is not None:
            self._birthday_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._birthday_task
        if self._ice is not None:
            await self._ice.close()
        await birthday.close_sockets(self._birthday_sockets)
        self._birthday_sockets.clear()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        if self._turn is not None:
            self._turn.close()
            if self._relay_receiver is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._relay_receiver.closed), CLOSE_TIMEOUT_S)

    # -- internals ---------------------------------------------------------------------------------

    def _maybe_birthday(self) -> None:
        """Start a birthday search (at most one per session) once a local socket's mapping and
        a peer candidate's mapping call for one (``birthday_role``), unless either side's STUN
        round trip shows a slow link (``slow_link``): then log why, once, and start none."""
        if self._birthday_task is not None or self.search_skipped is not None:
            return
        if not self._started or self._closed or self._ice is None or self._ice_settled():
            return
        for protocol, _, local, local_rtt in self._bases:
            for remote, mapping, remote_rtt in self._remote_mappings:
                role = birthday_role(local, mapping, self.search)
                if role is None:
                    continue
                slow = slow_link(local_rtt, remote_rtt)
                if slow is not None:
                    self._skip_birthday(role, slow)
                    return
                self._birthday_task = asyncio.create_task(self._birthday(role, protocol, remote))
                return

    def _skip_birthday(self, role: BirthdayRole, slow: SlowLink) -> None:
        self.search_skipped = slow
        checks, size = search_cost(role)
        if slow.ours:
            whose = "this side's link is slow (STUN round trip"
        else:
            whose = "the peer's link is slow (its advertised STUN round trip"
        if role is BirthdayRole.OPEN:
            what = f"open {checks} sockets, one check each"
        else:
            what = f"send {checks:,} probes per round"
        log.info("birthday search skipped: %s %d ms >= %d ms); it would %s (about %d kB) over it; "
                 "staying on the relay unless the plain checks find a path",
                 whose, slow.rtt_ms, slow.threshold_ms, what, round(size / 1000))  # fmt: skip

    async def _birthday(self, role: BirthdayRole, protocol: Any, remote: Candidate) -> None:
        await asyncio.sleep(BIRTHDAY_DELAY_S)
        await self._search_allowed.wait()
        ice = self._ice
        if ice is None or self._closed or self._ice_settled():
            return
        target = (remote.host, remote.port)
        if role is BirthdayRole.OPEN:
            log.info("birthday search: %d sockets towards %s:%d (our NAT maps each remote to a random "
                     "port)", BIRTHDAY_SOCKETS, *target)  # fmt: skip
            # Cancelled by ``_end_birthday`` when ICE ends; ``close`` closes what it opened.
            await birthday.open_sockets(
                ice, protocol.local_candidate, target, BIRTHDAY_SOCKETS, self._birthday_sockets
            )
        else:
            log.info("birthday search: %d probes to random ports of %s (its NAT maps each remote to a "
                     "random port)", BIRTHDAY_PROBES, remote.host)  # fmt: skip
            # Rounds of fresh ports while nothing has answered: each round alone succeeds 98 %
            # of the time, so a second one is rare and a third rarer still.
            ports = probe_ports(BIRTHDAY_PROBES * BIRTHDAY_ROUNDS, random.Random())
            for round_ in range(BIRTHDAY_ROUNDS):
                chunk = ports[round_ * BIRTHDAY_PROBES : (round_ + 1) * BIRTHDAY_PROBES]
                await birthday.probe_ports(ice, protocol, remote.host, chunk)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ice_over.wait(), BIRTHDAY_ROUND_S)
                if self.closed or self._ice_settled():
                    break

    def allow_search(self) -> None:
        """The session is established (on the relay): a birthday search may start now. Until
        then it waits, so that its hundreds of checks do not queue ahead of the handshake on a
        slowish uplink (an EDGE modem sends 32 kB in about 1.3 s); on a slower one (GPRS) no
        search runs at all (``slow_link``)."""
        self._search_allowed.set()

    def _ice_settled(self) -> bool:
        """ICE has nominated a pair or given up."""
        return self._ice_done or self._ice_path is not None

    def _end_birthday(self, keep: Any) -> None:
        """ICE is over: close the search's sockets but ``keep`` (the nominated one)."""
        if self._birthday_task is not None and not self._birthday_task.done():
            self._birthday_task.cancel()
        losers = [p for p in self._birthday_sockets if p is not keep]
        self._birthday_sockets[:] = [p for p in self._birthday_sockets if p is keep]
        if self._birthday_sockets:  # the nominated pair is one of ours: read it in batches too
            self._read_ice(keep)
        if losers:
            task = asyncio.create_task(birthday.close_sockets(losers))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    def _mark_ready(self, path: Path) -> None:
        if self._closed or path in self._ready:
            return
        self._ready.append(path)
        log.info("path %s ready", path[0])
        self.on_path_ready(path)

    def _each(self, datagrams: list[bytes], path: Path, arrived: float | None) -> None:
        for data in datagrams:
            self.on_datagram(data, path)

    def _deliver(self, data: bytes, path: Path) -> None:
        if not is_session_datagram(data):
            self.dropped += 1
            return
        self.bytes_in[path] = self.bytes_in.get(path, 0) + len(data)
        self.last_in[path] = time.monotonic()
        self.on_datagram(data, path)
        self._batched = True
        if not self._batching and self._flush_handle is None:
            # not from a batch reader (TURN over TCP, held datagrams at nomination, a loop
            # without the batch reader): the datagrams of this pass share one on_batch
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_later)

    def _relay_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._closed or addr != self._remote_relay:
            self.dropped += 1
            return
        self._deliver(data, RELAY)

    def _ice_datagram(self, data: bytes) -> None:
        if self._closed:
            return
        if self._ice_path is None:
            if not self._ice_done and is_session_datagram(data):
                self._ice_pending.append(data)
            else:
                self.dropped += 1
            return
        self._deliver(data, self._ice_path)

    def _ice_fast(self, data: bytes, addr: object) -> bool:
        """The nominated pair's session datagrams, straight to the session: aioice would try
        each one as STUN first. Anything else (STUN checks and consent, other senders) goes
        through aioice as before."""
        route = self._ice_route
        path = self._ice_path
        if route is None or path is None or addr != route[1] or not data or self._closed:
            return False
        first = data[0]
        if not (first & 0x40 or is_dataplane(first)):
            return False
        self._deliver(data, path)
        return True

    def _ice_fast_many(self, datagrams: list[bytes], addr: object, arrived: float | None = None) -> bool:
        """``_ice_fast`` for the datagrams of one read (a coalesced run: one sender, one size),
        which reached the socket at ``arrived`` where known: all of them to the session in one
        call, or False (each then goes its own way)."""
        route = self._ice_route
        path = self._ice_path
        if route is None or path is None or addr != route[1] or self._closed:
            return False
        for data in datagrams:
            if not data or not is_session_datagram(data):
                return False
        self.bytes_in[path] = self.bytes_in.get(path, 0) + sum(map(len, datagrams))
        self.last_in[path] = time.monotonic()
        self.on_datagrams(datagrams, path, arrived)
        self._batched = True
        return True

    def _read_ice(self, protocol: Any) -> None:
        """Read an ICE socket in batches, the nominated pair's datagrams past aioice: a
        coalesced run per read where the kernel has UDP GRO (``gso.GroReceiver``, with
        ``coalesced_reads``), or else each datagram with its arrival stamp
        (``gso.StampedReceiver``); and have it send with DF set, for the data plane's path MTU
        probes (``gso.probe_path_mtu``)."""
        self.path_mtu_probing = probe_path_mtu(protocol.transport) and self.path_mtu_probing
        transport = protocol.transport
        read_many: Callable[[], tuple[list[bytes], Any]] | None = None
        first_many: Callable[[list[bytes], Any], bool] = self._ice_fast_many
        if self.coalesced_reads:
            coalesced = gro_receiver(transport)
            if coalesced is not None:
                read_many = coalesced.read
        else:
            stamped = stamped_receiver(transport, RECV_SIZE)
            if stamped is not None:
                read_many = stamped.read
                fast = self._ice_fast_many

                def first_many(datagrams: list[bytes], addr: Any) -> bool:
                    return fast(datagrams, addr, stamped.arrival)

        batch_reads(
            transport,
            protocol,
            first=self._ice_fast,
            before=self._batch_start,
            after=self._batch_done,
            read_many=read_many,
            first_many=first_many,
        )

    def _batch_start(self) -> None:
        self._batching = True

    def _flush_later(self) -> None:
        self._flush_handle = None
        self._batch_done()

    def _batch_done(self) -> None:
        self._batching = False
        if self._batched:
            self._batched = False
            if not self._closed:
                self.on_batch()

    def _relay_error(self, exc: Exception) -> None:
        server = self._turn_server
        where = f"TURN server {server.host}:{server.port}" if server is not None else "TURN server"
        if isinstance(exc, stun.TransactionFailed) and exc.response.error_code == 403:
            message = (
                f"{where} refused to relay to the peer's relay address {self._remote_relay} (403): "
                "its denied_peer_networks may cover it"
            )
        else:
            message = f"relay path through {where} failed: {exc}"
        log.warning("%s", message)
        self.errors.append(message)
        if RELAY in self._ready:
            self._ready.remove(RELAY)
        self._relay_done = True
        self._check_failed()

    def _relay_lost(self) -> None:
        if self._closed:
            return
        if RELAY in self._ready:
            self._ready.remove(RELAY)
            self.errors.append("the TURN allocation was lost (refresh failed or connection closed)")
        self._relay_done = True
        self._check_failed()

    def _check_failed(self) -> None:
        if self._failed or self._closed or not self._started or self._ready:
            return
        if self._relay_done and self._ice_done:
            self._failed = True
            reason = "no path to the peer: " + ("; ".join(self.errors) or "no candidates to try")
            self.on_failed(reason)


# --- aioice's sockets and pairs (its internals through dvrlink.compat.aioice_compat) ---


def batch_reads(
    transport: asyncio.BaseTransport,
    protocol: asyncio.DatagramProtocol,
    *,
    first: Callable[[bytes, object], bool] | None = None,
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
    read_many: Callable[[], tuple[list[bytes], Any]] | None = None,
    first_many: Callable[[list[bytes], Any], bool] | None = None,
) -> bool:
    """Have the event loop read up to ``READ_BATCH`` datagrams (or reads) per wake-up from ``transport``'s
    socket (asyncio's own reader reads one), with a receive buffer with room for a burst while
    this process waits for a core. The session then runs once per batch rather than per
    datagram, and a forward writes bigger TCP chunks. ``first``, ``before``, ``after``,
    ``read_many`` and ``first_many`` as ``asyncio_compat.batch_datagram_reads``. Returns False
    (asyncio's reader stays) if the loop is not the selector kind this relies on."""
    return asyncio_compat.batch_datagram_reads(
        transport,
        protocol,
        READ_BATCH,
        RECV_SIZE,
        RECV_BUFFER,
        first=first,
        before=before,
        after=after,
        read_many=read_many,
        first_many=first_many,
    )
