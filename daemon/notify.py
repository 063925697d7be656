"""systemd service notifications (the sd_notify protocol) without any library.

The service manager passes a unix datagram socket in ``$NOTIFY_SOCKET`` (a path, or an abstract
socket name starting with '@'). Each notification is one datagram of ``KEY=value`` lines. Without
``$NOTIFY_SOCKET`` (BusyBox init, a shell) every call does nothing, so the daemon code never
needs to know how it was started.

Without systemd, a supervisor can ask for the watchdog pings as a file instead: with
``$DVRLINKD_HEARTBEAT_FILE`` (an absolute path) and ``$WATCHDOG_USEC`` set, each ping rewrites that
file with a new line (``<pid> <count>``), so the supervisor sees the event loop turning by the line
changing (the image's BusyBox init script ``S95dvrlinkd`` feeds the hardware watchdog by it).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from dvrlink.store.files import atomic_write

log = logging.getLogger(__name__)

HEARTBEAT_FILE_ENV = "DVRLINKD_HEARTBEAT_FILE"
"""Names the file each watchdog ping rewrites, for a supervisor other than systemd."""


class Notifier:
    """Sends notifications to the service manager named in ``environ`` (``os.environ`` by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        elif address:
            log.warning("ignoring NOTIFY_SOCKET=%r: neither a path nor an abstract socket name", address)
        self._socket: socket.socket | None = None
        heartbeat = env.get(HEARTBEAT_FILE_ENV, "")
        self._heartbeat = Path(heartbeat) if heartbeat.startswith("/") else None
        if heartbeat and self._heartbeat is None:
            log.warning("ignoring %s=%r: not an absolute path", HEARTBEAT_FILE_ENV, heartbeat)
        self._beats = 0
        self._beat_failed = False
        self.watchdog_period = _watchdog_period(env) if self._address or self._heartbeat else None
        """Seconds between ``watchdog()`` calls (half of ``$WATCHDOG_USEC``), or None for no watchdog."""

    @property
    def enabled(self) -> bool:
        """True if a service manager listens."""
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; returns False if nothing was sent.

        A failed send is logged, never raised: the service manager going away must not stop
        the daemon.
        """
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(lines).encode("utf-8", errors="replace"), self._address)
        except OSError as exc:
            log.warning("cannot notify the service manager at %r: %s", self._address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (``READY=1``), optionally with a status line."""
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """A free-form status line shown by ``systemctl status`` (``STATUS=``)."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Tell the watchdog the daemon is alive (``WATCHDOG=1``, and the heartbeat file if one is
        named); returns False if neither was delivered."""
        beat = self._beat()
        return self.notify("WATCHDOG=1") or beat

    def _beat(self) -> bool:
        """Rewrite the heartbeat file with a new line; a failure is logged once, never raised."""
        if self._heartbeat is None:
            return False
        self._beats += 1
        try:
            atomic_write(self._heartbeat, f"{os.getpid()} {self._beats}\n".encode(), mode=0o644)
        except OSError as exc:
            if not self._beat_failed:
                log.warning(
                    "cannot write the heartbeat file %s (%s): the supervisor will count the daemon "
                    "as hung; check that its folder exists and is writable",
                    self._heartbeat,
                    exc.strerror or exc,
                )
            self._beat_failed = True
            return False
        self._beat_failed = False
        return True

    def stopping(self) -> bool:
        """The daemon is shutting down (``STOPPING=1``)."""
        return self.notify("STOPPING=1")

    def close(self) -> None:
        """Close the socket (notifications after this open a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _watchdog_period(env: Mapping[str, str]) -> float | None:
    """Half the watchdog timeout systemd set for this process, or None."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None  # the variables were meant for another process (our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a whole number of microseconds", usec)
        return None
    return value / 2e6 if value > 0 else None
