"""Boot to registered: the arm64 image in QEMU, dvrlinkd under systemd, a real broker on the host.

The broker runs on the host from the virtualenv; the guest reaches it as 10.0.2.2 over QEMU's user
network. The guest's config is the image's own dvrlinkd.toml (the board overlay's) with the serial
and the broker's address and key set, handed in through fw_cfg. The test
waits for the broker's "bound ... on first registration" line, then checks on the guest's console
that systemd runs dvrlinkd from the image's own unit (Type=notify, WatchdogSec), that the unit and
the config are the ones the test expects, that systemd feeds the emulated watchdog, and that
``dvrlinkd status`` says it is online. It
prints the figures it saw (boot to registered, dvrlinkd's RSS).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
from presence_harness import Program

from dvrlink.broker.state import read_info
from dvrlink.protocol.identity import b64encode_key
from hil.qemu.boot import BootOptions, Guest
from hil.qemu.build import REPO, Image
from hil.qemu.rigconfig import image_config_path, with_values
from hil.qemu.targets import Target

# A cold cache builds the image first (about 5 min), then the boot takes minutes under TCG.
pytestmark = [pytest.mark.hil, pytest.mark.timeout(3600)]

BIN = Path(sys.executable).parent
SERIAL = "DL-QEMU-0001"
HOST_FROM_GUEST = "10.0.2.2"
BOOT_BOUND = 900.0
"""Boot to registered under TCG on a busy 2-core host took about 2 min; generous on purpose."""


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


def test_boot_to_registered(arm64: Target, arm64_image: Image, tmp_path: Path) -> None:
    state = tmp_path / "broker"
    run_dir = tmp_path / "qemu"
    run_dir.mkdir()

    async def main() -> None:
        broker = await Program.start(
            str(BIN / "dvrlink-broker"), "serve", "--state-dir", str(state), "--udp-port", "0",
            "--https-port", "0", "--turn-port", "0", "--presence-tcp-port", "0", bound=60.0,
        )  # fmt: skip
        guest: Guest | None = None
        try:
            await broker.wait_for_line("dvrlink-broker ready")
            info = read_info(state)
            config = tmp_path / "dvrlinkd.toml"
            config.write_text(guest_config(info.udp_port, info.public_key))
            guest = Guest(
                arm64, arm64_image, BootOptions(mem_mb=arm64.default_mem_mb, config=config), run_dir
            )
            guest.start()
            line = await broker.wait_for_line(
                rf"serial {SERIAL} bound to key .* on first registration from 127\.0\.0\.1:", bound=BOOT_BOUND
            )
            registered_s = time.monotonic() - guest.started
            assert "127.0.0.1" in line, line
            await asyncio.to_thread(guest.login, 300.0)
            console = guest.console

            def run(command: str) -> str:
                return console.run(command, timeout=120)

            active = await asyncio.to_thread(run, "systemctl is-active dvrlinkd")
            assert active.strip() == "active", f"systemctl is-active dvrlinkd: {active!r}"
            props = systemd_properties(
                await asyncio.to_thread(
                    run, "systemctl show -p Type,WatchdogUSec,NotifyAccess,MainPID,FragmentPath,User dvrlinkd"
                )
            )
            assert props.get("Type") == "notify", props
            assert props.get("WatchdogUSec") == "1min", props
            assert props.get("NotifyAccess") == "main", props
            assert props.get("User") == "dvrlink", props
            # /lib is /usr/lib in Debian's merged-/usr layout; systemd reports the first path it tried.
            assert props.get("FragmentPath") in (
                "/usr/lib/systemd/system/dvrlinkd.service",
                "/lib/systemd/system/dvrlinkd.service",
            ), props

            unit_sum = await asyncio.to_thread(run, "sha256sum /usr/lib/systemd/system/dvrlinkd.service")
            expected = hashlib.sha256((REPO / "systemd/dvrlinkd.service").read_bytes()).hexdigest()
            assert unit_sum.split()[0] == expected, (
                f"the guest's unit is not systemd/dvrlinkd.service: {unit_sum}"
            )
            config_sum = await asyncio.to_thread(run, "sha256sum /etc/dvrlink/dvrlinkd.toml")
            sent = hashlib.sha256(config.read_bytes()).hexdigest()
            assert config_sum.split()[0] == sent, f"the guest's config is not the one handed in: {config_sum}"
            owner = await asyncio.to_thread(run, "stat -c '%U:%G %a' /etc/dvrlink/dvrlinkd.toml")
            assert owner == "root:dvrlink 640", f"the config's owner and mode: {owner!r}"

            # post-build.sh has systemd feed the board's watchdog (the emulated i6300esb).
            manager = systemd_properties(
                await asyncio.to_thread(run, "systemctl show -p RuntimeWatchdogUSec -p WatchdogDevice")
            )
            assert manager.get("RuntimeWatchdogUSec") == "30s", manager
            wdt = await asyncio.to_thread(run, "cat /sys/class/watchdog/watchdog0/state")
            assert wdt == "active", f"/sys/class/watchdog/watchdog0/state: {wdt!r} ({manager})"

            status_text = await asyncio.to_thread(run, "dvrlinkd status --json")
            status = json.loads(status_text)
            assert status["state"] == "online", f"dvrlinkd status in the guest:\n{status_text}"
            assert status["broker"] == f"{HOST_FROM_GUEST}:{info.udp_port}", status_text
            assert status["transport"] == "udp", status_text
            rss = await asyncio.to_thread(run, f"grep VmRSS /proc/{props['MainPID']}/status")
            print(
                f"\nboot to registered under TCG: {registered_s:.1f} s; dvrlinkd {rss.strip()}; "
                f"kernel {arm64_image.manifest['kernel']}",
                file=sys.stderr,
            )
        finally:
            if guest is not None:
                await asyncio.to_thread(guest.stop)
            await broker.stop()

    asyncio.run(main())
