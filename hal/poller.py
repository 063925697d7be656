"""Runs a capture device's watcher on the event loop: reads when the watcher asks, events out.

The watcher (``hal.watch.ChannelWatcher``) is a sans-I/O core and keeps the poll schedule; the
one driver loop of the project (``dvrlink.driver.CoreDriver``) arms its timer and hands out its
events. This module only does the I/O: it calls the device's ``read`` (and ``reset`` after a
failure) when the watcher asks, and answers with ``update`` or ``failed``. A read is a few
register reads or an ioctl, so it runs inline on the loop.

Nothing a device raises stops the poller: a ``DeviceIoError`` becomes a ``DeviceError`` event
(and a slower retry), and anything else is counted and logged by the driver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from dvrlink.driver.core_driver import CoreDriver
from dvrlink.hal.device import CaptureDevice
from dvrlink.hal.model import ChannelStatus, DeviceIoError, HalEvent
from dvrlink.hal.watch import ChannelWatcher, ReadDue

log = logging.getLogger(__name__)


class DevicePoller:
    """Drives one device's watcher; ``on_event`` gets each ``HalEvent`` as it is confirmed."""

    def __init__(
        self,
        device: CaptureDevice,
        watcher: ChannelWatcher,
        on_event: Callable[[HalEvent], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.device = device
        self.watcher = watcher
        self._driver: CoreDriver[HalEvent, ReadDue] = CoreDriver(
            watcher,
            self._read,
            on_event=on_event,
            loop=loop,
            name=f"capture device {device.name}",
            logger=log,
        )

    def start(self) -> None:
        """Start polling (the first read is due at once)."""
        self._driver.flush()

    def status(self) -> list[ChannelStatus]:
        """The watched channels as last reported."""
        return self.watcher.status()

    @property
    def errors(self) -> int:
        """Read errors, and failures of the driver or ``on_event``, so far."""
        return self.watcher.errors + self._driver.errors

    def close(self) -> None:
        """Stop polling and release the device. Idempotent."""
        self._driver.close()
        self.device.close()

    def _read(self, due: Sequence[ReadDue]) -> None:
        now = self._driver.now()
        try:
            if any(read.reset_first for read in due):
                self.device.reset()
            readings = self.device.read()
        except DeviceIoError as exc:
            if not self.watcher.failing:
                log.warning("%s; retrying with back-off", exc)
            self.watcher.failed(str(exc), now)
        else:
            self.watcher.update(readings, now)
        self._driver.flush()  # folded into the running pass: hands out what the answer caused
