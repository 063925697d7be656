"""The I2C bus as an interface: what the register-level decoder backends need, the real bus over
``smbus2``, and a fake bus that routes each address to a register model.

A backend (``hal.nvp6158``, ``hal.tw2866``) talks to its chip through an ``I2cBus``: byte reads
and byte writes of one register at one 7-bit address. Every bus error comes out as a
``DeviceIoError`` whose message names the bus, the address, the register and what to check, so
the watcher can report it as it is (``DeviceError``) and the poller can retry.

- ``SmbusI2cBus`` (``open_i2c_bus("/dev/i2c-0")``): the Linux i2c-dev node through ``smbus2``,
  imported when a bus is opened, so this module imports on machines without it.
- ``FakeBus``: routes each address to a ``RegisterModel`` (the chip models in ``hil/chips``) and
  injects faults: an address that does not acknowledge, a time-out, for a number of operations.
  An address with nothing attached does not acknowledge, as on a real bus.
"""

from __future__ import annotations

import errno
import importlib
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from dvrlink.hal.model import DeviceIoError


class I2cBus(Protocol):
    """An I2C bus with SMBus byte-data transfers. Addresses are 7-bit (0x03-0x77)."""

    @property
    def name(self) -> str:
        """The bus as messages name it (its device node, e.g. ``/dev/i2c-0``)."""
        ...

    def read_byte_data(self, address: int, register: int) -> int:
        """The byte in ``register`` of the device at ``address``.

        Raises:
            DeviceIoError: no acknowledge, a time-out or another bus error; the message names the
                bus, address and register and says what to check.
        """
        ...

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        """Write ``value`` (0-255) to ``register`` of the device at ``address``.

        Raises:
            DeviceIoError: as ``read_byte_data``.
        """
        ...

    def close(self) -> None:
        """Release the bus. Idempotent."""
        ...


def bus_error(bus: str, address: int, register: int, action: str, error: OSError) -> DeviceIoError:
    """The ``DeviceIoError`` for an ``OSError`` of an I2C transfer: what failed, and what to check.

    ``action`` is ``"read"`` or ``"write"``. ENXIO and EREMOTEIO are a missing acknowledge,
    ETIMEDOUT a stuck or over-stretched bus.
    """
    where = f"I2C {bus}: {action} of register 0x{register:02x} at address 0x{address:02x}"
    code = error.errno
    if code in (errno.ENXIO, errno.EREMOTEIO, errno.ENODEV):
        what = "no acknowledge"
        check = (
            "check the chip's power and reset line, the SDA/SCL wiring, and that its address strap "
            f"gives 0x{address:02x} (i2cdetect -y lists the addresses that answer)"
        )
    elif code == errno.ETIMEDOUT:
        what = "timed out"
        check = (
            "the bus is stuck (SDA held low) or a clock stretch ran too long: check the pull-ups and "
            "the power of every device on the bus; resetting the chip usually frees it"
        )
    elif code == errno.EAGAIN:
        what = "lost arbitration"
        check = "another master drives the bus: check what else uses it"
    else:
        name = errno.errorcode.get(code, "?") if code is not None else "?"
        what = f"{error.strerror or error} ({name})"
        check = "check the bus adapter's driver (dmesg) and the wiring"
    return DeviceIoError(f"{where} failed: {what}; {check}")


def _check_transfer(address: int, register: int, value: int = 0) -> None:
    if not 0x03 <= address <= 0x77:
        raise ValueError(f"I2C address 0x{address:02x} is not a 7-bit device address (0x03-0x77)")
    if not 0 <= register <= 0xFF or not 0 <= value <= 0xFF:
        raise ValueError(f"I2C register 0x{register:x} or value 0x{value:x} is not a byte")


# ---- the real bus ----------------------------------------------------------------------------


class _Smbus(Protocol):
    """The part of ``smbus2.SMBus`` used here."""

    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...

    def close(self) -> None: ...


def load_smbus2() -> Any:
    """The ``smbus2`` module, imported on first use (it is a device dependency only).

    Raises:
        ImportError: it is not installed.
    """
    return importlib.import_module("smbus2")


