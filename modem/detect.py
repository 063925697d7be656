"""Modem detection: which USB modems are attached, and which port is which, by udev.

A port is named by the modem's USB ID (VID:PID) plus the ``bInterfaceNumber`` of the USB interface
the tty hangs off, never by its ttyUSB index: the kernel numbers ttys in probe order, so a second
modem, a USB reset or a slow hub shuffles ``/dev/ttyUSB*``, while interface 2 of a Quectel EC25
is always its AT port. The layouts come from :mod:`dvrlink.modem.profiles`.

Two parts, as everywhere in ``modem/``:

- :class:`ModemDetector`, the sans-I/O core. It is told which USB device a uevent touched
  (:meth:`~ModemDetector.device_changed`) and when; it waits until the device has been quiet for
  ``settle_s`` (a modem enumerates its interfaces over about a second, and a re-plug within that time
  is one change), then asks for a fresh look at it (:meth:`~ModemDetector.handle_timer` returns the
  paths to scan) and compares the :class:`UsbSnapshot` it is given with what it knew. Out come
  typed events: :class:`ModemAdded`, :class:`ModemRemoved`, :class:`ModemIncomplete`.
- :class:`UdevModemWatcher`, the asyncio link: a pyudev ``Monitor`` whose socket is read from the
  event loop, a coldplug scan at start, one timer at the core's deadline.

Removal events come from devices that no longer exist in sysfs, so the USB device a uevent belongs
to is taken from its sysfs path alone (:func:`usb_device_path`), never by asking udev for parents.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import pyudev  # type: ignore[import-untyped]  # pyudev ships no type hints

from dvrlink.modem.profiles import DialMethod, ModemProfile, UsbPorts, profile_for_usb

log = logging.getLogger(__name__)

# USB device names in sysfs: "1-1", "1-1.4.2", "2-3"; interfaces add ":<config>.<number>"; root
# hubs are "usb1".
_USB_DEVICE_NAME = re.compile(r"\d+-\d+(?:\.\d+)*")
_USB_INTERFACE_NAME = re.compile(r"\d+-\d+(?:\.\d+)*:\d+\.(\d+)")
SUBSYSTEMS = ("usb", "tty", "net")
"""The uevent subsystems the watcher listens to."""
MAX_UEVENTS_PER_WAKEUP = 1024


@dataclass(frozen=True, slots=True)
class DetectConfig:
    """Settings of modem detection."""

    settle_s: float = 1.0
    """Seconds a USB device must be quiet (no uevent under it) before it is looked at; a modem
    enumerates its interfaces over about a second."""

    def __post_init__(self) -> None:
        if not self.settle_s >= 0:
            raise ValueError(f"detect settle_s {self.settle_s!r} must be 0 or more seconds")


# ------------------------------------------------------------------------------------------ data


@dataclass(frozen=True, slots=True)
class UsbSnapshot:
    """What sysfs shows under one USB device at one moment.

    ``ttys`` maps ``bInterfaceNumber`` to the tty's device node (``/dev/ttyUSB2``), ``nets`` to the
    network interface's name (``usb0``, ``wwan0``).
    """

    usb_path: str
    vendor: int
    product: int
    ttys: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    nets: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class DetectionEvent:
    """Base of the detection events."""


@dataclass(frozen=True, slots=True)
class ModemAdded(DetectionEvent):
    """A known modem is attached and its AT port exists.

    ``at_port`` is None when the profile finds the AT port by probing (Huawei MU709): try each of
    ``serial_ports`` with ``AT``. ``data_port`` is the PPP port (the AT port itself when the
    modem has no separate one); ``net_iface`` the modem's network interface, None when it has none
    (yet). ``usb_path`` is the USB device's sysfs path, the key of :class:`ModemRemoved`.
    """

    profile: ModemProfile
    at_port: str | None
    data_port: str | None
    net_iface: str | None
    usb_path: str
    usb_id: str
    serial_ports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModemRemoved(DetectionEvent):
    """A modem reported by :class:`ModemAdded` is gone (unplugged, reset, or re-enumerated)."""

    profile: ModemProfile
    usb_path: str
    at_port: str | None


@dataclass(frozen=True, slots=True)
class ModemIncomplete(DetectionEvent):
    """A known modem settled without the port the daemon needs; ``message`` says what to check."""

    profile: ModemProfile
    usb_path: str
    usb_id: str
    message: str


# ------------------------------------------------------------------------------- pure functions


def usb_device_path(sys_path: str) -> str | None:
    """The sysfs path of the USB device that ``sys_path`` is (or lies under), or None.

    ``/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.2/ttyUSB0/tty/ttyUSB0`` →
    ``/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1``. A device behind a hub gives the deepest USB
    device (``1-1.4``), not the hub. Root hubs (``usb1``) and non-USB paths give None.
    """
    parts = sys_path.rstrip("/").split("/")
    found = None
    for index, part in enumerate(parts):
        if _USB_DEVICE_NAME.fullmatch(part):
            found = index
    return None if found is None else "/".join(parts[: found + 1])


def interface_number(interface_name: str) -> int | None:
    """The interface number of a USB interface's sysfs name (``1-1:1.2`` → 2), or None.

    Linux names the interface ``<device>:<config>.<bInterfaceNumber>`` (the number in decimal).
    """
    match = _USB_INTERFACE_NAME.fullmatch(interface_name)
    return int(match.group(1)) if match else None


def match_modem(snapshot: UsbSnapshot) -> ModemAdded | ModemIncomplete | None:
    """What a snapshot is: a usable modem, a known modem missing its AT port, or None (unknown ID).

    Pure: the profile table decides which interface is which.
    """
    found = profile_for_usb(snapshot.vendor, snapshot.product)
    if found is None:
        return None
    profile, ports = found
    serial = tuple(snapshot.ttys[number] for number in sorted(snapshot.ttys))
    at_port = _port(snapshot, ports.at_interface)
    if ports.at_interface is not None and at_port is None:
        return ModemIncomplete(
            profile,
            snapshot.usb_path,
            ports.usb_id,
            f"{profile.description} ({ports.usb_id}) at {snapshot.usb_path} has no tty on USB "
            f"interface {ports.at_interface} (its AT port): check that the serial driver (option, "
            f"usb_serial) is loaded and knows this ID; ttys seen: {_describe(snapshot.ttys)}",
        )
    if ports.at_interface is None and not serial:
        return ModemIncomplete(
            profile,
            snapshot.usb_path,
            ports.usb_id,
            f"{profile.description} ({ports.usb_id}) at {snapshot.usb_path} has no tty at all: "
            "check that the serial driver (option, usb_serial) is loaded and knows this ID",
        )
    data_port = _port(snapshot, ports.ppp_interface) if ports.ppp_interface is not None else at_port
    return ModemAdded(
        profile=profile,
        at_port=at_port,
        data_port=data_port,
        net_iface=_net(snapshot, ports, profile),
        usb_path=snapshot.usb_path,
        usb_id=ports.usb_id,
        serial_ports=serial,
    )


def _port(snapshot: UsbSnapshot, number: int | None) -> str | None:
    return None if number is None else snapshot.ttys.get(number)


def _net(snapshot: UsbSnapshot, ports: UsbPorts, profile: ModemProfile) -> str | None:
    if ports.net_interface is not None and ports.net_interface in snapshot.nets:
        return snapshot.nets[ports.net_interface]
    if len(snapshot.nets) == 1:
        # Another USB composition (ECM instead of QMI) moves the network function to another
        # interface number; a single network interface is still the modem's.
        return next(iter(snapshot.nets.values()))
    if len(snapshot.nets) > 1 and profile.dial_method is DialMethod.ECM:
        return snapshot.nets[min(snapshot.nets)]
    return None


def _describe(ttys: Mapping[int, str]) -> str:
    return ", ".join(f"interface {n}: {path}" for n, path in sorted(ttys.items())) or "none"


# ------------------------------------------------------------------------------------ the core


class ModemDetector:
    """The sans-I/O detection core (see module docstring). Time is passed in, in seconds."""

    def __init__(self, config: DetectConfig | None = None) -> None:
        self._config = config or DetectConfig()
        self._due: dict[str, float] = {}
        self._known: dict[str, ModemAdded] = {}
        self._incomplete: dict[str, ModemIncomplete] = {}
        self._events: deque[DetectionEvent] = deque()

    @property
    def modems(self) -> tuple[ModemAdded, ...]:
        """The modems attached now, as last reported."""
        return tuple(self._known.values())

    def coldplug(self, snapshots: Iterable[UsbSnapshot], now: float) -> None:
        """Take the USB devices present at start; they have long settled, so no wait."""
        for snapshot in snapshots:
            self.scanned(snapshot.usb_path, snapshot, now)

    def device_changed(self, sys_path: str, now: float, action: str = "change") -> None:
        """A uevent (``action``: add, remove, change, bind...) touched ``sys_path``.

        The USB device it belongs to is looked at once it has been quiet for ``settle_s``. The
        removal of the USB device itself is final at once: :class:`ModemRemoved` comes without
        waiting, so a modem that resets and returns within ``settle_s`` is still seen to leave
        and come back.
        """
        usb_path = usb_device_path(sys_path)
        if usb_path is None:
            return
        if action == "remove" and sys_path.rstrip("/") == usb_path:
            self.scanned(usb_path, None, now)
        self._due[usb_path] = now + self._config.settle_s

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` has work, or None."""
        return min(self._due.values(), default=None)

    def handle_timer(self, now: float) -> list[str]:
        """The USB device paths that have settled, the first to settle first; scan each and pass it
        to :meth:`scanned`."""
        ready = [path for due, path in sorted((due, path) for path, due in self._due.items()) if due <= now]
        for path in ready:
            del self._due[path]
        return ready

    def scanned(self, usb_path: str, snapshot: UsbSnapshot | None, now: float) -> None:
        """What a scan of ``usb_path`` found: a snapshot, or None when the device is gone.

        Raises:
            ValueError: the snapshot is of another path (a caller's mistake).
        """
        if snapshot is not None and snapshot.usb_path != usb_path:
            raise ValueError(f"snapshot of {snapshot.usb_path} passed for {usb_path}")
        found = None if snapshot is None else match_modem(snapshot)
        before = self._known.get(usb_path)
        if isinstance(found, ModemAdded):
            self._incomplete.pop(usb_path, None)
            if found == before:
                return
            if before is not None:
                self._remove(before)
            self._known[usb_path] = found
            log.info(
                "modem %s (%s) at %s: AT %s, data %s, network %s",
                found.profile.name,
                found.usb_id,
                usb_path,
                found.at_port or f"to probe among {', '.join(found.serial_ports)}",
                found.data_port,
                found.net_iface,
            )
            self._events.append(found)
            return
        if before is not None:
            self._remove(before)
        if isinstance(found, ModemIncomplete):
            if self._incomplete.get(usb_path) != found:
                self._incomplete[usb_path] = found
                log.warning("%s", found.message)
                self._events.append(found)
        else:
            self._incomplete.pop(usb_path, None)

    def next_event(self) -> DetectionEvent | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def _remove(self, modem: ModemAdded) -> None:
        del self._known[modem.usb_path]
        log.info("modem %s at %s removed", modem.profile.name, modem.usb_path)
        self._events.append(ModemRemoved(modem.profile, modem.usb_path, modem.at_port))


