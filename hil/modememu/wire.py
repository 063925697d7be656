"""The host side of the wire, for tests and scripts: raw bytes over the PTY with bounded waits.

This is deliberately not an AT engine (that lives in the modem package): it writes command lines
and reads bytes, so a test sees exactly what a modem put on the wire.
"""

from __future__ import annotations

import os
import select
import time


class RawPort:
    """An open PTY (or serial device) path, read and written with ``os.read``/``os.write``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.buffer = bytearray()
        """Bytes read but not yet consumed by :meth:`read_until`."""
        self.chunks: list[int] = []
        """Size of every successful ``os.read``, in order."""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RawPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def send(self, command: str) -> None:
        """Write ``command`` and a carriage return."""
        self.write(command.encode("latin-1") + b"\r")

    def _read_once(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return b""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return b""
        if data:
            self.chunks.append(len(data))
            self.buffer += data
        return data

    def read_until(self, token: bytes, timeout: float = 3.0) -> bytes:
        """Everything up to and including ``token``, consumed from the buffer.

        Raises TimeoutError with what was read when ``token`` does not arrive within ``timeout``;
        OSError (EIO) when the other side closed the PTY.
        """
        deadline = time.monotonic() + timeout
        while token not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{token!r} not seen within {timeout} s on {self.path}; got {bytes(self.buffer)!r}"
                )
            self._read_once(min(remaining, 0.2))
        end = self.buffer.index(token) + len(token)
        out = bytes(self.buffer[:end])
        del self.buffer[:end]
        return out

    def command(self, command: str, timeout: float = 3.0, final: bytes = b"\r\nOK\r\n") -> bytes:
        """Send ``command`` and read through ``final``."""
        self.send(command)
        return self.read_until(final, timeout)

    def read_for(self, seconds: float) -> bytes:
        """Everything that arrives within ``seconds`` (plus what was buffered), consumed."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._read_once(min(remaining, 0.05))
        out = bytes(self.buffer)
        self.buffer.clear()
        return out
