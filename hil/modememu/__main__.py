"""Run the modem emulator by hand: ``python -m hil.modememu --profile quectel-ec25``.

Prints ``PTY /dev/pts/N`` (and again when the port comes back after ``vanish``), then reads fault
commands from stdin (``help`` lists them). Point a terminal (``picocom /dev/pts/N``) or the daemon
at the path.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from hil.modememu.control import ControlError, apply_command
from hil.modememu.emulator import ModemEmulator
from hil.modememu.model import SimCard
from hil.modememu.profiles import PROFILE_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.modememu", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="generic", choices=PROFILE_NAMES)
    parser.add_argument("--iccid", default=SimCard().iccid)
    parser.add_argument("--mcc-mnc", default="26201", help="home network of the SIM, 5 or 6 digits")
    parser.add_argument("--pin", default=None, help="SIM PIN (default: no PIN lock)")
    parser.add_argument("--spn", default="Emulated", help="service provider name on the SIM")
    parser.add_argument(
        "--working-apn",
        action="append",
        default=None,
        help="an APN that gives a data link (repeat; default: any APN works)",
    )
    parser.add_argument("--no-sim", action="store_true", help="start without a SIM")
    parser.add_argument(
        "--boot-delay", type=float, default=0.5, help="seconds a reset keeps the modem silent"
    )
    args = parser.parse_args(argv)
    try:
        sim = SimCard.for_network(
            args.mcc_mnc,
            iccid=args.iccid,
            pin=args.pin,
            spn=args.spn,
            working_apns=frozenset(args.working_apn) if args.working_apn is not None else None,
        )
    except ValueError as exc:
        parser.error(str(exc))
    emu = ModemEmulator(args.profile, sim, no_sim=args.no_sim, boot_delay_s=args.boot_delay)
    emu.on_path_change = lambda path: print(f"PTY {path}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with emu:
        print(f"PTY {emu.path}", flush=True)
        print(f"profile {args.profile}, SIM {sim.iccid} ({sim.plmn}); type 'help' for faults", flush=True)
        reader = threading.Thread(target=_read_commands, args=(emu, stop), daemon=True)
        reader.start()
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


def _read_commands(emu: ModemEmulator, stop: threading.Event) -> None:
    for line in sys.stdin:
        text = line.strip()
        if text in ("quit", "exit"):
            stop.set()
            return
        try:
            answer = apply_command(emu, text)
        except ControlError as exc:
            answer = f"error: {exc}"
        if answer:
            print(answer, flush=True)
    # stdin closed (e.g. started with </dev/null): keep serving until a signal


if __name__ == "__main__":
    sys.exit(main())