# ------------------------------------------------------------------------------------- udev I/O


def scan_usb_device(context: pyudev.Context, usb_path: str) -> UsbSnapshot | None:
    """Read one USB device and its tty and network children from udev; None when it is gone
    or is not a USB device with an ID."""
    try:
        device = pyudev.Devices.from_sys_path(context, usb_path)
        vendor = int(device.attributes.asstring("idVendor"), 16)
        product = int(device.attributes.asstring("idProduct"), 16)
    except (pyudev.DeviceNotFoundError, KeyError, ValueError, UnicodeDecodeError):
        return None
    ttys: dict[int, str] = {}
    nets: dict[int, str] = {}
    prefix = usb_path.rstrip("/") + "/"
    for child in context.list_devices(parent=device):
        if child.subsystem not in ("tty", "net") or not child.sys_path.startswith(prefix):
            continue
        number = _child_interface(context, child, prefix)
        if number is None:
            continue
        if child.subsystem == "tty" and child.device_node:
            ttys.setdefault(number, child.device_node)
        elif child.subsystem == "net":
            nets.setdefault(number, child.sys_name)
    return UsbSnapshot(usb_path, vendor, product, MappingProxyType(ttys), MappingProxyType(nets))


def _child_interface(context: pyudev.Context, child: pyudev.Device, prefix: str) -> int | None:
    # "1-1:1.2/ttyUSB0/tty/ttyUSB0": the first component is the interface. A child of a nested
    # USB device ("1-1.1/...", behind a hub in the modem) is not ours.
    name = child.sys_path[len(prefix) :].split("/", 1)[0]
    fallback = interface_number(name)
    if fallback is None:
        return None
    try:
        # bInterfaceNumber (hex) is the number itself; the sysfs name is derived from it.
        interface = pyudev.Devices.from_sys_path(context, prefix + name)
        return int(interface.attributes.asstring("bInterfaceNumber"), 16)
    except (pyudev.DeviceNotFoundError, KeyError, ValueError, UnicodeDecodeError):
        return fallback


