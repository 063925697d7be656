"""State files: atomic writes (a crash or power cut leaves the old file or the new one, never half),
a lock file that keeps a second process off a state directory, and setting aside a file that no
longer parses so its owner can start clean (:func:`move_corrupt_aside`)."""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

CORRUPT_SUFFIX = ".corrupt"
"""Appended to a corrupt file's name when it is set aside (an older one of that name is replaced)."""


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


@dataclass(frozen=True, slots=True)
class CorruptFileSetAside:
    """A state file that did not parse was set aside (past tense: the rename was tried)."""

    path: Path
    """The file's own name, which is now free for a fresh file."""
    aside: Path | None
    """Where the old content is now; None when the rename failed and it is still at ``path``."""
    problem: str
    """What the parser said was wrong."""


def move_corrupt_aside(
    path: Path, problem: str, *, what: str, instead: str, log: logging.Logger, level: int = logging.ERROR
) -> CorruptFileSetAside:
    """Rename the corrupt file ``path`` to ``<name>.corrupt`` (replacing an older one) so that its
    owner can start clean and an operator can still read what it held, and log at ``level`` on
    ``log`` (the owner's logger) one line naming ``what`` the file is, the path, ``problem``,
    where the content went and ``instead`` (what the owner does without it).

    Never raises: when the rename fails the file stays where it is, the log line says so and how
    to clear it, and ``aside`` is None (the owner starts clean all the same; its next save
    replaces the file).
    """
    path = Path(path)
    aside = path.with_name(path.name + CORRUPT_SUFFIX)
    try:
        os.replace(path, aside)
    except OSError as exc:
        log.log(
            level,
            "%s %s is corrupt (%s) and cannot be moved aside to %s (%s); %s, and the next save "
            "replaces it: make the directory writable to keep a copy",
            what,
            path,
            problem,
            aside,
            exc.strerror or exc,
            instead,
        )
        return CorruptFileSetAside(path, None, problem)
    log.log(level, "%s %s is corrupt (%s): kept it as %s and %s", what, path, problem, aside, instead)
    return CorruptFileSetAside(path, aside, problem)
