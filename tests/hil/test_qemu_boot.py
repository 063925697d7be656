"""Boot to registered, and the watchdog: the arm64 image in QEMU, dvrlinkd under systemd, a real
broker on the host.

The broker runs on the host from the virtualenv; the guest reaches it as 10.0.2.2 over QEMU's user
network. The guest's config is the image's own dvrlinkd.toml (the board overlay's) with the serial
and the broker's address and key set, handed in through fw_cfg. One guest boots per module: the
first test checks what the registration proves and what the image holds; then a viewer on the
host pairs with the code the guest prints and fetches a page from BusyBox httpd in the guest
through ``dvrlink forward`` (direct, then relayed); last the daemon is stopped and systemd's
watchdog restarts it. Each prints the figures it saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dvrlink.protocol.identity import b64encode_key
from hil.loopback import Viewer, add_user, start_forward
from hil.qemu.boot import BootOptions, Guest
from hil.qemu.build import REPO, Image
from hil.qemu.host import HostBroker
from hil.qemu.rigconfig import image_config_path, with_values
from hil.qemu.targets import Target

# A cold cache builds the image first (about 5 min), then the boot takes minutes under TCG.
pytestmark = [pytest.mark.hil, pytest.mark.timeout(3600)]

SERIAL = "DL-QEMU-0001"
HOST_FROM_GUEST = "10.0.2.2"
BOOT_BOUND = 900.0
"""Boot to registered under TCG on a busy 2-core host took 97-116 s; generous on purpose."""
CONSOLE_BOUND = 120.0
WEB_ROOT = "/tmp/www"


def guest_config(udp_port: int, public_key: bytes) -> str:
    """The image's own dvrlinkd.toml with this test's serial and the host's broker."""
    return with_values(
        image_config_path().read_text(),
        {
            "device": {"serial": SERIAL},
            "broker": {"host": HOST_FROM_GUEST, "port": udp_port, "public_key": b64encode_key(public_key)},
        },
    )


def systemd_properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@dataclass
class Booted:
    guest: Guest
    broker: HostBroker
    config: Path
    registered_s: float

    def run(self, command: str, timeout: float = CONSOLE_BOUND) -> str:
        return self.guest.console.run(command, timeout=timeout)

    def unit(self, *names: str) -> dict[str, str]:
        return systemd_properties(self.run(f"systemctl show -p {','.join(names)} dvrlinkd"))

    def status(self) -> dict[str, object]:
        text = self.run("dvrlinkd status --json")
        try:
            doc = json.loads(text)
        except ValueError:
            raise AssertionError(f"dvrlinkd status --json printed no JSON:\n{text}") from None
        assert isinstance(doc, dict), text
        return doc


@pytest.fixture(scope="module")
def booted(
    arm64: Target,
    arm64_image: Image,
    host_broker: HostBroker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Booted]:
    """The guest booted with the host broker's config, once dvrlinkd registered and the shell is up."""
    info = host_broker.info
    run_dir = tmp_path_factory.mktemp("qemu")
    config = run_dir / "dvrlinkd.toml"
    config.write_text(guest_config(info.udp_port, info.public_key))
    guest = Guest(arm64, arm64_image, BootOptions(mem_mb=arm64.default_mem_mb, config=config), run_dir)
    guest.start()
    try:
        host_broker.process.wait_for(
            rf"serial {SERIAL} bound to key .* on first registration from 127\.0\.0\.1:", BOOT_BOUND
        )
        registered_s = time.monotonic() - guest.started
        guest.login(300.0)
        yield Booted(guest, host_broker, config, registered_s)
    finally:
        guest.stop()


def test_dvrlinkd_registers_under_systemd_from_the_image_files(booted: Booted, arm64_image: Image) -> None:
    active = booted.run("systemctl is-active dvrlinkd")
    assert active == "active", f"systemctl is-active dvrlinkd: {active!r}"
    props = booted.unit("Type", "WatchdogUSec", "NotifyAccess", "MainPID", "FragmentPath", "User")
    assert props.get("Type") == "notify", props
    assert props.get("WatchdogUSec") == "1min", props
    assert props.get("NotifyAccess") == "main", props
    assert props.get("User") == "dvrlink", props
    # /lib is /usr/lib in Debian's merged-/usr layout; systemd reports the first path it tried.
    assert props.get("FragmentPath") in (
        "/usr/lib/systemd/system/dvrlinkd.service",
        "/lib/systemd/system/dvrlinkd.service",
    ), props

    unit_sum = booted.run("sha256sum /usr/lib/systemd/system/dvrlinkd.service")
    expected = hashlib.sha256((REPO / "systemd/dvrlinkd.service").read_bytes()).hexdigest()
    assert unit_sum.split()[0] == expected, f"the guest's unit is not systemd/dvrlinkd.service: {unit_sum}"
    config_sum = booted.run("sha256sum /etc/dvrlink/dvrlinkd.toml")
    sent = hashlib.sha256(booted.config.read_bytes()).hexdigest()
    assert config_sum.split()[0] == sent, f"the guest's config is not the one handed in: {config_sum}"
    owner = booted.run("stat -c '%U:%G %a' /etc/dvrlink/dvrlinkd.toml")
    assert owner == "root:dvrlink 640", f"the config's owner and mode: {owner!r}"

    # post-build.sh has systemd feed the board's watchdog (the emulated i6300esb).
    manager = systemd_properties(booted.run("systemctl show -p RuntimeWatchdogUSec -p WatchdogDevice"))
    assert manager.get("RuntimeWatchdogUSec") == "30s", manager
    wdt = booted.run("cat /sys/class/watchdog/watchdog0/state")
    assert wdt == "active", f"/sys/class/watchdog/watchdog0/state: {wdt!r} ({manager})"

    status = booted.status()
    assert status["state"] == "online", status
    assert status["broker"] == f"{HOST_FROM_GUEST}:{booted.broker.info.udp_port}", status
    assert status["transport"] == "udp", status
    rss = booted.run(f"grep VmRSS /proc/{props['MainPID']}/status")
    print(
        f"\nboot to registered under TCG: {booted.registered_s:.1f} s; dvrlinkd {rss.split(':')[-1].strip()}"
        f" RSS; kernel {arm64_image.manifest['kernel']}",
        file=sys.stderr,
    )


