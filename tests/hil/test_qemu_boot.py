"""Boot to registered, a forward into the board, and the watchdog: on the rig's board (``--rig``;
default: the arm64 image in QEMU, dvrlinkd under systemd), with a real broker on the host.

The broker runs on the host from the virtualenv; a QEMU guest reaches it as 10.0.2.2 over QEMU's
user network, a bench board at its rig's ``[network] host_address``. The ``board`` fixture
(conftest.py) switches the board on once for the session: a QEMU guest gets the image's own
dvrlinkd.toml with the serial and the broker set through fw_cfg; a bench board gets the broker
over its installer console. The first test checks what the registration proves and what the
image holds; then a viewer on the host pairs with the code the board prints and fetches a page
from BusyBox httpd on the board through ``dvrlink forward`` (direct, then relayed); last (after the
console scenarios too) the daemon is stopped and systemd's watchdog restarts it. Each prints the
figures it saw.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from hil.board import Board
from hil.loopback import Viewer, start_forward
from hil.qemu.build import REPO
from hil.qemu.host import HostBroker

# A cold cache builds the image first (about 5 min), then the boot takes minutes under TCG.
pytestmark = [pytest.mark.hil, pytest.mark.timeout(3600)]


def systemd_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def unit(board: Board, *names: str) -> dict[str, str]:
    return systemd_properties(board.run(f"systemctl show -p {','.join(names)} dvrlinkd"))


def needs_systemd(board: Board) -> None:
    if board.rig.board.init != "systemd":
        pytest.skip(f"{board.rig.name} runs {board.rig.board.init} init: this scenario checks systemd's unit")


@pytest.mark.hil_core
def test_dvrlinkd_registers_under_systemd_from_the_image_files(board: Board, rig_broker: HostBroker) -> None:
    needs_systemd(board)
    if board.rig.network.kind == "qemu-user":  # QEMU's user network hands the guest's packets to lo
        line = rig_broker.process.wait_for(f"serial {board.serial} bound to key", 1.0)
        assert " from 127.0.0.1:" in line, line
    active = board.run("systemctl is-active dvrlinkd")
    assert active == "active", f"systemctl is-active dvrlinkd: {active!r}"
    props = unit(board, "Type", "WatchdogUSec", "NotifyAccess", "MainPID", "FragmentPath", "User")
    assert props.get("Type") == "notify", props
    assert props.get("WatchdogUSec") == "1min", props
    assert props.get("NotifyAccess") == "main", props
    assert props.get("User") == "dvrlink", props
    # /lib is /usr/lib in Debian's merged-/usr layout; systemd reports the first path it tried.
    assert props.get("FragmentPath") in (
        "/usr/lib/systemd/system/dvrlinkd.service",
        "/lib/systemd/system/dvrlinkd.service",
    ), props

    unit_sum = board.run("sha256sum /usr/lib/systemd/system/dvrlinkd.service")
    expected = hashlib.sha256((REPO / "systemd/dvrlinkd.service").read_bytes()).hexdigest()
    assert unit_sum.split()[0] == expected, f"the board's unit is not systemd/dvrlinkd.service: {unit_sum}"
    owner = board.run("stat -c '%U:%G %a' /etc/dvrlink/dvrlinkd.toml")
    if board.delivered_config is not None:  # the whole file handed in at boot (QEMU's fw_cfg)
        config_sum = board.run("sha256sum /etc/dvrlink/dvrlinkd.toml")
        sent = hashlib.sha256(board.delivered_config).hexdigest()
        assert config_sum.split()[0] == sent, f"the board's config is not the one handed in: {config_sum}"
        assert owner == "root:dvrlink 640", f"the config's owner and mode: {owner!r}"
    else:  # written by dvrlinkd itself, at the installer console's `set`
        assert owner.endswith(":dvrlink 640"), f"the config's owner and mode: {owner!r}"

    # post-build.sh has systemd feed the board's watchdog (the emulated i6300esb).
    manager = systemd_properties(board.run("systemctl show -p RuntimeWatchdogUSec -p WatchdogDevice"))
    assert manager.get("RuntimeWatchdogUSec") == "30s", manager
    wdt = board.run("cat /sys/class/watchdog/watchdog0/state")
    assert wdt == "active", f"/sys/class/watchdog/watchdog0/state: {wdt!r} ({manager})"

    status = board.status()
    assert status["state"] == "online", status
    assert status["broker"] == f"{board.broker_host}:{rig_broker.info.udp_port}", status
    assert status["transport"] == "udp", status
    sealer = board.run(
        "python3 -c 'import dvrlink.protocol.dataplane as d; print(d._compiled_sealer is not None)'"
    )
    assert sealer == "True", f"the image's dvrlink has no C sealer (the 'ext' layer): {sealer!r}"
    rss = board.run(f"grep VmRSS /proc/{props['MainPID']}/status")
    kernel = board.run("uname -r")
    print(
        f"\n{board.rig.name}: power on to registered: {board.registered_s:.1f} s; dvrlinkd"
        f" {rss.split(':')[-1].strip()} RSS; kernel {kernel}",
        file=sys.stderr,
    )


@pytest.mark.hil_core
@pytest.mark.parametrize("path", ["direct", "relay"])
def test_a_viewer_on_the_host_pairs_and_fetches_a_page_from_the_board(
    board: Board, board_httpd: str, logged_in_viewer: Callable[[str], Viewer], path: str
) -> None:
    """Pairing with the code the board's shell prints, then ``dvrlink forward`` to BusyBox httpd
    on the board's 127.0.0.1:80, which the image's config allows."""
    page = f"dvrlink-hil {os.urandom(8).hex()}\n"
    written = board.run(f"echo '{page.strip()}' > {board_httpd}/{path}.html && echo written")
    assert written == "written", written
    label = board.run("dvrlinkd pairing-code")
    uri = next((line.split(": ", 1)[1] for line in label.splitlines() if "dvrlink://" in line), None)
    assert uri is not None, f"no pairing URI in the board's dvrlinkd pairing-code output:\n{label}"
    assert "private" not in label.lower(), label

    viewer = logged_in_viewer(f"owner-{path}")
    paired = viewer.run("pair", uri.strip())
    assert f"paired {board.serial}" in paired.stdout, paired.stdout + paired.stderr

    started = time.monotonic()
    forward = start_forward(viewer, board.serial, 80, f"--{path}-only", timeout=120)
    try:
        assert forward.path == path, forward
        url = f"http://127.0.0.1:{forward.local_port}/{path}.html"
        try:
            with urllib.request.urlopen(url, timeout=120) as reply:
                body = reply.read().decode()
        except urllib.error.HTTPError as exc:
            inside = board.run(
                f"ls -la {board_httpd}; busybox wget -q -O- http://127.0.0.1/{path}.html; echo rc=$?"
            )
            raise AssertionError(
                f"{url} through the {path} forward: {exc}; on the board:\n{inside}"
            ) from None
        fetched_s = time.monotonic() - started
    finally:
        code = forward.stop()
    assert body == page, f"the page through the {path} forward: {body!r}"
    assert code == 0, f"dvrlink forward exited with {code}"
    print(f"\nforward {path}: command to page {fetched_s:.1f} s", file=sys.stderr)


@pytest.mark.hil_core
@pytest.mark.hil_last
def test_systemd_restarts_a_stopped_dvrlinkd(board: Board) -> None:
    needs_systemd(board)
    before = unit(board, "MainPID", "NRestarts")
    registered_before = board.status()["registered_at"]
    assert isinstance(registered_before, float), registered_before
    stopped = time.monotonic()
    board.run(f"kill -STOP {before['MainPID']}")
    # WatchdogSec=60: systemd aborts the silent daemon, restarts it after RestartSec=5, and the
    # unit is active again only after the new process's READY=1 (its first registration).
    restarts = int(before["NRestarts"]) + 1
    waited = board.run(
        f'timeout 600 sh -c \'until [ "$(systemctl show -p NRestarts --value dvrlinkd)" -ge {restarts} ]'
        " && systemctl is-active -q dvrlinkd; do sleep 1; done'; echo waited=$?",
        timeout=660,
    )
    back_s = time.monotonic() - stopped
    assert waited.endswith("waited=0"), f"dvrlinkd was not restarted and active within 600 s: {waited}"
    after = unit(board, "MainPID", "NRestarts", "ActiveState")
    assert after["MainPID"] != before["MainPID"], (before, after)
    assert after["ActiveState"] == "active", after
    journal = board.run("journalctl -u dvrlinkd --no-pager -o cat | grep -i watchdog")
    assert "Watchdog timeout" in journal, f"no watchdog timeout in dvrlinkd's journal:\n{journal}"
    status = board.status()
    assert status["state"] == "online", status
    registered_after = status["registered_at"]
    assert isinstance(registered_after, float) and registered_after > registered_before, status
    print(f"\nSIGSTOP to registered again (watchdog 60 s + restart): {back_s:.1f} s", file=sys.stderr)
