"""The armhf board: the image under BusyBox init in a 128 MB guest, S95dvrlinkd, the hardware
watchdog resetting the board.

The armhf image runs what a HiSilicon-class recorder runs: BusyBox init, the Buildroot board's
``S95dvrlinkd`` supervising ``dvrlinkd`` and feeding ``/dev/watchdog`` only while the daemon is
healthy. The watchdog is the kernel's softdog, as on the Buildroot vexpress board: Debian's armmp
kernel has no driver for QEMU's i6300esb, and the virt machine offers no other (docs/hil.md).
One guest boots per module, with the board's default RAM (128 MB). The first test checks what the
registration proves and what the image holds and prints the memory figures; then a viewer on the
host pairs and fetches a page from BusyBox httpd in the guest; last ``dvrlinkd`` is stopped with
SIGSTOP, S95dvrlinkd stops feeding the watchdog, the watchdog restarts the board, and it comes back
registered.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dvrlink.protocol.identity import b64encode_key
from hil.board import status_document
from hil.loopback import Viewer, add_user, start_forward
from hil.qemu.boot import PROMPT, BootOptions, Guest
from hil.qemu.build import BOARD_DIR, Image, build
from hil.qemu.host import HostBroker
from hil.qemu.rigconfig import image_config_path, with_values
from hil.qemu.targets import Target, target

# A cold cache builds the image first (base, then the compiled wheels: 10-20 min on a busy host).
pytestmark = [pytest.mark.hil, pytest.mark.timeout(5400)]

SERIAL = "DL-QEMU-ARMHF-01"
HOST_FROM_GUEST = "10.0.2.2"
BOOT_BOUND = 1200.0
"""Boot to registered of a cortex-a7 under TCG on a busy 2-core host; generous on purpose."""
CONSOLE_BOUND = 180.0
RESET_BOUND = 1500.0
"""SIGSTOP to registered again: 60 s health timeout, the watchdog's 60 s, then a whole boot."""
WEB_ROOT = "/tmp/www"
FORWARD_ATTEMPTS = 3
SHELL_SETUP = "dmesg -n 1; stty -echo; bind 'set enable-bracketed-paste off'"


@pytest.fixture(scope="session")
def armhf() -> Target:
    return target("armhf")


@pytest.fixture(scope="session")
def armhf_image(armhf: Target) -> Image:
    """The armhf image for the tree as it is now: seconds when cached."""
    return build(armhf, out=sys.stderr)


def guest_config(udp_port: int, public_key: bytes) -> str:
    """The image's own dvrlinkd.toml with this test's serial and the host's broker."""
    return with_values(
        image_config_path().read_text(),
        {
            "device": {"serial": SERIAL},
            "broker": {"host": HOST_FROM_GUEST, "port": udp_port, "public_key": b64encode_key(public_key)},
        },
    )


def meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` lines as kB figures by name."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB$", text, re.M)}


@dataclass
class Booted:
    guest: Guest
    broker: HostBroker
    config: Path
    registered_s: float

    def run(self, command: str, timeout: float = CONSOLE_BOUND) -> str:
        return self.guest.console.run(command, timeout=timeout)

    def status(self) -> dict[str, object]:
        return status_document(self.run("dvrlinkd status --json"))

    def daemon_pid(self) -> str:
        """dvrlinkd's pid, which must be a child of the S95dvrlinkd supervisor."""
        supervisor = self.run("cat /var/run/dvrlinkd.pid")
        # From /proc/PID/stat (pid, (comm), state, ppid): the image has no pgrep.
        children = self.run(
            "for d in /proc/[0-9]*; do read -r pid comm _ ppid _ < $d/stat 2>/dev/null || continue;"
            f' [ "$comm" = "(dvrlinkd)" ] && [ "$ppid" = "{supervisor}" ] && echo $pid; done; true'
        )
        assert re.fullmatch(r"\d+", children), (
            f"S95dvrlinkd's supervisor (pid {supervisor!r}) has no one dvrlinkd child: {children!r}\n"
            + self.run("ps -e -o pid,ppid,comm,args")
        )
        return children

    def wait_online(self, timeout: float) -> None:
        """Wait in the guest until ``dvrlinkd status`` says online (bounded by ``timeout``)."""
        until = "until dvrlinkd status --json 2>/dev/null | grep -q 'state.: .online'"  # "state": "online"
        waited = self.run(
            f'timeout {int(timeout)} sh -c "{until}; do sleep 10; done"; echo waited=$?',
            timeout=timeout + 60,
        )
        assert waited.endswith("waited=0"), f"dvrlinkd not online within {timeout} s: {waited}"


@pytest.fixture(scope="module")
def booted(
    armhf: Target,
    armhf_image: Image,
    host_broker: HostBroker,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Booted]:
    """The 128 MB guest booted with the host broker's config, once dvrlinkd registered."""
    info = host_broker.info
    run_dir = tmp_path_factory.mktemp("qemu-armhf")
    config = run_dir / "dvrlinkd.toml"
    config.write_text(guest_config(info.udp_port, info.public_key))
    guest = Guest(armhf, armhf_image, BootOptions(mem_mb=armhf.default_mem_mb, config=config), run_dir)
    guest.start()
    try:
        try:
            host_broker.process.wait_for(
                rf"serial {SERIAL} bound to key .* on first registration from 127\.0\.0\.1:", BOOT_BOUND
            )
        except TimeoutError as exc:
            tail = "\n".join(guest.console.text.splitlines()[-40:])
            raise AssertionError(f"{exc}\nthe guest's console:\n{tail}{guest.exit_report()}") from None
        registered_s = time.monotonic() - guest.started
        guest.login(300.0)
        yield Booted(guest, host_broker, config, registered_s)
    finally:
        guest.stop()


def test_dvrlinkd_registers_under_busybox_init_in_128_mb(booted: Booted, armhf_image: Image) -> None:
    init = booted.run("readlink /proc/1/exe")
    assert init.endswith("/busybox"), f"/proc/1/exe: {init!r} (BusyBox init expected)"
    assert booted.run("test -e /lib/systemd/systemd; echo $?") == "1", "the armhf image has systemd"
    total = meminfo(booted.run("cat /proc/meminfo"))["MemTotal"]
    assert total <= 128 * 1024, f"MemTotal {total} kB: the guest has more than 128 MB"

    script = booted.run("sha256sum /etc/init.d/S95dvrlinkd")
    expected = hashlib.sha256((BOARD_DIR / "S95dvrlinkd").read_bytes()).hexdigest()
    assert script.split()[0] == expected, f"the guest's S95dvrlinkd is not the board's: {script}"
    config_sum = booted.run("sha256sum /etc/dvrlink/dvrlinkd.toml")
    sent = hashlib.sha256(booted.config.read_bytes()).hexdigest()
    assert config_sum.split()[0] == sent, f"the guest's config is not the one handed in: {config_sum}"
    owner = booted.run("stat -c '%U:%G %a' /etc/dvrlink/dvrlinkd.toml")
    assert owner == "root:dvrlink 640", f"the config's owner and mode: {owner!r}"
    release = booted.run("cat /etc/dvrlink/image-release")
    assert "BOARD=arm-vexpress" in release, f"post-build.sh's image-release: {release!r}"

    supervised = booted.run("/etc/init.d/S95dvrlinkd status | head -1")
    assert "supervisor running" in supervised, supervised
    pid = booted.daemon_pid()
    # S95dvrlinkd opens the watchdog once dvrlinkd is healthy (its first heartbeat).
    armed = booted.run(
        'timeout 300 sh -c \'until [ "$(cat /sys/class/watchdog/watchdog0/state)" = active ];'
        " do sleep 1; done'; cat /sys/class/watchdog/watchdog0/identity"
        " /sys/class/watchdog/watchdog0/state",
        timeout=360,
    )
    assert armed.splitlines()[-1] == "active", f"the watchdog was not opened:\n{armed}"
    log = booted.run("grep S95dvrlinkd /var/log/messages")
    assert "watchdog /dev/watchdog opened" in log, f"S95dvrlinkd's log:\n{log}"

    status = booted.status()
    assert status["state"] == "online", status
    assert status["broker"] == f"{HOST_FROM_GUEST}:{booted.broker.info.udp_port}", status
    rss = booted.run(f"grep VmRSS /proc/{pid}/status").split(":")[-1].strip()
    mem = meminfo(booted.run("cat /proc/meminfo"))
    print(
        f"\narmhf boot to registered under TCG: {booted.registered_s:.1f} s; dvrlinkd RSS {rss};"
        f" MemTotal {mem['MemTotal'] / 1024:.1f} MB, MemFree {mem['MemFree'] / 1024:.1f} MB,"
        f" MemAvailable {mem['MemAvailable'] / 1024:.1f} MB; watchdog {armed.splitlines()[-2]};"
        f" kernel {armhf_image.manifest['kernel']}",
        file=sys.stderr,
    )


@pytest.fixture(scope="module")
def guest_httpd(booted: Booted) -> None:
    """BusyBox httpd in the guest on 127.0.0.1:80 (an allowed forward target), serving WEB_ROOT."""
    served = booted.run(f"mkdir -p {WEB_ROOT} && busybox httpd -p 127.0.0.1:80 -h {WEB_ROOT} && echo serving")
    assert served == "serving", served


@pytest.mark.usefixtures("guest_httpd")
def test_a_viewer_on_the_host_pairs_and_fetches_a_page_from_the_guest(booted: Booted, tmp_path: Path) -> None:
    page = f"dvrlink-hil armhf {os.urandom(8).hex()}\n"
    written = booted.run(f"echo '{page.strip()}' > {WEB_ROOT}/index.html && echo written")
    assert written == "written", written
    label = booted.run("dvrlinkd pairing-code")
    uri = next((line.split(": ", 1)[1] for line in label.splitlines() if "dvrlink://" in line), None)
    assert uri is not None, f"no pairing URI in the guest's dvrlinkd pairing-code output:\n{label}"

    add_user(booted.broker.state_dir, "owner", "pass phrase")
    viewer = Viewer(tmp_path / "viewer")
    viewer.run(
        "login", "--broker", booted.broker.url, "--user", "owner", "--password-stdin",
        "--cacert", str(booted.broker.info.cert), stdin="pass phrase\n",
    )  # fmt: skip
    paired = viewer.run("pair", uri.strip())
    assert f"paired {SERIAL}" in paired.stdout, paired.stdout + paired.stderr

    # The viewer gives each path 20 s to open a session; a 128 MB cortex-a7 under TCG on a busy
    # host can miss that once, so up to FORWARD_ATTEMPTS tries, each reported.
    failures: list[str] = []
    started = time.monotonic()
    while True:
        try:
            forward = start_forward(viewer, SERIAL, 80, timeout=180)
            break
        except TimeoutError as exc:
            failures.append(str(exc))
            if len(failures) == FORWARD_ATTEMPTS:
                raise AssertionError(
                    f"dvrlink forward failed {len(failures)} times:\n" + "\n".join(failures)
                ) from None
    try:
        url = f"http://127.0.0.1:{forward.local_port}/index.html"
        try:
            with urllib.request.urlopen(url, timeout=180) as reply:
                body = reply.read().decode()
        except urllib.error.HTTPError as exc:
            inside = booted.run(f"ls -la {WEB_ROOT}; busybox wget -q -O- http://127.0.0.1/index.html")
            raise AssertionError(f"{url} through the forward: {exc}; in the guest:\n{inside}") from None
        fetched_s = time.monotonic() - started
    finally:
        code = forward.stop()
    assert body == page, f"the page through the forward: {body!r}"
    assert code == 0, f"dvrlink forward exited with {code}"
    print(
        f"\narmhf forward ({forward.path}): command to page {fetched_s:.1f} s"
        f" ({len(failures)} failed tries before: {failures})",
        file=sys.stderr,
    )


def test_the_hardware_watchdog_resets_a_board_whose_dvrlinkd_hangs(booted: Booted) -> None:
    boot_id = booted.run("cat /proc/sys/kernel/random/boot_id")
    registered_before = booted.status()["registered_at"]
    assert isinstance(registered_before, float), registered_before
    pid = booted.daemon_pid()
    console = booted.guest.console
    # Flush the log so far (the reset will not wait for ext4's commit), and let critical kernel
    # lines (softdog's last words) reach the console, which the login set to emergencies only.
    booted.run("sync; dmesg -n 3")
    mark = console.mark()
    stopped, stopped_wall = time.monotonic(), time.time()
    booted.run(f"kill -STOP {pid}")

    # S95dvrlinkd stops feeding after 60 s without a heartbeat; the watchdog's 60 s then run out
    # and it restarts the board: the kernel boots again.
    expired = console.wait_for(
        r"softdog: Initiating system reboot|Booting Linux on physical CPU", RESET_BOUND, mark
    )
    assert "softdog" in expired.group(0), f"the board rebooted without the watchdog: {expired.group(0)!r}"
    reset_s = time.monotonic() - stopped
    booting = console.wait_for(r"Booting Linux on physical CPU", RESET_BOUND, expired.end())
    console.wait_for(rf"{PROMPT}:\S*# ", RESET_BOUND, booting.end())
    booted.run(SHELL_SETUP, timeout=CONSOLE_BOUND)
    booted.wait_online(RESET_BOUND)
    back_s = time.monotonic() - stopped

    new_boot_id = booted.run("cat /proc/sys/kernel/random/boot_id")
    assert new_boot_id != boot_id, f"the same boot id {boot_id}: the board did not reset"
    uptime = float(booted.run("cut -d' ' -f1 /proc/uptime"))
    assert uptime < back_s, f"uptime {uptime} s, but dvrlinkd was stopped {back_s:.0f} s ago"
    status = booted.status()
    registered_after = status["registered_at"]
    assert isinstance(registered_after, float) and registered_after > registered_before, status
    # The guest's clock is the host's (the PL031 RTC), so this is the time to the registration
    # itself, not to when the test's polling (each a Python start in the guest) saw it.
    registered_s = registered_after - stopped_wall
    # The reason, as S95dvrlinkd logged it before the reset (on the snapshot disk, which a reset
    # keeps), and the broker's view: the same device key, no refusal.
    log = booted.run("grep S95dvrlinkd /var/log/messages")
    assert "not feeding the watchdog" in log, f"S95dvrlinkd's log:\n{log}"
    refused = [line for line in booted.broker.process.lines if SERIAL in line and "refus" in line.lower()]
    assert not refused, refused
    new_pid = booted.daemon_pid()
    print(
        f"\narmhf SIGSTOP to board reset: {reset_s:.1f} s; to registered again: {registered_s:.1f} s"
        f" (seen by the test after {back_s:.1f} s)"
        f" (uptime {uptime:.0f} s, dvrlinkd pid {pid} -> {new_pid})",
        file=sys.stderr,
    )
