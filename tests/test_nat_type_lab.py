"""NAT lab (needs root): a real ``dvrlinkd`` behind the lab's port-restricted cone NAT classifies
it as ``EIM/APDF`` against the real ``dvrlink-broker`` (``stun_alternate_host`` set), reports it,
and counts what the tests cost; the NAT's own byte counters (conntrack accounting) agree.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.waiting import wait_until

from dvrlink.daemon.status import read_status
from hil import netlab

REASON = netlab.unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.integration]

BIN = Path(sys.executable).parent
SERIAL = "DL-0016-0601"
WAIT_S = 60.0


def _flow_bytes(listing: str, broker_ips: tuple[str, ...], presence_port: int) -> int:
    """Bytes (IP headers included, both directions) of the UDP flows between the device and the
    broker's addresses in a ``conntrack -L`` listing of the device's NAT, but the presence
    socket's (its mapped port is ``presence_port``)."""
    total = 0
    for line in listing.splitlines():
        if not line.startswith("udp") or not any(f"dst={ip} " in line for ip in broker_ips):
            continue
        if f"dport={presence_port} " in line:
            continue
        total += sum(int(b) for b in re.findall(r"bytes=(\d+)", line))
    return total


def test_behind_a_port_restricted_cone_the_daemon_reports_eim_apdf(tmp_path: Path) -> None:
    with netlab.topology(device_nat="port_restricted_cone", viewer_nat="public") as lab:
        nat = lab.nat_ns("device")
        lab.run(nat, ["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1"])
        broker = netlab.start_lab_broker(lab, tmp_path / "broker")
        home = tmp_path / "device"
        home.mkdir()
        config = home / "dvrlinkd.toml"
        config.write_text(
            f'[device]\nserial = "{SERIAL}"\nstate_dir = "{home / "state"}"\nruntime_dir = "{home / "run"}"\n'
            f'[broker]\nhost = "{broker.primary[0]}"\nport = {broker.primary[1]}\n'
            f'public_key = "{broker.info["public_key"]}"\n'
            '[presence]\ntransport = "udp"\nkeepalive_interval_s = 20\nreply_timeout_s = 1\nretries = 2\n'
            "learn_keepalive = false\nlearn_after_s = 0\nreport_min_interval_s = 1\n"
        )
        log = home / "dvrlinkd.log"
        with log.open("ab") as out:
            daemon = lab.popen(
                lab.device_ns,
                [str(BIN / "dvrlinkd"), "run", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:

            def verdict() -> str | None:
                if daemon.poll() is not None:
                    raise AssertionError(f"dvrlinkd exited {daemon.returncode}:\n{log.read_text()}")
                found = re.search(r"NAT type: .*", log.read_text())
                return found.group(0) if found else None

            line = wait_until("the daemon's NAT type", verdict, timeout=WAIT_S, seen=log.read_text)
            assert line.startswith("NAT type: EIM/APDF (port_restricted_cone"), line
            status = read_status(home / "run")
            assert status.nat_type == "EIM/APDF", status
            # The filtering tests go unanswered (APDF): each is sent until its timeout.
            assert 0 < status.nat_type_bytes <= 1500, status.nat_type_bytes
            # What the NAT counted on the classifier's flows (the requests it forwarded, the
            # answers it let in) is what the daemon counted.
            assert status.reflexive_address is not None
            presence_port = int(status.reflexive_address.rsplit(":", 1)[1])
            lab_bytes = _flow_bytes(lab.conntrack("device"), tuple(lab.broker_addrs), presence_port)
            print(f"NAT type run: the daemon counted {status.nat_type_bytes} B, the NAT {lab_bytes} B")
            assert lab_bytes == status.nat_type_bytes
        finally:
            daemon.terminate()
            daemon.wait(30)
            broker.stop()