class SmbusI2cBus:
    """A Linux i2c-dev bus through ``smbus2``. Not thread-safe: one owner calls it."""

    def __init__(self, path: str) -> None:
        """Open the bus ``path`` (``/dev/i2c-0``, or its number ``"0"``).

        Raises:
            DeviceIoError: ``smbus2`` is missing, or the node cannot be opened; the message says
                what to do.
        """
        self._name = path if not path.isdigit() else f"/dev/i2c-{path}"
        try:
            smbus2 = load_smbus2()
        except ImportError as exc:
            raise DeviceIoError(
                f"I2C {self._name}: the smbus2 module is missing ({exc}); install python-smbus2 "
                "(Buildroot BR2_PACKAGE_PYTHON_SMBUS2) or pip install smbus2"
            ) from exc
        try:
            self._bus: _Smbus | None = smbus2.SMBus(self._name)
        except OSError as exc:
            hint = (
                "load the i2c-dev module (modprobe i2c-dev) and check the bus number (ls /dev/i2c-*)"
                if exc.errno == errno.ENOENT
                else "check the node's permissions (run as a user in the i2c group, or as root)"
                if exc.errno in (errno.EACCES, errno.EPERM)
                else "check the bus adapter's driver (dmesg)"
            )
            raise DeviceIoError(f"I2C {self._name} cannot be opened: {exc.strerror or exc}; {hint}") from exc

    @property
    def name(self) -> str:
        """The bus's device node."""
        return self._name

    def read_byte_data(self, address: int, register: int) -> int:
        """See ``I2cBus.read_byte_data``; also raises ``DeviceIoError`` once closed."""
        _check_transfer(address, register)
        try:
            return int(self._open().read_byte_data(address, register)) & 0xFF
        except OSError as exc:
            raise bus_error(self._name, address, register, "read", exc) from exc

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        """See ``I2cBus.write_byte_data``; also raises ``DeviceIoError`` once closed."""
        _check_transfer(address, register, value)
        try:
            self._open().write_byte_data(address, register, value)
        except OSError as exc:
            raise bus_error(self._name, address, register, "write", exc) from exc

    def close(self) -> None:
        """Close the node. Idempotent."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.close()

    def _open(self) -> _Smbus:
        if self._bus is None:
            raise DeviceIoError(f"I2C {self._name} is closed; reopen it (restart dvrlinkd)")
        return self._bus


def open_i2c_bus(path: str) -> I2cBus:
    """The I2C bus at ``path`` (``/dev/i2c-0`` or ``"0"``) for the decoder backends.

    Raises:
        DeviceIoError: as ``SmbusI2cBus``: ``smbus2`` missing or the node not openable.
    """
    return SmbusI2cBus(path)


# ---- the fake bus ----------------------------------------------------------------------------


class RegisterModel(Protocol):
    """A device on the fake bus: its registers as the bus sees them."""

    def read(self, register: int) -> int:
        """The byte a read of ``register`` returns now."""
        ...

    def write(self, register: int, value: int) -> None:
        """Take a write of ``value`` to ``register``."""
        ...


class BusFault(Enum):
    """A fault the fake bus can inject."""

    NACK = "nack"
    """The address does not acknowledge (ENXIO), as an unpowered or absent chip."""
    TIMEOUT = "timeout"
    """The transfer times out (ETIMEDOUT), as a bus held low."""


@dataclass(slots=True)
class _Fault:
    kind: BusFault
    address: int | None
    remaining: int | None


class FakeBus:
    """An ``I2cBus`` that routes each address to a ``RegisterModel``, with fault injection.

    Faults raise the same ``DeviceIoError`` the real bus raises for the same ``OSError``.
    ``operations`` counts the transfers tried (including failed ones).
    """

    def __init__(self, name: str = "fake-i2c") -> None:
        self._name = name
        self._devices: dict[int, RegisterModel] = {}
        self._faults: list[_Fault] = []
        self.operations = 0
        self.closed = False

    @property
    def name(self) -> str:
        """The bus's name in messages."""
        return self._name

    def attach(self, address: int, device: RegisterModel) -> None:
        """Put ``device`` on the bus at ``address``."""
        _check_transfer(address, 0)
        self._devices[address] = device

    def detach(self, address: int) -> None:
        """Take the device at ``address`` off the bus (it no longer acknowledges)."""
        self._devices.pop(address, None)

    def inject(self, fault: BusFault, *, address: int | None = None, count: int | None = 1) -> None:
        """Fail the next ``count`` transfers (``None``: all, until ``clear_faults``) to ``address``
        (``None``: any address) with ``fault``."""
        if count is not None and count < 1:
            raise ValueError(f"fault count {count}: give 1 or more, or None for until cleared")
        self._faults.append(_Fault(fault, address, count))

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self._faults.clear()

    def read_byte_data(self, address: int, register: int) -> int:
        """See ``I2cBus.read_byte_data``."""
        _check_transfer(address, register)
        device = self._transfer(address, register, "read")
        value = device.read(register)
        if not 0 <= value <= 0xFF:
            raise ValueError(f"register model at 0x{address:02x} returned {value} for 0x{register:02x}")
        return value

    def write_byte_data(self, address: int, register: int, value: int) -> None:
        """See ``I2cBus.write_byte_data``."""
        _check_transfer(address, register, value)
        self._transfer(address, register, "write").write(register, value)

    def close(self) -> None:
        """Mark the bus closed. Idempotent."""
        self.closed = True

    def _transfer(self, address: int, register: int, action: str) -> RegisterModel:
        self.operations += 1
        if self.closed:
            raise DeviceIoError(f"I2C {self._name} is closed")
        for fault in self._faults:
            if fault.address is None or fault.address == address:
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                code = errno.ENXIO if fault.kind is BusFault.NACK else errno.ETIMEDOUT
                raise bus_error(self._name, address, register, action, OSError(code, os.strerror(code)))
        device = self._devices.get(address)
        if device is None:
            raise bus_error(
                self._name, address, register, action, OSError(errno.ENXIO, os.strerror(errno.ENXIO))
            )
        return device
