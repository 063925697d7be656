"""The modem emulator wired to a QEMU guest: a UART modem on ``pci-serial``, PPP into a carrier.

What a recorder with a SIM800 (one UART, PPP on the AT port) or an ECM modem (a USB network
function) sees, built on the host around a guest from :mod:`hil.qemu.boot`::

    guest ttyS0 (pci-serial) ── QEMU tty chardev ── emulator PTY ── PppServer ── TUN ppp<N> ──┐
    guest enp0s16 (virtio-net) ── QEMU tap ── tap <prefix>ecm ── udhcpd ─────────────────────┤
                                         <prefix>carrier (forwards) ── inet0 ── <prefix>inet ┘
                                                                     broker on 192.0.2.10

- :class:`CarrierNamespace`: two network namespaces named with a NAT lab prefix (so ``python -m
  hil.netlab down --prefix`` removes a leftover): the carrier, where calls land, and behind it
  the broker's. The host's own namespace has no route to the broker's address, so a
  registration the broker sees can only have come over the modem.
- :class:`EcmNic`: a second guest NIC on a tap device that is moved into the carrier namespace
  after QEMU opened it, with BusyBox ``udhcpd`` there; :class:`EcmLinkPath` is the emulator's
  data path for ECM calls and raises or drops that NIC's link through QEMU's monitor
  (``set_link``) as calls start and end, as a USB modem's network function comes and goes.
- :class:`GuestModem`: the emulator (its PTY is the guest's ``pci-serial`` port, a
  ``-chardev serial``), the PPP server into a TUN device in the carrier namespace, and the ECM NIC.

The guest itself needs a few things its image does not have yet: :data:`GUEST_SETUP` (pppd as
root, the DHCP client's script) and :func:`guest_cmdline` (no LAN: the user-network NIC stays
unconfigured, so the modem is the only way out). Needs root.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import subprocess
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dvrlink.protocol.identity import b64encode_key
from hil.modememu.emulator import ModemEmulator
from hil.modememu.model import SimCard
from hil.modememu.ppp_link import PppDataPath, TunCarrier
from hil.modememu.ppp_server import PppServerConfig
from hil.netlab.lab import (
    NetlabError,
    add_namespace,
    add_veth,
    down,
    ip_batch,
    new_prefix,
    run_command,
    set_sysctl,
)
from hil.qemu.boot import BootError, BootOptions, Guest
from hil.qemu.build import Image
from hil.qemu.host import HostBroker
from hil.qemu.rigconfig import Value, image_config_path, with_values
from hil.qemu.targets import Target

log = logging.getLogger(__name__)

BROKER_ADDRESS = "192.0.2.10"
"""The broker, in a namespace behind the carrier (TEST-NET-1: nothing on the host routes it)."""
ECM_NET = ipaddress.IPv4Network("198.51.100.0/24")
"""The ECM NIC's subnet in the carrier (TEST-NET-2): the carrier .1, the guest .2."""
ECM_NETDEV = "ecm0"
"""QEMU's id of the ECM NIC's backend (``set_link ecm0 on|off``)."""
ECM_PCI_SLOT = 0x10
"""The ECM NIC's PCI slot: systemd names it ``enp0s16`` in the guest."""
ECM_GUEST_INTERFACE = f"enp0s{ECM_PCI_SLOT}"
ECM_MAC = "52:54:00:d1:ec:01"
MODEM_PCI_SLOT = 0x11
GUEST_MODEM_PORT = "/dev/ttyS0"
"""The ``pci-serial`` port in the arm64 guest: the first 8250 port (the board console is the PL011)."""
GUEST_UDHCPC_SCRIPT = "/etc/dvrlink-hil/udhcpc.script"
DROP_IN_PATH = "/etc/systemd/system/dvrlinkd.service.d/pppd.conf"

IMAGE_DROP_IN = "/usr/share/dvrlink/dvrlinkd-pppd.conf"
"""Where the image holds the product's drop-in for a PPP modem (systemd/dvrlinkd-pppd.conf;
docs/operating.md, "Permissions"); the rig installs it on the guest's console."""

UDHCPC_SCRIPT = """\
#!/bin/sh
# dvrlink QEMU rig: what BusyBox's default udhcpc script does, minus resolv.conf.
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
  ip -4 addr flush dev "$interface"
  ip addr add "$ip/${mask:-24}" dev "$interface"
  for r in $router; do ip route replace default via "$r" dev "$interface"; break; done ;;
esac
exit 0
"""


