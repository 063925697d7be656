"""NAT lab (needs root): LAN discovery with the real processes, issue 17's acceptance.

Device (192.168.1.2) and viewer (192.168.1.3) on one LAN bridge behind one NAT (the lab's
``hairpin`` topology), the broker on the internet side. ``dvrlinkd`` and ``dvrlink`` pair through
the broker as usual; then the broker is killed (SIGKILL), and ``dvrlink forward`` still gets the
device's service byte through: the viewer finds the device by its signed LAN announcement and
runs the session over the LAN path, with the certificate pinned at pairing.

Path order, the steps real processes can show: with the broker up, the default finds the device
on the LAN first (the daemon logs a LAN offer and no broker offer), and ``--no-lan`` goes through
the broker instead; with the broker gone, ``--no-lan`` fails and the default works.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil import netlab
from hil.matrix.netns import ByteService, first_byte
from hil.matrix.rig import BIN, FORWARDING, SERIAL, SERVICE_PORT, LineLog, MatrixRig, wait

REASON = netlab.unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

WAIT_S = 20.0
LAN_OFFER = "LAN offer from viewer"
BROKER_OFFER = "offer for viewer"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[MatrixRig]:
    with netlab.topology("hairpin", "hairpin") as lab:
        rig = MatrixRig(lab, tmp_path)
        try:
            yield rig
        finally:
            if rig.broker.proc.poll() is None:
                rig.broker.stop()


def forward(rig: MatrixRig, *flags: str) -> tuple[subprocess.Popen[str], LineLog]:
    proc: subprocess.Popen[str] = rig.lab.popen(
        rig.lab.viewer_ns,
        [
            str(BIN / "dvrlink"),
            "--home",
            str(rig.viewer_home),
            "forward",
            *flags,
            SERIAL,
            f"0:{SERVICE_PORT}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    return proc, LineLog(proc.stdout)


def forwarded(rig: MatrixRig, flags: tuple[str, ...], daemon_log: Path) -> str:
    """Run ``dvrlink forward``, read the service's byte through it; the path it printed."""
    proc, lines = forward(rig, *flags)
    try:

        def line() -> str | None:
            return next((text for _, text in lines.snapshot() if FORWARDING.match(text)), None)

        found = wait(lambda: line() or lines.ended, WAIT_S)
        text = line()
        assert text is not None, (
            f"dvrlink forward {' '.join(flags)} gave no forward within {WAIT_S:g} s "
            f"({'exited' if found else 'still running'}):\n{lines.text()}\n--- dvrlinkd:\n"
            + daemon_log.read_text(errors="replace")[-3000:]
        )
        port = int(text.split()[1].rsplit(":", 1)[1])
        data, _ = first_byte(rig.lab.viewer_ns, port, WAIT_S)
        assert data == b"!", f"expected the service's byte through the forward, got {data!r}"
        match = FORWARDING.match(text)
        assert match is not None
        return match.group(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(10)
        lines.join(5)


def offers(daemon_log: Path, since: int) -> tuple[int, int]:
    """(LAN offers, broker offers) in the daemon's log after ``since`` characters."""
    text = daemon_log.read_text(errors="replace")[since:]
    return text.count(LAN_OFFER), text.count(BROKER_OFFER) - text.count(LAN_OFFER)


def test_a_lan_forward_works_after_the_broker_is_killed(rig: MatrixRig, tmp_path: Path) -> None:
    service = ByteService(rig.lab.device_ns, SERVICE_PORT)
    daemon_log = tmp_path / "dvrlinkd.log"
    daemon = rig.start_daemon(daemon_log)  # [lan] discovery is on by default
    try:
        assert wait(lambda: rig.daemon_state() == "online" or daemon.poll() is not None, WAIT_S), (
            f"dvrlinkd did not register (state {rig.daemon_state()}):\n{daemon_log.read_text()[-3000:]}"
        )
        rig.pair()

        mark = len(daemon_log.read_text(errors="replace"))
        assert forwarded(rig, (), daemon_log) == "lan"
        assert offers(daemon_log, mark) == (1, 0), "with --lan the LAN comes before the broker"

        mark = len(daemon_log.read_text(errors="replace"))
        forwarded(rig, ("--no-lan",), daemon_log)
        assert offers(daemon_log, mark) == (0, 1), "--no-lan goes through the broker"

        rig.broker.proc.kill()
        assert rig.broker.proc.wait(10) == -signal.SIGKILL

        proc, lines = forward(rig, "--no-lan")
        assert proc.wait(WAIT_S) != 0, f"--no-lan without a broker should fail:\n{lines.text()}"
        lines.join(5)

        mark = len(daemon_log.read_text(errors="replace"))
        assert forwarded(rig, (), daemon_log) == "lan"
        assert offers(daemon_log, mark) == (1, 0)
        assert service.served >= 3
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(5)
        service.close()