def list_usb_devices(context: pyudev.Context) -> list[str]:
    """The sysfs paths of every USB device (not interface) udev knows."""
    return [
        device.sys_path
        for device in context.list_devices(subsystem="usb", DEVTYPE="usb_device")
        if usb_device_path(device.sys_path) == device.sys_path
    ]


class UdevModemWatcher:
    """Reports modems as they come and go, from udev (see module docstring).

    Use as ``async with UdevModemWatcher() as watcher: event = await watcher.next_event()``; the
    modems present at start come first as :class:`ModemAdded`.
    """

    def __init__(self, config: DetectConfig | None = None, *, context: pyudev.Context | None = None) -> None:
        self._core = ModemDetector(config)
        self._context = context
        self._monitor: pyudev.Monitor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[DetectionEvent] = asyncio.Queue()

    @property
    def modems(self) -> tuple[ModemAdded, ...]:
        """The modems attached now."""
        return self._core.modems

    async def start(self) -> None:
        """Listen to uevents, then scan the devices present.

        Raises:
            OSError: the udev monitor socket cannot be opened (no netlink in this container?).
            RuntimeError: already started.
        """
        if self._monitor is not None:
            raise RuntimeError("modem watcher already started")
        self._loop = asyncio.get_running_loop()
        context = self._context or pyudev.Context()
        self._context = context
        monitor = pyudev.Monitor.from_netlink(context)
        for subsystem in SUBSYSTEMS:
            monitor.filter_by(subsystem)
        monitor.start()
        self._monitor = monitor
        self._loop.add_reader(monitor.fileno(), self._readable)
        # Started before the scan, so a modem plugged in meanwhile is seen by one or the other.
        now = self._loop.time()
        snapshots = [scan_usb_device(context, path) for path in list_usb_devices(context)]
        self._core.coldplug((s for s in snapshots if s is not None), now)
        self._pump()

    async def next_event(self) -> DetectionEvent:
        """Wait for the next event."""
        return await self._queue.get()

    def close(self) -> None:
        """Stop listening. Safe to call twice."""
        monitor, self._monitor = self._monitor, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if monitor is not None and self._loop is not None:
            # pyudev closes the monitor's socket when the object goes; nothing reads it after this.
            self._loop.remove_reader(monitor.fileno())

    async def __aenter__(self) -> UdevModemWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _readable(self) -> None:
        monitor, loop = self._monitor, self._loop
        if monitor is None or loop is None:
            return
        for _ in range(MAX_UEVENTS_PER_WAKEUP):  # bounded, so a socket that keeps failing cannot spin
            try:
                device = monitor.poll(timeout=0)
            except (OSError, ValueError) as exc:  # a message libudev could not read: keep serving
                log.debug("udev monitor: %s", exc)
                continue
            if device is None:
                break
            self._core.device_changed(device.sys_path, loop.time(), device.action or "change")
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        loop, context = self._loop, self._context
        if loop is None or context is None:
            return
        now = loop.time()
        for path in self._core.handle_timer(now):
            self._core.scanned(path, scan_usb_device(context, path), now)
        self._pump()

    def _pump(self) -> None:
        while (event := self._core.next_event()) is not None:
            self._queue.put_nowait(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._core.get_timer()
        if deadline is not None and self._loop is not None and self._monitor is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
