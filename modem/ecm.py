"""The ECM/RNDIS/NDIS data link: DHCP on the modem's network interface.

For an ECM-style modem the call is started over the AT port with the profile's vendor command
(Quectel ``AT+QNETDEVCTL=1,<cid>,1``, SIMCom ``AT$QCRMCALL=1,<cid>``, Huawei ``AT^NDISDUP=<cid>,1,
"<apn>"`` and its ``^NDISSTAT`` URC); the modem manager does that on its AT engine
(``modem/manager.py``), then calls this link's ``up``. What is left is the IP layer: a DHCP client on
the modem's network interface (``usb0``, ``wwan0``: :class:`~dvrlink.modem.detect.ModemAdded`'s
``net_iface``, found as the USB device's network child, never guessed).

The DHCP client is a configurable command, BusyBox ``udhcpc`` by default (what a Buildroot image
has), run in the foreground and kept running so it renews the lease; its default script configures
the address, route and DNS. The link is up when its output says ``lease of <ip> obtained`` (the
pattern is configurable for other clients), or, with ``oneshot`` (``udhcpc -q``, ``dhclient -1``),
when it exits 0. A client that exits with an error before a lease, or stays silent past
``dhcp_timeout_s``, is a failed link; a client that exits after the lease takes the link down.
Tests run a stand-in client (``hil/fake_udhcpc.py``) so this machine's network stays as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dvrlink.modem.data_link import DataFailed, DataFailure, DataLink, DataRequest, DataUp
from dvrlink.modem.ppp import FailureAction, LinkFailed, LinkUp, PathProbe, interface_counters

log = logging.getLogger(__name__)

DEFAULT_DHCP_COMMAND = ("udhcpc", "-f", "-i", "{iface}", "-t", "5", "-T", "3", "-n", "-R")
"""BusyBox udhcpc: foreground, this interface, 5 discovers 3 s apart, exit if no lease, release on exit."""


@dataclass(frozen=True, slots=True)
class EcmConfig:
    """Settings of the ECM data link."""

    dhcp_command: tuple[str, ...] = DEFAULT_DHCP_COMMAND
    """The DHCP client; ``{iface}`` is replaced by the interface name."""
    lease_pattern: str = r"lease of (?P<ip>[0-9a-fA-F.:]+) obtained"
    """A line of the client's output that means a lease was obtained; ``ip`` group optional."""
    dhcp_timeout_s: float = 30.0
    """Seconds to wait for a lease before giving up."""
    stop_timeout_s: float = 5.0
    """Seconds the client gets after SIGTERM (to release the lease) before SIGKILL."""
    oneshot: bool = False
    """The client exits after configuring the interface (``udhcpc -q``, ``dhclient -1``): the link
    stays up after it exits with 0. Otherwise the client keeps running to renew the lease, and its
    exit takes the link down."""
    sysfs_net: Path = Path("/sys/class/net")
    """Where network interfaces are listed (for the existence check and byte counters)."""
    environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Extra environment variables for the client."""

    def __post_init__(self) -> None:
        if not self.dhcp_command or not any("{iface}" in word for word in self.dhcp_command):
            raise ValueError("ecm dhcp_command must name a program and pass it the interface as {iface}")
        try:
            re.compile(self.lease_pattern)
        except re.error as exc:
            raise ValueError(
                f"ecm lease_pattern {self.lease_pattern!r} is not a regular expression: {exc}"
            ) from None
        if self.dhcp_timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ValueError("ecm dhcp_timeout_s and stop_timeout_s must be positive seconds")


def dhcp_argv(config: EcmConfig, interface: str) -> list[str]:
    """The DHCP client's command line for ``interface``.

    Raises:
        ValueError: the interface name is not a Linux interface name.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", interface):
        raise ValueError(f"network interface {interface!r} is not a valid interface name")
    return [word.replace("{iface}", interface) for word in config.dhcp_command]


