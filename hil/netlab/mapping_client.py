"""``python -m hil.netlab.mapping_client``: map one UDP port on the router in front of this namespace
with ``dvrlink.session.port_mapping`` and report, as JSON lines on stdout, what happens.

Run inside a lab host namespace (``lab.popen(lab.device_ns, ...)``). It binds a UDP socket, maps
its port with the protocols given, and prints::

    {"event": "mapped", "external": ["100.63.0.2", 40001], "protocol": "pcp", "port": 40001}
    {"event": "unmapped", "failures": [...]}               every protocol failed
    {"event": "received", "data": "hello", "from": [...]}   a datagram reached the mapped socket
    {"event": "renewed", "renewals": 1, "external": [...]}  after each renewal
    {"event": "closed", "confirmed": true}                  after ``close`` (then it exits)

Commands on stdin, one per line: ``renew`` (renew now) and ``close`` (delete the mapping, exit).
End of input closes too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any

from dvrlink.protocol.port_mapping import MappingProtocol
from dvrlink.session.port_mapping import PortMapping, PortMappingConfig


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class _Receiver(asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        _say(event="received", data=data.decode(errors="replace"), **{"from": list(addr)})


async def _run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Receiver, local_addr=("0.0.0.0", args.port))
    port = transport.get_extra_info("sockname")[1]
    config = PortMappingConfig(
        protocols=tuple(MappingProtocol(p) for p in args.protocol),
        lifetime_s=args.lifetime,
        pcp_attempts=2,
        natpmp_attempts=4,
    )
    mapping = await PortMapping.open(port, config)

    def changed(external: tuple[str, int] | None) -> None:
        _say(event="changed", external=list(external) if external else None)

    def renewed(lifetime_s: int) -> None:
        ext = list(mapping.external) if mapping.external else None
        _say(event="renewed", renewals=mapping.stats.renewals, external=ext, lifetime=lifetime_s)

    mapping.on_change = changed
    mapping.on_renewed = renewed
    external = await mapping.wait_mapped(args.timeout)
    if external is None:
        _say(event="unmapped", failures=mapping.stats.failures, port=port)
    else:
        protocol = mapping.protocol.value if mapping.protocol else None
        _say(event="mapped", external=list(external), protocol=protocol, port=port)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := (await reader.readline()).decode().strip():
            if line == "renew":
                mapping.renew()
            elif line == "close":
                break
    finally:
        confirmed = await mapping.close()
        _say(event="closed", confirmed=confirmed)
        transport.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m hil.netlab.mapping_client", description=__doc__)
    parser.add_argument(
        "--protocol", action="append", choices=[p.value for p in MappingProtocol], required=True
    )
    parser.add_argument("--port", type=int, default=0, help="UDP port to bind and map (default: any)")
    parser.add_argument("--lifetime", type=int, default=3600, help="lifetime to ask for, seconds")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for a mapping")
    args = parser.parse_args(argv)
    socket.setdefaulttimeout(args.timeout)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
