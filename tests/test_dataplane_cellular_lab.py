"""The data plane up a cellular uplink (NAT lab, needs root): a bulk forward must neither fill the
uplink's queue nor starve the presence keepalives that share it (issue 14, "Congestion and
fairness").

One lab and one broker (the matrix rig) for the module; per case, the device behind a
port-restricted cone NAT with a cellular profile on its uplink, the viewer public on LAN, and the
real ``dvrlinkd`` (a short fixed keepalive, learning off) and ``dvrlink forward``. The device's service
sends as fast as its socket takes bytes, far more than the uplink carries; the viewer drains the
forward for a fixed time. Meanwhile ``hil.matrix.congestion`` samples the root qdisc of the
device NAT's ``wan0`` (the ``up`` direction ``Lab.set_profile`` configures: netem, or tbf on a
kernel without netem) every 0.2 s, and the daemon's status file (presence state, registration, the
last acknowledged keepalive and its round trip).

What a queue-filling sender would show, and why the thresholds are where they are:
- A loss-based sender (Reno/CUBIC) on a drop-tail queue without AQM grows until the queue
  overflows, so its backlog sits near the limit (100 packets; tbf's 150 kB) and it drops
  packets every cycle.
- LEDBAT aims for 50 ms of queuing (``DataplaneConfig.target_delay_s``). On 3G's 1 Mbit/s that is
  6.25 kB, about 5 datagrams of 1.2 kB; netem's delay line adds 75 ms of the link in flight,
  about 8 more. On GPRS's 40 kbit/s the floor is the minimum window of 2 datagrams.
- The limits, on the steady state (the first 3 s after the first byte are start-up, not judged):
  - the median backlog under half the queue's limit (50 packets): 4 to 10 times what LEDBAT
    should give on 3G, yet a queue-filling sender cannot pass it;
  - the median backlog in bytes under 4 times LEDBAT's standing queue (the larger of the target
    at the link's rate and the minimum window), plus the delay line on netem. At 40 kbit/s the
    queue's 150 kB take 30 s to fill, so on GPRS this is the bound that catches a filling sender
    within the transfer;
  - drops: at most 1 % of the packets the qdisc sent (LEDBAT should drop none; 1 % allows a
    start-up overshoot), plus, on netem, the profile's random loss (netem counts it as drops)
    with a margin of 4 standard deviations.

With LEDBAT's target replaced by 30 s (a loss-based sender; a ``sitecustomize`` on PYTHONPATH in
a run by hand), the 3G case saw a median backlog of 67 packets and 126 drops of 1527 packets, and
on GPRS presence fell to registering and the broker listed the device offline: both cases fail.

Keepalives: the daemon's status file is rewritten on every acknowledged keepalive
(``last_keepalive``, ``rtt``). A keepalive that goes unanswered after its retries sends presence
back to registering, which changes ``registered_at`` and ``session_id``; so the device stayed
online throughout, under one registration, with keepalives acknowledged during the transfer, means
every keepalive it sent was answered. The broker's side is ``dvrlink devices --json`` (online,
last seen) at the end. The round trips are printed, not asserted.

Throughput is bounded only by what cannot flake: more than nothing, and no more than the uplink's
rate over the time the viewer read (plus tbf's bucket), since every byte crossed that link.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvrlink.protocol.dataplane import DataplaneConfig
from dvrlink.protocol.dataplane_congestion import MINIMUM_WINDOW_PACKETS
from hil import netlab
from hil.matrix import MatrixRig, matrix_rig
from hil.matrix.congestion import (
    CongestionRecord,
    QdiscSample,
    TransferPlan,
    parse_qdisc,
    plan_for,
    run_transfer,
)

REASON = netlab.unavailable_reason()

PLANS = [plan_for("3g"), plan_for("gprs")]
BURST_ALLOWANCE = 16_000
"""Bytes the link may carry beyond its rate: tbf's bucket (2.5 kB on 3G) with room to spare."""
WIRE_OVERHEAD = 48
"""Bytes around a data plane datagram on the wire: IPv4 and UDP, TURN's channel header, slack."""
STANDING_QUEUE_FACTOR = 4


def standing_queue_bound(record: CongestionRecord) -> float:
    """Bytes of backlog a working LEDBAT stays under, with a margin of ``STANDING_QUEUE_FACTOR``:
    the larger of its target delay at the link's rate and its minimum window, plus what netem
    holds as the link's delay line (tbf, without netem, has none)."""
    plane = DataplaneConfig("device")
    rate = record.uplink_bytes_per_s
    ledbat = max(plane.target_delay_s * rate, MINIMUM_WINDOW_PACKETS * (plane.max_datagram + WIRE_OVERHEAD))
    delay_line = (
        rate * netlab.PROFILES[record.profile].delay_ms / 1000 if record.qdisc_kind == "netem" else 0.0
    )
    return STANDING_QUEUE_FACTOR * ledbat + delay_line


