"""A real data path behind the emulator's ECM calls: a veth into a carrier namespace of the NAT lab.

:class:`CarrierDataPath` is a :class:`~hil.modememu.model.DataPath`. When the emulated modem
accepts an ECM/NDIS call it asks the carrier (:class:`hil.netlab.carrier.Carrier`) for a link:
the modem's network interface appears in the device namespace (``usb0``, ``wwan0``: the
profile's ``net_interface``), and the lease for it is written to ``<lease_dir>/<interface>.json``
in udhcpc's names (``ip``, ``subnet``, ``router``, ``lease``, ...), where the stand-in DHCP client
(``hil/fake_udhcpc.py`` with ``FAKE_DHCP_LEASE_DIR``) picks it up. When the call ends (hang-up,
network drop, lost signal or registration, SIM removal, reset, the port vanishing) the lease file
is removed and the link goes away, so traffic over the interface stops as it does on a real modem.

PPP calls get no network path here; :class:`hil.modememu.ppp_link.PppDataPath` answers them
(a PPP server, and a TUN device in the carrier namespace).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from hil.netlab.carrier import Lease

log = logging.getLogger(__name__)


class CarrierLink(Protocol):
    """What the data path needs of :class:`hil.netlab.carrier.Carrier`."""

    def connect(self, device_ns: str, interface: str) -> Lease: ...

    def disconnect(self, device_ns: str, interface: str) -> bool: ...


def lease_file(lease_dir: Path, interface: str) -> Path:
    """Where the lease for ``interface`` is written (and ``fake_udhcpc`` looks for it)."""
    return lease_dir / f"{interface}.json"


class CarrierDataPath:
    """ECM calls of one emulated modem as links from ``device_ns`` into the carrier.

    ``errors`` collects what went wrong (a failed ``ip`` command): the emulator's thread must not
    raise, so a call whose link could not be made simply carries nothing and the host's DHCP
    client finds no lease.
    """

    def __init__(self, carrier: CarrierLink, device_ns: str, interface: str, lease_dir: Path) -> None:
        self.carrier = carrier
        self.device_ns = device_ns
        self.interface = interface
        self.lease_dir = lease_dir
        self.lease: Lease | None = None
        """The lease of the call up now; None between calls."""
        self.leases: list[Lease] = []
        """Every lease handed out, in order."""
        self.errors: list[str] = []

    def connected(self, apn: str, mode: str, send: Callable[[bytes], None]) -> None:
        """A call started: bring up the link and write its lease (ECM only)."""
        if mode != "ecm":
            log.warning("PPP call on APN %r: no network path behind it (use ppp_link.PppDataPath)", apn)
            return
        try:
            lease = self.carrier.connect(self.device_ns, self.interface)
            self._write_lease(lease)
        except (OSError, RuntimeError) as exc:
            self.errors.append(f"call on APN {apn!r}: {exc}")
            log.error("no data path for the call on APN %r: %s", apn, exc)
            return
        self.lease = lease
        self.leases.append(lease)
        log.info("call on APN %r: %s %s via %s", apn, self.interface, lease.address, lease.router)

    def received(self, data: bytes) -> None:
        """PPP bytes from the host: dropped (see the module docstring)."""

    def disconnected(self) -> None:
        """The call ended: withdraw the lease, then take the link away."""
        lease_file(self.lease_dir, self.interface).unlink(missing_ok=True)
        self.lease = None
        try:
            self.carrier.disconnect(self.device_ns, self.interface)
        except (OSError, RuntimeError) as exc:
            self.errors.append(f"hang-up: {exc}")
            log.error("could not take the data path down: %s", exc)

    def _write_lease(self, lease: Lease) -> None:
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        target = lease_file(self.lease_dir, self.interface)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(lease.as_udhcpc()) + "\n")
        os.replace(tmp, target)  # the client never reads half a lease
