"""NAT lab: device and viewer behind real Linux NATs in network namespaces (needs root).

From tests::

    from hil import netlab

    with netlab.topology(device_nat="symmetric", viewer_nat="full_cone", udp_timeout=30) as lab:
        broker = netlab.start_lab_broker(lab, tmp_path / "broker")
        lab.run(lab.device_ns, ["ping", "-c1", lab.broker_addrs[0]])
        lab.set_udp_timeout("device", 60)
        lab.flush_conntrack("device")
        lab.block_udp("device", True)

By hand: ``python -m hil.netlab up <device-nat> [<viewer-nat>] [--profile 3g] [--broker]``,
``python -m hil.netlab list``, ``python -m hil.netlab down``. See docs/netlab.md for the
topology and what each NAT type's rules do.
"""

from hil.netlab.broker import LabBroker, start_lab_broker
from hil.netlab.lab import (
    SKIP_MESSAGE,
    Lab,
    NetlabError,
    Side,
    down,
    lab_prefixes,
    new_prefix,
    topology,
    unavailable_reason,
    wait_until,
)
from hil.netlab.nat import NatType
from hil.netlab.profiles import PROFILES, LinkProfile

__all__ = [
    "PROFILES",
    "SKIP_MESSAGE",
    "Lab",
    "LabBroker",
    "LinkProfile",
    "NatType",
    "NetlabError",
    "Side",
    "down",
    "lab_prefixes",
    "new_prefix",
    "start_lab_broker",
    "topology",
    "unavailable_reason",
    "wait_until",
]
