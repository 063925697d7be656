"""Run the modem emulator by hand: ``python -m hil.modememu --profile quectel-ec25``.

Prints ``PTY /dev/pts/N`` (and again when the port comes back after ``vanish``), then reads fault
commands from stdin (``help`` lists them). Point a terminal (``picocom /dev/pts/N``) or the daemon
at the path.

With ``--data-path PREFIX`` (root; a NAT lab built first, e.g. ``python -m hil.netlab up cgnat
--broker``) each ECM call brings up a real link: the profile's network interface (``usb0``,
``wwan0``) appears in the namespace ``<PREFIX>cell``, behind a carrier namespace ``<PREFIX>carrier``
hung off the lab's carrier-grade NAT, and the lease is written for the stand-in udhcpc. Both
namespaces are removed when the emulator exits.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from hil.modememu.cellular import CarrierDataPath
from hil.modememu.control import ControlError, apply_command
from hil.modememu.emulator import ModemEmulator
from hil.modememu.model import NetworkDelays, SimCard
from hil.modememu.profiles import PROFILE_NAMES, get_profile
from hil.netlab.carrier import Carrier
from hil.netlab.lab import NetlabError

FAKE_UDHCPC = Path(__file__).resolve().parents[1] / "fake_udhcpc.py"


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
    parser.add_argument("--sms-capacity", type=int, default=20, help="messages the SIM store holds")
    parser.add_argument("--attach-delay", type=float, default=0.0, help="seconds a PS attach takes")
    parser.add_argument("--pdp-delay", type=float, default=0.0, help="seconds a PDP context activation takes")
    parser.add_argument(
        "--sms-delay", type=float, default=0.0, help="seconds an SMS takes to reach the modem"
    )
    parser.add_argument(
        "--sms-text-only", action="store_true", help="a modem without SMS PDU mode (AT+CMGF=0 is an ERROR)"
    )
    parser.add_argument(
        "--boot-delay", type=float, default=0.5, help="seconds a reset keeps the modem silent"
    )
    parser.add_argument(
        "--data-path",
        metavar="PREFIX",
        default=None,
        help="ECM calls bring up a link into namespace PREFIXcell behind a carrier in the NAT lab "
        "PREFIX (e.g. dl-; root; build the lab first: python -m hil.netlab up cgnat --broker)",
    )
    parser.add_argument(
        "--lease-dir",
        type=Path,
        default=None,
        help="with --data-path: where each call's lease is written for the stand-in udhcpc "
        "(default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    try:
        sim = SimCard.for_network(
            args.mcc_mnc,
            iccid=args.iccid,
            pin=args.pin,
            spn=args.spn,
            working_apns=frozenset(args.working_apn) if args.working_apn is not None else None,
            sms_capacity=args.sms_capacity,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        NetworkDelays(args.attach_delay, args.pdp_delay, args.sms_delay)
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.ExitStack() as stack:
        data_path = None
        if args.data_path is not None:
            try:
                data_path = stack.enter_context(_data_path(args.profile, args.data_path, args.lease_dir))
            except (ValueError, NetlabError, OSError) as exc:
                parser.error(f"--data-path: {exc}")
        return _serve(args, sim, data_path)


@contextlib.contextmanager
def _data_path(profile: str, prefix: str, lease_dir: Path | None) -> Iterator[CarrierDataPath]:
    """The carrier and device namespaces of lab ``prefix`` for the emulator's calls; removed after.

    Raises:
        ValueError: the profile has no network function, or ``prefix`` is not a lab prefix.
        NetlabError: no such lab, or building failed (the message says what to do).
    """
    interface = get_profile(profile).net_interface
    if interface is None:
        raise ValueError(
            f"profile {profile} has no network function (PPP only): use quectel-ec25, simcom-sim7600, "
            "huawei-e173 or huawei-mu709"
        )
    with contextlib.ExitStack() as stack:
        carrier = stack.enter_context(Carrier.for_prefix(prefix).build())
        cell = carrier.add_subscriber_ns()
        leases = lease_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="modememu-leases-"))
        )
        print(carrier.describe(), flush=True)
        print(
            f"each ECM call: {interface} in namespace {cell}, lease in {leases}/{interface}.json\n"
            f'run the daemon there with [modem] port = the PTY, net_interface = "{interface}", '
            f'dhcp_command = ["{sys.executable}", "{FAKE_UDHCPC}", "-f", "-i", "{{iface}}", "-n", "-R"]:\n'
            f"  FAKE_DHCP_CONFIGURE=1 FAKE_DHCP_LEASE_DIR={leases} "
            f"ip netns exec {cell} dvrlinkd run --config FILE",
            flush=True,
        )
        yield CarrierDataPath(carrier, cell, interface, leases)


def _serve(args: argparse.Namespace, sim: SimCard, data_path: CarrierDataPath | None) -> int:
    profile = get_profile(args.profile)
    if args.sms_text_only:
        profile = replace(profile, sms_text_only=True)
    emu = ModemEmulator(profile, sim, no_sim=args.no_sim, boot_delay_s=args.boot_delay, data_path=data_path)
    emu.set_network_delays(NetworkDelays(args.attach_delay, args.pdp_delay, args.sms_delay))
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
