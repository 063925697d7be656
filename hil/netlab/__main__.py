"""``python -m hil.netlab up|down|list|classify`` (run as root).

python -m hil.netlab up port_restricted_cone symmetric --profile 3g --broker
python -m hil.netlab list
python -m hil.netlab classify            # inside a namespace: ip netns exec dl-dev ...
python -m hil.netlab down                # removes the dl- lab; --all: also leftovers of test runs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hil.netlab import classify as classify_cli
from hil.netlab.broker import start_lab_broker
from hil.netlab.lab import HAND_PREFIX, Lab, NetlabError, down, lab_prefixes, namespaces, unavailable_reason
from hil.netlab.nat import NatType
from hil.netlab.profiles import PROFILES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hil.netlab", description="dvrlink NAT lab (network namespaces, needs root)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    nat_names = [t.value for t in NatType]
    up = sub.add_parser("up", help="build a lab and leave it running")
    up.add_argument(
        "topology", nargs="?", choices=nat_names, help="device NAT (and viewer NAT unless --viewer-nat)"
    )
    up.add_argument("viewer", nargs="?", choices=nat_names, help="viewer NAT (default: public, or hairpin)")
    up.add_argument("--device-nat", choices=nat_names)
    up.add_argument("--viewer-nat", choices=nat_names)
    up.add_argument("--profile", choices=list(PROFILES), default="lan", help="link profile of both uplinks")
    up.add_argument(
        "--udp-timeout", type=int, help="NAT UDP mapping lifetime, seconds (both conntrack timeouts)"
    )
    up.add_argument("--tcp-timeout", type=int, help="NAT TCP established lifetime, seconds")
    up.add_argument("--turn", action="store_true", help="add a namespace for coturn")
    up.add_argument(
        "--ipv6",
        action="store_true",
        help="both hosts also get a global IPv6 address behind a stateful firewall (not hairpin or cgnat)",
    )
    up.add_argument("--broker", action="store_true", help="also start dvrlink-broker in the broker namespace")
    up.add_argument("--prefix", default=HAND_PREFIX, help=f"name prefix (default {HAND_PREFIX})")
    dn = sub.add_parser("down", help="remove a lab (and the processes inside)")
    dn.add_argument("--prefix", default=HAND_PREFIX)
    dn.add_argument("--all", action="store_true", help="every lab, including leftovers of crashed test runs")
    sub.add_parser("list", help="list labs and their namespaces")
    cl = sub.add_parser("classify", help="classify the NAT in front of this namespace (RFC 5780)")
    classify_cli.add_arguments(cl)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "classify":
        return classify_cli.run(args)
    reason = unavailable_reason()
    if reason is not None:
        print(f"netlab: {reason}", file=sys.stderr)
        return 1
    if args.command == "list":
        names = namespaces()
        for prefix in lab_prefixes():
            print(f"{prefix}: {' '.join(n for n in names if n.startswith(prefix))}")
        return 0
    if args.command == "down":
        prefixes = lab_prefixes() if args.all else [args.prefix]
        for prefix in prefixes:
            removed = down(prefix)
            print(
                f"{prefix}: removed {len(removed)} namespaces" if removed else f"{prefix}: nothing to remove"
            )
        return 0
    device = args.device_nat or args.topology or "public"
    viewer = args.viewer_nat or args.viewer or ("hairpin" if device == "hairpin" else "public")
    lab = Lab(args.prefix, NatType.parse(device), NatType.parse(viewer), args.profile,
              args.udp_timeout, None, args.tcp_timeout, args.turn, ipv6=args.ipv6)  # fmt: skip
    try:
        lab.build()
    except (NetlabError, ValueError) as exc:
        print(f"netlab: {exc}", file=sys.stderr)
        return 1
    print(lab.describe())
    if args.broker:
        state = Path(tempfile.mkdtemp(prefix=f"netlab-{args.prefix}broker-"))
        broker = start_lab_broker(lab, state)
        lab.release_processes()  # the broker outlives this command; `down` stops it
        print(f"broker: pid {broker.proc.pid}, STUN {broker.primary[0]}:{broker.primary[1]} "
              f"(RFC 5780 alternate {broker.alternate[0]}:{broker.alternate[1]}), "
              f"API {broker.https_url}, state {state}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
