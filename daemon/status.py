"""The status file ``<runtime_dir>/status.json`` and its reader for ``dvrlinkd status``.

The daemon rewrites the file atomically on every state change and keepalive acknowledgement
(the runtime directory is on tmpfs, so this costs no flash writes) and removes it on a clean
stop. Times in the file are unix times (wall clock); ``rtt`` is in seconds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dvrlink.daemon.files import atomic_write

STATUS_FILE = "status.json"


class StatusUnavailable(Exception):
    """The daemon is not running or its status cannot be read; the message says what to do."""


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """One snapshot of the daemon, as written to the status file."""

    state: str
    """Presence state: idle, cookie-wait, register-wait, online or backoff."""
    serial: str
    broker: str
    """``host:port`` of the broker's presence service."""
    reflexive_address: str | None
    """``ip:port`` the broker sees the device at."""
    session_id: int | None
    registered_at: float | None
    """Unix time of the current registration."""
    last_keepalive: float | None
    """Unix time of the last acknowledged keepalive (or registration)."""
    rtt: float | None
    """Last round-trip time to the broker, seconds."""
    pid: int
    started_at: float
    """Unix time the daemon started."""
    message: str = ""
    """Last noteworthy event in words (e.g. the broker's refusal message)."""

    def to_json(self) -> bytes:
        """The file's contents."""
        return (json.dumps(asdict(self), indent=1) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> DaemonStatus:
        """Parse the file's contents.

        Raises:
            ValueError: not a status document.
        """
        try:
            obj = json.loads(data)
            names = {f.name for f in fields(cls)}
            if not isinstance(obj, dict) or not {"state", "serial", "pid"} <= obj.keys():
                raise ValueError("not a status document")
            return cls(**{k: v for k, v in obj.items() if k in names})
        except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a status document: {exc}") from exc


class StatusFile:
    """Writes the daemon's status file in ``runtime_dir``."""

    def __init__(self, runtime_dir: Path) -> None:
        self.path = Path(runtime_dir) / STATUS_FILE

    def write(self, status: DaemonStatus) -> None:
        """Replace the file atomically (mode 0644: it holds nothing secret).

        Raises:
            OSError: the runtime directory is missing or not writable; the message names it.
        """
        atomic_write(self.path, status.to_json(), mode=0o644)

    def remove(self) -> None:
        """Delete the file (clean stop); a missing file is fine."""
        self.path.unlink(missing_ok=True)


def read_status(runtime_dir: Path) -> DaemonStatus:
    """The running daemon's status.

    Raises:
        StatusUnavailable: no status file, an unreadable one, or its process is gone.
    """
    path = Path(runtime_dir) / STATUS_FILE
    hint = "start it with `systemctl start dvrlinkd` (or `dvrlinkd run --config FILE`), then retry"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StatusUnavailable(f"dvrlinkd is not running: no status file {path}; {hint}") from None
    except OSError as exc:
        raise StatusUnavailable(
            f"cannot read {path} ({exc.strerror}); run as root or as the daemon's user"
        ) from None
    try:
        status = DaemonStatus.from_json(data)
    except ValueError as exc:
        raise StatusUnavailable(
            f"{path} is unreadable ({exc}); the daemon rewrites it on its next keepalive, retry then"
        ) from None
    if not pid_alive(status.pid):
        raise StatusUnavailable(
            f"dvrlinkd is not running: {path} names pid {status.pid}, which has exited "
            f"(last state {status.state}); see `journalctl -u dvrlinkd`, and {hint}"
        )
    return status


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_status(status: DaemonStatus, now: float) -> str:
    """A readable block for ``dvrlinkd status``; ``now`` is the current unix time."""

    def when(t: float | None) -> str:
        if t is None:
            return "-"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
        return f"{stamp} ({_ago(now - t)})"

    rows = [
        ("state", status.state),
        ("serial", status.serial),
        ("broker", status.broker),
        ("reflexive address", status.reflexive_address or "-"),
        ("session", f"{status.session_id:#010x}" if status.session_id is not None else "-"),
        ("registered", when(status.registered_at)),
        ("last keepalive", when(status.last_keepalive)),
        ("rtt", f"{status.rtt * 1000:.0f} ms" if status.rtt is not None else "-"),
        ("pid", str(status.pid)),
        ("started", when(status.started_at)),
    ]
    if status.message:
        rows.append(("last event", status.message))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in rows)


def _ago(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"
