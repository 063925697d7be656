"""The RFC 5780 classifier (``dvrlink.protocol.nat_classify``) from a lab namespace.

Run it inside a namespace: ``ip netns exec dl-dev python -m hil.netlab classify --server
203.0.113.10:3478``. It opens two UDP sockets on the local address that routes to the server
(the MAIN one for the tests, the HAIRPIN one for the hairpinning test), runs the core with the
driver the daemon and netcheck use (``session/netcheck.py``), and prints the result (``--json``
for programs). Exit status 0 when a behaviour was found, 1 when it is unknown (e.g. the server
has no alternate address), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from dvrlink.protocol.nat_classify import ClassifierConfig, NatBehaviour
from dvrlink.session.netcheck import classify_nat


async def classify(config: ClassifierConfig, local_ip: str | None = None) -> NatBehaviour:
    """Run the tests from ``local_ip`` (default: the address routing to the server), driven by
    the session layer's driver (``session/netcheck.py``), as the daemon and netcheck run them.

    Raises:
        OSError: no route to the server, or the sockets cannot be bound.
    """
    behaviour: NatBehaviour = await classify_nat(
        config.server,
        retransmit_s=config.retransmit_interval,
        test_timeout_s=config.test_timeout,
        hairpin=config.hairpin,
        local_ip=local_ip,
    )
    return behaviour


def behaviour_json(result: NatBehaviour) -> dict[str, Any]:
    """``result`` as plain JSON values."""
    return {
        "name": result.name,
        "udp": result.udp,
        "nat": result.nat,
        "local": list(result.local),
        "mapped": list(result.mapped) if result.mapped else None,
        "other_address": list(result.other_address) if result.other_address else None,
        "mapping": result.mapping.value if result.mapping else None,
        "filtering": result.filtering.value if result.filtering else None,
        "hairpin": result.hairpin,
        "mapped_ports": list(result.mapped_ports),
        "port_delta": result.port_delta,
        "notes": list(result.notes),
        "describe": result.describe(),
    }


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. 203.0.113.10:3478")
    return host, int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``classify`` options."""
    parser.add_argument("--server", type=_address, default=("203.0.113.10", 3478),
                        help="the broker's STUN address HOST:PORT (default: the lab broker)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=2.0,
                        help="seconds each test waits for its answer (5 or more on GPRS)")  # fmt: skip
    parser.add_argument("--no-hairpin", action="store_true", help="skip the hairpinning test")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``classify`` with parsed ``args``; returns the exit status."""
    try:
        config = ClassifierConfig(
            server=args.server,
            retransmit_interval=min(0.25, args.timeout),
            test_timeout=args.timeout,
            hairpin=not args.no_hairpin,
        )
        result = asyncio.run(classify(config))
    except (OSError, ValueError) as exc:
        print(
            f"classify: {exc}; check that the server address is reachable from this namespace",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(behaviour_json(result)) if args.json else result.describe())
    return 1 if result.name == "unknown" else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hil.netlab.classify``."""
    parser = argparse.ArgumentParser(prog="python -m hil.netlab classify", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
