"""A serial cable for the console tests: two PTYs joined like a null-modem cable.

The recorder's program opens ``device_path``, the laptop's opens ``laptop_path``; a relay thread
copies bytes between the two masters and keeps a copy of all the recorder wrote (``from_device``).
When the two ends set different speeds (read from the PTYs' termios), the relay garbles the bytes
as a UART at the wrong speed would: most of them arrive as framing noise with the high bit set,
and fewer of them than were sent. ``inject`` writes raw bytes as if typed on the laptop's end.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import termios
import threading
import time
import tty
from collections.abc import Callable


def _speed(fd: int) -> int:
    try:
        return int(termios.tcgetattr(fd)[4])  # a PTY master reports its slave's settings
    except termios.error:
        return -1


def garble(data: bytes) -> bytes:
    """What a receiver at another speed makes of ``data``: every other byte survives, as noise."""
    return bytes(0x80 | ((b * 37 + 11) & 0x7F) for b in data[::2])


class PtyCable:
    """See the module docstring. Close it (or use it as a context manager) to stop the relay."""

    def __init__(self) -> None:
        self._device_master, device_slave = os.openpty()
        self._laptop_master, laptop_slave = os.openpty()
        for fd in (device_slave, laptop_slave):
            tty.setraw(fd)
        for fd in (self._device_master, self._laptop_master):
            os.set_blocking(fd, False)  # the relay never hangs on a side nobody reads
        self.device_path = os.ttyname(device_slave)
        self.laptop_path = os.ttyname(laptop_slave)
        # Held open so a program closing its end never makes the masters read EIO (a hang-up).
        self._slaves = (device_slave, laptop_slave)
        self.from_device = bytearray()
        """Everything the recorder's end wrote, for greps."""
        self.to_device = bytearray()
        """Everything that reached the recorder's end."""
        self.on_device_bytes: Callable[[bytes], None] | None = None
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._relay, name="pty-cable", daemon=True)
        self._thread.start()

    def __enter__(self) -> PtyCable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def inject(self, data: bytes) -> None:
        """Bytes to the recorder as if the laptop's program had written them."""
        with self._lock:
            self.to_device += data
        os.write(self._device_master, data)

    def device_output(self) -> bytes:
        """A copy of all the recorder's end wrote so far."""
        with self._lock:
            return bytes(self.from_device)

    def wait_for_device_output(self, needle: bytes, timeout: float = 20.0) -> bytes:
        """All the recorder wrote, once it holds ``needle``.

        Raises:
            AssertionError: not within ``timeout``; the message shows what came.
        """
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            seen = self.device_output()
            if needle in seen:
                return seen
            time.sleep(0.02)
        raise AssertionError(
            f"the recorder did not write {needle!r} within {timeout} s; it wrote {seen[-500:]!r}"
        )

    def close(self) -> None:
        """Stop the relay and close every descriptor."""
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(10)
        for fd in (self._device_master, self._laptop_master, *self._slaves, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _relay(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._device_master, selectors.EVENT_READ, "device")
        selector.register(self._laptop_master, selectors.EVENT_READ, "laptop")
        selector.register(self._stop_r, selectors.EVENT_READ, "stop")
        try:
            while True:
                for key, _ in selector.select(timeout=1.0):
                    if key.data == "stop":
                        return
                    try:
                        data = os.read(key.fd, 4096)
                    except OSError:
                        continue
                    same_speed = _speed(self._device_master) == _speed(self._laptop_master)
                    if key.data == "device":
                        with self._lock:
                            self.from_device += data
                        self._write(self._laptop_master, data if same_speed else garble(data))
                    else:
                        passed = data if same_speed else garble(data)
                        with self._lock:
                            self.to_device += passed
                        self._write(self._device_master, passed)
        finally:
            selector.close()

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        with contextlib.suppress(OSError):  # a full buffer on a side nobody reads: the bytes are lost
            os.write(fd, data)
