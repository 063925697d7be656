"""NAT behaviour discovery (RFC 5780), client side. Sans-I/O.

Runs the RFC 5780 tests against a STUN server with an alternate address (the broker with
``stun_alternate_host`` set) and reports the NAT's mapping and filtering behaviour:

1. **Binding** (test I): a Binding request to the server's primary address P gives the mapped
   address M1 and the server's OTHER-ADDRESS O. No answer at all: UDP is blocked. M1 equal to the
   local address: there is no NAT.
2. **Filtering**, on the same socket and before anything is sent to O's IP (so that no filter
   opens for it): a request to P with CHANGE-REQUEST "change IP and port"; an answer from O means
   endpoint-independent filtering (EIF). Else a request with "change port"; an answer from
   (P's IP, O's port) means address-dependent filtering (ADF). Neither: address- and
   port-dependent filtering (APDF). Both run at once. At the same time, the optional
   **hairpinning** test sends a request from a second socket to M1; if the first socket receives
   it, the NAT hairpins.
3. **Mapping**: requests to (O's IP, P's port) and to O give M2 and M3. M2 = M1: endpoint-
   independent mapping (EIM); else M3 = M2: address-dependent (ADM); else address- and
   port-dependent (APDM). If the mapped ports of M1, M2, M3 step by the same small amount, the
   NAT allocates ports sequentially (``port_delta``), which makes them predictable.

A test that gets no answer is retransmitted every ``retransmit_interval`` seconds until
``test_timeout``; for the filtering tests, no answer *is* the result, so the whole run takes about
one ``test_timeout`` plus a few round trips.

The core never touches a socket: the driver opens the two UDP sockets (``Socket.MAIN`` and
``Socket.HAIRPIN``), sends :meth:`NatClassifier.datagrams_to_send`, feeds what arrives to
:meth:`NatClassifier.receive_datagram`, and calls :meth:`NatClassifier.handle_timer` at
:meth:`NatClassifier.get_timer`. When it is done, :attr:`NatClassifier.result` holds the
:class:`NatBehaviour` (``protocol/nat_behaviour.py``, with the path rules; and
:meth:`NatClassifier.next_event` yields one :class:`Classified`).
"""

from __future__ import annotations

import enum
import itertools
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aioice import stun

from dvrlink.protocol.nat_behaviour import Filtering, Mapping, NatBehaviour
from dvrlink.protocol.presence_events import Address
from dvrlink.protocol.stun_behaviour import CHANGE_IP, CHANGE_PORT, HEADER_LENGTH, MAGIC_COOKIE

__all__ = [
    "MAX_PORT_DELTA",
    "Classified",
    "ClassifierConfig",
    "Filtering",
    "Mapping",
    "NatBehaviour",
    "NatClassifier",
    "Socket",
    "Transmit",
]

MAX_PORT_DELTA = 16
"""Largest step between successive mapped ports still reported as sequential allocation."""


class Socket(enum.Enum):
    """The classifier's two local UDP sockets (bound to the same local IP, any port)."""

    MAIN = "main"
    HAIRPIN = "hairpin"


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    """Where to test and how patiently. Times in seconds."""

    server: Address
    """The STUN server's primary (host, port): the broker's presence/STUN port."""
    retransmit_interval: float = 0.25
    """Seconds between retransmissions of an unanswered request."""
    test_timeout: float = 2.0
    """Seconds a test waits for its answer; on slow links (GPRS: ~600 ms RTT, loss) use 5 or more."""
    hairpin: bool = True
    """Also test hairpinning (needs the HAIRPIN socket)."""

    def __post_init__(self) -> None:
        if not 0 < self.retransmit_interval <= self.test_timeout:
            raise ValueError(
                f"retransmit_interval {self.retransmit_interval} s must be positive and at most "
                f"test_timeout {self.test_timeout} s"
            )


@dataclass(frozen=True, slots=True)
class Transmit:
    """A datagram to send from ``socket`` to ``destination``."""

    socket: Socket
    data: bytes
    destination: Address


@dataclass(frozen=True, slots=True)
class Classified:
    """The tests are over; ``behaviour`` is the result."""

    behaviour: NatBehaviour


class _Phase(enum.Enum):
    BINDING = 1
    FILTERING = 2
    MAPPING = 3
    DONE = 4


@dataclass(slots=True)
class _Test:
    name: str
    socket: Socket
    destination: Address
    data: bytes
    transaction_id: bytes
    deadline: float
    next_send: float
    expected_source: Address | None = None
    """For CHANGE-REQUEST tests: where the answer must come from."""
    answered: bool = False
    timed_out: bool = False
    mapped: Address | None = None
    response: stun.Message | None = field(default=None, repr=False)
    source: Address | None = None

    @property
    def finished(self) -> bool:
        return self.answered or self.timed_out


