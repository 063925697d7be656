"""The presence transport policy with made-up time: when auto falls back to TCP, probes UDP and returns."""

from __future__ import annotations

import pytest

from dvrlink.daemon.presence_transport import (
    PolicyConfig,
    SwitchRequested,
    Transport,
    TransportMode,
    TransportPolicy,
    UdpProbeRequested,
)


def policy(mode: TransportMode = TransportMode.AUTO, jitter: float = 0.5, **kw: float) -> TransportPolicy:
    config = PolicyConfig(
        mode=mode, fallback_after_failures=2, fallback_after_s=30.0, udp_probe_interval_s=600.0, **kw
    )  # type: ignore[arg-type]
    p = TransportPolicy(config, jitter=lambda: jitter)
    p.start(0.0)
    return p


def events(p: TransportPolicy) -> list[object]:
    out = []
    while (e := p.next_event()) is not None:
        out.append(e)
    return out


def fail_attempt(p: TransportPolicy, start: float, end: float) -> None:
    p.attempt_started(start)
    p.attempt_failed(end)


def test_two_unanswered_registrations_move_auto_to_tcp() -> None:
    p = policy()
    assert p.transport is Transport.UDP and p.get_timer() is None
    fail_attempt(p, 0.0, 9.0)
    assert events(p) == [] and p.transport is Transport.UDP
    fail_attempt(p, 10.0, 19.0)
    (event,) = events(p)
    assert isinstance(event, SwitchRequested) and event.transport is Transport.TCP
    assert "2 registration attempts over udp got no reply" in event.reason
    assert event.fallback  # `dvrlinkd status` says UDP got no answer
    assert p.transport is Transport.TCP


def test_an_answer_in_between_resets_the_count() -> None:
    p = policy()
    fail_attempt(p, 0.0, 9.0)
    p.attempt_started(10.0)
    p.heard(10.5)  # a COOKIE, or a REFUSED: the broker is reachable over UDP
    p.attempt_failed(20.0)
    fail_attempt(p, 21.0, 30.0)
    assert events(p) == [] and p.transport is Transport.UDP


def test_a_refused_registration_in_backoff_is_no_reason_to_switch() -> None:
    p = policy()
    for start in (0.0, 400.0, 800.0):
        p.attempt_started(start)
        p.heard(start + 0.2)
        p.attempt_failed(start + 0.2)
        p.handle_timer(start + 399.0)
    assert events(p) == [] and p.transport is Transport.UDP


def test_no_reply_within_the_bound_switches_even_before_n_failures() -> None:
    p = policy()
    p.attempt_started(5.0)
    assert p.get_timer() == 35.0
    p.handle_timer(34.9)
    assert events(p) == []
    p.handle_timer(35.0)
    (event,) = events(p)
    assert isinstance(event, SwitchRequested) and event.transport is Transport.TCP
    assert "no reply over udp for 30 s" in event.reason


def test_on_tcp_udp_is_probed_on_a_jittered_interval_and_a_success_returns() -> None:
    p = policy(jitter=0.0)  # factor 0.8
    fail_attempt(p, 0.0, 9.0)
    fail_attempt(p, 10.0, 19.0)
    events(p)
    p.registered(20.0)  # online over TCP
    assert p.get_timer() == pytest.approx(19.0 + 480.0)
    p.handle_timer(499.0)
    assert events(p) == [UdpProbeRequested()] and p.probing and p.get_timer() is None
    p.probe_finished(False, 504.0)
    assert events(p) == [] and p.transport is Transport.TCP
    assert p.get_timer() == pytest.approx(504.0 + 480.0)
    p.handle_timer(984.0)
    assert events(p) == [UdpProbeRequested()]
    p.probe_finished(True, 985.0)
    (event,) = events(p)
    assert isinstance(event, SwitchRequested) and event.transport is Transport.UDP
    assert not event.fallback  # back because UDP answers: nothing to explain in status
    assert p.transport is Transport.UDP and p.get_timer() is None


def test_the_probe_interval_stays_within_its_jitter() -> None:
    for jitter, factor in ((0.0, 0.8), (0.999999, 1.2)):
        p = policy(jitter=jitter)
        fail_attempt(p, 0.0, 1.0)
        fail_attempt(p, 1.0, 2.0)
        assert p.get_timer() == pytest.approx(2.0 + 600.0 * factor, abs=0.01)


def test_if_tcp_fails_too_auto_goes_back_to_udp() -> None:
    p = policy()
    fail_attempt(p, 0.0, 9.0)
    fail_attempt(p, 10.0, 19.0)
    events(p)
    fail_attempt(p, 20.0, 29.0)
    fail_attempt(p, 30.0, 39.0)
    (event,) = events(p)
    assert isinstance(event, SwitchRequested) and event.transport is Transport.UDP


@pytest.mark.parametrize("mode", [TransportMode.UDP, TransportMode.TCP])
def test_fixed_modes_never_switch_or_probe(mode: TransportMode) -> None:
    p = policy(mode)
    assert p.transport.value == mode.value
    for start in range(0, 200, 10):
        fail_attempt(p, float(start), start + 9.0)
        p.handle_timer(start + 9.5)
    assert events(p) == [] and p.get_timer() is None


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="fallback_after_failures"):
        PolicyConfig(fallback_after_failures=0)
    with pytest.raises(ValueError, match="jitter"):
        PolicyConfig(udp_probe_jitter=1.0)
