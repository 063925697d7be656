"""The guest's modem figures: AT round trip over the pci-serial port, and pppd start to registered.

``python -m bench.hil_modem [--quick] [--at-count N]`` (root; builds or takes the cached arm64
image). Boots the arm64 guest with the modem emulator (a SIM800 profile) on its ``pci-serial``
port, the broker behind the emulator's carrier namespace and no LAN (``hil.qemu.modem``), gives
the guest's dvrlinkd the modem setup and restarts it. Prints figures; asserts nothing.

- pppd start to registered over PPP: from the ``pppd ... started by root`` line to the daemon's
  ``registered: online`` line in the guest's journal (one clock), for the first call after the
  daemon's start, and again for the redial after the emulator drops the call (``NO CARRIER``).
- per-AT-command round trip over the pci-serial port: dvrlinkd stopped, a small Python loop in the
  guest writes ``AT\\r`` to ``/dev/ttyS0`` and reads up to ``OK``, N times (echo off); median,
  p90, min and max. Beside it the same loop on the host against the emulator's PTY without QEMU,
  which is the emulator's and the PTY's share.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import select
import statistics
import sys
import time
import tty
from collections.abc import Sequence
from pathlib import Path
from tempfile import TemporaryDirectory

from hil.modememu.emulator import ModemEmulator
from hil.modememu.model import SimCard
from hil.qemu.boot import Guest
from hil.qemu.build import build
from hil.qemu.modem import GUEST_MODEM_PORT, GuestModem, boot_modem_guest
from hil.qemu.targets import target

SERIAL = "DL-QEMU-BENCH"
PROFILE = "simcom-sim800"
SIM = SimCard.for_network("26201")
BOUND = 900.0

AT_LOOP = """\
import json, os, select, sys, termios, time, tty
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
a = termios.tcgetattr(fd)
a[2] = (a[2] & ~termios.CRTSCTS) | termios.CLOCAL
a[4] = a[5] = termios.B115200
termios.tcsetattr(fd, termios.TCSANOW, a)
def ask(cmd):
    os.write(fd, cmd)
    buf = b""
    while not (buf.endswith(b"OK\\r\\n") or b"ERROR" in buf):
        if not select.select([fd], [], [], 10)[0]:
            raise SystemExit("no reply to %r; got %r" % (cmd, buf))
        buf += os.read(fd, 256)
    return buf
ask(b"ATE0\\r")
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    ask(b"AT\\r")
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""
"""The guest's loop (its own python3 and termios; no dvrlink code)."""


