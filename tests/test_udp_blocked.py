"""NAT lab (needs root): a device behind a NAT that lets only TCP to port 443 out.

The real broker runs presence over TCP/TLS on its second address's port 443 and its TURN relay's
TCP listener on the first address's port 443 (the viewer API moves to 8443, since the viewer is
not blocked). The real ``dvrlinkd`` must fall back to presence over TCP, answer a session whose
relay it allocates over TURN-TCP, and carry a ``dvrlink forward`` to a web server on the device's
side. Then the gateway lets UDP out again and the daemon must come back to UDP within its probe
interval (a short one here).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil import netlab
from hil.loopback import BIN, add_user, read_line_until, wait_for

REASON = netlab.unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

SERIAL = "DL-UDPB-0001"
WEB_PORT = 8080
PAGE_BYTES = 300_000


def status(home: Path) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads((home / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return value


def tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return "(no log)"


@pytest.fixture
def lab() -> Iterator[netlab.Lab]:
    with netlab.topology("udp_blocked", "full_cone") as built:
        yield built


def test_presence_over_tcp_a_forward_over_turn_tcp_and_back_to_udp(lab: netlab.Lab, tmp_path: Path) -> None:
    primary, alternate = lab.broker_addrs
    broker = netlab.start_lab_broker(
        lab,
        tmp_path / "broker",
        https_port=8443,
        turn_tcp_port=443,
        presence_tcp_host=alternate,
        presence_tcp_port=443,
    )
    add_user(broker.state_dir, "owner", "pass phrase")

    # a web server on the device's side, reachable only through the forward
    site = tmp_path / "site"
    site.mkdir()
    page = os.urandom(PAGE_BYTES)
    (site / "page.bin").write_bytes(page)
    lab.popen(
        lab.device_ns,
        [str(BIN / "python"), "-m", "http.server", str(WEB_PORT), "--bind", "127.0.0.1", "-d", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    home = tmp_path / "device"
    home.mkdir()
    config = home / "dvrlinkd.toml"
    config.write_text(
        "\n".join(
            [
                "[device]",
                f'serial = "{SERIAL}"',
                'state_dir = "state"',
                'runtime_dir = "run"',
                "[broker]",
                f'host = "{primary}"',
                "port = 3478",
                f'tcp_host = "{alternate}"',
                "tcp_port = 443",
                f'public_key = "{broker.info["public_key"]}"',
                "[presence]",
                'transport = "auto"',
                "keepalive_interval_s = 2.0",
                "reply_timeout_s = 0.5",
                "retries = 1",
                "fallback_after_failures = 2",
                "udp_probe_interval_s = 4.0",
                "tcp_keepalive_interval_s = 5.0",
                "[services]",
                f'forward = ["127.0.0.1:{WEB_PORT}"]',
                "",
            ]
        )
    )
    daemon_log = home / "dvrlinkd.log"
    with daemon_log.open("ab") as out:
        lab.popen(
            lab.device_ns,
            [str(BIN / "dvrlinkd"), "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def online_over(transport: str) -> dict[str, Any] | None:
        now = status(home)
        return now if now and now.get("state") == "online" and now.get("transport") == transport else None

    try:
        wait_for("device online over TCP", lambda: online_over("tcp"), 30)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{tail(daemon_log)}\n--- broker\n{tail(broker.log)}") from None
    shown = lab.run(lab.device_ns, [str(BIN / "dvrlinkd"), "status", "--config", str(config)]).stdout
    assert "transport:" in shown and "tcp" in shown.split("transport:", 1)[1].splitlines()[0]
    # the endpoint in use is the TCP one, and status says why presence is there
    rows = dict(line.split(":", 1) for line in shown.splitlines() if ":" in line and not line.startswith(" "))
    assert rows["broker"].strip() == f"{alternate}:443 (TCP/TLS)", shown
    assert f"(UDP to {primary}:3478 got no answer" in rows["transport"], shown
    assert rows["link"].strip().startswith("connected since"), shown

    # the viewer logs in, pairs, and forwards a local port to the device's web server
    viewer = tmp_path / "viewer"
    dvrlink = [str(BIN / "dvrlink"), "--home", str(viewer)]
    cacert = ["--cacert", str(broker.info["cert"])]
    lab.run(
        lab.viewer_ns,
        [
            *dvrlink,
            "login",
            "--broker",
            f"https://{primary}:8443",
            "--user",
            "owner",
            "--password-stdin",
            *cacert,
        ],
        input="pass phrase\n",
    )
    uri = subprocess.run(
        [str(BIN / "dvrlinkd"), "pairing-code", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    lab.run(lab.viewer_ns, [*dvrlink, "pair", next(w for w in uri.split() if w.startswith("dvrlink://"))])
    forward = lab.popen(
        lab.viewer_ns,
        [*dvrlink, "forward", SERIAL, f"0:{WEB_PORT}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = read_line_until(forward.stdout, "forwarding", 45)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- daemon\n{tail(daemon_log)}") from None
    local_port = int(line.split()[1].rsplit(":", 1)[1])
    assert line.split()[-1] == "relay", line  # the device has no direct path: only the relay works
    fetched = lab.run(
        lab.viewer_ns,
        [
            str(BIN / "python"),
            "-c",
            "import sys, urllib.request, hashlib; "
            f"data = urllib.request.urlopen('http://127.0.0.1:{local_port}/page.bin', timeout=30).read(); "
            "print(len(data), hashlib.sha256(data).hexdigest())",
        ],
    ).stdout.split()
    assert fetched == [str(PAGE_BYTES), hashlib.sha256(page).hexdigest()]

    # the device's NAT saw TLS presence to the second address and TURN over TCP to the first,
    # both on 443, and no UDP flow that got an answer
    flows = lab.conntrack("device").splitlines()
    tcp_443 = {
        line.split("dst=")[1].split()[0] for line in flows if line.startswith("tcp") and "dport=443 " in line
    }
    assert {primary, alternate} <= tcp_443, flows
    assert not [line for line in flows if line.startswith("udp") and "[UNREPLIED]" not in line], flows
    forward.terminate()

    # UDP gets through again: the daemon probes, moves presence back to UDP and registers there
    lab.allow_udp("device")
    try:
        wait_for("device back online over UDP", lambda: online_over("udp"), 30)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{tail(daemon_log)}") from None
    assert "presence moves to udp" in daemon_log.read_text()
