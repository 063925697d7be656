"""The contract between the modem state machine and the data path behind the modem: what the
manager asks for (:class:`DataRequest`), what the link answers (:class:`DataUp`,
:class:`DataFailed` with a :class:`DataFailure`), and the :class:`DataLink` protocol that
``modem/ppp.py`` (pppd) and ``modem/ecm.py`` (ECM/DHCP) implement."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from dvrlink.modem.apn import ApnSettings
from dvrlink.modem.profiles import DialMethod


class DataFailure(enum.Enum):
    """Why a data link did not come up."""

    NO_CARRIER = "no-carrier"
    """The dial ended with NO CARRIER/BUSY/NO ANSWER, or the call dropped at once."""
    REJECTED = "rejected"
    """The network refused the context (activation error, unknown APN)."""
    AUTH = "auth"
    """PAP/CHAP authentication failed."""
    LCP = "lcp"
    """PPP link negotiation failed (before authentication)."""
    IPCP = "ipcp"
    """No IP address was negotiated (PPP IPCP, or no DHCP lease on the network interface)."""
    TIMEOUT = "timeout"
    """The link did not come up in time."""
    NO_DEVICE = "no-device"
    """The data port or network interface is missing."""
    CONFIG = "config"
    """This system cannot run the data link (pppd's options, its privileges, the kernel's PPP
    support, a missing program): no APN and no modem recovery step fixes it. The detail says what
    to fix; the link is tried again after ``config_backoff_s``, without advancing the APNs."""
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class DataRequest:
    """What the data link needs to bring the call up.

    For ``DialMethod.PPP`` the data link dials ``dial`` on the modem's PPP port and runs pppd
    (the context ``cid`` is already defined with the APN; ``apn`` carries the credentials).
    For ``DialMethod.ECM`` the manager has already started the call over the AT port with the
    profile's command; the data link brings the network interface up (DHCP).
    """

    apn: ApnSettings
    cid: int
    method: DialMethod
    dial: str
    profile: str


@dataclass(frozen=True, slots=True)
class DataUp:
    """The data link is up. ``interface``: the network interface (``ppp0``, ``usb0``)."""

    interface: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class DataFailed:
    """The data link did not come up; ``detail`` is for the log (pppd exit code, DHCP error)."""

    reason: DataFailure
    detail: str = ""


class DataLink(Protocol):
    """The data path behind the modem: pppd supervision (``modem/ppp.py``) or ECM/DHCP
    (``modem/ecm.py``). One call at a time; the driver (``modem/driver.py``) serialises them.

    ``up`` never raises for a failure of the link: it returns :class:`DataFailed`.
    ``probe`` is a health check of the data path (reaching the broker), not "the interface is up".
    ``counters`` are the link's cumulative received and sent bytes since it came up (0, 0 when
    down), for data accounting.
    """

    async def up(self, request: DataRequest) -> DataUp | DataFailed: ...

    async def down(self) -> None: ...

    async def probe(self) -> bool: ...

    def counters(self) -> tuple[int, int]: ...