def guest_setup(*, pppd_as_root: bool = True) -> str:
    """One shell line (for the guest's root console) that gives the guest's dvrlinkd what its
    image lacks for a modem: pppd runnable (``pppd_as_root``) and a udhcpc script. Restart the
    daemon afterwards (``systemctl restart --no-block dvrlinkd``: a plain restart waits for its
    first registration)."""
    files = {GUEST_UDHCPC_SCRIPT: UDHCPC_SCRIPT}
    steps = []
    for path, text in files.items():
        data = base64.b64encode(text.encode()).decode()
        steps.append(f"mkdir -p {Path(path).parent} && echo {data} | base64 -d > {path}")
    if pppd_as_root:
        # The image's own copy of the product's drop-in, installed as the docs tell an installer.
        steps.append(f"install -D -m 0644 {IMAGE_DROP_IN} {DROP_IN_PATH}")
    steps.append(f"chmod 0755 {GUEST_UDHCPC_SCRIPT}")
    steps.append("systemctl daemon-reload")
    return " && ".join(steps)


def guest_cmdline() -> str:
    """Kernel arguments: no networkd, so the user-network NIC stays down and the modem is the
    guest's only way out."""
    return (
        "systemd.mask=systemd-networkd.service systemd.mask=systemd-networkd.socket "
        "systemd.mask=systemd-networkd-wait-online.service"
    )


def modem_config(
    base: str,
    *,
    serial: str,
    broker_port: int,
    broker_key_b64: str,
    profile: str,
    data_link: str,
    extra: dict[str, Value] | None = None,
    port: str = GUEST_MODEM_PORT,
) -> str:
    """The image's dvrlinkd.toml (``base``) with the serial, the broker in the carrier, and a
    ``[modem]`` on ``port``: the guest's ``pci-serial`` port, or a bench board's modem UART.

    pppd gets ``nocrtscts``: Debian's ``/etc/ppp/options`` asks for hardware flow control, and
    QEMU's tty backend reports a PTY's modem lines as all low, so CTS would hold back every byte.
    """
    modem: dict[str, Value] = {
        "enabled": True,
        "profile": profile,
        "port": port,
        "data_link": data_link,
        "pppd": "@PPPD@",
        "dhcp_command": "@DHCP@",
    }
    if data_link == "ecm":
        modem["net_interface"] = ECM_GUEST_INTERFACE
    modem.update(extra or {})
    text = with_values(
        base,
        {
            "device": {"serial": serial},
            "broker": {"host": BROKER_ADDRESS, "port": broker_port, "public_key": broker_key_b64},
            "modem": modem,
        },
    )
    dhcp = ["busybox", "udhcpc", "-f", "-i", "{iface}", "-t", "5", "-T", "3", "-n", "-R"]
    text = text.replace('"@PPPD@"', json.dumps(["/usr/sbin/pppd", "nocrtscts"]))
    text = text.replace('"@DHCP@"', json.dumps([*dhcp, "-s", GUEST_UDHCPC_SCRIPT]))
    tomllib.loads(text)
    return text


