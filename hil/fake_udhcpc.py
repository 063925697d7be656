"""A stand-in for BusyBox udhcpc, so the ECM data link is tested without touching this machine's network.

It takes udhcpc's options (``-f -i IFACE -t N -T SEC -A SEC -n -q -R -s SCRIPT -S -b``), prints what
udhcpc prints, runs ``-s SCRIPT bound`` with udhcpc's environment (``interface``, ``ip``, ``subnet``,
``router``, ``dns``, ``lease``) and, by default, configures nothing. Behaviour, from the environment:

    FAKE_DHCP_RESULT=lease (default) | fail (no lease: exit 1 with -n) | silent (never answers)
    FAKE_DHCP_IP / FAKE_DHCP_ROUTER / FAKE_DHCP_DNS     the lease it reports
    FAKE_DHCP_EXIT_AFTER=SECONDS                        exit (status 0) that long after the lease
    FAKE_DHCP_RECORD=PATH                               write its command line to PATH

Opt-in, for a network namespace of the NAT lab (never on this machine's own interfaces):

    FAKE_DHCP_LEASE_DIR=DIR   take the lease from DIR/IFACE.json, which the modem emulator's data
                              path (hil/modememu/cellular.py) writes while a call is up, in
                              udhcpc's names (ip, subnet, mask, router, lease). Without the file it
                              waits as udhcpc's discovers would (-t tries, -T seconds apart), then
                              "no lease" (exit 1 with -n).
    FAKE_DHCP_CONFIGURE=1     configure the interface as udhcpc's default script does, when no
                              -s script is given: "deconfig" at start and on exit (address flushed,
                              link up), "bound" with the lease (address and default route on the
                              interface; DNS left alone). Uses ip(8).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WITH_ARG = {"-i", "-t", "-T", "-A", "-s", "-x", "-V", "-O", "-p", "-r", "-H", "-F"}
FLAGS = {"-f", "-n", "-q", "-R", "-S", "-b", "-B", "-a", "-C"}
POLL_S = 0.02


class Interface:
    """What udhcpc's default script does to the interface (``FAKE_DHCP_CONFIGURE=1``), with ip(8)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.index = self._ifindex()

    def _ifindex(self) -> str | None:
        try:
            return Path(f"/sys/class/net/{self.name}/ifindex").read_text().strip()
        except OSError:
            return None

    def _ip(self, *args: str) -> str | None:
        """Run ``ip args``; the error text, or None when it worked."""
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
        return None if proc.returncode == 0 else (proc.stderr.strip() or f"ip exited {proc.returncode}")

    def deconfig(self) -> None:
        """No address, link up. Skipped when the interface is gone or is another one by now (the
        modem's next call made a new interface of the same name)."""
        if self.index is None or self._ifindex() != self.index:
            return
        self._ip("addr", "flush", "dev", self.name)
        self._ip("link", "set", self.name, "up")

    def bound(self, lease: dict[str, str]) -> str | None:
        """Address, link up, default route via the router; the error text, or None when done."""
        mask = lease.get("mask") or str(_prefix_len(lease.get("subnet", "255.255.255.0")))
        for args in (
            ("addr", "flush", "dev", self.name),
            ("addr", "add", f"{lease['ip']}/{mask}", "dev", self.name),
            ("link", "set", self.name, "up"),
            ("route", "replace", "default", "via", lease["router"], "dev", self.name),
        ):
            error = self._ip(*args)
            if error is not None:
                return f"ip {' '.join(args)}: {error}"
        return None


def _prefix_len(netmask: str) -> int:
    return sum(bin(int(part)).count("1") for part in netmask.split("."))


