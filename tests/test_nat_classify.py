"""RFC 5780 classifier core against simulated NATs and the server core, on made-up time.

The simulated NAT is a small model of RFC 4787 behaviour (mapping keyed by endpoint, address or
nothing; filtering by endpoint, address or nothing; optional hairpinning; sequential or
scattered port allocation). The real NATs are in the lab (tests/test_netlab.py).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest

from dvrlink.protocol.nat_classify import (
    Classified,
    ClassifierConfig,
    Filtering,
    Mapping,
    NatBehaviour,
    NatClassifier,
    Socket,
    Transmit,
)
from dvrlink.protocol.stun import binding_response
from dvrlink.protocol.stun_behaviour import Origin, Rfc5780Addresses, answer_binding

Address = tuple[str, int]
SERVER = Rfc5780Addresses("203.0.113.10", 3478, "203.0.113.11", 3480)
LOCAL_IP = "192.168.1.2"
PORTS = {Socket.MAIN: 40000, Socket.HAIRPIN: 40001}
EXTERNAL_IP = "198.51.100.2"


@dataclass
class SimNat:
    """One NAT with one inner host (LOCAL_IP)."""

    mapping: Mapping | None  # None: no NAT at all
    filtering: Filtering = Filtering.ENDPOINT_INDEPENDENT
    hairpin: bool = False
    sequential: bool = False
    udp: bool = True
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    _by_key: dict[tuple[object, ...], int] = field(default_factory=dict)
    _inner: dict[int, int] = field(default_factory=dict)  # external port -> inner port
    _sent_to: dict[int, set[Address]] = field(default_factory=dict)
    _next: int = 50000

    def outbound(self, inner_port: int, destination: Address) -> Address:
        if self.mapping is None:
            return (LOCAL_IP, inner_port)
        key: tuple[object, ...] = {
            Mapping.ENDPOINT_INDEPENDENT: (inner_port,),
            Mapping.ADDRESS_DEPENDENT: (inner_port, destination[0]),
            Mapping.ADDRESS_AND_PORT_DEPENDENT: (inner_port, destination),
        }[self.mapping]
        if key not in self._by_key:
            if self.sequential:
                port = self._next
                self._next += 1
            else:
                port = self.rng.randrange(20000, 60000)
            self._by_key[key] = port
            self._inner[port] = inner_port
        port = self._by_key[key]
        self._sent_to.setdefault(port, set()).add(destination)
        return (EXTERNAL_IP, port)

    def inbound(self, source: Address, external_port: int) -> int | None:
        if self.mapping is None:
            return external_port
        inner = self._inner.get(external_port)
        if inner is None:
            return None
        sent = self._sent_to.get(external_port, set())
        allowed = {
            Filtering.ENDPOINT_INDEPENDENT: True,
            Filtering.ADDRESS_DEPENDENT: any(d[0] == source[0] for d in sent),
            Filtering.ADDRESS_AND_PORT_DEPENDENT: source in sent,
        }[self.filtering]
        return inner if allowed else None


@dataclass
class Net:
    """Moves datagrams between the classifier, one NAT and the RFC 5780 server, in made-up time."""

    nat: SimNat
    server: str = "rfc5780"  # or "plain" (no alternate), "ignores-change"
    lose_first: int = 0  # drop this many of the first client datagrams
    now: float = 0.0
    sent: int = 0

    def run(self, config: ClassifierConfig | None = None) -> NatBehaviour:
        config = config or ClassifierConfig(server=SERVER.address(Origin.PRIMARY))
        counter = itertools.count()
        core = NatClassifier(
            config, (LOCAL_IP, PORTS[Socket.MAIN]), self.now, rng=lambda n: next(counter).to_bytes(n, "big")
        )
        for _ in range(1000):
            self._deliver(core)
            if core.done:
                break
            deadline = core.get_timer()
            assert deadline is not None and deadline >= self.now
            self.now = deadline
            core.handle_timer(self.now)
        else:
            raise AssertionError("the classifier never finished")
        event = core.next_event()
        assert isinstance(event, Classified) and core.next_event() is None
        assert core.get_timer() is None
        assert event.behaviour == core.result
        return event.behaviour

    def _deliver(self, core: NatClassifier) -> None:
        # Answers may queue more requests (the next phase) at once: deliver until quiet.
        while out := core.datagrams_to_send():
            for transmit in out:
                self._one(core, transmit)

    def _one(self, core: NatClassifier, transmit: Transmit) -> None:
        self.sent += 1
        if self.sent <= self.lose_first or not self.nat.udp:
            return
        if transmit.destination[0] == EXTERNAL_IP:  # towards our own NAT: hairpin or nothing
            if self.nat.hairpin:
                source = self.nat.outbound(PORTS[transmit.socket], transmit.destination)
                inner = self.nat._inner.get(transmit.destination[1])
                if inner is not None:
                    sock = next(s for s, p in PORTS.items() if p == inner)
                    core.receive_datagram(sock, transmit.data, source, self.now)
            return
        source = self.nat.outbound(PORTS[transmit.socket], transmit.destination)
        origin = next(o for o, a in SERVER.all().items() if a == transmit.destination)
        if self.server == "plain":
            if origin is not Origin.PRIMARY:
                return
            data = binding_response(transmit.data, source)
            replies = [] if data is None else [(data, SERVER.address(Origin.PRIMARY))]
        else:
            reply = answer_binding(transmit.data, source, origin, SERVER)
            assert reply is not None
            reply_origin = origin if self.server == "ignores-change" else reply.origin
            replies = [(reply.data, SERVER.address(reply_origin))]
        for data, reply_source in replies:
            inner = self.nat.inbound(reply_source, source[1])
            if inner is not None:
                sock = next(s for s, p in PORTS.items() if p == inner)
                core.receive_datagram(sock, data, reply_source, self.now)


@pytest.mark.parametrize("mapping", list(Mapping))
@pytest.mark.parametrize("filtering", list(Filtering))
def test_every_mapping_and_filtering_behaviour_is_found(mapping: Mapping, filtering: Filtering) -> None:
    result = Net(SimNat(mapping, filtering)).run()
    assert (result.mapping, result.filtering) == (mapping, filtering)
    assert result.udp and result.nat and result.hairpin is False
    assert result.mapped is not None and result.mapped[0] == EXTERNAL_IP
    assert result.other_address == SERVER.address(Origin.ALTERNATE_BOTH)
    assert result.port_delta is None


@pytest.mark.parametrize(
    ("nat", "name"),
    [
        (SimNat(None), "public"),
        (SimNat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT), "full_cone"),
        (SimNat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_DEPENDENT), "restricted_cone"),
        (SimNat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT), "port_restricted_cone"),
        (SimNat(Mapping.ADDRESS_AND_PORT_DEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT), "symmetric"),
        (SimNat(Mapping.ADDRESS_DEPENDENT, Filtering.ADDRESS_DEPENDENT), "symmetric"),
        (SimNat(Mapping.ADDRESS_AND_PORT_DEPENDENT, sequential=True), "sequential_symmetric"),
        (SimNat(Mapping.ENDPOINT_INDEPENDENT, udp=False), "udp_blocked"),
    ],
)
def test_lab_names(nat: SimNat, name: str) -> None:
    result = Net(nat).run()
    assert result.name == name, result.describe()
    assert name.split("_", maxsplit=1)[0] in result.describe()


def test_no_nat_is_seen_and_hairpin_is_not_tested() -> None:
    result = Net(SimNat(None)).run()
    assert not result.nat and result.mapped == (LOCAL_IP, 40000) and result.hairpin is None
    assert result.mapping is Mapping.ENDPOINT_INDEPENDENT


def test_sequential_allocation_gives_the_port_step() -> None:
    result = Net(SimNat(Mapping.ADDRESS_AND_PORT_DEPENDENT, sequential=True)).run()
    assert result.port_delta == 1 and result.mapped_ports == (50000, 50001, 50002)
    hairpinning = SimNat(Mapping.ADDRESS_AND_PORT_DEPENDENT, hairpin=True, sequential=True)
    result = Net(hairpinning).run()  # the hairpin test takes a port between tests I and II
    assert result.port_delta == 1 and result.mapped_ports == (50000, 50002, 50003)
    result = Net(SimNat(Mapping.ADDRESS_DEPENDENT, sequential=True)).run()
    assert result.port_delta == 1 and result.mapping is Mapping.ADDRESS_DEPENDENT


def test_hairpinning_is_found() -> None:
    result = Net(
        SimNat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ADDRESS_AND_PORT_DEPENDENT, hairpin=True)
    ).run()
    assert result.hairpin is True and result.name == "port_restricted_cone"
    config = ClassifierConfig(server=SERVER.address(Origin.PRIMARY), hairpin=False)
    assert Net(SimNat(Mapping.ENDPOINT_INDEPENDENT, hairpin=True)).run(config).hairpin is None


def test_udp_blocked_takes_one_timeout_and_retransmits() -> None:
    net = Net(SimNat(Mapping.ENDPOINT_INDEPENDENT, udp=False))
    result = net.run(
        ClassifierConfig(server=SERVER.address(Origin.PRIMARY), retransmit_interval=0.5, test_timeout=2.0)
    )
    assert not result.udp and result.name == "udp_blocked" and "TCP" in result.describe()
    assert net.now == pytest.approx(2.0)
    assert net.sent == 4  # at 0, 0.5, 1.0, 1.5


def test_lost_requests_are_retransmitted() -> None:
    result = Net(SimNat(Mapping.ENDPOINT_INDEPENDENT, Filtering.ENDPOINT_INDEPENDENT), lose_first=1).run()
    assert result.name == "full_cone"


def test_a_server_without_rfc5780_says_what_to_configure() -> None:
    result = Net(SimNat(Mapping.ENDPOINT_INDEPENDENT), server="plain").run()
    assert result.udp and result.mapping is None and result.name == "unknown"
    assert "stun_alternate_host" in result.describe()


def test_a_server_that_ignores_change_request_is_not_believed() -> None:
    result = Net(SimNat(Mapping.ENDPOINT_INDEPENDENT), server="ignores-change").run()
    assert result.filtering is None and result.name == "unknown"
    assert "ignores CHANGE-REQUEST" in result.describe()


def test_junk_and_strangers_are_ignored() -> None:
    core = NatClassifier(ClassifierConfig(server=SERVER.address(Origin.PRIMARY)), (LOCAL_IP, 40000), 0.0)
    (first,) = core.datagrams_to_send()
    for junk in (b"", b"\x00" * 20, first.data[:-1], first.data):  # the request itself is no answer
        core.receive_datagram(Socket.MAIN, junk, SERVER.address(Origin.PRIMARY), 0.1)
    reply = answer_binding(first.data, (EXTERNAL_IP, 1), Origin.PRIMARY, SERVER)
    assert reply is not None
    core.receive_datagram(Socket.HAIRPIN, reply.data, SERVER.address(Origin.PRIMARY), 0.1)  # wrong socket
    assert not core.done and core.datagrams_to_send() == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="retransmit_interval"):
        ClassifierConfig(server=("203.0.113.10", 3478), retransmit_interval=3, test_timeout=1)
    with pytest.raises(ValueError, match="bind the MAIN socket"):
        NatClassifier(ClassifierConfig(server=("203.0.113.10", 3478)), ("0.0.0.0", 0), 0.0)