class CarrierNamespace:
    """The carrier namespace ``<prefix>carrier`` (where the modem's calls land; it forwards) and
    behind it ``<prefix>inet``, whose only address is the broker's: the broker's replies leave
    from the address the device sent to, whichever call they go back over."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or new_prefix()
        self.name = f"{self.prefix}carrier"
        self.inet = f"{self.prefix}inet"

    def create(self) -> None:
        """Raises NetlabError (not root, ``ip`` missing, a name taken)."""
        gateway = ipaddress.IPv4Address(BROKER_ADDRESS) - 9
        add_namespace(self.name, self.prefix)
        add_namespace(self.inet, self.prefix)
        add_veth(self.name, "inet0", self.inet, "eth0")
        ip_batch(self.name, [f"addr add {gateway}/24 dev inet0", "link set inet0 up"])
        ip_batch(self.inet, [f"addr add {BROKER_ADDRESS}/24 dev eth0", "link set eth0 up",
                           f"route add default via {gateway}"])  # fmt: skip
        set_sysctl(self.name, {"net.ipv4.ip_forward": 1})

    def close(self) -> None:
        """Remove both namespaces, killing what runs inside."""
        down(self.prefix)

    def run(self, argv: Sequence[str], namespace: str | None = None) -> str:
        """Run a command in the carrier (or ``namespace``); its stdout. Raises NetlabError."""
        return run_command(["ip", "netns", "exec", namespace or self.name, *argv])

    def start_broker(self, state_dir: Path, timeout: float = 120.0) -> HostBroker:
        """``dvrlink-broker serve`` in the inet namespace (all addresses, free ports), ready.

        Raises:
            TimeoutError: it did not say it is ready within ``timeout`` s (it is stopped).
        """
        return HostBroker.start(state_dir, timeout, netns=self.inet, loopback_peers=False)


class EcmNic:
    """The ECM modem's network function: a tap device QEMU opens, then moved into the carrier
    namespace with ``udhcpd`` serving the guest's DHCP client on it."""

    def __init__(self, carrier: CarrierNamespace, run_dir: Path) -> None:
        self.carrier = carrier
        self.run_dir = run_dir
        self.tap = f"{carrier.prefix}ecm"[:15]
        self.dhcpd: subprocess.Popen[bytes] | None = None

    def create(self) -> None:
        """The tap in the host's namespace, for QEMU to open by name. Raises NetlabError."""
        run_command(["ip", "tuntap", "add", "dev", self.tap, "mode", "tap"])

    def qemu_args(self) -> list[str]:
        return [
            "-netdev",
            f"tap,id={ECM_NETDEV},ifname={self.tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev={ECM_NETDEV},mac={ECM_MAC},addr={ECM_PCI_SLOT:#x},romfile=",
        ]

    def into_carrier(self) -> None:
        """After QEMU opened the tap: move it into the carrier and serve DHCP on it.

        Raises:
            NetlabError: an ``ip`` command failed; OSError: busybox is missing.
        """
        run_command(["ip", "link", "set", self.tap, "netns", self.carrier.name])
        carrier_addr = ECM_NET.network_address + 1
        ip_batch(
            self.carrier.name,
            [f"addr add {carrier_addr}/{ECM_NET.prefixlen} dev {self.tap}", f"link set {self.tap} up"],
        )
        guest = ECM_NET.network_address + 2
        conf = self.run_dir / "udhcpd.conf"
        conf.write_text(
            f"interface {self.tap}\nstart {guest}\nend {guest}\nmax_leases 1\n"
            f"lease_file {self.run_dir / 'udhcpd.leases'}\npidfile {self.run_dir / 'udhcpd.pid'}\n"
            f"option subnet {ECM_NET.netmask}\noption router {carrier_addr}\noption lease 3600\n"
        )
        (self.run_dir / "udhcpd.leases").touch()
        log_file = (self.run_dir / "udhcpd.log").open("wb")
        self.dhcpd = subprocess.Popen(
            ["ip", "netns", "exec", self.carrier.name, "busybox", "udhcpd", "-f", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()

    def close(self) -> None:
        if self.dhcpd is not None:
            self.dhcpd.terminate()
            try:
                self.dhcpd.wait(10)
            except subprocess.TimeoutExpired:
                self.dhcpd.kill()
                self.dhcpd.wait(10)
        run_command(["ip", "link", "del", self.tap], check=False)


@dataclass
class EcmLinkPath:
    """The emulator's data path for ECM calls: ``set_link`` on the guest's ECM NIC as calls start
    and end. ``monitor`` runs one QEMU monitor command (``Guest.monitor``); ``links`` records
    each change (True: up), ``errors`` what failed (the emulator's thread must not raise)."""

    monitor: Callable[[str], str] | None = None
    links: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    up: bool = False

    def set_link(self, on: bool) -> None:
        if self.monitor is None:
            self.errors.append("ECM link change before the guest's monitor was attached")
            return
        try:
            reply = self.monitor(f"set_link {ECM_NETDEV} {'on' if on else 'off'}")
        except OSError as exc:
            self.errors.append(f"set_link {ECM_NETDEV}: {exc}")
            return
        if "rror" in reply or "not found" in reply:
            self.errors.append(f"set_link {ECM_NETDEV}: {reply.strip()}")
            return
        self.up = on
        self.links.append(on)
        log.info("ECM NIC link %s", "up" if on else "down")

    def connected(self, apn: str, mode: str, send: Callable[[bytes], None]) -> None:
        if mode == "ecm":
            self.set_link(True)

    def received(self, data: bytes) -> None:
        """PPP bytes: not this path's."""

    def disconnected(self) -> None:
        if self.up:
            self.set_link(False)


@dataclass
class DataPaths:
    """One emulator, both kinds of call: PPP calls to ``ppp``, ECM calls to ``ecm``."""

    ppp: PppDataPath
    ecm: EcmLinkPath

    def connected(self, apn: str, mode: str, send: Callable[[bytes], None]) -> None:
        (self.ppp if mode == "ppp" else self.ecm).connected(apn, mode, send)

    def received(self, data: bytes) -> None:
        self.ppp.received(data)

    def disconnected(self) -> None:
        self.ppp.disconnected()
        self.ecm.disconnected()


class GuestModem:
    """The emulated modem of one guest, its carrier namespace, the broker there, the ECM NIC.

    The emulator answers on a new PTY for QEMU's ``pci-serial`` (:meth:`qemu_args`), or with
    ``port`` on a serial device of this host: a USB-UART cable to a bench board's modem UART
    (no ECM NIC then: its link needs QEMU's monitor). The PPP data path, the carrier and the
    broker behind it are the same either way.

    Use as a context manager around the guest's boot::

        with GuestModem(run_dir, "simcom-sim800", SimCard()) as rig:
            guest = Guest(..., BootOptions(..., extra_args=tuple(rig.qemu_args()),
                                            extra_cmdline=guest_cmdline()), run_dir)
            guest.start()
            rig.guest_started(guest.monitor)
    """

    def __init__(
        self,
        run_dir: Path,
        profile: str,
        sim: SimCard | None,
        *,
        ecm: bool = False,
        ppp_config: PppServerConfig | None = None,
        boot_delay_s: float = 0.5,
        port: str | None = None,
    ) -> None:
        if ecm and port is not None:
            raise ValueError(
                f"an ECM NIC needs QEMU's monitor: no ECM modem on the serial port {port} of a bench board"
            )
        self.run_dir = run_dir
        self.carrier = CarrierNamespace()
        self.ppp = PppDataPath(ppp_config or PppServerConfig(), TunCarrier(self.carrier.name))
        self.ecm_path = EcmLinkPath()
        self.emulator = ModemEmulator(
            profile,
            sim,
            no_sim=sim is None,
            boot_delay_s=boot_delay_s,
            data_path=DataPaths(self.ppp, self.ecm_path),
            port=port,
        )
        self.ppp.attach(self.emulator)
        self.nic = EcmNic(self.carrier, run_dir) if ecm else None
        self.broker: HostBroker | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> GuestModem:
        try:
            self.carrier.create()
            self._stack.callback(self.carrier.close)
            state = self.run_dir / "broker"
            state.mkdir(exist_ok=True)
            self.broker = self.carrier.start_broker(state)
            self._stack.callback(self.broker.stop)
            self.emulator.start()
            self._stack.callback(self.emulator.stop)
            if self.nic is not None:
                self.nic.create()
                self._stack.callback(self.nic.close)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def qemu_args(self) -> list[str]:
        """The modem's serial port on the emulator's PTY, and the ECM NIC if asked for."""
        args = [
            "-chardev",
            f"serial,id=modem,path={self.emulator.path}",
            "-device",
            f"pci-serial,chardev=modem,addr={MODEM_PCI_SLOT:#x}",
        ]
        return args + (self.nic.qemu_args() if self.nic is not None else [])

    def guest_started(self, monitor: Callable[[str], str]) -> None:
        """QEMU runs: the ECM NIC starts with its link down (no call yet) and joins the carrier.

        Raises:
            NetlabError: the tap could not be moved or configured.
        """
        self.ecm_path.monitor = monitor
        if self.nic is not None:
            self.ecm_path.set_link(False)
            self.ecm_path.links.clear()
            if self.ecm_path.errors:
                raise NetlabError(f"ECM NIC: {self.ecm_path.errors}")
            self.nic.into_carrier()

    def carrier_routes(self) -> str:
        """``ip route`` in the carrier namespace (for failure messages)."""
        return self.carrier.run(["ip", "-4", "route"])


def boot_modem_guest(
    target: Target,
    image: Image,
    run_dir: Path,
    rig: GuestModem,
    *,
    serial: str,
    profile: str,
    data_link: str,
    boot_timeout: float,
) -> Guest:
    """Boot ``image`` with ``rig``'s modem on pci-serial and the image's own config for it, then
    give dvrlinkd the modem setup (:func:`guest_setup`) and restart it without waiting for its
    registration. The caller stops the guest.

    Raises:
        BootError: the guest did not boot, or the setup on its console failed (its output quoted).
    """
    if rig.broker is None:
        raise BootError("the modem rig has no broker: boot the guest inside `with GuestModem(...)`")
    info = rig.broker.info
    config = run_dir / "dvrlinkd.toml"
    config.write_text(
        modem_config(
            image_config_path().read_text(),
            serial=serial,
            broker_port=info.udp_port,
            broker_key_b64=b64encode_key(info.public_key),
            profile=profile,
            data_link=data_link,
        )
    )
    options = BootOptions(
        mem_mb=target.default_mem_mb,
        config=config,
        extra_args=tuple(rig.qemu_args()),
        extra_cmdline=guest_cmdline(),
    )
    guest = Guest(target, image, options, run_dir)
    guest.start()
    try:
        rig.guest_started(guest.monitor)
        guest.login(boot_timeout)
        setup = guest_setup(pppd_as_root=data_link == "ppp")
        done = guest.console.run(f"{setup} && systemctl restart --no-block dvrlinkd && echo set-up", 180)
        if not done.endswith("set-up"):
            raise BootError(f"the guest's modem setup failed:\n{done}")
        return guest
    except BaseException:
        guest.stop()
        raise


@contextlib.contextmanager
def guest_modem(run_dir: Path, profile: str, sim: SimCard | None, **kwargs: object) -> Iterator[GuestModem]:
    """:class:`GuestModem` as a context manager function."""
    with GuestModem(run_dir, profile, sim, **kwargs) as rig:  # type: ignore[arg-type]
        yield rig
