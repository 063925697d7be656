"""Data-path health: can the broker be reached through the modem's interface?

"The interface is up" says little on a cellular link: the PDP context can be dead while ``ppp0``
still has its address, or the carrier can drop all traffic until re-attach. So the manager's
``DataLink.probe()`` asks the broker itself, through the modem's interface only (``SO_BINDTODEVICE``
plus the link's local address, so a wired uplink cannot answer for it):

- ``udp`` (default): a STUN Binding Request (RFC 8489) to the broker's STUN port. The broker answers
  STUN anyway, the request is 20 bytes and the answer about 32, so a probe costs next to nothing on a
  metered SIM, and it exercises the same UDP path as presence. Any STUN response with our
  transaction id (success or error) proves the path. Retransmits follow RFC 8489 (RTO doubling).
- ``tcp``: a TCP handshake to the broker's port (where UDP is blocked).

:class:`StunProbe` is the sans-I/O core (bytes and time in, bytes and a verdict out);
:class:`DataPathProbe` is the asyncio part, a callable the data links take as ``path_probe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import socket
from dataclasses import dataclass

from dvrlink.modem.ppp import LinkUp
from dvrlink.protocol.stun_probe import ProbeVerdict, StunProbe

log = logging.getLogger(__name__)


class ProbeTransport(enum.Enum):
    """How the broker is reached."""

    UDP = "udp"
    """STUN Binding Request to the broker's STUN port."""
    TCP = "tcp"
    """TCP handshake to a broker port."""


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """Settings of the data-path probe."""

    host: str
    """The broker's host name or address."""
    port: int = 3478
    """STUN port for ``udp``; a listening TCP port (e.g. 443) for ``tcp``."""
    transport: ProbeTransport = ProbeTransport.UDP
    timeout_s: float = 8.0
    """Seconds before one probe counts as failed (GPRS round trips reach 1-2 s)."""
    initial_rto_s: float = 0.5
    """First UDP retransmission timeout; it doubles after each try (RFC 8489 section 6.2.1)."""
    bind_to_device: bool = True
    """Bind to the link's interface (needs CAP_NET_RAW); without it only the source address is set."""

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("probe host is empty: set the broker's address")
        if not 0 < self.port < 65536:
            raise ValueError(f"probe port {self.port} is not 1-65535")
        if not (self.timeout_s > 0 and self.initial_rto_s > 0):
            raise ValueError("probe timeout_s and initial_rto_s must be positive seconds")


# ------------------------------------------------------------------------------------ asyncio I/O


class DataPathProbe:
    """``await probe(link_up)`` → True when the broker answered through the link's interface.

    Never raises for network errors: they are a failed probe, logged at debug with the reason.
    """

    def __init__(self, config: ProbeConfig) -> None:
        self._config = config

    async def __call__(self, up: LinkUp) -> bool:
        try:
            family, address = await self._resolve()
            if self._config.transport is ProbeTransport.TCP:
                ok = await self._tcp(up, family, address)
            else:
                ok = await self._udp(up, family, address)
        except OSError as exc:
            log.debug("probe of %s via %s failed: %s", self._config.host, up.interface, exc)
            return False
        if not ok:
            log.debug(
                "probe of %s:%s via %s: no answer within %g s",
                self._config.host,
                self._config.port,
                up.interface,
                self._config.timeout_s,
            )
        return ok

    async def _resolve(self) -> tuple[int, tuple[str, int]]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            self._config.host, self._config.port, family=socket.AF_INET, proto=socket.IPPROTO_UDP
        )
        family, _, _, _, sockaddr = infos[0]
        return family, (str(sockaddr[0]), int(sockaddr[1]))

    def _socket(self, up: LinkUp, family: int, kind: int) -> socket.socket:
        sock = socket.socket(family, kind)
        try:
            sock.setblocking(False)
            if self._config.bind_to_device and up.interface:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, up.interface.encode() + b"\0")
                except PermissionError:
                    log.debug(
                        "probe: no CAP_NET_RAW to bind to %s; binding the source address only", up.interface
                    )
            if up.local_ip:
                sock.bind((up.local_ip, 0))
        except OSError:
            sock.close()
            raise
        return sock

    async def _tcp(self, up: LinkUp, family: int, address: tuple[str, int]) -> bool:
        loop = asyncio.get_running_loop()
        sock = self._socket(up, family, socket.SOCK_STREAM)
        try:
            async with asyncio.timeout(self._config.timeout_s):
                await loop.sock_connect(sock, address)
            return True
        except TimeoutError:
            return False
        finally:
            sock.close()

    async def _udp(self, up: LinkUp, family: int, address: tuple[str, int]) -> bool:
        loop = asyncio.get_running_loop()
        sock = self._socket(up, family, socket.SOCK_DGRAM)
        core = StunProbe(
            os.urandom(12), timeout_s=self._config.timeout_s, initial_rto_s=self._config.initial_rto_s
        )
        wake = asyncio.Event()

        def readable() -> None:
            while True:
                try:
                    data = sock.recv(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # ICMP port or host unreachable
                    if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                        core.unreachable()
                    break
                core.datagram_received(data, loop.time())
            wake.set()

        try:
            sock.connect(address)
            loop.add_reader(sock.fileno(), readable)
            core.start(loop.time())
            while core.verdict is ProbeVerdict.PENDING:
                for datagram in core.datagrams_to_send():
                    try:
                        sock.send(datagram)
                    except BlockingIOError:
                        pass  # the next retransmission goes out
                    except ConnectionRefusedError:  # an earlier ICMP port unreachable
                        core.unreachable()
                deadline = core.get_timer()
                if deadline is None:
                    break
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.0, deadline - loop.time()))
                core.handle_timer(loop.time())
            return core.verdict is ProbeVerdict.REACHED
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
