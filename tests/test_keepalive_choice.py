"""Presence ``auto`` picks the cheaper transport: the cost model, the policy's ``prefer``, and the
tuning that decides once the UDP lifetime is learned (made-up time, no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from support.keepalive import FakeLearner, FakeProber

from dvrlink.daemon.keepalive_cost import (
    TCP_KEEPALIVE_BYTES,
    UDP_KEEPALIVE_BYTES,
    compare,
    daily_bytes,
)
from dvrlink.daemon.nat_lifetime import (
    IntervalChanged,
    LearnerConfig,
    LearnerState,
    LifetimeLearner,
    MeasurementDone,
)
from dvrlink.daemon.presence_transport import (
    PolicyConfig,
    SwitchRequested,
    Transport,
    TransportMode,
    TransportPolicy,
    UdpProbeRequested,
)
from dvrlink.daemon.presence_tuning import PresenceTuning
from dvrlink.protocol.presence_events import ReflexiveAddressChanged, Registered
from dvrlink.protocol.presence_report import DeviceReport


def test_daily_costs_and_the_cheaper_transport() -> None:
    assert daily_bytes(25.0, UDP_KEEPALIVE_BYTES) == pytest.approx(404_352)
    # A 30 s UDP lifetime (26.1 s learned) against a 300 s TCP keepalive: TCP, about 5 times cheaper.
    costs = compare(26.1, 300.0)
    assert costs.cheaper == "tcp"
    assert costs.tcp_per_day == pytest.approx(288 * TCP_KEEPALIVE_BYTES)
    assert costs.udp_per_day / costs.tcp_per_day > 4.5
    assert "kB/day" in costs.describe() and "MB/month" in costs.describe()
    # A long UDP lifetime keeps UDP: TCP would not be clearly cheaper.
    assert compare(300.0, 300.0).cheaper == "udp"


def test_prefer_moves_auto_to_tcp_without_udp_probes_and_a_failure_brings_it_back() -> None:
    policy = TransportPolicy(
        PolicyConfig(mode=TransportMode.AUTO, fallback_after_failures=1), jitter=lambda: 0.5
    )
    policy.start(0.0)
    policy.prefer(Transport.TCP, "cheaper", 10.0)
    assert policy.transport is Transport.TCP and policy.chosen_for_cost
    assert policy.next_event() == SwitchRequested(Transport.TCP, "cheaper")
    assert policy.get_timer() is None  # chosen for cost: UDP is not probed
    policy.handle_timer(10_000.0)
    assert not isinstance(policy.next_event(), UdpProbeRequested)
    # TCP stops answering: back to UDP by the fallback rule.
    policy.attempt_started(20.0)
    policy.attempt_failed(25.0)
    event = policy.next_event()
    assert isinstance(event, SwitchRequested) and event.transport is Transport.UDP
    assert not policy.chosen_for_cost


def test_prefer_is_ignored_unless_auto() -> None:
    policy = TransportPolicy(PolicyConfig(mode=TransportMode.UDP))
    policy.start(0.0)
    policy.prefer(Transport.TCP, "cheaper", 1.0)
    assert policy.transport is Transport.UDP and policy.next_event() is None


@dataclass
class FakeClient:
    reports: list[DeviceReport] = field(default_factory=list)
    intervals: list[float] = field(default_factory=list)

    def report(self, report: DeviceReport, now: float, *, send_now: bool = False) -> None:
        self.reports.append(report)

    def set_keepalive_interval(self, interval: float, now: float) -> None:
        self.intervals.append(interval)


@pytest.mark.parametrize(("udp_interval", "expected"), [(26.1, ["tcp"]), (270.0, [])])
def test_tuning_moves_to_tcp_once_the_udp_lifetime_shows_it_is_cheaper(
    udp_interval: float, expected: list[str]
) -> None:
    client = FakeClient()
    tuning = PresenceTuning(client, lambda: 0.0, interval=25.0, prober=FakeProber(FakeLearner(udp_interval)))  # type: ignore[arg-type]
    moved: list[str] = []
    tuning.tcp_interval = 300.0
    tuning.prefer_tcp = lambda reason: moved.append("tcp")
    tuning.on_learner_event(MeasurementDone(udp_interval / 0.9, None))
    assert moved == expected
    assert tuning.costs is not None and tuning.costs.udp_interval_s == udp_interval


def test_a_learned_tcp_lifetime_sets_the_tcp_interval_and_compares_again() -> None:
    client = FakeClient()
    tuning = PresenceTuning(
        client, lambda: 0.0, interval=25.0, prober=FakeProber(FakeLearner(200.0, LearnerState.SETTLED))
    )  # type: ignore[arg-type]
    given: list[float] = []
    moved: list[str] = []
    tuning.tcp_interval = 300.0
    tuning.set_tcp_interval = given.append
    tuning.prefer_tcp = moved.append
    # UDP every 200 s (51 kB/day) against TCP every 300 s (76 kB/day): UDP stays.
    tuning._choose_transport()
    assert moved == []
    # The NAT keeps idle TCP connections 30 minutes: TCP every 1620 s wins.
    tuning.on_tcp_learner_event(IntervalChanged(1620.0, 1800.0, None, "learned"))
    tuning.on_tcp_learner_event(MeasurementDone(1800.0, None))
    assert given == [1620.0] and tuning.tcp_interval == 1620.0
    assert len(moved) == 1 and "TCP every 1620 s" in moved[0]


@dataclass(eq=False)
class RecordingProber:
    """Stands in for ``NatProber`` (which would open sockets): a real learner, calls recorded."""

    learner: LifetimeLearner
    calls: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> None:
        self.calls.append("stop")

    def path_changed(self, reason: str) -> None:
        self.calls.append("path_changed")

    def broker_answered(self) -> None:
        self.calls.append("broker_answered")

    def session_lost(self) -> None:
        self.calls.append("session_lost")


@pytest.mark.parametrize(
    ("local", "seen", "learns"),
    [
        (("127.0.0.1", 40000), ("127.0.0.1", 40000), False),  # loopback: no NAT
        (("198.51.100.7", 40000), ("198.51.100.7", 40000), False),  # a public address
        (("::ffff:198.51.100.7", 40000), ("198.51.100.7", 40000), False),
        (("10.0.0.2", 40000), ("198.51.100.7", 61000), True),  # behind a NAT
    ],
)
def test_a_device_seen_at_its_own_address_has_no_nat_to_learn(
    local: tuple[str, int], seen: tuple[str, int], learns: bool
) -> None:
    """The issue's loopback run learned "33 s" and moved to TCP. With no NAT between device and
    broker there is no mapping lifetime: no probes, and no move to TCP on that account."""
    client = FakeClient()
    udp = RecordingProber(LifetimeLearner(LearnerConfig(), 25.0))
    tcp = RecordingProber(LifetimeLearner(LearnerConfig(), 300.0))
    tuning = PresenceTuning(client, lambda: 0.0, interval=25.0, prober=udp)  # type: ignore[arg-type]
    tuning.tcp_prober = tcp  # type: ignore[assignment]
    tuning.tcp_interval = 300.0
    moved: list[str] = []
    tuning.prefer_tcp = moved.append
    tuning.local_address = lambda: local
    tuning.on_event(Registered(1, seen, 25.0))
    started = [name for name, prober in (("udp", udp), ("tcp", tcp)) if "start" in prober.calls]
    if learns:
        assert started == ["udp", "tcp"], started
        return
    assert started == [], f"a device seen at its own address {seen} starts learning: {started}"
    assert tuning.status()["keepalive_learning"] == "no-nat", tuning.status()
    # Even a measurement that somehow ended short must not move presence to TCP.
    tuning.on_learner_event(MeasurementDone(33.1, 33.6))
    assert moved == []
    # A new reflexive address: the registration that follows decides, not the change itself.
    tuning.on_event(ReflexiveAddressChanged(seen, (seen[0], seen[1] + 1)))
    assert "path_changed" not in udp.calls + tcp.calls and "start" not in udp.calls + tcp.calls
