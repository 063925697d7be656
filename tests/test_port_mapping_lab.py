"""Port mapping against a real router (needs root, miniupnpd and nft): PCP, NAT-PMP and UPnP-IGD.

The device's router in the NAT lab is a ``symmetric_upnp`` NAT: symmetric, with Debian's
``miniupnpd`` answering all three protocols on its LAN side. For each protocol the device host runs
``python -m hil.netlab.mapping_client`` (``dvrlink.session.port_mapping`` on a bound UDP socket);
the test checks that the mapped public port works (a datagram sent from the lab's internet router
arrives at the device's socket), that the mapping is renewed, and that closing deletes it: the
DNAT rule leaves miniupnpd's nftables chain.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from support.waiting import wait_until

from hil import netlab
from hil.matrix.rig import LineLog
from hil.netlab.lab import REPO, upnp_unavailable_reason

REASON = upnp_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module")
def lab() -> Iterator[netlab.Lab]:
    with netlab.topology(netlab.NatType.SYMMETRIC_UPNP, netlab.NatType.PUBLIC) as built:
        yield built


class Client:
    """``mapping_client`` in the device namespace, its JSON lines read by a thread."""

    def __init__(self, lab: netlab.Lab, protocol: str, lifetime: int) -> None:
        argv = [sys.executable, "-m", "hil.netlab.mapping_client", "--protocol", protocol,
                "--lifetime", str(lifetime)]  # fmt: skip
        self.proc: subprocess.Popen[str] = lab.popen(
            lab.device_ns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=REPO,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.log = LineLog(self.proc.stdout)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for _, line in self.log.snapshot():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait(self, name: str, timeout: float = 20.0, count: int = 1) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            hits = [e for e in self.events() if e["event"] == name]
            if len(hits) >= count:
                return hits[count - 1]
            if self.log.ended:
                raise AssertionError(f"mapping_client exited before {name!r}:\n{self.log.text()}")
            return None

        return wait_until(f"mapping_client's {name!r} event #{count}", found, timeout=timeout,
                          seen=self.log.text)  # fmt: skip

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def send_from_internet(lab: netlab.Lab, external: list[Any], payload: str) -> None:
    """One datagram from the internet router's namespace to ``external``."""
    code = (
        "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.sendto(sys.argv[1].encode(), (sys.argv[2], int(sys.argv[3])))"
    )
    lab.run(lab.inet_ns, [sys.executable, "-c", code, payload, str(external[0]), str(external[1])])


@pytest.mark.parametrize(
    ("protocol", "lifetime"),
    [
        ("pcp", 600),  # miniupnpd grants PCP at least 120 s: renewed on command
        ("natpmp", 4),  # renewed by its own timer at half the lifetime, 2 s
        ("upnp", 4),  # AddPortMapping again at half the lease, 2 s
    ],
)
def test_mapping_works_is_renewed_and_deleted(lab: netlab.Lab, protocol: str, lifetime: int) -> None:
    client = Client(lab, protocol, lifetime)
    try:
        mapped = client.wait("mapped")
        assert mapped["protocol"] == protocol
        external = mapped["external"]
        assert external[0] == lab.side("device").upnp_addr
        port = external[1]
        assert f"dport {port} dnat ip to {lab.host_addr('device')}:{mapped['port']}" in lab.upnp_mappings(
            "device"
        )

        # The public port works: a datagram from the internet reaches the device's socket (the
        # symmetric NAT drops anything new from outside that is not a forward).
        send_from_internet(lab, external, f"hello over {protocol}")
        received = client.wait("received")
        assert received["data"] == f"hello over {protocol}"

        if protocol == "pcp":
            client.command("renew")
        renewed = client.wait("renewed", timeout=lifetime + 20)
        assert renewed["external"] == external, "a renewal keeps the same public port"
        send_from_internet(lab, external, "after the renewal")
        assert client.wait("received", count=2)["data"] == "after the renewal"

        client.command("close")
        closed = client.wait("closed")
        assert closed["confirmed"] is True, client.log.text()
        assert f"dport {port} " not in lab.upnp_mappings("device"), "the mapping is deleted on exit"
        assert client.proc.wait(10) == 0
    finally:
        client.stop()