def _lease_from_dir(
    lease_dir: str, iface: str, tries: int, gap_s: float, stop: dict[str, int]
) -> dict[str, str] | None:
    """The lease the emulator wrote for ``iface``, waiting up to ``tries`` discovers ``gap_s`` apart."""
    path = Path(lease_dir) / f"{iface}.json"
    deadline = time.monotonic() + tries * gap_s
    next_discover = time.monotonic() + gap_s
    while not stop["signal"]:
        try:
            lease = json.loads(path.read_text())
        except (OSError, ValueError):
            lease = None
        if isinstance(lease, dict) and "ip" in lease and "router" in lease:
            return {str(k): str(v) for k, v in lease.items()}
        now = time.monotonic()
        if now >= deadline:
            return None
        if now >= next_discover:
            next_discover += gap_s
            print("udhcpc: broadcasting discover", flush=True)
        time.sleep(POLL_S)
    return None


def main() -> int:
    argv = sys.argv[1:]
    if "FAKE_DHCP_RECORD" in os.environ:
        with open(os.environ["FAKE_DHCP_RECORD"], "w") as record:
            json.dump(argv, record)
    options: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(argv):
        if argv[i] in WITH_ARG and i + 1 < len(argv):
            options[argv[i]] = argv[i + 1]
            i += 2
        elif argv[i] in FLAGS:
            flags.add(argv[i])
            i += 1
        else:
            print(f"udhcpc: invalid option -- '{argv[i]}'", flush=True)
            return 1
    stop = {"signal": 0}
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.update(signal=signum))
    iface = options.get("-i", "eth0")
    script = options.get("-s")
    configure = os.environ.get("FAKE_DHCP_CONFIGURE") == "1" and not script
    interface = Interface(iface) if configure else None
    print("udhcpc: started, v1.36.1", flush=True)
    if interface is not None:
        if interface.index is None:
            print(f"udhcpc: ioctl 0x8933 failed: No such device ({iface})", flush=True)
            return 1
        interface.deconfig()
    print("udhcpc: broadcasting discover", flush=True)
    result = os.environ.get("FAKE_DHCP_RESULT", "lease")
    if result == "fail":
        print("udhcpc: no lease, failing", flush=True)
        return 1
    if result == "silent":
        while not stop["signal"]:
            time.sleep(POLL_S)
        return 0
    lease: dict[str, str] = {
        "ip": os.environ.get("FAKE_DHCP_IP", "10.170.3.7"),
        "router": os.environ.get("FAKE_DHCP_ROUTER", "10.170.3.1"),
        "subnet": "255.255.255.248",
        "lease": "7200",
    }
    lease_dir = os.environ.get("FAKE_DHCP_LEASE_DIR")
    if lease_dir:
        found = _lease_from_dir(
            lease_dir, iface, int(options.get("-t", "3")), float(options.get("-T", "3")), stop
        )
        if found is None:
            if stop["signal"]:
                print("udhcpc: received SIGTERM", flush=True)
                return 0
            print("udhcpc: no lease, failing", flush=True)
            return 1
        lease = found
    ip, router = lease["ip"], lease["router"]
    print(f"udhcpc: broadcasting select for {ip}, server {router}", flush=True)
    print(
        f"udhcpc: lease of {ip} obtained from {router}, lease time {lease.get('lease', '7200')}", flush=True
    )
    if script:
        env = dict(os.environ, interface=iface, ip=ip, subnet=lease["subnet"], router=router)
        env["lease"] = lease.get("lease", "7200")
        env["dns"] = os.environ.get("FAKE_DHCP_DNS", "10.11.12.13 10.11.12.14")
        subprocess.run([script, "bound"], env=env, check=False)
    elif interface is not None:
        error = interface.bound(lease)
        if error is not None:
            print(f"udhcpc: {error}", flush=True)
            interface.deconfig()
            return 1
    if "-q" in flags:
        return 0
    exit_after = os.environ.get("FAKE_DHCP_EXIT_AFTER")
    deadline = time.monotonic() + float(exit_after) if exit_after else None
    while not stop["signal"]:
        if deadline is not None and time.monotonic() >= deadline:
            print("udhcpc: exiting", flush=True)
            return 0
        time.sleep(POLL_S)
    if "-R" in flags:
        print(f"udhcpc: unicasting a release of {ip} to {router}", flush=True)
    if interface is not None:
        interface.deconfig()
    print("udhcpc: received SIGTERM", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