class EcmLink:
    """DHCP on an ECM modem's network interface; a ``DataLink`` of the manager (see module docstring).

    ``path_probe`` judges the data path once up; without one, a running client with a lease counts
    as healthy.
    """

    def __init__(self, config: EcmConfig, interface: str, *, path_probe: PathProbe | None = None) -> None:
        self._config = config
        self._interface = interface
        self._path_probe = path_probe
        self._pattern = re.compile(config.lease_pattern)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lease: asyncio.Future[str] | None = None
        self._up: LinkUp | None = None

    @property
    def interface(self) -> str:
        """The network interface."""
        return self._interface

    @property
    def pid(self) -> int | None:
        """The DHCP client's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def alive(self) -> bool:
        """True while the link has a lease and (for a long-running client) the client runs."""
        if self._up is None or self._proc is None:
            return False
        return self._proc.returncode is None or (self._config.oneshot and self._proc.returncode == 0)

    @property
    def last_up(self) -> LinkUp | None:
        """The interface and address while up, else None."""
        return self._up if self.alive else None

    async def up(self, request: DataRequest) -> DataUp | DataFailed:
        """The manager's ``DataLink.up`` (the call is already started over AT): get a lease.

        Raises:
            RuntimeError: the DHCP client is still running; call ``down()`` first.
        """
        result = await self.start()
        if isinstance(result, LinkUp):
            return DataUp(result.interface, result.local_ip)
        return result.to_data_failed()

    async def down(self) -> None:
        """The manager's ``DataLink.down``: :meth:`stop`."""
        await self.stop()

    async def probe(self) -> bool:
        """The manager's ``DataLink.probe``: False at once without a lease, else the path probe's verdict."""
        up = self.last_up
        if up is None:
            return False
        if self._path_probe is None:
            return True
        return await self._path_probe(up)

    def counters(self) -> tuple[int, int]:
        """Bytes received and sent on the interface; (0, 0) when down or unreadable."""
        return (0, 0) if self.last_up is None else interface_counters(self._config.sysfs_net, self._interface)

    async def start(self) -> LinkUp | LinkFailed:
        """Run the DHCP client on the interface and wait for a lease.

        Returns the interface and address, or how it failed (never raises for a DHCP failure).

        Raises:
            RuntimeError: the client is still running; call ``stop()`` first.
            ValueError: the interface name is invalid.
        """
        if self.pid is not None:
            raise RuntimeError(f"DHCP client on {self._interface} is already running: call down() first")
        await self._cleanup()
        argv = dhcp_argv(self._config, self._interface)
        if not (self._config.sysfs_net / self._interface).exists():
            return LinkFailed(
                FailureAction.RECOVER,
                f"network interface {self._interface} does not exist: check that the modem is in its ECM "
                'composition (Quectel AT+QCFG="usbnet",1) and that its driver (cdc_ether, rndis_host, '
                "qmi_wwan) is loaded",
                failure=DataFailure.NO_DEVICE,
            )
        loop = asyncio.get_running_loop()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self._config.environment},
            )
        except OSError as exc:
            return LinkFailed(
                FailureAction.CONFIG,
                f"cannot run DHCP client {argv[0]}: {exc}: install it or fix [modem] dhcp_command",
                failure=DataFailure.CONFIG,
            )
        self._lease = loop.create_future()
        self._reader = loop.create_task(self._read_output())
        log.info("DHCP on %s: started %s", self._interface, argv[0])
        exited = loop.create_task(self._proc.wait())
        waiters: set[asyncio.Future[Any]] = {self._lease, exited}
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=self._config.dhcp_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not exited.done():
                exited.cancel()
        if self._lease.done():
            self._up = LinkUp(self._interface, self._lease.result())
            log.info("DHCP on %s: lease %s", self._interface, self._up.local_ip or "(address not reported)")
            return self._up
        if exited in done:
            code = exited.result()
            if self._reader is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(self._reader, 1.0)  # a lease line just before the exit
            if code == 0 and self._config.oneshot:  # configured the interface and left
                self._up = LinkUp(self._interface, self._lease.result() if self._lease.done() else "")
                return self._up
            await self._cleanup()
            return LinkFailed(
                FailureAction.NEXT_APN,
                f"no DHCP lease on {self._interface}: {argv[0]} exited with {code}; the call may not be "
                "active (check the dial command's result) or the APN gives no address",
                code,
                DataFailure.IPCP,
            )
        await self.stop()
        return LinkFailed(
            FailureAction.RETRY,
            f"no DHCP lease on {self._interface} within {self._config.dhcp_timeout_s:g} s: "
            "the client was stopped",
            failure=DataFailure.TIMEOUT,
        )

    async def stop(self) -> int | None:
        """Stop the DHCP client (SIGTERM so it can release the lease, then SIGKILL); returns its
        exit status, or None when none ran. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self._config.stop_timeout_s)
            except TimeoutError:
                log.warning("DHCP client on %s ignored SIGTERM: killing it", self._interface)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        code = proc.returncode
        await self._cleanup()
        log.info("DHCP on %s: stopped (%s)", self._interface, code)
        return code

    async def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            log.debug("dhcp[%s]: %s", self._proc.pid, line)
            match = self._pattern.search(line)
            if match and self._lease is not None and not self._lease.done():
                self._lease.set_result(match.groupdict().get("ip") or "")

    async def _cleanup(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, 1.0)
        self._reader = None
        self._proc = None
        self._lease = None
        self._up = None


if TYPE_CHECKING:  # EcmLink is a DataLink of the manager; mypy checks it here
    _: DataLink = EcmLink(EcmConfig(), "usb0")
