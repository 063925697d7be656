"""State files: atomic writes (a crash or power cut leaves the old file or the new one, never half),
and a lock file that keeps a second process off a state directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DirectoryLocked(Exception):
    """Another process holds the lock on a state directory; ``pid`` is its process id (None when
    it could not be read)."""

    def __init__(self, lock_file: Path, pid: int | None) -> None:
        super().__init__(f"{lock_file} is locked by pid {pid if pid is not None else 'unknown'}")
        self.lock_file = lock_file
        self.pid = pid


def lock_exclusive(lock_file: Path) -> int:
    """Take an exclusive ``flock`` on ``lock_file`` (created 0600 if missing) without waiting, and
    write this process's id into it. Returns the open descriptor: the lock lasts until it is
    closed, or the process ends (also by SIGKILL or a crash, so a stale lock cannot exist).

    Raises:
        DirectoryLocked: another process holds the lock; it names that process's id.
        OSError: the file cannot be opened (its directory is missing or not writable).
    """
    lock_file = Path(lock_file)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise DirectoryLocked(lock_file, pid) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``.

    The data goes to a temporary file in the same directory, is flushed to disk, then renamed
    over ``path``; the directory is synced so the rename survives a power cut.

    Raises:
        OSError: the directory does not exist or is not writable; the message names the path.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(
            exc.errno, f"cannot write {path}: {exc.strerror}; check that the directory exists and is writable"
        ) from exc
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
