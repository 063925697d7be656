"""Smoke runs of the benchmarks: each ``python -m bench.<name> --quick`` exits 0 and prints its figures.

Nothing here judges speed or memory: the figures of a quick run mean little and the machine may
be busy. The tests only check that each benchmark ran and printed plausible positive numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 120.0


def run_bench(name: str) -> str:
    """Run ``python -m bench.<name> --quick`` from the repository root; return its stdout."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}", "--quick"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"bench.{name} --quick did not finish within {RUN_TIMEOUT_S:g} s:\n{exc.stdout!r}")
    assert done.returncode == 0, (
        f"bench.{name} --quick exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done.stdout


def numbers(pattern: str, text: str) -> list[float]:
    """The first group of every match of ``pattern`` in ``text``, as numbers (commas dropped)."""
    found = [float(m.group(1).replace(",", "")) for m in re.finditer(pattern, text, re.MULTILINE)]
    assert found, f"no line matches {pattern!r} in:\n{text}"
    return found


def test_cellular_cost_prints_bytes_per_day() -> None:
    out = run_bench("cellular_cost")
    rows = re.findall(r"^\s+(\d+)s\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s", out, re.MULTILINE)
    assert [int(row[0]) for row in rows] == [25, 60, 120], out
    per_day = [int(row[2].replace(",", "")) for row in rows]
    assert all(value > 0 for value in per_day), out
    assert per_day == sorted(per_day, reverse=True), "a longer keepalive interval must cost fewer bytes"
    assert numbers(r"keepalive round trip: (\d+) B", out)[0] > 0


def test_presence_profile_prints_costs() -> None:
    out = run_bench("presence_profile")
    assert numbers(r"VmRSS growth: ([\d,]+) B per session", out)[0] > 0
    assert numbers(r"([\d.]+) µs per keepalive", out)[0] > 0
    assert numbers(r"REGISTERED ([\d.]+) µs", out)[0] > 0


@pytest.fixture(scope="module")
def presence_load_output() -> str:
    return run_bench("presence_load")


@pytest.mark.slow
def test_presence_load_prints_keepalives_and_memory(presence_load_output: str) -> None:
    out = presence_load_output
    assert len(numbers(r"keepalives per core: ([\d,]+)/s", out)) == 2, "one figure per fleet size"
    assert all(rate > 0 for rate in numbers(r"keepalives per core: ([\d,]+)/s", out))
    assert all(size > 0 for size in numbers(r"memory per online device: ([\d,]+) B", out))
    assert all(rate > 0 for rate in numbers(r"registrations: ([\d,]+)/s", out))
    assert numbers(r"dvrlink-broker STUN responder: ([\d,]+)/s", out)[0] > 0
    assert set(numbers(r"checked: [\d,]+ ok, ([\d,]+) bad", out)) == {0}, "a sampled answer did not check out"


@pytest.mark.slow
def test_presence_load_compares_with_coturn(presence_load_output: str) -> None:
    if shutil.which("turnserver") is None:
        assert "coturn: not installed" in presence_load_output
        pytest.skip("turnserver (Debian package coturn) is not installed: no STUN comparison")
    out = presence_load_output
    assert numbers(r"coturn \(stun-only, 1 relay thread\): ([\d,]+)/s", out)[0] > 0
    assert numbers(r"ratio to coturn STUN per core: broker keepalives ([\d.]+)", out)[0] > 0


@pytest.mark.slow
def test_daemon_footprint_prints_rss_and_cpu() -> None:
    out = run_bench("daemon_footprint")
    assert numbers(r"VmRSS ([\d.]+) MB at the start", out)[0] > 0
    assert numbers(r"CPU \(utime\+stime, 10 ms ticks\) ([\d.]+) s", out)[0] >= 0
    assert "registered" in out
    for phase in ("before any session", "during the session, max", "after the session ended"):
        assert numbers(rf"VmRSS {phase}: ([\d.]+) MB", out)[0] > 0, out


def test_daemon_memory_prints_each_layer() -> None:
    out = run_bench("daemon_memory")
    layers = ("interpreter", "asyncio", "cryptography", "construct", "dvrlink idle daemon", "session stack")
    for layer in layers:
        row = re.search(rf"^  {layer}.*?\s([\d.]+)\s+[-\d.]+\s+[-\d.]+\s+[-\d.]+\s+(\d+)$", out, re.M)
        assert row is not None, f"no row for {layer}:\n{out}"
        assert float(row.group(1)) > 0 and int(row.group(2)) > 0, row.group(0)
    assert numbers(r"idle daemon's imports in all: VmRSS ([\d.]+) MB", out)[0] > 0


@pytest.mark.slow
def test_session_setup_prints_median_and_p95() -> None:
    out = run_bench("session_setup")
    for mode in ("relay", "direct"):
        first = numbers(rf"^  {mode}-only \(\w+ path\), \d+ sessions: first byte median ([\d,]+) ms", out)
        assert first[0] > 0
        assert numbers(rf"^  {mode}-only .* p95 ([\d,]+) ms", out)[0] > 0
        assert numbers(rf"^  {mode}-only via the in-process viewer API .* median ([\d.]+) ms", out)[0] > 0


@pytest.mark.slow
def test_tunnel_throughput_prints_rates_and_ratios() -> None:
    out = run_bench("tunnel_throughput")
    assert numbers(r"plain loopback TCP copy: ([\d,]+) Mbit/s", out)[0] > 0
    for mode in ("direct", "relay"):
        assert all(rate > 0 for rate in numbers(rf"^  {mode} \(\w+ path\) \S+: ([\d,.]+) Mbit/s", out))
        assert all(ratio > 0 for ratio in numbers(rf"^  {mode} .* ratio to plain TCP ([\d.]+)", out))
    assert re.search(r"direct throughput: [\d,.]+ Mbit/s .*(PASS|FAIL)", out), out


@pytest.mark.slow
def test_relay_pps_prints_rate_and_coturn_ratio() -> None:
    out = run_bench("relay_pps")
    assert numbers(r"dvrlink-broker TURN: ([\d,]+) packets/s", out)[0] > 0
    if shutil.which("turnserver") is None:
        assert "coturn: not installed" in out
        pytest.skip("turnserver (Debian package coturn) is not installed: no comparison")
    assert numbers(r"coturn .*: ([\d,]+) packets/s", out)[0] > 0
    assert numbers(r"ratio to coturn per core: ([\d.]+)", out)[0] > 0


@pytest.mark.slow
def test_daemon_streaming_prints_rss_and_cpu() -> None:
    out = run_bench("daemon_streaming")
    rates = numbers(r"\S+: ([\d.]+) Mbit/s arrived", out)
    assert len(rates) == 4 and all(rate > 0 for rate in rates), out
    assert all(cpu >= 0 for cpu in numbers(r"dvrlinkd CPU ([\d.]+) % of a core", out))
    assert all(rss > 0 for rss in numbers(r"max ([\d.]+) MB \(\d+ samples\)", out))


def test_modem_online_prints_time_to_online_and_recoveries() -> None:
    out = run_bench("modem_online")
    assert numbers(r"median ([\d.]+) ms", out)[0] > 0
    assert "firmware hang" in out and "ladder: resync" in out
    assert numbers(r"idle .*: ([\d.]+) % of a core", out)[0] >= 0


def test_login_burst_prints_outcomes_and_rss() -> None:
    out = run_bench("login_burst")
    assert numbers(r"'401': (\d+)", out)[0] > 0, out
    assert numbers(r"RSS growth over \d+ burst\(s\): ([\d.-]+) MB", out), out


@pytest.mark.slow
def test_data_plane_prints_each_figure_with_a_verdict() -> None:
    out = run_bench("data_plane")
    assert (
        numbers(
            r"openssl speed \(openssl speed -elapsed .*: [\d,.]+ MB/s elapsed, ([\d,.]+) MB per CPU", out
        )[0]
        > 0
    )
    assert numbers(r"= ([\d,.]+) MB forwarded per CPU-second", out)[0] > 0
    assert numbers(r"^  ratio dvrlinkd / openssl per CPU-second: 1/([\d,]+)", out)[0] >= 1
    assert numbers(r"dvrlinkd ([\d.]+) % of a core", out)[0] >= 0
    assert numbers(r"direct throughput, one core per end: ([\d,.]+) Mbit/s", out)[0] > 0
    rows = re.findall(r"^\| (.+?) \| (.+?) \| (.+?) \| (PASS|FAIL|n/a) \|$", out, re.MULTILINE)
    assert len(rows) == 5, out
    assert [row[3] for row in rows][3:] == ["n/a", "n/a"], "--quick must not boot a guest"


def test_udp_batching_prints_each_row() -> None:
    out = run_bench("udp_batching")
    assert numbers(r"a\. send, one sendto per datagram: ([\d.]+) µs CPU", out)[0] > 0
    assert numbers(r"c\. receive, one recv_into per datagram: ([\d.]+) µs CPU", out)[0] > 0
    assert numbers(r"d\. ChaCha20Poly1305\.encrypt of 1173 B \(cryptography\): ([\d.]+) µs CPU", out)[0] > 0
    found = re.search(r"kernel: GSO (yes|NO) .*; GRO (yes|NO) ", out)
    assert found is not None, out
    gso_rows = re.findall(r"b\. sendmsg UDP_SEGMENT, (\d+) segments per send: (not measured|[\d.]+ µs)", out)
    assert [int(k) for k, _ in gso_rows] == [8, 16, 44], out
    assert all((value == "not measured") == (found.group(1) == "NO") for _, value in gso_rows), out


def test_wakeup_floor_prints_each_program_with_and_without_acks() -> None:
    out = run_bench("wakeup_floor")
    rows = re.findall(
        r"^  (c|python|asyncio) +(an ACK per write|no ACKs) *: "
        r"([\d.]+) % of a core, (\d+) µs per write \((\d+) writes",
        out,
        re.MULTILINE,
    )
    programs = [program for program, *_ in rows]
    expected = ["python", "python", "asyncio", "asyncio"]
    assert programs in (expected, ["c", "c", *expected]), out  # c only where a compiler built it
    for *_, percent, us, writes in rows:
        assert float(percent) > 0 and int(us) > 0 and int(writes) >= 2, out
    assert "issue 14's target for dvrlinkd here: 0.8 % of a core" in out


def test_hal_watch_prints_cpu_and_memory_with_and_without_channels() -> None:
    out = run_bench("hal_watch")
    assert len(numbers(r"^  (?:no capture device|4 channels watched): CPU ([\d.]+) % of a core", out)) == 2
    assert all(size > 0 for size in numbers(r"VmRSS ([\d.]+) MB$", out)), out
    assert numbers(r"watching 4 channels adds (-?[\d.]+) % of a core", out), out


def test_live_view_prints_first_frame_and_frames_carried_per_path() -> None:
    out = run_bench("live_view")
    firsts = numbers(r"^  (?:direct|relay): command to first decoded frame, 3 runs: median ([\d.]+) s", out)
    assert len(firsts) == 2 and all(value > 0 for value in firsts), out
    carried = numbers(r"^  (?:direct|relay): (\d+) frames decoded over 10 s", out)
    assert len(carried) == 2 and all(count > 0 for count in carried), out


def test_alarm_latency_prints_median_p95_and_bytes_per_alarm() -> None:
    out = run_bench("alarm_latency")
    assert "PASS" in out or "FAIL" in out, out
    assert numbers(r"median ([\d.]+) ms", out) and numbers(r"p95 ([\d.]+) ms", out), out
    assert numbers(r"(\d+) up, ", out)[0] > 28, out