def drops_allowed(record: CongestionRecord) -> int:
    """1 % of the packets sent, plus netem's random loss (counted as drops) and 4 deviations."""
    sent = record.qdisc_sent_packets
    allowed = max(1, sent // 100)
    if record.qdisc_kind == "netem":
        expected = sent * netlab.PROFILES[record.profile].loss_percent / 100
        allowed += math.ceil(expected + 4 * math.sqrt(expected))
    return allowed


# tc -s -j qdisc show dev a0 (iproute2 6.x) with a 1 Mbit/s tbf under a UDP flood, 2026-12-06.
TBF_UNDER_LOAD = (
    '[{"kind":"tbf","handle":"818f:","root":true,"refcnt":3,"options":{"rate":125000,"burst":2500,'
    '"lat":1180000},"bytes":99360,"packets":80,"drops":0,"overlimits":298,"requeues":0,'
    '"backlog":77180,"qlen":64}]'
)


def test_the_root_qdisc_counters_are_read_from_tc_json() -> None:
    sample = parse_qdisc(TBF_UNDER_LOAD, at=12.5)
    assert sample == QdiscSample(
        at=12.5,
        kind="tbf",
        backlog_bytes=77180,
        backlog_packets=64,
        sent_bytes=99360,
        sent_packets=80,
        drops=0,
    )
    for bad in ("", "{}", "[]", '[{"kind":"tbf","root":false}]', '[{"root":true}]', "Error: no such device"):
        with pytest.raises(ValueError, match="tc"):
            parse_qdisc(bad, at=0.0)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MatrixRig]:
    with matrix_rig(tmp_path_factory.mktemp("cellular")) as built:
        yield built


def judge_queue(record: CongestionRecord) -> None:
    """The uplink's queue stayed well under its limit in the steady state, with few drops."""
    seen = record.line()
    assert record.qdisc_kind in ("netem", "tbf"), f"no profile on the device's uplink: {seen}"
    assert len(record.backlog_packets) >= 10, f"too few steady-state samples of the uplink's qdisc: {seen}"
    half = record.queue_limit_packets / 2
    assert record.median_backlog < half, (
        f"the data plane keeps the {record.profile} uplink's queue full: median backlog "
        f"{record.median_backlog:.0f} packets, at least half its limit of {record.queue_limit_packets}; "
        f"samples {record.backlog_packets}: {seen}"
    )
    median_bytes = statistics.median(record.backlog_bytes)
    bound = standing_queue_bound(record)
    assert median_bytes < bound, (
        f"the data plane keeps a standing queue on the {record.profile} uplink: median backlog "
        f"{median_bytes:.0f} bytes, LEDBAT should stay under {bound:.0f}; "
        f"samples {record.backlog_bytes}: {seen}"
    )
    assert record.qdisc_sent_packets > 0, f"the uplink's qdisc sent nothing: {seen}"
    allowed = drops_allowed(record)
    assert record.qdisc_drops <= allowed, (
        f"the uplink's queue overflowed: {record.qdisc_drops} drops of {record.qdisc_sent_packets} "
        f"packets (at most {allowed}): {seen}"
    )


def judge_presence(record: CongestionRecord) -> None:
    """The device stayed online under one registration, its keepalives were acknowledged during
    the transfer, and the broker saw it then."""
    seen = record.line()
    assert record.states == ["online"], f"presence left online during the transfer: {seen}"
    assert record.registrations == 1, (
        f"presence registered again during the transfer (a keepalive went unanswered): {seen}"
    )
    expected = record.transfer_s / record.keepalive_s
    assert record.keepalive_acks >= 2, (
        f"{record.keepalive_acks} keepalives acknowledged in {record.transfer_s:.1f} s of transfer "
        f"(one every {record.keepalive_s:g} s: about {expected:.0f} expected): {seen}"
    )
    assert record.broker_online, (
        f"the broker lists the device offline after the transfer: {record.notes}: {seen}"
    )
    assert record.broker_last_seen is not None and record.broker_last_seen >= record.transfer_started_wall, (
        f"the broker last heard from the device at {record.broker_last_seen}, before the transfer "
        f"began at {record.transfer_started_wall:.3f}: {seen}"
    )


def judge_transfer(record: CongestionRecord) -> None:
    """The forward rode the data plane and carried bytes, no faster than the uplink can."""
    seen = record.line()
    assert record.plane == "data plane", f"the forward did not ride the data plane: {seen}"
    assert record.received > 0, f"nothing came through the forward: {seen}"
    ceiling = record.uplink_bytes_per_s * record.transfer_s + BURST_ALLOWANCE
    assert record.received <= ceiling, (
        f"{record.received} bytes in {record.transfer_s:.1f} s is more than the {record.profile} "
        f"uplink carries ({ceiling:.0f}): the transfer did not cross the shaped link: {seen}"
    )


# slow: a lab, a broker, a daemon and a 20 s transfer per case, about 50 s in all
@pytest.mark.slow
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.profile)
def test_a_bulk_forward_neither_fills_the_uplink_queue_nor_starves_the_keepalives(
    rig: MatrixRig, plan: TransferPlan, tmp_path: Path
) -> None:
    try:
        record = run_transfer(rig, plan, tmp_path / plan.profile)
    finally:  # without netem the delay is a process the lab runs (its wire): stop it with the case
        rig.lab.set_profile("device", "lan")
    print(f"\n{record.line()}")
    assert record.error is None, f"{record.error}\n{record.line()}"
    judge_transfer(record)
    judge_queue(record)
    judge_presence(record)
