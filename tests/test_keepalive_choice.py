"""Presence ``auto`` picks the cheaper transport: the cost model, the policy's ``prefer``, and the
tuning that decides once the UDP lifetime is learned (made-up time, no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from dvrlink.daemon.keepalive_cost import (
    TCP_KEEPALIVE_BYTES,
    UDP_KEEPALIVE_BYTES,
    compare,
    daily_bytes,
)
from dvrlink.daemon.nat_lifetime import IntervalChanged, LearnerState, MeasurementDone
from dvrlink.daemon.presence_transport import (
    PolicyConfig,
    SwitchRequested,
    Transport,
    TransportMode,
    TransportPolicy,
    UdpProbeRequested,
)
from dvrlink.daemon.presence_tuning import PresenceTuning
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
class FakeLearner:
    interval: float


@dataclass
class FakeProber:
    learner: FakeLearner


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
    class SettledLearner(FakeLearner):
        state = LearnerState.SETTLED

    client = FakeClient()
    tuning = PresenceTuning(client, lambda: 0.0, interval=25.0, prober=FakeProber(SettledLearner(200.0)))  # type: ignore[arg-type]
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