def summary(times: Sequence[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return (
        f"median {statistics.median(ms):.2f} ms, p90 {p90:.2f} ms, min {ms[0]:.2f} ms, "
        f"max {ms[-1]:.2f} ms (n={len(ms)})"
    )


def host_at_loop(count: int) -> list[float]:
    """The same loop on the host against the emulator's PTY, no QEMU in between."""
    with ModemEmulator(PROFILE, SIM) as emu:
        fd = os.open(emu.path, os.O_RDWR | os.O_NOCTTY)
        try:
            tty.setraw(fd)

            def ask(cmd: bytes) -> None:
                os.write(fd, cmd)
                buf = b""
                while not (buf.endswith(b"OK\r\n") or b"ERROR" in buf):
                    if not select.select([fd], [], [], 10)[0]:
                        raise TimeoutError(f"the emulator did not answer {cmd!r}; got {buf!r}")
                    buf += os.read(fd, 256)

            ask(b"ATE0\r")
            times = []
            for _ in range(count):
                started = time.perf_counter()
                ask(b"AT\r")
                times.append(time.perf_counter() - started)
            return times
        finally:
            os.close(fd)


def seconds(value: tuple[float, float] | None) -> str:
    if value is None:
        return "not seen in the journal"
    return f"{value[1]:.1f} s (of which pppd start to IPCP up {value[0]:.1f} s)"


def journal_times(guest: Guest) -> list[tuple[float, str]]:
    """(unix time, kind) of dvrlinkd's pppd starts and registrations in the guest's journal."""
    text = guest.console.run(
        "journalctl -u dvrlinkd -o short-unix --no-pager"
        " | grep -E 'pppd [0-9.]+ started by|PPP up on|registered: online'",
        timeout=120,
    )
    found = []
    for line in text.splitlines():
        if m := re.match(r"^(\d+\.\d+) ", line):
            kind = "pppd" if "started by" in line else "ppp-up" if "PPP up on" in line else "registered"
            found.append((float(m.group(1)), kind))
    return found


def pppd_to_registered(events: list[tuple[float, str]], after: float = 0.0) -> tuple[float, float] | None:
    """(pppd start to IPCP up, pppd start to registered) in seconds, for the first pppd start
    after ``after``; None when the journal lacks one of them."""
    start = next((t for t, kind in events if kind == "pppd" and t > after), None)
    if start is None:
        return None
    up = next((t for t, kind in events if kind == "ppp-up" and t > start), None)
    done = next((t for t, kind in events if kind == "registered" and t > start), None)
    return None if up is None or done is None else (up - start, done - start)


def guest_time(guest: Guest) -> float:
    """The guest's clock (a systemd status line may share the console with the answer)."""
    out = guest.console.run("date +%s.%N", 60)
    found = re.findall(r"^\d+\.\d+$", out, re.M)
    if not found:
        raise ValueError(f"no time in the guest's answer to date: {out!r}")
    return float(found[-1])


def wait_registered(guest: Guest, after: float, timeout: float) -> None:
    script = base64.b64encode(
        (
            "until journalctl -u dvrlinkd -o short-unix --no-pager | grep 'registered: online' | "
            f"awk '$1 > {after} {{found=1}} END {{exit !found}}'; do sleep 1; done\n"
        ).encode()
    ).decode()
    out = guest.console.run(
        f"echo {script} | base64 -d > /tmp/wait.sh; timeout {int(timeout)} sh /tmp/wait.sh; echo rc=$?",
        timeout=timeout + 60,
    )
    if not out.endswith("rc=0"):
        raise TimeoutError(f"dvrlinkd did not register after {after} within {timeout} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hil_modem", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 AT commands instead of 200")
    parser.add_argument("--at-count", type=int, default=None)
    args = parser.parse_args(argv)
    count = args.at_count or (20 if args.quick else 200)
    if os.geteuid() != 0:
        print("bench.hil_modem needs root (network namespaces, TUN, tap); not run")
        return 0

    print(f"host, emulator PTY without QEMU: AT round trip {summary(host_at_loop(count))}", flush=True)
    arm64 = target("arm64")
    image = build(arm64, out=sys.stderr)
    with TemporaryDirectory(prefix="dvrlink-bench-modem-") as tmp:
        run_dir = Path(tmp)
        with GuestModem(run_dir, PROFILE, SIM) as rig:
            assert rig.broker is not None
            guest = boot_modem_guest(
                arm64,
                image,
                run_dir,
                rig,
                serial=SERIAL,
                profile=PROFILE,
                data_link="ppp",
                boot_timeout=BOUND,
            )
            try:
                rig.broker.process.wait_for(rf"serial {SERIAL} bound to key .* on first registration", BOUND)
                first = pppd_to_registered(journal_times(guest))
                print(f"guest: pppd start to registered over PPP, first call: {seconds(first)}", flush=True)

                now = guest_time(guest)
                rig.emulator.drop_carrier()
                wait_registered(guest, now, BOUND)
                again = pppd_to_registered(journal_times(guest), now)
                print(f"guest: pppd start to registered over PPP, redial after NO CARRIER: {seconds(again)}")

                guest.console.run("systemctl stop dvrlinkd", 120)
                out = guest.console.run(
                    f"echo {base64.b64encode(AT_LOOP.encode()).decode()} | base64 -d > /tmp/at.py;"
                    f" timeout 600 python3 /tmp/at.py {GUEST_MODEM_PORT} {count}",
                    660,
                )
                times = json.loads(out.strip().splitlines()[-1])
                print(f"guest: AT round trip over pci-serial {summary(times)}")
            finally:
                guest.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