@pytest.fixture(scope="module")
def guest_httpd(booted: Booted) -> None:
    """BusyBox httpd in the guest on 127.0.0.1:80 (an allowed forward target), serving WEB_ROOT."""
    served = booted.run(f"mkdir -p {WEB_ROOT} && busybox httpd -p 127.0.0.1:80 -h {WEB_ROOT} && echo serving")
    assert served == "serving", served


@pytest.mark.parametrize("path", ["direct", "relay"])
@pytest.mark.usefixtures("guest_httpd")
def test_a_viewer_on_the_host_pairs_and_fetches_a_page_from_the_guest(
    booted: Booted, path: str, tmp_path: Path
) -> None:
    """Pairing with the code the guest's console prints, then ``dvrlink forward`` to BusyBox httpd
    on the guest's 127.0.0.1:80, which the image's config allows."""
    page = f"dvrlink-hil {os.urandom(8).hex()}\n"
    written = booted.run(f"echo '{page.strip()}' > {WEB_ROOT}/{path}.html && echo written")
    assert written == "written", written
    label = booted.run("dvrlinkd pairing-code")
    uri = next((line.split(": ", 1)[1] for line in label.splitlines() if "dvrlink://" in line), None)
    assert uri is not None, f"no pairing URI in the guest's dvrlinkd pairing-code output:\n{label}"
    assert "private" not in label.lower(), label

    add_user(booted.broker.state_dir, f"owner-{path}", "pass phrase")
    viewer = Viewer(tmp_path / "viewer")
    viewer.run(
        "login", "--broker", booted.broker.url, "--user", f"owner-{path}", "--password-stdin",
        "--cacert", str(booted.broker.info.cert), stdin="pass phrase\n",
    )  # fmt: skip
    paired = viewer.run("pair", uri.strip())
    assert f"paired {SERIAL}" in paired.stdout, paired.stdout + paired.stderr

    started = time.monotonic()
    forward = start_forward(viewer, SERIAL, 80, f"--{path}-only", timeout=120)
    try:
        assert forward.path == path, forward
        url = f"http://127.0.0.1:{forward.local_port}/{path}.html"
        try:
            with urllib.request.urlopen(url, timeout=120) as reply:
                body = reply.read().decode()
        except urllib.error.HTTPError as exc:
            inside = booted.run(
                f"ls -la {WEB_ROOT}; busybox wget -q -O- http://127.0.0.1/{path}.html; echo rc=$?"
            )
            raise AssertionError(
                f"{url} through the {path} forward: {exc}; in the guest:\n{inside}"
            ) from None
        fetched_s = time.monotonic() - started
    finally:
        code = forward.stop()
    assert body == page, f"the page through the {path} forward: {body!r}"
    assert code == 0, f"dvrlink forward exited with {code}"
    print(f"\nforward {path}: command to page {fetched_s:.1f} s", file=sys.stderr)


def test_systemd_restarts_a_stopped_dvrlinkd(booted: Booted) -> None:
    before = booted.unit("MainPID", "NRestarts")
    registered_before = booted.status()["registered_at"]
    assert isinstance(registered_before, float), registered_before
    stopped = time.monotonic()
    booted.run(f"kill -STOP {before['MainPID']}")
    # WatchdogSec=60: systemd aborts the silent daemon, restarts it after RestartSec=5, and the
    # unit is active again only after the new process's READY=1 (its first registration).
    restarts = int(before["NRestarts"]) + 1
    waited = booted.run(
        f'timeout 600 sh -c \'until [ "$(systemctl show -p NRestarts --value dvrlinkd)" -ge {restarts} ]'
        " && systemctl is-active -q dvrlinkd; do sleep 1; done'; echo waited=$?",
        timeout=660,
    )
    back_s = time.monotonic() - stopped
    assert waited.endswith("waited=0"), f"dvrlinkd was not restarted and active within 600 s: {waited}"
    after = booted.unit("MainPID", "NRestarts", "ActiveState")
    assert after["MainPID"] != before["MainPID"], (before, after)
    assert after["ActiveState"] == "active", after
    journal = booted.run("journalctl -u dvrlinkd --no-pager -o cat | grep -i watchdog")
    assert "Watchdog timeout" in journal, f"no watchdog timeout in dvrlinkd's journal:\n{journal}"
    status = booted.status()
    assert status["state"] == "online", status
    registered_after = status["registered_at"]
    assert isinstance(registered_after, float) and registered_after > registered_before, status
    print(f"\nSIGSTOP to registered again (watchdog 60 s + restart): {back_s:.1f} s", file=sys.stderr)
