"""A stand-in for BusyBox udhcpc, so the ECM data link is tested without touching this machine's network.

It takes udhcpc's options (``-f -i IFACE -t N -T SEC -A SEC -n -q -R -s SCRIPT -S -b``), prints what
udhcpc prints, runs ``-s SCRIPT bound`` with udhcpc's environment (``interface``, ``ip``, ``subnet``,
``router``, ``dns``, ``lease``) and configures nothing. Behaviour, from the environment:

    FAKE_DHCP_RESULT=lease (default) | fail (no lease: exit 1 with -n) | silent (never answers)
    FAKE_DHCP_IP / FAKE_DHCP_ROUTER / FAKE_DHCP_DNS     the lease it reports
    FAKE_DHCP_EXIT_AFTER=SECONDS                        exit (status 0) that long after the lease
    FAKE_DHCP_RECORD=PATH                               write its command line to PATH
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

WITH_ARG = {"-i", "-t", "-T", "-A", "-s", "-x", "-V", "-O", "-p", "-r", "-H", "-F"}
FLAGS = {"-f", "-n", "-q", "-R", "-S", "-b", "-B", "-a", "-C"}


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
    print("udhcpc: started, v1.36.1", flush=True)
    print("udhcpc: broadcasting discover", flush=True)
    result = os.environ.get("FAKE_DHCP_RESULT", "lease")
    if result == "fail":
        print("udhcpc: no lease, failing", flush=True)
        return 1
    if result == "silent":
        while not stop["signal"]:
            time.sleep(0.02)
        return 0
    ip = os.environ.get("FAKE_DHCP_IP", "10.170.3.7")
    router = os.environ.get("FAKE_DHCP_ROUTER", "10.170.3.1")
    print(f"udhcpc: broadcasting select for {ip}, server {router}", flush=True)
    print(f"udhcpc: lease of {ip} obtained from {router}, lease time 7200", flush=True)
    script = options.get("-s")
    if script:
        env = dict(os.environ, interface=iface, ip=ip, subnet="255.255.255.248", router=router, lease="7200")
        env["dns"] = os.environ.get("FAKE_DHCP_DNS", "10.11.12.13 10.11.12.14")
        subprocess.run([script, "bound"], env=env, check=False)
    if "-q" in flags:
        return 0
    exit_after = os.environ.get("FAKE_DHCP_EXIT_AFTER")
    deadline = time.monotonic() + float(exit_after) if exit_after else None
    while not stop["signal"]:
        if deadline is not None and time.monotonic() >= deadline:
            print("udhcpc: exiting", flush=True)
            return 0
        time.sleep(0.02)
    if "-R" in flags:
        print(f"udhcpc: unicasting a release of {ip} to {router}", flush=True)
    print("udhcpc: received SIGTERM", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
