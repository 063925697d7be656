"""Sockets inside a lab namespace, made from this process (no helper process, no start-up delay).

A socket belongs to the network namespace of the thread that created it, for its whole life.
``socket_in`` creates one in a short-lived thread that has first joined the namespace with
``setns(2)``; the thread exits right after, and the socket can be used from any thread. This is
how the matrix reaches the forward's 127.0.0.1 port in the viewer namespace and serves the
recorder's TCP port on 127.0.0.1 in the device namespace, with times taken in this process.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
from pathlib import Path

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
JOIN_TIMEOUT_S = 10.0


def socket_in(ns: str, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """A new IPv4 socket in network namespace ``ns`` (a name under /run/netns).

    Raises:
        OSError: the namespace does not exist or could not be joined (not root).
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(NETNS_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {ns}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_INET, kind))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=enter, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(JOIN_TIMEOUT_S)
    if failed:
        raise failed[0]
    if not made:
        raise OSError(f"could not create a socket in namespace {ns} within {JOIN_TIMEOUT_S:.0f} s")
    return made[0]


def listener_in(ns: str, port: int, backlog: int) -> socket.socket:
    """A TCP listener on ``127.0.0.1:port`` inside ``ns``, accepting with a 0.2 s timeout (so a
    serving thread can notice its stop event)."""
    listener = socket_in(ns)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(backlog)
    listener.settimeout(0.2)
    return listener


class ByteService:
    """A TCP listener on ``127.0.0.1:port`` inside ``ns`` that writes ``payload`` to every
    connection and closes it: the recorder's service at the far end of a forward.

    ``close`` stops it (bounded). ``errors`` collects what went wrong in its thread.
    """

    def __init__(self, ns: str, port: int, payload: bytes = b"!") -> None:
        self.port = port
        self.payload = payload
        self.errors: list[str] = []
        self.served = 0
        self._listener = listener_in(ns, port, 8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"byte-service-{ns}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5)
                    conn.sendall(self.payload)
                    self.served += 1
                except OSError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop accepting and wait up to 2 s for the thread."""
        self._stop.set()
        self._thread.join(2)
        self._listener.close()


def first_byte(ns: str, port: int, timeout: float) -> tuple[bytes, float]:
    """Connect to ``127.0.0.1:port`` in ``ns`` and read one byte; returns (the byte or b"" if the
    peer closed first, ``time.monotonic()`` when it arrived).

    Raises:
        OSError: the connection failed or nothing came within ``timeout`` (TimeoutError).
    """
    with socket_in(ns) as sock:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        data = sock.recv(1)
        return data, time.monotonic()