class NatClassifier:
    """One run of the RFC 5780 tests (see the module docstring). Starts at construction.

    Raises:
        ValueError: ``local`` is not a concrete (host, port).
    """

    def __init__(
        self,
        config: ClassifierConfig,
        local: Address,
        now: float,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not local[1]:
            raise ValueError(f"local address {local} has no port; bind the MAIN socket before starting")
        self._config = config
        self._local = (local[0], local[1])
        self._rng = rng
        self._tests: dict[bytes, _Test] = {}
        self._outbox: list[Transmit] = []
        self._events: deque[Classified] = deque()
        self._phase = _Phase.BINDING
        self._result: NatBehaviour | None = None
        self._notes: list[str] = []
        self._binding = self._start("binding", Socket.MAIN, config.server, now)
        self._primary_ip = config.server[0]
        self._other: Address | None = None
        self._change_both: _Test | None = None
        self._change_port: _Test | None = None
        self._hairpin: _Test | None = None
        self._mapping2: _Test | None = None
        self._mapping3: _Test | None = None

    # -- sans-I/O interface -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once :attr:`result` is set."""
        return self._result is not None

    @property
    def result(self) -> NatBehaviour | None:
        """The behaviour found, or None while tests run."""
        return self._result

    def datagrams_to_send(self) -> list[Transmit]:
        """Datagrams to send, oldest first; the list is drained."""
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> Classified | None:
        """The next event (there is one, when the run ends), or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next (absolute time), or None when done."""
        times = [min(t.next_send, t.deadline) for t in self._tests.values() if not t.finished]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Retransmit unanswered requests, time out tests, and move on when a phase is over."""
        for test in list(self._tests.values()):
            if test.finished:
                continue
            if now >= test.deadline:
                test.timed_out = True
            elif now >= test.next_send:
                self._outbox.append(Transmit(test.socket, test.data, test.destination))
                test.next_send = now + self._config.retransmit_interval
        self._advance(now)

    def receive_datagram(self, socket: Socket, data: bytes, source: Address, now: float) -> None:
        """A datagram arrived on ``socket`` from ``source``. Anything that is not an answer to
        one of the tests (or the hairpin request) is ignored; never raises on bad input."""
        if len(data) < HEADER_LENGTH or data[4:8] != MAGIC_COOKIE:
            return
        try:
            message = stun.parse_message(data)
        except (ValueError, KeyError, IndexError, UnicodeDecodeError):
            return
        test = self._tests.get(message.transaction_id)
        if test is None or test.finished or message.message_method != stun.Method.BINDING:
            return
        if test is self._hairpin:
            # The hairpin request itself, looped back by the NAT to the MAIN socket.
            if socket is Socket.MAIN and message.message_class == stun.Class.REQUEST:
                test.answered = True
                test.source = (source[0], source[1])
                self._advance(now)
            return
        if socket is not test.socket or message.message_class == stun.Class.REQUEST:
            return
        test.answered = True
        test.response = message
        test.source = (source[0], source[1])
        if message.message_class == stun.Class.RESPONSE:
            mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get("MAPPED-ADDRESS")
            if isinstance(mapped, tuple) and len(mapped) == 2:
                test.mapped = (str(mapped[0]), int(mapped[1]))
        self._advance(now)

    # -- the tests ------------------------------------------------------------------------------

    def _start(
        self,
        name: str,
        socket: Socket,
        destination: Address,
        now: float,
        change: int = 0,
        expected_source: Address | None = None,
    ) -> _Test:
        transaction_id = self._rng(12)
        request = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.REQUEST,
            transaction_id=transaction_id,
        )
        # Always present, 0 when no change is asked: it tells the server this is an RFC 5780
        # client, which the broker answers with OTHER-ADDRESS and RESPONSE-ORIGIN.
        request.attributes["CHANGE-REQUEST"] = change
        request.add_fingerprint()
        data = bytes(request)
        test = _Test(
            name,
            socket,
            destination,
            data,
            transaction_id,
            now + self._config.test_timeout,
            now + self._config.retransmit_interval,
            expected_source,
        )
        self._tests[transaction_id] = test
        self._outbox.append(Transmit(socket, data, destination))
        return test

    def _advance(self, now: float) -> None:
        if self._phase is _Phase.BINDING and self._binding.finished:
            self._after_binding(now)
        if self._phase is _Phase.FILTERING and all(
            t is None or t.finished for t in (self._change_both, self._change_port, self._hairpin)
        ):
            self._start_mapping(now)
        if (
            self._phase is _Phase.MAPPING
            and self._mapping2 is not None
            and self._mapping3 is not None
            and self._mapping2.finished
            and self._mapping3.finished
        ):
            self._finish(self._mapping_result())

    def _after_binding(self, now: float) -> None:
        test = self._binding
        if test.timed_out:
            self._finish(None)
            return
        response = test.response
        assert response is not None
        if response.message_class != stun.Class.RESPONSE or test.mapped is None:
            self._notes.append(f"the server answered test I with an error ({response.error_code})")
            self._finish(None)
            return
        other = response.attributes.get("OTHER-ADDRESS") or response.attributes.get("CHANGED-ADDRESS")
        origin = response.attributes.get("RESPONSE-ORIGIN")
        if isinstance(origin, tuple):
            self._primary_ip = str(origin[0])
        if not isinstance(other, tuple) or (str(other[0]), int(other[1])) == self._config.server:
            self._notes.append(
                "the server has no alternate address (no OTHER-ADDRESS); configure the broker's "
                "stun_alternate_host to classify the NAT"
            )
            self._finish(None)
            return
        self._other = (str(other[0]), int(other[1]))
        if self._other[0] == self._primary_ip or self._other[1] == self._config.server[1]:
            self._notes.append(f"OTHER-ADDRESS {self._other} shares the primary IP or port; cannot test")
            self._finish(None)
            return
        self._phase = _Phase.FILTERING
        server = self._config.server
        self._change_both = self._start(
            "filtering-change-ip-and-port", Socket.MAIN, server, now, CHANGE_IP | CHANGE_PORT, self._other
        )
        self._change_port = self._start(
            "filtering-change-port", Socket.MAIN, server, now, CHANGE_PORT, (self._primary_ip, self._other[1])
        )
        if self._config.hairpin and test.mapped != self._local:
            self._hairpin = self._start("hairpin", Socket.HAIRPIN, test.mapped, now)
        self._advance(now)

    def _start_mapping(self, now: float) -> None:
        assert self._other is not None
        self._phase = _Phase.MAPPING
        alternate_ip = (self._other[0], self._config.server[1])
        self._mapping2 = self._start("mapping-alternate-ip", Socket.MAIN, alternate_ip, now)
        self._mapping3 = self._start("mapping-alternate-both", Socket.MAIN, self._other, now)

    def _filtering(self) -> Filtering | None:
        results = []
        for test in (self._change_both, self._change_port):
            assert test is not None
            if test.timed_out:
                results.append(False)
                continue
            response = test.response
            assert response is not None
            if response.message_class != stun.Class.RESPONSE:
                self._notes.append(f"the server refused CHANGE-REQUEST ({response.error_code})")
                return None
            if test.source != test.expected_source:
                self._notes.append(
                    f"the answer to {test.name} came from {test.source}, not {test.expected_source}: "
                    "the server ignores CHANGE-REQUEST"
                )
                return None
            results.append(True)
        if results[0]:
            return Filtering.ENDPOINT_INDEPENDENT
        if results[1]:
            return Filtering.ADDRESS_DEPENDENT
        return Filtering.ADDRESS_AND_PORT_DEPENDENT

    def _mapping_result(self) -> NatBehaviour:
        assert self._mapping2 is not None and self._mapping3 is not None
        m1, m2, m3 = self._binding.mapped, self._mapping2.mapped, self._mapping3.mapped
        assert m1 is not None
        mapping: Mapping | None
        if m2 is None or m3 is None:
            self._notes.append("no answer from the server's alternate address; is it reachable?")
            mapping = None
        elif m2 == m1:
            mapping = Mapping.ENDPOINT_INDEPENDENT
        elif m3 == m2:
            mapping = Mapping.ADDRESS_DEPENDENT
        else:
            mapping = Mapping.ADDRESS_AND_PORT_DEPENDENT
        ports = tuple(m[1] for m in (m1, m2, m3) if m is not None)
        delta = None
        if mapping not in (None, Mapping.ENDPOINT_INDEPENDENT) and len(ports) == 3:
            # Each new mapping's port (ADM: tests I and II; APDM: I, II and III) steps the same
            # way by a little; other traffic (the hairpin test, other programs) may take ports
            # in between, so the steps need not be equal.
            distinct = [p for i, p in enumerate(ports) if i == 0 or p != ports[i - 1]]
            steps = [b - a for a, b in itertools.pairwise(distinct)]
            if steps and all(s * steps[-1] > 0 and abs(s) <= MAX_PORT_DELTA for s in steps):
                delta = steps[-1]
        hairpin = None if self._hairpin is None else self._hairpin.answered
        filtering = self._filtering()  # may add a note
        return NatBehaviour(
            udp=True,
            local=self._local,
            mapped=m1,
            other_address=self._other,
            mapping=mapping,
            filtering=filtering,
            hairpin=hairpin,
            mapped_ports=ports,
            port_delta=delta,
            notes=tuple(self._notes),
        )

    def _finish(self, behaviour: NatBehaviour | None) -> None:
        if behaviour is None:
            behaviour = NatBehaviour(
                udp=self._binding.answered,
                local=self._local,
                mapped=self._binding.mapped,
                notes=tuple(self._notes),
            )
        self._phase = _Phase.DONE
        for test in self._tests.values():
            if not test.finished:
                test.timed_out = True
        self._result = behaviour
        self._events.append(Classified(behaviour))
